#pragma once
// SPDX-License-Identifier: MIT
// An xxHash family: XXH3-64 of the window's little-endian bytes with a seed per head.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/detail/xxhash.hpp>
#include <engram/hash/fast_mod.hpp>
#include <engram/hash/layout.hpp>
#include <engram/types.hpp>

#include <bit>     // for endian
#include <cstddef> // for size_t
#include <cstdint> // for uint64_t
#include <span>    // for span
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief Hashes the n-gram window with XXH3-64 under an independent seed per head, then maps
///        it into the head's table by modulo.
///
/// Not compatible with reference checkpoints (their rows were trained with the multiply-XOR
/// family); for models trained with engram itself, where hash quality matters more. Seeds are
/// derived from the configuration's seed, the layer id and the head index (SplitMix64), so a
/// table is reproducible from its configuration.
class xxh3_family {
public:
    /// The window prefix of one order; every head hashes it with its own seed.
    using mix_type = std::span<const token_id>;

    static_assert(std::endian::native == std::endian::little, "xxh3_family hashes little-endian token bytes");

    explicit xxh3_family(const layer_layout& layout) : moduli_(layout.primes.begin(), layout.primes.end()) {
        seeds_.reserve(moduli_.size());
        std::uint64_t state = static_cast<std::uint64_t>(layout.seed) ^
                              (static_cast<std::uint64_t>(layout.layer_id) * 0x9E3779B97F4A7C15ull);
        for (std::size_t h = 0; h < moduli_.size(); ++h) seeds_.push_back(splitmix64(state));
    }

    template <int N>
    [[nodiscard]] mix_type mix(const token_id* window) const noexcept {
        return {window, static_cast<std::size_t>(N)};
    }

    [[nodiscard]] std::int64_t reduce(mix_type window, std::size_t head) const noexcept {
        const std::uint64_t h = XXH3_64bits_withSeed(window.data(), window.size_bytes(), seeds_[head]);
        return static_cast<std::int64_t>(moduli_[head](h));
    }

private:
    static std::uint64_t splitmix64(std::uint64_t& state) noexcept {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }

    std::vector<fast_mod> moduli_;
    std::vector<std::uint64_t> seeds_;
};

static_assert(hash_family<xxh3_family>);

ENGRAM_END_NAMESPACE
