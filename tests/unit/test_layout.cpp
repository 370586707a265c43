// Primality, distinct-prime table layout, offsets and reference multipliers (spec sections 2-3).
#include "support/catch.hpp"

#include <engram/hash/layout.hpp>
#include <engram/hash/primes.hpp>

#include <cstdint>
#include <numeric>
#include <set>

namespace {

bool trial_division(std::uint64_t n) {
    if (n < 2) return false;
    for (std::uint64_t d = 2; d * d <= n; ++d)
        if (n % d == 0) return false;
    return true;
}

} // namespace

TEST_CASE("is_prime agrees with trial division and known 64-bit values", "[primes]") {
    for (std::uint64_t n = 0; n < 200000; ++n) REQUIRE(engram::is_prime(n) == trial_division(n));
    // Strong pseudoprimes to several bases and large known primes / composites.
    CHECK_FALSE(engram::is_prime(3215031751ull));
    CHECK_FALSE(engram::is_prime(3825123056546413051ull));
    CHECK(engram::is_prime(18446744073709551557ull)); // largest 64-bit prime
    CHECK_FALSE(engram::is_prime(18446744073709551615ull));
    CHECK(engram::is_prime(9223372036854775783ull)); // largest prime below 2^63
    CHECK_FALSE(engram::is_prime(4294967297ull));    // 641 x 6700417
    CHECK(engram::is_prime(4294967291ull));
    CHECK_FALSE(engram::is_prime(1000000016000000063ull)); // 1000000007 x 1000000009
}

TEST_CASE("reference layout: distinct primes in order, offsets, multipliers", "[layout]") {
    engram::hash_config cfg; // reference defaults: 2 orders x 8 heads, layers 1 and 15
    const auto layouts = engram::make_layouts(cfg, 27370, 2);
    REQUIRE(layouts.size() == 2);
    std::set<std::int64_t> all;
    for (const auto& l : layouts) {
        REQUIRE(l.num_heads() == 16);
        REQUIRE(l.multipliers.size() == 3);
        for (auto m : l.multipliers) {
            CHECK(m % 2 == 1);
            CHECK(m > 0);
            CHECK(m <= INT64_MAX / 27370);
        }
        std::int64_t offset = 0;
        for (std::size_t h = 0; h < l.num_heads(); ++h) {
            const auto p = l.primes[h];
            CHECK(trial_division(static_cast<std::uint64_t>(p)));
            CHECK(all.insert(p).second); // distinct across layers, orders and heads
            CHECK(l.offsets[h] == offset);
            offset += p;
            // Each head's prime is the smallest untaken prime above its search start.
            const std::int64_t start = (h % 8 == 0) ? cfg.table_size_per_ngram[h / 8] - 1 : l.primes[h - 1];
            for (std::int64_t q = start + 1; q < p; ++q)
                if (trial_division(static_cast<std::uint64_t>(q))) CHECK(all.count(q) == 1);
        }
        CHECK(l.total_rows == offset);
    }
    // Spec section 9: the demo's first layer has 10,344,164 rows.
    CHECK(layouts[0].primes.front() == 646403);
    CHECK(layouts[0].total_rows == 10344164);
}

TEST_CASE("one layer's primes depend on the layers listed before it", "[layout]") {
    engram::hash_config a;
    a.layer_ids = {15};
    engram::hash_config b; // [1, 15]
    const auto only15 = engram::make_layout(a, 15, 27370, 2);
    const auto after1 = engram::make_layout(b, 15, 27370, 2);
    CHECK(only15.primes != after1.primes);
    CHECK(only15.multipliers == after1.multipliers); // multipliers depend on the layer id only
    CHECK_THROWS_AS(engram::make_layout(b, 7, 27370, 2), engram::config_error);
}

TEST_CASE("bad configurations are rejected with the field named", "[layout]") {
    auto expect = [](engram::hash_config c, const char* fragment) {
        try {
            c.validate();
            FAIL("no error for " << fragment);
        } catch (const engram::config_error& e) {
            INFO(e.what());
            CHECK(std::string(e.what()).find(fragment) != std::string::npos);
        }
    };
    engram::hash_config c;
    c.max_ngram = 1;
    expect(c, "max_ngram");
    c = {};
    c.heads_per_ngram = 0;
    expect(c, "heads_per_ngram");
    c = {};
    c.embed_per_ngram = 500; // not divisible by 8
    expect(c, "divisible");
    c = {};
    c.table_size_per_ngram = {646400};
    expect(c, "table_size_per_ngram");
    c = {};
    c.table_size_per_ngram = {646400, 0};
    expect(c, "table_size_per_ngram[1]");
    c = {};
    c.layer_ids = {};
    expect(c, "layer_ids");
    c = {};
    c.layer_ids = {1, 1};
    expect(c, "twice");
    c = {};
    c.seed = -1;
    expect(c, "seed");
    c = {};
    c.orders = {2, 4};
    expect(c, "max_ngram");
    CHECK_THROWS_AS(engram::make_layouts(engram::hash_config{}, 0, 0), engram::config_error);
    CHECK_THROWS_AS(engram::make_layouts(engram::hash_config{}, 100, 100), engram::config_error);
}

TEST_CASE("explicit multipliers are validated against V'", "[layout]") {
    auto l = engram::make_layout(engram::hash_config{}, 1, 27370, 2);
    const std::int64_t limit = INT64_MAX / 27370;
    engram::set_multipliers(l, {1, 3, limit});
    CHECK(l.multipliers == std::vector<std::int64_t>{1, 3, limit});
    CHECK_THROWS_AS(engram::set_multipliers(l, {1, 3, limit + 1}), engram::config_error);
    CHECK_THROWS_AS(engram::set_multipliers(l, {1, 0, 3}), engram::config_error);
    CHECK_THROWS_AS(engram::set_multipliers(l, {1, 3}), engram::config_error);
}

TEST_CASE("custom order lists", "[layout]") {
    engram::hash_config c;
    c.max_ngram = 4;
    c.orders = {2, 4};
    c.table_size_per_ngram = {1000, 3000};
    c.heads_per_ngram = 2;
    c.embed_per_ngram = 8;
    const auto l = engram::make_layout(c, 1, 500, 0);
    CHECK(l.orders == std::vector<int>{2, 4});
    CHECK(l.multipliers.size() == 4);
    CHECK(l.primes == std::vector<std::int64_t>{1009, 1013, 3001, 3011});
}
