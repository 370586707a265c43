#pragma once
// SPDX-License-Identifier: MIT
// The weight formats of the layer's stacked projection, and the view of its float weights that
// every matmul backend takes.

#include <engram/config.hpp>

#include <cstddef>     // for size_t
#include <optional>    // for optional
#include <string_view> // for string_view

ENGRAM_BEGIN_NAMESPACE

/// @brief How the layer keeps its stacked projection for `forward` and `decode_step`.
enum class weight_format {
    f32,      ///< the float weights as loaded (default), read live on every call
    bf16,     ///< a bf16 copy (round to nearest even), multiplied with float accumulation
    bf16_dot, ///< a bf16 copy, and each memory vector rounded to bf16 too: bf16 x bf16 dot products
              ///< (AVX512_BF16 `vdpbf16ps`, or oneDNN's bf16 kernels, AMX where the CPU has it)
              ///< accumulated in float; the rounding of e is exact when the table stores bf16 rows.
    int8      ///< int8 weights per output channel (scale max|w_c| / 127) and int8 memory vectors per
              ///< token, exact int32 sums (AVX512-VNNI `vpdpbusd`, or oneDNN's int8 kernels), then
              ///< `fma(acc, s_token * s_channel, bias)`: the same bits on every path
};

/// The format's name as the CLI and the bench print it ("f32", "bf16", "bf16_dot", "int8").
constexpr std::string_view to_string(weight_format f) noexcept {
    switch (f) {
    case weight_format::f32:
        return "f32";
    case weight_format::bf16:
        return "bf16";
    case weight_format::bf16_dot:
        return "bf16_dot";
    case weight_format::int8:
        return "int8";
    }
    return "unknown";
}

/// The format named `name`, if any.
constexpr std::optional<weight_format> parse_weight_format(std::string_view name) noexcept {
    for (auto f : {weight_format::f32, weight_format::bf16, weight_format::bf16_dot, weight_format::int8})
        if (to_string(f) == name) return f;
    return std::nullopt;
}

/// @brief The stacked projection as the layer holds it: `w` [rows, cols] row-major float and
///        `bias` [rows]. Backends read it on every call for `weight_format::f32` (and the bias in
///        every format), and copy it when a format is set.
struct matmul_weights {
    const float* w = nullptr;
    const float* bias = nullptr;
    std::size_t rows = 0, cols = 0;
};

ENGRAM_END_NAMESPACE
