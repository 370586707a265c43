#pragma once
// SPDX-License-Identifier: MIT
// Quantized row codecs (f16, FP8 E4M3 + UE8M0 block scales, int8 + row scale), picked by name.

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/storage/codec.hpp>

#include <array>       // for array (the FP8 decode table)
#include <bit>         // for bit_cast
#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint8_t, int8_t, uint16_t, uint32_t, int32_t
#include <cstring>     // for memcpy
#include <limits>      // for numeric_limits
#include <string>      // for string, to_string
#include <string_view> // for string_view
#include <utility>     // for forward

ENGRAM_BEGIN_NAMESPACE

/// @brief Worst-case round-trip error of a codec for one finite value `x` inside the codec's
///        range: `|decode(encode(x)) - x| <= relative * |x| + absolute * scale`.
///
/// `scale` is the scale the value was stored with: the block scale of FP8, the row scale of
/// int8, and 1 for the unscaled codecs (f32, bf16, f16). For the scaled codecs every finite
/// value is in range; bf16 and f16 round values past their largest finite value to infinity.
struct error_bound {
    double relative = 0;
    double absolute = 0;

    [[nodiscard]] constexpr double at(double x, double scale = 1.0) const noexcept {
        return relative * (x < 0 ? -x : x) + absolute * scale;
    }
    friend constexpr bool operator==(const error_bound&, const error_bound&) = default;
};

namespace detail {

/// The float with bit pattern `u`.
constexpr float float_bits(std::uint32_t u) noexcept { return std::bit_cast<float>(u); }

/// Rounds a non-negative `m * 2^-shift` (shift in [1, 31]) to the nearest integer, ties to even.
constexpr std::uint32_t shift_round_even(std::uint32_t m, unsigned shift) noexcept {
    const std::uint32_t q = m >> shift;
    const std::uint32_t rem = m & ((std::uint32_t{1} << shift) - 1);
    const std::uint32_t half = std::uint32_t{1} << (shift - 1);
    return q + ((rem > half || (rem == half && (q & 1u) != 0)) ? 1u : 0u);
}

/// IEEE binary16 bits of `f`: round to nearest even, subnormals kept, overflow (|f| >= 65520)
/// to infinity, NaN to a quiet NaN keeping the payload's top bits.
constexpr std::uint16_t half_from_float(float f) noexcept {
    const auto u = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint32_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7FFFFFFFu;
    std::uint32_t h = 0;
    if (a > 0x7F800000u) {
        h = 0x7E00u | ((a >> 13) & 0x01FFu); // NaN: quiet bit set, payload truncated
    } else if (a >= 0x477FF000u) {
        h = 0x7C00u; // >= 65520 (halfway between 65504 and 2^16) and infinity
    } else if (a >= 0x38800000u) {
        // Normal half (|f| >= 2^-14): rebias the exponent (127 -> 15) and round 13 mantissa bits
        // away; a carry out of the mantissa correctly bumps the exponent.
        const std::uint32_t r = a - (std::uint32_t{112} << 23);
        h = (r + 0x0FFFu + ((r >> 13) & 1u)) >> 13;
    } else if (a > 0x33000000u) {
        // Subnormal half: |f| in (2^-25, 2^-14), units of 2^-24. The float is normal here.
        const std::uint32_t m = (a & 0x007FFFFFu) | 0x00800000u;
        const unsigned exp = a >> 23; // 102..112
        h = shift_round_even(m, 126u - exp);
    } // else |f| <= 2^-25: rounds to (signed) zero
    return static_cast<std::uint16_t>(sign | h);
}

/// The float value of IEEE binary16 bits `h` (exact). Written on integers, branch free, so that
/// a loop over it vectorises.
constexpr float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t em = h & 0x7FFFu;
    // Normal: rebias the exponent by 112; infinity/NaN (exponent 31): by 224, to 255.
    const auto special = static_cast<std::uint32_t>(em >= 0x7C00u);
    const std::uint32_t normal = (em << 13) + ((std::uint32_t{112} + 112u * special) << 23);
    // Subnormal (exponent 0): m * 2^-24, exact in float. Selected with a mask, not a branch.
    const auto sub = std::bit_cast<std::uint32_t>(static_cast<float>(static_cast<std::int32_t>(em)) * 0x1.0p-24f);
    const std::uint32_t is_sub = 0u - static_cast<std::uint32_t>(em < 0x0400u);
    return std::bit_cast<float>(((sub & is_sub) | (normal & ~is_sub)) | sign);
}

/// The value of FP8 E4M3 ("fn") code `c` with a unit scale: bias 7, 3 mantissa bits,
/// subnormals 2^-6 * m/8, no infinities, S.1111.111 = NaN.
constexpr float e4m3_value(unsigned c) noexcept { return bodies::e4m3_value(c); }

/// Decode table of all 256 FP8 E4M3 codes (unit scale), built at compile time.
inline constexpr std::array<float, 256> e4m3_table = [] {
    std::array<float, 256> t{};
    for (unsigned c = 0; c < 256; ++c) t[c] = e4m3_value(c);
    return t;
}();

/// FP8 E4M3 code of `v` (already divided by the block scale): round to nearest even,
/// saturating to +-448 (infinities too); NaN -> S.1111.111.
constexpr std::uint8_t e4m3_from_float(float v) noexcept { return bodies::e4m3_code(v); }

/// The UE8M0 scale of byte `b`: 2^(b - 127); 255 is NaN (never written by the encoder).
constexpr float ue8m0_value(std::uint8_t b) noexcept { return bodies::ue8m0_value(b); }

/// The UE8M0 byte of the smallest power of two `s` with `amax / s <= 448` (amax finite, >= 0);
/// 127 (scale 1) for amax == 0; at least 0 (2^-127) for tiny blocks.
constexpr std::uint8_t ue8m0_for_amax(float amax) noexcept {
    const auto a = std::bit_cast<std::uint32_t>(amax);
    if (a == 0) return 127;
    // amax = 1.f * 2^E with f in [1, 2). 448 * 2^k >= amax holds for k = E - 8 when f <= 1.75,
    // otherwise for k = E - 7 (and never for k = E - 9 as 448 * 2^(E-9) < 2^E).
    int exp = 0;
    std::uint32_t frac = 0; // 23 fraction bits of the normalised significand
    if ((a >> 23) != 0) {
        exp = static_cast<int>(a >> 23) - 127;
        frac = a & 0x007FFFFFu;
    } else { // subnormal float: normalise
        const int lead = 31 - std::countl_zero(a);
        exp = lead - 149;
        frac = (a << (23 - lead)) & 0x007FFFFFu;
    }
    const int k = exp - 8 + (frac > 0x00600000u ? 1 : 0);
    const int b = k + 127;
    return static_cast<std::uint8_t>(b < 0 ? 0 : b); // b <= 247 for finite floats
}

/// 32-bit little-endian load and store, whatever the host's byte order.
inline std::uint32_t load_le32(const std::byte* p) noexcept {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<std::uint32_t>(p[i]);
    return v;
}
inline void store_le32(std::byte* p, std::uint32_t v) noexcept {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFFu);
}

} // namespace detail

/// @brief Rows stored as IEEE binary16 ("half", torch.float16): 2 bytes a value in the host's
///        byte order (like bf16). Encode rounds to nearest even, keeps subnormals, rounds
///        |x| >= 65520 to infinity and NaN to NaN; decode is exact.
///
/// Error: 2^-11 relative for |x| in [2^-14, 65504], 2^-25 absolute below (subnormals).
struct f16_codec {
    static constexpr std::string_view name = "f16";
    static constexpr error_bound max_error{0x1.0p-11, 0x1.0p-25};
    /// Largest finite value; inputs beyond 65520 decode as infinity.
    static constexpr float max_finite = 65504.0f;

    static constexpr std::size_t row_bytes(std::size_t dim) noexcept { return dim * 2; }
    static void check_dim(std::size_t dim) {
        if (dim == 0) throw config_error("f16 codec: dim must be positive");
    }
    static void encode(const float* in, std::byte* out, std::size_t dim) noexcept {
        for (std::size_t i = 0; i < dim; ++i) {
            const std::uint16_t h = detail::half_from_float(in[i]);
            std::memcpy(out + 2 * i, &h, 2);
        }
    }
    static void decode(const std::byte* in, float* out, std::size_t dim) noexcept {
        for (std::size_t i = 0; i < dim; ++i) {
            std::uint16_t h;
            std::memcpy(&h, in + 2 * i, 2);
            out[i] = detail::half_to_float(h);
        }
    }
};

/// @brief Rows stored as OCP FP8 E4M3 ("e4m3fn": bias 7, no infinities, NaN = S.1111.111,
///        largest finite 448, subnormals down to 2^-9) with one UE8M0 scale per 32 values:
///        DeepSeek-V3/V4's layout, 256 values -> 256 + 8 = 264 bytes.
///
/// Row layout: `dim` FP8 codes, then `dim / 32` scale bytes; block j (values 32j..32j+31) has
/// scale 2^(byte_j - 127). `dim` must be a multiple of 32.
///
/// Encode: the block scale is the smallest power of two s with amax / s <= 448 (amax = largest
/// finite |x| of the block; byte at least 0, i.e. s >= 2^-127); a block without finite non-zero
/// values gets byte 127 (s = 1). Each x / s (exact: s is a power of two) is rounded to nearest
/// even. NaN encodes as the NaN code and decodes as NaN; +-infinity saturates to +-448 s. The
/// scale byte 255 (UE8M0 NaN) is never written; decoding it gives NaN.
///
/// Error: 2^-4 |x| for |x| / s >= 2^-6 (FP8 normals), s * 2^-10 absolute below (subnormals).
struct fp8_e4m3_codec {
    static constexpr std::string_view name = "fp8";
    static constexpr std::size_t block = 32;
    static constexpr float max_finite = 448.0f;
    /// Scale byte of a block without finite non-zero values (scale 1).
    static constexpr std::uint8_t zero_block_scale = 127;
    static constexpr error_bound max_error{0x1.0p-4, 0x1.0p-10};

    static constexpr std::size_t row_bytes(std::size_t dim) noexcept { return dim + dim / block; }
    static void check_dim(std::size_t dim) {
        if (dim == 0 || dim % block != 0)
            throw config_error("fp8 codec: dim (" + std::to_string(dim) +
                               ") must be a positive multiple of 32 (one scale per 32 values)");
    }
    /// The scale of block j of an encoded row of width `dim`.
    static float block_scale(const std::byte* row, std::size_t dim, std::size_t j) noexcept {
        return detail::ue8m0_value(static_cast<std::uint8_t>(row[dim + j]));
    }
    static void encode(const float* in, std::byte* out, std::size_t dim) noexcept {
        for (std::size_t j = 0; j < dim / block; ++j) {
            const float* x = in + j * block;
            float amax = 0.0f;
            for (std::size_t i = 0; i < block; ++i) {
                const float a = x[i] < 0 ? -x[i] : x[i];
                if (a > amax && a <= std::numeric_limits<float>::max()) amax = a; // finite only (NaN fails `>`)
            }
            const std::uint8_t b = detail::ue8m0_for_amax(amax);
            // 1 / s = 2^(127 - b) with b in [0, 247]: a normal float, so x * (1 / s) == x / s.
            const float inv = detail::float_bits(static_cast<std::uint32_t>(254 - b) << 23);
            for (std::size_t i = 0; i < block; ++i)
                out[j * block + i] = static_cast<std::byte>(detail::e4m3_from_float(x[i] * inv));
            out[dim + j] = static_cast<std::byte>(b);
        }
    }
    static void decode(const std::byte* in, float* out, std::size_t dim) noexcept {
        decode_split(in, in + dim, out, dim);
    }
    /// @brief `decode` of a row whose `dim` codes and `dim / 32` scale bytes are stored apart
    ///        (DeepSeek checkpoints keep them in two tensors).
    static void decode_split(const std::byte* in, const std::byte* scales, float* out, std::size_t dim) noexcept {
        // Table lookup times the block scale; exact (products are multiples of 2^-136). A NaN
        // code stays itself, whatever the scale (the NaN of NaN * NaN would depend on the order
        // the compiler puts the operands in; the AVX-512 decode keeps the code's NaN too).
        for (std::size_t j = 0; j < dim / block; ++j) {
            const float s = detail::ue8m0_value(static_cast<std::uint8_t>(scales[j]));
            const std::byte* q = in + j * block;
            float* o = out + j * block;
            for (std::size_t i = 0; i < block; ++i) {
                const float v = detail::e4m3_table[static_cast<std::uint8_t>(q[i])];
                o[i] = v != v ? v : v * s;
            }
        }
    }
};

/// @brief Rows stored as symmetric int8 with one float32 scale per row: `dim` int8 values, then
///        the scale as 4 little-endian bytes (`dim + 4` bytes a row).
///
/// Encode: scale = amax / 127 (float32; amax = largest finite |x| of the row; a float step
/// lower where 127 scale would overflow), q = x / scale rounded to nearest even and clamped to
/// [-127, 127]. A row without finite non-zero values has
/// scale 0 and decodes to zeros. NaN encodes as 0 and +-infinity as +-127 (int8 has neither).
/// Decode: q * scale.
///
/// Error: scale / 2 absolute, plus float rounding (the bound allows 2^-16 scale + 2^-23 |x|),
/// for rows whose amax is a normal float times 127 (amax >= 2^-119); tinier rows lose precision
/// in the subnormal scale.
struct int8_codec {
    static constexpr std::string_view name = "int8";
    static constexpr error_bound max_error{0x1.0p-23, 0.5 + 0x1.0p-16};

    static constexpr std::size_t row_bytes(std::size_t dim) noexcept { return dim + 4; }
    static void check_dim(std::size_t dim) {
        if (dim == 0) throw config_error("int8 codec: dim must be positive");
    }
    /// The scale of an encoded row of width `dim`.
    static float row_scale(const std::byte* row, std::size_t dim) noexcept {
        return std::bit_cast<float>(detail::load_le32(row + dim));
    }
    static void encode(const float* in, std::byte* out, std::size_t dim) noexcept {
        float amax = 0.0f;
        for (std::size_t i = 0; i < dim; ++i) {
            const float a = in[i] < 0 ? -in[i] : in[i];
            if (a > amax && a <= std::numeric_limits<float>::max()) amax = a; // finite only (NaN fails `>`)
        }
        float scale = amax / 127.0f;
        // Near FLT_MAX, 127 * scale may round past it: step the scale down until +-127 decode finite.
        while (scale * 127.0f > std::numeric_limits<float>::max())
            scale = std::bit_cast<float>(std::bit_cast<std::uint32_t>(scale) - 1u);
        for (std::size_t i = 0; i < dim; ++i) {
            const float x = in[i];
            std::int32_t q = 0;
            if (x != x || scale == 0.0f) {
                q = 0; // NaN, or an all-zero row
            } else {
                float y = x / scale; // +-inf for infinite x
                y = y > 127.0f ? 127.0f : (y < -127.0f ? -127.0f : y);
                // Round to nearest even: |y| <= 127 < 2^22, so adding and removing 1.5 * 2^23
                // leaves the rounded integer.
                q = static_cast<std::int32_t>((y + 12582912.0f) - 12582912.0f);
            }
            out[i] = static_cast<std::byte>(static_cast<std::uint8_t>(static_cast<std::int8_t>(q)));
        }
        detail::store_le32(out + dim, std::bit_cast<std::uint32_t>(scale));
    }
    static void decode(const std::byte* in, float* out, std::size_t dim) noexcept {
        const float scale = row_scale(in, dim);
        for (std::size_t i = 0; i < dim; ++i)
            out[i] = static_cast<float>(static_cast<std::int8_t>(static_cast<std::uint8_t>(in[i]))) * scale;
    }
};

static_assert(row_codec<f16_codec> && row_codec<fp8_e4m3_codec> && row_codec<int8_codec>);
static_assert(fp8_e4m3_codec::row_bytes(256) == 264, "DeepSeek's FP8 layout: 256 values + 8 scale bytes");
static_assert(detail::e4m3_table[0x7E] == 448.0f && detail::e4m3_table[0x01] == 0x1.0p-9f);
static_assert(detail::half_from_float(1.0f) == 0x3C00 && detail::half_to_float(0x7BFF) == 65504.0f);

/// @brief The error bound of a codec (see `error_bound`): `C::max_error`, and for f32 (exact)
///        and bf16 (2^-8 relative, 2^-134 absolute in the subnormal range).
template <class C>
inline constexpr error_bound codec_error_bound_v = C::max_error;
template <>
inline constexpr error_bound codec_error_bound_v<f32_codec> = {0.0, 0.0};
template <>
inline constexpr error_bound codec_error_bound_v<bf16_codec> = {0x1.0p-8, 0x1.0p-134};

/// @brief Calls `f(C{})` with the codec named `name`: "f32", "bf16", "f16", "fp8" or "int8".
///        Every branch is instantiated, so `f` must accept each codec (and return one type).
/// @throws config_error for any other name.
template <class F>
decltype(auto) dispatch_codec(std::string_view name, F&& f) {
    if (name == f32_codec::name) return std::forward<F>(f)(f32_codec{});
    if (name == bf16_codec::name) return std::forward<F>(f)(bf16_codec{});
    if (name == f16_codec::name) return std::forward<F>(f)(f16_codec{});
    if (name == fp8_e4m3_codec::name) return std::forward<F>(f)(fp8_e4m3_codec{});
    if (name == int8_codec::name) return std::forward<F>(f)(int8_codec{});
    throw config_error("unknown codec '" + std::string(name) + "' (f32, bf16, f16, fp8, int8)");
}

/// @brief The error bound of the codec named `name` (see `dispatch_codec`).
/// @throws config_error for an unknown name.
constexpr error_bound codec_error_bound(std::string_view name) {
    if (name == f32_codec::name) return codec_error_bound_v<f32_codec>;
    if (name == bf16_codec::name) return codec_error_bound_v<bf16_codec>;
    if (name == f16_codec::name) return codec_error_bound_v<f16_codec>;
    if (name == fp8_e4m3_codec::name) return codec_error_bound_v<fp8_e4m3_codec>;
    if (name == int8_codec::name) return codec_error_bound_v<int8_codec>;
    throw config_error("unknown codec '" + std::string(name) + "' (f32, bf16, f16, fp8, int8)");
}

ENGRAM_END_NAMESPACE
