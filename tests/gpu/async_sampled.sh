#!/usr/bin/env bash
# Asynchronous scheduling with sampled rows, fastgen TP=2: seeded samples equal with it on and off, ITL/tok/s
# For each of on (default) and off: 4 seeded sampled requests one at a time + 1 greedy (tokens), then
# sampled load (temperature 0.8, top-p 0.95) at 1 and 64 clients.
#   device tool, kind nvidia-h200-x2, carry .whl:  bash tests/gpu/async_sampled.sh
# RUNS="auto off": the default setting (auto) against off (session 11: auto overlaps sampled rows too).
set -u
cd "$(dirname "$0")/../.." || exit 1
R=/tmp/async-sampled; SHAPE=qwen2.5-7b
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
# shellcheck source=tests/gpu/serve_lib.sh
source tests/gpu/serve_lib.sh
ARGS=(--model "$MODEL_DIR" --served-model-name m --engine fastgen --dtype bfloat16 --max-batch-size 64 --max-queue 512)
for run in ${RUNS:-on off}; do
  case $run in on) port=8070 ;; off) port=8071 ;; *) port=8072 ;; esac
  echo "== $run"
  setsid python3 -m deepspeed.launcher.runner --include localhost:0,1 --master_port $((port + 21000)) \
    --module tpserve "${ARGS[@]}" --port "$port" --async-scheduling "$run" > "$R/$run.log" 2>&1 &
  pids+=($!)
  wait_ready "$port"
  for i in 1 2 3 4 0; do
    temp=0.8; [ "$i" = 0 ] && temp=0
    curl -s "localhost:$port/v1/completions" -H 'content-type: application/json' \
      -d "{\"model\": \"m\", \"prompt\": [$((i * 1000 + 11)), 42, 43, 44], \"max_tokens\": 64, \"temperature\": $temp, \"top_p\": 0.95, \"seed\": $i, \"ignore_eos\": true}" \
      | python3 -c "import json,sys; print(json.dumps({'run': '$run', 'i': $i, 'text': json.load(sys.stdin)['choices'][0]['text']}))" >> "$R/tokens.jsonl"
  done
  for c in 1 64; do
    n=$(( c == 1 ? 8 : c * 2 ))
    timeout 120 python3 bench/loadgen.py --url "http://127.0.0.1:$port" --model m --concurrency "$c" --requests "$n" \
      --warmup 1 --prompt-tokens 128 --output-tokens 128 --temperature 0.8 --top-p 0.95 --timeout 100 \
      --tag "sampled-$run-c$c-part1" --out "$R/load.jsonl" > /dev/null
  done
  curl -s "localhost:$port/health" | python3 -c "import json,sys; h=json.load(sys.stdin); print(json.dumps({'run': '$run', 'async': h['engine_details'].get('async_scheduling')}))" | tee -a "$R/health.jsonl"
  stop_all
done
python3 - "$R" <<'PY'
import collections, json, sys
R = sys.argv[1]
by_i = collections.defaultdict(dict)
for line in open(f"{R}/tokens.jsonl"):
    r = json.loads(line)
    by_i[r["i"]][r["run"]] = r["text"]
runs = sorted({run for v in by_i.values() for run in v})
same = sum(len({v.get(run) for run in runs}) == 1 for v in by_i.values())
print(f"seeded sampled (i=1..4) and greedy (i=0), 64 tokens, {' == '.join(runs)}: {same}/{len(by_i)}")
for line in open(f"{R}/load.jsonl"):
    r = json.loads(line)
    print(f"| {r['tag']} | {r['ok']}/{r['requests']} | ITL mean {r['itl_ms_mean']:.3f} ms | {r['output_tok_per_s']:.0f} tok/s |")
PY
[ -n "${OUT:-}" ] && cp "$R"/tokens.jsonl "$R"/load.jsonl "$R"/health.jsonl "$OUT"/ 2>/dev/null
exit 0
