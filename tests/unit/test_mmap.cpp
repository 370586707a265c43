// Memory-mapped row tables: raw row blocks and safetensors tensors, every codec, errors, the
// layer reading its rows from a file, concurrent gathers, and a sparse file larger than RAM.
#include "support/catch.hpp"

#include <engram/io/safetensors.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/quantized.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

fs::path work_dir() {
    struct dir {
        fs::path path = fs::temp_directory_path() / ("engram_mmap_test_" + std::to_string(::getpid()));
        dir() { fs::create_directories(path); }
        ~dir() {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
    };
    static const dir d;
    return d.path;
}

/// Removes a file when the scope ends, however it ends.
struct file_guard {
    fs::path path;
    ~file_guard() {
        std::error_code ec;
        fs::remove(path, ec);
    }
};

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

void write_file(const fs::path& p, const std::vector<std::byte>& bytes) {
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Resident set size of this process in KiB, from /proc/self/status.
long vm_rss_kib() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

std::vector<float> test_rows(std::size_t rows, std::size_t dim) {
    std::vector<float> v(rows * dim);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& x : v) x = normal(rng);
    return v;
}

/// The rows encoded by Codec, row after row.
template <class Codec>
std::vector<std::byte> encode_rows(const std::vector<float>& values, std::size_t dim) {
    const std::size_t rows = values.size() / dim, rb = Codec::row_bytes(dim);
    std::vector<std::byte> out(rows * rb);
    for (std::size_t r = 0; r < rows; ++r) Codec::encode(values.data() + r * dim, out.data() + r * rb, dim);
    return out;
}

template <class Table>
std::vector<float> gather_all(const Table& t, const std::vector<engram::row_id>& ids) {
    std::vector<float> out(ids.size() * t.dim());
    t.gather(ids, out);
    return out;
}

} // namespace

TEMPLATE_TEST_CASE("mmap table over a raw row block at any offset decodes like the codec", "[mmap]", float,
                   engram::bfloat16, engram::f16_codec, engram::fp8_e4m3_codec, engram::int8_codec) {
    STATIC_REQUIRE(engram::storage_policy<engram::mmap_storage, TestType>);
    using table = engram::mmap_storage::table<TestType>;
    using codec = typename table::codec_type;
    const std::size_t rows = 1000, dim = 64;
    const auto values = test_rows(rows, dim);
    const auto encoded = encode_rows<codec>(values, dim);
    for (std::size_t offset : {std::size_t{0}, std::size_t{37}, std::size_t{4096}, std::size_t{5000}}) {
        INFO("offset " << offset);
        std::vector<std::byte> file(offset, std::byte{0x5A});
        file.insert(file.end(), encoded.begin(), encoded.end());
        file.insert(file.end(), 11, std::byte{0x33}); // trailing bytes are allowed
        const fs::path p = work_dir() / ("raw_" + std::string(codec::name) + ".bin");
        file_guard guard{p};
        write_file(p, file);
        const table t(p, offset, rows, dim);
        CHECK(t.rows() == rows);
        CHECK(t.dim() == dim);
        CHECK(t.row_bytes() == codec::row_bytes(dim));
        CHECK(t.size_bytes() == encoded.size());
        CHECK(t.file_offset() == offset);
        CHECK(t.path() == p);
        const std::vector<engram::row_id> ids = {0, 999, 17, 17, 500, 1, 998};
        const auto got = gather_all(t, ids);
        std::vector<float> expect(dim), one(dim);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const auto r = static_cast<std::size_t>(ids[i]);
            codec::decode(encoded.data() + r * t.row_bytes(), expect.data(), dim);
            CHECK(std::memcmp(got.data() + i * dim, expect.data(), dim * sizeof(float)) == 0);
            CHECK(std::memcmp(t.encoded_row(r).data(), encoded.data() + r * t.row_bytes(), t.row_bytes()) == 0);
            t.get_row(r, one);
            CHECK(one == expect);
        }
        t.advise_willneed();
        t.advise_willneed(10, 5);
        t.advise_dontneed(0, 100);
        CHECK(gather_all(t, ids) == got); // dropping pages loses nothing
        // Bad ids are rejected before anything is written.
        std::vector<float> out(2 * dim, -7.0f);
        CHECK_THROWS_AS(t.gather(std::vector<engram::row_id>{3, 1000}, out), engram::input_error);
        CHECK_THROWS_AS(t.gather(std::vector<engram::row_id>{-1, 0}, out), engram::input_error);
        CHECK(out[0] == -7.0f);
        CHECK_THROWS_AS(t.get_row(1000, one), engram::input_error);
    }
}

TEST_CASE("mmap table: moves, and errors that name the file and the sizes", "[mmap][errors]") {
    using table = engram::mmap_storage::table<float>;
    const fs::path p = work_dir() / "small.bin";
    file_guard guard{p};
    write_file(p, std::vector<std::byte>(4096 + 100 * 16 * 4, std::byte{0}));

    table a(p, 4096, 100, 16);
    table b(std::move(a));
    CHECK(b.rows() == 100);
    CHECK(a.rows() == 0);
    std::vector<float> out(16);
    CHECK_THROWS_AS(a.gather(std::vector<engram::row_id>{0}, out), engram::input_error); // moved from: no rows
    table c;
    c = std::move(b);
    CHECK(c.rows() == 100);
    c.gather(std::vector<engram::row_id>{99}, out);

    const auto small = error_of<engram::format_error>([&] { (void)table(p, 4096, 101, 16); });
    CHECK(contains(small, "small.bin"));
    CHECK(contains(small, std::to_string(4096 + 100 * 64))); // the file's size
    CHECK(contains(small, "101 rows"));
    CHECK_THROWS_AS(table(p, 4097, 100, 16), engram::format_error);
    CHECK_THROWS_AS(table(p, ~std::uint64_t{0} - 10, 1, 16), engram::format_error); // offset + size overflows
    CHECK_THROWS_AS(table(p, 0, 0, 16), engram::config_error);
    CHECK_THROWS_AS(table(p, 0, 10, 0), engram::config_error);
    CHECK_THROWS_AS(engram::mmap_storage::table<engram::fp8_e4m3_codec>(p, 0, 10, 16), engram::config_error);
    CHECK(contains(error_of<engram::io_error>([&] { (void)table(work_dir() / "absent.bin", 0, 1, 1); }), "absent.bin"));
    CHECK(contains(error_of<engram::io_error>([&] { (void)table(work_dir(), 0, 1, 1); }), "directory"));
}

TEST_CASE("mmap table from a safetensors tensor: dtype and shape must hold the codec's rows", "[mmap][safetensors]") {
    const std::size_t rows = 300, dim = 32;
    const auto values = test_rows(rows, dim);
    const auto bf16 = encode_rows<engram::bf16_codec>(values, dim);
    const auto f16 = encode_rows<engram::f16_codec>(values, dim);
    const auto i8 = encode_rows<engram::int8_codec>(values, dim);
    engram::safetensors_writer w;
    w.add("f32", {300, 32}, values);
    w.add("bf16", engram::dtype::bf16, {300, 32}, bf16);
    w.add("f16", engram::dtype::f16, {300, 32}, f16);
    w.add("int8", engram::dtype::u8, {300, 36}, i8);
    w.add("flat", {300 * 32}, values);
    const fs::path p = work_dir() / "tensors.safetensors";
    file_guard guard{p};
    w.write(p);

    const std::vector<engram::row_id> ids = {5, 299, 0, 123};
    const auto f = engram::mmap_storage::table<float>::from_safetensors(p, "f32");
    CHECK(f.rows() == rows);
    CHECK(f.dim() == dim);
    CHECK(f.row(5)[3] == values[5 * dim + 3]);
    const auto expect = gather_all(f, ids);
    for (std::size_t i = 0; i < ids.size(); ++i)
        CHECK(std::memcmp(expect.data() + i * dim, values.data() + static_cast<std::size_t>(ids[i]) * dim, dim * 4) ==
              0);
    // The same tensor through a safetensors_file, and a moved-to table.
    const auto file = engram::safetensors_file::open(p);
    auto f2 = engram::mmap_storage::table<float>::from_safetensors(file, "f32", dim);
    CHECK(gather_all(f2, ids) == expect);
    CHECK(f2.file_offset() + f2.size_bytes() <= fs::file_size(p));

    const auto b = engram::mmap_storage::table<engram::bfloat16>::from_safetensors(p, "bf16");
    const auto h = engram::mmap_storage::table<engram::f16_codec>::from_safetensors(p, "f16");
    const auto q = engram::mmap_storage::table<engram::int8_codec>::from_safetensors(p, "int8", dim);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const auto r = static_cast<std::size_t>(ids[i]);
        CHECK(std::memcmp(b.encoded_row(r).data(), bf16.data() + r * 64, 64) == 0);
        CHECK(std::memcmp(h.encoded_row(r).data(), f16.data() + r * 64, 64) == 0);
        CHECK(std::memcmp(q.encoded_row(r).data(), i8.data() + r * 36, 36) == 0);
    }

    using ftable = engram::mmap_storage::table<float>;
    CHECK(contains(error_of<engram::format_error>([&] { ftable::from_safetensors(p, "bf16"); }), "dtype BF16"));
    CHECK(contains(error_of<engram::format_error>([&] { ftable::from_safetensors(p, "flat"); }), "shape"));
    CHECK(contains(error_of<engram::format_error>([&] { ftable::from_safetensors(p, "f32", 16); }), "32 values"));
    CHECK(contains(error_of<engram::format_error>([&] { ftable::from_safetensors(p, "nope"); }), "nope"));
    using qtable = engram::mmap_storage::table<engram::int8_codec>;
    CHECK(contains(error_of<engram::config_error>([&] { qtable::from_safetensors(p, "int8"); }), "dim"));
    CHECK(contains(error_of<engram::format_error>([&] { qtable::from_safetensors(p, "int8", 16); }), "36 bytes"));
    CHECK(contains(error_of<engram::format_error>([&] { qtable::from_safetensors(p, "f32", 32); }), "U8"));
    CHECK_THROWS_AS(ftable::from_safetensors(std::string(ENGRAM_SOURCE_DIR) + "/CMakeLists.txt", "x"),
                    engram::format_error);
    CHECK_THROWS_AS(ftable::from_safetensors(engram::safetensors_file::from_bytes(w.to_bytes()), "f32"),
                    engram::io_error);
}

TEST_CASE("the layer reads its rows straight from the checkpoint's mapping", "[mmap][layer]") {
    const auto file = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto layer = engram::load_layer(file);
    const auto table =
        engram::mmap_storage::table<float>::from_safetensors(file, "multi_head_embedding.embedding.weight");
    CHECK(table.rows() == 8916);
    const auto ids = file.at("input_ids").to_vector<std::int64_t>();
    const auto hidden = file.at("hidden_states").to_vector<float>();
    std::vector<float> dense(hidden.size()), mapped(hidden.size());
    layer.forward(ids, 2, 24, hidden, dense);
    layer.forward(table, ids, 2, 24, hidden, mapped);
    CHECK(mapped == dense);

    // Several threads gather from one table at once.
    std::vector<engram::row_id> all(table.rows());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<engram::row_id>((i * 7919) % all.size());
    const auto expected = gather_all(table, all);
    std::vector<int> ok(4, 0);
    std::vector<std::thread> threads;
    for (int k = 0; k < 4; ++k)
        threads.emplace_back([&, k] {
            bool same = true;
            for (int rep = 0; rep < 5; ++rep) same = same && gather_all(table, all) == expected;
            ok[static_cast<std::size_t>(k)] = same ? 1 : 0;
        });
    for (auto& t : threads) t.join();
    CHECK(ok == std::vector<int>(4, 1));
}

TEST_CASE("a 40 GiB sparse table opens and serves random rows; RSS grows only with the rows touched", "[mmap][large]") {
    constexpr std::uint64_t dim = 64, row_bytes = dim * 4;
    constexpr std::uint64_t apparent = std::uint64_t{40} << 30;
    constexpr std::uint64_t rows = apparent / row_bytes; // 167,772,160 rows
    const fs::path p = work_dir() / "sparse_40g.safetensors";
    file_guard guard{p}; // deleted however the test ends

    // A safetensors header for one F32 tensor spanning the file, then a hole of 40 GiB.
    std::string header = "{\"rows\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(rows) + "," + std::to_string(dim) +
                         "],\"data_offsets\":[0," + std::to_string(rows * row_bytes) + "]}}";
    header.append((4096 - (8 + header.size()) % 4096) % 4096, ' ');
    const std::uint64_t data_start = 8 + header.size();
    const int fd = ::open(p.c_str(), O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((header.size() >> (8 * i)) & 0xFF);
    bool ok = ::pwrite(fd, len, 8, 0) == 8 &&
              ::pwrite(fd, header.data(), header.size(), 8) == static_cast<::ssize_t>(header.size());
    if (ok && ::ftruncate(fd, static_cast<::off_t>(data_start + rows * row_bytes)) != 0) {
        ::close(fd);
        WARN("skipped: the file system refused a sparse file of " << apparent << " bytes: " << std::strerror(errno));
        return;
    }
    // Known values in a few rows (everything else is a hole and reads as zeros).
    const std::vector<std::uint64_t> known = {0, 1, 12345, rows / 2, rows / 2 + 1, rows - 2, rows - 1};
    std::vector<float> row(dim);
    for (std::uint64_t r : known) {
        for (std::uint64_t c = 0; c < dim; ++c) row[c] = static_cast<float>(r % 100000) + 0.25f * static_cast<float>(c);
        ok = ok && ::pwrite(fd, row.data(), row_bytes, static_cast<::off_t>(data_start + r * row_bytes)) ==
                       static_cast<::ssize_t>(row_bytes);
    }
    ::close(fd);
    REQUIRE(ok);
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    REQUIRE(static_cast<std::uint64_t>(st.st_size) >= apparent);
    const double allocated_mib = static_cast<double>(st.st_blocks) * 512.0 / (1 << 20);
    if (allocated_mib > 64) {
        WARN("skipped: the file system does not keep the file sparse (" << allocated_mib << " MiB allocated)");
        return;
    }

    const long rss_before = vm_rss_kib();
    const auto t0 = std::chrono::steady_clock::now();
    const auto table = engram::mmap_storage::table<float>::from_safetensors(p, "rows");
    const auto t1 = std::chrono::steady_clock::now();
    REQUIRE(table.rows() == rows);
    REQUIRE(table.file_offset() == data_start);
    // The raw constructor maps the same rows.
    const engram::mmap_storage::table<float> raw(p, data_start, rows, dim);

    // A few thousand random rows plus the known ones.
    std::mt19937_64 rng(11);
    std::uniform_int_distribution<std::uint64_t> any_row(0, rows - 1);
    std::vector<engram::row_id> ids;
    for (int i = 0; i < 5000; ++i) ids.push_back(static_cast<engram::row_id>(any_row(rng)));
    for (std::uint64_t r : known) ids.push_back(static_cast<engram::row_id>(r));
    std::vector<float> out(ids.size() * dim);
    const auto t2 = std::chrono::steady_clock::now();
    table.gather(ids, out);
    const auto t3 = std::chrono::steady_clock::now();
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const auto r = static_cast<std::uint64_t>(ids[i]);
        const bool is_known = std::find(known.begin(), known.end(), r) != known.end();
        for (std::uint64_t c = 0; c < dim; ++c) {
            const float want = is_known ? static_cast<float>(r % 100000) + 0.25f * static_cast<float>(c) : 0.0f;
            if (out[i * dim + c] != want) ++wrong;
        }
    }
    CHECK(wrong == 0);
    std::vector<float> out_raw(ids.size() * dim);
    raw.gather(ids, out_raw);
    CHECK(out_raw == out);
    const long rss_after = vm_rss_kib();
    const double grown_mib = static_cast<double>(rss_after - rss_before) / 1024.0;
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    std::printf("sparse table: %.1f GiB apparent (%.2f MiB allocated), %llu rows; open %.2f ms, gather of %zu random "
                "rows %.2f ms; VmRSS %ld -> %ld KiB (+%.1f MiB)\n",
                static_cast<double>(st.st_size) / (1 << 30), allocated_mib, static_cast<unsigned long long>(rows),
                ms(t0, t1), ids.size(), ms(t2, t3), rss_before, rss_after, grown_mib);
    CHECK(rss_before > 0);
    CHECK(grown_mib < 200.0);
}
