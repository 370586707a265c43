#pragma once
// SPDX-License-Identifier: MIT
// Dense in-memory row storage: one aligned block of rows x dim values (huge pages when large).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/row_types.hpp>

#include <cstddef> // for size_t
#include <cstring> // for memcpy
#include <span>    // for span
#include <string>  // for to_string
#include <utility> // for exchange

#include <sys/mman.h> // for mmap, madvise

ENGRAM_BEGIN_NAMESPACE

/// @brief Storage policy: every row in one contiguous, zero-initialised block of memory.
///
/// The block comes from an anonymous mapping (zero pages are free until written). Tables of
/// 2 MiB or more are aligned to 2 MiB and advised for transparent huge pages, which cuts TLB
/// misses of random row reads; smaller ones are page aligned. Rows are contiguous, so row i
/// starts at `data() + i * dim()`.
struct dense_storage {
    template <class V>
    class table {
    public:
        using value_type = V;
        static constexpr std::size_t huge_page = std::size_t{2} << 20;

        table() = default;

        /// @throws config_error for a zero or overflowing size, io_error if memory is refused.
        table(std::size_t rows, std::size_t dim) : rows_(rows), dim_(dim) {
            if (rows == 0 || dim == 0)
                throw config_error("dense table: rows (" + std::to_string(rows) + ") and dim (" + std::to_string(dim) +
                                   ") must be positive");
            std::size_t bytes = 0;
            if (__builtin_mul_overflow(rows, dim, &bytes) || __builtin_mul_overflow(bytes, sizeof(V), &bytes) ||
                bytes > (std::size_t{1} << 46))
                throw config_error("dense table: " + std::to_string(rows) + " x " + std::to_string(dim) +
                                   " rows are too large");
            bytes_ = bytes;
            const bool huge = bytes >= huge_page;
            map_bytes_ = huge ? bytes + huge_page : bytes;
            void* p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) throw io_error("dense table: cannot allocate " + std::to_string(bytes) + " bytes");
            map_ = p;
            auto addr = reinterpret_cast<std::uintptr_t>(p);
            if (huge) {
                addr = (addr + huge_page - 1) & ~(std::uintptr_t{huge_page} - 1);
#ifdef MADV_HUGEPAGE
                ::madvise(reinterpret_cast<void*>(addr), bytes - bytes % huge_page, MADV_HUGEPAGE);
#endif
            }
            data_ = reinterpret_cast<V*>(addr);
        }

        table(const table&) = delete;
        table& operator=(const table&) = delete;
        table(table&& o) noexcept { swap(o); }
        table& operator=(table&& o) noexcept {
            table tmp(std::move(o));
            swap(tmp);
            return *this;
        }
        ~table() {
            if (map_ != nullptr) ::munmap(map_, map_bytes_);
        }

        [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
        [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
        [[nodiscard]] std::size_t size_bytes() const noexcept { return bytes_; }
        [[nodiscard]] V* data() noexcept { return data_; }
        [[nodiscard]] const V* data() const noexcept { return data_; }
        [[nodiscard]] std::span<V> row(std::size_t i) noexcept { return {data_ + i * dim_, dim_}; }
        [[nodiscard]] std::span<const V> row(std::size_t i) const noexcept { return {data_ + i * dim_, dim_}; }
        /// All values, row-major.
        [[nodiscard]] std::span<V> values() noexcept { return {data_, rows_ * dim_}; }
        [[nodiscard]] std::span<const V> values() const noexcept { return {data_, rows_ * dim_}; }

    private:
        void swap(table& o) noexcept {
            std::swap(rows_, o.rows_);
            std::swap(dim_, o.dim_);
            std::swap(bytes_, o.bytes_);
            std::swap(map_bytes_, o.map_bytes_);
            std::swap(map_, o.map_);
            std::swap(data_, o.data_);
        }

        std::size_t rows_ = 0, dim_ = 0, bytes_ = 0, map_bytes_ = 0;
        void* map_ = nullptr;
        V* data_ = nullptr;
    };
};

static_assert(storage_policy<dense_storage, float>);
static_assert(storage_policy<dense_storage, bfloat16>);

ENGRAM_END_NAMESPACE
