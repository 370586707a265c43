// Hashing throughput at the reference default configuration (N = 3, K = 8: 16 heads per token).
#include "bench_common.hpp"

#include <benchmark/benchmark.h>

namespace {

template <class Family>
void BM_hash(benchmark::State& state) {
    const auto seq = static_cast<std::size_t>(state.range(0));
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
/// from tokenizer output to row ids.
void BM_hash_raw_tokens(benchmark::State& state) {
    const auto seq = static_cast<std::size_t>(state.range(0));
    const std::size_t batch = 4;
    std::vector<engram::token_id> lookup(128815);
    for (std::size_t i = 0; i < lookup.size(); ++i)
        lookup[i] = static_cast<engram::token_id>(i < 98627 ? i : i % 98627);
    const auto vocab = engram::canonical_table::from_lookup(lookup);
    const auto tokens = engram_bench::zipf_tokens(batch * seq);
    engram::ngram_hasher<> hasher(engram_bench::default_layout());
    std::vector<std::int64_t> out(tokens.size() * hasher.num_heads());
    for (auto _ : state) {
        hasher.hash_tokens(vocab, tokens, batch, seq, out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens.size()));
}

} // namespace

BENCHMARK(BM_hash<engram::multiply_xor_family>)->Name("hash/reference_multiply_xor")->Arg(1024)->Arg(16384);
BENCHMARK(BM_hash<engram::xxh3_family>)->Name("hash/xxh3")->Arg(1024)->Arg(16384);
BENCHMARK(BM_hash_raw_tokens)->Name("hash/reference_from_raw_ids")->Arg(16384);
