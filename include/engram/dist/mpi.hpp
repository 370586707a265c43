#pragma once
// SPDX-License-Identifier: MIT
// The MPI layer of engram's distributed storage: a communicator whose errors come back as
// exceptions (never a silent abort), checked calls, and the collective agreement on errors that
// keeps every rank in step (one rank's failure is every rank's failure, never a hang).

#include <engram/config.hpp>
#include <engram/error.hpp>

#include <mpi.h>

#include <cstddef>  // for size_t, byte
#include <cstdint>  // for uint64_t
#include <cstdlib>  // for abort
#include <limits>   // for numeric_limits
#include <optional> // for optional
#include <span>     // for span
#include <string>   // for string, to_string
#include <utility>  // for exchange
#include <vector>   // for vector

ENGRAM_BEGIN_NAMESPACE

namespace dist {

/// @brief An MPI call failed (its error string is in the message), or a collective found that
///        another rank failed (the message is that rank's).
class mpi_error : public engram::error {
public:
    using engram::error::error;
};

namespace detail {

/// Throws mpi_error naming the call and MPI's text for `rc` unless it is MPI_SUCCESS.
inline void check(int rc, const char* call) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {};
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
    throw mpi_error(std::string(call) + " failed: " +
                    (len > 0 ? std::string(text, static_cast<std::size_t>(len)) : "MPI error " + std::to_string(rc)));
}

/// `n` as an MPI count (int), or config_error naming what is too large for one exchange.
inline int mpi_count(std::size_t n, const char* what) {
    if (n > static_cast<std::size_t>(std::numeric_limits<int>::max()))
        throw config_error(std::string("dist: ") + what + " of " + std::to_string(n) +
                           " elements exceeds MPI's int counts in one exchange (split the batch)");
    return static_cast<int>(n);
}

} // namespace detail

/// @brief Whether MPI is initialised and not yet finalised.
inline bool mpi_running() noexcept {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init != 0 && fin == 0;
}

/// @brief Initialises MPI (if nobody did) for the life of the object, and finalises it at the end
///        if it initialised it. engram calls MPI from one thread per rank: MPI_THREAD_FUNNELED
///        is enough.
class mpi_session {
public:
    mpi_session(int* argc, char*** argv) {
        int init = 0;
        detail::check(MPI_Initialized(&init), "MPI_Initialized");
        if (init != 0) return;
        int provided = 0;
        detail::check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        owner_ = true;
        // MPI_COMM_WORLD's own errors come back too (MPI_Abort is then the caller's choice).
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
    mpi_session() : mpi_session(nullptr, nullptr) {}
    mpi_session(const mpi_session&) = delete;
    mpi_session& operator=(const mpi_session&) = delete;
    ~mpi_session() {
        if (owner_ && mpi_running()) MPI_Finalize();
    }

private:
    bool owner_ = false;
};

/// @brief A duplicate of an MPI communicator, owned (freed at the end), with the error handler
///        set to return: every failing MPI call becomes an `mpi_error`, so that the CLI (or any
///        caller) can report it and call `abort()` rather than MPI killing the job silently.
///
/// Every member that communicates is collective over the communicator unless said otherwise:
/// every rank calls it, in the same order, from one thread.
class communicator {
public:
    communicator() = default;
    /// @brief Duplicates `comm` (collective). @throws mpi_error if MPI is not running or fails.
    explicit communicator(MPI_Comm comm) {
        if (!mpi_running()) throw mpi_error("dist: MPI is not initialised (create an engram::dist::mpi_session first)");
        detail::check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        detail::check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        detail::check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    }
    communicator(const communicator&) = delete;
    communicator& operator=(const communicator&) = delete;
    communicator(communicator&& o) noexcept
        : comm_(std::exchange(o.comm_, MPI_COMM_NULL)), rank_(o.rank_), size_(o.size_) {}
    communicator& operator=(communicator&& o) noexcept {
        if (this != &o) {
            release();
            comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
            rank_ = o.rank_;
            size_ = o.size_;
        }
        return *this;
    }
    ~communicator() { release(); }

    /// A further duplicate (collective): a separate matching space for independent exchanges.
    [[nodiscard]] communicator dup() const { return communicator(comm_); }

    [[nodiscard]] MPI_Comm native() const noexcept { return comm_; }
    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return size_; }
    [[nodiscard]] std::size_t urank() const noexcept { return static_cast<std::size_t>(rank_); }
    [[nodiscard]] std::size_t usize() const noexcept { return static_cast<std::size_t>(size_); }

    /// @brief Ends the whole job (every rank of the communicator's job) with `code`. For a failure
    ///        that only this rank saw, after it has been reported: the others would otherwise
    ///        wait in their next collective for ever.
    [[noreturn]] void abort(int code) const noexcept {
        MPI_Abort(comm_ == MPI_COMM_NULL ? MPI_COMM_WORLD : comm_, code);
        std::abort(); // MPI_Abort does not return; this keeps [[noreturn]] honest
    }

    /// @brief `text` of rank `root` on every rank (collective).
    [[nodiscard]] std::string broadcast_text(const std::string& text, int root) const {
        std::uint64_t n = text.size();
        detail::check(MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm_), "MPI_Bcast");
        std::string out = rank_ == root ? text : std::string(static_cast<std::size_t>(n), '\0');
        if (n > 0)
            detail::check(MPI_Bcast(out.data(), detail::mpi_count(out.size(), "error text"), MPI_CHAR, root, comm_),
                          "MPI_Bcast");
        return out;
    }

    /// @brief Every rank's `value` (collective): `size()` values in rank order.
    [[nodiscard]] std::vector<std::uint64_t> allgather(std::uint64_t value) const {
        std::vector<std::uint64_t> all(usize());
        detail::check(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_), "MPI_Allgather");
        return all;
    }

    /// @brief The sum of `value` over the ranks (collective).
    [[nodiscard]] std::uint64_t sum(std::uint64_t value) const {
        std::uint64_t total = 0;
        detail::check(MPI_Allreduce(&value, &total, 1, MPI_UINT64_T, MPI_SUM, comm_), "MPI_Allreduce");
        return total;
    }

    /// @brief The largest `value` over the ranks (collective).
    [[nodiscard]] double max(double value) const {
        double out = 0;
        detail::check(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_MAX, comm_), "MPI_Allreduce");
        return out;
    }

    /// @brief Waits until every rank arrives (collective).
    void barrier() const { detail::check(MPI_Barrier(comm_), "MPI_Barrier"); }

    /// @brief The concatenation, in rank order, of every rank's `part` on rank `root` (collective;
    ///        other ranks get an empty vector). Parts may differ in length.
    template <class T>
    [[nodiscard]] std::vector<T> gather_to(int root, std::span<const T> part) const {
        const std::uint64_t bytes = part.size_bytes();
        std::vector<std::uint64_t> sizes(rank_ == root ? usize() : 0);
        detail::check(MPI_Gather(&bytes, 1, MPI_UINT64_T, sizes.data(), 1, MPI_UINT64_T, root, comm_), "MPI_Gather");
        std::vector<int> counts, displs;
        std::size_t total = 0;
        if (rank_ == root) {
            for (std::uint64_t s : sizes) {
                displs.push_back(detail::mpi_count(total, "gathered bytes"));
                counts.push_back(detail::mpi_count(static_cast<std::size_t>(s), "gathered bytes"));
                total += static_cast<std::size_t>(s);
            }
            (void)detail::mpi_count(total, "gathered bytes");
        }
        std::vector<T> out(rank_ == root ? total / sizeof(T) : 0);
        detail::check(MPI_Gatherv(part.data(), detail::mpi_count(part.size_bytes(), "gathered bytes"), MPI_BYTE,
                                  out.data(), counts.data(), displs.data(), MPI_BYTE, root, comm_),
                      "MPI_Gatherv");
        return out;
    }

private:
    void release() noexcept {
        if (comm_ != MPI_COMM_NULL && mpi_running()) MPI_Comm_free(&comm_);
        comm_ = MPI_COMM_NULL;
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
};

} // namespace dist

ENGRAM_END_NAMESPACE
