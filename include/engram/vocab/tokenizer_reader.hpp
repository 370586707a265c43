#pragma once
// SPDX-License-Identifier: MIT
// Reads the parts of a tokenizer.json that the canonical table needs, in one streaming (SAX)
// pass: `model` without its merges, `added_tokens` and `decoder`; the entries of a
// `{token: id}` vocabulary go into a flat list instead of a JSON object.

#include <engram/config.hpp>
#include <engram/error.hpp>

#include <nlohmann/json.hpp> // for json, json_sax, sax_parse

#include <array>        // for array
#include <cerrno>       // for errno
#include <cstddef>      // for size_t
#include <filesystem>   // for path, status
#include <fstream>      // for ifstream
#include <string>       // for string
#include <string_view>  // for string_view
#include <system_error> // for error_code, generic_category
#include <utility>      // for move, pair
#include <vector>       // for vector

ENGRAM_BEGIN_NAMESPACE

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

/// What `read_for_table` keeps of a tokenizer.json.
struct tokenizer_parts {
    /// The document without the parts the table does not read. If `model.vocab` is an object,
    /// it is empty here and its entries are in `vocab_entries`.
    nlohmann::json doc;
    /// The `{token: id}` entries of `model.vocab` in file order (repeated keys included).
    std::vector<std::pair<std::string, nlohmann::json>> vocab_entries;
};

/// The SAX handler of `read_for_table`: builds the kept parts as JSON values, skips the rest
/// without storing it. Skipped: top-level fields other than `model`, `added_tokens` and
/// `decoder`, and `model.merges` (most of a BPE file).
class table_sax : public nlohmann::json_sax<nlohmann::json> {
public:
    using json = nlohmann::json;
    explicit table_sax(tokenizer_parts& out) : out_(out) {}

    bool null() override { return value(json(nullptr)); }
    bool boolean(bool v) override { return value(json(v)); }
    bool number_integer(number_integer_t v) override { return value(json(v)); }
    bool number_unsigned(number_unsigned_t v) override { return value(json(v)); }
    bool number_float(number_float_t v, const string_t&) override { return value(json(v)); }
    bool string(string_t& v) override { return value(json(std::move(v))); }
    bool binary(binary_t&) override { return value(json(nullptr)); } // JSON text has none
    bool start_object(std::size_t) override { return open(json::object()); }
    bool start_array(std::size_t) override { return open(json::array()); }
    bool end_object() override { return close(); }
    bool end_array() override { return close(); }
    bool key(string_t& k) override {
        if (skip_ > 0) return true;
        if (capturing_) {
            entry_key_ = std::move(k);
            return true;
        }
        key_ = std::move(k);
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        error_ = e.what();
        return false;
    }

    [[nodiscard]] const std::string& error() const noexcept { return error_; }

private:
    /// Where the next value goes: skipped, into the vocabulary entries, or into the document.
    bool value(json v) {
        if (skip_ > 0) return true;
        if (capturing_) {
            out_.vocab_entries.emplace_back(std::move(entry_key_), std::move(v));
            return true;
        }
        if (skipped_here()) return true;
        place(std::move(v));
        return true;
    }
    bool open(json container) {
        if (skip_ > 0) {
            ++skip_;
            return true;
        }
        if (capturing_) { // an object or array as a vocabulary id: kept as an empty one, to report
            out_.vocab_entries.emplace_back(std::move(entry_key_), std::move(container));
            skip_ = 1;
            return true;
        }
        if (skipped_here()) {
            skip_ = 1;
            return true;
        }
        const bool vocab_object = stack_.size() == 2 && container.is_object() && key_ == "vocab" && in_model();
        json* placed = place(std::move(container));
        stack_.push_back(placed);
        if (vocab_object) {
            out_.vocab_entries.clear(); // a repeated "vocab" key: the last one counts
            capturing_ = true;
        }
        return true;
    }
    bool close() {
        if (skip_ > 0) {
            --skip_;
            return true;
        }
        capturing_ = false; // if it was on, this is the end of model.vocab
        stack_.pop_back();
        return true;
    }

    /// Whether the value that comes now belongs to a skipped field.
    [[nodiscard]] bool skipped_here() const {
        if (stack_.size() == 1 && stack_.back()->is_object())
            return !(key_ == "model" || key_ == "added_tokens" || key_ == "decoder");
        return stack_.size() == 2 && key_ == "merges" && in_model();
    }
    [[nodiscard]] bool in_model() const { return stack_.size() >= 2 && stack_[1] == model_; }

    json* place(json v) {
        if (stack_.empty()) {
            out_.doc = std::move(v);
            return &out_.doc;
        }
        json& parent = *stack_.back();
        if (parent.is_array()) {
            parent.push_back(std::move(v));
            return &parent.back();
        }
        json& slot = parent[key_] = std::move(v); // a repeated key: the last one counts
        if (stack_.size() == 1 && key_ == "model") model_ = &slot;
        return &slot;
    }

    tokenizer_parts& out_;
    std::vector<json*> stack_; // the open containers of the document
    std::string key_, entry_key_;
    json* model_ = nullptr;
    std::size_t skip_ = 0; // open containers inside a skipped value
    bool capturing_ = false;
    std::string error_;
};

/// @brief Parses tokenizer.json text into the parts the canonical table reads. The whole text is
///        checked to be JSON.
/// @throws format_error naming `source` if it is not
inline tokenizer_parts read_for_table(std::string_view json_text, const std::string& source) {
    tokenizer_parts parts;
    table_sax sax(parts);
    if (!nlohmann::json::sax_parse(json_text.begin(), json_text.end(), &sax))
        throw format_error(source + ": not valid JSON: " + sax.error());
    return parts;
}

} // namespace detail::tokenizer_json

ENGRAM_END_NAMESPACE
