// engram inspect: a readable summary of a case, table or checkpoint file.
#include "cli.hpp"

#include <engram/model/hf_checkpoint.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

namespace engram_cli {

namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string bytes_text(std::size_t n) {
    std::ostringstream o;
    o << std::fixed << std::setprecision(1);
    if (n >= (std::size_t{1} << 30))
        o << static_cast<double>(n) / (1 << 30) << " GiB";
    else if (n >= (std::size_t{1} << 20))
        o << static_cast<double>(n) / (1 << 20) << " MiB";
    else if (n >= 1024)
        o << static_cast<double>(n) / 1024 << " KiB";
    else
        o << n << " B";
    return o.str();
}

/// min / max (and mean |x| for floats) of a tensor, over at most the first 16M values.
std::string value_summary(const engram::tensor_view& t) {
    constexpr std::size_t cap = std::size_t{1} << 24;
    std::ostringstream o;
    const std::size_t n = t.numel();
    if (n == 0) return "empty";
    const bool sampled = n > cap;
    switch (t.type) {
    case engram::dtype::i64:
    case engram::dtype::i32: {
        const auto v = t.to_vector<std::int64_t>();
        const auto [lo, hi] = std::minmax_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(std::min(n, cap)));
        o << "min " << *lo << ", max " << *hi;
        break;
    }
    case engram::dtype::f32:
    case engram::dtype::f16:
    case engram::dtype::bf16:
    case engram::dtype::f64: {
        const auto v = t.to_vector<float>();
        float lo = INFINITY, hi = -INFINITY;
        double abs_sum = 0;
        std::size_t non_finite = 0;
        for (std::size_t i = 0; i < std::min(n, cap); ++i) {
            if (!std::isfinite(v[i])) {
                ++non_finite;
                continue;
            }
            lo = std::min(lo, v[i]);
            hi = std::max(hi, v[i]);
            abs_sum += std::fabs(v[i]);
        }
        o << std::setprecision(5) << "min " << lo << ", max " << hi << ", mean|x| "
          << abs_sum / static_cast<double>(std::min(n, cap));
        if (non_finite) o << ", " << non_finite << " non-finite";
        break;
    }
    default:
        return "";
    }
    if (sampled) o << " (first 16M values)";
    return o.str();
}

std::string file_kind(const engram::safetensors_file& f) {
    const bool has_config = f.find_metadata("config") != nullptr;
    if (engram::deepseek_v41::is_case_file(f))
        return "DeepSeek-V4.1 case (FP8 layer tensors, inputs and expected output)";
    if (f.contains("multi_head_embedding.embedding.weight"))
        return f.contains("hidden_states") ? "forward case (layer weights, inputs and expected output)"
                                           : "Engram layer checkpoint";
    if (has_config && f.contains("input_ids") && f.contains("lookup"))
        return "hash case (config, vocabulary, input ids)";
    if (f.contains("lookup") && f.find_metadata("canonical_vocab_size") != nullptr) return "canonical vocabulary";
    for (const auto& t : f.tensors())
        if (t.name.rfind("hash_ids.layer", 0) == 0) return "hash output (row ids per layer)";
    return "safetensors file";
}

} // namespace

namespace {

/// A DeepSeek-V4.1 checkpoint directory: its Engram layers and the token map's check.
int inspect_checkpoint(const std::string& dir, const std::optional<std::string>& token_map) {
    namespace v41 = engram::deepseek_v41;
    std::optional<std::filesystem::path> map;
    if (token_map) map = *token_map;
    const auto ck = v41::checkpoint::open(dir, {map});
    const auto& c = ck.cfg();
    std::cout << dir << ": DeepSeek-V4.1 checkpoint directory, config " << ck.config_path().string() << '\n'
              << "config: Engram layers " << v41::config::list_text(c.layer_ids) << ", orders 2.." << c.max_ngram
              << ", " << c.n_heads << " heads x " << c.head_dim << " values, prime start " << c.prime_start
              << ", hidden " << c.hidden << " x hc " << c.hc << ", eps " << c.norm_eps << ", pad id " << c.pad_id
              << '\n'
              << "token map: " << ck.vocab_source() << ": V = " << ck.vocab().vocab_size()
              << ", V' = " << ck.vocab().canonical_size() << " (engram_compressed_vocab_size "
              << c.compressed_vocab_size << ": ok)\n";
    for (const auto& l : ck.layers())
        std::cout << "layer " << l.id << ": " << l.rows << " rows x " << l.dim << ", " << l.codec << ", "
                  << bytes_text(static_cast<std::size_t>(l.bytes)) << " in " << l.shard << " (served in place); wkv "
                  << c.hidden * (c.hc + 1) << " x " << (c.max_ngram - 1) * c.n_heads * c.head_dim
                  << " fp8, 32x32 block scales\n";
    return 0;
}

int cmd_inspect(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram inspect FILE|CHECKPOINT_DIR [--token-map FILE]";
    std::vector<std::string> rest;
    std::optional<std::string> token_map;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        if (argv[i] == "--token-map") {
            if (i + 1 >= argv.size()) throw usage_error("--token-map needs a file name");
            token_map = argv[++i];
        } else {
            rest.push_back(argv[i]);
        }
    }
    const auto a = args::parse(rest);
    if (a.help) {
        std::cout << "usage: " << usage << "\n\nPrints the kind of file, its configuration and derived table layout,\n"
                  << "and every tensor with its dtype, shape, size and value range.\n"
                  << "On a DeepSeek-V4.1 checkpoint directory: its Engram layers (rows, codec, bytes, shard) and\n"
                  << "the token map (tokenizer.json, or --token-map FILE) checked against the config.\n";
        return 0;
    }
    a.expect(1, false, usage);
    if (std::filesystem::is_directory(a.positional[0])) return inspect_checkpoint(a.positional[0], token_map);
    if (token_map) throw usage_error("--token-map is for checkpoint directories");
    const auto file = engram::safetensors_file::open(a.positional[0]);
    std::cout << file.path().string() << ": " << file_kind(file) << ", " << bytes_text(file.file_size()) << ", "
              << file.tensors().size() << " tensor(s)\n";

    for (const auto& [key, value] : file.metadata()) {
        if (key == "config") continue;
        std::cout << "metadata " << key << " = " << value << '\n';
    }
    if (file.find_metadata("config") != nullptr) {
        const auto cfg_json = read_config(file);
        std::cout << "config:\n";
        for (const auto& [key, value] : cfg_json.items())
            std::cout << "  " << std::left << std::setw(30) << key << ' ' << value.dump() << '\n';
        // The derived layout, when the file has what it needs.
        if (file.contains("lookup")) {
            try {
                const bool v41 = engram::deepseek_v41::is_config(cfg_json);
                const auto cfg = v41 ? engram::deepseek_v41::config::from_json(cfg_json).hash()
                                     : engram::hash_config_from_json(cfg_json);
                const auto vocab = engram::canonical_table::from_lookup(read_ids(file, "lookup", 1));
                std::cout << "vocabulary: V = " << vocab.vocab_size() << ", V' = " << vocab.canonical_size()
                          << ", canonical pad = " << vocab.canonical_pad_id(cfg.pad_id) << '\n';
                for (const auto& l :
                     engram::make_layouts(cfg, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id))) {
                    std::cout << "layer " << l.layer_id << ": " << l.num_heads() << " heads, primes "
                              << l.primes.front() << ".." << l.primes.back() << ", " << l.total_rows << " rows x "
                              << l.head_dim << " ("
                              << bytes_text(static_cast<std::size_t>(l.total_rows * l.head_dim) * 4)
                              << " in f32), multipliers";
                    for (auto m : l.multipliers) std::cout << ' ' << m;
                    std::cout << '\n';
                }
            } catch (const engram::error& e) {
                std::cout << "layout: not derivable (" << e.what() << ")\n";
            }
        }
    }
    std::cout << "tensors:\n";
    for (const auto& t : file.tensors()) {
        std::cout << "  " << std::left << std::setw(40) << t.name << ' ' << std::setw(5) << engram::dtype_name(t.type)
                  << ' ' << std::setw(18) << shape_text(t.shape) << ' ' << std::setw(10) << bytes_text(t.bytes.size())
                  << ' ' << value_summary(t) << '\n';
    }
    return 0;
}

const registration reg_cmd_inspect{{"inspect",
                                    "inspect FILE|DIR                                   readable summary of a case, "
                                    "table or checkpoint file or V4.1 checkpoint directory",
                                    &cmd_inspect}};

} // namespace

} // namespace engram_cli
