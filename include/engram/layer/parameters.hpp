#pragma once
// SPDX-License-Identifier: MIT
// A layer's numbers as plain views (no Eigen): what a device backend copies from a host layer.
// `layer::parameters()` makes one; `table_view_of(table)` describes where a table's rows are.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/layer/config.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/types.hpp>

#include <cstddef>     // for byte, size_t
#include <span>        // for span
#include <string>      // for string
#include <type_traits> // for is_same_v

ENGRAM_BEGIN_NAMESPACE

/// @brief Every parameter of one layer except its rows, as views into the layer that made them
///        (valid while it lives and its weights are unchanged). Row-major, PyTorch's layouts.
struct layer_parameters {
    layer_config config;
    layer_layout layout;
    std::span<const token_id> vocab_lookup;   ///< raw id -> canonical id, V entries
    std::span<const float> projection_weight; ///< [(1+M)H, D]: value rows, then each branch's key rows
    std::span<const float> projection_bias;   ///< [(1+M)H]
    std::span<const float> key_norm;          ///< [M, H]
    std::span<const float> hidden_norm;       ///< [M, H]
    std::span<const float> conv_weight;       ///< [M*H, Kc] (empty without a convolution)
    std::span<const float> conv_norm;         ///< [M, H] (empty without a convolution)
};

/// How a table's rows are encoded in memory.
enum class row_encoding {
    f32,        ///< dim floats a row
    bf16,       ///< dim bfloat16 a row
    fp8_packed, ///< fp8_e4m3_codec: dim E4M3 codes, then dim/32 UE8M0 scale bytes
    fp8_split,  ///< DeepSeek-V4.1: codes [rows, dim] and scale bytes [rows, dim/32] in two tensors
};

[[nodiscard]] constexpr const char* row_encoding_name(row_encoding e) noexcept {
    switch (e) {
    case row_encoding::f32:
        return "f32";
    case row_encoding::bf16:
        return "bf16";
    case row_encoding::fp8_packed:
        return "fp8";
    case row_encoding::fp8_split:
        return "fp8 (two tensors)";
    }
    return "?";
}

/// @brief Where the rows of a table sit in addressable memory: `rows` (row i at
///        `rows + i * row_bytes`) and, for `fp8_split`, the scale bytes (`dim / 32` a row).
struct table_view {
    row_encoding encoding = row_encoding::f32;
    const std::byte* rows = nullptr;
    const std::byte* scales = nullptr;
    std::size_t count = 0;     ///< number of rows
    std::size_t dim = 0;       ///< values a row
    std::size_t row_bytes = 0; ///< stride of `rows` (codes only for fp8_split)

    [[nodiscard]] std::size_t rows_bytes() const noexcept { return count * row_bytes; }
    [[nodiscard]] std::size_t scales_bytes() const noexcept {
        return encoding == row_encoding::fp8_split ? count * (dim / fp8_e4m3_codec::block) : 0;
    }
};

/// @brief The table view of a table whose rows are one block of memory: dense and mmap tables
///        (`encoded_row`) of f32, bf16 or FP8 rows, and `fp8_tensor_table` (`codes`/`scales`).
/// @throws unsupported_error for another codec, or rows that are not one contiguous block.
template <class Table>
table_view table_view_of(const Table& t) {
    using codec = typename Table::codec_type;
    table_view v;
    v.count = t.rows();
    v.dim = t.dim();
    if constexpr (requires {
                      t.codes(0);
                      t.scales(0);
                  }) {
        v.encoding = row_encoding::fp8_split;
        v.rows = t.codes(0);
        v.scales = t.scales(0);
        v.row_bytes = v.dim;
        return v;
    } else if constexpr (requires { t.encoded_row(0); }) {
        if constexpr (std::is_same_v<codec, f32_codec>)
            v.encoding = row_encoding::f32;
        else if constexpr (std::is_same_v<codec, bf16_codec>)
            v.encoding = row_encoding::bf16;
        else if constexpr (std::is_same_v<codec, fp8_e4m3_codec>)
            v.encoding = row_encoding::fp8_packed;
        else
            throw unsupported_error("table view: rows of codec '" + std::string(codec::name) +
                                    "' (device backends decode f32, bf16 and fp8 rows)");
        v.row_bytes = codec::row_bytes(v.dim);
        v.rows = t.encoded_row(0).data();
        if (v.count > 1 && t.encoded_row(v.count - 1).data() != v.rows + (v.count - 1) * v.row_bytes)
            throw unsupported_error("table view: the table's rows are not one contiguous block");
        return v;
    } else {
        throw unsupported_error("table view: this storage does not expose its rows' memory "
                                "(use a dense, mmap or fp8 tensor table)");
    }
}

ENGRAM_END_NAMESPACE
