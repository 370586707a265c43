#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Regenerates include/engram/vocab/unicode_patch.hpp from tests/data/tokenizers/unicode_keys.txt
# (the Hugging Face library's per-character normalisation, scripts/unicode-keys.js) and the
# installed utf8proc. Usage: scripts/make-unicode-patch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/unicode-patch.XXXXXX")
trap 'rm -rf "$work"' EXIT
"${CXX:-g++}" -std=c++20 -O2 -Iinclude scripts/unicode-patch.cpp -o "$work/unicode-patch" -lutf8proc
"$work/unicode-patch" tests/data/tokenizers/unicode_keys.txt "$work/unicode_patch.hpp"
mv "$work/unicode_patch.hpp" include/engram/vocab/unicode_patch.hpp
if command -v clang-format >/dev/null 2>&1; then clang-format -i include/engram/vocab/unicode_patch.hpp; fi
