#pragma once
// SPDX-License-Identifier: MIT
// The normalisation key of a token's text (spec section 1, steps 2 and 3), character by
// character as the Hugging Face tokenizers library's normalisers compute it.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/vocab/unicode_patch.hpp>
#include <engram/vocab/utf8.hpp>

#include <utf8proc.h> // for utf8proc_decompose_char, utf8proc_category, utf8proc_tolower

#include <algorithm>   // for lower_bound
#include <array>       // for array
#include <cstddef>     // for size_t
#include <string>      // for string
#include <string_view> // for string_view
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail::tokenizer_json {

/// NFKC, NFD, combining marks (Mn, Mc, Me) removed and lowercase, applied to `cp` alone, from
/// utf8proc's Unicode data; the result is appended to `out`. (NFKC followed by NFD is NFKD.)
inline void fold_code_point_utf8proc(char32_t cp, std::vector<char32_t>& out) {
    if (cp < 0x80) {
        out.push_back(cp >= U'A' && cp <= U'Z' ? cp + 0x20 : cp);
        return;
    }
    std::array<utf8proc_int32_t, 32> parts; // the longest decomposition (U+FDFA) has 18
    const auto n = utf8proc_decompose_char(
        static_cast<utf8proc_int32_t>(cp), parts.data(), static_cast<utf8proc_ssize_t>(parts.size()),
        static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT), nullptr);
    if (n < 0 || n > static_cast<utf8proc_ssize_t>(parts.size()))
        throw error("Unicode normalisation of code point " + std::to_string(static_cast<unsigned long>(cp)) +
                    " failed: " + utf8proc_errmsg(n));
    for (utf8proc_ssize_t i = 0; i < n; ++i) {
        const utf8proc_int32_t c = parts[static_cast<std::size_t>(i)];
        const utf8proc_category_t category = utf8proc_category(c);
        if (category == UTF8PROC_CATEGORY_MN || category == UTF8PROC_CATEGORY_MC || category == UTF8PROC_CATEGORY_ME)
            continue;
        if (c == 0x0130) {
            // The one unconditional multi-character lowercase mapping (SpecialCasing.txt):
            // utf8proc_tolower gives the simple mapping, Rust's char::to_lowercase the full one.
            // (NFKD has already split U+0130 into I + U+0307, so this is for completeness.)
            out.push_back(U'i');
            out.push_back(U'\u0307');
            continue;
        }
        out.push_back(static_cast<char32_t>(utf8proc_tolower(c)));
    }
}

/// The same as the library computes it: utf8proc's answer, except for the code points where
/// the library's Unicode tables differ (unicode_patch.hpp: characters newer than its
/// normalisation tables, case mappings newer than utf8proc's).
inline void fold_code_point(char32_t cp, std::vector<char32_t>& out) {
    if (cp >= unicode_patch.front().code_point) {
        const auto it = std::lower_bound(unicode_patch.begin(), unicode_patch.end(), cp,
                                         [](const unicode_patch_entry& e, char32_t c) { return e.code_point < c; });
        if (it != unicode_patch.end() && it->code_point == cp) {
            out.insert(out.end(), unicode_patch_results.begin() + it->first,
                       unicode_patch_results.begin() + it->first + it->count);
            return;
        }
    }
    fold_code_point_utf8proc(cp, out);
}

/// Computes normalisation keys, reusing its buffers from one token to the next.
class key_builder {
public:
    /// Steps 2-3 of spec section 1; see engram::tokenizer::canonical_key.
    std::string operator()(std::string_view text, std::string_view raw_token) {
        // Ill-formed UTF-8 would have been replaced by U+FFFD when the token was decoded, so it
        // gets the same treatment as text that contains U+FFFD: the raw token is the key.
        if (text.find(replacement_character) != std::string_view::npos) return std::string(raw_token);

        // Each character on its own (the library's normalisers are per character here: the
        // only characters canonical ordering moves are marks, which are removed), then runs of
        // [ \t\r\n] folded into one space.
        folded_.clear();
        for (std::size_t i = 0; i < text.size();) {
            const utf8_step step = next_utf8(text, i);
            if (!step.valid) return std::string(raw_token);
            i += step.length;
            one_.clear();
            fold_code_point(step.code_point, one_);
            for (const char32_t c : one_) {
                if (c == U' ' || c == U'\t' || c == U'\r' || c == U'\n') {
                    if (folded_.empty() || folded_.back() != U' ') folded_.push_back(U' ');
                } else {
                    folded_.push_back(c);
                }
            }
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
    std::vector<char32_t> folded_, one_;
};

} // namespace detail::tokenizer_json

namespace tokenizer {

/// @brief The key under which a token is folded (spec section 1, steps 2 and 3).
///
/// If `text` contains U+FFFD (or is not well-formed UTF-8) the key is `raw_token`, so partial
/// UTF-8 tokens never merge with anything. Otherwise `text` is normalised as the Hugging Face
/// tokenizers library does: NFKC, NFD, combining marks (Mn, Mc, Me) removed, each character
/// lowercased with the full Unicode mapping (no final-sigma rule), runs of `[ \t\r\n]` folded
/// into one space, and, unless the result is a single space, leading and trailing White_Space
/// stripped. The key is the result, or `text` when the result is empty.
/// @param text the decoded token (tokenizer::decoder)
/// @param raw_token the vocabulary entry itself
inline std::string canonical_key(std::string_view text, std::string_view raw_token) {
    return detail::tokenizer_json::key_builder{}(text, raw_token);
}

} // namespace tokenizer

ENGRAM_END_NAMESPACE
