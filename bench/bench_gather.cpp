// Gather throughput (tokens/s; 16 rows per token into f32 memory vectors) of every storage
// policy at the reference default table size, 10,344,164 rows x 64, rows from a 2^20-token
// Zipf(1.1) stream through the reference hash (each iteration takes the next slice, so rows are
// hot only when their n-grams are frequent). Next to each gather runs its probe where one makes
// sense: the same rows' stored bytes copied by a bare loop (memcpy, or one pread per row for
// the file table), what random row reads of that storage cost on this machine.
//
// gather/<storage>/<tokens per batch>:
//   dense_f32, dense_bf16, dense_f16, dense_fp8, dense_int8   dense_storage::table<Row>
//   sharded_bf16          sharded_storage<dense_storage, 4>   (4 row ranges, rows decoded in place)
//   cached_bf16_hit       cached_table, 256 MiB, warmed on the first quarter of the stream
//   cached_bf16_miss      cached_table, 4 MiB (mostly misses: every miss also fills a slot)
//   mmap_bf16             mmap_storage (a file in /dev/shm, else /tmp; removed at exit)
//   file_bf16             file_table: pread per row (runs of rows on one page merged)
// and <storage>_probe for each dense codec, mmap and file. One large table is held at a time,
// besides the bf16 table's file and caches at the end (peak about 3 GB).
#include "bench_common.hpp"

#include <engram/storage/cached.hpp>
#include <engram/storage/file.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/sharded.hpp>

#include <benchmark/benchmark.h>

#include <map>
#include <memory>
#include <string>

#include <unistd.h>

namespace {

namespace eb = engram_bench;
using engram::bfloat16;
using engram::row_id;

std::size_t default_rows() { return static_cast<std::size_t>(eb::default_layout().total_rows); }
std::size_t default_dim() { return static_cast<std::size_t>(eb::default_layout().head_dim); }

using sharded_t = engram::sharded_storage<engram::dense_storage, 4>::table<bfloat16>;
struct sharded_tag {};

std::unique_ptr<sharded_t>& sharded_slot() {
    static std::unique_ptr<sharded_t> table;
    return table;
}

/// Drops every large table but `Keep`'s (a row type, or sharded_tag).
template <class Keep>
void keep_only() {
    if constexpr (!std::is_same_v<Keep, sharded_tag>) sharded_slot().reset();
    auto drop = [](auto tag) {
        using R = typename decltype(tag)::type;
        if constexpr (!std::is_same_v<R, Keep>) eb::table_slot<R>().reset();
    };
    drop(std::type_identity<float>{});
    drop(std::type_identity<bfloat16>{});
    drop(std::type_identity<engram::f16_codec>{});
    drop(std::type_identity<engram::fp8_e4m3_codec>{});
    drop(std::type_identity<engram::int8_codec>{});
}

template <class Row>
const engram::dense_storage::table<Row>& table_of() {
    keep_only<Row>();
    return eb::default_table<Row>();
}

template <class Table>
void run_gather(benchmark::State& state, const Table& table) {
    static std::size_t cursor = 0;
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<float> out(tokens * eb::heads() * table.dim());
    eb::over_rows(state, eb::stream_rows(), tokens * eb::heads(), cursor, [&](std::span<const row_id> rows) {
        engram::gather(table, rows, std::span<float>(out));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

/// Bare copies of `row_bytes`-byte rows at `base`.
void run_probe(benchmark::State& state, const std::byte* base, std::size_t row_bytes) {
    static std::size_t cursor = 0;
    const auto tokens = static_cast<std::size_t>(state.range(0));
    std::vector<std::byte> out(tokens * eb::heads() * row_bytes);
    eb::over_rows(state, eb::stream_rows(), tokens * eb::heads(), cursor, [&](std::span<const row_id> rows) {
        eb::probe_copy(base, row_bytes, rows, out.data());
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

template <class Row>
void BM_dense(benchmark::State& state) {
    run_gather(state, table_of<Row>());
}

template <class Row>
void BM_dense_probe(benchmark::State& state) {
    const auto& t = table_of<Row>();
    run_probe(state, t.bytes(), t.row_bytes());
}

void BM_sharded(benchmark::State& state) {
    keep_only<sharded_tag>();
    auto& table = sharded_slot();
    if (!table) {
        table = std::make_unique<sharded_t>(default_rows(), default_dim());
        for (std::size_t k = 0; k < table->num_shards(); ++k) eb::fill_table(table->shard(k));
    }
    run_gather(state, *table);
}

using cache_t = engram::cached_table<engram::dense_storage::table<bfloat16>>;

/// A cache of `mib` MiB in front of the dense bf16 table, warmed on the stream's first quarter;
/// gathers continue after the warm-up.
void BM_cached(benchmark::State& state, int mib) {
    const auto& inner = table_of<bfloat16>();
    static std::map<int, std::unique_ptr<cache_t>> caches;
    static std::map<int, std::size_t> cursors;
    auto& cache = caches[mib];
    const auto& all = eb::stream_rows();
    const std::size_t tokens = static_cast<std::size_t>(state.range(0)), per_batch = tokens * eb::heads();
    if (!cache) {
        // Not owned: the bf16 table stays alive from here to the end of the binary's order.
        cache = std::make_unique<cache_t>(
            std::shared_ptr<const engram::dense_storage::table<bfloat16>>(std::shared_ptr<void>(), &inner),
            static_cast<std::size_t>(mib) << 20);
        std::vector<float> out(per_batch * inner.dim());
        std::size_t at = 0;
        for (; at + per_batch <= all.size() / 4; at += per_batch)
            cache->gather(std::span<const row_id>(all.data() + at, per_batch), out);
        cursors[mib] = at;
    }
    std::vector<float> out(per_batch * inner.dim());
    const std::uint64_t h0 = cache->hits(), m0 = cache->misses();
    eb::over_rows(state, all, per_batch, cursors[mib], [&](std::span<const row_id> rows) {
        cache->gather(rows, std::span<float>(out));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
    const double h = static_cast<double>(cache->hits() - h0), m = static_cast<double>(cache->misses() - m0);
    state.counters["hit_rate"] = h + m > 0 ? h / (h + m) : 0.0;
}

/// The default table's bf16 rows in a scratch file (made once; removed at exit).
const eb::scratch_file& bf16_file() {
    static const auto file = [] {
        auto f = std::make_unique<eb::scratch_file>("bf16_rows");
        const auto& t = table_of<bfloat16>();
        eb::write_file(f->path(), t.bytes(), t.size_bytes());
        return f;
    }();
    return *file;
}

const engram::mmap_storage::table<bfloat16>& mmap_table() {
    static const engram::mmap_storage::table<bfloat16> t(bf16_file().path(), 0, default_rows(), default_dim());
    return t;
}

void BM_mmap(benchmark::State& state) { run_gather(state, mmap_table()); }

void BM_mmap_probe(benchmark::State& state) {
    const auto& t = mmap_table();
    run_probe(state, t.bytes(), t.row_bytes());
}

const engram::file_table<bfloat16>& file_rows() {
    static const engram::file_table<bfloat16> t(bf16_file().path(), 0, default_rows(), default_dim());
    return t;
}

void BM_file(benchmark::State& state) { run_gather(state, file_rows()); }

/// One pread per row, no merging: what a row read through the page cache costs.
void BM_file_probe(benchmark::State& state) {
    const auto& t = file_rows();
    static std::size_t cursor = 0;
    const std::size_t tokens = static_cast<std::size_t>(state.range(0)), bytes = t.row_bytes();
    std::vector<std::byte> out(tokens * eb::heads() * bytes);
    eb::over_rows(state, eb::stream_rows(), tokens * eb::heads(), cursor, [&](std::span<const row_id> rows) {
        for (std::size_t i = 0; i < rows.size(); ++i)
            if (::pread(t.native_handle(), out.data() + i * bytes, bytes,
                        static_cast<::off_t>(static_cast<std::size_t>(rows[i]) * bytes)) !=
                static_cast<::ssize_t>(bytes))
                state.SkipWithError("pread failed");
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

void batches(benchmark::internal::Benchmark* b) { b->ArgName("tokens")->Arg(512)->Arg(8192); }

const bool registered = [] {
    benchmark::RegisterBenchmark("gather/dense_f32", BM_dense<float>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_f32_probe", BM_dense_probe<float>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_f16", BM_dense<engram::f16_codec>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_f16_probe", BM_dense_probe<engram::f16_codec>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_fp8", BM_dense<engram::fp8_e4m3_codec>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_fp8_probe", BM_dense_probe<engram::fp8_e4m3_codec>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_int8", BM_dense<engram::int8_codec>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_int8_probe", BM_dense_probe<engram::int8_codec>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/sharded_bf16", BM_sharded)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_bf16", BM_dense<bfloat16>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/dense_bf16_probe", BM_dense_probe<bfloat16>)->Apply(batches);
    benchmark::RegisterBenchmark("gather/cached_bf16_hit", BM_cached, 256)->Apply(batches);
    benchmark::RegisterBenchmark("gather/cached_bf16_miss", BM_cached, 4)->Apply(batches);
    benchmark::RegisterBenchmark("gather/mmap_bf16", BM_mmap)->Apply(batches);
    benchmark::RegisterBenchmark("gather/mmap_bf16_probe", BM_mmap_probe)->Apply(batches);
    benchmark::RegisterBenchmark("gather/file_bf16", BM_file)->ArgName("tokens")->Arg(512);
    benchmark::RegisterBenchmark("gather/file_bf16_probe", BM_file_probe)->ArgName("tokens")->Arg(512);
    return true;
}();

} // namespace
