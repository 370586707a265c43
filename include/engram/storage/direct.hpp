#pragma once
// SPDX-License-Identifier: MIT
// The gather shared by tables whose rows sit in addressable memory (dense, mmap).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/codec.hpp>
#include <engram/types.hpp>

#include <cstddef> // for byte, size_t
#include <cstdint> // for uint64_t
#include <span>    // for span
#include <string>  // for to_string

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// Throws input_error unless `out` holds ids.size() x dim values and every id is a row.
inline void check_gather(std::span<const row_id> ids, std::size_t n_rows, std::size_t dim, std::size_t out_size) {
    std::size_t need = 0;
    if (__builtin_mul_overflow(ids.size(), dim, &need) || out_size != need)
        throw input_error("gather: output has " + std::to_string(out_size) + " values, expected rows x dim = " +
                          std::to_string(ids.size()) + " x " + std::to_string(dim));
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(ids[i]) >= n_rows))
            throw input_error("gather: row id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                              " is outside [0, " + std::to_string(n_rows) + ")");
}

/// Decodes rows of a table stored contiguously at `base` (`stride` bytes per row).
/// Random rows miss every cache level: the loop asks for the row `ahead` positions later so that
/// several DRAM (or page-cache) reads are in flight while the current row is decoded.
template <row_codec Codec>
void gather_direct(const std::byte* base, std::size_t stride, std::size_t n_rows, std::size_t dim,
                   std::span<const row_id> ids, std::span<float> out) {
    check_gather(ids, n_rows, dim, out.size());
    constexpr std::size_t ahead = 8;
    const std::size_t bytes = Codec::row_bytes(dim);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i + ahead < ids.size()) {
            const std::byte* next = base + static_cast<std::size_t>(ids[i + ahead]) * stride;
            for (std::size_t line = 0; line < bytes; line += 64) __builtin_prefetch(next + line);
        }
        Codec::decode(base + static_cast<std::size_t>(ids[i]) * stride, out.data() + i * dim, dim);
    }
}

} // namespace detail

ENGRAM_END_NAMESPACE
