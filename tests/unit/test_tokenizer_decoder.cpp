// SPDX-License-Identifier: MIT
// tokenizer.json decoders against the Hugging Face tokenizers library: every step and
// composition in tests/data/tokenizers/decoder_cases.json (token sequences and the text the
// library's decode gives them, made by scripts/make-tokenizer-goldens.js), the cases where the
// library panics, and the errors on bad decoder configurations.

#include "support/catch.hpp"
#include "support/thrown.hpp"

#include <engram/vocab/decoder.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace {

using engram_test::contains;
using engram_test::thrown_message;

using engram::tokenizer::decoder;
using json = nlohmann::json;
namespace fs = std::filesystem;

json read_json(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    REQUIRE(in);
    return json::parse(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
}

decoder make(const std::string& spec) { return decoder::from_json(json::parse(spec)); }

std::string decode(const decoder& d, std::vector<std::string> tokens) { return d.decode(tokens); }

} // namespace

TEST_CASE("decoders give the library's text for every golden sequence", "[tokenizer][decoder][golden]") {
    const json cases = read_json(fs::path(ENGRAM_TEST_DATA_DIR) / "tokenizers" / "decoder_cases.json");
    REQUIRE(cases.size() >= 20);
    std::size_t sequences = 0;
    for (const auto& c : cases) {
        const decoder d = decoder::from_json(c.at("decoder"));
        for (const auto& s : c.at("sequences")) {
            const auto tokens = s.at("tokens").get<std::vector<std::string>>();
            INFO(c.at("name").get<std::string>() << ": " << s.at("tokens").dump());
            CHECK(d.decode(tokens) == s.at("text").get<std::string>());
            if (tokens.size() == 1) CHECK(d.decode(std::string_view(tokens[0])) == s.at("text").get<std::string>());
            ++sequences;
        }
    }
    CHECK(sequences >= 60);
}

TEST_CASE("decoder steps, one by one", "[tokenizer][decoder]") {
    SECTION("Metaspace drops every meta space of the first token unless prepend_scheme is never") {
        const auto d = make(R"({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"})");
        CHECK(decode(d, {"\u2581a\u2581b\u2581"}) == "ab");
        CHECK(decode(d, {"x", "\u2581a\u2581b"}) == "x a b");
        // Older files: add_prefix_space false stands for "never".
        const auto legacy = make(R"({"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": false})");
        CHECK(decode(legacy, {"\u2581a"}) == " a");
    }
    SECTION("ByteFallback reads <0xHH> as Rust's from_str_radix does") {
        const auto d = make(R"({"type": "ByteFallback"})");
        CHECK(decode(d, {"<0x41>", "<0x42>"}) == "AB");
        CHECK(decode(d, {"<0x+A>"}) == "\n");
        CHECK(decode(d, {"<0x+>>"}) == "<0x+>>");
        CHECK(decode(d, {"<0x\xC3\xA9>"}) == "<0x\xC3\xA9>");                 // "é" is not a hex digit
        CHECK(decode(d, {"<0xF0>", "<0x9F>"}) == "\xEF\xBF\xBD\xEF\xBF\xBD"); // one U+FFFD per byte
        CHECK(decode(d, {}).empty());
    }
    SECTION("Strip where the library panics: the text is empty") {
        const auto d = make(R"({"type": "Strip", "content": " ", "start": 1, "stop": 1})");
        CHECK(decode(d, {" "}).empty());
        CHECK(decode(d, {""}).empty());
        const auto long_stop = make(R"({"type": "Strip", "content": " ", "start": 0, "stop": 5})");
        CHECK(decode(long_stop, {"  "}).empty());
        CHECK(decode(long_stop, {"a  "}) == "a");
        const auto multibyte = make(R"({"type": "Strip", "content": "\u2581", "start": 2, "stop": 1})");
        CHECK(decode(multibyte, {"\u2581\u2581\u2581a\u2581\u2581"}) == "\u2581a\u2581");
    }
    SECTION("Replace with an empty pattern puts the content around every character") {
        const auto d = make(R"({"type": "Replace", "pattern": {"String": ""}, "content": "."})");
        CHECK(decode(d, {"\xC3\xA9z"}) == ".\xC3\xA9.z.");
        CHECK(decode(d, {""}).empty());
    }
    SECTION("no decoder joins the tokens with spaces") {
        const decoder none;
        CHECK_FALSE(none.present());
        CHECK(decode(none, {"a", "\u2581b"}) == "a \u2581b");
        CHECK(decoder::from_json(json(nullptr)).describe() == "none");
    }
    SECTION("describe names the steps") {
        const auto d = make(R"({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "a"},
            "content": "b"}, {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}]})");
        CHECK(d.describe() == "Replace, ByteFallback, Fuse");
        CHECK(decoder::byte_level().describe() == "ByteLevel");
        CHECK(make(R"({"type": "Sequence", "decoders": []})").describe() == "Sequence[]");
    }
}

TEST_CASE("bad decoder configurations name the field", "[tokenizer][decoder]") {
    using engram::format_error;
    using engram::unsupported_error;
    const auto format_message = [](const std::string& spec) {
        return thrown_message<format_error>([&] { make(spec); });
    };
    const auto unsupported_message = [](const std::string& spec) {
        return thrown_message<unsupported_error>([&] { make(spec); });
    };
    CHECK(contains(format_message("[]"), "decoder is array"));
    CHECK(contains(format_message("{}"), "decoder.type"));
    CHECK(contains(format_message(R"({"type": 3})"), "decoder.type"));
    CHECK(contains(format_message(R"({"type": "Metaspace"})"), "decoder.replacement"));
    CHECK(contains(format_message(R"({"type": "Metaspace", "replacement": "ab"})"), "single character"));
    CHECK(contains(format_message(R"({"type": "Metaspace", "replacement": ""})"), "single character"));
    CHECK(contains(format_message(R"({"type": "Metaspace", "replacement": "_", "prepend_scheme": "sometimes"})"),
                   "\"sometimes\""));
    CHECK(contains(format_message(R"({"type": "Metaspace", "replacement": "_", "prepend_scheme": "always",
                                      "add_prefix_space": false})"),
                   "contradicts"));
    CHECK(contains(format_message(R"({"type": "Strip", "content": " ", "start": 1})"), "decoder.stop"));
    CHECK(contains(format_message(R"({"type": "Strip", "content": " ", "start": -1, "stop": 0})"), "negative"));
    CHECK(contains(format_message(R"({"type": "Strip", "content": " ", "start": 1.5, "stop": 0})"), "decoder.start"));
    CHECK(contains(format_message(R"({"type": "Replace", "pattern": "a", "content": "b"})"), "decoder.pattern"));
    CHECK(contains(format_message(R"({"type": "Replace", "pattern": {"String": "a"}})"), "decoder.content"));
    CHECK(contains(format_message(R"({"type": "WordPiece", "prefix": "##"})"), "decoder.cleanup"));
    CHECK(contains(format_message(R"({"type": "BPEDecoder"})"), "decoder.suffix"));
    CHECK(contains(format_message(R"({"type": "CTC", "pad_token": "<pad>", "cleanup": true})"),
                   "decoder.word_delimiter_token"));
    CHECK(contains(format_message(R"({"type": "Sequence"})"), "decoder.decoders"));
    CHECK(
        contains(format_message(R"({"type": "Sequence", "decoders": [{"type": "Fuse"}, 7]})"), "decoder.decoders[1]"));
    std::string deep = R"({"type": "Fuse"})";
    for (int i = 0; i < 100; ++i) deep = R"({"type": "Sequence", "decoders": [)" + deep + "]}";
    CHECK(contains(format_message(deep), "nested deeper"));

    // What engram does not run is unsupported, and the message names the step.
    CHECK(contains(unsupported_message(R"({"type": "Replace", "pattern": {"Regex": "a+"}, "content": "b"})"), "Regex"));
    const std::string unknown =
        unsupported_message(R"({"type": "Sequence", "decoders": [{"type": "Fuse"}, {"type": "Telepathy"}]})");
    CHECK(contains(unknown, "decoder.decoders[1]"));
    CHECK(contains(unknown, "\"Telepathy\""));
}
