// SPDX-License-Identifier: MIT
// The CUDA kernels' per-element bodies (engram/backend/bodies.hpp, layer_bodies.hpp) run on the
// CPU in the kernels' own order (one window per token, one decode per value, one gate per
// (token, branch), one convolution per channel) and are checked against the host layer and
// against independent definitions. These are the device's logic without a device.
#include "support/catch.hpp"
#include "support/cuda_cases.hpp"
#include "support/v41.hpp"

#include <engram/backend/bodies.hpp>
#include <engram/backend/layer_bodies.hpp>
#include <engram/ngram/decode_state.hpp>
#include <engram/storage/fp8_tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

using engram::row_id;
using engram::token_id;
namespace bodies = engram::bodies;

namespace {

/// A layout's hash parameters as the kernels take them: multipliers, primes and Barrett
/// constants in `words` (which must outlive the result).
bodies::hash_params params_of(const engram::layer_layout& lay, std::vector<std::uint64_t>& words) {
    words.clear();
    for (auto m : lay.multipliers) words.push_back(static_cast<std::uint64_t>(m));
    for (auto p : lay.primes) words.push_back(static_cast<std::uint64_t>(p));
    for (auto p : lay.primes) words.push_back(bodies::barrett_magic(static_cast<std::uint64_t>(p)));
    const std::size_t nm = lay.multipliers.size(), nh = lay.primes.size();
    return {lay.orders.data(),   static_cast<int>(lay.orders.size()),
            lay.heads_per_order, words.data(),
            words.data() + nm,   words.data() + nm + nh,
            lay.offsets.data()};
}

/// The hash kernel on the CPU: per token, its window, then every layer's rows.
std::vector<row_id> hash_like_kernel(const std::vector<engram::layer_layout>& layouts,
                                     const std::vector<token_id>& lookup, const std::vector<token_id>& raw,
                                     std::size_t batch, std::size_t seq_len, const std::vector<std::uint8_t>& mask,
                                     token_id dead) {
    std::vector<row_id> out;
    std::vector<std::vector<std::uint64_t>> words(layouts.size());
    std::vector<bodies::hash_params> params;
    for (std::size_t l = 0; l < layouts.size(); ++l) params.push_back(params_of(layouts[l], words[l]));
    std::vector<std::vector<row_id>> per_layer(layouts.size());
    for (std::size_t g = 0; g < batch * seq_len; ++g) {
        const std::size_t b = g / seq_len, t = g % seq_len;
        bodies::window_source src{raw.data() + b * seq_len,
                                  lookup.data(),
                                  static_cast<token_id>(lookup.size()),
                                  mask.empty() ? nullptr : mask.data() + b * seq_len,
                                  dead,
                                  layouts[0].pad};
        token_id w[8];
        REQUIRE(bodies::canonical_window(src, static_cast<std::int64_t>(t), layouts[0].max_order(), w));
        for (std::size_t l = 0; l < layouts.size(); ++l) {
            std::vector<row_id> r(layouts[l].num_heads());
            bodies::hash_heads(params[l], w, r.data());
            per_layer[l].insert(per_layer[l].end(), r.begin(), r.end());
        }
    }
    for (auto& v : per_layer) out.insert(out.end(), v.begin(), v.end());
    return out;
}

/// The gather kernel's decode of one row (value by value, from the table's bytes).
void decode_like_kernel(const engram::table_view& t, row_id r, float* out) {
    const std::byte* row = t.rows + static_cast<std::size_t>(r) * t.row_bytes;
    for (std::size_t k = 0; k < t.dim; ++k) {
        switch (t.encoding) {
        case engram::row_encoding::f32:
            std::memcpy(out + k, row + 4 * k, 4);
            break;
        case engram::row_encoding::bf16: {
            std::uint16_t b;
            std::memcpy(&b, row + 2 * k, 2);
            out[k] = bodies::bf16_value(b);
            break;
        }
        case engram::row_encoding::fp8_packed:
            out[k] = bodies::fp8_value(static_cast<std::uint8_t>(row[k]),
                                       bodies::ue8m0_value(static_cast<std::uint8_t>(row[t.dim + k / 32])));
            break;
        case engram::row_encoding::fp8_split:
            out[k] = bodies::fp8_split_value(
                static_cast<std::uint8_t>(row[k]),
                static_cast<std::uint8_t>(t.scales[static_cast<std::size_t>(r) * (t.dim / 32) + k / 32]));
            break;
        }
    }
}

/// The whole device layer on the CPU: hash, gather, projection (double sums, as a GEMM would
/// within rounding), then the gate and fusion bodies in the kernels' order.
template <class Gate, bool HasConv>
std::vector<float> layer_like_kernels(const engram_test::cuda_case& c, bool quantised) {
    const auto& p = c.params;
    const std::size_t n = c.batch * c.seq_len, heads = p.layout.num_heads(),
                      dim = static_cast<std::size_t>(p.layout.head_dim);
    const std::size_t d = heads * dim, h = static_cast<std::size_t>(p.config.hidden),
                      m = static_cast<std::size_t>(p.config.branches), r = (1 + m) * h;
    std::vector<float> e(n * d);
    for (std::size_t i = 0; i < n * heads; ++i) decode_like_kernel(c.table, c.rows[i], e.data() + i * dim);
    if (quantised) {
        std::vector<std::uint16_t> q(d);
        for (std::size_t i = 0; i < n; ++i) {
            for (std::size_t j = 0; j < (d + 31) / 32; ++j) bodies::act_quant_block(e.data() + i * d, d, j, q.data());
            for (std::size_t k = 0; k < d; ++k) e[i * d + k] = bodies::bf16_value(q[k]);
        }
    }
    std::vector<float> proj(n * r);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t o = 0; o < r; ++o) {
            double s = 0;
            for (std::size_t k = 0; k < d; ++k) s += static_cast<double>(e[i * d + k]) * p.projection_weight[o * d + k];
            proj[i * r + o] = static_cast<float>(s);
        }
    std::vector<float> out(n * m * h), alpha(n * m), x(n * m * h);
    bodies::gate_args a;
    a.p = proj.data();
    a.bias = p.projection_bias.data();
    a.finish_bf16 = quantised;
    a.hidden = c.hidden.data();
    a.out = out.data();
    a.mask = c.mask.empty() ? nullptr : c.mask.data();
    a.key_norm = p.key_norm.data();
    a.hidden_norm = p.hidden_norm.data();
    a.hidden_size = static_cast<int>(h);
    a.branches = static_cast<int>(m);
    a.gate_eps = p.config.gate_norm_eps;
    a.alpha = alpha.data();
    a.rows = {x.data(), c.seq_len, 0, 0};
    a.conv_weight = p.conv_weight.data();
    a.conv_norm = p.conv_norm.data();
    a.conv_eps = p.config.conv_norm_eps;
    a.kernel_size = static_cast<int>(p.config.kernel_size);
    a.dilation = static_cast<std::size_t>(p.config.dilation());
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t b = 0; b < m; ++b) {
            bodies::gate_terms t;
            for (std::size_t ch = 0; ch < h; ++ch) {
                const auto v = bodies::gate_channel(a, i, b, ch);
                t.kk += v.kk;
                t.hh += v.hh;
                t.dot += v.dot;
            }
            const float g = bodies::gate_value<Gate>(a, i, t);
            alpha[i * m + b] = g;
            if constexpr (HasConv) {
                double uu = 0;
                for (std::size_t ch = 0; ch < h; ++ch) {
                    const double u = bodies::gated_value(a, i, g, ch);
                    uu += u * u;
                }
                const double rs = bodies::rms_scale(uu, 1.0 / static_cast<double>(h), a.conv_eps);
                for (std::size_t ch = 0; ch < h; ++ch) bodies::norm_channel(a, i, b, g, rs, ch);
            } else {
                for (std::size_t ch = 0; ch < h; ++ch) bodies::production_channel(a, i, b, g, ch);
            }
        }
    if constexpr (HasConv)
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t ch = 0; ch < m * h; ++ch) bodies::conv_channel(a, i, ch);
    return out;
}

} // namespace

TEST_CASE("hash bodies: every layer of a batch from one window per token equals the host hasher", "[cuda][hash]") {
    auto cfg = engram_test::small_config().hash;
    cfg.layer_ids = {1, 15, 30};
    const auto vocab = engram_test::small_vocab();
    const auto layouts = engram::make_layouts(cfg, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id));
    const std::vector<token_id> lookup(vocab.lookup().begin(), vocab.lookup().end());
    const std::size_t batch = 3, seq = 17, n = batch * seq;
    auto raw = engram_test::token_ids(n, 5);
    raw[4] = raw[40] = 77;
    std::vector<std::uint8_t> mask(n, 1);
    mask[8] = mask[9] = mask[35] = 0;
    for (int variant = 0; variant < 3; ++variant) {
        const std::vector<std::uint8_t> m = variant == 2 ? mask : std::vector<std::uint8_t>{};
        const token_id dead = variant == 1 ? 77 : -1;
        const auto got = hash_like_kernel(layouts, lookup, raw, batch, seq, m, dead);
        const auto want = engram_test::host_rows(layouts, vocab, raw, batch, seq, mask, variant);
        INFO("variant " << variant << " (0 plain, 1 dead token, 2 token mask)");
        CHECK(got == want);
    }
    SECTION("a raw id outside the vocabulary makes the window unusable") {
        std::vector<token_id> bad = raw;
        bad[3] = 500;
        bodies::window_source src{bad.data(), lookup.data(), 500, nullptr, -1, layouts[0].pad};
        token_id w[3];
        CHECK_FALSE(bodies::canonical_window(src, 3, 3, w));
        CHECK_FALSE(bodies::canonical_window(src, 4, 3, w));
        CHECK(bodies::canonical_window(src, 6, 3, w));
    }
}

TEST_CASE("decode window body: push_window gives the host decode state's rows", "[cuda][hash]") {
    auto cfg = engram_test::small_config().hash;
    const auto vocab = engram_test::small_vocab();
    const auto lay = engram::make_layout(cfg, 1, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id));
    engram::ngram_hasher<> hasher(lay);
    engram::ngram_state<engram::multiply_xor_family, engram::orders<2, 3>> state(hasher, vocab, token_id{77});
    std::vector<std::uint64_t> w;
    const bodies::hash_params params = params_of(lay, w);
    const std::size_t nh = lay.primes.size();
    token_id window[3] = {lay.pad, lay.pad, lay.pad};
    auto raw = engram_test::token_ids(40, 9);
    raw[6] = raw[20] = 77;
    std::vector<row_id> want(nh), got(nh);
    for (std::size_t t = 0; t < raw.size(); ++t) {
        state.push(raw[t], want);
        const bool live = raw[t] != 77;
        bodies::push_window(window, 3, live ? vocab.lookup()[static_cast<std::size_t>(raw[t])] : lay.pad, live,
                            lay.pad);
        bodies::hash_heads(params, window, got.data());
        INFO("step " << t);
        REQUIRE(got == want);
    }
}

TEST_CASE("decode bodies: bf16, FP8 E4M3 x UE8M0 (packed and V4.1's two tensors) against their definitions",
          "[cuda][codec]") {
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const float v = bodies::bf16_value(static_cast<std::uint16_t>(b));
        std::uint32_t bits;
        std::memcpy(&bits, &v, 4);
        REQUIRE(bits == b << 16);
        if (!std::isnan(v)) REQUIRE(bodies::bf16_bits(v) == b);
    }
    std::size_t checked = 0;
    for (unsigned code = 0; code < 256; ++code)
        for (unsigned s = 0; s < 256; ++s) {
            const double want_code = v41_test::e4m3(static_cast<std::uint8_t>(code));
            const double scale = s == 255 ? std::nan("") : std::ldexp(1.0, static_cast<int>(s) - 127);
            const float packed =
                bodies::fp8_value(static_cast<std::uint8_t>(code), bodies::ue8m0_value(static_cast<std::uint8_t>(s)));
            const float split = bodies::fp8_split_value(static_cast<std::uint8_t>(code), static_cast<std::uint8_t>(s));
            if (std::isnan(want_code)) {
                REQUIRE(std::isnan(packed));
                REQUIRE(std::isnan(split));
                continue;
            }
            if (s == 255) {
                REQUIRE(std::isnan(split));
                continue;
            }
            const double exact = want_code * scale;
            REQUIRE(static_cast<double>(packed) == static_cast<double>(static_cast<float>(exact)));
            REQUIRE(static_cast<double>(split) == v41_test::round_bf16(exact));
            ++checked;
        }
    CHECK(checked > 60000);
    // The host's decoders give the same bits (the AVX-512 one where the CPU has it).
    std::vector<std::byte> codes(64), scales(2);
    for (std::size_t i = 0; i < 64; ++i) codes[i] = static_cast<std::byte>(i * 4 + 1);
    scales[0] = std::byte{1};
    scales[1] = std::byte{130};
    std::vector<float> host(64);
    engram::fp8_tensor_table::decode_reference(codes.data(), scales.data(), host.data(), 64);
    for (std::size_t i = 0; i < 64; ++i)
        CHECK(bodies::fp8_split_value(static_cast<std::uint8_t>(codes[i]), static_cast<std::uint8_t>(scales[i / 32])) ==
              host[i]);
}

TEST_CASE("gather split: every (row, chunk) is taken by exactly one lane of the persistent grid", "[cuda][gather]") {
    for (std::size_t chunks : {1u, 2u, 3u, 5u, 8u, 16u, 17u, 31u, 32u, 33u, 64u, 130u})
        for (std::size_t warps : {1u, 3u, 8u})
            for (std::size_t count : {0u, 1u, 7u, 40u}) {
                const engram::bodies::row_lanes split(chunks);
                REQUIRE((split.lanes >= chunks || split.lanes == 32));
                REQUIRE((split.lanes == 1 || split.lanes / 2 < chunks));
                std::vector<int> taken(count * chunks, 0);
                constexpr std::size_t in_flight = 4; // the kernel's chunks_in_flight
                for (std::size_t w = 0; w < warps; ++w)
                    for (unsigned lane = 0; lane < 32; ++lane)
                        for (std::size_t i = split.first_row(w, lane); i < count; i += split.row_step(warps))
                            for (std::size_t c0 = 0; c0 < chunks; c0 += split.lanes * in_flight)
                                for (std::size_t u = 0; u < in_flight; ++u) {
                                    const std::size_t c = c0 + split.first_chunk(lane) + split.lanes * u;
                                    if (c < chunks) ++taken[i * chunks + c];
                                }
                INFO("chunks " << chunks << ", warps " << warps << ", rows " << count);
                CHECK(std::count(taken.begin(), taken.end(), 1) == static_cast<std::ptrdiff_t>(taken.size()));
            }
}

TEST_CASE("gather bodies: every case's rows decode to the host gather's bits", "[cuda][gather]") {
    for (const auto& c :
         {engram_test::make_case<engram_test::demo_policies>("demo f32", false, std::nullopt),
          engram_test::make_case<engram_test::production_policies>("production bf16", true, std::nullopt),
          engram_test::make_case<engram_test::fp8_demo_policies>("demo fp8", false, std::nullopt),
          engram_test::v41_case()}) {
        INFO(c.name << " (" << engram::row_encoding_name(c.table.encoding) << ")");
        const std::size_t dim = c.table.dim;
        std::vector<float> got(c.memory.size());
        for (std::size_t i = 0; i < c.rows.size(); ++i) decode_like_kernel(c.table, c.rows[i], got.data() + i * dim);
        CHECK(std::memcmp(got.data(), c.memory.data(), got.size() * 4) == 0);
    }
}

TEST_CASE("gate and fusion bodies: the device layer's steps on the CPU give the host layer's output", "[cuda][layer]") {
    std::string why;
    {
        const auto c = engram_test::make_case<engram_test::demo_policies>("demo", false, token_id{77});
        CHECK(engram_test::outputs_match(c, layer_like_kernels<engram::reference_gate, true>(c, false), 1e-5, why));
        INFO(why);
    }
    {
        const auto c = engram_test::make_case<engram_test::fp8_demo_policies>("demo fp8", false, std::nullopt);
        CHECK(engram_test::outputs_match(c, layer_like_kernels<engram::reference_gate, true>(c, false), 1e-5, why));
        INFO(why);
    }
    {
        const auto c = engram_test::make_case<engram_test::production_policies>("production", true, std::nullopt);
        const auto got = layer_like_kernels<engram::reference_gate, false>(c, false);
        CHECK(engram_test::outputs_match(c, got, 1e-5, why));
        INFO(why);
        // A masked token comes back as its hidden state, bit for bit.
        const std::size_t width = 2 * 64;
        CHECK(std::memcmp(got.data() + 3 * width, c.hidden.data() + 3 * width, width * 4) == 0);
    }
    {
        const auto c = engram_test::v41_case();
        CHECK(engram_test::outputs_match(c, layer_like_kernels<engram::copysign_gate, false>(c, true), 0, why));
        INFO(why);
    }
}
