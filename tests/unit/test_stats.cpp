// SPDX-License-Identifier: MIT
// engram::collect_layer_stats: hand-counted collisions and hot sets, and a brute-force check of
// every figure on random batches with dead tokens.

#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/stats.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using engram::token_id;

/// A hash that only looks at the current token: row = id mod p. Collisions are easy to count.
class last_token_family {
public:
    using mix_type = std::int64_t;
    explicit last_token_family(const engram::layer_layout& layout) : primes_(layout.primes) {}
    template <int N>
    mix_type mix(const token_id* window) const noexcept {
        return window[0];
    }
    std::int64_t reduce(mix_type mix, std::size_t head) const noexcept { return mix % primes_[head]; }

private:
    std::vector<std::int64_t> primes_;
};

static_assert(engram::hash_family<last_token_family>);

engram::hash_config tiny_config(std::vector<std::int64_t> sizes, int heads, std::vector<std::int64_t> layers) {
    engram::hash_config cfg;
    cfg.table_size_per_ngram = std::move(sizes);
    cfg.max_ngram = 3;
    cfg.heads_per_ngram = heads;
    cfg.embed_per_ngram = 2 * heads;
    cfg.layer_ids = std::move(layers);
    cfg.pad_id = 0;
    cfg.seed = 5;
    return cfg;
}

/// Every figure of `collect_layer_stats`, counted the slow way from the hasher's batch row ids.
void check_against_brute_force(const engram::layer_layout& layout, const engram::canonical_table& vocab,
                               const std::vector<token_id>& raw, std::size_t batch, std::size_t seq,
                               std::optional<token_id> dead) {
    using hasher_t = engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>>;
    const hasher_t hasher(layout);
    const std::size_t heads = layout.num_heads();
    std::vector<engram::row_id> rows(raw.size() * heads);
    hasher.rows_tokens(vocab, raw, batch, seq, rows, dead);

    const auto got = engram::collect_layer_stats(hasher, vocab, raw, batch, seq, dead);
    REQUIRE(got.heads.size() == heads);
    CHECK(got.tokens == raw.size());
    CHECK(got.lookups() == raw.size() * heads);
    CHECK(got.total_rows == layout.total_rows);
    CHECK(got.head_dim == layout.head_dim);

    std::map<engram::row_id, std::uint64_t> hits; // all heads
    for (std::size_t h = 0; h < heads; ++h) {
        const int n = layout.orders[h / static_cast<std::size_t>(layout.heads_per_order)];
        std::map<std::vector<token_id>, std::set<engram::row_id>> ngram_rows;
        for (std::size_t b = 0; b < batch; ++b) {
            std::ptrdiff_t last_dead = -1;
            for (std::size_t t = 0; t < seq; ++t) {
                const std::size_t i = b * seq + t;
                if (dead && raw[i] == *dead) last_dead = static_cast<std::ptrdiff_t>(t);
                std::vector<token_id> window;
                for (int k = 0; k < n; ++k) {
                    const std::ptrdiff_t pos = static_cast<std::ptrdiff_t>(t) - k;
                    window.push_back(pos < 0 || pos <= last_dead ? layout.pad
                                                                 : vocab(raw[b * seq + static_cast<std::size_t>(pos)]));
                }
                const engram::row_id row = rows[i * heads + h];
                ngram_rows[window].insert(row);
                ++hits[row];
            }
        }
        std::map<engram::row_id, std::uint64_t> ngrams_per_row;
        for (const auto& [window, r] : ngram_rows) {
            REQUIRE(r.size() == 1); // the row is a function of the n-gram
            ++ngrams_per_row[*r.begin()];
        }
        std::uint64_t colliding = 0;
        for (const auto& [row, count] : ngrams_per_row)
            if (count > 1) colliding += count;
        INFO("head " << h);
        CHECK(got.heads[h].order == n);
        CHECK(got.heads[h].table_size == layout.primes[h]);
        CHECK(got.heads[h].distinct_ngrams == ngram_rows.size());
        CHECK(got.heads[h].rows_touched == ngrams_per_row.size());
        CHECK(got.heads[h].colliding_ngrams == colliding);
    }
    std::vector<std::uint64_t> expected;
    for (const auto& [row, count] : hits) expected.push_back(count);
    std::sort(expected.begin(), expected.end(), std::greater<>());
    CHECK(got.row_hits == expected);
    CHECK(got.rows_touched() == hits.size());
    for (const auto& [num, den] : std::vector<std::pair<std::uint64_t, std::uint64_t>>{{9, 10}, {99, 100}, {1, 2}}) {
        std::uint64_t covered = 0, k = 0;
        while (covered * den < num * got.lookups()) covered += expected[k++];
        CHECK(got.rows_covering(num, den) == k);
    }
}

} // namespace

TEST_CASE("stats: collisions and hot set counted by hand", "[stats]") {
    // Primes: order 2 -> 5, order 3 -> 7 (5 is taken). Row = current id mod p.
    const auto cfg = tiny_config({5, 5}, 1, {0});
    const auto layout = engram::make_layout(cfg, 0, 10, 0);
    REQUIRE(layout.primes == std::vector<std::int64_t>{5, 7});
    const engram::ngram_hasher<last_token_family, engram::orders<2, 3>> hasher(layout);
    const auto vocab = engram::canonical_table::identity(10);
    const std::vector<token_id> ids = {1, 2, 1, 3, 6};
    const auto s = engram::collect_layer_stats(hasher, vocab, ids, 1, ids.size());

    // Bigrams (1,pad) (2,1) (1,2) (3,1) (6,3): rows 1 2 1 3 1 -> three share row 1.
    CHECK(s.heads[0].order == 2);
    CHECK(s.heads[0].table_size == 5);
    CHECK(s.heads[0].distinct_ngrams == 5);
    CHECK(s.heads[0].rows_touched == 3);
    CHECK(s.heads[0].colliding_ngrams == 3);
    CHECK(s.heads[0].occupancy() == 3.0 / 5);
    CHECK(s.heads[0].collision_rate() == 3.0 / 5);
    // Trigrams (1,p,p) (2,1,p) (1,2,1) (3,1,2) (6,3,1): rows 1 2 1 3 6 -> two share row 1.
    CHECK(s.heads[1].order == 3);
    CHECK(s.heads[1].table_size == 7);
    CHECK(s.heads[1].distinct_ngrams == 5);
    CHECK(s.heads[1].rows_touched == 4);
    CHECK(s.heads[1].colliding_ngrams == 2);
    CHECK(s.heads[1].occupancy() == 4.0 / 7);

    // Lookups per row: 3 1 1 (head 0) and 2 1 1 1 (head 1); 10 in all.
    CHECK(s.lookups() == 10);
    CHECK(s.row_hits == std::vector<std::uint64_t>{3, 2, 1, 1, 1, 1, 1});
    CHECK(s.rows_touched() == 7);
    CHECK(s.rows_covering(3, 10) == 1);
    CHECK(s.rows_covering(1, 2) == 2);
    CHECK(s.rows_covering(9, 10) == 6);
    CHECK(s.rows_covering(99, 100) == 7);
    CHECK(s.rows_covering(1, 1) == 7);

    SECTION("repeats add lookups, not n-grams") {
        std::vector<token_id> twice = ids;
        twice.insert(twice.end(), ids.begin(), ids.end());
        const auto s2 = engram::collect_layer_stats(hasher, vocab, twice, 2, ids.size());
        CHECK(s2.heads[0].distinct_ngrams == 5);
        CHECK(s2.heads[1].colliding_ngrams == 2);
        CHECK(s2.row_hits == std::vector<std::uint64_t>{6, 4, 2, 2, 2, 2, 2});
    }
}

TEST_CASE("stats: a stream of one repeated token has a known hot set", "[stats]") {
    // 100 x token 5: bigrams (5,pad) once and (5,5) 99 times; trigrams (5,pad,pad), (5,5,pad)
    // once each and (5,5,5) 98 times. 200 lookups: 90% (180) need the rows of (5,5) and (5,5,5)
    // (197 lookups); 99% (198) one more row.
    const auto cfg = tiny_config({1000, 1000}, 1, {0});
    const auto vocab = engram::canonical_table::identity(6);
    const auto layout = engram::make_layout(cfg, 0, vocab.canonical_size(), 0);
    const std::vector<token_id> ids(100, 5);
    const auto s = engram::collect_layer_stats(layout, vocab, ids, 1, ids.size());
    REQUIRE(s.heads[0].colliding_ngrams == 0);
    REQUIRE(s.heads[1].colliding_ngrams == 0);
    CHECK(s.heads[0].distinct_ngrams == 2);
    CHECK(s.heads[1].distinct_ngrams == 3);
    CHECK(s.row_hits == std::vector<std::uint64_t>{99, 98, 1, 1, 1});
    CHECK(s.rows_covering(9, 10) == 2);
    CHECK(s.rows_covering(99, 100) == 3);
    check_against_brute_force(layout, vocab, ids, 1, ids.size(), std::nullopt);
}

TEST_CASE("stats: every figure matches brute force on random batches", "[stats]") {
    // A folding canonical table (raw t -> t / 2) and tiny tables, so that collisions abound.
    std::vector<token_id> lookup;
    for (token_id t = 0; t < 40; ++t) lookup.push_back(t / 2);
    const auto vocab = engram::canonical_table::from_lookup(lookup);
    const auto cfg = tiny_config({7, 11}, 2, {3, 9});
    std::uint64_t state = 12345;
    auto next = [&](std::uint64_t bound) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<token_id>((state >> 33) % bound);
    };
    for (const std::int64_t layer : {3, 9}) {
        const auto layout = engram::make_layout(cfg, layer, vocab.canonical_size(), vocab.canonical_pad_id(0));
        for (const std::uint64_t alphabet : {3u, 12u, 40u}) {
            const std::size_t batch = 3, seq = 41;
            std::vector<token_id> raw(batch * seq);
            for (auto& id : raw) id = next(alphabet);
            INFO("layer " << layer << ", alphabet " << alphabet);
            check_against_brute_force(layout, vocab, raw, batch, seq, std::nullopt);
            check_against_brute_force(layout, vocab, raw, batch, seq, token_id{1});
        }
    }
}

TEST_CASE("stats: the reference-hash overload equals the hasher overload", "[stats]") {
    const auto cfg = tiny_config({50, 60}, 3, {1});
    const auto vocab = engram::canonical_table::identity(30);
    const auto layout = engram::make_layout(cfg, 1, 30, 0);
    std::vector<token_id> raw;
    for (token_id i = 0; i < 200; ++i) raw.push_back((i * i + 3 * i) % 30);
    const engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>> hasher(layout);
    const auto a = engram::collect_layer_stats(layout, vocab, raw, 4, 50, token_id{7});
    const auto b = engram::collect_layer_stats(hasher, vocab, raw, 4, 50, token_id{7});
    CHECK(a.row_hits == b.row_hits);
    REQUIRE(a.heads.size() == 6);
    for (std::size_t h = 0; h < 6; ++h) {
        CHECK(a.heads[h].rows_touched == b.heads[h].rows_touched);
        CHECK(a.heads[h].colliding_ngrams == b.heads[h].colliding_ngrams);
    }
}

TEST_CASE("stats: bad input", "[stats][errors]") {
    const auto cfg = tiny_config({50, 60}, 1, {1});
    const auto vocab = engram::canonical_table::identity(30);
    const auto layout = engram::make_layout(cfg, 1, 30, 0);
    const std::vector<token_id> raw = {1, 2, 3, 4, 5, 6};
    CHECK_THROWS_AS(engram::collect_layer_stats(layout, vocab, raw, 2, 4), engram::input_error);
    const std::vector<token_id> bad = {1, 2, 30};
    CHECK_THROWS_AS(engram::collect_layer_stats(layout, vocab, bad, 1, 3), engram::input_error);
    CHECK_THROWS_AS(engram::collect_layer_stats(layout, engram::canonical_table::identity(31), raw, 1, 6),
                    engram::config_error);
    CHECK_THROWS_AS(engram::collect_layer_stats(layout, vocab, raw, 1, 6, token_id{99}), engram::input_error);
    const auto s = engram::collect_layer_stats(layout, vocab, raw, 1, 6);
    CHECK_THROWS_AS(s.rows_covering(0, 10), engram::input_error);
    CHECK_THROWS_AS(s.rows_covering(11, 10), engram::input_error);
    const auto empty = engram::collect_layer_stats(layout, vocab, std::vector<token_id>{}, 0, 5);
    CHECK(empty.lookups() == 0);
    CHECK(empty.rows_covering(9, 10) == 0);
}
