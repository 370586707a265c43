// `engram forward --storage mpi`: the layer run by the ranks of MPI_COMM_WORLD (under mpirun or
// srun), each holding its share of the rows (its own row range of the case's table, or its own
// shards of a table file) and its block of the batch's sequences; rank 0 writes the output.
#pragma once

#include "forward_common.hpp"

#include <engram/dist/table.hpp>
#include <engram/dist/table_file.hpp>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace engram_cli::fwd {

namespace dist = engram::dist;

/// MPI_COMM_WORLD for the rest of the process: MPI is initialised on first use and finalised at
/// exit (after the communicator is freed: statics end in reverse order).
inline const dist::communicator& world() {
    static dist::mpi_session session;
    static const dist::communicator comm(MPI_COMM_WORLD);
    return comm;
}

/// Runs `body` on every rank. An error every rank agreed on (the same on all: a missing shard,
/// a mismatched table) is reported once, by rank 0, and every rank exits with status 1; an
/// error only this rank saw is reported with its rank, and the job is aborted (the other ranks
/// would otherwise wait for this one in their next exchange).
template <class Body>
void on_every_rank(const char* command, Body&& body) {
    const auto& w = world();
    try {
        body();
    } catch (const std::exception& e) {
        if (dynamic_cast<const dist::collective_failure*>(&e) != nullptr) {
            if (w.rank() == 0) throw;
            throw quiet_exit{1};
        }
        std::cerr << "engram " << command << ": error: rank " << w.rank() << " of " << w.size() << ": "
                  << one_line(e.what()) << std::endl;
        w.abort(1);
    }
}

/// The block of sequences `[first, last)` of B that this rank runs.
inline std::pair<std::size_t, std::size_t> my_sequences(const dist::communicator& w, std::size_t batch) {
    return {batch * w.urank() / w.usize(), batch * (w.urank() + 1) / w.usize()};
}

/// The layer on this rank's sequences with rows from `table` (collective). Returns, on rank 0,
/// the output of every sequence (`[B, T, width]`); other ranks get an empty vector.
template <class Layer, class Table>
std::vector<float> forward_share(const run_inputs<Layer>& in, const Table& table) {
    const auto& w = world();
    const auto [b0, b1] = my_sequences(w, in.batch);
    const std::size_t width = in.hidden.size() / std::max<std::size_t>(1, in.batch * in.seq);
    const std::size_t t0 = b0 * in.seq, n = (b1 - b0) * in.seq;
    const auto mask = in.mask.empty() ? in.mask : in.mask.subspan(t0, n);
    std::vector<float> mine(n * width);
    dist::forward(in.layer, table, std::span<const std::int64_t>(in.ids).subspan(t0, n), b1 - b0, in.seq,
                  std::span<const float>(in.hidden).subspan(t0 * width, n * width), mine, mask);
    return w.gather_to<float>(0, std::span<const float>(mine));
}

/// What a run over the ranks exchanged, summed over the ranks (collective), for the summary line.
template <class Table>
std::string traffic_note(const Table& table, std::size_t tokens) {
    const auto& w = world();
    const auto& st = table.stats();
    const std::uint64_t sent = w.sum(st.bytes_sent), positions = w.sum(st.positions), unique = w.sum(st.unique_rows);
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  " on %d ranks (%llu distinct of %llu rows looked up; %.1f bytes sent per token per rank)", w.size(),
                  static_cast<unsigned long long>(unique), static_cast<unsigned long long>(positions),
                  tokens == 0 ? 0.0 : static_cast<double>(sent) / static_cast<double>(tokens) / w.size());
    return buf;
}

/// The layer over the ranks (collective): rows from a table file (each rank maps the shards
/// holding its rows) or from `rows` (each rank copies its range with `slice(first, n)`); the
/// output on rank 0 in `out`. Returns the summary's note.
template <class Layer, class Slice>
std::string forward_over_ranks(const run_inputs<Layer>& in, const std::optional<std::string>& table_path,
                               const storage_choice& choice, Slice&& slice) {
    const auto& w = world();
    const auto s = choice.by_head ? dist::split::heads : dist::split::rows;
    std::string note;
    auto run = [&](const auto& table) {
        auto all = forward_share(in, table);
        if (w.rank() == 0) in.out = std::move(all);
        note = traffic_note(table, in.batch * in.seq);
    };
    if (table_path) {
        std::optional<engram::table_file> tf;
        dist::open_table_file(
            w.native(), *table_path, s,
            [&](const auto& table) {
                dist::collectively(w, "engram forward", [&] { check_table_matches(*tf, in.layer); });
                run(table);
            },
            {}, &tf);
    } else {
        using local_type = std::remove_cvref_t<decltype(slice(std::size_t{}, std::size_t{}))>;
        using table_type = dist::mpi_table<local_type>;
        const table_type table(w.native(), [&] {
            return table_type::own_rows(dist::row_partition::make(s, in.layer.layout(), w.usize()), w.urank(), slice);
        });
        run(table);
    }
    return note;
}

} // namespace engram_cli::fwd
