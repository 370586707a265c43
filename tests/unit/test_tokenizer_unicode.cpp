// SPDX-License-Identifier: MIT
// The per-character normalisation of canonical keys (NFKC, NFD, marks removed, lowercase)
// against the Hugging Face tokenizers library for every code point: tests/data/tokenizers/
// unicode_keys.txt lists what the library gives each code point that changes
// (scripts/unicode-keys.js).

#include "support/catch.hpp"

#include <engram/vocab/canonical_key.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::map<char32_t, std::vector<char32_t>> library_folds() {
    std::ifstream in(std::filesystem::path(ENGRAM_TEST_DATA_DIR) / "tokenizers" / "unicode_keys.txt");
    REQUIRE(in);
    std::map<char32_t, std::vector<char32_t>> out;
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::string cp, result;
        fields >> cp >> result;
        std::vector<char32_t> parts;
        std::istringstream list(result);
        for (std::string p; std::getline(list, p, ',');)
            parts.push_back(static_cast<char32_t>(std::stoul(p, nullptr, 16)));
        out[static_cast<char32_t>(std::stoul(cp, nullptr, 16))] = parts;
    }
    return out;
}

std::string hex(char32_t cp) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(cp));
    return buf;
}

} // namespace

TEST_CASE("every code point folds as in the tokenizers library", "[tokenizer][unicode][golden]") {
    const auto library = library_folds();
    REQUIRE(library.size() == 19967);
    INFO("utf8proc " << utf8proc_version() << " (Unicode " << utf8proc_unicode_version()
                     << "); the patch was made against Unicode "
                     << engram::detail::tokenizer_json::unicode_patch_utf8proc_unicode
                     << " (scripts/make-unicode-patch.sh remakes it)");
    std::size_t checked = 0, mismatches = 0;
    std::ostringstream report;
    std::vector<char32_t> ours;
    for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        ours.clear();
        engram::detail::tokenizer_json::fold_code_point(cp, ours);
        const auto it = library.find(cp);
        const std::vector<char32_t> theirs = it == library.end() ? std::vector<char32_t>{cp} : it->second;
        ++checked;
        if (ours == theirs) continue;
        if (++mismatches <= 10) {
            report << hex(cp) << ": library";
            for (char32_t c : theirs) report << ' ' << hex(c);
            report << ", ours";
            for (char32_t c : ours) report << ' ' << hex(c);
            report << '\n';
        }
    }
    INFO(report.str() << mismatches << " mismatching code points (at most 10 shown)");
    CHECK(checked == 0x110000 - 0x800);
    CHECK(mismatches == 0);
}

TEST_CASE("the patch covers what utf8proc alone gets wrong", "[tokenizer][unicode]") {
    using engram::detail::tokenizer_json::fold_code_point;
    using engram::detail::tokenizer_json::fold_code_point_utf8proc;
    const auto fold = [](auto f, char32_t cp) {
        std::vector<char32_t> out;
        f(cp, out);
        return out;
    };
    // U+A7CB LATIN CAPITAL LETTER RAMS HORN (Unicode 16): the library lowercases it to U+0264.
    CHECK(fold(fold_code_point, 0xA7CB) == std::vector<char32_t>{0x264});
    // U+A7F2 MODIFIER LETTER CAPITAL C (Unicode 14): newer than the library's NFKC tables.
    CHECK(fold(fold_code_point, 0xA7F2) == std::vector<char32_t>{0xA7F2});
    CHECK(fold(fold_code_point_utf8proc, 0xA7F2) == std::vector<char32_t>{U'c'});
    // Ordinary characters go through utf8proc: "ﬁ" -> "fi", "É" -> "e", "Σ" -> "σ", a mark -> nothing.
    CHECK(fold(fold_code_point, 0xFB01) == std::vector<char32_t>{U'f', U'i'});
    CHECK(fold(fold_code_point, 0xC9) == std::vector<char32_t>{U'e'});
    CHECK(fold(fold_code_point, 0x3A3) == std::vector<char32_t>{0x3C3});
    CHECK(fold(fold_code_point, 0x301).empty());
}
