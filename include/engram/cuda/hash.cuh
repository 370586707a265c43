#pragma once
// SPDX-License-Identifier: MIT
// Canonicalisation and n-gram hashing of every Engram layer of a batch in one launch: one thread
// per token builds the token's window once (bodies::canonical_window) and hashes it for each
// layer (bodies::hash_heads), the same bodies the host backend runs.

#include <engram/cuda/runtime.cuh>

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/fast_mod.hpp>
#include <engram/hash/layout.hpp>
#include <engram/types.hpp>

#include <algorithm>   // for max
#include <cstddef>     // for size_t
#include <cstdint>     // for int32_t, int64_t, uint64_t, uint8_t
#include <limits>      // for numeric_limits
#include <optional>    // for optional
#include <span>        // for span
#include <string>      // for to_string
#include <type_traits> // for is_same_v
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace cuda {

namespace kernels {

/// Error word of a hash launch: the smallest flat position with a raw id outside [0, V).
inline constexpr unsigned long long no_error = ~0ull;

/// Most layers one launch hashes (their output offsets travel as a kernel argument).
inline constexpr int max_layers = 64;
struct layer_offsets {
    std::size_t at[max_layers];
};

/// One thread per token of a [B, T] batch: the window of its position (dead positions per the
/// source), then every layer's row ids into `out [L, B, T, heads_l]` (layer l at `out_offset[l]`).
template <class Id>
__global__ void hash_layers(bodies::window_source src, std::size_t batch, std::size_t seq_len, int window,
                            const bodies::hash_params* layers, int layer_count, layer_offsets out_offset, Id* out,
                            unsigned long long* error) {
    const std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (g >= batch * seq_len) return;
    const std::size_t b = g / seq_len, t = g % seq_len;
    bodies::window_source seq = src;
    seq.raw += b * seq_len;
    if (seq.mask != nullptr) seq.mask += b * seq_len;
    token_id w[hash_config::max_supported_ngram];
    const bool ok = bodies::canonical_window(seq, static_cast<std::int64_t>(t), window, w);
    if (!ok) {
        atomicMin(error, static_cast<unsigned long long>(g));
        for (int k = 0; k < window; ++k) w[k] = src.pad; // in-range rows, so a gather cannot fault
    }
    for (int l = 0; l < layer_count; ++l) {
        const int heads = layers[l].order_count * layers[l].heads_per_order;
        bodies::hash_heads(layers[l], w, out + out_offset.at[l] + g * static_cast<std::size_t>(heads));
    }
}

} // namespace kernels

/// @brief The hash of several Engram layers that share one vocabulary (a model's layers), on the
///        device: `rows` turns raw ids `[B, T]` (device memory) into every layer's row ids in one
///        launch. Ids equal the host's `ngram_hasher::rows_tokens` (dead token, token mask).
class layer_hash {
public:
    /// @param layouts the layers' layouts (same canonical vocabulary and pad)
    /// @param vocab_lookup raw id -> canonical id (V entries)
    /// @param dead_token a raw id that restarts the context (the demo's config), if any
    /// @param global_rows true: head offsets added (rows of the layer's table); false: head-local
    /// @throws config_error for no layers, layouts that disagree on V' or pad, or a lookup
    ///         entry outside [0, V').
    layer_hash(std::span<const layer_layout> layouts, std::span<const token_id> vocab_lookup,
               std::optional<token_id> dead_token = std::nullopt, bool global_rows = true) {
        if (layouts.empty()) throw config_error("cuda::layer_hash: no layers");
        if (layouts.size() > static_cast<std::size_t>(kernels::max_layers))
            throw config_error("cuda::layer_hash: " + std::to_string(layouts.size()) + " layers, at most " +
                               std::to_string(kernels::max_layers) + " a launch");
        if (vocab_lookup.empty()) throw config_error("cuda::layer_hash: the vocabulary is empty");
        const layer_layout& first = layouts.front();
        for (token_id c : vocab_lookup)
            if (c < 0 || c >= first.vocab_size)
                throw config_error("cuda::layer_hash: canonical id " + std::to_string(c) + " outside [0, " +
                                   std::to_string(first.vocab_size) + ")");
        if (dead_token && (*dead_token < 0 || static_cast<std::size_t>(*dead_token) >= vocab_lookup.size()))
            throw config_error("cuda::layer_hash: dead token " + std::to_string(*dead_token) +
                               " is outside the vocabulary [0, " + std::to_string(vocab_lookup.size()) + ")");
        vocab_ = static_cast<token_id>(vocab_lookup.size());
        pad_ = first.pad;
        dead_ = dead_token.value_or(-1);
        // One flat block of parameters; the per-layer views point into its device copy.
        std::vector<std::uint64_t> words;
        std::vector<int> ints;
        struct at {
            std::size_t orders, mult, primes, magic, offsets;
        };
        std::vector<at> where;
        std::size_t out_at = 0;
        for (const layer_layout& l : layouts) {
            if (l.vocab_size != first.vocab_size || l.pad != first.pad)
                throw config_error("cuda::layer_hash: layer " + std::to_string(l.layer_id) +
                                   " has another canonical vocabulary or pad than layer " +
                                   std::to_string(first.layer_id));
            if (l.max_order() > hash_config::max_supported_ngram ||
                l.multipliers.size() < static_cast<std::size_t>(l.max_order()))
                throw config_error("cuda::layer_hash: layer " + std::to_string(l.layer_id) + " has a bad order list");
            window_ = std::max(window_, l.max_order());
            at a{};
            a.orders = ints.size();
            ints.insert(ints.end(), l.orders.begin(), l.orders.end());
            a.mult = words.size();
            for (auto m : l.multipliers) words.push_back(static_cast<std::uint64_t>(m));
            a.primes = words.size();
            for (auto p : l.primes) words.push_back(static_cast<std::uint64_t>(p));
            a.magic = words.size();
            for (auto p : l.primes) words.push_back(fast_mod(static_cast<std::uint64_t>(p)).magic());
            a.offsets = words.size();
            for (auto o : l.offsets) words.push_back(global_rows ? static_cast<std::uint64_t>(o) : 0u);
            where.push_back(a);
            heads_.push_back(l.num_heads());
            rows_.push_back(static_cast<std::size_t>(l.total_rows));
            out_offset_per_token_.push_back(out_at);
            out_at += l.num_heads();
        }
        heads_total_ = out_at;
        words_.upload(std::span<const std::uint64_t>(words));
        ints_.upload(std::span<const int>(ints));
        lookup_.upload(vocab_lookup);
        std::vector<bodies::hash_params> params;
        for (std::size_t i = 0; i < layouts.size(); ++i) {
            bodies::hash_params p;
            p.orders = ints_.data() + where[i].orders;
            p.order_count = static_cast<int>(layouts[i].orders.size());
            p.heads_per_order = layouts[i].heads_per_order;
            p.multipliers = words_.data() + where[i].mult;
            p.primes = words_.data() + where[i].primes;
            p.magic = words_.data() + where[i].magic;
            p.offsets = global_rows ? reinterpret_cast<const std::int64_t*>(words_.data() + where[i].offsets) : nullptr;
            params.push_back(p);
        }
        params_.upload(std::span<const bodies::hash_params>(params));
        error_.reserve(1);
        reset_error();
        check(cudaDeviceSynchronize(), "cuda::layer_hash upload");
    }

    [[nodiscard]] std::size_t layers() const noexcept { return heads_.size(); }
    /// Heads of layer l, and the sum over layers (row ids per token).
    [[nodiscard]] std::size_t heads(std::size_t l) const { return heads_.at(l); }
    [[nodiscard]] std::size_t heads_total() const noexcept { return heads_total_; }
    [[nodiscard]] token_id vocab_size() const noexcept { return vocab_; }
    /// Where layer l's ids start in the output of `rows` for B*T tokens: `tokens * (heads of the
    /// layers before l)`.
    [[nodiscard]] std::size_t output_offset(std::size_t l, std::size_t tokens) const {
        return tokens * out_offset_per_token_.at(l);
    }

    /// @brief Row ids of raw ids `[B, T]` for every layer: `out [L][B, T, heads_l]`, layer after
    ///        layer. Asynchronous on `stream`; a raw id outside [0, V) is reported by
    ///        `check_errors` (its position's rows become the all-pad window's, so reads stay in
    ///        the tables).
    /// @param raw device memory, B*T ids; @param mask device memory, B*T bytes (0 = dead), or null
    /// @param out device memory, B*T*heads_total() ids
    /// @throws config_error for 32-bit ids and a layer of 2^31 rows or more.
    template <class Id>
    void rows(const token_id* raw, std::size_t batch, std::size_t seq_len, const std::uint8_t* mask, Id* out,
              cudaStream_t stream = nullptr) const {
        static_assert(std::is_same_v<Id, std::int32_t> || std::is_same_v<Id, std::int64_t>,
                      "cuda::layer_hash: row ids are int32 or int64");
        if constexpr (std::is_same_v<Id, std::int32_t>)
            for (std::size_t l = 0; l < rows_.size(); ++l)
                if (rows_[l] > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
                    throw config_error("cuda::layer_hash: layer " + std::to_string(l) + " has " +
                                       std::to_string(rows_[l]) + " rows, too many for int32 row ids");
        const std::size_t tokens = batch * seq_len;
        if (tokens == 0) return;
        kernels::layer_offsets at{};
        for (std::size_t l = 0; l < rows_.size(); ++l) at.at[l] = output_offset(l, tokens);
        bodies::window_source src;
        src.raw = raw;
        src.lookup = lookup_.data();
        src.vocab_size = vocab_;
        src.mask = mask;
        src.dead_token = dead_;
        src.pad = pad_;
        kernels::hash_layers<Id><<<blocks_for(tokens), block_threads, 0, stream>>>(
            src, batch, seq_len, window_, params_.data(), static_cast<int>(rows_.size()), at, out, error_.data());
        check_launch("hash_layers");
    }

    /// @brief Waits for `stream` and throws input_error naming the first position whose raw id
    ///        was outside [0, V) since the last check (then clears it).
    void check_errors(cudaStream_t stream = nullptr) const {
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        unsigned long long pos = kernels::no_error;
        check(cudaMemcpy(&pos, error_.data(), sizeof pos, cudaMemcpyDeviceToHost), "cudaMemcpy (hash error)");
        if (pos != kernels::no_error) {
            reset_error();
            throw input_error("cuda hash: a raw token id at or before flat position " + std::to_string(pos) +
                              " (window of that position) is outside the vocabulary [0, " + std::to_string(vocab_) +
                              ")");
        }
    }

    /// The device copy of the raw -> canonical lookup.
    [[nodiscard]] const token_id* device_lookup() const noexcept { return lookup_.data(); }
    [[nodiscard]] token_id pad() const noexcept { return pad_; }
    [[nodiscard]] token_id dead_token() const noexcept { return dead_; }
    [[nodiscard]] int window() const noexcept { return window_; }
    /// The device copy of layer l's hash parameters.
    [[nodiscard]] const bodies::hash_params* device_params(std::size_t l) const noexcept { return params_.data() + l; }

private:
    void reset_error() const {
        check(cudaMemcpy(error_.data(), &kernels::no_error, sizeof kernels::no_error, cudaMemcpyHostToDevice),
              "cudaMemcpy (hash error reset)");
    }

    token_id vocab_ = 0, pad_ = 0, dead_ = -1;
    int window_ = 0;
    std::vector<std::size_t> heads_, rows_, out_offset_per_token_;
    std::size_t heads_total_ = 0;
    device_buffer<std::uint64_t> words_;
    device_buffer<int> ints_;
    device_buffer<token_id> lookup_;
    device_buffer<bodies::hash_params> params_;
    mutable device_buffer<unsigned long long> error_;
};

} // namespace cuda

ENGRAM_END_NAMESPACE
