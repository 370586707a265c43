#pragma once
// SPDX-License-Identifier: MIT
// One exchange of rows between the ranks of a communicator: the asking side's distinct row ids
// go to their owners, the owners' encoded rows come back, decoded on arrival. Three non-blocking
// all-to-alls (counts, ids, rows) driven by a small state machine, so the exchange can run while
// the caller computes.

#include <engram/config.hpp>
#include <engram/dist/mpi.hpp>
#include <engram/dist/partition.hpp>
#include <engram/error.hpp>
#include <engram/prefetch.hpp>
#include <engram/types.hpp>

#include <cstddef>   // for byte, size_t
#include <cstdint>   // for uint64_t
#include <cstring>   // for memcpy
#include <exception> // for exception_ptr, rethrow_exception, current_exception
#include <limits>    // for numeric_limits
#include <memory>    // for shared_ptr, unique_ptr, make_unique_for_overwrite
#include <optional>  // for optional
#include <span>      // for span
#include <string>    // for string, to_string
#include <utility>   // for move
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

namespace dist {

/// Traffic of exchanges, in bytes and rows; "sent" counts only what left for other ranks.
struct exchange_stats {
    std::uint64_t exchanges = 0;      ///< exchanges completed
    std::uint64_t positions = 0;      ///< row lookups asked for (token x head positions)
    std::uint64_t unique_rows = 0;    ///< distinct rows asked for (what was sent as ids)
    std::uint64_t remote_rows = 0;    ///< distinct rows asked of other ranks
    std::uint64_t rows_served = 0;    ///< rows this rank sent to other ranks
    std::uint64_t bytes_sent = 0;     ///< counts + ids + rows sent to other ranks
    std::uint64_t bytes_received = 0; ///< counts + ids + rows received from other ranks

    exchange_stats& operator+=(const exchange_stats& o) noexcept {
        exchanges += o.exchanges;
        positions += o.positions;
        unique_rows += o.unique_rows;
        remote_rows += o.remote_rows;
        rows_served += o.rows_served;
        bytes_sent += o.bytes_sent;
        bytes_received += o.bytes_received;
        return *this;
    }
};

/// @brief Mixed into every error that the ranks agreed on (`agreed_error<E>`): every rank of the
///        communicator throws it, with the same message, so there is no collective left to wait
///        for. `origin` is the rank where it happened. A caller that catches one on every rank may
///        report it once (e.g. on rank 0) and end normally; any other error is this rank's alone
///        (report it, then `communicator::abort`).
struct collective_failure {
    int origin = 0;
};

/// @brief An error of type `E` (config_error, input_error, ...) thrown on every rank alike.
template <class E>
class agreed_error : public E, public collective_failure {
public:
    agreed_error(const std::string& message, int origin_rank) : E(message), collective_failure{origin_rank} {}
};

namespace detail {

/// The kinds of engram error a rank can report to the others, so that every rank throws the
/// same type.
enum class error_kind : int { error = 0, config, input, format, io, unsupported, mpi };

inline error_kind kind_of(const std::exception& e) noexcept {
    if (dynamic_cast<const config_error*>(&e)) return error_kind::config;
    if (dynamic_cast<const input_error*>(&e)) return error_kind::input;
    if (dynamic_cast<const format_error*>(&e)) return error_kind::format;
    if (dynamic_cast<const io_error*>(&e)) return error_kind::io;
    if (dynamic_cast<const unsupported_error*>(&e)) return error_kind::unsupported;
    if (dynamic_cast<const mpi_error*>(&e)) return error_kind::mpi;
    return error_kind::error;
}

[[noreturn]] inline void throw_kind(error_kind k, const std::string& message, int origin) {
    switch (k) {
    case error_kind::config:
        throw agreed_error<config_error>(message, origin);
    case error_kind::input:
        throw agreed_error<input_error>(message, origin);
    case error_kind::format:
        throw agreed_error<format_error>(message, origin);
    case error_kind::io:
        throw agreed_error<io_error>(message, origin);
    case error_kind::unsupported:
        throw agreed_error<unsupported_error>(message, origin);
    case error_kind::mpi:
        throw agreed_error<mpi_error>(message, origin);
    case error_kind::error:
        break;
    }
    throw agreed_error<engram::error>(message, origin);
}

/// A failure seen on this rank, to be shared with the others.
struct local_failure {
    error_kind kind = error_kind::error;
    std::string message;
};

/// Runs `f`, catching an error into `failure` (std::bad_alloc and other std exceptions too).
template <class F>
void capture(std::optional<local_failure>& failure, F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        failure = local_failure{kind_of(e), e.what()};
    }
}

/// @brief Collective among the ranks that know `root` failed (all of them): every rank throws
///        `root`'s error, with its type and message, prefixed with `what` and the rank.
[[noreturn]] inline void share_failure(const communicator& comm, int root, const std::optional<local_failure>& mine,
                                       const std::string& what) {
    int kind = mine ? static_cast<int>(mine->kind) : 0;
    check(MPI_Bcast(&kind, 1, MPI_INT, root, comm.native()), "MPI_Bcast");
    const std::string text = comm.broadcast_text(mine ? mine->message : std::string(), root);
    throw_kind(static_cast<error_kind>(kind),
               what + ": rank " + std::to_string(root) + " of " + std::to_string(comm.size()) + ": " + text, root);
}

/// @brief Collective: if any rank has a failure, every rank throws the lowest failing rank's
///        (same type, same message, prefixed with `what` and that rank).
inline void agree(const communicator& comm, const std::optional<local_failure>& mine, const std::string& what) {
    const int code = mine ? comm.rank() : comm.size();
    int first = comm.size();
    check(MPI_Allreduce(&code, &first, 1, MPI_INT, MPI_MIN, comm.native()), "MPI_Allreduce");
    if (first != comm.size()) share_failure(comm, first, mine, what);
}

} // namespace detail

/// @brief Collective: runs `f` on every rank; if it threw on any rank, every rank throws the
///        lowest failing rank's error (same type and message, `agreed_error`), prefixed with
///        `what`. For the steps before an exchange that one rank may fail alone.
template <class F>
void collectively(const communicator& comm, const std::string& what, F&& f) {
    std::optional<detail::local_failure> failure;
    detail::capture(failure, std::forward<F>(f));
    detail::agree(comm, failure, what);
}

/// @brief The working memory of one exchange. A table keeps the buffers of finished exchanges
///        and hands them to the next ones: a steady stream of batches then allocates (and page-
///        faults) nothing after the first few.
struct exchange_buffers {
    std::vector<row_id> asked, local;  ///< ids asked of this rank (global, then local)
    std::vector<std::byte> out, in;    ///< rows packed for the askers, rows received
    std::vector<float> values, memory; ///< decoded distinct rows, memory vectors
};

/// @brief What an exchange needs of the table it reads: the partition, this rank's rows and how
///        they travel. Implemented by `mpi_table`.
template <class Local>
struct exchange_source {
    const row_partition* partition = nullptr;
    const Local* local = nullptr;
    std::size_t local_first_row = 0;                ///< the global row of the local table's row 0
    exchange_stats* totals = nullptr;               ///< the table's running totals (added to at completion)
    std::vector<exchange_buffers>* spare = nullptr; ///< the table's buffers to reuse
};

/// @brief The state of one exchange: shared by its ticket and the table's lane (which completes
///        it before starting the next exchange on the same communicator).
template <class Local>
class exchange_state {
public:
    using wire = row_wire<Local>;
    static constexpr std::uint64_t refused = std::numeric_limits<std::uint64_t>::max();

    exchange_state(const communicator& comm, exchange_source<Local> src) : comm_(&comm), src_(src) {
        if (src_.spare != nullptr && !src_.spare->empty()) {
            buf_ = std::move(src_.spare->back());
            src_.spare->pop_back();
        }
    }
    exchange_state(const exchange_state&) = delete;
    exchange_state& operator=(const exchange_state&) = delete;
    ~exchange_state() {
        settle();
        constexpr std::size_t kept = 4; // enough for the lanes' exchanges and a result held meanwhile
        if (src_.spare != nullptr && src_.spare->size() < kept) src_.spare->push_back(std::move(buf_));
    }

    /// Posts the counts (collective start). `failure`: this rank's input was refused; it still
    /// takes part, so that every rank learns of it.
    void start(lookup_plan plan, std::optional<detail::local_failure> failure) {
        plan_ = std::move(plan);
        failure_ = std::move(failure);
        const std::size_t P = comm_->usize();
        if (!failure_) {
            detail::capture(failure_, [&] { check_plan_rows(); });
        }
        send_counts_.assign(P, refused);
        recv_counts_.assign(P, 0);
        if (!failure_) {
            const auto c = src_.partition->counts(plan_.unique_rows);
            for (std::size_t k = 0; k < P; ++k) send_counts_[k] = c[k];
        }
        phase_ = phase::counts;
        detail::check(MPI_Ialltoall(send_counts_.data(), 1, MPI_UINT64_T, recv_counts_.data(), 1, MPI_UINT64_T,
                                    comm_->native(), &request_),
                      "MPI_Ialltoall");
    }

    /// @brief Advances the exchange as far as it can go without waiting (or, with `block`, to
    ///        the end). @return true when it is over. Errors are kept and rethrown by `rethrow`.
    bool advance(bool block) {
        while (phase_ != phase::done) {
            int flag = 0;
            try {
                if (block)
                    detail::check(MPI_Wait(&request_, MPI_STATUS_IGNORE), "MPI_Wait");
                else
                    detail::check(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), "MPI_Test");
                if (!block && flag == 0) return false;
                switch (phase_) {
                case phase::counts:
                    after_counts();
                    break;
                case phase::ids:
                    after_ids();
                    break;
                case phase::rows:
                    after_rows();
                    break;
                case phase::idle: // never started: nothing to wait for
                case phase::done:
                    phase_ = phase::done;
                    break;
                }
            } catch (...) {
                if (!error_) error_ = std::current_exception();
                phase_ = phase::done;
            }
        }
        return true;
    }

    [[nodiscard]] bool done() const noexcept { return phase_ == phase::done; }
    void rethrow() const {
        if (error_) std::rethrow_exception(error_);
    }
    /// Completes the exchange, dropping errors (destructor, lane hand-over).
    void settle() noexcept {
        if (phase_ == phase::done || phase_ == phase::idle || !mpi_running()) return;
        try {
            advance(true);
        } catch (...) { // NOLINT(bugprone-empty-catch): kept in error_ by advance
        }
    }

    [[nodiscard]] const lookup_plan& plan() const noexcept { return plan_; }
    [[nodiscard]] std::span<const float> staged() const noexcept {
        return {buf_.values.data(), plan_.unique_rows.size() * dim()};
    }
    [[nodiscard]] std::span<const float> memory() const noexcept {
        return {buf_.memory.data(), plan_.positions() * dim()};
    }
    [[nodiscard]] std::size_t dim() const noexcept { return src_.local->dim(); }
    [[nodiscard]] std::size_t table_rows() const noexcept { return src_.partition->rows(); }
    [[nodiscard]] const exchange_stats& stats() const noexcept { return stats_; }

private:
    enum class phase { idle, counts, ids, rows, done };

    void check_plan_rows() const {
        const lookup_plan& p = plan_;
        ::engram::detail::check_plan_index(p, "dist exchange");
        if (!p.unique_rows.empty() &&
            (p.unique_rows.front() < 0 || static_cast<std::size_t>(p.unique_rows.back()) >= table_rows()))
            throw input_error("dist exchange: row id " +
                              std::to_string(p.unique_rows.front() < 0 ? p.unique_rows.front() : p.unique_rows.back()) +
                              " is outside the table's " + std::to_string(table_rows()) + " rows");
    }

    static std::vector<int> displacements(const std::vector<int>& counts, const char* what) {
        std::vector<int> d(counts.size());
        std::size_t total = 0;
        for (std::size_t k = 0; k < counts.size(); ++k) {
            d[k] = detail::mpi_count(total, what);
            total += static_cast<std::size_t>(counts[k]);
        }
        (void)detail::mpi_count(total, what);
        return d;
    }

    /// Counts arrived: every rank learns of refused input, or posts the ids.
    void after_counts() {
        const std::size_t P = comm_->usize(), me = comm_->urank();
        int first_refused = -1;
        for (std::size_t k = 0; k < P && first_refused < 0; ++k)
            if (recv_counts_[k] == refused) first_refused = static_cast<int>(k);
        // Every rank got the refusal from the same ranks: share the lowest one's error.
        if (first_refused >= 0) detail::share_failure(*comm_, first_refused, failure_, "dist exchange");
        sc_.resize(P);
        rc_.resize(P);
        for (std::size_t k = 0; k < P; ++k) {
            sc_[k] = detail::mpi_count(static_cast<std::size_t>(send_counts_[k]), "row ids");
            rc_[k] = detail::mpi_count(static_cast<std::size_t>(recv_counts_[k]), "row ids");
        }
        sd_ = displacements(sc_, "row ids");
        rd_ = displacements(rc_, "row ids");
        buf_.asked.resize(static_cast<std::size_t>(rd_.back()) + static_cast<std::size_t>(rc_.back()));
        stats_.bytes_sent += (P - 1) * sizeof(std::uint64_t);
        stats_.bytes_received += (P - 1) * sizeof(std::uint64_t);
        for (std::size_t k = 0; k < P; ++k) {
            if (k == me) continue;
            stats_.remote_rows += send_counts_[k];
            stats_.bytes_sent += send_counts_[k] * sizeof(row_id);
            stats_.bytes_received += recv_counts_[k] * sizeof(row_id);
        }
        phase_ = phase::ids;
        static_assert(sizeof(row_id) == 8);
        detail::check(MPI_Ialltoallv(plan_.unique_rows.data(), sc_.data(), sd_.data(), MPI_INT64_T, buf_.asked.data(),
                                     rc_.data(), rd_.data(), MPI_INT64_T, comm_->native(), &request_),
                      "MPI_Ialltoallv");
    }

    /// The ids asked of this rank arrived: pack those rows as stored, post them back.
    void after_ids() {
        const std::size_t P = comm_->usize(), me = comm_->urank();
        const std::size_t wb = wire::row_bytes(*src_.local);
        const std::size_t lo = src_.partition->first_row(me), hi = lo + src_.partition->rows_of(me);
        const std::vector<row_id>& asked = buf_.asked;
        std::vector<row_id>& local = buf_.local;
        local.resize(asked.size());
        for (std::size_t i = 0; i < asked.size(); ++i) {
            const auto r = asked[i];
            if (r < 0 || static_cast<std::size_t>(r) < lo || static_cast<std::size_t>(r) >= hi)
                throw mpi_error("dist exchange: rank " + std::to_string(me) + " was asked for row " +
                                std::to_string(r) + ", outside its rows [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + ") (ranks disagree on the partition)");
            local[i] = r - static_cast<row_id>(src_.local_first_row);
        }
        buf_.out.resize(asked.size() * wb);
        for (std::size_t k = 0; k < P; ++k) {
            const auto n = static_cast<std::size_t>(rc_[k]), at = static_cast<std::size_t>(rd_[k]);
            if (n != 0)
                wire::pack(*src_.local, std::span<const row_id>(local).subspan(at, n), buf_.out.data() + at * wb);
            if (k != me) {
                stats_.rows_served += n;
                stats_.bytes_sent += n * wb;
            }
        }
        for (std::size_t k = 0; k < P; ++k)
            if (k != me) stats_.bytes_received += static_cast<std::size_t>(sc_[k]) * wb;
        std::vector<int> bsc(P), brc(P);
        for (std::size_t k = 0; k < P; ++k) {
            bsc[k] = detail::mpi_count(static_cast<std::size_t>(rc_[k]) * wb, "row bytes");
            brc[k] = detail::mpi_count(static_cast<std::size_t>(sc_[k]) * wb, "row bytes");
        }
        bsd_ = displacements(bsc, "row bytes");
        brd_ = displacements(brc, "row bytes");
        bsc_ = std::move(bsc);
        brc_ = std::move(brc);
        buf_.in.resize(plan_.unique_rows.size() * wb);
        phase_ = phase::rows;
        detail::check(MPI_Ialltoallv(buf_.out.data(), bsc_.data(), bsd_.data(), MPI_BYTE, buf_.in.data(), brc_.data(),
                                     brd_.data(), MPI_BYTE, comm_->native(), &request_),
                      "MPI_Ialltoallv");
    }

    /// The rows arrived, in the order of the distinct ids (owners are in rank order): decode
    /// each owner's part, then write the memory vector of every position.
    void after_rows() {
        const std::size_t P = comm_->usize(), dim = this->dim(), wb = wire::row_bytes(*src_.local);
        const std::size_t n = plan_.unique_rows.size();
        buf_.values.resize(::engram::detail::checked_mul(n, dim, "dist staging"));
        buf_.memory.resize(::engram::detail::checked_mul(plan_.positions(), dim, "dist memory"));
        for (std::size_t k = 0; k < P; ++k) {
            const auto count = static_cast<std::size_t>(sc_[k]), at = static_cast<std::size_t>(sd_[k]);
            if (count != 0) wire::unpack(*src_.local, buf_.in.data() + at * wb, count, buf_.values.data() + at * dim);
        }
        for (std::size_t u = 0; u < n; ++u) {
            const float* row = buf_.values.data() + u * dim;
            for (std::size_t k = plan_.starts[u]; k < plan_.starts[u + 1]; ++k)
                std::memcpy(buf_.memory.data() + plan_.order[k] * dim, row, dim * sizeof(float));
        }
        stats_.exchanges = 1;
        stats_.positions = plan_.positions();
        stats_.unique_rows = n;
        if (src_.totals != nullptr) *src_.totals += stats_;
        phase_ = phase::done;
    }

    const communicator* comm_;
    exchange_source<Local> src_;
    phase phase_ = phase::idle;
    MPI_Request request_ = MPI_REQUEST_NULL;
    lookup_plan plan_;
    std::optional<detail::local_failure> failure_;
    std::exception_ptr error_;
    std::vector<std::uint64_t> send_counts_, recv_counts_;
    std::vector<int> sc_, sd_, rc_, rd_, bsc_, bsd_, brc_, brd_;
    exchange_buffers buf_;
    exchange_stats stats_;
};

/// @brief A row exchange in flight: the distinct rows of a plan, fetched from the ranks that own
///        them. Models `fetched_batch`, so `engram::forward(layer, ticket, hidden, out)` runs the
///        layer on it. Move-only.
///
/// The exchange advances only inside calls on this rank: `progress()` (never blocks; call it
/// between pieces of other work so that this rank serves the rows others asked of it), `ready()`,
/// `wait()` and everything that reads the result (which wait). A ticket destroyed before it
/// finished completes its exchange first (other ranks wait for this rank's rows), dropping errors.
/// The table must outlive the ticket; all of it runs on the table's thread.
template <class Local>
class exchange_ticket {
public:
    exchange_ticket() = default;
    explicit exchange_ticket(std::shared_ptr<exchange_state<Local>> st) noexcept : st_(std::move(st)) {}

    [[nodiscard]] bool valid() const noexcept { return st_ != nullptr; }
    /// Advances without blocking; true when the exchange is over (then `wait()` returns at once).
    bool progress() const { return state("progress").advance(false); }
    /// Whether the exchange is over (advances it first, without blocking).
    [[nodiscard]] bool ready() const { return progress(); }
    /// Completes the exchange. @throws the exchange's error (the same on every rank for refused
    ///         input, e.g. a row outside the table on any rank).
    void wait() const {
        auto& s = state("wait");
        s.advance(true);
        s.rethrow();
    }
    [[nodiscard]] const lookup_plan& plan() const {
        wait();
        return st_->plan();
    }
    [[nodiscard]] std::span<const row_id> rows() const { return plan().unique_rows; }
    /// The distinct rows decoded, `[unique rows, dim]` in the order of `rows()`. Waits first.
    [[nodiscard]] std::span<const float> staged() const {
        wait();
        return st_->staged();
    }
    /// The memory vectors e `[B*T, heads*dim]` of the plan. Waits first.
    [[nodiscard]] std::span<const float> memory() const {
        wait();
        return st_->memory();
    }
    [[nodiscard]] std::size_t dim() const { return state("dim").dim(); }
    [[nodiscard]] std::size_t table_rows() const { return state("table_rows").table_rows(); }
    /// This exchange's traffic (complete once it is over).
    [[nodiscard]] exchange_stats stats() const { return state("stats").stats(); }

    /// @brief Throws input_error unless `plan` has the row ids of the ticket's plan. Waits first.
    void check_plan(const lookup_plan& plan, const char* what) const {
        ::engram::detail::check_same_plan(plan, this->plan(), what);
    }

private:
    exchange_state<Local>& state(const char* what) const {
        if (st_ == nullptr) throw input_error(std::string("exchange_ticket::") + what + ": empty ticket");
        return *st_;
    }

    std::shared_ptr<exchange_state<Local>> st_;
};

} // namespace dist

ENGRAM_END_NAMESPACE
