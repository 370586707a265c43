#pragma once
// SPDX-License-Identifier: MIT
// Hashing configuration and per-layer table layout: multipliers, distinct primes, offsets
// (spec sections 2, 3 and 5).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/primes.hpp>
#include <engram/random/numpy.hpp>
#include <engram/types.hpp>

#include <algorithm> // for find, sort, adjacent_find
#include <cstddef>   // for size_t
#include <cstdint>   // for int64_t
#include <limits>    // for numeric_limits
#include <set>       // for set
#include <span>      // for span
#include <string>    // for string, to_string
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief The hashing part of an Engram configuration, named as in the reference.
///
/// Defaults are the reference demo: tables of 5 x 129,280 rows per order, N = 3, K = 8,
/// E = 512, layers [1, 15], pad id 2, seed 0.
struct hash_config {
    /// Base table size per order (the prime search starts just above `size - 1`).
    std::vector<std::int64_t> table_size_per_ngram{646400, 646400};
    /// N: the largest n-gram order; orders 2..N are used unless `orders` says otherwise.
    int max_ngram = 3;
    /// K: heads per order.
    int heads_per_ngram = 8;
    /// E: embedding width per order; each head row has E / K values.
    std::int64_t embed_per_ngram = 512;
    /// Every Engram layer of the model, in order: they share the prime search.
    std::vector<std::int64_t> layer_ids{1, 15};
    /// Raw token id that pads before the sequence start (mapped through the canonical table).
    token_id pad_id = 2;
    /// Hashing seed; layer L draws its multipliers from `seed + 10007 * L`.
    std::int64_t seed = 0;
    /// Optional explicit order list (strictly increasing, each >= 2, last == max_ngram);
    /// empty means 2..max_ngram, as in the reference.
    std::vector<int> orders{};

    /// Largest accepted N (the hash window lives on the stack).
    static constexpr int max_supported_ngram = 32;
    /// Largest accepted base table size and total rows per layer.
    static constexpr std::int64_t max_table_size = std::int64_t{1} << 50;

    /// The orders in use: `orders`, or 2..max_ngram.
    [[nodiscard]] std::vector<int> order_list() const {
        if (!orders.empty()) return orders;
        std::vector<int> out;
        for (int n = 2; n <= max_ngram; ++n) out.push_back(n);
        return out;
    }
    [[nodiscard]] std::size_t num_heads() const {
        return order_list().size() * static_cast<std::size_t>(heads_per_ngram);
    }
    /// d = E / K: the width of one head's row.
    [[nodiscard]] std::int64_t head_dim() const { return embed_per_ngram / heads_per_ngram; }

    /// @brief Checks every field; throws config_error naming the first bad one.
    void validate() const {
        auto fail = [](const std::string& what) { throw config_error("config: " + what); };
        if (max_ngram < 2 || max_ngram > max_supported_ngram)
            fail("max_ngram = " + std::to_string(max_ngram) + " must be in [2, " + std::to_string(max_supported_ngram) +
                 "]");
        if (!orders.empty()) {
            for (std::size_t i = 0; i < orders.size(); ++i) {
                if (orders[i] < 2 || (i > 0 && orders[i] <= orders[i - 1]))
                    fail("orders must be strictly increasing and >= 2 (orders[" + std::to_string(i) +
                         "] = " + std::to_string(orders[i]) + ")");
            }
            if (orders.back() != max_ngram)
                fail("the last of orders (" + std::to_string(orders.back()) +
                     ") must equal max_ngram = " + std::to_string(max_ngram));
        }
        const std::size_t n_orders = order_list().size();
        if (table_size_per_ngram.size() != n_orders)
            fail("table_size_per_ngram has " + std::to_string(table_size_per_ngram.size()) +
                 " entries, expected one per order (" + std::to_string(n_orders) + ")");
        for (std::size_t i = 0; i < table_size_per_ngram.size(); ++i)
            if (table_size_per_ngram[i] < 1 || table_size_per_ngram[i] > max_table_size)
                fail("table_size_per_ngram[" + std::to_string(i) + "] = " + std::to_string(table_size_per_ngram[i]) +
                     " must be in [1, 2^50]");
        if (heads_per_ngram < 1 || heads_per_ngram > 4096)
            fail("heads_per_ngram = " + std::to_string(heads_per_ngram) + " must be in [1, 4096]");
        if (embed_per_ngram < 1) fail("embed_per_ngram = " + std::to_string(embed_per_ngram) + " must be positive");
        if (embed_per_ngram % heads_per_ngram != 0)
            fail("embed_per_ngram = " + std::to_string(embed_per_ngram) +
                 " is not divisible by heads_per_ngram = " + std::to_string(heads_per_ngram));
        if (layer_ids.empty()) fail("layer_ids is empty");
        for (std::size_t i = 0; i < layer_ids.size(); ++i) {
            if (layer_ids[i] < 0)
                fail("layer_ids[" + std::to_string(i) + "] = " + std::to_string(layer_ids[i]) + " is negative");
            if (std::find(layer_ids.begin(), layer_ids.begin() + static_cast<std::ptrdiff_t>(i), layer_ids[i]) !=
                layer_ids.begin() + static_cast<std::ptrdiff_t>(i))
                fail("layer_ids lists layer " + std::to_string(layer_ids[i]) + " twice");
        }
        if (seed < 0) fail("seed = " + std::to_string(seed) + " must be non-negative");
        if (pad_id < 0) fail("pad_id = " + std::to_string(pad_id) + " must be non-negative");
    }
};

/// @brief Everything the hash and the row lookup of one layer need, fixed at construction.
struct layer_layout {
    std::int64_t layer_id = 0;
    std::vector<int> orders;               ///< n of each order, ascending
    int heads_per_order = 0;               ///< K
    std::int64_t head_dim = 0;             ///< d
    std::vector<std::int64_t> multipliers; ///< m_0..m_{N-1}
    std::vector<std::int64_t> primes;      ///< table size of head h = order_index * K + j
    std::vector<std::int64_t> offsets;     ///< first row of head h in the layer's table
    std::int64_t total_rows = 0;           ///< sum of primes
    token_id vocab_size = 0;               ///< V': canonical ids are in [0, V')
    token_id pad = 0;                      ///< canonical pad id
    std::int64_t seed = 0;                 ///< the configuration's seed (for seeded families)

    [[nodiscard]] std::size_t num_heads() const noexcept { return primes.size(); }
    [[nodiscard]] int max_order() const noexcept { return orders.empty() ? 0 : orders.back(); }
};

/// @brief The reference's per-layer multipliers: odd values drawn with NumPy's
///        `default_rng(seed + 10007 * layer_id).integers(0, half_bound, size=N)`.
/// @throws config_error for a negative seed or layer id, or an empty vocabulary.
inline std::vector<std::int64_t> reference_multipliers(std::int64_t seed, std::int64_t layer_id, int max_ngram,
                                                       token_id canonical_vocab_size) {
    if (canonical_vocab_size < 1)
        throw config_error("canonical_vocab_size = " + std::to_string(canonical_vocab_size) + " must be positive");
    if (seed < 0 || layer_id < 0)
        throw config_error("seed (" + std::to_string(seed) + ") and layer id (" + std::to_string(layer_id) +
                           ") must be non-negative");
    constexpr std::int64_t max_long = std::numeric_limits<std::int64_t>::max();
    const std::int64_t half_bound = std::max<std::int64_t>(1, (max_long / canonical_vocab_size) / 2);
    const auto layer_seed =
        static_cast<numpy::uint128>(seed) + static_cast<numpy::uint128>(10007) * static_cast<numpy::uint128>(layer_id);
    std::vector<std::int64_t> r = numpy::integers(layer_seed, half_bound, static_cast<std::size_t>(max_ngram));
    for (auto& v : r) v = 2 * v + 1;
    return r;
}

/// @brief Checks that multipliers cannot overflow the hash: m >= 1 and m * V' < 2^63, so that
///        every product of a canonical id and a multiplier fits in int64.
inline void validate_multipliers(std::span<const std::int64_t> multipliers, int max_ngram,
                                 token_id canonical_vocab_size) {
    if (multipliers.size() != static_cast<std::size_t>(max_ngram))
        throw config_error("multipliers: " + std::to_string(multipliers.size()) +
                           " given, expected max_ngram = " + std::to_string(max_ngram));
    const std::int64_t limit = std::numeric_limits<std::int64_t>::max() / canonical_vocab_size;
    for (std::size_t k = 0; k < multipliers.size(); ++k)
        if (multipliers[k] < 1 || multipliers[k] > limit)
            throw config_error("multipliers[" + std::to_string(k) + "] = " + std::to_string(multipliers[k]) +
                               " must be in [1, " + std::to_string(limit) +
                               "] so that multiplier x V' (V' = " + std::to_string(canonical_vocab_size) + ") < 2^63");
}

/// @brief Builds the layout of every layer in `cfg.layer_ids`, in order: distinct primes across
///        layers, orders and heads (spec section 3), offsets, and reference multipliers.
/// @param canonical_vocab_size V'
/// @param canonical_pad the canonical id of `cfg.pad_id`
inline std::vector<layer_layout> make_layouts(const hash_config& cfg, token_id canonical_vocab_size,
                                              token_id canonical_pad) {
    cfg.validate();
    if (canonical_vocab_size < 1)
        throw config_error("canonical_vocab_size = " + std::to_string(canonical_vocab_size) + " must be positive");
    if (canonical_pad < 0 || canonical_pad >= canonical_vocab_size)
        throw config_error("canonical pad id " + std::to_string(canonical_pad) + " is outside [0, " +
                           std::to_string(canonical_vocab_size) + ")");
    const std::vector<int> orders = cfg.order_list();
    std::set<std::int64_t> taken;
    std::vector<layer_layout> out;
    for (std::int64_t layer_id : cfg.layer_ids) {
        layer_layout l;
        l.layer_id = layer_id;
        l.orders = orders;
        l.heads_per_order = cfg.heads_per_ngram;
        l.head_dim = cfg.head_dim();
        l.vocab_size = canonical_vocab_size;
        l.pad = canonical_pad;
        l.seed = cfg.seed;
        l.multipliers = reference_multipliers(cfg.seed, layer_id, cfg.max_ngram, canonical_vocab_size);
        validate_multipliers(l.multipliers, cfg.max_ngram, canonical_vocab_size);
        for (std::size_t i = 0; i < orders.size(); ++i) {
            std::int64_t start = cfg.table_size_per_ngram[i] - 1;
            for (int j = 0; j < cfg.heads_per_ngram; ++j) {
                std::int64_t candidate = start + 1;
                while (!is_prime(static_cast<std::uint64_t>(candidate)) || taken.count(candidate) != 0) ++candidate;
                taken.insert(candidate);
                l.offsets.push_back(l.total_rows);
                l.primes.push_back(candidate);
                l.total_rows += candidate;
                start = candidate;
            }
        }
        if (l.total_rows > hash_config::max_table_size)
            throw config_error("layer " + std::to_string(layer_id) + " needs " + std::to_string(l.total_rows) +
                               " rows, more than 2^50");
        out.push_back(std::move(l));
    }
    return out;
}

/// @brief The layout of one layer of `cfg` (the prime search still walks the layers before it).
/// @throws config_error if `layer_id` is not in `cfg.layer_ids`.
inline layer_layout make_layout(const hash_config& cfg, std::int64_t layer_id, token_id canonical_vocab_size,
                                token_id canonical_pad) {
    auto it = std::find(cfg.layer_ids.begin(), cfg.layer_ids.end(), layer_id);
    if (it == cfg.layer_ids.end()) throw config_error("layer_id " + std::to_string(layer_id) + " is not in layer_ids");
    auto all = make_layouts(cfg, canonical_vocab_size, canonical_pad);
    return std::move(all[static_cast<std::size_t>(it - cfg.layer_ids.begin())]);
}

/// @brief Replaces a layout's multipliers with explicit ones (e.g. from a checkpoint), validated.
inline void set_multipliers(layer_layout& layout, std::vector<std::int64_t> multipliers) {
    validate_multipliers(multipliers, layout.max_order(), layout.vocab_size);
    layout.multipliers = std::move(multipliers);
}

ENGRAM_END_NAMESPACE
