#pragma once
// SPDX-License-Identifier: MIT
// The decoders of Hugging Face tokenizer.json files (token strings -> text), step for step as the
// tokenizers library runs them: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip,
// WordPiece, BPEDecoder, CTC and any Sequence of them.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/vocab/json_access.hpp>
#include <engram/vocab/utf8.hpp>

#include <nlohmann/json.hpp> // for json (the decoder's configuration)

#include <array>       // for array
#include <cstddef>     // for size_t
#include <cstdint>     // for int16_t
#include <span>        // for span
#include <string>      // for string
#include <string_view> // for string_view
#include <utility>     // for move, pair
#include <variant>     // for variant, visit
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail::tokenizer_json {

/// The GPT-2 byte-level alphabet: every byte is shown as one printable code point. Bytes that
/// are printable in Latin-1 (0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF) stand for themselves; the other
/// 68 bytes, in increasing order, are shown as U+0100, U+0101, ..., U+0143.
struct byte_level_alphabet {
    static constexpr std::size_t code_points = 0x144; // every code point of the alphabet is below
    std::array<std::int16_t, code_points> byte_of{};  // code point -> byte, or -1 if not in the alphabet
};

constexpr bool is_printable_latin1(unsigned b) noexcept {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

constexpr byte_level_alphabet make_byte_level_alphabet() noexcept {
    byte_level_alphabet a;
    for (auto& b : a.byte_of) b = -1;
    unsigned next = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
        const unsigned cp = is_printable_latin1(b) ? b : next++;
        a.byte_of[cp] = static_cast<std::int16_t>(b);
    }
    return a;
}

inline constexpr byte_level_alphabet byte_level = make_byte_level_alphabet();
static_assert(byte_level.byte_of[0x120] == 0x20, "U+0120 'G with dot' is the space byte");
static_assert(byte_level.byte_of[0x10A] == 0x0A, "U+010A 'C with dot' is the newline byte");
static_assert(byte_level.byte_of[0x143] == 0xAD, "the last shifted byte is the soft hyphen");

/// Appends the bytes a byte-level token stands for: each character's byte, or, if some character
/// is not in the alphabet, the token's own bytes.
inline void append_byte_level(std::string& bytes, std::string_view token) {
    const std::size_t start = bytes.size();
    for (std::size_t i = 0; i < token.size();) {
        const auto step = next_utf8(token, i);
        if (!step.valid || step.code_point >= byte_level.code_points || byte_level.byte_of[step.code_point] < 0) {
            bytes.resize(start);
            bytes.append(token);
            return;
        }
        bytes.push_back(static_cast<char>(static_cast<unsigned char>(byte_level.byte_of[step.code_point])));
        i += step.length;
    }
}

/// Rust's `str::replace`: every non-overlapping match of `from`, left to right, becomes `to`; an
/// empty `from` matches before every character and at the end ("ab" -> "-a-b-").
inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    if (from.empty()) {
        out.reserve(s.size() + to.size() * (s.size() + 1));
        for (std::size_t i = 0; i < s.size();) {
            const std::size_t n = next_utf8(s, i).length;
            out.append(to);
            out.append(s.substr(i, n));
            i += n;
        }
        out.append(to);
        return out;
    }
    std::size_t at = 0;
    for (std::size_t hit; (hit = s.find(from, at)) != std::string_view::npos; at = hit + from.size()) {
        out.append(s.substr(at, hit - at));
        out.append(to);
    }
    out.append(s.substr(at));
    return out;
}

/// The WordPiece decoder's `cleanup`: spaces before punctuation and English contractions removed.
inline std::string wordpiece_cleanup(std::string s) {
    static constexpr std::array<std::pair<std::string_view, std::string_view>, 11> rules{{{" .", "."},
                                                                                          {" ?", "?"},
                                                                                          {" !", "!"},
                                                                                          {" ,", ","},
                                                                                          {" ' ", "'"},
                                                                                          {" n't", "n't"},
                                                                                          {" 'm", "'m"},
                                                                                          {" do not", " don't"},
                                                                                          {" 's", "'s"},
                                                                                          {" 've", "'ve"},
                                                                                          {" 're", "'re"}}};
    for (const auto& [from, to] : rules)
        if (s.find(from) != std::string::npos) s = replace_all(s, from, to);
    return s;
}

/// The byte of a ByteFallback token `<0xHH>`, or -1. As in the library, HH is read by Rust's
/// `u8::from_str_radix(HH, 16)`, which takes either case and a leading '+' ("<0x+F>" is 0x0F).
inline int fallback_byte(std::string_view t) noexcept {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    const auto hex = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    const int hi = hex(t[3]), lo = hex(t[4]);
    if (t[3] == '+') return lo; // "+H": one digit after the sign (-1 if it is none)
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

} // namespace detail::tokenizer_json

namespace tokenizer {

/// @brief A tokenizer.json `decoder`: turns token strings into text exactly as the Hugging Face
///        tokenizers library (0.22) does, step for step.
///
/// Supported steps: `ByteLevel` (GPT-2 byte alphabet back to bytes, read as UTF-8 with U+FFFD
/// for ill-formed parts), `Metaspace` (replacement -> space; with prepend_scheme "always" or
/// "first", every replacement character of the first token is dropped, as in the library),
/// `Replace` (a string pattern), `ByteFallback` (`<0xHH>` tokens to bytes; a run of them that is
/// not UTF-8 becomes one U+FFFD per byte), `Fuse`, `Strip` (content, start, stop), `WordPiece`
/// (prefix, cleanup), `BPEDecoder` (suffix), `CTC` and `Sequence`. A default-constructed decoder
/// is the library's behaviour without one: the tokens joined with spaces.
class decoder {
public:
    /// No decoder: `decode` joins the tokens with single spaces.
    decoder() = default;

    /// @brief The decoder described by `spec` (the `decoder` field; null means none).
    /// @param source names the file in messages
    /// @throws format_error for a missing or ill-typed field (the message names it)
    /// @throws unsupported_error for a step type engram does not run, or a Replace with a Regex
    ///         pattern (the message names the step)
    static decoder from_json(const nlohmann::json& spec, const std::string& source = "tokenizer.json") {
        decoder d;
        if (spec.is_null()) return d;
        d.present_ = true;
        d.parse(spec, "decoder", source, 0);
        return d;
    }

    /// The GPT-2 style `ByteLevel` decoder alone.
    static decoder byte_level() {
        decoder d;
        d.present_ = true;
        d.steps_.emplace_back(byte_level_step{});
        d.names_.emplace_back("ByteLevel");
        return d;
    }

    /// @brief The text of a token sequence (the library's `decoder.decode(tokens)`).
    [[nodiscard]] std::string decode(std::span<const std::string> tokens) const {
        std::vector<std::string> work(tokens.begin(), tokens.end());
        return finish(work);
    }
    /// @brief The text of one token (the library's `decode([id])` for the token of `id`).
    [[nodiscard]] std::string decode(std::string_view token) const {
        std::vector<std::string> work{std::string(token)};
        return finish(work);
    }
    /// @brief `decode` with the caller's buffer: `tokens` is consumed (the decode chain runs in
    ///        it) and the text returned; reusing one vector saves allocations over many calls.
    [[nodiscard]] std::string finish(std::vector<std::string>& tokens) const {
        if (!present_) return join(tokens, " ");
        decode_chain(tokens);
        return join(tokens, "");
    }
    /// @brief The library's `decode_chain`: runs every step on `tokens` in place.
    void decode_chain(std::vector<std::string>& tokens) const {
        for (const auto& s : steps_) std::visit([&](const auto& step) { step.run(tokens); }, s);
    }

    /// Whether the tokenizer has a decoder at all.
    [[nodiscard]] bool present() const noexcept { return present_; }
    /// The steps, for messages and reports: "ByteLevel", "Replace, ByteFallback, Fuse, Strip", or
    /// "none".
    [[nodiscard]] std::string describe() const {
        if (!present_) return "none";
        std::string out;
        for (const auto& n : names_) out += (out.empty() ? "" : ", ") + n;
        return out.empty() ? "Sequence[]" : out;
    }

private:
    using json = nlohmann::json;
    using tokens_type = std::vector<std::string>;

    struct byte_level_step {
        void run(tokens_type& tokens) const {
            std::string bytes;
            for (const auto& t : tokens) detail::tokenizer_json::append_byte_level(bytes, t);
            tokens.assign(1, detail::tokenizer_json::utf8_lossy(bytes));
        }
    };
    struct metaspace_step {
        char32_t replacement;
        bool drop_in_first; // prepend_scheme "always" or "first"
        void run(tokens_type& tokens) const {
            for (std::size_t i = 0; i < tokens.size(); ++i) {
                const std::string& t = tokens[i];
                std::string out;
                out.reserve(t.size());
                for (std::size_t k = 0; k < t.size();) {
                    const auto step = detail::tokenizer_json::next_utf8(t, k);
                    if (step.valid && step.code_point == replacement) {
                        if (!(i == 0 && drop_in_first)) out.push_back(' ');
                    } else {
                        out.append(t, k, step.length);
                    }
                    k += step.length;
                }
                tokens[i] = std::move(out);
            }
        }
    };
    struct replace_step {
        std::string pattern, content;
        void run(tokens_type& tokens) const {
            // The library matches the escaped string as a regex: an empty pattern matches at
            // every character boundary, but an empty token stays empty.
            for (auto& t : tokens)
                if (!t.empty()) t = detail::tokenizer_json::replace_all(t, pattern, content);
        }
    };
    struct byte_fallback_step {
        void run(tokens_type& tokens) const {
            tokens_type out;
            out.reserve(tokens.size());
            std::string bytes;
            const auto flush = [&] {
                if (bytes.empty()) return;
                if (detail::tokenizer_json::is_valid_utf8(bytes))
                    out.push_back(bytes);
                else
                    for (std::size_t k = 0; k < bytes.size(); ++k)
                        out.emplace_back(detail::tokenizer_json::replacement_character);
                bytes.clear();
            };
            for (auto& t : tokens) {
                const int b = detail::tokenizer_json::fallback_byte(t);
                if (b >= 0) {
                    bytes.push_back(static_cast<char>(static_cast<unsigned char>(b)));
                    continue;
                }
                flush();
                out.push_back(std::move(t));
            }
            flush();
            tokens = std::move(out);
        }
    };
    struct fuse_step {
        void run(tokens_type& tokens) const { tokens.assign(1, join(tokens, "")); }
    };
    struct strip_step {
        char32_t content;
        std::size_t start, stop;
        void run(tokens_type& tokens) const {
            std::vector<std::size_t> cut; // byte offset of each character, and the end
            for (auto& t : tokens) {
                cut.clear();
                for (std::size_t k = 0; k < t.size();) {
                    cut.push_back(k);
                    k += detail::tokenizer_json::next_utf8(t, k).length;
                }
                const std::size_t chars = cut.size();
                cut.push_back(t.size());
                const auto is_content = [&](std::size_t c) {
                    const auto step = detail::tokenizer_json::next_utf8(t, cut[c]);
                    return step.valid && step.code_point == content;
                };
                std::size_t first = 0, last = chars;
                while (first < start && first < chars && is_content(first)) ++first;
                for (std::size_t n = 0; n < stop && last > 0 && is_content(last - 1); ++n) --last;
                // Where the two cuts cross (a token of only `content` characters with both start
                // and stop set) the library panics; the text is empty here.
                t = first >= last ? std::string() : t.substr(cut[first], cut[last] - cut[first]);
            }
        }
    };
    struct wordpiece_step {
        std::string prefix;
        bool cleanup;
        void run(tokens_type& tokens) const {
            for (std::size_t i = 0; i < tokens.size(); ++i) {
                std::string& t = tokens[i];
                if (i != 0) {
                    if (t.compare(0, prefix.size(), prefix) == 0)
                        t.erase(0, prefix.size());
                    else
                        t.insert(0, 1, ' ');
                }
                if (cleanup) t = detail::tokenizer_json::wordpiece_cleanup(std::move(t));
            }
        }
    };
    struct bpe_suffix_step {
        std::string suffix;
        void run(tokens_type& tokens) const {
            for (std::size_t i = 0; i < tokens.size(); ++i)
                tokens[i] = detail::tokenizer_json::replace_all(tokens[i], suffix, i + 1 == tokens.size() ? "" : " ");
        }
    };
    struct ctc_step {
        std::string pad_token, word_delimiter_token;
        bool cleanup;
        void run(tokens_type& tokens) const {
            tokens_type out;
            for (std::size_t i = 0; i < tokens.size(); ++i) {
                if (i > 0 && tokens[i] == tokens[i - 1]) continue; // consecutive repeats count once
                std::string t = detail::tokenizer_json::replace_all(tokens[i], pad_token, "");
                if (cleanup)
                    t = detail::tokenizer_json::replace_all(detail::tokenizer_json::wordpiece_cleanup(std::move(t)),
                                                            word_delimiter_token, " ");
                if (!t.empty()) out.push_back(std::move(t));
            }
            tokens = std::move(out);
        }
    };
    using step = std::variant<byte_level_step, metaspace_step, replace_step, byte_fallback_step, fuse_step, strip_step,
                              wordpiece_step, bpe_suffix_step, ctc_step>;

    static std::string join(const tokens_type& tokens, std::string_view separator) {
        std::string out;
        for (std::size_t i = 0; i < tokens.size(); ++i) {
            if (i > 0) out.append(separator);
            out.append(tokens[i]);
        }
        return out;
    }

    /// Nested Sequences run their steps in order, so they are flattened into one list.
    void parse(const json& spec, const std::string& where, const std::string& source, int depth) {
        using namespace detail::tokenizer_json;
        constexpr int max_depth = 64;
        if (depth > max_depth)
            throw format_error(source + ": " + where + ": Sequence decoders nested deeper than " +
                               std::to_string(max_depth));
        if (!spec.is_object())
            throw format_error(source + ": field " + where + " is " + spec.type_name() + ", expected an object");
        const std::string& type = string_field(spec, "type", where + ".type", source);
        const auto at = [&](const char* key) { return where + "." + key; };
        if (type == "Sequence") {
            const json& list = field(spec, "decoders", json::value_t::array, at("decoders"), source);
            for (std::size_t i = 0; i < list.size(); ++i)
                parse(list[i], where + ".decoders[" + std::to_string(i) + "]", source, depth + 1);
            return;
        }
        if (type == "ByteLevel") {
            // add_prefix_space, trim_offsets and use_regex matter only when encoding.
            steps_.emplace_back(byte_level_step{});
        } else if (type == "Metaspace") {
            const char32_t replacement = char_field(spec, "replacement", at("replacement"), source);
            std::string scheme = "always";
            if (const json* s =
                    optional_field(spec, "prepend_scheme", json::value_t::string, at("prepend_scheme"), source))
                scheme = s->get<std::string>();
            if (scheme != "always" && scheme != "first" && scheme != "never")
                throw format_error(source + ": field " + at("prepend_scheme") + " is " + quote_for_message(scheme) +
                                   ", expected \"always\", \"first\" or \"never\"");
            // Older files say add_prefix_space instead; false means "never" (the library refuses
            // it beside an explicit prepend_scheme other than "never").
            if (const json* a =
                    optional_field(spec, "add_prefix_space", json::value_t::boolean, at("add_prefix_space"), source);
                a != nullptr && !a->get<bool>()) {
                if (spec.contains("prepend_scheme") && scheme != "never")
                    throw format_error(source + ": " + where + ": add_prefix_space false contradicts prepend_scheme " +
                                       quote_for_message(scheme));
                scheme = "never";
            }
            optional_field(spec, "split", json::value_t::boolean, at("split"), source); // encoding only
            steps_.emplace_back(metaspace_step{replacement, scheme != "never"});
        } else if (type == "Replace") {
            const json& pattern = field(spec, "pattern", json::value_t::object, at("pattern"), source);
            if (pattern.contains("Regex"))
                throw unsupported_error(
                    source + ": " + where +
                    ": decoder Replace with a Regex pattern is not supported (String patterns are)");
            steps_.emplace_back(replace_step{string_field(pattern, "String", at("pattern.String"), source),
                                             string_field(spec, "content", at("content"), source)});
        } else if (type == "ByteFallback") {
            steps_.emplace_back(byte_fallback_step{});
        } else if (type == "Fuse") {
            steps_.emplace_back(fuse_step{});
        } else if (type == "Strip") {
            steps_.emplace_back(strip_step{char_field(spec, "content", at("content"), source),
                                           count_field(spec, "start", at("start"), source),
                                           count_field(spec, "stop", at("stop"), source)});
        } else if (type == "WordPiece") {
            steps_.emplace_back(wordpiece_step{string_field(spec, "prefix", at("prefix"), source),
                                               bool_field(spec, "cleanup", at("cleanup"), source)});
        } else if (type == "BPEDecoder") {
            steps_.emplace_back(bpe_suffix_step{string_field(spec, "suffix", at("suffix"), source)});
        } else if (type == "CTC") {
            steps_.emplace_back(ctc_step{string_field(spec, "pad_token", at("pad_token"), source),
                                         string_field(spec, "word_delimiter_token", at("word_delimiter_token"), source),
                                         bool_field(spec, "cleanup", at("cleanup"), source)});
        } else {
            throw unsupported_error(source + ": " + where + ": decoder type " + quote_for_message(type) +
                                    " is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, "
                                    "Fuse, Strip, WordPiece, BPEDecoder, CTC and Sequence)");
        }
        names_.push_back(type);
    }

    std::vector<step> steps_;
    std::vector<std::string> names_;
    bool present_ = false;
};

/// @brief Decodes one token string of a byte-level BPE vocabulary the way the Hugging Face
///        `ByteLevel` decoder does.
///
/// Each character is mapped back to its byte through the GPT-2 byte-level alphabet; if some
/// character is not in the alphabet (as in `"<｜User｜>"`), the token's own UTF-8 bytes are used
/// unchanged. The bytes are then read as UTF-8, each maximal ill-formed subpart replaced by
/// U+FFFD, so the result is always well-formed UTF-8 (`"Ġhello"` -> `" hello"`, `"ĊĊ"` -> `"\n\n"`).
inline std::string decode_byte_level(std::string_view token) {
    std::string bytes;
    bytes.reserve(token.size());
    detail::tokenizer_json::append_byte_level(bytes, token);
    return detail::tokenizer_json::utf8_lossy(bytes);
}

} // namespace tokenizer

ENGRAM_END_NAMESPACE
