#pragma once
// SPDX-License-Identifier: MIT
// Which rank owns which rows of a distributed table, how many row ids a batch sends to each
// owner, and the bytes a row travels as. No MPI here: everything is plain data, testable alone.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/fp8_tensor.hpp>
#include <engram/storage/sharded.hpp>
#include <engram/types.hpp>

#include <algorithm>   // for upper_bound, lower_bound
#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint64_t
#include <cstring>     // for memcpy
#include <numeric>     // for iota
#include <span>        // for span
#include <string>      // for string, to_string
#include <string_view> // for string_view
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace dist {

/// How the rows of a table are split over the ranks.
enum class split {
    rows, ///< equal contiguous row ranges (`shard_bounds_by_rows`)
    heads ///< whole heads, about equal rows each (`shard_bounds_by_head`): a rank's rows are
          ///< whole hash tables, and a head is never split across ranks
};

[[nodiscard]] inline std::string_view split_name(split s) noexcept { return s == split::rows ? "rows" : "heads"; }

/// @brief Row ownership: rank k owns rows `[first_row(k), first_row(k + 1))`.
class row_partition {
public:
    row_partition() = default;

    /// @brief From `ranks + 1` increasing bounds, 0 to the table's rows.
    /// @throws config_error for fewer than two bounds, bounds that do not start at 0 or do not
    ///         increase (every rank owns at least one row).
    explicit row_partition(std::vector<std::size_t> bounds) : bounds_(std::move(bounds)) {
        if (bounds_.size() < 2 || bounds_.front() != 0)
            throw config_error("dist partition: bounds must start at row 0 and name at least one rank");
        for (std::size_t k = 1; k < bounds_.size(); ++k)
            if (bounds_[k] <= bounds_[k - 1])
                throw config_error("dist partition: rank " + std::to_string(k - 1) + " would own no rows (bound " +
                                   std::to_string(bounds_[k]) + " after " + std::to_string(bounds_[k - 1]) + ")");
    }

    /// Equal row ranges over `ranks` ranks. @throws config_error if ranks > rows or ranks == 0.
    [[nodiscard]] static row_partition by_rows(std::size_t rows, std::size_t ranks) {
        return row_partition(shard_bounds_by_rows(rows, ranks));
    }
    /// Whole heads over `ranks` ranks. @throws config_error if ranks > heads or ranks == 0.
    [[nodiscard]] static row_partition by_head(const layer_layout& layout, std::size_t ranks) {
        return row_partition(shard_bounds_by_head(layout, ranks));
    }
    /// `by_rows(layout.total_rows, ranks)` or `by_head(layout, ranks)`.
    [[nodiscard]] static row_partition make(split s, const layer_layout& layout, std::size_t ranks) {
        return s == split::heads ? by_head(layout, ranks) : by_rows(static_cast<std::size_t>(layout.total_rows), ranks);
    }

    [[nodiscard]] std::size_t ranks() const noexcept { return bounds_.size() - 1; }
    [[nodiscard]] std::size_t rows() const noexcept { return bounds_.back(); }
    [[nodiscard]] std::size_t first_row(std::size_t rank) const noexcept { return bounds_[rank]; }
    [[nodiscard]] std::size_t rows_of(std::size_t rank) const noexcept { return bounds_[rank + 1] - bounds_[rank]; }
    [[nodiscard]] std::span<const std::size_t> bounds() const noexcept { return bounds_; }

    /// The rank owning row `r` (r < rows(); unchecked).
    [[nodiscard]] std::size_t owner(std::size_t r) const noexcept {
        return static_cast<std::size_t>(std::upper_bound(bounds_.begin() + 1, bounds_.end() - 1, r) -
                                        (bounds_.begin() + 1));
    }

    /// @brief How many of `sorted_rows` (ascending, all < rows()) each rank owns: `ranks()`
    ///        counts. Ascending rows fall to ascending ranks, so rank k's rows are the k-th run.
    [[nodiscard]] std::vector<std::size_t> counts(std::span<const row_id> sorted_rows) const {
        std::vector<std::size_t> out(ranks(), 0);
        auto it = sorted_rows.begin();
        for (std::size_t k = 0; k < ranks(); ++k) {
            const auto end = std::lower_bound(it, sorted_rows.end(), static_cast<row_id>(bounds_[k + 1]));
            out[k] = static_cast<std::size_t>(end - it);
            it = end;
        }
        return out;
    }

    friend bool operator==(const row_partition&, const row_partition&) = default;

private:
    std::vector<std::size_t> bounds_{0, 1};
};

// ---- wire format -----------------------------------------------------------------------------

/// @brief The bytes a batch of rows travels as, for each kind of local table. A table owner
///        packs the rows asked of it, encoded as stored (f32, bf16, f16, FP8 with block scales,
///        int8: never decoded before sending); the asking rank decodes them on arrival.
///
/// `row_bytes(t)`: bytes per row; `pack(t, local_ids, dst)`: rows `local_ids` of `t` into
/// `dst` [n * row_bytes]; `unpack(t, src, n, out)`: n packed rows decoded to float into
/// `out` [n, dim], exactly as `t.gather` decodes them. `t` is this rank's table (same type and
/// dim on every rank); unpack reads only its dim.
template <class Table>
struct row_wire;

/// Tables whose rows sit in memory, encoded by their codec (dense, mmap, sharded over those).
template <class Table>
requires ::engram::detail::direct_row_table<Table>
struct row_wire<Table> {
    using codec = typename Table::codec_type;
    static std::size_t row_bytes(const Table& t) noexcept { return codec::row_bytes(t.dim()); }
    static void pack(const Table& t, std::span<const row_id> local_ids, std::byte* dst) {
        const std::size_t rb = row_bytes(t);
        for (std::size_t i = 0; i < local_ids.size(); ++i) {
            const auto row = t.encoded_row(static_cast<std::size_t>(local_ids[i]));
            std::memcpy(dst + i * rb, row.data(), rb);
        }
    }
    static void unpack(const Table& t, const std::byte* src, std::size_t n, float* out) {
        const std::size_t rb = row_bytes(t);
        ::engram::detail::gather_rows_at<codec>([src, rb](std::size_t i) { return src + i * rb; }, n, t.dim(), out);
    }
};

/// FP8 codes with separate block scales (DeepSeek-V4.1's tensors in place): a batch of n rows
/// travels as its n * dim codes, then its n * dim / 32 scale bytes.
template <>
struct row_wire<fp8_tensor_table> {
    static std::size_t row_bytes(const fp8_tensor_table& t) noexcept {
        return t.dim() + t.dim() / fp8_tensor_table::block;
    }
    static void pack(const fp8_tensor_table& t, std::span<const row_id> local_ids, std::byte* dst) {
        const std::size_t d = t.dim(), s = d / fp8_tensor_table::block, n = local_ids.size();
        for (std::size_t i = 0; i < n; ++i) {
            const auto r = static_cast<std::size_t>(local_ids[i]);
            std::memcpy(dst + i * d, t.codes(r), d);
            std::memcpy(dst + n * d + i * s, t.scales(r), s);
        }
    }
    static void unpack(const fp8_tensor_table& t, const std::byte* src, std::size_t n, float* out) {
        if (n == 0) return;
        const std::size_t d = t.dim();
        const fp8_tensor_table packed(nullptr, src, src + n * d, n, d);
        std::vector<row_id> ids(n);
        std::iota(ids.begin(), ids.end(), row_id{0});
        packed.gather(ids, std::span<float>(out, n * d));
    }
};

/// A local table the distributed storage can serve: it has a wire format.
template <class T>
concept wire_table = storage_table<T> &&
    requires(const T& t, std::span<const row_id> ids, std::byte* dst, const std::byte* src, float* out) {
    { row_wire<T>::row_bytes(t) } -> std::convertible_to<std::size_t>;
    row_wire<T>::pack(t, ids, dst);
    row_wire<T>::unpack(t, src, std::size_t{}, out);
};

} // namespace dist

ENGRAM_END_NAMESPACE
