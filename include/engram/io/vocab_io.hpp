#pragma once
// SPDX-License-Identifier: MIT
// Canonical tables in safetensors files: tensor `lookup` (I64 [V]) plus its sizes as metadata.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <filesystem>  // for path
#include <string>      // for string, to_string
#include <string_view> // for string_view

ENGRAM_BEGIN_NAMESPACE

/// @brief Reads the canonical table stored as tensor `name` (integer dtype, rank 1).
/// @throws format_error if the tensor is missing, not an integer vector, or not a valid table;
///         a `canonical_vocab_size` metadata entry, when present, must agree.
inline canonical_table load_canonical_table(const safetensors_file& file, std::string_view name = "lookup") {
    const tensor_view& t = file.at(name);
    const std::string label = file.path().empty() ? std::string("safetensors buffer") : file.path().string();
    const std::string where = label + ": tensor '" + std::string(name) + "'";
    if (t.shape.size() != 1)
        throw format_error(where + " has rank " + std::to_string(t.shape.size()) + ", expected 1 ([V])");
    if (t.type != dtype::i64 && t.type != dtype::i32)
        throw format_error(where + " has dtype " + std::string(dtype_name(t.type)) + ", expected I64");
    canonical_table table;
    try {
        table = canonical_table::from_lookup(t.to_vector<std::int64_t>());
    } catch (const config_error& e) {
        throw format_error(where + ": " + e.what());
    }
    if (const std::string* declared = file.find_metadata("canonical_vocab_size");
        declared != nullptr && *declared != std::to_string(table.canonical_size()))
        throw format_error(label + ": metadata canonical_vocab_size = " + detail::quoted_excerpt(*declared) +
                           " but the table has " + std::to_string(table.canonical_size()) + " canonical ids");
    return table;
}

/// @brief Opens `path` and reads its `lookup` tensor; see the overload above.
inline canonical_table load_canonical_table(const std::filesystem::path& path) {
    return load_canonical_table(safetensors_file::open(path));
}

/// @brief Writes `table` atomically as tensor `lookup` with metadata `vocab_size` and
///        `canonical_vocab_size`.
inline void save_canonical_table(const canonical_table& table, const std::filesystem::path& path) {
    safetensors_writer writer;
    writer.add("lookup", {static_cast<std::int64_t>(table.vocab_size())}, table.lookup());
    writer.set_metadata("canonical_vocab_size", std::to_string(table.canonical_size()));
    writer.set_metadata("vocab_size", std::to_string(table.vocab_size()));
    writer.write(path);
}

ENGRAM_END_NAMESPACE
