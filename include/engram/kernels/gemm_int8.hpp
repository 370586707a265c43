#pragma once
// SPDX-License-Identifier: MIT
// int8 projections: weights quantised per output channel, activations per token (symmetric,
// round to nearest even), integer dot products accumulated exactly in int32, then
// `p = fma(float(acc), s_a * s_w, bias)`. An AVX512-VNNI kernel (`vpdpbusd`, chosen at run time,
// compiled with a target attribute) and a portable one compute the same integers, and every
// path (these two, oneDNN's) ends in the same scaling step, so they all give the same bits.

#include <engram/config.hpp>

#include <algorithm> // for max, min, fill_n
#include <cmath>     // for fma, nearbyint
#include <cstddef>   // for size_t
#include <cstdint>   // for int8_t, uint8_t, int32_t
#include <cstring>   // for memcpy
#include <vector>    // for vector

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ENGRAM_GEMM_INT8_X86 1
#include <immintrin.h>
#else
#define ENGRAM_GEMM_INT8_X86 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace kernels {

/// max |x_i| over the non-NaN values (0 for none), and the multiplier 127 / max that
/// `quantize_int8` scales by (0 when the vector has no finite non-zero largest value).
struct int8_range {
    float amax = 0.0f;
    [[nodiscard]] bool usable() const noexcept { return amax > 0.0f && amax <= 3.4028234e38f; }
    [[nodiscard]] float multiplier() const noexcept { return 127.0f / amax; }
    [[nodiscard]] float scale() const noexcept { return usable() ? amax / 127.0f : 1.0f; }
};

/// One value of `quantize_int8`: clamp(nearbyint(x * inv), -127, 127), NaN -> 0.
inline std::int8_t quantize_one(float x, float inv) noexcept {
    const float v = std::nearbyint(x * inv);
    return v == v ? static_cast<std::int8_t>(std::clamp(v, -127.0f, 127.0f)) : std::int8_t{0};
}

/// @brief Symmetric int8 quantisation of `x` [n]: `scale = max|x| / 127` (1 for a vector of
///        zeros or with an infinite value: then every q is 0), `q_i = clamp(nearbyint(x_i * 127 /
///        max|x|), -127, 127)`, NaN values ignored for the maximum and quantised to 0. Returns the
///        scale. The one definition for weights (per row) and activations (per token).
inline float quantize_int8(const float* x, std::size_t n, std::int8_t* q) noexcept {
    int8_range r;
    for (std::size_t i = 0; i < n; ++i) r.amax = std::max(r.amax, x[i] < 0 ? -x[i] : x[i]); // NaN: kept out
    if (!r.usable()) {
        std::fill_n(q, n, std::int8_t{0});
        return 1.0f;
    }
    const float inv = r.multiplier();
    for (std::size_t i = 0; i < n; ++i) q[i] = quantize_one(x[i], inv);
    return r.scale();
}

/// @brief int8 weights [rows, cols] quantised per row (output channel) and packed for the
///        kernels: strips of 16 rows, each `k4 = ceil(cols / 4)` groups of 16 rows x 4 columns
///        (64 bytes: one `vpdpbusd` operand), zero-padded. Keeps each row's scale and
///        `128 * sum(q)` (the correction for activations offset to unsigned).
class packed_int8 {
public:
    static constexpr std::size_t strip = 16;

    packed_int8() = default;
    /// Quantises and packs `w` [rows, cols] (row-major, row stride `ld`).
    packed_int8(const float* w, std::size_t rows, std::size_t cols, std::size_t ld)
        : rows_(rows), cols_(cols), k4_((cols + 3) / 4), scale_(rows), comp_(padded_rows()),
          data_(strips() * k4_ * strip * 4, 0) {
        std::vector<std::int8_t> q(cols);
        std::int8_t* qr = q.data();
        for (std::size_t r = 0; r < rows; ++r) {
            scale_[r] = quantize_int8(w + r * ld, cols, qr);
            std::int32_t sum = 0;
            for (std::size_t c = 0; c < cols; ++c) {
                sum += qr[c];
                data_[((r / strip) * k4_ + c / 4) * strip * 4 + (r % strip) * 4 + c % 4] = qr[c];
            }
            comp_[r] = 128 * sum;
        }
    }

    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t cols() const noexcept { return cols_; }
    [[nodiscard]] std::size_t strips() const noexcept { return (rows_ + strip - 1) / strip; }
    [[nodiscard]] std::size_t padded_rows() const noexcept { return strips() * strip; }
    /// Column groups of 4 (the padded width of an activation row is `4 * k4()` bytes).
    [[nodiscard]] std::size_t k4() const noexcept { return k4_; }
    [[nodiscard]] const float* scales() const noexcept { return scale_.data(); }
    [[nodiscard]] const std::int32_t* compensation() const noexcept { return comp_.data(); }
    [[nodiscard]] const std::int8_t* strip_data(std::size_t s) const noexcept {
        return data_.data() + s * k4_ * strip * 4;
    }
    /// q[r][c] read from the packed layout.
    [[nodiscard]] std::int8_t at(std::size_t r, std::size_t c) const noexcept {
        return data_[((r / strip) * k4_ + c / 4) * strip * 4 + (r % strip) * 4 + c % 4];
    }
    [[nodiscard]] bool empty() const noexcept { return rows_ == 0; }

private:
    std::size_t rows_ = 0, cols_ = 0, k4_ = 0;
    std::vector<float> scale_;
    std::vector<std::int32_t> comp_;
    std::vector<std::int8_t> data_;
};

/// @brief Activations of n tokens as the int8 kernels take them: each token quantised
///        (`quantize_int8`) and offset by 128 to unsigned, rows of `4 * k4` bytes (zero-padded:
///        the padding's +128 meets zero weights), plus each token's scale.
struct int8_activations {
    std::vector<std::uint8_t> u; ///< [n, 4 * k4]
    std::vector<float> scale;    ///< [n]
    std::vector<std::int8_t> q;  ///< [cols] scratch
    std::size_t stride = 0;

    /// Quantises n rows of `cols` floats (AVX-512 where the CPU has it: the same bits).
    void quantize(const float* x, std::size_t n, std::size_t cols, std::size_t k4);
    /// The portable form of `quantize`.
    void quantize_portable(const float* x, std::size_t n, std::size_t cols, std::size_t k4) {
        reserve(n, cols, k4);
        for (std::size_t t = 0; t < n; ++t) {
            scale[t] = quantize_int8(x + t * cols, cols, q.data());
            std::uint8_t* ut = u.data() + t * stride;
            for (std::size_t c = 0; c < cols; ++c) ut[c] = static_cast<std::uint8_t>(q[c] + 128);
            std::fill(ut + cols, ut + stride, std::uint8_t{128});
        }
    }
    void reserve(std::size_t n, std::size_t cols, std::size_t k4) {
        stride = 4 * k4;
        if (u.size() < n * stride) u.resize(n * stride);
        if (scale.size() < n) scale.resize(n);
        if (q.size() < cols) q.resize(cols);
    }
};

/// The portable form of `int8_finish` (below).
inline void int8_finish_portable(const std::int32_t* acc, const packed_int8& w, float s_a, const float* bias, float* p,
                                 std::size_t c0, std::size_t c1) noexcept {
    const float* sw = w.scales();
    const std::int32_t* comp = w.compensation();
    for (std::size_t c = c0; c < c1; ++c)
        p[c] = std::fma(static_cast<float>(acc[c - c0] - comp[c]), s_a * sw[c], bias[c]);
}

/// @brief Portable kernel: p[t, c] for tokens [0, n) and strips [s0, s1) of `w` (row stride
///        `ldp`), from activations `a` (int8_activations::quantize).
inline void gemm_int8_portable(const packed_int8& w, std::size_t s0, std::size_t s1, const int8_activations& a,
                               std::size_t n, const float* bias, float* p, std::size_t ldp) noexcept {
    std::int32_t acc[packed_int8::strip];
    for (std::size_t t = 0; t < n; ++t) {
        const std::uint8_t* ut = a.u.data() + t * a.stride;
        for (std::size_t s = s0; s < s1; ++s) {
            const std::int8_t* ws = w.strip_data(s);
            std::fill_n(acc, packed_int8::strip, 0);
            for (std::size_t k = 0; k < w.k4(); ++k)
                for (std::size_t r = 0; r < packed_int8::strip; ++r)
                    for (std::size_t j = 0; j < 4; ++j)
                        acc[r] += static_cast<std::int32_t>(ut[4 * k + j]) * ws[(k * packed_int8::strip + r) * 4 + j];
            const std::size_t c0 = s * packed_int8::strip;
            int8_finish_portable(acc, w, a.scale[t], bias, p + t * ldp, c0,
                                 std::min(c0 + packed_int8::strip, w.rows()));
        }
    }
}

#if ENGRAM_GEMM_INT8_X86
namespace detail {

#define ENGRAM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/// NT tokens x one strip of 16 channels: NT accumulators, one weight load per NT `vpdpbusd`.
template <std::size_t NT>
ENGRAM_VNNI_TARGET inline void int8_tile(const std::int8_t* ws, std::size_t k4, const std::uint8_t* const* u,
                                         const float* s_a, const float* sw, const std::int32_t* comp, const float* bias,
                                         float* const* out, __mmask16 mask) noexcept {
    __m512i acc[NT];
    for (std::size_t j = 0; j < NT; ++j) acc[j] = _mm512_setzero_si512();
    for (std::size_t k = 0; k < k4; ++k) {
        const __m512i wv = _mm512_loadu_si512(ws + k * 64);
        ENGRAM_UNROLL(8)
        for (std::size_t j = 0; j < NT; ++j) {
            std::int32_t four;
            std::memcpy(&four, u[j] + 4 * k, 4);
            acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_set1_epi32(four), wv);
        }
    }
    const __m512i cv = _mm512_maskz_loadu_epi32(mask, comp);
    const __m512 swv = _mm512_maskz_loadu_ps(mask, sw);
    const __m512 bv = _mm512_maskz_loadu_ps(mask, bias);
    for (std::size_t j = 0; j < NT; ++j) {
        // The zero-masked form: g++ 12 flags the unmasked one's _mm512_undefined_ps().
        const __m512 x = _mm512_maskz_cvtepi32_ps(static_cast<__mmask16>(0xFFFF), _mm512_sub_epi32(acc[j], cv));
        const __m512 s = _mm512_mul_ps(_mm512_set1_ps(s_a[j]), swv);
        _mm512_mask_storeu_ps(out[j], mask, _mm512_fmadd_ps(x, s, bv));
    }
}

#define ENGRAM_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))

/// `int8_activations::quantize` with AVX-512: the same operations as quantize_int8 per value
/// (max of |x| with NaN kept out, x * inv rounded to nearest even, clamped, NaN -> 0).
ENGRAM_AVX512_TARGET inline float quantize_u8_avx512(const float* x, std::size_t n, std::uint8_t* u) noexcept {
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    const __m512i sign = _mm512_set1_epi32(0x7FFFFFFF);
    __m512 vmax = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i < n; i += 16) {
        const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1u);
        const __m512 a =
            _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(m, x + i)), sign));
        vmax = _mm512_maskz_max_ps(all, a, vmax); // a NaN lane keeps the running maximum (the second operand)
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, vmax);
    int8_range r;
    for (float l : lanes) r.amax = std::max(r.amax, l);
    if (!r.usable()) {
        std::fill_n(u, n, std::uint8_t{128});
        return 1.0f;
    }
    const __m512 inv = _mm512_set1_ps(r.multiplier());
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    const __m512i offset = _mm512_set1_epi32(128);
    for (i = 0; i < n; i += 16) {
        const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
        v = _mm512_maskz_roundscale_ps(all, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); // NaN -> 0
        v = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, v, lo), hi);
        const __m512i q = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(all, v), offset);
        _mm_mask_storeu_epi8(u + i, m, _mm512_maskz_cvtepi32_epi8(all, q));
    }
    return r.scale();
}

/// int8_finish with AVX-512 (the same fused multiply-add per value).
ENGRAM_AVX512_TARGET inline void int8_finish_avx512(const std::int32_t* acc, const float* sw, const std::int32_t* comp,
                                                    float s_a, const float* bias, float* p, std::size_t c0,
                                                    std::size_t c1) noexcept {
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    const __m512 sa = _mm512_set1_ps(s_a);
    for (std::size_t c = c0; c < c1; c += 16) {
        const auto m = static_cast<__mmask16>(c1 - c >= 16 ? 0xFFFF : (1u << (c1 - c)) - 1u);
        const __m512i d =
            _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, acc + (c - c0)), _mm512_maskz_loadu_epi32(m, comp + c));
        const __m512 s = _mm512_mul_ps(sa, _mm512_maskz_loadu_ps(m, sw + c));
        _mm512_mask_storeu_ps(p + c, m,
                              _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(all, d), s, _mm512_maskz_loadu_ps(m, bias + c)));
    }
}
#undef ENGRAM_AVX512_TARGET

/// One token against G strips at a time: G independent accumulators share each broadcast of
/// the activations (a single accumulator would wait on vpdpbusd's latency at every step).
template <std::size_t G>
ENGRAM_VNNI_TARGET inline void int8_gemv_group(const packed_int8& w, std::size_t s, const std::uint8_t* u, float s_a,
                                               const float* bias, float* p) noexcept {
    __m512i acc[G];
    const std::int8_t* ws[G];
    for (std::size_t g = 0; g < G; ++g) {
        acc[g] = _mm512_setzero_si512();
        ws[g] = w.strip_data(s + g);
    }
    const std::size_t k4 = w.k4();
    for (std::size_t k = 0; k < k4; ++k) {
        std::int32_t four;
        std::memcpy(&four, u + 4 * k, 4);
        const __m512i a = _mm512_set1_epi32(four);
        ENGRAM_UNROLL(8)
        for (std::size_t g = 0; g < G; ++g) acc[g] = _mm512_dpbusd_epi32(acc[g], a, _mm512_loadu_si512(ws[g] + k * 64));
    }
    constexpr auto all = static_cast<__mmask16>(0xFFFF);
    const __m512 sa = _mm512_set1_ps(s_a);
    for (std::size_t g = 0; g < G; ++g) {
        const std::size_t c0 = (s + g) * packed_int8::strip;
        const std::size_t live = std::min(packed_int8::strip, w.rows() - c0);
        const auto mask = static_cast<__mmask16>((1u << live) - 1u);
        const __m512i d = _mm512_sub_epi32(acc[g], _mm512_maskz_loadu_epi32(mask, w.compensation() + c0));
        const __m512 sc = _mm512_mul_ps(sa, _mm512_maskz_loadu_ps(mask, w.scales() + c0));
        _mm512_mask_storeu_ps(
            p + c0, mask,
            _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(all, d), sc, _mm512_maskz_loadu_ps(mask, bias + c0)));
    }
}

template <std::size_t NT>
ENGRAM_VNNI_TARGET inline void int8_strips(const packed_int8& w, std::size_t s0, std::size_t s1,
                                           const int8_activations& a, std::size_t t0, const float* bias, float* p,
                                           std::size_t ldp) noexcept {
    const std::uint8_t* u[NT];
    float* out[NT];
    for (std::size_t j = 0; j < NT; ++j) u[j] = a.u.data() + (t0 + j) * a.stride;
    for (std::size_t s = s0; s < s1; ++s) {
        const std::size_t c0 = s * packed_int8::strip;
        const std::size_t live = std::min(packed_int8::strip, w.rows() - c0);
        const auto mask = static_cast<__mmask16>((1u << live) - 1u);
        for (std::size_t j = 0; j < NT; ++j) out[j] = p + (t0 + j) * ldp + c0;
        int8_tile<NT>(w.strip_data(s), w.k4(), u, a.scale.data() + t0, w.scales() + c0, w.compensation() + c0,
                      bias + c0, out, mask);
    }
}

ENGRAM_VNNI_TARGET inline void gemm_int8_vnni(const packed_int8& w, std::size_t s0, std::size_t s1,
                                              const int8_activations& a, std::size_t n, const float* bias, float* p,
                                              std::size_t ldp) noexcept {
    if (n == 1) { // one token: 8 strips at a time
        const std::uint8_t* u = a.u.data();
        std::size_t s = s0;
        for (; s + 8 <= s1; s += 8) int8_gemv_group<8>(w, s, u, a.scale[0], bias, p);
        for (; s < s1; ++s) int8_gemv_group<1>(w, s, u, a.scale[0], bias, p);
        return;
    }
    constexpr std::size_t nt = 8;
    // Token groups outermost within a range of strips that stays in L2 (64 strips of 1024
    // columns: 1 MiB), so that each weight strip is reused by every group while it is hot.
    constexpr std::size_t strips_per_pass = 64;
    for (std::size_t b0 = s0; b0 < s1; b0 += strips_per_pass) {
        const std::size_t b1 = std::min(s1, b0 + strips_per_pass);
        std::size_t t = 0;
        for (; t + nt <= n; t += nt) int8_strips<nt>(w, b0, b1, a, t, bias, p, ldp);
        using tail_fn = void (*)(const packed_int8&, std::size_t, std::size_t, const int8_activations&, std::size_t,
                                 const float*, float*, std::size_t) noexcept;
        static constexpr tail_fn tails[nt] = {nullptr,         &int8_strips<1>, &int8_strips<2>, &int8_strips<3>,
                                              &int8_strips<4>, &int8_strips<5>, &int8_strips<6>, &int8_strips<7>};
        if (n > t) tails[n - t](w, b0, b1, a, t, bias, p, ldp);
    }
}
#undef ENGRAM_VNNI_TARGET

} // namespace detail
#endif // ENGRAM_GEMM_INT8_X86

/// @brief Whether the int8 kernels run the AVX512-VNNI code on this CPU.
inline bool gemm_int8_uses_vnni() noexcept {
#if ENGRAM_GEMM_INT8_X86
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }();
    return yes;
#else
    return false;
#endif
}

/// @brief Whether the int8 activation and scaling steps run with AVX-512 on this CPU.
inline bool int8_steps_use_avx512() noexcept {
#if ENGRAM_GEMM_INT8_X86
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    }();
    return yes;
#else
    return false;
#endif
}

inline void int8_activations::quantize(const float* x, std::size_t n, std::size_t cols, std::size_t k4) {
#if ENGRAM_GEMM_INT8_X86
    if (int8_steps_use_avx512()) {
        reserve(n, cols, k4);
        for (std::size_t t = 0; t < n; ++t) {
            std::uint8_t* ut = u.data() + t * stride;
            scale[t] = detail::quantize_u8_avx512(x + t * cols, cols, ut);
            std::fill(ut + cols, ut + stride, std::uint8_t{128});
        }
        return;
    }
#endif
    quantize_portable(x, n, cols, k4);
}

/// @brief The scaling step every int8 path ends in: `p[c] = fma(float(acc[c - c0] - comp[c]),
///        s_a * s_w[c], bias[c])` for channels c in [c0, c1). `acc` holds the dot products of
///        the unsigned (offset) activations, from channel c0 on. AVX-512 where the CPU has it.
inline void int8_finish(const std::int32_t* acc, const packed_int8& w, float s_a, const float* bias, float* p,
                        std::size_t c0, std::size_t c1) noexcept {
#if ENGRAM_GEMM_INT8_X86
    if (int8_steps_use_avx512()) {
        detail::int8_finish_avx512(acc, w.scales(), w.compensation(), s_a, bias, p, c0, c1);
        return;
    }
#endif
    int8_finish_portable(acc, w, s_a, bias, p, c0, c1);
}

/// @brief p [n, w.rows()] (row stride `ldp`), channels of strips [s0, s1): the int8 product of
///        the activations `a` and `w`, scaled, plus `bias`. Exact integer sums: the same bits on
///        every path, for any split of strips or tokens.
inline void gemm_int8(const packed_int8& w, std::size_t s0, std::size_t s1, const int8_activations& a, std::size_t n,
                      const float* bias, float* p, std::size_t ldp) noexcept {
#if ENGRAM_GEMM_INT8_X86
    if (gemm_int8_uses_vnni()) {
        detail::gemm_int8_vnni(w, s0, s1, a, n, bias, p, ldp);
        return;
    }
#endif
    gemm_int8_portable(w, s0, s1, a, n, bias, p, ldp);
}

} // namespace kernels

ENGRAM_END_NAMESPACE
