#!/usr/bin/env bash
# Runs the whole test suite on a Debian 12 machine: installs missing packages, configures
# (warnings are errors), builds, runs ctest. Usage: scripts/test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
engram_install_deps
build=${1:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENGRAM_WERROR=ON
cmake --build "$build" -j"$(engram_jobs)"
ctest --test-dir "$build" --output-on-failure -j"$(engram_jobs)"
