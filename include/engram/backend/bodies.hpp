#pragma once
// SPDX-License-Identifier: MIT
// The per-element bodies of the layer's kernels: one `__host__ __device__` function each, called
// by the host backend's loops and by the CUDA kernels (engram/cuda/), so that the device's logic
// runs in the CPU tests. Plain C++ under g++ (ENGRAM_HOST_DEVICE is `inline` there); no
// allocation, no exceptions, no standard library calls in device code.

#include <engram/config.hpp>
#include <engram/types.hpp>

#include <cstddef> // for size_t
#include <cstdint> // for uint8_t, uint16_t, uint32_t, uint64_t, int64_t

#if !defined(__CUDA_ARCH__)
#include <cmath> // for sqrt, exp
#endif

ENGRAM_BEGIN_NAMESPACE

namespace bodies {

// ---- bits and arithmetic ------------------------------------------------------------------------

/// The float with bit pattern `u`, and the bits of `f` (constant expressions on both sides).
ENGRAM_HOST_DEVICE constexpr float as_float(std::uint32_t u) noexcept { return __builtin_bit_cast(float, u); }
ENGRAM_HOST_DEVICE constexpr std::uint32_t as_bits(float f) noexcept { return __builtin_bit_cast(std::uint32_t, f); }

/// The high 64 bits of the 128-bit product a * b (one multiply-high instruction on both sides).
ENGRAM_HOST_DEVICE constexpr std::uint64_t mulhi64(std::uint64_t a, std::uint64_t b) noexcept {
    return static_cast<std::uint64_t>((static_cast<detail::uint128>(a) * b) >> 64);
}

/// Square root and e^x of a float: the C library's on the host, CUDA's on the device (within
/// 2 ulp of the host's for exp; sqrt is correctly rounded on both).
ENGRAM_HOST_DEVICE float sqrt_f(float x) noexcept {
#if defined(__CUDA_ARCH__)
    return ::sqrtf(x);
#else
    return std::sqrt(x);
#endif
}
ENGRAM_HOST_DEVICE double sqrt_d(double x) noexcept {
#if defined(__CUDA_ARCH__)
    return ::sqrt(x);
#else
    return std::sqrt(x);
#endif
}
ENGRAM_HOST_DEVICE float exp_f(float x) noexcept {
#if defined(__CUDA_ARCH__)
    return ::expf(x);
#else
    return std::exp(x);
#endif
}

// ---- hashing (spec section 4) -------------------------------------------------------------------

/// Barrett constant of divisor p: floor(2^64 / p) for p >= 2, 2^64 - 1 for p = 1 (host only).
constexpr std::uint64_t barrett_magic(std::uint64_t p) noexcept {
    return p > 1 ? static_cast<std::uint64_t>((detail::uint128{1} << 64) / p) : ~std::uint64_t{0};
}

/// x mod p with `m = barrett_magic(p)`: q = mulhi(x, m) is floor(x/p) or one less, so one
/// conditional subtraction makes the remainder exact for every 64-bit x.
ENGRAM_HOST_DEVICE constexpr std::uint64_t barrett_mod(std::uint64_t x, std::uint64_t p, std::uint64_t m) noexcept {
    const std::uint64_t r = x - mulhi64(x, m) * p;
    return r >= p ? r - p : r;
}

/// Floor modulo of a signed x (in [0, p) also for negative x), as NumPy's `%`.
ENGRAM_HOST_DEVICE constexpr std::int64_t barrett_floor_mod(std::int64_t x, std::uint64_t p, std::uint64_t m) noexcept {
    if (x >= 0) return static_cast<std::int64_t>(barrett_mod(static_cast<std::uint64_t>(x), p, m));
    // -x may not fit (INT64_MIN): reduce the two's complement magnitude as unsigned.
    const std::uint64_t r = barrett_mod(0 - static_cast<std::uint64_t>(x), p, m);
    return r == 0 ? 0 : static_cast<std::int64_t>(p - r);
}

/// The multiply-XOR mix of the first n ids of a window: `(w[0] m[0]) ^ ... ^ (w[n-1] m[n-1])`
/// in wrapping 64-bit arithmetic.
ENGRAM_HOST_DEVICE constexpr std::int64_t mix_window(const token_id* window, const std::uint64_t* multipliers,
                                                     int n) noexcept {
    std::uint64_t acc = static_cast<std::uint64_t>(window[0]) * multipliers[0];
    for (int k = 1; k < n; ++k) acc ^= static_cast<std::uint64_t>(window[k]) * multipliers[k];
    return static_cast<std::int64_t>(acc);
}

/// @brief Where the canonical ids of one sequence come from: raw ids, the canonical table's
///        lookup (raw -> canonical), and what makes a position dead (a raw dead token, or a 0 in
///        the token mask). Pointers are to the sequence's first token.
struct window_source {
    const token_id* raw = nullptr;
    const token_id* lookup = nullptr;
    token_id vocab_size = 0;            ///< V: raw ids are in [0, V)
    const std::uint8_t* mask = nullptr; ///< optional: 0 = dead
    token_id dead_token = -1;           ///< a raw id that is dead; -1: none
    token_id pad = 0;                   ///< the canonical pad id
};

/// Whether position `t` of the source's sequence is live (not a dead token, not masked).
ENGRAM_HOST_DEVICE constexpr bool position_live(const window_source& s, std::int64_t t) noexcept {
    return (s.mask == nullptr || s.mask[t] != 0) && s.raw[t] != s.dead_token;
}

/// @brief The window of position t: `window[k]` is the canonical id k positions back, the pad id
///        before the sequence start and at and before the latest dead position (a dead position t
///        itself gets the all-pad window). Reads only positions t-w+1..t of the sequence.
/// @return false if a raw id in the window is outside [0, V) (the window is then unusable).
ENGRAM_HOST_DEVICE constexpr bool canonical_window(const window_source& s, std::int64_t t, int w,
                                                   token_id* window) noexcept {
    bool alive = true;
    for (int k = 0; k < w; ++k) {
        const std::int64_t pos = t - k;
        alive = alive && pos >= 0 && position_live(s, pos);
        if (!alive) {
            window[k] = s.pad;
            continue;
        }
        const token_id r = s.raw[pos];
        if (r < 0 || r >= s.vocab_size) return false;
        window[k] = s.lookup[r];
    }
    return true;
}

/// @brief One decode step of a window of `w` canonical ids: a live token shifts the window and
///        enters at slot 0; a dead one (dead token, masked) leaves the all-pad window.
ENGRAM_HOST_DEVICE constexpr void push_window(token_id* window, int w, token_id canonical, bool live,
                                              token_id pad) noexcept {
    if (!live) {
        for (int k = 0; k < w; ++k) window[k] = pad;
        return;
    }
    for (int k = w - 1; k > 0; --k) window[k] = window[k - 1];
    window[0] = canonical;
}

/// @brief The hash parameters of one layer, as flat arrays (host or device memory).
struct hash_params {
    const int* orders = nullptr; ///< n of each order, ascending
    int order_count = 0;
    int heads_per_order = 0;                    ///< K
    const std::uint64_t* multipliers = nullptr; ///< m_0..m_{N-1}
    const std::uint64_t* primes = nullptr;      ///< per head
    const std::uint64_t* magic = nullptr;       ///< barrett_magic(primes[h])
    const std::int64_t* offsets = nullptr;      ///< per head (global row ids) or null (head-local ids)
};

/// @brief Row ids (or head-local indices when `offsets` is null) of every head of one window:
///        one mix per order, one Barrett reduction per head. Writes `order_count * K` values.
template <class Id>
ENGRAM_HOST_DEVICE constexpr void hash_heads(const hash_params& p, const token_id* window, Id* out) noexcept {
    for (int o = 0; o < p.order_count; ++o) {
        const std::int64_t mix = mix_window(window, p.multipliers, p.orders[o]);
        for (int j = 0; j < p.heads_per_order; ++j) {
            const int h = o * p.heads_per_order + j;
            std::int64_t r = barrett_floor_mod(mix, p.primes[h], p.magic[h]);
            if (p.offsets != nullptr) r += p.offsets[h];
            out[h] = static_cast<Id>(r);
        }
    }
}

// ---- the gather's work split ---------------------------------------------------------------------

/// @brief How the gather kernel splits rows of `chunks` loads between the lanes of a warp: the
///        smallest power of two of lanes covering a row (at most 32), so that a warp gathers
///        `32 / lanes` rows at once. Lane `lane` of warp `warp` (of `warps`) starts at row
///        `first_row` and steps `row_step`; within a row it takes chunks `first_chunk`,
///        `first_chunk + lanes`, ... Every (row, chunk) is taken by exactly one lane.
struct row_lanes {
    unsigned lanes = 32;
    ENGRAM_HOST_DEVICE constexpr explicit row_lanes(std::size_t chunks) noexcept {
        while (lanes > 1 && lanes / 2 >= chunks) lanes /= 2;
    }
    ENGRAM_HOST_DEVICE constexpr std::size_t rows_per_warp() const noexcept { return 32 / lanes; }
    ENGRAM_HOST_DEVICE constexpr std::size_t first_row(std::size_t warp, unsigned lane) const noexcept {
        return warp * rows_per_warp() + lane / lanes;
    }
    ENGRAM_HOST_DEVICE constexpr std::size_t row_step(std::size_t warps) const noexcept {
        return warps * rows_per_warp();
    }
    ENGRAM_HOST_DEVICE constexpr std::size_t first_chunk(unsigned lane) const noexcept { return lane % lanes; }
};

// ---- row decode (codecs) ------------------------------------------------------------------------

/// bfloat16 bits -> float (exact).
ENGRAM_HOST_DEVICE constexpr float bf16_value(std::uint16_t b) noexcept {
    return as_float(static_cast<std::uint32_t>(b) << 16);
}

/// float -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
ENGRAM_HOST_DEVICE constexpr std::uint16_t bf16_bits(float f) noexcept {
    const std::uint32_t u = as_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    const std::uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + rounding) >> 16);
}

/// f rounded to the nearest bfloat16, as a float.
ENGRAM_HOST_DEVICE constexpr float round_bf16(float f) noexcept { return bf16_value(bf16_bits(f)); }

/// The value of FP8 E4M3 ("fn") code `c` with a unit scale: bias 7, 3 mantissa bits,
/// subnormals 2^-6 * m/8, no infinities, S.1111.111 = NaN (keeping the sign).
ENGRAM_HOST_DEVICE constexpr float e4m3_value(unsigned c) noexcept {
    const unsigned e = (c >> 3) & 0xFu, m = c & 0x7u;
    if ((c & 0x7Fu) == 0x7Fu) return as_float(0x7FC00000u | ((c & 0x80u) << 24));
    const float v = e == 0 ? static_cast<float>(m) * 0x1.0p-9f : as_float(((e + 120u) << 23) | (m << 20));
    return (c & 0x80u) != 0 ? -v : v;
}

/// The UE8M0 scale of byte `b`: 2^(b - 127), the byte shifted into a float's exponent field;
/// 0 is 2^-127 (a float subnormal) and 255 is NaN.
ENGRAM_HOST_DEVICE constexpr float ue8m0_value(std::uint8_t b) noexcept {
    if (b == 0) return as_float(0x00400000u);
    if (b == 255) return as_float(0x7FC00000u);
    return as_float(static_cast<std::uint32_t>(b) << 23);
}

/// One value of a packed FP8 row: code times its block's scale (exact); a NaN code stays itself.
ENGRAM_HOST_DEVICE constexpr float fp8_value(std::uint8_t code, float scale) noexcept {
    const float v = e4m3_value(code);
    return v != v ? v : v * scale;
}

/// One value of DeepSeek-V4.1's two-tensor rows: `bf16(e4m3(code) * 2^(byte - 127))`. The product
/// is exact in float and a bfloat16 except in blocks with scale bytes 0, 1 and 2 (below bf16's
/// normal range), which are rounded.
ENGRAM_HOST_DEVICE constexpr float fp8_split_value(std::uint8_t code, std::uint8_t scale_byte) noexcept {
    const float v = fp8_value(code, ue8m0_value(scale_byte));
    return scale_byte < 3 ? round_bf16(v) : v;
}

/// FP8 E4M3 code of `v` (already divided by the block scale): round to nearest even,
/// saturating to +-448 (infinities too); NaN -> S.1111.111.
ENGRAM_HOST_DEVICE constexpr std::uint8_t e4m3_code(float v) noexcept {
    const std::uint32_t u = as_bits(v);
    const auto sign = static_cast<std::uint32_t>((u >> 24) & 0x80u);
    const std::uint32_t a = u & 0x7FFFFFFFu;
    std::uint32_t c = 0;
    if (a > 0x7F800000u) {
        c = 0x7Fu; // NaN
    } else if (a >= 0x43E00000u) {
        c = 0x7Eu; // >= 448 (and infinity): saturate
    } else if (a >= 0x3C800000u) {
        // Normal FP8 (|v| >= 2^-6): rebias 127 -> 7 and round 20 mantissa bits away.
        const std::uint32_t r = a - (std::uint32_t{120} << 23);
        c = (r + 0x7FFFFu + ((r >> 20) & 1u)) >> 20;
    } else {
        // Subnormal FP8: units of 2^-9. |v| * 2^9 < 8 is exact; adding 2^23 rounds it to an
        // integer (ties to even) that lands in the low mantissa bits.
        const float y = as_float(a) * 512.0f + 8388608.0f;
        c = as_bits(y) - 0x4B000000u;
    }
    return static_cast<std::uint8_t>(sign | c);
}

// ---- DeepSeek-V4.1's activation quantisation (act_quant, 32 values a block) --------------------

/// The scale of one block: 2^ceil(log2(max(amax, 1e-4) / 448)), read off the float's bits.
ENGRAM_HOST_DEVICE constexpr float act_quant_scale(float amax) noexcept {
    const std::uint32_t u = as_bits((amax > 1e-4f ? amax : 1e-4f) / 448.0f);
    const int e = static_cast<int>((u >> 23) & 0xFFu) - 127 + ((u & 0x7FFFFFu) != 0 ? 1 : 0);
    return as_float(static_cast<std::uint32_t>(e + 127) << 23);
}

/// The scale of the n values at x (the block's amax, floored at 1e-4, as std::max takes it: a
/// NaN is skipped).
ENGRAM_HOST_DEVICE constexpr float act_quant_block_scale(const float* x, std::size_t n) noexcept {
    float amax = 1e-4f;
    for (std::size_t k = 0; k < n; ++k) {
        const float v = x[k] < 0 ? -x[k] : x[k];
        amax = amax < v ? v : amax;
    }
    return act_quant_scale(amax);
}

/// One value of a block with scale s: `e4m3(clamp(x / s, -448, 448)) * s`.
ENGRAM_HOST_DEVICE constexpr float act_quant_value(float x, float scale) noexcept {
    float q = x * (1.0f / scale); // a power of two: x * (1 / s) == x / s
    q = q < -448.0f ? -448.0f : (q > 448.0f ? 448.0f : q);
    return e4m3_value(e4m3_code(q)) * scale;
}

// ---- gate and fusion (spec sections 6-7) --------------------------------------------------------

/// @brief The gate's score from its sums: `dot / (rms(k) rms(h) sqrt(H))` with
///        `rms(x) = sqrt(sum x^2 / H + eps)`, in double, rounded once to float.
ENGRAM_HOST_DEVICE double rms_scale(double sum_squares, double inv_h, float eps) noexcept {
    return 1.0 / sqrt_d(sum_squares * inv_h + static_cast<double>(eps));
}
ENGRAM_HOST_DEVICE float gate_score(double dot, double kk, double hh, double inv_h, double inv_sqrt_h,
                                    float eps) noexcept {
    return static_cast<float>(dot * rms_scale(kk, inv_h, eps) * rms_scale(hh, inv_h, eps) * inv_sqrt_h);
}

/// The demo's gate: `sigmoid(sign(s) * sqrt(max(|s|, 1e-6)))`, sign(0) = 0.
ENGRAM_HOST_DEVICE float reference_gate(float s) noexcept {
    const float a = s < 0.0f ? -s : s;
    const float magnitude = sqrt_f(a > 1e-6f ? a : 1e-6f);
    const float signed_root = s > 0.0f ? magnitude : (s < 0.0f ? -magnitude : 0.0f);
    return 1.0f / (1.0f + exp_f(-signed_root));
}
/// The paper's gate: `sigmoid(s)`.
ENGRAM_HOST_DEVICE float sigmoid_gate(float s) noexcept { return 1.0f / (1.0f + exp_f(-s)); }
/// DeepSeek-V4.1's gate: `sigmoid(copysign(sqrt(max(|s|, 1e-6)), s))`, a zero score negative.
ENGRAM_HOST_DEVICE float copysign_gate(float s) noexcept {
    const float a = s < 0.0f ? -s : s;
    const float magnitude = sqrt_f(a > 1e-6f ? a : 1e-6f);
    return 1.0f / (1.0f + exp_f(s > 0.0f ? -magnitude : magnitude));
}

/// The production fusion of one value: `h + alpha v` for a kept token, `h` itself (bit for bit,
/// -0 included) for a masked one.
ENGRAM_HOST_DEVICE constexpr float production_value(float h, float alpha, float v, bool keep) noexcept {
    return keep ? h + alpha * v : h;
}

/// The reference fusion's conv input of one channel: `float(u * r) * w` (the product with the
/// RMSNorm scale r in double).
ENGRAM_HOST_DEVICE constexpr float norm_value(float u, double r, float w) noexcept {
    return static_cast<float>(static_cast<double>(u) * r) * w;
}

/// Inputs of `fast_exp` are clamped to this range (2^n stays a normal float).
inline constexpr float fast_exp_lo = -87.0f;
inline constexpr float fast_exp_hi = 88.0f;

/// @brief e^x for float, within 2 ulp of the correctly rounded value on [-87, 88] (inputs
///        outside are clamped): x = n ln2 + r, e^r by its degree-7 Taylor polynomial, times 2^n
///        built in the exponent bits. Branch free, so the host's loops over it vectorise.
ENGRAM_HOST_DEVICE constexpr float fast_exp(float x) noexcept {
    x = x < fast_exp_lo ? fast_exp_lo : (x > fast_exp_hi ? fast_exp_hi : x);
    constexpr float log2e = 1.44269504088896341f;
    constexpr float round_magic = 12582912.0f;   // 1.5 * 2^23: adding it rounds to an integer
    constexpr float ln2_hi = 0.693145751953125f; // 16 significant bits: n * ln2_hi is exact
    constexpr float ln2_lo = 1.428606765330187045e-06f;
    const float shifted = x * log2e + round_magic;
    const float n = shifted - round_magic;
    const float r = (x - n * ln2_hi) - n * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const auto ni = static_cast<std::int32_t>(as_bits(shifted)) - static_cast<std::int32_t>(as_bits(round_magic));
    return p * as_float(static_cast<std::uint32_t>(ni + 127) << 23);
}

/// The reference fusion's output of one channel: `u + SiLU(y)`, SiLU(y) = y / (1 + e^-y).
ENGRAM_HOST_DEVICE constexpr float silu_add(float u, float y) noexcept { return u + y / (1.0f + fast_exp(-y)); }

} // namespace bodies

ENGRAM_END_NAMESPACE
