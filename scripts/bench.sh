#!/usr/bin/env bash
# The main job: builds the benchmarks and runs the lookup micro-benchmarks (hashing and dense
# gather) at the reference default configuration. Extra arguments go to Google Benchmark,
# e.g. --benchmark_filter=gather. Usage: scripts/bench.sh [BENCHMARK_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
engram_install_deps
build=build-bench
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_EXAMPLES=OFF \
      -DENGRAM_BUILD_TOOLS=OFF -DENGRAM_BUILD_BENCHMARKS=ON
cmake --build "$build" -j"$(engram_jobs)" --target bench_hash bench_gather
echo "== hashing (reference default: N = 3, K = 8, 16 heads) =="
"$build/bin/bench_hash" "$@"
echo "== dense gather (10,344,164 rows x 64, 16 rows per token) =="
"$build/bin/bench_gather" "$@"
