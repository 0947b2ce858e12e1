#!/usr/bin/env bash
# On a machine with one NVIDIA GPU: build rnnfast for that GPU, run the CUDA tests, and run
# the GPU benchmark (torch.nn/cuDNN against rnnfast's standard and persistent algorithms, fp32
# and bf16, inference and training), printing one table. Meant to finish in under 8 minutes on
# 16 cores; GPU_CHECK_FULL=1 runs the whole shape grid instead of the quick one.
#
#   bash bench/gpu_check.sh                 # from the repository root
#
# Environment: PYTHON (default python3); GPU_CHECK_VENV, a virtual environment to use or
# create (default .venv-gpu; an existing one with a CUDA build of torch is reused as it is);
# TORCH_CUDA_ARCH_LIST (default: the GPU's own compute capability); MAX_JOBS (default: cores).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { echo; echo "=== [gpu_check $((SECONDS - t0))s] $*"; }

command -v nvidia-smi > /dev/null || { echo "nvidia-smi not found: no NVIDIA GPU here"; exit 1; }
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' ')"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$cap}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
VENV="${GPU_CHECK_VENV:-.venv-gpu}"

step "environment ($VENV)"
if ! "$VENV/bin/python" -c "import torch; assert torch.version.cuda" 2> /dev/null; then
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet torch==2.14.1 ninja setuptools wheel numpy pytest \
    expecttest
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
torch.cuda.get_device_name())"

step "build for sm_$TORCH_CUDA_ARCH_LIST (FORCE_CUDA=1, MAX_JOBS=$MAX_JOBS)"
FORCE_CUDA=1 RNNFAST_NO_EMULATOR=1 "$VENV/bin/python" setup.py build_ext --inplace > build-gpu.log 2>&1 \
  || { tail -n 40 build-gpu.log; exit 1; }
grep -E "registers|spill" build-gpu.log | grep -E "persistent|spill" | head -n 20 || true

step "CUDA device tests"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_cuda_device.py -rs 2>&1 | tail -n 15

step "GPU benchmark: cuDNN, standard, persistent"
"$VENV/bin/python" -m bench.gpu $([ "${GPU_CHECK_FULL:-0}" = 1 ] || echo --quick)

step "done in $((SECONDS - t0))s"
