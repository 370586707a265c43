#pragma once
// SPDX-License-Identifier: MIT
// Suffix n-gram windows over a [B, T] batch and their per-head row indices (spec sections 4-5).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <array>   // for array
#include <cstddef> // for size_t
#include <cstdint> // for int64_t
#include <span>    // for span
#include <string>  // for to_string
#include <utility> // for index_sequence
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// rows * cols with an overflow check; `what` names the shape in the error.
inline std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
    std::size_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) throw input_error(std::string(what) + ": shape overflows size_t");
    return r;
}

} // namespace detail

/// @brief Hashes the suffix n-grams of one layer: canonical ids `[B, T]` -> head-local indices
///        `[B, T, heads]` (what the reference calls hash ids) or global row ids (plus offsets).
///
/// @tparam Family a `hash_family` (default: the reference multiply-XOR).
/// @tparam Orders the n-gram orders, fixed at compile time so that every window loop unrolls.
///
/// Positions before the sequence start read the canonical pad id. Every canonical id is checked
/// against `[0, V')` on entry; the hot loops then need no checks.
template <hash_family Family = multiply_xor_family, order_set Orders = orders<2, 3>>
class ngram_hasher {
public:
    using family_type = Family;
    using orders_type = Orders;
    /// The window length: the largest order.
    static constexpr std::size_t window_size = static_cast<std::size_t>(Orders::max);
    using window_type = std::array<token_id, window_size>;

    /// @throws config_error if the layout's orders differ from `Orders` or it has no heads.
    explicit ngram_hasher(layer_layout layout) : layout_(check(std::move(layout))), family_(layout_) {}

    [[nodiscard]] const layer_layout& layout() const noexcept { return layout_; }
    [[nodiscard]] const family_type& family() const noexcept { return family_; }
    [[nodiscard]] std::size_t num_heads() const noexcept { return layout_.num_heads(); }

    /// @brief A window at the start of a sequence: every slot holds the canonical pad id.
    [[nodiscard]] window_type empty_window() const noexcept {
        window_type w;
        w.fill(layout_.pad);
        return w;
    }

    /// @brief Head-local indices of one position. `window[k]` is the canonical id k positions
    ///        back (pad before the start); ids must be in `[0, V')` (unchecked: see `check_ids`).
    /// @param out `num_heads()` values, head h in `[0, primes[h])`.
    void hash_window(const window_type& window, std::span<std::int64_t> out) const noexcept {
        hash_orders(window.data(), out.data(), std::make_index_sequence<Orders::count>{});
    }

    /// @brief Global row ids of one position: `offsets[h] + hash_window(...)[h]`.
    void rows_window(const window_type& window, std::span<row_id> out) const noexcept {
        hash_window(window, out);
        for (std::size_t h = 0; h < out.size(); ++h) out[h] += layout_.offsets[h];
    }

    /// @brief Head-local indices for a batch of canonical ids.
    /// @param canonical `[batch, seq_len]` row-major, ids in `[0, V')`
    /// @param out `[batch, seq_len, num_heads()]` row-major
    /// @throws input_error for a size mismatch or an id outside `[0, V')` (nothing is written).
    void hash(std::span<const token_id> canonical, std::size_t batch, std::size_t seq_len,
              std::span<std::int64_t> out) const {
        run(canonical, batch, seq_len, out, false);
    }

    /// @brief Global row ids (head offset added) for a batch of canonical ids; see `hash`.
    void rows(std::span<const token_id> canonical, std::size_t batch, std::size_t seq_len,
              std::span<row_id> out) const {
        run(canonical, batch, seq_len, out, true);
    }

    /// @brief Maps raw ids through `vocab` and hashes them; see `hash`.
    /// @throws input_error for a raw id outside `[0, V)`, config_error if `vocab` is not the
    ///         table this layout was built for (different V').
    void hash_tokens(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch,
                     std::size_t seq_len, std::span<std::int64_t> out) const {
        if (vocab.canonical_size() != layout_.vocab_size)
            throw config_error("canonical table has V' = " + std::to_string(vocab.canonical_size()) +
                               " but the layout was built for V' = " + std::to_string(layout_.vocab_size));
        std::vector<token_id> canonical(raw.size());
        vocab.map(raw, canonical);
        hash(canonical, batch, seq_len, out);
    }

    /// @brief Throws input_error naming the first id outside `[0, V')`.
    void check_ids(std::span<const token_id> canonical) const {
        const auto v = static_cast<std::uint64_t>(layout_.vocab_size);
        for (std::size_t i = 0; i < canonical.size(); ++i)
            if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(canonical[i]) >= v))
                throw input_error("canonical id " + std::to_string(canonical[i]) + " at position " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(layout_.vocab_size) + ")");
    }

private:
    static layer_layout check(layer_layout layout) {
        if (layout.orders.size() != Orders::count)
            throw config_error("layout has " + std::to_string(layout.orders.size()) +
                               " orders, the hasher's orders<...> has " + std::to_string(Orders::count));
        for (std::size_t i = 0; i < Orders::count; ++i)
            if (layout.orders[i] != Orders::values[i])
                throw config_error("layout order " + std::to_string(layout.orders[i]) + " at index " +
                                   std::to_string(i) + " differs from orders<...> (" +
                                   std::to_string(Orders::values[i]) + ")");
        if (layout.num_heads() == 0 || layout.heads_per_order < 1 ||
            layout.num_heads() != Orders::count * static_cast<std::size_t>(layout.heads_per_order) ||
            layout.offsets.size() != layout.num_heads())
            throw config_error("layout: primes/offsets do not match orders x heads_per_order");
        if (layout.multipliers.size() < window_size)
            throw config_error("layout has " + std::to_string(layout.multipliers.size()) +
                               " multipliers, the largest order needs " + std::to_string(window_size));
        if (layout.pad < 0 || layout.pad >= layout.vocab_size)
            throw config_error("layout: canonical pad id " + std::to_string(layout.pad) + " is outside [0, " +
                               std::to_string(layout.vocab_size) + ")");
        return layout;
    }

    template <std::size_t... I>
    ENGRAM_ALWAYS_INLINE void hash_orders(const token_id* window, std::int64_t* out,
                                          std::index_sequence<I...>) const noexcept {
        (hash_order<Orders::values[I]>(window, out + I * static_cast<std::size_t>(layout_.heads_per_order),
                                       I * static_cast<std::size_t>(layout_.heads_per_order)),
         ...);
    }

    template <int N>
    ENGRAM_ALWAYS_INLINE void hash_order(const token_id* window, std::int64_t* out,
                                         std::size_t first_head) const noexcept {
        const auto mix = family_.template mix<N>(window);
        const auto k = static_cast<std::size_t>(layout_.heads_per_order);
        for (std::size_t j = 0; j < k; ++j) out[j] = family_.reduce(mix, first_head + j);
    }

    void run(std::span<const token_id> canonical, std::size_t batch, std::size_t seq_len, std::span<std::int64_t> out,
             bool add_offsets) const {
        const std::size_t tokens = detail::checked_mul(batch, seq_len, "hash input [B, T]");
        const std::size_t heads = num_heads();
        if (canonical.size() != tokens)
            throw input_error("hash: input has " + std::to_string(canonical.size()) +
                              " ids, expected B x T = " + std::to_string(batch) + " x " + std::to_string(seq_len));
        if (out.size() != detail::checked_mul(tokens, heads, "hash output [B, T, heads]"))
            throw input_error("hash: output has " + std::to_string(out.size()) +
                              " slots, expected B x T x heads = " + std::to_string(tokens * heads));
        check_ids(canonical);
        for (std::size_t b = 0; b < batch; ++b) {
            window_type window = empty_window();
            const token_id* seq = canonical.data() + b * seq_len;
            std::int64_t* dst = out.data() + b * seq_len * heads;
            for (std::size_t t = 0; t < seq_len; ++t, dst += heads) {
                for (std::size_t k = window_size - 1; k > 0; --k) window[k] = window[k - 1];
                window[0] = seq[t];
                hash_orders(window.data(), dst, std::make_index_sequence<Orders::count>{});
                if (add_offsets)
                    for (std::size_t h = 0; h < heads; ++h) dst[h] += layout_.offsets[h];
            }
        }
    }

    layer_layout layout_;
    Family family_;
};

ENGRAM_END_NAMESPACE
