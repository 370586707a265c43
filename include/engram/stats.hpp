#pragma once
// SPDX-License-Identifier: MIT
// How a token stream uses one layer's tables: per-head occupancy and collisions, and the hot set
// of rows that serves most lookups (what `engram stats` prints).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/ngram/dispatch.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <algorithm>  // for sort, fill, copy
#include <cstddef>    // for size_t
#include <cstdint>    // for int64_t, uint64_t
#include <functional> // for greater
#include <optional>   // for optional
#include <span>       // for span
#include <string>     // for to_string
#include <utility>    // for move, pair
#include <vector>     // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief What one head's table sees of a token stream.
struct head_stats {
    int order = 0;                      ///< n of the head's n-grams
    std::int64_t table_size = 0;        ///< the head's prime (rows in its table)
    std::uint64_t distinct_ngrams = 0;  ///< distinct canonical n-grams (pad included) looked up
    std::uint64_t rows_touched = 0;     ///< distinct rows looked up
    std::uint64_t colliding_ngrams = 0; ///< distinct n-grams whose row another distinct n-gram also hits

    /// rows_touched / table_size
    [[nodiscard]] double occupancy() const noexcept {
        return table_size == 0 ? 0.0 : static_cast<double>(rows_touched) / static_cast<double>(table_size);
    }
    /// colliding_ngrams / distinct_ngrams: the share of distinct n-grams that do not own their row
    [[nodiscard]] double collision_rate() const noexcept {
        return distinct_ngrams == 0 ? 0.0
                                    : static_cast<double>(colliding_ngrams) / static_cast<double>(distinct_ngrams);
    }
};

/// @brief What one layer's table sees of a token stream: every head, and the lookups per row.
struct layer_stats {
    std::int64_t layer_id = 0;
    std::int64_t head_dim = 0;   ///< d: values per row
    std::int64_t total_rows = 0; ///< rows of the layer's table (sum of the primes)
    std::uint64_t tokens = 0;    ///< positions hashed (B x T)
    std::vector<head_stats> heads;
    /// Lookups of each touched row, all heads together, largest first (heads never share a row).
    std::vector<std::uint64_t> row_hits;

    /// tokens x heads: every position looks up one row per head
    [[nodiscard]] std::uint64_t lookups() const noexcept { return tokens * heads.size(); }
    /// distinct rows looked up, all heads together
    [[nodiscard]] std::uint64_t rows_touched() const noexcept { return row_hits.size(); }

    /// @brief The fewest rows that serve at least `numerator / denominator` of all lookups (the
    ///        hottest ones): 90% is `rows_covering(9, 10)`, 99% `rows_covering(99, 100)`.
    /// @throws input_error unless 0 < numerator <= denominator
    [[nodiscard]] std::uint64_t rows_covering(std::uint64_t numerator, std::uint64_t denominator) const {
        if (numerator == 0 || denominator == 0 || numerator > denominator || denominator > (std::uint64_t{1} << 32))
            throw input_error("coverage " + std::to_string(numerator) + "/" + std::to_string(denominator) +
                              " must be a fraction in (0, 1] with a denominator up to 2^32");
        // Exact integer test: covered * denominator >= numerator * lookups, in 128 bits.
        using u128 = detail::uint128;
        const u128 target = static_cast<u128>(numerator) * lookups();
        u128 covered = 0;
        std::uint64_t rows = 0;
        for (const std::uint64_t hits : row_hits) {
            if (covered * denominator >= target) break;
            covered += hits;
            ++rows;
        }
        return rows;
    }
};

namespace detail {

/// Counts distinct windows of one fixed length: an open-addressing set over the window's ids.
class ngram_counter {
public:
    explicit ngram_counter(std::size_t n) : n_(n), slots_(64, 0) {}

    void add(const token_id* window) {
        const std::uint64_t h = hash(window);
        std::size_t mask = slots_.size() - 1;
        for (std::size_t i = h & mask;; i = (i + 1) & mask) {
            const std::uint64_t slot = slots_[i];
            if (slot == 0) {
                keys_.insert(keys_.end(), window, window + n_);
                counts_.push_back(1);
                slots_[i] = counts_.size();
                if (counts_.size() * 2 > slots_.size()) grow();
                return;
            }
            if (std::equal(window, window + n_, key(slot - 1))) {
                ++counts_[slot - 1];
                return;
            }
        }
    }

    [[nodiscard]] std::size_t size() const noexcept { return counts_.size(); }
    [[nodiscard]] const token_id* key(std::size_t i) const noexcept { return keys_.data() + i * n_; }
    [[nodiscard]] std::uint64_t count(std::size_t i) const noexcept { return counts_[i]; }

private:
    [[nodiscard]] std::uint64_t hash(const token_id* window) const noexcept {
        std::uint64_t h = 0x9E3779B97F4A7C15ull;
        for (std::size_t k = 0; k < n_; ++k) {
            h = (h ^ static_cast<std::uint64_t>(window[k])) * 0xFF51AFD7ED558CCDull;
            h ^= h >> 29;
        }
        return h ^ (h >> 32);
    }

    void grow() {
        std::vector<std::uint64_t> slots(slots_.size() * 2, 0);
        const std::size_t mask = slots.size() - 1;
        for (std::size_t d = 0; d < counts_.size(); ++d) {
            std::size_t i = hash(key(d)) & mask;
            while (slots[i] != 0) i = (i + 1) & mask;
            slots[i] = d + 1;
        }
        slots_ = std::move(slots);
    }

    std::size_t n_;
    std::vector<token_id> keys_;        // n_ ids per distinct window
    std::vector<std::uint64_t> counts_; // occurrences per distinct window
    std::vector<std::uint64_t> slots_;  // index + 1 into counts_, 0 = empty
};

} // namespace detail

/// @brief Per-head occupancy and collisions, and lookups per row, of a `[batch, seq_len]` batch
///        of raw token ids hashed by `hasher` (pad before each sequence start, the optional dead
///        token restarting the context, exactly as `ngram_hasher::rows_tokens`).
///
/// N-grams are counted exactly: every distinct canonical window of each order is kept once,
/// with its count, and hashed once.
/// @throws input_error for a raw id outside `[0, V)` or a size mismatch; config_error if `vocab`
///         is not the table the hasher's layout was built for
template <hash_family Family, order_set Orders>
layer_stats collect_layer_stats(const ngram_hasher<Family, Orders>& hasher, const canonical_table& vocab,
                                std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                                std::optional<token_id> dead_token = std::nullopt) {
    hasher.check_vocab(vocab);
    if (dead_token) hasher.check_dead_token(vocab, *dead_token);
    if (detail::checked_mul(batch, seq_len, "stats input [B, T]") != raw.size())
        throw input_error("stats: input has " + std::to_string(raw.size()) +
                          " ids, expected B x T = " + std::to_string(batch) + " x " + std::to_string(seq_len));
    std::vector<token_id> canonical(raw.size());
    vocab.map(raw, canonical);

    const layer_layout& layout = hasher.layout();
    const std::size_t n_orders = layout.orders.size();
    const auto per_order = static_cast<std::size_t>(layout.heads_per_order);
    std::vector<detail::ngram_counter> counters;
    for (const int n : layout.orders) counters.emplace_back(static_cast<std::size_t>(n));

    // The windows, as the hasher forms them: slot k is the canonical id k positions back.
    using window_type = typename ngram_hasher<Family, Orders>::window_type;
    for (std::size_t b = 0; b < batch; ++b) {
        window_type window = hasher.empty_window();
        for (std::size_t t = 0; t < seq_len; ++t) {
            const std::size_t i = b * seq_len + t;
            if (dead_token && raw[i] == *dead_token) {
                window = hasher.empty_window();
            } else {
                for (std::size_t k = window.size() - 1; k > 0; --k) window[k] = window[k - 1];
                window[0] = canonical[i];
            }
            for (auto& c : counters) c.add(window.data());
        }
    }

    layer_stats out;
    out.layer_id = layout.layer_id;
    out.head_dim = layout.head_dim;
    out.total_rows = layout.total_rows;
    out.tokens = raw.size();
    out.heads.resize(layout.num_heads());
    std::vector<std::int64_t> rows(layout.num_heads());
    std::vector<std::vector<std::pair<std::int64_t, std::uint64_t>>> per_head(per_order); // (row, count)
    for (std::size_t o = 0; o < n_orders; ++o) {
        const auto& counter = counters[o];
        const auto n = static_cast<std::size_t>(layout.orders[o]);
        for (auto& v : per_head) v.clear();
        for (std::size_t d = 0; d < counter.size(); ++d) {
            // An order-n head reads window[0..n) only; the rest is pad.
            window_type window = hasher.empty_window();
            std::copy(counter.key(d), counter.key(d) + n, window.begin());
            hasher.hash_window(window, rows);
            for (std::size_t j = 0; j < per_order; ++j)
                per_head[j].emplace_back(rows[o * per_order + j], counter.count(d));
        }
        for (std::size_t j = 0; j < per_order; ++j) {
            const std::size_t h = o * per_order + j;
            auto& hits = per_head[j];
            std::sort(hits.begin(), hits.end());
            head_stats& s = out.heads[h];
            s.order = layout.orders[o];
            s.table_size = layout.primes[h];
            s.distinct_ngrams = hits.size();
            for (std::size_t a = 0; a < hits.size();) {
                std::size_t e = a;
                std::uint64_t lookups = 0;
                while (e < hits.size() && hits[e].first == hits[a].first) lookups += hits[e++].second;
                ++s.rows_touched;
                if (e - a > 1) s.colliding_ngrams += e - a;
                out.row_hits.push_back(lookups);
                a = e;
            }
        }
    }
    std::sort(out.row_hits.begin(), out.row_hits.end(), std::greater<>());
    return out;
}

/// @brief `collect_layer_stats` with the reference hash (multiply-XOR) for a layout whose orders
///        are 2..N (N <= 8).
/// @throws unsupported_error for other order lists; otherwise as the overload above
inline layer_stats collect_layer_stats(const layer_layout& layout, const canonical_table& vocab,
                                       std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                                       std::optional<token_id> dead_token = std::nullopt) {
    layer_stats out;
    dispatch_orders(layout.orders, [&]<class O>(O) {
        out = collect_layer_stats(ngram_hasher<multiply_xor_family, O>(layout), vocab, raw, batch, seq_len, dead_token);
    });
    return out;
}

ENGRAM_END_NAMESPACE
