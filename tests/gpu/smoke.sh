#!/usr/bin/env bash
# Manual GPU smoke test: a synthetic Qwen2 served by tpserve autotp over all local GPUs (NCCL data
# plane, gloo control), checked by smoke.py, then a graceful SIGTERM of rank 0 (expects exit 0).
#   bash tests/gpu/smoke.sh                  (OUT: where logs and the report go)
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-/tmp/tpserve-gpu-smoke}"; mkdir -p "$OUT"
NGPU="${NGPU:-$(nvidia-smi -L | wc -l)}"
PORT="${PORT:-18000}"
export NCCL_NVLS_ENABLE=0 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST_OVERRIDE:-9.0}" PYTHONUNBUFFERED=1
M="$OUT/model"
python -m tpserve.tools.synthetic "$M" --hidden 1024 --intermediate 2816 --layers 4 --heads 16 --kv-heads 8 >/dev/null 2>&1
t0=$(date +%s)
deepspeed --num_gpus "$NGPU" --master_port 29555 --module tpserve --model "$M" --engine "${ENGINE:-autotp}" \
  --dtype float32 --port "$PORT" --max-batch-size 16 --pid-file "$OUT/rank0.pid" >"$OUT/server.log" 2>&1 &
LAUNCHER=$!
until curl -sf "localhost:$PORT/health" >/dev/null; do
  kill -0 $LAUNCHER 2>/dev/null || { echo "server died"; tail -30 "$OUT/server.log"; exit 1; }
  [ $(( $(date +%s) - t0 )) -gt 300 ] && { echo "not ready in 300 s"; tail -30 "$OUT/server.log"; exit 1; }
  sleep 1
done
echo "ready after $(( $(date +%s) - t0 )) s"
python tests/gpu/smoke.py "http://127.0.0.1:$PORT" "$M" | tee "$OUT/report.json"
rc=${PIPESTATUS[0]}
kill -TERM "$(cat "$OUT/rank0.pid")"
wait $LAUNCHER; code=$?
echo "smoke rc=$rc; launcher exit after SIGTERM to rank 0: $code"
grep -E "CRITICAL|Error|error" "$OUT/server.log" | head -5
exit $(( rc || code ))
