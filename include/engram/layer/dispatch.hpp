#pragma once
// SPDX-License-Identifier: MIT
// A layer type for a run-time configuration: the orders of a file's config chosen from the
// compiled ones (ngram/dispatch.hpp), every other policy as given.

#include <engram/config.hpp>
#include <engram/hash/layout.hpp>
#include <engram/layer/layer.hpp>
#include <engram/ngram/dispatch.hpp>
#include <engram/ngram/orders.hpp>

#include <type_traits> // for type_identity
#include <utility>     // for forward
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief `Policies` with its n-gram orders replaced by `Orders`.
template <class Policies, order_set Orders>
struct with_orders : Policies {
    using orders_type = Orders;
};

/// @brief Calls `f(std::type_identity<layer<with_orders<Policies, orders<2, ..., N>>>>{})` for
///        the orders of `cfg` (N up to max_dispatched_ngram), so that code written once for a
///        layer type runs a layer of any order read from a file:
///        `dispatch_layer(cfg.hash, [&]<class L>(std::type_identity<L>) { auto l = load_layer<typename
///        L::policies_type>(file); ... })`.
/// @throws unsupported_error (one line) for orders that are not 2..N or N too large
template <class Policies = layer_policies, class F>
decltype(auto) dispatch_layer(const hash_config& cfg, F&& f) {
    const std::vector<int> list = cfg.order_list();
    return dispatch_orders(list, [&]<class Orders>(Orders) -> decltype(auto) {
        return std::forward<F>(f)(std::type_identity<layer<with_orders<Policies, Orders>>>{});
    });
}

ENGRAM_END_NAMESPACE
