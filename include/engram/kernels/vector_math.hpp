#pragma once
// SPDX-License-Identifier: MIT
// Small loops of the layer's non-GEMM work, written so that the compiler vectorises them: sums in
// several independent double lanes (float products are exact in double), and an exp/SiLU with no
// library call. With -march=native (or -mavx512f -mfma) they run on AVX-512; SSE2 builds still
// vectorise the float parts.

#include <engram/config.hpp>

#include <bit>     // for bit_cast
#include <cstddef> // for size_t
#include <cstdint> // for int32_t, uint32_t

ENGRAM_BEGIN_NAMESPACE

namespace kernels {

/// Independent accumulators of the lane sums: enough to fill an AVX-512 register of doubles.
inline constexpr std::size_t sum_lanes = 8;

/// @brief sum(x[i]^2) in double, accumulated in `sum_lanes` lanes (each product is exact; only
///        the additions round, in double). Matches a sequential double sum to ~1e-15 relative.
inline double sum_squares(const float* x, std::size_t n) noexcept {
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

/// The three sums of one gate: sum k^2, sum h^2 and sum (k w1)(h w2), all in double lanes.
struct gate_sums {
    double kk = 0, hh = 0, dot = 0;
};

/// @brief `gate_sums` of key `k`, hidden `h` and the two norm weights, in one pass.
inline gate_sums gate_sums_of(const float* k, const float* h, const float* w1, const float* w2,
                              std::size_t n) noexcept {
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
inline constexpr float fast_exp_lo = -87.0f;
inline constexpr float fast_exp_hi = 88.0f;

/// @brief e^x for float, within 2 ulp of the correctly rounded value on [-87, 88]; inputs
///        outside are clamped to that range (e^-87 ~ 1.6e-38, e^88 ~ 1.7e38). Branch-free, so
///        loops over it vectorise: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-7 Taylor
///        polynomial (truncation < 4e-9 relative), times 2^n built in the exponent bits.
inline float fast_exp(float x) noexcept {
    x = x < fast_exp_lo ? fast_exp_lo : (x > fast_exp_hi ? fast_exp_hi : x);
    constexpr float log2e = 1.44269504088896341f;
    constexpr float round_magic = 12582912.0f;   // 1.5 * 2^23: adding it rounds to an integer
    constexpr float ln2_hi = 0.693145751953125f; // 16 significant bits: n * ln2_hi is exact
    constexpr float ln2_lo = 1.428606765330187045e-06f;
    const float shifted = x * log2e + round_magic;
    const float n = shifted - round_magic;
    const float r = (x - n * ln2_hi) - n * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const auto ni = std::bit_cast<std::int32_t>(shifted) - std::bit_cast<std::int32_t>(round_magic);
    const auto scale = std::bit_cast<float>(static_cast<std::uint32_t>(ni + 127) << 23);
    return p * scale;
}

/// @brief `out[i] = u[i] + SiLU(y[i])`, SiLU(y) = y / (1 + e^-y) with `fast_exp`.
inline void add_silu(const float* u, const float* y, float* out, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) out[i] = u[i] + y[i] / (1.0f + fast_exp(-y[i]));
}

} // namespace kernels

ENGRAM_END_NAMESPACE
