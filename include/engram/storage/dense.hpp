#pragma once
// SPDX-License-Identifier: MIT
// Dense in-memory row storage: one aligned block of rows (huge pages when large).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/detail/mapping.hpp>
#include <engram/error.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/row_types.hpp>

#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uintptr_t
#include <span>        // for span
#include <string>      // for to_string
#include <type_traits> // for is_same_v
#include <utility>     // for swap

#include <sys/mman.h> // for madvise, PROT_*, MAP_*

ENGRAM_BEGIN_NAMESPACE

/// @brief Storage policy: every row in one contiguous, zero-initialised block of memory.
///
/// `table<Row>`: `Row` is `float`, `bfloat16` or a row codec (`f16_codec`, `fp8_e4m3_codec`,
/// `int8_codec`, ...). The block comes from an anonymous mapping (zero pages cost nothing until
/// written). Tables of 2 MiB or more are aligned to 2 MiB and advised for transparent huge
/// pages, which cuts TLB misses of random row reads; smaller ones are page aligned.
struct dense_storage {
    template <class Row>
    class table {
    public:
        using codec_type = codec_of_t<Row>;
        static constexpr bool typed = std::is_same_v<Row, float> || std::is_same_v<Row, bfloat16>;
        /// The stored value type for `float` / `bfloat16` rows (bytes for other codecs).
        using value_type = std::conditional_t<typed, Row, std::byte>;
        static constexpr std::size_t huge_page = std::size_t{2} << 20;

        table() = default;

        /// @throws config_error for a zero or overflowing size or a dim the codec cannot store;
        ///         io_error if memory is refused.
        table(std::size_t rows, std::size_t dim) : rows_(rows), dim_(dim) {
            if (rows == 0 || dim == 0)
                throw config_error("dense table: rows (" + std::to_string(rows) + ") and dim (" + std::to_string(dim) +
                                   ") must be positive");
            codec_type::check_dim(dim);
            row_bytes_ = codec_type::row_bytes(dim);
            std::size_t bytes = 0;
            if (__builtin_mul_overflow(rows, row_bytes_, &bytes) || bytes > (std::size_t{1} << 46))
                throw config_error("dense table: " + std::to_string(rows) + " x " + std::to_string(dim) +
                                   " rows are too large");
            bytes_ = bytes;
            const bool huge = bytes >= huge_page;
            map_ = detail::mapping(huge ? bytes + huge_page : bytes, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (map_.empty()) throw io_error("dense table: cannot allocate " + std::to_string(bytes) + " bytes");
            auto addr = reinterpret_cast<std::uintptr_t>(map_.get());
            if (huge) {
                addr = (addr + huge_page - 1) & ~(std::uintptr_t{huge_page} - 1);
#ifdef MADV_HUGEPAGE
                ::madvise(reinterpret_cast<void*>(addr), bytes - bytes % huge_page, MADV_HUGEPAGE);
#endif
            }
            data_ = reinterpret_cast<std::byte*>(addr);
        }

        table(const table&) = delete;
        table& operator=(const table&) = delete;
        table(table&& o) noexcept { swap(o); }
        table& operator=(table&& o) noexcept {
            table tmp(std::move(o));
            swap(tmp);
            return *this;
        }
        ~table() = default;

        [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
        [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
        [[nodiscard]] std::size_t row_bytes() const noexcept { return row_bytes_; }
        [[nodiscard]] std::size_t size_bytes() const noexcept { return bytes_; }

        /// The stored bytes of row i.
        [[nodiscard]] std::span<std::byte> encoded_row(std::size_t i) noexcept {
            return {data_ + i * row_bytes_, row_bytes_};
        }
        [[nodiscard]] std::span<const std::byte> encoded_row(std::size_t i) const noexcept {
            return {data_ + i * row_bytes_, row_bytes_};
        }
        /// Encodes `values` (dim floats) into row i. @throws input_error for a bad index or size.
        void set_row(std::size_t i, std::span<const float> values) {
            check_row(i, values.size());
            codec_type::encode(values.data(), data_ + i * row_bytes_, dim_);
        }
        /// Decodes row i into `out` (dim floats). @throws input_error for a bad index or size.
        void get_row(std::size_t i, std::span<float> out) const {
            check_row(i, out.size());
            codec_type::decode(data_ + i * row_bytes_, out.data(), dim_);
        }
        /// Decoded rows `ids` into `out` [ids.size(), dim]; see `storage_table`.
        void gather(std::span<const row_id> ids, std::span<float> out) const {
            detail::gather_direct<codec_type>(data_, row_bytes_, rows_, dim_, ids, out);
        }

        /// Typed access for float and bfloat16 rows: row i, all values, the first value.
        [[nodiscard]] std::span<value_type> row(std::size_t i) noexcept requires typed {
            return {data() + i * dim_, dim_};
        }
        [[nodiscard]] std::span<const value_type> row(std::size_t i) const noexcept requires typed {
            return {data() + i * dim_, dim_};
        }
        [[nodiscard]] std::span<value_type> values() noexcept requires typed { return {data(), rows_ * dim_}; }
        [[nodiscard]] std::span<const value_type> values() const noexcept requires typed {
            return {data(), rows_ * dim_};
        }
        [[nodiscard]] value_type* data() noexcept requires typed { return reinterpret_cast<value_type*>(data_); }
        [[nodiscard]] const value_type* data() const noexcept requires typed {
            return reinterpret_cast<const value_type*>(data_);
        }
        /// The raw block (rows x row_bytes).
        [[nodiscard]] const std::byte* bytes() const noexcept { return data_; }

    private:
        void check_row(std::size_t i, std::size_t n) const {
            if (i >= rows_ || n != dim_)
                throw input_error("dense table: row " + std::to_string(i) + " with " + std::to_string(n) +
                                  " values, table has " + std::to_string(rows_) + " rows of " + std::to_string(dim_));
        }
        void swap(table& o) noexcept {
            std::swap(rows_, o.rows_);
            std::swap(dim_, o.dim_);
            std::swap(row_bytes_, o.row_bytes_);
            std::swap(bytes_, o.bytes_);
            map_.swap(o.map_);
            std::swap(data_, o.data_);
        }

        std::size_t rows_ = 0, dim_ = 0, row_bytes_ = 0, bytes_ = 0;
        detail::mapping map_;
        std::byte* data_ = nullptr;
    };
};

static_assert(storage_policy<dense_storage, float>);
static_assert(storage_policy<dense_storage, bfloat16>);

ENGRAM_END_NAMESPACE
