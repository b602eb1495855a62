#!/bin/bash
# On a GPU host with nvcc and a CUDA torch in $PY (the device machine's image): install DeepSpeed,
# deepspeed-kernels, tpserve and ansible-core from carried wheels ($1), then run
# gpu_localhost.yml twice and --check once, and show that the service's environment reuses the build.
set -euo pipefail
wheels=$1
PY=${PY:-$(command -v python3)}
cd "$(dirname "$0")/../.."
"$PY" -m pip install -q --no-index --find-links "$wheels" deepspeed==0.19.8 deepspeed-kernels==0.0.1.dev1698255861 ansible-core==2.19.14
"$PY" -m pip install -q --no-deps --no-build-isolation ./app
id tpserve >/dev/null 2>&1 || useradd --system --create-home tpserve
nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc)
cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
become=sudo; command -v sudo >/dev/null || become=su
echo "python $PY; nvcc $nvcc_path; CUDA_HOME $cuda_home; become $become"
nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader
bin=$(dirname "$PY")
args=(-i "localhost," -e "dl_stack_python=$PY" -e "tpserve_cuda_home=$cuda_home" -e "ansible_become_method=$become"
      -e '{"dl_stack_build_packages": []}' -e ansible_python_interpreter="$PY")
export ANSIBLE_NOCOLOR=1 ANSIBLE_ROLES_PATH=$PWD/roles
for run in 1 2; do
  s=$(date +%s)
  "$bin/ansible-playbook" tests/cuda_standin/gpu_localhost.yml "${args[@]}" > "$OUT/run$run.log" 2>&1 || { tail -40 "$OUT/run$run.log"; exit 1; }
  echo "run $run: $(( $(date +%s) - s )) s: $(grep -A1 'PLAY RECAP' "$OUT/run$run.log" | tail -1)"
done
"$bin/ansible-playbook" tests/cuda_standin/gpu_localhost.yml "${args[@]}" --check > "$OUT/check.log" 2>&1 && echo "check: $(grep -A1 'PLAY RECAP' "$OUT/check.log" | tail -1)"
grep -A4 'What was built for' "$OUT/run1.log" | tail -3
ls -la /opt/tpserve/torch_extensions/
arch=$(su tpserve -s /bin/sh -c "$PY -c 'from tpserve.tools.prebuild import cuda_arch, plain_arch; print(plain_arch(cuda_arch()))'")
echo "tpserve_service's probe: $arch"
s=$(date +%s)
su tpserve -s /bin/sh -c "env TORCH_CUDA_ARCH_LIST=$arch CUDA_HOME=$cuda_home TORCH_EXTENSIONS_DIR=/opt/tpserve/torch_extensions PATH=$bin:/usr/bin:/bin $PY -m tpserve.tools.prebuild --accelerator cuda"
echo "service env load: $(( $(date +%s) - s )) s"
