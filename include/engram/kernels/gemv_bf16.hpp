#pragma once
// SPDX-License-Identifier: MIT
// y = W x for bf16 or float weights W [rows, cols] (row-major) and float x, accumulated in float:
// the decode step's projection. An AVX-512 kernel (compiled with a target attribute, chosen at
// run time, no -march needed) and a portable fallback.

#include <engram/config.hpp>
#include <engram/storage/row_types.hpp>

#include <bit>     // for bit_cast
#include <cstddef> // for size_t
#include <cstdint> // for uint16_t, uint32_t

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ENGRAM_KERNELS_X86 1
#include <immintrin.h>
#else
#define ENGRAM_KERNELS_X86 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace kernels {

/// @brief Portable GEMV for float or bf16 weights: each row's dot product in 8 float lanes,
///        then summed.
template <class W>
void gemv_portable(const W* w, const float* x, float* y, std::size_t rows, std::size_t cols) noexcept {
    constexpr std::size_t lanes = 8;
    for (std::size_t r = 0; r < rows; ++r) {
        const W* wr = w + r * cols;
        float acc[lanes] = {};
        std::size_t c = 0;
        for (; c + lanes <= cols; c += lanes)
            for (std::size_t j = 0; j < lanes; ++j) acc[j] += to_float(wr[c + j]) * x[c + j];
        for (; c < cols; ++c) acc[0] += to_float(wr[c]) * x[c];
        float s = 0;
        for (float a : acc) s += a;
        y[r] = s;
    }
}

/// @brief Portable bf16 GEMV (the fallback of `gemv_bf16`).
inline void gemv_bf16_portable(const bfloat16* w, const float* x, float* y, std::size_t rows,
                               std::size_t cols) noexcept {
    gemv_portable(w, x, y, rows, cols);
}

#if ENGRAM_KERNELS_X86
namespace detail {

/// 16 bf16 values (at p, `mask` selects them) widened to float.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const bfloat16* p, __mmask16 mask) noexcept {
    const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
    // The zero-masked forms: g++ 12 flags the unmasked ones' _mm512_undefined_epi32() as
    // maybe-uninitialized.
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, raw), 16));
}

/// 16 floats at p (`mask` selects them).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const float* p, __mmask16 mask) noexcept {
    return _mm512_maskz_loadu_ps(mask, p);
}

/// The sum of the 16 lanes, with zero-masked shuffles only (g++ 12 flags the
/// _mm512_undefined_*() inside _mm512_reduce_add_ps and the unmasked shuffles and casts).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline float sum_lanes(__m512 v) noexcept {
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xEE)); // + lanes 8..15
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x01)); // + lanes 4..7
    v = _mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0x4E));       // + the other pair
    v = _mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0xB1));       // + the neighbour
    return _mm512_cvtss_f32(v);
}

/// AVX-512: four rows at a time share each load of x; two accumulators per row. `W` is bfloat16
/// (widened on load); float works too (gemv_f32 streams one row at a time instead).
template <class W>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void
gemv_avx512(const W* w, const float* x, float* y, std::size_t rows, std::size_t cols) noexcept {
    const std::size_t full = cols / 32 * 32;
    const std::size_t rest = cols - full;
    const auto mask_lo = static_cast<__mmask16>(rest >= 16 ? 0xFFFFu : (1u << rest) - 1u);
    const auto mask_hi = static_cast<__mmask16>(rest <= 16 ? 0u : (1u << (rest - 16)) - 1u);
    std::size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const W* w0 = w + r * cols;
        const W* w1 = w0 + cols;
        const W* w2 = w1 + cols;
        const W* w3 = w2 + cols;
        __m512 a0 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(),
               a2 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
        for (std::size_t c = 0; c < full; c += 32) {
            const __m512 xa = _mm512_loadu_ps(x + c), xb = _mm512_loadu_ps(x + c + 16);
            a0 = _mm512_fmadd_ps(load16(w0 + c, 0xFFFF), xa, a0);
            b0 = _mm512_fmadd_ps(load16(w0 + c + 16, 0xFFFF), xb, b0);
            a1 = _mm512_fmadd_ps(load16(w1 + c, 0xFFFF), xa, a1);
            b1 = _mm512_fmadd_ps(load16(w1 + c + 16, 0xFFFF), xb, b1);
            a2 = _mm512_fmadd_ps(load16(w2 + c, 0xFFFF), xa, a2);
            b2 = _mm512_fmadd_ps(load16(w2 + c + 16, 0xFFFF), xb, b2);
            a3 = _mm512_fmadd_ps(load16(w3 + c, 0xFFFF), xa, a3);
            b3 = _mm512_fmadd_ps(load16(w3 + c + 16, 0xFFFF), xb, b3);
        }
        if (rest != 0) {
            const __m512 xa = _mm512_maskz_loadu_ps(mask_lo, x + full);
            const __m512 xb = _mm512_maskz_loadu_ps(mask_hi, x + full + 16);
            a0 = _mm512_fmadd_ps(load16(w0 + full, mask_lo), xa, a0);
            b0 = _mm512_fmadd_ps(load16(w0 + full + 16, mask_hi), xb, b0);
            a1 = _mm512_fmadd_ps(load16(w1 + full, mask_lo), xa, a1);
            b1 = _mm512_fmadd_ps(load16(w1 + full + 16, mask_hi), xb, b1);
            a2 = _mm512_fmadd_ps(load16(w2 + full, mask_lo), xa, a2);
            b2 = _mm512_fmadd_ps(load16(w2 + full + 16, mask_hi), xb, b2);
            a3 = _mm512_fmadd_ps(load16(w3 + full, mask_lo), xa, a3);
            b3 = _mm512_fmadd_ps(load16(w3 + full + 16, mask_hi), xb, b3);
        }
        y[r] = sum_lanes(_mm512_add_ps(a0, b0));
        y[r + 1] = sum_lanes(_mm512_add_ps(a1, b1));
        y[r + 2] = sum_lanes(_mm512_add_ps(a2, b2));
        y[r + 3] = sum_lanes(_mm512_add_ps(a3, b3));
    }
    for (; r < rows; ++r) {
        const W* wr = w + r * cols;
        __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
        for (std::size_t c = 0; c < full; c += 32) {
            a = _mm512_fmadd_ps(load16(wr + c, 0xFFFF), _mm512_loadu_ps(x + c), a);
            b = _mm512_fmadd_ps(load16(wr + c + 16, 0xFFFF), _mm512_loadu_ps(x + c + 16), b);
        }
        if (rest != 0) {
            a = _mm512_fmadd_ps(load16(wr + full, mask_lo), _mm512_maskz_loadu_ps(mask_lo, x + full), a);
            b = _mm512_fmadd_ps(load16(wr + full + 16, mask_hi), _mm512_maskz_loadu_ps(mask_hi, x + full + 16), b);
        }
        y[r] = sum_lanes(_mm512_add_ps(a, b));
    }
}

/// AVX-512, float weights: eight rows at a time share each load of x, one accumulator each, and
/// each row's next 512 bytes are prefetched (eight sequential streams the prefetcher alone
/// keeps too few lines ahead of); the rows past a multiple of 8 one at a time; tails masked.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void
gemv_f32_avx512(const float* w, const float* x, float* y, std::size_t rows, std::size_t cols) noexcept {
    constexpr std::size_t group = 8, ahead = 128; // floats: 512 bytes
    const std::size_t full = cols / 16 * 16;
    const auto tail = static_cast<__mmask16>((1u << (cols - full)) - 1u);
    std::size_t r = 0;
    for (; r + group <= rows; r += group) {
        const float* wr = w + r * cols;
        __m512 acc[group];
        ENGRAM_UNROLL(8)
        for (auto& a : acc) a = _mm512_setzero_ps();
        for (std::size_t c = 0; c < full; c += 16) {
            const __m512 xv = _mm512_loadu_ps(x + c);
            ENGRAM_UNROLL(8)
            for (std::size_t i = 0; i < group; ++i) {
                _mm_prefetch(reinterpret_cast<const char*>(wr + i * cols + c + ahead), _MM_HINT_T0); // one line
                acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(wr + i * cols + c), xv, acc[i]);
            }
        }
        if (tail != 0) {
            const __m512 xv = _mm512_maskz_loadu_ps(tail, x + full);
            ENGRAM_UNROLL(8)
            for (std::size_t i = 0; i < group; ++i)
                acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, wr + i * cols + full), xv, acc[i]);
        }
        ENGRAM_UNROLL(8)
        for (std::size_t i = 0; i < group; ++i) y[r + i] = sum_lanes(acc[i]);
    }
    for (; r < rows; ++r) {
        const float* wr = w + r * cols;
        __m512 acc = _mm512_setzero_ps();
        for (std::size_t c = 0; c < full; c += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(wr + c), _mm512_loadu_ps(x + c), acc);
        if (tail != 0)
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, wr + full), _mm512_maskz_loadu_ps(tail, x + full), acc);
        y[r] = sum_lanes(acc);
    }
}

} // namespace detail
#endif

/// @brief Whether `gemv_bf16` runs the AVX-512 kernel on this CPU.
inline bool gemv_bf16_uses_avx512() noexcept {
#if ENGRAM_KERNELS_X86
    static const bool yes =
        __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return yes;
#else
    return false;
#endif
}

/// @brief y[r] = sum_c w[r, c] x[c] for bf16 `w` [rows, cols] row-major, float `x` [cols] and
///        `y` [rows]; float accumulation. AVX-512 where the CPU has it, else the portable loop.
inline void gemv_bf16(const bfloat16* w, const float* x, float* y, std::size_t rows, std::size_t cols) noexcept {
#if ENGRAM_KERNELS_X86
    if (gemv_bf16_uses_avx512()) {
        detail::gemv_avx512(w, x, y, rows, cols);
        return;
    }
#endif
    gemv_bf16_portable(w, x, y, rows, cols);
}

/// @brief y[r] = sum_c w[r, c] x[c] for float `w` [rows, cols] row-major: the AVX-512 kernel
///        (eight rows share each load of x, with prefetching; about OpenBLAS's sgemv speed
///        or better here) where the CPU has it, else 8 float lanes per row.
inline void gemv_f32(const float* w, const float* x, float* y, std::size_t rows, std::size_t cols) noexcept {
#if ENGRAM_KERNELS_X86
    if (gemv_bf16_uses_avx512()) {
        detail::gemv_f32_avx512(w, x, y, rows, cols);
        return;
    }
#endif
    gemv_portable(w, x, y, rows, cols);
}

/// @brief Widens `n` bf16 values to float (the forward's weight panels).
inline void widen_bf16(const bfloat16* src, float* dst, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(static_cast<std::uint32_t>(src[i].bits) << 16);
}

} // namespace kernels

ENGRAM_END_NAMESPACE
