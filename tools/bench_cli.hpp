#pragma once
// What the two benches of `engram bench` share: the clock, the token stream, the hashing shape.

#include "../bench/bench_common.hpp" // zipf_tokens, canonical_vocab: the same stream as bench/

#include <engram/hash/layout.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace engram_cli {

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// V' of the DeepSeek-V3 tokenizer after compression: the reference demo's layer.
inline constexpr engram::token_id bench_vocab = engram_bench::canonical_vocab;

/// Canonical ids drawn from Zipf(1.1) over the vocabulary (a stand-in for text), frequent ids
/// spread over the id space by a fixed permutation.
inline std::vector<engram::token_id> zipf_stream(std::size_t n, std::uint64_t seed) {
    return engram_bench::zipf_tokens(n, 1.1, seed);
}

/// The reference default hashing shape with orders 2..N (5 x 129,280 rows per order; 1/8 quick).
inline engram::hash_config bench_hash_config(int max_ngram, bool quick) {
    engram::hash_config cfg;
    cfg.max_ngram = max_ngram;
    cfg.table_size_per_ngram.assign(static_cast<std::size_t>(max_ngram - 1), quick ? 80800 : 646400);
    return cfg;
}

/// `engram bench prefetch` (cmd_bench_prefetch.cpp).
int cmd_bench_prefetch(const std::vector<std::string>& argv);

/// `engram bench mpi` (cmd_bench_mpi.cpp; under mpirun, in an engram built with MPI).
int cmd_bench_mpi(const std::vector<std::string>& argv);

} // namespace engram_cli
