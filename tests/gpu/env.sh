# shellcheck shell=bash
# Sourced by the tests/gpu scripts on the GPU host, from the repository root, with R (results
# folder) and SHAPE (bench/configs/<SHAPE>.json) set: carried wheels, the environment (plain arch for
# DeepSpeed's op builder, no NVLink multicast), the random-weight model and FastGen's ops, both
# cached in /tmp so a later call on a warm machine reuses them.
mkdir -p "$R"
# Installed once per machine: reinstalling deepspeed gives its files new times and the next start
# rebuilds FastGen's ops (~170 s), so a warm machine keeps /tmp/site as it is.
if [ -d .whl ]; then
  wheels=$(stat -c '%n %s' .whl/*.whl | md5sum | cut -c1-32)
  if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
    echo "$wheels" > /tmp/site/.wheels
  fi
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/app/src:${PYTHONPATH:-}" TORCH_CUDA_ARCH_LIST=9.0 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 MAX_JOBS=16 \
  TORCH_EXTENSIONS_DIR=/tmp/tpx MODEL_DIR="/tmp/model-$SHAPE" RESULTS="$R" A10_MIB="${A10_MIB:-23028}" \
  BENCH_CONFIG="$PWD/bench/configs/$SHAPE.json"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$R/gpu.txt"
python3 -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)" | tee -a "$R/gpu.txt"
[ -f "$MODEL_DIR/config.json" ] || { echo "== building the $SHAPE model"; timeout 400 python3 bench/phases.py save | tail -1; }
[ -n "${SKIP_PREBUILD:-}" ] || timeout 300 python3 -m tpserve.tools.prebuild --accelerator cuda | tail -1  # autotp-only calls skip it
py_check() {  # SCRIPT TIMEOUT RESULT: run a Python check here, keep its last lines in RESULT (and in $OUT)
  timeout "$2" python3 "$1" 2>&1 | grep -v "^\[" | tail -n 5 | tee "$3"
  if [ -n "${OUT:-}" ]; then cp "$3" "$OUT/"; fi
}
