// Hashing throughput at the reference default configuration (N = 3, K = 8: 16 heads per token),
// with the SIMD (AVX-512 IFMA) modulo and with the scalar Barrett reduction.
#include "bench_common.hpp"

#include <benchmark/benchmark.h>

#include <optional>

namespace {

/// Restores the process-wide SIMD switch when a benchmark ends.
struct simd_scope {
    bool before = engram::simd_enabled();
    explicit simd_scope(bool on, benchmark::State& state) {
        if (engram::set_simd_enabled(on) != on) state.SkipWithError("this CPU has no AVX-512 IFMA");
    }
    simd_scope(const simd_scope&) = delete;
    simd_scope& operator=(const simd_scope&) = delete;
    ~simd_scope() { engram::set_simd_enabled(before); }
};

template <class Family>
void BM_hash(benchmark::State& state) {
    const auto seq = static_cast<std::size_t>(state.range(0));
    const simd_scope simd(state.range(1) != 0, state);
    const std::size_t batch = 4;
    const auto tokens = engram_bench::zipf_tokens(batch * seq);
    engram::ngram_hasher<Family, engram::orders<2, 3>> hasher(engram_bench::default_layout());
    std::vector<std::int64_t> out(tokens.size() * hasher.num_heads());
    for (auto _ : state) {
        hasher.rows(tokens, batch, seq, out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens.size()));
    state.counters["heads"] = static_cast<double>(hasher.num_heads());
}

/// Raw ids through a canonical table (V = 128,815 -> V' = 98,627), then hashed: the full path
/// from tokenizer output to row ids; range(1) = 1 adds a dead token (a rare raw id).
void BM_hash_raw_tokens(benchmark::State& state) {
    const auto seq = static_cast<std::size_t>(state.range(0));
    const simd_scope simd(state.range(1) != 0, state);
    const bool with_dead = state.range(2) != 0;
    const std::size_t batch = 4;
    std::vector<engram::token_id> lookup(128815);
    for (std::size_t i = 0; i < lookup.size(); ++i)
        lookup[i] = static_cast<engram::token_id>(i < 98627 ? i : i % 98627);
    const auto vocab = engram::canonical_table::from_lookup(lookup);
    const auto tokens = engram_bench::zipf_tokens(batch * seq);
    engram::ngram_hasher<> hasher(engram_bench::default_layout());
    std::vector<std::int64_t> out(tokens.size() * hasher.num_heads());
    const std::optional<engram::token_id> dead =
        with_dead ? std::optional<engram::token_id>(128000) : std::optional<engram::token_id>();
    for (auto _ : state) {
        hasher.rows_tokens(vocab, tokens, batch, seq, out, dead);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens.size()));
}

} // namespace

// Args: {seq_len, simd}; batch 4.
BENCHMARK(BM_hash<engram::multiply_xor_family>)
    ->Name("hash/reference_multiply_xor")
    ->ArgNames({"T", "simd"})
    ->ArgsProduct({{1024, 16384}, {0, 1}});
BENCHMARK(BM_hash<engram::xxh3_family>)->Name("hash/xxh3")->ArgNames({"T", "simd"})->Args({1024, 0})->Args({16384, 0});
BENCHMARK(BM_hash_raw_tokens)
    ->Name("hash/reference_from_raw_ids")
    ->ArgNames({"T", "simd", "dead"})
    ->ArgsProduct({{16384}, {0, 1}, {0, 1}});
