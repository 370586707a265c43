#!/usr/bin/env bash
# `engram forward CASE -o OUT --storage mpi` under mpirun -np N gives the same output file as
# the dense run: the demo case from its own rows and from a packed table file (bf16, 3 shards,
# split by rows and by head), and the DeepSeek-V4.1 case from its FP8 tensors.
# Usage: cli_forward.sh "MPIRUN ARGS..." N ENGRAM DATA_DIR
set -euo pipefail
IFS='; ' read -r -a mpirun <<<"$1" # a CMake list or a shell word list
np=$2 engram=$3 data=$4
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
same() { # the output tensors, byte for byte (the files' metadata may name the storage)
    cmp "$1" "$2" || { echo "cli_forward: FAIL: $1 differs from $2"; exit 1; }
}
demo=$data/forward_small.safetensors
v41=$data/v41_case.safetensors
"$engram" pack "$demo" -o "$dir/t.safetensors" --codec bf16 --shards 3 >/dev/null
"$engram" forward "$demo" -o "$dir/dense.safetensors" >/dev/null
"$engram" forward "$demo" -o "$dir/table.safetensors" --table "$dir/t.safetensors" >/dev/null
"${mpirun[@]}" -np "$np" "$engram" forward "$demo" -o "$dir/mpi.safetensors" --storage mpi
same "$dir/dense.safetensors" "$dir/mpi.safetensors"
"${mpirun[@]}" -np "$np" "$engram" forward "$demo" -o "$dir/mpi_table.safetensors" --table "$dir/t.safetensors" --storage mpi
same "$dir/table.safetensors" "$dir/mpi_table.safetensors"
"${mpirun[@]}" -np "$np" "$engram" forward "$demo" -o "$dir/mpi_heads.safetensors" --table "$dir/t.safetensors" --storage mpi:heads
same "$dir/table.safetensors" "$dir/mpi_heads.safetensors"
"$engram" forward "$v41" -o "$dir/v41.safetensors" >/dev/null
"${mpirun[@]}" -np "$np" "$engram" forward "$v41" -o "$dir/v41_mpi.safetensors" --storage mpi
same "$dir/v41.safetensors" "$dir/v41_mpi.safetensors"
# A missing shard: every rank fails with one line, the job exits non-zero, nothing is written.
mv "$dir/t.shard1.safetensors" "$dir/away"
if "${mpirun[@]}" -np "$np" "$engram" forward "$demo" -o "$dir/bad.safetensors" --table "$dir/t.safetensors" \
    --storage mpi >"$dir/log" 2>&1; then
    echo "cli_forward: FAIL: a missing shard was not noticed"; cat "$dir/log"; exit 1
fi
cat "$dir/log"
grep -q "engram forward: error: .*shard 1" "$dir/log" || { echo "cli_forward: FAIL: no error naming shard 1"; exit 1; }
[ ! -e "$dir/bad.safetensors" ] || { echo "cli_forward: FAIL: an output was written"; exit 1; }
echo "cli_forward: OK on $np ranks"
