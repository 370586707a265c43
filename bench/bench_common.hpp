// Shared inputs of the benchmarks: the reference default layer, a Zipfian token stream, its row
// ids, filled tables, the bare-copy probe and scratch files. Also included by the `engram
// bench` tool (tools/cmd_bench.cpp), so it needs engram alone, not Google Benchmark.
#pragma once

#include <engram/engram.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <unistd.h>

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

/// Tokens of the shared stream: 2^20 Zipf(1.1) ids.
constexpr std::size_t stream_tokens = std::size_t{1} << 20;

/// The stream's tokens (batch 1), made once.
inline const std::vector<engram::token_id>& stream_token_ids() {
    static const auto ids = zipf_tokens(stream_tokens);
    return ids;
}

/// Row ids [stream_tokens, 16] of the stream through the reference hash of the default layer.
inline const std::vector<engram::row_id>& stream_rows() {
    static const auto rows = [] {
        const auto& ids = stream_token_ids();
        engram::ngram_hasher<> hasher(default_layout());
        std::vector<engram::row_id> out(ids.size() * hasher.num_heads());
        hasher.rows(ids, 1, ids.size(), out);
        return out;
    }();
    return rows;
}

/// Heads of the default layer (rows per token).
inline std::size_t heads() { return default_layout().num_heads(); }

/// A table's every stored byte written (untouched anonymous pages all read the shared zero
/// page, which would make random reads look like cache hits): f32 / bf16 tables get small
/// values, other codecs a byte pattern (any byte decodes; the values do not matter here).
template <class Table>
void fill_table(Table& t) {
    if constexpr (Table::typed) {
        auto values = t.values();
        for (std::size_t i = 0; i < values.size(); ++i) {
            const float v = static_cast<float>(i & 1023) * 0.001f;
            if constexpr (std::is_same_v<typename Table::value_type, float>)
                values[i] = v;
            else
                values[i] = engram::bfloat16::from_float(v);
        }
    } else {
        for (std::size_t r = 0; r < t.rows(); ++r) {
            auto row = t.encoded_row(r);
            for (std::size_t b = 0; b < row.size(); ++b) row[b] = static_cast<std::byte>((r * 7 + b * 13) & 0x7F);
        }
    }
}

/// One table of `Row` rows at a time: made (rows x dim, filled) on first use and kept until a
/// table of another type or shape is asked for, so that a binary never holds more than one
/// large table of this kind (the machines are shared; RAM is limited).
template <class Row>
std::unique_ptr<engram::dense_storage::table<Row>>& table_slot() {
    static std::unique_ptr<engram::dense_storage::table<Row>> table;
    return table;
}

template <class Row>
const engram::dense_storage::table<Row>& dense_table(std::size_t rows, std::size_t dim) {
    auto& table = table_slot<Row>();
    if (!table || table->rows() != rows || table->dim() != dim) {
        table.reset();
        table = std::make_unique<engram::dense_storage::table<Row>>(rows, dim);
        fill_table(*table);
    }
    return *table;
}

/// The default layer's table (10,344,164 x 64) in `Row`.
template <class Row>
const engram::dense_storage::table<Row>& default_table() {
    const auto& l = default_layout();
    return dense_table<Row>(static_cast<std::size_t>(l.total_rows), static_cast<std::size_t>(l.head_dim));
}

/// Frees the tables dense_table keeps for these row types.
template <class... Rows>
void drop_tables() {
    (table_slot<Rows>().reset(), ...);
}

/// Runs `body(rows)` over consecutive slices of `all` (`per_batch` ids each), so that rows are
/// not cache-resident merely because the previous iteration read them; `cursor` carries on
/// between runs. Reports tokens (per_batch / heads) as items. `State`: benchmark::State.
template <class State, class Body>
void over_rows(State& state, const std::vector<engram::row_id>& all, std::size_t per_batch, std::size_t& cursor,
               Body&& body) {
    for (auto _ : state) {
        if (cursor + per_batch > all.size()) cursor = 0;
        body(std::span<const engram::row_id>(all.data() + cursor, per_batch));
        cursor += per_batch;
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) *
                            static_cast<std::int64_t>(per_batch / heads()));
}

/// The limit probe: rows copied by a bare memcpy loop (no checks, no conversion, no prefetch)
/// from a table of `row_bytes`-byte rows: what a random-row read of the table costs.
inline void probe_copy(const std::byte* base, std::size_t row_bytes, std::span<const engram::row_id> rows,
                       std::byte* out) {
    for (std::size_t i = 0; i < rows.size(); ++i)
        std::memcpy(out + i * row_bytes, base + static_cast<std::size_t>(rows[i]) * row_bytes, row_bytes);
}

/// A scratch file, removed when this goes out of scope. In /dev/shm when it is a directory
/// (RAM-backed: mmap and pread then measure the page-cache path, not a disk), else /tmp.
class scratch_file {
public:
    explicit scratch_file(const std::string& stem) {
        std::error_code ec;
        const std::filesystem::path dir = std::filesystem::is_directory("/dev/shm", ec) ? "/dev/shm" : "/tmp";
        path_ = dir / ("engram_bench_" + stem + "_" + std::to_string(::getpid()) + ".bin");
    }
    scratch_file(const scratch_file&) = delete;
    scratch_file& operator=(const scratch_file&) = delete;
    ~scratch_file() {
        std::error_code ec;
        std::filesystem::remove(path_, ec);
    }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
    std::filesystem::path path_;
};

/// Writes `bytes` bytes of `data` to `path` (throws engram::io_error on failure).
inline void write_file(const std::filesystem::path& path, const std::byte* data, std::size_t bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    out.flush();
    if (!out) throw engram::io_error("bench: cannot write '" + path.string() + "'");
}

} // namespace engram_bench
