// NumPy-compatible seeding against vectors produced by NumPy itself (tests/data/numpy_pcg64_vectors.json).
#include "support/catch.hpp"

#include <engram/random/numpy.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace {

using engram::numpy::uint128;

uint128 parse_u128(const std::string& s) {
    uint128 v = 0;
    for (char c : s) v = v * 10 + static_cast<unsigned>(c - '0');
    return v;
}

std::uint64_t as_u64(const nlohmann::json& j) {
    return j.is_string() ? std::stoull(j.get<std::string>()) : j.get<std::uint64_t>();
}

nlohmann::json load_vectors() {
    std::ifstream in(std::string(ENGRAM_TEST_DATA_DIR) + "/numpy_pcg64_vectors.json");
    REQUIRE(in.good());
    return nlohmann::json::parse(in);
}

} // namespace

TEST_CASE("SeedSequence, PCG64 and integers reproduce NumPy for every seed", "[numpy]") {
    const auto vectors = load_vectors();
    REQUIRE(vectors.size() >= 7);
    for (const auto& v : vectors) {
        const std::string seed_text = v.at("seed").get<std::string>();
        const uint128 seed = parse_u128(seed_text);
        INFO("seed " << seed_text);

        const auto state = engram::numpy::seed_sequence_state(seed, 4);
        for (std::size_t i = 0; i < 4; ++i) CHECK(state[i] == as_u64(v.at("generate_state_u64")[i]));

        engram::numpy::pcg64 raw(seed);
        for (const auto& expected : v.at("random_raw")) CHECK(raw.next64() == as_u64(expected));

        // 64-bit Lemire path (high - 1 > 2^32 - 1).
        const auto big = engram::numpy::integers(seed, 46765234567890, 4);
        for (std::size_t i = 0; i < 4; ++i) CHECK(big[i] == v.at("integers_0_46765234567890")[i].get<std::int64_t>());

        // Buffered 32-bit Lemire path.
        const auto small = engram::numpy::integers(seed, 7, 4);
        for (std::size_t i = 0; i < 4; ++i) CHECK(small[i] == v.at("integers_0_7")[i].get<std::int64_t>());

        // One generator: three 32-bit draws (leaving a buffered half), then two 64-bit ones.
        engram::numpy::pcg64 gen(seed);
        const auto& mixed = v.at("then_integers_0_1000_x3_then_0_2pow62_x2");
        for (std::size_t i = 0; i < 3; ++i) CHECK(engram::numpy::integers(gen, 1000) == mixed[i].get<std::int64_t>());
        for (std::size_t i = 3; i < 5; ++i)
            CHECK(engram::numpy::integers(gen, std::int64_t{1} << 62) == mixed[i].get<std::int64_t>());
    }
}

TEST_CASE("integers edge cases", "[numpy]") {
    engram::numpy::pcg64 gen(0);
    engram::numpy::pcg64 untouched(0);
    // high == 1: the range has one value; NumPy returns 0 without drawing.
    CHECK(engram::numpy::integers(gen, 1) == 0);
    CHECK(gen.next64() == untouched.next64());
    CHECK_THROWS_AS(engram::numpy::integers(gen, 0), engram::config_error);
    CHECK_THROWS_AS(engram::numpy::integers(gen, -5), engram::config_error);
    // Every draw stays below high, for ranges on both sides of the 32-bit boundary.
    for (std::int64_t high :
         {std::int64_t{2}, std::int64_t{1} << 32, (std::int64_t{1} << 32) + 1, std::int64_t{0x7FFFFFFFFFFFFFFF}}) {
        for (int i = 0; i < 1000; ++i) {
            const auto x = engram::numpy::integers(gen, high);
            REQUIRE(x >= 0);
            REQUIRE(x < high);
        }
    }
}

TEST_CASE("seed entropy is split into little-endian 32-bit words", "[numpy]") {
    const std::uint32_t words[] = {5u, 1u}; // 2^32 + 5
    CHECK(engram::numpy::seed_sequence_state(words, 4) ==
          engram::numpy::seed_sequence_state((uint128{1} << 32) + 5, 4));
    const std::uint32_t zero[] = {0u};
    CHECK(engram::numpy::seed_sequence_state(zero, 2) == engram::numpy::seed_sequence_state(uint128{0}, 2));
}
