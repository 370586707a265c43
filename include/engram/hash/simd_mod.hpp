#pragma once
// SPDX-License-Identifier: MIT
// Exact floor modulo of one multiply-XOR mix by 8 heads' primes at once (AVX-512 IFMA), its
// runtime CPU check, and the switch that forces the scalar path.

#include <engram/config.hpp>
#include <engram/hash/fast_mod.hpp>
#include <engram/hash/layout.hpp>
#include <engram/types.hpp>

#include <array>   // for array
#include <atomic>  // for atomic
#include <cstddef> // for size_t
#include <cstdint> // for uint64_t, int64_t
#include <cstdlib> // for getenv
#include <cstring> // for strcmp
#include <utility> // for index_sequence
#include <vector>  // for vector

/// Function-like feature test: 1 where the AVX-512 IFMA hashing kernel is compiled in (x86-64
/// with GCC or Clang; never in a CUDA compilation, nor with `ENGRAM_DISABLE_X86_SIMD` defined).
/// Whether it runs is decided at run time.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) &&                        \
    !defined(ENGRAM_DISABLE_X86_SIMD)
#define ENGRAM_HAS_X86_SIMD() 1
#include <immintrin.h> // for the AVX-512 F and IFMA intrinsics (enabled per function below)
#define ENGRAM_TARGET_IFMA __attribute__((target("avx512f,avx512ifma")))
#else
#define ENGRAM_HAS_X86_SIMD() 0
#endif

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// True if this CPU and OS run AVX-512 F + IFMA code (zmm state enabled).
inline bool cpu_has_ifma() noexcept {
#if ENGRAM_HAS_X86_SIMD()
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
#else
    return false;
#endif
}

/// The switch: initialised once from the CPU check and `ENGRAM_NO_SIMD` (any value but "" or
/// "0" disables), then changed only by `set_simd_enabled`.
inline std::atomic<bool>& simd_switch() noexcept {
    static std::atomic<bool> on{[] {
        const char* env = std::getenv("ENGRAM_NO_SIMD");
        const bool forced_off = env != nullptr && env[0] != '\0' && std::strcmp(env, "0") != 0;
        return cpu_has_ifma() && !forced_off;
    }()};
    return on;
}

} // namespace detail

/// @brief Whether this CPU can run the SIMD hashing kernel (AVX-512 F + IFMA on x86-64).
[[nodiscard]] inline bool simd_supported() noexcept {
    static const bool supported = detail::cpu_has_ifma();
    return supported;
}

/// @brief Whether hashing uses the SIMD kernel where it applies: supported, not disabled by
///        the environment variable `ENGRAM_NO_SIMD` (read once), and not switched off.
[[nodiscard]] inline bool simd_enabled() noexcept { return detail::simd_switch().load(std::memory_order_relaxed); }

/// @brief Switches the SIMD hashing kernel on or off for the whole process (e.g. to compare
///        both paths); on has no effect where the CPU lacks it. Both paths give identical ids.
/// @return whether the kernel is now enabled.
inline bool set_simd_enabled(bool on) noexcept {
    const bool now = on && simd_supported();
    detail::simd_switch().store(now, std::memory_order_relaxed);
    return now;
}

namespace detail {

/// @brief Per-layer constants of the IFMA reduction, 8 lanes per vector, `vectors_per_order`
///        vectors per order (the last one partly masked when K is not a multiple of 8).
///
/// The kernel computes `x mod p` for a mix `0 <= x < 2^63` and a prime `2 <= p < 2^21`:
/// - split `x = hi 2^32 + lo` (`hi < 2^31`, `lo < 2^32`); with `c = 2^32 mod p <= p - 1`,
///   `y = lo + hi c` is congruent to x and `y <= (2^32 - 1) + (2^31 - 1)(2^21 - 2)
///   = 2^52 - 2^21 + 1 < 2^52`; `hi c < 2^52`, so `madd52lo(lo, hi, c)` (lo + the low 52 bits
///   of hi c) is y exactly;
/// - with `m = floor(2^52 / p)`, `q = madd52hi(0, y, m) = floor(y m / 2^52)`: since
///   `2^52/p - 1 < m <= 2^52/p` and `y < 2^52`, `y/p - 1 < y m / 2^52 <= y/p`, so q is
///   `floor(y/p)` or one less;
/// - `q p <= y < 2^52`, so `madd52lo(0, q, p)` is q p exactly and `r = y - q p` is in `[0, 2p)`;
/// - `min_epu64(r, r - p)` is `r mod p`: for `r < p` the difference wraps above r.
/// A negative mix (impossible for ids in `[0, V')` with validated multipliers, but the
/// per-position API does not check ids) takes the scalar Barrett path, so every input is exact.
struct ifma_plan {
    bool usable = false;               ///< every prime in [2, 2^21) and K >= 1
    std::size_t orders = 0;            ///< number of orders
    std::size_t heads_per_order = 0;   ///< K
    std::size_t vectors_per_order = 0; ///< ceil(K / 8)
    std::uint64_t tail_mask = 0;       ///< lanes of the last vector of an order
    std::vector<std::uint64_t> c;      ///< 2^32 mod p, per lane
    std::vector<std::uint64_t> m;      ///< floor(2^52 / p)
    std::vector<std::uint64_t> p;      ///< p (1 in unused lanes)
    std::vector<std::uint64_t> off;    ///< the head's first row (0 in unused lanes)
    std::vector<fast_mod> scalar;      ///< per head, for negative mixes
    std::vector<std::uint64_t> mult;   ///< the layout's multipliers, as uint64

    ifma_plan() = default;
    explicit ifma_plan(const layer_layout& l) {
        if (l.heads_per_order < 1 || l.orders.empty() ||
            l.primes.size() != l.orders.size() * static_cast<std::size_t>(l.heads_per_order) ||
            l.offsets.size() != l.primes.size())
            return;
        orders = l.orders.size();
        heads_per_order = static_cast<std::size_t>(l.heads_per_order);
        vectors_per_order = (heads_per_order + 7) / 8;
        const std::size_t tail = heads_per_order - 8 * (vectors_per_order - 1);
        tail_mask = (std::uint64_t{1} << tail) - 1;
        const std::size_t lanes = orders * vectors_per_order * 8;
        c.assign(lanes, 0);
        m.assign(lanes, 0);
        p.assign(lanes, 1);
        off.assign(lanes, 0);
        bool ok = true;
        for (std::size_t o = 0; o < orders; ++o)
            for (std::size_t j = 0; j < heads_per_order; ++j) {
                const std::size_t h = o * heads_per_order + j;
                const std::size_t lane = o * vectors_per_order * 8 + j;
                const std::int64_t prime = l.primes[h];
                scalar.emplace_back(prime >= 1 ? static_cast<std::uint64_t>(prime) : 1);
                if (prime < 2 || prime >= (std::int64_t{1} << 21)) {
                    ok = false;
                    continue;
                }
                const auto pu = static_cast<std::uint64_t>(prime);
                c[lane] = (std::uint64_t{1} << 32) % pu;
                m[lane] = (std::uint64_t{1} << 52) / pu;
                p[lane] = pu;
                off[lane] = static_cast<std::uint64_t>(l.offsets[h]);
            }
        for (std::int64_t v : l.multipliers) mult.push_back(static_cast<std::uint64_t>(v));
        usable = ok;
    }
};

#if ENGRAM_HAS_X86_SIMD()

/// The constants of one 8-lane vector.
struct ifma_lanes {
    __m512i c, m, p, off;
};

ENGRAM_TARGET_IFMA inline ifma_lanes ifma_load(const ifma_plan& plan, std::size_t vec, bool add_offsets) {
    const std::size_t at = vec * 8;
    return {_mm512_loadu_si512(plan.c.data() + at), _mm512_loadu_si512(plan.m.data() + at),
            _mm512_loadu_si512(plan.p.data() + at),
            add_offsets ? _mm512_loadu_si512(plan.off.data() + at) : _mm512_setzero_si512()};
}

/// `(x mod p) + off` in 8 lanes for `0 <= x < 2^63` (see ifma_plan for the bounds).
__attribute__((always_inline)) ENGRAM_TARGET_IFMA inline __m512i ifma_reduce(__m512i lo, __m512i hi,
                                                                             const ifma_lanes& k) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512i y = _mm512_madd52lo_epu64(lo, hi, k.c);
    const __m512i q = _mm512_madd52hi_epu64(zero, y, k.m);
    const __m512i r = _mm512_sub_epi64(y, _mm512_madd52lo_epu64(zero, q, k.p));
    // The all-lanes mask form: GCC 12's plain _mm512_min_epu64 trips -Wmaybe-uninitialized.
    return _mm512_add_epi64(_mm512_mask_min_epu64(r, static_cast<__mmask8>(0xff), r, _mm512_sub_epi64(r, k.p)), k.off);
}

/// One order's K heads of a mix into `dst` (K values), any K.
__attribute__((always_inline)) ENGRAM_TARGET_IFMA inline void
ifma_order_any(const ifma_plan& plan, std::size_t order, std::int64_t x, std::int64_t* dst, bool add_offsets) {
    const std::size_t k = plan.heads_per_order;
    if (ENGRAM_UNLIKELY(x < 0)) {
        for (std::size_t j = 0; j < k; ++j)
            dst[j] = plan.scalar[order * k + j].floor_mod(x) +
                     (add_offsets ? static_cast<std::int64_t>(plan.off[order * plan.vectors_per_order * 8 + j]) : 0);
        return;
    }
    const __m512i lo = _mm512_set1_epi64(x & 0xffffffff);
    const __m512i hi = _mm512_set1_epi64(x >> 32);
    const std::size_t nv = plan.vectors_per_order;
    for (std::size_t v = 0; v + 1 < nv; ++v)
        _mm512_storeu_si512(dst + 8 * v, ifma_reduce(lo, hi, ifma_load(plan, order * nv + v, add_offsets)));
    _mm512_mask_storeu_epi64(dst + 8 * (nv - 1), static_cast<__mmask8>(plan.tail_mask),
                             ifma_reduce(lo, hi, ifma_load(plan, order * nv + nv - 1, add_offsets)));
}

/// @brief The batch kernel over one sequence (or a slice of one: the window carries over).
/// @tparam Orders the hasher's order set
/// @tparam VPO vectors per order, 1 or 2 (constants kept in registers) or 0 (any K, loaded per use)
/// @tparam Full K is a multiple of 8 (plain stores, no mask); only with VPO > 0
template <class Orders, int VPO, bool Full>
struct ifma_kernel {
    static constexpr std::size_t W = static_cast<std::size_t>(Orders::max);
    static constexpr std::size_t NO = Orders::count;
    static constexpr std::size_t NV = VPO > 0 ? static_cast<std::size_t>(VPO) : 1;
    using lane_array = std::array<std::array<ifma_lanes, NV>, NO>;

    /// Order O of one window: extend the running mix by the order's new products, then reduce.
    template <std::size_t O>
    __attribute__((always_inline)) ENGRAM_TARGET_IFMA static inline void
    order(const ifma_plan& plan, std::size_t k_heads, const token_id* w, const std::uint64_t* mult, std::uint64_t& acc,
          const lane_array& lanes, __mmask8 tail, std::int64_t* out, bool add_offsets) {
        constexpr auto from = static_cast<std::size_t>(O == 0 ? 0 : Orders::values[O == 0 ? 0 : O - 1]);
        constexpr auto to = static_cast<std::size_t>(Orders::values[O]);
        for (std::size_t k = from; k < to; ++k) acc ^= static_cast<std::uint64_t>(w[k]) * mult[k];
        const auto x = static_cast<std::int64_t>(acc);
        std::int64_t* dst = out + O * k_heads;
        if constexpr (VPO > 0) {
            if (ENGRAM_LIKELY(x >= 0)) {
                const __m512i lo = _mm512_set1_epi64(x & 0xffffffff);
                const __m512i hi = _mm512_set1_epi64(x >> 32);
                if constexpr (NV == 2) _mm512_storeu_si512(dst, ifma_reduce(lo, hi, lanes[O][0]));
                const __m512i last = ifma_reduce(lo, hi, lanes[O][NV - 1]);
                if constexpr (Full)
                    _mm512_storeu_si512(dst + 8 * (NV - 1), last);
                else
                    _mm512_mask_storeu_epi64(dst + 8 * (NV - 1), tail, last);
                return;
            }
        }
        ifma_order_any(plan, O, x, dst, add_offsets);
    }

    template <std::size_t... O>
    __attribute__((always_inline)) ENGRAM_TARGET_IFMA static inline void
    orders(const ifma_plan& plan, std::size_t k_heads, const token_id* w, const std::uint64_t* mult,
           const lane_array& lanes, __mmask8 tail, std::int64_t* out, bool add_offsets, std::index_sequence<O...>) {
        std::uint64_t acc = 0;
        (order<O>(plan, k_heads, w, mult, acc, lanes, tail, out, add_offsets), ...);
    }

    /// @tparam Dead whether a raw id equal to `dead` resets the window (reads `raw`)
    /// @tparam Lookup whether the ids are `ids[raw[t]]` (raw ids through a canonical table,
    ///         validated by the caller) rather than `ids[t]`
    /// @param window in/out: the last `Orders::max` canonical ids, newest first
    template <bool Dead, bool Lookup>
    ENGRAM_TARGET_IFMA static void run(const ifma_plan& plan, const token_id* ids, const token_id* raw, token_id dead,
                                       token_id pad, std::size_t n, token_id* window, std::int64_t* out,
                                       bool add_offsets) {
        // Locals, not plan fields: the output stores could alias them and force reloads.
        const std::size_t k_heads = Full ? 8 * NV : plan.heads_per_order;
        const std::size_t heads = NO * k_heads;
        std::array<std::uint64_t, W> mult{};
        std::array<token_id, W> w{};
        for (std::size_t k = 0; k < W; ++k) mult[k] = plan.mult[k], w[k] = window[k];
        lane_array lanes{};
        if constexpr (VPO > 0)
            for (std::size_t o = 0; o < NO; ++o)
                for (std::size_t v = 0; v < NV; ++v) lanes[o][v] = ifma_load(plan, o * NV + v, add_offsets);
        const auto tail = static_cast<__mmask8>(plan.tail_mask);
        // With Lookup, each block's canonical ids are gathered first (8 loads per instruction,
        // all independent), so the lookups overlap instead of stalling the hashing loop.
        constexpr std::size_t block = 256;
        alignas(64) token_id mapped[Lookup ? block : 1];
        for (std::size_t t0 = 0; t0 < n; t0 += block) {
            const std::size_t len = n - t0 < block ? n - t0 : block;
            const token_id* src = ids + t0;
            if constexpr (Lookup) {
                std::size_t i = 0;
                for (; i + 8 <= len; i += 8)
                    _mm512_store_si512(mapped + i,
                                       _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), static_cast<__mmask8>(0xff),
                                                                   _mm512_loadu_si512(raw + t0 + i), ids, 8));
                for (; i < len; ++i) mapped[i] = ids[static_cast<std::size_t>(raw[t0 + i])];
                src = mapped;
            }
            for (std::size_t t = 0; t < len; ++t, out += heads) {
                bool reset = false;
                if constexpr (Dead) reset = raw[t0 + t] == dead;
                if (reset) {
                    w.fill(pad); // this window is all pad, and so is the past
                } else {
                    for (std::size_t k = W - 1; k > 0; --k) w[k] = w[k - 1];
                    w[0] = src[t];
                }
                orders(plan, k_heads, w.data(), mult.data(), lanes, tail, out, add_offsets,
                       std::make_index_sequence<NO>{});
            }
        }
        for (std::size_t k = 0; k < W; ++k) window[k] = w[k];
    }
};

/// The kernel for `plan`'s K: constants in registers for K <= 16, plain stores for K = 8, 16.
template <class Orders, bool Dead, bool Lookup>
inline auto ifma_sequence_for(const ifma_plan& plan) noexcept {
    const bool full = plan.heads_per_order % 8 == 0;
    switch (plan.vectors_per_order) {
    case 1:
        return full ? &ifma_kernel<Orders, 1, true>::template run<Dead, Lookup>
                    : &ifma_kernel<Orders, 1, false>::template run<Dead, Lookup>;
    case 2:
        return full ? &ifma_kernel<Orders, 2, true>::template run<Dead, Lookup>
                    : &ifma_kernel<Orders, 2, false>::template run<Dead, Lookup>;
    default:
        return &ifma_kernel<Orders, 0, false>::template run<Dead, Lookup>;
    }
}

/// Whether every id is in `[0, limit)` (8 per compare).
ENGRAM_TARGET_IFMA inline bool ifma_ids_below(const token_id* ids, std::size_t n, std::uint64_t limit) {
    const __m512i bound = _mm512_set1_epi64(static_cast<long long>(limit));
    __mmask8 bad = 0;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) bad |= _mm512_cmpge_epu64_mask(_mm512_loadu_si512(ids + i), bound);
    for (; i < n; ++i) bad |= static_cast<std::uint64_t>(ids[i]) >= limit;
    return bad == 0;
}

/// One position: `window[k]` is the id k back; `out` gets every head.
template <class Orders>
ENGRAM_TARGET_IFMA void ifma_window(const ifma_plan& plan, const token_id* window, std::int64_t* out,
                                    bool add_offsets) {
    std::uint64_t acc = 0;
    std::size_t k = 0;
    for (std::size_t o = 0; o < Orders::count; ++o) {
        for (; k < static_cast<std::size_t>(Orders::values[o]); ++k)
            acc ^= static_cast<std::uint64_t>(window[k]) * plan.mult[k];
        ifma_order_any(plan, o, static_cast<std::int64_t>(acc), out + o * plan.heads_per_order, add_offsets);
    }
}

#endif // ENGRAM_HAS_X86_SIMD()

} // namespace detail

ENGRAM_END_NAMESPACE
