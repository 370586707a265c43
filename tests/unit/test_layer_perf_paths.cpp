// The layer's performance paths against independent answers: the vectorised exp/SiLU and lane
// sums against std::exp and sequential double sums, threaded forward against one thread (bit for
// bit), bf16 weights against f32 weights (bounds from bf16 rounding) and against an f32 layer
// whose weights were rounded to bf16.

#include <engram/kernels/gemv_bf16.hpp>
#include <engram/kernels/vector_math.hpp>
#include <engram/layer.hpp>

#include "support/catch.hpp"
#include "support/random_inputs.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace {

namespace ek = engram::kernels;

/// Units in the last place of the float nearest to `ref`.
double ulps(float got, double ref) {
    const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(ref)) - 23);
    return std::fabs(static_cast<double>(got) - ref) / ulp;
}

engram::layer_config small_config(std::int64_t hidden, std::int64_t branches, std::int64_t kernel) {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {400, 550};
    cfg.hash.heads_per_ngram = 2;
    cfg.hash.embed_per_ngram = 48; // D = 96: not a multiple of 32 (the bf16 kernel's tails)
    cfg.hidden = hidden;
    cfg.branches = branches;
    cfg.kernel_size = kernel;
    return cfg;
}

template <class Policies>
engram::layer<Policies> make_layer(std::int64_t hidden, std::int64_t branches, std::int64_t kernel,
                                   std::uint64_t seed) {
    engram::layer<Policies> l(small_config(hidden, branches, kernel), engram::canonical_table::identity(500));
    l.randomize(seed, 0.3f);
    return l;
}

using engram_test::normal_values;
using engram_test::token_ids;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

struct production_policies : engram::layer_policies {
    using fusion_type = engram::production_fusion;
};

} // namespace

TEST_CASE("fast_exp is within 2 ulp of exp on [-87, 88] and clamps outside", "[kernels]") {
    double worst = 0;
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<float> wide(-87.0f, 88.0f), narrow(-1.0f, 1.0f);
    for (int i = 0; i < 200000; ++i) {
        const float x = i % 2 ? wide(rng) : narrow(rng);
        worst = std::max(worst, ulps(ek::fast_exp(x), std::exp(static_cast<double>(x))));
    }
    for (float x : {-87.0f, -20.5f, -1e-7f, 0.0f, 1e-7f, 0.5f, 1.0f, 10.0f, 88.0f})
        worst = std::max(worst, ulps(ek::fast_exp(x), std::exp(static_cast<double>(x))));
    INFO("worst error " << worst << " ulp");
    CHECK(worst <= 2.0);
    CHECK(ek::fast_exp(0.0f) == 1.0f);
    CHECK(ek::fast_exp(-1000.0f) == ek::fast_exp(-87.0f)); // clamped
    CHECK(ek::fast_exp(1000.0f) == ek::fast_exp(88.0f));
    CHECK(std::isfinite(ek::fast_exp(1000.0f)));
}

TEST_CASE("add_silu: u + y sigmoid(y) within a few ulp of a double reference", "[kernels]") {
    const std::size_t n = 1003; // not a multiple of any vector width
    auto u = normal_values(n, 1), y = normal_values(n, 2);
    for (std::size_t i = 0; i < n; ++i) y[i] *= 8.0f;
    y[0] = -100.0f; // e^100 is clamped: SiLU(-100) is ~0 either way
    y[1] = 100.0f;
    std::vector<float> out(n);
    ek::add_silu(u.data(), y.data(), out.data(), n);
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double yd = y[i];
        const double silu = yd / (1.0 + std::exp(-yd));
        const double ref = static_cast<double>(u[i]) + silu;
        // error relative to the larger of the two terms (the sum may cancel)
        const double scale = std::max(std::fabs(static_cast<double>(u[i])), std::fabs(silu));
        worst = std::max(worst, std::fabs(out[i] - ref) / scale);
    }
    INFO("worst error " << worst << " relative to the larger term");
    CHECK(worst <= 4 * 0x1p-24);
}

TEST_CASE("conv_silu: a v + SiLU(sum of taps) within a few ulp of a double reference", "[kernels]") {
    // Four branches' channels of 1003 each; every branch's channels start at a different offset
    // (not a multiple of 16), so every tail and alignment is covered.
    const std::size_t h = 1003, branches = 4, mh = h * branches;
    for (std::size_t kc : {1u, 2u, 4u}) {
        std::vector<std::vector<float>> rows;
        for (std::size_t k = 0; k < kc; ++k) rows.push_back(normal_values(mh, 10 + k));
        rows[0][5] = 40.0f; // large |y| on both sides: the clamp of e^-y
        rows[0][6] = -40.0f;
        std::vector<const float*> taps;
        for (const auto& r : rows) taps.push_back(r.data());
        const auto w = normal_values(kc * mh, 20 + kc), v = normal_values(h, 30);
        std::vector<float> y(mh), out(h);
        for (std::size_t m = 0; m < branches; ++m) {
            const float a = 0.25f + 0.5f * static_cast<float>(m);
            ek::conv_silu(taps.data(), kc, w.data(), mh, m * h, v.data(), a, y.data(), out.data(), h);
            double worst = 0;
            for (std::size_t c = 0; c < h; ++c) {
                double yd = 0, ymag = 0;
                for (std::size_t k = 0; k < kc; ++k) {
                    const double t = static_cast<double>(w[k * mh + m * h + c]) * rows[k][m * h + c];
                    yd += t;
                    ymag += std::fabs(t);
                }
                const double silu = yd / (1.0 + std::exp(-yd));
                const double ref = static_cast<double>(a) * v[c] + silu;
                // the float sum of kc products may be off by kc ulp of their magnitudes
                const double scale = std::max(std::fabs(static_cast<double>(a) * v[c]), ymag);
                worst = std::max(worst, std::fabs(out[c] - ref) / scale);
            }
            INFO("kc " << kc << ", branch " << m << ": worst error " << worst << " relative to the larger term");
            CHECK(worst <= (4 + 2 * static_cast<double>(kc)) * 0x1p-24);
        }
    }
}

TEST_CASE("lane sums equal sequential double sums", "[kernels]") {
    for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 64u, 1023u}) {
        const auto k = normal_values(n, 10 + n), h = normal_values(n, 20 + n), w1 = normal_values(n, 30 + n),
                   w2 = normal_values(n, 40 + n);
        double kk = 0, hh = 0, dot = 0;
        for (std::size_t i = 0; i < n; ++i) {
            kk += static_cast<double>(k[i]) * k[i];
            hh += static_cast<double>(h[i]) * h[i];
            dot += (static_cast<double>(k[i]) * w1[i]) * (static_cast<double>(h[i]) * w2[i]);
        }
        const auto s = ek::gate_sums_of(k.data(), h.data(), w1.data(), w2.data(), n);
        CHECK(std::fabs(s.kk - kk) <= 1e-13 * (kk + 1e-300));
        CHECK(std::fabs(s.hh - hh) <= 1e-13 * (hh + 1e-300));
        CHECK(std::fabs(s.dot - dot) <= 1e-13 * (std::fabs(dot) + 1));
        CHECK(std::fabs(ek::sum_squares(k.data(), n) - kk) <= 1e-13 * (kk + 1e-300));
    }
}

TEMPLATE_TEST_CASE("threaded forward is bit-identical to one thread", "[layer][threads]", engram::layer_policies,
                   production_policies) {
    // (1+M)H = 640: two GEMM panels (512 + 128 weight rows), split between threads.
    auto layer = make_layer<TestType>(160, 3, 4, 7);
    const std::size_t M = 3, H = 160;
    static_assert(engram::host_matmul::panel_rows == 512 && engram::layer<TestType>::block_tokens == 512);
    // Shapes: a few tokens, one block, several sequences over two blocks (the second block starts
    // inside a sequence, so its convolution reads the first block's rows).
    for (auto [B, T] : {std::pair<std::size_t, std::size_t>{1, 5}, {1, 100}, {2, 300}, {3, 200}}) {
        const auto ids = token_ids(B * T, B * 1000 + T);
        const auto hidden = normal_values(B * T * M * H, T);
        std::vector<std::uint8_t> mask;
        if constexpr (TestType::fusion_type::supports_token_mask) {
            mask.resize(B * T);
            for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = static_cast<std::uint8_t>(i % 5 != 2);
        }
        layer.set_threads(1);
        std::vector<float> one(hidden.size());
        layer.forward(ids, B, T, hidden, one, mask);
        for (std::size_t n : {2u, 3u, 5u, 16u}) {
            layer.set_threads(n);
            std::vector<float> many(hidden.size(), -1.0f);
            layer.forward(ids, B, T, hidden, many, mask);
            INFO("B = " << B << ", T = " << T << ", threads = " << n);
            CHECK(same_bits(many, one));
        }
    }
    CHECK_THROWS_AS(layer.set_threads(0), engram::config_error);
}

TEST_CASE("threaded prefill leaves the same state as one thread", "[layer][threads][stream]") {
    auto layer = make_layer<engram::layer_policies>(40, 2, 3, 11);
    const std::size_t T = 90, MH = 80;
    const auto ids = token_ids(T + 4, 3);
    const auto hidden = normal_values((T + 4) * MH, 4);
    auto run = [&](std::size_t threads) {
        layer.set_threads(threads);
        auto st = layer.new_decode_state();
        std::vector<float> out(T * MH), step(MH), tail;
        layer.prefill(st, std::span(ids).first(T), std::span(hidden).first(T * MH), out);
        for (std::size_t t = T; t < T + 4; ++t) {
            layer.decode_step(st, ids[t], std::span(hidden).subspan(t * MH, MH), step);
            tail.insert(tail.end(), step.begin(), step.end());
        }
        out.insert(out.end(), tail.begin(), tail.end());
        return out;
    };
    const auto one = run(1);
    CHECK(same_bits(run(2), one));
    CHECK(same_bits(run(4), one));
}

TEST_CASE("bf16 GEMV: within float accumulation of the bf16 product, within 2^-8 of the f32 one", "[kernels][bf16]") {
    for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 31}, {13, 96}, {64, 1000}, {5, 33}}) {
        const auto w = normal_values(rows * cols, rows * 7 + cols);
        const auto x = normal_values(cols, cols);
        std::vector<engram::bfloat16> w16(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) w16[i] = engram::bfloat16::from_float(w[i]);
        std::vector<float> y(rows), y_portable(rows);
        ek::gemv_bf16(w16.data(), x.data(), y.data(), rows, cols);
        ek::gemv_bf16_portable(w16.data(), x.data(), y_portable.data(), rows, cols);
        const double gamma = static_cast<double>(cols + 2) * 0x1p-24; // float summation of cols terms
        for (std::size_t r = 0; r < rows; ++r) {
            double exact16 = 0, exact32 = 0, abs_sum = 0;
            for (std::size_t c = 0; c < cols; ++c) {
                exact16 += static_cast<double>(w16[r * cols + c].to_float()) * x[c];
                exact32 += static_cast<double>(w[r * cols + c]) * x[c];
                abs_sum += std::fabs(static_cast<double>(w[r * cols + c]) * x[c]);
            }
            INFO("rows " << rows << ", cols " << cols << ", row " << r);
            CHECK(std::fabs(y[r] - exact16) <= gamma * abs_sum * (1 + 0x1p-8));
            CHECK(std::fabs(y_portable[r] - exact16) <= gamma * abs_sum * (1 + 0x1p-8));
            // Each weight moves by at most 2^-9 of itself (round to nearest, 8 significant bits).
            CHECK(std::fabs(y[r] - exact32) <= (0x1p-9 + gamma * (1 + 0x1p-8)) * abs_sum);
        }
    }
}

TEST_CASE("f32 GEMV: within float accumulation of the exact product", "[kernels]") {
    for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 31}, {13, 96}, {64, 1000}, {5, 33}}) {
        const auto w = normal_values(rows * cols, rows * 5 + cols);
        const auto x = normal_values(cols, cols + 1);
        std::vector<float> y(rows + 1, 42.0f);
        ek::gemv_f32(w.data(), x.data(), y.data(), rows, cols);
        CHECK(y[rows] == 42.0f); // nothing written past the rows
        const double gamma = static_cast<double>(cols + 2) * 0x1p-24;
        for (std::size_t r = 0; r < rows; ++r) {
            double exact = 0, abs_sum = 0;
            for (std::size_t c = 0; c < cols; ++c) {
                exact += static_cast<double>(w[r * cols + c]) * x[c];
                abs_sum += std::fabs(static_cast<double>(w[r * cols + c]) * x[c]);
            }
            INFO("rows " << rows << ", cols " << cols << ", row " << r);
            CHECK(std::fabs(y[r] - exact) <= gamma * abs_sum);
        }
    }
}

TEMPLATE_TEST_CASE("bf16 weights: the layer equals an f32 layer with the weights rounded to bf16", "[layer][bf16]",
                   engram::layer_policies, production_policies) {
    auto f32 = make_layer<TestType>(64, 2, 4, 21);
    auto rounded = make_layer<TestType>(64, 2, 4, 21);
    auto round_rows = [](auto block) {
        for (Eigen::Index i = 0; i < block.rows(); ++i)
            for (Eigen::Index j = 0; j < block.cols(); ++j)
                block(i, j) = engram::bfloat16::from_float(block(i, j)).to_float();
    };
    round_rows(rounded.value_weight());
    for (std::size_t m = 0; m < 2; ++m) round_rows(rounded.key_weight(m));
    auto bf16 = make_layer<TestType>(64, 2, 4, 21);
    bf16.set_weight_format(engram::weight_format::bf16);
    CHECK(bf16.projection_format() == engram::weight_format::bf16);

    const std::size_t B = 2, T = 45, MH = 128;
    const auto ids = token_ids(B * T, 9);
    const auto hidden = normal_values(B * T * MH, 10);
    std::vector<float> o16(hidden.size()), o_rounded(hidden.size()), o32(hidden.size());
    bf16.forward(ids, B, T, hidden, o16);
    rounded.forward(ids, B, T, hidden, o_rounded);
    f32.forward(ids, B, T, hidden, o32);
    INFO("bf16 vs rounded f32 " << relative_error(o16, o_rounded) << ", vs f32 " << relative_error(o16, o32));
    CHECK(relative_error(o16, o_rounded) <= 1e-5); // accumulation order only
    CHECK(relative_error(o16, o32) <= 5e-2);       // bf16 rounding of the weights, through the gates
    CHECK(relative_error(o16, o32) > 1e-6);        // the weights did change

    // Decode: token by token with bf16 weights equals the rounded f32 layer's decode.
    auto s16 = bf16.new_decode_state();
    auto sr = rounded.new_decode_state();
    std::vector<float> a(MH), b(MH), all16, allr;
    for (std::size_t t = 0; t < T; ++t) {
        bf16.decode_step(s16, ids[t], std::span(hidden).subspan(t * MH, MH), a);
        rounded.decode_step(sr, ids[t], std::span(hidden).subspan(t * MH, MH), b);
        all16.insert(all16.end(), a.begin(), a.end());
        allr.insert(allr.end(), b.begin(), b.end());
    }
    CHECK(relative_error(all16, allr) <= 1e-5);
    // And it agrees with the whole-sequence bf16 forward of the first sequence.
    CHECK(relative_error(all16, std::vector<float>(o16.begin(), o16.begin() + static_cast<std::ptrdiff_t>(T * MH))) <=
          1e-5);

    // Back to f32: the copy is dropped and the f32 result returns.
    bf16.set_weight_format(engram::weight_format::f32);
    std::vector<float> back(hidden.size());
    bf16.forward(ids, B, T, hidden, back);
    CHECK(same_bits(back, o32));
}

TEST_CASE("forward over several blocks equals token-by-token decoding", "[layer][stream]") {
    // 2 x 300 tokens: the second block of 512 starts inside the second sequence.
    auto layer = make_layer<engram::layer_policies>(40, 2, 4, 17);
    const std::size_t B = 2, T = 300, MH = 80;
    const auto ids = token_ids(B * T, 12);
    const auto hidden = normal_values(B * T * MH, 13);
    std::vector<float> whole(hidden.size()), streamed(hidden.size()), step(MH);
    layer.forward(ids, B, T, hidden, whole);
    for (std::size_t b = 0; b < B; ++b) {
        auto st = layer.new_decode_state();
        for (std::size_t t = 0; t < T; ++t) {
            const std::size_t i = b * T + t;
            layer.decode_step(st, ids[i], std::span(hidden).subspan(i * MH, MH), step);
            std::copy(step.begin(), step.end(), streamed.begin() + static_cast<std::ptrdiff_t>(i * MH));
        }
    }
    INFO("relative error " << relative_error(whole, streamed));
    CHECK(relative_error(whole, streamed) <= 1e-5);
}

TEMPLATE_TEST_CASE("bf16 dot products: the layer equals an f32 layer with weights and rows rounded to bf16",
                   "[layer][bf16]", engram::layer_policies, production_policies) {
    // (1+M)H = 3 x 160 = 480 rows: 15 strips of 32, one panel; D = 96.
    const std::size_t B = 2, T = 45, M = 2, H = 160, MH = M * H;
    auto round_all = [](auto&& block) {
        for (Eigen::Index i = 0; i < block.rows(); ++i)
            for (Eigen::Index j = 0; j < block.cols(); ++j)
                block(i, j) = engram::bfloat16::from_float(block(i, j)).to_float();
    };
    auto round_rows = [](auto& layer) {
        for (auto& v : layer.table().values()) v = engram::bfloat16::from_float(v).to_float();
    };
    auto f32 = make_layer<TestType>(H, M, 4, 23);
    auto rounded = make_layer<TestType>(H, M, 4, 23);
    round_all(rounded.value_weight());
    for (std::size_t m = 0; m < M; ++m) round_all(rounded.key_weight(m));
    round_rows(rounded);
    auto dot = make_layer<TestType>(H, M, 4, 23);
    round_rows(dot);
    dot.set_weight_format(engram::weight_format::bf16_dot);
    CHECK(dot.projection_format() == engram::weight_format::bf16_dot);

    const auto ids = token_ids(B * T, 31);
    const auto hidden = normal_values(B * T * MH, 32);
    std::vector<float> od(hidden.size()), o_rounded(hidden.size()), o32(hidden.size());
    dot.forward(ids, B, T, hidden, od);
    rounded.forward(ids, B, T, hidden, o_rounded);
    f32.forward(ids, B, T, hidden, o32);
    INFO("bf16_dot vs rounded f32 " << relative_error(od, o_rounded) << ", vs f32 " << relative_error(od, o32));
    CHECK(relative_error(od, o_rounded) <= 1e-5); // the rows are bf16 already: accumulation order only
    CHECK(relative_error(od, o32) <= 5e-2);
    CHECK(relative_error(od, o32) > 1e-6);

    // Threads: the same bits.
    for (std::size_t n : {2u, 3u}) {
        dot.set_threads(n);
        std::vector<float> many(hidden.size(), -1.0f);
        dot.forward(ids, B, T, hidden, many);
        CHECK(same_bits(many, od));
    }
    dot.set_threads(1);

    // Decode: token by token, the same bits as the forward of the first sequence.
    auto st = dot.new_decode_state();
    std::vector<float> step(MH), streamed;
    for (std::size_t t = 0; t < T; ++t) {
        dot.decode_step(st, ids[t], std::span(hidden).subspan(t * MH, MH), step);
        streamed.insert(streamed.end(), step.begin(), step.end());
    }
    CHECK(same_bits(streamed, std::vector<float>(od.begin(), od.begin() + static_cast<std::ptrdiff_t>(T * MH))));

    // Float rows are rounded to bf16 on the way in: the same bits as the layer whose rows were
    // rounded beforehand.
    auto unrounded = make_layer<TestType>(H, M, 4, 23);
    unrounded.set_weight_format(engram::weight_format::bf16_dot);
    std::vector<float> ou(hidden.size());
    unrounded.forward(ids, B, T, hidden, ou);
    CHECK(same_bits(ou, od));

    CHECK_THROWS_AS(dot.set_weight_format(static_cast<engram::weight_format>(7)), engram::config_error);
    CHECK(dot.projection_format() == engram::weight_format::bf16_dot);
}
