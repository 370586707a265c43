// SPDX-License-Identifier: MIT
// The plain-loop reference of the Engram layer (tests/support/reference_layer.hpp): checked against the
// PyTorch golden case and against properties that can be worked out by hand.
#include "support/reference_layer.hpp"

#include "support/catch.hpp"

#include <engram/hash/layout.hpp>
#include <engram/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cmath>      // for sqrt, exp, abs
#include <cstddef>    // for size_t
#include <cstdint>    // for int64_t
#include <filesystem> // for path
#include <string>     // for string
#include <vector>     // for vector

namespace fs = std::filesystem;
using namespace engram_test;

namespace {

const fs::path data_dir = ENGRAM_TEST_DATA_DIR;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

reference_case golden_case() {
    const auto file = engram::safetensors_file::open(data_dir / "forward_small.safetensors");
    return load_reference_case(file);
}

/// A small random layer with rows drawn inside a table of `rows` rows.
struct small_setup {
    std::int64_t B = 2, T = 9, heads = 3, d = 4, H = 8, M = 2, Kc = 4, dil = 2, table_rows = 50;
    reference_weights w;
    std::vector<std::int64_t> rows;
    std::vector<float> table, hidden;

    explicit small_setup(bool zero_conv = false) {
        w = random_reference_weights(H, M, heads * d, Kc, dil, 7u, zero_conv);
        ref_normal rng(99u);
        for (std::int64_t i = 0; i < B * T * heads; ++i) rows.push_back(static_cast<std::int64_t>(rng.bits() % 50u));
        for (std::int64_t i = 0; i < table_rows * d; ++i) table.push_back(static_cast<float>(rng(0.0, 1.0)));
        for (std::int64_t i = 0; i < B * T * M * H; ++i) hidden.push_back(static_cast<float>(rng(0.0, 1.0)));
    }
    reference_result run(const reference_options& opt = {}) const {
        return reference_forward_full(w, rows, B, T, heads, table, d, hidden, opt);
    }
    std::size_t at(std::int64_t b, std::int64_t t, std::int64_t m, std::int64_t c) const {
        return static_cast<std::size_t>(((b * T + t) * M + m) * H + c);
    }
};

} // namespace

TEST_CASE("reference layer reproduces the PyTorch golden forward case", "[reference_layer]") {
    const reference_case c = golden_case();
    const forward_case_config& cfg = c.config;
    REQUIRE(cfg.max_ngram == 3);
    REQUIRE(cfg.heads_per_ngram == 4);
    REQUIRE(cfg.embed_per_ngram == 64);
    REQUIRE(cfg.hidden == 64);
    REQUIRE(cfg.branches == 4);
    REQUIRE(cfg.kernel_size == 4);
    REQUIRE(cfg.conv_dilation == 3);
    REQUIRE(cfg.gate_norm_eps == float32_epsilon);
    REQUIRE(cfg.conv_norm_eps == 1e-5);
    REQUIRE(c.batch == 2);
    REQUIRE(c.seq == 24);
    REQUIRE(c.heads() == 8);
    REQUIRE(c.head_dim() == 16);
    REQUIRE(c.hash_ids.size() == static_cast<std::size_t>(c.batch * c.seq * c.heads()));
    REQUIRE(c.output.size() == c.hidden.size());

    const std::vector<std::int64_t> rows = c.rows();
    const reference_result r =
        reference_forward_full(c.weights, rows, c.batch, c.seq, c.heads(), c.table, c.head_dim(), c.hidden);
    const comparison cmp = compare_outputs(r.output, c.output);
    WARN("forward_small, reference gate + reference fusion: max|diff| = "
         << cmp.max_abs_diff << ", max|expected| = " << cmp.max_abs_expected << ", max|diff|/max|expected| = "
         << cmp.relative << ", max elementwise relative error (|expected| >= 1e-3 max) = " << cmp.max_elementwise_rel);
    CHECK(cmp.relative <= 1e-5);
    CHECK(cmp.max_elementwise_rel <= 1e-4);
}

TEST_CASE("reference layer on the golden inputs: gate, conv and fusion all matter", "[reference_layer]") {
    const reference_case c = golden_case();
    const forward_case_config& cfg = c.config;
    const std::vector<std::int64_t> rows = c.rows();
    const reference_result r =
        reference_forward_full(c.weights, rows, c.batch, c.seq, c.heads(), c.table, c.head_dim(), c.hidden);

    SECTION("the gates are spread out, so the golden case exercises the gate") {
        double lo = 1.0, hi = 0.0;
        for (double a : r.alpha) {
            lo = std::min(lo, a);
            hi = std::max(hi, a);
        }
        INFO("alpha in [" << lo << ", " << hi << "]");
        CHECK(lo < 0.3);
        CHECK(hi > 0.7);
    }
    SECTION("the paper's gate gives a clearly different answer") {
        reference_options opt;
        opt.gate = ref_gate::paper;
        const auto other =
            reference_forward(c.weights, rows, c.batch, c.seq, c.heads(), c.table, c.head_dim(), c.hidden, opt);
        CHECK(compare_outputs(other, c.output).relative > 1e-3);
    }
    SECTION("zeroing the conv changes the answer (the golden conv is not trivial)") {
        reference_weights w = c.weights;
        std::fill(w.conv_weight.begin(), w.conv_weight.end(), 0.0);
        const auto other = reference_forward(w, rows, c.batch, c.seq, c.heads(), c.table, c.head_dim(), c.hidden);
        CHECK(compare_outputs(other, c.output).relative > 1e-3);
    }
    SECTION("production fusion on the golden inputs is h + alpha v") {
        reference_options opt;
        opt.fusion = ref_fusion::production;
        const reference_result p =
            reference_forward_full(c.weights, rows, c.batch, c.seq, c.heads(), c.table, c.head_dim(), c.hidden, opt);
        CHECK(p.alpha == r.alpha);
        CHECK(p.conv.empty());
        const std::int64_t M = cfg.branches, H = cfg.hidden;
        double worst = 0.0;
        for (std::int64_t bt = 0; bt < c.batch * c.seq; ++bt)
            for (std::int64_t m = 0; m < M; ++m)
                for (std::int64_t ch = 0; ch < H; ++ch) {
                    const auto i = static_cast<std::size_t>((bt * M + m) * H + ch);
                    const double want = double(c.hidden[i]) + r.alpha[static_cast<std::size_t>(bt * M + m)] *
                                                                  r.value[static_cast<std::size_t>(bt * H + ch)];
                    worst = std::max(worst, std::abs(p.output[i] - want));
                }
        CHECK(worst <= 1e-12);
    }
}

TEST_CASE("plain-loop hash reproduces the golden hash ids of the forward case", "[reference_layer]") {
    const reference_case c = golden_case();
    std::int64_t canonical_size = 0;
    for (std::int64_t v : c.lookup) canonical_size = std::max(canonical_size, v + 1);
    const std::int64_t canonical_pad = c.lookup[static_cast<std::size_t>(c.config.pad_id)];
    engram::hash_config hc;
    hc.table_size_per_ngram = c.config.table_size_per_ngram;
    hc.max_ngram = static_cast<int>(c.config.max_ngram);
    hc.heads_per_ngram = static_cast<int>(c.config.heads_per_ngram);
    hc.embed_per_ngram = c.config.embed_per_ngram;
    hc.layer_ids = c.config.layer_ids;
    hc.pad_id = c.config.pad_id;
    hc.seed = c.config.seed;
    const auto layout = engram::make_layout(hc, c.config.layer_id, canonical_size, canonical_pad);
    CHECK(layout.offsets == c.offsets);
    CHECK(static_cast<std::size_t>(layout.total_rows * c.head_dim()) == c.table.size());

    std::vector<std::int64_t> canonical;
    for (std::int64_t id : c.input_ids) canonical.push_back(c.lookup[static_cast<std::size_t>(id)]);
    const auto ids = ref_hash_ids(canonical, c.batch, c.seq, canonical_pad, layout.multipliers, layout.primes,
                                  c.config.heads_per_ngram);
    CHECK(ids == c.hash_ids);
}

TEST_CASE("reference gate activation", "[reference_layer]") {
    CHECK(ref_sign(0.0) == 0.0);
    CHECK(ref_gate_activation(0.0, ref_gate::reference) == 0.5);
    CHECK(ref_gate_activation(0.0, ref_gate::paper) == 0.5);
    CHECK(ref_gate_activation(-0.0, ref_gate::reference) == 0.5);
    CHECK(std::abs(ref_gate_activation(4.0, ref_gate::reference) - sigmoid(2.0)) < 1e-15);
    CHECK(std::abs(ref_gate_activation(-4.0, ref_gate::reference) - sigmoid(-2.0)) < 1e-15);
    CHECK(std::abs(ref_gate_activation(4.0, ref_gate::paper) - sigmoid(4.0)) < 1e-15);
    CHECK(std::abs(ref_gate_activation(0.25, ref_gate::reference) - sigmoid(0.5)) < 1e-15);
    // |s| below 1e-6 is clamped: sqrt(1e-6) = 1e-3, with the sign of s.
    CHECK(std::abs(ref_gate_activation(1e-9, ref_gate::reference) - sigmoid(1e-3)) < 1e-15);
    CHECK(std::abs(ref_gate_activation(-1e-9, ref_gate::reference) - sigmoid(-1e-3)) < 1e-15);
    CHECK(std::abs(ref_silu(2.0) - 2.0 * sigmoid(2.0)) < 1e-15);
    CHECK(ref_silu(0.0) == 0.0);
}

TEST_CASE("reference RMSNorm and linear by hand", "[reference_layer]") {
    const std::vector<double> x{3.0, 4.0}, w{1.0, 2.0};
    const auto y = ref_rms_norm(x, w, 0.0); // mean(x^2) = 12.5
    CHECK(std::abs(y[0] - 3.0 / std::sqrt(12.5)) < 1e-15);
    CHECK(std::abs(y[1] - 8.0 / std::sqrt(12.5)) < 1e-15);
    const auto z = ref_rms_norm(x, w, 1.5); // sqrt(14) in the denominator
    CHECK(std::abs(z[0] - 3.0 / std::sqrt(14.0)) < 1e-15);
    const std::vector<double> W{1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, b{0.5, -1.0}, v{1.0, 0.0, -1.0};
    const auto l = ref_linear(W, b, v); // [1 - 3 + 0.5, 4 - 6 - 1]
    CHECK(l == std::vector<double>{-1.5, -3.0});
    CHECK(ref_global_rows(std::vector<std::int64_t>{1, 2, 3, 4}, std::vector<std::int64_t>{0, 10}) ==
          std::vector<std::int64_t>{1, 12, 3, 14});
}

TEST_CASE("reference forward on a one-token layer computed by hand", "[reference_layer]") {
    // H = 2, M = 1, one head of width 2; identity projections, unit norms, no eps:
    // e = (3, 4) = h, so s = <e/rms(e), e/rms(e)> / sqrt(2) = 2 / sqrt(2) = sqrt(2).
    reference_weights w;
    w.hidden = 2;
    w.branches = 1;
    w.memory_width = 2;
    w.kernel_size = 2;
    w.dilation = 1;
    w.gate_norm_eps = 0.0;
    w.conv_norm_eps = 0.0;
    w.value_proj_weight = {1.0, 0.0, 0.0, 1.0};
    w.value_proj_bias = {0.0, 0.0};
    w.key_proj_weight = {{1.0, 0.0, 0.0, 1.0}};
    w.key_proj_bias = {{0.0, 0.0}};
    w.norm1 = {{1.0, 1.0}};
    w.norm2 = {{1.0, 1.0}};
    w.conv_norms = {{1.0, 1.0}};
    w.conv_weight = {0.5, 2.0, 0.5, -1.0}; // channel c: taps (t-1, t)
    const std::vector<std::int64_t> rows{1};
    const std::vector<float> table{0.0f, 0.0f, 3.0f, 4.0f};
    const std::vector<float> hidden{3.0f, 4.0f};

    const double alpha = sigmoid(std::sqrt(std::sqrt(2.0)));
    const reference_result r = reference_forward_full(w, rows, 1, 1, 1, table, 2, hidden);
    REQUIRE(r.score.size() == 1);
    CHECK(std::abs(r.score[0] - std::sqrt(2.0)) < 1e-14);
    CHECK(std::abs(r.alpha[0] - alpha) < 1e-15);
    // u = alpha (3, 4); RMSNorm(u) = (3, 4) / sqrt(12.5); conv at t = 0 sees only the current tap.
    const double n0 = 3.0 / std::sqrt(12.5), n1 = 4.0 / std::sqrt(12.5);
    CHECK(std::abs(r.output[0] - (3.0 * alpha + ref_silu(2.0 * n0))) < 1e-14);
    CHECK(std::abs(r.output[1] - (4.0 * alpha + ref_silu(-1.0 * n1))) < 1e-14);

    reference_options opt;
    opt.fusion = ref_fusion::production;
    const auto p = reference_forward(w, rows, 1, 1, 1, table, 2, hidden, opt);
    CHECK(std::abs(p[0] - (3.0 + 3.0 * alpha)) < 1e-14);
    CHECK(std::abs(p[1] - (4.0 + 4.0 * alpha)) < 1e-14);
}

TEST_CASE("reference fusion with zero conv weights is the gated value", "[reference_layer]") {
    const small_setup s(/*zero_conv=*/true);
    const reference_result r = s.run();
    REQUIRE(r.output.size() == r.gated.size());
    for (double y : r.conv) REQUIRE(y == 0.0);
    CHECK(r.output == r.gated); // u + SiLU(0) = u exactly
    bool nonzero = false;
    for (double u : r.gated) nonzero = nonzero || u != 0.0;
    CHECK(nonzero);
}

TEST_CASE("reference causal dilated conv taps", "[reference_layer]") {
    small_setup s;
    const std::int64_t Kc = s.Kc, dil = s.dil;
    auto normed_u = [&](const reference_result& r, std::int64_t b, std::int64_t t, std::int64_t m) {
        const std::span<const double> u(r.gated.data() + s.at(b, t, m, 0), static_cast<std::size_t>(s.H));
        return ref_rms_norm(u, s.w.conv_norms[static_cast<std::size_t>(m)], s.w.conv_norm_eps);
    };
    for (std::int64_t tap = 0; tap < Kc; ++tap) {
        INFO("only tap " << tap << " set (delay " << (Kc - 1 - tap) * dil << ")");
        std::fill(s.w.conv_weight.begin(), s.w.conv_weight.end(), 0.0);
        for (std::int64_t ch = 0; ch < s.M * s.H; ++ch) s.w.conv_weight[static_cast<std::size_t>(ch * Kc + tap)] = 1.0;
        const reference_result r = s.run();
        const std::int64_t delay = (Kc - 1 - tap) * dil;
        double worst = 0.0;
        for (std::int64_t b = 0; b < s.B; ++b)
            for (std::int64_t t = 0; t < s.T; ++t)
                for (std::int64_t m = 0; m < s.M; ++m) {
                    std::vector<double> src(static_cast<std::size_t>(s.H), 0.0);
                    if (t - delay >= 0) src = normed_u(r, b, t - delay, m);
                    for (std::int64_t c = 0; c < s.H; ++c) {
                        const std::size_t i = s.at(b, t, m, c);
                        const double want = r.gated[i] + ref_silu(src[static_cast<std::size_t>(c)]);
                        worst = std::max(worst, std::abs(r.output[i] - want));
                    }
                }
        CHECK(worst <= 1e-14);
    }
    SECTION("a channel's kernel only touches that channel (depthwise)") {
        std::fill(s.w.conv_weight.begin(), s.w.conv_weight.end(), 0.0);
        const std::int64_t ch = 1 * s.H + 3; // branch 1, channel 3
        s.w.conv_weight[static_cast<std::size_t>(ch * Kc + Kc - 1)] = 1.0;
        const reference_result r = s.run();
        for (std::int64_t b = 0; b < s.B; ++b)
            for (std::int64_t t = 0; t < s.T; ++t)
                for (std::int64_t m = 0; m < s.M; ++m)
                    for (std::int64_t c = 0; c < s.H; ++c) {
                        const std::size_t i = s.at(b, t, m, c);
                        if (m * s.H + c != ch)
                            REQUIRE(r.output[i] == r.gated[i]);
                        else
                            REQUIRE(r.output[i] != r.gated[i]);
                    }
    }
}

TEST_CASE("production fusion and the token mask", "[reference_layer]") {
    const small_setup s;
    reference_options opt;
    opt.fusion = ref_fusion::production;

    SECTION("mask 0 everywhere gives out = h exactly") {
        opt.mask.assign(static_cast<std::size_t>(s.B * s.T), 0.0f);
        const reference_result r = s.run(opt);
        for (double a : r.alpha) REQUIRE(a == 0.0);
        for (std::size_t i = 0; i < r.output.size(); ++i) {
            REQUIRE(r.output[i] == double(s.hidden[i]));
            REQUIRE(static_cast<float>(r.output[i]) == s.hidden[i]);
        }
    }
    SECTION("a partial mask zeroes only the masked tokens") {
        const reference_result full = s.run(opt);
        opt.mask.assign(static_cast<std::size_t>(s.B * s.T), 1.0f);
        opt.mask[3] = 0.0f;
        opt.mask[static_cast<std::size_t>(s.T + 5)] = 0.0f;
        const reference_result r = s.run(opt);
        for (std::int64_t bt = 0; bt < s.B * s.T; ++bt)
            for (std::int64_t m = 0; m < s.M; ++m) {
                const bool masked = opt.mask[static_cast<std::size_t>(bt)] == 0.0f;
                const auto g = static_cast<std::size_t>(bt * s.M + m);
                CHECK(r.alpha[g] == (masked ? 0.0 : full.alpha[g]));
                for (std::int64_t c = 0; c < s.H; ++c) {
                    const auto i = static_cast<std::size_t>((bt * s.M + m) * s.H + c);
                    if (masked)
                        CHECK(r.output[i] == double(s.hidden[i]));
                    else
                        CHECK(r.output[i] == full.output[i]);
                }
            }
    }
    SECTION("unmasked production output is h + alpha v") {
        const reference_result r = s.run(opt);
        double worst = 0.0;
        for (std::int64_t bt = 0; bt < s.B * s.T; ++bt)
            for (std::int64_t m = 0; m < s.M; ++m)
                for (std::int64_t c = 0; c < s.H; ++c) {
                    const auto i = static_cast<std::size_t>((bt * s.M + m) * s.H + c);
                    const double want = double(s.hidden[i]) + r.alpha[static_cast<std::size_t>(bt * s.M + m)] *
                                                                  r.value[static_cast<std::size_t>(bt * s.H + c)];
                    worst = std::max(worst, std::abs(r.output[i] - want));
                }
        CHECK(worst <= 1e-14);
    }
}

TEST_CASE("generated forward cases are complete and self-consistent", "[reference_layer]") {
    forward_case_spec spec;
    spec.config.hidden = 32;
    spec.config.branches = 2;
    spec.config.heads_per_ngram = 2;
    spec.config.embed_per_ngram = 16;
    spec.config.table_size_per_ngram = {300, 500};
    spec.batch = 3;
    spec.seq = 17;
    spec.seed = 4242u;
    const std::vector<std::byte> bytes = make_forward_case(spec);
    const auto file = engram::safetensors_file::from_bytes(bytes);

    const std::string* text = file.find_metadata("config");
    REQUIRE(text != nullptr);
    const nlohmann::json j = nlohmann::json::parse(*text);
    for (const char* key :
         {"table_size_per_ngram", "max_ngram", "heads_per_ngram", "embed_per_ngram", "layer_ids", "pad_id", "seed",
          "kernel_size", "hidden", "branches", "layer_id", "conv_norm_eps", "gate_norm_eps", "conv_dilation"}) {
        INFO("config key " << key);
        CHECK(j.contains(key));
    }
    const reference_case c = load_reference_case(file);
    CHECK(c.config.to_json() == spec.config.to_json());
    CHECK(c.batch == 3);
    CHECK(c.seq == 17);
    CHECK(file.at("lookup").shape == std::vector<std::int64_t>{spec.vocab_size});
    CHECK(file.at("input_ids").type == engram::dtype::i64);
    CHECK(file.at("multi_head_embedding.offsets").type == engram::dtype::i64);
    CHECK(file.at("hidden_states").shape == std::vector<std::int64_t>{3, 17, 2, 32});
    CHECK(file.at("short_conv.conv.weight").shape == std::vector<std::int64_t>{64, 1, 4});
    CHECK(file.at("key_projs.1.weight").shape == std::vector<std::int64_t>{32, 32});
    CHECK(file.at("hash_ids").shape == std::vector<std::int64_t>{3, 17, 4});

    // Lookup: canonical ids in order of first appearance.
    std::int64_t next = 0;
    for (std::int64_t v : c.lookup) {
        REQUIRE(v >= 0);
        REQUIRE(v <= next);
        if (v == next) ++next;
    }
    CHECK(next < spec.vocab_size); // some tokens fold

    // Layout agrees with engram's; hash ids are inside their heads' tables.
    engram::hash_config hc;
    hc.table_size_per_ngram = c.config.table_size_per_ngram;
    hc.max_ngram = static_cast<int>(c.config.max_ngram);
    hc.heads_per_ngram = static_cast<int>(c.config.heads_per_ngram);
    hc.embed_per_ngram = c.config.embed_per_ngram;
    hc.layer_ids = c.config.layer_ids;
    hc.pad_id = c.config.pad_id;
    hc.seed = c.config.seed;
    const std::int64_t pad = c.lookup[static_cast<std::size_t>(c.config.pad_id)];
    const auto layout = engram::make_layout(hc, c.config.layer_id, next, pad);
    CHECK(layout.offsets == c.offsets);
    CHECK(file.at("multi_head_embedding.embedding.weight").shape ==
          std::vector<std::int64_t>{layout.total_rows, c.head_dim()});
    for (std::size_t i = 0; i < c.hash_ids.size(); ++i) {
        const auto p = layout.primes[i % layout.primes.size()];
        REQUIRE(c.hash_ids[i] >= 0);
        REQUIRE(c.hash_ids[i] < p);
    }

    // The stored output is the reference's (rounded to float).
    const auto again =
        reference_forward(c.weights, c.rows(), c.batch, c.seq, c.heads(), c.table, c.head_dim(), c.hidden);
    CHECK(compare_outputs(c.output, again).relative <= 1e-7);

    SECTION("the same spec gives the same bytes; another seed other bytes") {
        CHECK(make_forward_case(spec) == bytes);
        forward_case_spec other = spec;
        other.seed = 4243u;
        CHECK(make_forward_case(other) != bytes);
    }
    SECTION("zero_conv writes zero conv weights") {
        forward_case_spec z = spec;
        z.zero_conv = true;
        const auto zf = engram::safetensors_file::from_bytes(make_forward_case(z));
        for (float v : zf.at("short_conv.conv.weight").to_vector<float>()) REQUIRE(v == 0.0f);
    }
}
