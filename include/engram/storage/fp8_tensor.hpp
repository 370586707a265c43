#pragma once
// SPDX-License-Identifier: MIT
// Read-only rows of FP8 E4M3 codes whose UE8M0 block scales sit in a second tensor: a DeepSeek
// checkpoint's embedding table (`embed.weight` F8_E4M3 [rows, dim], `embed.scale` F8_E8M0
// [rows, dim / 32]), served in place from the mapped shard.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/storage/decode_avx512.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>

#include <sys/mman.h> // for madvise, MADV_*
#include <unistd.h>   // for sysconf

#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint8_t, uint16_t, uintptr_t
#include <filesystem>  // for path
#include <memory>      // for shared_ptr, make_shared
#include <span>        // for span
#include <string>      // for string, to_string
#include <string_view> // for string_view
#include <utility>     // for move

ENGRAM_BEGIN_NAMESPACE

/// @brief A table of FP8 E4M3 rows whose scales are stored apart from the codes, read in place.
///
/// Row r is the `dim` codes at `values + r * dim` and the `dim / 32` UE8M0 bytes at
/// `scales + r * dim / 32`; value i decodes to `bf16(e4m3(code_i) * 2^(scale_{i/32} - 127))`,
/// DeepSeek-V4.1's row dequantisation. The product is exact in float; the bf16 rounding changes
/// it only in blocks with scale bytes 0, 1 and 2 (values below bf16's normal range), so the
/// float gather equals `fp8_e4m3_codec`'s decode of the same codes and scales everywhere else.
/// Scale byte 255 is NaN, as in the reference.
///
/// Nothing is copied: the table refers to memory kept alive by an owner (a mapped
/// `safetensors_file`, shared by every table and slice cut from it), so a process's resident
/// memory grows only with the pages its lookups touch. `from_safetensors` advises both row
/// regions `MADV_RANDOM`. `slice(first, count)` is the same storage restricted to a row range
/// (for `sharded_table` by row range). Tables are cheap to copy and safe to read from several
/// threads at once.
class fp8_tensor_table {
public:
    using codec_type = fp8_e4m3_codec;
    static constexpr std::size_t block = fp8_e4m3_codec::block;

    fp8_tensor_table() = default;

    /// @brief Rows at `values` and `scales` (see the class notes), kept alive by `owner`.
    /// @throws config_error for zero rows or a dim that is not a positive multiple of 32.
    fp8_tensor_table(std::shared_ptr<const void> owner, const std::byte* values, const std::byte* scales,
                     std::size_t rows, std::size_t dim)
        : owner_(std::move(owner)), values_(values), scales_(scales), rows_(rows), dim_(dim) {
        fp8_e4m3_codec::check_dim(dim);
        if (rows == 0) throw config_error("fp8 tensor table: rows must be positive");
        if (values == nullptr || scales == nullptr) throw config_error("fp8 tensor table: null row data");
    }

    /// @brief The table of tensors `values_name` (F8_E4M3 [rows, dim]) and `scales_name`
    ///        (F8_E8M0 [rows, dim / 32]) of an open safetensors file, which the table keeps open.
    /// @throws format_error naming the file, the tensor and what differs (missing, dtype, shape).
    static fp8_tensor_table from_safetensors(std::shared_ptr<const safetensors_file> file, std::string_view values_name,
                                             std::string_view scales_name) {
        const std::string where =
            file->path().empty() ? std::string("safetensors image") : "'" + file->path().string() + "'";
        const tensor_view& v = file->at(values_name);
        const tensor_view& s = file->at(scales_name);
        auto fail = [&](const tensor_view& t, const std::string& what) {
            throw format_error(where + ": tensor '" + t.name + "' " + what);
        };
        if (v.type != dtype::f8_e4m3) fail(v, "has dtype " + std::string(dtype_name(v.type)) + ", expected F8_E4M3");
        if (s.type != dtype::f8_e8m0 && s.type != dtype::u8)
            fail(s, "has dtype " + std::string(dtype_name(s.type)) + ", expected F8_E8M0");
        if (v.shape.size() != 2 || v.shape[0] < 1 || v.shape[1] < 1 || v.shape[1] % static_cast<std::int64_t>(block))
            fail(v, "has shape " + detail::shape_string(v.shape) + ", expected [rows, dim] with dim a multiple of 32");
        const std::int64_t rows = v.shape[0], dim = v.shape[1];
        if (s.shape.size() != 2 || s.shape[0] != rows || s.shape[1] != dim / static_cast<std::int64_t>(block))
            fail(s, "has shape " + detail::shape_string(s.shape) + ", expected [" + std::to_string(rows) + ", " +
                        std::to_string(dim / static_cast<std::int64_t>(block)) + "] (one scale per 32 values of '" +
                        v.name + "')");
        fp8_tensor_table t(file, v.bytes.data(), s.bytes.data(), static_cast<std::size_t>(rows),
                           static_cast<std::size_t>(dim));
        t.advise_random();
        return t;
    }

    /// @brief Opens the safetensors file at `path` and takes its two tensors (see above).
    static fp8_tensor_table open(const std::filesystem::path& path, std::string_view values_name,
                                 std::string_view scales_name) {
        return from_safetensors(std::make_shared<const safetensors_file>(safetensors_file::open(path)), values_name,
                                scales_name);
    }

    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
    /// Stored bytes of the rows: codes plus scales.
    [[nodiscard]] std::size_t size_bytes() const noexcept { return rows_ * (dim_ + dim_ / block); }
    /// The codes of row i and its scale bytes (i < rows(); unchecked).
    [[nodiscard]] const std::byte* codes(std::size_t i) const noexcept { return values_ + i * dim_; }
    [[nodiscard]] const std::byte* scales(std::size_t i) const noexcept { return scales_ + i * (dim_ / block); }

    /// @brief Rows [first, first + count) as a table of their own (same storage, same owner).
    /// @throws config_error if the range is empty or leaves the table.
    [[nodiscard]] fp8_tensor_table slice(std::size_t first, std::size_t count) const {
        if (count == 0 || first > rows_ || count > rows_ - first)
            throw config_error("fp8 tensor table: slice [" + std::to_string(first) + ", " +
                               std::to_string(first + count) + ") is empty or outside [0, " + std::to_string(rows_) +
                               ")");
        return fp8_tensor_table(owner_, codes(first), scales(first), count, dim_);
    }

    /// @brief Decoded rows `ids` into `out` [ids.size(), dim] (float; see `storage_table`).
    void gather(std::span<const row_id> ids, std::span<float> out) const {
        detail::check_gather(ids, rows_, dim_, out.size());
        const auto decode = detail::avx512_available() ? &decode_fast : &decode_reference;
        rows_loop(ids, [&](std::size_t i, std::size_t r) { decode(codes(r), scales(r), out.data() + i * dim_, dim_); });
    }

    /// @brief Decoded rows `ids` into `out` as bfloat16 (exact: every decoded value is one).
    void gather(std::span<const row_id> ids, std::span<bfloat16> out) const {
        detail::check_gather(ids, rows_, dim_, out.size());
        const auto decode = detail::avx512_available() ? &decode_bf16_fast : &decode_bf16_reference;
        rows_loop(ids, [&](std::size_t i, std::size_t r) { decode(codes(r), scales(r), out.data() + i * dim_, dim_); });
    }

    /// @brief Row i decoded into `out` (dim floats). @throws input_error for a bad index or size.
    void get_row(std::size_t i, std::span<float> out) const {
        const row_id id = static_cast<row_id>(i);
        gather(std::span<const row_id>(&id, 1), out);
    }

    /// @brief Advises the kernel that rows are read at random (no read-ahead of neighbours).
    void advise_random() const noexcept {
        advise_range(values_, rows_ * dim_, MADV_RANDOM);
        advise_range(scales_, rows_ * (dim_ / block), MADV_RANDOM);
    }

    /// @brief Asks the kernel to read rows [first, first + count) ahead of use.
    void advise_willneed(std::size_t first, std::size_t count) const noexcept {
        if (first >= rows_) return;
        if (count > rows_ - first) count = rows_ - first;
        advise_range(codes(first), count * dim_, MADV_WILLNEED);
        advise_range(scales(first), count * (dim_ / block), MADV_WILLNEED);
    }

    /// @brief Row i decoded as the reference does (no AVX-512; for tests and as the definition).
    static void decode_reference(const std::byte* codes, const std::byte* scales, float* out,
                                 std::size_t dim) noexcept {
        // The CUDA gather decodes with the same body (engram/backend/bodies.hpp).
        for (std::size_t i = 0; i < dim; ++i)
            out[i] = bodies::fp8_split_value(static_cast<std::uint8_t>(codes[i]),
                                             static_cast<std::uint8_t>(scales[i / block]));
    }

private:
    /// Rounds the blocks whose scale byte is below 3 to bf16 (the only ones whose exact float
    /// products can fall off bf16's grid), as `bodies::fp8_split_value` does.
    static void round_small_blocks(const std::byte* scales, float* out, std::size_t dim) noexcept {
        for (std::size_t j = 0; j < dim / block; ++j)
            if (static_cast<std::uint8_t>(scales[j]) < 3)
                for (std::size_t k = j * block; k < (j + 1) * block; ++k) out[k] = bodies::round_bf16(out[k]);
    }

    static void advise_range(const void* p, std::size_t bytes, int advice) noexcept {
        if (bytes == 0) return;
        static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        const auto begin = reinterpret_cast<std::uintptr_t>(p) / page * page;
        const auto end = reinterpret_cast<std::uintptr_t>(p) + bytes;
        // Advice only: a failure (memory that is not a mapping) changes nothing.
        (void)::madvise(reinterpret_cast<void*>(begin), end - begin, advice);
    }

    /// Rows between the one decoded and the one whose lines are prefetched, and the one whose
    /// codes and scale are touched (one scalar load each).
    static constexpr std::size_t prefetch_ahead = 2 * detail::gather_ahead, touch_ahead = detail::gather_ahead;

    /// Calls `decode(i, row)` for each row of `ids` (already checked). Rows `prefetch_ahead`
    /// ahead are prefetched; rows `touch_ahead` ahead (already prefetched, so the load hits the
    /// cache when the page is mapped) are touched, so that the page fault of a row not mapped
    /// yet is taken there, in scalar code, not inside the vector decode: 10-25% faster on a
    /// table served from the page cache, measured (docs/deepseek-v41.md).
    template <class Decode>
    void rows_loop(std::span<const row_id> ids, Decode&& decode) const {
        const std::size_t n = ids.size();
        for (std::size_t i = 0; i < n && i < prefetch_ahead; ++i) prefetch(ids[i]);
        for (std::size_t i = 0; i < n && i < touch_ahead; ++i) touch(ids[i]);
        for (std::size_t i = 0; i < n; ++i) {
            if (i + prefetch_ahead < n) prefetch(ids[i + prefetch_ahead]);
            if (i + touch_ahead < n) touch(ids[i + touch_ahead]);
            decode(i, static_cast<std::size_t>(ids[i]));
        }
    }

    /// A row decoded straight to bf16 (the float decode, then the exact narrowing).
    static void decode_bf16_reference(const std::byte* codes, const std::byte* scales, bfloat16* out,
                                      std::size_t dim) noexcept {
        float block_values[block];
        for (std::size_t j = 0; j < dim / block; ++j) {
            decode_reference(codes + j * block, scales + j, block_values, block);
            for (std::size_t k = 0; k < block; ++k) out[j * block + k] = bfloat16::from_float(block_values[k]);
        }
    }

    void prefetch(row_id id) const noexcept {
        const auto r = static_cast<std::size_t>(id);
        detail::prefetch_row(codes(r), dim_);
        __builtin_prefetch(scales(r));
    }
    void touch(row_id id) const noexcept {
        const auto r = static_cast<std::size_t>(id);
        (void)*static_cast<const volatile std::byte*>(codes(r));
        (void)*static_cast<const volatile std::byte*>(scales(r));
    }

#if ENGRAM_DETAIL_GATHER_AVX512
    ENGRAM_DETAIL_AVX512_TARGET static void decode_fast(const std::byte* codes, const std::byte* scales, float* out,
                                                        std::size_t dim) noexcept {
        detail::avx512_decoder<fp8_e4m3_codec>::decode_split(codes, scales, out, dim);
        round_small_blocks(scales, out, dim);
    }
    /// Each block's 32 values as two vectors of floats (exact products), narrowed to bf16 by
    /// dropping the low halves (exact: they are zero) for scale bytes 3..254; other blocks
    /// take the reference decode.
    ENGRAM_DETAIL_AVX512_TARGET static void decode_bf16_fast(const std::byte* codes, const std::byte* scales,
                                                             bfloat16* out, std::size_t dim) noexcept {
        for (std::size_t j = 0; j < dim / block; ++j) {
            const auto b = static_cast<std::uint8_t>(scales[j]);
            if (ENGRAM_UNLIKELY(b < 3 || b > 246)) {
                decode_bf16_reference(codes + j * block, scales + j, out + j * block, block);
                continue;
            }
            const __m512i h = detail::e4m3x32_to_f16(_mm512_maskz_cvtepu8_epi16(
                0xFFFFFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + j * block))));
            const __m512 s256 = _mm512_set1_ps(detail::float_bits((static_cast<std::uint32_t>(b) + 8u) << 23));
            const __m512 lo = detail::e4m3x16_scaled(_mm512_maskz_extracti64x4_epi64(0xF, h, 0), s256);
            const __m512 hi = detail::e4m3x16_scaled(_mm512_maskz_extracti64x4_epi64(0xF, h, 1), s256);
            const __m256i lo16 =
                _mm512_maskz_cvtepi32_epi16(0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, _mm512_castps_si512(lo), 16));
            const __m256i hi16 =
                _mm512_maskz_cvtepi32_epi16(0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, _mm512_castps_si512(hi), 16));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j * block), lo16);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j * block + 16), hi16);
        }
    }
#else
    static void decode_fast(const std::byte* codes, const std::byte* scales, float* out, std::size_t dim) noexcept {
        decode_reference(codes, scales, out, dim);
    }
    static void decode_bf16_fast(const std::byte* codes, const std::byte* scales, bfloat16* out,
                                 std::size_t dim) noexcept {
        decode_bf16_reference(codes, scales, out, dim);
    }
#endif

    std::shared_ptr<const void> owner_;
    const std::byte* values_ = nullptr;
    const std::byte* scales_ = nullptr;
    std::size_t rows_ = 0, dim_ = 0;
};

/// @brief Storage policy of `fp8_tensor_table` (for `layer_policies::storage_type`; rows are
///        `fp8_e4m3_codec`). A layer with it takes its table at construction.
struct fp8_tensor_storage {
    template <class Row>
    using table = fp8_tensor_table;
};

static_assert(storage_table<fp8_tensor_table>);

ENGRAM_END_NAMESPACE
