// SPDX-License-Identifier: MIT
// The library layer (engram::layer) against the independent plain-loop reference of
// tests/support/reference_layer.hpp, on generated forward cases: both gates and both fusions,
// M = 1 and 4, N = 2..4, kernel sizes 1, 2 and 4, default and explicit dilations, B > 1, whole
// sequences and token-by-token decode_step, the production fusion's token mask, the paper's
// zero-initialised convolution, dead tokens and user-defined gate policies.
#include "support/reference_layer.hpp"

#include "support/catch.hpp"

#include <engram/io/config_json.hpp>
#include <engram/layer/checkpoint.hpp>

#include <nlohmann/json.hpp>

#include <algorithm> // for max, min
#include <cmath>     // for exp, sqrt, fabs
#include <cstddef>   // for size_t
#include <cstdint>   // for int64_t, uint8_t, uint32_t
#include <span>      // for span
#include <string>    // for string, to_string
#include <utility>   // for move
#include <vector>    // for vector

namespace et = engram_test;

namespace {

// ---- policy bundles -------------------------------------------------------------------------

/// The PyTorch reference: signed-root sigmoid gate, u + SiLU(conv(RMSNorm(u))).
struct reference_reference : engram::layer_policies {};
/// The paper's plain sigmoid gate with the reference fusion.
struct paper_reference : engram::layer_policies {
    using gate_type = engram::sigmoid_gate;
};
/// The reference gate with the production fusion (h + alpha v).
struct reference_production : engram::layer_policies {
    using fusion_type = engram::production_fusion;
};
/// The paper's gate with the production fusion.
struct paper_production : engram::layer_policies {
    using gate_type = engram::sigmoid_gate;
    using fusion_type = engram::production_fusion;
};

/// A bundle with the orders 2..N of a case (the layer's orders must match its max_ngram).
template <class Base, class Orders>
struct with_orders : Base {
    using orders_type = Orders;
};

// ---- user-defined gates (each with its exact double-precision counterpart) -------------------

/// alpha = 1 for a positive score, else 0.
struct hard_gate {
    float operator()(float s) const noexcept { return s > 0.0f ? 1.0f : 0.0f; }
    static double expected(double s) { return s > 0.0 ? 1.0 : 0.0; }
};

/// alpha = sigmoid(s / temperature).
struct tempered_gate {
    static constexpr float temperature = 0.25f;
    float operator()(float s) const noexcept { return 1.0f / (1.0f + std::exp(-s / temperature)); }
    static double expected(double s) { return 1.0 / (1.0 + std::exp(-s / static_cast<double>(temperature))); }
};

/// alpha = 1: with hidden = 0 the production fusion then returns v itself.
struct unit_gate {
    float operator()(float) const noexcept { return 1.0f; }
};

static_assert(engram::gate_policy<hard_gate> && engram::gate_policy<tempered_gate> && engram::gate_policy<unit_gate>);

struct hard_production : engram::layer_policies {
    using gate_type = hard_gate;
    using fusion_type = engram::production_fusion;
};
struct hard_reference : engram::layer_policies {
    using gate_type = hard_gate;
};
struct tempered_production : engram::layer_policies {
    using gate_type = tempered_gate;
    using fusion_type = engram::production_fusion;
};
struct tempered_reference : engram::layer_policies {
    using gate_type = tempered_gate;
};
struct unit_production : engram::layer_policies {
    using gate_type = unit_gate;
    using fusion_type = engram::production_fusion;
};

template <class P>
constexpr et::ref_gate ref_gate_of() {
    return std::is_same_v<typename P::gate_type, engram::sigmoid_gate> ? et::ref_gate::paper : et::ref_gate::reference;
}

template <class P>
constexpr et::ref_fusion ref_fusion_of() {
    return P::fusion_type::has_conv ? et::ref_fusion::reference : et::ref_fusion::production;
}

/// Calls `fn.template operator()<with_orders<Bundle, orders<2..n>>>()`.
template <class Bundle, class Fn>
void with_orders_for(int n, Fn&& fn) {
    REQUIRE(n >= 2);
    REQUIRE(n <= 4);
    if (n == 2)
        fn.template operator()<with_orders<Bundle, engram::orders<2>>>();
    else if (n == 3)
        fn.template operator()<with_orders<Bundle, engram::orders<2, 3>>>();
    else
        fn.template operator()<with_orders<Bundle, engram::orders<2, 3, 4>>>();
}

// ---- generated cases ------------------------------------------------------------------------

/// The sizes of one generated case.
struct shape {
    int n;                 ///< N: orders 2..N
    std::int64_t branches; ///< M
    std::int64_t kernel;   ///< Kc
    std::int64_t dilation; ///< 0: left to the library's default (N)
    std::uint32_t seed;
    std::int64_t batch = 3;
    std::int64_t seq = 40; ///< long enough for the conv to reach back several dilations
    std::int64_t hidden = 32;
    bool zero_conv = false;

    shape(int n_, std::int64_t m, std::int64_t kc, std::int64_t dil, std::uint32_t s)
        : n(n_), branches(m), kernel(kc), dilation(dil), seed(s) {}

    [[nodiscard]] std::string describe() const {
        return "N=" + std::to_string(n) + " M=" + std::to_string(branches) + " Kc=" + std::to_string(kernel) +
               " dilation=" + (dilation > 0 ? std::to_string(dilation) : "default") + " B=" + std::to_string(batch) +
               " T=" + std::to_string(seq) + " H=" + std::to_string(hidden) + " seed=" + std::to_string(seed) +
               (zero_conv ? " zero-conv" : "");
    }
};

struct generated_case {
    engram::safetensors_file file;
    et::reference_case ref;
    engram::layer_config cfg; ///< what the library layer is built with
};

generated_case make_case(const shape& s, et::ref_gate gate, et::ref_fusion fusion) {
    et::forward_case_spec spec;
    et::forward_case_config& c = spec.config;
    c.max_ngram = s.n;
    c.table_size_per_ngram.clear();
    for (int n = 2; n <= s.n; ++n) c.table_size_per_ngram.push_back(400 + 150 * (n - 2));
    c.heads_per_ngram = 2;
    c.embed_per_ngram = 32;
    c.hidden = s.hidden;
    c.branches = s.branches;
    c.kernel_size = s.kernel;
    c.conv_dilation = s.dilation > 0 ? s.dilation : s.n; // the reference needs it explicitly
    spec.batch = s.batch;
    spec.seq = s.seq;
    spec.seed = s.seed;
    spec.zero_conv = s.zero_conv;
    spec.options.gate = gate;
    spec.options.fusion = fusion;
    engram::safetensors_file file = engram::safetensors_file::from_bytes(et::make_forward_case(spec));
    et::reference_case ref = et::load_reference_case(file);
    engram::layer_config cfg = engram::load_layer_config(file);
    if (s.dilation == 0) cfg.conv_dilation = 0; // the library must then use N
    REQUIRE(cfg.dilation() == ref.config.conv_dilation);
    return {std::move(file), std::move(ref), cfg};
}

et::reference_result reference_run(const et::reference_case& rc, const std::vector<std::int64_t>& rows,
                                   et::ref_gate gate, et::ref_fusion fusion, std::vector<float> mask = {}) {
    et::reference_options opt;
    opt.gate = gate;
    opt.fusion = fusion;
    opt.mask = std::move(mask);
    return et::reference_forward_full(rc.weights, rows, rc.batch, rc.seq, rc.heads(), rc.table, rc.head_dim(),
                                      rc.hidden, opt);
}

/// What one comparison observed.
struct observed {
    double whole = 0;           ///< forward vs expected
    double stream = 0;          ///< decode_step vs expected
    double stream_vs_whole = 0; ///< decode_step vs forward
    double prefill_vs_whole = 0;
    std::vector<float> out; ///< the forward output
};

/// Runs `layer` on `raw` (the case's hidden states) whole and token by token and compares both
/// with `expected`; checks the row ids first, and the masked tokens (out == hidden exactly).
template <class P>
observed compare_layer(const engram::layer<P>& layer, const et::reference_case& rc,
                       std::span<const engram::token_id> raw, const std::vector<std::int64_t>& expected_rows,
                       const std::vector<double>& expected, std::span<const std::uint8_t> mask = {}) {
    const auto B = static_cast<std::size_t>(rc.batch), T = static_cast<std::size_t>(rc.seq);
    const auto mh = static_cast<std::size_t>(rc.config.branches * rc.config.hidden);
    REQUIRE(raw.size() == B * T);
    REQUIRE(expected.size() == B * T * mh);

    std::vector<engram::row_id> rows(B * T * layer.num_heads());
    layer.rows(raw, B, T, rows);
    REQUIRE(rows == expected_rows);

    observed o;
    o.out.assign(B * T * mh, 0.0f);
    layer.forward(raw, B, T, rc.hidden, o.out, mask);

    std::vector<float> stream(o.out.size());
    const std::span<const float> hidden(rc.hidden);
    for (std::size_t b = 0; b < B; ++b) {
        auto state = layer.new_decode_state();
        for (std::size_t t = 0; t < T; ++t) {
            const std::size_t i = b * T + t;
            layer.decode_step(state, raw[i], hidden.subspan(i * mh, mh), std::span<float>(stream).subspan(i * mh, mh),
                              mask.empty() || mask[i] != 0);
        }
        REQUIRE(state.position() == T);
    }

    o.whole = et::compare_outputs(o.out, expected).relative;
    o.stream = et::compare_outputs(stream, expected).relative;
    o.stream_vs_whole = et::compare_outputs(stream, o.out).relative;
    CAPTURE(o.whole, o.stream, o.stream_vs_whole);
    CHECK(o.whole <= 1e-5);
    CHECK(o.stream <= 1e-5);
    CHECK(o.stream_vs_whole <= 1e-6);

    if (!mask.empty()) {
        std::size_t masked = 0, mismatched = 0;
        for (std::size_t i = 0; i < B * T; ++i) {
            if (mask[i] != 0) continue;
            ++masked;
            for (std::size_t j = i * mh; j < (i + 1) * mh; ++j)
                if (o.out[j] != rc.hidden[j] || stream[j] != rc.hidden[j]) ++mismatched;
        }
        CHECK(masked > 0);
        CHECK(mismatched == 0);
    } else {
        // Prefill a prefix, decode the rest: the same as the whole sequence.
        const std::size_t split = T / 2 - 1;
        double worst = 0;
        for (std::size_t b = 0; b < B; ++b) {
            auto state = layer.new_decode_state();
            std::vector<float> out(T * mh);
            layer.prefill(state, raw.subspan(b * T, split), hidden.subspan(b * T * mh, split * mh),
                          std::span<float>(out).first(split * mh));
            for (std::size_t t = split; t < T; ++t)
                layer.decode_step(state, raw[b * T + t], hidden.subspan((b * T + t) * mh, mh),
                                  std::span<float>(out).subspan(t * mh, mh));
            const std::span<const float> whole = std::span<const float>(o.out).subspan(b * T * mh, T * mh);
            worst = std::max(worst, et::compare_outputs(out, whole).relative);
        }
        o.prefill_vs_whole = worst;
        CAPTURE(o.prefill_vs_whole);
        CHECK(o.prefill_vs_whole <= 1e-6);
    }
    return o;
}

/// Expected outputs for a gate `g` of the score, from the reference's s and v: my own fusion
/// (section 7 for the conv, h + alpha v otherwise), in double.
std::vector<double> fuse_with_gate(const et::reference_result& r, const et::reference_case& rc, double (*g)(double),
                                   bool conv) {
    const et::reference_weights& w = rc.weights;
    const std::int64_t B = rc.batch, T = rc.seq, M = w.branches, H = w.hidden, Kc = w.kernel_size, dil = w.dilation;
    const auto at = [&](std::int64_t b, std::int64_t t, std::int64_t m, std::int64_t c) {
        return static_cast<std::size_t>(((b * T + t) * M + m) * H + c);
    };
    std::vector<double> u(static_cast<std::size_t>(B * T * M * H)), out(u.size());
    for (std::int64_t bt = 0; bt < B * T; ++bt)
        for (std::int64_t m = 0; m < M; ++m) {
            const double alpha = g(r.score[static_cast<std::size_t>(bt * M + m)]);
            for (std::int64_t c = 0; c < H; ++c)
                u[static_cast<std::size_t>((bt * M + m) * H + c)] =
                    alpha * r.value[static_cast<std::size_t>(bt * H + c)];
        }
    if (!conv) {
        for (std::size_t i = 0; i < u.size(); ++i) out[i] = static_cast<double>(rc.hidden[i]) + u[i];
        return out;
    }
    std::vector<double> x(u.size());
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t m = 0; m < M; ++m) {
                double ss = 0;
                for (std::int64_t c = 0; c < H; ++c) ss += u[at(b, t, m, c)] * u[at(b, t, m, c)];
                const double inv = 1.0 / std::sqrt(ss / static_cast<double>(H) + w.conv_norm_eps);
                for (std::int64_t c = 0; c < H; ++c)
                    x[at(b, t, m, c)] = u[at(b, t, m, c)] * inv *
                                        w.conv_norms[static_cast<std::size_t>(m)][static_cast<std::size_t>(c)];
            }
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t m = 0; m < M; ++m)
                for (std::int64_t c = 0; c < H; ++c) {
                    double y = 0;
                    for (std::int64_t k = 0; k < Kc; ++k) {
                        const std::int64_t back = (Kc - 1 - k) * dil;
                        if (back > t) continue;
                        y += w.conv_weight[static_cast<std::size_t>((m * H + c) * Kc + k)] * x[at(b, t - back, m, c)];
                    }
                    out[at(b, t, m, c)] = u[at(b, t, m, c)] + y / (1.0 + std::exp(-y));
                }
    return out;
}

double signed_root_gate(double s) {
    const double root = std::sqrt(std::max(std::fabs(s), 1e-6));
    return 1.0 / (1.0 + std::exp(-(s > 0 ? root : (s < 0 ? -root : 0.0))));
}

/// Global row ids under the dead-token rule, built window by window: for position t, every
/// position at or before the last dead token (at or before t) reads the canonical pad id, then
/// the reference hash runs on that window as if it were a whole sequence.
std::vector<std::int64_t> dead_rule_rows(const et::reference_case& rc, const engram::layer_layout& layout,
                                         std::span<const engram::token_id> raw, engram::token_id dead) {
    const std::int64_t B = rc.batch, T = rc.seq, heads = rc.heads();
    const std::int64_t pad = rc.lookup[static_cast<std::size_t>(rc.config.pad_id)];
    std::vector<std::int64_t> out(static_cast<std::size_t>(B * T * heads));
    for (std::int64_t b = 0; b < B; ++b) {
        std::int64_t last_dead = -1;
        for (std::int64_t t = 0; t < T; ++t) {
            if (raw[static_cast<std::size_t>(b * T + t)] == dead) last_dead = t;
            std::vector<std::int64_t> window(static_cast<std::size_t>(t + 1));
            for (std::int64_t i = 0; i <= t; ++i)
                window[static_cast<std::size_t>(i)] =
                    i <= last_dead ? pad
                                   : rc.lookup[static_cast<std::size_t>(raw[static_cast<std::size_t>(b * T + i)])];
            const std::vector<std::int64_t> ids =
                et::ref_hash_ids(window, 1, t + 1, pad, layout.multipliers, layout.primes, rc.config.heads_per_ngram);
            for (std::int64_t h = 0; h < heads; ++h)
                out[static_cast<std::size_t>((b * T + t) * heads + h)] =
                    ids[static_cast<std::size_t>(t * heads + h)] + rc.offsets[static_cast<std::size_t>(h)];
        }
    }
    return out;
}

std::vector<std::int64_t> plain_rows(const et::reference_case& rc, const engram::layer_layout& layout,
                                     std::span<const engram::token_id> raw) {
    std::vector<std::int64_t> canonical(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) canonical[i] = rc.lookup[static_cast<std::size_t>(raw[i])];
    const std::int64_t pad = rc.lookup[static_cast<std::size_t>(rc.config.pad_id)];
    return et::ref_global_rows(et::ref_hash_ids(canonical, rc.batch, rc.seq, pad, layout.multipliers, layout.primes,
                                                rc.config.heads_per_ngram),
                               rc.offsets);
}

} // namespace

TEMPLATE_TEST_CASE("layer = plain-loop reference: forward and decode_step, every gate and fusion", "[layer][reference]",
                   reference_reference, paper_reference, reference_production, paper_production) {
    const std::vector<shape> shapes = {
        shape(2, 1, 2, 0, 11), // N = 2, M = 1, dilation N
        shape(2, 4, 4, 1, 12), // explicit dilation 1
        shape(3, 4, 4, 0, 13), // the reference's shape
        shape(3, 1, 4, 5, 14), // explicit dilation 5: reaches back 15 of 40
        shape(3, 4, 1, 0, 15), // Kc = 1: the conv sees the current token only
        shape(4, 4, 2, 0, 16), // N = 4, Kc = 2
        shape(4, 1, 4, 0, 17), // N = 4, M = 1
        shape(4, 4, 4, 6, 18), // explicit dilation 6: reaches back 18
    };
    for (const shape& s : shapes) {
        INFO(s.describe());
        with_orders_for<TestType>(s.n, [&]<class P>() {
            const generated_case g = make_case(s, ref_gate_of<P>(), ref_fusion_of<P>());
            const auto layer = engram::load_layer<P>(g.file, g.cfg);
            const std::vector<std::int64_t> rows = g.ref.rows();
            const et::reference_result r = reference_run(g.ref, rows, ref_gate_of<P>(), ref_fusion_of<P>());
            // The float output stored in the case agrees with the double reference run here.
            CHECK(et::compare_outputs(g.ref.output, r.output).relative <= 1e-6);
            compare_layer(layer, g.ref, g.ref.input_ids, rows, r.output);
        });
    }
}

TEMPLATE_TEST_CASE("production fusion: the token mask zeroes the gate, whole and token by token",
                   "[layer][reference][mask]", reference_production, paper_production) {
    const std::vector<shape> shapes = {shape(2, 1, 4, 0, 21), shape(3, 4, 4, 0, 22), shape(4, 4, 4, 0, 23)};
    for (const shape& s : shapes) {
        INFO(s.describe());
        with_orders_for<TestType>(s.n, [&]<class P>() {
            const generated_case g = make_case(s, ref_gate_of<P>(), ref_fusion_of<P>());
            const auto layer = engram::load_layer<P>(g.file, g.cfg);
            const std::size_t tokens = static_cast<std::size_t>(s.batch * s.seq);
            // 0 masks; any other value (1, 255) keeps. The first token and a whole stretch are masked.
            std::vector<std::uint8_t> mask(tokens, 1);
            std::vector<float> ref_mask(tokens, 1.0f);
            for (std::size_t i = 0; i < tokens; ++i) {
                if (i % 5 == 2 || i % 7 == 0 || (i >= 50 && i < 58))
                    mask[i] = 0;
                else if (i % 3 == 0)
                    mask[i] = 255;
                ref_mask[i] = mask[i] == 0 ? 0.0f : 1.0f;
            }
            const std::vector<std::int64_t> rows = g.ref.rows();
            const et::reference_result r = reference_run(g.ref, rows, ref_gate_of<P>(), ref_fusion_of<P>(), ref_mask);
            const observed o = compare_layer(layer, g.ref, g.ref.input_ids, rows, r.output, mask);
            // Unmasked tokens are not hidden states: the mask did not switch the whole layer off.
            std::size_t changed = 0;
            for (std::size_t i = 0; i < o.out.size(); ++i) changed += o.out[i] != g.ref.hidden[i] ? 1 : 0;
            CHECK(changed > o.out.size() / 2);
        });
    }
}

TEST_CASE("reference fusion: a token mask is refused, forward and decode_step", "[layer][reference][mask]") {
    const shape s(3, 4, 4, 0, 31);
    const generated_case g = make_case(s, et::ref_gate::reference, et::ref_fusion::reference);
    const auto layer = engram::load_layer<with_orders<reference_reference, engram::orders<2, 3>>>(g.file, g.cfg);
    const std::size_t tokens = static_cast<std::size_t>(s.batch * s.seq);
    const std::vector<std::uint8_t> mask(tokens, 1);
    std::vector<float> out(g.ref.hidden.size());
    REQUIRE_THROWS_AS(layer.forward(g.ref.input_ids, 3, 40, g.ref.hidden, out, mask), engram::input_error);
    auto state = layer.new_decode_state();
    const std::size_t mh = 4 * 32;
    REQUIRE_THROWS_AS(layer.decode_step(state, g.ref.input_ids[0], std::span<const float>(g.ref.hidden).first(mh),
                                        std::span<float>(out).first(mh), false),
                      engram::input_error);
    CHECK(state.position() == 0);
}

TEMPLATE_TEST_CASE("zero-initialised convolution: the reference fusion returns u = alpha * v",
                   "[layer][reference][zero_conv]", reference_reference, paper_reference) {
    std::vector<shape> shapes = {shape(3, 4, 4, 0, 41), shape(2, 1, 2, 0, 42), shape(4, 4, 4, 7, 43)};
    for (shape& s : shapes) {
        s.zero_conv = true;
        INFO(s.describe());
        with_orders_for<TestType>(s.n, [&]<class P>() {
            const generated_case g = make_case(s, ref_gate_of<P>(), ref_fusion_of<P>());
            const auto layer = engram::load_layer<P>(g.file, g.cfg);
            REQUIRE(layer.config().kernel_size == s.kernel);
            const std::vector<std::int64_t> rows = g.ref.rows();
            const et::reference_result r = reference_run(g.ref, rows, ref_gate_of<P>(), ref_fusion_of<P>());
            // In the reference, SiLU(0) = 0: Y is u exactly.
            REQUIRE(r.output == r.gated);
            const observed o = compare_layer(layer, g.ref, g.ref.input_ids, rows, r.gated);

            // The library's own v (a unit gate, production fusion, zero hidden: out = 0 + 1 * v),
            // then each branch of each token is one multiple of it, alpha as the reference has it.
            using unit = with_orders<unit_production, typename P::orders_type>;
            const auto v_layer = engram::load_layer<unit>(g.file, g.cfg);
            const std::vector<float> zeros(g.ref.hidden.size(), 0.0f);
            std::vector<float> v(zeros.size());
            v_layer.forward(g.ref.input_ids, static_cast<std::size_t>(s.batch), static_cast<std::size_t>(s.seq), zeros,
                            v);
            const auto H = static_cast<std::size_t>(s.hidden), M = static_cast<std::size_t>(s.branches);
            double worst_alpha = 0, worst_shape = 0;
            for (std::size_t i = 0; i < static_cast<std::size_t>(s.batch * s.seq) * M; ++i) {
                const float* vi = v.data() + i * H; // every branch's copy of v is the same
                const float* yi = o.out.data() + i * H;
                std::size_t big = 0;
                for (std::size_t c = 1; c < H; ++c)
                    if (std::fabs(vi[c]) > std::fabs(vi[big])) big = c;
                const double a = static_cast<double>(yi[big]) / vi[big];
                worst_alpha = std::max(worst_alpha, std::fabs(a - r.alpha[i]));
                for (std::size_t c = 0; c < H; ++c)
                    worst_shape = std::max(worst_shape, std::fabs(yi[c] - a * vi[c]) / std::fabs(vi[big]));
            }
            CAPTURE(worst_alpha, worst_shape);
            CHECK(worst_alpha <= 1e-5); // the signed root amplifies float rounding of s near 0
            CHECK(worst_shape <= 1e-6);
        });
    }
}

TEMPLATE_TEST_CASE("dead token: the reference on window-by-window row ids", "[layer][reference][dead]",
                   reference_reference, paper_production) {
    const std::vector<shape> shapes = {shape(3, 4, 4, 0, 51), shape(4, 1, 2, 0, 52), shape(2, 4, 4, 3, 53)};
    for (const shape& s : shapes) {
        INFO(s.describe());
        with_orders_for<TestType>(s.n, [&]<class P>() {
            const generated_case g = make_case(s, ref_gate_of<P>(), ref_fusion_of<P>());
            const et::reference_case& rc = g.ref;
            const auto B = static_cast<std::size_t>(s.batch), T = static_cast<std::size_t>(s.seq);

            // A dead raw id that is not the pad and shares its canonical id with another raw id
            // (an alias, which must stay an ordinary token).
            const std::int64_t pad_canonical = rc.lookup[static_cast<std::size_t>(rc.config.pad_id)];
            engram::token_id dead = -1, alias = -1;
            for (std::size_t a = 0; a < rc.lookup.size() && dead < 0; ++a)
                for (std::size_t b = a + 1; b < rc.lookup.size(); ++b)
                    if (rc.lookup[a] == rc.lookup[b] && rc.lookup[a] != pad_canonical) {
                        dead = static_cast<engram::token_id>(a);
                        alias = static_cast<engram::token_id>(b);
                        break;
                    }
            REQUIRE(dead >= 0);

            // Dead tokens at the start, twice in a row, mid-sequence and last; aliases; the
            // third sequence keeps whatever the random ids give.
            std::vector<engram::token_id> raw = rc.input_ids;
            for (std::size_t t : {std::size_t{0}, std::size_t{5}, std::size_t{6}, std::size_t{21}}) raw[t] = dead;
            raw[9] = alias;
            raw[T + 13] = dead;
            raw[T + 14] = alias;
            raw[2 * T - 1] = dead;
            raw[T + 30] = alias;

            // Through the JSON key ...
            nlohmann::json j = engram::parse_config_text(*g.file.find_metadata("config"));
            j["dead_token"] = dead;
            if (s.dilation == 0) j["conv_dilation"] = 0;
            const engram::layer_config cfg = engram::layer_config_from_json(j);
            REQUIRE(cfg.dead_token == dead);
            REQUIRE(cfg.dilation() == rc.config.conv_dilation);
            const auto layer = engram::load_layer<P>(g.file, cfg);
            // ... and through a configuration override: the same layer.
            engram::layer_config cfg2 = g.cfg;
            cfg2.dead_token = dead;
            const auto layer2 = engram::load_layer<P>(g.file, cfg2);

            // The hash parameters handed to ref_hash_ids are those of the case.
            REQUIRE(layer.layout().offsets == rc.offsets);
            REQUIRE(plain_rows(rc, layer.layout(), rc.input_ids) == rc.rows());

            const std::vector<std::int64_t> expected_rows = dead_rule_rows(rc, layer.layout(), raw, dead);
            // The rule changed the rows of every window that reaches a dead token (the dead
            // positions themselves and the next N-1), and no other.
            const std::vector<std::int64_t> plain = plain_rows(rc, layer.layout(), raw);
            const std::size_t heads = layer.num_heads();
            std::size_t changed = 0, leaked = 0;
            for (std::size_t b = 0; b < B; ++b)
                for (std::size_t t = 0; t < T; ++t) {
                    bool reaches = false;
                    for (std::size_t k = 0; k < static_cast<std::size_t>(s.n) && k <= t; ++k)
                        reaches = reaches || raw[b * T + t - k] == dead;
                    const std::size_t i = (b * T + t) * heads;
                    const bool same = std::equal(expected_rows.begin() + static_cast<std::ptrdiff_t>(i),
                                                 expected_rows.begin() + static_cast<std::ptrdiff_t>(i + heads),
                                                 plain.begin() + static_cast<std::ptrdiff_t>(i));
                    if (reaches && !same) ++changed;
                    if (!reaches && !same) ++leaked;
                }
            CHECK(changed >= 6);
            CHECK(leaked == 0);
            // Windows built by hand: a dead token's own window is all pad (the rows of a lone pad
            // token); after the dead token at 6, position 7 hashes like a first token and position
            // 8 like the second token of a sequence that starts at 7.
            const std::int64_t pad = pad_canonical;
            const auto head_rows = [&](std::vector<std::int64_t> ids) {
                const auto n = static_cast<std::int64_t>(ids.size());
                const std::vector<std::int64_t> local = et::ref_hash_ids(
                    ids, 1, n, pad, layer.layout().multipliers, layer.layout().primes, rc.config.heads_per_ngram);
                std::vector<std::int64_t> last(heads);
                for (std::size_t h = 0; h < heads; ++h)
                    last[h] = local[static_cast<std::size_t>(n - 1) * heads + h] + rc.offsets[h];
                return last;
            };
            const auto rows_at = [&](std::size_t i) {
                return std::vector<std::int64_t>(expected_rows.begin() + static_cast<std::ptrdiff_t>(i * heads),
                                                 expected_rows.begin() + static_cast<std::ptrdiff_t>((i + 1) * heads));
            };
            const auto canon = [&](std::size_t i) { return rc.lookup[static_cast<std::size_t>(raw[i])]; };
            const std::vector<std::int64_t> pad_rows = head_rows({pad});
            for (std::size_t i : {std::size_t{0}, std::size_t{5}, std::size_t{6}, std::size_t{21}, T + 13, 2 * T - 1})
                CHECK(rows_at(i) == pad_rows);
            CHECK(rows_at(7) == head_rows({canon(7)}));
            CHECK(rows_at(8) == head_rows({canon(7), canon(8)}));
            CHECK(rows_at(9) == head_rows({canon(7), canon(8), canon(9)})); // 9 is the alias
            CHECK(rows_at(T + 15) == head_rows({canon(T + 14), canon(T + 15)}));

            const et::reference_result r = reference_run(rc, expected_rows, ref_gate_of<P>(), ref_fusion_of<P>());
            const observed o = compare_layer(layer, rc, raw, expected_rows, r.output);
            std::vector<float> out2(o.out.size());
            layer2.forward(raw, B, T, rc.hidden, out2);
            CHECK(out2 == o.out);
            // Without the dead token the layer computes something else.
            const auto plain_layer = engram::load_layer<P>(g.file, g.cfg);
            std::vector<float> out3(o.out.size());
            plain_layer.forward(raw, B, T, rc.hidden, out3);
            CHECK(out3 != o.out);
        });
    }
}

TEMPLATE_TEST_CASE("user-defined gate policies: hard and tempered gates", "[layer][reference][gate]", hard_production,
                   hard_reference, tempered_production, tempered_reference) {
    const std::vector<shape> shapes = {shape(3, 4, 4, 0, 61), shape(2, 1, 2, 3, 62), shape(4, 4, 2, 0, 63)};
    for (const shape& s : shapes) {
        INFO(s.describe());
        with_orders_for<TestType>(s.n, [&]<class P>() {
            constexpr bool conv = P::fusion_type::has_conv;
            const generated_case g = make_case(s, et::ref_gate::reference, ref_fusion_of<P>());
            const auto layer = engram::load_layer<P>(g.file, g.cfg);
            const std::vector<std::int64_t> rows = g.ref.rows();
            const et::reference_result r = reference_run(g.ref, rows, et::ref_gate::reference, ref_fusion_of<P>());
            // My fusion reproduces the reference's with the reference's own gate.
            REQUIRE(et::compare_outputs(fuse_with_gate(r, g.ref, signed_root_gate, conv), r.output).relative <= 1e-12);

            const std::vector<double> expected = fuse_with_gate(r, g.ref, &P::gate_type::expected, conv);
            if constexpr (std::is_same_v<typename P::gate_type, hard_gate>) {
                // No score so close to 0 that float rounding could flip the hard gate.
                double closest = 1.0;
                for (double x : r.score) closest = std::min(closest, std::fabs(x));
                CAPTURE(closest);
                REQUIRE(closest > 1e-5);
            }
            [[maybe_unused]] const observed o = compare_layer(layer, g.ref, g.ref.input_ids, rows, expected);
            if constexpr (std::is_same_v<typename P::gate_type, hard_gate> && !conv) {
                // A closed gate leaves the hidden state exactly as it was; an open one adds v.
                const auto H = static_cast<std::size_t>(s.hidden);
                std::size_t closed = 0, wrong = 0;
                for (std::size_t i = 0; i < r.score.size(); ++i) {
                    if (r.score[i] > 0) continue;
                    ++closed;
                    for (std::size_t c = 0; c < H; ++c) wrong += o.out[i * H + c] != g.ref.hidden[i * H + c] ? 1 : 0;
                }
                CHECK(closed > 0);
                CHECK(closed < r.score.size());
                CHECK(wrong == 0);
            }
        });
    }
}
