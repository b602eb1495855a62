#!/usr/bin/env bash
# The whole benchmark on one GPU host with 2 GPUs, in one go (~8-9 min on 2xH200), no network:
# raw engines (same sitting), tpserve over HTTP (fastgen TP=2, autotp TP=2), GPU correctness test.
#   RESULTS=/some/dir bash bench/run_all.sh      (the device tool sets OUT; RESULTS defaults to it)
# Each step has its own time limit (--deadline, seconds) so the run stays inside 10 minutes.
set -u
cd "$(dirname "$0")/.." || exit 1
R="${RESULTS:-${OUT:-/tmp/bench}}"
mkdir -p "$R"
echo "image TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset} (DeepSpeed needs plain 9.0)"
export TORCH_CUDA_ARCH_LIST="${BENCH_CUDA_ARCH:-9.0}" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1 MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
run() { echo "=== $*"; "$@"; }
# 1. environment, the random-weight model, raw v2 TP=2 (JIT-builds the FastGen ops: 60-100 s)
BS="1 64" run "$PY" bench/runner.py run --results "$R" --deadline "${T_RAW:-240}" env save v2:2
# 2. tpserve fastgen TP=2 over HTTP
run "$PY" bench/runner.py http --results "$R" --engine fastgen --tp 2 --deadline "${T_FASTGEN:-150}" \
  --server-arg=--max-batch-size --server-arg=64 --server-arg=--max-queue --server-arg=512 \
  --scenario "--concurrency 1 --requests 8" \
  --scenario "--concurrency 32 --requests 128" \
  --scenario "--concurrency 64 --requests 256" \
  --scenario "--rate 16 --requests 160"
# 3. correctness: fastgen and autotp vs transformers (TP=1 and TP=2)
run timeout "${T_TEST:-150}" "$PY" -m pytest -q -rs -s app/tests/test_gpu_correctness.py -p no:cacheprovider \
  2>&1 | tee "$R/pytest.txt" | tail -25
# 4. HF static cache, 1 GPU (the anchor the targets are measured against)
BS="1 32" run "$PY" bench/runner.py run --results "$R" --deadline "${T_HFC:-90}" hfc
# 5. tpserve autotp TP=2 over HTTP (one forward per sequence per step: slow; small scenarios)
run "$PY" bench/runner.py http --results "$R" --engine autotp --tp 2 --deadline "${T_AUTOTP:-100}" \
  --server-arg=--max-batch-size --server-arg=8 \
  --scenario "--concurrency 1 --requests 4" \
  --scenario "--concurrency 8 --requests 8"
"$PY" bench/runner.py report --results "$R" --out "$R/merged.json"
