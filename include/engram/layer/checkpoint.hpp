#pragma once
// SPDX-License-Identifier: MIT
// Loading and saving an Engram layer in safetensors files, under the PyTorch reference's
// state-dict names (spec section 8) with the configuration in the metadata.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/io/vocab_io.hpp>
#include <engram/layer/layer.hpp>

#include <cmath>      // for isfinite
#include <filesystem> // for path
#include <optional>   // for optional
#include <string>     // for string, to_string
#include <vector>     // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// How a file is named in messages: its path, or "safetensors buffer".
inline std::string file_label(const safetensors_file& file) {
    return file.path().empty() ? std::string("safetensors buffer") : file.path().string();
}

/// Checks that tensor `name` exists with exactly `shape` and a float dtype (F32, F16, BF16, F64).
inline const tensor_view& checkpoint_float_tensor(const safetensors_file& file, const std::string& name,
                                                  const std::vector<std::int64_t>& shape) {
    const tensor_view& t = file.at(name);
    const std::string where = file_label(file) + ": tensor '" + name + "'";
    auto shape_text = [](const std::vector<std::int64_t>& s) {
        std::string out = "[";
        for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
        return out + "]";
    };
    if (t.shape != shape)
        throw format_error(where + " has shape " + shape_text(t.shape) + ", expected " + shape_text(shape));
    switch (t.type) {
    case dtype::f32:
    case dtype::f16:
    case dtype::bf16:
    case dtype::f64:
        break;
    default:
        throw format_error(where + " has dtype " + std::string(dtype_name(t.type)) +
                           ", expected F32, BF16, F16 or F64");
    }
    return t;
}

/// A float tensor of exactly `shape`, converted from F32, F16, BF16 or F64; finite values only.
inline std::vector<float> checkpoint_floats(const safetensors_file& file, const std::string& name,
                                            const std::vector<std::int64_t>& shape) {
    const tensor_view& t = checkpoint_float_tensor(file, name, shape);
    const std::string where = file_label(file) + ": tensor '" + name + "'";
    std::vector<float> v = t.to_vector<float>();
    for (std::size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]))
            throw format_error(where + " has a non-finite value (" + std::to_string(v[i]) + ") at flat index " +
                               std::to_string(i));
    return v;
}

template <class Dst>
void copy_into(Dst&& dst, const std::vector<float>& src) {
    for (Eigen::Index r = 0; r < dst.rows(); ++r)
        for (Eigen::Index c = 0; c < dst.cols(); ++c) dst(r, c) = src[static_cast<std::size_t>(r * dst.cols() + c)];
}

} // namespace detail

/// @brief Reads the layer configuration from a file's `config` metadata.
inline layer_config load_layer_config(const safetensors_file& file) {
    const std::string* text = file.find_metadata("config");
    if (text == nullptr) throw format_error(detail::file_label(file) + ": no 'config' entry in the metadata");
    try {
        return layer_config_from_json(parse_config_text(*text));
    } catch (const format_error& e) {
        throw format_error(detail::file_label(file) + ": " + e.what());
    } catch (const config_error& e) {
        throw config_error(detail::file_label(file) + ": " + e.what());
    }
}

/// @brief Builds a layer from a checkpoint or forward case: config from the metadata, the
///        canonical table from `lookup` (unless `vocab` is given), explicit multipliers from
///        `multipliers.layer{L}` when present, and the weights under the reference names.
///        Every tensor's shape and dtype is checked before the layer is allocated (so a
///        configuration asking for huge tables fails on the file's tensors, not on memory);
///        weights must be finite.
/// @throws format_error / config_error naming the file, tensor and value at fault.
template <class Policies = layer_policies>
layer<Policies> load_layer(const safetensors_file& file, std::optional<layer_config> cfg_override = std::nullopt,
                           std::optional<canonical_table> vocab_override = std::nullopt) {
    layer_config cfg = cfg_override ? *cfg_override : load_layer_config(file);
    canonical_table vocab = vocab_override ? std::move(*vocab_override) : load_canonical_table(file);
    std::optional<std::vector<std::int64_t>> multipliers;
    const std::string mult_name = "multipliers.layer" + std::to_string(cfg.layer_id);
    if (const tensor_view* t = file.find(mult_name)) {
        if (t->shape.size() != 1 || (t->type != dtype::i64 && t->type != dtype::i32))
            throw format_error(detail::file_label(file) + ": tensor '" + mult_name + "' must be an I64 vector");
        multipliers = t->to_vector<std::int64_t>();
    }
    {
        // Every weight's shape and dtype first: the sizes come from the configuration, and the
        // layer allocates them all, so a bad configuration must fail here, on a tensor the file
        // does not have, rather than on an allocation of the size it asks for.
        cfg.validate();
        const layer_layout planned =
            make_layout(cfg.hash, cfg.layer_id, vocab.canonical_size(), vocab.canonical_pad_id(cfg.hash.pad_id));
        const std::int64_t h = cfg.hidden, d = cfg.memory_dim();
        detail::checkpoint_float_tensor(file, "multi_head_embedding.embedding.weight",
                                        {planned.total_rows, planned.head_dim});
        detail::checkpoint_float_tensor(file, "value_proj.weight", {h, d});
        detail::checkpoint_float_tensor(file, "value_proj.bias", {h});
        for (std::int64_t m = 0; m < cfg.branches; ++m) {
            const std::string k = "key_projs." + std::to_string(m);
            detail::checkpoint_float_tensor(file, k + ".weight", {h, d});
            detail::checkpoint_float_tensor(file, k + ".bias", {h});
            detail::checkpoint_float_tensor(file, "norm1." + std::to_string(m) + ".weight", {h});
            detail::checkpoint_float_tensor(file, "norm2." + std::to_string(m) + ".weight", {h});
            if constexpr (Policies::fusion_type::has_conv)
                detail::checkpoint_float_tensor(file, "short_conv.norms." + std::to_string(m) + ".weight", {h});
        }
        if constexpr (Policies::fusion_type::has_conv)
            detail::checkpoint_float_tensor(file, "short_conv.conv.weight", {cfg.branches * h, 1, cfg.kernel_size});
    }
    layer<Policies> l(cfg, std::move(vocab), std::move(multipliers));
    const auto& layout = l.layout();
    const std::int64_t h = cfg.hidden, m_count = cfg.branches, d = cfg.memory_dim();

    // Embedding rows, and the offsets when the file has them.
    {
        const auto rows = detail::checkpoint_floats(file, "multi_head_embedding.embedding.weight",
                                                    {layout.total_rows, layout.head_dim});
        const auto d_head = static_cast<std::size_t>(layout.head_dim);
        for (std::size_t r = 0; r < l.table().rows(); ++r)
            l.table().set_row(r, std::span<const float>(rows).subspan(r * d_head, d_head));
    }
    if (const tensor_view* t = file.find("multi_head_embedding.offsets")) {
        if (t->shape.size() != 1 || (t->type != dtype::i64 && t->type != dtype::i32) ||
            t->to_vector<std::int64_t>() != layout.offsets)
            throw format_error(
                detail::file_label(file) +
                ": tensor 'multi_head_embedding.offsets' does not match the configuration's table layout");
    }
    detail::copy_into(l.value_weight(), detail::checkpoint_floats(file, "value_proj.weight", {h, d}));
    detail::copy_into(l.value_bias(), detail::checkpoint_floats(file, "value_proj.bias", {h}));
    for (std::int64_t m = 0; m < m_count; ++m) {
        const auto mi = static_cast<std::size_t>(m);
        const std::string k = "key_projs." + std::to_string(m);
        detail::copy_into(l.key_weight(mi), detail::checkpoint_floats(file, k + ".weight", {h, d}));
        detail::copy_into(l.key_bias(mi), detail::checkpoint_floats(file, k + ".bias", {h}));
        detail::copy_into(l.key_norm(mi),
                          detail::checkpoint_floats(file, "norm1." + std::to_string(m) + ".weight", {h}));
        detail::copy_into(l.hidden_norm(mi),
                          detail::checkpoint_floats(file, "norm2." + std::to_string(m) + ".weight", {h}));
    }
    if constexpr (Policies::fusion_type::has_conv) {
        detail::copy_into(l.conv_weight(),
                          detail::checkpoint_floats(file, "short_conv.conv.weight", {m_count * h, 1, cfg.kernel_size}));
        for (std::int64_t m = 0; m < m_count; ++m)
            detail::copy_into(
                l.conv_norm(static_cast<std::size_t>(m)),
                detail::checkpoint_floats(file, "short_conv.norms." + std::to_string(m) + ".weight", {h}));
    }
    return l;
}

/// @brief Opens `path` and loads the layer; see the overload above.
template <class Policies = layer_policies>
layer<Policies> load_layer(const std::filesystem::path& path) {
    return load_layer<Policies>(safetensors_file::open(path));
}

/// @brief Writes a layer under the reference names (F32), with `config`, `lookup` and the
///        multipliers, atomically. `load_layer` reads it back to the same layer.
template <class Policies>
void save_layer(layer<Policies>& l, const std::filesystem::path& path) {
    const layer_config& cfg = l.config();
    const auto& layout = l.layout();
    safetensors_writer w;
    auto add_matrix = [&w](const std::string& name, const auto& mat, std::vector<std::int64_t> shape) {
        std::vector<float> v(static_cast<std::size_t>(mat.rows() * mat.cols()));
        for (Eigen::Index r = 0; r < mat.rows(); ++r)
            for (Eigen::Index c = 0; c < mat.cols(); ++c) v[static_cast<std::size_t>(r * mat.cols() + c)] = mat(r, c);
        w.add(name, std::move(shape), v);
    };
    const std::int64_t h = cfg.hidden, d = cfg.memory_dim();
    {
        const std::size_t d_head = l.table().dim();
        std::vector<float> rows(l.table().rows() * d_head);
        for (std::size_t r = 0; r < l.table().rows(); ++r)
            l.table().get_row(r, std::span<float>(rows).subspan(r * d_head, d_head));
        w.add("multi_head_embedding.embedding.weight", {layout.total_rows, layout.head_dim}, rows);
    }
    w.add("multi_head_embedding.offsets", {static_cast<std::int64_t>(layout.offsets.size())}, layout.offsets);
    w.add("multipliers.layer" + std::to_string(cfg.layer_id), {static_cast<std::int64_t>(layout.multipliers.size())},
          layout.multipliers);
    w.add("lookup", {static_cast<std::int64_t>(l.vocab().vocab_size())}, l.vocab().lookup());
    add_matrix("value_proj.weight", l.value_weight(), {h, d});
    add_matrix("value_proj.bias", l.value_bias(), {h});
    for (std::int64_t m = 0; m < cfg.branches; ++m) {
        const auto mi = static_cast<std::size_t>(m);
        const std::string k = "key_projs." + std::to_string(m);
        add_matrix(k + ".weight", l.key_weight(mi), {h, d});
        add_matrix(k + ".bias", l.key_bias(mi), {h});
        add_matrix("norm1." + std::to_string(m) + ".weight", l.key_norm(mi), {h});
        add_matrix("norm2." + std::to_string(m) + ".weight", l.hidden_norm(mi), {h});
    }
    if constexpr (Policies::fusion_type::has_conv) {
        add_matrix("short_conv.conv.weight", l.conv_weight(), {cfg.branches * h, 1, cfg.kernel_size});
        for (std::int64_t m = 0; m < cfg.branches; ++m)
            add_matrix("short_conv.norms." + std::to_string(m) + ".weight", l.conv_norm(static_cast<std::size_t>(m)),
                       {h});
    }
    w.set_metadata("config", to_json(cfg).dump());
    w.write(path);
}

ENGRAM_END_NAMESPACE
