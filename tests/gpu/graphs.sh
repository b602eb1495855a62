#!/usr/bin/env bash
# CUDA graphs for fastgen's decode steps (issue 13.1), one sitting on a 2-GPU host: the same server
# with graphs (default) and with --no-cuda-graphs, TP=2 in one node and TP=1; for each: the first 32
# greedy tokens of a fixed prompt (tokens.jsonl) and of 8 concurrent prompts (tokens-batch.jsonl),
# ITL at 1 client and tok/s at 64 clients (load.jsonl), /health after the load (health.jsonl: the
# graphs' batch sizes, memory and replays).
#   device tool, kind nvidia-h200-x2, carry .whl:  RUNS="tp2-graphs tp2-eager" bash tests/gpu/graphs.sh
#   then, on the warm machine:                       RUNS="tp1-graphs tp1-eager" bash tests/gpu/graphs.sh
# TOKENS_ONLY=1: the greedy tokens and /health only, no load.
# tp2-sync: graphs, asynchronous scheduling off (--async-scheduling off), against tp2-graphs (on: the default).
# tp2-nccl: graphs with every all-reduce on NCCL (--no-oneshot-allreduce), against tp2-graphs (one-shot
# all-reduce through symmetric memory for small tensors, the default inside one host).
set -u
cd "$(dirname "$0")/../.." || exit 1
R=/tmp/graphs; SHAPE=qwen2.5-7b; RUNS=${RUNS:-tp2-graphs tp2-eager tp1-graphs tp1-eager}
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
# shellcheck source=tests/gpu/serve_lib.sh
source tests/gpu/serve_lib.sh
ARGS=(--model "$MODEL_DIR" --served-model-name m --engine fastgen --dtype bfloat16 --max-batch-size 64 --max-queue 512)
serve() {  # LABEL GPUS PORT [FLAG...]
  local label=$1 gpus=$2 port=$3 t0
  shift 3
  echo "== $label"; t0=$(date +%s)
  setsid python3 -m deepspeed.launcher.runner --include "localhost:$gpus" --master_port $((port + 21000)) \
    --module tpserve "${ARGS[@]}" --port "$port" "$@" > "$R/$label.log" 2>&1 &
  pids+=($!)
  wait_ready "$port"; echo "ready in $(( $(date +%s) - t0 )) s"
  tokens "$label" "$port"; tokens_batch "$label" "$port"
  [ -n "${TOKENS_ONLY:-}" ] || { load "$label" 1 "$port"; load "$label" 64 "$port"; }
  curl -s "localhost:$port/health" | python3 -c "import json,sys; h=json.load(sys.stdin); print(json.dumps({'run': '$label', 'cuda_graphs': h['engine_details'].get('cuda_graphs'), 'gemm': h['engine_details'].get('gemm'), 'allreduce': h['engine_details'].get('allreduce'), 'kv_cache_blocks': h['engine_details'].get('kv_cache_blocks')}))" >> "$R/health.jsonl"
  tail -n 5 "$R/health.jsonl"
  grep -E "CUDA graphs|Error|error" "$R/$label.log" | tail -n 5
  stop_all
}
for run in $RUNS; do
  case $run in
    tp2-graphs) serve "$run" 0,1 8041 ;;
    tp2-eager) serve "$run" 0,1 8042 --no-cuda-graphs ;;
    tp2-nccl) serve "$run" 0,1 8045 --no-oneshot-allreduce ;;
    tp2-sync) serve "$run" 0,1 8046 --async-scheduling off ;;
    tp1-graphs) serve "$run" 0 8043 ;;
    tp1-eager) serve "$run" 0 8044 --no-cuda-graphs ;;
    *) echo "unknown run $run" ;;
  esac
done
summary "runs"
python3 - "$R" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/tokens-batch.jsonl")]
by_i = collections.defaultdict(dict)
for r in rows:
    by_i[r["i"]][r["layout"]] = r["text"]
for a_run, b_run in (("tp2-graphs", "tp2-eager"), ("tp1-graphs", "tp1-eager"), ("tp2-graphs", "tp2-sync"), ("tp2-graphs", "tp2-nccl")):
    pairs = [(v.get(a_run), v.get(b_run)) for v in by_i.values()]
    pairs = [p for p in pairs if None not in p]
    if pairs:
        print(f"8 concurrent greedy prompts, {a_run} == {b_run}: {sum(a == b for a, b in pairs)}/{len(pairs)}")
PY
for f in "$R"/*.log; do echo "== $f"; tail -n 20 "$f"; done > "$R/logs.txt"
[ -n "${OUT:-}" ] && cp "$R"/load.jsonl "$R"/tokens.jsonl "$R"/tokens-batch.jsonl "$R"/health.jsonl "$R"/gpu.txt "$R"/logs.txt "$OUT"/ 2>/dev/null
exit 0
