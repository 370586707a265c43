#pragma once
// SPDX-License-Identifier: MIT
// A table file (engram pack) served by the ranks of a communicator: each rank maps only the
// shard files that hold its rows.

#include <engram/config.hpp>
#include <engram/dist/table.hpp>
#include <engram/io/table_file.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/sharded.hpp>

#include <cstddef>    // for size_t
#include <filesystem> // for path
#include <optional>   // for optional
#include <utility>    // for forward, move

ENGRAM_BEGIN_NAMESPACE

namespace dist {

/// The distributed table of a table file whose rows are stored with `Row`'s codec: this rank's
/// shards, mapped.
template <class Row>
using file_mpi_table = mpi_table<table_file::rows_table_type<Row>>;

/// @brief The layout of a table file's rows for splitting by head (primes and offsets of the
///        manifest; no vocabulary needed).
inline layer_layout manifest_layout(const table_manifest& m) {
    layer_layout l;
    l.primes = m.primes;
    l.offsets = m.offsets;
    l.total_rows = static_cast<std::int64_t>(m.rows);
    l.head_dim = static_cast<std::int64_t>(m.dim);
    return l;
}

/// @brief Collective: opens the table file at `path` on every rank of `comm`, splits its rows
///        over the ranks (`s`), maps on each rank only the shard files that hold its rows, and
///        calls `f(table)` with the `file_mpi_table<C>` of the file's codec C (f32, bf16, f16,
///        fp8, int8); returns what `f` returns (one type for every codec).
///
/// Every rank reads and validates the manifest and checks its own shards as `table_file::open`
/// does; the table's fingerprint is the file's `table_id`, so ranks that opened different packs
/// of a table fail too. Any failure (a missing or changed shard, a manifest mismatch, another
/// table on one rank) throws the same error with the same message on every rank.
/// @param manifest if given, receives the opened file (for its config and vocabulary).
template <class F>
decltype(auto) open_table_file(MPI_Comm comm, const std::filesystem::path& path, split s, F&& f,
                               table_options options = {}, std::optional<table_file>* manifest = nullptr) {
    // The manifest first (collectively: its codec picks the table type on every rank).
    std::optional<table_file> tf;
    communicator checks(comm);
    collectively(checks, "dist table file '" + path.string() + "'",
                 [&] { tf.emplace(table_file::open_manifest(path)); });
    options.fingerprint = detail::fnv1a(tf->codec(), tf->manifest().table_id);
    if (manifest != nullptr) *manifest = tf;
    return dispatch_codec(tf->codec(), [&](auto c) -> decltype(auto) {
        using C = decltype(c);
        using table_type = file_mpi_table<C>;
        const table_type table(
            comm,
            [&] {
                const auto p = row_partition::make(s, manifest_layout(tf->manifest()), checks.usize());
                const std::size_t lo = p.first_row(checks.urank()), hi = lo + p.rows_of(checks.urank());
                const auto [k0, k1] = tf->shards_holding(lo, hi);
                return typename table_type::parts{p, tf->template rows_table<C>(k0, k1),
                                                  static_cast<std::size_t>(tf->manifest().shards[k0].first_row)};
            },
            options);
        return std::forward<F>(f)(table);
    });
}

} // namespace dist

ENGRAM_END_NAMESPACE
