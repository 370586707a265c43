#pragma once
// SPDX-License-Identifier: MIT
// The compile-time set of n-gram orders a layer hashes (orders<2, 3>, orders<2, 3, 4>, ...).

#include <engram/config.hpp>

#include <array>    // for array
#include <concepts> // for same_as
#include <cstddef>  // for size_t

ENGRAM_BEGIN_NAMESPACE

/// @brief A strictly increasing list of n-gram orders, each >= 2 (Engram uses no unigrams).
template <int... Ns>
struct orders {
    static_assert(sizeof...(Ns) >= 1, "orders<...> needs at least one order");
    static constexpr std::size_t count = sizeof...(Ns);
    static constexpr std::array<int, count> values{Ns...};
    static constexpr int max = values[count - 1];

private:
    static constexpr bool valid() {
        for (std::size_t i = 0; i < count; ++i) {
            if (values[i] < 2) return false;
            if (i > 0 && values[i] <= values[i - 1]) return false;
        }
        return true;
    }
    static_assert(valid(), "orders<...> must be strictly increasing and each >= 2");
};

/// @brief A type that lists n-gram orders the way `orders<...>` does.
template <class O>
concept order_set = requires {
    { O::count } -> std::convertible_to<std::size_t>;
    { O::max } -> std::convertible_to<int>;
    O::values[0];
};

static_assert(order_set<orders<2, 3>>);

ENGRAM_END_NAMESPACE
