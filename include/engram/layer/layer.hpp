#pragma once
// SPDX-License-Identifier: MIT
// The Engram layer: lookup, context-aware gate and fusion, for whole sequences and token by token
// (spec sections 4-7). Uses Eigen for the projections.

#include <engram/backend/host.hpp>
#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/gather.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/layer/config.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/ngram/decode_state.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <Eigen/Core> // for Matrix, Map, Ref

#include <algorithm> // for copy_n
#include <cmath>     // for sqrt, exp
#include <cstddef>   // for size_t
#include <cstdint>   // for int64_t, uint8_t
#include <optional>  // for optional
#include <random>    // for mt19937_64, normal_distribution
#include <span>      // for span
#include <string>    // for to_string
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
    using backend_type = host_backend;
};

/// Row-major float matrix, the layout of PyTorch weights and of `[tokens, width]` activations.
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// @brief One Engram layer, composed from `Policies` (see `layer_policies`).
///
/// Data flow per token: raw id -> canonical id -> n-gram rows -> memory vector e (width D) ->
/// `v = W_V e + b_V` (shared) and `k_m = W_K[m] e + b_K[m]` per branch (one GEMM for all) ->
/// gate `alpha_m = gate(<RMSNorm(k_m), RMSNorm(h_m)> / sqrt(H))` -> fusion.
///
/// Activations are `[B, T, M, H]` row-major; the Eigen overloads take `[B*T*M, H]` matrices and
/// accept strided views (any outer stride) without copying.
template <class Policies = layer_policies>
class layer {
public:
    using policies_type = Policies;
    using hash_type = typename Policies::hash_type;
    using orders_type = typename Policies::orders_type;
    using storage_type = typename Policies::storage_type;
    using row_type = typename Policies::row_type;
    using gate_type = typename Policies::gate_type;
    using fusion_type = typename Policies::fusion_type;
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
    static_assert(std::is_same_v<backend_type, host_backend>,
                  "engram::layer runs on host_backend; device backends have their own headers");

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

    // ---- configuration and parameters -------------------------------------------------------

    [[nodiscard]] const layer_config& config() const noexcept { return cfg_; }
    [[nodiscard]] const layer_layout& layout() const noexcept { return hasher_.layout(); }
    [[nodiscard]] const canonical_table& vocab() const noexcept { return vocab_; }
    [[nodiscard]] const hasher_type& hasher() const noexcept { return hasher_; }
    [[nodiscard]] storage_table_type& table() noexcept { return table_; }
    [[nodiscard]] const storage_table_type& table() const noexcept { return table_; }
    /// Number of memory heads (orders x K) and the memory width D.
    [[nodiscard]] std::size_t num_heads() const noexcept { return hasher_.num_heads(); }
    [[nodiscard]] std::size_t memory_dim() const noexcept { return static_cast<std::size_t>(cfg_.memory_dim()); }

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
        apply(e, {}, batch, seq_len, {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
              {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, token_mask, nullptr);
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
    void prefill(decode_state& state, std::span<const token_id> raw, std::span<const float> hidden,
                 std::span<float> out) const {
        if (state.position() != 0) throw input_error("prefill: the decode state has already seen tokens");
        const std::size_t width = detail::checked_mul(raw.size(), branch_width(), "prefill [T, M, H]");
        if (hidden.size() != width || out.size() != width)
            throw input_error("prefill: hidden and out need T*M*H = " + std::to_string(width) + " values");
        decode_state next = state;
        forward_impl(table_, raw, 1, raw.size(), {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)},
                     {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, {}, &next);
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
        std::vector<row_id> token_rows(num_heads());
        auto next = state.ngram_.fork();
        next.push(raw, token_rows); // validates raw
        std::vector<float> e(memory_dim());
        rows_table.gather(std::span<const row_id>(token_rows), std::span<float>(e));
        state.ngram_ = std::move(next);
        step_apply(state, e, hidden, out, keep);
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
        std::vector<row_id> token_rows(num_heads());
        auto next = state.ngram_.fork();
        next.push(raw, token_rows);
        if (!expected_rows.empty() &&
            !std::equal(token_rows.begin(), token_rows.end(), expected_rows.begin(), expected_rows.end()))
            throw input_error("decode_step_memory: token " + std::to_string(raw) +
                              " does not give the rows the memory vector was gathered from");
        state.ngram_ = std::move(next);
        step_apply(state, e, hidden, out, keep);
    }

private:
    void check_step(std::size_t hidden_size, std::size_t out_size, bool keep) const {
        if (hidden_size != branch_width() || out_size != branch_width())
            throw input_error("decode_step: hidden and out need M*H = " + std::to_string(branch_width()) + " values");
        if (!keep && !fusion_type::supports_token_mask)
            throw input_error("decode_step: a token mask needs a fusion that supports it (production_fusion)");
    }

    /// Projections, gate and fusion of one decode position; advances the state.
    void step_apply(decode_state& state, std::span<const float> e, std::span<const float> hidden, std::span<float> out,
                    bool keep) const {
        const Eigen::Map<const row_matrix> em(e.data(), 1, static_cast<Eigen::Index>(memory_dim()));
        row_matrix p = em * proj_w_.transpose();
        p.row(0) += proj_b_.transpose();
        std::vector<float> u(fusion_type::has_conv ? branch_width() : 0);
        token_math(p.data(), {hidden.data(), static_cast<Eigen::Index>(cfg_.hidden)}, 0,
                   {out.data(), static_cast<Eigen::Index>(cfg_.hidden)}, keep,
                   fusion_type::has_conv ? state.row(state.pos_) : nullptr, u.data());
        if constexpr (fusion_type::has_conv) conv_output(state, u.data(), out.data());
        state.advance();
    }

    /// A row-major `[rows, H]` view with a row stride (in floats).
    template <class T>
    struct strided {
        T* data;
        Eigen::Index stride;
        T* row(std::size_t r) const noexcept { return data + static_cast<Eigen::Index>(r) * stride; }
    };

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

    /// sum(x^2) in double: the norms then match float32 PyTorch to rounding.
    static double sum_squares(const float* x, std::size_t n) noexcept {
        double s = 0;
        for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
        return s;
    }

    /// Gate and fusion of one token: `p` holds the token's (1+M)H projections. With the
    /// reference fusion, writes u (M*H) to `u_out` and RMSNorm(u) to `normed` (the conv input);
    /// with the production fusion, writes `h + alpha v` to `out`.
    void token_math(const float* p, strided<const float> hidden, std::size_t first_row, strided<float> out, bool keep,
                    float* normed, float* u_out) const {
        const auto h = static_cast<std::size_t>(cfg_.hidden);
        const float* v = p;
        const double inv_sqrt_h = 1.0 / std::sqrt(static_cast<double>(h));
        for (std::size_t m = 0; m < static_cast<std::size_t>(cfg_.branches); ++m) {
            const float* k = p + (1 + m) * h;
            const float* hm = hidden.row(first_row + m);
            const double rk = 1.0 / std::sqrt(sum_squares(k, h) / static_cast<double>(h) + cfg_.gate_norm_eps);
            const double rh = 1.0 / std::sqrt(sum_squares(hm, h) / static_cast<double>(h) + cfg_.gate_norm_eps);
            const float* w1 = key_norm_.row(static_cast<Eigen::Index>(m)).data();
            const float* w2 = hidden_norm_.row(static_cast<Eigen::Index>(m)).data();
            double dot = 0;
            for (std::size_t c = 0; c < h; ++c)
                dot += (static_cast<double>(k[c]) * w1[c]) * (static_cast<double>(hm[c]) * w2[c]);
            const float s = static_cast<float>(dot * rk * rh * inv_sqrt_h);
            const float alpha = keep ? gate_(s) : 0.0f;
            if constexpr (fusion_type::has_conv) {
                float* u = u_out + m * h;
                for (std::size_t c = 0; c < h; ++c) u[c] = alpha * v[c];
                const double ru = 1.0 / std::sqrt(sum_squares(u, h) / static_cast<double>(h) + cfg_.conv_norm_eps);
                const float* cw = conv_norm_.row(static_cast<Eigen::Index>(m)).data();
                float* x = normed + m * h;
                for (std::size_t c = 0; c < h; ++c) x[c] = static_cast<float>(u[c] * ru) * cw[c];
            } else {
                float* o = out.row(first_row + m);
                for (std::size_t c = 0; c < h; ++c) o[c] = hm[c] + alpha * v[c];
            }
        }
    }

    static float silu(float y) noexcept { return y / (1.0f + std::exp(-y)); }

    /// Y = u + SiLU(conv) for the newest row of `state` (already written at its position).
    void conv_output(const decode_state& state, const float* u, float* out) const {
        const std::size_t channels = branch_width();
        const auto kc = static_cast<std::size_t>(cfg_.kernel_size);
        const auto dil = static_cast<std::size_t>(cfg_.dilation());
        const std::size_t t = state.pos_;
        for (std::size_t ch = 0; ch < channels; ++ch) {
            const float* w = conv_w_.row(static_cast<Eigen::Index>(ch)).data();
            float y = 0.0f;
            for (std::size_t i = 0; i < kc; ++i) {
                const std::size_t back = (kc - 1 - i) * dil;
                if (back <= t) y += w[i] * state.row(t - back)[ch];
            }
            out[ch] = u[ch] + silu(y);
        }
    }

    template <class Table>
    void forward_impl(const Table& rows_table, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                      strided<const float> hidden, strided<float> out, std::span<const std::uint8_t> token_mask,
                      decode_state* state) const {
        const std::size_t tokens = batch * seq_len;
        check_mask(token_mask, tokens);
        std::vector<row_id> row_ids(detail::checked_mul(tokens, num_heads(), "forward rows"));
        rows(raw, batch, seq_len, row_ids);
        std::vector<float> e(detail::checked_mul(tokens, memory_dim(), "forward memory"));
        check_table(rows_table);
        rows_table.gather(std::span<const row_id>(row_ids), std::span<float>(e));
        apply(e, raw, batch, seq_len, hidden, out, token_mask, state);
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

    /// Projections, gate and fusion on gathered memory vectors e [B*T, D]; with `state`
    /// (batch 1), also pushes `raw` into it and leaves the conv history there.
    void apply(std::span<const float> e, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
               strided<const float> hidden, strided<float> out, std::span<const std::uint8_t> token_mask,
               decode_state* state) const {
        const std::size_t tokens = batch * seq_len;
        const std::size_t heads = num_heads(), d_mem = memory_dim(), mh = branch_width();

        // One GEMM for the value and every key projection.
        const Eigen::Map<const row_matrix> em(e.data(), static_cast<Eigen::Index>(tokens),
                                              static_cast<Eigen::Index>(d_mem));
        row_matrix p(static_cast<Eigen::Index>(tokens), proj_w_.rows());
        p.noalias() = em * proj_w_.transpose();
        p.rowwise() += proj_b_.transpose();

        const auto m_branches = static_cast<std::size_t>(cfg_.branches);
        if constexpr (!fusion_type::has_conv) {
            for (std::size_t i = 0; i < tokens; ++i)
                token_math(p.row(static_cast<Eigen::Index>(i)).data(), hidden, i * m_branches, out,
                           token_mask.empty() || token_mask[i] != 0, nullptr, nullptr);
            if (state != nullptr) {
                std::vector<row_id> scratch(heads);
                for (token_id t : raw) {
                    state->ngram_.push(t, scratch);
                    state->advance();
                }
            }
        } else {
            // Per sequence: u and the normalised conv input for all T positions, then the conv.
            std::vector<float> u(seq_len * mh), x(seq_len * mh);
            const auto kc = static_cast<std::size_t>(cfg_.kernel_size);
            const auto dil = static_cast<std::size_t>(cfg_.dilation());
            for (std::size_t b = 0; b < batch; ++b) {
                for (std::size_t t = 0; t < seq_len; ++t) {
                    const std::size_t i = b * seq_len + t;
                    token_math(p.row(static_cast<Eigen::Index>(i)).data(), hidden, i * m_branches, out, true,
                               x.data() + t * mh, u.data() + t * mh);
                }
                for (std::size_t t = 0; t < seq_len; ++t) {
                    const std::size_t i = b * seq_len + t;
                    for (std::size_t m = 0; m < m_branches; ++m) {
                        float* o = out.row(i * m_branches + m);
                        const std::size_t base = m * static_cast<std::size_t>(cfg_.hidden);
                        for (std::size_t c = 0; c < static_cast<std::size_t>(cfg_.hidden); ++c) {
                            const std::size_t ch = base + c;
                            const float* w = conv_w_.row(static_cast<Eigen::Index>(ch)).data();
                            float y = 0.0f;
                            for (std::size_t k = 0; k < kc; ++k) {
                                const std::size_t back = (kc - 1 - k) * dil;
                                if (back <= t) y += w[k] * x[(t - back) * mh + ch];
                            }
                            o[c] = u[t * mh + ch] + silu(y);
                        }
                    }
                }
            }
            if (state != nullptr) {
                // Leave the last rows of the (single) sequence in the state's history.
                std::vector<row_id> scratch(heads);
                for (std::size_t t = 0; t < seq_len; ++t) {
                    state->ngram_.push(raw[t], scratch);
                    std::copy_n(x.data() + t * mh, mh, state->row(state->pos_));
                    state->advance();
                }
            }
        }
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
};

ENGRAM_END_NAMESPACE
