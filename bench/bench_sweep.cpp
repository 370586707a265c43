// Sweeps for the performance plots (scripts/plot_performance.py reads this binary's JSON):
//
//   sweep/gather_f32/tokens:N, sweep/gather_f32_probe/tokens:N      N = 1, 4, ..., 65,536 tokens
//   sweep/gather_bf16/tokens:N, sweep/gather_bf16_probe/tokens:N    per batch (16 rows each), on
//                                the reference default table (10,344,164 x 64; 2.65 GB f32,
//                                1.3 GB bf16), rows from the 2^20-token Zipf(1.1) stream;
//   sweep/gather_bf16_generic    the bf16 gather forced through the generic loop (the codec's
//                                decode, compiled for baseline x86-64) instead of the AVX-512
//                                widening engram::gather uses where the CPU has it
//   sweep/table_f32/rows:R, sweep/table_f32_probe/rows:R            R = 2^14 ... 2^24 rows x 64
//                                f32 (64 KiB ... 4.3 GB), 4,096 tokens per batch; the stream's
//                                row ids modulo R (so frequent n-grams stay frequent)
//   sweep/hash/tokens:N          reference hash of the default layer (16 heads), batch 1 x N
//
// Items are tokens. The probe copies the same rows' bytes with a bare memcpy loop. One table
// is held at a time (peak 4.3 GB at 2^24 rows).
#include "bench_common.hpp"

#include <engram/storage/direct.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace {

namespace eb = engram_bench;
using engram::bfloat16;
using engram::row_id;

constexpr std::size_t table_batch_tokens = 4096;

template <class Row>
const engram::dense_storage::table<Row>& only_default() {
    if constexpr (std::is_same_v<Row, float>)
        eb::drop_tables<bfloat16>();
    else
        eb::drop_tables<float>();
    return eb::default_table<Row>();
}

template <class Row>
void BM_tokens(benchmark::State& state) {
    const auto& table = only_default<Row>();
    static std::size_t cursor = 0;
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<float> out(tokens * eb::heads() * table.dim());
    eb::over_rows(state, eb::stream_rows(), tokens * eb::heads(), cursor, [&](std::span<const row_id> rows) {
        engram::gather(table, rows, std::span<float>(out));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

template <class Row>
void BM_tokens_probe(benchmark::State& state) {
    const auto& table = only_default<Row>();
    static std::size_t cursor = 0;
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<std::byte> out(tokens * eb::heads() * table.row_bytes());
    eb::over_rows(state, eb::stream_rows(), tokens * eb::heads(), cursor, [&](std::span<const row_id> rows) {
        eb::probe_copy(table.bytes(), table.row_bytes(), rows, out.data());
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

/// The bf16 gather through the generic loop (no AVX-512 widening).
void BM_tokens_generic(benchmark::State& state) {
    const auto& table = only_default<bfloat16>();
    static std::size_t cursor = 0;
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<float> out(tokens * eb::heads() * table.dim());
    eb::over_rows(state, eb::stream_rows(), tokens * eb::heads(), cursor, [&](std::span<const row_id> rows) {
        engram::detail::gather_rows_plain<engram::bf16_codec>(table.bytes(), table.row_bytes(), table.dim(), rows,
                                                              out.data());
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

/// The stream's row ids modulo `rows` (kept for the last size asked).
const std::vector<row_id>& rows_mod(std::size_t rows) {
    static std::size_t for_rows = 0;
    static std::vector<row_id> ids;
    if (for_rows != rows) {
        const auto& all = eb::stream_rows();
        ids.resize(all.size());
        for (std::size_t i = 0; i < all.size(); ++i)
            ids[i] = static_cast<row_id>(static_cast<std::size_t>(all[i]) % rows);
        for_rows = rows;
    }
    return ids;
}

const engram::dense_storage::table<float>& sized_table(std::size_t rows) {
    eb::drop_tables<bfloat16>();
    return eb::dense_table<float>(rows, 64);
}

void BM_table(benchmark::State& state) {
    const auto rows = static_cast<std::size_t>(state.range(0));
    const auto& table = sized_table(rows);
    static std::size_t cursor = 0;
    std::vector<float> out(table_batch_tokens * eb::heads() * table.dim());
    eb::over_rows(state, rows_mod(rows), table_batch_tokens * eb::heads(), cursor, [&](std::span<const row_id> ids) {
        engram::gather(table, ids, std::span<float>(out));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
    state.counters["table_bytes"] = static_cast<double>(table.size_bytes());
}

void BM_table_probe(benchmark::State& state) {
    const auto rows = static_cast<std::size_t>(state.range(0));
    const auto& table = sized_table(rows);
    static std::size_t cursor = 0;
    std::vector<std::byte> out(table_batch_tokens * eb::heads() * table.row_bytes());
    eb::over_rows(state, rows_mod(rows), table_batch_tokens * eb::heads(), cursor, [&](std::span<const row_id> ids) {
        eb::probe_copy(table.bytes(), table.row_bytes(), ids, out.data());
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
    state.counters["table_bytes"] = static_cast<double>(table.size_bytes());
}

void BM_hash(benchmark::State& state) {
    static const engram::ngram_hasher<> hasher(eb::default_layout());
    const auto& ids = eb::stream_token_ids();
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<row_id> out(tokens * hasher.num_heads());
    std::size_t at = 0;
    for (auto _ : state) {
        if (at + tokens > ids.size()) at = 0;
        hasher.rows(std::span<const engram::token_id>(ids).subspan(at, tokens), 1, tokens, out);
        at += tokens;
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(tokens));
}

void token_counts(benchmark::internal::Benchmark* b) {
    b->ArgName("tokens");
    for (std::int64_t t = 1; t <= 65536; t *= 4) b->Arg(t);
    b->MinTime(0.2);
}

const bool registered = [] {
    // Ours and the probe alternate per size so that each table is made once.
    for (const char* kind : {"f32", "bf16"}) {
        const bool f32 = kind[0] == 'f';
        for (std::int64_t t = 1; t <= 65536; t *= 4) {
            if (!f32)
                benchmark::RegisterBenchmark("sweep/gather_bf16_generic", BM_tokens_generic)
                    ->ArgName("tokens")
                    ->Arg(t)
                    ->MinTime(0.2);
            benchmark::RegisterBenchmark((std::string("sweep/gather_") + kind).c_str(),
                                         f32 ? BM_tokens<float> : BM_tokens<bfloat16>)
                ->ArgName("tokens")
                ->Arg(t)
                ->MinTime(0.2);
            benchmark::RegisterBenchmark((std::string("sweep/gather_") + kind + "_probe").c_str(),
                                         f32 ? BM_tokens_probe<float> : BM_tokens_probe<bfloat16>)
                ->ArgName("tokens")
                ->Arg(t)
                ->MinTime(0.2);
        }
    }
    for (int lg = 14; lg <= 24; ++lg) {
        benchmark::RegisterBenchmark("sweep/table_f32", BM_table)
            ->ArgName("rows")
            ->Arg(std::int64_t{1} << lg)
            ->MinTime(0.2);
        benchmark::RegisterBenchmark("sweep/table_f32_probe", BM_table_probe)
            ->ArgName("rows")
            ->Arg(std::int64_t{1} << lg)
            ->MinTime(0.2);
    }
    benchmark::RegisterBenchmark("sweep/hash", BM_hash)->Apply(token_counts);
    return true;
}();

} // namespace
