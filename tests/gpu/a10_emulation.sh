#!/usr/bin/env bash
# fastgen with the DEFAULT KV sizing on one H200 made to look like a 24 GB A10, Qwen2.5-7B shape
# (random weights). What it proves (issue: the reference cluster out of the box, item 3):
#   1. a --kv-cache-gb that cannot fit stops at once with the numbers (exit 2), before loading;
#   2. with no --kv-cache-gb the engine starts on the "A10", /health reports its KV blocks and
#      memory plan, and 32 concurrent streams (128-token prompts, 256 new tokens) all succeed.
# The rest of the GPU is occupied by another process before the server starts, so mem_get_info()
# in the engine sees what an A10 would have (23028 MiB).
#   device tool, kind nvidia-h200, carry .whl (wheels: tests/gpu/README.md):
#   bash tests/gpu/a10_emulation.sh            (results under $OUT, else /tmp/a10)
set -u
cd "$(dirname "$0")/../.." || exit 1
R="${OUT:-/tmp/a10}"; SHAPE=qwen2.5-7b
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
# occupy everything beyond an A10's memory
python3 - <<'PY' &
import os, time, torch
free, total = torch.cuda.mem_get_info()
keep = int(os.environ["A10_MIB"]) * 2**20
block = torch.empty(free - keep, dtype=torch.uint8, device="cuda")
print(f"occupier: took {(free - keep) / 2**30:.1f} GiB; the server sees {torch.cuda.mem_get_info()[0] / 2**30:.2f} GiB free", flush=True)
time.sleep(3600)
PY
OCC=$!
sleep 15
serve() {  # serve LOG ARGS...
  local log=$1; shift
  setsid python3 -m deepspeed.launcher.runner --num_gpus 1 --master_port 29631 --module tpserve \
    --model "$MODEL_DIR" --served-model-name q7 --engine fastgen --dtype bfloat16 --port 8011 \
    --max-batch-size 32 --max-queue 256 --max-new-tokens 512 "$@" > "$log" 2>&1 &
  echo $!
}
echo "== 1. --kv-cache-gb 12 on the 24 GB GPU: must stop before loading, with the numbers"
t0=$(date +%s); pid=$(serve "$R/server-too-big.log" --kv-cache-gb 12)
for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
echo "stopped after $(( $(date +%s) - t0 )) s (launcher start included)"
grep -m1 -o "kv-cache-gb 12 does not fit.*" "$R/server-too-big.log" | cut -c1-400
grep -q "Loading\|Model built" "$R/server-too-big.log" && echo "FAIL: it loaded the model first"
kill -9 -- -"$pid" 2>/dev/null
echo "== 2. default KV sizing"
t0=$(date +%s); pid=$(serve "$R/server.log")
ok=0
for _ in $(seq 240); do
  if curl -sf localhost:8011/health > "$R/health.json"; then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break; sleep 1
done
echo "ready=$ok after $(( $(date +%s) - t0 )) s"; tail -5 "$R/server.log"
python3 -c "import json; h=json.load(open('$R/health.json')); d=h['engine_details']; print(json.dumps({k: d.get(k) for k in ('kv_cache_blocks','kv_cache_free_blocks','memory_plan')}))"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$R/gpu.txt"
python3 bench/loadgen.py --url http://127.0.0.1:8011 --model q7 --concurrency 32 --requests 64 --warmup 0 \
  --prompt-tokens 128 --output-tokens 256 --vocab 151000 --timeout 300 --out "$R/load.jsonl" | tail -3
curl -s localhost:8011/metrics | grep -E '^tpserve_requests_total' | tee "$R/requests.txt"
curl -s localhost:8011/health > "$R/health-after.json"
kill -- -"$pid" 2>/dev/null; sleep 3; kill -9 -- -"$pid" 2>/dev/null; kill $OCC 2>/dev/null
exit 0
