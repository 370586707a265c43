#pragma once
// SPDX-License-Identifier: MIT
// The gather shared by tables whose rows sit in addressable memory (dense, mmap, sharded).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/decode_avx512.hpp>
#include <engram/types.hpp>

#include <cstddef> // for byte, size_t
#include <cstdint> // for uint64_t, uintptr_t
#include <span>    // for span
#include <string>  // for to_string

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// Throws input_error unless `out` holds ids.size() x dim values and every id is a row.
inline void check_gather(std::span<const row_id> ids, std::size_t n_rows, std::size_t dim, std::size_t out_size) {
    std::size_t need = 0;
    if (__builtin_mul_overflow(ids.size(), dim, &need) || out_size != need)
        throw input_error("gather: output has " + std::to_string(out_size) +
                          " values, expected rows x dim = " + std::to_string(ids.size()) + " x " + std::to_string(dim));
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(ids[i]) >= n_rows))
            throw input_error("gather: row id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                              " is outside [0, " + std::to_string(n_rows) + ")");
}

/// Rows between the one being decoded and the one being prefetched. Random rows miss every
/// cache level; this keeps that many DRAM (or page-cache) reads in flight (8 to 32 measured
/// the same on a 2-core AMD EPYC VM).
inline constexpr std::size_t gather_ahead = 16;

/// Prefetches every cache line that the `bytes` bytes at `p` touch (a row of 66 or 68 bytes,
/// e.g. fp8 or int8 with its scale, spans three lines when it starts near a line's end).
ENGRAM_ALWAYS_INLINE void prefetch_row(const std::byte* p, std::size_t bytes) noexcept {
    const auto start = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t last = (start + bytes - 1) & ~std::uintptr_t{63};
    for (std::uintptr_t line = start & ~std::uintptr_t{63}; line <= last; line += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(line));
}

/// The row loop of every gather of addressable rows: row i (i < n) is at `row_at(i)`, has
/// `bytes` stored bytes and is decoded by `decode` into `out + i * dim`. Each row's address is
/// computed once, `gather_ahead` rows before its decode, when its lines are prefetched, and
/// kept in a ring until then (the first rows are prefetched before the loop: a row's decode is
/// too long for the CPU to reach the next row's load on its own).
template <class RowAt, class Decode>
ENGRAM_ALWAYS_INLINE void gather_rows_loop(RowAt& row_at, std::size_t n, std::size_t bytes, std::size_t dim, float* out,
                                           Decode decode) noexcept {
    static_assert((gather_ahead & (gather_ahead - 1)) == 0, "the ring index is a mask");
    const std::byte* ring[gather_ahead] = {};
    const std::size_t first = n < gather_ahead ? n : gather_ahead;
    for (std::size_t i = 0; i < first; ++i) {
        ring[i] = row_at(i);
        prefetch_row(ring[i], bytes);
    }
    for (std::size_t i = 0; i < n; ++i) {
        const std::byte* row = ring[i & (gather_ahead - 1)];
        if (i + gather_ahead < n) {
            const std::byte* next = row_at(i + gather_ahead);
            prefetch_row(next, bytes);
            ring[i & (gather_ahead - 1)] = next;
        }
        decode(row, out + i * dim, dim);
    }
}

/// The codec's own row decode as a function object.
template <row_codec Codec>
struct plain_decode {
    ENGRAM_ALWAYS_INLINE void operator()(const std::byte* row, float* out, std::size_t dim) const noexcept {
        Codec::decode(row, out, dim);
    }
};

/// gather_rows_loop with the codec's own decode.
template <row_codec Codec, class RowAt>
void gather_rows_at_plain(RowAt& row_at, std::size_t n, std::size_t dim, float* out) noexcept {
    gather_rows_loop(row_at, n, Codec::row_bytes(dim), dim, out, plain_decode<Codec>{});
}

#if ENGRAM_DETAIL_GATHER_AVX512
/// The codec's AVX-512 row decode as a function object (see avx512_decoder). Not always_inline:
/// gather_rows_loop's own body (compiled without the AVX-512 target) cannot take it; it is
/// inlined once that loop is inlined into gather_rows_at_avx512 (flatten).
template <row_codec Codec>
struct avx512_decode {
    ENGRAM_DETAIL_AVX512_TARGET void operator()(const std::byte* row, float* out, std::size_t dim) const noexcept {
        avx512_decoder<Codec>::decode(row, out, dim);
    }
};

/// gather_rows_loop with the codec's AVX-512 decode inlined (the codec's own decode is compiled
/// for the baseline x86-64 and, with its aliasing checks per row, is slower than the row reads
/// it waits for). Only where avx512_available().
template <row_codec Codec, class RowAt>
ENGRAM_DETAIL_AVX512_TARGET __attribute__((flatten)) void gather_rows_at_avx512(RowAt& row_at, std::size_t n,
                                                                                std::size_t dim, float* out) noexcept {
    gather_rows_loop(row_at, n, Codec::row_bytes(dim), dim, out, avx512_decode<Codec>{});
}
#endif

/// Decodes n rows, row i at `row_at(i)`, into `out` (n x dim values): with the codec's AVX-512
/// decode where it has one and the CPU runs it (checked at run time; the library needs no
/// -march), else with its own decode; the values are the same bit for bit either way. The
/// gather of dense, mmap and sharded tables.
template <row_codec Codec, class RowAt>
void gather_rows_at(RowAt&& row_at, std::size_t n, std::size_t dim, float* out) noexcept {
#if ENGRAM_DETAIL_GATHER_AVX512
    if constexpr (avx512_decoder<Codec>::exists) {
        if (avx512_available()) {
            gather_rows_at_avx512<Codec>(row_at, n, dim, out);
            return;
        }
    }
#endif
    gather_rows_at_plain<Codec>(row_at, n, dim, out);
}

/// The address of row `ids[i]` of a table stored contiguously at `base`, `stride` bytes a row.
struct strided_rows {
    const std::byte* base;
    std::size_t stride;
    std::span<const row_id> ids;
    ENGRAM_ALWAYS_INLINE const std::byte* operator()(std::size_t i) const noexcept {
        return base + static_cast<std::size_t>(ids[i]) * stride;
    }
};

/// Decodes rows `ids` of a table at `base` (`stride` bytes per row) into `out` with the
/// codec's own decode. The ids must be valid (see check_gather).
template <row_codec Codec>
void gather_rows_plain(const std::byte* base, std::size_t stride, std::size_t dim, std::span<const row_id> ids,
                       float* out) noexcept {
    strided_rows at{base, stride, ids};
    gather_rows_at_plain<Codec>(at, ids.size(), dim, out);
}

#if ENGRAM_DETAIL_GATHER_AVX512
/// gather_rows_plain with the codec's AVX-512 decode (only where avx512_available()).
template <row_codec Codec>
void gather_rows_avx512(const std::byte* base, std::size_t stride, std::size_t dim, std::span<const row_id> ids,
                        float* out) noexcept {
    strided_rows at{base, stride, ids};
    gather_rows_at_avx512<Codec>(at, ids.size(), dim, out);
}
#endif

/// Decodes rows of a table stored contiguously at `base` (`stride` bytes per row): checks the
/// ids, then decodes each row (see gather_rows_at).
template <row_codec Codec>
void gather_direct(const std::byte* base, std::size_t stride, std::size_t n_rows, std::size_t dim,
                   std::span<const row_id> ids, std::span<float> out) {
    check_gather(ids, n_rows, dim, out.size());
    gather_rows_at<Codec>(strided_rows{base, stride, ids}, ids.size(), dim, out.data());
}

} // namespace detail

ENGRAM_END_NAMESPACE
