#pragma once
// SPDX-License-Identifier: MIT
// Row codecs: how one table row of `dim` values is stored as bytes and decoded to float.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/row_types.hpp>

#include <bit>         // for bit_cast
#include <concepts>    // for same_as, convertible_to
#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint16_t, uint32_t
#include <cstring>     // for memcpy
#include <string>      // for to_string
#include <string_view> // for string_view
#include <type_traits> // for is_same_v

ENGRAM_BEGIN_NAMESPACE

/// @brief How a row of `dim` float values is stored: `row_bytes(dim)` bytes per row,
///        `encode` (quantise, may round) and `decode` (to the float compute type).
///        `check_dim(dim)` throws config_error for widths the codec cannot store (e.g. FP8
///        blocks need a multiple of 32). Codecs are stateless tag types.
template <class C>
concept row_codec = requires(const std::byte* in, std::byte* out_bytes, const float* values, float* out,
                             std::size_t dim) {
    { C::name } -> std::convertible_to<std::string_view>;
    { C::row_bytes(dim) } -> std::same_as<std::size_t>;
    C::check_dim(dim);
    C::encode(values, out_bytes, dim);
    C::decode(in, out, dim);
};

/// @brief Rows stored as float32 (the reference's format; decode is a copy).
struct f32_codec {
    using value_type = float;
    static constexpr std::string_view name = "f32";
    static constexpr std::size_t row_bytes(std::size_t dim) noexcept { return dim * sizeof(float); }
    static void check_dim(std::size_t dim) {
        if (dim == 0) throw config_error("f32 codec: dim must be positive");
    }
    static void encode(const float* in, std::byte* out, std::size_t dim) noexcept {
        std::memcpy(out, in, dim * sizeof(float));
    }
    static void decode(const std::byte* in, float* out, std::size_t dim) noexcept {
        std::memcpy(out, in, dim * sizeof(float));
    }
};

/// @brief Rows stored as bfloat16 (round to nearest even); decode widens exactly.
struct bf16_codec {
    using value_type = bfloat16;
    static constexpr std::string_view name = "bf16";
    static constexpr std::size_t row_bytes(std::size_t dim) noexcept { return dim * 2; }
    static void check_dim(std::size_t dim) {
        if (dim == 0) throw config_error("bf16 codec: dim must be positive");
    }
    static void encode(const float* in, std::byte* out, std::size_t dim) noexcept {
        for (std::size_t i = 0; i < dim; ++i) {
            const std::uint16_t b = bfloat16::from_float(in[i]).bits;
            std::memcpy(out + 2 * i, &b, 2);
        }
    }
    static void decode(const std::byte* in, float* out, std::size_t dim) noexcept {
        // A 16-bit shift per value; written on integers so that the loop vectorises.
        for (std::size_t i = 0; i < dim; ++i) {
            std::uint16_t b;
            std::memcpy(&b, in + 2 * i, 2);
            out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
        }
    }
};

namespace detail {
template <class Row>
struct codec_of {
    using type = Row; // already a codec
};
template <>
struct codec_of<float> {
    using type = f32_codec;
};
template <>
struct codec_of<bfloat16> {
    using type = bf16_codec;
};
} // namespace detail

/// @brief The codec of a table's row type: `float` -> f32_codec, `bfloat16` -> bf16_codec, and
///        a codec type itself.
template <class Row>
using codec_of_t = typename detail::codec_of<Row>::type;

static_assert(row_codec<f32_codec> && row_codec<bf16_codec>);

ENGRAM_END_NAMESPACE
