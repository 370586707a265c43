#!/usr/bin/env bash
# Runs the whole test suite on a Debian 12 machine: installs missing packages, configures
# (warnings are errors), builds, runs ctest.
# Usage: scripts/test.sh [--sanitize LIST] [--label LABEL] [--target TARGET] [BUILD_DIR]
#   --sanitize LIST  build engram's executables with -fsanitize=LIST (address,undefined or
#                    thread; undefined behaviour is fatal) and skip what sanitizers do not
#                    check: benchmarks, examples, the header/consumer/compile-fail builds
#   --label LABEL    run only the ctest tests with this label (e.g. concurrency)
#   --target TARGET  build only this target (e.g. test_concurrency) instead of everything
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

sanitize="" label="" target=""
while [ $# -gt 0 ]; do
    case "$1" in
    --sanitize) sanitize="$2"; shift 2 ;;
    --label) label="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "scripts/test.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
build=${1:-build}

engram_install_deps
config=(-DCMAKE_BUILD_TYPE=Release -DENGRAM_WERROR=ON)
ctest_args=(--output-on-failure -j"$(engram_jobs)")
if [ -n "$sanitize" ]; then
    # -O1: instrumented -O3 (with UBSan's checks) takes about 2.4x longer to compile.
    config+=(-DENGRAM_SANITIZE="$sanitize" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DENGRAM_BUILD_BENCHMARKS=OFF
             -DENGRAM_BUILD_EXAMPLES=OFF)
    ctest_args+=(-LE 'packaging|compile') # build checks, nothing runs
    # Fail on the first report, with stacks. ASan: leaks count. TSan: report every race once.
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"
fi
# The CUDA backend is built and its tests run (GPU cases skip without a device) where nvcc is
# present; not under the sanitizers (nvcc's device code is not instrumented).
nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
if [ -n "$nvcc" ] && [ -z "$sanitize" ]; then
    config+=(-DENGRAM_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
else
    config+=(-DENGRAM_CUDA=OFF)
fi
# The MPI distributed storage (engram::mpi) is built and its tests run under mpirun where MPI is
# installed (scripts/deps.sh installs OpenMPI); under ASan too (OpenMPI's own leaks are
# suppressed, tests/mpi/lsan.supp), not under TSan (OpenMPI's progress threads are not
# instrumented).
if command -v mpicxx >/dev/null && command -v mpirun >/dev/null && [[ "$sanitize" != *thread* ]]; then
    config+=(-DENGRAM_MPI=ON)
else
    config+=(-DENGRAM_MPI=OFF)
fi
[ -n "$label" ] && ctest_args+=(-L "$label")
cmake -S . -B "$build" "${config[@]}"
if [ -n "$target" ]; then
    cmake --build "$build" -j"$(engram_jobs)" --target "$target"
else
    cmake --build "$build" -j"$(engram_jobs)"
fi
ctest --test-dir "$build" "${ctest_args[@]}"
