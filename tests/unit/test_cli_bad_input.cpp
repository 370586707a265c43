// The engram tool on bad input, one table per subcommand (compress-vocab, hash, inspect,
// forward, pack, verify, stats): every row must exit non-zero (2 for a usage mistake, 1 for bad
// input), print exactly one line on stderr that names the problem, and leave no output file and
// no temporary file behind.
#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/cli_run.hpp"

#include <engram/io/safetensors.hpp>
#include <engram/io/table_file.hpp>

#include <nlohmann/json.hpp>

#include <unistd.h> // for getpid

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

fs::path work_dir() { return engram_test::scratch_dir("engram_cli_bad_input"); }

constexpr auto q = &engram_test::quoted;

/// Runs `engram <args>`, capturing stdout, stderr and the exit code.
result run(const std::string& args) { return engram_test::run_cli(args, work_dir()); }

fs::path data(const char* name) { return fs::path(ENGRAM_TEST_DATA_DIR) / name; }

/// One row of a subcommand's table.
struct bad_run {
    std::string label;
    std::string args;
    int code; ///< 1: bad input, 2: usage mistake
    std::string fragment;
    fs::path output; ///< must not exist afterwards (nor its temporaries); empty: none
};

void expect_failures(const std::vector<bad_run>& rows) {
    for (const auto& row : rows) {
        if (!row.output.empty()) fs::remove(row.output);
        const result r = run(row.args);
        INFO("bad run: " << row.label << "\n  engram " << row.args << "\n  stderr: " << r.err);
        CHECK(r.code == row.code);
        CHECK(!r.err.empty());
        CHECK(r.err.find('\n') == r.err.size() - 1); // exactly one line
        CHECK(r.err.find(row.fragment) != std::string::npos);
        if (!row.output.empty()) {
            CHECK_FALSE(fs::exists(row.output));
            CHECK(engram::table_temporaries(row.output).empty());
        }
    }
}

using tensor_edit = std::function<void(engram::safetensors_writer&, const engram::tensor_view&)>;

void keep(engram::safetensors_writer& w, const engram::tensor_view& t) { w.add(t); }

/// A golden file with its tensors passed through `edit` and its config JSON through `config`.
fs::path mutated(const char* source, const std::string& name, const tensor_edit& edit,
                 const std::function<void(nlohmann::json&)>& config = {}) {
    const auto src = engram::safetensors_file::open(data(source));
    engram::safetensors_writer w;
    for (const auto& t : src.tensors()) edit(w, t);
    auto j = nlohmann::json::parse(*src.find_metadata("config"));
    if (config) config(j);
    w.set_metadata("config", j.dump());
    const fs::path p = work_dir() / name;
    w.write(p);
    return p;
}

tensor_edit replace_ids(const std::string& name, std::size_t at, std::int64_t value) {
    return [=](engram::safetensors_writer& w, const engram::tensor_view& t) {
        if (t.name != name) return w.add(t);
        auto v = t.to_vector<std::int64_t>();
        v[at] = value;
        w.add(t.name, t.shape, v);
    };
}

tensor_edit drop(const std::string& name) {
    return [=](engram::safetensors_writer& w, const engram::tensor_view& t) {
        if (t.name != name) w.add(t);
    };
}

fs::path text_file(const std::string& name, const std::string& text) {
    const fs::path p = work_dir() / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
}

/// A copy of `from`'s first `size` bytes.
fs::path truncated(const fs::path& from, const std::string& name, std::size_t size) {
    const std::string bytes = slurp(from);
    return text_file(name, bytes.substr(0, size));
}

/// A safetensors file whose header has an unknown field in a tensor entry.
fs::path unknown_field_file() {
    const std::string header = R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"checksum":"abc"}})";
    std::string bytes(8, '\0');
    for (std::size_t i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    return text_file("unknown_field.safetensors", bytes + header + "ab");
}

const std::string tokenizer_head = R"({"decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "merges": [], )";

} // namespace

TEST_CASE("bad input table: engram compress-vocab", "[cli][bad_input]") {
    const fs::path out = work_dir() / "vocab_out.safetensors";
    const fs::path existing_dir = work_dir() / "a_directory";
    fs::create_directories(existing_dir);
    auto cv = [&](const fs::path& tok, const fs::path& o) { return "compress-vocab " + q(tok) + " -o " + q(o); };
    const std::vector<bad_run> rows = {
        {"missing file", cv(work_dir() / "absent.json", out), 1, "absent.json: No such file", out},
        {"a directory", cv(work_dir(), out), 1, "not a regular file", out},
        {"not JSON", cv(text_file("t1.json", "{\"model\": "), out), 1, "not valid JSON", out},
        {"unknown model type",
         cv(text_file("t2.json", R"({"model": {"type": "Telepathy", "vocab": []}, "decoder": {"type": "ByteLevel"}})"),
            out),
         1, "model.type \"Telepathy\" is not supported", out},
        {"empty Unigram vocabulary",
         cv(text_file("t2b.json", R"({"model": {"type": "Unigram", "vocab": []}, "decoder": {"type": "ByteLevel"}})"),
            out),
         1, "model.vocab and added_tokens are both empty", out},
        {"unsupported decoder step",
         cv(text_file("t2c.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "decoder": {"type": "Sequence",
             "decoders": [{"type": "Fuse"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]}})"),
            out),
         1, "decoder.decoders[1]: decoder Replace with a Regex pattern is not supported", out},
        {"decoder field missing",
         cv(text_file("t2d.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "decoder": {"type": "Strip",
             "content": " ", "start": 1}})"),
            out),
         1, "missing field decoder.stop", out},
        {"negative id", cv(text_file("t3.json", tokenizer_head + R"("vocab": {"a": -3}}})"), out), 1,
         "model.vocab[\"a\"] = -3 is negative", out},
        {"huge id", cv(text_file("t4.json", tokenizer_head + R"("vocab": {"a": 4000000000}}})"), out), 1,
         "= 4000000000 is too large", out},
        {"malformed added token",
         cv(text_file("t5.json", tokenizer_head + R"("vocab": {"a": 0}}, "added_tokens": [{"content": "x"}]})"), out),
         1, "missing field added_tokens[0].id", out},
        {"no -o", "compress-vocab " + q(data("forward_small.safetensors")), 2, "usage: engram compress-vocab", {}},
        {"unknown option", "compress-vocab x.json -o y --fast", 2, "unknown option '--fast'", {}},
        {"output directory missing",
         cv(text_file("t6.json", tokenizer_head + R"("vocab": {"a": 0}}})"), work_dir() / "nodir" / "o.safetensors"), 1,
         "nodir", work_dir() / "nodir" / "o.safetensors"},
        {"output is an existing directory", cv(work_dir() / "t6.json", existing_dir), 1, "cannot rename", {}},
    };
    expect_failures(rows);
    CHECK(fs::is_directory(existing_dir));
    CHECK(engram::write_temporaries(existing_dir).empty());
}

TEST_CASE("bad input table: engram hash", "[cli][bad_input]") {
    const fs::path out = work_dir() / "hash_out.safetensors";
    const char* golden = "hash_reference_default.safetensors";
    auto hash = [&](const fs::path& in) { return "hash " + q(in) + " -o " + q(out); };
    const std::vector<bad_run> rows = {
        {"missing file", hash(work_dir() / "nope.safetensors"), 1, "nope.safetensors", out},
        {"a directory", hash(work_dir()), 1, "is a directory", out},
        {"empty file", hash(text_file("empty.safetensors", "")), 1, "shorter than the 8-byte", out},
        {"text, not safetensors", hash(text_file("text.safetensors", "hello, this is not a tensor file")), 1,
         "header length", out},
        {"truncated in the header", hash(truncated(data(golden), "h_cut1.safetensors", 300)), 1, "header length", out},
        {"truncated in the data", hash(truncated(data(golden), "h_cut2.safetensors", 400000)), 1, "(file truncated?)",
         out},
        {"an unknown field in a tensor entry", hash(unknown_field_file()), 1, "unknown field 'checksum'", out},
        {"input_ids of floats",
         hash(mutated(golden, "h1.safetensors",
                      [](auto& w, const auto& t) {
                          if (t.name != "input_ids") return w.add(t);
                          w.add(t.name, t.shape, std::vector<float>(t.numel(), 1.0f));
                      })),
         1, "'input_ids' has dtype F32, expected I64", out},
        {"a token id >= V", hash(mutated(golden, "h2.safetensors", replace_ids("input_ids", 17, 50000))), 1,
         "token id 50000 at position 17 is outside the vocabulary [0, 50000)", out},
        {"a negative token id", hash(mutated(golden, "h3.safetensors", replace_ids("input_ids", 5, -1))), 1,
         "token id -1 at position 5", out},
        {"no lookup", hash(mutated(golden, "h4.safetensors", drop("lookup"))), 1, "missing tensor 'lookup'", out},
        {"a lookup with a gap", hash(mutated(golden, "h5.safetensors", replace_ids("lookup", 0, 49999))), 1,
         "is never produced", out},
        {"E not divisible by K",
         hash(mutated(golden, "h6.safetensors", keep, [](auto& j) { j["embed_per_ngram"] = 500; })), 1,
         "embed_per_ngram = 500 is not divisible by heads_per_ngram = 8", out},
        {"a zero table size",
         hash(mutated(golden, "h7.safetensors", keep,
                      [](auto& j) {
                          j["table_size_per_ngram"] = {0, 646400};
                      })),
         1, "table_size_per_ngram[0] = 0", out},
        {"pad id outside the vocabulary",
         hash(mutated(golden, "h8.safetensors", keep, [](auto& j) { j["pad_id"] = 50000; })), 1,
         "pad_id 50000 is outside the vocabulary", out},
        {"max_ngram as text", hash(mutated(golden, "h9.safetensors", keep, [](auto& j) { j["max_ngram"] = "3"; })), 1,
         "'max_ngram' must be an integer", out},
        {"no arguments", "hash", 2, "usage: engram hash", {}},
        {"two inputs", "hash a b -o c", 2, "usage: engram hash", {}},
        {"output directory missing", "hash " + q(data(golden)) + " -o " + q(work_dir() / "nodir" / "x.safetensors"), 1,
         "nodir", work_dir() / "nodir" / "x.safetensors"},
    };
    expect_failures(rows);
}

TEST_CASE("bad input table: engram inspect", "[cli][bad_input]") {
    engram::safetensors_writer w;
    w.add("x", {1}, std::vector<float>{1.0f});
    w.set_metadata("config", "{\"max_ngram\": ");
    w.write(work_dir() / "bad_config.safetensors");
    const std::vector<bad_run> rows = {
        {"missing file", "inspect " + q(work_dir() / "gone.safetensors"), 1, "gone.safetensors", {}},
        {"a directory that is not a checkpoint",
         "inspect " + q(work_dir()),
         1,
         "is a directory but not a checkpoint",
         {}},
        {"truncated",
         "inspect " + q(truncated(data("forward_small.safetensors"), "i_cut.safetensors", 100000)),
         1,
         "(file truncated?)",
         {}},
        {"a header that is not JSON",
         "inspect " + q(text_file("i_text.safetensors", std::string("\x04\0\0\0\0\0\0\0{{{{", 12))),
         1,
         "header is not valid JSON",
         {}},
        {"config metadata that is not JSON",
         "inspect " + q(work_dir() / "bad_config.safetensors"),
         1,
         "metadata 'config' is not valid JSON",
         {}},
        {"no file", "inspect", 2, "usage: engram inspect", {}},
        {"unknown option", "inspect --all x", 2, "unknown option '--all'", {}},
    };
    expect_failures(rows);
}

TEST_CASE("bad input table: engram forward", "[cli][bad_input]") {
    const fs::path out = work_dir() / "forward_out.safetensors";
    const char* golden = "forward_small.safetensors";
    auto fwd = [&](const fs::path& in, const std::string& extra = "") {
        return "forward " + q(in) + " -o " + q(out) + extra;
    };
    // A table of another layout, and a good table whose manifest is then corrupted.
    const fs::path other_case =
        mutated(golden, "f_other.safetensors", drop("multi_head_embedding.offsets"), [](auto& j) {
            j["table_size_per_ngram"] = {1100, 1200};
        });
    {
        // The rows tensor must fit the new layout: pack needs [rows, 16].
        const auto src = engram::safetensors_file::open(other_case);
        engram::safetensors_writer w;
        const auto layout = engram::make_layout(
            engram::hash_config_from_json(nlohmann::json::parse(*src.find_metadata("config"))), 1, 1, 0);
        for (const auto& t : src.tensors())
            if (t.name != "multi_head_embedding.embedding.weight") w.add(t);
        w.add("multi_head_embedding.embedding.weight", {layout.total_rows, layout.head_dim},
              std::vector<float>(static_cast<std::size_t>(layout.total_rows * layout.head_dim), 0.25f));
        w.set_metadata("config", *src.find_metadata("config"));
        w.write(other_case);
    }
    const fs::path other_table = work_dir() / "other_table.safetensors";
    engram::pack_table(engram::safetensors_file::open(other_case), other_table, "f32", 1);
    const fs::path bad_table = work_dir() / "bad_table.safetensors";
    engram::pack_table(engram::safetensors_file::open(data(golden)), bad_table, "bf16", 2);
    fs::remove(work_dir() / "bad_table.shard1.safetensors");

    const std::vector<bad_run> rows = {
        {"missing file", fwd(work_dir() / "nope.safetensors"), 1, "nope.safetensors", out},
        {"hidden_states of the wrong shape",
         fwd(mutated(golden, "f1.safetensors",
                     [](auto& w, const auto& t) {
                         if (t.name != "hidden_states") return w.add(t);
                         w.add(t.name, engram::dtype::f32, {2, 24, 2, 128}, t.bytes);
                     })),
         1, "'hidden_states' has shape [2, 24, 2, 128], expected [2, 24, 4, 64]", out},
        {"a NaN hidden state",
         fwd(mutated(golden, "f2.safetensors",
                     [](auto& w, const auto& t) {
                         if (t.name != "hidden_states") return w.add(t);
                         auto v = t.template to_vector<float>();
                         v[99] = NAN;
                         w.add(t.name, t.shape, v);
                     })),
         1, "'hidden_states' has a non-finite value (nan) at flat index 99", out},
        {"an infinite weight",
         fwd(mutated(golden, "f3.safetensors",
                     [](auto& w, const auto& t) {
                         if (t.name != "value_proj.weight") return w.add(t);
                         auto v = t.template to_vector<float>();
                         v[5] = INFINITY;
                         w.add(t.name, t.shape, v);
                     })),
         1, "'value_proj.weight' has a non-finite value (inf) at flat index 5", out},
        {"a missing weight", fwd(mutated(golden, "f4.safetensors", drop("norm2.1.weight"))), 1,
         "missing tensor 'norm2.1.weight'", out},
        {"a token id >= V", fwd(mutated(golden, "f5.safetensors", replace_ids("input_ids", 30, 600))), 1,
         "token id 600 at position 30 is outside the vocabulary [0, 600)", out},
        {"a token id >= V, streamed", fwd(work_dir() / "f5.safetensors", " --stream"), 1, "token id 600", out},
        {"layer id not in layer_ids", fwd(mutated(golden, "f6.safetensors", keep, [](auto& j) { j["layer_id"] = 2; })),
         1, "layer_id 2 is not in layer_ids", out},
        {"a table of another layout", fwd(data(golden), " --table " + q(other_table)), 1, "table file has", out},
        {"a table with a missing shard", fwd(data(golden), " --table " + q(bad_table)), 1, "bad_table.shard1", out},
        {"a missing table", fwd(data(golden), " --table " + q(work_dir() / "no_table.safetensors")), 1,
         "no_table.safetensors", out},
        {"an unknown storage", fwd(data(golden), " --storage ssd"), 2, "--storage 'ssd'", out},
        {"zero shards", fwd(data(golden), " --storage sharded:0"), 2, "must be a positive number", out},
        {"--table without a value", "forward " + q(data(golden)) + " -o " + q(out) + " --table", 2,
         "--table needs a value", out},
        {"an unknown weight format", fwd(data(golden), " --weights fp64"), 2,
         "--weights 'fp64': expected f32, bf16, bf16_dot or int8", out},
        {"zero threads", fwd(data(golden), " --threads 0"), 2, "--threads needs an integer in [1, 256], got '0'", out},
        {"negative threads", fwd(data(golden), " --threads=-2"), 2, "got '-2'", out},
        {"--weights without a value", "forward " + q(data(golden)) + " -o " + q(out) + " --weights", 2,
         "--weights needs a value", out},
    };
    expect_failures(rows);
}

TEST_CASE("bad input table: engram pack", "[cli][bad_input]") {
    const fs::path out = work_dir() / "packed.safetensors";
    const char* golden = "forward_small.safetensors";
    auto pack = [&](const fs::path& in, const std::string& extra = "") {
        return "pack " + q(in) + " -o " + q(out) + extra;
    };
    const std::vector<bad_run> rows = {
        {"missing input", pack(work_dir() / "none.safetensors"), 1, "none.safetensors", out},
        {"not a checkpoint", pack(data("hash_reference_default.safetensors")), 1,
         "no tensor 'multi_head_embedding.embedding.weight'", out},
        {"a NaN row value",
         pack(mutated(golden, "p1.safetensors",
                      [](auto& w, const auto& t) {
                          if (t.name != "multi_head_embedding.embedding.weight") return w.add(t);
                          auto v = t.template to_vector<float>();
                          v[100000] = NAN;
                          w.add(t.name, t.shape, v);
                      })),
         1, "non-finite value (nan) at flat index 100000", out},
        {"rows of the wrong shape",
         pack(mutated(golden, "p2.safetensors",
                      [](auto& w, const auto& t) {
                          if (t.name != "multi_head_embedding.embedding.weight") return w.add(t);
                          w.add(t.name, engram::dtype::f32, {t.shape[0] / 2, t.shape[1] * 2}, t.bytes);
                      })),
         1, "has shape [4458, 32], the config's layout needs [8916, 16]", out},
        {"offsets that are not the layout's",
         pack(mutated(golden, "p3.safetensors", replace_ids("multi_head_embedding.offsets", 1, 7))), 1,
         "'multi_head_embedding.offsets' does not match", out},
        {"a lookup that is not dense", pack(mutated(golden, "p4.safetensors", replace_ids("lookup", 3, 599))), 1,
         "tensor 'lookup'", out},
        {"bad config", pack(mutated(golden, "p5.safetensors", keep, [](auto& j) { j["kernel_size"] = 0; })), 1,
         "'kernel_size' = 0", out},
        {"fp8 rows of 16 values", pack(data(golden), " --codec fp8"), 1, "fp8", out},
        {"an unknown codec", pack(data(golden), " --codec f8"), 2, "--codec: unknown codec 'f8'", out},
        {"zero shards", pack(data(golden), " --shards 0"), 2, "--shards needs a positive number", out},
        {"more shards than rows", pack(data(golden), " --shards 9999"), 1, "shards", out},
        {"no -o", "pack " + q(data(golden)), 2, "usage: engram pack", {}},
        {"output directory missing", "pack " + q(data(golden)) + " -o " + q(work_dir() / "nodir" / "t.safetensors"), 1,
         "nodir", work_dir() / "nodir" / "t.safetensors"},
    };
    expect_failures(rows);
    // And for shards: none of STEM.shard{k} was left either.
    for (const auto& e : fs::directory_iterator(work_dir()))
        CHECK(e.path().filename().string().rfind("packed.", 0) != 0);
}

TEST_CASE("bad input table: engram verify", "[cli][bad_input]") {
    const auto src = engram::safetensors_file::open(data("forward_small.safetensors"));
    const fs::path dir = work_dir() / "verify";
    fs::create_directories(dir);
    auto packed = [&](const std::string& name, std::size_t shards) {
        const fs::path p = dir / (name + ".safetensors");
        engram::pack_table(src, p, "f16", shards);
        return p;
    };
    auto edit_manifest = [](const fs::path& p, const std::function<void(nlohmann::json&)>& f) {
        engram::safetensors_writer w;
        {
            const auto file = engram::safetensors_file::open(p);
            for (const auto& t : file.tensors()) w.add(t);
            auto j = nlohmann::json::parse(*file.find_metadata("engram_table"));
            f(j);
            w.set_metadata("engram_table", j.dump());
        }
        w.write(p);
    };
    // Corruptions.
    const fs::path flipped = packed("flipped", 1);
    {
        std::string bytes = slurp(flipped);
        bytes[bytes.size() - 3] = static_cast<char>(bytes[bytes.size() - 3] ^ 0x40);
        std::ofstream(flipped, std::ios::binary | std::ios::trunc) << bytes;
    }
    const fs::path no_shard = packed("no_shard", 3);
    fs::remove(dir / "no_shard.shard2.safetensors");
    const fs::path foreign = packed("foreign", 2);
    {
        const fs::path other = work_dir() / "verify_other";
        fs::create_directories(other);
        engram::pack_table(src, other / "foreign.safetensors", "f16", 2);
        fs::copy_file(other / "foreign.shard0.safetensors", dir / "foreign.shard0.safetensors",
                      fs::copy_options::overwrite_existing);
    }
    const fs::path eps = packed("eps", 1);
    edit_manifest(eps, [](auto& j) { j["config"]["gate_norm_eps"] = 1e-6; });
    const fs::path unknown = packed("unknown", 1);
    edit_manifest(unknown, [](auto& j) { j["note"] = "hand-edited"; });
    const fs::path cut = packed("cut", 1);
    fs::resize_file(cut, fs::file_size(cut) - 4096);

    const std::vector<bad_run> rows = {
        {"missing table", "verify " + q(dir / "absent.safetensors"), 1, "absent.safetensors", {}},
        {"a directory", "verify " + q(dir), 1, "is a directory", {}},
        {"not a table file", "verify " + q(data("forward_small.safetensors")), 1, "not an engram table file", {}},
        {"a flipped row byte", "verify " + q(flipped), 1, "content checksum mismatch", {}},
        {"a missing shard", "verify " + q(no_shard), 1, "no_shard.shard2.safetensors", {}},
        {"a shard of another pack", "verify " + q(foreign), 1, "belongs to another table", {}},
        {"an epsilon edited by hand", "verify " + q(eps), 1, "the manifest hashes to", {}},
        {"an unknown manifest field", "verify " + q(unknown), 1, "unknown field 'note'", {}},
        {"truncated", "verify " + q(cut), 1, "(file truncated?)", {}},
        {"a shard given as the table",
         "verify " + q(dir / "foreign.shard1.safetensors"),
         1,
         "one shard of a table",
         {}},
        {"-o given", "verify " + q(flipped) + " -o x", 2, "usage: engram verify", {}},
    };
    expect_failures(rows);

    SECTION("leftover temporaries are reported, not treated as errors") {
        const fs::path good = packed("good", 2);
        text_file("verify/.good.shard1.safetensors.tmp.AbC123", "partial");
        const result r = run("verify " + q(good));
        INFO(r.err);
        CHECK(r.code == 0);
        CHECK(r.out.find("1 temporary file(s) of an interrupted pack") != std::string::npos);
        CHECK(r.out.find(".good.shard1.safetensors.tmp.AbC123") != std::string::npos);
        // A pack of the same table removes them first.
        const result p = run("pack " + q(data("forward_small.safetensors")) + " -o " + q(good) + " --shards 2");
        INFO(p.err);
        CHECK(p.code == 0);
        CHECK(p.out.find("removed 1 temporary file(s)") != std::string::npos);
        CHECK(engram::table_temporaries(good).empty());
    }
}

TEST_CASE("bad input table: engram stats", "[cli][bad_input]") {
    const fs::path ids = text_file("ids.txt", "5 6 7 8 9 10");
    const fs::path cfg = text_file("cfg.json", R"({"table_size_per_ngram": [1000, 1200], "max_ngram": 3,
        "heads_per_ngram": 4, "embed_per_ngram": 64, "layer_ids": [1, 3], "pad_id": 2, "seed": 0})");
    const std::string base = " --config " + q(cfg);
    const std::vector<bad_run> rows = {
        {"no --config", "stats --tokens " + q(ids), 2, "--config is required", {}},
        {"both --tokens and --text",
         "stats --tokens " + q(ids) + " --text " + q(ids) + base,
         2,
         "give exactly one of --tokens and --text",
         {}},
        {"--text without --tokenizer", "stats --text " + q(ids) + base, 2, "--text needs --tokenizer", {}},
        {"--layer that is not a number",
         "stats --tokens " + q(ids) + base + " --layer one",
         2,
         "--layer 'one' is not a non-negative integer",
         {}},
        {"an option given twice", "stats --tokens " + q(ids) + base + base, 2, "--config is given twice", {}},
        {"a token that is not a number",
         "stats --tokens " + q(text_file("w.txt", "1 2 x3 4")) + base,
         1,
         "'x3' (entry 2) is not an integer token id",
         {}},
        {"a negative token",
         "stats --tokens " + q(text_file("n.txt", "1 -2 3")) + base,
         1,
         "token id -2 at position 1 is negative",
         {}},
        {"no tokens", "stats --tokens " + q(text_file("e.txt", " \n ")) + base, 1, "no token ids", {}},
        {"a token >= V of the config's lookup",
         "stats --tokens " + q(text_file("big.txt", "1 2 600")) + " --config " + q(data("forward_small.safetensors")),
         1,
         "token id 600 at position 2 is outside the vocabulary [0, 600)",
         {}},
        {"a missing token file",
         "stats --tokens " + q(work_dir() / "gone.txt") + base,
         1,
         "gone.txt: no such file",
         {}},
        {"a config that is not JSON",
         "stats --tokens " + q(ids) + " --config " + q(text_file("c1.json", "{nope")),
         1,
         "not valid JSON",
         {}},
        {"E not divisible by K",
         "stats --tokens " + q(ids) + " --config " +
             q(text_file("c2.json", R"({"table_size_per_ngram": [1000, 1200], "max_ngram": 3, "heads_per_ngram": 4,
                 "embed_per_ngram": 66, "layer_ids": [1, 3], "pad_id": 2, "seed": 0})")),
         1,
         "embed_per_ngram = 66 is not divisible by heads_per_ngram = 4",
         {}},
        {"a layer not in layer_ids",
         "stats --tokens " + q(ids) + base + " --layer 2",
         1,
         "--layer 2 is not in layer_ids [1, 3]",
         {}},
        {"a missing tokenizer",
         "stats --text " + q(ids) + " --tokenizer " + q(work_dir() / "no_tok.json") + base,
         1,
         "no_tok.json: No such file",
         {}},
        {"text that is not UTF-8",
         "stats --text " + q(text_file("bad.txt", "ab\xff")) + " --tokenizer " +
             q(text_file("tok.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
                 "decoder": {"type": "ByteLevel"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}})")) +
             base,
         1,
         "not valid UTF-8 at byte offset 2",
         {}},
    };
    expect_failures(rows);
}
