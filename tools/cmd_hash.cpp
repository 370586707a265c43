// engram hash: the reference row ids of every configured layer of a case file.
#include "cli.hpp"

#include <engram/io/vocab_io.hpp>
#include <engram/model/deepseek_v41.hpp>

#include <iostream>

namespace engram_cli {

namespace {

/// hash_ids.layer{L} [B, T, heads], multipliers.layer{L} and primes.layer{L} of one layer.
void add_layer(engram::safetensors_writer& writer, const engram::layer_layout& layout,
               const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& ids) {
    const std::string suffix = ".layer" + std::to_string(layout.layer_id);
    writer.add("hash_ids" + suffix, {shape[0], shape[1], static_cast<std::int64_t>(layout.num_heads())}, ids);
    writer.add("multipliers" + suffix, {static_cast<std::int64_t>(layout.multipliers.size())}, layout.multipliers);
    writer.add("primes" + suffix,
               {static_cast<std::int64_t>(layout.orders.size()), static_cast<std::int64_t>(layout.heads_per_order)},
               layout.primes);
}

/// DeepSeek-V4.1 (spec deepseek-v41.md section 4): one prime start for all orders, the token
/// mask's dead positions blocking the hash; row ids of every Engram layer of the config.
int hash_v41(const engram::safetensors_file& file, const nlohmann::json& config_json, const std::string& output) {
    namespace v41 = engram::deepseek_v41;
    const auto cfg = v41::config::from_json(config_json);
    const auto vocab = engram::load_canonical_table(file);
    cfg.check_vocab(vocab, "the case's 'lookup'");
    const auto raw = read_ids(file, "input_ids", 2);
    const auto& shape = file.at("input_ids").shape;
    const auto batch = static_cast<std::size_t>(shape[0]);
    const auto seq = static_cast<std::size_t>(shape[1]);
    const auto mask = read_token_mask(file, shape);
    const auto layouts = cfg.layouts(vocab);
    engram::safetensors_writer writer;
    for (const auto& layout : layouts) {
        std::vector<std::int64_t> ids(raw.size() * layout.num_heads());
        engram::dispatch_orders(layout.orders, [&]<class Orders>(Orders) {
            const engram::ngram_hasher<engram::multiply_xor_family, Orders> hasher(layout);
            if (mask.empty())
                hasher.rows_tokens(vocab, raw, batch, seq, ids);
            else
                hasher.rows_tokens(vocab, raw, batch, seq, ids, std::span<const std::uint8_t>(mask));
        });
        add_layer(writer, layout, shape, ids);
    }
    writer.set_metadata("config", config_json.dump());
    writer.set_metadata("format", "deepseek_v41_engram_hash");
    writer.write(output);
    std::cout << "hashed " << batch << " x " << seq << " tokens (DeepSeek-V4.1, " << (mask.empty() ? "no" : "with a")
              << " token mask) for " << layouts.size() << " layer(s); wrote " << output << '\n';
    return 0;
}

int cmd_hash(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram hash CASE.safetensors -o OUT.safetensors";
    const auto a = args::parse(argv);
    if (a.help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Reads 'config' (metadata), 'lookup' (I64 [V]) and 'input_ids' (I64 [B, T]) and writes, for\n"
                  << "every layer L in config.layer_ids: hash_ids.layer{L} (I64 [B, T, heads]),\n"
                  << "multipliers.layer{L} (I64 [N]) and primes.layer{L} (I64 [orders, K]).\n"
                  << "DeepSeek-V4.1 case files (config with engram_layer_ids, either dialect) are hashed as\n"
                  << "V4.1 does: one prime start for all orders, 'token_mask' (U8 [B, T], 0 = dead) blocking\n"
                  << "the hash; hash_ids.layer{L} are then row ids of layer L's table (offsets added).\n";
        return 0;
    }
    a.expect(1, true, usage);
    const auto file = engram::safetensors_file::open(a.positional[0]);
    const auto config_json = read_config(file);
    if (engram::deepseek_v41::is_case_file(file) || engram::deepseek_v41::is_config(config_json))
        return hash_v41(file, config_json, *a.output);
    const auto cfg = engram::hash_config_from_json(config_json);
    const auto vocab = engram::load_canonical_table(file);
    const auto raw = read_ids(file, "input_ids", 2);
    const auto& shape = file.at("input_ids").shape;
    const auto batch = static_cast<std::size_t>(shape[0]);
    const auto seq = static_cast<std::size_t>(shape[1]);
    const auto pad = vocab.canonical_pad_id(cfg.pad_id);

    std::vector<engram::token_id> canonical(raw.size());
    vocab.map(raw, canonical);

    const auto layouts = engram::make_layouts(cfg, vocab.canonical_size(), pad);
    const auto orders = cfg.order_list();
    engram::safetensors_writer writer;
    for (const auto& layout : layouts) {
        std::vector<std::int64_t> ids(canonical.size() * layout.num_heads());
        engram::dispatch_orders(orders, [&]<class Orders>(Orders) {
            engram::ngram_hasher<engram::multiply_xor_family, Orders>(layout).hash(canonical, batch, seq, ids);
        });
        add_layer(writer, layout, shape, ids);
    }
    auto out_config = config_json;
    out_config["canonical_vocab_size"] = vocab.canonical_size();
    out_config["canonical_pad_id"] = pad;
    writer.set_metadata("config", out_config.dump());
    writer.write(*a.output);
    std::cout << "hashed " << batch << " x " << seq << " tokens for " << layouts.size() << " layer(s); wrote "
              << *a.output << '\n';
    return 0;
}

const registration reg_cmd_hash{
    {"hash", "hash CASE.safetensors -o OUT.safetensors           row ids of every configured layer (reference hash)",
     &cmd_hash}};

} // namespace

} // namespace engram_cli
