#pragma once
// SPDX-License-Identifier: MIT
// Read-only row storage mapped from a file (a raw row block or a safetensors tensor), zero-copy.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/detail/mapping.hpp>
#include <engram/error.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/row_types.hpp>

#include <fcntl.h>    // for open, O_RDONLY, O_CLOEXEC
#include <sys/mman.h> // for madvise, PROT_*, MAP_*
#include <sys/stat.h> // for fstat, S_ISREG, S_ISDIR
#include <unistd.h>   // for sysconf, close

#include <cerrno>      // for errno
#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint64_t, uintptr_t
#include <filesystem>  // for path
#include <map>         // for map
#include <span>        // for span
#include <string>      // for string, to_string
#include <string_view> // for string_view
#include <type_traits> // for is_same_v, conditional_t
#include <utility>     // for swap, move
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief Storage policy: the rows live in a file, mapped read-only (`PROT_READ`, `MAP_SHARED`).
///
/// `table<Row>` never copies the rows: the page cache is the storage, and a process's resident
/// memory grows only with the pages its lookups touch, so a table larger than the machine's RAM
/// opens and serves random lookups (each random row read costs one page fault the first time).
/// The row block is advised `MADV_RANDOM` (no read-ahead of neighbours nobody asked for);
/// `advise_willneed` asks the kernel to page a range in ahead of use.
///
/// Two ways to open one:
/// - `table(path, offset, rows, dim)`: `rows` rows of `codec_type::row_bytes(dim)` bytes each,
///   starting `offset` bytes into the file (any offset; the mapping starts at the page below).
/// - `table::from_safetensors(path, tensor, dim)`: a tensor of a safetensors file, the header
///   validated as `safetensors_file::open` does. `float`, `bfloat16` and `f16` rows need the
///   tensor's native dtype (F32, BF16, F16) and shape `[rows, dim]`; other codecs need a U8
///   tensor `[rows, row_bytes(dim)]` and the `dim` argument.
///
/// `Row` is `float`, `bfloat16` or a row codec, as for `dense_storage`. Tables are read-only,
/// move-only and safe to read from several threads at once.
/// @pre Nobody truncates the file while it is mapped: reading lost pages raises SIGBUS (this is
///      what every mmap-based reader, including safetensors' own, assumes).
struct mmap_storage {
    template <class Row>
    class table {
    public:
        using codec_type = codec_of_t<Row>;
        static constexpr bool typed = std::is_same_v<Row, float> || std::is_same_v<Row, bfloat16>;
        /// The stored value type for `float` / `bfloat16` rows (bytes for other codecs).
        using value_type = std::conditional_t<typed, Row, std::byte>;

        table() = default;

        /// @brief Maps `rows` rows of width `dim` stored `offset` bytes into the file at `path`.
        /// @throws config_error for zero or overflowing sizes or a dim the codec cannot store;
        ///         io_error if the file cannot be opened, is not a regular file or cannot be
        ///         mapped; format_error if the file is too small for the rows at that offset.
        table(const std::filesystem::path& path, std::uint64_t offset, std::size_t rows, std::size_t dim) {
            set_shape(rows, dim, "mmap table '" + path.string() + "'");
            const file_handle fh = open_file(path);
            std::uint64_t end = 0;
            if (__builtin_add_overflow(offset, static_cast<std::uint64_t>(bytes_), &end) || end > fh.size)
                throw format_error("mmap table: '" + path.string() + "' is " + std::to_string(fh.size) +
                                   " bytes, too small for " + std::to_string(rows) + " rows of " +
                                   std::to_string(row_bytes_) + " bytes at offset " + std::to_string(offset) +
                                   " (needs " + std::to_string(offset) + " + " + std::to_string(bytes_) + " bytes)");
            const auto page = page_size();
            const std::uint64_t map_offset = offset - offset % page;
            const auto map_bytes = static_cast<std::size_t>(end - map_offset);
            map_ = detail::mapping(map_bytes, PROT_READ, MAP_SHARED, fh.fd, static_cast<::off_t>(map_offset));
            if (map_.empty())
                throw io_error("mmap table: cannot map " + std::to_string(map_bytes) + " bytes of '" + path.string() +
                               "' at offset " + std::to_string(map_offset) + ": " + detail::errno_text(errno));
            data_ = static_cast<const std::byte*>(map_.get()) + (offset - map_offset);
            path_ = path;
            offset_ = offset;
            advise(MADV_RANDOM, 0, rows_);
        }

        /// @brief Maps tensor `tensor` of the safetensors file at `path` (see the class notes).
        /// @param dim the row width; 0 takes it from the shape (native dtypes only).
        /// @throws io_error as the raw constructor; format_error for an invalid safetensors
        ///         file, a missing tensor, or a dtype / shape that does not hold `Row` rows.
        static table from_safetensors(const std::filesystem::path& path, std::string_view tensor = "rows",
                                      std::size_t dim = 0) {
            const file_handle fh = open_file(path);
            const std::string where = "safetensors file '" + path.string() + "'";
            if (fh.size < 8)
                throw format_error(where + ": file is " + std::to_string(fh.size) +
                                   " bytes, shorter than the 8-byte header length field");
            table t;
            // The whole file is mapped once: the header pages are read here, the row pages only
            // when looked up.
            t.map_ = detail::mapping(static_cast<std::size_t>(fh.size), PROT_READ, MAP_SHARED, fh.fd, 0);
            if (t.map_.empty())
                throw io_error("mmap table: cannot map '" + path.string() + "' (" + std::to_string(fh.size) +
                               " bytes): " + detail::errno_text(errno));
            const auto* base = static_cast<const std::byte*>(t.map_.get());
            std::map<std::string, std::string> metadata;
            std::vector<tensor_view> tensors;
            detail::parse_safetensors({base, t.map_.size()}, where, metadata, tensors);
            const tensor_view* view = nullptr;
            for (const auto& v : tensors)
                if (v.name == tensor) view = &v;
            if (view == nullptr) throw format_error(where + ": missing tensor " + detail::quoted_excerpt(tensor, 256));
            const std::string ctx = where + ": tensor '" + view->name + "'";
            const dtype want = native_dtype();
            if (view->shape.size() != 2 || view->shape[0] == 0)
                throw format_error(ctx + " has shape " + detail::shape_string(view->shape) + ", expected [rows, " +
                                   (want == dtype::u8 ? "row_bytes" : "dim") + "] with rows > 0");
            const auto n_rows = static_cast<std::size_t>(view->shape[0]);
            const auto width = static_cast<std::size_t>(view->shape[1]);
            if (want != dtype::u8) {
                if (view->type != want)
                    throw format_error(ctx + " has dtype " + std::string(dtype_name(view->type)) + ", but " +
                                       std::string(codec_type::name) + " rows need " + std::string(dtype_name(want)));
                if (dim != 0 && dim != width)
                    throw format_error(ctx + " has rows of " + std::to_string(width) + " values, expected " +
                                       std::to_string(dim));
                dim = width;
            } else {
                if (view->type != dtype::u8)
                    throw format_error(ctx + " has dtype " + std::string(dtype_name(view->type)) + ", but " +
                                       std::string(codec_type::name) + " rows are stored as U8 [rows, row_bytes]");
                if (dim == 0)
                    throw config_error(ctx + ": " + std::string(codec_type::name) +
                                       " rows are bytes; pass the row width (dim)");
                codec_type::check_dim(dim);
                if (codec_type::row_bytes(dim) != width)
                    throw format_error(ctx + " has rows of " + std::to_string(width) + " bytes, but " +
                                       std::string(codec_type::name) + " rows of " + std::to_string(dim) +
                                       " values take " + std::to_string(codec_type::row_bytes(dim)));
            }
            t.set_shape(n_rows, dim, ctx);
            t.data_ = view->bytes.data();
            t.path_ = path;
            t.offset_ = static_cast<std::uint64_t>(t.data_ - base);
            t.advise(MADV_RANDOM, 0, t.rows_);
            return t;
        }

        /// @brief As above, for the file a `safetensors_file` was opened from (it is mapped anew).
        /// @throws io_error if `file` was not opened from a path (`from_bytes`).
        static table from_safetensors(const safetensors_file& file, std::string_view tensor = "rows",
                                      std::size_t dim = 0) {
            if (file.path().empty())
                throw io_error("mmap table: a safetensors buffer has no file to map; open the file by path");
            return from_safetensors(file.path(), tensor, dim);
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
        /// rows x row_bytes: the size of the row block in the file.
        [[nodiscard]] std::size_t size_bytes() const noexcept { return bytes_; }
        /// The file and the byte offset of the first row in it.
        [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
        [[nodiscard]] std::uint64_t file_offset() const noexcept { return offset_; }

        /// The stored bytes of row i (unchecked; reading it may page it in).
        [[nodiscard]] std::span<const std::byte> encoded_row(std::size_t i) const noexcept {
            return {data_ + i * row_bytes_, row_bytes_};
        }
        /// Decodes row i into `out` (dim floats). @throws input_error for a bad index or size.
        void get_row(std::size_t i, std::span<float> out) const {
            if (i >= rows_ || out.size() != dim_)
                throw input_error("mmap table: row " + std::to_string(i) + " with " + std::to_string(out.size()) +
                                  " values, table has " + std::to_string(rows_) + " rows of " + std::to_string(dim_));
            codec_type::decode(data_ + i * row_bytes_, out.data(), dim_);
        }
        /// Decoded rows `ids` into `out` [ids.size(), dim]; see `storage_table`.
        void gather(std::span<const row_id> ids, std::span<float> out) const {
            detail::gather_direct<codec_type>(data_, row_bytes_, rows_, dim_, ids, out);
        }

        /// Typed access for float and bfloat16 rows (the values may be unaligned only if the file
        /// put them so; safetensors files written by engram align every tensor).
        [[nodiscard]] std::span<const value_type> row(std::size_t i) const noexcept requires typed {
            return {reinterpret_cast<const value_type*>(data_ + i * row_bytes_), dim_};
        }
        /// The raw row block (rows x row_bytes).
        [[nodiscard]] const std::byte* bytes() const noexcept { return data_; }

        /// @brief Asks the kernel to read rows [first, first + count) in now (`MADV_WILLNEED`),
        ///        e.g. a hot range before serving. Advisory: errors are ignored.
        void advise_willneed(std::size_t first = 0, std::size_t count = std::size_t(-1)) const noexcept {
            advise(MADV_WILLNEED, first, count);
        }
        /// @brief Drops this mapping's pages of rows [first, first + count) (`MADV_DONTNEED`):
        ///        resident memory shrinks; the page cache keeps the data, so nothing is lost.
        void advise_dontneed(std::size_t first = 0, std::size_t count = std::size_t(-1)) const noexcept {
            advise(MADV_DONTNEED, first, count);
        }

    private:
        struct file_handle {
            int fd = -1;
            std::uint64_t size = 0;
            file_handle() = default;
            file_handle(file_handle&& o) noexcept : fd(std::exchange(o.fd, -1)), size(o.size) {}
            file_handle& operator=(file_handle&&) = delete;
            ~file_handle() {
                if (fd >= 0) ::close(fd);
            }
        };

        static file_handle open_file(const std::filesystem::path& path) {
            file_handle fh;
            const std::string shown = "'" + path.string() + "'";
            fh.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fh.fd < 0) throw io_error("mmap table: cannot open " + shown + ": " + detail::errno_text(errno));
            struct stat st {};
            if (::fstat(fh.fd, &st) != 0)
                throw io_error("mmap table: cannot stat " + shown + ": " + detail::errno_text(errno));
            if (S_ISDIR(st.st_mode)) throw io_error("mmap table: " + shown + " is a directory, not a file");
            if (!S_ISREG(st.st_mode)) throw io_error("mmap table: " + shown + " is not a regular file");
            fh.size = static_cast<std::uint64_t>(st.st_size);
            return fh;
        }

        static std::size_t page_size() noexcept {
            const long p = ::sysconf(_SC_PAGESIZE);
            return p > 0 ? static_cast<std::size_t>(p) : 4096;
        }

        /// The native safetensors dtype of the codec's rows, or U8 for byte-encoded codecs.
        static constexpr dtype native_dtype() noexcept {
            if constexpr (requires { codec_type::name; }) {
                if (codec_type::name == std::string_view("f32")) return dtype::f32;
                if (codec_type::name == std::string_view("bf16")) return dtype::bf16;
                if (codec_type::name == std::string_view("f16")) return dtype::f16;
            }
            return dtype::u8;
        }

        void set_shape(std::size_t rows, std::size_t dim, const std::string& where) {
            if (rows == 0 || dim == 0)
                throw config_error(where + ": rows (" + std::to_string(rows) + ") and dim (" + std::to_string(dim) +
                                   ") must be positive");
            codec_type::check_dim(dim);
            const std::size_t rb = codec_type::row_bytes(dim);
            std::size_t bytes = 0;
            if (__builtin_mul_overflow(rows, rb, &bytes))
                throw config_error(where + ": " + std::to_string(rows) + " rows of " + std::to_string(rb) +
                                   " bytes overflow the address space");
            rows_ = rows;
            dim_ = dim;
            row_bytes_ = rb;
            bytes_ = bytes;
        }

        /// madvise on the pages holding rows [first, first + count), clipped to the table.
        void advise(int advice, std::size_t first, std::size_t count) const noexcept {
            if (map_.empty() || first >= rows_) return;
            if (count > rows_ - first) count = rows_ - first;
            const auto page = static_cast<std::uintptr_t>(page_size());
            auto begin = reinterpret_cast<std::uintptr_t>(data_ + first * row_bytes_);
            const auto end = reinterpret_cast<std::uintptr_t>(data_ + (first + count) * row_bytes_);
            begin -= begin % page; // stays inside the mapping, which starts on a page boundary
            if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, advice);
        }

        void swap(table& o) noexcept {
            std::swap(rows_, o.rows_);
            std::swap(dim_, o.dim_);
            std::swap(row_bytes_, o.row_bytes_);
            std::swap(bytes_, o.bytes_);
            std::swap(offset_, o.offset_);
            map_.swap(o.map_);
            std::swap(data_, o.data_);
            std::swap(path_, o.path_);
        }

        std::size_t rows_ = 0, dim_ = 0, row_bytes_ = 0, bytes_ = 0;
        std::uint64_t offset_ = 0;
        detail::mapping map_;
        const std::byte* data_ = nullptr;
        std::filesystem::path path_;
    };
};

static_assert(storage_table<mmap_storage::table<float>>);
static_assert(storage_policy<mmap_storage, float>);
static_assert(storage_policy<mmap_storage, bfloat16>);

ENGRAM_END_NAMESPACE
