// The SIMD (AVX-512 IFMA) modulo of the reference hash against the scalar Barrett path and a
// plain `%` model: primes at both ends of its range, maximal mixes, every K from 1 to 17 (masked
// lanes), empty and one-token batches, dead tokens, the per-position API and the golden file.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>

#include <algorithm>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr std::int64_t simd_prime_limit = std::int64_t{1} << 21;

/// Sets the SIMD switch for one scope and restores it afterwards.
struct simd_guard {
    bool before = engram::simd_enabled();
    explicit simd_guard(bool on) { engram::set_simd_enabled(on); }
    simd_guard(const simd_guard&) = delete;
    simd_guard& operator=(const simd_guard&) = delete;
    ~simd_guard() { engram::set_simd_enabled(before); }
};

/// Warns once per test case when the kernel cannot run here (only the scalar path is then tested).
bool have_simd() {
    if (!engram::simd_supported()) WARN("this CPU has no AVX-512 IFMA: only the scalar path is tested");
    return engram::simd_supported();
}

/// The reference, longhand: windows with pad before the start (and before and at dead tokens),
/// wrapping multiply-XOR, floor modulo with `%`, plus offsets if asked.
std::vector<std::int64_t> model(const engram::layer_layout& l, const std::vector<std::int64_t>& canonical,
                                const std::vector<std::int64_t>& raw, std::optional<std::int64_t> dead,
                                std::size_t batch, std::size_t seq, bool offsets) {
    std::vector<std::int64_t> out;
    const auto k_heads = static_cast<std::size_t>(l.heads_per_order);
    for (std::size_t b = 0; b < batch; ++b) {
        std::size_t start = 0; // first position after the latest dead token
        for (std::size_t t = 0; t < seq; ++t) {
            const bool is_dead = dead && raw[b * seq + t] == *dead;
            if (is_dead) start = t + 1;
            for (std::size_t oi = 0; oi < l.orders.size(); ++oi) {
                std::uint64_t mix = 0;
                for (int k = 0; k < l.orders[oi]; ++k) {
                    const auto back = static_cast<std::size_t>(k);
                    const std::int64_t x =
                        !is_dead && t >= back && t - back >= start ? canonical[b * seq + t - back] : l.pad;
                    mix ^= static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(l.multipliers[back]);
                }
                const auto m = static_cast<std::int64_t>(mix);
                for (std::size_t j = 0; j < k_heads; ++j) {
                    const std::int64_t p = l.primes[oi * k_heads + j];
                    out.push_back(((m % p) + p) % p + (offsets ? l.offsets[oi * k_heads + j] : 0));
                }
            }
        }
    }
    return out;
}

/// Primes below `limit`, the largest first.
std::vector<std::int64_t> primes_below(std::int64_t limit, std::size_t n) {
    std::vector<std::int64_t> out;
    for (std::int64_t c = limit - 1; c >= 2 && out.size() < n; --c)
        if (engram::is_prime(static_cast<std::uint64_t>(c))) out.push_back(c);
    return out;
}

/// A hand-built layout: primes drawn from the smallest, the largest below 2^21 and random ones;
/// multipliers odd and as large as `m x V' < 2^63` allows (maximal mixes).
engram::layer_layout random_layout(std::mt19937_64& rng, std::vector<int> orders, int k, std::int64_t v) {
    static const std::vector<std::int64_t> small{2, 3, 5, 7, 11, 13};
    static const std::vector<std::int64_t> large = primes_below(simd_prime_limit, 24);
    engram::layer_layout l;
    l.orders = std::move(orders);
    l.heads_per_order = k;
    l.head_dim = 4;
    l.vocab_size = v;
    l.pad = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(v));
    const std::int64_t limit = std::numeric_limits<std::int64_t>::max() / v;
    for (int i = 0; i < l.orders.back(); ++i) {
        const std::int64_t m = limit - static_cast<std::int64_t>(rng() % 64);
        l.multipliers.push_back(m % 2 == 0 ? m - 1 : m);
    }
    for (std::size_t h = 0; h < l.orders.size() * static_cast<std::size_t>(k); ++h) {
        std::int64_t p = 0;
        switch (rng() % 3) {
        case 0:
            p = small[rng() % small.size()];
            break;
        case 1:
            p = large[rng() % large.size()];
            break;
        default:
            do p = 2 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(simd_prime_limit - 2));
            while (!engram::is_prime(static_cast<std::uint64_t>(p)));
        }
        l.offsets.push_back(l.total_rows);
        l.primes.push_back(p);
        l.total_rows += p;
    }
    return l;
}

/// Raw ids in [0, v): mostly near the top (large products), some low, some equal to `dead`.
std::vector<std::int64_t> random_ids(std::mt19937_64& rng, std::size_t n, std::int64_t v) {
    std::vector<std::int64_t> ids(n);
    for (auto& x : ids) {
        const auto r = rng() % 4;
        x = r == 0
                ? static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(v))
                : v - 1 - static_cast<std::int64_t>(rng() % std::min<std::uint64_t>(8, static_cast<std::uint64_t>(v)));
    }
    return ids;
}

/// Every batch API of `hasher` on one input, with the switch `on`, against the model.
template <class Orders>
void check_all_apis(const engram::layer_layout& l, const std::vector<std::int64_t>& raw, std::size_t batch,
                    std::size_t seq, bool on) {
    const simd_guard guard(on);
    const engram::ngram_hasher<engram::multiply_xor_family, Orders> hasher(l);
    const bool expect_simd =
        on && engram::simd_supported() &&
        std::all_of(l.primes.begin(), l.primes.end(), [](auto p) { return p >= 2 && p < simd_prime_limit; });
    REQUIRE(hasher.uses_simd() == expect_simd);
    const std::size_t heads = hasher.num_heads();

    // Identity canonical table (V = V'), so raw ids are canonical ids too.
    std::vector<std::int64_t> lookup(static_cast<std::size_t>(l.vocab_size));
    for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<std::int64_t>(i);
    const auto vocab = engram::canonical_table::from_lookup(lookup);
    const std::int64_t dead = raw.empty() ? 0 : raw[raw.size() / 2];

    std::vector<std::int64_t> got(raw.size() * heads, -1);
    hasher.hash(raw, batch, seq, got);
    CHECK(got == model(l, raw, raw, std::nullopt, batch, seq, false));
    hasher.rows(raw, batch, seq, got);
    CHECK(got == model(l, raw, raw, std::nullopt, batch, seq, true));
    hasher.rows_tokens(vocab, raw, batch, seq, got);
    CHECK(got == model(l, raw, raw, std::nullopt, batch, seq, true));
    hasher.rows_tokens(vocab, raw, batch, seq, got, dead);
    CHECK(got == model(l, raw, raw, dead, batch, seq, true));
    hasher.hash_tokens(vocab, raw, batch, seq, got, dead);
    CHECK(got == model(l, raw, raw, dead, batch, seq, false));

    // The per-position API, window by window along the first sequence.
    if (batch > 0 && seq > 0) {
        const auto expected_rows = model(l, raw, raw, std::nullopt, 1, seq, true);
        const auto expected_hash = model(l, raw, raw, std::nullopt, 1, seq, false);
        auto window = hasher.empty_window();
        std::vector<std::int64_t> one(heads);
        for (std::size_t t = 0; t < seq; ++t) {
            for (std::size_t k = window.size() - 1; k > 0; --k) window[k] = window[k - 1];
            window[0] = raw[t];
            hasher.hash_window(window, one);
            REQUIRE(std::equal(one.begin(), one.end(), expected_hash.begin() + static_cast<std::ptrdiff_t>(t * heads)));
            hasher.rows_window(window, one);
            REQUIRE(std::equal(one.begin(), one.end(), expected_rows.begin() + static_cast<std::ptrdiff_t>(t * heads)));
        }
    }
}

template <class Orders>
void check_random_layouts(std::mt19937_64& rng, std::vector<int> orders, int k) {
    const std::int64_t v = 1 + static_cast<std::int64_t>(rng() % 200000);
    const auto l = random_layout(rng, orders, k, v);
    for (const auto& [batch, seq] :
         std::vector<std::pair<std::size_t, std::size_t>>{{0, 5}, {3, 0}, {1, 1}, {3, 1}, {2, 7}, {4, 37}}) {
        INFO("K = " << k << ", V' = " << v << ", B = " << batch << ", T = " << seq);
        const auto raw = random_ids(rng, batch * seq, v);
        check_all_apis<Orders>(l, raw, batch, seq, true);
        check_all_apis<Orders>(l, raw, batch, seq, false);
    }
}

} // namespace

TEST_CASE("simd: the switch", "[hash][simd]") {
    const simd_guard guard(true);
    CHECK(engram::set_simd_enabled(false) == false);
    CHECK_FALSE(engram::simd_enabled());
    CHECK(engram::set_simd_enabled(true) == engram::simd_supported());
    CHECK(engram::simd_enabled() == engram::simd_supported());
}

TEST_CASE("simd: random layouts, K = 1..17, against scalar and %", "[hash][simd]") {
    have_simd();
    std::mt19937_64 rng(2024);
    for (int k = 1; k <= 17; ++k) {
        check_random_layouts<engram::orders<2, 3>>(rng, {2, 3}, k);
        check_random_layouts<engram::orders<2, 3, 4>>(rng, {2, 3, 4}, k);
    }
    for (int k : {1, 8, 9, 16, 24, 25}) check_random_layouts<engram::orders<3, 5>>(rng, {3, 5}, k);
}

TEST_CASE("simd: extreme mixes and moduli", "[hash][simd]") {
    have_simd();
    std::mt19937_64 rng(7);
    // V' = 1: the largest multipliers allowed (2^63 - 1 rounded to odd); ids are all 0.
    // V' = 2: mixes up to ~2^62 with ids 0/1.
    for (std::int64_t v : {std::int64_t{1}, std::int64_t{2}, std::int64_t{98627}, std::int64_t{1} << 20}) {
        auto l = random_layout(rng, {2, 3}, 8, v);
        // Heads: the two smallest primes and the largest ones below 2^21.
        const auto top = primes_below(simd_prime_limit, 14);
        for (std::size_t h = 0; h < 16; ++h) l.primes[h] = h < 2 ? std::int64_t(h + 2) : top[h - 2];
        l.total_rows = 0;
        for (std::size_t h = 0; h < 16; ++h) l.offsets[h] = l.total_rows, l.total_rows += l.primes[h];
        const auto raw = random_ids(rng, 2 * 50, v);
        INFO("V' = " << v);
        check_all_apis<engram::orders<2, 3>>(l, raw, 2, 50, true);
    }
}

TEST_CASE("simd: raw ids through a many-to-one canonical table, long sequences", "[hash][simd]") {
    have_simd();
    // V = 3000 raw ids onto V' = 1000 canonical ids; T = 601 crosses the kernel's 256-token
    // blocks and leaves a tail shorter than 8.
    std::mt19937_64 rng(99);
    const std::int64_t v_raw = 3000, v = 1000;
    std::vector<std::int64_t> lookup(static_cast<std::size_t>(v_raw));
    for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<std::int64_t>((i * 7 + 3) % 1000);
    const auto vocab = engram::canonical_table::from_lookup(lookup);
    const auto l = random_layout(rng, {2, 3}, 8, v);
    const std::size_t batch = 3, seq = 601;
    std::vector<std::int64_t> raw(batch * seq), canonical(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        raw[i] = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(v_raw));
        if (rng() % 50 == 0) raw[i] = 1234; // the dead token
        if (rng() % 50 == 0) raw[i] = 2234; // same canonical id as 1234, not dead
        canonical[i] = lookup[static_cast<std::size_t>(raw[i])];
    }
    REQUIRE(lookup[1234] == lookup[2234]);
    for (bool on : {true, false}) {
        INFO("simd " << on);
        const simd_guard guard(on);
        const engram::ngram_hasher<> hasher(l);
        std::vector<std::int64_t> got(raw.size() * 16);
        hasher.rows_tokens(vocab, raw, batch, seq, got);
        CHECK(got == model(l, canonical, raw, std::nullopt, batch, seq, true));
        hasher.hash_tokens(vocab, raw, batch, seq, got, std::int64_t{1234});
        CHECK(got == model(l, canonical, raw, std::int64_t{1234}, batch, seq, false));
        hasher.rows_tokens(vocab, raw, batch, seq, got, std::int64_t{1234});
        CHECK(got == model(l, canonical, raw, std::int64_t{1234}, batch, seq, true));

        // A bad raw id: the same error as the scalar map, naming its position, nothing written.
        for (std::int64_t bad : {v_raw, std::int64_t{-1}}) {
            auto raw_bad = raw;
            raw_bad[1000] = bad;
            std::vector<std::int64_t> untouched(got.size(), -7);
            std::string message;
            try {
                hasher.rows_tokens(vocab, raw_bad, batch, seq, untouched, std::int64_t{1234});
            } catch (const engram::input_error& e) {
                message = e.what();
            }
            CHECK(message.find("token id " + std::to_string(bad) + " at position 1000") != std::string::npos);
            CHECK(std::all_of(untouched.begin(), untouched.end(), [](std::int64_t x) { return x == -7; }));
        }
    }
}

TEST_CASE("simd: mixes with the top bit set take the scalar path inside the kernel", "[hash][simd]") {
    have_simd();
    // Unvalidated multipliers (m x V' >= 2^63): products wrap and mixes can be negative, which
    // the floor modulo must still get right.
    std::mt19937_64 rng(11);
    auto l = random_layout(rng, {2, 3}, 9, 1000);
    l.multipliers = {(std::int64_t{1} << 62) + 1, std::numeric_limits<std::int64_t>::max(), 0x5bd1e9955bd1e995};
    const auto raw = random_ids(rng, 3 * 40, 1000);
    std::size_t negative = 0;
    for (std::size_t i = 0; i + 1 < raw.size(); ++i)
        negative +=
            static_cast<std::int64_t>((static_cast<std::uint64_t>(raw[i + 1]) * ((std::uint64_t{1} << 62) | 1)) ^
                                      (static_cast<std::uint64_t>(raw[i]) * 0x7fffffffffffffffull)) < 0;
    REQUIRE(negative > 10); // the input really exercises negative mixes
    check_all_apis<engram::orders<2, 3>>(l, raw, 3, 40, true);
}

TEST_CASE("simd: layouts outside the kernel's range stay exact (scalar)", "[hash][simd]") {
    std::mt19937_64 rng(5);
    auto l = random_layout(rng, {2, 3}, 8, 5000);
    l.primes[5] = 2097169; // the first prime above 2^21
    l.total_rows = 0;      // the heads after it move
    for (std::size_t h = 0; h < l.primes.size(); ++h) l.offsets[h] = l.total_rows, l.total_rows += l.primes[h];
    const auto raw = random_ids(rng, 2 * 30, 5000);
    check_all_apis<engram::orders<2, 3>>(l, raw, 2, 30, true);
}

TEST_CASE("simd: the golden reference file through both paths", "[hash][simd][golden]") {
    have_simd();
    const auto file =
        engram::safetensors_file::open(std::string(ENGRAM_TEST_DATA_DIR) + "/hash_reference_default.safetensors");
    const auto cfg = engram::hash_config_from_json(engram::parse_config_text(*file.find_metadata("config")));
    const auto vocab = engram::canonical_table::from_lookup(file.at("lookup").to_vector<std::int64_t>());
    const auto pad = vocab.canonical_pad_id(cfg.pad_id);
    const auto& ids = file.at("input_ids");
    const auto raw = ids.to_vector<std::int64_t>();
    const auto batch = static_cast<std::size_t>(ids.shape[0]);
    const auto seq = static_cast<std::size_t>(ids.shape[1]);
    for (const auto& l : engram::make_layouts(cfg, vocab.canonical_size(), pad)) {
        const auto expected = file.at("hash_ids.layer" + std::to_string(l.layer_id)).to_vector<std::int64_t>();
        for (bool on : {true, false}) {
            INFO("layer " << l.layer_id << ", simd " << on);
            const simd_guard guard(on);
            const engram::ngram_hasher<> hasher(l);
            REQUIRE(hasher.uses_simd() == (on && engram::simd_supported()));
            std::vector<std::int64_t> got(expected.size());
            hasher.hash_tokens(vocab, raw, batch, seq, got);
            CHECK(got == expected);
            hasher.rows_tokens(vocab, raw, batch, seq, got);
            for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == expected[i] + l.offsets[i % 16]);
        }
    }
}
