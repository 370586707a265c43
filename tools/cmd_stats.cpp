// engram stats: how a token stream uses a layer's tables: per-head occupancy and collisions, and
// the hot set of rows that serves 90% / 99% of the lookups.
#include "cli.hpp"

#include <engram/io/vocab_io.hpp>
#include <engram/stats.hpp>
#include <engram/vocab/bpe_encoder.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <array>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram_cli {

namespace {

constexpr const char* stats_usage = "engram stats (--tokens FILE | --text FILE --tokenizer TOKENIZER_JSON) "
                                    "--config CONFIG [--tokenizer TOKENIZER_JSON] [--layer L]";

struct stats_options {
    std::optional<std::string> tokens, text, tokenizer, config, layer;
    bool help = false;
};

stats_options parse_stats_options(const std::vector<std::string>& argv) {
    stats_options o;
    const std::array<std::pair<std::string_view, std::optional<std::string> stats_options::*>, 5> known = {{
        {"--tokens", &stats_options::tokens},
        {"--text", &stats_options::text},
        {"--tokenizer", &stats_options::tokenizer},
        {"--config", &stats_options::config},
        {"--layer", &stats_options::layer},
    }};
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            o.help = true;
            continue;
        }
        if (arg.size() < 2 || arg[0] != '-')
            throw usage_error("unexpected argument '" + arg + "'; usage: " + stats_usage);
        const auto eq = arg.find('=');
        const std::string name = arg.substr(0, eq);
        std::optional<std::string> stats_options::*slot = nullptr;
        for (const auto& [flag, member] : known)
            if (name == flag) slot = member;
        if (slot == nullptr) throw usage_error("unknown option '" + name + "'");
        if (o.*slot) throw usage_error(name + " is given twice");
        if (eq != std::string::npos) {
            o.*slot = arg.substr(eq + 1);
        } else {
            if (i + 1 >= argv.size()) throw usage_error(name + " needs a value");
            o.*slot = argv[++i];
        }
        if ((o.*slot)->empty()) throw usage_error(name + " needs a non-empty value");
    }
    return o;
}

/// A file whose first 8 bytes are a little-endian header length that fits, followed by '{'.
bool is_safetensors(const std::filesystem::path& path) {
    if (path.extension() == ".safetensors") return true;
    std::ifstream in(path, std::ios::binary);
    std::array<unsigned char, 9> head{};
    if (!in.read(reinterpret_cast<char*>(head.data()), head.size())) return false;
    std::uint64_t header = 0;
    for (int k = 7; k >= 0; --k) header = (header << 8) | head[static_cast<std::size_t>(k)];
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    return !ec && head[8] == '{' && header <= size - 8;
}

std::string read_file(const std::filesystem::path& path, const char* what) {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status))
        throw engram::io_error("cannot read " + std::string(what) + " " + path.string() + ": no such file");
    if (!std::filesystem::is_regular_file(status))
        throw engram::io_error("cannot read " + std::string(what) + " " + path.string() + ": not a regular file");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw engram::io_error("cannot open " + std::string(what) + " " + path.string());
    std::string text;
    std::array<char, 1 << 16> chunk;
    while (in.read(chunk.data(), chunk.size()) || in.gcount() > 0)
        text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    if (in.bad()) throw engram::io_error("cannot read " + std::string(what) + " " + path.string() + ": read error");
    return text;
}

/// Whitespace-separated integer ids (one sequence).
std::vector<engram::token_id> parse_id_text(const std::string& text, const std::string& where) {
    std::vector<engram::token_id> ids;
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    for (std::size_t i = 0; i < text.size();) {
        if (space(text[i])) {
            ++i;
            continue;
        }
        std::size_t e = i;
        while (e < text.size() && !space(text[e])) ++e;
        engram::token_id v = 0;
        const auto [ptr, ec] = std::from_chars(text.data() + i, text.data() + e, v);
        if (ec != std::errc() || ptr != text.data() + e) {
            std::string word = text.substr(i, std::min<std::size_t>(e - i, 32));
            for (char& c : word)
                if (static_cast<unsigned char>(c) < 0x20) c = '?';
            throw engram::format_error(where + ": '" + word + "' (entry " + std::to_string(ids.size()) +
                                       ") is not an integer token id");
        }
        ids.push_back(v);
        i = e;
    }
    return ids;
}

std::string format(const char* f, auto... args) {
    std::array<char, 256> buf{};
    std::snprintf(buf.data(), buf.size(), f, args...);
    return buf.data();
}

std::string bytes_text(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        ++u;
    }
    return u == 0 ? format("%.0f B", bytes) : format("%.1f %s", bytes, units[u]);
}

std::string list_text(const std::vector<std::int64_t>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

/// A hash configuration with the extras stats uses, and where the canonical table comes from.
struct stats_config {
    engram::hash_config hash;
    std::optional<engram::token_id> dead_token;
    std::optional<engram::canonical_table> vocab; // the file's lookup, when it has one
    std::optional<engram::safetensors_file> file; // for explicit multipliers
};

stats_config load_config(const std::string& path) {
    stats_config c;
    nlohmann::json j;
    if (is_safetensors(path)) {
        c.file.emplace(engram::safetensors_file::open(path));
        j = read_config(*c.file);
        if (c.file->contains("lookup")) c.vocab = engram::load_canonical_table(*c.file);
    } else {
        const std::string text = read_file(path, "config");
        j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) throw engram::format_error(path + ": not valid JSON (nor a safetensors file)");
    }
    try {
        c.hash = engram::hash_config_from_json(j);
        if (j.is_object() && j.contains("dead_token") && !j.at("dead_token").is_null())
            c.dead_token = engram::json_field::integer(j, "dead_token", 0);
    } catch (const engram::format_error& e) {
        throw engram::format_error(path + ": " + e.what());
    } catch (const engram::config_error& e) {
        throw engram::config_error(path + ": " + e.what());
    }
    return c;
}

void print_layer(const engram::layer_stats& s, bool explicit_multipliers) {
    std::cout << "\nlayer " << s.layer_id << ": " << s.heads.size() << " heads, " << s.total_rows << " rows x "
              << s.head_dim << (explicit_multipliers ? " (multipliers from the config file)" : "") << '\n';
    std::cout << "  head  n  table size   n-grams  rows touched  occupancy  colliding  collision rate\n";
    std::uint64_t distinct = 0, colliding = 0;
    for (std::size_t h = 0; h < s.heads.size(); ++h) {
        const auto& hs = s.heads[h];
        distinct += hs.distinct_ngrams;
        colliding += hs.colliding_ngrams;
        std::cout << format("  %4zu %2d %11lld %9llu %13llu %9.4f%% %10llu %14.3f%%\n", h, hs.order,
                            static_cast<long long>(hs.table_size), static_cast<unsigned long long>(hs.distinct_ngrams),
                            static_cast<unsigned long long>(hs.rows_touched), 100.0 * hs.occupancy(),
                            static_cast<unsigned long long>(hs.colliding_ngrams), 100.0 * hs.collision_rate());
    }
    const double occupancy =
        s.total_rows == 0 ? 0.0 : static_cast<double>(s.rows_touched()) / static_cast<double>(s.total_rows);
    std::cout << "  lookups: " << s.lookups() << " (" << s.tokens << " tokens x " << s.heads.size() << " heads)\n"
              << "  rows touched: " << s.rows_touched() << " of " << s.total_rows
              << format(" (%.4f%%)", 100 * occupancy) << "; colliding n-grams: " << colliding << " of " << distinct
              << format(" (%.3f%%)", distinct == 0 ? 0.0 : 100.0 * static_cast<double>(colliding) / distinct) << '\n';
    for (const auto& [num, label] : {std::pair<std::uint64_t, const char*>{90, "90%"}, {99, "99%"}}) {
        const std::uint64_t rows = s.rows_covering(num, 100);
        const double values = static_cast<double>(rows) * static_cast<double>(s.head_dim);
        std::cout << "  hot set " << label << ": " << rows << " rows"
                  << format(" (%.2f%% of rows touched)",
                            s.rows_touched() == 0 ? 0.0 : 100.0 * static_cast<double>(rows) / s.rows_touched())
                  << ", " << bytes_text(values * 4) << " f32, " << bytes_text(values * 2) << " bf16, "
                  << bytes_text(values) << " fp8\n";
    }
}

int cmd_stats(const std::vector<std::string>& argv) {
    const stats_options o = parse_stats_options(argv);
    if (o.help) {
        std::cout << "usage: " << stats_usage << "\n\n"
                  << "How a token stream uses the hash tables of each layer (or only layer L): per head the table\n"
                  << "size, the distinct n-grams looked up, the rows they touch (occupancy = touched / size) and the\n"
                  << "colliding n-grams (distinct n-grams whose row another distinct n-gram also hits); per layer\n"
                  << "the lookups (tokens x heads) and the hot set: the fewest rows that serve 90% / 99% of the\n"
                  << "lookups, with the bytes they need at d values per row in f32, bf16 and fp8.\n\n"
                  << "  --tokens FILE      a safetensors file with input_ids (I64 [B, T]), or a text file of\n"
                  << "                     whitespace-separated integer ids (one sequence)\n"
                  << "  --text FILE        UTF-8 text, encoded with --tokenizer (byte-level BPE tokenizer.json)\n"
                  << "  --config CONFIG    a safetensors case or checkpoint (config metadata; its 'lookup' tensor\n"
                  << "                     and multipliers.layer{L} when present) or a JSON file with the hash\n"
                  << "                     config (table_size_per_ngram, max_ngram, heads_per_ngram,\n"
                  << "                     embed_per_ngram, layer_ids, pad_id, seed; optional dead_token)\n"
                  << "  --tokenizer FILE   also gives the canonical table when CONFIG has no lookup; without\n"
                  << "                     either, the identity table over ids 0..max id is used\n"
                  << "  --layer L          only layer L (one of layer_ids)\n";
        return 0;
    }
    if (!o.config) throw usage_error("--config is required; usage: " + std::string(stats_usage));
    if (o.tokens.has_value() == o.text.has_value())
        throw usage_error("give exactly one of --tokens and --text; usage: " + std::string(stats_usage));
    if (o.text && !o.tokenizer) throw usage_error("--text needs --tokenizer; usage: " + std::string(stats_usage));
    std::optional<std::int64_t> only_layer;
    if (o.layer) {
        std::int64_t v = 0;
        const auto& s = *o.layer;
        const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || ptr != s.data() + s.size() || v < 0)
            throw usage_error("--layer '" + s + "' is not a non-negative integer");
        only_layer = v;
    }

    stats_config cfg = load_config(*o.config);

    // The token ids, [batch, seq].
    std::vector<engram::token_id> ids;
    std::size_t batch = 1, seq = 0;
    std::string source;
    if (o.text) {
        const auto encoder = engram::bpe_encoder::from_tokenizer_json(*o.tokenizer);
        const std::string text = read_file(*o.text, "text");
        ids = encoder.encode(text);
        source = "text " + *o.text + ", encoded with " + *o.tokenizer + " [" + encoder.pre_tokenizer_name() + "]";
    } else if (is_safetensors(*o.tokens)) {
        const auto file = engram::safetensors_file::open(*o.tokens);
        ids = read_ids(file, "input_ids", 2);
        batch = static_cast<std::size_t>(file.at("input_ids").shape[0]);
        source = "input_ids of " + *o.tokens;
    } else {
        ids = parse_id_text(read_file(*o.tokens, "token file"), *o.tokens);
        source = "ids in " + *o.tokens;
    }
    if (ids.empty()) throw engram::input_error("no token ids in " + (o.text ? *o.text : *o.tokens));
    seq = ids.size() / batch;

    // The canonical table.
    engram::canonical_table vocab;
    std::string vocab_source;
    if (cfg.vocab) {
        vocab = std::move(*cfg.vocab);
        vocab_source = "the lookup tensor of " + *o.config;
    } else if (o.tokenizer) {
        vocab = engram::canonical_table_from_tokenizer_json(*o.tokenizer);
        vocab_source = "the tokenizer " + *o.tokenizer;
    } else {
        engram::token_id max_id = cfg.hash.pad_id;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            if (ids[i] < 0)
                throw engram::input_error("token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                          " is negative");
            max_id = std::max(max_id, ids[i]);
        }
        if (static_cast<std::uint64_t>(max_id) >= engram::tokenizer::max_vocab_size)
            throw engram::input_error("token id " + std::to_string(max_id) +
                                      " is too large for an identity table; give --tokenizer or a config with a "
                                      "lookup tensor");
        vocab = engram::canonical_table::identity(static_cast<std::size_t>(max_id) + 1);
        vocab_source = "identity over ids 0.." + std::to_string(max_id) +
                       " (no lookup in the config and no --tokenizer: tokens are not folded)";
    }
    const engram::token_id pad = vocab.canonical_pad_id(cfg.hash.pad_id);

    std::vector<engram::layer_layout> layouts = engram::make_layouts(cfg.hash, vocab.canonical_size(), pad);
    if (only_layer) {
        std::vector<engram::layer_layout> one;
        for (auto& l : layouts)
            if (l.layer_id == *only_layer) one.push_back(std::move(l));
        if (one.empty())
            throw engram::config_error("--layer " + std::to_string(*only_layer) + " is not in layer_ids " +
                                       list_text(cfg.hash.layer_ids));
        layouts = std::move(one);
    }

    const auto orders = cfg.hash.order_list();
    std::cout << "tokens: " << ids.size() << " (" << batch << (batch == 1 ? " sequence" : " sequences") << " of " << seq
              << ") from " << source << '\n'
              << "canonical table: " << vocab_source << ": V = " << vocab.vocab_size()
              << ", V' = " << vocab.canonical_size() << '\n'
              << "config: " << *o.config << ": orders " << orders.front() << ".." << orders.back() << ", "
              << cfg.hash.heads_per_ngram << " heads per order, d = " << cfg.hash.head_dim()
              << ", table_size_per_ngram " << list_text(cfg.hash.table_size_per_ngram) << ", layers "
              << list_text(cfg.hash.layer_ids) << ", pad_id " << cfg.hash.pad_id << " (canonical " << pad << "), seed "
              << cfg.hash.seed;
    if (cfg.dead_token) std::cout << ", dead_token " << *cfg.dead_token;
    std::cout << '\n';

    for (auto& layout : layouts) {
        bool explicit_multipliers = false;
        if (cfg.file) {
            const std::string name = "multipliers.layer" + std::to_string(layout.layer_id);
            if (cfg.file->contains(name)) {
                engram::set_multipliers(layout, read_ids(*cfg.file, name, 1));
                explicit_multipliers = true;
            }
        }
        const auto s = engram::collect_layer_stats(layout, vocab, ids, batch, seq, cfg.dead_token);
        print_layer(s, explicit_multipliers);
    }
    return 0;
}

const registration reg_cmd_stats{{"stats",
                                  "stats (--tokens F | --text F --tokenizer T) --config C   table occupancy, "
                                  "collisions and hot rows of a token stream",
                                  &cmd_stats}};

} // namespace

} // namespace engram_cli
