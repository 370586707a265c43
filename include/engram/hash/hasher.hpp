#pragma once
// SPDX-License-Identifier: MIT
// Suffix n-gram windows over a [B, T] batch and their per-head row indices (spec sections 4-5).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/hash/simd_mod.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <algorithm>   // for copy
#include <array>       // for array
#include <cstddef>     // for size_t
#include <cstdint>     // for int64_t, uint64_t
#include <optional>    // for optional (dead token)
#include <span>        // for span
#include <string>      // for to_string
#include <type_traits> // for is_same_v
#include <utility>     // for index_sequence
#include <vector>      // for vector

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
///
/// A *dead token* (`hash_tokens` / `rows_tokens` with `dead_token`, e.g. an image placeholder)
/// restarts the context: at a position whose raw id equals the dead token the window is all pad,
/// and later windows read pad for that position and every position before it, as at the start
/// of a sequence. It is compared on raw ids: another raw id with the same canonical id is an
/// ordinary token.
///
/// With the reference `multiply_xor_family`, every prime in `[2, 2^21)` and a CPU with AVX-512
/// IFMA, the per-head modulo runs 8 heads per instruction (hash/simd_mod.hpp); otherwise, or
/// after `set_simd_enabled(false)` / `ENGRAM_NO_SIMD=1`, it is the scalar Barrett reduction.
/// Both give identical ids for every input.
template <hash_family Family = multiply_xor_family, order_set Orders = orders<2, 3>>
class ngram_hasher {
public:
    using family_type = Family;
    using orders_type = Orders;
    /// The window length: the largest order.
    static constexpr std::size_t window_size = static_cast<std::size_t>(Orders::max);
    using window_type = std::array<token_id, window_size>;

    /// @throws config_error if the layout's orders differ from `Orders` or it has no heads.
    explicit ngram_hasher(layer_layout layout)
        : layout_(check(std::move(layout))), family_(layout_), simd_(make_plan(layout_)) {}

    [[nodiscard]] const layer_layout& layout() const noexcept { return layout_; }
    [[nodiscard]] const family_type& family() const noexcept { return family_; }
    [[nodiscard]] std::size_t num_heads() const noexcept { return layout_.num_heads(); }

    /// @brief Whether calls now take the SIMD modulo: the reference family, every prime in
    ///        `[2, 2^21)`, a CPU with AVX-512 IFMA and `simd_enabled()`.
    [[nodiscard]] bool uses_simd() const noexcept {
        if constexpr (simd_family && ENGRAM_HAS_X86_SIMD())
            return simd_.usable && simd_enabled();
        else
            return false;
    }

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
        if (window_simd(window, out, false)) return;
        hash_orders(window.data(), out.data(), std::make_index_sequence<Orders::count>{});
    }

    /// @brief Global row ids of one position: `offsets[h] + hash_window(...)[h]`.
    void rows_window(const window_type& window, std::span<row_id> out) const noexcept {
        if (window_simd(window, out, true)) return;
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
        check_vocab(vocab);
        std::vector<token_id> canonical(raw.size());
        vocab.map(raw, canonical);
        hash(canonical, batch, seq_len, out);
    }

    /// @brief Maps raw ids through `vocab` and hashes them with an optional dead token (see the
    ///        class description); without one this is the overload above.
    /// @throws input_error for a raw id outside `[0, V)` (naming its position), a dead token
    ///         outside `[0, V)` or a size mismatch (nothing is written); config_error if `vocab`
    ///         has a different V' than the layout.
    void hash_tokens(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch,
                     std::size_t seq_len, std::span<std::int64_t> out, std::optional<token_id> dead_token) const {
        run_tokens(vocab, raw, batch, seq_len, out, dead_token, false);
    }

    /// @brief Global row ids (head offset added) of raw ids, with an optional dead token; see
    ///        `hash_tokens`.
    void rows_tokens(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch,
                     std::size_t seq_len, std::span<row_id> out,
                     std::optional<token_id> dead_token = std::nullopt) const {
        run_tokens(vocab, raw, batch, seq_len, out, dead_token, true);
    }

    /// @brief Head-local indices of raw ids with a per-token mask (DeepSeek-V4.1's dead
    ///        positions, e.g. image spans): a position whose `token_mask` entry is 0 is dead,
    ///        exactly as a dead token is (its window is all pad, and later windows read pad for it
    ///        and everything before it).
    /// @param token_mask `[batch, seq_len]`, 0 = dead, anything else = live.
    /// @throws input_error for a mask or output of the wrong size or a raw id outside `[0, V)`
    ///         (nothing is written); config_error if `vocab` has a different V' than the layout.
    void hash_tokens(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch,
                     std::size_t seq_len, std::span<std::int64_t> out, std::span<const std::uint8_t> token_mask) const {
        run_masked(vocab, raw, batch, seq_len, out, token_mask, false);
    }

    /// @brief Global row ids (head offset added) of raw ids with a per-token mask; see above.
    void rows_tokens(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch,
                     std::size_t seq_len, std::span<row_id> out, std::span<const std::uint8_t> token_mask) const {
        run_masked(vocab, raw, batch, seq_len, out, token_mask, true);
    }

    /// @brief Throws config_error unless `vocab` has the V' this layout was built for.
    void check_vocab(const canonical_table& vocab) const {
        if (vocab.canonical_size() != layout_.vocab_size)
            throw config_error("canonical table has V' = " + std::to_string(vocab.canonical_size()) +
                               " but the layout was built for V' = " + std::to_string(layout_.vocab_size));
    }

    /// @brief Throws input_error unless `dead_token` is a raw id of `vocab` (in `[0, V)`).
    static void check_dead_token(const canonical_table& vocab, token_id dead_token) {
        if (dead_token < 0 || static_cast<std::uint64_t>(dead_token) >= vocab.vocab_size())
            throw input_error("dead token id " + std::to_string(dead_token) + " is outside the vocabulary [0, " +
                              std::to_string(vocab.vocab_size()) + ")");
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
        // Hand-built layouts: every head needs a table (p >= 1) and the heads must tile the
        // layer's rows in order, or row ids would leave the table.
        std::int64_t next = 0;
        for (std::size_t h = 0; h < layout.num_heads(); ++h) {
            if (layout.primes[h] < 1)
                throw config_error("layout: primes[" + std::to_string(h) + "] = " + std::to_string(layout.primes[h]) +
                                   " must be at least 1");
            if (layout.offsets[h] != next)
                throw config_error("layout: offsets[" + std::to_string(h) + "] = " + std::to_string(layout.offsets[h]) +
                                   ", expected the sum of the earlier heads' primes (" + std::to_string(next) + ")");
            if (__builtin_add_overflow(next, layout.primes[h], &next))
                throw config_error("layout: the sum of primes overflows int64");
        }
        if (layout.total_rows != next)
            throw config_error("layout: total_rows = " + std::to_string(layout.total_rows) +
                               ", expected the sum of primes (" + std::to_string(next) + ")");
        return layout;
    }

    static constexpr bool simd_family = std::is_same_v<Family, multiply_xor_family>;

    static detail::ifma_plan make_plan(const layer_layout& layout) {
        if constexpr (simd_family)
            return detail::ifma_plan(layout);
        else
            return {};
    }

    bool window_simd([[maybe_unused]] const window_type& window, [[maybe_unused]] std::span<std::int64_t> out,
                     [[maybe_unused]] bool add_offsets) const noexcept {
#if ENGRAM_HAS_X86_SIMD()
        if (uses_simd()) {
            detail::ifma_window<Orders>(simd_, window.data(), out.data(), add_offsets);
            return true;
        }
#endif
        return false;
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

    void check_shapes(std::size_t ids, std::size_t batch, std::size_t seq_len, std::size_t out_size) const {
        const std::size_t tokens = detail::checked_mul(batch, seq_len, "hash input [B, T]");
        if (ids != tokens)
            throw input_error("hash: input has " + std::to_string(ids) +
                              " ids, expected B x T = " + std::to_string(batch) + " x " + std::to_string(seq_len));
        if (out_size != detail::checked_mul(tokens, num_heads(), "hash output [B, T, heads]"))
            throw input_error("hash: output has " + std::to_string(out_size) +
                              " slots, expected B x T x heads = " + std::to_string(tokens * num_heads()));
    }

    void run(std::span<const token_id> canonical, std::size_t batch, std::size_t seq_len, std::span<std::int64_t> out,
             bool add_offsets) const {
        check_shapes(canonical.size(), batch, seq_len, out.size());
        check_ids(canonical);
        loop<false>(canonical.data(), nullptr, 0, batch, seq_len, out.data(), add_offsets);
    }

    void run_tokens(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                    std::span<std::int64_t> out, std::optional<token_id> dead_token, bool add_offsets) const {
        check_vocab(vocab);
        if (dead_token) check_dead_token(vocab, *dead_token);
        check_shapes(raw.size(), batch, seq_len, out.size());
#if ENGRAM_HAS_X86_SIMD()
        // The kernel maps raw ids itself (no canonical copy) once all are known to be in range;
        // otherwise the map below throws, naming the first bad position.
        if (uses_simd() && detail::ifma_ids_below(raw.data(), raw.size(), vocab.vocab_size())) {
            if (dead_token)
                simd_loop<true, true>(vocab.lookup().data(), raw.data(), *dead_token, batch, seq_len, out.data(),
                                      add_offsets);
            else
                simd_loop<false, true>(vocab.lookup().data(), raw.data(), 0, batch, seq_len, out.data(), add_offsets);
            return;
        }
#endif
        std::vector<token_id> canonical(raw.size());
        vocab.map(raw, canonical); // validates every raw id; canonical ids are then in [0, V')
        if (dead_token)
            loop<true>(canonical.data(), raw.data(), *dead_token, batch, seq_len, out.data(), add_offsets);
        else
            loop<false>(canonical.data(), nullptr, 0, batch, seq_len, out.data(), add_offsets);
    }

    /// Each run of live positions is hashed as a sequence of its own (a dead position restarts
    /// the context like a sequence start); dead positions get the all-pad window's rows.
    void run_masked(const canonical_table& vocab, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                    std::span<std::int64_t> out, std::span<const std::uint8_t> token_mask, bool add_offsets) const {
        check_vocab(vocab);
        check_shapes(raw.size(), batch, seq_len, out.size());
        if (token_mask.size() != raw.size())
            throw input_error("hash: token mask has " + std::to_string(token_mask.size()) +
                              " entries, expected B x T = " + std::to_string(raw.size()));
        {
            std::vector<token_id> scratch(raw.size());
            vocab.map(raw, scratch); // validates every raw id before anything is written
        }
        const std::size_t heads = num_heads();
        std::vector<std::int64_t> dead_rows(heads);
        const window_type pad = empty_window();
        if (add_offsets)
            rows_window(pad, dead_rows);
        else
            hash_window(pad, dead_rows);
        const std::size_t tokens = raw.size();
        std::size_t i = 0;
        while (i < tokens) {
            const std::size_t row_end = (i / seq_len + 1) * seq_len; // runs stop at a sequence's end
            if (token_mask[i] == 0) {
                std::copy(dead_rows.begin(), dead_rows.end(), out.begin() + static_cast<std::ptrdiff_t>(i * heads));
                ++i;
                continue;
            }
            std::size_t j = i;
            while (j < row_end && token_mask[j] != 0) ++j;
            run_tokens(vocab, raw.subspan(i, j - i), 1, j - i, out.subspan(i * heads, (j - i) * heads), std::nullopt,
                       add_offsets);
            i = j;
        }
    }

#if ENGRAM_HAS_X86_SIMD()
    /// The SIMD kernel over each sequence; with `Lookup`, `ids` is the canonical table's lookup
    /// and the ids of the batch are `ids[raw[i]]`, else `ids` is the canonical batch.
    template <bool Dead, bool Lookup>
    void simd_loop(const token_id* ids, const token_id* raw, token_id dead, std::size_t batch, std::size_t seq_len,
                   std::int64_t* out, bool add_offsets) const {
        const std::size_t heads = num_heads();
        const auto kernel = detail::ifma_sequence_for<Orders, Dead, Lookup>(simd_);
        for (std::size_t b = 0; b < batch; ++b) {
            window_type window = empty_window();
            const std::size_t at = b * seq_len;
            kernel(simd_, Lookup ? ids : ids + at, Dead || Lookup ? raw + at : nullptr, dead, layout_.pad, seq_len,
                   window.data(), out + at * heads, add_offsets);
        }
    }
#endif

    /// The hot loop; `Dead` adds the one per-token compare against the dead raw id.
    template <bool Dead>
    void loop(const token_id* canonical, const token_id* raw, token_id dead, std::size_t batch, std::size_t seq_len,
              std::int64_t* out, bool add_offsets) const {
        const std::size_t heads = num_heads();
#if ENGRAM_HAS_X86_SIMD()
        if (uses_simd()) return simd_loop<Dead, false>(canonical, raw, dead, batch, seq_len, out, add_offsets);
#endif
        for (std::size_t b = 0; b < batch; ++b) {
            window_type window = empty_window();
            const token_id* seq = canonical + b * seq_len;
            std::int64_t* dst = out + b * seq_len * heads;
            for (std::size_t t = 0; t < seq_len; ++t, dst += heads) {
                if constexpr (Dead) {
                    if (raw[b * seq_len + t] == dead) {
                        window = empty_window(); // this window is all pad, and so is the past
                        hash_orders(window.data(), dst, std::make_index_sequence<Orders::count>{});
                        if (add_offsets)
                            for (std::size_t h = 0; h < heads; ++h) dst[h] += layout_.offsets[h];
                        continue;
                    }
                }
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
    detail::ifma_plan simd_; ///< usable only for the reference family
};

ENGRAM_END_NAMESPACE
