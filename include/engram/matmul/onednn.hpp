#pragma once
// SPDX-License-Identifier: MIT
// A matmul backend on oneDNN (CMake target engram::onednn; Debian: libdnnl-dev): its bf16 and
// int8 matmul primitives, which run on the CPU's matrix engines (AMX-BF16 / AMX-INT8) where it
// has them, else on AVX512-BF16 / VNNI. The core headers never include this one.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/kernels/gemm_bf16.hpp>
#include <engram/kernels/gemm_int8.hpp>
#include <engram/matmul/backend.hpp>
#include <engram/matmul/host.hpp>
#include <engram/storage/row_types.hpp>

#include <oneapi/dnnl/dnnl.hpp>
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
#include <omp.h>
#endif

#include <algorithm> // for min
#include <chrono>    // for steady_clock
#include <cstddef>   // for size_t
#include <cstdint>   // for int32_t, uint16_t
#include <map>       // for map
#include <memory>    // for shared_ptr, make_shared
#include <mutex>     // for mutex, lock_guard
#include <string>    // for string
#include <utility>   // for pair
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief The matmul backend on oneDNN (see `matmul_backend`).
///
/// - `bf16_dot`: oneDNN's bf16 matmul, bf16 memory vectors x bf16 weights, float accumulation,
///   the bias fused. `int8`: oneDNN's u8 x s8 -> s32 matmul on the same int8 weights and
///   activations as host_matmul, then the same scaling step: the same bits as host_matmul.
/// - The weights are reordered once, at `set_format`, into the layout the primitive prefers
///   (`format_tag::any`). Primitives are created once per (token count, threads) and cached:
///   the matrix-engine kernels are generated for a fixed M.
/// - `f32` and `bf16` (float activations) run host_matmul: oneDNN has no faster path for them.
/// - Decode (one token): at `set_format` both oneDNN's M = 1 primitive and host_matmul's GEMV
///   are timed and the faster one is kept (`decode_path()` names it; `set_decode` overrides).
///   int8 gives the same bits either way; bf16_dot's float sums may round differently between
///   the two, and between forward and decode.
/// - Threads: `forward`'s `threads` sets oneDNN's OpenMP threads for the call (restored after).
/// - A CPU where oneDNN has no primitive for a format falls back to host_matmul (the path
///   names say so), and so does int8 where oneDNN's int8 kernels would not sum exactly (no
///   VNNI or AMX: u8 x s8 pairs saturate in int16).
class onednn_matmul {
public:
    /// Which decode (one-token) path `gemv` takes.
    enum class decode_choice { fastest, ours, onednn };

    void set_format(const matmul_weights& w, weight_format f) {
        host_.set_format(w, f); // validates f; the fallback and our GEMV
        auto s = std::make_shared<state>();
        s->format = f;
        if (f == weight_format::bf16_dot || f == weight_format::int8) prepare(*s, w);
        state_ = s;
        if (s->ok)
            s->decode_onednn = choice_ == decode_choice::fastest ? measure_decode(w) : choice_ == decode_choice::onednn;
    }
    [[nodiscard]] weight_format format() const noexcept { return host_.format(); }

    /// Fixes the decode path (decode_choice::fastest, the default, measures at set_format).
    /// Takes effect at the next set_format.
    void set_decode(decode_choice c) noexcept { choice_ = c; }

    void forward(const matmul_weights& w, const float* e, std::size_t n, float* p, std::size_t threads) const {
        if (!uses_onednn()) return host_.forward(w, e, n, p, threads);
        run(w, e, n, p, threads);
    }

    void gemv(const matmul_weights& w, const float* e, float* p) const {
        if (!uses_onednn() || !state_->decode_onednn) return host_.gemv(w, e, p);
        run(w, e, 1, p, 1);
    }

    [[nodiscard]] std::string forward_path() const {
        if (uses_onednn()) return "onednn: " + state_->impl;
        if (state_ && !state_->ok && !state_->impl.empty()) // a format oneDNN could not take here
            return host_.forward_path() + " (oneDNN: " + state_->impl + ")";
        return host_.forward_path();
    }
    [[nodiscard]] std::string decode_path() const {
        if (uses_onednn() && state_->decode_onednn) return "onednn: " + state_->impl_m1;
        return host_.decode_path();
    }

    static void release_workspace() {
        host_matmul::release_workspace();
        local() = workspace{};
    }

private:
    using md = dnnl::memory::desc;
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;

    struct state {
        weight_format format = weight_format::f32;
        bool ok = false;            ///< oneDNN runs this format here
        bool decode_onednn = false; ///< gemv through oneDNN's M = 1 primitive
        std::string impl, impl_m1;  ///< implementation names (M = 512, M = 1), or why not
        dnnl::memory weights;       ///< in the primitive's preferred layout
        md weights_md;
        std::size_t rows = 0, cols = 0, k_stride = 0;
        mutable std::mutex mu;
        mutable std::map<std::pair<std::size_t, std::size_t>, dnnl::matmul> primitives; ///< (n, threads)
    };

    struct workspace {
        std::vector<std::uint16_t> e16; ///< [n, cols] bf16 memory vectors
        kernels::int8_activations a8;   ///< [n, 4 k4] u8 memory vectors
        std::vector<std::int32_t> acc;  ///< [n, rows] int32 sums
    };

    static workspace& local() {
        thread_local workspace ws;
        return ws;
    }
    static const dnnl::engine& engine() {
        static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
        return eng;
    }

    /// Sets oneDNN's OpenMP threads for one call (the calling thread's setting is restored).
    struct thread_scope {
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
        explicit thread_scope(std::size_t n) : saved(omp_get_max_threads()) {
            omp_set_num_threads(static_cast<int>(n));
        }
        ~thread_scope() { omp_set_num_threads(saved); }
        int saved;
#else
        explicit thread_scope(std::size_t) {}
#endif
        thread_scope(const thread_scope&) = delete;
        thread_scope& operator=(const thread_scope&) = delete;
    };

    [[nodiscard]] bool uses_onednn() const noexcept { return state_ && state_->ok; }

    /// Whether oneDNN's int8 kernels on this CPU (as limited by ONEDNN_MAX_CPU_ISA) sum u8 x s8
    /// products exactly: VNNI (AVX-512 or AVX) or AMX.
    static bool exact_int8() {
        using isa = dnnl::cpu_isa;
        const isa i = dnnl::get_effective_cpu_isa();
        return i == isa::avx512_core_vnni || i == isa::avx512_core_bf16 || i == isa::avx512_core_amx ||
               i == isa::avx2_vnni;
    }

    [[nodiscard]] static bool is_int8(const state& s) noexcept { return s.format == weight_format::int8; }

    static md src_md(const state& s, std::size_t n) {
        const auto m = static_cast<dnnl::memory::dim>(n), k = static_cast<dnnl::memory::dim>(s.cols);
        // int8: the whole padded row of 4 * k4 bytes (dense: oneDNN's AMX int8 kernels take no
        // strided source); the weights' padding rows are zero, so the pad bytes add nothing.
        if (is_int8(s)) return md({m, static_cast<dnnl::memory::dim>(s.k_stride)}, dt::u8, tag::ab);
        return md({m, k}, dt::bf16, tag::ab);
    }
    static md dst_md(const state& s, std::size_t n) {
        return md({static_cast<dnnl::memory::dim>(n), static_cast<dnnl::memory::dim>(s.rows)},
                  is_int8(s) ? dt::s32 : dt::f32, tag::ab);
    }
    static md bias_md(const state& s) { return md({1, static_cast<dnnl::memory::dim>(s.rows)}, dt::f32, tag::ab); }

    static dnnl::matmul::primitive_desc describe(const state& s, const md& weights, std::size_t n) {
        if (is_int8(s)) return {dnnl::matmul::desc(src_md(s, n), weights, dst_md(s, n)), engine()};
        return {dnnl::matmul::desc(src_md(s, n), weights, bias_md(s), dst_md(s, n)), engine()};
    }

    /// The weights reordered into the preferred layout; `ok` false (with the reason) where
    /// oneDNN has no primitive for the format.
    void prepare(state& s, const matmul_weights& w) const {
        s.rows = w.rows;
        s.cols = w.cols;
        s.k_stride = is_int8(s) ? 4 * host_.int8_weights().k4() : w.cols;
        const auto k = static_cast<dnnl::memory::dim>(is_int8(s) ? s.k_stride : w.cols),
                   nn = static_cast<dnnl::memory::dim>(w.rows);
        if (is_int8(s) && !exact_int8()) {
            // Without VNNI oneDNN multiplies u8 x s8 pairs into saturating int16 (vpmaddubsw):
            // not the exact sums this format promises. host_matmul's are exact.
            s.ok = false;
            s.impl = "no exact int8 matmul here (needs VNNI or AMX; u8 x s8 pairs saturate in int16 without)";
            return;
        }
        try {
            const thread_scope one(1);
            const md any({k, nn}, is_int8(s) ? dt::s8 : dt::bf16, tag::any);
            const auto pd = describe(s, any, host_matmul::block_tokens);
            // The layer's W [rows, cols] row-major is the [K, N] weights with tag ba.
            const md plain({k, nn}, is_int8(s) ? dt::s8 : dt::bf16, tag::ba);
            std::vector<std::uint16_t> w16;
            std::vector<std::int8_t> w8;
            void* src = nullptr;
            if (is_int8(s)) { // host_matmul's int8 weights, unpacked to [rows, k_stride], zero-padded
                const auto& q = host_.int8_weights();
                w8.assign(w.rows * s.k_stride, 0);
                for (std::size_t r = 0; r < w.rows; ++r)
                    for (std::size_t c = 0; c < w.cols; ++c) w8[r * s.k_stride + c] = q.at(r, c);
                src = w8.data();
            } else {
                w16.resize(w.rows * w.cols);
                for (std::size_t i = 0; i < w16.size(); ++i) w16[i] = bfloat16::from_float(w.w[i]).bits;
                src = w16.data();
            }
            dnnl::memory from(plain, engine(), src);
            s.weights_md = pd.weights_desc();
            s.weights = dnnl::memory(s.weights_md, engine());
            dnnl::stream st(engine());
            dnnl::reorder(from, s.weights).execute(st, from, s.weights);
            st.wait();
            s.impl = pd.impl_info_str();
            s.impl_m1 = describe(s, s.weights_md, 1).impl_info_str();
            s.ok = true;
        } catch (const dnnl::error& err) {
            s.ok = false;
            s.impl = std::string("no ") + std::string(to_string(s.format)) + " matmul here: " + err.what();
        }
    }

    const dnnl::matmul& primitive(std::size_t n, std::size_t threads) const {
        const state& s = *state_;
        const std::lock_guard<std::mutex> lock(s.mu);
        const auto key = std::make_pair(n, threads);
        auto it = s.primitives.find(key);
        if (it == s.primitives.end()) it = s.primitives.emplace(key, dnnl::matmul(describe(s, s.weights_md, n))).first;
        return it->second;
    }

    void run(const matmul_weights& w, const float* e, std::size_t n, float* p, std::size_t threads) const {
        const state& s = *state_;
        workspace& ws = local();
        const thread_scope scope(threads);
        const dnnl::matmul& mm = primitive(n, threads);
        dnnl::stream st(engine());
        if (is_int8(s)) {
            const auto& w8 = host_.int8_weights();
            ws.a8.quantize(e, n, w.cols, w8.k4());
            if (ws.acc.size() < n * w.rows) ws.acc.resize(n * w.rows);
            dnnl::memory src(src_md(s, n), engine(), ws.a8.u.data());
            dnnl::memory dst(dst_md(s, n), engine(), ws.acc.data());
            mm.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, s.weights}, {DNNL_ARG_DST, dst}});
            st.wait();
            for (std::size_t t = 0; t < n; ++t)
                kernels::int8_finish(ws.acc.data() + t * w.rows, w8, ws.a8.scale[t], w.bias, p + t * w.rows, 0, w.rows);
            return;
        }
        if (ws.e16.size() < n * w.cols) ws.e16.resize(n * w.cols);
        for (std::size_t i = 0; i < n * w.cols; ++i) ws.e16[i] = bfloat16::from_float(e[i]).bits;
        dnnl::memory src(src_md(s, n), engine(), ws.e16.data());
        dnnl::memory bias(bias_md(s), engine(), const_cast<float*>(w.bias));
        dnnl::memory dst(dst_md(s, n), engine(), p);
        mm.execute(st,
                   {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, s.weights}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst}});
        st.wait();
    }

    /// Times one-token products through oneDNN and through host_matmul (best of 25 each,
    /// interleaved); true if oneDNN's is faster.
    bool measure_decode(const matmul_weights& w) const {
        std::vector<float> e(w.cols), p(w.rows);
        for (std::size_t i = 0; i < e.size(); ++i) e[i] = static_cast<float>(i % 7) * 0.125f - 0.375f;
        using clock = std::chrono::steady_clock;
        double best_ours = 1e30, best_dnnl = 1e30;
        for (int r = 0; r < 25; ++r) {
            auto t0 = clock::now();
            host_.gemv(w, e.data(), p.data());
            auto t1 = clock::now();
            run(w, e.data(), 1, p.data(), 1);
            auto t2 = clock::now();
            best_ours = std::min(best_ours, std::chrono::duration<double>(t1 - t0).count());
            best_dnnl = std::min(best_dnnl, std::chrono::duration<double>(t2 - t1).count());
        }
        return best_dnnl < best_ours;
    }

    host_matmul host_;
    decode_choice choice_ = decode_choice::fastest;
    std::shared_ptr<const state> state_; ///< shared by copies (immutable but for its primitive cache)
};

static_assert(matmul_backend<onednn_matmul>);

ENGRAM_END_NAMESPACE
