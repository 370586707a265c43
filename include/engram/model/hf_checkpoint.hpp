#pragma once
// SPDX-License-Identifier: MIT
// A DeepSeek-V4.1 checkpoint directory as Hugging Face ships it: config.json (or
// inference/config.json), model.safetensors.index.json, the shards and tokenizer.json. Only the
// Engram tensors' shards are mapped; the row tables are served from them in place.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/io/vocab_io.hpp>
#include <engram/model/deepseek_v41.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>    // for int64_t, uint64_t
#include <filesystem> // for path, exists, is_directory
#include <fstream>    // for ifstream
#include <iterator>   // for istreambuf_iterator
#include <map>        // for map
#include <memory>     // for shared_ptr, make_shared
#include <optional>   // for optional
#include <set>        // for set
#include <string>     // for string
#include <utility>    // for move
#include <vector>     // for vector

ENGRAM_BEGIN_NAMESPACE

namespace deepseek_v41 {

/// The Engram tensors of layer `id` (spec section 2), in checkpoint order.
inline std::vector<std::string> layer_tensor_names(std::int64_t id) {
    std::vector<std::string> out;
    for (const char* part : {"embed.weight", "embed.scale", "wkv.weight", "wkv.scale", "q_weight", "k_weight"})
        out.push_back(tensor_name(id, part));
    return out;
}

namespace detail {

inline nlohmann::json read_json_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error("cannot read '" + path.string() + "'");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw format_error("'" + path.string() + "' is not valid JSON");
    if (!j.is_object()) throw format_error("'" + path.string() + "' is not a JSON object");
    return j;
}

} // namespace detail

/// What `checkpoint::open` takes besides the directory.
struct checkpoint_options {
    /// A precomputed token map (a safetensors file with `lookup` I64 [V], as `engram
    /// compress-vocab` writes it) instead of the directory's tokenizer.json.
    std::optional<std::filesystem::path> token_map{};
};

/// @brief An opened checkpoint directory: its configuration, token map and Engram tensors.
class checkpoint {
public:
    using options = checkpoint_options;

    /// One Engram layer of the checkpoint, for listings.
    struct layer_info {
        std::int64_t id = 0;
        std::int64_t rows = 0;
        std::int64_t dim = 0;
        std::string codec;       ///< the row format: "fp8_e4m3 + e8m0 per 32"
        std::uint64_t bytes = 0; ///< the row table's bytes (codes and scales)
        std::string shard;       ///< the file holding embed.weight
    };

    /// @brief Opens `dir`: reads the config (config.json's `text_config` or top level, else
    ///        inference/config.json), the index (model.safetensors.index.json, or a single
    ///        model.safetensors), maps the shards holding Engram tensors, and builds the token
    ///        map from tokenizer.json over raw ids [0, vocab_size) (or reads `opts.token_map`),
    ///        checked against engram_compressed_vocab_size. Checks that every layer's primes sum
    ///        to its engram_num_embeddings.
    /// @throws io_error for a missing directory or file (naming it), format_error for malformed
    ///         JSON, a missing index entry or tensor, config_error for inconsistent values.
    static checkpoint open(const std::filesystem::path& dir, const options& opts = {}) {
        namespace fs = std::filesystem;
        if (!fs::is_directory(dir)) throw io_error("'" + dir.string() + "' is not a checkpoint directory");
        checkpoint c;
        c.dir_ = dir;
        c.read_config(dir);
        c.read_index(dir);
        if (opts.token_map) {
            c.vocab_ = load_canonical_table(*opts.token_map);
            c.vocab_source_ = opts.token_map->string();
        } else {
            const fs::path tok = dir / "tokenizer.json";
            if (!fs::exists(tok))
                throw io_error("'" + dir.string() + "' has no tokenizer.json (give a token map instead)");
            c.vocab_ = canonical_table_from_tokenizer_json(tok, static_cast<std::size_t>(c.cfg_.vocab_size));
            c.vocab_source_ = tok.string();
        }
        c.cfg_.check_vocab(c.vocab_, c.vocab_source_);
        (void)c.cfg_.layouts(c.vocab_);
        return c;
    }

    [[nodiscard]] const config& cfg() const noexcept { return cfg_; }
    [[nodiscard]] const std::filesystem::path& dir() const noexcept { return dir_; }
    [[nodiscard]] const std::filesystem::path& config_path() const noexcept { return config_path_; }
    [[nodiscard]] const canonical_table& vocab() const noexcept { return vocab_; }
    [[nodiscard]] const std::string& vocab_source() const noexcept { return vocab_source_; }
    [[nodiscard]] const tensor_set& tensors() const noexcept { return tensors_; }

    /// @brief Every Engram layer: rows, row format, bytes and shard.
    [[nodiscard]] std::vector<layer_info> layers() const {
        std::vector<layer_info> out;
        for (std::int64_t id : cfg_.layer_ids) {
            const fp8_tensor_table t = table(id);
            const std::string name = tensor_name(id, "embed.weight");
            out.push_back({id, static_cast<std::int64_t>(t.rows()), static_cast<std::int64_t>(t.dim()),
                           "fp8_e4m3 + e8m0 per 32", t.size_bytes(), shard_of_.at(name)});
        }
        return out;
    }

    /// @brief The row table of Engram layer `id`, in place.
    [[nodiscard]] fp8_tensor_table table(std::int64_t id) const { return embedding_table(cfg_, id, tensors_); }

    /// @brief Engram layer `id` (see deepseek_v41::load_layer).
    template <class Layer = layer_type>
    [[nodiscard]] Layer load_layer(std::int64_t id, weight_format format = weight_format::bf16_dot) const {
        return deepseek_v41::load_layer<Layer>(cfg_, id, vocab_, tensors_, format);
    }

    /// @brief Every Engram layer, in `engram_layer_ids` order.
    template <class Layer = layer_type>
    [[nodiscard]] std::vector<Layer> load_layers(weight_format format = weight_format::bf16_dot) const {
        std::vector<Layer> out;
        out.reserve(cfg_.layer_ids.size());
        for (std::int64_t id : cfg_.layer_ids) out.push_back(load_layer<Layer>(id, format));
        return out;
    }

private:
    checkpoint() = default;

    void read_config(const std::filesystem::path& dir) {
        const std::filesystem::path hf = dir / "config.json", inference = dir / "inference" / "config.json";
        std::filesystem::path path = hf;
        if (!std::filesystem::exists(hf) && std::filesystem::exists(inference)) path = inference;
        if (!std::filesystem::exists(path))
            throw io_error("'" + dir.string() + "' is a directory but not a checkpoint: it has no config.json");
        nlohmann::json j = detail::read_json_file(path);
        if (!is_config(j) && path == hf && std::filesystem::exists(inference)) {
            path = inference;
            j = detail::read_json_file(path);
        }
        config_path_ = path;
        try {
            cfg_ = config::from_json(j);
        } catch (const format_error& e) {
            throw format_error(path.string() + ": " + e.what());
        } catch (const config_error& e) {
            throw config_error(path.string() + ": " + e.what());
        }
    }

    void read_index(const std::filesystem::path& dir) {
        namespace fs = std::filesystem;
        const fs::path index = dir / "model.safetensors.index.json";
        std::map<std::string, std::string> shard_of; // tensor -> shard file name
        if (fs::exists(index)) {
            const nlohmann::json j = detail::read_json_file(index);
            const auto map = j.find("weight_map");
            if (map == j.end() || !map->is_object())
                throw format_error("'" + index.string() + "' has no 'weight_map' object");
            std::set<std::string> shards;
            for (const auto& [name, file] : map->items()) {
                if (!file.is_string())
                    throw format_error("'" + index.string() + "': weight_map['" + name + "'] is not a file name");
                shard_of[name] = file.get<std::string>();
                shards.insert(file.get<std::string>());
            }
            for (const std::string& s : shards) {
                const fs::path p = dir / s;
                if (s.empty() || fs::path(s).is_absolute() || s.find("..") != std::string::npos)
                    throw format_error("'" + index.string() + "' names shard '" + s + "', not a file in the directory");
                if (!fs::is_regular_file(p))
                    throw io_error("'" + index.string() + "' names shard '" + s + "', which does not exist");
            }
        } else if (fs::exists(dir / "model.safetensors")) {
            for (std::int64_t id : cfg_.layer_ids)
                for (const auto& name : layer_tensor_names(id)) shard_of[name] = "model.safetensors";
        } else {
            throw io_error("'" + dir.string() + "' has neither model.safetensors.index.json nor model.safetensors");
        }
        std::map<std::string, std::shared_ptr<const safetensors_file>> open;
        for (std::int64_t id : cfg_.layer_ids)
            for (const auto& name : layer_tensor_names(id)) {
                const auto it = shard_of.find(name);
                if (it == shard_of.end())
                    throw format_error("'" + index.string() + "' has no shard for tensor '" + name + "'");
                auto& file = open[it->second];
                if (!file) file = std::make_shared<const safetensors_file>(safetensors_file::open(dir / it->second));
                if (!file->contains(name))
                    throw format_error("'" + (dir / it->second).string() + "' has no tensor '" + name +
                                       "' (model.safetensors.index.json puts it there)");
                tensors_.add(name, file);
                shard_of_[name] = it->second;
            }
    }

    std::filesystem::path dir_, config_path_;
    config cfg_;
    canonical_table vocab_;
    std::string vocab_source_;
    tensor_set tensors_;
    std::map<std::string, std::string> shard_of_;
};

} // namespace deepseek_v41

ENGRAM_END_NAMESPACE
