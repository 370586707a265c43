#pragma once
// SPDX-License-Identifier: MIT
// Small loops of the layer's non-GEMM work: sums in 8 independent double lanes (float products
// are exact in double), and an exp/SiLU with no library call, written so that the compiler
// vectorises them. The double-lane sums also have an AVX-512 kernel (target attribute, chosen at
// run time, no -march needed), because compilers leave them scalar: one vector of 8 doubles holds
// exactly the 8 lanes.

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>

#include <bit>     // for bit_cast
#include <cstddef> // for size_t
#include <cstdint> // for int32_t, uint32_t

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(ENGRAM_DISABLE_X86_SIMD)
#define ENGRAM_VECTOR_MATH_X86 1
#include <immintrin.h>
#else
#define ENGRAM_VECTOR_MATH_X86 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace kernels {

/// Independent accumulators of the lane sums: enough to fill an AVX-512 register of doubles.
inline constexpr std::size_t sum_lanes = 8;

/// The sums of one gate: sum k^2, sum h^2 and sum (k w1)(h w2), all in double lanes.
struct gate_sums {
    double kk = 0, hh = 0, dot = 0;
};

namespace detail {

/// Whether the AVX-512 lane sums run on this CPU.
inline bool lane_sums_use_avx512() noexcept {
#if ENGRAM_VECTOR_MATH_X86
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") != 0;
    }();
    return yes;
#else
    return false;
#endif
}

#if ENGRAM_VECTOR_MATH_X86
/// Lane j of a vector accumulates elements i + j (i a multiple of 8), as in the portable loops;
/// the tail is added to lane 0 element by element, then the lanes are summed in order.
struct lanes8 {
    alignas(64) double lane[8];
    [[nodiscard]] double total() const noexcept {
        double s = 0;
        for (double a : lane) s += a;
        return s;
    }
};

/// 8 floats widened to double (the zero-masked form: g++ 12 flags the unmasked one's
/// _mm512_undefined_pd() as maybe-uninitialized).
__attribute__((always_inline, target("avx512f"))) inline __m512d widen8(const float* p) noexcept {
    return _mm512_maskz_cvtps_pd(static_cast<__mmask8>(0xFF), _mm256_loadu_ps(p));
}

__attribute__((target("avx512f"))) inline double sum_squares_avx512(const float* x, std::size_t n) noexcept {
    __m512d acc = _mm512_setzero_pd();
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512d v = widen8(x + i);
        acc = _mm512_fmadd_pd(v, v, acc);
    }
    lanes8 s;
    _mm512_store_pd(s.lane, acc);
    for (; i < n; ++i) s.lane[0] += static_cast<double>(x[i]) * x[i];
    return s.total();
}

__attribute__((target("avx512f"))) inline gate_sums gate_sums_avx512(const float* k, const float* h, const float* w1,
                                                                     const float* w2, std::size_t n) noexcept {
    __m512d kk = _mm512_setzero_pd(), hh = _mm512_setzero_pd(), dd = _mm512_setzero_pd();
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512d kv = widen8(k + i);
        const __m512d hv = widen8(h + i);
        kk = _mm512_fmadd_pd(kv, kv, kk);
        hh = _mm512_fmadd_pd(hv, hv, hh);
        const __m512d kw = _mm512_mul_pd(kv, widen8(w1 + i));
        const __m512d hw = _mm512_mul_pd(hv, widen8(w2 + i));
        dd = _mm512_fmadd_pd(kw, hw, dd);
    }
    lanes8 sk, sh, sd;
    _mm512_store_pd(sk.lane, kk);
    _mm512_store_pd(sh.lane, hh);
    _mm512_store_pd(sd.lane, dd);
    for (; i < n; ++i) {
        const double kv = k[i], hv = h[i];
        sk.lane[0] += kv * kv;
        sh.lane[0] += hv * hv;
        sd.lane[0] += (kv * w1[i]) * (hv * w2[i]);
    }
    return {sk.total(), sh.total(), sd.total()};
}
#endif

} // namespace detail

/// @brief sum(x[i]^2) in double, accumulated in `sum_lanes` lanes (each product is exact; only
///        the additions round, in double). Matches a sequential double sum to ~1e-15 relative.
inline double sum_squares(const float* x, std::size_t n) noexcept {
#if ENGRAM_VECTOR_MATH_X86
    if (detail::lane_sums_use_avx512()) return detail::sum_squares_avx512(x, n);
#endif
    double acc[sum_lanes] = {};
    std::size_t i = 0;
    for (; i + sum_lanes <= n; i += sum_lanes)
        for (std::size_t j = 0; j < sum_lanes; ++j) {
            const double v = x[i + j];
            acc[j] += v * v;
        }
    for (; i < n; ++i) acc[0] += static_cast<double>(x[i]) * x[i];
    double s = 0;
    for (double a : acc) s += a;
    return s;
}

/// @brief `gate_sums` of key `k`, hidden `h` and the two norm weights, in one pass.
inline gate_sums gate_sums_of(const float* k, const float* h, const float* w1, const float* w2,
                              std::size_t n) noexcept {
#if ENGRAM_VECTOR_MATH_X86
    if (detail::lane_sums_use_avx512()) return detail::gate_sums_avx512(k, h, w1, w2, n);
#endif
    double kk[sum_lanes] = {}, hh[sum_lanes] = {}, dd[sum_lanes] = {};
    std::size_t i = 0;
    for (; i + sum_lanes <= n; i += sum_lanes)
        for (std::size_t j = 0; j < sum_lanes; ++j) {
            const double kv = k[i + j], hv = h[i + j];
            kk[j] += kv * kv;
            hh[j] += hv * hv;
            dd[j] += (kv * w1[i + j]) * (hv * w2[i + j]);
        }
    for (; i < n; ++i) {
        const double kv = k[i], hv = h[i];
        kk[0] += kv * kv;
        hh[0] += hv * hv;
        dd[0] += (kv * w1[i]) * (hv * w2[i]);
    }
    gate_sums s;
    for (std::size_t j = 0; j < sum_lanes; ++j) {
        s.kk += kk[j];
        s.hh += hh[j];
        s.dot += dd[j];
    }
    return s;
}

/// Inputs of `fast_exp` are clamped to this range (2^n stays a normal float).
// A branch's gated value and its RMSNorm (the conv input of the reference fusion), AVX-512
// where the CPU has it; the same operations per value either way.

/// u[c] = a * v[c].
inline void scale_values(const float* v, float a, float* u, std::size_t n) noexcept;
/// x[c] = float(u[c] * r) * w[c], the product with r in double.
inline void scale_norm(const float* u, double r, const float* w, float* x, std::size_t n) noexcept;

namespace detail {
inline void scale_values_portable(const float* v, float a, float* u, std::size_t n) noexcept {
    for (std::size_t c = 0; c < n; ++c) u[c] = a * v[c];
}
inline void scale_norm_portable(const float* u, double r, const float* w, float* x, std::size_t n) noexcept {
    for (std::size_t c = 0; c < n; ++c) x[c] = bodies::norm_value(u[c], r, w[c]);
}
#if ENGRAM_VECTOR_MATH_X86
__attribute__((target("avx512f"))) inline void scale_values_avx512(const float* v, float a, float* u,
                                                                   std::size_t n) noexcept {
    const __m512 av = _mm512_set1_ps(a);
    std::size_t c = 0;
    for (; c + 16 <= n; c += 16) _mm512_storeu_ps(u + c, _mm512_mul_ps(av, _mm512_loadu_ps(v + c)));
    for (; c < n; ++c) u[c] = a * v[c];
}
__attribute__((target("avx512f"))) inline void scale_norm_avx512(const float* u, double r, const float* w, float* x,
                                                                 std::size_t n) noexcept {
    const __m512d rv = _mm512_set1_pd(r);
    constexpr auto all8 = static_cast<__mmask8>(0xFF);
    std::size_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const __m512d d = _mm512_mul_pd(_mm512_maskz_cvtps_pd(all8, _mm256_loadu_ps(u + c)), rv);
        _mm256_storeu_ps(x + c, _mm256_mul_ps(_mm512_maskz_cvtpd_ps(all8, d), _mm256_loadu_ps(w + c)));
    }
    for (; c < n; ++c) x[c] = static_cast<float>(u[c] * r) * w[c];
}
#endif
} // namespace detail

inline void scale_values(const float* v, float a, float* u, std::size_t n) noexcept {
#if ENGRAM_VECTOR_MATH_X86
    if (detail::lane_sums_use_avx512()) return detail::scale_values_avx512(v, a, u, n);
#endif
    detail::scale_values_portable(v, a, u, n);
}
inline void scale_norm(const float* u, double r, const float* w, float* x, std::size_t n) noexcept {
#if ENGRAM_VECTOR_MATH_X86
    if (detail::lane_sums_use_avx512()) return detail::scale_norm_avx512(u, r, w, x, n);
#endif
    detail::scale_norm_portable(u, r, w, x, n);
}

inline constexpr float fast_exp_lo = bodies::fast_exp_lo;
inline constexpr float fast_exp_hi = bodies::fast_exp_hi;

/// @brief e^x for float, within 2 ulp of the correctly rounded value on [-87, 88]; inputs
///        outside are clamped to that range (e^-87 ~ 1.6e-38, e^88 ~ 1.7e38). Branch-free, so
///        loops over it vectorise: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-7 Taylor
///        polynomial (truncation < 4e-9 relative), times 2^n built in the exponent bits.
inline float fast_exp(float x) noexcept { return bodies::fast_exp(x); }

/// @brief `out[i] = u[i] + SiLU(y[i])`, SiLU(y) = y / (1 + e^-y) with `fast_exp`.
inline void add_silu(const float* u, const float* y, float* out, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) out[i] = bodies::silu_add(u[i], y[i]);
}

namespace detail {

#if ENGRAM_VECTOR_MATH_X86
/// `fast_exp` on 16 lanes: the same steps, with fused multiply-adds where the scalar code has a
/// multiply and an add.
__attribute__((always_inline, target("avx512f"))) inline __m512 fast_exp16(__m512 x) noexcept {
    x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(fast_exp_lo), _CMP_LT_OQ), x,
                             _mm512_set1_ps(fast_exp_lo));
    x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(fast_exp_hi), _CMP_GT_OQ), x,
                             _mm512_set1_ps(fast_exp_hi));
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512 shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
    const __m512 n = _mm512_sub_ps(shifted, magic);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i ni = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(magic));
    const __m512i bits =
        _mm512_maskz_slli_epi32(static_cast<__mmask16>(0xFFFF), _mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

__attribute__((target("avx512f"))) inline void conv_silu_avx512(const float* const* taps, std::size_t kc,
                                                                const float* w, std::size_t w_stride, std::size_t first,
                                                                const float* v, float a, float* out,
                                                                std::size_t n) noexcept {
    const __m512 av = _mm512_set1_ps(a), one = _mm512_set1_ps(1.0f);
    for (std::size_t c = 0; c < n; c += 16) {
        const auto mask = static_cast<__mmask16>(n - c >= 16 ? 0xFFFFu : (1u << (n - c)) - 1u);
        __m512 y = _mm512_setzero_ps();
        for (std::size_t k = 0; k < kc; ++k)
            y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, w + k * w_stride + first + c),
                                _mm512_maskz_loadu_ps(mask, taps[k] + first + c), y);
        const __m512 u = _mm512_mul_ps(av, _mm512_maskz_loadu_ps(mask, v + c));
        const __m512 e = fast_exp16(_mm512_sub_ps(_mm512_setzero_ps(), y));
        _mm512_mask_storeu_ps(out + c, mask, _mm512_add_ps(u, _mm512_div_ps(y, _mm512_add_ps(one, e))));
    }
}
#endif

} // namespace detail

/// @brief One branch of the short convolution and its fusion, channels [first, first + n):
///        `out[c] = a v[c] + SiLU(y)`, `y = sum_k w[k * w_stride + first + c] taps[k][first + c]`
///        summed from 0 over k in order. AVX-512 (16 channels at a time, fused multiply-adds)
///        where the CPU has it, else the portable loop; `y` is scratch for the latter.
inline void conv_silu(const float* const* taps, std::size_t kc, const float* w, std::size_t w_stride, std::size_t first,
                      const float* v, float a, float* y, float* out, std::size_t n) noexcept {
#if ENGRAM_VECTOR_MATH_X86
    if (detail::lane_sums_use_avx512()) {
        detail::conv_silu_avx512(taps, kc, w, w_stride, first, v, a, out, n);
        return;
    }
#endif
    for (std::size_t c = 0; c < n; ++c) y[c] = 0.0f;
    for (std::size_t k = 0; k < kc; ++k) {
        const float* x = taps[k] + first;
        const float* wk = w + k * w_stride + first;
        for (std::size_t c = 0; c < n; ++c) y[c] += wk[c] * x[c];
    }
    for (std::size_t c = 0; c < n; ++c) out[c] = bodies::silu_add(a * v[c], y[c]);
}

} // namespace kernels

ENGRAM_END_NAMESPACE
