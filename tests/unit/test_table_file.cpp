// Table files: pack a reference case in every codec, 1 and 3 shards; open, compare the rows and
// the layer's forward pass with the checkpoint's; verify; corruption, truncation, missing and
// foreign shards, wrong versions; interrupted packs leave nothing behind.
#include "support/bad_input.hpp"
#include "support/catch.hpp"

#include <engram/io/table_file.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/storage/quantized.hpp>

#include <nlohmann/json.hpp>

#include <unistd.h> // for getpid

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

/// A fresh, empty directory per call (removed with the whole test directory at exit).
fs::path fresh_dir(const std::string& name) {
    return engram_test::fresh_subdir(engram_test::scratch_dir("engram_table_test"), name);
}

using engram_test::files_in;

/// Where tensor `name` of a safetensors file starts (bytes from the start of the file).
std::uint64_t tensor_offset(const fs::path& path, const std::string& name) {
    std::ifstream in(path, std::ios::binary);
    unsigned char len[8];
    in.read(reinterpret_cast<char*>(len), 8);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    const auto j = nlohmann::json::parse(header);
    return 8 + n + j.at(name).at("data_offsets")[0].get<std::uint64_t>();
}

void flip_byte(const fs::path& path, std::uint64_t offset, char mask = 0x10) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ mask);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
}

/// Rewrites a manifest file with its `engram_table` JSON edited by `edit` (tensors kept).
void edit_manifest(const fs::path& path, const std::function<void(nlohmann::json&)>& edit) {
    engram::safetensors_writer w;
    {
        const auto file = engram::safetensors_file::open(path);
        for (const auto& t : file.tensors()) w.add(t);
        auto j = nlohmann::json::parse(*file.find_metadata("engram_table"));
        edit(j);
        w.set_metadata("engram_table", j.dump());
    }
    w.write(path);
}

/// The message of the engram::error `f` throws (and that it throws one of type E).
template <class E = engram::error, class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("no exception of the expected type");
    return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// max |a - b| / max |b|.
double scaled_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

struct forward_case {
    engram::safetensors_file file;
    std::vector<std::int64_t> ids;
    std::vector<float> hidden, expected;
    std::size_t batch = 0, seq = 0;

    explicit forward_case(const fs::path& path) : file(engram::safetensors_file::open(path)) {
        ids = file.at("input_ids").to_vector<std::int64_t>();
        hidden = file.at("hidden_states").to_vector<float>();
        if (file.contains("output")) expected = file.at("output").to_vector<float>();
        batch = static_cast<std::size_t>(file.at("input_ids").shape[0]);
        seq = static_cast<std::size_t>(file.at("input_ids").shape[1]);
    }
};

/// Every row of a table file against the source rows: the stored bytes are exactly what the
/// codec makes of the source row, and the decoded values are within the codec's bound.
template <class Codec>
void check_rows(const engram::table_file& tf, const std::vector<float>& source) {
    const auto table = tf.rows_table<Codec>();
    const std::size_t rows = table.rows(), dim = table.dim();
    REQUIRE(rows * dim == source.size());
    std::vector<engram::row_id> ids(rows);
    for (std::size_t i = 0; i < rows; ++i) ids[i] = static_cast<engram::row_id>(i);
    std::vector<float> got(rows * dim);
    table.gather(ids, got);
    std::vector<std::byte> encoded(Codec::row_bytes(dim));
    const engram::error_bound bound = engram::codec_error_bound_v<Codec>;
    std::size_t bad_bytes = 0, bad_values = 0;
    for (std::size_t r = 0; r < rows; ++r) {
        Codec::encode(source.data() + r * dim, encoded.data(), dim);
        const auto stored = table.encoded_row(r);
        if (std::memcmp(stored.data(), encoded.data(), encoded.size()) != 0) ++bad_bytes;
        for (std::size_t c = 0; c < dim; ++c) {
            const double x = source[r * dim + c], y = got[r * dim + c];
            double scale = 1.0;
            if constexpr (std::is_same_v<Codec, engram::int8_codec>) scale = Codec::row_scale(stored.data(), dim);
            if constexpr (std::is_same_v<Codec, engram::fp8_e4m3_codec>)
                scale = Codec::block_scale(stored.data(), dim, c / Codec::block);
            if (std::fabs(y - x) > bound.at(x, scale)) ++bad_values;
        }
    }
    CHECK(bad_bytes == 0);
    CHECK(bad_values == 0);
}

template <class Codec>
std::vector<float> forward_with(const engram::table_file& tf, const engram::layer<>& layer, const forward_case& g) {
    std::vector<float> out(g.hidden.size());
    layer.forward(tf.rows_table<Codec>(), g.ids, g.batch, g.seq, g.hidden, out);
    return out;
}

/// Pack `source` with `Codec` into 1 and 3 shards; rows, forward (dense f32 as the baseline,
/// `bound` on the scaled output error), verify.
template <class Codec>
void pack_and_check(const fs::path& source, double bound, const std::string& dir_name) {
    const forward_case g(source);
    const auto layer = engram::load_layer(g.file);
    const auto rows = g.file.at("multi_head_embedding.embedding.weight").to_vector<float>();
    std::vector<float> dense(g.hidden.size());
    layer.forward(g.ids, g.batch, g.seq, g.hidden, dense);
    const std::string codec(Codec::name);
    for (std::size_t shards : {std::size_t{1}, std::size_t{3}}) {
        INFO(codec << ", " << shards << " shard(s)");
        const fs::path dir = fresh_dir(dir_name + "_" + codec + "_" + std::to_string(shards));
        const fs::path out = dir / "table.safetensors";
        const auto t0 = std::chrono::steady_clock::now();
        const auto written = engram::pack_table(g.file, out, codec, shards);
        const auto t1 = std::chrono::steady_clock::now();
        const auto tf = engram::table_file::open(out);
        const auto t2 = std::chrono::steady_clock::now();
        const auto report = tf.verify();
        const auto t3 = std::chrono::steady_clock::now();
        auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
        std::printf("table file %s %zu shard(s): pack %.2f ms, open %.2f ms, verify %.2f ms\n", codec.c_str(), shards,
                    ms(t0, t1), ms(t1, t2), ms(t2, t3));

        // The manifest.
        const auto& m = tf.manifest();
        CHECK(m.table_id == written.table_id);
        CHECK(m.shards == written.shards);
        CHECK(m.codec == codec);
        CHECK(m.rows == static_cast<std::uint64_t>(layer.layout().total_rows));
        CHECK(m.dim == static_cast<std::uint64_t>(layer.layout().head_dim));
        CHECK(m.row_bytes == Codec::row_bytes(tf.dim()));
        CHECK(m.primes == layer.layout().primes);
        CHECK(m.offsets == layer.layout().offsets);
        REQUIRE(m.multipliers);
        CHECK(*m.multipliers == layer.layout().multipliers);
        CHECK(m.config.layer_id == layer.config().layer_id);
        CHECK(m.config.hash.layer_ids == layer.config().hash.layer_ids);
        REQUIRE(tf.vocab());
        CHECK(*tf.vocab() == layer.vocab());
        CHECK(tf.layout().multipliers == layer.layout().multipliers);
        REQUIRE(tf.num_shards() == shards);
        std::set<std::string> expected_files{"table.safetensors"};
        for (std::size_t k = 0; k < shards; ++k) {
            if (shards > 1) CHECK(m.shards[k].file == "table.shard" + std::to_string(k) + ".safetensors");
            expected_files.insert(m.shards[k].file);
            const auto shard = tf.shard_table<Codec>(k);
            CHECK(shard.rows() == m.shards[k].rows);
            // Rows start on a page boundary of their file.
            CHECK(shard.file_offset() % 4096 == 0);
        }
        CHECK(files_in(dir) == expected_files); // no temporaries left

        check_rows<Codec>(tf, rows);

        // The layer reads its rows from the file; visit_rows picks the codec at run time.
        const auto out_table = forward_with<Codec>(tf, layer, g);
        std::vector<float> out_visit(g.hidden.size());
        tf.visit_rows([&](const auto& table) { layer.forward(table, g.ids, g.batch, g.seq, g.hidden, out_visit); });
        CHECK(out_visit == out_table);
        if constexpr (std::is_same_v<Codec, engram::f32_codec>) {
            CHECK(out_table == dense);
            if (!g.expected.empty()) CHECK(scaled_error(out_table, g.expected) <= 1e-5);
        } else {
            const double err = scaled_error(out_table, dense);
            std::printf("  forward with %s rows: scaled error %.3g vs the f32 rows\n", codec.c_str(), err);
            CHECK(err <= bound);
            CHECK(err > 0); // the codec rounds something
        }

        CHECK(report.shards == shards);
        CHECK(report.rows == m.rows);
        CHECK(report.bytes == m.rows * m.row_bytes);
        CHECK(report.vocab);
    }
}

/// A random layer whose head rows are 32 wide (FP8 needs multiples of 32), saved as a checkpoint
/// with a forward case's inputs.
fs::path wide_case(const fs::path& dir) {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {500, 600};
    cfg.hash.max_ngram = 3;
    cfg.hash.heads_per_ngram = 2;
    cfg.hash.embed_per_ngram = 64;
    cfg.hash.layer_ids = {0, 4};
    cfg.hash.pad_id = 1;
    cfg.layer_id = 4;
    cfg.hidden = 32;
    cfg.branches = 2;
    cfg.kernel_size = 4;
    engram::layer<> layer(cfg, engram::canonical_table::identity(300));
    layer.randomize(7, 0.5f);
    const fs::path ckpt = dir / "wide_ckpt.safetensors";
    engram::save_layer(layer, ckpt);
    // Add inputs next to the weights.
    const auto file = engram::safetensors_file::open(ckpt);
    engram::safetensors_writer w;
    for (const auto& t : file.tensors()) w.add(t);
    w.set_metadata("config", *file.find_metadata("config"));
    std::vector<std::int64_t> ids(2 * 16);
    std::vector<float> hidden(ids.size() * 2 * 32);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 37) % 300);
    for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<float>(std::sin(0.1 * double(i)));
    w.add("input_ids", {2, 16}, ids);
    w.add("hidden_states", {2, 16, 2, 32}, hidden);
    const fs::path out = dir / "wide_case.safetensors";
    w.write(out);
    return out;
}

} // namespace

TEST_CASE("pack: f32 table files equal the checkpoint, and the layer's output is the same", "[table_file]") {
    pack_and_check<engram::f32_codec>(data("forward_small.safetensors"), 0, "f32");
}

// Forward error with quantized rows, max |out - out_f32| / max |out_f32|, measured on
// forward_small: bf16 9.8e-4, f16 1.4e-4, int8 3.8e-3 (fp8, on the 32-wide case: 3.1e-2); the
// asserted bounds leave about 2x.
TEST_CASE("pack: bf16, f16 and int8 table files hold the codec's encoding of every row", "[table_file]") {
    pack_and_check<engram::bf16_codec>(data("forward_small.safetensors"), 2e-3, "bf16");
    pack_and_check<engram::f16_codec>(data("forward_small.safetensors"), 3e-4, "f16");
    pack_and_check<engram::int8_codec>(data("forward_small.safetensors"), 8e-3, "int8");
}

TEST_CASE("pack: fp8 needs rows of a multiple of 32 values", "[table_file]") {
    const fs::path dir = fresh_dir("fp8");
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto msg = error_of<engram::config_error>([&] { engram::pack_table(src, dir / "t.safetensors", "fp8"); });
    CHECK(contains(msg, "fp8"));
    CHECK(contains(msg, "32"));
    CHECK(files_in(dir).empty());

    const fs::path wide = wide_case(fresh_dir("fp8_case"));
    pack_and_check<engram::fp8_e4m3_codec>(wide, 6e-2, "fp8");
    pack_and_check<engram::f32_codec>(wide, 0, "fp8_f32");
}

TEST_CASE("verify: a flipped byte in any shard's rows is found and named", "[table_file][verify]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    for (std::size_t shards : {std::size_t{1}, std::size_t{3}}) {
        for (std::size_t k = 0; k < shards; ++k) {
            INFO(shards << " shard(s), corrupting shard " << k);
            const fs::path dir = fresh_dir("flip");
            const fs::path out = dir / "t.safetensors";
            engram::pack_table(src, out, "bf16", shards);
            const auto tf = engram::table_file::open(out);
            const fs::path shard = tf.shard_path(k);
            flip_byte(shard, tensor_offset(shard, "rows") + 1000 + 77 * k);
            // Opening checks only what is cheap: the rows are not read.
            const auto reopened = engram::table_file::open(out);
            const auto msg = error_of<engram::format_error>([&] { reopened.verify(); });
            CHECK(contains(msg, "shard " + std::to_string(k)));
            CHECK(contains(msg, shard.filename().string()));
            CHECK(contains(msg, "checksum mismatch"));
        }
    }
}

TEST_CASE("open: corrupt manifests and vocabularies are rejected", "[table_file][errors]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const fs::path dir = fresh_dir("corrupt");
    const fs::path good = dir / "good.safetensors";
    engram::pack_table(src, good, "f32", 1);
    const fs::path t = dir / "t.safetensors";
    auto fresh = [&] { fs::copy_file(good, t, fs::copy_options::overwrite_existing); };
    auto open_error = [&]<class E = engram::format_error>() {
        return error_of<E>([&] { engram::table_file::open(t); });
    };

    SECTION("a flipped byte in the lookup") {
        fresh();
        flip_byte(t, tensor_offset(t, "lookup") + 8 * 17);
        const auto msg = open_error();
        CHECK(contains(msg, "lookup"));
        CHECK(contains(msg, "vocab_checksum"));
    }
    SECTION("a flipped digit of a prime in the manifest text") {
        fresh();
        std::ifstream in(t, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const auto at = bytes.find("primes\\\":[1009");
        REQUIRE(at != std::string::npos);
        flip_byte(t, at + 11, 0x01); // 1009 -> 1109, still valid JSON
        const auto msg = open_error();
        CHECK(contains(msg, "primes"));
        CHECK(contains(msg, "1109"));
    }
    SECTION("edited manifest fields") {
        struct edit_case {
            std::function<void(nlohmann::json&)> edit;
            std::string fragment;
        };
        const std::vector<edit_case> cases = {
            {[](auto& j) { j["primes"][3] = 1031; }, "primes"},
            {[](auto& j) { j["offsets"][2] = 2000; }, "offsets"},
            {[](auto& j) { j["rows"] = 8915; }, "rows"},
            {[](auto& j) { j["dim"] = 8; }, "dim"},
            {[](auto& j) { j["row_bytes"] = 32; }, "row_bytes"},
            {[](auto& j) { j["codec"] = "q4"; }, "codec"},
            {[](auto& j) { j.erase("codec"); }, "'codec' is missing"},
            {[](auto& j) { j["rows"] = "8916"; }, "'rows' must be an integer"},
            {[](auto& j) { j["format"] = "other"; }, "format"},
            {[](auto& j) { j["layer_id"] = 3; }, "layer_id"},
            {[](auto& j) { j["config"]["heads_per_ngram"] = 3; }, "config"},
            {[](auto& j) { j["shards"][0]["file"] = "../t.safetensors"; }, "plain file name"},
            {[](auto& j) { j["shards"][0]["rows"] = 100; }, "shards"},
            {[](auto& j) { j["shards"] = nlohmann::json::array(); }, "shards"},
            {[](auto& j) { j["shards"][0]["checksum"] = "xyz"; }, "16 hex digits"},
            {[](auto& j) { j["vocab_checksum"] = "0123456789abcdef"; }, "vocab_checksum"},
            {[](auto& j) { j["canonical_vocab_size"] = 334; }, "canonical"},
            {[](auto& j) { j["multipliers"][0] = 0; }, "multipliers"},
            {[](auto& j) { j["multipliers"] = nullptr; }, "multipliers"},
            {[](auto& j) { j["version"] = 0; }, "version"},
        };
        for (std::size_t i = 0; i < cases.size(); ++i) {
            INFO("case " << i << ": " << cases[i].fragment);
            fresh();
            edit_manifest(t, cases[i].edit);
            const auto msg = open_error();
            CHECK(contains(msg, cases[i].fragment));
            CHECK(contains(msg, "t.safetensors"));
        }
    }
    SECTION("a newer version is refused as unsupported") {
        fresh();
        edit_manifest(t, [](auto& j) { j["version"] = 2; });
        const auto msg = open_error.template operator()<engram::unsupported_error>();
        CHECK(contains(msg, "version 2"));
    }
    SECTION("files that are not table files") {
        const auto msg =
            error_of<engram::format_error>([&] { engram::table_file::open(data("forward_small.safetensors")); });
        CHECK(contains(msg, "not an engram table file"));
        CHECK(contains(error_of<engram::io_error>([&] { engram::table_file::open(dir / "absent.safetensors"); }),
                       "absent.safetensors"));
    }
}

TEST_CASE("open: missing, truncated, swapped and foreign shards", "[table_file][errors]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const fs::path dir = fresh_dir("shards");
    const fs::path t = dir / "t.safetensors";
    engram::pack_table(src, t, "f16", 3);
    const auto tf = engram::table_file::open(t);
    const fs::path s1 = tf.shard_path(1), s2 = tf.shard_path(2);
    const fs::path keep1 = dir / "keep1", keep2 = dir / "keep2";
    fs::copy_file(s1, keep1);
    fs::copy_file(s2, keep2);
    auto restore = [&] {
        fs::copy_file(keep1, s1, fs::copy_options::overwrite_existing);
        fs::copy_file(keep2, s2, fs::copy_options::overwrite_existing);
    };

    SECTION("missing") {
        fs::remove(s1);
        const auto msg = error_of<engram::io_error>([&] { engram::table_file::open(t); });
        CHECK(contains(msg, "shard 1"));
        CHECK(contains(msg, "t.shard1.safetensors"));
        restore();
    }
    SECTION("truncated") {
        fs::resize_file(s2, fs::file_size(s2) - 100);
        const auto msg = error_of<engram::format_error>([&] { engram::table_file::open(t); });
        CHECK(contains(msg, "shard 2"));
        CHECK(contains(msg, "truncated"));
        restore();
    }
    SECTION("two shards swapped") {
        fs::copy_file(keep2, s1, fs::copy_options::overwrite_existing);
        fs::copy_file(keep1, s2, fs::copy_options::overwrite_existing);
        const auto msg = error_of<engram::format_error>([&] { engram::table_file::open(t); });
        CHECK(contains(msg, "shard 1"));
        restore();
    }
    SECTION("a shard of another pack of the same table") {
        const fs::path other_dir = fresh_dir("shards_other");
        engram::pack_table(src, other_dir / "t.safetensors", "f16", 3);
        fs::copy_file(other_dir / "t.shard1.safetensors", s1, fs::copy_options::overwrite_existing);
        const auto msg = error_of<engram::format_error>([&] { engram::table_file::open(t); });
        CHECK(contains(msg, "belongs to another table"));
        restore();
    }
    SECTION("a shard opened as if it were the table") {
        const auto msg = error_of<engram::format_error>([&] { engram::table_file::open(s1); });
        CHECK(contains(msg, "one shard of a table"));
    }
    SECTION("a shard replaced after open: shard_table refuses it") {
        const fs::path other_dir = fresh_dir("shards_later");
        engram::pack_table(src, other_dir / "t.safetensors", "f16", 3);
        CHECK(tf.shard_table<engram::f16_codec>(1).rows() == tf.manifest().shards[1].rows);
        fs::copy_file(other_dir / "t.shard1.safetensors", s1, fs::copy_options::overwrite_existing);
        const auto msg = error_of<engram::format_error>([&] { (void)tf.shard_table<engram::f16_codec>(1); });
        CHECK(contains(msg, "shard 1"));
        CHECK(contains(msg, "belongs to another table"));
        CHECK(tf.shard_table<engram::f16_codec>(2).rows() == tf.manifest().shards[2].rows); // the others still open
        restore();
        CHECK(tf.shard_table<engram::f16_codec>(1).rows() == tf.manifest().shards[1].rows);
    }
    SECTION("a shard table of the wrong codec") {
        CHECK(contains(error_of<engram::config_error>([&] { (void)tf.shard_table<float>(0); }), "f16"));
    }
    // Intact again: opens and verifies.
    CHECK(engram::table_file::open(t).verify().shards == 3);
}

TEST_CASE("a one-file table replaced after open: shard_table refuses it", "[table_file][errors]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const fs::path dir = fresh_dir("replaced_single"), other = fresh_dir("replaced_single_other");
    const fs::path t = dir / "t.safetensors";
    engram::pack_table(src, t, "bf16", 1);
    engram::pack_table(src, other / "t.safetensors", "bf16", 1); // the same rows, another table id
    const auto tf = engram::table_file::open(t);
    CHECK(tf.shard_table<engram::bfloat16>(0).rows() == tf.rows());
    fs::rename(other / "t.safetensors", t);
    const auto msg = error_of<engram::format_error>([&] { (void)tf.shard_table<engram::bfloat16>(0); });
    CHECK(contains(msg, "t.safetensors"));
    CHECK(contains(msg, "replaced since it was opened"));
    CHECK(contains(msg, engram::detail::hex64(tf.manifest().table_id)));
}

TEST_CASE("interrupted packs leave no file behind", "[table_file][atomic]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    struct interrupted : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    for (std::size_t shards : {std::size_t{1}, std::size_t{3}}) {
        INFO(shards << " shard(s)");
        const fs::path dir = fresh_dir("interrupted");
        int calls = 0;
        auto stop_midway = [&](std::uint64_t done, std::uint64_t total) {
            ++calls;
            CHECK(done <= total);
            if (done * 2 >= total) throw interrupted("stop");
        };
        CHECK_THROWS_AS(engram::pack_table(src, dir / "t.safetensors", "f32", shards, stop_midway, 1000), interrupted);
        CHECK(calls == 5); // 1000-row blocks of 8916 rows: stopped at 5000
        CHECK(files_in(dir).empty());

        // Over an existing table: the old one stays, intact and verifiable.
        const auto old = engram::pack_table(src, dir / "t.safetensors", "int8", shards);
        const auto before = files_in(dir);
        CHECK_THROWS_AS(engram::pack_table(src, dir / "t.safetensors", "f32", shards, stop_midway, 1000), interrupted);
        CHECK(files_in(dir) == before);
        const auto tf = engram::table_file::open(dir / "t.safetensors");
        CHECK(tf.manifest().table_id == old.table_id);
        CHECK(tf.codec() == "int8");
        CHECK(tf.verify().shards == shards);
    }
    // A failure inside the writer (a NaN row) leaves nothing either.
    const fs::path dir = fresh_dir("nan");
    engram::safetensors_writer w;
    for (const auto& t : src.tensors()) {
        if (t.name != "multi_head_embedding.embedding.weight") {
            w.add(t);
            continue;
        }
        auto v = t.to_vector<float>();
        v[8000 * 16 + 3] = NAN;
        w.add(t.name, t.shape, v);
    }
    w.set_metadata("config", *src.find_metadata("config"));
    w.write(dir / "nan_case.safetensors");
    const auto nan_src = engram::safetensors_file::open(dir / "nan_case.safetensors");
    const auto msg = error_of<engram::format_error>(
        [&] { engram::pack_table(nan_src, dir / "t.safetensors", "bf16", 3, {}, 1000); });
    CHECK(contains(msg, "non-finite"));
    CHECK(contains(msg, std::to_string(8000 * 16 + 3)));
    CHECK(files_in(dir) == std::set<std::string>{"nan_case.safetensors"});
}

TEST_CASE("table_file_writer: streaming rows without a vocabulary", "[table_file][writer]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto cfg = engram::load_layer_config(src);
    const auto rows = src.at("multi_head_embedding.embedding.weight").to_vector<float>();
    const fs::path dir = fresh_dir("writer");

    engram::table_spec spec;
    spec.config = cfg;
    spec.codec = "f32";
    spec.shards = 2;
    {
        engram::table_file_writer w(dir / "nv.safetensors", spec);
        CHECK(w.rows() == 8916);
        // Uneven pieces that straddle the shard boundary (4458).
        w.append(std::span<const float>(rows).subspan(0, 4000 * 16));
        w.append_encoded(std::as_bytes(std::span<const float>(rows).subspan(4000 * 16, 1000 * 16)));
        CHECK_THROWS_AS(w.append(std::span<const float>(rows).subspan(0, 7)), engram::input_error);
        CHECK_THROWS_AS(w.finish(), engram::input_error);                             // rows missing
        CHECK_THROWS_AS(w.append(std::span<const float>(rows)), engram::input_error); // too many
        w.append(std::span<const float>(rows).subspan(5000 * 16));
        w.finish();
    }
    const auto tf = engram::table_file::open(dir / "nv.safetensors");
    CHECK_FALSE(tf.vocab());
    CHECK_FALSE(tf.manifest().multipliers);
    CHECK_FALSE(tf.manifest().canonical_vocab_size);
    CHECK_THROWS_AS(tf.layout(), engram::config_error);
    CHECK(tf.manifest().primes == engram::load_layer(src).layout().primes);
    CHECK(tf.verify().vocab == false);
    check_rows<engram::f32_codec>(tf, rows);

    // Abandoned before finish: nothing stays.
    const auto before = files_in(dir);
    {
        engram::table_file_writer w(dir / "abandoned.safetensors", spec);
        w.append(std::span<const float>(rows).subspan(0, 6000 * 16));
    }
    CHECK(files_in(dir) == before);

    // Bad specs.
    spec.shards = 0;
    CHECK_THROWS_AS(engram::table_file_writer(dir / "x.safetensors", spec), engram::config_error);
    spec.shards = 1;
    spec.codec = "q4";
    CHECK_THROWS_AS(engram::table_file_writer(dir / "x.safetensors", spec), engram::config_error);
    spec.codec = "f32";
    CHECK_THROWS_AS(engram::table_file_writer(dir / "no_such_dir" / "x.safetensors", spec), engram::io_error);
    CHECK(files_in(dir) == before);
}

TEST_CASE("the manifest survives a JSON round trip", "[table_file]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const fs::path dir = fresh_dir("roundtrip");
    const auto m = engram::pack_table(src, dir / "t.safetensors", "bf16", 3);
    const auto back = engram::table_manifest::from_json(m.to_json(), "test");
    CHECK(back.to_json() == m.to_json());
    back.validate("test");
    CHECK(m.to_json().at("format") == "engram-table");
    CHECK(m.to_json().at("version") == 1);
    CHECK(m.to_json().at("shards").size() == 3);
}
