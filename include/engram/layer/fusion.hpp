#pragma once
// SPDX-License-Identifier: MIT
// Fusion policies: how the gated value enters the residual stream (spec section 7).

#include <engram/config.hpp>

#include <concepts> // for convertible_to

ENGRAM_BEGIN_NAMESPACE

/// @brief The PyTorch reference: `Y = u + SiLU(conv(RMSNorm(u)))` with a depthwise causal
///        convolution (kernel Kc, dilation N) over the M*H branch channels. The layer returns Y;
///        the host adds it to its residual stream.
struct reference_fusion {
    static constexpr bool has_conv = true;
    static constexpr bool residual_inside = false;
    static constexpr bool supports_token_mask = false;
};

/// @brief DeepSeek-V4.1 style: `out = h + alpha * v` (residual inside, no convolution), with an
///        optional per-token mask that zeroes alpha (image or padding tokens).
struct production_fusion {
    static constexpr bool has_conv = false;
    static constexpr bool residual_inside = true;
    static constexpr bool supports_token_mask = true;
};

/// @brief DeepSeek-V4.1: the production fusion, and a masked token (0 in the token mask, e.g.
///        an image-span position) is also dead for the hash: its window is all pad and later
///        windows read pad for it and everything before it (spec deepseek-v41.md, section 4).
struct masked_production_fusion : production_fusion {
    static constexpr bool mask_blocks_hash = true;
};

/// @brief Whether a fusion's token mask also blocks the hash (`F::mask_blocks_hash`; false when
///        the policy does not say).
template <class F>
inline constexpr bool mask_blocks_hash_v = [] {
    if constexpr (requires { F::mask_blocks_hash; })
        return static_cast<bool>(F::mask_blocks_hash);
    else
        return false;
}();

/// @brief A fusion policy names its structure through these three constants.
template <class F>
concept fusion_policy = requires {
    { F::has_conv } -> std::convertible_to<bool>;
    { F::residual_inside } -> std::convertible_to<bool>;
    { F::supports_token_mask } -> std::convertible_to<bool>;
};

static_assert(fusion_policy<reference_fusion> && fusion_policy<production_fusion> &&
              fusion_policy<masked_production_fusion>);
static_assert(mask_blocks_hash_v<masked_production_fusion> && !mask_blocks_hash_v<production_fusion>);

ENGRAM_END_NAMESPACE
