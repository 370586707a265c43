#pragma once
// SPDX-License-Identifier: MIT
// Canonical vocabulary tables (spec section 1) from the tokenizer.json of byte-level BPE tokenizers.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <nlohmann/json.hpp> // for json (parsing tokenizer.json)
#include <utf8proc.h>        // for utf8proc_decompose, utf8proc_category, utf8proc_tolower

#include <array>         // for array
#include <cerrno>        // for errno
#include <cstddef>       // for size_t
#include <cstdint>       // for uint8_t, int16_t, uint64_t
#include <filesystem>    // for path, status
#include <fstream>       // for ifstream
#include <string>        // for string
#include <string_view>   // for string_view
#include <system_error>  // for error_code, generic_category
#include <unordered_map> // for unordered_map (key -> canonical id)
#include <utility>       // for move, pair
#include <vector>        // for vector

ENGRAM_BEGIN_NAMESPACE

namespace tokenizer {

/// @brief The largest vocabulary size (max token id + 1) accepted from a tokenizer.json.
///
/// 2^24 is 64 times the largest vocabularies in use (about 262k) and bounds the memory of one
/// table to a few hundred MB, so a stray huge id is reported instead of exhausting memory.
inline constexpr std::size_t max_vocab_size = std::size_t{1} << 24;

} // namespace tokenizer

namespace detail::tokenizer_json {

inline constexpr std::string_view replacement_character = "\xEF\xBF\xBD"; // U+FFFD in UTF-8

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

/// One step of UTF-8 decoding: a well-formed sequence (`valid`, its code point and length), or
/// the maximal ill-formed subpart to replace with one U+FFFD (Unicode's "best practice", which
/// Rust's from_utf8_lossy and the WHATWG decoder follow).
struct utf8_step {
    std::size_t length;
    char32_t code_point;
    bool valid;
};

inline utf8_step next_utf8(std::string_view s, std::size_t i) noexcept {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned b0 = byte(i);
    if (b0 < 0x80) return {1, b0, true};
    std::size_t need = 0;
    unsigned lo = 0x80, hi = 0xBF; // allowed range of the second byte
    char32_t cp = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp = b0 & 0x1Fu;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp = b0 & 0x0Fu;
        if (b0 == 0xE0)
            lo = 0xA0; // no overlong forms
        else if (b0 == 0xED)
            hi = 0x9F; // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp = b0 & 0x07u;
        if (b0 == 0xF0)
            lo = 0x90; // no overlong forms
        else if (b0 == 0xF4)
            hi = 0x8F; // nothing above U+10FFFF
    } else {
        return {1, 0, false}; // a lone continuation byte, C0, C1 or F5-FF
    }
    for (std::size_t k = 1; k <= need; ++k) {
        if (i + k >= s.size()) return {k, 0, false};
        const unsigned b = byte(i + k);
        const unsigned min = k == 1 ? lo : 0x80u, max = k == 1 ? hi : 0xBFu;
        if (b < min || b > max) return {k, 0, false};
        cp = (cp << 6) | (b & 0x3Fu);
    }
    return {need + 1, cp, true};
}

inline void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

/// Bytes -> valid UTF-8, each maximal ill-formed subpart replaced by U+FFFD.
inline std::string utf8_lossy(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    for (std::size_t i = 0; i < bytes.size();) {
        const utf8_step step = next_utf8(bytes, i);
        if (step.valid)
            out.append(bytes.substr(i, step.length));
        else
            out.append(replacement_character);
        i += step.length;
    }
    return out;
}

/// Unicode's White_Space property (what Rust's char::is_whitespace tests).
constexpr bool is_white_space(char32_t c) noexcept {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/// Computes normalisation keys, reusing its buffers from one token to the next.
class key_builder {
public:
    /// Steps 2-3 of spec section 1; see engram::tokenizer::canonical_key.
    std::string operator()(std::string_view text, std::string_view raw_token) {
        // Ill-formed UTF-8 would have been replaced by U+FFFD when the token was decoded, so it
        // gets the same treatment as text that contains U+FFFD: the raw token is the key.
        if (text.find(replacement_character) != std::string_view::npos || !decompose(text))
            return std::string(raw_token);

        // In one pass over the decomposition: drop every combining mark (general category Mn,
        // Mc, Me), lowercase each character on its own, fold runs of [ \t\r\n] into one space.
        folded_.clear();
        for (const utf8proc_int32_t c : decomposed_) {
            const utf8proc_category_t category = utf8proc_category(c);
            if (category == UTF8PROC_CATEGORY_MN || category == UTF8PROC_CATEGORY_MC ||
                category == UTF8PROC_CATEGORY_ME)
                continue;
            if (c == 0x0130) {
                // The only unconditional multi-character lowercase mapping (SpecialCasing.txt):
                // utf8proc_tolower gives the simple mapping, Rust's char::to_lowercase the full one.
                // (NFKD has already split U+0130 into I + U+0307, so this is for completeness.)
                folded_.push_back(U'i');
                folded_.push_back(U'\u0307');
                continue;
            }
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
                if (folded_.empty() || folded_.back() != U' ') folded_.push_back(U' ');
                continue;
            }
            // A space can only come from the run above: no character lowercases to one.
            folded_.push_back(static_cast<char32_t>(utf8proc_tolower(c)));
        }

        std::size_t first = 0, last = folded_.size();
        if (!(folded_.size() == 1 && folded_[0] == U' ')) { // a lone space stays a space
            while (first < last && is_white_space(folded_[first])) ++first;
            while (last > first && is_white_space(folded_[last - 1])) --last;
        }
        if (first == last) return std::string(text);
        std::string key;
        key.reserve(last - first);
        for (std::size_t i = first; i < last; ++i) append_utf8(key, folded_[i]);
        return key;
    }

private:
    /// NFKC followed by NFD is NFKD: NFKC(x) is the canonical composition of NFKD(x), and the
    /// canonical decomposition of that is NFKD(x) again, which is already canonically ordered.
    /// Returns false if `text` is not well-formed UTF-8.
    bool decompose(std::string_view text) {
        constexpr auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
        const auto* data = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
        const auto length = static_cast<utf8proc_ssize_t>(text.size());
        // Most text decomposes into at most one code point per byte; retry once if not.
        if (decomposed_.size() < text.size() + 1) decomposed_.resize(text.size() + 1);
        for (int attempt = 0; attempt < 2; ++attempt) {
            const auto capacity = static_cast<utf8proc_ssize_t>(decomposed_.size());
            const utf8proc_ssize_t n = utf8proc_decompose(data, length, decomposed_.data(), capacity, options);
            if (n == UTF8PROC_ERROR_INVALIDUTF8) return false;
            if (n < 0) throw error(std::string("Unicode normalisation failed: ") + utf8proc_errmsg(n));
            if (n <= capacity) {
                decomposed_.resize(static_cast<std::size_t>(n));
                return true;
            }
            decomposed_.resize(static_cast<std::size_t>(n)); // the size it needs; try again
        }
        throw error("Unicode normalisation failed: the decomposition changed size between two calls");
    }

    std::vector<utf8proc_int32_t> decomposed_;
    std::vector<char32_t> folded_;
};

/// A token string quoted for an error message: control characters escaped, long ones cut.
inline std::string quote_for_message(std::string_view s) {
    constexpr std::size_t max_bytes = 48;
    std::string out = "\"";
    std::size_t i = 0;
    for (; i < s.size() && i < max_bytes; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') {
            constexpr char hex[] = "0123456789abcdef";
            out += "\\x";
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 0xF]);
        } else {
            out.push_back(static_cast<char>(c));
        }
    }
    if (i < s.size()) {
        // Do not leave half a UTF-8 sequence: drop trailing continuation bytes and their lead.
        while (out.size() > 1 && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
        if (out.size() > 1 && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
        out += "...";
    }
    out += "\"";
    return out;
}

} // namespace detail::tokenizer_json

namespace tokenizer {

/// @brief Decodes one token string of a byte-level BPE vocabulary the way the Hugging Face
///        `ByteLevel` decoder does.
///
/// Each character is mapped back to its byte through the GPT-2 byte-level alphabet; if some
/// character is not in the alphabet (as in `"<｜User｜>"`), the token's own UTF-8 bytes are used
/// unchanged. The bytes are then read as UTF-8, each maximal ill-formed subpart replaced by
/// U+FFFD, so the result is always well-formed UTF-8 (`"Ġhello"` -> `" hello"`, `"ĊĊ"` -> `"\n\n"`).
inline std::string decode_byte_level(std::string_view token) {
    using detail::tokenizer_json::byte_level;
    std::string bytes;
    bytes.reserve(token.size());
    for (std::size_t i = 0; i < token.size();) {
        const auto step = detail::tokenizer_json::next_utf8(token, i);
        if (!step.valid || step.code_point >= byte_level.code_points || byte_level.byte_of[step.code_point] < 0)
            return detail::tokenizer_json::utf8_lossy(token);
        bytes.push_back(static_cast<char>(static_cast<unsigned char>(byte_level.byte_of[step.code_point])));
        i += step.length;
    }
    return detail::tokenizer_json::utf8_lossy(bytes);
}

/// @brief The key under which a token is folded (spec section 1, steps 2 and 3).
///
/// If `text` contains U+FFFD (or is not well-formed UTF-8) the key is `raw_token`, so partial
/// UTF-8 tokens never merge with anything. Otherwise `text` is normalised: NFKC, NFD, combining
/// marks (Mn, Mc, Me) removed, each character lowercased with the full Unicode mapping (no
/// final-sigma rule), runs of `[ \t\r\n]` folded into one space, and, unless the result is a
/// single space, leading and trailing White_Space stripped. The key is the result, or `text`
/// when the result is empty.
/// @param text the decoded token (decode_byte_level, or an added token's content)
/// @param raw_token the vocabulary entry itself
inline std::string canonical_key(std::string_view text, std::string_view raw_token) {
    return detail::tokenizer_json::key_builder{}(text, raw_token);
}

} // namespace tokenizer

namespace detail::tokenizer_json {

/// The whole of a tokenizer.json file. @throws io_error naming the path.
inline std::string read_file(const std::filesystem::path& file) {
    const std::string name = file.string();
    std::error_code ec;
    const auto status = std::filesystem::status(file, ec);
    if (ec) throw io_error("cannot read tokenizer.json " + name + ": " + ec.message());
    if (!std::filesystem::is_regular_file(status))
        throw io_error("cannot read tokenizer.json " + name + ": not a regular file");
    std::ifstream in(file, std::ios::binary);
    if (!in) throw io_error("cannot open tokenizer.json " + name + ": " + std::generic_category().message(errno));
    std::string text;
    std::array<char, 1 << 16> chunk;
    while (in.read(chunk.data(), chunk.size()) || in.gcount() > 0)
        text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    if (in.bad()) throw io_error("cannot read tokenizer.json " + name + ": read error");
    return text;
}

using json = nlohmann::json;

inline const char* describe(json::value_t type) noexcept {
    switch (type) {
    case json::value_t::object:
        return "an object";
    case json::value_t::array:
        return "an array";
    case json::value_t::string:
        return "a string";
    default:
        return "a value of another type";
    }
}

/// `object[key]`, which must exist and have type `type`; `where` names the field in messages.
inline const json& field(const json& object, const char* key, json::value_t type, const std::string& where,
                         const std::string& source) {
    const auto it = object.find(key);
    if (it == object.end()) throw format_error(source + ": missing field " + where);
    if (it->type() != type)
        throw format_error(source + ": field " + where + " is " + it->type_name() + ", expected " + describe(type));
    return *it;
}

/// A token id from the file: a JSON integer in [0, max_vocab_size).
inline std::size_t token_index(const json& value, const std::string& where, const std::string& source) {
    if (!value.is_number_integer())
        throw format_error(source + ": " + where + " is " +
                           (value.is_number() ? std::string("not an integer") : std::string(value.type_name())) +
                           ", expected a non-negative integer token id");
    if (value.is_number_unsigned()) {
        const auto id = value.get<std::uint64_t>();
        if (id >= tokenizer::max_vocab_size)
            throw format_error(source + ": " + where + " = " + std::to_string(id) +
                               " is too large (token ids must be below " + std::to_string(tokenizer::max_vocab_size) +
                               ")");
        return static_cast<std::size_t>(id);
    }
    const auto id = value.get<std::int64_t>();
    if (id < 0) throw format_error(source + ": " + where + " = " + std::to_string(id) + " is negative");
    return static_cast<std::size_t>(id); // "-0" parses as a signed zero
}

/// One validated entry of `added_tokens`: its id, its content, the entry itself (for optional
/// flags) and its name in messages (`added_tokens[i]`).
struct added_token {
    std::size_t id;
    const std::string* content;
    const json* entry;
    std::string where;
};

/// The `added_tokens` of a parsed tokenizer.json, in file order: absent or null means none;
/// each entry must be an object with an integer `id` and a string `content`.
inline std::vector<added_token> added_tokens(const json& doc, const std::string& source) {
    std::vector<added_token> out;
    const auto it = doc.find("added_tokens");
    if (it == doc.end() || it->is_null()) return out;
    if (!it->is_array())
        throw format_error(source + ": field added_tokens is " + it->type_name() + ", expected an array");
    out.reserve(it->size());
    for (std::size_t i = 0; i < it->size(); ++i) {
        const json& entry = (*it)[i];
        std::string where = "added_tokens[" + std::to_string(i) + "]";
        if (!entry.is_object())
            throw format_error(source + ": " + where + " is " + entry.type_name() + ", expected an object");
        const auto id = entry.find("id");
        if (id == entry.end()) throw format_error(source + ": missing field " + where + ".id");
        const std::size_t t = token_index(*id, where + ".id", source);
        const auto& content = field(entry, "content", json::value_t::string, where + ".content", source);
        out.push_back({t, &content.get_ref<const std::string&>(), &entry, std::move(where)});
    }
    return out;
}

/// The canonical table of a parsed tokenizer.json; `source` names the input in messages.
inline canonical_table build_table(const json& doc, const std::string& source) {
    if (!doc.is_object()) throw format_error(source + ": the top level is " + doc.type_name() + ", expected an object");

    const json& model = field(doc, "model", json::value_t::object, "model", source);
    const auto& model_type =
        field(model, "type", json::value_t::string, "model.type", source).get_ref<const std::string&>();
    if (model_type != "BPE")
        throw unsupported_error(source + ": model.type " + quote_for_message(model_type) +
                                " is not supported; only byte-level BPE tokenizers (model.type \"BPE\") are");

    // The Hugging Face library reads a missing decoder like a null one: no decoder at all.
    const auto decoder = doc.find("decoder");
    if (decoder == doc.end() || decoder->is_null())
        throw unsupported_error(source + ": the tokenizer has no decoder (decoder is " +
                                (decoder == doc.end() ? "missing" : "null") +
                                "); only the ByteLevel decoder is supported");
    if (!decoder->is_object())
        throw format_error(source + ": field decoder is " + decoder->type_name() + ", expected an object");
    const auto& decoder_type =
        field(*decoder, "type", json::value_t::string, "decoder.type", source).get_ref<const std::string&>();
    // A Sequence decoder is rejected even if it only wraps ByteLevel: keep the accepted form simple.
    if (decoder_type != "ByteLevel")
        throw unsupported_error(source + ": decoder type " + quote_for_message(decoder_type) +
                                " is not supported; only byte-level BPE tokenizers (decoder \"ByteLevel\") are");

    const auto& vocab =
        field(model, "vocab", json::value_t::object, "model.vocab", source).get_ref<const json::object_t&>();
    // Validate every id and find V, the largest id + 1. The strings are stored as parsed, which
    // nlohmann::json has checked to be well-formed UTF-8.
    std::size_t vocab_size = 0;
    for (const auto& [token, id] : vocab) {
        const std::size_t t = token_index(id, "model.vocab[" + quote_for_message(token) + "]", source);
        if (t + 1 > vocab_size) vocab_size = t + 1;
    }
    // added_tokens is optional: absent or null means none.
    const auto added = added_tokens(doc, source);
    for (const auto& a : added)
        if (a.id + 1 > vocab_size) vocab_size = a.id + 1;
    if (vocab_size == 0) throw format_error(source + ": model.vocab and added_tokens are both empty");

    // The token string of each id. When several vocab entries share an id, the bytewise
    // smallest string wins (the parsed object iterates in that order). An added token replaces
    // the vocab entry of its id; of two added tokens with one id the later wins, as in the
    // Hugging Face tokenizers library.
    std::vector<const std::string*> token_of(vocab_size, nullptr);
    std::vector<bool> is_added(vocab_size, false);
    for (const auto& [token, id] : vocab) {
        const auto t = static_cast<std::size_t>(id.get<std::int64_t>()); // validated above
        if (token_of[t] == nullptr) token_of[t] = &token;
    }
    for (const auto& a : added) {
        token_of[a.id] = a.content;
        is_added[a.id] = true;
    }

    // Keys, and canonical ids in order of first appearance.
    std::vector<token_id> lookup(vocab_size);
    std::unordered_map<std::string, token_id> canonical_of;
    canonical_of.reserve(vocab_size);
    key_builder make_key;
    for (std::size_t t = 0; t < vocab_size; ++t) {
        std::string key;
        if (token_of[t] == nullptr) {
            // An id in neither model.vocab nor added_tokens (a hole below the largest id): the
            // Hugging Face decoder skips unknown ids, so its text, and its key, is "".
        } else if (is_added[t]) {
            key = make_key(*token_of[t], *token_of[t]); // added tokens decode to their content as is
        } else {
            key = make_key(tokenizer::decode_byte_level(*token_of[t]), *token_of[t]);
        }
        const auto next = static_cast<token_id>(canonical_of.size());
        lookup[t] = canonical_of.try_emplace(std::move(key), next).first->second;
    }
    return canonical_table::from_lookup(std::move(lookup));
}

inline canonical_table table_from_text(std::string_view json_text, const std::string& source) {
    json doc;
    try {
        doc = json::parse(json_text.begin(), json_text.end());
    } catch (const json::exception& e) {
        throw format_error(source + ": not valid JSON: " + e.what());
    }
    return build_table(doc, source);
}

} // namespace detail::tokenizer_json

/// @brief The canonical table (spec section 1) of a byte-level BPE tokenizer given as the text
///        of a Hugging Face tokenizer.json (GPT-2 family: DeepSeek-V3, Qwen3, Llama 3).
///
/// V is the largest id in `model.vocab` and `added_tokens`, plus one. Added tokens decode to
/// their `content`; vocab entries through decode_byte_level; an id in neither decodes to "".
/// @throws format_error if the text is not JSON or a field is missing or ill-typed (the message
///         names the field), or an id is negative or not below tokenizer::max_vocab_size
/// @throws unsupported_error if `model.type` is not "BPE" or the decoder is not "ByteLevel"
inline canonical_table canonical_table_from_tokenizer_json_text(std::string_view json_text) {
    return detail::tokenizer_json::table_from_text(json_text, "tokenizer.json");
}

/// @brief canonical_table_from_tokenizer_json_text on the contents of `file`.
/// @throws io_error naming the path if the file cannot be read; otherwise as the text form,
///         with the path in the message
inline canonical_table canonical_table_from_tokenizer_json(const std::filesystem::path& file) {
    return detail::tokenizer_json::table_from_text(detail::tokenizer_json::read_file(file), file.string());
}

ENGRAM_END_NAMESPACE
