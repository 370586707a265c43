#pragma once
// SPDX-License-Identifier: MIT
// Typed access to the fields of a parsed tokenizer.json, with messages that name the field.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/vocab/utf8.hpp>

#include <nlohmann/json.hpp> // for json

#include <cstddef>     // for size_t
#include <cstdint>     // for int64_t, uint64_t
#include <string>      // for string, to_string
#include <string_view> // for string_view

ENGRAM_BEGIN_NAMESPACE

namespace tokenizer {

/// @brief The largest vocabulary size (max token id + 1) accepted from a tokenizer.json.
///
/// 2^24 is 64 times the largest vocabularies in use (about 262k) and bounds the memory of one
/// table to a few hundred MB, so a stray huge id is reported instead of exhausting memory.
inline constexpr std::size_t max_vocab_size = std::size_t{1} << 24;

} // namespace tokenizer

namespace detail::tokenizer_json {

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
/// `object[key]` if present and not null, else nullptr; it must have type `type` when present.
inline const json* optional_field(const json& object, const char* key, json::value_t type, const std::string& where,
                                  const std::string& source) {
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) return nullptr;
    if (it->type() != type)
        throw format_error(source + ": field " + where + " is " + it->type_name() + ", expected " + describe(type));
    return &*it;
}

/// A required string field.
inline const std::string& string_field(const json& object, const char* key, const std::string& where,
                                       const std::string& source) {
    return field(object, key, json::value_t::string, where, source).get_ref<const std::string&>();
}

/// A required boolean field.
inline bool bool_field(const json& object, const char* key, const std::string& where, const std::string& source) {
    return field(object, key, json::value_t::boolean, where, source).get<bool>();
}

/// A required non-negative integer field.
inline std::size_t count_field(const json& object, const char* key, const std::string& where,
                               const std::string& source) {
    const auto it = object.find(key);
    if (it == object.end()) throw format_error(source + ": missing field " + where);
    if (it->is_number_unsigned()) return static_cast<std::size_t>(it->get<std::uint64_t>());
    if (it->is_number_integer() && it->get<std::int64_t>() == 0) return 0; // "-0"
    throw format_error(source + ": field " + where + " is " +
                       (it->is_number_integer() ? std::string("negative") : std::string(it->type_name())) +
                       ", expected a non-negative integer");
}

/// A required string field holding exactly one character (a Rust `char`).
inline char32_t char_field(const json& object, const char* key, const std::string& where, const std::string& source) {
    const std::string& s = string_field(object, key, where, source);
    const utf8_step step = s.empty() ? utf8_step{0, 0, false} : next_utf8(s, 0);
    if (!step.valid || step.length != s.size())
        throw format_error(source + ": field " + where + " is " + quote_for_message(s) +
                           ", expected a single character");
    return step.code_point;
}

} // namespace detail::tokenizer_json

ENGRAM_END_NAMESPACE
