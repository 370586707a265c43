// SPDX-License-Identifier: MIT
// The engram tool on DeepSeek-V4.1: hash and forward (whole, streamed, behind a cache, sharded,
// from a packed table file) on the golden case, in both config dialects; inspect, forward and
// pack on a checkpoint directory in the released layout; every mismatch one line, exit 1,
// nothing written.

#include "support/catch.hpp"
#include "support/cli_run.hpp"
#include "support/v41.hpp"

#include <engram/io/safetensors.hpp>
#include <engram/io/vocab_io.hpp>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

fs::path work_dir() {
    static const fs::path dir = engram_test::process_dir("engram_cli_v41_test_");
    return dir;
}

engram_test::cli_result run(const std::string& args) { return engram_test::run_cli(args, work_dir()); }

constexpr auto q = &engram_test::quoted;

std::vector<std::uint16_t> bf16_of(const fs::path& file, const char* name) {
    const auto f = engram::safetensors_file::open(file);
    const auto& t = f.at(name);
    REQUIRE(t.type == engram::dtype::bf16);
    std::vector<std::uint16_t> v(t.numel());
    std::memcpy(v.data(), t.bytes.data(), v.size() * 2);
    return v;
}

/// The golden output's check: within 1e-2 (1 + |ref|) everywhere, one bf16 step for >= 99%.
void check_output(const fs::path& out) {
    const auto got = bf16_of(out, "output"), want = bf16_of(v41_test::golden_case_path(), "output");
    REQUIRE(got.size() == want.size());
    std::size_t bad = 0, close = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double a = v41_test::bf16_value(got[i]), b = v41_test::bf16_value(want[i]);
        bad += !(std::fabs(a - b) <= 1e-2 * (1 + std::fabs(b)));
        close += v41_test::bf16_steps(got[i], want[i]) <= 1;
    }
    CHECK(bad == 0);
    CHECK(static_cast<double>(close) >= 0.99 * static_cast<double>(got.size()));
}

/// A copy of the golden case with its config rewritten (and tensors optionally changed).
template <class Edit>
fs::path case_with(const std::string& name, const nlohmann::json& config, Edit&& edit) {
    const auto g = engram::safetensors_file::open(v41_test::golden_case_path());
    engram::safetensors_writer w;
    for (const auto& t : g.tensors()) edit(w, t);
    w.set_metadata("config", config.dump());
    w.set_metadata("format", "deepseek_v41_engram_case");
    const auto path = work_dir() / name;
    w.write(path);
    return path;
}
fs::path case_with(const std::string& name, const nlohmann::json& config) {
    return case_with(name, config, [](auto& w, const engram::tensor_view& t) { w.add(t); });
}

} // namespace

TEST_CASE("engram hash and forward on the golden V4.1 case", "[cli][v41]") {
    const auto golden = v41_test::golden_case_path();
    const auto hash = work_dir() / "hash.safetensors";
    auto r = run("hash " + q(golden) + " -o " + q(hash));
    REQUIRE(r.code == 0);
    {
        const auto h = engram::safetensors_file::open(hash);
        const auto g = engram::safetensors_file::open(golden);
        CHECK(h.at("hash_ids.layer1").to_vector<std::int64_t>() == g.at("hash_ids").to_vector<std::int64_t>());
        CHECK(h.contains("hash_ids.layer14"));
        CHECK(h.at("primes.layer1").to_vector<std::int64_t>() ==
              std::vector<std::int64_t>{503, 509, 521, 523, 541, 547, 557, 563, 569});
    }
    for (const std::string opts :
         {"", "--stream", "--storage cached:64K", "--storage sharded:3 --stream", "--weights f32 --threads 2"}) {
        INFO(opts);
        const auto out = work_dir() / "out.safetensors";
        r = run("forward " + q(golden) + " -o " + q(out) + " " + opts);
        REQUIRE(r.code == 0);
        CHECK(r.out.find("DeepSeek-V4.1 Engram layer 1") != std::string::npos);
        check_output(out);
    }
    // Packed into a table file (fp8 and f32) and served from it.
    for (const std::string codec : {"fp8", "f32"}) {
        const auto table = work_dir() / ("table_" + codec + ".safetensors");
        REQUIRE(run("pack " + q(golden) + " -o " + q(table) + " --codec " + codec).code == 0);
        REQUIRE(run("verify " + q(table)).code == 0);
        const auto out = work_dir() / "out_table.safetensors";
        r = run("forward " + q(golden) + " -o " + q(out) + " --table " + q(table));
        REQUIRE(r.code == 0);
        check_output(out);
    }
    // inference/config.json's dialect in the case's metadata.
    const auto dialect = case_with("dialect.safetensors", v41_test::inference_dialect(v41_test::golden_config()));
    const auto out = work_dir() / "out_dialect.safetensors";
    REQUIRE(run("forward " + q(dialect) + " -o " + q(out)).code == 0);
    check_output(out);
    REQUIRE(run("hash " + q(dialect) + " -o " + q(hash)).code == 0);
}

TEST_CASE("engram inspect, forward and pack on a V4.1 checkpoint directory", "[cli][v41][checkpoint]") {
    auto cfg = v41_test::golden_config();
    cfg.erase("layer_id");
    const auto dir = work_dir() / "ckpt";
    fs::remove_all(dir);
    v41_test::write_checkpoint(dir, {cfg, {}, false});
    const auto map = work_dir() / "token_map.safetensors";
    engram::save_canonical_table(
        engram::load_canonical_table(engram::safetensors_file::open(v41_test::golden_case_path())), map);
    auto r = run("inspect " + q(dir) + " --token-map " + q(map));
    REQUIRE(r.code == 0);
    CHECK(r.out.find("layer 1: 4833 rows x 256") != std::string::npos);
    CHECK(r.out.find("layer 14: 5365 rows x 256") != std::string::npos);
    CHECK(r.out.find("model-00002-of-00002.safetensors") != std::string::npos);
    CHECK(r.out.find("V' = 98627") != std::string::npos);

    const auto out = work_dir() / "ckpt_out.safetensors";
    r = run("forward --checkpoint " + q(dir) + " --layer 1 --token-map " + q(map) + " " +
            q(v41_test::golden_case_path()) + " -o " + q(out));
    REQUIRE(r.code == 0);
    check_output(out);
    const auto table = work_dir() / "ckpt_table.safetensors";
    r = run("pack " + q(dir) + " --layer 14 --token-map " + q(map) + " -o " + q(table) + " --shards 2");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("5365 rows x 256 (fp8") != std::string::npos);
    REQUIRE(run("verify " + q(table)).code == 0);

    // Errors: one line on stderr, exit 1, no output file.
    struct bad {
        std::string args, fragment;
    };
    auto no_hc = cfg;
    no_hc.erase("hc_mult");
    const auto dir_no_hc = work_dir() / "ckpt_no_hc";
    fs::remove_all(dir_no_hc);
    v41_test::write_checkpoint(dir_no_hc, {no_hc, {}, false});
    const auto wrong_dtype =
        case_with("wrong_dtype.safetensors", v41_test::golden_config(), [](auto& w, const auto& t) {
            if (t.name == "hidden_states")
                w.add(t.name, engram::dtype::f16, t.shape, t.bytes);
            else
                w.add(t);
        });
    const auto no_wkv = case_with("no_wkv.safetensors", v41_test::golden_config(), [](auto& w, const auto& t) {
        if (t.name != "layers.1.engram.wkv.scale") w.add(t);
    });
    auto rows_off = v41_test::golden_config();
    rows_off["engram_num_embeddings"] = {4834, 5365};
    const std::vector<bad> rows = {
        {"forward --checkpoint " + q(dir) + " --layer 1 " + q(v41_test::golden_case_path()), "has no tokenizer.json"},
        {"forward --checkpoint " + q(dir) + " --layer 3 --token-map " + q(map) + " " + q(v41_test::golden_case_path()),
         "layer 3 is not an Engram layer"},
        {"inspect " + q(dir_no_hc) + " --token-map " + q(map), "missing key 'hc_mult'"},
        {"forward " + q(wrong_dtype), "tensor 'hidden_states' is F16 [2, 24, 4, 64], expected BF16 [2, 24, 4, 64]"},
        {"forward " + q(no_wkv), "missing tensor 'layers.1.engram.wkv.scale'"},
        {"forward " + q(case_with("rows_off.safetensors", rows_off)),
         "engram_num_embeddings[0] = 4834 but the primes of layer 1 sum to 4833"},
        {"hash " + q(case_with("rows_off2.safetensors", rows_off)), "engram_num_embeddings[0] = 4834"},
        {"forward " + q(v41_test::golden_case_path()) + " --token-map " + q(work_dir() / "nothing.safetensors"),
         "nothing.safetensors"},
    };
    for (const auto& b : rows) {
        INFO(b.args);
        const auto target = work_dir() / "bad_out.safetensors";
        fs::remove(target);
        const auto res = run(b.args + " -o " + q(target));
        CHECK(res.code == 1);
        CHECK(res.err.find(b.fragment) != std::string::npos);
        CHECK(std::count(res.err.begin(), res.err.end(), '\n') == 1);
        CHECK_FALSE(fs::exists(target));
    }
}
