// Shared inputs of the benchmarks: the reference default layer and a Zipfian token stream.
#pragma once

#include <engram/engram.hpp>

#include <cmath>
#include <random>
#include <vector>

namespace engram_bench {

/// V' of the DeepSeek-V3 tokenizer after compression (spec section 1).
constexpr engram::token_id canonical_vocab = 98627;

/// The reference demo configuration's first layer: 16 heads, 10,344,164 rows x 64.
inline const engram::layer_layout& default_layout() {
    static const engram::layer_layout layout = engram::make_layout(engram::hash_config{}, 1, canonical_vocab, 2);
    return layout;
}

/// `n` canonical ids drawn from Zipf(s) over the vocabulary (rank r has weight r^-s), a
/// stand-in for natural text.
inline std::vector<engram::token_id> zipf_tokens(std::size_t n, double s = 1.1, std::uint64_t seed = 1) {
    std::vector<double> cdf(static_cast<std::size_t>(canonical_vocab));
    double acc = 0;
    for (std::size_t r = 0; r < cdf.size(); ++r) cdf[r] = acc += std::pow(static_cast<double>(r + 1), -s);
    // A fixed random permutation so that frequent ids are spread over the id space.
    std::vector<engram::token_id> perm(cdf.size());
    for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<engram::token_id>(i);
    std::mt19937_64 rng(seed);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::uniform_real_distribution<double> u(0.0, acc);
    std::vector<engram::token_id> out(n);
    for (auto& t : out) {
        const auto r = static_cast<std::size_t>(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin());
        t = perm[std::min(r, perm.size() - 1)];
    }
    return out;
}

} // namespace engram_bench
