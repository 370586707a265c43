#pragma once
// SPDX-License-Identifier: MIT
// Text -> token ids with the tokenizer.json of a byte-level BPE tokenizer (GPT-2 family: Qwen3,
// DeepSeek-V3, Llama 3, GPT-2), following the Hugging Face tokenizers pipeline.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/types.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <nlohmann/json.hpp> // for json (parsing tokenizer.json)
#include <utf8proc.h>        // for utf8proc_category, utf8proc_map

#include <algorithm>     // for push_heap, pop_heap
#include <array>         // for array
#include <cerrno>        // for errno
#include <cstddef>       // for size_t
#include <cstdint>       // for uint8_t, uint32_t, uint64_t
#include <cstdlib>       // for free
#include <filesystem>    // for path, status
#include <fstream>       // for ifstream
#include <functional>    // for greater, hash
#include <limits>        // for numeric_limits
#include <optional>      // for optional
#include <span>          // for span
#include <string>        // for string, to_string
#include <string_view>   // for string_view
#include <system_error>  // for error_code, generic_category
#include <unordered_map> // for unordered_map (vocab, merges, word cache, trie edges)
#include <utility>       // for move, pair
#include <vector>        // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail::bpe {

// ---------------------------------------------------------------------------------------------
// Character classes of the pre-tokenizer regexes, from the Unicode general category (utf8proc).

enum : std::uint8_t {
    cls_letter = 1,  ///< \p{L}: Lu Ll Lt Lm Lo
    cls_number = 2,  ///< \p{N}: Nd Nl No
    cls_punct = 4,   ///< \p{P}: Pc Pd Ps Pe Pi Pf Po
    cls_symbol = 8,  ///< \p{S}: Sm Sc Sk So
    cls_mark = 16,   ///< \p{M}: Mn Mc Me
    cls_space = 32,  ///< \s as Oniguruma reads it: U+0009-U+000D, U+0085, Zs, Zl, Zp
    cls_newline = 64 ///< \r or \n
};

inline std::uint8_t classify(char32_t c) noexcept {
    std::uint8_t cls = 0;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        cls = cls_letter;
        break;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        cls = cls_number;
        break;
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        cls = cls_punct;
        break;
    case UTF8PROC_CATEGORY_SM:
    case UTF8PROC_CATEGORY_SC:
    case UTF8PROC_CATEGORY_SK:
    case UTF8PROC_CATEGORY_SO:
        cls = cls_symbol;
        break;
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
        cls = cls_mark;
        break;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        cls = cls_space;
        break;
    default:
        break;
    }
    if ((c >= 0x09 && c <= 0x0D) || c == 0x85) cls |= cls_space;
    if (c == '\r' || c == '\n') cls |= cls_newline;
    return cls;
}

/// The classes of the ASCII characters, computed once.
inline const std::array<std::uint8_t, 128>& ascii_classes() {
    static const std::array<std::uint8_t, 128> table = [] {
        std::array<std::uint8_t, 128> t{};
        for (char32_t c = 0; c < 128; ++c) t[c] = classify(c);
        return t;
    }();
    return table;
}

/// One code point of a text segment: its value, byte offset and classes.
struct code_point {
    char32_t cp;
    std::uint32_t offset;
    std::uint8_t cls;
};

/// A piece of a segment: code points [begin, end).
struct piece {
    std::size_t begin, end;
};

// ---------------------------------------------------------------------------------------------
// The Split regexes, matched by hand. Each matcher returns the end of the match that starts at
// code point `i` (leftmost-first alternation with greedy, backtracking quantifiers, as Oniguruma
// runs it), or `i` when no alternative matches there. No alternative matches the empty string.

/// First index >= i whose classes miss every bit of `mask`.
inline std::size_t run(const code_point* c, std::size_t i, std::size_t end, std::uint8_t mask) noexcept {
    while (i < end && (c[i].cls & mask) != 0) ++i;
    return i;
}

/// First index >= i whose classes hit a bit of `mask`.
inline std::size_t run_not(const code_point* c, std::size_t i, std::size_t end, std::uint8_t mask) noexcept {
    while (i < end && (c[i].cls & mask) == 0) ++i;
    return i;
}

/// `'s|'t|'re|'ve|'m|'ll|'d`, case-insensitive under Unicode simple case folding when `fold`.
inline std::size_t match_contraction(const code_point* c, std::size_t i, std::size_t end, bool fold) noexcept {
    if (c[i].cp != '\'' || i + 1 >= end) return i;
    auto lower = [fold](char32_t x) -> char32_t {
        if (!fold) return x;
        if (x >= 'A' && x <= 'Z') return x + 32;
        if (x == 0x017F) return 's'; // LATIN SMALL LETTER LONG S folds to s
        return x;
    };
    const char32_t a = lower(c[i + 1].cp);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 >= end) return i;
    const char32_t b = lower(c[i + 2].cp);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return i;
}

/// `\s*[\r\n]+|\s+(?!\S)|\s+`, the whitespace tail shared by the Qwen, Llama 3 and DeepSeek
/// patterns: up to the last newline of a whitespace run; else the run less its last character
/// when a non-space follows (that character joins the next word); else the whole run.
inline std::size_t match_space_tail(const code_point* c, std::size_t i, std::size_t end) noexcept {
    if ((c[i].cls & cls_space) == 0) return i;
    const std::size_t j = run(c, i, end, cls_space);
    for (std::size_t k = j; k > i; --k)
        if ((c[k - 1].cls & cls_newline) != 0) return k;
    if (j == end || j - i < 2) return j;
    return j - 1;
}

/// Qwen2/Qwen3 (MaxDigits = 1) and Llama 3 (MaxDigits = 3):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,MaxDigits}|
///  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
template <std::size_t MaxDigits>
std::size_t match_qwen(const code_point* c, std::size_t i, std::size_t end) noexcept {
    if (const std::size_t k = match_contraction(c, i, end, true); k != i) return k;
    const std::uint8_t cls = c[i].cls;
    if ((cls & cls_letter) != 0) return run(c, i + 1, end, cls_letter);
    if ((cls & (cls_newline | cls_number)) == 0 && i + 1 < end && (c[i + 1].cls & cls_letter) != 0)
        return run(c, i + 2, end, cls_letter);
    if ((cls & cls_number) != 0) {
        std::size_t k = i + 1;
        while (k < end && k - i < MaxDigits && (c[k].cls & cls_number) != 0) ++k;
        return k;
    }
    constexpr std::uint8_t word = cls_space | cls_letter | cls_number;
    const std::size_t k = c[i].cp == ' ' ? i + 1 : i;
    if (k < end && (c[k].cls & word) == 0) return run(c, run_not(c, k + 1, end, word), end, cls_newline);
    return match_space_tail(c, i, end);
}

/// GPT-2 (the ByteLevel pre-tokenizer's own regex, `use_regex: true`):
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
inline std::size_t match_gpt2(const code_point* c, std::size_t i, std::size_t end) noexcept {
    if (const std::size_t k = match_contraction(c, i, end, false); k != i) return k;
    const std::size_t k = c[i].cp == ' ' ? i + 1 : i;
    if (k < end) {
        const std::uint8_t cls = c[k].cls;
        if ((cls & cls_letter) != 0) return run(c, k + 1, end, cls_letter);
        if ((cls & cls_number) != 0) return run(c, k + 1, end, cls_number);
        constexpr std::uint8_t word = cls_space | cls_letter | cls_number;
        if ((cls & word) == 0) return run_not(c, k + 1, end, word);
    }
    if ((c[i].cls & cls_space) == 0) return i;
    const std::size_t j = run(c, i, end, cls_space);
    return (j == end || j - i < 2) ? j : j - 1;
}

/// DeepSeek-V3, first split: `\p{N}{1,3}`.
inline std::size_t match_digits3(const code_point* c, std::size_t i, std::size_t end) noexcept {
    std::size_t k = i;
    while (k < end && k - i < 3 && (c[k].cls & cls_number) != 0) ++k;
    return k;
}

/// DeepSeek-V3, second split: `[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+` (CJK ideographs, kana).
inline std::size_t match_cjk(const code_point* c, std::size_t i, std::size_t end) noexcept {
    auto cjk = [](char32_t x) { return (x >= 0x4E00 && x <= 0x9FA5) || (x >= 0x3040 && x <= 0x30FF); };
    std::size_t k = i;
    while (k < end && cjk(c[k].cp)) ++k;
    return k;
}

/// DeepSeek-V3, third split:
/// `[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
///  ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
inline std::size_t match_deepseek(const code_point* c, std::size_t i, std::size_t end) noexcept {
    auto ascii_alpha = [](char32_t x) { return (x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z'); };
    auto ascii_punct = [](char32_t x) {
        return (x >= 0x21 && x <= 0x2F) || (x >= 0x3A && x <= 0x40) || (x >= 0x5B && x <= 0x60) ||
               (x >= 0x7B && x <= 0x7E);
    };
    if (ascii_punct(c[i].cp) && i + 1 < end && ascii_alpha(c[i + 1].cp)) {
        std::size_t k = i + 2;
        while (k < end && ascii_alpha(c[k].cp)) ++k;
        return k;
    }
    const std::uint8_t cls = c[i].cls;
    constexpr std::uint8_t letter_mark = cls_letter | cls_mark;
    if ((cls & (cls_newline | cls_letter | cls_punct | cls_symbol)) == 0 && i + 1 < end &&
        (c[i + 1].cls & letter_mark) != 0)
        return run(c, i + 2, end, letter_mark);
    if ((cls & letter_mark) != 0) return run(c, i + 1, end, letter_mark);
    constexpr std::uint8_t punct_symbol = cls_punct | cls_symbol;
    const std::size_t k = c[i].cp == ' ' ? i + 1 : i;
    if (k < end && (c[k].cls & punct_symbol) != 0) return run(c, run(c, k + 1, end, punct_symbol), end, cls_newline);
    return match_space_tail(c, i, end);
}

/// The Split regexes this encoder knows, by the exact pattern text of the tokenizer.json.
enum class split_pattern { qwen2, llama3, gpt2, digits3, cjk, deepseek };

using matcher = std::size_t (*)(const code_point*, std::size_t, std::size_t) noexcept;

inline matcher matcher_of(split_pattern p) noexcept {
    switch (p) {
    case split_pattern::qwen2:
        return &match_qwen<1>;
    case split_pattern::llama3:
        return &match_qwen<3>;
    case split_pattern::gpt2:
        return &match_gpt2;
    case split_pattern::digits3:
        return &match_digits3;
    case split_pattern::cjk:
        return &match_cjk;
    case split_pattern::deepseek:
        return &match_deepseek;
    }
    return &match_gpt2;
}

inline const char* name_of(split_pattern p) noexcept {
    switch (p) {
    case split_pattern::qwen2:
        return "Split(Qwen2/Qwen3)";
    case split_pattern::llama3:
        return "Split(Llama 3)";
    case split_pattern::gpt2:
        return "Split(GPT-2)";
    case split_pattern::digits3:
        return "Split(\\p{N}{1,3})";
    case split_pattern::cjk:
        return "Split(CJK)";
    case split_pattern::deepseek:
        return "Split(DeepSeek-V3)";
    }
    return "Split";
}

/// The pattern a regex string is, if known. Literal CR and LF characters (as DeepSeek-V3 writes
/// some) are read as the escapes `\r` and `\n`, which mean the same.
inline std::optional<split_pattern> recognise(std::string_view regex) {
    std::string s;
    s.reserve(regex.size());
    for (const char ch : regex) {
        if (ch == '\r')
            s += "\\r";
        else if (ch == '\n')
            s += "\\n";
        else
            s.push_back(ch);
    }
    static constexpr std::string_view qwen2 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    static constexpr std::string_view llama3 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    static constexpr std::string_view gpt2 =
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    static constexpr std::string_view digits3 = R"(\p{N}{1,3})";
    // [\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+ with the characters written out (UTF-8)
    static constexpr std::string_view cjk = "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-"
                                            "\xE3\x83\xBF]+";
    static constexpr std::string_view deepseek =
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    if (s == qwen2) return split_pattern::qwen2;
    if (s == llama3) return split_pattern::llama3;
    if (s == gpt2) return split_pattern::gpt2;
    if (s == digits3) return split_pattern::digits3;
    if (s == cjk) return split_pattern::cjk;
    if (s == deepseek) return split_pattern::deepseek;
    return std::nullopt;
}

/// Splits every piece of `in` at the matches of `m` (behaviour "Isolated": each match is a
/// piece, and so is each non-empty stretch between matches).
inline void split_isolated(const code_point* c, const std::vector<piece>& in, matcher m, std::vector<piece>& out) {
    out.clear();
    for (const piece& p : in) {
        std::size_t gap = p.begin;
        for (std::size_t i = p.begin; i < p.end;) {
            const std::size_t k = m(c, i, p.end);
            if (k == i) {
                ++i;
                continue;
            }
            if (gap < i) out.push_back({gap, i});
            out.push_back({i, k});
            i = gap = k;
        }
        if (gap < p.end) out.push_back({gap, p.end});
    }
}

// ---------------------------------------------------------------------------------------------
// Normalizers

enum class normal_form { nfc, nfd, nfkc, nfkd };

/// `text` in the normal form (utf8proc); `text` must be well-formed UTF-8.
inline std::string normalize(std::string_view text, normal_form form) {
    int options = UTF8PROC_STABLE;
    switch (form) {
    case normal_form::nfc:
        options |= UTF8PROC_COMPOSE;
        break;
    case normal_form::nfd:
        options |= UTF8PROC_DECOMPOSE;
        break;
    case normal_form::nfkc:
        options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        break;
    case normal_form::nfkd:
        options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        break;
    }
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                     &out, static_cast<utf8proc_option_t>(options));
    if (n < 0) {
        std::free(out);
        throw error(std::string("Unicode normalisation failed: ") + utf8proc_errmsg(n));
    }
    std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
    std::free(out);
    return result;
}

// ---------------------------------------------------------------------------------------------
// Added tokens: a byte trie searched leftmost-longest, as Hugging Face's aho-corasick split.

struct added_token {
    token_id id = 0;
    bool lstrip = false;
    bool rstrip = false;
};

class added_trie {
public:
    void insert(std::string_view content, added_token token) {
        if (content.empty()) return;
        std::uint32_t node = 0;
        for (const char ch : content) {
            const auto byte = static_cast<unsigned char>(ch);
            const std::uint64_t key = (std::uint64_t{node} << 8) | byte;
            auto it = edges_.find(key);
            if (it == edges_.end()) {
                it = edges_.emplace(key, static_cast<std::uint32_t>(terminal_.size())).first;
                terminal_.emplace_back();
            }
            node = it->second;
        }
        terminal_[node] = token; // of two added tokens with one content, the later wins
        first_byte_[static_cast<unsigned char>(content.front())] = true;
    }

    [[nodiscard]] bool empty() const noexcept { return edges_.empty(); }

    /// The longest token that starts at byte `pos` of `s`: its length, or 0.
    std::size_t longest_at(std::string_view s, std::size_t pos, added_token& found) const {
        if (!first_byte_[static_cast<unsigned char>(s[pos])]) return 0;
        std::uint32_t node = 0;
        std::size_t best = 0;
        for (std::size_t i = pos; i < s.size(); ++i) {
            const auto it = edges_.find((std::uint64_t{node} << 8) | static_cast<unsigned char>(s[i]));
            if (it == edges_.end()) break;
            node = it->second;
            if (terminal_[node]) {
                best = i + 1 - pos;
                found = *terminal_[node];
            }
        }
        return best;
    }

private:
    std::unordered_map<std::uint64_t, std::uint32_t> edges_; // (node << 8 | byte) -> child
    std::vector<std::optional<added_token>> terminal_ = std::vector<std::optional<added_token>>(1);
    std::array<bool, 256> first_byte_{};
};

/// Calls `text(begin, end)` for the stretches of `s` between added tokens and `token(id)` for each
/// added token, in order. lstrip / rstrip tokens swallow the whitespace beside them.
template <class Text, class Token>
void split_added(const added_trie& trie, std::string_view s, Text&& text, Token&& token) {
    if (trie.empty()) {
        if (!s.empty()) text(std::size_t{0}, s.size());
        return;
    }
    auto space_run_start = [&](std::size_t end) -> std::size_t { // where the whitespace before `end` starts
        while (end > 0) {
            std::size_t start = end - 1;
            while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
            const auto step = tokenizer_json::next_utf8(s, start);
            if (!step.valid || !tokenizer_json::is_white_space(step.code_point)) break;
            end = start;
        }
        return end;
    };
    std::size_t gap = 0;
    for (std::size_t pos = 0; pos < s.size();) {
        added_token found;
        const std::size_t len = trie.longest_at(s, pos, found);
        if (len == 0) {
            ++pos;
            continue;
        }
        std::size_t text_end = pos;
        if (found.lstrip) text_end = std::max(gap, space_run_start(pos));
        std::size_t next = pos + len;
        if (found.rstrip) {
            while (next < s.size()) {
                const auto step = tokenizer_json::next_utf8(s, next);
                if (!step.valid || !tokenizer_json::is_white_space(step.code_point)) break;
                next += step.length;
            }
        }
        if (gap < text_end) text(gap, text_end);
        token(found.id);
        pos = gap = next;
    }
    if (gap < s.size()) text(gap, s.size());
}

/// Heterogeneous lookup of std::string keys by string_view.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

/// A JSON value for an error message: its dump, cut to a readable length.
inline std::string excerpt(const nlohmann::json& v) {
    std::string s = v.dump();
    if (s.size() > 120) s = s.substr(0, 117) + "...";
    return s;
}

} // namespace detail::bpe

/// @brief Encodes text into token ids with a Hugging Face tokenizer.json of the byte-level BPE
///        family (Qwen2/Qwen3, DeepSeek-V3, Llama 3, GPT-2).
///
/// The pipeline is the Hugging Face one without post-processing (no BOS/EOS is added):
/// 1. added tokens (`added_tokens`, special or not) are cut out first, leftmost-longest on their
///    content; those with `normalized: true` are matched after normalisation;
/// 2. the rest is normalised (`NFC`, `NFD`, `NFKC`, `NFKD`, or a Sequence of them);
/// 3. split by the pre-tokenizer: `Split` steps with the regexes of the tokenizers above
///    (recognised by their exact text, implemented by hand) and a final `ByteLevel`;
/// 4. each piece's UTF-8 bytes are BPE-merged by merge rank (model.merges, as `"a b"` strings
///    or `["a", "b"]` pairs), starting from the GPT-2 byte alphabet.
///
/// `encode` is const and keeps no state: one encoder may be shared by threads.
class bpe_encoder {
public:
    /// @brief Reads `file`.
    /// @throws io_error if the file cannot be read; format_error for malformed JSON, missing or
    ///         ill-typed fields, or merges naming tokens that are not in the vocabulary;
    ///         unsupported_error for a model, normalizer or pre-tokenizer this encoder does not
    ///         implement (the message names it)
    static bpe_encoder from_tokenizer_json(const std::filesystem::path& file) {
        return from_text(detail::tokenizer_json::read_file(file), file.string());
    }

    /// @brief As `from_tokenizer_json`, from the file's text.
    static bpe_encoder from_tokenizer_json_text(std::string_view json_text) {
        return from_text(json_text, "tokenizer.json");
    }

    /// @brief The token ids of `utf8_text` (no special tokens are added).
    /// @throws input_error if `utf8_text` is not well-formed UTF-8 (naming the byte offset)
    [[nodiscard]] std::vector<token_id> encode(std::string_view utf8_text) const {
        std::vector<token_id> out;
        out.reserve(utf8_text.size() / 3 + 1);
        work w;
        walk(
            utf8_text, w, [&](std::string_view bytes) { encode_word(bytes, w, out); },
            [&](token_id id) { out.push_back(id); });
        return out;
    }

    /// @brief The pieces BPE sees, for inspection: the normalised text of each pre-tokenizer
    ///        piece (before the byte-level mapping), and each added token's content.
    /// @throws input_error if `utf8_text` is not well-formed UTF-8
    [[nodiscard]] std::vector<std::string> pre_tokenize(std::string_view utf8_text) const {
        std::vector<std::string> out;
        work w;
        walk(
            utf8_text, w, [&](std::string_view bytes) { out.emplace_back(bytes); },
            [&](token_id id) { out.push_back(tokens_[static_cast<std::size_t>(id)]); });
        return out;
    }

    /// @brief V: the largest token id (vocabulary or added token) plus one.
    [[nodiscard]] std::size_t vocab_size() const noexcept { return tokens_.size(); }

    /// @brief The string of token `id`: its vocabulary entry (byte-level alphabet) or an added
    ///        token's content; empty for an id in neither.
    /// @throws input_error if `id` is outside `[0, V)`
    [[nodiscard]] std::string_view token(token_id id) const {
        check_id(id);
        return tokens_[static_cast<std::size_t>(id)];
    }

    /// @brief Whether `id` is an added token (decoded as its content, not byte-level).
    [[nodiscard]] bool is_added(token_id id) const {
        check_id(id);
        return added_[static_cast<std::size_t>(id)];
    }

    /// @brief The id of a token string (a vocabulary entry or an added token's content).
    [[nodiscard]] std::optional<token_id> id_of(std::string_view token) const {
        if (const auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
        if (const auto it = vocab_.find(token); it != vocab_.end()) return it->second;
        return std::nullopt;
    }

    /// @brief The text of a token sequence, as the library's `decode(ids)` gives it with the
    ///        ByteLevel decoder: the bytes of all tokens joined (each added token's content, and
    ///        each vocabulary entry, through the byte-level alphabet) and read as UTF-8, ill-formed
    ///        parts replaced by U+FFFD; an id that names no token is skipped.
    /// @throws input_error for an id outside `[0, V)`
    [[nodiscard]] std::string decode(std::span<const token_id> ids) const {
        std::vector<std::string> tokens;
        tokens.reserve(ids.size());
        for (const token_id id : ids) {
            check_id(id);
            const std::string& s = tokens_[static_cast<std::size_t>(id)];
            if (!s.empty()) tokens.push_back(s);
        }
        return tokenizer::decoder::byte_level().finish(tokens);
    }

    /// @brief The pre-tokenizer steps, e.g. "Split(Qwen2/Qwen3) + ByteLevel".
    [[nodiscard]] const std::string& pre_tokenizer_name() const noexcept { return pre_tokenizer_name_; }

private:
    struct split_step {
        detail::bpe::split_pattern pattern;
    };

    /// Scratch space of one `encode` call.
    struct work {
        std::vector<detail::bpe::code_point> cps;
        std::vector<detail::bpe::piece> pieces, next;
        std::string word, prefixed;
        // The BPE result of each distinct piece: bytes -> [offset, offset + length) in `ids`.
        std::unordered_map<std::string, std::pair<std::uint32_t, std::uint32_t>, detail::bpe::string_hash,
                           std::equal_to<>>
            cache;
        std::vector<token_id> ids;
        struct symbol {
            std::uint32_t id;
            std::int32_t prev, next;
            bool alive;
        };
        std::vector<symbol> symbols;
        struct merge {
            std::uint32_t rank;
            std::uint32_t pos;
            std::uint32_t new_id;
            bool operator>(const merge& o) const noexcept { return rank != o.rank ? rank > o.rank : pos > o.pos; }
        };
        std::vector<merge> heap;
    };

    static constexpr std::size_t max_cached_words = std::size_t{1} << 20;
    static constexpr std::size_t block_bytes = std::size_t{1} << 20;

    void check_id(token_id id) const {
        if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size())
            throw input_error("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(tokens_.size()) + ")");
    }

    /// Steps 1-3: calls `on_piece(bytes)` for each pre-tokenizer piece (normalised UTF-8, with
    /// the prefix space when the ByteLevel step adds one) and `on_added(id)` for each added token.
    template <class OnPiece, class OnAdded>
    void walk(std::string_view text, work& w, OnPiece&& on_piece, OnAdded&& on_added) const {
        for (std::size_t i = 0; i < text.size();) {
            const auto step = detail::tokenizer_json::next_utf8(text, i);
            if (!step.valid) throw input_error("text is not valid UTF-8 at byte offset " + std::to_string(i));
            i += step.length;
        }
        detail::bpe::split_added(
            raw_added_, text,
            [&](std::size_t b, std::size_t e) {
                const std::string_view stretch = text.substr(b, e - b);
                bool ascii = true;
                for (const char ch : stretch) ascii = ascii && static_cast<unsigned char>(ch) < 0x80;
                std::string normalized;
                std::string_view view = stretch;
                if (!ascii && !normalizers_.empty()) { // every normal form leaves ASCII as it is
                    normalized.assign(stretch);
                    for (const auto form : normalizers_) normalized = detail::bpe::normalize(normalized, form);
                    view = normalized;
                }
                detail::bpe::split_added(
                    normalized_added_, view,
                    [&](std::size_t nb, std::size_t ne) { pre_tokenize_blocks(view.substr(nb, ne - nb), w, on_piece); },
                    on_added);
            },
            on_added);
    }

    /// Step 3 for a stretch without added tokens, in blocks of about `block_bytes` cut where
    /// no pre-tokenizer piece can cross (see `block_end`), so that long texts need little memory.
    template <class OnPiece>
    void pre_tokenize_blocks(std::string_view text, work& w, OnPiece& on_piece) const {
        for (std::size_t begin = 0; begin < text.size();) {
            const std::size_t end = block_end(text, begin);
            if (end - begin > std::numeric_limits<std::uint32_t>::max())
                throw input_error("text has a stretch of " + std::to_string(end - begin) +
                                  " bytes without a line break before a letter; at most 4 GiB can be split at once");
            pre_tokenize_block(text.substr(begin, end - begin), w, on_piece);
            begin = end;
        }
    }

    /// The end of the block that starts at `begin`: after `block_bytes`, the first line break
    /// followed by a letter. No match of the Qwen, Llama 3 or DeepSeek regexes spans such a
    /// break (a newline only ends a match, and no letter run takes one as its prefix), so the
    /// pieces are those of the whole text. GPT-2's regex can split a whitespace run there, so
    /// its texts stay whole.
    [[nodiscard]] std::size_t block_end(std::string_view text, std::size_t begin) const {
        if (!blockable_ || text.size() - begin <= block_bytes) return text.size();
        for (std::size_t p = begin + block_bytes; p < text.size(); ++p) {
            if (text[p - 1] != '\n') continue;
            const auto step = detail::tokenizer_json::next_utf8(text, p);
            if ((detail::bpe::classify(step.code_point) & detail::bpe::cls_letter) != 0) return p;
        }
        return text.size();
    }

    /// Step 3 for one block: the Split steps, then each piece to `on_piece`.
    template <class OnPiece>
    void pre_tokenize_block(std::string_view text, work& w, OnPiece& on_piece) const {
        using namespace detail::bpe;
        w.cps.clear();
        const auto& ascii = ascii_classes();
        for (std::size_t i = 0; i < text.size();) {
            const auto step = detail::tokenizer_json::next_utf8(text, i);
            const char32_t cp = step.code_point; // the text was validated: every step is valid
            w.cps.push_back({cp, static_cast<std::uint32_t>(i), cp < 0x80 ? ascii[cp] : classify(cp)});
            i += step.length;
        }
        const std::size_t n = w.cps.size();
        w.cps.push_back({0, static_cast<std::uint32_t>(text.size()), 0}); // sentinel: the end offset
        w.pieces.assign(1, piece{0, n});
        for (const split_step& s : steps_) {
            split_isolated(w.cps.data(), w.pieces, matcher_of(s.pattern), w.next);
            std::swap(w.pieces, w.next);
        }
        for (const piece& p : w.pieces) {
            std::string_view bytes = text.substr(w.cps[p.begin].offset, w.cps[p.end].offset - w.cps[p.begin].offset);
            if (add_prefix_space_ && bytes.front() != ' ') {
                w.prefixed.assign(1, ' ');
                w.prefixed.append(bytes);
                bytes = w.prefixed;
            }
            on_piece(bytes);
        }
    }

    /// BPE of one piece, through the per-call cache.
    void encode_word(std::string_view bytes, work& w, std::vector<token_id>& out) const {
        if (bytes.size() == 1) {
            out.push_back(byte_token(static_cast<unsigned char>(bytes[0])));
            return;
        }
        if (const auto it = w.cache.find(bytes); it != w.cache.end()) {
            const auto [offset, length] = it->second;
            out.insert(out.end(), w.ids.begin() + offset, w.ids.begin() + offset + length);
            return;
        }
        const std::size_t first = out.size();
        merge_word(bytes, w, out);
        if (w.cache.size() < max_cached_words && w.ids.size() + (out.size() - first) < (std::size_t{1} << 31)) {
            const auto offset = static_cast<std::uint32_t>(w.ids.size());
            w.ids.insert(w.ids.end(), out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
            w.cache.emplace(std::string(bytes), std::pair<std::uint32_t, std::uint32_t>{
                                                    offset, static_cast<std::uint32_t>(out.size() - first)});
        }
    }

    [[nodiscard]] token_id byte_token(unsigned char b) const {
        if (byte_ids_[b] < 0) {
            constexpr char hex[] = "0123456789abcdef";
            throw input_error(std::string("the vocabulary has no token for byte 0x") + hex[b >> 4] + hex[b & 0xF]);
        }
        return byte_ids_[b];
    }

    /// Hugging Face's merge loop: a min-heap of (rank, position) over adjacent pairs; stale
    /// entries (a side already merged away, or a different pair there now) are skipped.
    void merge_word(std::string_view bytes, work& w, std::vector<token_id>& out) const {
        if (ignore_merges_) {
            w.word.clear();
            for (const char ch : bytes) w.word += byte_chars_[static_cast<unsigned char>(ch)];
            if (const auto it = vocab_.find(w.word); it != vocab_.end()) {
                out.push_back(it->second);
                return;
            }
        }
        auto& sym = w.symbols;
        sym.clear();
        for (std::size_t i = 0; i < bytes.size(); ++i)
            sym.push_back({static_cast<std::uint32_t>(byte_token(static_cast<unsigned char>(bytes[i]))),
                           static_cast<std::int32_t>(i) - 1, static_cast<std::int32_t>(i + 1), true});
        sym.back().next = -1;
        auto& heap = w.heap;
        heap.clear();
        const std::greater<> cmp;
        auto push = [&](std::uint32_t pos, std::uint32_t left, std::uint32_t right) {
            const auto it = merges_.find((std::uint64_t{left} << 32) | right);
            if (it == merges_.end()) return;
            heap.push_back({it->second.first, pos, it->second.second});
            std::push_heap(heap.begin(), heap.end(), cmp);
        };
        for (std::size_t i = 0; i + 1 < sym.size(); ++i) push(static_cast<std::uint32_t>(i), sym[i].id, sym[i + 1].id);
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), cmp);
            const auto top = heap.back();
            heap.pop_back();
            auto& left = sym[top.pos];
            if (!left.alive || left.next < 0) continue;
            auto& right = sym[static_cast<std::size_t>(left.next)];
            const auto current = merges_.find((std::uint64_t{left.id} << 32) | right.id);
            if (current == merges_.end() || current->second.second != top.new_id) continue;
            left.id = top.new_id;
            right.alive = false;
            left.next = right.next;
            if (left.next >= 0) sym[static_cast<std::size_t>(left.next)].prev = static_cast<std::int32_t>(top.pos);
            if (left.prev >= 0)
                push(static_cast<std::uint32_t>(left.prev), sym[static_cast<std::size_t>(left.prev)].id, left.id);
            if (left.next >= 0) push(top.pos, left.id, sym[static_cast<std::size_t>(left.next)].id);
        }
        for (const auto& s : sym)
            if (s.alive) out.push_back(s.id);
    }

    // -- loading ---------------------------------------------------------------------------------

    static bpe_encoder from_text(std::string_view json_text, const std::string& source) {
        using json = nlohmann::json;
        json doc;
        try {
            doc = json::parse(json_text.begin(), json_text.end());
        } catch (const json::exception& e) {
            throw format_error(source + ": not valid JSON: " + e.what());
        }
        bpe_encoder enc;
        enc.load(doc, source);
        return enc;
    }

    void load(const nlohmann::json& doc, const std::string& source) {
        using json = nlohmann::json;
        using detail::tokenizer_json::field;
        using detail::tokenizer_json::quote_for_message;
        using detail::tokenizer_json::token_index;
        if (!doc.is_object())
            throw format_error(source + ": the top level is " + doc.type_name() + ", expected an object");
        const json& model = field(doc, "model", json::value_t::object, "model", source);
        const auto& type =
            field(model, "type", json::value_t::string, "model.type", source).get_ref<const std::string&>();
        if (type != "BPE")
            throw unsupported_error(source + ": model.type " + quote_for_message(type) +
                                    " is not supported; only byte-level BPE tokenizers (model.type \"BPE\") are");
        auto nonempty_string = [&](const char* key) {
            const auto it = model.find(key);
            return it != model.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
        };
        if (nonempty_string("continuing_subword_prefix") || nonempty_string("end_of_word_suffix"))
            throw unsupported_error(source +
                                    ": model.continuing_subword_prefix / end_of_word_suffix are not supported");
        if (const auto it = model.find("dropout");
            it != model.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0.0))
            throw unsupported_error(source + ": BPE dropout (model.dropout = " + detail::bpe::excerpt(*it) +
                                    ") is not supported");
        if (const auto it = model.find("byte_fallback"); it != model.end() && it->is_boolean() && it->get<bool>())
            throw unsupported_error(source + ": model.byte_fallback is not supported (byte-level BPE only)");
        if (const auto it = model.find("ignore_merges"); it != model.end() && it->is_boolean())
            ignore_merges_ = it->get<bool>();

        // Vocabulary and added tokens.
        const auto& vocab =
            field(model, "vocab", json::value_t::object, "model.vocab", source).get_ref<const json::object_t&>();
        std::size_t size = 0;
        vocab_.reserve(vocab.size());
        for (const auto& [token, id] : vocab) {
            const std::size_t t = token_index(id, "model.vocab[" + quote_for_message(token) + "]", source);
            size = std::max(size, t + 1);
            vocab_.emplace(token, static_cast<token_id>(t));
        }
        struct added_entry {
            std::size_t id;
            const std::string* content;
            bool normalized, lstrip, rstrip;
        };
        std::vector<added_entry> added;
        const auto entries = detail::tokenizer_json::added_tokens(doc, source);
        // The ids the library gives them (usually the file's own).
        const auto ids = detail::tokenizer_json::resolve_added_ids(
            entries, vocab.size(),
            [&](std::string_view token) -> std::optional<std::size_t> {
                const auto it = vocab_.find(token);
                if (it == vocab_.end()) return std::nullopt;
                return static_cast<std::size_t>(it->second);
            },
            source);
        for (std::size_t i = 0; i < entries.size(); ++i) {
            const auto& a = entries[i];
            if (!ids[i]) continue; // empty content: ignored, as by the library
            auto flag = [&](const char* key, bool fallback) {
                const auto f = a.entry->find(key);
                if (f == a.entry->end() || f->is_null()) return fallback;
                if (!f->is_boolean())
                    throw format_error(source + ": field " + a.where + "." + key + " is " + f->type_name() +
                                       ", expected a boolean");
                return f->get<bool>();
            };
            const bool special = flag("special", false);
            if (flag("single_word", false))
                throw unsupported_error(source + ": " + a.where + " (" + quote_for_message(*a.content) +
                                        ") has single_word: true, which is not supported");
            added.push_back(
                {*ids[i], a.content, flag("normalized", !special), flag("lstrip", false), flag("rstrip", false)});
            size = std::max(size, *ids[i] + 1);
        }
        if (size == 0) throw format_error(source + ": model.vocab and added_tokens are both empty");
        tokens_.assign(size, std::string());
        added_.assign(size, false);
        for (const auto& [token, id] : vocab) {
            auto& slot = tokens_[static_cast<std::size_t>(id.get<std::int64_t>())];
            if (slot.empty()) slot = token; // several entries with one id: the bytewise smallest
        }

        parse_normalizer(doc, source);
        for (const auto& a : added) {
            tokens_[a.id] = *a.content;
            added_[a.id] = true;
            added_ids_[*a.content] = static_cast<token_id>(a.id);
            const detail::bpe::added_token token{static_cast<token_id>(a.id), a.lstrip, a.rstrip};
            if (!a.normalized) {
                raw_added_.insert(*a.content, token);
            } else {
                std::string content = *a.content;
                for (const auto form : normalizers_) content = detail::bpe::normalize(content, form);
                normalized_added_.insert(content, token);
            }
        }

        // The byte alphabet's tokens.
        const auto& alphabet = detail::tokenizer_json::byte_level;
        for (char32_t cp = 0; cp < alphabet.code_points; ++cp) {
            if (alphabet.byte_of[cp] < 0) continue;
            std::string s;
            detail::tokenizer_json::append_utf8(s, cp);
            const auto b = static_cast<std::size_t>(alphabet.byte_of[cp]);
            byte_chars_[b] = s;
            const auto it = vocab_.find(s);
            byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
        }

        parse_merges(model, source);
        parse_pre_tokenizer(doc, source);
    }

    void parse_normalizer(const nlohmann::json& doc, const std::string& source) {
        const auto it = doc.find("normalizer");
        if (it == doc.end() || it->is_null()) return;
        auto visit = [&](const auto& self, const nlohmann::json& n, const std::string& where) -> void {
            if (!n.is_object())
                throw format_error(source + ": " + where + " is " + n.type_name() + ", expected an object");
            const auto& type =
                detail::tokenizer_json::field(n, "type", nlohmann::json::value_t::string, where + ".type", source)
                    .get_ref<const std::string&>();
            if (type == "Sequence") {
                const auto& list = detail::tokenizer_json::field(n, "normalizers", nlohmann::json::value_t::array,
                                                                 where + ".normalizers", source);
                for (std::size_t i = 0; i < list.size(); ++i)
                    self(self, list[i], where + ".normalizers[" + std::to_string(i) + "]");
            } else if (type == "NFC") {
                normalizers_.push_back(detail::bpe::normal_form::nfc);
            } else if (type == "NFD") {
                normalizers_.push_back(detail::bpe::normal_form::nfd);
            } else if (type == "NFKC") {
                normalizers_.push_back(detail::bpe::normal_form::nfkc);
            } else if (type == "NFKD") {
                normalizers_.push_back(detail::bpe::normal_form::nfkd);
            } else {
                throw unsupported_error(source + ": normalizer " + detail::tokenizer_json::quote_for_message(type) +
                                        " (" + where + ") is not supported; NFC, NFD, NFKC, NFKD and Sequence are");
            }
        };
        visit(visit, *it, "normalizer");
    }

    void parse_merges(const nlohmann::json& model, const std::string& source) {
        using detail::tokenizer_json::quote_for_message;
        const auto& merges =
            detail::tokenizer_json::field(model, "merges", nlohmann::json::value_t::array, "model.merges", source);
        merges_.reserve(merges.size());
        auto id = [&](const std::string& token, std::size_t i) -> std::uint32_t {
            const auto it = vocab_.find(token);
            if (it == vocab_.end())
                throw format_error(source + ": model.merges[" + std::to_string(i) + "] uses " +
                                   quote_for_message(token) + ", which is not in model.vocab");
            return static_cast<std::uint32_t>(it->second);
        };
        for (std::size_t i = 0; i < merges.size(); ++i) {
            const auto& m = merges[i];
            std::string a, b;
            if (m.is_string()) {
                const auto& s = m.get_ref<const std::string&>();
                const auto space = s.find(' ');
                if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
                    throw format_error(source + ": model.merges[" + std::to_string(i) + "] = " + quote_for_message(s) +
                                       " is not two tokens separated by one space");
                a = s.substr(0, space);
                b = s.substr(space + 1);
            } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
                a = m[0].get<std::string>();
                b = m[1].get<std::string>();
            } else {
                throw format_error(source + ": model.merges[" + std::to_string(i) + "] = " + detail::bpe::excerpt(m) +
                                   " is neither \"a b\" nor [\"a\", \"b\"]");
            }
            const std::uint32_t left = id(a, i), right = id(b, i), merged = id(a + b, i);
            // A repeated pair keeps its last rank, as the Hugging Face map does.
            merges_[(std::uint64_t{left} << 32) | right] = {static_cast<std::uint32_t>(i), merged};
        }
    }

    void parse_pre_tokenizer(const nlohmann::json& doc, const std::string& source) {
        using detail::tokenizer_json::field;
        using detail::tokenizer_json::quote_for_message;
        using json = nlohmann::json;
        const auto it = doc.find("pre_tokenizer");
        if (it == doc.end() || it->is_null())
            throw unsupported_error(source + ": the tokenizer has no pre_tokenizer; a ByteLevel one is required");
        std::vector<std::pair<const json*, std::string>> list;
        if (!it->is_object())
            throw format_error(source + ": field pre_tokenizer is " + it->type_name() + ", expected an object");
        const auto& type =
            field(*it, "type", json::value_t::string, "pre_tokenizer.type", source).get_ref<const std::string&>();
        if (type == "Sequence") {
            const auto& items =
                field(*it, "pretokenizers", json::value_t::array, "pre_tokenizer.pretokenizers", source);
            for (std::size_t i = 0; i < items.size(); ++i)
                list.emplace_back(&items[i], "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]");
        } else {
            list.emplace_back(&*it, "pre_tokenizer");
        }
        bool byte_level = false;
        for (const auto& item : list) {
            const json* p = item.first;
            const std::string& where = item.second;
            if (!p->is_object())
                throw format_error(source + ": " + where + " is " + p->type_name() + ", expected an object");
            if (byte_level)
                throw unsupported_error(source + ": " + where + " follows the ByteLevel step; only Split steps " +
                                        "before one final ByteLevel are supported");
            const auto& t =
                field(*p, "type", json::value_t::string, where + ".type", source).get_ref<const std::string&>();
            if (t == "ByteLevel") {
                byte_level = true;
                auto flag = [&](const char* key, bool fallback) {
                    const auto f = p->find(key);
                    return f != p->end() && f->is_boolean() ? f->get<bool>() : fallback;
                };
                add_prefix_space_ = flag("add_prefix_space", true);
                if (flag("use_regex", true)) steps_.push_back({detail::bpe::split_pattern::gpt2});
                continue;
            }
            if (t != "Split")
                throw unsupported_error(source + ": pre-tokenizer " + quote_for_message(t) + " (" + where +
                                        ") is not supported; Split and ByteLevel are");
            const auto& pattern = field(*p, "pattern", json::value_t::object, where + ".pattern", source);
            const auto regex = pattern.find("Regex");
            if (regex == pattern.end() || !regex->is_string())
                throw unsupported_error(source + ": " + where + ".pattern " + detail::bpe::excerpt(pattern) +
                                        " is not supported; only the Regex patterns of Qwen, Llama 3, DeepSeek-V3 "
                                        "and GPT-2 are");
            const auto known = detail::bpe::recognise(regex->get_ref<const std::string&>());
            if (!known)
                throw unsupported_error(source + ": " + where + " Split regex " + detail::bpe::excerpt(*regex) +
                                        " is not one this encoder implements (Qwen2/Qwen3, Llama 3, DeepSeek-V3, "
                                        "GPT-2)");
            const auto behavior = p->find("behavior");
            if (behavior == p->end() || !behavior->is_string() || behavior->get<std::string>() != "Isolated")
                throw unsupported_error(
                    source + ": " + where + ".behavior " +
                    (behavior == p->end() ? std::string("(missing)") : detail::bpe::excerpt(*behavior)) +
                    " is not supported; only \"Isolated\" is");
            if (const auto inv = p->find("invert"); inv != p->end() && inv->is_boolean() && inv->get<bool>())
                throw unsupported_error(source + ": " + where + ".invert = true is not supported");
            steps_.push_back({*known});
        }
        if (!byte_level)
            throw unsupported_error(source + ": the pre_tokenizer has no ByteLevel step; only byte-level BPE "
                                             "tokenizers are supported");
        for (const auto& s : steps_) pre_tokenizer_name_ += std::string(detail::bpe::name_of(s.pattern)) + " + ";
        pre_tokenizer_name_ += "ByteLevel";
    }

    std::unordered_map<std::string, token_id, detail::bpe::string_hash, std::equal_to<>> vocab_;
    std::unordered_map<std::string, token_id, detail::bpe::string_hash, std::equal_to<>> added_ids_;
    std::vector<std::string> tokens_;
    std::vector<bool> added_;
    std::unordered_map<std::uint64_t, std::pair<std::uint32_t, std::uint32_t>> merges_; // (a << 32 | b) -> rank, id
    std::array<token_id, 256> byte_ids_{};
    std::array<std::string, 256> byte_chars_{};
    detail::bpe::added_trie raw_added_, normalized_added_;
    std::vector<detail::bpe::normal_form> normalizers_;
    std::vector<split_step> steps_;
    bool add_prefix_space_ = false;
    bool blockable_ = true; ///< no GPT-2 regex step (see block_end)
    bool ignore_merges_ = false;
    std::string pre_tokenizer_name_;
};

ENGRAM_END_NAMESPACE
