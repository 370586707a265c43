#pragma once
// SPDX-License-Identifier: MIT
// Exact x mod p for a fixed divisor without a division instruction (Barrett reduction).

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/types.hpp>

#include <cstdint> // for uint64_t, int64_t

ENGRAM_BEGIN_NAMESPACE

/// @brief `x mod p` for a divisor fixed in advance: one 64x64->128 multiply-high, one multiply,
///        one subtraction and one conditional correction, instead of a 64-bit division.
///
/// With `m = floor(2^64 / p)` (p >= 2; `2^64 - 1` for p = 1), `q = floor(x m / 2^64)`
/// satisfies `floor(x / p) - 1 <= q <= floor(x / p)` for every 64-bit x, so `r = x - q p`
/// lies in `[0, 2p)` and one subtraction of p makes it exact. Checked against `%` on edge
/// values in tests/unit/test_fast_mod.cpp.
class fast_mod {
public:
    fast_mod() = default;
    /// @pre p >= 1.
    constexpr explicit fast_mod(std::uint64_t p) noexcept : p_(p), m_(bodies::barrett_magic(p)) {}

    [[nodiscard]] constexpr std::uint64_t divisor() const noexcept { return p_; }

    /// x mod p for unsigned x.
    [[nodiscard]] constexpr std::uint64_t operator()(std::uint64_t x) const noexcept {
        return bodies::barrett_mod(x, p_, m_);
    }
    /// The Barrett constant floor(2^64 / p) (what the CUDA hash kernel is given).
    [[nodiscard]] constexpr std::uint64_t magic() const noexcept { return m_; }

    /// Floor modulo of a signed x (in [0, p) also for negative x), as NumPy's `%`.
    [[nodiscard]] constexpr std::int64_t floor_mod(std::int64_t x) const noexcept {
        return bodies::barrett_floor_mod(x, p_, m_);
    }

private:
    std::uint64_t p_ = 1;
    std::uint64_t m_ = 0;
};

static_assert(fast_mod(646403)(646403ull * 1000 + 17) == 17);
static_assert(fast_mod(7).floor_mod(-1) == 6 && fast_mod(2)(~std::uint64_t{0}) == 1 && fast_mod(1)(12345) == 0);

ENGRAM_END_NAMESPACE
