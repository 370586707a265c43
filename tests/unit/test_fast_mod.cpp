// fast_mod (Barrett reduction) against the % operator on edge values and random values.
#include "support/catch.hpp"

#include <engram/hash/fast_mod.hpp>
#include <engram/hash/layout.hpp>

#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

std::int64_t reference_floor_mod(std::int64_t x, std::int64_t p) {
    const std::int64_t r = x % p;
    return r < 0 ? r + p : r;
}

} // namespace

TEST_CASE("fast_mod equals % on edge and random values", "[hash][fast_mod]") {
    std::vector<std::uint64_t> divisors = {1,
                                           2,
                                           3,
                                           5,
                                           7,
                                           11,
                                           646403,
                                           646879,
                                           1000003,
                                           4294967291ull,
                                           4294967311ull,
                                           (1ull << 40) + 15,
                                           (1ull << 50) - 27,
                                           (1ull << 62) + 135,
                                           9223372036854775783ull,
                                           18446744073709551557ull};
    // The primes of the reference default layout too.
    for (auto p : engram::make_layout(engram::hash_config{}, 1, 98627, 2).primes)
        divisors.push_back(static_cast<std::uint64_t>(p));
    std::mt19937_64 rng(1);
    constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    for (const std::uint64_t p : divisors) {
        const engram::fast_mod fm(p);
        CAPTURE(p);
        std::vector<std::uint64_t> xs = {0,     1,   p - 1,   p,       p + 1,      2 * p - 1,
                                         2 * p, max, max - 1, max - p, 1ull << 63, (1ull << 63) - 1};
        for (std::uint64_t k : {std::uint64_t{3}, std::uint64_t{1000}, max / p, max / p - 1})
            for (std::int64_t d : {-1, 0, 1}) xs.push_back(k * p + static_cast<std::uint64_t>(d));
        for (int i = 0; i < 20000; ++i) xs.push_back(rng() >> (rng() % 64));
        for (const std::uint64_t x : xs) {
            CAPTURE(x);
            REQUIRE(fm(x) == x % p);
        }
        if (p <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            const auto sp = static_cast<std::int64_t>(p);
            for (std::int64_t x : {std::int64_t{-1}, -sp, -sp - 1, -sp + 1, std::numeric_limits<std::int64_t>::min(),
                                   std::numeric_limits<std::int64_t>::min() + 1,
                                   std::numeric_limits<std::int64_t>::max(), std::int64_t{0}}) {
                CAPTURE(x);
                REQUIRE(fm.floor_mod(x) == reference_floor_mod(x, sp));
            }
            for (int i = 0; i < 20000; ++i) {
                const auto x = static_cast<std::int64_t>(rng());
                REQUIRE(fm.floor_mod(x) == reference_floor_mod(x, sp));
            }
        }
    }
}
