#pragma once
// SPDX-License-Identifier: MIT
// Retrieval: gather rows by global row id into memory vectors [B, T, heads * d] (spec section 5).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/types.hpp>

#include <span> // for span

ENGRAM_BEGIN_NAMESPACE

/// @brief Decodes row `rows[i]` of `table` to `out[i * dim, (i + 1) * dim)`.
///
/// With `rows` shaped `[B, T, heads]` (global row ids: head offset + hash), `out` is the memory
/// vector `[B, T, heads * d]` of the reference: each token's heads concatenated in head order.
/// @throws input_error for a size mismatch or a row id outside `[0, table.rows())`; the ids
///         are all checked before anything is written.
template <storage_table Table>
void gather(const Table& table, std::span<const row_id> rows, std::span<float> out) {
    table.gather(rows, out);
}

ENGRAM_END_NAMESPACE
