// SPDX-License-Identifier: MIT
// Small layers of the three families the CUDA backend runs (demo, production, DeepSeek-V4.1),
// with inputs and the host layer's output: shared by the CPU run of the kernels' bodies
// (unit.cuda_bodies) and the device tests (cuda.device).
#pragma once

#include "random_inputs.hpp"

#include <engram/io/safetensors.hpp>
#include <engram/io/vocab_io.hpp>
#include <engram/layer.hpp>
#include <engram/layer/bf16_io.hpp>
#include <engram/model/deepseek_v41.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace engram_test {

/// Demo with f32 rows, the production fusion with bf16 rows, and the demo with packed FP8 rows.
struct demo_policies : engram::layer_policies {};
struct production_policies : engram::layer_policies {
    using row_type = engram::bfloat16;
    using fusion_type = engram::production_fusion;
};
struct fp8_demo_policies : engram::layer_policies {
    using row_type = engram::fp8_e4m3_codec;
};

/// A case: a host layer's parameters and rows, a batch, and the host forward's output.
struct cuda_case {
    std::string name;
    engram::layer_parameters params;
    engram::table_view table;
    std::vector<engram::token_id> raw;
    std::vector<std::uint8_t> mask;
    std::vector<float> hidden, expected;
    std::vector<engram::row_id> rows;
    std::vector<float> memory; ///< the host gather's memory vectors [B*T, D]
    std::size_t batch = 0, seq_len = 0;
    bool bf16_output = false; ///< V4.1: compare to one bf16 step
    std::shared_ptr<void> keep_alive;
};

/// A small config: H = 64, M = 2, Kc = 3, K = 4 heads of 32 values per order, tables of ~1000 rows.
inline engram::layer_config small_config() {
    engram::layer_config c;
    c.hash.table_size_per_ngram = {997, 1013};
    c.hash.heads_per_ngram = 4;
    c.hash.embed_per_ngram = 128;
    c.hidden = 64;
    c.branches = 2;
    c.kernel_size = 3;
    return c;
}

/// A vocabulary of 500 raw ids folded onto 300 canonical ids (raw 2 stays the pad's own id).
inline engram::canonical_table small_vocab() {
    std::vector<engram::token_id> lookup(500);
    for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<engram::token_id>(i % 300);
    return engram::canonical_table::from_lookup(std::move(lookup));
}

/// The host layer's row ids, memory vectors, parameters and table view of a case's batch.
template <class Layer>
void fill_lookup(cuda_case& c, const Layer& l) {
    const std::size_t n = c.batch * c.seq_len;
    c.rows.resize(n * l.num_heads());
    l.rows(c.raw, c.batch, c.seq_len, c.rows, c.mask);
    c.memory.resize(n * l.memory_dim());
    l.memory(c.rows, c.memory);
    c.params = l.parameters();
    c.table = engram::table_view_of(l.table());
}

/// The host hasher's row ids of every layout, layer after layer: variant 0 plain, 1 with the
/// dead token 77, 2 with `mask`.
inline std::vector<engram::row_id> host_rows(const std::vector<engram::layer_layout>& layouts,
                                             const engram::canonical_table& vocab,
                                             const std::vector<engram::token_id>& raw, std::size_t batch,
                                             std::size_t seq_len, const std::vector<std::uint8_t>& mask, int variant) {
    std::vector<engram::row_id> want;
    for (const auto& lay : layouts) {
        engram::ngram_hasher<> h(lay);
        std::vector<engram::row_id> r(raw.size() * lay.num_heads());
        if (variant == 2)
            h.rows_tokens(vocab, raw, batch, seq_len, r, std::span<const std::uint8_t>(mask));
        else if (variant == 1)
            h.rows_tokens(vocab, raw, batch, seq_len, r, engram::token_id{77});
        else
            h.rows_tokens(vocab, raw, batch, seq_len, r);
        want.insert(want.end(), r.begin(), r.end());
    }
    return want;
}

template <class Policies>
cuda_case make_case(const std::string& name, bool with_mask, std::optional<engram::token_id> dead_token) {
    using layer_t = engram::layer<Policies>;
    auto cfg = small_config();
    cfg.dead_token = dead_token;
    auto l = std::make_shared<layer_t>(cfg, small_vocab());
    l->randomize(7);
    cuda_case c;
    c.name = name;
    c.batch = 2;
    c.seq_len = 19;
    const std::size_t n = c.batch * c.seq_len, width = 2 * 64;
    c.raw = token_ids(n, 11);
    if (dead_token) c.raw[5] = c.raw[23] = *dead_token;
    if (with_mask) {
        c.mask.assign(n, 1);
        c.mask[3] = c.mask[4] = c.mask[30] = 0;
    }
    c.hidden = normal_values(n * width, 13);
    c.expected.resize(n * width);
    l->forward(c.raw, c.batch, c.seq_len, c.hidden, c.expected, c.mask);
    fill_lookup(c, *l);
    c.keep_alive = l;
    return c;
}

/// DeepSeek-V4.1's golden case (tests/data/v41_case.safetensors), its rows served in place.
inline cuda_case v41_case() {
    namespace v41 = engram::deepseek_v41;
    auto file = std::make_shared<const engram::safetensors_file>(
        engram::safetensors_file::open(std::string(ENGRAM_TEST_DATA_DIR) + "/v41_case.safetensors"));
    const auto cfg = v41::config::from_json(nlohmann::json::parse(*file->find_metadata("config")));
    v41::tensor_set tensors;
    tensors.add_all(file);
    auto l = std::make_shared<v41::layer_type>(
        v41::load_layer(cfg, 1, engram::load_canonical_table(*file), tensors, engram::weight_format::bf16_dot));
    cuda_case c;
    c.name = "v41";
    c.raw = file->at("input_ids").to_vector<std::int64_t>();
    c.mask = file->at("token_mask").to_vector<std::uint8_t>();
    c.batch = static_cast<std::size_t>(file->at("input_ids").shape[0]);
    c.seq_len = static_cast<std::size_t>(file->at("input_ids").shape[1]);
    const auto& h = file->at("hidden_states");
    std::vector<engram::bfloat16> hb(h.numel()), out(h.numel());
    std::memcpy(hb.data(), h.bytes.data(), hb.size() * 2);
    engram::forward_bf16(*l, c.raw, c.batch, c.seq_len, hb, out, c.mask);
    for (auto v : hb) c.hidden.push_back(v.to_float());
    for (auto v : out) c.expected.push_back(v.to_float());
    fill_lookup(c, *l);
    c.bf16_output = true;
    c.keep_alive = std::make_shared<std::pair<decltype(file), decltype(l)>>(file, l);
    return c;
}

/// Whether `got` matches the host output: within 1e-5 (1 + |want|) for float outputs, within one
/// bf16 step (after rounding to bf16) for V4.1's bf16 outputs. Writes the worst index.
inline bool outputs_match(const cuda_case& c, const std::vector<float>& got, double tolerance, std::string& why) {
    if (got.size() != c.expected.size()) {
        why = "size " + std::to_string(got.size()) + " vs " + std::to_string(c.expected.size());
        return false;
    }
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double a = got[i], b = c.expected[i];
        bool ok = false;
        if (c.bf16_output) {
            const int ga = engram::bfloat16::from_float(got[i]).bits,
                      gb = engram::bfloat16::from_float(c.expected[i]).bits;
            ok = std::abs(ga - gb) <= 1;
        } else {
            ok = std::fabs(a - b) <= tolerance * (1.0 + std::fabs(b));
        }
        if (!ok) {
            why = c.name + ": value " + std::to_string(i) + " is " + std::to_string(a) + ", host " + std::to_string(b);
            return false;
        }
    }
    return true;
}

} // namespace engram_test
