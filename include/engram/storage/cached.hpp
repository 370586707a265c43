#pragma once
// SPDX-License-Identifier: MIT
// A hot-row cache in front of a slow storage table (mmap on disk, a remote tier, ...): decoded
// float rows in a set-associative LRU cache of a fixed size in bytes, safe for concurrent readers.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/direct.hpp>
#include <engram/types.hpp>

#include <algorithm> // for min
#include <atomic>    // for atomic
#include <bit>       // for bit_floor
#include <cstddef>   // for size_t
#include <cstdint>   // for uint32_t, uint64_t
#include <cstring>   // for memcpy
#include <memory>    // for shared_ptr, unique_ptr, make_shared, make_unique
#include <mutex>     // for mutex, lock_guard
#include <span>      // for span
#include <string>    // for to_string
#include <utility>   // for move
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief A read cache of decoded rows in front of a slower `storage_table`.
///
/// **Ownership.** The cache shares ownership of the slow table through a
/// `std::shared_ptr<const Inner>`: the inner table lives as long as the longest of the cache
/// and its other owners. (To cache a table owned elsewhere, pass a `shared_ptr` with a no-op
/// deleter; that table must then outlive the cache.) The cache never writes to the inner table.
///
/// **Capacity.** `capacity_bytes` buys sets of `ways` (8) slots. A slot holds one decoded row
/// (`dim` floats, whatever the inner codec) plus `slot_overhead_bytes` (12: the 8-byte row id
/// tag and a 4-byte LRU stamp); each set adds a 4-byte access counter. So
/// `set_bytes(dim) = 8 * (4 * dim + 12) + 4` and the cache holds `capacity_bytes / set_bytes(dim)`
/// sets (at least one, else config_error). Fixed extra: up to `max_stripes` (1024) lock stripes of
/// 64 bytes each. Caching float rows means a hit costs a copy, never a decode.
///
/// **Replacement: set-associative LRU** (8 ways; a row's set is a mixed hash of its id). Chosen
/// over CLOCK because it needs no global state: a lookup reads one set (one 64-byte line of
/// tags), eviction is decided inside that set, and so each set is guarded by its own lock
/// stripe and readers of different sets never touch a shared cache line. A CLOCK cache needs
/// a global id -> slot index plus one clock hand that every miss advances, i.e. a shared
/// structure every reader and every miss would go through. With 8 ways, LRU inside the set
/// scores within half a point of an exact, fully associative LRU of the same size on the
/// Zipf(1.0-1.2) row streams of bench_cache (docs/storage-tiers.md), and per-set LRU is exact,
/// not approximated by reference bits.
/// LRU stamps are 32-bit per-set counters compared modulo 2^32 (age = tick - stamp), so they
/// never need resetting.
///
/// **Concurrency.** `gather`, the counters and `invalidate`/`clear` are safe to call from any
/// number of threads at once: a set's tags, LRU stamps and rows are changed and rows are copied
/// only under its stripe's mutex (sets are spread over the stripes by set index); counters are
/// relaxed atomics. Tags and stamps are relaxed atomics too, so that the gather may peek at the
/// sets of upcoming ids without a lock to prefetch their rows (a hint only: what is copied and
/// what is evicted is decided under the lock). Two threads that miss the same row may both
/// fetch it; the second insert then refreshes the first (a row occupies at most one slot). The
/// inner table's gather is called without any cache lock held.
///
/// **Gather.** Every id is checked first (input_error, nothing written, counters unchanged).
/// Each id is then looked up (the sets of later ids prefetched); hits are copied out at once.
/// The missing ids are deduplicated (a per-call hash table) and fetched with *one* inner
/// `gather` call, inserted, and copied to every position that asked for them. Counting:
/// `misses()` is the number of rows fetched from the inner table (a row missing at several
/// positions of one batch counts once), `hits()` every other lookup, so `hits() + misses()` is
/// the number of ids gathered. If the inner gather throws (an I/O error: ids are valid by
/// then), `out` may hold some rows already.
///
/// Each thread keeps scratch buffers for the missing rows of its largest batch (thread_local).
template <storage_table Inner>
class cached_table {
public:
    using inner_type = Inner;
    using codec_type = typename Inner::codec_type;

    static constexpr std::size_t ways = 8;
    static constexpr std::size_t slot_overhead_bytes = sizeof(row_id) + sizeof(std::uint32_t);
    static constexpr std::size_t max_stripes = 1024;
    /// The capacity of `cached_storage` tables built from (rows, dim).
    static constexpr std::size_t default_capacity_bytes = std::size_t{64} << 20;

    /// Bytes one set of `ways` slots costs for rows of `dim` values.
    static constexpr std::size_t set_bytes(std::size_t dim) noexcept {
        return ways * (dim * sizeof(float) + slot_overhead_bytes) + sizeof(std::uint32_t);
    }

    cached_table() = default;

    /// @throws config_error if `inner` is null, or `capacity_bytes` is below one set
    ///         (`set_bytes(dim)`).
    cached_table(std::shared_ptr<const Inner> inner, std::size_t capacity_bytes) : inner_(std::move(inner)) {
        if (!inner_) throw config_error("cached table: the inner table is null");
        rows_ = static_cast<std::size_t>(inner_->rows());
        dim_ = static_cast<std::size_t>(inner_->dim());
        if (dim_ == 0) throw config_error("cached table: the inner table has dim 0");
        const std::size_t per_set = set_bytes(dim_);
        const std::size_t n_sets = capacity_bytes / per_set;
        if (n_sets == 0)
            throw config_error("cached table: capacity of " + std::to_string(capacity_bytes) +
                               " bytes is below one set of " + std::to_string(ways) + " rows of " +
                               std::to_string(dim_) + " floats (" + std::to_string(per_set) + " bytes)");
        state_ = std::make_unique<state>(n_sets, dim_);
    }

    cached_table(cached_table&&) noexcept = default;
    cached_table& operator=(cached_table&&) noexcept = default;

    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
    /// The slow table behind the cache.
    [[nodiscard]] const Inner& inner() const noexcept { return *inner_; }
    [[nodiscard]] const std::shared_ptr<const Inner>& inner_ptr() const noexcept { return inner_; }
    /// Number of sets and of row slots (sets() * ways).
    [[nodiscard]] std::size_t sets() const noexcept { return state_ ? state_->n_sets : 0; }
    [[nodiscard]] std::size_t slots() const noexcept { return sets() * ways; }
    /// Bytes in use: sets() * set_bytes(dim) (at most the capacity asked for).
    [[nodiscard]] std::size_t capacity_bytes() const noexcept { return sets() * set_bytes(dim_); }

    [[nodiscard]] std::uint64_t hits() const noexcept {
        return state_ ? state_->hits.load(std::memory_order_relaxed) : 0;
    }
    [[nodiscard]] std::uint64_t misses() const noexcept {
        return state_ ? state_->misses.load(std::memory_order_relaxed) : 0;
    }
    /// hits / (hits + misses); 0 before any lookup. Read while gathers run, the two counters
    /// may be from slightly different moments.
    [[nodiscard]] double hit_rate() const noexcept {
        const auto h = hits(), m = misses();
        return h + m == 0 ? 0.0 : static_cast<double>(h) / static_cast<double>(h + m);
    }
    /// Sets both counters to zero (the cached rows stay).
    void reset_counters() const noexcept {
        if (!state_) return;
        state_->hits.store(0, std::memory_order_relaxed);
        state_->misses.store(0, std::memory_order_relaxed);
    }

    /// Whether row `r` is cached now (a snapshot; counters unchanged, LRU order unchanged).
    [[nodiscard]] bool contains(row_id r) const {
        if (!state_) return false;
        const std::size_t set = set_of(r);
        std::lock_guard<std::mutex> lock(stripe_of(set));
        return find(set, r) != ways;
    }
    /// Drops row `r` from the cache, e.g. after the inner table's row changed.
    void invalidate(row_id r) const {
        if (!state_) return;
        const std::size_t set = set_of(r);
        std::lock_guard<std::mutex> lock(stripe_of(set));
        const std::size_t w = find(set, r);
        if (w != ways) state_->tags[set].id[w].store(empty, relaxed);
    }
    /// Drops every cached row (stripe by stripe; concurrent gathers stay correct).
    void clear() const {
        if (!state_) return;
        for (std::size_t s = 0; s < state_->n_stripes; ++s) {
            std::lock_guard<std::mutex> lock(state_->stripes[s].m);
            for (std::size_t set = s; set < state_->n_sets; set += state_->n_stripes)
                for (auto& id : state_->tags[set].id) id.store(empty, relaxed);
        }
    }

    /// Decodes row i into `out` (dim floats) through the cache.
    /// @throws input_error for a bad index or size.
    void get_row(std::size_t i, std::span<float> out) const {
        const auto id = static_cast<row_id>(i);
        gather(std::span<const row_id>(&id, 1), out);
    }

    /// Decoded rows `ids` into `out` [ids.size(), dim]; see `storage_table` and the class notes.
    void gather(std::span<const row_id> ids, std::span<float> out) const {
        detail::check_gather(ids, rows_, dim_, out.size());
        if (ids.empty()) return;
        scratch& s = thread_scratch();
        const std::size_t n = ids.size();
        // Lookups, software-pipelined: the set metadata of the id `2 * ahead` positions later is
        // prefetched, the row of the id `ahead` positions later too if a lock-free peek at its
        // tags finds it; so several DRAM reads are in flight while one lookup runs.
        s.sets.resize(n);
        for (std::size_t i = 0; i < n; ++i) s.sets[i] = set_of(ids[i]);
        s.miss_pos.clear();
        for (std::size_t i = 0; i < n; ++i) {
            if (i + 2 * ahead < n) prefetch_set(s.sets[i + 2 * ahead]);
            if (i + ahead < n) prefetch_hit(s.sets[i + ahead], ids[i + ahead]);
            if (!lookup(s.sets[i], ids[i], out.data() + i * dim_)) s.miss_pos.push_back(i);
        }
        const std::size_t m = s.miss_pos.size();
        if (m == 0) {
            state_->hits.fetch_add(n, std::memory_order_relaxed);
            return;
        }
        // The distinct missing rows (a small open-addressing table), in order of first miss.
        const std::size_t buckets = std::bit_ceil(2 * m);
        s.bucket_id.assign(buckets, empty);
        s.bucket_unique.resize(buckets);
        s.unique_ids.clear();
        s.unique_sets.clear();
        s.miss_unique.resize(m);
        for (std::size_t j = 0; j < m; ++j) {
            const row_id id = ids[s.miss_pos[j]];
            std::size_t b = static_cast<std::size_t>(mix(id)) & (buckets - 1);
            while (s.bucket_id[b] != empty && s.bucket_id[b] != id) b = (b + 1) & (buckets - 1);
            if (s.bucket_id[b] == empty) {
                s.bucket_id[b] = id;
                s.bucket_unique[b] = s.unique_ids.size();
                s.unique_ids.push_back(id);
                s.unique_sets.push_back(s.sets[s.miss_pos[j]]);
            }
            s.miss_unique[j] = s.bucket_unique[b];
        }
        // One inner gather; then, in miss order, each row is inserted at its first miss (unique
        // ids are numbered in that order) and copied to every position that asked for it. The
        // slot a later insert will probably overwrite is prefetched for writing.
        const std::size_t u_count = s.unique_ids.size();
        s.rows.resize(u_count * dim_);
        inner_->gather(s.unique_ids, s.rows);
        std::size_t next = 0;
        for (std::size_t j = 0; j < m; ++j) {
            const std::size_t u = s.miss_unique[j];
            const float* row = s.rows.data() + u * dim_;
            if (u == next) {
                if (next + 2 * ahead < u_count) prefetch_set(s.unique_sets[next + 2 * ahead]);
                if (next + ahead < u_count) prefetch_victim(s.unique_sets[next + ahead]);
                insert(s.unique_sets[u], s.unique_ids[u], row);
                ++next;
            }
            std::memcpy(out.data() + s.miss_pos[j] * dim_, row, dim_ * sizeof(float));
        }
        state_->misses.fetch_add(u_count, std::memory_order_relaxed);
        state_->hits.fetch_add(n - u_count, std::memory_order_relaxed);
    }

private:
    static constexpr row_id empty = -1;

    // Set metadata is written only under the set's stripe lock, but it is atomic (relaxed, so
    // plain loads and stores on x86 and ARM) so that `prefetch_hit` / `prefetch_victim` may peek
    // at it without the lock. A peek only chooses what to prefetch; every decision that counts
    // is taken again under the lock. Row data is plain memory, read and written under the lock.
    struct alignas(64) set_tags {
        std::atomic<row_id> id[ways];
    };
    struct set_lru {
        std::atomic<std::uint32_t> stamp[ways];
        std::atomic<std::uint32_t> tick;
    };
    struct alignas(64) stripe {
        std::mutex m;
    };
    struct state {
        state(std::size_t sets, std::size_t dim)
            : n_sets(sets), n_stripes(std::min<std::size_t>(max_stripes, std::bit_floor(sets))), tags(sets), lru(sets),
              data(new float[sets * ways * dim]), stripes(new stripe[n_stripes]) {
            for (auto& t : tags)
                for (auto& id : t.id) id.store(empty, std::memory_order_relaxed);
            for (auto& l : lru) {
                for (auto& stamp : l.stamp) stamp.store(0, std::memory_order_relaxed);
                l.tick.store(0, std::memory_order_relaxed);
            }
        }
        std::size_t n_sets, n_stripes;
        std::vector<set_tags> tags;
        std::vector<set_lru> lru;
        std::unique_ptr<float[]> data; // uninitialised until a slot is filled
        std::unique_ptr<stripe[]> stripes;
        std::atomic<std::uint64_t> hits{0}, misses{0};
    };
    struct scratch {
        std::vector<std::size_t> sets;          // set of each id
        std::vector<std::size_t> miss_pos;      // positions that missed
        std::vector<std::size_t> miss_unique;   // their index in unique_ids
        std::vector<row_id> bucket_id;          // dedup table: id or empty
        std::vector<std::size_t> bucket_unique; // dedup table: index in unique_ids
        std::vector<row_id> unique_ids;         // distinct missing rows
        std::vector<std::size_t> unique_sets;   // their sets
        std::vector<float> rows;                // their decoded values
    };

    static scratch& thread_scratch() {
        static thread_local scratch s;
        return s;
    }

    static constexpr std::size_t ahead = 8;

    static std::uint64_t mix(row_id r) noexcept {
        auto x = static_cast<std::uint64_t>(r);
        x ^= x >> 31;
        x *= 0x9E3779B97F4A7C15ull;
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        return x ^ (x >> 32);
    }
    /// The set of row r: a mixed hash of the id, reduced by multiply-high (any set count works).
    std::size_t set_of(row_id r) const noexcept {
        return static_cast<std::size_t>((static_cast<detail::uint128>(mix(r)) * state_->n_sets) >> 64);
    }
    static constexpr auto relaxed = std::memory_order_relaxed;

    void prefetch_set(std::size_t set) const noexcept {
        __builtin_prefetch(&state_->tags[set]);
        __builtin_prefetch(&state_->lru[set]);
    }
    void prefetch_slot(std::size_t set, std::size_t w, bool for_write) const noexcept {
        const char* p = reinterpret_cast<const char*>(slot(set, w));
        for (std::size_t line = 0; line < dim_ * sizeof(float); line += 64) {
            if (for_write)
                __builtin_prefetch(p + line, 1);
            else
                __builtin_prefetch(p + line, 0);
        }
    }
    /// Lock-free hint: prefetches row r's slot if the set seems to hold it.
    void prefetch_hit(std::size_t set, row_id r) const noexcept {
        const auto& id = state_->tags[set].id;
        for (std::size_t w = 0; w < ways; ++w)
            if (id[w].load(relaxed) == r) return prefetch_slot(set, w, false);
    }
    /// Lock-free hint: prefetches, for writing, the slot an insert into `set` would take now.
    void prefetch_victim(std::size_t set) const noexcept { prefetch_slot(set, victim(set), true); }
    /// An empty way, else the least recently used one (exact under the stripe lock).
    std::size_t victim(std::size_t set) const noexcept {
        const auto& id = state_->tags[set].id;
        const set_lru& l = state_->lru[set];
        const std::uint32_t tick = l.tick.load(relaxed);
        std::size_t best = 0;
        std::uint32_t oldest = 0;
        for (std::size_t w = 0; w < ways; ++w) {
            if (id[w].load(relaxed) == empty) return w;
            const std::uint32_t age = tick - l.stamp[w].load(relaxed); // modulo 2^32: wraps harmlessly
            if (age >= oldest) {
                oldest = age;
                best = w;
            }
        }
        return best;
    }
    /// Marks way w of `set` most recently used. Caller holds the set's stripe.
    void touch(std::size_t set, std::size_t w) const noexcept {
        set_lru& l = state_->lru[set];
        const std::uint32_t t = l.tick.load(relaxed) + 1;
        l.tick.store(t, relaxed);
        l.stamp[w].store(t, relaxed);
    }
    std::mutex& stripe_of(std::size_t set) const noexcept { return state_->stripes[set & (state_->n_stripes - 1)].m; }
    /// The way of `set` holding r, or `ways`. Caller holds the set's stripe.
    std::size_t find(std::size_t set, row_id r) const noexcept {
        const auto& id = state_->tags[set].id;
        for (std::size_t w = 0; w < ways; ++w)
            if (id[w].load(relaxed) == r) return w;
        return ways;
    }
    float* slot(std::size_t set, std::size_t w) const noexcept { return state_->data.get() + (set * ways + w) * dim_; }

    /// Copies row r to `dst` if cached (and marks it most recently used).
    bool lookup(std::size_t set, row_id r, float* dst) const {
        std::lock_guard<std::mutex> lock(stripe_of(set));
        const std::size_t w = find(set, r);
        if (w == ways) return false;
        std::memcpy(dst, slot(set, w), dim_ * sizeof(float));
        touch(set, w);
        return true;
    }

    /// Puts row r (decoded, dim floats at `row`) into its set: an empty way, else the least
    /// recently used one. A row already there (another thread's insert) is only refreshed.
    void insert(std::size_t set, row_id r, const float* row) const {
        std::lock_guard<std::mutex> lock(stripe_of(set));
        const std::size_t present = find(set, r);
        if (present != ways) return touch(set, present);
        const std::size_t w = victim(set);
        state_->tags[set].id[w].store(r, relaxed);
        std::memcpy(slot(set, w), row, dim_ * sizeof(float));
        touch(set, w);
    }

    std::shared_ptr<const Inner> inner_;
    std::unique_ptr<state> state_;
    std::size_t rows_ = 0, dim_ = 0;
};

/// @brief Storage policy: an `InnerPolicy` table behind a `cached_table` of `CapacityBytes`.
///
/// `table<Row>(rows, dim)` owns its inner table; `set_row` writes the inner row and drops it
/// from the cache (not safe concurrently with gathers), `inner_table()` gives the inner table.
template <class InnerPolicy, std::size_t CapacityBytes = std::size_t{64} << 20>
struct cached_storage {
    template <class Row>
    class table : public cached_table<typename InnerPolicy::template table<Row>> {
        using inner_t = typename InnerPolicy::template table<Row>;
        using base = cached_table<inner_t>;

    public:
        static constexpr std::size_t capacity = CapacityBytes;

        table() = default;
        /// @throws config_error for what the inner table rejects or a capacity below one set.
        table(std::size_t rows, std::size_t dim)
            : base(std::shared_ptr<const inner_t>(std::make_shared<inner_t>(rows, dim)), CapacityBytes) {}

        /// The inner table, writable (the cache does not see writes made through it: call
        /// `invalidate` or `clear`, or use `set_row`). The table was created non-const by this
        /// class, so writing through the cast is allowed.
        [[nodiscard]] inner_t& inner_table() noexcept { return const_cast<inner_t&>(this->inner()); }

        /// Encodes `values` into row i of the inner table and drops the cached copy.
        /// @throws input_error for a bad index or size.
        void set_row(std::size_t i, std::span<const float> values) requires
            requires(inner_t& t, std::size_t j, std::span<const float> v) {
            t.set_row(j, v);
        }
        {
            inner_table().set_row(i, values);
            this->invalidate(static_cast<row_id>(i));
        }
    };
};

static_assert(storage_table<cached_table<dense_storage::table<float>>>);
static_assert(storage_policy<cached_storage<dense_storage>, float>);
static_assert(storage_policy<cached_storage<dense_storage>, bfloat16>);

ENGRAM_END_NAMESPACE
