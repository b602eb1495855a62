#!/usr/bin/env bash
# Layout advice, measured in one sitting on a 2-GPU host (Qwen2.5-7B shape, random weights, fastgen):
#   across  TP=2 across two emulated single-GPU nodes (one process per GPU, NCCL over sockets only)
#   innode  TP=2 in one node (the DeepSpeed launcher, NVLink)
#   replicas two TP=1 servers, one per GPU, the clients split between them
# each at 1 / 32 / 64 clients (128-token prompts, 128 new tokens; loadgen JSON lines in load.jsonl), and
# the first 32 greedy tokens of one fixed prompt from each (tokens.json): they must be equal.
#   device tool, kind nvidia-h200-x2, carry .whl:  bash tests/gpu/layouts.sh
# LAYOUTS="across" then LAYOUTS="innode replicas" splits the sitting into two calls on one warm machine
# (R=/tmp/layouts keeps the results between them; the summary reads every row there).
set -u
cd "$(dirname "$0")/../.." || exit 1
R=/tmp/layouts; SHAPE=qwen2.5-7b; LAYOUTS=${LAYOUTS:-across innode replicas}
want() { [[ " $LAYOUTS " == *" $1 "* ]]; }
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
ARGS=(--model "$MODEL_DIR" --served-model-name m --engine fastgen --dtype bfloat16 --max-batch-size 64 --max-queue 512)
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
want across && { echo "== across"; t0=$(date +%s)
for r in 0 1; do
  CUDA_VISIBLE_DEVICES=$r LOCAL_RANK=0 RANK=$r WORLD_SIZE=2 LOCAL_WORLD_SIZE=1 LOCAL_SIZE=1 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT=29651 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo \
    setsid python3 -m tpserve "${ARGS[@]}" --port 8031 > "$R/across-$r.log" 2>&1 &
  pids+=($!)
done
wait_ready 8031; echo "ready in $(( $(date +%s) - t0 )) s"; tokens across 8031
for c in 1 32 64; do load across $c 8031; done; stop_all; }
want innode && { echo "== innode"; t0=$(date +%s)
setsid python3 -m deepspeed.launcher.runner --num_gpus 2 --master_port 29652 --module tpserve "${ARGS[@]}" --port 8032 \
  > "$R/innode.log" 2>&1 &
pids+=($!)
wait_ready 8032; echo "ready in $(( $(date +%s) - t0 )) s"; tokens innode 8032
for c in 1 32 64; do load innode $c 8032; done; stop_all; }
want replicas && { echo "== replicas"; t0=$(date +%s)
for g in 0 1; do
  # --include, not CUDA_VISIBLE_DEVICES: the launcher rewrites CUDA_VISIBLE_DEVICES to its own list
  # (a sitting put both replicas on GPU 0 that way and the second ran out of memory)
  setsid python3 -m deepspeed.launcher.runner --include "localhost:$g" --master_port $((29653 + g)) \
    --module tpserve "${ARGS[@]}" --port $((8033 + g)) > "$R/replica-$g.log" 2>&1 &
  pids+=($!)
done
wait_ready 8033 8034; echo "ready in $(( $(date +%s) - t0 )) s"; tokens replica 8033
for c in 1 32 64; do
  if [ "$c" = 1 ]; then load replicas 1 8033; else load replicas $c 8033 8034; fi
done; stop_all; }
python3 - "$R" <<'PY'
import json, sys, collections
R = sys.argv[1]
rows = [json.loads(l) for l in open(f"{R}/load.jsonl")]
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
print("greedy 32 tokens equal across layouts:", len({t["text"] for t in toks}) == 1, [t["layout"] for t in toks])
PY
[ -n "${OUT:-}" ] && cp "$R"/*.jsonl "$R"/*.json "$R"/gpu.txt "$OUT"/ 2>/dev/null
exit 0
