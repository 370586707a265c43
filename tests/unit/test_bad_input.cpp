// Bad input, loader by loader: one table per loader (safetensors, tokenizer.json, config JSON,
// table manifest). Every row names a corruption, the engram exception type it must raise and a
// fragment of the message (the field and the value at fault).
#include "support/bad_input.hpp"
#include "support/catch.hpp"

#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/io/table_file.hpp>
#include <engram/vocab/bpe_encoder.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <nlohmann/json.hpp>

#include <sys/stat.h> // for mkfifo
#include <unistd.h>   // for getpid

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

using engram_test::bad_input;
using engram_test::expect_rejected;
using engram_test::kind;

fs::path work_dir() { return engram_test::scratch_dir("engram_bad_input"); }

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// ---- safetensors ---------------------------------------------------------------------------

/// An 8-byte length (the header's size unless `claimed`), the header, `data_bytes` bytes.
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes = 0,
                             std::uint64_t claimed = ~std::uint64_t{0}) {
    const std::uint64_t n = claimed == ~std::uint64_t{0} ? header.size() : claimed;
    std::vector<std::byte> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xffu));
    for (char c : header) out.push_back(static_cast<std::byte>(c));
    out.resize(out.size() + data_bytes, std::byte{7});
    return out;
}

std::function<void()> parse_bytes(std::vector<std::byte> bytes) {
    return [bytes] { (void)engram::safetensors_file::from_bytes(bytes); };
}

std::function<void()> open_file(fs::path p) {
    return [p] { (void)engram::safetensors_file::open(p); };
}

} // namespace

TEST_CASE("bad input table: safetensors", "[bad_input][safetensors]") {
    const auto t = [](const std::string& body) { return R"({"t":)" + body + "}"; };
    // A valid file to truncate: two tensors and metadata.
    engram::safetensors_writer w;
    w.add("weights", {4, 8}, std::vector<float>(32, 0.5f));
    w.add("ids", {3}, std::vector<std::int64_t>{1, 2, 3});
    w.set_metadata("note", "x");
    const auto full = w.to_bytes();
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, full.data(), 8);
    const auto cut = [&](std::size_t n) {
        const fs::path p = work_dir() / ("cut" + std::to_string(n) + ".safetensors");
        write_file(p, std::string(reinterpret_cast<const char*>(full.data()), n));
        return p;
    };
    const fs::path empty = work_dir() / "empty.safetensors";
    write_file(empty, "");
    const fs::path fifo = work_dir() / "fifo.safetensors";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);

    const std::vector<bad_input> rows = {
        // Length field.
        {"empty buffer", parse_bytes({}), kind::format, "shorter than the 8-byte"},
        {"7 bytes", parse_bytes(std::vector<std::byte>(7)), kind::format, "is 7 bytes"},
        {"header length 0", parse_bytes(image("", 8, 0)), kind::format, "header length is 0"},
        {"header length past the end", parse_bytes(image("{}", 0, 50)), kind::format, "header length 50 exceeds"},
        {"header length above the cap", parse_bytes(image("{}", 0, std::uint64_t{1} << 33)), kind::format,
         "-byte limit"},
        // JSON shape.
        {"not JSON", parse_bytes(image("{oops}")), kind::format, "not valid JSON"},
        {"a NUL in the header", parse_bytes(image(std::string("{} \0", 4))), kind::format, "NUL byte"},
        {"header is an array", parse_bytes(image("[]")), kind::format, "header is a JSON array"},
        {"entry is a number", parse_bytes(image(t("5"))), kind::format, "tensor 't': entry is a JSON number"},
        {"missing dtype", parse_bytes(image(t(R"({"shape":[1],"data_offsets":[0,1]})"), 1)), kind::format,
         "field 'dtype' is missing"},
        {"missing shape", parse_bytes(image(t(R"({"dtype":"U8","data_offsets":[0,1]})"), 1)), kind::format,
         "field 'shape' is missing"},
        {"missing data_offsets", parse_bytes(image(t(R"({"dtype":"U8","shape":[1]})"), 1)), kind::format,
         "field 'data_offsets' is missing"},
        {"extra key", parse_bytes(image(t(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1],"crc":1})"), 1)),
         kind::format, "unknown field 'crc'"},
        {"misspelt key", parse_bytes(image(t(R"({"dtype":"U8","shape":[1],"data_offset":[0,1]})"), 1)), kind::format,
         "unknown field 'data_offset'"},
        {"dtype of the wrong type", parse_bytes(image(t(R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})"), 4)),
         kind::format, "field 'dtype' is a JSON number"},
        {"shape of the wrong type", parse_bytes(image(t(R"({"dtype":"U8","shape":{},"data_offsets":[0,1]})"), 1)),
         kind::format, "field 'shape' is a JSON object"},
        {"offsets of the wrong type", parse_bytes(image(t(R"({"dtype":"U8","shape":[1],"data_offsets":"0"})"), 1)),
         kind::format, "expected [begin, end]"},
        // dtype names.
        {"unknown dtype", parse_bytes(image(t(R"({"dtype":"F31","shape":[1],"data_offsets":[0,4]})"), 4)), kind::format,
         "unknown dtype 'F31'"},
        {"dtype in lower case", parse_bytes(image(t(R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})"), 4)),
         kind::format, "unknown dtype 'f32'"},
        // Shapes.
        {"negative dim", parse_bytes(image(t(R"({"dtype":"U8","shape":[-3],"data_offsets":[0,0]})"))), kind::format,
         "shape[0] = -3 is negative"},
        {"fractional dim", parse_bytes(image(t(R"({"dtype":"U8","shape":[2.5],"data_offsets":[0,2]})"), 2)),
         kind::format, "shape[0] = 2.5 is not an integer"},
        {"boolean dim", parse_bytes(image(t(R"({"dtype":"U8","shape":[true],"data_offsets":[0,1]})"), 1)), kind::format,
         "shape[0] is a JSON boolean"},
        {"huge dim", parse_bytes(image(t(R"({"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]})"))),
         kind::format, "exceeds 2^63 - 1"},
        {"dims whose product overflows",
         parse_bytes(image(t(R"({"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,0]})"))),
         kind::format, "overflows 64-bit byte count"},
        {"elements x dtype size overflows",
         parse_bytes(image(t(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]})"))), kind::format,
         "overflows 64-bit byte count"},
        // Offsets.
        {"begin > end", parse_bytes(image(t(R"({"dtype":"U8","shape":[0],"data_offsets":[3,1]})"), 4)), kind::format,
         "has begin > end"},
        {"end past the data", parse_bytes(image(t(R"({"dtype":"U8","shape":[5],"data_offsets":[0,5]})"), 4)),
         kind::format, "exceed the data buffer of 4 bytes"},
        {"negative offset", parse_bytes(image(t(R"({"dtype":"U8","shape":[1],"data_offsets":[-1,0]})"), 1)),
         kind::format, "data_offsets[0] = -1 is negative"},
        {"shape x dtype != byte range", parse_bytes(image(t(R"({"dtype":"I32","shape":[3],"data_offsets":[0,8]})"), 8)),
         kind::format, "needs 12 bytes"},
        {"overlapping tensors",
         parse_bytes(image(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                           6)),
         kind::format, "overlap"},
        // Metadata.
        {"metadata is an array", parse_bytes(image(R"({"__metadata__":["a"]})")), kind::format,
         "__metadata__ is a JSON array"},
        {"metadata value is a number", parse_bytes(image(R"({"__metadata__":{"k":1}})")), kind::format,
         "value for key 'k' is a JSON number"},
        {"metadata value is null", parse_bytes(image(R"({"__metadata__":{"k":null}})")), kind::format,
         "value for key 'k' is a JSON null"},
        // Files.
        {"empty file", open_file(empty), kind::format, "empty.safetensors"},
        {"truncated in the length field", open_file(cut(5)), kind::format, "is 5 bytes"},
        {"truncated in the header", open_file(cut(8 + static_cast<std::size_t>(header_len) / 2)), kind::format,
         "header length"},
        {"truncated at the data start", open_file(cut(8 + static_cast<std::size_t>(header_len))), kind::format,
         "exceed the data buffer of 0 bytes"},
        {"truncated one byte short", open_file(cut(full.size() - 1)), kind::format, "(file truncated?)"},
        {"a directory", open_file(work_dir()), kind::io, "is a directory"},
        {"a missing file", open_file(work_dir() / "absent.safetensors"), kind::io, "absent.safetensors"},
        {"a FIFO (no waiting for a writer)", open_file(fifo), kind::io, "not a regular file"},
    };
    for (const auto& row : rows) expect_rejected(row);
    // The untouched image is valid: the rows fail for their corruption only.
    CHECK(engram::safetensors_file::from_bytes(full).tensors().size() == 2);
}

// ---- tokenizer.json -------------------------------------------------------------------------

TEST_CASE("bad input table: tokenizer.json (canonical table and BPE encoder)", "[bad_input][tokenizer]") {
    const std::string decoder = R"("decoder": {"type": "ByteLevel"})";
    const std::string pre = R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false})";
    // A tokenizer.json with `model` and `extra` top-level fields spliced in.
    const auto tok = [&](const std::string& model, const std::string& extra = "") {
        return "{\"model\": " + model + ", " + decoder + ", " + pre + (extra.empty() ? "" : ", " + extra) + "}";
    };
    const auto bpe = [](const std::string& vocab) {
        return R"({"type": "BPE", "vocab": )" + vocab + R"(, "merges": []})";
    };
    const std::string good = tok(bpe(R"({"a": 0, "b": 1})"));
    struct text_case {
        std::string label, text;
        kind type;
        std::string fragment;
    };
    const std::vector<text_case> cases = {
        {"not JSON", "{\"model\": ", kind::format, "not valid JSON"},
        {"top level is an array", "[1, 2]", kind::format, "the top level is array"},
        {"no model", "{" + decoder + "}", kind::format, "missing field model"},
        {"model is a string", tok("\"BPE\""), kind::format, "field model is string"},
        {"model.type is missing", tok(R"({"vocab": {}})"), kind::format, "missing field model.type"},
        {"unknown model type", tok(R"({"type": "Telepathy", "vocab": {"a": 0}})"), kind::unsupported,
         "model.type \"Telepathy\""},
        {"model.vocab is an array", tok(R"({"type": "BPE", "vocab": ["a"], "merges": []})"), kind::format,
         "field model.vocab is array"},
        {"negative id", tok(bpe(R"({"a": -1})")), kind::format, "model.vocab[\"a\"] = -1 is negative"},
        {"string id", tok(bpe(R"({"a": "0"})")), kind::format, "model.vocab[\"a\"] is string"},
        {"fractional id", tok(bpe(R"({"a": 0.5})")), kind::format, "model.vocab[\"a\"] is not an integer"},
        {"huge id (2^24)", tok(bpe(R"({"a": 16777216})")), kind::format, "= 16777216 is too large"},
        {"huge id (2^64 - 1)", tok(bpe(R"({"a": 18446744073709551615})")), kind::format, "is too large"},
        {"empty vocabulary", tok(bpe("{}")), kind::format, "model.vocab and added_tokens are both empty"},
        {"added_tokens is an object", tok(bpe(R"({"a": 0})"), R"("added_tokens": {})"), kind::format,
         "field added_tokens is object"},
        {"an added token is a string", tok(bpe(R"({"a": 0})"), R"("added_tokens": ["<s>"])"), kind::format,
         "added_tokens[0] is string"},
        {"an added token has no id", tok(bpe(R"({"a": 0})"), R"("added_tokens": [{"content": "<s>"}])"), kind::format,
         "missing field added_tokens[0].id"},
        {"an added token's id is negative",
         tok(bpe(R"({"a": 0})"), R"("added_tokens": [{"id": -2, "content": "<s>"}])"), kind::format,
         "added_tokens[0].id = -2 is negative"},
        {"an added token's id is huge",
         tok(bpe(R"({"a": 0})"), R"("added_tokens": [{"id": 99999999999, "content": "<s>"}])"), kind::format,
         "added_tokens[0].id = 99999999999 is too large"},
        {"an added token has no content", tok(bpe(R"({"a": 0})"), R"("added_tokens": [{"id": 1}])"), kind::format,
         "missing field added_tokens[0].content"},
        {"an added token's content is a number",
         tok(bpe(R"({"a": 0})"), R"("added_tokens": [{"id": 1, "content": 7}])"), kind::format,
         "field added_tokens[0].content is number"},
    };
    for (const auto& c : cases) {
        expect_rejected({"canonical table: " + c.label,
                         [&] { (void)engram::canonical_table_from_tokenizer_json_text(c.text); }, c.type, c.fragment});
        expect_rejected({"bpe encoder: " + c.label,
                         [&] { (void)engram::bpe_encoder::from_tokenizer_json_text(c.text); }, c.type, c.fragment});
    }
    // Decoder and merges matter to one loader only.
    const std::vector<bad_input> more = {
        {"a decoder engram does not run",
         [&] {
             (void)engram::canonical_table_from_tokenizer_json_text(R"({"model": )" + bpe(R"({"a": 0})") +
                                                                    R"(, "decoder": {"type": "Telepathy"}})");
         },
         kind::unsupported, "decoder type \"Telepathy\""},
        {"a Metaspace decoder without its replacement",
         [&] {
             (void)engram::canonical_table_from_tokenizer_json_text(R"({"model": )" + bpe(R"({"a": 0})") +
                                                                    R"(, "decoder": {"type": "Metaspace"}})");
         },
         kind::format, "missing field decoder.replacement"},
        {"a Unigram piece that is not a pair",
         [&] {
             (void)engram::canonical_table_from_tokenizer_json_text(
                 R"({"model": {"type": "Unigram", "vocab": [["a", 0], "b"]}, "decoder": null})");
         },
         kind::format, "model.vocab[1] is \"b\", expected a [piece, score] pair"},
        {"a WordPiece model for the encoder",
         [&] {
             (void)engram::bpe_encoder::from_tokenizer_json_text(tok(R"({"type": "WordPiece", "vocab": {"a": 0}})"));
         },
         kind::unsupported, "model.type \"WordPiece\" is not supported"},
        {"a merge of unknown tokens",
         [&] {
             (void)engram::bpe_encoder::from_tokenizer_json_text(
                 tok(R"({"type": "BPE", "vocab": {"a": 0}, "merges": ["a q"]})"));
         },
         kind::format, "model.merges[0] uses \"q\""},
        {"a merge that is not two tokens",
         [&] {
             (void)engram::bpe_encoder::from_tokenizer_json_text(
                 tok(R"({"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]})"));
         },
         kind::format, "model.merges[0] = \"a\" is not two tokens"},
        {"a missing file",
         [&] { (void)engram::canonical_table_from_tokenizer_json(work_dir() / "absent_tokenizer.json"); }, kind::io,
         "absent_tokenizer.json: No such file"},
        {"a directory", [&] { (void)engram::canonical_table_from_tokenizer_json(work_dir()); }, kind::io,
         "not a regular file"},
    };
    for (const auto& row : more) expect_rejected(row);

    // The base document loads, so each row fails for its own corruption.
    CHECK(engram::canonical_table_from_tokenizer_json_text(good).vocab_size() == 2);
    CHECK(engram::bpe_encoder::from_tokenizer_json_text(good).vocab_size() == 2);

    SECTION("duplicate ids and gaps are accepted, with the Hugging Face library's reading") {
        // Two strings with id 1: the bytewise smallest ("B" < "b") is the token; "B" and "b"
        // fold together anyway, so check with strings that do not: "x" and "y" share id 1.
        const auto dup = engram::canonical_table_from_tokenizer_json_text(tok(bpe(R"({"a": 0, "y": 1, "x": 1})")));
        CHECK(dup.vocab_size() == 2);
        const auto enc = engram::bpe_encoder::from_tokenizer_json_text(tok(bpe(R"({"a": 0, "y": 1, "x": 1})")));
        CHECK(enc.token(1) == "x");
        // Ids 1 and 3 are in neither the vocabulary nor added_tokens: they decode to "" and so
        // share one canonical id; V is the largest id + 1.
        const auto gaps = engram::canonical_table_from_tokenizer_json_text(tok(bpe(R"({"a": 0, "c": 2, "d": 4})")));
        CHECK(std::vector<engram::token_id>(gaps.lookup().begin(), gaps.lookup().end()) ==
              std::vector<engram::token_id>{0, 1, 2, 1, 3});
    }
}

// ---- configuration JSON ---------------------------------------------------------------------

TEST_CASE("bad input table: configuration JSON", "[bad_input][config]") {
    const nlohmann::json base = nlohmann::json::parse(
        *engram::safetensors_file::open(data("forward_small.safetensors")).find_metadata("config"));
    REQUIRE_NOTHROW(engram::layer_config_from_json(base));
    struct edit_case {
        std::string label;
        std::function<void(nlohmann::json&)> edit;
        kind type;
        std::string fragment;
    };
    const std::int64_t big = std::int64_t{1} << 51;
    const std::vector<edit_case> cases = {
        {"missing table sizes", [](auto& j) { j.erase("table_size_per_ngram"); }, kind::format,
         "missing key 'table_size_per_ngram'"},
        {"max_ngram as a string", [](auto& j) { j["max_ngram"] = "3"; }, kind::format,
         "'max_ngram' must be an integer"},
        {"max_ngram as a float", [](auto& j) { j["max_ngram"] = 3.0; }, kind::format, "'max_ngram' must be an integer"},
        {"max_ngram 1", [](auto& j) { j["max_ngram"] = 1; }, kind::config, "'max_ngram' = 1 must be in [2, 32]"},
        {"zero heads", [](auto& j) { j["heads_per_ngram"] = 0; }, kind::config, "'heads_per_ngram' = 0"},
        {"negative E", [](auto& j) { j["embed_per_ngram"] = -64; }, kind::config, "'embed_per_ngram' = -64"},
        {"E not divisible by K", [](auto& j) { j["embed_per_ngram"] = 66; }, kind::config,
         "embed_per_ngram = 66 is not divisible by heads_per_ngram = 4"},
        {"zero table size",
         [](auto& j) {
             j["table_size_per_ngram"] = {1000, 0};
         },
         kind::config, "table_size_per_ngram[1] = 0"},
        {"negative table size",
         [](auto& j) {
             j["table_size_per_ngram"] = {-1000, 1200};
         },
         kind::config, "table_size_per_ngram[0] = -1000"},
        {"table size above 2^50",
         [big](auto& j) {
             j["table_size_per_ngram"] = {big, 1200};
         },
         kind::config, "must be in [1, 2^50]"},
        {"one table size for two orders", [](auto& j) { j["table_size_per_ngram"] = {1000}; }, kind::config,
         "table_size_per_ngram has 1 entries"},
        {"a table size as a string",
         [](auto& j) {
             j["table_size_per_ngram"] = {1000, "1200"};
         },
         kind::format, "'table_size_per_ngram[1]' must be an int64"},
        {"layer id not in layer_ids", [](auto& j) { j["layer_id"] = 2; }, kind::config,
         "layer_id 2 is not in layer_ids"},
        {"negative layer id",
         [](auto& j) {
             j["layer_ids"] = {1, -3};
         },
         kind::config, "layer_ids[1] = -3 is negative"},
        {"a repeated layer id",
         [](auto& j) {
             j["layer_ids"] = {1, 1};
         },
         kind::config, "lists layer 1 twice"},
        {"no layers", [](auto& j) { j["layer_ids"] = nlohmann::json::array(); }, kind::config, "layer_ids is empty"},
        {"negative pad id", [](auto& j) { j["pad_id"] = -1; }, kind::config, "'pad_id' = -1"},
        {"negative seed", [](auto& j) { j["seed"] = -7; }, kind::config, "'seed' = -7"},
        {"hidden 0", [](auto& j) { j["hidden"] = 0; }, kind::config, "'hidden' = 0"},
        {"hidden 2^64 - 1", [](auto& j) { j["hidden"] = ~std::uint64_t{0}; }, kind::config,
         "'hidden' = 18446744073709551615 is out of range"},
        {"65 branches", [](auto& j) { j["branches"] = 65; }, kind::config, "'branches' = 65"},
        {"kernel size 0", [](auto& j) { j["kernel_size"] = 0; }, kind::config, "'kernel_size' = 0"},
        {"negative dilation", [](auto& j) { j["conv_dilation"] = -1; }, kind::config, "'conv_dilation' = -1"},
        {"eps as a string", [](auto& j) { j["gate_norm_eps"] = "tiny"; }, kind::format,
         "'gate_norm_eps' must be a finite number"},
        {"eps 0", [](auto& j) { j["conv_norm_eps"] = 0.0; }, kind::config, "conv_norm_eps = 0"},
        {"eps that overflows a float", [](auto& j) { j["gate_norm_eps"] = 1e300; }, kind::config,
         "gate_norm_eps = inf"},
        {"orders not increasing",
         [](auto& j) {
             j["orders"] = {3, 2};
         },
         kind::config, "strictly increasing"},
        {"negative dead token", [](auto& j) { j["dead_token"] = -4; }, kind::config, "'dead_token' = -4"},
    };
    for (const auto& c : cases) {
        nlohmann::json j = base;
        c.edit(j);
        expect_rejected({c.label, [j] { (void)engram::layer_config_from_json(j); }, c.type, c.fragment});
    }
    const std::vector<bad_input> text = {
        {"config text that is not JSON", [] { (void)engram::parse_config_text("{\"max_ngram\": "); }, kind::format,
         "not valid JSON"},
        {"config text that is an array", [] { (void)engram::parse_config_text("[3]"); }, kind::format,
         "must be a JSON object"},
        {"hash config from a number", [] { (void)engram::hash_config_from_json(nlohmann::json(3)); }, kind::format,
         "expected a JSON object"},
    };
    for (const auto& row : text) expect_rejected(row);

    SECTION("multipliers: m * V' must stay below 2^63; the count must be N") {
        const std::int64_t v = 1000; // V'
        const std::int64_t limit = INT64_MAX / v;
        const std::vector<bad_input> mult = {
            {"m * V' >= 2^63",
             [=] {
                 engram::validate_multipliers(std::vector<std::int64_t>{3, limit + 1, 5}, 3, v);
             },
             kind::config, "multipliers[1] = " + std::to_string(limit + 1)},
            {"m = 0",
             [=] {
                 engram::validate_multipliers(std::vector<std::int64_t>{3, 0, 5}, 3, v);
             },
             kind::config, "multipliers[1] = 0"},
            {"negative m",
             [=] {
                 engram::validate_multipliers(std::vector<std::int64_t>{-3, 1, 5}, 3, v);
             },
             kind::config, "multipliers[0] = -3"},
            {"two for N = 3",
             [=] {
                 engram::validate_multipliers(std::vector<std::int64_t>{3, 5}, 3, v);
             },
             kind::config, "2 given, expected max_ngram = 3"},
        };
        for (const auto& row : mult) expect_rejected(row);
        // The largest allowed value and an even one are accepted: the spec draws odd multipliers,
        // but explicit ones "are used as given" (spec section 2).
        CHECK_NOTHROW(engram::validate_multipliers(std::vector<std::int64_t>{limit, 2, 1}, 3, v));
        // The bound is tight: limit * V' fits in int64, (limit + 1) * V' does not.
        std::int64_t product = 0;
        CHECK_FALSE(__builtin_mul_overflow(limit, v, &product));
        CHECK(__builtin_mul_overflow(limit + 1, v, &product));
    }
}

// ---- table manifests ------------------------------------------------------------------------

namespace {

/// Rewrites a safetensors file with metadata key `key` (a JSON text) edited; tensors kept.
void edit_metadata_json(const fs::path& path, const std::string& key, const std::function<void(nlohmann::json&)>& f) {
    engram::safetensors_writer w;
    {
        const auto file = engram::safetensors_file::open(path);
        for (const auto& t : file.tensors()) w.add(t);
        for (const auto& [k, v] : file.metadata()) {
            if (k != key) {
                w.set_metadata(k, v);
                continue;
            }
            auto j = nlohmann::json::parse(v);
            f(j);
            w.set_metadata(k, j.dump());
        }
    }
    w.write(path);
}

} // namespace

TEST_CASE("bad input table: table manifests", "[bad_input][table_file]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const fs::path dir = work_dir() / "manifest";
    fs::create_directories(dir);
    const fs::path one = dir / "one.safetensors", three = dir / "three.safetensors";
    engram::pack_table(src, one, "f32", 1);
    engram::pack_table(src, three, "int8", 3);
    const nlohmann::json base =
        nlohmann::json::parse(*engram::safetensors_file::open(one).find_metadata("engram_table"));
    REQUIRE(base.contains("manifest_checksum"));
    REQUIRE_NOTHROW(engram::table_manifest::from_json(base, "m").validate("m"));

    SECTION("fields: from_json and validate") {
        struct edit_case {
            std::string label;
            std::function<void(nlohmann::json&)> edit;
            kind type;
            std::string fragment;
        };
        const std::uint64_t rows = base.at("rows").get<std::uint64_t>();
        const std::vector<edit_case> cases = {
            {"not an object", [](auto& j) { j = nlohmann::json::array(); }, kind::format, "manifest is a JSON array"},
            {"wrong format", [](auto& j) { j["format"] = "engram-tabel"; }, kind::format,
             "field 'format' is 'engram-tabel'"},
            {"version 0", [](auto& j) { j["version"] = 0; }, kind::format, "field 'version' is 0"},
            {"version 2", [](auto& j) { j["version"] = 2; }, kind::unsupported, "version 2 is newer"},
            {"version as a string", [](auto& j) { j["version"] = "1"; }, kind::format, "'version' must be a 64-bit"},
            {"missing table_id", [](auto& j) { j.erase("table_id"); }, kind::format, "'table_id' is missing"},
            {"table_id not hex", [](auto& j) { j["table_id"] = "zzzzzzzzzzzzzzzz"; }, kind::format,
             "'table_id' must be 16 hex digits"},
            {"an unknown field", [](auto& j) { j["comment"] = "hi"; }, kind::format, "unknown field 'comment'"},
            {"a misspelt field",
             [](auto& j) {
                 j["codecs"] = j["codec"];
                 j.erase("codec");
             },
             kind::format, "unknown field 'codecs'"},
            {"config E not divisible by K", [](auto& j) { j["config"]["embed_per_ngram"] = 66; }, kind::format,
             "'config': config: embed_per_ngram = 66"},
            {"config layer id not in layer_ids", [](auto& j) { j["config"]["layer_id"] = 9; }, kind::format,
             "layer_id 9 is not in layer_ids"},
            {"layer_id differs from the config's", [](auto& j) { j["layer_id"] = 3; }, kind::format,
             "'layer_id' = 3 differs"},
            {"a prime that is not the config's", [](auto& j) { j["primes"][0] = 1013; }, kind::format,
             "'primes' [0] = 1013"},
            {"offsets not the running sum", [](auto& j) { j["offsets"][1] = 0; }, kind::format, "'offsets' [1] = 0"},
            {"rows not the sum of the primes", [rows](auto& j) { j["rows"] = rows + 1; }, kind::format,
             "'rows' = " + std::to_string(rows + 1)},
            {"negative dim", [](auto& j) { j["dim"] = -16; }, kind::format, "'dim' must be non-negative"},
            {"row_bytes wrong for the codec", [](auto& j) { j["row_bytes"] = 60; }, kind::format, "'row_bytes' = 60"},
            {"unknown codec", [](auto& j) { j["codec"] = "f8"; }, kind::format, "'codec' = 'f8'"},
            {"no shards", [](auto& j) { j["shards"] = nlohmann::json::array(); }, kind::format,
             "'shards' must be a non-empty list"},
            {"a shard is a string", [](auto& j) { j["shards"][0] = "one.safetensors"; }, kind::format,
             "'shards[0]' must be an object"},
            {"a shard with an unknown field", [](auto& j) { j["shards"][0]["crc"] = 1; }, kind::format,
             "unknown field 'crc'"},
            {"shards not covering the table", [rows](auto& j) { j["shards"][0]["rows"] = rows - 1; }, kind::format,
             "cover " + std::to_string(rows - 1) + " rows, the table has " + std::to_string(rows)},
            {"a shard past the table", [rows](auto& j) { j["shards"][0]["rows"] = rows + 1; }, kind::format,
             "'shards[0].rows' = " + std::to_string(rows + 1) + " runs past"},
            {"shard rows that wrap 2^64",
             [](auto& j) {
                 j["shards"] = {{{"file", "a"},
                                 {"first_row", 0},
                                 {"rows", ~std::uint64_t{0} - 4},
                                 {"checksum", "0000000000000000"}},
                                {{"file", "b"},
                                 {"first_row", ~std::uint64_t{0} - 4},
                                 {"rows", 8921},
                                 {"checksum", "0000000000000000"}}};
             },
             kind::format, "runs past"},
            {"overlapping shards",
             [rows](auto& j) {
                 j["shards"] = {
                     {{"file", "a"}, {"first_row", 0}, {"rows", 100}, {"checksum", "0000000000000000"}},
                     {{"file", "b"}, {"first_row", 50}, {"rows", rows - 50}, {"checksum", "0000000000000000"}}};
             },
             kind::format, "'shards[1].first_row' = 50, expected 100"},
            {"an empty shard",
             [rows](auto& j) {
                 j["shards"] = {{{"file", "a"}, {"first_row", 0}, {"rows", 0}, {"checksum", "0000000000000000"}},
                                {{"file", "b"}, {"first_row", 0}, {"rows", rows}, {"checksum", "0000000000000000"}}};
             },
             kind::format, "'shards[0].rows' is 0"},
            {"two shards in one file",
             [rows](auto& j) {
                 j["shards"] = {
                     {{"file", "a"}, {"first_row", 0}, {"rows", 100}, {"checksum", "0000000000000000"}},
                     {{"file", "a"}, {"first_row", 100}, {"rows", rows - 100}, {"checksum", "0000000000000000"}}};
             },
             kind::format, "'shards[1].file' repeats shard 0's file"},
            {"a shard outside the directory", [](auto& j) { j["shards"][0]["file"] = "../x.safetensors"; },
             kind::format, "must be a plain file name"},
            {"a shard checksum that is not hex", [](auto& j) { j["shards"][0]["checksum"] = "12345"; }, kind::format,
             "'checksum' must be 16 hex digits"},
            {"vocabulary fields half set", [](auto& j) { j["vocab_checksum"] = nullptr; }, kind::format,
             "must be all set or all null"},
            {"V' above V", [](auto& j) { j["canonical_vocab_size"] = 601; }, kind::format,
             "'canonical_vocab_size' = 601 must be in [1, vocab_size = 600]"},
            {"multipliers that overflow m * V'", [](auto& j) { j["multipliers"][2] = std::int64_t{1} << 62; },
             kind::format, "multipliers[2] = " + std::to_string(std::int64_t{1} << 62)},
            {"too few multipliers",
             [](auto& j) {
                 j["multipliers"] = {1, 3};
             },
             kind::format, "2 given"},
            {"manifest_checksum not hex", [](auto& j) { j["manifest_checksum"] = 17; }, kind::format,
             "'manifest_checksum' must be a string"},
        };
        for (const auto& c : cases) {
            nlohmann::json j = base;
            c.edit(j);
            expect_rejected({c.label,
                             [j] { engram::table_manifest::from_json(j, "manifest m").validate("manifest m"); }, c.type,
                             c.fragment});
        }
    }

    SECTION("files: checksums, vocabulary and shard headers") {
        const fs::path t = dir / "t.safetensors";
        const auto fresh = [&](const fs::path& from) {
            std::vector<fs::path> old, sources;
            const std::string stem = from.stem().string();
            for (const auto& p : fs::directory_iterator(dir)) {
                const std::string name = p.path().filename().string();
                if (name.rfind("t.", 0) == 0) old.push_back(p.path());
                if (name.rfind(stem + ".", 0) == 0) sources.push_back(p.path());
            }
            for (const auto& p : old) fs::remove_all(p);
            for (const auto& p : sources) fs::copy_file(p, dir / ("t" + p.filename().string().substr(stem.size())));
            // Shard names in the manifest follow the copy.
            edit_metadata_json(t, "engram_table", [&](auto& j) {
                for (auto& s : j["shards"]) s["file"] = "t" + s["file"].template get<std::string>().substr(stem.size());
                j["manifest_checksum"] = engram::detail::hex64(engram::table_manifest::digest(j));
            });
        };
        const auto open = [&] { (void)engram::table_file::open(t); };
        const auto open_and_verify = [&] { (void)engram::table_file::open(t).verify(); };
        fresh(three);
        REQUIRE_NOTHROW(open_and_verify());

        struct file_case {
            std::string label;
            fs::path from;
            std::function<void()> corrupt;
            std::function<void()> load;
            kind type;
            std::string fragment;
        };
        const auto manifest_edit = [&](std::function<void(nlohmann::json&)> f) {
            return [&, f] { edit_metadata_json(t, "engram_table", f); };
        };
        const auto shard_edit = [&](std::function<void(nlohmann::json&)> f) {
            return [&, f] { edit_metadata_json(dir / "t.shard1.safetensors", "engram_table_shard", f); };
        };
        const auto flip = [&](const fs::path& p, std::uint64_t from_end) {
            return [p, from_end] {
                const std::uint64_t at = fs::file_size(p) - from_end;
                std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
                f.seekg(static_cast<std::streamoff>(at));
                char c = 0;
                f.read(&c, 1);
                c = static_cast<char>(c ^ 0x01);
                f.seekp(static_cast<std::streamoff>(at));
                f.write(&c, 1);
            };
        };
        const std::vector<file_case> cases = {
            {"an epsilon edited (valid on its own)", one,
             manifest_edit([](auto& j) { j["config"]["conv_norm_eps"] = 2e-5; }), open, kind::format,
             "the manifest hashes to"},
            {"the table id edited", one, manifest_edit([](auto& j) { j["table_id"] = "0123456789abcdef"; }), open,
             kind::format, "(the manifest text is corrupt)"},
            {"a row byte flipped", one, flip(t, 5), open_and_verify, kind::format, "content checksum mismatch"},
            {"the lookup edited", one,
             [&] {
                 engram::safetensors_writer w;
                 {
                     const auto f = engram::safetensors_file::open(t);
                     for (const auto& tensor : f.tensors()) {
                         if (tensor.name != "lookup") {
                             w.add(tensor);
                             continue;
                         }
                         auto v = tensor.to_vector<std::int64_t>();
                         v[10] = v[10] == 0 ? 1 : 0;
                         w.add("lookup", tensor.shape, v);
                     }
                     for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
                 }
                 w.write(t);
             },
             open, kind::format, "(the vocabulary is corrupt)"},
            {"truncated", one, [&] { fs::resize_file(t, fs::file_size(t) - 100); }, open, kind::format, "truncated"},
            {"a shard of another codec", three, shard_edit([](auto& j) { j["codec"] = "fp8"; }), open, kind::format,
             "'codec' is 'fp8', the manifest's is 'int8'"},
            {"a shard of another width", three, shard_edit([](auto& j) { j["dim"] = 32; }), open, kind::format,
             "'dim' is 32"},
            {"a shard of another shard count", three, shard_edit([](auto& j) { j["shards"] = 4; }), open, kind::format,
             "'shards' is 4, the manifest lists 3"},
            {"a shard of another version", three, shard_edit([](auto& j) { j["version"] = 7; }), open, kind::format,
             "'version' is 7"},
            {"a shard with an unknown field", three, shard_edit([](auto& j) { j["extra"] = true; }), open, kind::format,
             "unknown field 'extra'"},
            {"a shard of another table", three, shard_edit([](auto& j) { j["table_id"] = "00000000deadbeef"; }), open,
             kind::format, "belongs to another table"},
            {"a shard's index", three, shard_edit([](auto& j) { j["index"] = 2; }), open, kind::format,
             "holds shard 2"},
            {"a missing shard", three, [&] { fs::remove(dir / "t.shard2.safetensors"); }, open, kind::io,
             "t.shard2.safetensors"},
            {"a shard that is a directory", three,
             [&] {
                 fs::remove(dir / "t.shard0.safetensors");
                 fs::create_directory(dir / "t.shard0.safetensors");
             },
             open, kind::io, "is a directory"},
        };
        for (const auto& c : cases) {
            fresh(c.from);
            c.corrupt();
            expect_rejected({c.label, c.load, c.type, c.fragment});
        }
        fs::remove_all(dir / "t.shard0.safetensors");
    }
}
