#pragma once
// SPDX-License-Identifier: MIT
// f32 GEMM for the layer's projections on AVX-512: C [n, rows] = bias + A [n, cols] W^T. A
// panel of W (row-major, as loaded) is first packed into strips of 32 rows, column by column
// (16 x 16 transposes in registers); the kernel then keeps 8 tokens x 32 rows of accumulators in
// registers over all the columns, one broadcast of A and two loads of W per 16 multiply-adds.
// Chosen at run time (target attributes, no -march needed); `gemm_f32_available()` says whether
// this CPU runs it (the layer falls back to Eigen's GEMM otherwise).

#include <engram/config.hpp>
#include <engram/storage/row_types.hpp>

#include <algorithm> // for min
#include <cstddef>   // for size_t
#include <utility>   // for index_sequence

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(ENGRAM_DISABLE_X86_SIMD)
#define ENGRAM_GEMM_F32_X86 1
#include <immintrin.h>
#define ENGRAM_TARGET_F32GEMM __attribute__((target("avx512f,avx512bw,avx512vl")))
#else
#define ENGRAM_GEMM_F32_X86 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace kernels {

/// Rows per packed strip.
inline constexpr std::size_t f32_strip = 32;

/// @brief Whether `pack_f32_strips` and `gemm_f32_packed` can run on this CPU (AVX-512 F, BW, VL).
inline bool gemm_f32_available() noexcept {
#if ENGRAM_GEMM_F32_X86
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
               __builtin_cpu_supports("avx512vl") != 0;
    }();
    return yes;
#else
    return false;
#endif
}

#if ENGRAM_GEMM_F32_X86
namespace detail {

/// Transposes the 16 x 16 block in r (r[i] = row i) in place: afterwards r[j] = column j.
ENGRAM_TARGET_F32GEMM inline void transpose16(__m512 (&r)[16]) noexcept {
    // Zero-masked forms throughout: g++ 12 flags the unmasked ones' _mm512_undefined_*() as
    // maybe-uninitialized.
    constexpr auto all16 = static_cast<__mmask16>(0xFFFF);
    constexpr auto all8 = static_cast<__mmask8>(0xFF);
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) { // pairs of rows, 32-bit interleave within each 128-bit lane
        t[2 * i] = _mm512_maskz_unpacklo_ps(all16, r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_maskz_unpackhi_ps(all16, r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; ++g) { // groups of 4 rows, 64-bit interleave: u[4g + j] holds column 4L + j in lane L
        const auto a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const auto c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(all8, a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(all8, a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(all8, b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(all8, b, d));
    }
    for (int j = 0; j < 4; ++j) { // a 4 x 4 transpose of 128-bit lanes across the groups
        const __m512 v0 = _mm512_maskz_shuffle_f32x4(all16, u[j], u[4 + j], 0x88);
        const __m512 v1 = _mm512_maskz_shuffle_f32x4(all16, u[j], u[4 + j], 0xDD);
        const __m512 v2 = _mm512_maskz_shuffle_f32x4(all16, u[8 + j], u[12 + j], 0x88);
        const __m512 v3 = _mm512_maskz_shuffle_f32x4(all16, u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_maskz_shuffle_f32x4(all16, v0, v2, 0x88);
        r[8 + j] = _mm512_maskz_shuffle_f32x4(all16, v0, v2, 0xDD);
        r[4 + j] = _mm512_maskz_shuffle_f32x4(all16, v1, v3, 0x88);
        r[12 + j] = _mm512_maskz_shuffle_f32x4(all16, v1, v3, 0xDD);
    }
}

/// 16 values at p (`mask` selects them) as floats: loaded, or bf16 widened (exact).
ENGRAM_TARGET_F32GEMM inline __m512 load_as_f32(const float* p, __mmask16 mask) noexcept {
    return _mm512_maskz_loadu_ps(mask, p);
}
ENGRAM_TARGET_F32GEMM inline __m512 load_as_f32(const bfloat16* p, __mmask16 mask) noexcept {
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(all, _mm256_maskz_loadu_epi16(mask, p));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, wide, 16));
}

/// One strip: rows [0, nr) of w (row stride ldw), all `cols` columns, into out[c * 32 + row]
/// (rows past nr are zero).
template <class W>
ENGRAM_TARGET_F32GEMM inline void pack_strip(const W* w, std::size_t ldw, std::size_t nr, std::size_t cols,
                                             float* out) noexcept {
    for (std::size_t c0 = 0; c0 < cols; c0 += 16) {
        const std::size_t nc = std::min<std::size_t>(16, cols - c0);
        const auto cmask = static_cast<__mmask16>(nc == 16 ? 0xFFFFu : (1u << nc) - 1u);
        for (std::size_t half = 0; half < 2; ++half) {
            __m512 r[16];
            for (std::size_t i = 0; i < 16; ++i) {
                const std::size_t row = half * 16 + i;
                r[i] = row < nr ? load_as_f32(w + row * ldw + c0, cmask) : _mm512_setzero_ps();
            }
            transpose16(r);
            for (std::size_t j = 0; j < nc; ++j) _mm512_storeu_ps(out + (c0 + j) * f32_strip + half * 16, r[j]);
        }
    }
}

/// NT tokens x 32 rows over all columns, started from the bias; stores masked past the last row.
template <std::size_t NT>
ENGRAM_TARGET_F32GEMM inline void f32_tile(const float* ws, std::size_t cols, const float* a, std::size_t lda,
                                           const float* bias, float* c, std::size_t ldc, __mmask16 m0,
                                           __mmask16 m1) noexcept {
    __m512 acc0[NT], acc1[NT];
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    ENGRAM_UNROLL(16)
    for (std::size_t i = 0; i < NT; ++i) acc0[i] = b0, acc1[i] = b1;
    for (std::size_t k = 0; k < cols; ++k) {
        const __m512 w0 = _mm512_loadu_ps(ws + k * f32_strip), w1 = _mm512_loadu_ps(ws + k * f32_strip + 16);
        ENGRAM_UNROLL(16)
        for (std::size_t i = 0; i < NT; ++i) {
            const __m512 av = _mm512_set1_ps(a[i * lda + k]);
            acc0[i] = _mm512_fmadd_ps(w0, av, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(w1, av, acc1[i]);
        }
    }
    ENGRAM_UNROLL(16)
    for (std::size_t i = 0; i < NT; ++i) {
        _mm512_mask_storeu_ps(c + i * ldc, m0, acc0[i]);
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc1[i]);
    }
}

template <std::size_t... NT>
ENGRAM_TARGET_F32GEMM inline void f32_tile_n(std::size_t nt, const float* ws, std::size_t cols, const float* a,
                                             std::size_t lda, const float* bias, float* c, std::size_t ldc,
                                             __mmask16 m0, __mmask16 m1, std::index_sequence<NT...>) noexcept {
    ((nt == NT + 1 ? f32_tile<NT + 1>(ws, cols, a, lda, bias, c, ldc, m0, m1) : void()), ...);
}

/// Tokens per register tile: 2 x 8 accumulators (more measured slower here: the 8 broadcasts
/// and 2 loads per column already keep the load ports as busy as the FMA units).
inline constexpr std::size_t f32_tile_tokens = 8;

} // namespace detail
#endif // ENGRAM_GEMM_F32_X86

/// @brief Packs rows [0, rows) of the row-major `w` (row stride `ldw`; float, or bfloat16
///        widened exactly) and its `cols` columns into `out`: strips of 32 rows (the last padded
///        with zeros), each `cols` groups of 32 values, column by column. `out` holds
///        `ceil(rows / 32) * 32 * cols` floats. Requires `gemm_f32_available()`.
template <class W>
void pack_f32_strips(const W* w, std::size_t ldw, std::size_t rows, std::size_t cols, float* out) noexcept {
#if ENGRAM_GEMM_F32_X86
    for (std::size_t s = 0; s * f32_strip < rows; ++s)
        detail::pack_strip(w + s * f32_strip * ldw, ldw, std::min(f32_strip, rows - s * f32_strip), cols,
                           out + s * f32_strip * cols);
#else
    (void)w, (void)ldw, (void)rows, (void)cols, (void)out;
#endif
}

/// @brief C [n, rows] (row stride `ldc`) = bias [rows] + A W^T for the `rows` x `cols` weights
///        packed by `pack_f32_strips`, A [n, cols] (row stride `lda`). Each output is the bias
///        plus one fused multiply-add per column, in column order: the same bits for any split
///        of the rows (at strip boundaries) or of the tokens. Requires `gemm_f32_available()`.
inline void gemm_f32_packed(const float* packed, std::size_t rows, std::size_t cols, const float* a, std::size_t lda,
                            std::size_t n, const float* bias, float* c, std::size_t ldc) noexcept {
#if ENGRAM_GEMM_F32_X86
    constexpr std::size_t nt = detail::f32_tile_tokens;
    for (std::size_t s = 0; s * f32_strip < rows; ++s) {
        const std::size_t r0 = s * f32_strip, nr = std::min(f32_strip, rows - r0);
        const auto m0 = static_cast<__mmask16>(nr >= 16 ? 0xFFFFu : (1u << nr) - 1u);
        const auto m1 = static_cast<__mmask16>(nr <= 16 ? 0u : nr >= 32 ? 0xFFFFu : (1u << (nr - 16)) - 1u);
        const float* ws = packed + r0 * cols;
        std::size_t i = 0;
        for (; i + nt <= n; i += nt)
            detail::f32_tile<nt>(ws, cols, a + i * lda, lda, bias + r0, c + i * ldc + r0, ldc, m0, m1);
        if (i < n)
            detail::f32_tile_n(n - i, ws, cols, a + i * lda, lda, bias + r0, c + i * ldc + r0, ldc, m0, m1,
                               std::make_index_sequence<nt - 1>{});
    }
#else
    (void)packed, (void)rows, (void)cols, (void)a, (void)lda, (void)n, (void)bias, (void)c, (void)ldc;
#endif
}

} // namespace kernels

ENGRAM_END_NAMESPACE
