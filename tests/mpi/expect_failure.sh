#!/usr/bin/env bash
# Runs dist_failure MODE on 3 ranks and checks that the job ends, with a non-zero status and an
# error naming the failed rank, well before ctest's timeout (a hang is the failure we guard against).
# Usage: expect_failure.sh "MPIRUN ARGS..." DIST_FAILURE MODE  (MPIRUN ARGS: words or a CMake list)
set -uo pipefail
IFS='; ' read -r -a mpirun <<<"$1" # a CMake list or a shell word list
program=$2 mode=$3
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
timeout 90 "${mpirun[@]}" -np 3 "$program" "$mode" >"$log" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
cat "$log"
echo "expect_failure: $mode: mpirun exited with $rc after ${elapsed}s"
[ "$rc" -eq 124 ] && { echo "expect_failure: FAIL: the job hung (killed by timeout)"; exit 1; }
[ "$rc" -eq 0 ] && { echo "expect_failure: FAIL: the job succeeded"; exit 1; }
case "$mode" in
killed_rank) pattern='rank 1 .*(signal 9|Killed)|signal 9' ;;
one_rank_fails) pattern='dist_failure: error: rank 1: rank 1 could not read its input' ;;
*) echo "expect_failure: unknown mode $mode"; exit 2 ;;
esac
grep -Eq "$pattern" "$log" || { echo "expect_failure: FAIL: no message matching /$pattern/"; exit 1; }
echo "expect_failure: $mode: OK (the job ended with an error)"
