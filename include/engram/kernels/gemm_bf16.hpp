#pragma once
// SPDX-License-Identifier: MIT
// bf16 dot-product GEMM and GEMV: C [n, rows] += A [n, cols] W^T with bf16 A and W and float
// accumulation, products taken two at a time (pairs of adjacent columns) as the AVX512_BF16
// instruction `vdpbf16ps` takes them. The weights are packed once into strips of 32 rows; an
// AVX-512 BF16 kernel (target attribute, chosen at run time, no -march needed) and a portable
// loop compute the same sums in the same order.

#include <engram/config.hpp>
#include <engram/storage/row_types.hpp>

#include <algorithm> // for min
#include <bit>       // for bit_cast
#include <cstddef>   // for size_t
#include <cstdint>   // for uint16_t, uint32_t
#include <utility>   // for index_sequence
#include <vector>    // for vector

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(ENGRAM_DISABLE_X86_SIMD)
#define ENGRAM_GEMM_BF16_X86 1
#include <immintrin.h>
#define ENGRAM_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define ENGRAM_GEMM_BF16_X86 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace kernels {

/// @brief A weight matrix [rows, cols] rounded to bf16 (nearest even) and packed for
///        `gemm_bf16_dot`: strips of `strip` rows; in a strip, column pair j (columns 2j, 2j+1)
///        of its 32 rows is 32 consecutive 32-bit words (low half: the even column). Rows past
///        `rows` and the column past an odd `cols` are zero.
class packed_bf16 {
public:
    static constexpr std::size_t strip = 32;

    packed_bf16() = default;
    /// Packs row-major float weights `w` [rows, cols].
    packed_bf16(const float* w, std::size_t rows, std::size_t cols)
        : rows_(rows), cols_(cols), pairs_((cols + 1) / 2), strips_((rows + strip - 1) / strip),
          data_(strips_ * pairs_ * strip, 0u) {
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t c = 0; c < cols; ++c) {
                const std::uint32_t b = bfloat16::from_float(w[r * cols + c]).bits;
                std::uint32_t& word = data_[((r / strip) * pairs_ + c / 2) * strip + r % strip];
                word |= c % 2 == 0 ? b : b << 16;
            }
    }

    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t cols() const noexcept { return cols_; }
    [[nodiscard]] std::size_t pairs() const noexcept { return pairs_; }
    [[nodiscard]] std::size_t strips() const noexcept { return strips_; }
    [[nodiscard]] bool empty() const noexcept { return data_.empty(); }
    [[nodiscard]] std::size_t bytes() const noexcept { return data_.size() * sizeof(std::uint32_t); }
    /// Strip s: `pairs()` groups of 32 words.
    [[nodiscard]] const std::uint32_t* strip_data(std::size_t s) const noexcept {
        return data_.data() + s * pairs_ * strip;
    }
    /// The stored weight (r, c), widened back to float.
    [[nodiscard]] float at(std::size_t r, std::size_t c) const noexcept {
        const std::uint32_t word = data_[((r / strip) * pairs_ + c / 2) * strip + r % strip];
        return std::bit_cast<float>(c % 2 == 0 ? word << 16 : word & 0xFFFF0000u);
    }

private:
    std::size_t rows_ = 0, cols_ = 0, pairs_ = 0, strips_ = 0;
    std::vector<std::uint32_t> data_;
};

namespace detail {

inline float bf16_lo(std::uint32_t word) noexcept { return std::bit_cast<float>(word << 16); }
inline float bf16_hi(std::uint32_t word) noexcept { return std::bit_cast<float>(word & 0xFFFF0000u); }

/// The portable kernel: rows [s * 32, ...) of strip s for tokens [0, n); per output, one float
/// accumulator over the column pairs in order, the odd column's product added first.
inline void gemm_bf16_strip_portable(const packed_bf16& w, std::size_t s, const std::uint32_t* a, std::size_t lda_pairs,
                                     std::size_t n, float* c, std::size_t ldc, const float* bias) noexcept {
    const std::uint32_t* ws = w.strip_data(s);
    const std::size_t r0 = s * packed_bf16::strip;
    const std::size_t nr = std::min(packed_bf16::strip, w.rows() - r0);
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t* ai = a + i * lda_pairs;
        for (std::size_t r = 0; r < nr; ++r) {
            float acc = bias != nullptr ? bias[r0 + r] : c[i * ldc + r0 + r];
            for (std::size_t j = 0; j < w.pairs(); ++j) {
                const std::uint32_t wv = ws[j * packed_bf16::strip + r], av = ai[j];
                acc += bf16_hi(wv) * bf16_hi(av);
                acc += bf16_lo(wv) * bf16_lo(av);
            }
            c[i * ldc + r0 + r] = acc;
        }
    }
}

#if ENGRAM_GEMM_BF16_X86

/// NT tokens x 32 rows of one strip over column pairs [j0, j1): 2 * NT accumulators, started
/// from the strip's bias (when `bias` is given) or loaded from C, and stored back to C (masked
/// past the last row).
template <std::size_t NT>
ENGRAM_TARGET_BF16 inline void gemm_bf16_tile(const std::uint32_t* ws, const std::uint32_t* a, std::size_t lda_pairs,
                                              std::size_t j0, std::size_t j1, const float* bias, float* c,
                                              std::size_t ldc, __mmask16 m0, __mmask16 m1) noexcept {
    __m512 acc0[NT], acc1[NT];
    if (bias != nullptr) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
        ENGRAM_UNROLL(16)
        for (std::size_t i = 0; i < NT; ++i) acc0[i] = b0, acc1[i] = b1;
    } else {
        ENGRAM_UNROLL(16)
        for (std::size_t i = 0; i < NT; ++i) {
            acc0[i] = _mm512_maskz_loadu_ps(m0, c + i * ldc);
            acc1[i] = _mm512_maskz_loadu_ps(m1, c + i * ldc + 16);
        }
    }
    for (std::size_t j = j0; j < j1; ++j) {
        const __m512bh w0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(ws + j * 32));
        const __m512bh w1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(ws + j * 32 + 16));
        ENGRAM_UNROLL(16)
        for (std::size_t i = 0; i < NT; ++i) {
            const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[i * lda_pairs + j])));
            acc0[i] = _mm512_dpbf16_ps(acc0[i], w0, av);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], w1, av);
        }
    }
    ENGRAM_UNROLL(16)
    for (std::size_t i = 0; i < NT; ++i) {
        _mm512_mask_storeu_ps(c + i * ldc, m0, acc0[i]);
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc1[i]);
    }
}

template <std::size_t... NT>
ENGRAM_TARGET_BF16 inline void gemm_bf16_tile_n(std::size_t nt, const std::uint32_t* ws, const std::uint32_t* a,
                                                std::size_t lda_pairs, std::size_t j0, std::size_t j1,
                                                const float* bias, float* c, std::size_t ldc, __mmask16 m0,
                                                __mmask16 m1, std::index_sequence<NT...>) noexcept {
    ((nt == NT + 1 ? gemm_bf16_tile<NT + 1>(ws, a, lda_pairs, j0, j1, bias, c, ldc, m0, m1) : void()), ...);
}

/// Tokens per register tile (2 x 12 accumulators, 2 weight vectors, 1 broadcast).
inline constexpr std::size_t bf16_tile_tokens = 12;
/// Column pairs per pass: D = 1024 in one pass (the accumulators stay in registers; the strip's
/// 64 KiB of weights come from L2 for each tile of tokens, whose 24 KiB stay in L1).
inline constexpr std::size_t bf16_pass_pairs = 512;

ENGRAM_TARGET_BF16 inline void gemm_bf16_avx512(const packed_bf16& w, std::size_t s0, std::size_t s1,
                                                const std::uint32_t* a, std::size_t lda_pairs, std::size_t n, float* c,
                                                std::size_t ldc, const float* bias) noexcept {
    const std::size_t pairs = w.pairs();
    for (std::size_t j0 = 0; j0 < pairs; j0 += bf16_pass_pairs) {
        const std::size_t j1 = std::min(pairs, j0 + bf16_pass_pairs);
        for (std::size_t s = s0; s < s1; ++s) {
            const std::size_t r0 = s * packed_bf16::strip;
            const std::size_t nr = std::min(packed_bf16::strip, w.rows() - r0);
            const auto m0 = static_cast<__mmask16>(nr >= 16 ? 0xFFFFu : (1u << nr) - 1u);
            const auto m1 = static_cast<__mmask16>(nr <= 16 ? 0u : nr >= 32 ? 0xFFFFu : (1u << (nr - 16)) - 1u);
            const std::uint32_t* ws = w.strip_data(s);
            const float* b = bias != nullptr && j0 == 0 ? bias + r0 : nullptr; // the first pass starts there
            std::size_t i = 0;
            for (; i + bf16_tile_tokens <= n; i += bf16_tile_tokens)
                gemm_bf16_tile<bf16_tile_tokens>(ws, a + i * lda_pairs, lda_pairs, j0, j1, b, c + i * ldc + r0, ldc, m0,
                                                 m1);
            if (i < n)
                gemm_bf16_tile_n(n - i, ws, a + i * lda_pairs, lda_pairs, j0, j1, b, c + i * ldc + r0, ldc, m0, m1,
                                 std::make_index_sequence<bf16_tile_tokens - 1>{});
        }
    }
}

/// y [rows of strips s0..s1) += W a for one token: four strips at a time (8 independent
/// accumulators), each output summed over the column pairs in order, as in the GEMM.
ENGRAM_TARGET_BF16 inline void gemv_bf16_dot_avx512(const packed_bf16& w, std::size_t s0, std::size_t s1,
                                                    const std::uint32_t* a, float* y) noexcept {
    const std::size_t pairs = w.pairs();
    std::size_t s = s0;
    for (; s + 4 <= s1 && (s + 4) * packed_bf16::strip <= w.rows(); s += 4) {
        float* ys = y + s * packed_bf16::strip;
        __m512 acc[8];
        ENGRAM_UNROLL(8)
        for (std::size_t k = 0; k < 8; ++k) acc[k] = _mm512_loadu_ps(ys + 16 * k);
        const std::uint32_t* wp[4] = {w.strip_data(s), w.strip_data(s + 1), w.strip_data(s + 2), w.strip_data(s + 3)};
        for (std::size_t j = 0; j < pairs; ++j) {
            const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[j])));
            ENGRAM_UNROLL(4)
            for (std::size_t k = 0; k < 4; ++k) {
                acc[2 * k] =
                    _mm512_dpbf16_ps(acc[2 * k], reinterpret_cast<__m512bh>(_mm512_loadu_si512(wp[k] + j * 32)), av);
                acc[2 * k + 1] = _mm512_dpbf16_ps(
                    acc[2 * k + 1], reinterpret_cast<__m512bh>(_mm512_loadu_si512(wp[k] + j * 32 + 16)), av);
            }
        }
        ENGRAM_UNROLL(8)
        for (std::size_t k = 0; k < 8; ++k) _mm512_storeu_ps(ys + 16 * k, acc[k]);
    }
    if (s < s1) gemm_bf16_avx512(w, s, s1, a, pairs, 1, y, 0, nullptr);
}

/// 16 floats' bit patterns rounded to bf16 (nearest even; NaN stays a quiet NaN, as
/// bfloat16::from_float), in the low half of each lane.
__attribute__((always_inline)) ENGRAM_TARGET_BF16 inline __m512i round_bf16x16(__m512i u) noexcept {
    // Zero-masked forms throughout: g++ 12 flags the unmasked ones' _mm512_undefined_*() as
    // maybe-uninitialized.
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    const __m512i high = _mm512_maskz_srli_epi32(all, u, 16);
    const __m512i rounding = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(high, _mm512_set1_epi32(1)));
    const __m512i rounded = _mm512_maskz_srli_epi32(all, _mm512_add_epi32(u, rounding), 16);
    const __mmask16 nan =
        _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
    return _mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x0040));
}

/// The low 16 bits of each lane, in order.
__attribute__((always_inline)) ENGRAM_TARGET_BF16 inline __m256i narrow16(__m512i v) noexcept {
    return _mm512_maskz_cvtepi32_epi16(static_cast<__mmask16>(0xFFFF), v);
}

/// Rounds n floats to bf16 pairs, 32 at a time; an odd tail's missing half is zero.
ENGRAM_TARGET_BF16 inline void to_bf16_pairs_avx512(const float* x, std::size_t n, std::uint32_t* out) noexcept {
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        // As 16-bit values in element order: words of two, element 2k in the low half.
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i / 2),
                            narrow16(round_bf16x16(_mm512_loadu_si512(x + i))));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i / 2 + 8),
                            narrow16(round_bf16x16(_mm512_loadu_si512(x + i + 16))));
    }
    for (; i < n; ++i) {
        const std::uint32_t b = bfloat16::from_float(x[i]).bits;
        if (i % 2 == 0)
            out[i / 2] = b;
        else
            out[i / 2] |= b << 16;
    }
}

#endif // ENGRAM_GEMM_BF16_X86

} // namespace detail

/// @brief Whether the bf16 dot-product kernels run the AVX512_BF16 code on this CPU.
inline bool gemm_bf16_uses_avx512() noexcept {
#if ENGRAM_GEMM_BF16_X86
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    }();
    return yes;
#else
    return false;
#endif
}

/// @brief Rounds `x` [n] to bf16 (nearest even) into `(n + 1) / 2` words of two (element 2k in
///        the low half); the layout `gemm_bf16_dot` reads a token's memory vector in.
inline void to_bf16_pairs(const float* x, std::size_t n, std::uint32_t* out) noexcept {
#if ENGRAM_GEMM_BF16_X86
    if (gemm_bf16_uses_avx512()) {
        detail::to_bf16_pairs_avx512(x, n, out);
        return;
    }
#endif
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t b = bfloat16::from_float(x[i]).bits;
        if (i % 2 == 0)
            out[i / 2] = b;
        else
            out[i / 2] |= b << 16;
    }
}

/// @brief C [n, w.rows()] (row stride `ldc`) += A W^T over the weight strips [s0, s1), or
///        C = bias + A W^T when `bias` [w.rows()] is given (C's old values are not read): A is n
///        tokens of `w.pairs()` bf16 pairs each (row stride `lda_pairs` words, from
///        `to_bf16_pairs`). Each output is one float accumulator, started from C or the bias,
///        over the column pairs in order, so any split of the strips or tokens gives the same bits.
inline void gemm_bf16_dot(const packed_bf16& w, std::size_t s0, std::size_t s1, const std::uint32_t* a,
                          std::size_t lda_pairs, std::size_t n, float* c, std::size_t ldc,
                          const float* bias = nullptr) noexcept {
#if ENGRAM_GEMM_BF16_X86
    if (gemm_bf16_uses_avx512()) {
        detail::gemm_bf16_avx512(w, s0, s1, a, lda_pairs, n, c, ldc, bias);
        return;
    }
#endif
    for (std::size_t s = s0; s < s1; ++s) detail::gemm_bf16_strip_portable(w, s, a, lda_pairs, n, c, ldc, bias);
}

/// @brief y [w.rows()] += W a for one token (`a` from `to_bf16_pairs`); the same bits as
///        `gemm_bf16_dot` with n = 1.
inline void gemv_bf16_dot(const packed_bf16& w, const std::uint32_t* a, float* y) noexcept {
#if ENGRAM_GEMM_BF16_X86
    if (gemm_bf16_uses_avx512()) {
        detail::gemv_bf16_dot_avx512(w, 0, w.strips(), a, y);
        return;
    }
#endif
    for (std::size_t s = 0; s < w.strips(); ++s) detail::gemm_bf16_strip_portable(w, s, a, w.pairs(), 1, y, 0, nullptr);
}

} // namespace kernels

ENGRAM_END_NAMESPACE
