#pragma once
// SPDX-License-Identifier: MIT
// A DeepSeek-V4.1 row table (FP8 codes and E8M0 scales in two checkpoint tensors) converted into
// an engram table file in any codec, streamed in blocks.

#include <engram/config.hpp>
#include <engram/io/table_file.hpp>
#include <engram/model/deepseek_v41.hpp>
#include <engram/storage/fp8_tensor.hpp>

#include <algorithm>  // for min, max
#include <cstdint>    // for int64_t
#include <filesystem> // for path
#include <string>     // for string
#include <vector>     // for vector

ENGRAM_BEGIN_NAMESPACE

namespace deepseek_v41 {

/// @brief Writes Engram layer `id`'s rows (`rows`, e.g. `checkpoint::table(id)`) as a table file
///        whose manifest holds the layer's configuration and token map: `engram forward --table`
///        and `table_file` then serve it like any other. With codec "fp8" the codes and scales
///        are re-encoded row by row into one interleaved row each.
/// @throws config_error if `rows` is not the layer's table; as table_file_writer otherwise (no
///         output is left behind on any error).
inline table_manifest pack_table(const config& cfg, std::int64_t id, const canonical_table& vocab,
                                 const fp8_tensor_table& rows, const std::filesystem::path& out,
                                 std::string_view codec = "fp8", std::size_t shards = 1, table_progress progress = {}) {
    cfg.check_vocab(vocab, "the token map");
    const auto layout = cfg.layouts(vocab)[cfg.index_of(id)];
    if (rows.rows() != static_cast<std::size_t>(layout.total_rows) ||
        rows.dim() != static_cast<std::size_t>(layout.head_dim))
        throw config_error("pack: the table has " + std::to_string(rows.rows()) + " x " + std::to_string(rows.dim()) +
                           " rows, layer " + std::to_string(id) + " needs " + std::to_string(layout.total_rows) +
                           " x " + std::to_string(layout.head_dim));
    table_spec spec;
    spec.config = cfg.layer(id);
    spec.vocab = vocab;
    spec.codec = std::string(codec);
    spec.shards = shards;
    table_file_writer writer(out, std::move(spec), std::move(progress));
    const std::size_t dim = rows.dim(), total = rows.rows();
    const std::size_t block = std::max<std::size_t>(1, (std::size_t{8} << 20) / (dim * sizeof(float)));
    std::vector<row_id> ids(std::min(block, total));
    std::vector<float> values(ids.size() * dim);
    for (std::size_t first = 0; first < total; first += block) {
        const std::size_t n = std::min(block, total - first);
        for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<row_id>(first + i);
        rows.gather(std::span<const row_id>(ids.data(), n), std::span<float>(values.data(), n * dim));
        writer.append(std::span<const float>(values.data(), n * dim));
    }
    return writer.finish();
}

} // namespace deepseek_v41

ENGRAM_END_NAMESPACE
