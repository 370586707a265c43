#pragma once
// SPDX-License-Identifier: MIT
// A table whose rows are spread over the ranks of an MPI communicator: each rank keeps its own
// row range (any local table: RAM, a mapped table file, a checkpoint's FP8 tensors) and fetches
// the others' rows by all-to-all exchanges.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/dist/exchange.hpp>
#include <engram/dist/mpi.hpp>
#include <engram/dist/partition.hpp>
#include <engram/error.hpp>
#include <engram/prefetch.hpp>
#include <engram/storage/dense.hpp>
#include <engram/types.hpp>

#include <algorithm>   // for copy
#include <cstddef>     // for size_t
#include <cstdint>     // for uint64_t
#include <memory>      // for shared_ptr, weak_ptr, make_shared
#include <optional>    // for optional
#include <span>        // for span
#include <string>      // for string, to_string
#include <string_view> // for string_view
#include <type_traits> // for is_invocable_r_v
#include <utility>     // for move
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace dist {

/// Options of a distributed table.
struct table_options {
    /// Exchanges that may be in flight at once (each on its own duplicate of the communicator):
    /// 2 lets the fetch of batch t+1 run while batch t is computed. Starting one more first
    /// completes the oldest on its lane.
    std::size_t lanes = 2;
    /// A value every rank must agree on besides the table's shape (e.g. a table file's id, a
    /// digest of the layer configuration): start-up fails on every rank if one differs.
    std::uint64_t fingerprint = 0;
};

namespace detail {

/// FNV-1a over bytes: a digest that is the same on every rank and machine.
inline std::uint64_t fnv1a(std::string_view bytes, std::uint64_t h = 0xcbf29ce484222325ull) noexcept {
    for (char c : bytes) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
    }
    return h;
}

inline std::uint64_t digest_of(std::span<const std::size_t> values) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::size_t v : values) {
        const auto u = static_cast<std::uint64_t>(v);
        h = fnv1a(std::string_view(reinterpret_cast<const char*>(&u), sizeof u), h);
    }
    return h;
}

} // namespace detail

/// @brief One logical table of `rows()` rows of `dim()` values whose rows are owned by the ranks
///        of a communicator (`row_partition`): rank k keeps rows `[first_row(k), first_row(k+1))`
///        in its own `Local` table and serves them to the others.
///
/// **Collective.** Construction, `gather` and every `prefetch*` are collective over the
/// communicator: every rank calls them, the same number of times and in the same order, with
/// its own ids (any number, zero included). Use the table from one thread per rank. The layer's
/// own `forward(table, ...)` gathers block by block (a different count on each rank) and must not
/// be given this table: use `dist::forward` (or `prefetch_tokens` and `engram::forward`).
///
/// **An exchange** sends each owner the *distinct* row ids it owns (`MPI_Ialltoall` of counts,
/// `MPI_Ialltoallv` of ids), and gets back the rows encoded as stored (`MPI_Ialltoallv` of bytes;
/// `row_wire`), decoded on arrival; the memory vectors of every position are then built from
/// them. The answers are those of one dense table of the same rows, bit for bit, for every
/// number of ranks and either split.
///
/// **Start-up check.** The constructor agrees, collectively, that every rank holds its rows
/// (the local table covers its range), and that rows, dim, codec, wire size, partition and
/// `options.fingerprint` are the same on every rank. Any failure throws the same error, with the
/// same message, on every rank: no rank proceeds to wait for one that gave up.
///
/// **Errors during an exchange.** Refused input (a row id outside the table, a bad size, a token
/// outside the vocabulary) on any rank makes the exchange throw on every rank, with that rank's
/// message. An MPI failure throws `mpi_error` (the communicator returns errors instead of
/// aborting); the caller then reports it and calls `communicator::abort`, as `engram forward`
/// does, so that the other ranks end too.
template <wire_table Local>
class mpi_table {
public:
    using local_type = Local;
    using codec_type = typename Local::codec_type;
    using ticket_type = exchange_ticket<Local>;

    /// @brief Collective. `local` holds this rank's rows: its row 0 is row `local_first_row` of
    ///        the table, and it covers at least `[partition.first_row(rank), ...)` of them.
    /// @throws config_error (every rank, same message) if the partition does not have one range
    ///         per rank, a local table does not cover its range, or the ranks disagree on the
    ///         table; mpi_error if MPI fails.
    mpi_table(MPI_Comm comm, row_partition partition, Local local, std::size_t local_first_row,
              table_options options = {})
        : comm_(comm), partition_(std::move(partition)), local_(std::move(local)), local_first_(local_first_row) {
        set_up(std::nullopt, options);
    }

    /// What `make` returns for the constructor below.
    struct parts {
        row_partition partition;
        Local local;
        std::size_t local_first_row = 0;
    };

    /// @brief The parts of a rank that holds exactly its own rows: `slice(first, n)` gives
    ///        rows `[first, first + n)` of the table as a `Local`.
    template <class Slice>
    [[nodiscard]] static parts own_rows(row_partition p, std::size_t rank, Slice&& slice) {
        const std::size_t first = p.first_row(rank), n = p.rows_of(rank);
        return parts{std::move(p), std::forward<Slice>(slice)(first, n), first};
    }

    /// @brief Collective: this rank's partition and rows are made by `make()` (e.g. opening its
    ///        shards of a file). If `make` throws on any rank, every rank throws that error
    ///        (same type and message, naming the rank), so that no rank is left waiting.
    template <class Make>
    requires std::is_invocable_r_v<parts, Make&> mpi_table(MPI_Comm comm, Make&& make, table_options options = {})
        : comm_(comm) {
        std::optional<detail::local_failure> failure;
        detail::capture(failure, [&] {
            parts p = make();
            partition_ = std::move(p.partition);
            local_ = std::move(p.local);
            local_first_ = p.local_first_row;
        });
        set_up(std::move(failure), options);
    }

    mpi_table(const mpi_table&) = delete;
    mpi_table& operator=(const mpi_table&) = delete;
    /// Moving is safe only while no ticket of the table is alive.
    mpi_table(mpi_table&&) noexcept = default;
    mpi_table& operator=(mpi_table&&) noexcept = default;
    ~mpi_table() {
        for (auto& w : last_)
            if (auto st = w.lock()) st->settle();
    }

    [[nodiscard]] std::size_t rows() const noexcept { return partition_.rows(); }
    [[nodiscard]] std::size_t dim() const noexcept { return local_.dim(); }
    [[nodiscard]] const row_partition& partition() const noexcept { return partition_; }
    [[nodiscard]] const communicator& comm() const noexcept { return comm_; }
    [[nodiscard]] int rank() const noexcept { return comm_.rank(); }
    /// This rank's rows: `[first_owned(), first_owned() + owned_rows())`.
    [[nodiscard]] std::size_t first_owned() const noexcept { return partition_.first_row(comm_.urank()); }
    [[nodiscard]] std::size_t owned_rows() const noexcept { return partition_.rows_of(comm_.urank()); }
    [[nodiscard]] const Local& local() const noexcept { return local_; }
    [[nodiscard]] std::size_t local_first_row() const noexcept { return local_first_; }
    /// Bytes a row travels as (`row_wire`).
    [[nodiscard]] std::size_t wire_row_bytes() const { return row_wire<Local>::row_bytes(local_); }

    /// The traffic of this rank's completed exchanges since construction or `reset_stats`.
    [[nodiscard]] const exchange_stats& stats() const noexcept { return *stats_; }
    void reset_stats() const noexcept { *stats_ = {}; }

    /// @brief Collective: starts exchanging the rows of `plan` (see the class notes); returns at
    ///        once. Errors (on any rank) surface from the ticket's `wait()` on every rank.
    [[nodiscard]] ticket_type prefetch(lookup_plan plan) const { return start(std::move(plan), std::nullopt); }

    /// @brief Collective: row ids `[B, T, heads]` (`make_plan` here; a bad size is refused on
    ///        every rank at `wait()`).
    [[nodiscard]] ticket_type prefetch_rows(std::vector<row_id> row_ids, std::size_t batch, std::size_t seq_len,
                                            std::size_t heads) const {
        return start_with([&] { return make_plan(std::move(row_ids), batch, seq_len, heads); });
    }

    /// @brief Collective: raw token ids `[B, T]` of `layer` (hashed here, `make_plan(layer, ...)`),
    ///        with the optional token mask. A bad token on any rank is refused on every rank.
    template <class Layer>
    [[nodiscard]] ticket_type prefetch_tokens(const Layer& layer, std::span<const token_id> raw, std::size_t batch,
                                              std::size_t seq_len,
                                              std::span<const std::uint8_t> token_mask = {}) const {
        return start_with([&] {
            if (token_mask.empty()) return make_plan(layer, raw, batch, seq_len);
            if constexpr (requires { make_plan(layer, raw, batch, seq_len, token_mask); })
                return make_plan(layer, raw, batch, seq_len, token_mask);
            else
                throw input_error("dist prefetch: this layer takes no token mask");
        });
    }

    /// @brief Collective and blocking: decoded rows `ids` into `out` [ids.size(), dim], as a
    ///        dense table's `gather` would write them.
    /// @throws input_error on every rank if any rank's ids or size are wrong (nothing written).
    void gather(std::span<const row_id> ids, std::span<float> out) const {
        const auto t = start_with([&] {
            ::engram::detail::check_gather(ids, rows(), dim(), out.size());
            return make_plan(std::vector<row_id>(ids.begin(), ids.end()), 1, ids.size(), 1);
        });
        const auto m = t.memory();
        std::copy(m.begin(), m.end(), out.begin());
    }

protected:
    Local& local_rows() noexcept { return local_; }

private:
    void set_up(std::optional<detail::local_failure> failure, const table_options& options) {
        if (!failure) detail::capture(failure, [&] { check_local(options); });
        detail::agree(comm_, failure, "dist table");
        check_same_everywhere(options);
        lanes_.reserve(options.lanes);
        for (std::size_t k = 0; k < options.lanes; ++k) lanes_.push_back(comm_.dup());
        last_.resize(options.lanes);
    }

    void check_local(const table_options& options) const {
        const std::size_t me = comm_.urank();
        if (partition_.ranks() != comm_.usize())
            throw config_error("the partition has " + std::to_string(partition_.ranks()) + " ranges for " +
                               std::to_string(comm_.size()) + " ranks");
        if (options.lanes == 0) throw config_error("options.lanes must be at least 1");
        const std::size_t lo = partition_.first_row(me), hi = lo + partition_.rows_of(me);
        if (local_.dim() == 0) throw config_error("the local table has dim 0");
        if (lo < local_first_ || hi > local_first_ + local_.rows())
            throw config_error("the local table holds rows [" + std::to_string(local_first_) + ", " +
                               std::to_string(local_first_ + local_.rows()) + "), but this rank owns rows [" +
                               std::to_string(lo) + ", " + std::to_string(hi) + ")");
    }

    /// Every rank's shape against rank 0's; the first difference fails every rank alike.
    void check_same_everywhere(const table_options& options) const {
        struct field {
            const char* name;
            std::uint64_t value;
        };
        const field fields[] = {
            {"row count", partition_.rows()},
            {"dim", local_.dim()},
            {"codec", detail::fnv1a(codec_type::name)},
            {"wire row bytes", row_wire<Local>::row_bytes(local_)},
            {"partition", detail::digest_of(partition_.bounds())},
            {"fingerprint", options.fingerprint},
            {"lanes", options.lanes},
        };
        for (const field& f : fields) {
            const auto all = comm_.allgather(f.value);
            for (std::size_t k = 1; k < all.size(); ++k)
                if (all[k] != all[0])
                    throw agreed_error<config_error>(
                        "dist table: rank " + std::to_string(k) + "'s " + f.name + " (" + std::to_string(all[k]) +
                            ") differs from rank 0's (" + std::to_string(all[0]) +
                            "): every rank must open the same table with the same configuration",
                        static_cast<int>(k));
        }
    }

    template <class MakePlan>
    ticket_type start_with(MakePlan&& make) const {
        std::optional<detail::local_failure> failure;
        lookup_plan plan;
        detail::capture(failure, [&] { plan = make(); });
        return start(std::move(plan), std::move(failure));
    }

    ticket_type start(lookup_plan plan, std::optional<detail::local_failure> failure) const {
        const std::size_t lane = next_lane_++ % lanes_.size();
        if (auto previous = last_[lane].lock()) previous->settle(); // same lane: one at a time, in order
        exchange_source<Local> src{&partition_, &local_, local_first_, stats_.get(), spare_.get()};
        auto st = std::make_shared<exchange_state<Local>>(lanes_[lane], src);
        st->start(std::move(plan), std::move(failure));
        last_[lane] = st;
        return ticket_type(std::move(st));
    }

    communicator comm_;
    row_partition partition_;
    Local local_;
    std::size_t local_first_ = 0;
    // The exchange machinery (not the rows): an exchange on a const table changes only these.
    std::vector<communicator> lanes_;
    mutable std::vector<std::weak_ptr<exchange_state<Local>>> last_;
    mutable std::size_t next_lane_ = 0;
    std::unique_ptr<exchange_stats> stats_ = std::make_unique<exchange_stats>();
    std::unique_ptr<std::vector<exchange_buffers>> spare_ = std::make_unique<std::vector<exchange_buffers>>();
};

/// @brief The layer on token ids `[B, T]` with rows from a distributed table (collective):
///        hashing, the exchange, then `layer.forward_memory`. Equal to `layer.forward` on a dense
///        table of the same rows. hidden and out are `[B, T, M, H]` of this rank's batch.
template <class Layer, class Local>
void forward(const Layer& layer, const mpi_table<Local>& table, std::span<const token_id> raw, std::size_t batch,
             std::size_t seq_len, std::span<const float> hidden, std::span<float> out,
             std::span<const std::uint8_t> token_mask = {}) {
    const auto ticket = table.prefetch_tokens(layer, raw, batch, seq_len, token_mask);
    ::engram::forward(layer, ticket, hidden, out, token_mask);
}

/// @brief Storage policy: rows spread over an MPI communicator, each rank holding its range in
///        an `InnerPolicy` table (RAM by default), split by row range or by head.
///
/// `table<Row>(comm, rows, dim)` (split by rows) or `table<Row>(comm, layout)` (either split) is
/// collective; `set_row(i, values)` stores the row when this rank owns it (and returns whether it
/// did), so every rank can run the same fill loop.
template <class InnerPolicy = dense_storage, split Split = split::rows>
struct mpi_storage {
    template <class Row>
    class table : public mpi_table<typename InnerPolicy::template table<Row>> {
        using inner = typename InnerPolicy::template table<Row>;
        using base = mpi_table<inner>;
        using parts = typename base::parts;

    public:
        /// @brief Rows split by row range (collective). @throws config_error on every rank for
        ///        more ranks than rows, or ranks that disagree.
        table(MPI_Comm comm, std::size_t rows, std::size_t dim,
              table_options options = {}) requires(Split == split::rows)
            : base(
                  comm,
                  [&] {
                      return make_parts(
                          comm, [&](std::size_t n) { return row_partition::by_rows(rows, n); }, dim);
                  },
                  options) {}
        /// @brief The rows of a layer's layout, split as `Split` says (collective).
        table(MPI_Comm comm, const layer_layout& layout, table_options options = {})
            : base(
                  comm,
                  [&] {
                      return make_parts(
                          comm, [&](std::size_t n) { return row_partition::make(Split, layout, n); },
                          static_cast<std::size_t>(layout.head_dim));
                  },
                  options) {}

        /// Whether this rank owns row i.
        [[nodiscard]] bool owns(std::size_t i) const noexcept {
            return i >= this->first_owned() && i < this->first_owned() + this->owned_rows();
        }
        /// @brief Stores row i if this rank owns it. @return whether it did.
        /// @throws input_error for i outside the table or a wrong size.
        bool set_row(std::size_t i, std::span<const float> values) {
            if (i >= this->rows() || values.size() != this->dim())
                throw input_error("mpi table: row " + std::to_string(i) + " with " + std::to_string(values.size()) +
                                  " values, table has " + std::to_string(this->rows()) + " rows of " +
                                  std::to_string(this->dim()));
            if (!owns(i)) return false;
            this->local_rows().set_row(i - this->local_first_row(), values);
            return true;
        }

    private:
        template <class MakePartition>
        static parts make_parts(MPI_Comm comm, MakePartition&& partition_for, std::size_t dim) {
            int rank = 0, size = 0;
            detail::check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
            detail::check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
            return base::own_rows(partition_for(static_cast<std::size_t>(size)), static_cast<std::size_t>(rank),
                                  [dim](std::size_t, std::size_t n) { return inner(n, dim); });
        }
    };
};

} // namespace dist

ENGRAM_END_NAMESPACE
