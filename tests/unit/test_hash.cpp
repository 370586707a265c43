// N-gram hashing: the reference golden vectors bit for bit, a brute-force model, pad and
// error behaviour, and the xxHash family's ranges.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>

#include <random>
#include <string>
#include <vector>

namespace {

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

/// The reference, written out longhand: shift with pad, multiply-XOR, floor modulo.
std::vector<std::int64_t> brute_force_hash(const engram::layer_layout& l, const std::vector<std::int64_t>& canonical,
                                           std::size_t batch, std::size_t seq) {
    std::vector<std::int64_t> out;
    const auto k_heads = static_cast<std::size_t>(l.heads_per_order);
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t t = 0; t < seq; ++t)
            for (std::size_t oi = 0; oi < l.orders.size(); ++oi) {
                const int n = l.orders[oi];
                std::uint64_t mix = 0;
                for (int k = 0; k < n; ++k) {
                    const std::int64_t x = static_cast<std::int64_t>(t) - k >= 0
                                               ? canonical[b * seq + t - static_cast<std::size_t>(k)]
                                               : l.pad;
                    mix ^= static_cast<std::uint64_t>(x) *
                           static_cast<std::uint64_t>(l.multipliers[static_cast<std::size_t>(k)]);
                }
                for (std::size_t j = 0; j < k_heads; ++j) {
                    const std::int64_t p = l.primes[oi * k_heads + j];
                    const auto m = static_cast<std::int64_t>(mix);
                    out.push_back(((m % p) + p) % p);
                }
            }
    return out;
}

} // namespace

TEST_CASE("golden: reference default configuration, every id equal", "[hash][golden]") {
    const auto file = engram::safetensors_file::open(data("hash_reference_default.safetensors"));
    const auto cfg_json = engram::parse_config_text(*file.find_metadata("config"));
    const auto cfg = engram::hash_config_from_json(cfg_json);
    const auto vocab = engram::canonical_table::from_lookup(file.at("lookup").to_vector<std::int64_t>());
    REQUIRE(vocab.canonical_size() == cfg_json.at("canonical_vocab_size").get<std::int64_t>());
    const auto pad = vocab.canonical_pad_id(cfg.pad_id);
    REQUIRE(pad == cfg_json.at("canonical_pad_id").get<std::int64_t>());

    const auto& ids = file.at("input_ids");
    const auto raw = ids.to_vector<std::int64_t>();
    const auto batch = static_cast<std::size_t>(ids.shape[0]);
    const auto seq = static_cast<std::size_t>(ids.shape[1]);

    const auto layouts = engram::make_layouts(cfg, vocab.canonical_size(), pad);
    for (const auto& l : layouts) {
        const std::string suffix = ".layer" + std::to_string(l.layer_id);
        INFO("layer " << l.layer_id);
        CHECK(l.multipliers == file.at("multipliers" + suffix).to_vector<std::int64_t>());
        CHECK(l.primes == file.at("primes" + suffix).to_vector<std::int64_t>());

        const auto& expected_t = file.at("hash_ids" + suffix);
        const auto expected = expected_t.to_vector<std::int64_t>();
        REQUIRE(expected_t.shape == std::vector<std::int64_t>{ids.shape[0], ids.shape[1], 16});

        engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>> hasher(l);
        std::vector<std::int64_t> got(expected.size());
        hasher.hash_tokens(vocab, raw, batch, seq, got);
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < got.size(); ++i) mismatches += got[i] != expected[i];
        CHECK(mismatches == 0);
        CHECK(got == expected);

        // Row ids are the head-local ids plus each head's offset.
        std::vector<std::int64_t> canonical(raw.size());
        vocab.map(raw, canonical);
        std::vector<engram::row_id> rows(expected.size());
        hasher.rows(canonical, batch, seq, rows);
        for (std::size_t i = 0; i < rows.size(); ++i) REQUIRE(rows[i] == expected[i] + l.offsets[i % 16]);
    }
}

TEST_CASE("batch hashing equals a brute-force model for several orders", "[hash]") {
    std::mt19937_64 rng(42);
    engram::hash_config cfg;
    cfg.max_ngram = 4;
    cfg.table_size_per_ngram = {1000, 2000, 3000};
    cfg.heads_per_ngram = 3;
    cfg.embed_per_ngram = 12;
    cfg.layer_ids = {2, 5};
    const std::int64_t v = 777;
    const auto layouts = engram::make_layouts(cfg, v, 5);
    for (const auto& l : layouts) {
        const std::size_t batch = 3, seq = 40;
        std::vector<std::int64_t> canonical(batch * seq);
        for (auto& x : canonical) x = static_cast<std::int64_t>(rng() % v);
        canonical[3] = canonical[4] = canonical[5] = canonical[6] = 9; // a repeated token run
        engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3, 4>> hasher(l);
        std::vector<std::int64_t> got(batch * seq * hasher.num_heads());
        hasher.hash(canonical, batch, seq, got);
        CHECK(got == brute_force_hash(l, canonical, batch, seq));
    }
}

TEST_CASE("pad before the sequence start and the per-position API", "[hash]") {
    engram::hash_config cfg;
    const auto l = engram::make_layout(cfg, 1, 1000, 7);
    engram::ngram_hasher<> hasher(l);
    const std::vector<std::int64_t> seq = {7, 7, 3, 7};
    std::vector<std::int64_t> batch_out(seq.size() * 16);
    hasher.hash(seq, 1, seq.size(), batch_out);

    // Position 0 with the pad id as token: every window is all-pad, as are positions 0 and 1
    // of a sequence that starts with two pads.
    std::vector<std::int64_t> a(16), b(16);
    auto w = hasher.empty_window();
    hasher.hash_window(w, a);
    CHECK(std::equal(a.begin(), a.end(), batch_out.begin()));
    CHECK(std::equal(a.begin(), a.end(), batch_out.begin() + 16));

    // The per-position API reproduces every batch position.
    for (std::size_t t = 0; t < seq.size(); ++t) {
        for (std::size_t k = w.size() - 1; k > 0; --k) w[k] = w[k - 1];
        w[0] = seq[t];
        hasher.hash_window(w, b);
        CHECK(std::equal(b.begin(), b.end(), batch_out.begin() + static_cast<std::ptrdiff_t>(t * 16)));
    }
    // A different pad changes position 0's bigram but not a position whose window is all real.
    const auto l2 = engram::make_layout(cfg, 1, 1000, 8);
    engram::ngram_hasher<> hasher2(l2);
    std::vector<std::int64_t> out2(seq.size() * 16);
    hasher2.hash(seq, 1, seq.size(), out2);
    CHECK_FALSE(std::equal(out2.begin(), out2.begin() + 16, batch_out.begin()));
    CHECK(std::equal(out2.begin() + 48, out2.end(), batch_out.begin() + 48));
}

TEST_CASE("hash errors: ids out of range, shapes, mismatched orders", "[hash]") {
    engram::hash_config cfg;
    const auto l = engram::make_layout(cfg, 1, 1000, 2);
    engram::ngram_hasher<> hasher(l);
    std::vector<std::int64_t> out(3 * 16, -1);
    const std::vector<std::int64_t> bad = {1, 1000, 2};
    try {
        hasher.hash(bad, 1, 3, out);
        FAIL("no error");
    } catch (const engram::input_error& e) {
        CHECK(std::string(e.what()).find("1000") != std::string::npos);
        CHECK(std::string(e.what()).find("position 1") != std::string::npos);
    }
    CHECK(out[0] == -1); // nothing written
    CHECK_THROWS_AS(hasher.hash(std::vector<std::int64_t>{1, -1, 2}, 1, 3, out), engram::input_error);
    CHECK_THROWS_AS(hasher.hash(std::vector<std::int64_t>{1, 2, 3}, 2, 3, out), engram::input_error);
    CHECK_THROWS_AS(hasher.hash(std::vector<std::int64_t>{1, 2, 3}, 1, 3, std::span(out).first(10)),
                    engram::input_error);

    auto vocab = engram::canonical_table::identity(1000);
    CHECK_THROWS_AS(hasher.hash_tokens(vocab, std::vector<std::int64_t>{5, 1000, 1}, 1, 3, out), engram::input_error);
    CHECK_THROWS_AS(
        hasher.hash_tokens(engram::canonical_table::identity(999), std::vector<std::int64_t>{5, 6, 1}, 1, 3, out),
        engram::config_error);

    using three = engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3, 4>>;
    CHECK_THROWS_AS(three(l), engram::config_error);

    // Hand-built layouts: a head without a table, offsets that do not tile the rows, a wrong total.
    auto expect_bad_layout = [](engram::layer_layout bad, const char* fragment) {
        try {
            engram::ngram_hasher<> h(std::move(bad));
            FAIL("no error for a layout with " << fragment);
        } catch (const engram::config_error& e) {
            CHECK_THAT(e.what(), Catch::Matchers::Contains(fragment));
        }
    };
    auto zero_prime = l;
    zero_prime.primes[3] = 0;
    expect_bad_layout(zero_prime, "primes[3] = 0");
    auto gap = l;
    gap.offsets[5] += 1;
    expect_bad_layout(gap, "offsets[5]");
    auto total = l;
    total.total_rows -= 1;
    expect_bad_layout(total, "total_rows");
}

TEST_CASE("xxh3 family: ids in range, deterministic, seed dependent", "[hash][xxh3]") {
    engram::hash_config cfg;
    cfg.max_ngram = 4;
    cfg.table_size_per_ngram = {500, 700, 900};
    cfg.heads_per_ngram = 4;
    cfg.embed_per_ngram = 16;
    const auto l = engram::make_layout(cfg, 1, 5000, 0);
    engram::ngram_hasher<engram::xxh3_family, engram::orders<2, 3, 4>> hasher(l);
    std::mt19937_64 rng(7);
    std::vector<std::int64_t> ids(2 * 300);
    for (auto& x : ids) x = static_cast<std::int64_t>(rng() % 5000);
    std::vector<std::int64_t> out(ids.size() * 12), again(ids.size() * 12);
    hasher.hash(ids, 2, 300, out);
    hasher.hash(ids, 2, 300, again);
    CHECK(out == again);
    std::vector<std::set<std::int64_t>> used(12);
    for (std::size_t i = 0; i < out.size(); ++i) {
        const auto h = i % 12;
        REQUIRE(out[i] >= 0);
        REQUIRE(out[i] < l.primes[h]);
        used[h].insert(out[i]);
    }
    // 600 windows into ~500-900 slots: a working hash spreads them over many rows.
    for (const auto& u : used) CHECK(u.size() > 250);
    // Heads of one order disagree (independent seeds).
    CHECK(out[0] != out[1]);

    auto cfg2 = cfg;
    cfg2.seed = 1;
    engram::ngram_hasher<engram::xxh3_family, engram::orders<2, 3, 4>> other(engram::make_layout(cfg2, 1, 5000, 0));
    std::vector<std::int64_t> out2(out.size());
    other.hash(ids, 2, 300, out2);
    CHECK(out2 != out);
}
