#pragma once
// SPDX-License-Identifier: MIT
// From a run-time order list (a file's config) to the compile-time orders<...> type: the one
// place where every command and loader turns `max_ngram` into code.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/ngram/orders.hpp>

#include <span>        // for span
#include <string>      // for string, to_string
#include <type_traits> // for is_same_v
#include <utility>     // for forward, integer_sequence

ENGRAM_BEGIN_NAMESPACE

/// @brief The largest N for which `dispatch_orders` has code compiled: orders 2..N for N in
///        [2, 6] (DeepSeek-V4.1 uses 2..4). Larger or non-contiguous order sets work with a
///        compile-time `orders<...>`.
inline constexpr int max_dispatched_ngram = 6;

namespace detail {

template <int... Is>
orders<(Is + 2)...> contiguous_orders(std::integer_sequence<int, Is...>);

/// orders<2, 3, ..., N>
template <int N>
using orders_up_to = decltype(contiguous_orders(std::make_integer_sequence<int, N - 1>{}));

template <int N, class R, class F>
R dispatch_up_to(int n, F&& f) {
    if constexpr (N > max_dispatched_ngram) {
        throw unsupported_error("max_ngram = " + std::to_string(n) +
                                " is not supported here (orders 2..N for N up to " +
                                std::to_string(max_dispatched_ngram) +
                                " are; compile the layer or hasher with engram::orders<...> for more)");
    } else {
        if (n == N) return std::forward<F>(f)(orders_up_to<N>{});
        return dispatch_up_to<N + 1, R>(n, std::forward<F>(f));
    }
}

} // namespace detail

/// @brief Calls `f(orders<2, ..., N>{})` for a run-time order list `2, 3, ..., N`, N up to
///        `max_dispatched_ngram`; every instantiation must return the type `f(orders<2>{})` does.
/// @throws unsupported_error, one line naming the list, for other lists (gaps such as [2, 4],
///         or N beyond the dispatched ones); a compile-time `orders<...>` runs those.
template <class F>
decltype(auto) dispatch_orders(std::span<const int> list, F&& f) {
    bool contiguous = !list.empty();
    for (std::size_t i = 0; i < list.size(); ++i) contiguous = contiguous && list[i] == static_cast<int>(i) + 2;
    if (!contiguous) {
        std::string s;
        for (int n : list) s += (s.empty() ? "" : ", ") + std::to_string(n);
        throw unsupported_error("orders [" + s + "] are not supported here: only contiguous orders 2..N (N up to " +
                                std::to_string(max_dispatched_ngram) +
                                ") are compiled for run-time configs; use engram::orders<" + s +
                                "> in a compiled layer or hasher");
    }
    using result = decltype(std::forward<F>(f)(orders<2>{}));
    return detail::dispatch_up_to<2, result>(list.back(), std::forward<F>(f));
}

static_assert(std::is_same_v<detail::orders_up_to<3>, orders<2, 3>>);
static_assert(std::is_same_v<detail::orders_up_to<6>, orders<2, 3, 4, 5, 6>>);
static_assert(
    std::is_same_v<decltype(dispatch_orders(std::span<const int>{}, [](auto o) { return o.count; })), std::size_t>);

ENGRAM_END_NAMESPACE
