#pragma once
// SPDX-License-Identifier: MIT
// The layer's per-token and per-channel steps after the projection, as `__host__ __device__`
// functions on flat arrays: the CUDA kernels (engram/cuda/fusion.cuh) call them per thread, and
// the CPU tests run the same functions in loops against the host layer.

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>

#include <cstddef> // for size_t
#include <cstdint> // for uint8_t

ENGRAM_BEGIN_NAMESPACE

namespace bodies {

/// @brief Where token i's normalised conv input row lives: row `b * seq_len + t` of a batch's
///        buffer, or row `t % ring` of a decode state's ring (`ring` > 0); token i of a call is
///        sequence `i / seq_len`, position `first_pos + i % seq_len`.
struct conv_rows {
    float* x = nullptr;
    std::size_t seq_len = 1;
    std::size_t first_pos = 0;
    std::size_t ring = 0;
    ENGRAM_HOST_DEVICE constexpr std::size_t row(std::size_t b, std::size_t t) const noexcept {
        return ring != 0 ? t % ring : b * seq_len + t;
    }
    ENGRAM_HOST_DEVICE constexpr std::size_t sequence(std::size_t i) const noexcept { return i / seq_len; }
    ENGRAM_HOST_DEVICE constexpr std::size_t position(std::size_t i) const noexcept { return first_pos + i % seq_len; }
};

/// @brief What the gate and fusion steps of `n` tokens read and write.
struct gate_args {
    const float* p = nullptr;           ///< [n, (1+M)H] projections without bias
    const float* bias = nullptr;        ///< [(1+M)H]
    bool finish_bf16 = false;           ///< round projections (bias added) to bf16 (fp8_block_projection)
    const float* hidden = nullptr;      ///< [n, M, H]
    float* out = nullptr;               ///< [n, M, H]
    const std::uint8_t* mask = nullptr; ///< [n] 0 = masked (gate zero, h unchanged), or null
    const float* key_norm = nullptr;    ///< [M, H]
    const float* hidden_norm = nullptr; ///< [M, H]
    int hidden_size = 0, branches = 0;
    float gate_eps = 0;
    float* alpha = nullptr; ///< [n, M] gates
    // the reference fusion only
    conv_rows rows{};
    const float* conv_weight = nullptr; ///< [M*H, Kc]
    const float* conv_norm = nullptr;   ///< [M, H]
    float conv_eps = 0;
    int kernel_size = 0;
    std::size_t dilation = 1;
};

/// Projection `col` of token i with its bias (and bf16 rounding for V4.1's projection).
ENGRAM_HOST_DEVICE constexpr float projection_value(const gate_args& a, std::size_t i, std::size_t col) noexcept {
    const std::size_t rows = static_cast<std::size_t>(1 + a.branches) * static_cast<std::size_t>(a.hidden_size);
    const float v = a.p[i * rows + col] + a.bias[col];
    return a.finish_bf16 ? round_bf16(v) : v;
}

/// Whether token i is kept (not masked).
ENGRAM_HOST_DEVICE constexpr bool token_kept(const gate_args& a, std::size_t i) noexcept {
    return a.mask == nullptr || a.mask[i] != 0;
}

/// The three sums of one channel c of (token i, branch m): k^2, h^2 and (k w1)(h w2), in double.
struct gate_terms {
    double kk = 0, hh = 0, dot = 0;
};
ENGRAM_HOST_DEVICE constexpr gate_terms gate_channel(const gate_args& a, std::size_t i, std::size_t m,
                                                     std::size_t c) noexcept {
    const std::size_t h = static_cast<std::size_t>(a.hidden_size);
    const double kv = projection_value(a, i, (1 + m) * h + c);
    const double hv = a.hidden[(i * static_cast<std::size_t>(a.branches) + m) * h + c];
    return {kv * kv, hv * hv, (kv * a.key_norm[m * h + c]) * (hv * a.hidden_norm[m * h + c])};
}

/// The gate of (token i) from its summed terms, with the gate policy G (0 for a masked token).
template <class G>
ENGRAM_HOST_DEVICE float gate_value(const gate_args& a, std::size_t i, const gate_terms& sums) noexcept {
    const auto h = static_cast<double>(a.hidden_size);
    const float s = gate_score(sums.dot, sums.kk, sums.hh, 1.0 / h, 1.0 / sqrt_d(h), a.gate_eps);
    return token_kept(a, i) ? G{}(s) : 0.0f;
}

/// u = alpha v of channel c (the reference fusion's gated value; its squares feed the norm).
ENGRAM_HOST_DEVICE constexpr float gated_value(const gate_args& a, std::size_t i, float alpha, std::size_t c) noexcept {
    return alpha * projection_value(a, i, c);
}

/// The production fusion of channel c of (token i, branch m): out = h + alpha v (h if masked).
ENGRAM_HOST_DEVICE constexpr void production_channel(const gate_args& a, std::size_t i, std::size_t m, float alpha,
                                                     std::size_t c) noexcept {
    const std::size_t at = (i * static_cast<std::size_t>(a.branches) + m) * static_cast<std::size_t>(a.hidden_size) + c;
    a.out[at] = production_value(a.hidden[at], alpha, projection_value(a, i, c), token_kept(a, i));
}

/// The reference fusion's conv input of channel c of (token i, branch m), with the RMSNorm
/// scale r of the branch's u: written to the token's conv row.
ENGRAM_HOST_DEVICE constexpr void norm_channel(const gate_args& a, std::size_t i, std::size_t m, float alpha, double r,
                                               std::size_t c) noexcept {
    const std::size_t h = static_cast<std::size_t>(a.hidden_size), mh = h * static_cast<std::size_t>(a.branches);
    float* x = a.rows.x + a.rows.row(a.rows.sequence(i), a.rows.position(i)) * mh + m * h;
    x[c] = norm_value(gated_value(a, i, alpha, c), r, a.conv_norm[m * h + c]);
}

/// The reference fusion's output of channel ch (of M*H) of token i: the causal depthwise
/// convolution over the conv rows, then `u + SiLU(y)`.
ENGRAM_HOST_DEVICE constexpr void conv_channel(const gate_args& a, std::size_t i, std::size_t ch) noexcept {
    const std::size_t h = static_cast<std::size_t>(a.hidden_size), mh = h * static_cast<std::size_t>(a.branches);
    const std::size_t m = ch / h, c = ch % h, b = a.rows.sequence(i), t = a.rows.position(i);
    const auto kc = static_cast<std::size_t>(a.kernel_size);
    float y = 0.0f;
    for (std::size_t k = 0; k < kc; ++k) {
        const std::size_t back = (kc - 1 - k) * a.dilation;
        const float tap = back <= t ? a.rows.x[a.rows.row(b, t - back) * mh + ch] : 0.0f;
        y += a.conv_weight[ch * kc + k] * tap;
    }
    const float alpha = a.alpha[i * static_cast<std::size_t>(a.branches) + m];
    a.out[i * mh + ch] = silu_add(gated_value(a, i, alpha, c), y);
}

/// DeepSeek-V4.1's act_quant of block j (32 values from j * 32) of a row of d values, as bf16 bits.
ENGRAM_HOST_DEVICE constexpr void act_quant_block(const float* row, std::size_t d, std::size_t j,
                                                  std::uint16_t* out) noexcept {
    const std::size_t first = j * 32, len = d - first < 32 ? d - first : 32;
    const float s = act_quant_block_scale(row + first, len);
    for (std::size_t k = 0; k < len; ++k) out[first + k] = bf16_bits(act_quant_value(row[first + k], s));
}

} // namespace bodies

ENGRAM_END_NAMESPACE
