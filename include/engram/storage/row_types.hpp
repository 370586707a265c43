#pragma once
// SPDX-License-Identifier: MIT
// Row value types a table may store, and their conversion to the float compute type.

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>

#include <bit>      // for bit_cast
#include <concepts> // for same_as
#include <cstdint>  // for uint16_t, uint32_t

ENGRAM_BEGIN_NAMESPACE

/// @brief bfloat16: the upper 16 bits of an IEEE float32 (PyTorch's torch.bfloat16).
struct bfloat16 {
    std::uint16_t bits = 0;

    /// Round to nearest even, as PyTorch does; NaN stays a (quiet) NaN.
    static constexpr bfloat16 from_float(float f) noexcept { return bfloat16{bodies::bf16_bits(f)}; }
    [[nodiscard]] constexpr float to_float() const noexcept { return bodies::bf16_value(bits); }
    friend constexpr bool operator==(bfloat16, bfloat16) = default;
};

/// @brief Widens a stored row value to float.
constexpr float to_float(float v) noexcept { return v; }
constexpr float to_float(bfloat16 v) noexcept { return v.to_float(); }

/// @brief A type a row may hold: convertible to float with `to_float` (found by ADL, so a user
///        type in its own namespace can join).
template <class V>
concept row_value = std::is_trivially_copyable_v<V> && requires(V v) {
    { to_float(v) } -> std::same_as<float>;
};

static_assert(row_value<float> && row_value<bfloat16>);
static_assert(bfloat16::from_float(1.0f).bits == 0x3F80 && bfloat16{0x3F80}.to_float() == 1.0f);

ENGRAM_END_NAMESPACE
