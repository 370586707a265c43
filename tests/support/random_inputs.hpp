#pragma once
// Seeded random inputs for the layer tests: hidden states and token ids.
#include <engram/types.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace engram_test {

/// n values drawn from N(0, 1), reproducible from `seed`.
inline std::vector<float> normal_values(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = normal(rng);
    return v;
}

/// n token ids uniform in [0, max_id], reproducible from `seed`.
inline std::vector<engram::token_id> token_ids(std::size_t n, std::uint64_t seed, engram::token_id max_id = 499) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<engram::token_id> pick(0, max_id);
    std::vector<engram::token_id> v(n);
    for (auto& t : v) t = pick(rng);
    return v;
}

} // namespace engram_test
