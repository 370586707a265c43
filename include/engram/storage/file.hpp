#pragma once
// SPDX-License-Identifier: MIT
// Row storage read from a file with pread (no mapping): tables larger than memory, fetched in
// batches of sorted rows whose neighbours are merged into one request.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>

#include <nlohmann/json.hpp> // for json (the safetensors header)

#include <fcntl.h>    // for open, posix_fadvise, O_RDONLY, O_CLOEXEC
#include <sys/stat.h> // for fstat, S_ISREG
#include <unistd.h>   // for pread, close

#include <algorithm>   // for sort, unique, lower_bound
#include <cerrno>      // for errno, EINTR
#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint64_t, int64_t
#include <cstring>     // for memcpy
#include <filesystem>  // for path
#include <optional>    // for optional
#include <span>        // for span
#include <string>      // for string, to_string
#include <string_view> // for string_view
#include <type_traits> // for is_same_v
#include <utility>     // for exchange, swap
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief Storage policy: rows stay in a file and are read with `pread` on demand.
///
/// `table<Row>` (alias `file_table<Row>`) reads `rows` contiguous rows of `Codec::row_bytes(dim)`
/// bytes each, starting at a byte offset of a file: a raw table file or one tensor of a
/// safetensors file. Nothing is mapped; every `gather` and `read_rows` issues `pread`s through the
/// page cache, so the table may be far larger than memory. The file is opened with
/// `POSIX_FADV_RANDOM` (no readahead: a random row costs one page, not a 128 KiB window).
///
/// The batch path is `read_rows(sorted unique ids, bytes)`: rows whose gap is at most
/// `merge_gap()` bytes (default: one 4 KiB page) are fetched by one request. It is safe to call
/// from several threads at once (`pread` has no shared file position); a prefetcher splits one
/// batch across an I/O pool so that several requests are in flight.
///
/// @pre Nobody truncates or rewrites the file while the table reads it. A truncated file is
///      detected (format_error from the read), a rewritten one is not.
struct file_storage {
    template <class Row>
    class table {
    public:
        using codec_type = codec_of_t<Row>;
        /// Default `merge_gap()`: rows on the same 4 KiB page are read by one request.
        static constexpr std::size_t default_merge_gap = 4096;
        /// The longest single request (merged runs are split beyond it).
        static constexpr std::size_t max_request_bytes = std::size_t{1} << 20;

        table() = default;

        /// @brief Rows `[0, rows)` of `dim` values at byte `offset` of the file at `path`.
        /// @throws config_error for a zero size or a dim the codec cannot store; io_error if the
        ///         file cannot be opened or is not a regular file; format_error if it is shorter
        ///         than `offset + rows * row_bytes`.
        table(const std::filesystem::path& path, std::uint64_t offset, std::size_t rows, std::size_t dim)
            : path_(path), offset_(offset), rows_(rows), dim_(dim) {
            if (rows == 0 || dim == 0)
                throw config_error("file table: rows (" + std::to_string(rows) + ") and dim (" + std::to_string(dim) +
                                   ") must be positive");
            codec_type::check_dim(dim);
            row_bytes_ = codec_type::row_bytes(dim);
            std::uint64_t bytes = 0, end = 0;
            if (__builtin_mul_overflow(static_cast<std::uint64_t>(rows), row_bytes_, &bytes) ||
                __builtin_add_overflow(offset, bytes, &end))
                throw config_error("file table: " + std::to_string(rows) + " rows of " + std::to_string(row_bytes_) +
                                   " bytes at offset " + std::to_string(offset) + " overflow 64 bits");
            fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd_ < 0)
                throw io_error("file table: cannot open '" + path.string() + "': " + detail::errno_text(errno));
            struct stat st {};
            if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
                const int err = errno;
                close_fd();
                throw io_error("file table: '" + path.string() + "' is not a readable regular file" +
                               (err != 0 ? ": " + detail::errno_text(err) : std::string()));
            }
            if (static_cast<std::uint64_t>(st.st_size) < end) {
                close_fd();
                throw format_error("file table: '" + path.string() + "' is " + std::to_string(st.st_size) +
                                   " bytes, but " + std::to_string(rows) + " rows of " + std::to_string(row_bytes_) +
                                   " bytes at offset " + std::to_string(offset) + " end at byte " +
                                   std::to_string(end));
            }
            // Random row reads: no readahead around each one.
            (void)::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);
        }

        /// @brief The rows of tensor `name` of a safetensors file, read in place (the header is
        ///        parsed; the data is never mapped).
        ///
        /// The tensor must be 2-D `[rows, X]`: F32 for `float` rows, BF16 for `bfloat16` rows, F16
        /// for a codec named "f16" (X = dim); or U8 / I8 bytes with X = `row_bytes(dim)` for any
        /// codec, in which case `dim` must be given.
        /// @throws io_error / format_error naming the file, tensor and field at fault.
        static table from_safetensors(const std::filesystem::path& path, std::string_view name,
                                      std::optional<std::size_t> dim = std::nullopt) {
            const std::string where = "file table: safetensors file '" + path.string() + "'";
            detail::fd_closer fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
            if (fd.fd < 0) throw io_error(where + ": cannot open: " + detail::errno_text(errno));
            struct stat st {};
            if (::fstat(fd.fd, &st) != 0) throw io_error(where + ": cannot stat: " + detail::errno_text(errno));
            const auto file_size = static_cast<std::uint64_t>(st.st_size);
            std::byte prefix[8];
            if (file_size < 8) throw format_error(where + ": shorter than the 8-byte header length field");
            read_exact(fd.fd, prefix, 8, 0, where);
            std::uint64_t header_len = 0;
            for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<std::uint64_t>(prefix[i]);
            if (header_len == 0 || header_len > detail::safetensors_max_header_bytes || header_len > file_size - 8)
                throw format_error(where + ": header length " + std::to_string(header_len) +
                                   " is zero, too large or beyond the end of the file (" + std::to_string(file_size) +
                                   " bytes)");
            std::string text(static_cast<std::size_t>(header_len), '\0');
            read_exact(fd.fd, reinterpret_cast<std::byte*>(text.data()), text.size(), 8, where);
            nlohmann::json header;
            try {
                header = nlohmann::json::parse(text);
            } catch (const nlohmann::json::exception& e) {
                throw format_error(where + ": header is not valid JSON: " + e.what());
            }
            const std::string ctx = where + ": tensor " + detail::quoted_excerpt(name);
            if (!header.is_object() || name == "__metadata__") throw format_error(ctx + " is missing");
            const auto it = header.find(std::string(name));
            if (it == header.end() || !it->is_object()) throw format_error(ctx + " is missing");
            const nlohmann::json& entry = *it;
            const auto field = [&](const char* key) -> const nlohmann::json& {
                const auto f = entry.find(key);
                if (f == entry.end()) throw format_error(ctx + ": field '" + key + "' is missing");
                return *f;
            };
            const nlohmann::json& dtype_json = field("dtype");
            dtype type{};
            if (!dtype_json.is_string() || !detail::try_parse_dtype(dtype_json.get<std::string>(), type))
                throw format_error(ctx + ": dtype " + detail::json_excerpt(dtype_json) + " is not a safetensors dtype");
            const nlohmann::json& shape_json = field("shape");
            if (!shape_json.is_array() || shape_json.size() != 2)
                throw format_error(ctx + ": shape " + detail::json_excerpt(shape_json) + " is not [rows, width]");
            const std::uint64_t n_rows = detail::json_index(shape_json[0], ctx + ": shape[0]");
            const std::uint64_t width = detail::json_index(shape_json[1], ctx + ": shape[1]");
            const nlohmann::json& offsets = field("data_offsets");
            if (!offsets.is_array() || offsets.size() != 2)
                throw format_error(ctx + ": data_offsets " + detail::json_excerpt(offsets) + " is not [begin, end]");
            const std::uint64_t begin = detail::json_index(offsets[0], ctx + ": data_offsets[0]");
            const std::uint64_t end = detail::json_index(offsets[1], ctx + ": data_offsets[1]");
            const std::uint64_t data_start = 8 + header_len;
            if (begin > end || end > file_size - data_start)
                throw format_error(ctx + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   "] lie outside the " + std::to_string(file_size - data_start) +
                                   "-byte data buffer (file truncated?)");

            std::size_t row_dim = 0;
            const bool natural = (type == dtype::f32 && std::is_same_v<codec_type, f32_codec>) ||
                                 (type == dtype::bf16 && std::is_same_v<codec_type, bf16_codec>) ||
                                 (type == dtype::f16 && codec_type::name == std::string_view("f16"));
            if (natural) {
                row_dim = static_cast<std::size_t>(width);
                if (dim && *dim != row_dim)
                    throw format_error(ctx + ": width " + std::to_string(width) + " differs from the dim " +
                                       std::to_string(*dim) + " asked for");
            } else if ((type == dtype::u8 || type == dtype::i8) && dim) {
                row_dim = *dim;
                codec_type::check_dim(row_dim);
                if (width != codec_type::row_bytes(row_dim))
                    throw format_error(ctx + ": " + std::to_string(width) + " bytes per row, but " +
                                       std::string(codec_type::name) + " rows of dim " + std::to_string(row_dim) +
                                       " need " + std::to_string(codec_type::row_bytes(row_dim)));
            } else {
                throw format_error(ctx + ": dtype " + std::string(dtype_name(type)) + " cannot hold " +
                                   std::string(codec_type::name) + " rows" +
                                   (dim ? std::string() : " (U8/I8 byte rows need an explicit dim)"));
            }
            std::uint64_t numel = 0, nbytes = 0;
            if (__builtin_mul_overflow(n_rows, width, &numel) ||
                __builtin_mul_overflow(numel, natural ? dtype_size(type) : 1, &nbytes) || nbytes != end - begin)
                throw format_error(ctx + ": shape [" + std::to_string(n_rows) + ", " + std::to_string(width) +
                                   "] does not match its " + std::to_string(end - begin) + " data bytes");
            if (n_rows == 0) throw format_error(ctx + " has no rows");
            return table(path, data_start + begin, static_cast<std::size_t>(n_rows), row_dim);
        }

        table(const table&) = delete;
        table& operator=(const table&) = delete;
        table(table&& o) noexcept { swap(o); }
        table& operator=(table&& o) noexcept {
            table tmp(std::move(o));
            swap(tmp);
            return *this;
        }
        ~table() { close_fd(); }

        [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
        [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
        [[nodiscard]] std::size_t row_bytes() const noexcept { return row_bytes_; }
        [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }
        [[nodiscard]] std::size_t size_bytes() const noexcept { return rows_ * row_bytes_; }
        [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
        /// The open file descriptor (read-only), e.g. for `mincore` through a private mapping.
        [[nodiscard]] int native_handle() const noexcept { return fd_; }

        /// Rows closer than this many bytes are fetched by one request (0: only adjacent rows).
        [[nodiscard]] std::size_t merge_gap() const noexcept { return merge_gap_; }
        /// Sets `merge_gap()`. Not synchronised: set it before the table is shared.
        void set_merge_gap(std::size_t bytes) noexcept { merge_gap_ = bytes; }

        /// @brief Decoded rows `ids` into `out` [ids.size(), dim]; see `storage_table`. Reads each
        ///        distinct row once, in file order.
        /// @throws input_error for a bad id or size (before any read); format_error / io_error if a
        ///         read fails (the file was truncated, the disk refused).
        void gather(std::span<const row_id> ids, std::span<float> out) const {
            detail::check_gather(ids, rows_, dim_, out.size());
            if (ids.empty()) return;
            std::vector<row_id> unique(ids.begin(), ids.end());
            std::sort(unique.begin(), unique.end());
            unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
            std::vector<std::byte> bytes(unique.size() * row_bytes_);
            read_rows(unique, bytes);
            for (std::size_t i = 0; i < ids.size(); ++i) {
                const auto slot =
                    static_cast<std::size_t>(std::lower_bound(unique.begin(), unique.end(), ids[i]) - unique.begin());
                codec_type::decode(bytes.data() + slot * row_bytes_, out.data() + i * dim_, dim_);
            }
        }

        /// @brief Decodes row i into `out` (dim floats). @throws input_error for a bad index or size.
        void get_row(std::size_t i, std::span<float> out) const {
            const row_id id = static_cast<row_id>(i);
            gather(std::span<const row_id>(&id, 1), out);
        }

        /// @brief The stored bytes of rows `ids` (strictly increasing) into `dst`
        ///        [ids.size(), row_bytes]. Runs of rows at most `merge_gap()` bytes apart are read
        ///        by one `pread` (rows are copied out of it), up to `max_request_bytes` each; a run
        ///        without gaps is read straight into `dst`.
        /// @throws input_error if the ids are not strictly increasing rows or `dst` has the wrong
        ///         size (before any read); format_error if the file ends early (truncated);
        ///         io_error if the system refuses a read.
        void read_rows(std::span<const row_id> ids, std::span<std::byte> dst) const {
            if (fd_ < 0) throw input_error("file table: read from an empty (default or moved-from) table");
            std::size_t need = 0;
            if (__builtin_mul_overflow(ids.size(), row_bytes_, &need) || dst.size() != need)
                throw input_error("file table: read_rows needs " + std::to_string(ids.size()) + " x " +
                                  std::to_string(row_bytes_) + " bytes, got " + std::to_string(dst.size()));
            for (std::size_t i = 0; i < ids.size(); ++i) {
                if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(ids[i]) >= rows_))
                    throw input_error("file table: row id " + std::to_string(ids[i]) + " at position " +
                                      std::to_string(i) + " is outside [0, " + std::to_string(rows_) + ")");
                if (ENGRAM_UNLIKELY(i > 0 && ids[i] <= ids[i - 1]))
                    throw input_error("file table: read_rows ids must be strictly increasing; position " +
                                      std::to_string(i) + " has " + std::to_string(ids[i]) + " after " +
                                      std::to_string(ids[i - 1]));
            }
            const std::string where = "file table '" + path_.string() + "'";
            std::vector<std::byte> scratch;
            const std::size_t rb = row_bytes_;
            std::size_t i = 0;
            while (i < ids.size()) {
                const auto first = static_cast<std::uint64_t>(ids[i]);
                std::size_t j = i + 1;
                while (j < ids.size()) {
                    const auto next = static_cast<std::uint64_t>(ids[j]);
                    const std::uint64_t gap = (next - static_cast<std::uint64_t>(ids[j - 1]) - 1) * rb;
                    if (gap > merge_gap_ || (next - first + 1) * rb > max_request_bytes) break;
                    ++j;
                }
                const std::uint64_t span_rows = static_cast<std::uint64_t>(ids[j - 1]) - first + 1;
                const std::uint64_t at = offset_ + first * rb;
                if (span_rows == j - i) {
                    read_exact(fd_, dst.data() + i * rb, static_cast<std::size_t>(span_rows * rb), at, where);
                } else {
                    scratch.resize(static_cast<std::size_t>(span_rows * rb));
                    read_exact(fd_, scratch.data(), scratch.size(), at, where);
                    for (std::size_t k = i; k < j; ++k)
                        std::memcpy(dst.data() + k * rb,
                                    scratch.data() + (static_cast<std::uint64_t>(ids[k]) - first) * rb, rb);
                }
                i = j;
            }
        }

        /// @brief Asks the kernel to drop the file's pages from the page cache
        ///        (`posix_fadvise(POSIX_FADV_DONTNEED)`; clean pages of a file the process can read
        ///        go, no privileges needed). The next reads come from the device.
        /// @throws io_error if the kernel refuses the advice.
        void drop_page_cache() const {
            if (fd_ < 0) return;
            const int rc = ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
            if (rc != 0)
                throw io_error("file table: posix_fadvise(DONTNEED) on '" + path_.string() +
                               "' failed: " + detail::errno_text(rc));
        }

    private:
        /// pread exactly `size` bytes at `at`, retrying short reads and EINTR.
        static void read_exact(int fd, std::byte* out, std::size_t size, std::uint64_t at, const std::string& where) {
            while (size > 0) {
                const ::ssize_t n = ::pread(fd, out, size, static_cast<::off_t>(at));
                if (n < 0) {
                    if (errno == EINTR) continue;
                    throw io_error(where + ": read of " + std::to_string(size) + " bytes at offset " +
                                   std::to_string(at) + " failed: " + detail::errno_text(errno));
                }
                if (n == 0)
                    throw format_error(where + ": the file ends before byte " + std::to_string(at + size) +
                                       " (truncated after it was opened?)");
                out += n;
                size -= static_cast<std::size_t>(n);
                at += static_cast<std::uint64_t>(n);
            }
        }

        void close_fd() noexcept {
            if (fd_ >= 0) ::close(std::exchange(fd_, -1));
        }

        void swap(table& o) noexcept {
            std::swap(path_, o.path_);
            std::swap(fd_, o.fd_);
            std::swap(offset_, o.offset_);
            std::swap(rows_, o.rows_);
            std::swap(dim_, o.dim_);
            std::swap(row_bytes_, o.row_bytes_);
            std::swap(merge_gap_, o.merge_gap_);
        }

        std::filesystem::path path_;
        int fd_ = -1;
        std::uint64_t offset_ = 0;
        std::size_t rows_ = 0, dim_ = 0, row_bytes_ = 0;
        std::size_t merge_gap_ = default_merge_gap;
    };
};

/// @brief A table read with pread from a file: `file_table<float>`, `file_table<bfloat16>`, or a codec.
template <class Row>
using file_table = file_storage::table<Row>;

static_assert(storage_policy<file_storage, float>);
static_assert(storage_policy<file_storage, bfloat16>);

ENGRAM_END_NAMESPACE
