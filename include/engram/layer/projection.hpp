#pragma once
// SPDX-License-Identifier: MIT
// Projection numerics policies: what happens to the memory vector before the stacked projection
// and to the projections after it (the demo: nothing; DeepSeek-V4.1: FP8 activation blocks in,
// bf16 out).

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/row_types.hpp>

#include <algorithm> // for min
#include <concepts>  // for convertible_to
#include <cstddef>   // for size_t

ENGRAM_BEGIN_NAMESPACE

/// @brief A projection policy: `prepare(e, out, d)` maps a memory vector (d floats) to the
///        vector the projection multiplies (`out` may equal `e`), `finish(p, n)` rounds n
///        projections in place. `transforms_input` / `transforms_output` say whether each does
///        anything (the layer skips the calls otherwise).
template <class P>
concept projection_policy = requires(const float* e, float* out, std::size_t n) {
    { P::transforms_input } -> std::convertible_to<bool>;
    { P::transforms_output } -> std::convertible_to<bool>;
    P::prepare(e, out, n);
    P::finish(out, n);
};

/// @brief The demo's projection: the memory vector as gathered, float projections.
struct plain_projection {
    static constexpr bool transforms_input = false;
    static constexpr bool transforms_output = false;
    static void prepare(const float*, float*, std::size_t) noexcept {}
    static void finish(float*, std::size_t) noexcept {}
};

/// @brief DeepSeek-V4.1's FP8 projection (`wkv`, spec deepseek-v41.md section 5.2): the
///        memory vector is quantised per 32 values as the reference's `act_quant` does, and the
///        projection's outputs are rounded to bf16.
///
/// `act_quant` of a block x[0..32): amax = max |x_i|, floored at 1e-4; scale
/// `s = 2^ceil(log2(amax / 448))` (exact: the ceiling is read off the float's bits); each value
/// becomes `e4m3(clamp(x_i / s, -448, 448)) * s` (round to nearest even). The result is exact in
/// bf16, so the layer's bf16 dot products (`weight_format::bf16_dot`) on the dequantised FP8
/// weights multiply exactly what the reference's FP8 GEMM multiplies; only the order of the
/// float sums differs. The quantisation is not lossless: blocks whose values span more than
/// FP8's range lose their smallest values.
struct fp8_block_projection {
    static constexpr bool transforms_input = true;
    static constexpr bool transforms_output = true;
    static constexpr std::size_t block = 32;

    /// The scale of one block: 2^ceil(log2(max(amax, 1e-4) / 448)).
    static float block_scale(const float* x, std::size_t n) noexcept { return bodies::act_quant_block_scale(x, n); }

    static void prepare(const float* e, float* out, std::size_t d) noexcept {
        for (std::size_t j = 0; j < d; j += block) {
            const std::size_t n = std::min(block, d - j);
            const float s = block_scale(e + j, n);
            for (std::size_t i = j; i < j + n; ++i) out[i] = bodies::act_quant_value(e[i], s);
        }
    }

    static void finish(float* p, std::size_t n) noexcept {
        for (std::size_t i = 0; i < n; ++i) p[i] = bodies::round_bf16(p[i]);
    }
};

static_assert(projection_policy<plain_projection> && projection_policy<fp8_block_projection>);

ENGRAM_END_NAMESPACE
