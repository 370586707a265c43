#!/usr/bin/env bash
# Runs the NumPy/PyTorch peers and (if built) `engram bench --json`, then prints the ratios.
#   bench/peers/run_peers.sh [--json FILE]     (FILE: peer results; FILE.ratios.json: both sides + ratios)
# Env: ENGRAM (default build-bench/bin/engram from scripts/bench.sh, else build/bin/engram), PEER_THREADS (default 1,2), PEER_REPS (default 5).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

json_out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json_out="$2"; shift 2 ;;
        *) echo "usage: $0 [--json FILE]" >&2; exit 2 ;;
    esac
done

# Debian's interpreter: the python3 on PATH may be a pyenv build without these packages.
PY=/usr/bin/python3
peer_packages=(python3-numpy python3-torch libopenblas0-pthread)
missing=()
for p in "${peer_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "peers: installing missing Debian packages: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "peers: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== check: the peers reproduce the golden vectors"
"$PY" "$here/engram_peer.py" check

peer_json="${json_out:-$(mktemp /tmp/engram-peers-XXXXXX.json)}"
echo "== peers (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset for the timing)"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" "$here/engram_peer.py" bench \
    --threads "${PEER_THREADS:-1,2}" --reps "${PEER_REPS:-5}" --json "$peer_json"

# Default: the binary scripts/bench.sh builds (-march=native), else the plain build's.
if [ -z "${ENGRAM:-}" ]; then
    ENGRAM=build-bench/bin/engram
    [ -x "$ENGRAM" ] || ENGRAM=build/bin/engram
fi
ours_json="$(mktemp /tmp/engram-bench-XXXXXX.json)"
rm -f "$ours_json"
echo "== engram (C++): $ENGRAM bench --json $ours_json"
if [ ! -x "$ENGRAM" ]; then
    echo "engram binary '$ENGRAM' not found: peer numbers only (see $peer_json)."
    exit 0
fi
if ! "$ENGRAM" bench --json "$ours_json" || [ ! -s "$ours_json" ]; then
    echo "engram bench --json failed or wrote no JSON: peer numbers only (see $peer_json)."
    exit 0
fi
cat "$ours_json"; echo
"$PY" "$here/engram_peer.py" compare "$peer_json" "$ours_json" ${json_out:+--json "$json_out.ratios.json"}
