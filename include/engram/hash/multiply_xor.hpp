#pragma once
// SPDX-License-Identifier: MIT
// The reference hash family: multiply-XOR of the window with odd per-layer multipliers, then a
// floor modulo by each head's prime (spec section 4). Bit-exact with the PyTorch reference.

#include <engram/backend/bodies.hpp>
#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/hash/fast_mod.hpp>
#include <engram/hash/layout.hpp>
#include <engram/types.hpp>

#include <cstddef> // for size_t
#include <cstdint> // for int64_t, uint64_t
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief `mix = (x[t] * m_0) ^ (x[t-1] * m_1) ^ ... ^ (x[t-n+1] * m_{n-1})` in wrapping int64,
///        then `mix mod p_h` (floor modulo) per head.
///
/// The layout's multipliers are checked (`m * V' < 2^63`) when the layout is built, so no
/// product overflows for canonical ids in `[0, V')`; the arithmetic still wraps like NumPy's
/// int64 for any input, and the floor modulo is in `[0, p)` for a negative mix too.
class multiply_xor_family {
public:
    using mix_type = std::int64_t;

    explicit multiply_xor_family(const layer_layout& layout)
        : multipliers_(layout.multipliers.begin(), layout.multipliers.end()),
          moduli_(layout.primes.begin(), layout.primes.end()) {}

    template <int N>
    [[nodiscard]] mix_type mix(const token_id* window) const noexcept {
        return bodies::mix_window(window, multipliers_.data(), N);
    }

    [[nodiscard]] std::int64_t reduce(mix_type mix, std::size_t head) const noexcept {
        // Barrett reduction instead of a 64-bit division (exact; see fast_mod).
        return moduli_[head].floor_mod(mix);
    }

private:
    std::vector<std::uint64_t> multipliers_;
    std::vector<fast_mod> moduli_;
};

static_assert(hash_family<multiply_xor_family>);

ENGRAM_END_NAMESPACE
