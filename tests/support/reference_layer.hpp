#pragma once
// SPDX-License-Identifier: MIT
// An independent, slow, plain-loop reference of the Engram layer forward pass (spec sections 4-8),
// for tests: every step is written out literally from docs/spec, in double precision, with no
// engram code except the safetensors reader/writer (and, for generated cases only, the table
// layout: primes, offsets and multipliers).
//
// Tensor layouts (row-major, as in the PyTorch reference):
//   rows          [B, T, heads]      global row ids (head offset + head-local hash)
//   table         [rows, d]          embedding table
//   hidden        [B, T, M, H]       hidden states of the M branches
//   output        [B, T, M, H]
//   value_proj.weight / key_projs.{m}.weight   [H, D], D = heads * d  (y = W e + b)
//   short_conv.conv.weight                     [M * H, 1, Kc], channel m * H + c

#include <engram/hash/layout.hpp>    // for make_layout (generated cases only)
#include <engram/io/safetensors.hpp> // for safetensors_file, safetensors_writer

#include <nlohmann/json.hpp>

#include <algorithm> // for max, copy
#include <cmath>     // for sqrt, exp, abs, log, cos, isnan
#include <cstddef>   // for size_t, byte
#include <cstdint>   // for int64_t, uint64_t, uint32_t
#include <iterator>  // for size
#include <limits>    // for numeric_limits
#include <random>    // for mt19937
#include <span>      // for span
#include <stdexcept> // for invalid_argument
#include <string>    // for string, to_string
#include <vector>    // for vector

namespace engram_test {

/// Which gate activation: the reference's signed square root, or the paper's plain sigmoid.
enum class ref_gate {
    reference, ///< alpha = sigmoid(sign(s) * sqrt(max(|s|, 1e-6))), sign(0) = 0
    paper      ///< alpha = sigmoid(s)
};

/// How the gated value becomes the output.
enum class ref_fusion {
    reference, ///< Y_m = u_m + SiLU(causal depthwise conv(RMSNorm(u_m))); the host adds Y itself
    production ///< out_m = h_m + alpha_m * v (no conv, no norm)
};

/// Float32 machine epsilon, the reference's eps for the two gate norms.
inline constexpr double float32_epsilon = 1.1920928955078125e-07;

/// The layer's parameters (reference names, spec section 8), as doubles (F32 values convert exactly).
struct reference_weights {
    std::int64_t hidden = 0;       ///< H
    std::int64_t branches = 0;     ///< M
    std::int64_t memory_width = 0; ///< D = heads * d
    std::int64_t kernel_size = 4;  ///< Kc
    std::int64_t dilation = 1;     ///< conv dilation (the reference uses N)
    double gate_norm_eps = float32_epsilon;
    double conv_norm_eps = 1e-5;
    std::vector<double> value_proj_weight;            ///< [H, D]
    std::vector<double> value_proj_bias;              ///< [H]
    std::vector<std::vector<double>> key_proj_weight; ///< M x [H, D]
    std::vector<std::vector<double>> key_proj_bias;   ///< M x [H]
    std::vector<std::vector<double>> norm1;           ///< M x [H] (key norm)
    std::vector<std::vector<double>> norm2;           ///< M x [H] (hidden norm)
    std::vector<double> conv_weight;                  ///< [M * H, 1, Kc]
    std::vector<std::vector<double>> conv_norms;      ///< M x [H]

    /// Throws std::invalid_argument if a size is inconsistent.
    void check() const {
        auto need = [](bool ok, const std::string& what) {
            if (!ok) throw std::invalid_argument("reference_weights: " + what);
        };
        need(hidden > 0 && branches > 0 && memory_width > 0 && kernel_size > 0 && dilation > 0, "sizes must be > 0");
        const auto H = static_cast<std::size_t>(hidden), M = static_cast<std::size_t>(branches),
                   D = static_cast<std::size_t>(memory_width), Kc = static_cast<std::size_t>(kernel_size);
        need(value_proj_weight.size() == H * D, "value_proj.weight is not [H, D]");
        need(value_proj_bias.size() == H, "value_proj.bias is not [H]");
        need(key_proj_weight.size() == M && key_proj_bias.size() == M && norm1.size() == M && norm2.size() == M &&
                 conv_norms.size() == M,
             "per-branch lists must have M entries");
        for (std::size_t m = 0; m < M; ++m) {
            need(key_proj_weight[m].size() == H * D, "key_projs." + std::to_string(m) + ".weight is not [H, D]");
            need(key_proj_bias[m].size() == H, "key_projs." + std::to_string(m) + ".bias is not [H]");
            need(norm1[m].size() == H && norm2[m].size() == H && conv_norms[m].size() == H, "a norm is not [H]");
        }
        need(conv_weight.size() == M * H * Kc, "short_conv.conv.weight is not [M*H, 1, Kc]");
    }
};

/// Options of one forward pass.
struct reference_options {
    ref_gate gate = ref_gate::reference;
    ref_fusion fusion = ref_fusion::reference;
    /// Per-token mask [B, T] (empty: none). An entry equal to 0 sets that token's alpha to 0 in every
    /// branch (in both fusions); any other value leaves alpha unchanged.
    std::vector<float> mask{};
};

/// Every intermediate of a forward pass (doubles; shapes in the comments).
struct reference_result {
    std::vector<double> memory; ///< e      [B, T, D]
    std::vector<double> value;  ///< v      [B, T, H]
    std::vector<double> score;  ///< s      [B, T, M]
    std::vector<double> alpha;  ///< gate   [B, T, M] (after the mask)
    std::vector<double> gated;  ///< u      [B, T, M, H] (alpha * v)
    std::vector<double> conv;   ///< y      [B, T, M, H] conv output before SiLU (reference fusion; else empty)
    std::vector<double> output; ///< Y or h + alpha v   [B, T, M, H]
};

// ---------------------------------------------------------------------------------------------
// Scalar and vector building blocks.

inline double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline double ref_silu(double x) { return x * ref_sigmoid(x); }

/// sign(x) with sign(0) = 0.
inline double ref_sign(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0); }

/// The gate activation of a score s.
inline double ref_gate_activation(double s, ref_gate gate) {
    if (gate == ref_gate::paper) return ref_sigmoid(s);
    return ref_sigmoid(ref_sign(s) * std::sqrt(std::max(std::abs(s), 1e-6)));
}

/// RMSNorm(x; w) = x / sqrt(mean(x^2) + eps) * w.
inline std::vector<double> ref_rms_norm(std::span<const double> x, std::span<const double> w, double eps) {
    if (x.size() != w.size()) throw std::invalid_argument("ref_rms_norm: x and w differ in size");
    double sum_sq = 0.0;
    for (double v : x) sum_sq += v * v;
    const double denom = std::sqrt(sum_sq / static_cast<double>(x.size()) + eps);
    std::vector<double> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = x[i] / denom * w[i];
    return out;
}

/// y = W x + b with W stored [out, in] row-major (PyTorch Linear).
inline std::vector<double> ref_linear(std::span<const double> W, std::span<const double> b, std::span<const double> x) {
    const std::size_t out_n = b.size(), in_n = x.size();
    if (W.size() != out_n * in_n) throw std::invalid_argument("ref_linear: W is not [out, in]");
    std::vector<double> y(out_n);
    for (std::size_t o = 0; o < out_n; ++o) {
        double acc = b[o];
        for (std::size_t i = 0; i < in_n; ++i) acc += W[o * in_n + i] * x[i];
        y[o] = acc;
    }
    return y;
}

/// Global row ids [B, T, heads] from head-local ids and per-head offsets: rows = ids + offsets[h].
inline std::vector<std::int64_t> ref_global_rows(std::span<const std::int64_t> local_ids,
                                                 std::span<const std::int64_t> offsets) {
    const std::size_t heads = offsets.size();
    if (heads == 0 || local_ids.size() % heads != 0) throw std::invalid_argument("ref_global_rows: bad sizes");
    std::vector<std::int64_t> rows(local_ids.size());
    for (std::size_t i = 0; i < local_ids.size(); ++i) rows[i] = local_ids[i] + offsets[i % heads];
    return rows;
}

/// Spec section 4, literally: head-local hash ids [B, T, (N-1) * K] of canonical ids [B, T], orders
/// 2..N with N = multipliers.size(); head h = (n - 2) * K + j uses primes[h].
inline std::vector<std::int64_t> ref_hash_ids(std::span<const std::int64_t> canonical_ids, std::int64_t batch,
                                              std::int64_t seq, std::int64_t canonical_pad,
                                              std::span<const std::int64_t> multipliers,
                                              std::span<const std::int64_t> primes, std::int64_t heads_per_ngram) {
    const auto N = static_cast<std::int64_t>(multipliers.size());
    const std::int64_t K = heads_per_ngram;
    const std::int64_t heads = (N - 1) * K;
    if (N < 2 || K < 1 || static_cast<std::int64_t>(primes.size()) != heads ||
        static_cast<std::int64_t>(canonical_ids.size()) != batch * seq)
        throw std::invalid_argument("ref_hash_ids: bad sizes");
    // Wrapping signed 64-bit multiply: done in uint64, converted back (modular in C++20).
    auto wrap_mul = [](std::int64_t a, std::int64_t b) {
        return static_cast<std::int64_t>(static_cast<std::uint64_t>(a) * static_cast<std::uint64_t>(b));
    };
    std::vector<std::int64_t> out(static_cast<std::size_t>(batch * seq * heads));
    for (std::int64_t b = 0; b < batch; ++b)
        for (std::int64_t t = 0; t < seq; ++t)
            for (std::int64_t n = 2; n <= N; ++n) {
                std::int64_t mix = 0;
                for (std::int64_t k = 0; k < n; ++k) {
                    const std::int64_t x =
                        t - k >= 0 ? canonical_ids[static_cast<std::size_t>(b * seq + t - k)] : canonical_pad;
                    mix ^= wrap_mul(x, multipliers[static_cast<std::size_t>(k)]);
                }
                for (std::int64_t j = 0; j < K; ++j) {
                    const std::int64_t h = (n - 2) * K + j;
                    const std::int64_t p = primes[static_cast<std::size_t>(h)];
                    std::int64_t z = mix % p;
                    if (z < 0) z += p; // floor modulo
                    out[static_cast<std::size_t>((b * seq + t) * heads + h)] = z;
                }
            }
    return out;
}

// ---------------------------------------------------------------------------------------------
// The forward pass.

/// Full forward pass with every intermediate.
/// @param rows   global row ids [B, T, heads]
/// @param table  embedding table [rows, head_dim]
/// @param hidden hidden states [B, T, M, H]
inline reference_result reference_forward_full(const reference_weights& w, std::span<const std::int64_t> rows,
                                               std::int64_t batch, std::int64_t seq, std::int64_t heads,
                                               std::span<const float> table, std::int64_t head_dim,
                                               std::span<const float> hidden, const reference_options& opt = {}) {
    w.check();
    const std::int64_t B = batch, T = seq, H = w.hidden, M = w.branches, Kc = w.kernel_size;
    const std::int64_t D = heads * head_dim;
    auto fail = [](const std::string& what) { throw std::invalid_argument("reference_forward: " + what); };
    if (B < 1 || T < 1 || heads < 1 || head_dim < 1) fail("sizes must be > 0");
    if (D != w.memory_width) fail("heads * head_dim != memory width of the weights");
    if (static_cast<std::int64_t>(rows.size()) != B * T * heads) fail("rows is not [B, T, heads]");
    if (static_cast<std::int64_t>(hidden.size()) != B * T * M * H) fail("hidden is not [B, T, M, H]");
    if (table.size() % static_cast<std::size_t>(head_dim) != 0) fail("table is not [rows, d]");
    if (!opt.mask.empty() && static_cast<std::int64_t>(opt.mask.size()) != B * T) fail("mask is not [B, T]");
    const auto table_rows = static_cast<std::int64_t>(table.size()) / head_dim;
    const auto sz = [](std::int64_t i) { return static_cast<std::size_t>(i); };

    reference_result r;
    r.memory.assign(sz(B * T * D), 0.0);
    r.value.assign(sz(B * T * H), 0.0);
    r.score.assign(sz(B * T * M), 0.0);
    r.alpha.assign(sz(B * T * M), 0.0);
    r.gated.assign(sz(B * T * M * H), 0.0);
    r.output.assign(sz(B * T * M * H), 0.0);

    const double inv_sqrt_h = 1.0 / std::sqrt(static_cast<double>(H));
    for (std::int64_t bt = 0; bt < B * T; ++bt) {
        // Section 5: e = concatenation, in head order, of the rows.
        std::vector<double> e(sz(D));
        for (std::int64_t h = 0; h < heads; ++h) {
            const std::int64_t row = rows[sz(bt * heads + h)];
            if (row < 0 || row >= table_rows)
                fail("row id " + std::to_string(row) + " outside the table of " + std::to_string(table_rows) + " rows");
            for (std::int64_t i = 0; i < head_dim; ++i) e[sz(h * head_dim + i)] = table[sz(row * head_dim + i)];
        }
        std::copy(e.begin(), e.end(), r.memory.begin() + bt * D);
        // Section 6: v = W_V e + b_V, shared by the branches.
        const std::vector<double> v = ref_linear(w.value_proj_weight, w.value_proj_bias, e);
        std::copy(v.begin(), v.end(), r.value.begin() + bt * H);
        const bool masked = !opt.mask.empty() && opt.mask[sz(bt)] == 0.0f;
        for (std::int64_t m = 0; m < M; ++m) {
            const std::vector<double> k = ref_linear(w.key_proj_weight[sz(m)], w.key_proj_bias[sz(m)], e);
            std::vector<double> hm(sz(H));
            for (std::int64_t c = 0; c < H; ++c) hm[sz(c)] = hidden[sz((bt * M + m) * H + c)];
            const std::vector<double> kn = ref_rms_norm(k, w.norm1[sz(m)], w.gate_norm_eps);
            const std::vector<double> hn = ref_rms_norm(hm, w.norm2[sz(m)], w.gate_norm_eps);
            double dot = 0.0;
            for (std::int64_t c = 0; c < H; ++c) dot += kn[sz(c)] * hn[sz(c)];
            const double s = dot * inv_sqrt_h;
            const double alpha = masked ? 0.0 : ref_gate_activation(s, opt.gate);
            r.score[sz(bt * M + m)] = s;
            r.alpha[sz(bt * M + m)] = alpha;
            for (std::int64_t c = 0; c < H; ++c) r.gated[sz((bt * M + m) * H + c)] = alpha * v[sz(c)];
        }
    }

    if (opt.fusion == ref_fusion::production) {
        for (std::size_t i = 0; i < r.output.size(); ++i) r.output[i] = static_cast<double>(hidden[i]) + r.gated[i];
        return r;
    }

    // Section 7: per-branch RMSNorm of u (eps = conv_norm_eps, weight c[m]) ...
    std::vector<double> normed(r.gated.size());
    for (std::int64_t bt = 0; bt < B * T; ++bt)
        for (std::int64_t m = 0; m < M; ++m) {
            const std::span<const double> u(r.gated.data() + (bt * M + m) * H, sz(H));
            const std::vector<double> un = ref_rms_norm(u, w.conv_norms[sz(m)], w.conv_norm_eps);
            std::copy(un.begin(), un.end(), normed.begin() + (bt * M + m) * H);
        }
    // ... then a depthwise causal conv over the M*H channels (channel m*H + c):
    // y[t, ch] = sum_i w[ch, i] * x[t - (Kc-1-i) * dilation, ch], zero before t = 0.
    r.conv.assign(r.gated.size(), 0.0);
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t m = 0; m < M; ++m)
                for (std::int64_t c = 0; c < H; ++c) {
                    const std::int64_t ch = m * H + c;
                    double acc = 0.0;
                    for (std::int64_t i = 0; i < Kc; ++i) {
                        const std::int64_t src = t - (Kc - 1 - i) * w.dilation;
                        if (src < 0) continue;
                        acc += w.conv_weight[sz(ch * Kc + i)] * normed[sz(((b * T + src) * M + m) * H + c)];
                    }
                    const std::size_t at = sz(((b * T + t) * M + m) * H + c);
                    r.conv[at] = acc;
                    r.output[at] = r.gated[at] + ref_silu(acc); // Y = u + SiLU(y)
                }
    return r;
}

/// The output [B, T, M, H] only.
inline std::vector<double> reference_forward(const reference_weights& w, std::span<const std::int64_t> rows,
                                             std::int64_t batch, std::int64_t seq, std::int64_t heads,
                                             std::span<const float> table, std::int64_t head_dim,
                                             std::span<const float> hidden, const reference_options& opt = {}) {
    return reference_forward_full(w, rows, batch, seq, heads, table, head_dim, hidden, opt).output;
}

// ---------------------------------------------------------------------------------------------
// Comparison.

struct comparison {
    double max_abs_diff = 0.0;     ///< max |got - expected|
    double max_abs_expected = 0.0; ///< max |expected|
    double relative = 0.0;         ///< max_abs_diff / max_abs_expected (the tolerance measure)
    double max_elementwise_rel =
        0.0; ///< max |got - expected| / |expected| over elements with |expected| >= 1e-3 * max_abs_expected
    std::size_t worst_index = 0; ///< where max_abs_diff occurs
};

/// Compares two equally sized ranges of numbers (float or double). Throws on a size mismatch.
template <class A, class B>
comparison compare_outputs(const A& got, const B& expected) {
    if (std::size(got) != std::size(expected)) throw std::invalid_argument("compare_outputs: sizes differ");
    comparison c;
    const std::size_t n = std::size(expected);
    for (std::size_t i = 0; i < n; ++i)
        c.max_abs_expected = std::max(c.max_abs_expected, std::abs(double(expected[i])));
    for (std::size_t i = 0; i < n; ++i) {
        const double e = double(expected[i]);
        const double d = std::abs(double(got[i]) - e);
        if (!(d <= c.max_abs_diff)) { // also catches NaN, which then counts as an infinite difference
            c.max_abs_diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
            c.worst_index = i;
        }
        if (std::abs(e) >= 1e-3 * c.max_abs_expected && e != 0.0 && !(d / std::abs(e) <= c.max_elementwise_rel))
            c.max_elementwise_rel = std::isnan(d) ? std::numeric_limits<double>::infinity() : d / std::abs(e);
    }
    c.relative = c.max_abs_expected > 0.0 ? c.max_abs_diff / c.max_abs_expected : c.max_abs_diff;
    return c;
}

// ---------------------------------------------------------------------------------------------
// Case files (forward cases: tests/data/forward_small.safetensors and generated ones).

/// The `config` metadata of a forward case (golden README keys).
struct forward_case_config {
    std::vector<std::int64_t> table_size_per_ngram{1000, 1200};
    std::int64_t max_ngram = 3;       ///< N
    std::int64_t heads_per_ngram = 4; ///< K
    std::int64_t embed_per_ngram = 64;
    std::vector<std::int64_t> layer_ids{1, 3};
    std::int64_t pad_id = 2;
    std::int64_t seed = 0;
    std::int64_t kernel_size = 4; ///< Kc
    std::int64_t hidden = 64;     ///< H
    std::int64_t branches = 4;    ///< M
    std::int64_t layer_id = 1;
    double conv_norm_eps = 1e-5;
    double gate_norm_eps = float32_epsilon;
    std::int64_t conv_dilation = 3;

    std::int64_t heads() const { return (max_ngram - 1) * heads_per_ngram; }
    std::int64_t head_dim() const { return embed_per_ngram / heads_per_ngram; }
    std::int64_t memory_width() const { return (max_ngram - 1) * embed_per_ngram; }

    std::string to_json() const {
        nlohmann::json j;
        j["table_size_per_ngram"] = table_size_per_ngram;
        j["max_ngram"] = max_ngram;
        j["embed_per_ngram"] = embed_per_ngram;
        j["heads_per_ngram"] = heads_per_ngram;
        j["layer_ids"] = layer_ids;
        j["pad_id"] = pad_id;
        j["seed"] = seed;
        j["kernel_size"] = kernel_size;
        j["hidden"] = hidden;
        j["branches"] = branches;
        j["layer_id"] = layer_id;
        j["conv_norm_eps"] = conv_norm_eps;
        j["gate_norm_eps"] = gate_norm_eps;
        j["conv_dilation"] = conv_dilation;
        return j.dump();
    }

    /// Missing optional keys take the reference defaults: eps as above, conv_dilation = max_ngram.
    static forward_case_config from_json(const std::string& text) {
        const nlohmann::json j = nlohmann::json::parse(text);
        forward_case_config c;
        c.table_size_per_ngram = j.at("table_size_per_ngram").get<std::vector<std::int64_t>>();
        c.max_ngram = j.at("max_ngram").get<std::int64_t>();
        c.heads_per_ngram = j.at("heads_per_ngram").get<std::int64_t>();
        c.embed_per_ngram = j.at("embed_per_ngram").get<std::int64_t>();
        c.layer_ids = j.at("layer_ids").get<std::vector<std::int64_t>>();
        c.pad_id = j.at("pad_id").get<std::int64_t>();
        c.seed = j.at("seed").get<std::int64_t>();
        c.kernel_size = j.value("kernel_size", std::int64_t{4});
        c.hidden = j.at("hidden").get<std::int64_t>();
        c.branches = j.at("branches").get<std::int64_t>();
        c.layer_id = j.at("layer_id").get<std::int64_t>();
        c.conv_norm_eps = j.value("conv_norm_eps", 1e-5);
        c.gate_norm_eps = j.value("gate_norm_eps", float32_epsilon);
        c.conv_dilation = j.value("conv_dilation", c.max_ngram);
        return c;
    }
};

/// Reads the layer weights of a case file (sizes from `cfg`, tensors by their reference names).
inline reference_weights load_reference_weights(const engram::safetensors_file& file, const forward_case_config& cfg) {
    reference_weights w;
    w.hidden = cfg.hidden;
    w.branches = cfg.branches;
    w.memory_width = cfg.memory_width();
    w.kernel_size = cfg.kernel_size;
    w.dilation = cfg.conv_dilation;
    w.gate_norm_eps = cfg.gate_norm_eps;
    w.conv_norm_eps = cfg.conv_norm_eps;
    auto get = [&](const std::string& name) { return file.at(name).to_vector<double>(); };
    w.value_proj_weight = get("value_proj.weight");
    w.value_proj_bias = get("value_proj.bias");
    for (std::int64_t m = 0; m < cfg.branches; ++m) {
        const std::string i = std::to_string(m);
        w.key_proj_weight.push_back(get("key_projs." + i + ".weight"));
        w.key_proj_bias.push_back(get("key_projs." + i + ".bias"));
        w.norm1.push_back(get("norm1." + i + ".weight"));
        w.norm2.push_back(get("norm2." + i + ".weight"));
        w.conv_norms.push_back(get("short_conv.norms." + i + ".weight"));
    }
    w.conv_weight = get("short_conv.conv.weight");
    w.check();
    return w;
}

/// Everything in a forward case file, as plain vectors.
struct reference_case {
    forward_case_config config;
    reference_weights weights;
    std::int64_t batch = 0, seq = 0;
    std::vector<std::int64_t> lookup;    ///< [V]
    std::vector<std::int64_t> input_ids; ///< [B, T]
    std::vector<std::int64_t> offsets;   ///< [heads]
    std::vector<std::int64_t> hash_ids;  ///< [B, T, heads] head-local (empty if the file has none)
    std::vector<float> table;            ///< [rows, d]
    std::vector<float> hidden;           ///< [B, T, M, H]
    std::vector<float> output;           ///< [B, T, M, H] expected (empty if the file has none)

    std::int64_t heads() const { return config.heads(); }
    std::int64_t head_dim() const { return config.head_dim(); }
    /// Global row ids [B, T, heads] = hash_ids + offsets.
    std::vector<std::int64_t> rows() const { return ref_global_rows(hash_ids, offsets); }
};

inline reference_case load_reference_case(const engram::safetensors_file& file) {
    reference_case c;
    const std::string* text = file.find_metadata("config");
    if (text == nullptr) throw std::invalid_argument("load_reference_case: no 'config' metadata");
    c.config = forward_case_config::from_json(*text);
    c.weights = load_reference_weights(file, c.config);
    const auto& ids = file.at("input_ids");
    if (ids.shape.size() != 2) throw std::invalid_argument("load_reference_case: input_ids is not [B, T]");
    c.batch = ids.shape[0];
    c.seq = ids.shape[1];
    c.input_ids = ids.to_vector<std::int64_t>();
    c.lookup = file.at("lookup").to_vector<std::int64_t>();
    c.offsets = file.at("multi_head_embedding.offsets").to_vector<std::int64_t>();
    if (file.contains("hash_ids")) c.hash_ids = file.at("hash_ids").to_vector<std::int64_t>();
    c.table = file.at("multi_head_embedding.embedding.weight").to_vector<float>();
    c.hidden = file.at("hidden_states").to_vector<float>();
    if (file.contains("output")) c.output = file.at("output").to_vector<float>();
    return c;
}

// ---------------------------------------------------------------------------------------------
// Random weights and generated cases.

/// Portable normal draws: Box-Muller on std::mt19937's (standardised) output, so generated files are
/// the same with every standard library.
class ref_normal {
public:
    explicit ref_normal(std::uint32_t seed) : gen_(seed) {}
    double uniform01() {                                        // in (0, 1)
        const std::uint64_t hi = gen_() >> 5, lo = gen_() >> 6; // 53 bits
        return (static_cast<double>((hi << 26) | lo) + 0.5) / 9007199254740992.0;
    }
    double operator()(double mean, double stddev) {
        const double u1 = uniform01(), u2 = uniform01();
        const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        return mean + stddev * z;
    }
    std::uint32_t bits() { return static_cast<std::uint32_t>(gen_()); }

private:
    std::mt19937 gen_;
};

/// Random float values (stored as doubles, exactly representable as float).
inline std::vector<double> ref_random_vector(ref_normal& rng, std::size_t n, double mean, double stddev) {
    std::vector<double> out(n);
    for (double& x : out) x = static_cast<double>(static_cast<float>(rng(mean, stddev)));
    return out;
}

/// Random weights: projections and biases N(0, 0.05), norm weights N(1, 0.1), conv weights N(0, 0.3)
/// (or all zero with `zero_conv`, the paper's initialisation).
inline reference_weights random_reference_weights(std::int64_t hidden, std::int64_t branches, std::int64_t memory_width,
                                                  std::int64_t kernel_size, std::int64_t dilation, std::uint32_t seed,
                                                  bool zero_conv = false) {
    ref_normal rng(seed);
    reference_weights w;
    w.hidden = hidden;
    w.branches = branches;
    w.memory_width = memory_width;
    w.kernel_size = kernel_size;
    w.dilation = dilation;
    const auto H = static_cast<std::size_t>(hidden), D = static_cast<std::size_t>(memory_width);
    w.value_proj_weight = ref_random_vector(rng, H * D, 0.0, 0.05);
    w.value_proj_bias = ref_random_vector(rng, H, 0.0, 0.05);
    for (std::int64_t m = 0; m < branches; ++m) {
        w.key_proj_weight.push_back(ref_random_vector(rng, H * D, 0.0, 0.05));
        w.key_proj_bias.push_back(ref_random_vector(rng, H, 0.0, 0.05));
        w.norm1.push_back(ref_random_vector(rng, H, 1.0, 0.1));
        w.norm2.push_back(ref_random_vector(rng, H, 1.0, 0.1));
        w.conv_norms.push_back(ref_random_vector(rng, H, 1.0, 0.1));
    }
    const std::size_t conv_n = static_cast<std::size_t>(branches) * H * static_cast<std::size_t>(kernel_size);
    w.conv_weight = zero_conv ? std::vector<double>(conv_n, 0.0) : ref_random_vector(rng, conv_n, 0.0, 0.3);
    w.check();
    return w;
}

inline std::vector<float> ref_to_float(const std::vector<double>& x) {
    std::vector<float> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = static_cast<float>(x[i]);
    return out;
}

/// Adds the weights under their reference names (F32).
inline void add_reference_weights(engram::safetensors_writer& out, const reference_weights& w) {
    w.check();
    const std::int64_t H = w.hidden, D = w.memory_width;
    out.add("value_proj.weight", {H, D}, ref_to_float(w.value_proj_weight));
    out.add("value_proj.bias", {H}, ref_to_float(w.value_proj_bias));
    for (std::int64_t m = 0; m < w.branches; ++m) {
        const auto i = static_cast<std::size_t>(m);
        const std::string s = std::to_string(m);
        out.add("key_projs." + s + ".weight", {H, D}, ref_to_float(w.key_proj_weight[i]));
        out.add("key_projs." + s + ".bias", {H}, ref_to_float(w.key_proj_bias[i]));
        out.add("norm1." + s + ".weight", {H}, ref_to_float(w.norm1[i]));
        out.add("norm2." + s + ".weight", {H}, ref_to_float(w.norm2[i]));
        out.add("short_conv.norms." + s + ".weight", {H}, ref_to_float(w.conv_norms[i]));
    }
    out.add("short_conv.conv.weight", {w.branches * H, 1, w.kernel_size}, ref_to_float(w.conv_weight));
}

/// What a generated forward case contains.
struct forward_case_spec {
    forward_case_config config{};  ///< hashing and layer sizes (defaults: those of forward_small)
    std::int64_t vocab_size = 600; ///< V: raw token ids in [0, V)
    double fold_fraction = 0.4;    ///< chance that a token folds onto an earlier canonical id
    std::int64_t batch = 2;
    std::int64_t seq = 24;
    std::uint32_t seed = 12345; ///< seed of every random draw (std::mt19937)
    bool zero_conv = false;     ///< all-zero conv weights
    /// Write `hash_ids` (ref_hash_ids with make_layout's primes and multipliers) and the expected
    /// `output` (reference_forward with `options`), as in a golden case.
    bool include_expected = true;
    reference_options options{};
};

/// A complete forward case as a safetensors image: the config metadata; `lookup` I64 [V] (canonical
/// ids in order of first appearance, as spec section 1 assigns them); `input_ids` I64 [B, T] (with
/// pad ids and repeats); `multi_head_embedding.embedding.weight` F32 [total_rows, d] N(0, 1);
/// `multi_head_embedding.offsets` I64 [heads]; the weights (random_reference_weights); `hidden_states`
/// F32 [B, T, M, H] N(0, 1); and with `include_expected` also `hash_ids` and `output`.
inline std::vector<std::byte> make_forward_case(const forward_case_spec& spec) {
    const forward_case_config& cfg = spec.config;
    ref_normal rng(spec.seed);
    const std::int64_t V = spec.vocab_size, B = spec.batch, T = spec.seq;
    if (V < 1 || B < 1 || T < 1 || cfg.pad_id < 0 || cfg.pad_id >= V)
        throw std::invalid_argument("make_forward_case: bad vocabulary, batch, sequence or pad id");

    // Canonical table: each token folds onto an earlier canonical id with probability fold_fraction.
    std::vector<std::int64_t> lookup(static_cast<std::size_t>(V));
    std::int64_t canonical_size = 0;
    for (std::int64_t t = 0; t < V; ++t) {
        if (canonical_size > 0 && rng.uniform01() < spec.fold_fraction)
            lookup[static_cast<std::size_t>(t)] = static_cast<std::int64_t>(rng.bits() % canonical_size);
        else
            lookup[static_cast<std::size_t>(t)] = canonical_size++;
    }
    const std::int64_t canonical_pad = lookup[static_cast<std::size_t>(cfg.pad_id)];

    engram::hash_config hc;
    hc.table_size_per_ngram = cfg.table_size_per_ngram;
    hc.max_ngram = static_cast<int>(cfg.max_ngram);
    hc.heads_per_ngram = static_cast<int>(cfg.heads_per_ngram);
    hc.embed_per_ngram = cfg.embed_per_ngram;
    hc.layer_ids = cfg.layer_ids;
    hc.pad_id = cfg.pad_id;
    hc.seed = cfg.seed;
    const engram::layer_layout layout = engram::make_layout(hc, cfg.layer_id, canonical_size, canonical_pad);

    // Input ids: mostly random, with pad tokens and a repeated stretch (so n-grams recur).
    std::vector<std::int64_t> input_ids(static_cast<std::size_t>(B * T));
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < T; ++t) {
            std::int64_t id = static_cast<std::int64_t>(rng.bits() % static_cast<std::uint32_t>(V));
            if (t % 7 == 3) id = cfg.pad_id;
            if (t >= 8 && t < 12 && T >= 12) id = input_ids[static_cast<std::size_t>(b * T + t - 8)];
            input_ids[static_cast<std::size_t>(b * T + t)] = id;
        }

    const std::int64_t d = cfg.head_dim(), M = cfg.branches, H = cfg.hidden;
    std::vector<float> table(static_cast<std::size_t>(layout.total_rows * d));
    for (float& x : table) x = static_cast<float>(rng(0.0, 1.0));
    std::vector<float> hidden(static_cast<std::size_t>(B * T * M * H));
    for (float& x : hidden) x = static_cast<float>(rng(0.0, 1.0));
    reference_weights w = random_reference_weights(H, M, cfg.memory_width(), cfg.kernel_size, cfg.conv_dilation,
                                                   rng.bits(), spec.zero_conv);
    w.gate_norm_eps = cfg.gate_norm_eps;
    w.conv_norm_eps = cfg.conv_norm_eps;

    engram::safetensors_writer out;
    out.set_metadata("config", cfg.to_json());
    out.add("lookup", {V}, lookup);
    out.add("input_ids", {B, T}, input_ids);
    out.add("multi_head_embedding.embedding.weight", {layout.total_rows, d}, table);
    out.add("multi_head_embedding.offsets", {static_cast<std::int64_t>(layout.offsets.size())}, layout.offsets);
    add_reference_weights(out, w);
    out.add("hidden_states", {B, T, M, H}, hidden);
    if (spec.include_expected) {
        std::vector<std::int64_t> canonical(input_ids.size());
        for (std::size_t i = 0; i < input_ids.size(); ++i)
            canonical[i] = lookup[static_cast<std::size_t>(input_ids[i])];
        const std::vector<std::int64_t> hash_ids =
            ref_hash_ids(canonical, B, T, canonical_pad, layout.multipliers, layout.primes, cfg.heads_per_ngram);
        const std::vector<double> expected = reference_forward(w, ref_global_rows(hash_ids, layout.offsets), B, T,
                                                               cfg.heads(), table, d, hidden, spec.options);
        out.add("hash_ids", {B, T, cfg.heads()}, hash_ids);
        out.add("output", {B, T, M, H}, ref_to_float(expected));
    }
    return out.to_bytes();
}

} // namespace engram_test
