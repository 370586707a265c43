// libFuzzer target: the case files `engram hash` and `engram forward` read: the config JSON
// metadata, the `lookup` canonical table, `input_ids`, the layer's weights and
// `hidden_states`; then the row ids of every layer and the layer run whole and token by token.
#include "fuzz_common.hpp"

#include "cli.hpp" // the tool's case-file readers (read_config, read_ids)

#include <engram/io/vocab_io.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/layer/dispatch.hpp>

#include <cstdint>
#include <vector>

namespace {

/// What `engram hash` does with a case file.
void hash_case(const engram::safetensors_file& file) {
    const auto config_json = engram_cli::read_config(file);
    const auto cfg = engram::hash_config_from_json(config_json);
    const auto vocab = engram::load_canonical_table(file);
    const auto raw = engram_cli::read_ids(file, "input_ids", 2);
    const auto& shape = file.at("input_ids").shape;
    const auto batch = static_cast<std::size_t>(shape[0]);
    const auto seq = static_cast<std::size_t>(shape[1]);
    std::vector<engram::token_id> canonical(raw.size());
    vocab.map(raw, canonical);
    const auto layouts = engram::make_layouts(cfg, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id));
    const auto orders = cfg.order_list();
    for (const auto& layout : layouts) {
        std::vector<std::int64_t> ids(canonical.size() * layout.num_heads());
        engram::dispatch_orders(orders, [&]<class Orders>(Orders) {
            engram::ngram_hasher<engram::multiply_xor_family, Orders>(layout).hash(canonical, batch, seq, ids);
        });
        for (const auto id : ids) engram_fuzz::require(id >= 0 && id < layout.total_rows, "row ids are in the table");
    }
}

/// What `engram forward` does with a case file (rows from the case, dense, whole and streamed),
/// for a layer of the file's orders.
template <class Layer>
void forward_case(const engram::safetensors_file& file) {
    const auto layer = engram::load_layer<typename Layer::policies_type>(file);
    const auto& cfg = layer.config();
    const auto ids = engram_cli::read_ids(file, "input_ids", 2);
    const auto& id_shape = file.at("input_ids").shape;
    const std::vector<std::int64_t> hidden_shape = {id_shape[0], id_shape[1], cfg.branches, cfg.hidden};
    const auto hidden = engram::detail::checkpoint_floats(file, "hidden_states", hidden_shape);
    const auto batch = static_cast<std::size_t>(id_shape[0]);
    const auto seq = static_cast<std::size_t>(id_shape[1]);
    std::vector<float> out(hidden.size()), streamed(hidden.size());
    layer.forward(layer.table(), ids, batch, seq, hidden, out);
    const auto mh = static_cast<std::size_t>(cfg.branches * cfg.hidden);
    for (std::size_t b = 0; b < batch; ++b) {
        auto state = layer.new_decode_state();
        for (std::size_t t = 0; t < seq; ++t) {
            const std::size_t i = b * seq + t;
            layer.decode_step(layer.table(), state, ids[i], std::span<const float>(hidden).subspan(i * mh, mh),
                              std::span<float>(streamed).subspan(i * mh, mh));
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    engram_fuzz::run_one([&] {
        const auto file = engram::safetensors_file::from_bytes(engram_fuzz::bytes_of(data, size));
        engram_fuzz::run_one([&] { hash_case(file); });
        engram_fuzz::run_one([&] {
            engram::dispatch_layer(engram::load_layer_config(file).hash,
                                   [&]<class L>(std::type_identity<L>) { forward_case<L>(file); });
        });
    });
    return 0;
}
