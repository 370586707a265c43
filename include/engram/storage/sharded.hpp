#pragma once
// SPDX-License-Identifier: MIT
// Sharded row storage: one logical table whose rows are split, by row range or by head, over
// several inner tables (files, memory blocks, caches), with the gather of one dense table.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/direct.hpp>
#include <engram/types.hpp>

#include <algorithm>   // for sort, upper_bound, min
#include <array>       // for array
#include <concepts>    // for convertible_to
#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint32_t, uint64_t
#include <cstring>     // for memcpy
#include <numeric>     // for iota
#include <span>        // for span
#include <string>      // for to_string
#include <type_traits> // for invoke_result_t, remove_cvref_t
#include <utility>     // for move
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// A table whose rows sit in addressable memory: `encoded_row(i)` gives row i's stored bytes.
template <class T>
concept direct_row_table = requires(const T& t, std::size_t i) {
    { t.encoded_row(i) } -> std::convertible_to<std::span<const std::byte>>;
};

/// A table whose rows are stored one after the other: row i at `bytes() + i * row_bytes()`.
template <class T>
concept strided_row_table = direct_row_table<T> && requires(const T& t) {
    { t.bytes() } -> std::convertible_to<const std::byte*>;
    { t.row_bytes() } -> std::convertible_to<std::size_t>;
};

template <class T>
concept row_readable = requires(const T& t, std::size_t i, std::span<float> out) {
    t.get_row(i, out);
};

template <class T>
concept row_writable = requires(T& t, std::size_t i, std::span<const float> values) {
    t.set_row(i, values);
};

} // namespace detail

/// @brief Row bounds that split `rows` rows into `n_shards` contiguous ranges of equal size
///        (the first `rows % n_shards` ranges hold one row more): `n_shards + 1` values, from 0
///        to `rows`.
/// @throws config_error unless 1 <= n_shards <= rows.
inline std::vector<std::size_t> shard_bounds_by_rows(std::size_t rows, std::size_t n_shards) {
    if (n_shards == 0 || n_shards > rows)
        throw config_error("sharded table: cannot split " + std::to_string(rows) + " rows into " +
                           std::to_string(n_shards) + " non-empty shards");
    std::vector<std::size_t> bounds(n_shards + 1);
    const std::size_t base = rows / n_shards, extra = rows % n_shards;
    for (std::size_t k = 0; k <= n_shards; ++k) bounds[k] = base * k + std::min(k, extra);
    return bounds;
}

/// @brief Row bounds that split a layer's table into `n_shards` groups of whole heads: every
///        bound is a head offset, and the groups hold about the same number of rows (each bound
///        is the head offset nearest to `k * total_rows / n_shards`). `n_shards + 1` values, from
///        0 to `layout.total_rows`; `n_shards == layout.num_heads()` gives one shard per head.
/// @throws config_error unless 1 <= n_shards <= heads, or if the layout's offsets are not the
///         running sum of its primes.
inline std::vector<std::size_t> shard_bounds_by_head(const layer_layout& layout, std::size_t n_shards) {
    const std::size_t heads = layout.num_heads();
    if (n_shards == 0 || n_shards > heads)
        throw config_error("sharded table: cannot split " + std::to_string(heads) + " heads into " +
                           std::to_string(n_shards) + " shards");
    if (layout.offsets.size() != heads)
        throw config_error("sharded table: layout has " + std::to_string(layout.offsets.size()) + " offsets for " +
                           std::to_string(heads) + " heads");
    std::int64_t running = 0;
    for (std::size_t h = 0; h < heads; ++h) {
        if (layout.offsets[h] != running || layout.primes[h] < 1)
            throw config_error("sharded table: layout offset of head " + std::to_string(h) + " (" +
                               std::to_string(layout.offsets[h]) + ") is not the sum of the primes before it (" +
                               std::to_string(running) + ")");
        running += layout.primes[h];
    }
    if (running != layout.total_rows)
        throw config_error("sharded table: layout total_rows " + std::to_string(layout.total_rows) +
                           " differs from the sum of its primes " + std::to_string(running));
    const auto total = static_cast<std::size_t>(layout.total_rows);
    std::vector<std::size_t> bounds{0};
    std::size_t first = 1; // smallest head whose offset may start the next shard
    for (std::size_t k = 1; k < n_shards; ++k) {
        const auto target = static_cast<std::size_t>(static_cast<detail::uint128>(total) * k / n_shards);
        const std::size_t last = heads - (n_shards - k); // leave one head for each later shard
        std::size_t best = first;
        auto distance = [&](std::size_t h) {
            const auto off = static_cast<std::size_t>(layout.offsets[h]);
            return off > target ? off - target : target - off;
        };
        for (std::size_t h = first + 1; h <= last; ++h)
            if (distance(h) < distance(best)) best = h;
        bounds.push_back(static_cast<std::size_t>(layout.offsets[best]));
        first = best + 1;
    }
    bounds.push_back(total);
    return bounds;
}

/// @brief One logical table of `rows()` rows whose rows are split over several inner tables
///        ("shards") of the same type, each holding a contiguous row range.
///
/// Row `r` lives in the shard `k` with `first_row(k) <= r < first_row(k + 1)`, at local row
/// `r - first_row(k)`. The gather returns exactly what one dense table of the same rows would.
///
/// `gather` checks every id first, then:
/// - if `Inner` has direct row access (`encoded_row`, e.g. dense or mmap shards), decodes each
///   row in place from its shard, with the same prefetching as the dense gather;
/// - otherwise groups the ids by shard (a counting pass, then one sub-batch per shard through
///   the inner `gather`, then the decoded rows are scattered back into request order), so that
///   each shard sees one call per batch.
///
/// Thread safety: `gather`, `get_row` and the accessors are safe from several threads at once
/// when the inner tables' are (they keep no mutable state); `set_row` needs exclusive access.
template <storage_table Inner>
class sharded_table {
public:
    using inner_type = Inner;
    using codec_type = typename Inner::codec_type;
    /// True when every shard offers `encoded_row`: the gather decodes rows in place.
    static constexpr bool direct = detail::direct_row_table<Inner>;

    /// A shard: the inner table holding rows `[first_row, first_row + table.rows())`.
    struct shard_spec {
        std::size_t first_row = 0;
        Inner table;
    };

    sharded_table() = default;

    /// @brief Takes the shards, in any order.
    /// @throws config_error if there are none, one is empty, their dims differ, or their row
    ///         ranges leave a gap, overlap or do not start at row 0.
    explicit sharded_table(std::vector<shard_spec> shards) {
        if (shards.empty()) throw config_error("sharded table: no shards");
        std::vector<std::size_t> order(shards.size());
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return shards[a].first_row < shards[b].first_row; });
        dim_ = static_cast<std::size_t>(shards[order[0]].table.dim());
        std::size_t next = 0;
        for (std::size_t k = 0; k < order.size(); ++k) {
            const shard_spec& s = shards[order[k]];
            const auto n = static_cast<std::size_t>(s.table.rows());
            const auto d = static_cast<std::size_t>(s.table.dim());
            const std::string which = "sharded table: shard at row " + std::to_string(s.first_row);
            if (n == 0) throw config_error(which + " has no rows");
            if (d != dim_)
                throw config_error(which + " has dim " + std::to_string(d) + ", the first shard has " +
                                   std::to_string(dim_));
            if (s.first_row != next)
                throw config_error(which + (s.first_row < next ? " overlaps" : " leaves a gap after") +
                                   " the rows before it (expected the next shard at row " + std::to_string(next) + ")");
            if (__builtin_add_overflow(next, n, &next)) throw config_error(which + ": row count overflows");
        }
        rows_ = next;
        tables_.reserve(shards.size());
        bounds_.reserve(shards.size() + 1);
        for (std::size_t k : order) {
            bounds_.push_back(shards[k].first_row);
            tables_.push_back(std::move(shards[k].table));
        }
        bounds_.push_back(rows_);
    }

    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
    [[nodiscard]] std::size_t num_shards() const noexcept { return tables_.size(); }
    /// The inner table of shard k (in row order), k < num_shards().
    [[nodiscard]] const Inner& shard(std::size_t k) const noexcept { return tables_[k]; }
    [[nodiscard]] Inner& shard(std::size_t k) noexcept { return tables_[k]; }
    /// The first row of shard k; `first_row(num_shards()) == rows()`.
    [[nodiscard]] std::size_t first_row(std::size_t k) const noexcept { return bounds_[k]; }
    /// The row bounds: num_shards() + 1 values from 0 to rows().
    [[nodiscard]] std::span<const std::size_t> bounds() const noexcept { return bounds_; }

    /// The shard holding row `r` (r < rows(); unchecked).
    [[nodiscard]] std::size_t shard_of(std::size_t r) const noexcept {
        const std::size_t n = tables_.size();
        if (n <= 8) { // a short count beats a binary search: no data-dependent branch at all
            std::size_t k = 0;
            for (std::size_t j = 1; j < n; ++j) k += static_cast<std::size_t>(r >= bounds_[j]);
            return k;
        }
        return static_cast<std::size_t>(std::upper_bound(bounds_.begin() + 1, bounds_.end() - 1, r) -
                                        (bounds_.begin() + 1));
    }

    /// The stored bytes of row i (i < rows(); unchecked), when the shards offer direct access.
    [[nodiscard]] std::span<const std::byte> encoded_row(std::size_t i) const noexcept requires direct {
        const std::size_t k = shard_of(i);
        return tables_[k].encoded_row(i - bounds_[k]);
    }

    /// Encodes `values` (dim floats) into row i of its shard. Not safe concurrently with reads.
    /// @throws input_error for a bad index or size.
    void set_row(std::size_t i, std::span<const float> values) requires detail::row_writable<Inner> {
        check_row(i, values.size());
        const std::size_t k = shard_of(i);
        tables_[k].set_row(i - bounds_[k], values);
    }
    /// Decodes row i into `out` (dim floats). @throws input_error for a bad index or size.
    void get_row(std::size_t i, std::span<float> out) const requires detail::row_readable<Inner> {
        check_row(i, out.size());
        const std::size_t k = shard_of(i);
        tables_[k].get_row(i - bounds_[k], out);
    }

    /// Decoded rows `ids` into `out` [ids.size(), dim]; see `storage_table`.
    void gather(std::span<const row_id> ids, std::span<float> out) const {
        detail::check_gather(ids, rows_, dim_, out.size());
        if (ids.empty()) return;
        if constexpr (direct)
            gather_in_place(ids, out);
        else
            gather_grouped(ids, out);
    }

private:
    void check_row(std::size_t i, std::size_t n) const {
        if (i >= rows_ || n != dim_)
            throw input_error("sharded table: row " + std::to_string(i) + " with " + std::to_string(n) +
                              " values, table has " + std::to_string(rows_) + " rows of " + std::to_string(dim_));
    }

    const std::byte* row_address(row_id id) const noexcept {
        const auto r = static_cast<std::size_t>(id);
        const std::size_t k = shard_of(r);
        return tables_[k].encoded_row(r - bounds_[k]).data();
    }

    /// Direct shards: each row decoded from its shard's memory by the dense gather's row loop
    /// and decode (detail::gather_rows_at: prefetching ahead, AVX-512 where the CPU has it).
    void gather_in_place(std::span<const row_id> ids, std::span<float> out) const {
        constexpr std::size_t few = 8;
        if constexpr (detail::strided_row_table<Inner>) {
            const std::size_t n = tables_.size();
            if (n <= few) {
                // Few strided shards: their row blocks and bounds in registers or L1, so that a
                // row's address is a few compares and one multiply-add.
                std::array<const std::byte*, few> base{};
                std::array<std::size_t, few + 1> bound{};
                for (std::size_t k = 0; k < n; ++k) {
                    base[k] = tables_[k].bytes();
                    bound[k] = bounds_[k];
                }
                const std::size_t stride = codec_type::row_bytes(dim_);
                detail::gather_rows_at<codec_type>(
                    [&base, &bound, ids, n, stride](std::size_t i) {
                        const auto r = static_cast<std::size_t>(ids[i]);
                        std::size_t k = 0;
                        for (std::size_t j = 1; j < n; ++j) k += static_cast<std::size_t>(r >= bound[j]);
                        return base[k] + (r - bound[k]) * stride;
                    },
                    ids.size(), dim_, out.data());
                return;
            }
        }
        detail::gather_rows_at<codec_type>([this, ids](std::size_t i) { return row_address(ids[i]); }, ids.size(), dim_,
                                           out.data());
    }

    /// Other shards: one inner gather per shard touched, then a scatter into request order.
    void gather_grouped(std::span<const row_id> ids, std::span<float> out) const {
        const std::size_t n = ids.size(), n_shards = tables_.size();
        // Counting pass: the shard of every id, and how many ids each shard gets.
        std::vector<std::uint32_t> shard_of_id(n);
        std::vector<std::size_t> start(n_shards + 1, 0);
        for (std::size_t i = 0; i < n; ++i) {
            const auto k = static_cast<std::uint32_t>(shard_of(static_cast<std::size_t>(ids[i])));
            shard_of_id[i] = k;
            ++start[k + 1];
        }
        for (std::size_t k = 0; k < n_shards; ++k) start[k + 1] += start[k];
        // Sub-batches of local row ids, in shard order, and where each row goes back to.
        std::vector<row_id> local(n);
        std::vector<std::size_t> position(n);
        {
            std::vector<std::size_t> cursor(start.begin(), start.end() - 1);
            for (std::size_t i = 0; i < n; ++i) {
                const std::size_t k = shard_of_id[i];
                const std::size_t j = cursor[k]++;
                local[j] = ids[i] - static_cast<row_id>(bounds_[k]);
                position[j] = i;
            }
        }
        for (std::size_t k = 0; k < n_shards; ++k) {
            if (start[k + 1] - start[k] == n) { // one shard holds every row: no scatter needed
                tables_[k].gather(std::span<const row_id>(local.data(), n), out);
                return;
            }
        }
        std::vector<float> decoded(n * dim_);
        for (std::size_t k = 0; k < n_shards; ++k) {
            const std::size_t count = start[k + 1] - start[k];
            if (count == 0) continue;
            tables_[k].gather(std::span<const row_id>(local.data() + start[k], count),
                              std::span<float>(decoded.data() + start[k] * dim_, count * dim_));
        }
        for (std::size_t j = 0; j < n; ++j)
            std::memcpy(out.data() + position[j] * dim_, decoded.data() + j * dim_, dim_ * sizeof(float));
    }

    std::vector<Inner> tables_;
    std::vector<std::size_t> bounds_;
    std::size_t rows_ = 0, dim_ = 0;
};

/// @brief Builds a sharded table from row bounds (e.g. `shard_bounds_by_rows` or
///        `shard_bounds_by_head`): shard k is `make(first_row, rows)` for rows
///        `[bounds[k], bounds[k + 1])`.
/// @throws config_error for fewer than two bounds or bounds that do not increase from 0;
///         whatever `make` throws.
template <class Make>
auto make_sharded_table(std::span<const std::size_t> bounds, Make&& make)
    -> sharded_table<std::remove_cvref_t<std::invoke_result_t<Make&, std::size_t, std::size_t>>> {
    using inner = std::remove_cvref_t<std::invoke_result_t<Make&, std::size_t, std::size_t>>;
    using result = sharded_table<inner>;
    if (bounds.size() < 2 || bounds.front() != 0)
        throw config_error("sharded table: bounds must start at row 0 and name at least one shard");
    std::vector<typename result::shard_spec> shards;
    shards.reserve(bounds.size() - 1);
    for (std::size_t k = 0; k + 1 < bounds.size(); ++k) {
        if (bounds[k + 1] <= bounds[k])
            throw config_error("sharded table: bound " + std::to_string(k + 1) + " (" + std::to_string(bounds[k + 1]) +
                               ") does not exceed the one before it (" + std::to_string(bounds[k]) + ")");
        shards.push_back(typename result::shard_spec{bounds[k], make(bounds[k], bounds[k + 1] - bounds[k])});
    }
    return result(std::move(shards));
}

/// @brief Storage policy: `Shards` inner tables of `InnerPolicy`, split by row range
///        (`shard_bounds_by_rows`), behind one `sharded_table`.
///
/// `table<Row>(rows, dim)` builds the shards (config_error if rows < Shards); `shard(k)`,
/// `set_row` and `get_row` route to the shard holding the row.
template <class InnerPolicy, std::size_t Shards>
struct sharded_storage {
    static_assert(Shards >= 1, "sharded_storage needs at least one shard");

    template <class Row>
    class table : public sharded_table<typename InnerPolicy::template table<Row>> {
        using inner = typename InnerPolicy::template table<Row>;
        using base = sharded_table<inner>;

    public:
        static constexpr std::size_t shard_count = Shards;

        table() = default;
        /// @throws config_error if rows < Shards, or whatever the inner tables throw.
        table(std::size_t rows, std::size_t dim)
            : base(make_sharded_table(std::span<const std::size_t>(shard_bounds_by_rows(rows, Shards)),
                                      [dim](std::size_t, std::size_t n) { return inner(n, dim); })) {}
    };
};

static_assert(storage_table<sharded_table<dense_storage::table<float>>>);
static_assert(storage_policy<sharded_storage<dense_storage, 4>, float>);
static_assert(storage_policy<sharded_storage<dense_storage, 4>, bfloat16>);

ENGRAM_END_NAMESPACE
