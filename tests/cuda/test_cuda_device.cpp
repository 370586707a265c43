// SPDX-License-Identifier: MIT
// The CUDA backend on a device against the host backend: hash ids equal, rows bit for bit,
// outputs within 1e-5 (f32) or one bf16 step (V4.1), for every placement, the prefetch path and
// decode steps. Without a usable device every case prints why it skips and passes.
#include "cuda/device_runs.hpp"
#include "support/catch.hpp"
#include "support/cuda_cases.hpp"

#include <cstring>
#include <iostream>

using engram::row_id;
using engram::token_id;
namespace ct = engram_cuda_test;

namespace {

bool skip(const char* what) {
    static const std::string reason = ct::unavailable();
    if (reason.empty()) {
        static const bool once = [] {
            std::cout << "cuda.device: running on " << ct::device_name() << "\n";
            return true;
        }();
        (void)once;
        return false;
    }
    std::cout << "skipped: " << what << ": " << reason << "\n";
    return true;
}

std::vector<engram_test::cuda_case> all_cases() {
    return {engram_test::make_case<engram_test::demo_policies>("demo f32 rows", false, token_id{77}),
            engram_test::make_case<engram_test::fp8_demo_policies>("demo fp8 rows", false, std::nullopt),
            engram_test::make_case<engram_test::production_policies>("production bf16 rows", true, std::nullopt),
            engram_test::v41_case()};
}

ct::family family_of(const engram_test::cuda_case& c) {
    if (c.name == "v41") return ct::family::v41;
    return c.name.rfind("production", 0) == 0 ? ct::family::production : ct::family::demo;
}

} // namespace

TEST_CASE("device hash: every layer in one launch, int32 and int64 ids, equal to the host's", "[cuda][hash]") {
    if (skip("device hash")) return;
    auto cfg = engram_test::small_config().hash;
    cfg.layer_ids = {1, 15, 30};
    const auto vocab = engram_test::small_vocab();
    const auto layouts = engram::make_layouts(cfg, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id));
    const std::size_t batch = 3, seq = 33, n = batch * seq;
    auto raw = engram_test::token_ids(n, 21);
    raw[7] = 77;
    std::vector<std::uint8_t> mask(n, 1);
    mask[10] = mask[50] = 0;
    for (int variant = 0; variant < 3; ++variant) {
        const auto want = engram_test::host_rows(layouts, vocab, raw, batch, seq, mask, variant);
        const std::vector<std::uint8_t> m = variant == 2 ? mask : std::vector<std::uint8_t>{};
        const std::optional<token_id> dead = variant == 1 ? std::optional<token_id>(77) : std::nullopt;
        const std::vector<token_id> lookup(vocab.lookup().begin(), vocab.lookup().end());
        for (bool i32 : {false, true}) {
            INFO("variant " << variant << ", int32 " << i32);
            CHECK(ct::hash_layers(layouts, lookup, dead, raw, batch, seq, m, i32) == want);
        }
    }
}

TEST_CASE("device gather: f32, bf16, fp8 and V4.1 rows from every placement, into f32 and bf16", "[cuda][gather]") {
    if (skip("device gather")) return;
    for (const auto& c : all_cases()) {
        std::vector<std::int64_t> ids(c.rows.begin(), c.rows.end());
        for (int placement : {0, 1, 2})
            for (bool bf16_out : {false, true}) {
                INFO(c.name << ", placement " << placement << ", bf16 out " << bf16_out);
                const auto got = ct::gather(c.table, placement, ids, bf16_out);
                REQUIRE(got.size() == c.memory.size());
                std::size_t bad = 0;
                for (std::size_t i = 0; i < got.size(); ++i) {
                    const float want = bf16_out ? engram::bfloat16::from_float(c.memory[i]).to_float() : c.memory[i];
                    if (std::memcmp(&got[i], &want, 4) != 0) ++bad;
                }
                CHECK(bad == 0);
            }
    }
}

TEST_CASE("device layer: forward, prefetched forward and decode steps against the host layer", "[cuda][layer]") {
    if (skip("device layer")) return;
    for (const auto& c : all_cases()) {
        ct::layer_run run;
        run.kind = family_of(c);
        {
            INFO(c.name << ": row ids");
            CHECK(ct::layer_rows(run, c.params, c.table, c.raw, c.batch, c.seq_len, c.mask) == c.rows);
        }
        for (auto how : {ct::mode::forward, ct::mode::prefetch, ct::mode::decode})
            for (int placement : {0, 1, 2}) {
                run.how = how;
                run.placement = placement;
                std::string why;
                const auto got = ct::run_layer(run, c.params, c.table, c.raw, c.batch, c.seq_len, c.hidden, c.mask);
                INFO(c.name << ", mode " << static_cast<int>(how) << ", placement " << placement << ": " << why);
                CHECK(engram_test::outputs_match(c, got, 1e-5, why));
                if (!why.empty()) std::cout << why << "\n";
            }
    }
}

TEST_CASE("device layer: bf16 projections stay close, bad ids fail before anything runs", "[cuda][layer]") {
    if (skip("device layer (bf16, errors)")) return;
    const auto c = engram_test::make_case<engram_test::demo_policies>("demo f32 rows", false, std::nullopt);
    ct::layer_run run;
    run.bf16_projection = true;
    std::string why;
    const auto got = ct::run_layer(run, c.params, c.table, c.raw, c.batch, c.seq_len, c.hidden, c.mask);
    CHECK(engram_test::outputs_match(c, got, 2e-2, why)); // bf16 weights and memory vectors
    INFO(why);
    const std::string msg = ct::bad_token_message(c.params, c.table);
    CHECK(msg.find("token id 500 at position 1") != std::string::npos);
}
