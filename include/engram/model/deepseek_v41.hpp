#pragma once
// SPDX-License-Identifier: MIT
// DeepSeek-V4.1's production Engram layers (spec deepseek-v41.md): the configuration in both
// dialects, the layer as a composition of engram's policies, and its assembly from the
// checkpoint's tensors (rows served in place, `wkv` dequantised once).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/layer/dispatch.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/layer/layer.hpp>
#include <engram/layer/projection.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/storage/fp8_tensor.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <nlohmann/json.hpp>

#include <algorithm> // for find
#include <cstddef>   // for size_t
#include <cstdint>   // for int64_t
#include <map>       // for map
#include <memory>    // for shared_ptr
#include <optional>  // for optional
#include <string>    // for string, to_string
#include <utility>   // for move, pair
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

namespace deepseek_v41 {

/// @brief The layer's policies: 2..4-grams, rows read in place from the checkpoint's FP8
///        tensors, the copysign gate, `h + g v` with the token mask also blocking the hash, and
///        the FP8 block projection (act_quant in, bf16 out). Other orders: `with_orders`.
struct policies : layer_policies {
    using orders_type = orders<2, 3, 4>;
    using storage_type = fp8_tensor_storage;
    using row_type = fp8_e4m3_codec;
    using gate_type = copysign_gate;
    using fusion_type = masked_production_fusion;
    using projection_type = fp8_block_projection;
};

/// The layer type of V4.1-Flash (2..4-grams).
using layer_type = layer<policies>;

/// @brief The Engram keys of a V4.1 configuration (spec section 1), read from the Hugging Face
///        `config.json` (its `text_config`, or the top level) or from `inference/config.json`.
struct config {
    std::vector<std::int64_t> layer_ids;      ///< engram_layer_ids
    std::vector<std::int64_t> num_embeddings; ///< engram_num_embeddings: rows of each layer's table
    int max_ngram = 4;                        ///< engram_max_ngram_size (orders 2..N)
    std::int64_t prime_start = 0;             ///< engram_vocab_size: the prime search's start, all orders
    int n_heads = 8;                          ///< engram_n_heads (K)
    std::int64_t head_dim = 256;              ///< engram_head_dim
    token_id pad_id = 2;                      ///< engram_pad_token_id / engram_pad_id (a raw id)
    std::int64_t compressed_vocab_size = 0;   ///< engram_compressed_vocab_size (V')
    double norm_eps = 1e-20;                  ///< rms_norm_eps / norm_eps
    std::int64_t hidden = 0;                  ///< hidden_size / dim
    std::int64_t hc = 4;                      ///< hc_mult
    std::int64_t vocab_size = 0;              ///< vocab_size (V)
    std::optional<token_id> image_token_id;   ///< image_token_id, if given
    std::optional<std::int64_t> layer_id;     ///< layer_id (case files only)

    /// @brief Reads either dialect. A key given under both names must have one value.
    /// @throws format_error for a missing or ill-typed key, config_error for a bad value.
    static config from_json(const nlohmann::json& j) {
        if (!j.is_object()) throw format_error("config: expected a JSON object");
        const auto tc = j.find("text_config");
        const nlohmann::json& t = tc != j.end() && tc->is_object() ? *tc : j;
        auto pick = [&](const char* hf, const char* inference) -> const char* {
            const bool a = t.contains(hf), b = t.contains(inference);
            if (a && b && t.at(hf) != t.at(inference))
                throw config_error(std::string("config: '") + hf + "' = " + t.at(hf).dump() + " and '" + inference +
                                   "' = " + t.at(inference).dump() + " disagree");
            return a || !b ? hf : inference;
        };
        config c;
        c.layer_ids = json_field::integer_list(t, "engram_layer_ids");
        c.num_embeddings = json_field::integer_list(t, "engram_num_embeddings");
        c.max_ngram =
            static_cast<int>(json_field::integer(t, "engram_max_ngram_size", 2, hash_config::max_supported_ngram));
        c.prime_start = json_field::integer(t, "engram_vocab_size", 1, hash_config::max_table_size);
        c.n_heads = static_cast<int>(json_field::integer(t, "engram_n_heads", 1, 4096));
        c.head_dim = json_field::integer(t, "engram_head_dim", 1, std::int64_t{1} << 16);
        c.pad_id = json_field::integer(t, pick("engram_pad_token_id", "engram_pad_id"), 0);
        c.compressed_vocab_size = json_field::integer(t, "engram_compressed_vocab_size", 1);
        const char* eps = pick("rms_norm_eps", "norm_eps");
        if (!t.contains(eps)) throw format_error("config: missing key 'rms_norm_eps' (or 'norm_eps')");
        c.norm_eps = json_field::number_or(t, eps, 0.0);
        c.hidden = json_field::integer(t, pick("hidden_size", "dim"), 1, std::int64_t{1} << 20);
        c.hc = json_field::integer(t, "hc_mult", 1, 64);
        c.vocab_size = json_field::integer(t, "vocab_size", 1);
        for (const nlohmann::json* o : {&t, &j})
            if (o->contains("image_token_id") && !o->at("image_token_id").is_null()) {
                c.image_token_id = json_field::integer(*o, "image_token_id", 0);
                break;
            }
        if (t.contains("layer_id")) c.layer_id = json_field::integer(t, "layer_id", 0);
        c.validate();
        return c;
    }

    /// @brief Checks every field against the others. @throws config_error naming the first bad one.
    void validate() const {
        auto fail = [](const std::string& what) { throw config_error("config: " + what); };
        if (layer_ids.empty()) fail("engram_layer_ids is empty");
        if (num_embeddings.size() != layer_ids.size())
            fail("engram_num_embeddings has " + std::to_string(num_embeddings.size()) + " entries for " +
                 std::to_string(layer_ids.size()) + " engram_layer_ids");
        if (head_dim % 32 != 0) fail("engram_head_dim = " + std::to_string(head_dim) + " is not a multiple of 32");
        if (compressed_vocab_size > vocab_size)
            fail("engram_compressed_vocab_size = " + std::to_string(compressed_vocab_size) +
                 " exceeds vocab_size = " + std::to_string(vocab_size));
        if (pad_id >= vocab_size)
            fail("engram_pad_token_id = " + std::to_string(pad_id) + " is outside the vocabulary [0, " +
                 std::to_string(vocab_size) + ")");
        if (!(norm_eps > 0.0) || !(norm_eps < 1.0) || !(static_cast<float>(norm_eps) > 0.0f))
            fail("rms_norm_eps = " + std::to_string(norm_eps) + " must be in (0, 1) and a positive float");
        if (layer_id && std::find(layer_ids.begin(), layer_ids.end(), *layer_id) == layer_ids.end())
            fail("layer_id " + std::to_string(*layer_id) + " is not in engram_layer_ids");
        hash().validate();
    }

    /// The hashing configuration: one prime-search start for every order, K heads of
    /// head_dim values, seed 0.
    [[nodiscard]] hash_config hash() const {
        hash_config h;
        h.max_ngram = max_ngram;
        h.table_size_per_ngram.assign(static_cast<std::size_t>(max_ngram - 1), prime_start);
        h.heads_per_ngram = n_heads;
        h.embed_per_ngram = static_cast<std::int64_t>(n_heads) * head_dim;
        h.layer_ids = layer_ids;
        h.pad_id = pad_id;
        h.seed = 0;
        return h;
    }

    /// @brief The layer configuration of Engram layer `id`. @throws config_error if it is not one.
    [[nodiscard]] layer_config layer(std::int64_t id) const {
        layer_config c;
        c.hash = hash();
        c.layer_id = id;
        c.hidden = hidden;
        c.branches = hc;
        c.kernel_size = 1;
        c.gate_norm_eps = static_cast<float>(norm_eps);
        c.validate();
        return c;
    }

    /// @brief Position of layer `id` in `layer_ids`. @throws config_error if absent.
    [[nodiscard]] std::size_t index_of(std::int64_t id) const {
        const auto it = std::find(layer_ids.begin(), layer_ids.end(), id);
        if (it == layer_ids.end())
            throw config_error("layer " + std::to_string(id) + " is not an Engram layer (engram_layer_ids lists " +
                               list_text(layer_ids) + ")");
        return static_cast<std::size_t>(it - layer_ids.begin());
    }

    /// @brief Checks a token map against the config: V raw ids and V' canonical ids.
    /// @throws config_error naming both numbers.
    void check_vocab(const canonical_table& vocab, const std::string& what) const {
        if (vocab.vocab_size() != static_cast<std::size_t>(vocab_size))
            throw config_error(what + " maps " + std::to_string(vocab.vocab_size()) +
                               " raw ids, the config's vocab_size is " + std::to_string(vocab_size));
        if (vocab.canonical_size() != compressed_vocab_size)
            throw config_error(what + " has " + std::to_string(vocab.canonical_size()) +
                               " canonical ids, the config's engram_compressed_vocab_size is " +
                               std::to_string(compressed_vocab_size));
    }

    /// The layouts of every Engram layer, checked against engram_num_embeddings.
    /// @throws config_error if a layer's primes do not sum to its engram_num_embeddings entry.
    [[nodiscard]] std::vector<layer_layout> layouts(const canonical_table& vocab) const {
        auto all = make_layouts(hash(), vocab.canonical_size(), vocab.canonical_pad_id(pad_id));
        for (std::size_t i = 0; i < all.size(); ++i)
            if (all[i].total_rows != num_embeddings[i])
                throw config_error("config: engram_num_embeddings[" + std::to_string(i) +
                                   "] = " + std::to_string(num_embeddings[i]) + " but the primes of layer " +
                                   std::to_string(layer_ids[i]) + " sum to " + std::to_string(all[i].total_rows));
        return all;
    }

    static std::string list_text(const std::vector<std::int64_t>& v) {
        std::string s = "[";
        for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
        return s + "]";
    }
};

/// @brief DeepSeek-V4.1-Flash's Engram configuration as released (spec section 1), for
///        benchmarks and for checking a downloaded config against.
inline config flash_config() {
    return config::from_json({{"engram_layer_ids", {1, 14}},
                              {"engram_num_embeddings", {384006168, 384016682}},
                              {"engram_max_ngram_size", 4},
                              {"engram_vocab_size", 16000000},
                              {"engram_n_heads", 8},
                              {"engram_head_dim", 256},
                              {"engram_pad_token_id", 2},
                              {"engram_compressed_vocab_size", 99092},
                              {"rms_norm_eps", 1e-20},
                              {"hidden_size", 5120},
                              {"hc_mult", 4},
                              {"vocab_size", 129280},
                              {"image_token_id", 129264}});
}

/// @brief The checkpoint's name of tensor `part` of Engram layer `id`: `layers.{id}.engram.{part}`.
inline std::string tensor_name(std::int64_t id, const char* part) {
    return "layers." + std::to_string(id) + ".engram." + part;
}

/// @brief Tensors by name, each in the (mapped, shared) file that holds it: one case file, or
///        the shards of a checkpoint.
class tensor_set {
public:
    /// Adds tensor `name` of `file` (format_error if the file lacks it).
    void add(const std::string& name, std::shared_ptr<const safetensors_file> file) {
        (void)file->at(name);
        entries_[name] = std::move(file);
    }
    /// Adds every tensor of `file`.
    void add_all(const std::shared_ptr<const safetensors_file>& file) {
        for (const tensor_view& t : file->tensors()) entries_[t.name] = file;
    }
    [[nodiscard]] bool contains(const std::string& name) const { return entries_.count(name) != 0; }
    /// @throws format_error "missing tensor 'name'".
    [[nodiscard]] const tensor_view& at(const std::string& name) const { return file_of(name)->at(name); }
    [[nodiscard]] const std::shared_ptr<const safetensors_file>& file_of(const std::string& name) const {
        const auto it = entries_.find(name);
        if (it == entries_.end()) throw format_error("missing tensor '" + name + "'");
        return it->second;
    }
    /// Where tensor `name` is, for messages: its file's path (or "safetensors buffer").
    [[nodiscard]] std::string where(const std::string& name) const {
        const auto& f = file_of(name);
        return f->path().empty() ? std::string("safetensors buffer") : f->path().string();
    }

private:
    std::map<std::string, std::shared_ptr<const safetensors_file>> entries_;
};

namespace detail {

/// Checks tensor `name`'s dtype (one of `types`) and shape; format_error naming both otherwise.
inline const tensor_view& expect_tensor(const tensor_set& tensors, const std::string& name,
                                        std::initializer_list<dtype> types, const std::vector<std::int64_t>& shape) {
    const tensor_view& t = tensors.at(name);
    const std::string where = tensors.where(name) + ": tensor '" + name + "'";
    if (std::find(types.begin(), types.end(), t.type) == types.end())
        throw format_error(where + " has dtype " + std::string(dtype_name(t.type)) + ", expected " +
                           std::string(dtype_name(*types.begin())));
    if (t.shape != shape)
        throw format_error(where + " has shape " + engram::detail::shape_string(t.shape) + ", expected " +
                           engram::detail::shape_string(shape));
    return t;
}

} // namespace detail

/// @brief The row table of Engram layer `id`, served in place from the file(s) holding
///        `embed.weight` (F8_E4M3 [rows, head_dim]) and `embed.scale` (F8_E8M0 [rows, head_dim/32]).
/// @throws format_error for a missing tensor, a wrong dtype or shape (rows = the layer's
///         engram_num_embeddings).
inline fp8_tensor_table embedding_table(const config& cfg, std::int64_t id, const tensor_set& tensors) {
    const std::int64_t rows = cfg.num_embeddings[cfg.index_of(id)];
    const std::string wn = tensor_name(id, "embed.weight"), sn = tensor_name(id, "embed.scale");
    const tensor_view& w = detail::expect_tensor(tensors, wn, {dtype::f8_e4m3}, {rows, cfg.head_dim});
    const tensor_view& s = detail::expect_tensor(tensors, sn, {dtype::f8_e8m0, dtype::u8}, {rows, cfg.head_dim / 32});
    auto owner = std::make_shared<
        const std::pair<std::shared_ptr<const safetensors_file>, std::shared_ptr<const safetensors_file>>>(
        tensors.file_of(wn), tensors.file_of(sn));
    fp8_tensor_table t(owner, w.bytes.data(), s.bytes.data(), static_cast<std::size_t>(rows),
                       static_cast<std::size_t>(cfg.head_dim));
    t.advise_random();
    return t;
}

/// @brief Engram layer `id` from its checkpoint tensors: the row table in place, `wkv`
///        dequantised once (`W[o][i] = e4m3(w) * 2^(scale[o/32][i/32] - 127)`, its key rows
///        reordered after the value rows, as the layer stacks them) and kept in `format`
///        (bf16_dot by default: the dequantised weights are exact in bf16), `q_weight` and
///        `k_weight` as the hidden and key norm weights.
/// @tparam Layer `layer_type` or another `layer<with_orders<policies, ...>>`.
/// @param vocab the token map (V = vocab_size raw ids onto V' = engram_compressed_vocab_size).
/// @throws config_error for a token map of the wrong size, primes that do not sum to
///         engram_num_embeddings or a layer that is not an Engram layer; format_error for a
///         missing tensor or a wrong dtype or shape (naming the file and tensor).
template <class Layer = layer_type>
Layer load_layer(const config& cfg, std::int64_t id, canonical_table vocab, const tensor_set& tensors,
                 weight_format format = weight_format::bf16_dot) {
    cfg.check_vocab(vocab, "the token map");
    const std::size_t index = cfg.index_of(id);
    (void)cfg.layouts(vocab)[index];
    const std::int64_t dim = cfg.hidden, hc = cfg.hc;
    const std::int64_t out_rows = dim * (hc + 1),
                       in_cols = static_cast<std::int64_t>(cfg.max_ngram - 1) * cfg.n_heads * cfg.head_dim;
    const std::string wkv = tensor_name(id, "wkv.weight"), wks = tensor_name(id, "wkv.scale");
    const tensor_view& w = detail::expect_tensor(tensors, wkv, {dtype::f8_e4m3}, {out_rows, in_cols});
    const tensor_view& ws =
        detail::expect_tensor(tensors, wks, {dtype::f8_e8m0, dtype::u8}, {(out_rows + 31) / 32, (in_cols + 31) / 32});
    const tensor_view& q = detail::expect_tensor(tensors, tensor_name(id, "q_weight"), {dtype::bf16}, {hc, dim});
    const tensor_view& k = detail::expect_tensor(tensors, tensor_name(id, "k_weight"), {dtype::bf16}, {hc, dim});
    fp8_tensor_table table = embedding_table(cfg, id, tensors);

    Layer l(cfg.layer(id), std::move(vocab), std::move(table));
    const auto in = static_cast<std::size_t>(in_cols), scale_cols = static_cast<std::size_t>((in_cols + 31) / 32);
    const auto* codes = reinterpret_cast<const std::uint8_t*>(w.bytes.data());
    const auto* scales = reinterpret_cast<const std::uint8_t*>(ws.bytes.data());
    for (std::int64_t o = 0; o < out_rows; ++o) {
        // wkv rows: key of copy 0..hc-1, then the value; the layer: the value, then the keys.
        const std::int64_t copy = o / dim, j = o % dim;
        float* dst = copy < hc ? &l.key_weight(static_cast<std::size_t>(copy))(j, 0) : &l.value_weight()(j, 0);
        const std::uint8_t* c = codes + static_cast<std::size_t>(o) * in;
        const std::uint8_t* s = scales + static_cast<std::size_t>(o / 32) * scale_cols;
        for (std::size_t i = 0; i < in; ++i)
            dst[i] = engram::detail::e4m3_table[c[i]] * engram::detail::ue8m0_value(s[i / 32]);
    }
    const auto qv = q.to_vector<float>(), kv = k.to_vector<float>();
    for (std::int64_t m = 0; m < hc; ++m)
        for (std::int64_t c = 0; c < dim; ++c) {
            l.hidden_norm(static_cast<std::size_t>(m))(c) = qv[static_cast<std::size_t>(m * dim + c)];
            l.key_norm(static_cast<std::size_t>(m))(c) = kv[static_cast<std::size_t>(m * dim + c)];
        }
    l.set_weight_format(format);
    return l;
}

/// @brief Calls `f(std::type_identity<L>{})` with the layer type of `cfg`'s orders (2..N).
template <class F>
decltype(auto) dispatch(const config& cfg, F&& f) {
    return dispatch_layer<policies>(cfg.hash(), std::forward<F>(f));
}

/// @brief Whether a configuration object is V4.1's (it has `engram_layer_ids`, at the top level
///        or in `text_config`), in either dialect.
inline bool is_config(const nlohmann::json& j) {
    if (!j.is_object()) return false;
    const auto tc = j.find("text_config");
    return j.contains("engram_layer_ids") || (tc != j.end() && tc->is_object() && tc->contains("engram_layer_ids"));
}

/// @brief Whether a safetensors file is a V4.1 case file (metadata `format` =
///        `deepseek_v41_engram_case`, spec section 6).
inline bool is_case_file(const safetensors_file& file) {
    const std::string* f = file.find_metadata("format");
    return f != nullptr && *f == "deepseek_v41_engram_case";
}

} // namespace deepseek_v41

ENGRAM_END_NAMESPACE
