#pragma once
// SPDX-License-Identifier: MIT
// AVX-512 row decodes of the bf16, f16, FP8 E4M3 and int8 codecs, chosen at run time by the
// gathers of directly addressable rows (see direct.hpp). Each gives the codec's own decode bit
// for bit, NaN payloads, infinities and subnormals included.

#include <engram/config.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/quantized.hpp>

#include <cstddef> // for byte, size_t
#include <cstdint> // for uint8_t, uint32_t

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) &&   \
    !defined(ENGRAM_DISABLE_X86_SIMD)
#include <immintrin.h>
#define ENGRAM_DETAIL_GATHER_AVX512 1
#define ENGRAM_DETAIL_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#else
#define ENGRAM_DETAIL_GATHER_AVX512 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// The AVX-512 row decode of `Codec`: `decode(row, out, dim)` like `Codec::decode`, compiled for
/// AVX-512 F, BW and VL (callers check `avx512_available()` first and must themselves carry
/// ENGRAM_DETAIL_AVX512_TARGET for it to inline). `exists` is false for codecs without one
/// (f32, whose decode is a memcpy already).
template <class Codec>
struct avx512_decoder {
    static constexpr bool exists = false;
};

#if ENGRAM_DETAIL_GATHER_AVX512

/// True when the CPU (and OS) run AVX-512 F, BW and VL, which the decodes below use.
inline bool avx512_available() noexcept {
    static const bool ok = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    }();
    return ok;
}

// The masked forms of the widening intrinsics below avoid g++ 12's false
// -Wmaybe-uninitialized inside the unmasked ones.

/// The mask of the first `n` (< 16) lanes.
ENGRAM_ALWAYS_INLINE __mmask16 first_lanes(std::size_t n) noexcept { return static_cast<__mmask16>((1u << n) - 1u); }

/// The 16 bfloat16 values of `h` widened to float (exact: a 16-bit shift).
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE __m512 bf16x16_to_f32(__m256i h) noexcept {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, h), 16));
}

/// The 16 binary16 values of `h` as float, as half_to_float gives them: vcvtph2ps (exact for
/// every value, subnormals included, whatever MXCSR says), except that it quiets signalling
/// NaNs, whose quiet bit (float bit 22) is cleared again.
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE __m512 f16x16_to_f32(__m256i h) noexcept {
    const __m512 f = _mm512_maskz_cvtph_ps(0xFFFF, h);
    const __mmask16 nan =
        _mm256_cmpgt_epu16_mask(_mm256_and_si256(h, _mm256_set1_epi16(0x7FFF)), _mm256_set1_epi16(0x7C00));
    const __mmask16 signalling = _mm256_mask_testn_epi16_mask(nan, h, _mm256_set1_epi16(0x0200));
    return _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(f), signalling, _mm512_castps_si512(f),
                                                     _mm512_set1_epi32(0x00400000)));
}

/// FP8 E4M3 codes as binary16 bits whose value is the code's / 256: the code's exponent and
/// fraction moved up 7 bits (bias 7 -> 15, subnormals onto binary16 subnormals), the sign to
/// bit 15, and the NaN codes to the quiet binary16 NaN (its float is 0x7FC00000 with the sign).
/// 32 codes zero-extended to 16 bits in `c`.
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE __m512i e4m3x32_to_f16(__m512i c) noexcept {
    __m512i mag = _mm512_and_si512(_mm512_slli_epi16(c, 7), _mm512_set1_epi16(0x3F80));
    mag =
        _mm512_mask_mov_epi16(mag, _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x3F80)), _mm512_set1_epi16(0x7E00));
    return _mm512_or_si512(mag,
                           _mm512_and_si512(_mm512_slli_epi16(c, 8), _mm512_set1_epi16(static_cast<short>(0x8000))));
}

/// 16 FP8 codes (as binary16 bits from e4m3x32_to_f16) times the scale: widened exactly, then
/// one product of the code's value and the scale (the one rounding of the scalar decode). For
/// scale bytes 1 to 246, 256 s is a normal float and the product is h * (256 s). Otherwise
/// (byte 0: s is a float subnormal, flushed like the scalar decode's under MXCSR DAZ; 247 and
/// up: 256 s overflows; 255: NaN) it is (h * 256) * s, and NaN codes keep their NaN when the
/// scale is NaN too (which of two NaNs a product keeps would depend on the order the compiler puts the
/// operands in; the scalar decode keeps the code's).
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE __m512 e4m3x16_scaled(__m256i h, __m512 s256) noexcept {
    return _mm512_mul_ps(_mm512_maskz_cvtph_ps(0xFFFF, h), s256);
}
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE __m512 e4m3x16_scaled_large(__m256i h, __m512 s) noexcept {
    const __m512 v = _mm512_mul_ps(_mm512_maskz_cvtph_ps(0xFFFF, h), _mm512_set1_ps(256.0f));
    return _mm512_mask_mov_ps(_mm512_mul_ps(v, s), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
}

/// A row of 16-bit values, 16 widened per load and store by `widen` (__m256i -> __m512), the
/// row's last partial vector masked.
template <__m512 (*Widen)(__m256i) noexcept>
ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE void decode_16bit_row(const std::byte* row, float* out,
                                                                       std::size_t dim) noexcept {
    const std::size_t full = dim / 16 * 16;
    for (std::size_t k = 0; k < full; k += 16)
        _mm512_storeu_ps(out + k, Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k))));
    if (full != dim) {
        const __mmask16 tail = first_lanes(dim - full);
        _mm512_mask_storeu_ps(out + full, tail, Widen(_mm256_maskz_loadu_epi16(tail, row + 2 * full)));
    }
}

/// bf16: widened by a shift.
template <>
struct avx512_decoder<bf16_codec> {
    static constexpr bool exists = true;
    ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE static void decode(const std::byte* row, float* out,
                                                                        std::size_t dim) noexcept {
        decode_16bit_row<bf16x16_to_f32>(row, out, dim);
    }
};

/// f16: converted by f16x16_to_f32.
template <>
struct avx512_decoder<f16_codec> {
    static constexpr bool exists = true;
    ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE static void decode(const std::byte* row, float* out,
                                                                        std::size_t dim) noexcept {
        decode_16bit_row<f16x16_to_f32>(row, out, dim);
    }
};

/// FP8 E4M3: each 32-value block as two vectors of 16 codes, times the block's UE8M0 scale
/// (dim is a multiple of 32).
template <>
struct avx512_decoder<fp8_e4m3_codec> {
    static constexpr bool exists = true;
    ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE static void decode(const std::byte* row, float* out,
                                                                        std::size_t dim) noexcept {
        decode_split(row, row + dim, out, dim);
    }
    /// The codes and the scale bytes stored apart (fp8_e4m3_codec::decode_split).
    ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE static void
    decode_split(const std::byte* row, const std::byte* scales, float* out, std::size_t dim) noexcept {
        constexpr std::size_t block = fp8_e4m3_codec::block;
        for (std::size_t j = 0; j < dim / block; ++j) {
            const auto b = static_cast<std::uint8_t>(scales[j]);
            const __m512i h = e4m3x32_to_f16(_mm512_maskz_cvtepu8_epi16(
                0xFFFFFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j * block))));
            const __m256i lo = _mm512_maskz_extracti64x4_epi64(0xF, h, 0),
                          hi = _mm512_maskz_extracti64x4_epi64(0xF, h, 1);
            float* o = out + j * block;
            if (ENGRAM_LIKELY(b - 1u < 246u)) { // b in [1, 246]: 256 s = 2^(b - 119), a normal float
                const __m512 s256 = _mm512_set1_ps(float_bits((static_cast<std::uint32_t>(b) + 8u) << 23));
                _mm512_storeu_ps(o, e4m3x16_scaled(lo, s256));
                _mm512_storeu_ps(o + 16, e4m3x16_scaled(hi, s256));
            } else {
                const __m512 s = _mm512_set1_ps(ue8m0_value(b));
                _mm512_storeu_ps(o, e4m3x16_scaled_large(lo, s));
                _mm512_storeu_ps(o + 16, e4m3x16_scaled_large(hi, s));
            }
        }
    }
};

/// int8: 16 values sign-extended, converted (exact) and times the row scale; the last partial
/// vector masked (the load too: the scale follows the values).
template <>
struct avx512_decoder<int8_codec> {
    static constexpr bool exists = true;
    ENGRAM_DETAIL_AVX512_TARGET ENGRAM_ALWAYS_INLINE static void decode(const std::byte* row, float* out,
                                                                        std::size_t dim) noexcept {
        const __m512 s = _mm512_set1_ps(int8_codec::row_scale(row, dim));
        const std::size_t full = dim / 16 * 16;
        for (std::size_t k = 0; k < full; k += 16) {
            const __m512i q =
                _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)));
            _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, q), s));
        }
        if (full != dim) {
            const __mmask16 tail = first_lanes(dim - full);
            const __m512i q = _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_maskz_loadu_epi8(tail, row + full));
            _mm512_mask_storeu_ps(out + full, tail, _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, q), s));
        }
    }
};

/// The AVX-512 decode of one row as a plain function (for a function pointer).
template <class Codec>
ENGRAM_DETAIL_AVX512_TARGET void decode_row_avx512(const std::byte* row, float* out, std::size_t dim) noexcept {
    avx512_decoder<Codec>::decode(row, out, dim);
}

#else

inline bool avx512_available() noexcept { return false; }

#endif

/// A row decode: `dim` values of the encoded row at `row` into `out`.
using row_decode_fn = void (*)(const std::byte* row, float* out, std::size_t dim) noexcept;

/// The fastest decode of `Codec`'s rows on this CPU: the AVX-512 one where the codec has one and
/// the CPU runs it, else `Codec::decode`. Both give the same values bit for bit.
template <row_codec Codec>
row_decode_fn row_decoder() noexcept {
#if ENGRAM_DETAIL_GATHER_AVX512
    if constexpr (avx512_decoder<Codec>::exists)
        if (avx512_available()) return &decode_row_avx512<Codec>;
#endif
    return &Codec::decode;
}

} // namespace detail

ENGRAM_END_NAMESPACE
