#pragma once
// SPDX-License-Identifier: MIT
// Scalar types shared by the whole library.

#include <engram/config.hpp>

#include <cstdint> // for int64_t

ENGRAM_BEGIN_NAMESPACE

/// A token id, raw (tokenizer) or canonical; int64 as in the PyTorch reference.
using token_id = std::int64_t;

/// A row index into a layer's embedding table (offset of the head + hash of the window).
using row_id = std::int64_t;

namespace detail {
/// 128-bit unsigned arithmetic (GCC and Clang); `__extension__` keeps -Wpedantic quiet.
__extension__ typedef unsigned __int128 uint128;
} // namespace detail

ENGRAM_END_NAMESPACE
