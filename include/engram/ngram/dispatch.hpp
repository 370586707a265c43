#pragma once
// SPDX-License-Identifier: MIT
// From a run-time order list (a file's config) to the compile-time orders<...> type.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/ngram/orders.hpp>

#include <span>    // for span
#include <string>  // for string, to_string
#include <type_traits> // for is_same_v
#include <utility>     // for forward, integer_sequence

ENGRAM_BEGIN_NAMESPACE

namespace detail {

template <int... Is>
orders<(Is + 2)...> contiguous_orders(std::integer_sequence<int, Is...>);

/// orders<2, 3, ..., N>
template <int N>
using orders_up_to = decltype(contiguous_orders(std::make_integer_sequence<int, N - 1>{}));

template <int N, int Max, class R, class F>
R dispatch_up_to(int n, F&& f) {
    if constexpr (N > Max) {
        throw unsupported_error("max_ngram = " + std::to_string(n) + " is not compiled in (supported: 2.." +
                                std::to_string(Max) + ")");
    } else {
        if (n == N) return std::forward<F>(f)(orders_up_to<N>{});
        return dispatch_up_to<N + 1, Max, R>(n, std::forward<F>(f));
    }
}

} // namespace detail

/// @brief Calls `f(orders<2, ..., N>{})` for a run-time order list `2, 3, ..., N` (N <= 8).
/// @throws unsupported_error for other lists (gaps, or N beyond 8); use a compile-time
///         `orders<...>` directly for those.
template <class F>
decltype(auto) dispatch_orders(std::span<const int> list, F&& f) {
    constexpr int max_dispatch = 8;
    bool contiguous = !list.empty();
    for (std::size_t i = 0; i < list.size(); ++i) contiguous = contiguous && list[i] == static_cast<int>(i) + 2;
    if (!contiguous) {
        std::string s;
        for (int n : list) s += (s.empty() ? "" : ",") + std::to_string(n);
        throw unsupported_error("orders [" + s + "] are not 2..N; instantiate ngram_hasher with orders<...> directly");
    }
    // Every instantiation returns what f returns for orders<2>.
    using result = decltype(std::forward<F>(f)(orders<2>{}));
    return detail::dispatch_up_to<2, max_dispatch, result>(list.back(), std::forward<F>(f));
}

static_assert(std::is_same_v<detail::orders_up_to<3>, orders<2, 3>>);
static_assert(std::is_same_v<decltype(dispatch_orders(std::span<const int>{}, [](auto o) { return o.count; })), std::size_t>);

ENGRAM_END_NAMESPACE
