#!/usr/bin/env bash
# The real CUDA build, on a machine without a GPU (docs/design.md, "CUDA without a GPU"):
#   1. a fresh venv with the CUDA 13.0 build of torch (torch==2.14.1, local wheel);
#   2. rnnfast built from a copy of the tracked sources with FORCE_CUDA=1 for
#      TORCH_CUDA_ARCH_LIST="8.0;9.0" with nvcc 13.0; ptxas -v output kept in
#      build/cuda-build.log and summarised in build/ptxas-report.txt; a register
#      spill fails the build (-Xptxas -warn-spills,-Werror in setup.py, and checked
#      again here);
#   3. `import rnnfast` works without a GPU and the CUDA kernels are registered;
#   4. in that build, the emulated-CUDA tests pass and the GPU-only tests and GPU
#      benchmark skip cleanly.
#
#   bash .ci/cuda.sh        # ~10 min on 2 cores; RNNFAST_CI_CUDA_VENV to reuse a venv
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export MAX_JOBS="${MAX_JOBS:-2}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
VENV="${RNNFAST_CI_CUDA_VENV:-$ROOT/.venv-ci-cuda}"
SRC="$ROOT/build/cuda-src"
LOG="$ROOT/build/cuda-build.log"
REPORT="$ROOT/build/ptxas-report.txt"
t0=$SECONDS
step() { echo; echo "=== [cuda $((SECONDS - t0))s] $*"; }

step "venv with the CUDA build of torch ($VENV)"
command -v nvcc > /dev/null || { echo "nvcc not found (CUDA_HOME=$CUDA_HOME)"; exit 1; }
nvcc --version | tail -n 2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.14.1 ninja setuptools wheel numpy pytest \
  expecttest pytest-benchmark
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'GPU available:', torch.cuda.is_available())"

step "build with FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (log: $LOG)"
rm -rf "$SRC"
mkdir -p "$SRC"
git ls-files -z | xargs -0 cp --parents -t "$SRC"
if ! (cd "$SRC" && FORCE_CUDA=1 "$VENV/bin/python" -m pip install --no-build-isolation --no-deps \
      -v . > "$LOG" 2>&1); then
  grep -nE "error|warning|spill" "$LOG" | head -n 60
  tail -n 40 "$LOG"
  exit 1
fi

step "ptxas resources per kernel ($REPORT)"
# ptxas -v prints, per kernel and architecture: "Compiling entry function '<mangled>' for
# 'sm_XX'", then "Used N registers, ... bytes smem ..." and the spill counts.
"$VENV/bin/python" "$ROOT/.ci/ptxas_report.py" "$LOG" > "$REPORT"
cat "$REPORT"

step "import without a GPU; CUDA kernels registered"
cd "$(mktemp -d)"  # not the source tree: import the installed build
"$VENV/bin/python" - <<'EOF'
import torch
import rnnfast
info = rnnfast.build_info()
print(info)
assert info["cuda"] and "8.0" in info["cuda_archs"] and "9.0" in info["cuda_archs"], info
ops = ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward",
       "rnn_backward", "lstm_options_forward", "lstm_options_backward", "gru_options_forward",
       "gru_options_backward")
for op in ops:
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rnnfast::{op}", "CUDA"), op
print(f"CUDA kernels registered for all {len(ops)} operators")
EOF

step "emulated-CUDA tests in the CUDA build; GPU tests and GPU benchmark skip cleanly"
"$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/test_cuda_emulated.py" \
  "$ROOT/tests/test_options_cuda_emulated.py" "$ROOT/tests/test_persistent_emulated.py" \
  "$ROOT/tests/test_cuda_device.py" "$ROOT/tests/test_simt_rules.py" -rs 2>&1 | tail -n 8
# The bench package (python -m bench, pytest bench) runs from a temporary directory holding a
# copy of bench/ only: from the source tree, its rnnfast/ would shadow the installed CUDA build.
BENCH_RUN="$(mktemp -d)"
(cd "$ROOT" && git ls-files -z bench | xargs -0 cp --parents -t "$BENCH_RUN")
cd "$BENCH_RUN"
RNNFAST_BENCH_DEVICE=cuda RNNFAST_BENCH_QUICK=1 "$VENV/bin/pytest" -q -p no:cacheprovider \
  bench -rs 2>&1 | tail -n 4
"$VENV/bin/python" -m bench --device cuda --quick

step "done in $((SECONDS - t0))s"
