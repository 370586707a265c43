#pragma once
// SPDX-License-Identifier: MIT
// Gate policies: how the normalised key-hidden score s becomes the gate alpha (spec section 6).

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>

#include <concepts> // for same_as, default_initializable

ENGRAM_BEGIN_NAMESPACE

/// @brief A gate maps the score `s = <RMSNorm(k), RMSNorm(h)> / sqrt(H)` to `alpha`. It must be a
///        pure, noexcept function of `s`; the layer applies it once per token and branch. A gate
///        that the CUDA backend runs also marks its call operator `ENGRAM_HOST_DEVICE`.
template <class G>
concept gate_policy = std::default_initializable<G> && requires(const G& g, float s) {
    { g(s) }
    noexcept->std::same_as<float>;
};

/// @brief The PyTorch reference: `sigmoid(sign(s) * sqrt(max(|s|, 1e-6)))`, sign(0) = 0.
struct reference_gate {
    ENGRAM_HOST_DEVICE float operator()(float s) const noexcept { return bodies::reference_gate(s); }
};

/// @brief The paper's formula: `sigmoid(s)`.
struct sigmoid_gate {
    ENGRAM_HOST_DEVICE float operator()(float s) const noexcept { return bodies::sigmoid_gate(s); }
};

/// @brief DeepSeek-V4.1's gate: `sigmoid(copysign(sqrt(max(|s|, 1e-6)), s))`, where a zero
///        score (of either sign) counts as negative, as in the reference (spec deepseek-v41.md,
///        section 5.3): s = 0 gives sigmoid(-0.001), where the demo's gate gives sigmoid(0).
struct copysign_gate {
    ENGRAM_HOST_DEVICE float operator()(float s) const noexcept { return bodies::copysign_gate(s); }
};

static_assert(gate_policy<reference_gate> && gate_policy<sigmoid_gate> && gate_policy<copysign_gate>);

ENGRAM_END_NAMESPACE
