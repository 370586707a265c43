#pragma once
// SPDX-License-Identifier: MIT
// Reading and writing the JSON configuration stored in case, table and checkpoint files.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/layer/config.hpp>

#include <nlohmann/json.hpp>

#include <cmath>       // for isfinite
#include <cstdint>     // for int64_t
#include <limits>      // for numeric_limits
#include <string>      // for string
#include <string_view> // for string_view
#include <vector>      // for vector

ENGRAM_BEGIN_NAMESPACE

namespace json_field {

/// The integer at `key`; format_error if missing, not an integer, or outside [lo, hi].
inline std::int64_t integer(const nlohmann::json& j, std::string_view key,
                            std::int64_t lo = std::numeric_limits<std::int64_t>::min(),
                            std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
    const auto it = j.find(key);
    if (it == j.end()) throw format_error("config: missing key '" + std::string(key) + "'");
    if (!it->is_number_integer())
        throw format_error("config: '" + std::string(key) + "' must be an integer, got " + it->dump());
    if (it->is_number_unsigned() && it->get<std::uint64_t>() > static_cast<std::uint64_t>(hi))
        throw config_error("config: '" + std::string(key) + "' = " + it->dump() + " is out of range");
    const auto v = it->get<std::int64_t>();
    if (v < lo || v > hi)
        throw config_error("config: '" + std::string(key) + "' = " + std::to_string(v) + " must be in [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
}

/// The list of integers at `key`.
inline std::vector<std::int64_t> integer_list(const nlohmann::json& j, std::string_view key) {
    const auto it = j.find(key);
    if (it == j.end()) throw format_error("config: missing key '" + std::string(key) + "'");
    if (!it->is_array()) throw format_error("config: '" + std::string(key) + "' must be a list, got " + it->dump());
    std::vector<std::int64_t> out;
    for (std::size_t i = 0; i < it->size(); ++i) {
        const auto& e = (*it)[i];
        if (!e.is_number_integer() || (e.is_number_unsigned() && e.get<std::uint64_t>() > std::uint64_t(INT64_MAX)))
            throw format_error("config: '" + std::string(key) + "[" + std::to_string(i) + "]' must be an int64, got " +
                               e.dump());
        out.push_back(e.get<std::int64_t>());
    }
    return out;
}

/// The finite number at `key`, or `fallback` when the key is absent.
inline double number_or(const nlohmann::json& j, std::string_view key, double fallback) {
    const auto it = j.find(key);
    if (it == j.end()) return fallback;
    if (!it->is_number() || !std::isfinite(it->get<double>()))
        throw format_error("config: '" + std::string(key) + "' must be a finite number, got " + it->dump());
    return it->get<double>();
}

/// The integer at `key` (checked as `integer`), or `fallback` when the key is absent.
inline std::int64_t integer_or(const nlohmann::json& j, std::string_view key, std::int64_t fallback,
                               std::int64_t lo = std::numeric_limits<std::int64_t>::min(),
                               std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
    return j.contains(key) ? integer(j, key, lo, hi) : fallback;
}

} // namespace json_field

/// @brief Parses a configuration JSON text (the `config` metadata of a case file).
/// @throws format_error for malformed JSON or ill-typed keys, config_error for bad values.
inline nlohmann::json parse_config_text(std::string_view text) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw format_error("config: metadata 'config' is not valid JSON");
    if (!j.is_object()) throw format_error("config: metadata 'config' must be a JSON object");
    return j;
}

/// @brief The hashing fields of a configuration object; other keys are ignored. Validated.
inline hash_config hash_config_from_json(const nlohmann::json& j) {
    if (!j.is_object()) throw format_error("config: expected a JSON object");
    hash_config c;
    c.table_size_per_ngram = json_field::integer_list(j, "table_size_per_ngram");
    c.max_ngram = static_cast<int>(json_field::integer(j, "max_ngram", 2, hash_config::max_supported_ngram));
    c.heads_per_ngram = static_cast<int>(json_field::integer(j, "heads_per_ngram", 1, 4096));
    c.embed_per_ngram = json_field::integer(j, "embed_per_ngram", 1);
    c.layer_ids = json_field::integer_list(j, "layer_ids");
    c.pad_id = json_field::integer(j, "pad_id", 0);
    c.seed = json_field::integer(j, "seed", 0);
    if (j.contains("orders"))
        for (auto n : json_field::integer_list(j, "orders")) {
            if (n < 2 || n > hash_config::max_supported_ngram)
                throw config_error("config: orders value " + std::to_string(n) + " is out of range");
            c.orders.push_back(static_cast<int>(n));
        }
    c.validate();
    return c;
}

/// @brief A layer configuration from the keys of a forward case or checkpoint: the hashing keys
///        plus `hidden`, `branches`, `kernel_size`, `layer_id` and the optional
///        `conv_dilation`, `gate_norm_eps`, `conv_norm_eps`, `dead_token`. Validated.
inline layer_config layer_config_from_json(const nlohmann::json& j) {
    layer_config c;
    c.hash = hash_config_from_json(j);
    c.layer_id = json_field::integer(j, "layer_id", 0);
    c.hidden = json_field::integer(j, "hidden", 1, std::int64_t{1} << 20);
    c.branches = json_field::integer(j, "branches", 1, 64);
    c.kernel_size = json_field::integer(j, "kernel_size", 1, 64);
    c.conv_dilation = json_field::integer_or(j, "conv_dilation", 0, 0, 4096);
    c.gate_norm_eps = static_cast<float>(json_field::number_or(j, "gate_norm_eps", c.gate_norm_eps));
    c.conv_norm_eps = static_cast<float>(json_field::number_or(j, "conv_norm_eps", c.conv_norm_eps));
    if (j.contains("dead_token") && !j.at("dead_token").is_null())
        c.dead_token = json_field::integer(j, "dead_token", 0);
    c.validate();
    return c;
}

/// @brief The JSON form of a hashing configuration (the keys of the reference).
inline nlohmann::json to_json(const hash_config& c) {
    nlohmann::json j;
    j["table_size_per_ngram"] = c.table_size_per_ngram;
    j["max_ngram"] = c.max_ngram;
    j["heads_per_ngram"] = c.heads_per_ngram;
    j["embed_per_ngram"] = c.embed_per_ngram;
    j["layer_ids"] = c.layer_ids;
    j["pad_id"] = c.pad_id;
    j["seed"] = c.seed;
    if (!c.orders.empty()) j["orders"] = c.orders;
    return j;
}

/// @brief The JSON form of a layer configuration (inverse of `layer_config_from_json`).
inline nlohmann::json to_json(const layer_config& c) {
    nlohmann::json j = to_json(c.hash);
    j["layer_id"] = c.layer_id;
    j["hidden"] = c.hidden;
    j["branches"] = c.branches;
    j["kernel_size"] = c.kernel_size;
    j["conv_dilation"] = c.dilation();
    j["gate_norm_eps"] = c.gate_norm_eps;
    j["conv_norm_eps"] = c.conv_norm_eps;
    if (c.dead_token) j["dead_token"] = *c.dead_token;
    return j;
}

ENGRAM_END_NAMESPACE
