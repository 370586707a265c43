#pragma once
// SPDX-License-Identifier: MIT
// NumPy-compatible seeding: SeedSequence, PCG64 and Generator.integers (spec section 2, appendix).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/types.hpp>

#include <array>   // for array
#include <cstddef> // for size_t
#include <cstdint> // for uint32_t, uint64_t
#include <span>    // for span
#include <string>  // for to_string
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

namespace numpy {

using uint128 = detail::uint128;

/// @brief `numpy.random.SeedSequence(entropy).generate_state(n_words, uint64)`.
/// @param entropy the seed as 32-bit little-endian words (at least one word; `[0]` for seed 0).
inline std::vector<std::uint64_t> seed_sequence_state(std::span<const std::uint32_t> entropy, std::size_t n_words) {
    constexpr std::uint32_t init_a = 0x43b0d7e5u, mult_a = 0x931e8875u;
    constexpr std::uint32_t init_b = 0x8b51f9ddu, mult_b = 0x58f38dedu;
    constexpr std::uint32_t mix_mult_l = 0xca01f9ddu, mix_mult_r = 0x4973f715u;
    constexpr int xshift = 16;
    constexpr std::size_t pool_size = 4;

    std::uint32_t hash_const = init_a;
    auto hashmix = [&hash_const](std::uint32_t value) {
        value ^= hash_const;
        hash_const *= mult_a;
        value *= hash_const;
        value ^= value >> xshift;
        return value;
    };
    auto mix = [](std::uint32_t x, std::uint32_t y) {
        std::uint32_t r = mix_mult_l * x - mix_mult_r * y;
        r ^= r >> xshift;
        return r;
    };

    std::array<std::uint32_t, pool_size> pool{};
    for (std::size_t i = 0; i < pool_size; ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u);
    for (std::size_t i = 0; i < pool_size; ++i)
        for (std::size_t j = 0; j < pool_size; ++j)
            if (i != j) pool[j] = mix(pool[j], hashmix(pool[i]));
    for (std::size_t i = pool_size; i < entropy.size(); ++i)
        for (std::size_t j = 0; j < pool_size; ++j) pool[j] = mix(pool[j], hashmix(entropy[i]));

    std::uint32_t hb = init_b;
    std::vector<std::uint64_t> out(n_words);
    for (std::size_t i = 0; i < 2 * n_words; ++i) {
        std::uint32_t v = pool[i % pool_size];
        v ^= hb;
        hb *= mult_b;
        v *= hb;
        v ^= v >> xshift;
        out[i / 2] |= static_cast<std::uint64_t>(v) << (32 * (i % 2));
    }
    return out;
}

/// @brief The same, for a non-negative integer seed of up to 128 bits.
inline std::vector<std::uint64_t> seed_sequence_state(uint128 seed, std::size_t n_words) {
    std::vector<std::uint32_t> words;
    do {
        words.push_back(static_cast<std::uint32_t>(seed));
        seed >>= 32;
    } while (seed != 0);
    return seed_sequence_state(words, n_words);
}

/// @brief NumPy's PCG64 bit generator (XSL-RR 128/64), including its buffered 32-bit draws.
class pcg64 {
public:
    static constexpr uint128 multiplier = (static_cast<uint128>(0x2360ED051FC65DA4ull) << 64) | 0x4385DF649FCCF645ull;

    /// Seeds like `numpy.random.PCG64(seed)`: from `SeedSequence(seed).generate_state(4, uint64)`.
    explicit pcg64(uint128 seed) : pcg64(seed_sequence_state(seed, 4)) {}

    /// Seeds from four words `w`: initstate = w0:w1, initseq = w2:w3.
    explicit pcg64(std::span<const std::uint64_t> words) {
        if (words.size() != 4) throw config_error("pcg64: expected 4 seed words, got " + std::to_string(words.size()));
        const uint128 initstate = (static_cast<uint128>(words[0]) << 64) | words[1];
        const uint128 initseq = (static_cast<uint128>(words[2]) << 64) | words[3];
        inc_ = (initseq << 1) | 1u;
        state_ = 0;
        step();
        state_ += initstate;
        step();
    }

    /// One raw 64-bit output (`bit_generator.random_raw()`); never touches the 32-bit buffer.
    std::uint64_t next64() noexcept {
        step();
        const auto hi = static_cast<std::uint64_t>(state_ >> 64);
        const auto lo = static_cast<std::uint64_t>(state_);
        const auto rot = static_cast<unsigned>(state_ >> 122);
        const std::uint64_t x = hi ^ lo;
        return (x >> rot) | (x << ((64u - rot) & 63u));
    }

    /// One 32-bit output: the buffered high half of the previous draw, else the low half of a new one.
    std::uint32_t next32() noexcept {
        if (has_buffered_) {
            has_buffered_ = false;
            return buffered_;
        }
        const std::uint64_t x = next64();
        has_buffered_ = true;
        buffered_ = static_cast<std::uint32_t>(x >> 32);
        return static_cast<std::uint32_t>(x);
    }

private:
    void step() noexcept { state_ = state_ * multiplier + inc_; }

    uint128 state_ = 0;
    uint128 inc_ = 0;
    bool has_buffered_ = false;
    std::uint32_t buffered_ = 0;
};

/// @brief `Generator.integers(0, high, dtype=int64)` for one value, drawing from `gen` exactly
///        as NumPy does (Lemire's method; the 32-bit buffered variant when high - 1 < 2^32).
/// @pre high >= 1.
inline std::int64_t integers(pcg64& gen, std::int64_t high) {
    if (high < 1) throw config_error("integers: high = " + std::to_string(high) + " must be >= 1");
    const auto rng = static_cast<std::uint64_t>(high - 1);
    if (rng == 0) return 0;
    if (rng <= 0xFFFFFFFFull) {
        const std::uint64_t excl = rng + 1;
        std::uint64_t m = static_cast<std::uint64_t>(gen.next32()) * excl;
        auto leftover = static_cast<std::uint32_t>(m);
        if (leftover < excl) {
            const auto threshold = static_cast<std::uint32_t>((0xFFFFFFFFull - rng) % excl);
            while (leftover < threshold) {
                m = static_cast<std::uint64_t>(gen.next32()) * excl;
                leftover = static_cast<std::uint32_t>(m);
            }
        }
        return static_cast<std::int64_t>(m >> 32);
    }
    const std::uint64_t excl = rng + 1;
    uint128 m = static_cast<uint128>(gen.next64()) * excl;
    auto leftover = static_cast<std::uint64_t>(m);
    if (leftover < excl) {
        const std::uint64_t threshold = (~std::uint64_t{0} - rng) % excl;
        while (leftover < threshold) {
            m = static_cast<uint128>(gen.next64()) * excl;
            leftover = static_cast<std::uint64_t>(m);
        }
    }
    return static_cast<std::int64_t>(m >> 64);
}

/// @brief `default_rng(seed).integers(0, high, size=count, dtype=int64)`.
inline std::vector<std::int64_t> integers(uint128 seed, std::int64_t high, std::size_t count) {
    pcg64 gen(seed);
    std::vector<std::int64_t> out(count);
    for (auto& v : out) v = integers(gen, high);
    return out;
}

} // namespace numpy

ENGRAM_END_NAMESPACE
