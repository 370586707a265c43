// engram forward with rows from table files and storage tiers: every choice gives the golden
// output (f32 exactly as dense; other codecs within their quantisation error).
#include "support/catch.hpp"
#include "support/cli_run.hpp"

#include <engram/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

fs::path work_dir() {
    static const fs::path dir = engram_test::process_dir("engram_cli_storage_");
    return dir;
}

using result = engram_test::cli_result;

result run(const std::string& args) { return engram_test::run_cli(args, work_dir()); }

const std::string golden_case = std::string(ENGRAM_TEST_DATA_DIR) + "/forward_small.safetensors";

std::vector<float> output_of(const fs::path& p) {
    return engram::safetensors_file::open(p).at("output").to_vector<float>();
}

double scaled_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

/// Runs `engram forward` with extra arguments and returns the output tensor.
std::vector<float> forward(const std::string& extra) {
    const auto out = work_dir() / "out.safetensors";
    fs::remove(out);
    const auto r = run("forward '" + golden_case + "' -o '" + out.string() + "' " + extra);
    INFO("engram forward " << extra << ": " << r.err);
    REQUIRE(r.code == 0);
    return output_of(out);
}

} // namespace

TEST_CASE("forward from every storage tier equals the dense forward", "[cli][storage]") {
    const auto expected = engram::safetensors_file::open(golden_case).at("output").to_vector<float>();
    const auto dense = forward("");
    CHECK(scaled_error(dense, expected) <= 1e-5);
    for (const char* storage : {"dense", "mmap", "sharded:1", "sharded:5", "cached:8K", "cached:4M"})
        for (const char* stream : {"", "--stream"}) {
            INFO(storage << ' ' << stream);
            const auto got = forward(std::string("--storage ") + storage + " " + stream);
            if (std::string(stream).empty())
                CHECK(got == dense);
            else
                CHECK(scaled_error(got, dense) <= 1e-6);
        }
}

TEST_CASE("forward from packed table files: f32 exact, other codecs within bounds", "[cli][storage][table]") {
    const auto dense = forward("");
    // Bound per codec: the measured error of the layer output with quantised rows, doubled.
    const std::vector<std::pair<const char*, double>> codecs = {
        {"f32", 0.0}, {"bf16", 2e-3}, {"f16", 3e-4}, {"int8", 8e-3}};
    for (const auto& [codec, bound] : codecs)
        for (const char* shards : {"1", "3"}) {
            const auto table = work_dir() / (std::string("table_") + codec + "_" + shards + ".safetensors");
            const auto r =
                run("pack '" + golden_case + "' -o '" + table.string() + "' --codec " + codec + " --shards " + shards);
            INFO(codec << " x " << shards << ": " << r.err);
            REQUIRE(r.code == 0);
            for (const char* storage : {"mmap", "dense", "sharded:2", "cached:16K"}) {
                INFO("storage " << storage);
                const auto got = forward("--table '" + table.string() + "' --storage " + storage);
                if (bound == 0.0)
                    CHECK(got == dense);
                else
                    CHECK(scaled_error(got, dense) <= bound);
            }
            const auto streamed = forward("--table '" + table.string() + "' --stream");
            CHECK(scaled_error(streamed, dense) <= std::max(bound, 1e-6));
        }
}

TEST_CASE("forward --table/--storage errors", "[cli][storage][errors]") {
    const auto out = work_dir() / "never.safetensors";
    fs::remove(out);
    auto expect = [&](const std::string& extra, const std::string& fragment, int code) {
        const auto r = run("forward '" + golden_case + "' -o '" + out.string() + "' " + extra);
        INFO(extra << ": " << r.err);
        CHECK(r.code == code);
        CHECK(r.err.find(fragment) != std::string::npos);
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
        CHECK_FALSE(fs::exists(out));
    };
    expect("--storage bogus", "bogus", 2);
    expect("--storage sharded:0", "sharded:0", 2);
    expect("--storage cached:12Q", "suffix", 2);
    expect("--table", "--table needs a value", 2);
    expect("--table '" + (work_dir() / "absent.safetensors").string() + "'", "absent.safetensors", 1);
    expect("--table '" + golden_case + "'", "not an engram table file", 1);
    // A table packed from another layer's checkpoint does not fit this case.
    const std::string hash_case = std::string(ENGRAM_TEST_DATA_DIR) + "/hash_reference_default.safetensors";
    const auto r = run("pack '" + hash_case + "' -o '" + (work_dir() / "other.safetensors").string() + "'");
    CHECK(r.code != 0); // the hash case has no embedding rows to pack
}
