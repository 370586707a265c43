#pragma once
// SPDX-License-Identifier: MIT
// The CUDA backend's Engram layer: `engram::layer<Policies, cuda_backend>`, selected by
// `Policies::backend_type = cuda_backend`. The same math as the host layer (engram/layer/layer.hpp),
// step for step: the hash kernel, the gather from a device or host-mapped table, the projection
// through cuBLAS, the gate and fusion kernels; each value by the host's bodies. A prefetch API
// starts a batch's lookup on a side stream ahead of the layer.

#include <engram/cuda/fusion.cuh>
#include <engram/cuda/gather.cuh>
#include <engram/cuda/hash.cuh>
#include <engram/cuda/projection.cuh>
#include <engram/cuda/runtime.cuh>
#include <engram/cuda/table.cuh>

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/layer/layer_fwd.hpp>
#include <engram/layer/parameters.hpp>
#include <engram/layer/projection.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <cstddef>     // for size_t
#include <cstdint>     // for uint8_t, uint64_t
#include <cstring>     // for memcpy
#include <optional>    // for optional
#include <span>        // for span
#include <string>      // for string, to_string
#include <type_traits> // for is_same_v
#include <utility>     // for move
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief The Engram layer on a CUDA device. Built from a host layer (or its parameters and a
///        table view); activations `hidden` and `out` `[B, T, M, H]` are float device memory,
///        token ids and masks host memory: the host checks them and stages them in pinned
///        memory, the device hashes them.
///
/// One layer object serves one stream at a time (its scratch buffers are its own); prefetches
/// run on the layer's side stream. Buffers grow to the largest batch seen and keep their
/// addresses afterwards (CUDA graphs can capture `forward` once shapes are fixed).
template <class Policies>
class layer<Policies, cuda_backend> {
public:
    using policies_type = Policies;
    using hash_type = typename Policies::hash_type;
    using orders_type = typename Policies::orders_type;
    using gate_type = typename Policies::gate_type;
    using fusion_type = typename Policies::fusion_type;
    using projection_type = typename Policies::projection_type;
    using backend_type = cuda_backend;

    static_assert(std::is_same_v<hash_type, multiply_xor_family>,
                  "the CUDA backend hashes with the reference multiply-XOR family");
    static constexpr bool has_conv = fusion_type::has_conv;
    static constexpr bool mask_blocks_hash = mask_blocks_hash_v<fusion_type>;
    /// DeepSeek-V4.1's projection: act_quant before, bf16 after (fp8_block_projection).
    static constexpr bool quantised_projection = projection_type::transforms_input;

    /// @brief Construction choices.
    struct options {
        /// Where the rows live (device memory, or host memory read over the bus).
        cuda::table_placement placement = cuda::table_placement::device;
        /// Projection format; default bf16 for V4.1's projection (exact), else f32.
        std::optional<cuda::projection_format> format{};
        /// Prefetches in flight at once (each owns a staging slot).
        std::size_t prefetch_slots = 2;
        /// Share of the gather's persistent grid a prefetch uses (the rest is left to compute).
        double prefetch_grid_fraction = 0.5;
    };

    /// @brief A layer from a host layer's parameters and its table's rows (see table_view_of).
    /// @throws config_error for inconsistent parameters; unsupported_error for a table the
    ///         device cannot read; cuda_error when memory or the device is refused.
    layer(const layer_parameters& p, const table_view& rows, options o = {})
        : cfg_(p.config), layout_(p.layout), opt_(o),
          hash_(std::span<const layer_layout>(&layout_, 1), p.vocab_lookup, p.config.dead_token, true),
          table_(check_rows(rows, p.layout), o.placement),
          vocab_(canonical_table::from_lookup({p.vocab_lookup.begin(), p.vocab_lookup.end()})), host_hasher_(p.layout) {
        cfg_.validate();
        const std::size_t h = hidden_size(), m = branches(), d = memory_dim(), r = (1 + m) * h;
        if (static_cast<std::int64_t>(d) != cfg_.memory_dim())
            throw config_error("cuda layer: the layout's heads x head_dim (" + std::to_string(d) +
                               ") differ from the configuration's memory width (" + std::to_string(cfg_.memory_dim()) +
                               ")");
        if (p.projection_weight.size() != r * d || p.projection_bias.size() != r || p.key_norm.size() != m * h ||
            p.hidden_norm.size() != m * h)
            throw config_error("cuda layer: parameter shapes differ from the configuration");
        if constexpr (has_conv)
            if (p.conv_weight.size() != m * h * static_cast<std::size_t>(cfg_.kernel_size) ||
                p.conv_norm.size() != m * h)
                throw config_error("cuda layer: convolution parameter shapes differ from the configuration");
        if (o.prefetch_slots == 0) throw config_error("cuda layer: prefetch_slots must be at least 1");
        format_ =
            o.format.value_or(quantised_projection ? cuda::projection_format::bf16 : cuda::projection_format::f32);
        proj_.set(p.projection_weight, p.projection_bias, r, d, format_);
        key_norm_.upload(p.key_norm);
        hidden_norm_.upload(p.hidden_norm);
        if constexpr (has_conv) {
            conv_w_.upload(p.conv_weight);
            conv_norm_.upload(p.conv_norm);
        }
        const std::uint8_t zero = 0;
        masked_.upload(std::span<const std::uint8_t>(&zero, 1));
        for (std::size_t i = 0; i < o.prefetch_slots; ++i) slots_.emplace_back();
        cuda::check(cudaDeviceSynchronize(), "cuda layer upload");
    }

    /// @brief The layer of a host layer (`engram::layer<P>`): its parameters copied to the
    ///        device, its rows placed as `o.placement` says (`host_registered`: read in place).
    template <class HostLayer>
    requires requires(const HostLayer& hl) {
        hl.parameters();
        hl.table();
    }
    explicit layer(const HostLayer& host, options o = {}) : layer(host.parameters(), table_view_of(host.table()), o) {}

    layer(const layer&) = delete;
    layer& operator=(const layer&) = delete;

    [[nodiscard]] const layer_config& config() const noexcept { return cfg_; }
    [[nodiscard]] const layer_layout& layout() const noexcept { return layout_; }
    [[nodiscard]] std::size_t num_heads() const noexcept { return layout_.num_heads(); }
    [[nodiscard]] std::size_t memory_dim() const noexcept {
        return num_heads() * static_cast<std::size_t>(layout_.head_dim);
    }
    [[nodiscard]] const cuda::device_table& table() const noexcept { return table_; }
    [[nodiscard]] cuda::projection_format format() const noexcept { return format_; }
    /// The projection (its `path(n)` names the cuBLAS call n tokens take).
    [[nodiscard]] const cuda::cublas_projection& projection() const noexcept { return proj_; }
    [[nodiscard]] const cuda::layer_hash& hasher() const noexcept { return hash_; }

    // ---- whole batches ---------------------------------------------------------------------

    /// @brief Global row ids `[B, T, heads]` of raw ids `[B, T]`, hashed on the device and copied
    ///        back (tests, tools). @throws input_error for an id outside the vocabulary.
    void rows(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len, std::span<row_id> out,
              std::span<const std::uint8_t> token_mask = {}) {
        const std::size_t n = check_batch(raw, batch, seq_len, token_mask);
        if (out.size() != n * num_heads())
            throw input_error("cuda layer rows: out has " + std::to_string(out.size()) + " slots, expected " +
                              std::to_string(n * num_heads()));
        slot& s = scratch_;
        stage_ids(s, raw, token_mask, nullptr);
        hash_.rows(s.raw.data(), batch, seq_len, mask_blocks_hash && !token_mask.empty() ? s.mask.data() : nullptr,
                   s.rows.reserve(n * num_heads()), nullptr);
        cuda::check(cudaMemcpy(out.data(), s.rows.data(), out.size_bytes(), cudaMemcpyDeviceToHost),
                    "cudaMemcpy (rows)");
    }

    /// @brief The layer on raw ids `[B, T]` (host) and hidden states `[B, T, M, H]` (device),
    ///        into `out` (device, same shape, not aliasing `hidden`), asynchronously on `stream`.
    /// @param token_mask optional `[B, T]` (host), production fusions only: 0 zeroes the gate
    ///        (and, for masked_production_fusion, makes the position dead for the hash).
    /// @throws input_error for an id outside the vocabulary or a mask of the wrong size.
    void forward(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len, const float* hidden, float* out,
                 std::span<const std::uint8_t> token_mask = {}, cudaStream_t stream = nullptr) {
        const std::size_t n = check_batch(raw, batch, seq_len, token_mask);
        slot& s = scratch_;
        stage_ids(s, raw, token_mask, stream);
        lookup(s, batch, seq_len, !token_mask.empty(), stream, cuda::gather_options{});
        apply(s, seq_len, n, hidden, out, !token_mask.empty(), stream);
    }

    /// @brief A lookup started ahead of its layer (see `prefetch`). Valid until its slot is
    ///        reused by the `prefetch_slots`-th later prefetch.
    class ticket {
    public:
        [[nodiscard]] std::size_t tokens() const noexcept { return batch_ * seq_len_; }

    private:
        friend class layer;
        std::size_t slot_ = 0;
        std::uint64_t generation_ = 0;
        std::size_t batch_ = 0, seq_len_ = 0;
        bool masked_ = false;
    };

    /// @brief The plan and the lookup of a batch, started now: ids (and mask) are checked and
    ///        staged on the host, then the hash and the gather are enqueued on the layer's side
    ///        stream into the slot's staging buffer (persistent: stable addresses), and an event
    ///        marks their end. Returns at once.
    /// @throws input_error as `forward`.
    ticket prefetch(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                    std::span<const std::uint8_t> token_mask = {}) {
        check_batch(raw, batch, seq_len, token_mask);
        const std::size_t k = next_slot_++ % slots_.size();
        slot& s = slots_[k];
        s.consumed.wait_on(side_.get()); // the slot's last forward has read its rows
        stage_ids(s, raw, token_mask, side_.get());
        cuda::gather_options g;
        g.grid_fraction = opt_.prefetch_grid_fraction;
        lookup(s, batch, seq_len, !token_mask.empty(), side_.get(), g);
        return issue(s, k, batch, seq_len, !token_mask.empty());
    }

    /// @brief A batch's row ids computed on the host (the plan step: hashing only, no I/O), for
    ///        `prefetch(plan)`.
    struct plan {
        std::vector<row_id> rows; ///< [B, T, heads]
        std::vector<std::uint8_t> mask;
        std::size_t batch = 0, seq_len = 0;
    };

    /// @brief The plan of raw ids `[B, T]` (the host's hash, identical to the device's).
    /// @throws input_error as `forward`.
    [[nodiscard]] plan make_plan(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                                 std::span<const std::uint8_t> token_mask = {}) const {
        const std::size_t n = check_batch(raw, batch, seq_len, token_mask);
        plan p;
        p.batch = batch;
        p.seq_len = seq_len;
        p.mask.assign(token_mask.begin(), token_mask.end());
        p.rows.resize(n * num_heads());
        if (mask_blocks_hash && !token_mask.empty()) {
            std::vector<std::uint8_t> live(token_mask.begin(), token_mask.end());
            if (cfg_.dead_token)
                for (std::size_t i = 0; i < n; ++i)
                    if (raw[i] == *cfg_.dead_token) live[i] = 0;
            host_hasher_.rows_tokens(vocab_, raw, batch, seq_len, p.rows, std::span<const std::uint8_t>(live));
        } else {
            host_hasher_.rows_tokens(vocab_, raw, batch, seq_len, p.rows, cfg_.dead_token);
        }
        return p;
    }

    /// @brief The lookup of a plan made on the host: its row ids are staged (pinned) and copied,
    ///        and the gather is enqueued on the side stream into the slot's staging buffer; an
    ///        event marks its end. Returns at once.
    /// @throws input_error for a plan whose sizes do not match this layer.
    ticket prefetch(const plan& p) {
        const std::size_t n = p.batch * p.seq_len;
        if (p.rows.size() != n * num_heads() || (!p.mask.empty() && p.mask.size() != n))
            throw input_error("cuda layer: the plan has " + std::to_string(p.rows.size()) + " row ids for " +
                              std::to_string(n) + " tokens of " + std::to_string(num_heads()) + " heads");
        const std::size_t k = next_slot_++ % slots_.size();
        slot& s = slots_[k];
        s.consumed.wait_on(side_.get());
        cuda::check(cudaEventSynchronize(s.staged.get()), "cudaEventSynchronize (staging)");
        stage(s.rows_host, s.rows, std::span<const row_id>(p.rows), side_.get());
        if (!p.mask.empty()) stage(s.mask_host, s.mask, std::span<const std::uint8_t>(p.mask), side_.get());
        s.staged.record(side_.get());
        cuda::gather_options g;
        g.grid_fraction = opt_.prefetch_grid_fraction;
        gather_memory(s, n * num_heads(), side_.get(), g);
        return issue(s, k, p.batch, p.seq_len, !p.mask.empty());
    }

    /// @brief The layer on a prefetched lookup: `stream` waits on the ticket's event (no host
    ///        wait), then the projection, gate and fusion run on it.
    /// @throws input_error for a ticket whose slot was reused since.
    void forward(const ticket& t, const float* hidden, float* out, cudaStream_t stream = nullptr) {
        if (t.slot_ >= slots_.size() || slots_[t.slot_].generation != t.generation_ || t.generation_ == 0)
            throw input_error("cuda layer: the prefetch ticket expired (its staging slot was reused by a later "
                              "prefetch; raise options::prefetch_slots)");
        slot& s = slots_[t.slot_];
        s.ready.wait_on(stream);
        apply(s, t.seq_len_, t.tokens(), hidden, out, t.masked_, stream);
        s.consumed.record(stream);
    }

    /// @brief Whether a ticket's lookup has finished (no wait).
    [[nodiscard]] bool ready(const ticket& t) const { return slots_.at(t.slot_).ready.done(); }

    /// The side stream prefetches run on.
    [[nodiscard]] cudaStream_t prefetch_stream() const noexcept { return side_.get(); }

    // ---- token by token --------------------------------------------------------------------

    /// @brief One sequence's decode state on the device: its n-gram window and, for the demo's
    ///        fusion, a ring of the last `(Kc-1) * dilation + 1` normalised rows. Move-only.
    class decode_state {
    public:
        [[nodiscard]] std::size_t position() const noexcept { return pos_; }

    private:
        friend class layer;
        cuda::device_buffer<token_id> window_;
        cuda::device_buffer<float> ring_;
        std::size_t ring_rows_ = 0, pos_ = 0;
    };

    /// @brief A fresh state (nothing seen). @throws cuda_error if memory is refused.
    [[nodiscard]] decode_state new_decode_state() const {
        decode_state st;
        const int w = layout_.max_order();
        std::vector<token_id> pads(static_cast<std::size_t>(w), layout_.pad);
        st.window_.upload(std::span<const token_id>(pads));
        if constexpr (has_conv) {
            st.ring_rows_ = static_cast<std::size_t>((cfg_.kernel_size - 1) * cfg_.dilation()) + 1;
            const std::size_t bytes = st.ring_rows_ * branches() * hidden_size() * sizeof(float);
            cuda::check(cudaMemset(st.ring_.reserve(st.ring_rows_ * branches() * hidden_size()), 0, bytes),
                        "cudaMemset");
        }
        cuda::check(cudaDeviceSynchronize(), "cuda decode state");
        return st;
    }

    /// @brief One token of one sequence: hidden `[M, H]` -> out `[M, H]` (device), the same as
    ///        the whole-sequence forward at this position. Asynchronous on `stream`.
    /// @param keep production fusions: false zeroes the gate (and blocks the hash for
    ///        masked_production_fusion).
    /// @throws input_error for an id outside the vocabulary or a mask the fusion cannot take.
    void decode_step(decode_state& st, token_id raw, const float* hidden, float* out, bool keep = true,
                     cudaStream_t stream = nullptr) {
        if (raw < 0 || static_cast<std::size_t>(raw) >= static_cast<std::size_t>(hash_.vocab_size()))
            throw input_error("cuda decode_step: token id " + std::to_string(raw) + " is outside the vocabulary [0, " +
                              std::to_string(hash_.vocab_size()) + ")");
        if (!keep && !fusion_type::supports_token_mask)
            throw input_error("decode_step: a token mask needs a fusion that supports it (production_fusion)");
        const bool live = (!mask_blocks_hash || keep) && raw != hash_.dead_token();
        slot& s = step_;
        cuda::kernels::decode_hash<row_id><<<1, 32, 0, stream>>>(st.window_.data(), layout_.max_order(),
                                                                 hash_.device_lookup(), raw, live, layout_.pad,
                                                                 hash_.device_params(0), s.rows.reserve(num_heads()));
        cuda::check_launch("decode_hash");
        gather_memory(s, num_heads(), stream, cuda::gather_options{});
        const cuda::conv_rows ring{st.ring_.data(), 1, st.pos_, st.ring_rows_};
        run_math(s, 1, ring, hidden, out, keep ? nullptr : masked_.data(), stream);
        ++st.pos_;
    }

private:
    /// Staging and scratch of one batch: ids, rows, memory vectors, projections, gates, conv rows.
    struct slot {
        cuda::pinned_buffer raw_host, mask_host, rows_host;
        cuda::device_buffer<token_id> raw;
        cuda::device_buffer<std::uint8_t> mask;
        cuda::device_buffer<row_id> rows;
        cuda::device_buffer<float> e, p, alpha, x;
        cuda::device_buffer<cuda::bf16_bits> e16;
        cuda::event staged, ready, consumed;
        std::uint64_t generation = 0;
    };

    /// Marks the end of slot k's lookup on the side stream and makes its ticket.
    ticket issue(slot& s, std::size_t k, std::size_t batch, std::size_t seq_len, bool masked) {
        s.ready.record(side_.get());
        ticket t;
        t.slot_ = k;
        t.generation_ = ++s.generation;
        t.batch_ = batch;
        t.seq_len_ = seq_len;
        t.masked_ = masked;
        return t;
    }

    /// Copies `v` into pinned staging memory, then to the device on `stream`.
    template <class T>
    static void stage(cuda::pinned_buffer& host, cuda::device_buffer<T>& dev, std::span<const T> v,
                      cudaStream_t stream) {
        if (host.size() < v.size_bytes()) host = cuda::pinned_buffer(v.size_bytes());
        if (!v.empty()) std::memcpy(host.data(), v.data(), v.size_bytes());
        dev.reserve(v.size());
        if (!v.empty())
            cuda::check(cudaMemcpyAsync(dev.data(), host.data(), v.size_bytes(), cudaMemcpyHostToDevice, stream),
                        "cudaMemcpyAsync (staging)");
    }

    static table_view check_rows(const table_view& rows, const layer_layout& l) {
        if (rows.count != static_cast<std::size_t>(l.total_rows) || rows.dim != static_cast<std::size_t>(l.head_dim))
            throw config_error("cuda layer: the row table has " + std::to_string(rows.count) + " x " +
                               std::to_string(rows.dim) + " rows, the layer needs " + std::to_string(l.total_rows) +
                               " x " + std::to_string(l.head_dim));
        return rows;
    }

    [[nodiscard]] std::size_t hidden_size() const noexcept { return static_cast<std::size_t>(cfg_.hidden); }
    [[nodiscard]] std::size_t branches() const noexcept { return static_cast<std::size_t>(cfg_.branches); }

    /// Checks ids and mask on the host; returns B*T.
    std::size_t check_batch(std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                            std::span<const std::uint8_t> mask) const {
        std::size_t n = 0;
        if (__builtin_mul_overflow(batch, seq_len, &n) || raw.size() != n)
            throw input_error("cuda layer: " + std::to_string(raw.size()) +
                              " ids, expected B x T = " + std::to_string(batch) + " x " + std::to_string(seq_len));
        if (!mask.empty()) {
            if (!fusion_type::supports_token_mask)
                throw input_error("forward: a token mask needs a fusion that supports it (production_fusion)");
            if (mask.size() != n)
                throw input_error("forward: token mask has " + std::to_string(mask.size()) +
                                  " entries, expected B*T = " + std::to_string(n));
        }
        const auto v = static_cast<std::uint64_t>(hash_.vocab_size());
        for (std::size_t i = 0; i < n; ++i)
            if (static_cast<std::uint64_t>(raw[i]) >= v)
                throw input_error("token id " + std::to_string(raw[i]) + " at position " + std::to_string(i) +
                                  " is outside the vocabulary [0, " + std::to_string(v) + ")");
        return n;
    }

    /// Copies ids and mask into the slot's pinned staging memory and then to the device on
    /// `stream` (no host wait on earlier work, except for the slot's own previous copy).
    static void stage_ids(slot& s, std::span<const token_id> raw, std::span<const std::uint8_t> mask,
                          cudaStream_t stream) {
        cuda::check(cudaEventSynchronize(s.staged.get()), "cudaEventSynchronize (staging)");
        stage(s.raw_host, s.raw, raw, stream);
        if (!mask.empty()) stage(s.mask_host, s.mask, mask, stream);
        s.staged.record(stream);
    }

    /// Hash, then gather into the slot's memory vectors.
    void lookup(slot& s, std::size_t batch, std::size_t seq_len, bool masked, cudaStream_t stream,
                const cuda::gather_options& g) {
        const std::size_t n = batch * seq_len;
        hash_.rows(s.raw.data(), batch, seq_len, mask_blocks_hash && masked ? s.mask.data() : nullptr,
                   s.rows.reserve(n * num_heads()), stream);
        gather_memory(s, n * num_heads(), stream, g);
    }

    /// The gather of `count` rows of the slot: bf16 straight for a plain bf16 projection, else float.
    void gather_memory(slot& s, std::size_t count, cudaStream_t stream, const cuda::gather_options& g) {
        const std::size_t values = count * static_cast<std::size_t>(layout_.head_dim);
        if (!quantised_projection && format_ == cuda::projection_format::bf16)
            cuda::gather(table_, s.rows.data(), count, s.e16.reserve(values), stream, g);
        else
            cuda::gather(table_, s.rows.data(), count, s.e.reserve(values), stream, g);
    }

    /// Projection, gate and fusion of `n` tokens whose memory vectors are in the slot.
    void apply(slot& s, std::size_t seq_len, std::size_t n, const float* hidden, float* out, bool masked,
               cudaStream_t stream) {
        float* x = nullptr;
        if constexpr (has_conv) x = s.x.reserve(n * branches() * hidden_size());
        run_math(s, n, cuda::conv_rows{x, seq_len, 0, 0}, hidden, out, masked ? s.mask.data() : nullptr, stream);
    }

    void run_math(slot& s, std::size_t n, cuda::conv_rows rows, const float* hidden, float* out,
                  const std::uint8_t* mask, cudaStream_t stream) {
        if (n == 0) return;
        const std::size_t d = memory_dim(), h = hidden_size(), m = branches(), r = (1 + m) * h;
        const void* e = s.e.data();
        if constexpr (quantised_projection) {
            cuda::kernels::act_quant<<<cuda::blocks_for(n * ((d + 31) / 32)), cuda::block_threads, 0, stream>>>(
                s.e.data(), n, d, s.e16.reserve(n * d));
            cuda::check_launch("act_quant");
            e = s.e16.data();
        } else if (format_ == cuda::projection_format::bf16) {
            e = s.e16.data();
        }
        float* p = s.p.reserve(n * r);
        proj_.forward(e, n, p, stream);
        cuda::gate_args a;
        a.p = p;
        a.bias = proj_.bias();
        a.finish_bf16 = projection_type::transforms_output;
        a.hidden = hidden;
        a.out = out;
        a.mask = mask;
        a.key_norm = key_norm_.data();
        a.hidden_norm = hidden_norm_.data();
        a.hidden_size = static_cast<int>(h);
        a.branches = static_cast<int>(m);
        a.gate_eps = cfg_.gate_norm_eps;
        a.alpha = s.alpha.reserve(n * m);
        if constexpr (has_conv) {
            a.rows = rows;
            a.conv_weight = conv_w_.data();
            a.conv_norm = conv_norm_.data();
            a.conv_eps = cfg_.conv_norm_eps;
            a.kernel_size = static_cast<int>(cfg_.kernel_size);
            a.dilation = static_cast<std::size_t>(cfg_.dilation());
        }
        cuda::kernels::gate_fuse<gate_type, has_conv>
            <<<static_cast<unsigned>(n * m), cuda::block_threads, 0, stream>>>(a);
        cuda::check_launch("gate_fuse");
        if constexpr (has_conv) {
            cuda::kernels::conv_silu<<<cuda::blocks_for(n * m * h), cuda::block_threads, 0, stream>>>(a, n);
            cuda::check_launch("conv_silu");
        }
    }

    layer_config cfg_;
    layer_layout layout_;
    options opt_;
    cuda::layer_hash hash_;
    cuda::device_table table_;
    canonical_table vocab_;
    ngram_hasher<multiply_xor_family, orders_type> host_hasher_;
    cuda::projection_format format_ = cuda::projection_format::f32;
    cuda::cublas_projection proj_;
    cuda::device_buffer<float> key_norm_, hidden_norm_, conv_w_, conv_norm_;
    cuda::device_buffer<std::uint8_t> masked_;
    slot scratch_, step_;
    std::vector<slot> slots_;
    std::size_t next_slot_ = 0;
    cuda::stream side_;
};

ENGRAM_END_NAMESPACE
