// Shared by `engram forward` and its MPI runner: the storage choice, the inputs of a run, and
// what a table file must agree with.
#pragma once

#include "cli.hpp"

#include <engram/io/table_file.hpp>
#include <engram/storage/dense.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace engram_cli::fwd {

/// Where `engram forward` serves the rows from (`--storage`).
struct storage_choice {
    enum kind_type { dense, mmap, sharded, cached, mpi } kind = dense;
    std::size_t shards = 0;
    std::size_t bytes = 0;
    bool by_head = false; ///< mpi: split the rows over the ranks by head, not by row range
    std::string text = "dense";
};

/// A dense table holding the same encoded rows as `src` rows [first, last).
template <class Table>
auto dense_copy(const Table& src, std::size_t first, std::size_t last) {
    using codec = typename Table::codec_type;
    engram::dense_storage::table<codec> out(last - first, src.dim());
    if constexpr (requires { src.encoded_row(std::size_t{0}); }) {
        for (std::size_t r = first; r < last; ++r) {
            const auto from = src.encoded_row(r);
            std::copy(from.begin(), from.end(), out.encoded_row(r - first).begin());
        }
    } else {
        std::vector<float> row(src.dim());
        for (std::size_t r = first; r < last; ++r) {
            const engram::row_id id = static_cast<engram::row_id>(r);
            src.gather(std::span<const engram::row_id>(&id, 1), row);
            out.set_row(r - first, row);
        }
    }
    return out;
}

template <class Layer>
struct run_inputs {
    const Layer& layer;
    const std::vector<std::int64_t>& ids;
    const std::vector<float>& hidden;
    std::vector<float>& out;
    std::size_t batch, seq;
    bool stream;
    std::span<const std::uint8_t> mask = {}; ///< DeepSeek-V4.1's token mask (0 = dead), or empty
};

/// The table file must have been packed for this layer: same layout and vocabulary.
template <class Layer>
void check_table_matches(const engram::table_file& tf, const Layer& layer) {
    const auto& mine = layer.layout();
    if (tf.rows() != static_cast<std::size_t>(mine.total_rows) || tf.dim() != static_cast<std::size_t>(mine.head_dim))
        throw engram::config_error("table file has " + std::to_string(tf.rows()) + " x " + std::to_string(tf.dim()) +
                                   " rows, the case's layer needs " + std::to_string(mine.total_rows) + " x " +
                                   std::to_string(mine.head_dim));
    if (tf.vocab()) {
        const auto theirs = tf.layout();
        if (theirs.primes != mine.primes || theirs.offsets != mine.offsets || theirs.multipliers != mine.multipliers)
            throw engram::config_error(
                "table file was packed for another layout (primes, offsets or multipliers differ)");
        if (!(*tf.vocab() == layer.vocab()))
            throw engram::config_error("table file's canonical vocabulary differs from the case's 'lookup'");
    }
}

} // namespace engram_cli::fwd
