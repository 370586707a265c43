#pragma once
// SPDX-License-Identifier: MIT
// The Engram layer: lookup, context-aware gate and fusion, for whole sequences and token by token
// (spec sections 4-7). Uses Eigen for the projections.

#include <engram/backend/bodies.hpp>
#include <engram/backend/host.hpp>
#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/detail/threads.hpp>
#include <engram/error.hpp>
#include <engram/gather.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/kernels/vector_math.hpp>
#include <engram/layer/config.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/layer/layer_fwd.hpp>
#include <engram/layer/parameters.hpp>
#include <engram/layer/projection.hpp>
#include <engram/matmul/backend.hpp>
#include <engram/matmul/host.hpp>
#include <engram/ngram/decode_state.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <Eigen/Core> // for Matrix, Map, Ref

#include <algorithm> // for copy_n, min, max
#include <cmath>     // for sqrt, exp
#include <cstddef>   // for size_t
#include <cstdint>   // for int64_t, uint8_t
#include <exception> // for exception_ptr, current_exception, rethrow_exception
#include <memory>    // for unique_ptr, make_unique
#include <optional>  // for optional
#include <random>    // for mt19937_64, normal_distribution
#include <span>      // for span
#include <string>    // for to_string
#include <thread>    // for thread
#include <utility>   // for move
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief The compile-time choices of a layer (a config bundle, cf. CUTLASS's default
///        configurations). Derive from it and override what differs:
///        `struct my_policies : engram::layer_policies { using gate_type = engram::sigmoid_gate; };`
struct layer_policies {
    using hash_type = multiply_xor_family;
    using orders_type = orders<2, 3>;
    using storage_type = dense_storage;
    using row_type = float;
    using gate_type = reference_gate;
    using fusion_type = reference_fusion;
    using projection_type = plain_projection;
    using matmul_type = host_matmul;
    using backend_type = host_backend;
};

/// Row-major float matrix, the layout of PyTorch weights and of `[tokens, width]` activations.
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// @brief The host backend's Engram layer (engram/layer/layer_fwd.hpp declares the template).
///
/// Data flow per token: raw id -> canonical id -> n-gram rows -> memory vector e (width D) ->
/// `v = W_V e + b_V` (shared) and `k_m = W_K[m] e + b_K[m]` per branch (one GEMM for all) ->
/// gate `alpha_m = gate(<RMSNorm(k_m), RMSNorm(h_m)> / sqrt(H))` -> fusion.
///
/// Activations are `[B, T, M, H]` row-major; the Eigen overloads take `[B*T*M, H]` matrices and
/// accept strided views (any outer stride) without copying.
template <class Policies>
class layer<Policies, host_backend> {
public:
    using policies_type = Policies;
    using hash_type = typename Policies::hash_type;
    using orders_type = typename Policies::orders_type;
    using storage_type = typename Policies::storage_type;
    using row_type = typename Policies::row_type;
    using gate_type = typename Policies::gate_type;
    using fusion_type = typename Policies::fusion_type;
    using projection_type = typename Policies::projection_type;
    using matmul_type = typename Policies::matmul_type;
    using backend_type = typename Policies::backend_type;
    using hasher_type = ngram_hasher<hash_type, orders_type>;
    using storage_table_type = typename storage_type::template table<row_type>;
    using ngram_state_type = ngram_state<hash_type, orders_type>;

    static_assert(hash_family<hash_type>, "Policies::hash_type must model engram::hash_family");
    static_assert(order_set<orders_type>, "Policies::orders_type must be an engram::orders<...>");
    static_assert(storage_policy<storage_type, row_type>, "Policies::storage_type must model engram::storage_policy");
    static_assert(row_codec<codec_of_t<row_type>>,
                  "Policies::row_type must be float, bfloat16 or an engram::row_codec");
    static_assert(gate_policy<gate_type>, "Policies::gate_type must model engram::gate_policy");
    static_assert(fusion_policy<fusion_type>, "Policies::fusion_type must model engram::fusion_policy");
    static_assert(projection_policy<projection_type>, "Policies::projection_type must model engram::projection_policy");
    static_assert(matmul_backend<matmul_type>, "Policies::matmul_type must model engram::matmul_backend");
    /// Whether the token mask also marks positions dead for the hash (masked_production_fusion).
    static constexpr bool mask_blocks_hash = mask_blocks_hash_v<fusion_type>;

    /// @brief Per-sequence state for token-by-token decoding: the n-gram window and, for the
    ///        reference fusion, the last `(Kc-1) * dilation` normalised rows of every channel.
    ///        A value type: copy it to fork a sequence. It refers to its layer, which must stay
    ///        alive and in place (not moved from) while the state is used.
    class decode_state {
    public:
        /// Tokens seen.
        [[nodiscard]] std::size_t position() const noexcept { return pos_; }
        /// An independent copy (beam search, speculative branches).
        [[nodiscard]] decode_state fork() const { return *this; }
        /// Undoes the last `k` steps. @throws input_error if more than can be undone.
        void rollback(std::size_t k) {
            if (k > pos_ - floor_)
                throw input_error("decode_state: cannot roll back " + std::to_string(k) + " tokens (" +
                                  std::to_string(pos_ - floor_) + " can be undone)");
            ngram_.rollback(k);
            pos_ -= k;
        }
        [[nodiscard]] const ngram_state_type& ngram() const noexcept { return ngram_; }

        /// @brief Resumes a sequence whose earlier tokens ran elsewhere: the state after
        ///        `raw_prefix`, of which only the last N-1 ids (and their mask entries) matter.
        ///        Fusions without a convolution only (nothing else carries over between tokens);
        ///        `rollback` cannot go back past this point.
        /// @param token_mask optional, one entry per prefix token, as for `forward`.
        /// @throws input_error as ngram_state::seed (state unchanged).
        void seed(std::span<const token_id> raw_prefix, std::span<const std::uint8_t> token_mask = {}) {
            static_assert(!fusion_type::has_conv,
                          "decode_state::seed: this fusion's convolution history cannot be rebuilt from ids");
            ngram_.seed(raw_prefix, mask_blocks_hash ? token_mask : std::span<const std::uint8_t>{});
            pos_ = floor_ = raw_prefix.size();
        }

    private:
        friend class layer;
        decode_state(ngram_state_type ngram, std::size_t history, std::size_t channels, std::size_t max_rollback)
            : ngram_(std::move(ngram)), history_(history), capacity_(history + max_rollback + 1), channels_(channels),
              max_rollback_(max_rollback), conv_(capacity_ * channels, 0.0f) {}

        /// The normalised row of time `t` (zero before the start).
        [[nodiscard]] const float* row(std::size_t t) const noexcept {
            return conv_.data() + (t % capacity_) * channels_;
        }
        float* row(std::size_t t) noexcept { return conv_.data() + (t % capacity_) * channels_; }
        void advance() noexcept {
            ++pos_;
            if (pos_ - floor_ > max_rollback_) floor_ = pos_ - max_rollback_;
        }

        ngram_state_type ngram_;
        std::size_t history_ = 0, capacity_ = 1, channels_ = 0, max_rollback_ = 0;
        std::size_t pos_ = 0, floor_ = 0;
        std::vector<float> conv_;
    };

    /// @brief A layer with zero embedding rows, zero projections, unit norm weights and a zero
    ///        convolution (the paper's initialisation: a pure gated lookup).
    /// @param multipliers explicit hash multipliers (e.g. from a checkpoint); default: the
    ///        reference's NumPy-seeded ones.
    /// @throws config_error for an invalid configuration or a vocabulary that does not fit it.
    layer(layer_config cfg, canonical_table vocab, std::optional<std::vector<std::int64_t>> multipliers = std::nullopt)
        : cfg_(validated(std::move(cfg))), vocab_(std::move(vocab)),
          hasher_(make_layout_for(cfg_, vocab_, std::move(multipliers))),
          table_(static_cast<std::size_t>(hasher_.layout().total_rows),
                 static_cast<std::size_t>(hasher_.layout().head_dim)) {
        init_parameters();
    }

    /// @brief As above, with the embedding rows in `table` (moved in; e.g. a checkpoint's table
    ///        served in place) instead of a zero table of the storage's own.
    /// @throws config_error if the table's shape differs from the layout's rows x head_dim.
    layer(layer_config cfg, canonical_table vocab, storage_table_type table,
          std::optional<std::vector<std::int64_t>> multipliers = std::nullopt)
        : cfg_(validated(std::move(cfg))), vocab_(std::move(vocab)),
          hasher_(make_layout_for(cfg_, vocab_, std::move(multipliers))), table_(std::move(table)) {
        check_table(table_);
        init_parameters();
    }

    // ---- configuration and parameters -------------------------------------------------------

    [[nodiscard]] const layer_config& config() const noexcept { return cfg_; }
    [[nodiscard]] const layer_layout& layout() const noexcept { return hasher_.layout(); }
    [[nodiscard]] const canonical_table& vocab() const noexcept { return vocab_; }
    [[nodiscard]] const hasher_type& hasher() const noexcept { return hasher_; }
    [[nodiscard]] storage_table_type& table() noexcept { return table_; }
    [[nodiscard]] const storage_table_type& table() const noexcept { return table_; }
    /// Number of memory heads (orders x K) and the memory width D.
    [[nodiscard]] std::size_t num_heads() const noexcept { return hasher_.num_heads(); }
    [[nodiscard]] std::size_t memory_dim() const noexcept { return static_cast<std::size_t>(proj_w_.cols()); }

    /// `value_proj.weight` [H, D] and `.bias` [H] (views into the stacked projection).
    auto value_weight() noexcept { return proj_w_.topRows(cfg_.hidden); }
    auto value_bias() noexcept { return proj_b_.head(cfg_.hidden); }
    /// `key_projs.{m}.weight` [H, D] and `.bias` [H].
    auto key_weight(std::size_t m) { return proj_w_.middleRows(key_row(m), cfg_.hidden); }
    auto key_bias(std::size_t m) { return proj_b_.segment(key_row(m), cfg_.hidden); }
    /// `norm1.{m}.weight` (key norm) and `norm2.{m}.weight` (hidden norm), [H] each.
    auto key_norm(std::size_t m) { return key_norm_.row(branch(m)); }
    auto hidden_norm(std::size_t m) { return hidden_norm_.row(branch(m)); }
    /// `short_conv.conv.weight` as [M*H, Kc] and `short_conv.norms.{m}.weight` [H] (reference fusion).
    row_matrix& conv_weight() noexcept { return conv_w_; }
    auto conv_norm(std::size_t m) { return conv_norm_.row(branch(m)); }
    /// The stacked projection [(1+M)H, D]: value rows first, then each branch's key rows.
    [[nodiscard]] const row_matrix& projection_weight() const noexcept { return proj_w_; }
    [[nodiscard]] const Eigen::VectorXf& projection_bias() const noexcept { return proj_b_; }

    /// @brief Every parameter but the rows, as plain views into this layer (what a device
    ///        backend copies; `table_view_of(table())` describes the rows).
    [[nodiscard]] layer_parameters parameters() const {
        auto span_of = [](const auto& m) {
            return std::span<const float>(m.data(), static_cast<std::size_t>(m.size()));
        };
        layer_parameters p{cfg_,
                           layout(),
                           vocab_.lookup(),
                           span_of(proj_w_),
                           span_of(proj_b_),
                           span_of(key_norm_),
                           span_of(hidden_norm_),
                           {},
                           {}};
        if constexpr (fusion_type::has_conv) {
            p.conv_weight = span_of(conv_w_);
            p.conv_norm = span_of(conv_norm_);
        }
        return p;
    }

    // ---- performance options -----------------------------------------------------------------

    /// Tokens per block of `forward`: the block's projections are one matmul call, so the
    /// weights are streamed once per block; its gates, norms and conv follow.
    static constexpr std::size_t block_tokens = 512;

    /// @brief Threads of one `forward`/`prefill` call (default 1): the projections (the matmul
    ///        backend's threads: host_matmul's panels, oneDNN's OpenMP threads), then the tokens,
    ///        are split between `n - 1` threads started for the call and the caller. With
    ///        host_matmul the output is bit-identical for every `n`. @throws config_error for n = 0.
    void set_threads(std::size_t n) {
        if (n == 0) throw config_error("set_threads: n = 0, must be at least 1");
        threads_ = n;
    }
    [[nodiscard]] std::size_t threads() const noexcept { return threads_; }

    /// @brief Chooses the projection weights `forward` and `decode_step` use (see
    ///        `weight_format`). `f32` reads the current weights on every call; the other formats
    ///        take a copy of the current stacked projection (bf16, packed bf16, int8 per output
    ///        channel; the backend's prepacked layout): change the weights afterwards and call
    ///        it again to refresh the copy. The bias is always read live.
    /// @throws config_error for a format the matmul backend cannot run (the format is unchanged).
    void set_weight_format(weight_format f) { matmul_.set_format(weights_view(), f); }
    [[nodiscard]] weight_format projection_format() const noexcept { return matmul_.format(); }
    /// The matmul backend (its `forward_path()` / `decode_path()` name the kernels that run).
    [[nodiscard]] const matmul_type& matmul() const noexcept { return matmul_; }

    /// @brief Frees the calling thread's scratch memory. Every thread keeps its own (a
    ///        `thread_local` workspace per layer type, shared by that type's layers), grown to the
    ///        largest call it has run, so that repeated calls of the same shapes allocate nothing.
    static void release_workspace() {
        local_workspace() = workspace{};
        if constexpr (requires { matmul_type::release_workspace(); }) matmul_type::release_workspace();
    }

    /// @brief Fills every parameter with small random values (examples, benchmarks, tests):
    ///        rows and projections ~ N(0, scale), norm weights ~ 1 + N(0, 0.1), conv ~ N(0, 0.2).
    void randomize(std::uint64_t seed, float scale = 0.05f) {
        std::mt19937_64 rng(seed);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> row(table_.dim());
        for (std::size_t r = 0; r < table_.rows(); ++r) {
            for (auto& v : row) v = scale * normal(rng);
            table_.set_row(r, row);
        }
        for (Eigen::Index i = 0; i < proj_w_.size(); ++i) proj_w_.data()[i] = scale * normal(rng);
        for (Eigen::Index i = 0; i < proj_b_.size(); ++i) proj_b_[i] = scale * normal(rng);
        auto around_one = [&](row_matrix& w) {
            for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = 1.0f + 0.1f * normal(rng);
        };
        around_one(key_norm_);
        around_one(hidden_norm_);
        if constexpr (fusion_type::has_conv) {
            for (Eigen::Index i = 0; i < conv_w_.size(); ++i) conv_w_.data()[i] = 0.2f * normal(rng);
            around_one(conv_norm_);
        }
    }

    // ---- whole sequences ----------------------------------------------------------------------

    /// @brief Global row ids `[B, T, heads]` of raw token ids `[B, T]` (no I/O: the plan step).
    void rows(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len, std::span<row_id> out) const {
        hasher_.rows_tokens(vocab_, raw, batch, seq_len, out, cfg_.dead_token);
    }

    /// @brief Row ids as `forward` with this token mask computes them: when the fusion's mask
    ///        blocks the hash (masked_production_fusion), a 0 marks that position dead (and so
    ///        does the config's dead token); otherwise the mask does not change the rows.
    void rows(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len, std::span<row_id> out,
              std::span<const std::uint8_t> token_mask) const {
        if constexpr (mask_blocks_hash) {
            if (!token_mask.empty()) {
                if (!cfg_.dead_token) return hasher_.rows_tokens(vocab_, raw, batch, seq_len, out, token_mask);
                if (token_mask.size() != raw.size())
                    throw input_error("forward: token mask has " + std::to_string(token_mask.size()) +
                                      " entries, expected B*T = " + std::to_string(raw.size()));
                std::vector<std::uint8_t> live(token_mask.begin(), token_mask.end());
                for (std::size_t i = 0; i < live.size(); ++i)
                    if (raw[i] == *cfg_.dead_token) live[i] = 0;
                return hasher_.rows_tokens(vocab_, raw, batch, seq_len, out, std::span<const std::uint8_t>(live));
            }
        }
        rows(raw, batch, seq_len, out);
    }

    /// @brief Memory vectors `[n, D]` of row ids `[n, heads]`.
    void memory(std::span<const row_id> row_ids, std::span<float> out) const { gather(table_, row_ids, out); }

    /// @brief The layer on raw token ids `[B, T]` and hidden states `[B, T, M, H]`.
    /// @param out `[B, T, M, H]`: Y for the reference fusion (the host adds it to its residual),
    ///        `h + alpha v` for the production fusion. May not alias `hidden`.
    /// @param token_mask optional `[B, T]`, production fusion only: 0 zeroes that token's gate.
    /// @throws input_error for wrong sizes or token ids outside the vocabulary.
    void forward(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len, std::span<const float> hidden,
                 std::span<float> out, std::span<const std::uint8_t> token_mask = {}) const {
        check_sizes(batch, seq_len, hidden.size(), out.size());
        forward_impl(table_, raw, batch, seq_len, {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
                     {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, token_mask, nullptr);
    }

    /// @brief The same with Eigen matrices `[B*T*M, H]` (row-major, any outer stride).
    void forward(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                 const Eigen::Ref<const row_matrix>& hidden, Eigen::Ref<row_matrix> out,
                 std::span<const std::uint8_t> token_mask = {}) const {
        const auto rows_expected = static_cast<Eigen::Index>(detail::checked_mul(
            detail::checked_mul(batch, seq_len, "forward [B, T]"), static_cast<std::size_t>(cfg_.branches), "forward"));
        if (hidden.rows() != rows_expected || hidden.cols() != cfg_.hidden || out.rows() != rows_expected ||
            out.cols() != cfg_.hidden)
            throw input_error("forward: hidden is " + std::to_string(hidden.rows()) + " x " +
                              std::to_string(hidden.cols()) + ", out " + std::to_string(out.rows()) + " x " +
                              std::to_string(out.cols()) + ", expected (B*T*M) x H = " + std::to_string(rows_expected) +
                              " x " + std::to_string(cfg_.hidden));
        forward_impl(table_, raw, batch, seq_len, {hidden.data(), hidden.outerStride()},
                     {out.data(), out.outerStride()}, token_mask, nullptr);
    }

    /// @brief `forward` with the embedding rows read from another table (a table file, mmap,
    ///        sharded or cached storage, another codec) instead of the layer's own.
    /// @throws config_error if the table's shape differs from the layer's layout.
    template <storage_table Table>
    void forward(const Table& rows_table, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                 std::span<const float> hidden, std::span<float> out,
                 std::span<const std::uint8_t> token_mask = {}) const {
        check_sizes(batch, seq_len, hidden.size(), out.size());
        forward_impl(rows_table, raw, batch, seq_len, {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
                     {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, token_mask, nullptr);
    }

    /// @brief The layer on memory vectors that were gathered already (`rows` then a storage's
    ///        `gather`, e.g. by a prefetcher): e `[B*T, D]`, hidden and out `[B, T, M, H]`.
    void forward_memory(std::span<const float> e, std::size_t batch, std::size_t seq_len, std::span<const float> hidden,
                        std::span<float> out, std::span<const std::uint8_t> token_mask = {}) const {
        check_sizes(batch, seq_len, hidden.size(), out.size());
        const std::size_t tokens = batch * seq_len;
        if (e.size() != detail::checked_mul(tokens, memory_dim(), "forward_memory"))
            throw input_error("forward_memory: e has " + std::to_string(e.size()) +
                              " values, expected B*T*D = " + std::to_string(tokens * memory_dim()));
        check_mask(token_mask, tokens);
        const std::size_t d_mem = memory_dim();
        auto memory = [&e, d_mem](workspace&, std::size_t first, std::size_t) { return e.data() + first * d_mem; };
        run(memory, batch, seq_len, {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
            {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, token_mask, nullptr, {});
    }

    // ---- token by token -----------------------------------------------------------------------

    /// @brief A fresh decode state (nothing seen). `max_rollback` bounds `rollback(k)`.
    [[nodiscard]] decode_state new_decode_state(std::size_t max_rollback = 64) const {
        const std::size_t history =
            fusion_type::has_conv ? static_cast<std::size_t>((cfg_.kernel_size - 1) * cfg_.dilation()) : 0;
        return decode_state(ngram_state_type(hasher_, vocab_, cfg_.dead_token, max_rollback), history,
                            fusion_type::has_conv ? branch_width() : 0, max_rollback);
    }

    /// @brief Runs a whole sequence (batch 1) like `forward` and leaves `state` positioned after
    ///        it, ready for `decode_step` (a prefill). `state` must be fresh.
    /// @param token_mask optional `[T]`, as for `forward`.
    void prefill(decode_state& state, std::span<const token_id> raw, std::span<const float> hidden,
                 std::span<float> out, std::span<const std::uint8_t> token_mask = {}) const {
        if (state.position() != 0) throw input_error("prefill: the decode state has already seen tokens");
        check_chunk(raw.size(), hidden.size(), out.size(), "prefill");
        decode_state next = state;
        forward_impl(table_, raw, 1, raw.size(), {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
                     {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, token_mask, &next);
        state = std::move(next);
    }

    /// @brief The next `T = raw.size()` tokens of `state`'s sequence at once (a chunk of a
    ///        chunked prefill, or several decode steps): hidden and out `[T, M, H]`, the same
    ///        values as `decode_step` token by token and as the whole-sequence forward. A fresh
    ///        state runs `prefill`. Without a convolution the chunk is one blocked forward on
    ///        the state's context; the reference fusion runs it step by step. On an error the
    ///        state is unchanged.
    /// @param token_mask optional `[T]`, as for `forward`.
    void extend(decode_state& state, std::span<const token_id> raw, std::span<const float> hidden, std::span<float> out,
                std::span<const std::uint8_t> token_mask = {}) const {
        if (state.position() == 0) return prefill(state, raw, hidden, out, token_mask);
        check_chunk(raw.size(), hidden.size(), out.size(), "extend");
        const std::size_t mh = branch_width();
        check_mask(token_mask, raw.size());
        auto keep = [&](std::size_t t) { return token_mask.empty() || token_mask[t] != 0; };
        decode_state next = state;
        if constexpr (fusion_type::has_conv) {
            for (std::size_t t = 0; t < raw.size(); ++t)
                decode_step(next, raw[t], hidden.subspan(t * mh, mh), out.subspan(t * mh, mh), keep(t));
        } else {
            workspace& ws = local_workspace();
            const std::size_t heads = num_heads(), d_mem = memory_dim(), n = raw.size();
            row_id* ids = grow(ws.rows, detail::checked_mul(n, heads, "extend rows"));
            for (std::size_t t = 0; t < n; ++t)
                next.ngram_.push(raw[t], std::span<row_id>(ids + t * heads, heads), !mask_blocks_hash || keep(t));
            auto memory = [this, ids, heads, d_mem](workspace& tws, std::size_t first, std::size_t count) {
                float* e = grow(tws.e, count * d_mem);
                table_.gather(std::span<const row_id>(ids + first * heads, count * heads),
                              std::span<float>(e, count * d_mem));
                return static_cast<const float*>(e);
            };
            run(memory, 1, n, {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
                {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, token_mask, nullptr, {});
            for (std::size_t t = 0; t < n; ++t) next.advance();
        }
        state = std::move(next);
    }

    /// @brief One token of one sequence: hidden `[M, H]` -> out `[M, H]`, as the whole-sequence
    ///        forward would give at this position.
    /// @param keep production fusion: false zeroes this token's gate (the token mask).
    void decode_step(decode_state& state, token_id raw, std::span<const float> hidden, std::span<float> out,
                     bool keep = true) const {
        decode_step(table_, state, raw, hidden, out, keep);
    }

    /// @brief `decode_step` with the rows read from another table (see `forward(rows_table, ...)`).
    template <storage_table Table>
    void decode_step(const Table& rows_table, decode_state& state, token_id raw, std::span<const float> hidden,
                     std::span<float> out, bool keep = true) const {
        check_table(rows_table);
        check_step(hidden.size(), out.size(), keep);
        workspace& ws = local_workspace();
        const auto token_rows = stage_step(ws, state, raw, keep);
        float* e = grow(ws.step_e, memory_dim());
        rows_table.gather(token_rows, std::span<float>(e, memory_dim()));
        commit_step(ws, state);
        step_apply(ws, state, e, hidden, out, keep);
    }

    /// @brief `decode_step` on a memory vector fetched already (e.g. by a prefetcher from a
    ///        decode plan): `e` (D values) must be the rows of `raw` at this position.
    /// @param expected_rows if given, the row ids `e` was gathered from; input_error (state
    ///        unchanged) if they are not this position's rows.
    void decode_step_memory(decode_state& state, token_id raw, std::span<const float> e, std::span<const float> hidden,
                            std::span<float> out, bool keep = true, std::span<const row_id> expected_rows = {}) const {
        check_step(hidden.size(), out.size(), keep);
        if (e.size() != memory_dim())
            throw input_error("decode_step_memory: e has " + std::to_string(e.size()) +
                              " values, expected D = " + std::to_string(memory_dim()));
        workspace& ws = local_workspace();
        const auto token_rows = stage_step(ws, state, raw, keep);
        if (!expected_rows.empty() &&
            !std::equal(token_rows.begin(), token_rows.end(), expected_rows.begin(), expected_rows.end()))
            throw input_error("decode_step_memory: token " + std::to_string(raw) +
                              " does not give the rows the memory vector was gathered from");
        commit_step(ws, state);
        step_apply(ws, state, e.data(), hidden, out, keep);
    }

private:
    void check_step(std::size_t hidden_size, std::size_t out_size, bool keep) const {
        if (hidden_size != branch_width() || out_size != branch_width())
            throw input_error("decode_step: hidden and out need M*H = " + std::to_string(branch_width()) + " values");
        if (!keep && !fusion_type::supports_token_mask)
            throw input_error("decode_step: a token mask needs a fusion that supports it (production_fusion)");
    }

    /// A row-major `[rows, H]` view with a row stride (in floats).
    template <class T>
    struct strided {
        T* data;
        Eigen::Index stride;
        T* row(std::size_t r) const noexcept { return data + static_cast<Eigen::Index>(r) * stride; }
    };

    /// @brief Scratch memory of one thread: grown to the largest call seen, then reused, so that
    ///        repeated calls with the same shapes allocate nothing.
    struct workspace {
        std::vector<row_id> rows;       ///< [B*T, heads] row ids of a forward
        std::vector<float> e;           ///< [block, D] gathered memory vectors
        std::vector<float> eq;          ///< [block, D] memory vectors as the projection takes them (projection_type)
        std::vector<float> p;           ///< [block, (1+M)H] projections
        std::vector<float> alpha;       ///< [block, M] gates
        std::vector<float> u, y;        ///< [H] gated value, [M*H] conv pre-activation
        std::vector<float> x;           ///< [B*T, M*H] normalised conv input of a forward
        std::vector<float> conv_t;      ///< [Kc, M*H] conv weights, tap-major
        std::vector<float> zeros;       ///< [M*H] the conv input before a sequence starts
        std::vector<const float*> taps; ///< [Kc] conv input rows of one token
        std::vector<row_id> step_rows;
        std::vector<float> step_e, step_p;
        std::optional<ngram_state_type> step_ngram;
    };

    static workspace& local_workspace() {
        thread_local workspace ws;
        return ws;
    }

    /// @brief Where `run` takes a block's memory vectors from: a reference to a callable
    ///        `const float*(workspace&, first token, count)`, called once per block. Passing it
    ///        by reference, not as a template parameter, compiles `run` once per layer type
    ///        instead of once per storage type and codec.
    class memory_source {
    public:
        template <class F>
        memory_source(const F& f) noexcept // NOLINT(google-explicit-constructor): a view, like span
            : object_(&f), call_([](const void* o, workspace& ws, std::size_t first, std::size_t n) {
                  return static_cast<const float*>((*static_cast<const F*>(o))(ws, first, n));
              }) {}
        const float* operator()(workspace& ws, std::size_t first, std::size_t n) const {
            return call_(object_, ws, first, n);
        }

    private:
        const void* object_;
        const float* (*call_)(const void*, workspace&, std::size_t, std::size_t);
    };

    template <class V>
    static V* grow(std::vector<V>& v, std::size_t n) {
        if (v.size() < n) v.resize(n);
        return v.data();
    }

    [[nodiscard]] std::size_t proj_rows() const noexcept { return static_cast<std::size_t>(proj_w_.rows()); }
    [[nodiscard]] std::size_t conv_history() const noexcept {
        return fusion_type::has_conv ? static_cast<std::size_t>((cfg_.kernel_size - 1) * cfg_.dilation()) : 0;
    }

    /// Pushes `raw` into a copy of `state`'s n-gram window (the calling thread's, reused) and
    /// writes the position's rows; the caller commits with `commit_step` once nothing can fail.
    std::span<const row_id> stage_step(workspace& ws, const decode_state& state, token_id raw, bool keep) const {
        if (ws.step_ngram)
            *ws.step_ngram = state.ngram_;
        else
            ws.step_ngram.emplace(state.ngram_);
        const std::span<row_id> rows(grow(ws.step_rows, num_heads()), num_heads());
        ws.step_ngram->push(raw, rows, !mask_blocks_hash || keep); // validates raw
        return rows;
    }
    static void commit_step(workspace& ws, decode_state& state) noexcept {
        using std::swap;
        swap(state.ngram_, *ws.step_ngram);
    }

    /// Projections, gate and fusion of one decode position; advances the state.
    void step_apply(workspace& ws, decode_state& state, const float* e, std::span<const float> hidden,
                    std::span<float> out, bool keep) const {
        const std::size_t d_mem = memory_dim(), rows = proj_rows();
        if constexpr (projection_type::transforms_input) {
            float* eq = grow(ws.eq, d_mem);
            projection_type::prepare(e, eq, d_mem);
            e = eq;
        }
        float* p = grow(ws.step_p, rows);
        matmul_.gemv(weights_view(), e, p);
        if constexpr (projection_type::transforms_output) projection_type::finish(p, rows);
        const auto mh = branch_width();
        float* alpha = grow(ws.alpha, static_cast<std::size_t>(cfg_.branches));
        float* u = grow(ws.u, static_cast<std::size_t>(cfg_.hidden));
        const strided<const float> hid{hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)};
        const strided<float> o{out.data(), static_cast<Eigen::Index>(cfg_.hidden)};
        if constexpr (fusion_type::has_conv) {
            token_math(p, hid, 0, o, keep, state.row(state.pos_), alpha, u);
            const float* zeros = zero_row(ws);
            float* conv_t = transposed_conv(ws);
            const auto kc = static_cast<std::size_t>(cfg_.kernel_size);
            const auto dil = static_cast<std::size_t>(cfg_.dilation());
            const float** taps = grow(ws.taps, kc);
            const std::size_t t = state.pos_;
            for (std::size_t k = 0; k < kc; ++k) {
                const std::size_t back = (kc - 1 - k) * dil;
                taps[k] = back <= t ? state.row(t - back) : zeros;
            }
            conv_fuse(taps, kc, conv_t, p, alpha, grow(ws.y, mh), out.data(), static_cast<Eigen::Index>(cfg_.hidden),
                      static_cast<std::size_t>(cfg_.hidden), static_cast<std::size_t>(cfg_.branches));
        } else {
            token_math(p, hid, 0, o, keep, nullptr, alpha, u);
        }
        state.advance();
    }

    /// Zero projections, unit norm weights, a zero convolution.
    void init_parameters() {
        const auto h = static_cast<Eigen::Index>(cfg_.hidden);
        const auto m = static_cast<Eigen::Index>(cfg_.branches);
        const auto d = static_cast<Eigen::Index>(cfg_.memory_dim());
        proj_w_ = row_matrix::Zero((1 + m) * h, d);
        proj_b_ = Eigen::VectorXf::Zero((1 + m) * h);
        key_norm_ = row_matrix::Ones(m, h);
        hidden_norm_ = row_matrix::Ones(m, h);
        if constexpr (fusion_type::has_conv) {
            conv_w_ = row_matrix::Zero(m * h, cfg_.kernel_size);
            conv_norm_ = row_matrix::Ones(m, h);
        }
    }

    /// Checks hidden and out of a T-token chunk; returns T*M*H.
    std::size_t check_chunk(std::size_t tokens, std::size_t hidden_size, std::size_t out_size, const char* what) const {
        const std::size_t width = detail::checked_mul(tokens, branch_width(), what);
        if (hidden_size != width || out_size != width)
            throw input_error(std::string(what) + ": hidden and out need T*M*H = " + std::to_string(width) + " values");
        return width;
    }

    void check_sizes(std::size_t batch, std::size_t seq_len, std::size_t hidden_size, std::size_t out_size) const {
        const std::size_t tokens = detail::checked_mul(batch, seq_len, "forward [B, T]");
        const std::size_t width = detail::checked_mul(tokens, branch_width(), "forward [B, T, M, H]");
        if (hidden_size != width || out_size != width)
            throw input_error("forward: hidden has " + std::to_string(hidden_size) + " and out " +
                              std::to_string(out_size) + " values, expected B*T*M*H = " + std::to_string(width));
    }

    static layer_config validated(layer_config cfg) {
        cfg.validate();
        return cfg;
    }

    static layer_layout make_layout_for(const layer_config& cfg, const canonical_table& vocab,
                                        std::optional<std::vector<std::int64_t>> multipliers) {
        if (vocab.empty()) throw config_error("layer: the canonical vocabulary is empty");
        if (cfg.dead_token && (*cfg.dead_token < 0 || static_cast<std::size_t>(*cfg.dead_token) >= vocab.vocab_size()))
            throw config_error("config: dead_token " + std::to_string(*cfg.dead_token) +
                               " is outside the vocabulary [0, " + std::to_string(vocab.vocab_size()) + ")");
        auto layout =
            make_layout(cfg.hash, cfg.layer_id, vocab.canonical_size(), vocab.canonical_pad_id(cfg.hash.pad_id));
        if (multipliers) set_multipliers(layout, std::move(*multipliers));
        return layout;
    }

    [[nodiscard]] std::size_t branch_width() const noexcept {
        return static_cast<std::size_t>(cfg_.branches * cfg_.hidden);
    }
    Eigen::Index branch(std::size_t m) const {
        if (m >= static_cast<std::size_t>(cfg_.branches))
            throw input_error("branch " + std::to_string(m) + " is outside [0, " + std::to_string(cfg_.branches) + ")");
        return static_cast<Eigen::Index>(m);
    }
    Eigen::Index key_row(std::size_t m) const { return (1 + branch(m)) * cfg_.hidden; }

    /// The calling thread's row of M*H zeros (the conv input before a sequence starts).
    const float* zero_row(workspace& ws) const {
        const std::size_t mh = branch_width();
        if (ws.zeros.size() < mh) ws.zeros.assign(mh, 0.0f);
        return ws.zeros.data();
    }

    /// The conv weights tap-major [Kc, M*H] (read from `conv_w_` on every call: it is public).
    float* transposed_conv(workspace& ws) const {
        const std::size_t mh = branch_width();
        const auto kc = static_cast<std::size_t>(cfg_.kernel_size);
        float* t = grow(ws.conv_t, mh * kc);
        const float* w = conv_w_.data();
        for (std::size_t ch = 0; ch < mh; ++ch)
            for (std::size_t k = 0; k < kc; ++k) t[k * mh + ch] = w[ch * kc + k];
        return t;
    }

    /// @brief Gate and fusion of one token. `p` holds the token's (1+M)H projections, bias
    ///        included. Writes the M gates to `alpha`; with the reference
    ///        fusion, RMSNorm(u) (the conv input) to `normed` [M*H]; with the production fusion,
    ///        `h + alpha v` to `out`. `u` is scratch of H floats.
    void token_math(const float* p, strided<const float> hidden, std::size_t first_row, strided<float> out, bool keep,
                    float* normed, float* alpha, float* u) const {
        const auto h = static_cast<std::size_t>(cfg_.hidden);
        const float* v = p;
        const double inv_h = 1.0 / static_cast<double>(h);
        const double inv_sqrt_h = 1.0 / std::sqrt(static_cast<double>(h));
        for (std::size_t m = 0; m < static_cast<std::size_t>(cfg_.branches); ++m) {
            const float* k = p + (1 + m) * h;
            const float* hm = hidden.row(first_row + m);
            const auto sums = kernels::gate_sums_of(k, hm, key_norm_.row(static_cast<Eigen::Index>(m)).data(),
                                                    hidden_norm_.row(static_cast<Eigen::Index>(m)).data(), h);
            const float s = bodies::gate_score(sums.dot, sums.kk, sums.hh, inv_h, inv_sqrt_h, cfg_.gate_norm_eps);
            const float a = keep ? gate_(s) : 0.0f;
            alpha[m] = a;
            if constexpr (fusion_type::has_conv) {
                kernels::scale_values(v, a, u, h);
                const double ru = bodies::rms_scale(kernels::sum_squares(u, h), inv_h, cfg_.conv_norm_eps);
                kernels::scale_norm(u, ru, conv_norm_.row(static_cast<Eigen::Index>(m)).data(), normed + m * h, h);
            } else if (keep) {
                float* o = out.row(first_row + m);
                for (std::size_t c = 0; c < h; ++c) o[c] = bodies::production_value(hm[c], a, v[c], true);
            } else { // a masked token comes back unchanged, bit for bit (h + 0 * v would turn -0 into +0)
                std::copy_n(hm, h, out.row(first_row + m));
            }
        }
    }

#if defined(__GNUC__) || defined(__clang__)
#define ENGRAM_LAYER_NOINLINE __attribute__((noinline))
#else
#define ENGRAM_LAYER_NOINLINE
#endif
    /// @brief Y = u + SiLU(conv) of one token, u_m = alpha_m v: `taps[k]` is the normalised row
    ///        `(Kc-1-k) * dilation` positions back (a zero row before the start), `conv_t` the
    ///        tap-major weights. Out of line, so that every caller (forward on any thread,
    ///        decode) runs the same instructions and rounds the same way.
    ENGRAM_LAYER_NOINLINE static void conv_fuse(const float* const* taps, std::size_t kc, const float* conv_t,
                                                const float* v, const float* alpha, float* y, float* out,
                                                Eigen::Index out_stride, std::size_t h, std::size_t branches) noexcept {
        const std::size_t mh = h * branches;
        for (std::size_t m = 0; m < branches; ++m)
            kernels::conv_silu(taps, kc, conv_t, mh, m * h, v, alpha[m], y,
                               out + static_cast<Eigen::Index>(m) * out_stride, h);
    }
#undef ENGRAM_LAYER_NOINLINE

    /// Runs `body(workspace, lo, hi)` over [0, count) on `threads_` threads (detail::split_ranges).
    template <class Body>
    void on_threads(std::size_t count, Body&& body) const {
        detail::split_ranges(threads_, count, [&](std::size_t lo, std::size_t hi) { body(local_workspace(), lo, hi); });
    }

    [[nodiscard]] matmul_weights weights_view() const noexcept {
        return {proj_w_.data(), proj_b_.data(), proj_rows(), memory_dim()};
    }

    /// @brief The layer on B sequences of T tokens, in blocks of `block_tokens` tokens: the
    ///        block's memory vectors, its projections (one call of the matmul backend), the
    ///        gates, u and RMSNorm token by token, then the convolution. With `threads_ > 1`,
    ///        each of the three phases splits its panels or tokens between threads; every value
    ///        is computed by the same code on the same operands as with one thread, so the output
    ///        is bit-identical (with host_matmul).
    void run(memory_source memory, std::size_t batch, std::size_t seq_len, strided<const float> hidden,
             strided<float> out, std::span<const std::uint8_t> token_mask, decode_state* state,
             std::span<const token_id> raw) const {
        workspace& ws = local_workspace();
        const std::size_t tokens = batch * seq_len, mh = branch_width(), rows = proj_rows();
        const auto m_count = static_cast<std::size_t>(cfg_.branches);
        const auto h = static_cast<std::size_t>(cfg_.hidden);
        const auto kc = static_cast<std::size_t>(cfg_.kernel_size);
        const auto dil = static_cast<std::size_t>(cfg_.dilation());
        float* x = nullptr;
        const float* conv_t = nullptr;
        const float* zeros = nullptr;
        if constexpr (fusion_type::has_conv) {
            x = grow(ws.x, detail::checked_mul(tokens, mh, "forward conv input"));
            conv_t = transposed_conv(ws);
            zeros = zero_row(ws);
        }
        for (std::size_t first = 0; first < tokens; first += block_tokens) {
            const std::size_t nb = std::min(block_tokens, tokens - first);
            const float* e = memory(ws, first, nb);
            if constexpr (projection_type::transforms_input) {
                const std::size_t d_mem = memory_dim();
                float* eq = grow(ws.eq, nb * d_mem);
                for (std::size_t i = 0; i < nb; ++i) projection_type::prepare(e + i * d_mem, eq + i * d_mem, d_mem);
                e = eq;
            }
            float* p = grow(ws.p, nb * rows);
            float* alpha = grow(ws.alpha, nb * m_count);
            matmul_.forward(weights_view(), e, nb, p, threads_);
            if constexpr (projection_type::transforms_output) projection_type::finish(p, nb * rows);
            auto gate = [&](std::size_t i, float* u) {
                const std::size_t g = first + i;
                const bool keep = token_mask.empty() || token_mask[g] != 0;
                token_math(p + i * rows, hidden, g * m_count, out, keep, fusion_type::has_conv ? x + g * mh : nullptr,
                           alpha + i * m_count, u);
            };
            auto convolve = [&](std::size_t i, const float** taps, float* y) {
                const std::size_t g = first + i, b = g / seq_len, t = g % seq_len;
                for (std::size_t k = 0; k < kc; ++k) {
                    const std::size_t back = (kc - 1 - k) * dil;
                    taps[k] = back <= t ? x + (b * seq_len + t - back) * mh : zeros;
                }
                conv_fuse(taps, kc, conv_t, p + i * rows, alpha + i * m_count, y, out.row(g * m_count), out.stride, h,
                          m_count);
            };
            if (threads_ <= 1) {
                // One thread: each token's convolution right after its gate, while its rows are
                // in cache (the taps are earlier tokens', already done). The same operations as
                // the two passes below, so the same bits.
                float* u = grow(ws.u, h);
                float* y = fusion_type::has_conv ? grow(ws.y, mh) : nullptr;
                const float** taps = grow(ws.taps, kc);
                for (std::size_t i = 0; i < nb; ++i) {
                    gate(i, u);
                    if constexpr (fusion_type::has_conv) convolve(i, taps, y);
                }
            } else {
                // Threads: every gate first (a token's taps may belong to another thread's range).
                on_threads(nb, [&](workspace& tws, std::size_t lo, std::size_t hi) {
                    float* u = grow(tws.u, h);
                    for (std::size_t i = lo; i < hi; ++i) gate(i, u);
                });
                if constexpr (fusion_type::has_conv)
                    on_threads(nb, [&](workspace& tws, std::size_t lo, std::size_t hi) {
                        float* y = grow(tws.y, mh);
                        const float** taps = grow(tws.taps, kc);
                        for (std::size_t i = lo; i < hi; ++i) convolve(i, taps, y);
                    });
            }
        }
        if (state != nullptr) {
            // Leave the n-gram window and the last normalised rows of the (single) sequence in the state.
            const std::span<row_id> scratch(grow(ws.step_rows, num_heads()), num_heads());
            const std::size_t keep_rows = state->capacity_;
            for (std::size_t t = 0; t < seq_len; ++t) {
                state->ngram_.push(raw[t], scratch, !mask_blocks_hash || token_mask.empty() || token_mask[t] != 0);
                if constexpr (fusion_type::has_conv)
                    if (t + keep_rows >= seq_len) std::copy_n(x + t * mh, mh, state->row(state->pos_));
                state->advance();
            }
        }
    }

    template <class Table>
    void forward_impl(const Table& rows_table, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                      strided<const float> hidden, strided<float> out, std::span<const std::uint8_t> token_mask,
                      decode_state* state) const {
        const std::size_t tokens = batch * seq_len;
        check_mask(token_mask, tokens);
        check_table(rows_table);
        workspace& ws = local_workspace();
        const std::size_t heads = num_heads(), d_mem = memory_dim();
        row_id* ids = grow(ws.rows, detail::checked_mul(tokens, heads, "forward rows"));
        rows(raw, batch, seq_len, std::span<row_id>(ids, tokens * heads), token_mask);
        // Each block gathers its memory vectors into the calling thread's workspace.
        auto memory = [&rows_table, ids, heads, d_mem](workspace& tws, std::size_t first, std::size_t n) {
            float* e = grow(tws.e, n * d_mem);
            rows_table.gather(std::span<const row_id>(ids + first * heads, n * heads), std::span<float>(e, n * d_mem));
            return static_cast<const float*>(e);
        };
        run(memory, batch, seq_len, hidden, out, token_mask, state, raw);
    }

    template <class Table>
    void check_table(const Table& t) const {
        if (t.rows() != static_cast<std::size_t>(layout().total_rows) ||
            t.dim() != static_cast<std::size_t>(layout().head_dim))
            throw config_error("forward: the row table has " + std::to_string(t.rows()) + " x " +
                               std::to_string(t.dim()) + " rows, the layer needs " +
                               std::to_string(layout().total_rows) + " x " + std::to_string(layout().head_dim));
    }

    static void check_mask(std::span<const std::uint8_t> token_mask, std::size_t tokens) {
        if (token_mask.empty()) return;
        if constexpr (!fusion_type::supports_token_mask)
            throw input_error("forward: a token mask needs a fusion that supports it (production_fusion)");
        if (token_mask.size() != tokens)
            throw input_error("forward: token mask has " + std::to_string(token_mask.size()) +
                              " entries, expected B*T = " + std::to_string(tokens));
    }

    layer_config cfg_;
    canonical_table vocab_;
    hasher_type hasher_;
    storage_table_type table_;
    gate_type gate_{};
    row_matrix proj_w_;
    Eigen::VectorXf proj_b_;
    row_matrix key_norm_, hidden_norm_;
    row_matrix conv_w_, conv_norm_;
    std::size_t threads_ = 1;
    matmul_type matmul_;
};

ENGRAM_END_NAMESPACE
