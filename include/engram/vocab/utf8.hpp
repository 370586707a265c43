#pragma once
// SPDX-License-Identifier: MIT
// UTF-8 for the tokenizer code: decoding steps, lossy decoding (U+FFFD for ill-formed parts, as
// Rust's from_utf8_lossy does), encoding, White_Space, and token strings quoted for messages.

#include <engram/config.hpp>

#include <cstddef>     // for size_t
#include <string>      // for string
#include <string_view> // for string_view

ENGRAM_BEGIN_NAMESPACE

namespace detail::tokenizer_json {

inline constexpr std::string_view replacement_character = "\xEF\xBF\xBD"; // U+FFFD in UTF-8

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

/// Whether `s` is well-formed UTF-8 (what Rust's String::from_utf8 accepts).
inline bool is_valid_utf8(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size();) {
        const utf8_step step = next_utf8(s, i);
        if (!step.valid) return false;
        i += step.length;
    }
    return true;
}

/// Unicode's White_Space property (what Rust's char::is_whitespace tests).
constexpr bool is_white_space(char32_t c) noexcept {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

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

ENGRAM_END_NAMESPACE
