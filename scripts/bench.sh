#!/usr/bin/env bash
# The main job: builds the `engram` tool and runs `engram bench`, the reference default layer
# (10,344,164 x 64 f32 rows, H = 1024, M = 4) measured against its limits: hashing, gather (f32,
# bf16) vs a bare random-row probe, forward (B = 1, T = 512) vs a GEMM of the projections, a
# decode step vs weight bytes / read bandwidth (f32 and bf16 projection weights), the forward on 2
# threads. Built with ENGRAM_NATIVE=ON (-march=native): Eigen's GEMM needs AVX/FMA to run near
# the machine's limits. Arguments go to `engram bench`, e.g. --quick, --json FILE, --tokens FILE.
# Usage: scripts/bench.sh [--quick] [--json FILE] [--tokens FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
engram_install_deps
build=build-bench
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_EXAMPLES=OFF \
      -DENGRAM_BUILD_TOOLS=ON -DENGRAM_BUILD_BENCHMARKS=OFF -DENGRAM_NATIVE=ON
cmake --build "$build" -j"$(engram_jobs)" --target engram-cli
exec "$build/bin/engram" bench "$@"
