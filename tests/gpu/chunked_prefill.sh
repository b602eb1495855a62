#!/usr/bin/env bash
# fastgen on a GPU host: the scheduler's chunked prefill across steps, through HTTP, with the same
# test the CPU suite runs (app/tests/test_chunked_prefill.py) pointed at a fastgen server.
#   bash tests/gpu/chunked_prefill.sh          (one GPU; ~2.5 min with FastGen's ops to build)
# Model: the synthetic tokenizer + a small random Qwen2 (hidden 1024, head_dim 128), saved in fp16.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/app/src${PYTHONPATH:+:$PYTHONPATH}" NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
PY="${PYTHON:-python3}" OUT_DIR="${OUT:-/tmp/chunked-check}" BUDGET=32 PORT=8123
mkdir -p "$OUT_DIR"
M="$PWD/.cache/chunked-model"
"$PY" - "$M" <<'PYEOF'
import sys, torch
from pathlib import Path
from tpserve.tools.synthetic import build
from transformers import AutoModelForCausalLM
out = build(Path(sys.argv[1]), hidden=1024, intermediate=2816, layers=2, heads=8, kv_heads=4, vocab=2048)
AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16).save_pretrained(out, safe_serialization=True)
print("model", out)
PYEOF
"$PY" -m tpserve.tools.prebuild --accelerator cuda
"$PY" -m deepspeed.launcher.runner --num_gpus 1 --master_port 29611 --module tpserve --model "$M" \
  --served-model-name tiny --engine fastgen --host 127.0.0.1 --port "$PORT" --max-batch-size 8 \
  --max-batch-tokens "$BUDGET" --kv-cache-gb 2 > "$OUT_DIR/server.log" 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null; wait $srv 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  curl -fs "http://127.0.0.1:$PORT/health" -o "$OUT_DIR/health.json" 2>/dev/null && grep -q '"ok"' "$OUT_DIR/health.json" && break
  kill -0 $srv 2>/dev/null || { tail -30 "$OUT_DIR/server.log"; exit 1; }
  sleep 1
done
"$PY" -c "import json,sys; h=json.load(open(sys.argv[1])); print('engine', h.get('engine'), h.get('engine_reason'), 'rope', json.dumps(h).count('float32 frequencies'))" "$OUT_DIR/health.json"
TPSERVE_TEST_URL="http://127.0.0.1:$PORT" TPSERVE_TEST_MAX_BATCH_TOKENS=$BUDGET \
  "$PY" -m pytest -q -s -p no:cacheprovider app/tests/test_chunked_prefill.py 2>&1 | tee "$OUT_DIR/pytest.txt" | tail -5
