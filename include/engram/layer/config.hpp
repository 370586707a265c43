#pragma once
// SPDX-License-Identifier: MIT
// Run-time sizes of an Engram layer: hashing, hidden width, branches, convolution, epsilons.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/types.hpp>

#include <algorithm> // for find
#include <cstdint>   // for int64_t
#include <limits>    // for numeric_limits
#include <optional>  // for optional
#include <string>    // for to_string

ENGRAM_BEGIN_NAMESPACE

/// @brief Everything about a layer that is a number, not a policy. Defaults: the reference demo
///        (H = 1024, M = 4, Kc = 4, dilation N, layer 1 of [1, 15]).
struct layer_config {
    hash_config hash{};
    /// Which of `hash.layer_ids` this layer is.
    std::int64_t layer_id = 1;
    /// H: hidden width of the host model.
    std::int64_t hidden = 1024;
    /// M: residual branches (1: an ordinary residual stream; 4: the paper's hyper-connections).
    std::int64_t branches = 4;
    /// Kc: convolution kernel size (reference fusion).
    std::int64_t kernel_size = 4;
    /// Convolution dilation; 0 means max_ngram, as in the reference.
    std::int64_t conv_dilation = 0;
    /// eps of the key and hidden RMSNorms (float32 machine epsilon in the reference).
    float gate_norm_eps = std::numeric_limits<float>::epsilon();
    /// eps of the convolution's RMSNorms.
    float conv_norm_eps = 1e-5f;
    /// A raw token id that blocks n-grams across it (e.g. an image placeholder), if any.
    std::optional<token_id> dead_token{};

    [[nodiscard]] std::int64_t dilation() const noexcept { return conv_dilation > 0 ? conv_dilation : hash.max_ngram; }
    /// Width of a memory vector: (number of orders) x E.
    [[nodiscard]] std::int64_t memory_dim() const {
        return static_cast<std::int64_t>(hash.order_list().size()) * hash.embed_per_ngram;
    }

    /// @brief Checks every field (including `hash`); throws config_error naming the first bad one.
    void validate() const {
        hash.validate();
        auto fail = [](const std::string& what) { throw config_error("config: " + what); };
        if (std::find(hash.layer_ids.begin(), hash.layer_ids.end(), layer_id) == hash.layer_ids.end())
            fail("layer_id " + std::to_string(layer_id) + " is not in layer_ids");
        if (hidden < 1 || hidden > (std::int64_t{1} << 20))
            fail("hidden = " + std::to_string(hidden) + " must be in [1, 2^20]");
        if (branches < 1 || branches > 64) fail("branches = " + std::to_string(branches) + " must be in [1, 64]");
        if (kernel_size < 1 || kernel_size > 64)
            fail("kernel_size = " + std::to_string(kernel_size) + " must be in [1, 64]");
        if (conv_dilation < 0 || conv_dilation > 4096)
            fail("conv_dilation = " + std::to_string(conv_dilation) + " must be in [0, 4096] (0: max_ngram)");
        if (!(gate_norm_eps > 0.0f) || !(gate_norm_eps < 1.0f))
            fail("gate_norm_eps = " + std::to_string(gate_norm_eps) + " must be in (0, 1)");
        if (!(conv_norm_eps > 0.0f) || !(conv_norm_eps < 1.0f))
            fail("conv_norm_eps = " + std::to_string(conv_norm_eps) + " must be in (0, 1)");
        if (memory_dim() > (std::int64_t{1} << 20))
            fail("memory width (orders x embed_per_ngram) = " + std::to_string(memory_dim()) + " is too large");
    }
};

ENGRAM_END_NAMESPACE
