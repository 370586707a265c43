#pragma once
// SPDX-License-Identifier: MIT
// Streaming decode: one sequence's n-gram context, pushed one token at a time, with fork, rollback and seed.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <algorithm> // for min, max
#include <cstddef>   // for size_t
#include <cstdint>   // for uint64_t
#include <optional>  // for optional (dead token)
#include <span>      // for span
#include <string>    // for to_string
#include <vector>    // for vector (rollback history)

ENGRAM_BEGIN_NAMESPACE

/// @brief The n-gram context of one sequence during decoding: push a raw token, get the row ids
///        of its position.
///
/// `push` gives, position by position, exactly what `ngram_hasher::rows_tokens` gives for the
/// whole sequence with the same dead token (a dead token makes its own window all pad and every
/// earlier position read as pad for later windows; see `ngram_hasher`).
///
/// A value type the host owns, one per sequence: it holds the last N-1 effective canonical ids
/// and a history of `max_rollback + N - 1` entries for `rollback` (speculative decoding). Copies
/// (`fork`) are independent. The state keeps pointers to the hasher and the canonical table: both
/// must outlive it and every copy of it.
///
/// @tparam Family, Orders those of the `ngram_hasher` it is built from (deduced).
template <hash_family Family = multiply_xor_family, order_set Orders = orders<2, 3>>
class ngram_state {
public:
    using hasher_type = ngram_hasher<Family, Orders>;
    using window_type = typename hasher_type::window_type;
    /// N: the window length (the largest order); the context is the last N - 1 ids.
    static constexpr std::size_t window_size = hasher_type::window_size;
    static constexpr std::size_t context_size = window_size - 1;
    /// The largest accepted `max_rollback` (the history is allocated up front).
    static constexpr std::size_t max_supported_rollback = std::size_t{1} << 20;

    /// @param hasher the layer's hasher; must outlive the state.
    /// @param vocab the raw -> canonical table the hasher's layout was built for; must outlive the state.
    /// @param dead_token a raw id that restarts the context (compared on raw ids), or none.
    /// @param max_rollback how many of the latest pushes `rollback` can undo.
    /// @throws config_error if `vocab`'s V' differs from the layout's or `max_rollback` exceeds
    ///         `max_supported_rollback`; input_error if `dead_token` is outside `[0, V)`.
    ngram_state(const ngram_hasher<Family, Orders>& hasher, const canonical_table& vocab,
                std::optional<token_id> dead_token = std::nullopt, std::size_t max_rollback = 64)
        : hasher_(&hasher), vocab_(&vocab), dead_(dead_token.value_or(-1)), has_dead_(dead_token.has_value()),
          max_rollback_(max_rollback), history_(history_size(max_rollback)), window_(hasher.empty_window()) {
        hasher.check_vocab(vocab);
        if (dead_token) hasher_type::check_dead_token(vocab, *dead_token);
    }

    /// @brief Appends raw token `raw` and writes the global row ids of its position.
    /// @param rows `num_heads()` values: `offsets[h]` + head h's index.
    /// @param live false marks the position dead (a 0 in DeepSeek-V4.1's token mask): it
    ///        restarts the context as a dead token does.
    /// @throws input_error if `raw` is outside `[0, V)` or `rows` has the wrong size; the state is
    ///         then unchanged.
    void push(token_id raw, std::span<row_id> rows, bool live = true) {
        if (rows.size() != hasher_->num_heads())
            throw input_error("ngram_state::push: output has " + std::to_string(rows.size()) + " slots, expected " +
                              std::to_string(hasher_->num_heads()) + " (one per head)");
        const token_id canonical = to_canonical(raw, position_);
        if (!live || (has_dead_ && raw == dead_)) {
            window_ = hasher_->empty_window();
            history_[slot(position_)] = dead_mark;
        } else {
            for (std::size_t k = window_size - 1; k > 0; --k) window_[k] = window_[k - 1];
            window_[0] = canonical;
            history_[slot(position_)] = canonical;
        }
        hasher_->rows_window(window_, rows);
        ++position_;
        undoable_ = std::min(undoable_ + 1, max_rollback_);
    }

    /// @brief An independent copy (same hasher, table and dead token).
    [[nodiscard]] ngram_state fork() const { return *this; }

    /// @brief Undoes the last `k` pushes; pushing the same tokens again then gives the same rows
    ///        as never having undone them.
    /// @throws input_error if `k > undoable()` (state unchanged).
    void rollback(std::size_t k) {
        if (k > undoable_)
            throw input_error("ngram_state::rollback(" + std::to_string(k) + "): only " + std::to_string(undoable_) +
                              " pushes can be undone (max_rollback = " + std::to_string(max_rollback_) +
                              ", pushes since construction, reset or seed count)");
        if (k == 0) return;
        position_ -= k;
        undoable_ -= k;
        rebuild_window();
    }

    /// @brief Replaces the state by the one after pushing `raw_prefix` from an empty state (a
    ///        prefill done elsewhere). Only the last N-1 ids and the last dead token matter.
    ///        Afterwards `position() == raw_prefix.size()` and `rollback` cannot go back past
    ///        this point (`undoable() == 0`).
    /// @param token_mask optional, one entry per prefix position: 0 marks it dead (see `push`).
    /// @throws input_error naming the first position whose id is outside `[0, V)`, or for a mask
    ///         of another length; the state is then unchanged.
    void seed(std::span<const token_id> raw_prefix, std::span<const std::uint8_t> token_mask = {}) {
        const std::size_t n = raw_prefix.size();
        if (!token_mask.empty() && token_mask.size() != n)
            throw input_error("ngram_state::seed: token mask has " + std::to_string(token_mask.size()) +
                              " entries for " + std::to_string(n) + " tokens");
        std::size_t start = 0; // first position after the last dead token
        for (std::size_t i = 0; i < n; ++i) {
            static_cast<void>(to_canonical(raw_prefix[i], i));
            if ((has_dead_ && raw_prefix[i] == dead_) || (!token_mask.empty() && token_mask[i] == 0)) start = i + 1;
        }
        window_ = hasher_->empty_window();
        const std::size_t first = std::max(start, n > context_size ? n - context_size : std::size_t{0});
        for (std::size_t i = first; i < n; ++i) {
            for (std::size_t k = window_size - 1; k > 0; --k) window_[k] = window_[k - 1];
            window_[0] = (*vocab_)(raw_prefix[i]);
        }
        // The history holds the effective ids (pad where a dead token hid them) of the last
        // N - 1 positions: all a later rollback to this point reads.
        for (std::size_t j = 0; j < context_size && j < n; ++j) history_[slot(n - 1 - j)] = window_[j];
        position_ = n;
        undoable_ = 0;
    }

    /// @brief Back to the state of a new sequence (position 0, nothing to undo).
    void reset() noexcept {
        window_ = hasher_->empty_window();
        position_ = 0;
        undoable_ = 0;
    }

    /// Tokens seen: pushes (minus those undone) plus the seeded prefix.
    [[nodiscard]] std::size_t position() const noexcept { return position_; }
    /// How many pushes `rollback` can undo now.
    [[nodiscard]] std::size_t undoable() const noexcept { return undoable_; }
    [[nodiscard]] std::size_t max_rollback() const noexcept { return max_rollback_; }
    [[nodiscard]] std::optional<token_id> dead_token() const noexcept {
        return has_dead_ ? std::optional<token_id>(dead_) : std::nullopt;
    }
    [[nodiscard]] std::size_t num_heads() const noexcept { return hasher_->num_heads(); }
    /// The last N - 1 effective canonical ids, most recent first (pad before the start and at or
    /// before a dead token).
    [[nodiscard]] std::span<const token_id> context() const noexcept {
        return std::span<const token_id>(window_.data(), context_size);
    }

private:
    /// History entry of a dead position (canonical ids are >= 0).
    static constexpr token_id dead_mark = -1;

    static std::size_t history_size(std::size_t max_rollback) {
        if (max_rollback > max_supported_rollback)
            throw config_error("ngram_state: max_rollback = " + std::to_string(max_rollback) + " exceeds " +
                               std::to_string(max_supported_rollback));
        return max_rollback + context_size;
    }

    [[nodiscard]] std::size_t slot(std::size_t pos) const noexcept { return pos % history_.size(); }

    [[nodiscard]] token_id to_canonical(token_id raw, std::size_t pos) const {
        const std::span<const token_id> lookup = vocab_->lookup();
        if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(raw) >= lookup.size()))
            throw input_error("token id " + std::to_string(raw) + " at position " + std::to_string(pos) +
                              " is outside the vocabulary [0, " + std::to_string(lookup.size()) + ")");
        return lookup[static_cast<std::size_t>(raw)];
    }

    /// Reads the context at `position_` back from the history. Entries from
    /// `position_ - (N-1)` on are intact: rollback never goes below `position_ - undoable_`, and
    /// no push since wrote a slot `max_rollback + N - 1` positions ahead of them.
    void rebuild_window() noexcept {
        window_ = hasher_->empty_window();
        for (std::size_t j = 0; j < context_size && j < position_; ++j) {
            const token_id id = history_[slot(position_ - 1 - j)];
            if (id == dead_mark) break; // this position and everything before it read as pad
            window_[j] = id;
        }
    }

    const hasher_type* hasher_;
    const canonical_table* vocab_;
    token_id dead_;
    bool has_dead_;
    std::size_t max_rollback_;
    std::vector<token_id> history_; ///< ring: the entry of position q lives at q % size
    window_type window_;            ///< [0, N-1): the last N - 1 effective ids, most recent first
    std::size_t position_ = 0;
    std::size_t undoable_ = 0;
};

ENGRAM_END_NAMESPACE
