# shellcheck shell=bash
# Sourced by the tests/gpu serving scripts after env.sh (R = results folder): start/stop servers,
# greedy tokens of a fixed prompt, load at N clients over one or more ports, and the summary table.
pids=()
wait_ready() {  # PORT...
  for port in "$@"; do
    for _ in $(seq 150); do curl -sf "localhost:$port/health" > "$R/health-$port.json" && break; sleep 1; done
  done
}
stop_all() { for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null; done; sleep 4; for p in "${pids[@]}"; do kill -9 -- -"$p" 2>/dev/null; done; pids=(); }
tokens() {  # LABEL PORT
  curl -s "localhost:$2/v1/completions" -H 'content-type: application/json' \
    -d '{"model": "m", "prompt": [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000], "max_tokens": 32, "temperature": 0, "ignore_eos": true, "logprobs": null}' \
    | python3 -c "import json,sys; print(json.dumps({'layout': '$1', 'text': json.load(sys.stdin)['choices'][0]['text']}))" >> "$R/tokens.jsonl"
}
load() {  # LABEL CLIENTS PORT...
  local label=$1 c=$2; shift 2
  local n=$(( c == 1 ? 8 : c * 2 )) k=$# i=0 gens=()
  for port in "$@"; do
    i=$((i + 1))
    timeout 120 python3 bench/loadgen.py --url "http://127.0.0.1:$port" --model m --concurrency $(( c / k > 0 ? c / k : 1 )) \
      --requests $(( n / k )) --warmup 1 --prompt-tokens 128 --output-tokens 128 --timeout 100 \
      --tag "$label-c$c-part$i" --out "$R/load.jsonl" > /dev/null &
    gens+=($!)
  done
  wait "${gens[@]}"  # not a bare `wait`: that would wait for the servers too (it hung a sitting once)
}
summary() {  # WHAT: the table of every row in $R/load.jsonl and whether the greedy tokens agree
python3 - "$R" "$1" <<'PY'
import json, os, sys, collections
R = sys.argv[1]
rows = [json.loads(l) for l in open(f"{R}/load.jsonl")] if os.path.exists(f"{R}/load.jsonl") else []
agg = collections.defaultdict(lambda: {"ok": 0, "requests": 0, "tok_s": 0.0, "itl": [], "ttft": []})
for r in rows:
    layout, c, _ = r["tag"].rsplit("-", 2)
    a = agg[(layout, c)]
    a["ok"] += r["ok"]; a["requests"] += r["requests"]; a["tok_s"] += r["output_tok_per_s"]
    a["itl"].append(r["itl_ms_mean"]); a["ttft"].append(r["ttft_ms_p50"])
print("| layout | clients | ok/requests | ITL mean ms | TTFT p50 ms | tok/s |")
for (layout, c), a in agg.items():
    print(f"| {layout} | {c[1:]} | {a['ok']}/{a['requests']} | {max(a['itl']):.2f} | {max(a['ttft']):.0f} | {a['tok_s']:.0f} |")
toks = [json.loads(l) for l in open(f"{R}/tokens.jsonl")]
print(f"greedy 32 tokens equal across {sys.argv[2]}:", len({t['text'] for t in toks}) == 1, [t["layout"] for t in toks])
PY
}
tokens_batch() {  # LABEL PORT: 8 concurrent greedy requests (8 different prompts), 32 tokens each
  local i gens=()
  for i in 1 2 3 4 5 6 7 8; do
    curl -s "localhost:$2/v1/completions" -H 'content-type: application/json' \
      -d "{\"model\": \"m\", \"prompt\": [$((i * 1000)), $((i * 1000 + 7)), 42, $((i * 333))], \"max_tokens\": 32, \"temperature\": 0, \"ignore_eos\": true}" \
      | python3 -c "import json,sys; print(json.dumps({'layout': '$1', 'i': $i, 'text': json.load(sys.stdin)['choices'][0]['text']}))" > "$R/tb-$1-$i.json" &
    gens+=($!)
  done
  wait "${gens[@]}"
  cat "$R/tb-$1"-*.json >> "$R/tokens-batch.jsonl"  # one line each: concurrent appends interleaved once
}
