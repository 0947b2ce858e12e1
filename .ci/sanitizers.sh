#!/usr/bin/env bash
# Build rnnfast's C++ core and C++ tests with AddressSanitizer + UndefinedBehaviorSanitizer
# and run them with ctest; then, after a self-test that a planted error is caught, run every
# CPU operator (.ci/sanitizer_ops.py) from Python against the sanitized library. Any
# sanitizer finding fails the run (non-zero exit). Logs: build/asan.log, build/asan-canary.log.
#
#   bash .ci/sanitizers.sh            # in any environment where `python -c 'import torch'` works
#
# Environment:
#   MAX_JOBS           parallel compile jobs (default 2)
#   RNNFAST_ASAN_DIR   build directory (default build/asan)
#   PYTHON             python with torch installed (default: python)
#
# The CMake option RNNFAST_SANITIZE (CMakeLists.txt) adds -fsanitize=address,undefined
# -fno-omit-frame-pointer to librnnfast and, being PUBLIC, to every test binary linked with
# it, so the sanitizer runtimes come first in each test process. libtorch itself is not
# instrumented: ASan still checks every access made by rnnfast's code (including to buffers
# libtorch allocated, since ASan intercepts malloc/free process-wide), not accesses made
# inside libtorch/MKL.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export MAX_JOBS="${MAX_JOBS:-2}"
BUILD="${RNNFAST_ASAN_DIR:-build/asan}"
t0=$SECONDS
step() { echo; echo "=== [sanitizers $((SECONDS - t0))s] $*"; }

step "configure ($BUILD, -DRNNFAST_SANITIZE=address,undefined)"
PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
cmake -S . -B "$BUILD" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRNNFAST_SANITIZE=address,undefined -DRNNFAST_BUILD_TESTS=ON > "$BUILD.log" 2>&1 \
  || { cat "$BUILD.log"; exit 1; }

step "build (-j $MAX_JOBS)"
cmake --build "$BUILD" -j "$MAX_JOBS" >> "$BUILD.log" 2>&1 || { tail -n 80 "$BUILD.log"; exit 1; }

step "ctest under ASan + UBSan"
# Any report is fatal: halt_on_error=1 for both; UBSan's checks are compiled recoverable
# (GCC's default), halt_on_error=1 turns the first report into an exit with status 1.
# detect_leaks=1: LeakSanitizer runs at exit of each C++ test. No suppressions are needed
# at the time of writing (libtorch's process-lifetime allocations stay reachable from
# globals, which LSan does not report); if a future test binary needs some, add
# .ci/lsan.supp and LSAN_OPTIONS=suppressions=... here, naming libtorch functions only.
export ASAN_OPTIONS="halt_on_error=1:exitcode=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1:print_summary=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=1"
# Two threads, so that the multi-threaded step loop (OpenMP parallel region, barriers) runs.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ctest --test-dir "$BUILD" --output-on-failure

# Every operator (LSTM, GRU, RNN; forward and backward) from Python: the sanitized
# librnnfast.so loaded into a plain torch process. The sanitizer runtimes must be loaded
# before anything else, hence LD_PRELOAD. detect_leaks=0 here: CPython does not free its
# own and its extensions' memory at exit by design, so LSan would only report the
# interpreter.
ASAN_RT="$(${CXX:-g++} -print-file-name=libasan.so)"
UBSAN_RT="$(${CXX:-g++} -print-file-name=libubsan.so)"
PY_ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}"

step "sanitizer self-test: a poisoned read inside rnnfast must be reported and fail"
# (The generic kernel set: its pointwise passes read b_hh with plain loads, which ASan
# instruments; the AVX-512 set's masked vector loads are intrinsics ASan does not see.)
if RNNFAST_CPU_ISA=generic ASAN_OPTIONS="$PY_ASAN_OPTIONS" LD_PRELOAD="$ASAN_RT $UBSAN_RT" "$PYTHON" -W ignore \
    .ci/sanitizer_ops.py "$BUILD/librnnfast.so" --canary > "$BUILD-canary.log" 2>&1; then
  cat "$BUILD-canary.log"; echo "the canary ran clean: the sanitizers are not active"; exit 1
fi
grep -q "AddressSanitizer: use-after-poison" "$BUILD-canary.log" \
  || { cat "$BUILD-canary.log"; echo "the canary failed without an ASan report"; exit 1; }
echo "canary reported as expected"

step "every operator from Python under ASan + UBSan"
ASAN_OPTIONS="$PY_ASAN_OPTIONS" LD_PRELOAD="$ASAN_RT $UBSAN_RT" "$PYTHON" -W ignore \
  .ci/sanitizer_ops.py "$BUILD/librnnfast.so" "$BUILD/librnnfast_simt_emu.so"

step "done in $((SECONDS - t0))s: no sanitizer findings"
