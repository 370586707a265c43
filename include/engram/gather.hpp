#pragma once
// SPDX-License-Identifier: MIT
// Retrieval: gather rows by global row id into memory vectors [B, T, heads * d] (spec section 5).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>

#include <bit>         // for bit_cast
#include <cstddef>     // for size_t
#include <cstdint>     // for uint64_t
#include <cstring>     // for memcpy
#include <span>        // for span
#include <string>      // for to_string
#include <type_traits> // for is_same_v

ENGRAM_BEGIN_NAMESPACE

/// @brief Copies row `rows[i]` of `table` to `out[i * dim, (i + 1) * dim)`, widening to float.
///
/// With `rows` shaped `[B, T, heads]` (global row ids: head offset + hash), `out` is the memory
/// vector `[B, T, heads * d]` of the reference: each token's heads concatenated in head order.
/// @throws input_error for a size mismatch or a row id outside `[0, table.rows())`; the ids
///         are all checked before anything is written.
template <storage_table Table, class Out = float>
void gather(const Table& table, std::span<const row_id> rows, std::span<Out> out) {
    using V = typename Table::value_type;
    const std::size_t dim = table.dim();
    std::size_t need = 0;
    if (__builtin_mul_overflow(rows.size(), dim, &need) || out.size() != need)
        throw input_error("gather: output has " + std::to_string(out.size()) + " values, expected rows x dim = " +
                          std::to_string(rows.size()) + " x " + std::to_string(dim));
    const auto n_rows = static_cast<std::uint64_t>(table.rows());
    for (std::size_t i = 0; i < rows.size(); ++i)
        if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(rows[i]) >= n_rows))
            throw input_error("gather: row id " + std::to_string(rows[i]) + " at position " + std::to_string(i) +
                              " is outside [0, " + std::to_string(n_rows) + ")");
    // Random rows miss every cache level: ask for a few rows ahead so that several DRAM reads
    // are in flight while the current one is copied.
    constexpr std::size_t ahead = 8;
    for (std::size_t i = 0; i < rows.size(); ++i) {
        if (i + ahead < rows.size()) {
            const auto* next = table.row(static_cast<std::size_t>(rows[i + ahead])).data();
            __builtin_prefetch(next);
            if (dim * sizeof(V) > 64) __builtin_prefetch(reinterpret_cast<const char*>(next) + 64);
        }
        const auto src = table.row(static_cast<std::size_t>(rows[i]));
        Out* dst = out.data() + i * dim;
        if constexpr (std::is_same_v<V, Out>) {
            std::memcpy(dst, src.data(), dim * sizeof(V));
        } else if constexpr (std::is_same_v<V, bfloat16> && std::is_same_v<Out, float>) {
            // bf16 -> f32 is a 16-bit shift; on raw integers the loop vectorises.
            const bfloat16* in = src.data();
            for (std::size_t c = 0; c < dim; ++c)
                dst[c] = std::bit_cast<float>(static_cast<std::uint32_t>(in[c].bits) << 16);
        } else {
            for (std::size_t c = 0; c < dim; ++c) dst[c] = static_cast<Out>(to_float(src[c]));
        }
    }
}

ENGRAM_END_NAMESPACE
