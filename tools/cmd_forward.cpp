// engram forward: runs the Engram layer of a case file (weights, ids, hidden states).
#include "cli.hpp"

#include <engram/layer/checkpoint.hpp>

#include <iostream>

namespace engram_cli {

namespace {

int cmd_forward(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram forward CASE.safetensors -o OUT.safetensors [--stream]";
    const auto a = args::parse(argv, {"--stream"});
    if (a.help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Loads the layer of a forward case (config metadata, 'lookup', the weights under the\n"
                  << "reference state-dict names), runs it on 'input_ids' (I64 [B, T]) and 'hidden_states'\n"
                  << "(F32 [B, T, M, H]) and writes 'output' (F32 [B, T, M, H]). With --stream the tokens go\n"
                  << "through the decode state one at a time; the output is the same.\n";
        return 0;
    }
    a.expect(1, true, usage);
    const auto file = engram::safetensors_file::open(a.positional[0]);
    const auto layer = engram::load_layer(file);
    const auto& cfg = layer.config();
    const auto ids = read_ids(file, "input_ids", 2);
    const auto& id_shape = file.at("input_ids").shape;
    const auto batch = static_cast<std::size_t>(id_shape[0]);
    const auto seq = static_cast<std::size_t>(id_shape[1]);
    const std::vector<std::int64_t> hidden_shape = {id_shape[0], id_shape[1], cfg.branches, cfg.hidden};
    const auto hidden = engram::detail::checkpoint_floats(file, "hidden_states", hidden_shape);

    std::vector<float> out(hidden.size());
    if (a.has("--stream")) {
        const std::size_t mh = static_cast<std::size_t>(cfg.branches * cfg.hidden);
        for (std::size_t b = 0; b < batch; ++b) {
            auto state = layer.new_decode_state();
            for (std::size_t t = 0; t < seq; ++t) {
                const std::size_t i = b * seq + t;
                layer.decode_step(state, ids[i], std::span<const float>(hidden).subspan(i * mh, mh),
                                  std::span<float>(out).subspan(i * mh, mh));
            }
        }
    } else {
        layer.forward(ids, batch, seq, hidden, out);
    }
    engram::safetensors_writer writer;
    writer.add("output", hidden_shape, out);
    writer.set_metadata("config", engram::to_json(cfg).dump());
    writer.write(*a.output);
    std::cout << "ran layer " << cfg.layer_id << " on " << batch << " x " << seq << " tokens"
              << (a.has("--stream") ? " (streamed)" : "") << "; wrote " << *a.output << '\n';
    return 0;
}

const registration reg_cmd_forward{
    {"forward", "forward CASE.safetensors -o OUT.safetensors [--stream]  run the Engram layer of a forward case",
     &cmd_forward}};

} // namespace

} // namespace engram_cli
