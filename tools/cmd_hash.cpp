// engram hash: the reference row ids of every configured layer of a case file.
#include "cli.hpp"

#include <engram/io/vocab_io.hpp>

#include <iostream>

namespace engram_cli {

namespace {

int cmd_hash(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram hash CASE.safetensors -o OUT.safetensors";
    const auto a = args::parse(argv);
    if (a.help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Reads 'config' (metadata), 'lookup' (I64 [V]) and 'input_ids' (I64 [B, T]) and writes, for\n"
                  << "every layer L in config.layer_ids: hash_ids.layer{L} (I64 [B, T, heads]),\n"
                  << "multipliers.layer{L} (I64 [N]) and primes.layer{L} (I64 [orders, K]).\n";
        return 0;
    }
    a.expect(1, true, usage);
    const auto file = engram::safetensors_file::open(a.positional[0]);
    const auto config_json = read_config(file);
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
        const std::string suffix = ".layer" + std::to_string(layout.layer_id);
        writer.add("hash_ids" + suffix, {shape[0], shape[1], static_cast<std::int64_t>(layout.num_heads())}, ids);
        writer.add("multipliers" + suffix, {static_cast<std::int64_t>(layout.multipliers.size())}, layout.multipliers);
        writer.add("primes" + suffix,
                   {static_cast<std::int64_t>(layout.orders.size()), static_cast<std::int64_t>(layout.heads_per_order)},
                   layout.primes);
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
