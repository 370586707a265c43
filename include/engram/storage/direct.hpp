#pragma once
// SPDX-License-Identifier: MIT
// The gather shared by tables whose rows sit in addressable memory (dense, mmap).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/codec.hpp>
#include <engram/types.hpp>

#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint64_t
#include <span>        // for span
#include <string>      // for to_string
#include <type_traits> // for is_same_v

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ENGRAM_DETAIL_GATHER_AVX512 1
#define ENGRAM_DETAIL_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#else
#define ENGRAM_DETAIL_GATHER_AVX512 0
#endif

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

/// Prefetches every cache line of the `bytes` bytes at `p`.
ENGRAM_ALWAYS_INLINE void prefetch_row(const std::byte* p, std::size_t bytes) noexcept {
    for (std::size_t line = 0; line < bytes; line += 64) __builtin_prefetch(p + line);
}

/// Prefetches the first min(n, gather_ahead) rows: the main loops prefetch `gather_ahead` rows
/// ahead of the one they decode, so without this the first rows (all of a small batch) would be
/// read one after the other (a row's decode is too long for the CPU to reach the next row's
/// load on its own).
ENGRAM_ALWAYS_INLINE void prefetch_first_rows(const std::byte* base, std::size_t stride, std::size_t bytes,
                                              std::span<const row_id> ids) noexcept {
    const std::size_t n = ids.size() < gather_ahead ? ids.size() : gather_ahead;
    for (std::size_t i = 0; i < n; ++i) prefetch_row(base + static_cast<std::size_t>(ids[i]) * stride, bytes);
}

/// Decodes rows `ids` of a table at `base` (`stride` bytes per row) into `out` with the
/// codec's own decode. The ids must be valid (see check_gather).
template <row_codec Codec>
void gather_rows_plain(const std::byte* base, std::size_t stride, std::size_t dim, std::span<const row_id> ids,
                       float* out) noexcept {
    const std::size_t bytes = Codec::row_bytes(dim), n = ids.size();
    prefetch_first_rows(base, stride, bytes, ids);
    for (std::size_t i = 0; i < n; ++i) {
        if (i + gather_ahead < n) prefetch_row(base + static_cast<std::size_t>(ids[i + gather_ahead]) * stride, bytes);
        Codec::decode(base + static_cast<std::size_t>(ids[i]) * stride, out + i * dim, dim);
    }
}

#if ENGRAM_DETAIL_GATHER_AVX512

/// True when the CPU (and OS) run AVX-512 F, BW and VL, which the bf16 gather below uses.
inline bool avx512_available() noexcept {
    static const bool ok = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    }();
    return ok;
}

/// The 16 bfloat16 values of `h` widened to float (exact: a 16-bit shift). The masked forms
/// avoid g++ 12's false -Wmaybe-uninitialized inside the unmasked intrinsics.
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE __m512 bf16x16_to_f32(__m256i h) noexcept {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, h), 16));
}

/// gather_rows_plain for bf16 rows on AVX-512: 16 values widened per load and store (the last
/// partial vector of a row masked). The codec's decode is compiled for the baseline x86-64
/// (SSE2) and, with its aliasing checks per row, is slower than the row reads it waits for.
ENGRAM_DETAIL_AVX512_TARGET inline void gather_rows_bf16_avx512(const std::byte* base, std::size_t stride,
                                                                std::size_t dim, std::span<const row_id> ids,
                                                                float* out) noexcept {
    const std::size_t bytes = bf16_codec::row_bytes(dim), n = ids.size();
    const std::size_t full = dim / 16 * 16;
    const auto tail = static_cast<__mmask16>((1u << (dim - full)) - 1u);
    prefetch_first_rows(base, stride, bytes, ids);
    for (std::size_t i = 0; i < n; ++i) {
        if (i + gather_ahead < n) prefetch_row(base + static_cast<std::size_t>(ids[i + gather_ahead]) * stride, bytes);
        const std::byte* row = base + static_cast<std::size_t>(ids[i]) * stride;
        float* dst = out + i * dim;
        for (std::size_t k = 0; k < full; k += 16)
            _mm512_storeu_ps(dst + k,
                             bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k))));
        if (tail != 0)
            _mm512_mask_storeu_ps(dst + full, tail, bf16x16_to_f32(_mm256_maskz_loadu_epi16(tail, row + 2 * full)));
    }
}

#else

inline bool avx512_available() noexcept { return false; }

#endif

/// Decodes rows of a table stored contiguously at `base` (`stride` bytes per row): checks the
/// ids, then decodes each row, prefetching `gather_ahead` rows ahead; bf16 rows are widened with
/// AVX-512 when the CPU has it (checked at run time; the library needs no -march). The values
/// are the same bit for bit either way.
template <row_codec Codec>
void gather_direct(const std::byte* base, std::size_t stride, std::size_t n_rows, std::size_t dim,
                   std::span<const row_id> ids, std::span<float> out) {
    check_gather(ids, n_rows, dim, out.size());
#if ENGRAM_DETAIL_GATHER_AVX512
    if constexpr (std::is_same_v<Codec, bf16_codec>) {
        if (avx512_available()) {
            gather_rows_bf16_avx512(base, stride, dim, ids, out.data());
            return;
        }
    }
#endif
    gather_rows_plain<Codec>(base, stride, dim, ids, out.data());
}

} // namespace detail

ENGRAM_END_NAMESPACE
