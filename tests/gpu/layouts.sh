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
# ACROSS_TAG=across-ll NCCL_PROTO=LL LAYOUTS=across: the across row again with other NCCL settings, its own rows
ACROSS_TAG=${ACROSS_TAG:-across}
want() { [[ " $LAYOUTS " == *" $1 "* ]]; }
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
ARGS=(--model "$MODEL_DIR" --served-model-name m --engine fastgen --dtype bfloat16 --max-batch-size 64 --max-queue 512)
# shellcheck source=tests/gpu/serve_lib.sh
source tests/gpu/serve_lib.sh
want across && { echo "== $ACROSS_TAG"; t0=$(date +%s)
for r in 0 1; do
  CUDA_VISIBLE_DEVICES=$r LOCAL_RANK=0 RANK=$r WORLD_SIZE=2 LOCAL_WORLD_SIZE=1 LOCAL_SIZE=1 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT=29651 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo \
    setsid python3 -m tpserve "${ARGS[@]}" --port 8031 > "$R/across-$r.log" 2>&1 &
  pids+=($!)
done
wait_ready 8031; echo "ready in $(( $(date +%s) - t0 )) s"; tokens "$ACROSS_TAG" 8031
for c in 1 32 64; do load "$ACROSS_TAG" $c 8031; done; stop_all; }
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
summary "layouts"
[ -n "${OUT:-}" ] && cp "$R"/*.jsonl "$R"/*.json "$R"/gpu.txt "$OUT"/ 2>/dev/null
exit 0
