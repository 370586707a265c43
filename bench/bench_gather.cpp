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
            if constexpr (std::is_same_v<V, float>)
                values[i] = static_cast<float>(i & 1023) * 0.001f;
            else
                values[i] = engram::bfloat16::from_float(static_cast<float>(i & 1023) * 0.001f);
        }
        return t;
    }();
    return table;
}

/// Row ids of a long Zipfian token stream (2^20 tokens, batch 1) through the reference hash.
/// Each iteration gathers the next slice, so that rows are not cache-resident merely because
/// the previous iteration read them; only genuinely frequent n-grams stay hot.
const std::vector<engram::row_id>& stream_rows() {
    static const auto rows = [] {
        const std::size_t tokens = std::size_t{1} << 20;
        const auto ids = engram_bench::zipf_tokens(tokens);
        engram::ngram_hasher<> hasher(engram_bench::default_layout());
        std::vector<engram::row_id> out(tokens * hasher.num_heads());
        hasher.rows(ids, 1, tokens, out);
        return out;
    }();
    return rows;
}

/// Runs `body(rows_of_this_batch)` over consecutive slices of the stream.
template <class Body>
void over_stream(benchmark::State& state, std::size_t tokens, Body&& body) {
    const auto& all = stream_rows();
    const std::size_t per_batch = tokens * engram_bench::default_layout().num_heads();
    std::size_t at = 0;
    for (auto _ : state) {
        if (at + per_batch > all.size()) at = 0;
        body(std::span<const engram::row_id>(all.data() + at, per_batch));
        at += per_batch;
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens));
}

template <class V>
void BM_gather(benchmark::State& state) {
    const auto& table = default_table<V>();
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<float> out(tokens * engram_bench::default_layout().num_heads() * table.dim());
    over_stream(state, tokens, [&](std::span<const engram::row_id> rows) {
        engram::gather(table, rows, std::span<float>(out));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

/// The limit probe: the same rows copied by a bare loop (no checks, no conversion, no
/// prefetch), what a random-row read of this table costs on this machine.
template <class V>
void BM_probe(benchmark::State& state) {
    const auto& table = default_table<V>();
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<V> out(tokens * engram_bench::default_layout().num_heads() * table.dim());
    const std::size_t row_bytes = table.dim() * sizeof(V);
    over_stream(state, tokens, [&](std::span<const engram::row_id> rows) {
        for (std::size_t i = 0; i < rows.size(); ++i)
            std::memcpy(out.data() + i * table.dim(), table.data() + static_cast<std::size_t>(rows[i]) * table.dim(),
                        row_bytes);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

} // namespace

BENCHMARK(BM_gather<float>)->Name("gather/f32")->Arg(512)->Arg(8192);
BENCHMARK(BM_probe<float>)->Name("gather/f32_probe")->Arg(512)->Arg(8192);
BENCHMARK(BM_gather<engram::bfloat16>)->Name("gather/bf16")->Arg(512)->Arg(8192);
BENCHMARK(BM_probe<engram::bfloat16>)->Name("gather/bf16_probe")->Arg(512)->Arg(8192);
