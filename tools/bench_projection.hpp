#pragma once
// engram bench: the projections of the default layer in every weight format and matmul backend
// (forward T = 512, decode step, the backend's projections alone), the fastest of each, and the
// probes they are compared against (oneDNN's bf16 GEMM alone; reading the weight bytes a step
// reads, from a buffer of the same size).

#include <engram/layer.hpp>
#if ENGRAM_CLI_ONEDNN
#include <engram/matmul/onednn.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace engram_cli::projection_bench {

/// Best-of wall time (seconds) of `body(rep)`, after one warm-up call.
template <class Body>
double best_of(std::size_t reps, Body&& body) {
    body(std::size_t{0});
    double best = 1e300;
    for (std::size_t r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        body(r);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

inline volatile std::uint64_t sink = 0;

/// One configuration's figures.
struct figures {
    std::string backend; ///< "host" or "onednn"
    engram::weight_format format = engram::weight_format::f32;
    double forward_ms = 0, forward_ms_2t = 0, decode_us = 0, gemm_ms = 0, decode_bound_us = 0;
    double weight_bytes = 0; ///< what one decode step reads: the projection in its format + the small parameters
    std::string forward_path, decode_path;
    [[nodiscard]] std::string key() const {
        return backend == "host" ? std::string(engram::to_string(format))
                                 : backend + "_" + std::string(engram::to_string(format));
    }
};

/// The inputs every configuration runs on: a token stream, hidden states [T, M, H].
struct inputs {
    std::span<const engram::token_id> tokens;
    std::size_t T = 512, reps = 5, fwd_reps = 10, decode_block = 64;
    std::vector<float> hidden;
    std::vector<float> e; ///< [T, D] memory vectors (the projections-alone input)
};

/// Seconds to read `bytes` at `data` once as 64-bit words (best of reps).
inline double read_seconds(const void* data, std::size_t bytes, std::size_t reps) {
    const auto* w = static_cast<const std::uint64_t*>(data);
    const std::size_t n = bytes / 8;
    return best_of(reps, [&](std::size_t) {
        std::uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        std::size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            a0 += w[i];
            a1 += w[i + 1];
            a2 += w[i + 2];
            a3 += w[i + 3];
        }
        for (; i < n; ++i) a0 += w[i];
        sink = sink + a0 + a1 + a2 + a3;
    });
}

/// Seconds to read `bytes` from a buffer of that size once (best of 4 x reps; the buffer stays
/// in cache when it fits, as a step's weights do between steps).
inline double read_seconds(std::size_t bytes, std::size_t reps) {
    std::vector<std::uint64_t> buf(std::max<std::size_t>(bytes / 8, 1));
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = i * 0x9e3779b97f4a7c15ull;
    return read_seconds(buf.data(), buf.size() * 8, reps * 4);
}

/// Bytes of the stacked projection [rows, cols] in format `f` (int8: the per-channel scales too).
inline double projection_bytes(engram::weight_format f, std::size_t rows, std::size_t cols) {
    const double n = static_cast<double>(rows) * static_cast<double>(cols);
    switch (f) {
    case engram::weight_format::f32:
        return 4 * n;
    case engram::weight_format::bf16:
    case engram::weight_format::bf16_dot:
        return 2 * n;
    case engram::weight_format::int8:
        return n + 8.0 * static_cast<double>(rows);
    }
    return 4 * n;
}

/// Forward (1 and 2 threads), decode step and the projections alone of `layer` in format `f`.
template <class Layer>
figures measure(Layer& layer, engram::weight_format f, const char* backend, inputs& in, double small_param_bytes) {
    figures r;
    r.backend = backend;
    r.format = f;
    layer.set_weight_format(f);
    r.forward_path = layer.matmul().forward_path();
    r.decode_path = layer.matmul().decode_path();
    const std::size_t T = in.T, n_tok = in.tokens.size();
    const std::size_t mh = in.hidden.size() / T;
    std::vector<float> out(in.hidden.size());
    std::size_t at = 0;
    auto forward = [&](std::size_t threads) {
        layer.set_threads(threads);
        const double s = best_of(in.fwd_reps, [&](std::size_t) {
            if (at + T > n_tok) at = 0;
            layer.forward(in.tokens.subspan(at, T), 1, T, in.hidden, out);
            at += T;
        });
        layer.set_threads(1);
        return s * 1e3;
    };
    r.forward_ms = forward(1);
    r.forward_ms_2t = forward(2);
    // The projections alone: the backend on the same [T, D] memory vectors, as the forward calls it.
    const auto& w = layer.projection_weight();
    const engram::matmul_weights view{w.data(), layer.projection_bias().data(), static_cast<std::size_t>(w.rows()),
                                      static_cast<std::size_t>(w.cols())};
    std::vector<float> p(T * view.rows);
    r.gemm_ms =
        1e3 * best_of(in.fwd_reps, [&](std::size_t) { layer.matmul().forward(view, in.e.data(), T, p.data(), 1); });
    // Decode: blocks of steps along the stream.
    auto state = layer.new_decode_state();
    std::vector<float> step_out(mh);
    const std::span<const float> step_in(in.hidden.data(), mh);
    std::size_t d = 0;
    r.decode_us = 1e6 / static_cast<double>(in.decode_block) * best_of(in.reps + 1, [&](std::size_t) {
                      for (std::size_t i = 0; i < in.decode_block; ++i) {
                          layer.decode_step(state, in.tokens[d], step_in, step_out);
                          d = (d + 1) % n_tok;
                      }
                  });
    r.weight_bytes = projection_bytes(f, view.rows, view.cols) + small_param_bytes;
    r.decode_bound_us = 1e6 * read_seconds(static_cast<std::size_t>(r.weight_bytes), in.reps);
    sink = sink + static_cast<std::uint64_t>(out[7] != 0.0f) + static_cast<std::uint64_t>(p[3] != 0.0f);
    layer.set_weight_format(engram::weight_format::f32);
    return r;
}

#if ENGRAM_CLI_ONEDNN
/// The probe: oneDNN's bf16 matmul [T, D] x [D, rows] + bias alone (operands already in bf16,
/// weights prepacked), best of reps, 1 thread. Returns ms and sets `impl` to the kernel's name.
inline double onednn_bf16_gemm_ms(std::size_t T, std::size_t D, std::size_t rows, std::size_t reps, std::string& impl) {
    using namespace dnnl;
    using tag = memory::format_tag;
    using dt = memory::data_type;
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    const engine eng(engine::kind::cpu, 0);
    stream st(eng);
    const auto m = static_cast<memory::dim>(T), k = static_cast<memory::dim>(D), n = static_cast<memory::dim>(rows);
    const memory::desc src({m, k}, dt::bf16, tag::ab), any({k, n}, dt::bf16, tag::any),
        plain({k, n}, dt::bf16, tag::ba), bias({1, n}, dt::f32, tag::ab), dst({m, n}, dt::f32, tag::ab);
    const matmul::primitive_desc pd(matmul::desc(src, any, bias, dst), eng);
    impl = pd.impl_info_str();
    memory sm(src, eng), wm(plain, eng), wp(pd.weights_desc(), eng), bm(bias, eng), dm(dst, eng);
    auto fill = [](memory& mem, std::size_t count, std::uint16_t bits) {
        auto* p = static_cast<std::uint16_t*>(mem.get_data_handle());
        for (std::size_t i = 0; i < count; ++i) p[i] = static_cast<std::uint16_t>(bits ^ (i & 0x7F));
    };
    fill(sm, T * D, 0x3C00); // small bf16 values
    fill(wm, D * rows, 0x3C00);
    std::fill_n(static_cast<float*>(bm.get_data_handle()), rows, 0.5f);
    reorder(wm, wp).execute(st, wm, wp);
    st.wait();
    const matmul mm(pd);
    const double s = best_of(reps, [&](std::size_t) {
        mm.execute(st, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, dm}});
        st.wait();
    });
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
    omp_set_num_threads(saved);
#endif
    return s * 1e3;
}

/// The layer's policies with the oneDNN matmul backend.
template <class P>
struct with_onednn : P {
    using matmul_type = engram::onednn_matmul;
};
#endif

/// Copies every parameter of `from` into `to` (two layers of the same configuration).
template <class A, class B>
void copy_parameters(A& from, B& to) {
    const auto m_count = static_cast<std::size_t>(from.config().branches);
    to.value_weight() = from.value_weight();
    to.value_bias() = from.value_bias();
    for (std::size_t m = 0; m < m_count; ++m) {
        to.key_weight(m) = from.key_weight(m);
        to.key_bias(m) = from.key_bias(m);
        to.key_norm(m) = from.key_norm(m);
        to.hidden_norm(m) = from.hidden_norm(m);
        if constexpr (A::fusion_type::has_conv) to.conv_norm(m) = from.conv_norm(m);
    }
    if constexpr (A::fusion_type::has_conv) to.conv_weight() = from.conv_weight();
}

} // namespace engram_cli::projection_bench
