// Dense gather throughput at the reference default configuration: a 10,344,164 x 64 table
// (2.65 GB in f32, 1.3 GB in bf16), 16 random rows per token, next to a bare random-row probe.
#include "bench_common.hpp"

#include <benchmark/benchmark.h>

#include <cstring>

namespace {

template <class V>
const engram::dense_storage::table<V>& default_table() {
    static const auto table = [] {
        const auto& l = engram_bench::default_layout();
        engram::dense_storage::table<V> t(static_cast<std::size_t>(l.total_rows), static_cast<std::size_t>(l.head_dim));
        // Touch every page: untouched anonymous pages all read the shared zero page, which
        // would make random reads look like cache hits.
        auto values = t.values();
        for (std::size_t i = 0; i < values.size(); ++i) {
            if constexpr (std::is_same_v<V, float>) values[i] = static_cast<float>(i & 1023) * 0.001f;
            else values[i] = engram::bfloat16::from_float(static_cast<float>(i & 1023) * 0.001f);
        }
        return t;
    }();
    return table;
}

/// Row ids of `tokens` Zipfian tokens (batch 1) through the reference hash.
std::vector<engram::row_id> default_rows(std::size_t tokens) {
    const auto ids = engram_bench::zipf_tokens(tokens);
    engram::ngram_hasher<> hasher(engram_bench::default_layout());
    std::vector<engram::row_id> rows(tokens * hasher.num_heads());
    hasher.rows(ids, 1, tokens, rows);
    return rows;
}

template <class V>
void BM_gather(benchmark::State& state) {
    const auto& table = default_table<V>();
    const auto tokens = static_cast<std::size_t>(state.range(0));
    const auto rows = default_rows(tokens);
    std::vector<float> out(rows.size() * table.dim());
    for (auto _ : state) {
        engram::gather(table, std::span<const engram::row_id>(rows), std::span<float>(out));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * rows.size() * table.dim() * sizeof(V)));
}

/// The limit probe: the same rows copied by a bare loop (no checks, no conversion, no
/// prefetch), what a random-row read of this table costs on this machine.
template <class V>
void BM_probe(benchmark::State& state) {
    const auto& table = default_table<V>();
    const auto tokens = static_cast<std::size_t>(state.range(0));
    const auto rows = default_rows(tokens);
    std::vector<V> out(rows.size() * table.dim());
    const std::size_t row_bytes = table.dim() * sizeof(V);
    for (auto _ : state) {
        for (std::size_t i = 0; i < rows.size(); ++i)
            std::memcpy(out.data() + i * table.dim(), table.data() + static_cast<std::size_t>(rows[i]) * table.dim(), row_bytes);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens));
}

} // namespace

BENCHMARK(BM_gather<float>)->Name("gather/f32")->Arg(512)->Arg(8192);
BENCHMARK(BM_probe<float>)->Name("gather/f32_probe")->Arg(512)->Arg(8192);
BENCHMARK(BM_gather<engram::bfloat16>)->Name("gather/bf16")->Arg(512)->Arg(8192);
BENCHMARK(BM_probe<engram::bfloat16>)->Name("gather/bf16_probe")->Arg(512)->Arg(8192);
