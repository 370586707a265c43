// SPDX-License-Identifier: MIT
// The engram tool on layers of every dispatched order set, 2..N for N = 2..6: generated cases
// with the plain-loop reference's row ids and output (tests/support/reference_layer.hpp) through
// hash, forward (whole, streamed, every storage tier, table files of several codecs), pack,
// verify, stats and inspect; orders that are not dispatched fail with one line.

#include "support/catch.hpp"
#include "support/cli_run.hpp"
#include "support/reference_layer.hpp"

#include <engram/io/safetensors.hpp>
#include <engram/ngram/dispatch.hpp>

#include <nlohmann/json.hpp>

#include <unistd.h> // for getpid

#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

fs::path work_dir() {
    static const fs::path dir = engram_test::process_dir("engram_cli_orders_test_");
    return dir;
}

engram_test::cli_result run(const std::string& args) { return engram_test::run_cli(args, work_dir()); }

constexpr auto q = &engram_test::quoted;

/// A forward case with orders 2..N and its reference ids and output, written to a file.
fs::path write_case(std::int64_t n) {
    engram_test::forward_case_spec spec;
    auto& c = spec.config;
    c.max_ngram = n;
    c.table_size_per_ngram.clear();
    for (std::int64_t i = 0; i + 1 < n; ++i) c.table_size_per_ngram.push_back(300 + 70 * i);
    c.heads_per_ngram = 2;
    c.embed_per_ngram = 64; // d = 32: rows of 32 values, which the fp8 codec's blocks need
    c.hidden = 32;
    c.branches = 2;
    c.conv_dilation = n; // the reference's dilation
    spec.batch = 2;
    spec.seq = 20;
    spec.seed = static_cast<std::uint32_t>(1000 + n);
    const fs::path path = work_dir() / ("case_n" + std::to_string(n) + ".safetensors");
    const auto file = engram::safetensors_file::from_bytes(engram_test::make_forward_case(spec));
    engram::safetensors_writer w;
    for (const auto& t : file.tensors()) w.add(t);
    for (const auto& [k, v] : file.metadata()) w.set_metadata(k, v);
    w.write(path);
    return path;
}

std::vector<float> output_of(const fs::path& file) {
    return engram::safetensors_file::open(file).at("output").to_vector<float>();
}

/// Runs `forward CASE -o OUT <options>` and compares its output with the case's reference.
void check_forward(const fs::path& c, const std::string& options, double tolerance) {
    INFO("forward " << options);
    const fs::path out = work_dir() / "out.safetensors";
    fs::remove(out);
    const auto r = run("forward " + q(c) + " -o " + q(out) + " " + options);
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    const auto cmp = engram_test::compare_outputs(output_of(out), output_of(c));
    CHECK(cmp.relative <= tolerance);
}

/// The case file with its config replaced by `edit(config)`.
fs::path with_config(const fs::path& c, const std::string& name, void (*edit)(nlohmann::json&)) {
    const auto file = engram::safetensors_file::open(c);
    nlohmann::json config = nlohmann::json::parse(*file.find_metadata("config"));
    edit(config);
    engram::safetensors_writer w;
    for (const auto& t : file.tensors()) w.add(t);
    w.set_metadata("config", config.dump());
    const fs::path path = work_dir() / name;
    w.write(path);
    return path;
}

} // namespace

TEST_CASE("every command runs layers of orders 2..N, N = 2..6, against the plain-loop reference", "[cli][orders]") {
    static_assert(engram::max_dispatched_ngram == 6);
    for (std::int64_t n = 2; n <= engram::max_dispatched_ngram; ++n) {
        INFO("orders 2.." << n);
        const fs::path c = write_case(n);
        const auto expected_ids = engram::safetensors_file::open(c).at("hash_ids").to_vector<std::int64_t>();

        // Row ids: exactly the reference's.
        const fs::path ids = work_dir() / "ids.safetensors";
        auto r = run("hash " + q(c) + " -o " + q(ids));
        INFO(r.out << r.err);
        REQUIRE(r.code == 0);
        CHECK(engram::safetensors_file::open(ids).at("hash_ids.layer1").to_vector<std::int64_t>() == expected_ids);

        // The layer: whole and streamed, rows from the case behind every storage tier.
        check_forward(c, "", 1e-5);
        check_forward(c, "--stream", 1e-5);
        check_forward(c, "--storage mmap", 1e-5);
        check_forward(c, "--storage sharded:3 --stream", 1e-5);
        check_forward(c, "--storage cached:8K", 1e-5);
        check_forward(c, "--threads 2 --weights bf16", 2e-2);

        // Table files: f32 in two shards (exact), bf16 and fp8 (to their rounding), verified.
        for (const auto& [codec, tolerance] :
             {std::pair<const char*, double>{"f32", 1e-5}, {"bf16", 2e-2}, {"fp8", 0.15}}) {
            INFO("codec " << codec);
            const fs::path table = work_dir() / (std::string("table_") + codec + ".safetensors");
            r = run("pack " + q(c) + " -o " + q(table) + " --codec " + codec + " --shards 2");
            INFO(r.out << r.err);
            REQUIRE(r.code == 0);
            r = run("verify " + q(table));
            INFO(r.out << r.err);
            CHECK(r.code == 0);
            check_forward(c, "--table " + q(table), tolerance);
            check_forward(c, "--table " + q(table) + " --storage cached:4K --stream", tolerance);
        }

        // Statistics and inspection read the same layout.
        r = run("stats --tokens " + q(c) + " --config " + q(c) + " --layer 1");
        INFO(r.out << r.err);
        CHECK(r.code == 0);
        CHECK(r.out.find("orders 2.." + std::to_string(n)) != std::string::npos);
        CHECK(r.out.find("layer 1: " + std::to_string(2 * (n - 1)) + " heads") != std::string::npos);
        CHECK(run("inspect " + q(c)).code == 0);
    }
}

TEST_CASE("orders that are not dispatched fail with one line", "[cli][orders][errors]") {
    const fs::path c = write_case(4);
    const auto gap = with_config(c, "orders_2_4.safetensors", [](nlohmann::json& j) {
        j["orders"] = {2, 4};
        j["table_size_per_ngram"] = {300, 370};
    });
    const auto seven = with_config(c, "orders_7.safetensors", [](nlohmann::json& j) {
        j["max_ngram"] = 7;
        j["table_size_per_ngram"] = {300, 370, 440, 510, 580, 650};
    });
    const fs::path out = work_dir() / "never.safetensors";
    fs::remove(out);
    for (const auto& [file, fragment] : {std::pair<fs::path, std::string>{gap, "orders [2, 4] are not supported here"},
                                         {seven, "max_ngram = 7 is not supported here"}}) {
        for (const std::string& cmd : {"forward " + q(file) + " -o " + q(out), "hash " + q(file) + " -o " + q(out),
                                       "stats --tokens " + q(file) + " --config " + q(file)}) {
            INFO(cmd);
            const auto r = run(cmd);
            INFO(r.err);
            CHECK(r.code == 1);
            CHECK(r.err.find(fragment) != std::string::npos);
            CHECK(r.err.find('\n') == r.err.size() - 1); // one line
            CHECK_FALSE(fs::exists(out));
        }
    }
    // The bench takes orders 2..N too, N in [2, 6].
    const auto r = run("bench --max-ngram 7");
    CHECK(r.code == 2);
    CHECK(r.err.find("--max-ngram needs an integer in [2, 6]") != std::string::npos);
    CHECK(run("bench prefetch --max-ngram 1").code == 2);
}

TEST_CASE("engram bench runs a layer of another order set", "[cli][orders][bench]") {
    // The smallest: orders 2..2 at 1/8 of the default rows (0.17 GB), one repetition.
    const fs::path json = work_dir() / "bench.json";
    const auto r = run("bench --quick --reps 1 --max-ngram 2 --json " + q(json));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("orders 2..2, 8 heads") != std::string::npos);
    const auto figures = nlohmann::json::parse(engram_test::slurp(json));
    CHECK(figures.at("max_ngram") == 2);
    CHECK(figures.at("forward_ms_t512").get<double>() > 0);
}
