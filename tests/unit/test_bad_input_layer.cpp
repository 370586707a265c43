// Bad input for what runs a layer: case files (config metadata + lookup + ids + weights, what
// `engram hash` / `engram forward` read), checkpoints, and the public entry points (token ids
// negative or >= V, shapes). One table each; every row asserts the engram exception type and a
// fragment of the message naming the field and the value.
#include "support/bad_input.hpp"
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/io/table_file.hpp>
#include <engram/io/vocab_io.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/layer/layer.hpp>
#include <engram/vocab/bpe_encoder.hpp>

#include <nlohmann/json.hpp>

#include <unistd.h> // for getpid

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

using engram_test::bad_input;
using engram_test::expect_rejected;
using engram_test::kind;

fs::path work_dir() { return engram_test::scratch_dir("engram_bad_input_layer"); }

const fs::path golden = fs::path(ENGRAM_TEST_DATA_DIR) / "forward_small.safetensors";

using tensor_edit = std::function<void(engram::safetensors_writer&, const engram::tensor_view&)>;

void keep(engram::safetensors_writer& w, const engram::tensor_view& t) { w.add(t); }

/// The golden forward case with its tensors passed through `edit`, its config JSON through
/// `config` (an empty function keeps it) and `extra` called last; written under `name`.
fs::path mutated(const std::string& name, const tensor_edit& edit,
                 const std::function<void(nlohmann::json&)>& config = {},
                 const std::function<void(engram::safetensors_writer&)>& extra = {}) {
    const auto src = engram::safetensors_file::open(golden);
    engram::safetensors_writer w;
    for (const auto& t : src.tensors()) edit(w, t);
    auto j = nlohmann::json::parse(*src.find_metadata("config"));
    if (config) config(j);
    w.set_metadata("config", j.dump());
    if (extra) extra(w);
    const fs::path p = work_dir() / name;
    w.write(p);
    return p;
}

/// Replaces tensor `name` with float values `values` of `shape` stored as `type`.
tensor_edit replace_floats(const std::string& name, const std::function<void(std::vector<float>&)>& change) {
    return [=](engram::safetensors_writer& w, const engram::tensor_view& t) {
        if (t.name != name) return w.add(t);
        auto v = t.to_vector<float>();
        change(v);
        w.add(t.name, t.shape, v);
    };
}

tensor_edit replace_ids(const std::string& name, const std::function<void(std::vector<std::int64_t>&)>& change) {
    return [=](engram::safetensors_writer& w, const engram::tensor_view& t) {
        if (t.name != name) return w.add(t);
        auto v = t.to_vector<std::int64_t>();
        change(v);
        w.add(t.name, t.shape, v);
    };
}

tensor_edit drop(const std::string& name) {
    return [=](engram::safetensors_writer& w, const engram::tensor_view& t) {
        if (t.name != name) w.add(t);
    };
}

std::function<void()> load_layer_of(const fs::path& p) {
    return [p] { (void)engram::load_layer(p); };
}

} // namespace

TEST_CASE("bad input table: case files (config, vocabulary, multipliers, offsets)", "[bad_input][case]") {
    REQUIRE_NOTHROW(engram::load_layer(mutated("intact.safetensors", keep)));
    const auto src = engram::safetensors_file::open(golden);
    const std::int64_t v_raw = src.at("lookup").shape[0]; // V = 600
    const auto lookup = src.at("lookup").to_vector<std::int64_t>();
    const std::int64_t top = *std::max_element(lookup.begin(), lookup.end());
    const std::string v_text = std::to_string(v_raw);

    const std::vector<bad_input> rows = {
        {"no lookup", load_layer_of(mutated("c1.safetensors", drop("lookup"))), kind::format,
         "missing tensor 'lookup'"},
        {"lookup of floats",
         load_layer_of(mutated("c2.safetensors",
                               [](auto& w, const auto& t) {
                                   if (t.name != "lookup") return w.add(t);
                                   w.add(t.name, t.shape, std::vector<float>(t.numel(), 0.0f));
                               })),
         kind::format, "tensor 'lookup' has dtype F32, expected I64"},
        {"lookup of rank 2",
         load_layer_of(mutated("c3.safetensors",
                               [](auto& w, const auto& t) {
                                   if (t.name != "lookup") return w.add(t);
                                   w.add(t.name, engram::dtype::i64, {2, t.shape[0] / 2}, t.bytes);
                               })),
         kind::format, "tensor 'lookup' has rank 2"},
        {"a negative canonical id",
         load_layer_of(mutated("c4.safetensors", replace_ids("lookup", [](auto& v) { v[5] = -1; }))), kind::format,
         "lookup[5] = -1 is negative"},
        {"a canonical id >= V",
         load_layer_of(mutated("c5.safetensors", replace_ids("lookup", [&](auto& v) { v[7] = v_raw; }))), kind::format,
         "lookup value " + v_text + " is not below the vocabulary size " + v_text},
        {"canonical ids with a gap",
         load_layer_of(mutated("c6.safetensors", replace_ids("lookup",
                                                             [&](auto& v) {
                                                                 for (auto& x : v)
                                                                     if (x == top) x = top + 1;
                                                             }))),
         kind::format, "canonical id " + std::to_string(top) + " is never produced"},
        {"canonical_vocab_size metadata that disagrees",
         [] {
             (void)engram::load_canonical_table(engram::safetensors_file::open(
                 mutated("c7.safetensors", keep, {}, [](auto& w) { w.set_metadata("canonical_vocab_size", "5"); })));
         },
         kind::format, "metadata canonical_vocab_size = '5'"},
        {"no config",
         [] {
             engram::safetensors_writer w;
             const auto src = engram::safetensors_file::open(golden);
             for (const auto& t : src.tensors()) w.add(t);
             w.write(work_dir() / "c8.safetensors");
             (void)engram::load_layer(work_dir() / "c8.safetensors");
         },
         kind::format, "no 'config' entry in the metadata"},
        {"config that is not JSON",
         [] {
             engram::safetensors_writer w;
             const auto src = engram::safetensors_file::open(golden);
             for (const auto& t : src.tensors()) w.add(t);
             w.set_metadata("config", "{\"max_ngram\": 3,");
             w.write(work_dir() / "c9.safetensors");
             (void)engram::load_layer(work_dir() / "c9.safetensors");
         },
         kind::format, "c9.safetensors: config: metadata 'config' is not valid JSON"},
        {"pad id >= V", load_layer_of(mutated("c10.safetensors", keep, [&](auto& j) { j["pad_id"] = v_raw; })),
         kind::config, "pad_id " + v_text + " is outside the vocabulary [0, " + v_text + ")"},
        {"layer id not in layer_ids",
         load_layer_of(mutated("c11.safetensors", keep, [](auto& j) { j["layer_id"] = 2; })), kind::config,
         "layer_id 2 is not in layer_ids"},
        {"E not divisible by K",
         load_layer_of(mutated("c12.safetensors", keep, [](auto& j) { j["embed_per_ngram"] = 62; })), kind::config,
         "embed_per_ngram = 62 is not divisible by heads_per_ngram = 4"},
        {"dead token >= V", load_layer_of(mutated("c13.safetensors", keep, [&](auto& j) { j["dead_token"] = v_raw; })),
         kind::config, "dead_token " + v_text + " is outside the vocabulary"},
        {"explicit multipliers of floats",
         load_layer_of(mutated("c14.safetensors", keep, {},
                               [](auto& w) {
                                   w.add("multipliers.layer1", {3}, std::vector<float>{1, 3, 5});
                               })),
         kind::format, "tensor 'multipliers.layer1' must be an I64 vector"},
        {"explicit multipliers with m * V' >= 2^63",
         load_layer_of(
             mutated("c15.safetensors", keep, {},
                     [](auto& w) {
                         w.add("multipliers.layer1", {3}, std::vector<std::int64_t>{1, std::int64_t{1} << 62, 5});
                     })),
         kind::config, "multipliers[1] = 4611686018427387904 must be in [1, "},
        {"two explicit multipliers for N = 3",
         load_layer_of(mutated("c16.safetensors", keep, {},
                               [](auto& w) {
                                   w.add("multipliers.layer1", {2}, std::vector<std::int64_t>{1, 3});
                               })),
         kind::config, "multipliers: 2 given, expected max_ngram = 3"},
        {"offsets that are not the layout's",
         load_layer_of(
             mutated("c17.safetensors", replace_ids("multi_head_embedding.offsets", [](auto& v) { v[3] += 1; }))),
         kind::format, "'multi_head_embedding.offsets' does not match"},
        {"a config asking for 2^41-row tables (fails on the file, not on memory)",
         load_layer_of(mutated("c18.safetensors", keep,
                               [](auto& j) {
                                   j["table_size_per_ngram"] = {std::int64_t{1} << 40, std::int64_t{1} << 40};
                               })),
         kind::format, "'multi_head_embedding.embedding.weight' has shape [8916, 16], expected [8796093022992, 16]"},
        {"a config asking for a hidden width of 2^20",
         load_layer_of(mutated("c19.safetensors", keep, [](auto& j) { j["hidden"] = std::int64_t{1} << 20; })),
         kind::format, "'value_proj.weight' has shape [64, 128], expected [1048576, 128]"},
    };
    for (const auto& row : rows) expect_rejected(row);
}

TEST_CASE("bad input table: checkpoint weights", "[bad_input][checkpoint]") {
    const auto as_type = [](const std::string& name, engram::dtype type) -> tensor_edit {
        return [=](engram::safetensors_writer& w, const engram::tensor_view& t) {
            if (t.name != name) return w.add(t);
            const auto v = t.to_vector<float>();
            if (type == engram::dtype::f64) {
                std::vector<double> d(v.begin(), v.end());
                d[1] = 1e300; // finite as F64, infinite as float
                return w.add(t.name, t.shape, d);
            }
            if (type == engram::dtype::bf16) {
                std::vector<std::uint16_t> bits(v.size(), 0x3f80); // 1.0
                bits[2] = 0x7fc0;                                  // NaN
                return w.add_bf16(t.name, t.shape, bits);
            }
            return w.add(t.name, t.shape, std::vector<std::int32_t>(v.size(), 1));
        };
    };
    const std::vector<bad_input> rows = {
        {"a NaN row value",
         load_layer_of(mutated("w1.safetensors", replace_floats("multi_head_embedding.embedding.weight",
                                                                [](auto& v) { v[1234] = NAN; }))),
         kind::format, "'multi_head_embedding.embedding.weight' has a non-finite value (nan) at flat index 1234"},
        {"an infinite key weight",
         load_layer_of(
             mutated("w2.safetensors", replace_floats("key_projs.2.weight", [](auto& v) { v[77] = -INFINITY; }))),
         kind::format, "'key_projs.2.weight' has a non-finite value (-inf) at flat index 77"},
        {"a NaN in a BF16 norm weight",
         load_layer_of(mutated("w3.safetensors", as_type("norm1.0.weight", engram::dtype::bf16))), kind::format,
         "'norm1.0.weight' has a non-finite value (nan) at flat index 2"},
        {"an F64 bias too large for a float",
         load_layer_of(mutated("w4.safetensors", as_type("value_proj.bias", engram::dtype::f64))), kind::format,
         "'value_proj.bias' has a non-finite value (inf) at flat index 1"},
        {"an integer norm weight",
         load_layer_of(mutated("w5.safetensors", as_type("norm2.3.weight", engram::dtype::i32))), kind::format,
         "'norm2.3.weight' has dtype I32, expected F32, BF16, F16 or F64"},
        {"a transposed projection",
         load_layer_of(mutated("w6.safetensors",
                               [](auto& w, const auto& t) {
                                   if (t.name != "value_proj.weight") return w.add(t);
                                   w.add(t.name, engram::dtype::f32, {t.shape[1], t.shape[0]}, t.bytes);
                               })),
         kind::format, "'value_proj.weight' has shape [128, 64], expected [64, 128]"},
        {"a missing convolution", load_layer_of(mutated("w7.safetensors", drop("short_conv.conv.weight"))),
         kind::format, "missing tensor 'short_conv.conv.weight'"},
        {"a missing key bias", load_layer_of(mutated("w8.safetensors", drop("key_projs.3.bias"))), kind::format,
         "missing tensor 'key_projs.3.bias'"},
        {"one embedding row short",
         load_layer_of(mutated(
             "w9.safetensors",
             [](auto& w, const auto& t) {
                 if (t.name != "multi_head_embedding.embedding.weight") return w.add(t);
                 w.add(t.name, engram::dtype::f32, {t.shape[0] - 1, t.shape[1]}, t.bytes.first(t.bytes.size() - 64));
             })),
         kind::format, "has shape [8915, 16], expected [8916, 16]"},
    };
    for (const auto& row : rows) expect_rejected(row);

    SECTION("a saved layer loads back to the same weights (the rows above fail for their edit only)") {
        auto l = engram::load_layer(golden);
        engram::save_layer(l, work_dir() / "saved.safetensors");
        auto back = engram::load_layer(work_dir() / "saved.safetensors");
        CHECK(back.projection_weight() == l.projection_weight());
        CHECK(back.conv_weight() == l.conv_weight());
    }
}

TEST_CASE("bad input table: token ids and shapes at the public entry points", "[bad_input][entry]") {
    const auto src = engram::safetensors_file::open(golden);
    const auto layer = engram::load_layer(src);
    const auto& vocab = layer.vocab();
    const auto v = static_cast<engram::token_id>(vocab.vocab_size());
    const auto vc = vocab.canonical_size();
    const auto ids = src.at("input_ids").to_vector<std::int64_t>();
    const auto hidden = src.at("hidden_states").to_vector<float>();
    const std::size_t batch = 2, seq = 24, heads = layer.num_heads();
    const std::size_t mh = static_cast<std::size_t>(layer.config().branches * layer.config().hidden);
    std::vector<float> out(hidden.size());
    auto with = [&](std::size_t at, engram::token_id bad) {
        auto copy = ids;
        copy[at] = bad;
        return copy;
    };
    const std::string vt = std::to_string(v);
    engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>> hasher(layer.layout());

    const std::vector<bad_input> rows = {
        // Vocabulary.
        {"map: a negative id",
         [&] {
             std::vector<engram::token_id> o(ids.size());
             vocab.map(with(3, -1), o);
         },
         kind::input, "token id -1 at position 3 is outside the vocabulary [0, " + vt + ")"},
        {"map: id V",
         [&] {
             std::vector<engram::token_id> o(ids.size());
             vocab.map(with(9, v), o);
         },
         kind::input, "token id " + vt + " at position 9"},
        {"map: output of another size",
         [&] {
             std::vector<engram::token_id> o(ids.size() - 1);
             vocab.map(ids, o);
         },
         kind::input, "output size 47 != input size 48"},
        {"operator(): id V", [&] { (void)vocab(v); }, kind::input, "token id " + vt + " is outside"},
        {"pad id V", [&] { (void)vocab.canonical_pad_id(v); }, kind::config, "pad_id " + vt + " is outside"},
        {"an empty lookup", [] { (void)engram::canonical_table::from_lookup({}); }, kind::config, "lookup is empty"},
        // Hasher.
        {"hasher: canonical id V'",
         [&] {
             std::vector<engram::token_id> c(ids.size(), 0);
             c[11] = vc;
             std::vector<engram::row_id> r(ids.size() * heads);
             hasher.rows(c, batch, seq, r);
         },
         kind::input, "canonical id " + std::to_string(vc) + " at position 11"},
        {"hasher: raw id -7",
         [&] {
             std::vector<engram::row_id> r(ids.size() * heads);
             hasher.rows_tokens(vocab, with(0, -7), batch, seq, r);
         },
         kind::input, "token id -7 at position 0"},
        {"hasher: [B, T] that does not match the ids",
         [&] {
             std::vector<engram::row_id> r(ids.size() * heads);
             hasher.rows_tokens(vocab, ids, batch, seq + 1, r);
         },
         kind::input, "hash: input has 48"},
        {"hasher: output one short",
         [&] {
             std::vector<engram::row_id> r(ids.size() * heads - 1);
             hasher.rows_tokens(vocab, ids, batch, seq, r);
         },
         kind::input, "hash: output has"},
        {"hasher: B x T overflows",
         [&] {
             std::vector<engram::row_id> r(1);
             // Opaque to the optimiser: with a constant, g++ 12 warns about the loop the check
             // never lets run (-Waggressive-loop-optimizations).
             volatile std::size_t huge = std::numeric_limits<std::size_t>::max();
             hasher.rows_tokens(vocab, ids, huge, 2, r);
         },
         kind::input, "shape overflows size_t"},
        // Layer.
        {"forward: id V", [&] { layer.forward(with(40, v), batch, seq, hidden, out); }, kind::input,
         "token id " + vt + " at position 40"},
        {"forward: a negative id", [&] { layer.forward(with(0, -2), batch, seq, hidden, out); }, kind::input,
         "token id -2 at position 0"},
        {"forward: hidden one value short",
         [&] { layer.forward(ids, batch, seq, std::span<const float>(hidden).first(hidden.size() - 1), out); },
         kind::input, "forward: hidden has " + std::to_string(hidden.size() - 1)},
        {"forward: a token mask with the reference fusion",
         [&] {
             const std::vector<std::uint8_t> mask(ids.size(), 1);
             layer.forward(ids, batch, seq, hidden, out, mask);
         },
         kind::input, "token mask needs a fusion that supports it"},
        {"forward: rows from a table of another shape",
         [&] {
             const engram::dense_storage::table<float> small(100, 16);
             layer.forward(small, ids, batch, seq, hidden, out);
         },
         kind::config, "the row table has 100 x 16 rows"},
        {"forward_memory: e one value short",
         [&] {
             const std::vector<float> e(batch * seq * layer.memory_dim() - 1);
             layer.forward_memory(e, batch, seq, hidden, out);
         },
         kind::input, "forward_memory: e has"},
        {"decode_step: id V",
         [&] {
             auto state = layer.new_decode_state();
             std::vector<float> o(mh);
             layer.decode_step(state, v, std::span<const float>(hidden).first(mh), o);
         },
         kind::input, "token id " + vt},
        {"decode_step: hidden of one branch only",
         [&] {
             auto state = layer.new_decode_state();
             std::vector<float> o(mh);
             layer.decode_step(state, 1, std::span<const float>(hidden).first(mh / 4), o);
         },
         kind::input, "hidden and out need M*H = " + std::to_string(mh)},
        {"decode_state: rollback past the start",
         [&] {
             auto state = layer.new_decode_state();
             state.rollback(1);
         },
         kind::input, "cannot roll back 1 tokens"},
        // Gather and storage.
        {"gather: row id = rows",
         [&] {
             const std::vector<engram::row_id> r{0, static_cast<engram::row_id>(layer.table().rows())};
             std::vector<float> o(2 * layer.table().dim());
             engram::gather(layer.table(), r, o);
         },
         kind::input, "row id " + std::to_string(layer.table().rows()) + " at position 1 is outside"},
        {"gather: a negative row id",
         [&] {
             const std::vector<engram::row_id> r{-1};
             std::vector<float> o(layer.table().dim());
             engram::gather(layer.table(), r, o);
         },
         kind::input, "row id -1 at position 0"},
        {"gather: output of another size",
         [&] {
             const std::vector<engram::row_id> r{0, 1};
             std::vector<float> o(layer.table().dim());
             engram::gather(layer.table(), r, o);
         },
         kind::input, "gather: output has 16 values, expected rows x dim = 2 x 16"},
        // Files and writers.
        {"tensor_view::as<float> of an I64 tensor", [&] { (void)src.at("input_ids").as<float>(); }, kind::format,
         "tensor 'input_ids' has dtype I64, but as<T>() wants F32"},
        {"safetensors_writer: data that does not fit the shape",
         [] {
             engram::safetensors_writer w;
             w.add("x", {2, 3}, std::vector<float>(5));
         },
         kind::config, "data is 20 bytes, but shape [2, 3] of F32 needs 24"},
        {"safetensors_writer: a negative dim",
         [] {
             engram::safetensors_writer w;
             w.add("x", engram::dtype::u8, {-1}, {});
         },
         kind::config, "shape[0] = -1 is negative"},
        {"table writer: values that are not whole rows",
         [] {
             engram::table_spec spec;
             spec.config = engram::load_layer_config(engram::safetensors_file::open(golden));
             engram::table_file_writer w(work_dir() / "partial.safetensors", spec);
             w.append(std::vector<float>(17));
         },
         kind::input, "17 values are not whole rows of 16"},
        {"table writer: finish before every row",
         [] {
             engram::table_spec spec;
             spec.config = engram::load_layer_config(engram::safetensors_file::open(golden));
             engram::table_file_writer w(work_dir() / "partial.safetensors", spec);
             w.append(std::vector<float>(16 * 10));
             (void)w.finish();
         },
         kind::input, "finish() after 10 of"},
        {"bpe encoder: decode of id V",
         [] {
             const auto enc = engram::bpe_encoder::from_tokenizer_json_text(
                 R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
                     "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}})");
             (void)enc.decode(std::vector<engram::token_id>{0, 2});
         },
         kind::input, "token id 2 is outside the vocabulary [0, 2)"},
        {"bpe encoder: text that is not UTF-8",
         [] {
             const auto enc = engram::bpe_encoder::from_tokenizer_json_text(
                 R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
                     "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}})");
             (void)enc.encode("ab\xff");
         },
         kind::input, "not valid UTF-8 at byte offset 2"},
    };
    for (const auto& row : rows) expect_rejected(row);
    // Nothing was left behind by the writers that failed.
    CHECK_FALSE(fs::exists(work_dir() / "partial.safetensors"));
    CHECK(engram::table_temporaries(work_dir() / "partial.safetensors").empty());
    // And the untouched inputs run.
    CHECK_NOTHROW(layer.forward(ids, batch, seq, hidden, out));
}
