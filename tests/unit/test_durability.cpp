// Durability of engram's writers: a child process packing a table (or writing a safetensors
// file) is SIGKILLed at random points and at chosen rows; afterwards the destination is absent
// or complete and verifiable, never a file that opens but is wrong, and the only leftovers are
// the documented temporaries. Then single bytes of every section of packed tables are flipped:
// each flip is caught by validation or a checksum, or it left the content exactly as it was.
#include "support/bad_input.hpp"
#include "support/catch.hpp"

#include <engram/io/safetensors.hpp>
#include <engram/io/table_file.hpp>

#include <nlohmann/json.hpp>

#include <signal.h>   // for kill, SIGKILL, raise
#include <sys/wait.h> // for waitpid, WIFSIGNALED
#include <unistd.h>   // for fork, _exit, getpid

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace {

fs::path work_dir() { return engram_test::scratch_dir("engram_durability"); }

fs::path fresh_dir(const std::string& name) { return engram_test::fresh_subdir(work_dir(), name); }

using engram_test::files_in;

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A checkpoint big enough that packing it takes a while (about 50 MB of F32 rows), with a
/// canonical table, in the reference layout of its config.
fs::path big_checkpoint() {
    static const fs::path path = [] {
        engram::layer_config cfg;
        cfg.hash.table_size_per_ngram = {100000, 100000};
        cfg.hash.max_ngram = 3;
        cfg.hash.heads_per_ngram = 4;
        cfg.hash.embed_per_ngram = 64;
        cfg.hash.layer_ids = {1, 3};
        cfg.layer_id = 1;
        cfg.hidden = 64;
        const auto layout = engram::make_layout(cfg.hash, 1, 1, 0);
        const auto rows = static_cast<std::size_t>(layout.total_rows), dim = static_cast<std::size_t>(layout.head_dim);
        std::vector<float> w(rows * dim);
        std::mt19937 rng(7);
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        for (auto& x : w) x = u(rng);
        engram::safetensors_writer out;
        out.add("multi_head_embedding.embedding.weight",
                {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(dim)}, w);
        std::vector<std::int64_t> lookup(1000);
        for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<std::int64_t>(i % 700);
        out.add("lookup", {1000}, lookup);
        out.set_metadata("config", engram::to_json(cfg).dump());
        const fs::path p = work_dir() / "big_checkpoint.safetensors";
        out.write(p);
        return p;
    }();
    return path;
}

/// Runs `work` in a child process and SIGKILLs it after `delay` (or lets it finish when the
/// delay is longer). Returns true if the child was killed before it exited.
template <class Work>
bool run_and_kill(Work&& work, std::chrono::microseconds delay) {
    std::cout.flush();
    std::cerr.flush();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 0;
        try {
            work();
        } catch (...) {
            code = 3;
        }
        ::_exit(code);
    }
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + delay;
    while (std::chrono::steady_clock::now() < deadline) {
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        REQUIRE(done >= 0);
        if (done == pid) {
            if (WIFSIGNALED(status)) return true; // killed itself (a test hook)
            REQUIRE(WIFEXITED(status));
            REQUIRE(WEXITSTATUS(status) == 0); // finished before the kill: it must have succeeded
            return false;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    ::kill(pid, SIGKILL);
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status)) REQUIRE(WEXITSTATUS(status) == 0); // finished before the kill: it must have succeeded
    return WIFSIGNALED(status);
}

/// The documented rule for what a killed pack may leave next to `table`: the table itself
/// (complete), its shard files, and temporaries listed by `table_temporaries`. Returns the number of
/// temporaries, after deleting them as the rule allows.
std::size_t check_leftovers_and_clean(const fs::path& table, std::size_t shards) {
    const auto temporaries = engram::table_temporaries(table);
    std::set<std::string> allowed{table.filename().string()};
    for (std::size_t k = 0; k < shards; ++k)
        allowed.insert(table.stem().string() + ".shard" + std::to_string(k) + table.extension().string());
    for (const auto& t : temporaries) allowed.insert(t.filename().string());
    for (const auto& name : files_in(table.parent_path())) {
        INFO("leftover " << name);
        CHECK(allowed.count(name) == 1);
    }
    for (const auto& t : temporaries) fs::remove(t);
    return temporaries.size();
}

/// The destination after a kill: absent, or a complete table that verifies and holds the
/// source's rows (sampled) in codec `codec`. Returns whether a table was there.
bool check_table_state(const fs::path& table, const std::string& codec, const std::vector<float>& source_rows,
                       std::mt19937& rng) {
    if (!fs::exists(table)) return false;
    const auto tf = engram::table_file::open(table); // throws (failing the test) if broken
    const auto report = tf.verify();
    REQUIRE(report.rows == tf.rows());
    if (tf.codec() == "f32" && codec == "f32") {
        const auto rows = tf.rows_table<float>();
        std::uniform_int_distribution<std::size_t> pick(0, tf.rows() - 1);
        std::vector<float> got(tf.dim());
        for (int i = 0; i < 32; ++i) {
            const auto r = static_cast<engram::row_id>(pick(rng));
            rows.gather(std::span<const engram::row_id>(&r, 1), got);
            const auto at = static_cast<std::size_t>(r) * tf.dim();
            REQUIRE(std::equal(got.begin(), got.end(), source_rows.begin() + static_cast<std::ptrdiff_t>(at)));
        }
    }
    return true;
}

} // namespace

TEST_CASE("a pack SIGKILLed at random points leaves no table or a complete one", "[durability][pack]") {
    const auto source = engram::safetensors_file::open(big_checkpoint());
    const auto source_rows = source.at("multi_head_embedding.embedding.weight").to_vector<float>();
    const std::uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));

    for (const std::size_t shards : {std::size_t{1}, std::size_t{3}}) {
        INFO(shards << " shard(s)");
        const fs::path dir = fresh_dir("kill" + std::to_string(shards));
        const fs::path table = dir / "t.safetensors";
        // How long a whole pack takes here, to spread the kills over it.
        const auto t0 = std::chrono::steady_clock::now();
        REQUIRE_FALSE(run_and_kill([&] { engram::pack_table(source, table, "f32", shards); }, std::chrono::hours(1)));
        const auto full = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
        REQUIRE(check_table_state(table, "f32", source_rows, rng));
        fs::remove_all(dir);
        fs::create_directories(dir);

        std::uniform_int_distribution<long long> delay(0, full.count() * 5 / 4);
        int killed = 0, absent = 0, complete = 0;
        std::size_t temporaries = 0;
        for (int i = 0; i < 30; ++i) {
            // Half of the runs replace an existing table (of another codec): the old one must
            // then be intact, or replaced by the new one, or (multi-shard only) gone.
            const bool replace = i % 2 == 1;
            if (replace) engram::pack_table(source, table, "bf16", shards);
            const bool existed = fs::exists(table);
            const std::uint64_t old_id = existed ? engram::table_file::open(table).manifest().table_id : 0;
            const bool was_killed = run_and_kill([&] { engram::pack_table(source, table, "f32", shards); },
                                                 std::chrono::microseconds(delay(rng)));
            killed += was_killed ? 1 : 0;
            if (check_table_state(table, "f32", source_rows, rng)) {
                ++complete;
                const auto tf = engram::table_file::open(table);
                if (replace && existed && tf.manifest().table_id == old_id) CHECK(tf.codec() == "bf16");
                if (!was_killed) CHECK(tf.codec() == "f32");
            } else {
                ++absent;
                if (existed) CHECK(shards > 1); // a single-file table is replaced by one rename
            }
            temporaries += check_leftovers_and_clean(table, shards);
        }
        std::cout << "durability (" << shards << " shard(s), full pack " << full.count() << " us): " << killed
                  << " of 30 packs killed; afterwards " << complete << " complete tables, " << absent << " absent; "
                  << temporaries << " temporaries cleaned\n";
        CHECK(killed > 0);
    }
}

TEST_CASE("a pack killed after a chosen number of rows (a test hook) leaves no new table", "[durability][pack]") {
    const auto source = engram::safetensors_file::open(big_checkpoint());
    const std::size_t block = 20000;
    for (const std::size_t shards : {std::size_t{1}, std::size_t{4}}) {
        const fs::path dir = fresh_dir("hook" + std::to_string(shards));
        const fs::path table = dir / "t.safetensors";
        for (const std::uint64_t kill_at : {std::uint64_t{1}, std::uint64_t{block * 3}, std::uint64_t{block * 30}}) {
            INFO(shards << " shard(s), killed after " << kill_at << " rows");
            const bool killed = run_and_kill(
                [&] {
                    engram::pack_table(
                        source, table, "int8", shards,
                        [&](std::uint64_t done, std::uint64_t) {
                            if (done >= kill_at) ::raise(SIGKILL);
                        },
                        block);
                },
                std::chrono::hours(1));
            CHECK(killed);
            CHECK_FALSE(fs::exists(table));
            // Only temporaries (and, never here, shards: they are renamed in finish()).
            const auto temporaries = engram::table_temporaries(table);
            CHECK(files_in(dir).size() == temporaries.size());
            CHECK(temporaries.size() >= 1);
            for (const auto& t : temporaries) fs::remove(t);
            CHECK(files_in(dir).empty());
        }
    }
}

TEST_CASE("a safetensors write SIGKILLed at random points leaves the old file or the new one",
          "[durability][safetensors]") {
    const fs::path dir = fresh_dir("st");
    const fs::path out = dir / "out.safetensors";
    std::vector<float> big(std::size_t{12} << 20, 0.5f); // 48 MB
    engram::safetensors_writer w;
    w.add("x", {static_cast<std::int64_t>(big.size())}, big);
    w.set_metadata("generation", "new");
    engram::safetensors_writer old;
    old.add("x", {4}, std::vector<float>{1, 2, 3, 4});
    old.set_metadata("generation", "old");

    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_FALSE(run_and_kill([&] { w.write(out); }, std::chrono::hours(1)));
    const auto full = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    const std::string new_bytes = slurp(out);
    const std::uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));
    std::uniform_int_distribution<long long> delay(0, full.count() * 5 / 4);
    int olds = 0, news = 0;
    for (int i = 0; i < 30; ++i) {
        old.write(out);
        const std::string old_bytes = slurp(out);
        (void)run_and_kill([&] { w.write(out); }, std::chrono::microseconds(delay(rng)));
        const std::string now = slurp(out);
        const bool is_old = now == old_bytes, is_new = now == new_bytes;
        CHECK((is_old || is_new));
        olds += is_old ? 1 : 0;
        news += is_new ? 1 : 0;
        for (const auto& t : engram::write_temporaries(out)) fs::remove(t);
        CHECK(files_in(dir) == std::set<std::string>{"out.safetensors"});
    }
    std::cout << "durability (safetensors, full write " << full.count() << " us): " << olds << " old, " << news
              << " new after 30 kills\n";
}

namespace {

/// Byte ranges of a safetensors file: the length field, the header JSON, the `engram_table*`
/// metadata value inside it (still JSON-escaped), and each tensor's data.
struct sections {
    std::vector<std::pair<std::string, std::pair<std::size_t, std::size_t>>> ranges;
};

sections sections_of(const fs::path& p) {
    const std::string bytes = slurp(p);
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    sections s;
    s.ranges.push_back({"length field", {0, 8}});
    const std::string header = bytes.substr(8, static_cast<std::size_t>(n));
    for (const char* key : {"\"engram_table\":\"", "\"engram_table_shard\":\""}) {
        const auto at = header.find(key);
        if (at == std::string::npos) continue;
        const std::size_t begin = at + std::strlen(key);
        std::size_t end = begin;
        while (!(header[end] == '"' && header[end - 1] != '\\')) ++end;
        s.ranges.push_back({"header before the manifest", {8, 8 + begin}});
        s.ranges.push_back({"manifest JSON", {8 + begin, 8 + end}});
        s.ranges.push_back({"header outside the manifest", {8 + end, 8 + static_cast<std::size_t>(n)}});
    }
    const auto j = nlohmann::json::parse(header);
    for (const auto& [name, entry] : j.items()) {
        if (name == "__metadata__") continue;
        const auto b = entry.at("data_offsets")[0].get<std::size_t>(),
                   e = entry.at("data_offsets")[1].get<std::size_t>();
        s.ranges.push_back(
            {"tensor " + name, {8 + static_cast<std::size_t>(n) + b, 8 + static_cast<std::size_t>(n) + e}});
    }
    return s;
}

/// Everything a table holds: the manifest and every stored byte of rows and lookup.
std::string content_of(const engram::table_file& tf) {
    std::string out = tf.manifest().to_json().dump();
    if (tf.vocab())
        for (auto v : tf.vocab()->lookup()) out += std::to_string(v) + ",";
    for (std::size_t k = 0; k < tf.num_shards(); ++k) {
        const auto f = engram::safetensors_file::open(tf.shard_path(k));
        const auto bytes = f.at("rows").bytes;
        out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    return out;
}

} // namespace

TEST_CASE("a flipped byte in any section of a packed table is caught, or changes nothing", "[durability][flip]") {
    const auto src = engram::safetensors_file::open(fs::path(ENGRAM_TEST_DATA_DIR) / "forward_small.safetensors");
    const std::uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));
    for (const std::size_t shards : {std::size_t{1}, std::size_t{3}}) {
        const fs::path dir = fresh_dir("flip" + std::to_string(shards));
        const fs::path table = dir / "t.safetensors";
        engram::pack_table(src, table, shards == 1 ? "f32" : "int8", shards);
        const std::string original = content_of(engram::table_file::open(table));
        std::vector<fs::path> files{table};
        for (std::size_t k = 0; shards > 1 && k < shards; ++k)
            files.push_back(dir / ("t.shard" + std::to_string(k) + ".safetensors"));
        for (const auto& file : files) {
            const std::string pristine = slurp(file);
            for (const auto& [label, range] : sections_of(file).ranges) {
                if (range.second <= range.first) continue;
                int caught = 0, harmless = 0;
                std::uniform_int_distribution<std::size_t> where(range.first, range.second - 1);
                std::uniform_int_distribution<int> mask(1, 255);
                for (int i = 0; i < 40; ++i) {
                    std::string bytes = pristine;
                    const std::size_t at = where(rng);
                    bytes[at] = static_cast<char>(bytes[at] ^ mask(rng));
                    std::ofstream(file, std::ios::binary | std::ios::trunc)
                        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
                    try {
                        const auto tf = engram::table_file::open(table);
                        (void)tf.verify();
                        // Not caught: then nothing may have changed (e.g. a padding space turned
                        // into a tab, or a hex digit of a table id changed case).
                        INFO(file.filename().string() << ", " << label << ", byte " << at);
                        CHECK(content_of(tf) == original);
                        ++harmless;
                    } catch (const engram::error&) {
                        ++caught;
                    }
                }
                std::ofstream(file, std::ios::binary | std::ios::trunc)
                    .write(pristine.data(), static_cast<std::streamsize>(pristine.size()));
                std::cout << "flips in " << file.filename().string() << ", " << label << ": " << caught << " caught, "
                          << harmless << " harmless\n";
                // Data bytes have no harmless flips.
                if (label.rfind("tensor ", 0) == 0) CHECK(caught == 40);
            }
        }
        CHECK_NOTHROW(engram::table_file::open(table).verify());
    }
}
