// SPDX-License-Identifier: MIT
// From a run-time order list to compiled code: dispatch_orders (ngram/dispatch.hpp) and
// dispatch_layer (layer/dispatch.hpp), the one place every command and loader uses.

#include "support/catch.hpp"
#include "support/thrown.hpp"

#include <engram/layer.hpp>
#include <engram/prefetch.hpp>

#include <string>
#include <type_traits>
#include <vector>

namespace {

using engram_test::contains;
using engram_test::thrown_message;

struct paper_gate_policies : engram::layer_policies {
    using gate_type = engram::sigmoid_gate;
};

} // namespace

TEST_CASE("dispatch_orders gives orders<2..N> for every dispatched N", "[dispatch]") {
    for (int n = 2; n <= engram::max_dispatched_ngram; ++n) {
        std::vector<int> list;
        for (int k = 2; k <= n; ++k) list.push_back(k);
        const auto got = engram::dispatch_orders(list, []<class O>(O) {
            std::vector<int> out;
            for (int k = 0; k < static_cast<int>(O::count); ++k) out.push_back(O::values[static_cast<std::size_t>(k)]);
            return out;
        });
        CHECK(got == list);
    }
}

TEST_CASE("dispatch_orders refuses other lists in one line", "[dispatch]") {
    const auto message = [](std::vector<int> list) {
        return thrown_message<engram::unsupported_error>(
            [&] { engram::dispatch_orders(list, []<class O>(O) { return 0; }); });
    };
    CHECK(contains(message({2, 4}), "orders [2, 4] are not supported here"));
    CHECK(contains(message({3, 4}), "orders [3, 4]"));
    CHECK(contains(message({}), "orders []"));
    CHECK(contains(message({2, 3, 4, 5, 6, 7}), "max_ngram = 7 is not supported here"));
    CHECK(message({2, 4}).find('\n') == std::string::npos);
}

TEST_CASE("dispatch_layer builds the layer type of a config, other policies kept", "[dispatch][layer]") {
    for (int n = 2; n <= engram::max_dispatched_ngram; ++n) {
        INFO("N = " << n);
        engram::layer_config cfg;
        cfg.hash.max_ngram = n;
        cfg.hash.table_size_per_ngram.assign(static_cast<std::size_t>(n - 1), 50);
        cfg.hash.heads_per_ngram = 2;
        cfg.hash.embed_per_ngram = 8;
        cfg.hidden = 8;
        cfg.branches = 1;
        engram::dispatch_layer<paper_gate_policies>(cfg.hash, [&]<class L>(std::type_identity<L>) {
            static_assert(std::is_same_v<typename L::gate_type, engram::sigmoid_gate>);
            static_assert(static_cast<std::size_t>(L::orders_type::max) == L::orders_type::count + 1); // 2..N
            CHECK(static_cast<int>(L::orders_type::max) == n);
            L layer(cfg, engram::canonical_table::identity(100));
            CHECK(layer.num_heads() == static_cast<std::size_t>(2 * (n - 1)));
            // The whole sequence and token by token agree for the dispatched type.
            layer.randomize(7);
            const std::vector<engram::token_id> ids = {5, 9, 5, 9, 5, 1, 2};
            std::vector<float> hidden(ids.size() * 8), out(hidden.size()), step(hidden.size());
            for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.01f * static_cast<float>(i % 13) - 0.05f;
            layer.forward(ids, 1, ids.size(), hidden, out);
            auto state = layer.new_decode_state();
            for (std::size_t t = 0; t < ids.size(); ++t)
                layer.decode_step(state, ids[t], std::span<const float>(hidden).subspan(t * 8, 8),
                                  std::span<float>(step).subspan(t * 8, 8));
            for (std::size_t i = 0; i < out.size(); ++i) CHECK(step[i] == Approx(out[i]).margin(1e-6));

            // Prefetch: a whole-sequence plan, then decode plans step by step, as a server runs them.
            engram::io_pool pool(2);
            engram::prefetcher pf(layer.table(), pool);
            const auto plan = engram::make_plan(layer, ids, 1, ids.size());
            auto ticket = pf.prefetch(plan);
            std::vector<float> fetched(out.size());
            engram::forward(layer, ticket, plan, hidden, fetched);
            CHECK(fetched == out);
            std::vector<typename L::decode_state> states{layer.new_decode_state()};
            for (std::size_t t = 0; t < ids.size(); ++t) {
                const engram::token_id next = ids[t];
                const auto step_plan =
                    engram::make_decode_plan(layer, std::span<const typename L::decode_state>(states),
                                             std::span<const engram::token_id>(&next, 1));
                auto step_ticket = pf.prefetch(step_plan);
                engram::decode_forward(layer, step_ticket, step_plan, std::span<typename L::decode_state>(states),
                                       std::span<const engram::token_id>(&next, 1),
                                       std::span<const float>(hidden).subspan(t * 8, 8),
                                       std::span<float>(fetched).subspan(t * 8, 8));
            }
            CHECK(fetched == step);
        });
    }
}
