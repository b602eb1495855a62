#!/usr/bin/env bash
# The whole benchmark on one GPU host with 2 GPUs, no network: FastGen op build, GPU correctness
# test, raw engines, tpserve over HTTP (fastgen TP=2, autotp TP=2) and the anchors, same sitting.
#   RESULTS=/some/dir bash bench/run_all.sh                 all steps (~11 min on 2xH200)
#   STEPS="prebuild test raw" bash bench/run_all.sh         some steps (the device tool's 10-minute
#   STEPS="fastgen hfc autotp report" bash bench/run_all.sh  calls: two calls on one warm machine)
# Steps: prebuild test raw profile fastgen hfc autotp report (and fastgen-nccl, fastgen-inproc, fastgen-sync, only when named). RESULTS, the model (MODEL_DIR) and the built ops
# (TORCH_EXTENSIONS_DIR) default to .cache/ in the checkout, so a later call on the same machine reuses them.
# Each step has its own time limit (--deadline, seconds).
set -u
cd "$(dirname "$0")/.." || exit 1
R="${RESULTS:-$PWD/.cache/bench-results}"
STEPS=" ${STEPS:-prebuild test raw profile fastgen hfc autotp report} "
mkdir -p "$R"
echo "image TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset} (DeepSpeed needs plain 9.0)"
export TORCH_CUDA_ARCH_LIST="${BENCH_CUDA_ARCH:-9.0}" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1 MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1 \
  TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}" \
  MODEL_DIR="${MODEL_DIR:-$PWD/.cache/bench-model}" PYTHONPATH="$PWD/app/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
run() { echo "=== $*"; "$@"; }
want() { [[ "$STEPS" == *" $1 "* ]]; }
# 1. FastGen's ops, built once as provisioning does (dl_stack runs the same module): 60-100 s, then seconds
want prebuild && { run timeout 300 "$PY" -m tpserve.tools.prebuild --accelerator cuda | tee "$R/prebuild.json"; }
# 2. correctness: fastgen and autotp vs transformers (TP=1 and TP=2)
want test && { run timeout "${T_TEST:-240}" "$PY" -m pytest -q -rs -s app/tests/test_gpu_correctness.py \
  -p no:cacheprovider 2>&1 | tee "$R/pytest.txt" | tail -30; }
# 3. environment, the random-weight model, raw v2 TP=2
want raw && BS="1 64" run "$PY" bench/runner.py run --results "$R" --deadline "${T_RAW:-240}" env save v2:2
# 3b. where a decode step's time goes: tpserve's FastGenEngine, graphs on, kernels by kind (torch.profiler)
want profile && BS="1 64" run "$PY" bench/runner.py run --results "$R" --deadline "${T_PROFILE:-150}" profile:2
# 4. tpserve fastgen TP=2 over HTTP
want fastgen && run "$PY" bench/runner.py http --results "$R" --engine fastgen --tp 2 \
  --deadline "${T_FASTGEN:-170}" \
  --server-arg=--max-batch-size --server-arg=64 --server-arg=--max-queue --server-arg=512 \
  --scenario "--concurrency 1 --requests 8" \
  --scenario "--concurrency 32 --requests 128" \
  --scenario "--concurrency 64 --requests 256" \
  --scenario "--rate 16 --requests 160"
# 4b. the same with every all-reduce on NCCL (against 4: the one-shot all-reduce through symmetric memory)
want fastgen-nccl && run "$PY" bench/runner.py http --results "$R" --engine fastgen --tp 2 --variant nccl \
  --deadline "${T_FASTGEN:-170}" --server-arg=--no-oneshot-allreduce \
  --server-arg=--max-batch-size --server-arg=64 --server-arg=--max-queue --server-arg=512 \
  --scenario "--concurrency 1 --requests 8" \
  --scenario "--concurrency 64 --requests 256"
# 4c. the same with the HTTP front end inside the engine process (against 4: its own process, the default)
want fastgen-inproc && run "$PY" bench/runner.py http --results "$R" --engine fastgen --tp 2 --variant inproc \
  --deadline "${T_FASTGEN:-170}" --server-arg=--no-frontend-process \
  --server-arg=--max-batch-size --server-arg=64 --server-arg=--max-queue --server-arg=512 \
  --scenario "--concurrency 1 --requests 8" \
  --scenario "--concurrency 32 --requests 128" \
  --scenario "--concurrency 64 --requests 256"
# 4d. the same with asynchronous scheduling off (against 4: a step launched before the previous step's
# tokens reach rank 0's host, the default)
want fastgen-sync && run "$PY" bench/runner.py http --results "$R" --engine fastgen --tp 2 --variant sync \
  --deadline "${T_FASTGEN:-170}" --server-arg=--async-scheduling --server-arg=off \
  --server-arg=--max-batch-size --server-arg=64 --server-arg=--max-queue --server-arg=512 \
  --scenario "--concurrency 1 --requests 8" \
  --scenario "--concurrency 32 --requests 128" \
  --scenario "--concurrency 64 --requests 256"
# 5. HF static cache, 1 GPU (the anchor the targets are measured against)
want hfc && BS="1 32" run "$PY" bench/runner.py run --results "$R" --deadline "${T_HFC:-100}" hfc
# 6. tpserve autotp TP=2 over HTTP (slot KV cache, one decode forward per step, CUDA graphs)
want autotp && run "$PY" bench/runner.py http --results "$R" --engine autotp --tp 2 \
  --deadline "${T_AUTOTP:-150}" --server-arg=--max-batch-size --server-arg=8 \
  --scenario "--concurrency 1 --requests 8" \
  --scenario "--concurrency 8 --requests 32"
want report && "$PY" bench/runner.py report --results "$R" --out "$R/merged.json"
exit 0
