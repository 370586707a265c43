#pragma once
// SPDX-License-Identifier: MIT
// Deterministic prefetch: row ids depend only on tokens, so a batch's rows can be fetched on I/O
// threads while the host model computes. plan (no I/O) -> prefetch (background) -> forward.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/ngram/decode_state.hpp>
#include <engram/storage/codec.hpp>
#include <engram/types.hpp>

#include <algorithm>          // for sort, equal
#include <atomic>             // for atomic
#include <condition_variable> // for condition_variable
#include <cstddef>            // for byte, size_t
#include <cstdint>            // for uint8_t, uint64_t
#include <cstring>            // for memcpy
#include <deque>              // for deque
#include <exception>          // for exception_ptr, current_exception, rethrow_exception
#include <functional>         // for function
#include <memory>             // for shared_ptr, make_shared, unique_ptr, make_unique_for_overwrite
#include <mutex>              // for mutex, lock_guard, unique_lock
#include <span>               // for span
#include <string>             // for to_string
#include <thread>             // for thread
#include <type_traits>        // for is_same_v
#include <utility>            // for move, pair, exchange
#include <vector>             // for vector

ENGRAM_BEGIN_NAMESPACE

// ---- plan -----------------------------------------------------------------------------------

/// @brief What one batch reads: the row ids of every (token, head) position and the distinct
///        rows among them. Made without I/O (`make_plan`, `make_decode_plan`).
///
/// `unique_rows[slot[i]] == row_ids[i]` for every position i; `unique_rows` is ascending and
/// distinct (file order: neighbours can be merged into one read). The inverse index lists the
/// positions of each distinct row: those of `unique_rows[u]` are `order[starts[u] .. starts[u+1])`
/// (so a fetch that owns some rows can also write their memory vectors).
struct lookup_plan {
    std::size_t batch = 0;           ///< B (sequences)
    std::size_t seq_len = 0;         ///< T (tokens per sequence; 1 for a decode step)
    std::size_t heads = 0;           ///< rows per token
    std::vector<row_id> row_ids;     ///< [B, T, heads]
    std::vector<row_id> unique_rows; ///< ascending, distinct
    std::vector<std::size_t> slot;   ///< [B, T, heads]: index into unique_rows
    std::vector<std::size_t> order;  ///< positions sorted by row (then position)
    std::vector<std::size_t> starts; ///< [unique + 1]: where each row's positions start in order

    [[nodiscard]] std::size_t tokens() const noexcept { return batch * seq_len; }
    [[nodiscard]] std::size_t positions() const noexcept { return row_ids.size(); }
};

/// @brief The plan of row ids `[B, T, heads]` computed elsewhere: sorts and deduplicates them.
/// @throws input_error if `row_ids.size() != B * T * heads` or `heads == 0`.
inline lookup_plan make_plan(std::vector<row_id> row_ids, std::size_t batch, std::size_t seq_len, std::size_t heads) {
    if (heads == 0) throw input_error("make_plan: heads must be positive");
    const std::size_t expected =
        detail::checked_mul(detail::checked_mul(batch, seq_len, "make_plan [B, T]"), heads, "make_plan [B, T, heads]");
    if (row_ids.size() != expected)
        throw input_error("make_plan: " + std::to_string(row_ids.size()) +
                          " row ids, expected B*T*heads = " + std::to_string(expected));
    lookup_plan plan;
    plan.batch = batch;
    plan.seq_len = seq_len;
    plan.heads = heads;
    const std::size_t n = row_ids.size();
    plan.slot.resize(n);
    plan.order.resize(n);
    plan.unique_rows.reserve(n);
    plan.starts.reserve(n + 1);
    const auto visit = [&plan](std::size_t k, row_id row, std::size_t pos) {
        if (k == 0 || row != plan.unique_rows.back()) {
            plan.unique_rows.push_back(row);
            plan.starts.push_back(k);
        }
        plan.order[k] = pos;
        plan.slot[pos] = plan.unique_rows.size() - 1;
    };
    // Sort (row, position) pairs; when both fit, packed into one integer (a plain integer sort is
    // about twice as fast as a pair sort).
    constexpr unsigned pos_bits = 16;
    bool packable = n <= (std::size_t{1} << pos_bits);
    for (std::size_t i = 0; i < n && packable; ++i)
        packable = row_ids[i] >= 0 && static_cast<std::uint64_t>(row_ids[i]) < (std::uint64_t{1} << (64 - pos_bits));
    if (packable) {
        std::vector<std::uint64_t> keys(n);
        for (std::size_t i = 0; i < n; ++i) keys[i] = (static_cast<std::uint64_t>(row_ids[i]) << pos_bits) | i;
        std::sort(keys.begin(), keys.end());
        for (std::size_t k = 0; k < n; ++k)
            visit(k, static_cast<row_id>(keys[k] >> pos_bits),
                  static_cast<std::size_t>(keys[k] & ((std::uint64_t{1} << pos_bits) - 1)));
    } else {
        std::vector<std::pair<row_id, std::size_t>> sorted(n);
        for (std::size_t i = 0; i < n; ++i) sorted[i] = {row_ids[i], i};
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t k = 0; k < n; ++k) visit(k, sorted[k].first, sorted[k].second);
    }
    plan.starts.push_back(n);
    plan.row_ids = std::move(row_ids);
    return plan;
}

/// @brief As above, copying the row ids.
inline lookup_plan make_plan(std::span<const row_id> row_ids, std::size_t batch, std::size_t seq_len,
                             std::size_t heads) {
    return make_plan(std::vector<row_id>(row_ids.begin(), row_ids.end()), batch, seq_len, heads);
}

namespace detail {

/// Throws input_error unless the plan's index (slots, order, starts) has the sizes make_plan gives.
inline void check_plan_index(const lookup_plan& plan, const char* what) {
    if (plan.starts.size() != plan.unique_rows.size() + 1 || plan.order.size() != plan.positions() ||
        plan.slot.size() != plan.positions())
        throw input_error(std::string(what) + ": the plan's index is incomplete (make it with make_plan)");
}

/// Throws input_error unless `plan` is `mine` or has its shape and row ids (a ticket's check).
inline void check_same_plan(const lookup_plan& plan, const lookup_plan& mine, const char* what) {
    if (&plan != &mine && (plan.batch != mine.batch || plan.seq_len != mine.seq_len || plan.heads != mine.heads ||
                           plan.row_ids != mine.row_ids))
        throw input_error(std::string(what) + ": the plan (" + std::to_string(plan.positions()) +
                          " positions) is not the one this ticket was fetched for (" +
                          std::to_string(mine.positions()) + " positions)");
}

/// The plan of the row ids `[B, T, heads]` that `fill` writes.
template <class Fill>
lookup_plan plan_of_rows(std::size_t heads, std::size_t batch, std::size_t seq_len, Fill&& fill) {
    std::vector<row_id> ids(checked_mul(checked_mul(batch, seq_len, "make_plan [B, T]"), heads, "make_plan rows"));
    fill(std::span<row_id>(ids));
    return make_plan(std::move(ids), batch, seq_len, heads);
}

} // namespace detail

/// @brief The plan of a layer on raw token ids `[B, T]`: `layer.rows` (hashing only, no I/O),
///        then deduplication.
/// @throws input_error for token ids outside the vocabulary or a wrong size.
template <class Layer>
requires requires(const Layer& l, std::span<const token_id> raw, std::span<row_id> out) {
    { l.num_heads() } -> std::convertible_to<std::size_t>;
    l.rows(raw, std::size_t{}, std::size_t{}, out);
}
lookup_plan make_plan(const Layer& layer, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len) {
    return detail::plan_of_rows(layer.num_heads(), batch, seq_len,
                                [&](std::span<row_id> ids) { layer.rows(raw, batch, seq_len, ids); });
}

/// @brief As above with the forward's token mask (DeepSeek-V4.1: a 0 also marks the position
///        dead for the hash; see `layer::rows`).
template <class Layer>
requires requires(const Layer& l, std::span<const token_id> raw, std::span<row_id> out,
                  std::span<const std::uint8_t> mask) {
    { l.num_heads() } -> std::convertible_to<std::size_t>;
    l.rows(raw, std::size_t{}, std::size_t{}, out, mask);
}
lookup_plan make_plan(const Layer& layer, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                      std::span<const std::uint8_t> token_mask) {
    return detail::plan_of_rows(layer.num_heads(), batch, seq_len,
                                [&](std::span<row_id> ids) { layer.rows(raw, batch, seq_len, ids, token_mask); });
}

namespace detail {

/// Row ids of each state's next token, computed on a fork: the states do not change.
template <class Get>
lookup_plan decode_plan(std::size_t n, Get&& state_of, std::span<const token_id> next_tokens) {
    if (next_tokens.size() != n)
        throw input_error("make_decode_plan: " + std::to_string(next_tokens.size()) + " next tokens for " +
                          std::to_string(n) + " sequences");
    if (n == 0) throw input_error("make_decode_plan: no sequences");
    const std::size_t heads = state_of(0).num_heads();
    std::vector<row_id> ids(checked_mul(n, heads, "make_decode_plan rows"));
    for (std::size_t b = 0; b < n; ++b) {
        const auto& state = state_of(b);
        if (state.num_heads() != heads)
            throw input_error("make_decode_plan: sequence " + std::to_string(b) + " has " +
                              std::to_string(state.num_heads()) + " heads, sequence 0 has " + std::to_string(heads));
        auto probe = state.fork(); // the push below validates the token and leaves `state` alone
        probe.push(next_tokens[b], std::span<row_id>(ids).subspan(b * heads, heads));
    }
    return make_plan(std::move(ids), n, 1, heads);
}

} // namespace detail

/// @brief The plan of one decode step: the rows that `decode_step(states[b], next_tokens[b], ...)`
///        will read, for every sequence b, as a `[n, 1, heads]` batch. The states are not
///        modified (each is forked), so the fetch of step t+1 can start as soon as its tokens
///        are sampled.
/// @throws input_error if the sizes differ or a token is outside the vocabulary.
template <class Layer>
requires requires { typename Layer::decode_state; }
lookup_plan make_decode_plan(const Layer& layer, std::span<const typename Layer::decode_state> states,
                             std::span<const token_id> next_tokens) {
    (void)layer;
    return detail::decode_plan(
        states.size(), [&](std::size_t b) -> const auto& { return states[b].ngram(); }, next_tokens);
}

/// @brief As above, for states held by pointer.
template <class Layer>
requires requires { typename Layer::decode_state; }
lookup_plan make_decode_plan(const Layer& layer, std::span<const typename Layer::decode_state* const> states,
                             std::span<const token_id> next_tokens) {
    (void)layer;
    return detail::decode_plan(
        states.size(), [&](std::size_t b) -> const auto& { return states[b]->ngram(); }, next_tokens);
}

/// @brief As above, for bare n-gram states (a host that keeps its own `ngram_state` per sequence).
template <hash_family Family, order_set Orders>
lookup_plan make_decode_plan(std::span<const ngram_state<Family, Orders>> states,
                             std::span<const token_id> next_tokens) {
    return detail::decode_plan(
        states.size(), [&](std::size_t b) -> const auto& { return states[b]; }, next_tokens);
}

template <hash_family Family, order_set Orders, class Alloc>
lookup_plan make_decode_plan(const std::vector<ngram_state<Family, Orders>, Alloc>& states,
                             std::span<const token_id> next_tokens) {
    return make_decode_plan(std::span<const ngram_state<Family, Orders>>(states), next_tokens);
}

// ---- I/O pool -------------------------------------------------------------------------------

/// @brief A fixed set of worker threads running submitted tasks in order of submission.
///
/// Meant for I/O (blocking `pread`s): more threads than cores is fine, each blocked read is one
/// request in flight. The destructor runs every task still queued, then joins all threads (no
/// thread outlives the pool, none is detached). Tasks must not throw (an escaping exception is
/// swallowed; the prefetcher's tasks catch and report their own).
class io_pool {
public:
    /// @throws config_error if `threads == 0`; std::system_error if a thread cannot start
    ///         (threads already started are joined first).
    explicit io_pool(std::size_t threads) {
        if (threads == 0) throw config_error("io_pool: needs at least one thread");
        threads_.reserve(threads);
        try {
            for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
        } catch (...) {
            shut_down();
            throw;
        }
    }
    io_pool(const io_pool&) = delete;
    io_pool& operator=(const io_pool&) = delete;
    ~io_pool() { shut_down(); }

    [[nodiscard]] std::size_t size() const noexcept { return threads_.size(); }

    /// Queues one task.
    void submit(std::function<void()> task) {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            queue_.push_back(std::move(task));
        }
        cv_.notify_one();
    }

    /// Queues several tasks under one lock: all of them, or (if memory runs out) none.
    void submit(std::vector<std::function<void()>> tasks) {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            const std::size_t before = queue_.size();
            try {
                for (auto& t : tasks) queue_.push_back(std::move(t));
            } catch (...) {
                while (queue_.size() > before) queue_.pop_back();
                throw;
            }
        }
        if (tasks.size() == 1)
            cv_.notify_one();
        else
            cv_.notify_all();
    }

private:
    void run() noexcept {
        for (;;) {
            std::function<void()> task;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
                if (queue_.empty()) return; // stop_ and nothing left
                task = std::move(queue_.front());
                queue_.pop_front();
            }
            try {
                task();
            } catch (...) { // NOLINT(bugprone-empty-catch): tasks report their own errors
            }
        }
    }

    void shut_down() noexcept {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_)
            if (t.joinable()) t.join();
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> queue_;
    bool stop_ = false;
    std::vector<std::thread> threads_;
};

// ---- ticket ---------------------------------------------------------------------------------

template <storage_table Table>
class prefetcher;

/// @brief A fetch in progress: the distinct rows of a plan, decoded to float into a staging
///        buffer `[unique rows, dim]`, and the plan's memory vectors e `[B*T, heads*dim]` built
///        from them, both by the I/O threads.
///
/// Move-only. `wait()` blocks until every part of the fetch is done and rethrows the first
/// exception a worker hit (a row id outside the table, a truncated file, a refused read, a token
/// outside the vocabulary when the pool made the plan); it can be called again (it rethrows
/// again). Everything that reads the result waits first. Destroying or assigning over a ticket
/// that was not waited for waits (errors are then dropped): no worker ever writes into freed
/// memory. The table (and the layer, for `prefetch_tokens`) must outlive the ticket.
class prefetch_ticket {
public:
    prefetch_ticket() = default;
    prefetch_ticket(prefetch_ticket&& o) noexcept : st_(std::move(o.st_)) {}
    prefetch_ticket& operator=(prefetch_ticket&& o) noexcept {
        if (this != &o) {
            settle();
            st_ = std::move(o.st_);
        }
        return *this;
    }
    prefetch_ticket(const prefetch_ticket&) = delete;
    prefetch_ticket& operator=(const prefetch_ticket&) = delete;
    ~prefetch_ticket() { settle(); }

    /// False for a default-constructed or moved-from ticket.
    [[nodiscard]] bool valid() const noexcept { return st_ != nullptr; }

    /// Whether the fetch has finished (successfully or not); never blocks on I/O.
    [[nodiscard]] bool ready() const {
        check_valid("ready");
        const std::lock_guard<std::mutex> lock(st_->mutex);
        return st_->pending == 0;
    }

    /// @brief Blocks until the fetch is done. @throws the first error of a worker.
    void wait() const {
        check_valid("wait");
        std::unique_lock<std::mutex> lock(st_->mutex);
        st_->cv.wait(lock, [this] { return st_->pending == 0; });
        if (st_->error) std::rethrow_exception(st_->error);
    }

    /// Values per row.
    [[nodiscard]] std::size_t dim() const {
        check_valid("dim");
        return st_->dim;
    }
    /// Rows of the table that was read (for shape checks).
    [[nodiscard]] std::size_t table_rows() const {
        check_valid("table_rows");
        return st_->table_rows;
    }
    /// @brief The plan that was fetched (made by the pool for `prefetch_rows` / `prefetch_tokens`).
    ///        Waits first.
    [[nodiscard]] const lookup_plan& plan() const {
        wait();
        return st_->plan;
    }
    /// @brief The distinct rows fetched, ascending (the plan's `unique_rows`). Waits first.
    [[nodiscard]] std::span<const row_id> rows() const { return plan().unique_rows; }

    /// @brief The staged rows `[unique rows, dim]`, in the order of `rows()`. Waits first.
    [[nodiscard]] std::span<const float> staged() const {
        wait();
        return {st_->values.get(), st_->plan.unique_rows.size() * st_->dim};
    }

    /// @brief The memory vectors e `[B*T, heads*dim]` of the ticket's plan, built by the I/O
    ///        threads (no copy). Waits first.
    [[nodiscard]] std::span<const float> memory() const {
        wait();
        return {st_->memory.get(), st_->plan.positions() * st_->dim};
    }

    /// @brief Copies the memory vectors of `plan` (the plan this ticket was made from) into e
    ///        `[B*T, heads*dim]`. Waits first.
    /// @throws input_error if `plan` is not the ticket's plan or `e` has the wrong size.
    void memory(const lookup_plan& plan, std::span<float> e) const {
        const std::span<const float> m = memory();
        check_plan(plan, "memory");
        if (e.size() != m.size())
            throw input_error("prefetch_ticket: e has " + std::to_string(e.size()) + " values, expected " +
                              std::to_string(plan.positions()) + " positions x " + std::to_string(st_->dim));
        std::copy(m.begin(), m.end(), e.begin());
    }

    /// @brief As above, into a new vector `[B*T, heads*dim]`.
    [[nodiscard]] std::vector<float> memory(const lookup_plan& plan) const {
        std::vector<float> e(plan.positions() * dim());
        memory(plan, e);
        return e;
    }

    /// @brief Throws input_error unless `plan` has the row ids of the ticket's plan. Waits first.
    void check_plan(const lookup_plan& plan, const char* what) const {
        detail::check_same_plan(plan, this->plan(), what);
    }

private:
    template <storage_table T>
    friend class prefetcher;

    struct state {
        std::mutex mutex;
        std::condition_variable cv;
        std::size_t pending = 0;
        std::exception_ptr error;
        lookup_plan plan;
        std::unique_ptr<float[]> values; ///< [unique, dim]
        std::unique_ptr<float[]> memory; ///< [positions, dim]
        std::size_t dim = 0, table_rows = 0;
        std::size_t grain = 1;              ///< rows a worker takes at a time
        std::atomic<std::size_t> cursor{0}; ///< the next unclaimed distinct row

        void add_pending(std::size_t n) {
            const std::lock_guard<std::mutex> lock(mutex);
            pending += n;
        }
        /// Called by each part of the fetch when it ends; the last one wakes the waiters.
        void finish(std::exception_ptr e, std::size_t parts = 1) noexcept {
            const std::lock_guard<std::mutex> lock(mutex);
            if (e && !error) error = std::move(e);
            pending -= parts;
            if (pending == 0) cv.notify_all();
        }
    };

    explicit prefetch_ticket(std::shared_ptr<state> st) noexcept : st_(std::move(st)) {}

    void check_valid(const char* what) const {
        if (st_ == nullptr) throw input_error(std::string("prefetch_ticket::") + what + ": empty ticket");
    }

    /// Waits without throwing (destructor, assignment).
    void settle() noexcept {
        if (st_ == nullptr) return;
        std::unique_lock<std::mutex> lock(st_->mutex);
        st_->cv.wait(lock, [this] { return st_->pending == 0; });
    }

    std::shared_ptr<state> st_;
};

/// @brief Copies the memory vectors e `[B*T, heads*dim]` of `plan` out of a ticket (waits
///        first); see `prefetch_ticket::memory`.
inline void assemble(const lookup_plan& plan, const prefetch_ticket& ticket, std::span<float> e) {
    ticket.memory(plan, e);
}

// ---- prefetcher -----------------------------------------------------------------------------

/// @brief A table that also serves raw row bytes in batches (`file_table`): the prefetcher reads
///        through `read_rows` (merged requests, one batch per worker) instead of `gather`.
template <class T>
concept row_reader = storage_table<T> && requires(const T& t, std::span<const row_id> ids, std::span<std::byte> dst) {
    { t.row_bytes() } -> std::convertible_to<std::size_t>;
    t.read_rows(ids, dst);
};

/// How a prefetcher splits a batch across its pool.
///
/// A fetch runs on at most `pool.size()` threads; each takes the next *grain* of the sorted
/// distinct rows (an atomic cursor) until none is left, so a thread held up by a slow read does
/// not hold up rows another thread could read.
struct prefetch_options {
    /// Grains per pool thread: the rows are cut into about `pool.size() * grains_per_thread`
    /// grains. 0 picks 32 for `row_reader` tables (fine grains: the slowest thread finishes at
    /// most a few reads after the others) and 4 for in-memory tables.
    std::size_t grains_per_thread = 0;
    /// Fewest rows per grain; 0 picks 1 for `row_reader` tables and 256 for in-memory tables
    /// (where a thread costs more than a few rows).
    std::size_t min_rows_per_grain = 0;
};

/// @brief Starts fetches of a plan's distinct rows from `Table` on an `io_pool`.
///
/// `prefetch(plan)` returns at once; up to `pool.size()` tasks take grains (runs of the sorted
/// distinct rows) until none is left (see `prefetch_options`). A `row_reader` table (a
/// `file_table`) reads a grain with one `read_rows` call (neighbouring rows merged; with N pool
/// threads, up to N reads in flight) and decodes it; others `gather` it. The task then writes
/// the memory vectors of the positions that use those rows, so the caller's thread only waits.
/// `prefetch_rows` and `prefetch_tokens` also leave the plan (sorting, and hashing) to the pool:
/// the caller's thread then does no more than copy its inputs. The table and the pool must
/// outlive the prefetcher and every ticket; a prefetcher is cheap, and `prefetch` may be called
/// from several threads at once.
template <storage_table Table>
class prefetcher {
public:
    using table_type = Table;
    using codec_type = typename Table::codec_type;

    prefetcher(const Table& table, io_pool& pool, prefetch_options options = {}) noexcept
        : table_(&table), pool_(&pool), options_(options) {}

    [[nodiscard]] const Table& table() const noexcept { return *table_; }
    [[nodiscard]] io_pool& pool() const noexcept { return *pool_; }

    /// @brief Starts fetching `plan.unique_rows` (the ticket keeps a copy of the plan); never
    ///        blocks on I/O. Errors of the fetch (a row outside the table, a failed read)
    ///        surface from the ticket's `wait()`.
    [[nodiscard]] prefetch_ticket prefetch(const lookup_plan& plan) const { return prefetch(lookup_plan(plan)); }

    /// @brief As above, taking the plan over.
    [[nodiscard]] prefetch_ticket prefetch(lookup_plan&& plan) const {
        auto st = new_state();
        st->plan = std::move(plan);
        launch(*this, st);
        return prefetch_ticket(std::move(st));
    }

    /// @brief Row ids `[B, T, heads]` to fetch; the plan is made by the pool (see `make_plan`),
    ///        then the fetch starts there. A bad size surfaces from `wait()`.
    [[nodiscard]] prefetch_ticket prefetch_rows(std::vector<row_id> row_ids, std::size_t batch, std::size_t seq_len,
                                                std::size_t heads) const {
        return plan_on_pool([ids = std::move(row_ids), batch, seq_len, heads]() mutable {
            return make_plan(std::move(ids), batch, seq_len, heads);
        });
    }

    /// @brief Raw token ids `[B, T]` of `layer`: hashing and plan on the pool (see the layer
    ///        overload of `make_plan`), then the fetch. Bad tokens surface from `wait()`. The
    ///        layer must outlive the ticket.
    template <class Layer>
    requires requires(const Layer& l, std::span<const token_id> raw, std::span<row_id> out) {
        { l.num_heads() } -> std::convertible_to<std::size_t>;
        l.rows(raw, std::size_t{}, std::size_t{}, out);
    }
    [[nodiscard]] prefetch_ticket prefetch_tokens(const Layer& layer, std::span<const token_id> raw, std::size_t batch,
                                                  std::size_t seq_len) const {
        return plan_on_pool([l = &layer, tokens = std::vector<token_id>(raw.begin(), raw.end()), batch, seq_len] {
            return make_plan(*l, tokens, batch, seq_len);
        });
    }

private:
    using state = prefetch_ticket::state;

    [[nodiscard]] std::shared_ptr<state> new_state() const {
        auto st = std::make_shared<state>();
        st->dim = table_->dim();
        st->table_rows = table_->rows();
        return st;
    }

    /// One task makes the plan, then launches the fetch from the pool.
    template <class MakePlan>
    prefetch_ticket plan_on_pool(MakePlan&& make) const {
        auto st = new_state();
        st->pending = 1; // the planning task
        pool_->submit([st, self = *this, make = std::forward<MakePlan>(make)]() mutable {
            std::exception_ptr error;
            try {
                st->plan = make();
                launch(self, st);
            } catch (...) {
                error = std::current_exception();
            }
            st->finish(std::move(error));
        });
        return prefetch_ticket(std::move(st));
    }

    /// Allocates the buffers and queues the parts of the fetch (from any thread).
    static void launch(const prefetcher& self, const std::shared_ptr<state>& st) {
        const lookup_plan& plan = st->plan;
        const std::size_t n = plan.unique_rows.size(), dim = st->dim;
        detail::check_plan_index(plan, "prefetch");
        if (n == 0) return;
        st->values = std::make_unique_for_overwrite<float[]>(detail::checked_mul(n, dim, "prefetch staging"));
        st->memory =
            std::make_unique_for_overwrite<float[]>(detail::checked_mul(plan.positions(), dim, "prefetch memory"));

        constexpr bool reader = row_reader<Table>;
        const std::size_t threads = self.pool_->size();
        const std::size_t per_thread =
            self.options_.grains_per_thread ? self.options_.grains_per_thread : (reader ? 32 : 4);
        const std::size_t min_rows =
            self.options_.min_rows_per_grain ? self.options_.min_rows_per_grain : (reader ? 1 : 256);
        const std::size_t grain =
            std::max(min_rows, (n + threads * per_thread - 1) / std::max<std::size_t>(1, threads * per_thread));
        st->grain = grain;
        const std::size_t parts = std::max<std::size_t>(1, std::min(threads, (n + grain - 1) / grain));

        std::vector<std::function<void()>> tasks;
        tasks.reserve(parts);
        const Table* table = self.table_;
        for (std::size_t p = 0; p < parts; ++p) {
            tasks.emplace_back([st, table, n] {
                std::exception_ptr error;
                try {
                    for (;;) {
                        const std::size_t begin = st->cursor.fetch_add(st->grain, std::memory_order_relaxed);
                        if (begin >= n) break;
                        fetch_part(*table, *st, begin, std::min(n, begin + st->grain));
                    }
                } catch (...) {
                    error = std::current_exception();
                    st->cursor.store(n, std::memory_order_relaxed); // the others stop after their grain
                }
                st->finish(std::move(error));
            });
        }
        st->add_pending(parts);
        try {
            self.pool_->submit(std::move(tasks)); // all or nothing
        } catch (...) {
            st->finish(nullptr, parts);
            throw;
        }
    }

    /// Reads unique rows [begin, end), decodes them into the staging buffer and writes the memory
    /// vectors of every position that uses them.
    static void fetch_part(const Table& table, state& st, std::size_t begin, std::size_t end) {
        const lookup_plan& plan = st.plan;
        const std::span<const row_id> ids = std::span<const row_id>(plan.unique_rows).subspan(begin, end - begin);
        const std::size_t dim = st.dim;
        float* staged = st.values.get() + begin * dim;
        if constexpr (row_reader<Table>) {
            const std::size_t rb = table.row_bytes();
            if (std::is_same_v<codec_type, f32_codec> && rb == dim * sizeof(float)) {
                // f32 rows decode by copying: read them straight into the staging buffer.
                table.read_rows(ids, std::span<std::byte>(reinterpret_cast<std::byte*>(staged), ids.size() * rb));
            } else {
                std::vector<std::byte> bytes(ids.size() * rb);
                table.read_rows(ids, bytes);
                for (std::size_t i = 0; i < ids.size(); ++i)
                    codec_type::decode(bytes.data() + i * rb, staged + i * dim, dim);
            }
        } else {
            table.gather(ids, std::span<float>(staged, ids.size() * dim));
        }
        float* memory = st.memory.get();
        for (std::size_t u = begin; u < end; ++u) {
            const float* row = st.values.get() + u * dim;
            for (std::size_t k = plan.starts[u]; k < plan.starts[u + 1]; ++k)
                std::memcpy(memory + plan.order[k] * dim, row, dim * sizeof(float));
        }
    }

    const Table* table_;
    io_pool* pool_;
    prefetch_options options_;
};

// ---- forward ----------------------------------------------------------------------------------

/// @brief A batch whose rows are being fetched or were fetched: a `prefetch_ticket`, or the
///        ticket of another fetch (e.g. `dist::exchange_ticket`, rows from other MPI ranks).
///        `plan()` and `memory()` wait for the fetch; `memory()` is e `[B*T, heads*dim]` of
///        `plan()`; `check_plan(p, what)` throws input_error unless `p` has the ticket's row ids.
template <class T>
concept fetched_batch = requires(const T& t, const lookup_plan& p) {
    { t.plan() } -> std::convertible_to<const lookup_plan&>;
    { t.memory() } -> std::convertible_to<std::span<const float>>;
    { t.dim() } -> std::convertible_to<std::size_t>;
    { t.table_rows() } -> std::convertible_to<std::size_t>;
    t.check_plan(p, "");
};

static_assert(fetched_batch<prefetch_ticket>);

namespace detail {

template <class Layer, fetched_batch Ticket>
void check_prefetch(const Layer& layer, const Ticket& ticket, const lookup_plan& plan, const char* what) {
    if (plan.heads != layer.num_heads() || ticket.dim() * plan.heads != layer.memory_dim() ||
        ticket.table_rows() != static_cast<std::size_t>(layer.layout().total_rows))
        throw config_error(std::string(what) + ": the plan (" + std::to_string(plan.heads) + " heads) and the table (" +
                           std::to_string(ticket.table_rows()) + " x " + std::to_string(ticket.dim()) +
                           ") do not fit the layer (" + std::to_string(layer.num_heads()) + " heads, " +
                           std::to_string(layer.layout().total_rows) +
                           " rows, D = " + std::to_string(layer.memory_dim()) + ")");
}

} // namespace detail

/// @brief The layer on a prefetched batch: waits for the ticket (only if the fetch is not done)
///        and runs `layer.forward_memory` on the memory vectors the I/O threads built (no copy).
///        The output equals `layer.forward(table, raw, B, T, hidden, out, token_mask)` bit for bit.
/// @param hidden, out `[B, T, M, H]` of the ticket's plan.
/// @throws the fetch's error; config_error if the plan or table does not fit the layer;
///         input_error for wrong sizes.
template <class Layer, fetched_batch Ticket>
void forward(const Layer& layer, const Ticket& ticket, std::span<const float> hidden, std::span<float> out,
             std::span<const std::uint8_t> token_mask = {}) {
    const lookup_plan& plan = ticket.plan(); // waits
    detail::check_prefetch(layer, ticket, plan, "forward");
    layer.forward_memory(ticket.memory(), plan.batch, plan.seq_len, hidden, out, token_mask);
}

/// @brief As above, checking that `plan` is the ticket's plan (input_error otherwise).
template <class Layer, fetched_batch Ticket>
void forward(const Layer& layer, const Ticket& ticket, const lookup_plan& plan, std::span<const float> hidden,
             std::span<float> out, std::span<const std::uint8_t> token_mask = {}) {
    ticket.check_plan(plan, "forward"); // waits
    ::engram::forward(layer, ticket, hidden, out, token_mask);
}

/// @brief One decode step of `n` sequences on a prefetched decode plan, for fusions without a
///        convolution (the production fusion: `h + alpha v`, nothing but the n-gram context
///        carried between tokens). Checks that `states` still give the plan's rows for
///        `next_tokens`, runs the layer on the `[n, 1]` batch and then pushes each token into its
///        state. Same results as `layer.decode_step` per sequence, up to the rounding of one
///        GEMM over n tokens versus n single-token products.
///
/// The reference fusion's convolution history lives inside `layer::decode_state`, which only
/// `layer::decode_step` (reading the layer's own table) can advance; it is not offered here.
/// @param hidden, out `[n, M, H]`. @param keep optional `[n]`: 0 zeroes that token's gate.
/// @throws input_error if the states moved since the plan or sizes differ (states unchanged).
template <class Layer, fetched_batch Ticket, hash_family Family, order_set Orders>
void decode_forward(const Layer& layer, const Ticket& ticket, const lookup_plan& plan,
                    std::span<ngram_state<Family, Orders>> states, std::span<const token_id> next_tokens,
                    std::span<const float> hidden, std::span<float> out, std::span<const std::uint8_t> keep = {}) {
    static_assert(!Layer::fusion_type::has_conv,
                  "decode_forward: this fusion carries a convolution history in layer::decode_state; "
                  "use layer.decode_step");
    const std::size_t n = states.size();
    if (plan.seq_len != 1 || plan.batch != n || next_tokens.size() != n)
        throw input_error("decode_forward: a decode plan of " + std::to_string(plan.batch) + " x " +
                          std::to_string(plan.seq_len) + " tokens for " + std::to_string(n) + " states and " +
                          std::to_string(next_tokens.size()) + " tokens");
    std::vector<ngram_state<Family, Orders>> next;
    next.reserve(n);
    std::vector<row_id> rows(plan.heads);
    for (std::size_t b = 0; b < n; ++b) {
        next.push_back(states[b].fork());
        next.back().push(next_tokens[b], rows);
        if (!std::equal(rows.begin(), rows.end(), plan.row_ids.begin() + static_cast<std::ptrdiff_t>(b * plan.heads)))
            throw input_error("decode_forward: sequence " + std::to_string(b) +
                              " no longer gives the plan's rows (state or token changed since make_decode_plan)");
    }
    ::engram::forward(layer, ticket, plan, hidden, out, keep);
    for (std::size_t b = 0; b < n; ++b) states[b] = std::move(next[b]);
}

/// @brief One decode step of `n` sequences of a layer with any fusion (the reference fusion's
///        convolution history lives in `layer::decode_state`): waits for a ticket made from
///        `make_decode_plan(layer, states, next_tokens)` and runs `decode_step_memory` per sequence
///        on the prefetched memory vectors. hidden and out are `[n, M, H]`.
/// @throws input_error if a state or token no longer gives the plan's rows (that state unchanged).
template <class Layer, fetched_batch Ticket>
void decode_forward(const Layer& layer, const Ticket& ticket, const lookup_plan& plan,
                    std::span<typename Layer::decode_state> states, std::span<const token_id> next_tokens,
                    std::span<const float> hidden, std::span<float> out, std::span<const std::uint8_t> keep = {}) {
    const std::size_t n = states.size();
    const std::size_t width = static_cast<std::size_t>(layer.config().branches * layer.config().hidden);
    const std::size_t d = layer.memory_dim();
    if (plan.seq_len != 1 || plan.batch != n || next_tokens.size() != n || hidden.size() != n * width ||
        out.size() != n * width || (!keep.empty() && keep.size() != n))
        throw input_error("decode_forward: a decode plan of " + std::to_string(plan.batch) + " x " +
                          std::to_string(plan.seq_len) + " tokens for " + std::to_string(n) + " states, " +
                          std::to_string(next_tokens.size()) + " tokens and " + std::to_string(hidden.size()) +
                          " hidden values");
    const std::span<const float> e = ticket.memory();
    for (std::size_t b = 0; b < n; ++b)
        layer.decode_step_memory(states[b], next_tokens[b], e.subspan(b * d, d), hidden.subspan(b * width, width),
                                 out.subspan(b * width, width), keep.empty() || keep[b] != 0,
                                 std::span<const row_id>(plan.row_ids).subspan(b * plan.heads, plan.heads));
}

ENGRAM_END_NAMESPACE
