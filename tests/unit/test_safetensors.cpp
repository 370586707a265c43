// SPDX-License-Identifier: MIT
// safetensors reader and writer: golden files, round trips, conversions and malformed input.
#include <engram/io/safetensors.hpp>

#include "support/catch.hpp"

#include <sys/resource.h> // for setrlimit, RLIMIT_FSIZE
#include <sys/stat.h>     // for chmod
#include <unistd.h>       // for geteuid

#include <cmath>      // for isnan, isinf, signbit, ldexp
#include <csignal>    // for signal, SIGXFSZ
#include <cstddef>    // for byte, size_t
#include <cstdint>    // for int64_t, uint16_t, ...
#include <cstdlib>    // for mkdtemp
#include <cstring>    // for memcpy
#include <filesystem> // for path, temp_directory_path, directory_iterator
#include <fstream>    // for ofstream
#include <limits>     // for numeric_limits
#include <string>     // for string
#include <utility>    // for move
#include <vector>     // for vector

namespace fs = std::filesystem;

namespace {

const fs::path data_dir = ENGRAM_TEST_DATA_DIR;

/// Runs `f`, expecting an exception of type E; returns its message (another type propagates).
template <class E, class F>
std::string message_of(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("no exception was thrown");
    return {};
}

bool contains_text(const std::string& text, const std::string& fragment) {
    return text.find(fragment) != std::string::npos;
}

/// A raw image: 8-byte length (the header's size unless `claimed` is given), header, `data_bytes` bytes.
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes = 0,
                             std::uint64_t claimed = ~std::uint64_t{0}) {
    const std::uint64_t n = claimed == ~std::uint64_t{0} ? header.size() : claimed;
    std::vector<std::byte> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
    for (char c : header) out.push_back(static_cast<std::byte>(c));
    for (std::size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<std::byte>(i & 0xff));
    return out;
}

/// A fresh directory under the system temp dir, removed with its content at scope exit.
struct temp_dir {
    fs::path path;
    temp_dir() {
        std::string tmpl = (fs::temp_directory_path() / "engram_st_XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& e : fs::directory_iterator(path)) names.push_back(e.path().filename().string());
        return names;
    }
};

void write_file(const fs::path& p, const std::vector<std::byte>& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

std::vector<std::byte> byte_pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 37 + seed * 11 + 5) & 0xff);
    return v;
}

} // namespace

TEST_CASE("dtype names, sizes and parsing", "[safetensors]") {
    using engram::dtype;
    const std::pair<dtype, const char*> names[] = {
        {dtype::f64, "F64"},        {dtype::f32, "F32"},         {dtype::f16, "F16"},
        {dtype::bf16, "BF16"},      {dtype::i64, "I64"},         {dtype::i32, "I32"},
        {dtype::i16, "I16"},        {dtype::i8, "I8"},           {dtype::u8, "U8"},
        {dtype::u16, "U16"},        {dtype::u32, "U32"},         {dtype::u64, "U64"},
        {dtype::boolean, "BOOL"},   {dtype::f8_e4m3, "F8_E4M3"}, {dtype::f8_e5m2, "F8_E5M2"},
        {dtype::f8_e8m0, "F8_E8M0"}};
    for (const auto& [d, n] : names) {
        CHECK(engram::dtype_name(d) == n);
        CHECK(engram::parse_dtype(n) == d);
    }
    CHECK(engram::dtype_size(dtype::f64) == 8);
    CHECK(engram::dtype_size(dtype::u64) == 8);
    CHECK(engram::dtype_size(dtype::i32) == 4);
    CHECK(engram::dtype_size(dtype::bf16) == 2);
    CHECK(engram::dtype_size(dtype::u16) == 2);
    CHECK(engram::dtype_size(dtype::boolean) == 1);
    CHECK(engram::dtype_size(dtype::f8_e5m2) == 1);
    CHECK(engram::dtype_size(dtype::f8_e8m0) == 1);

    const std::string msg = message_of<engram::format_error>([] { (void)engram::parse_dtype("F128"); });
    CHECK(contains_text(msg, "unknown dtype 'F128'"));
    REQUIRE_THROWS_AS(engram::parse_dtype("f32"), engram::format_error); // case-sensitive
    REQUIRE_THROWS_AS(engram::parse_dtype(""), engram::format_error);
}

TEST_CASE("golden file hash_reference_default", "[safetensors]") {
    const auto file = engram::safetensors_file::open(data_dir / "hash_reference_default.safetensors");
    CHECK(file.path() == data_dir / "hash_reference_default.safetensors");
    CHECK(file.file_size() == fs::file_size(data_dir / "hash_reference_default.safetensors"));
    CHECK(file.tensors().size() == 8);

    const auto& ids = file.at("input_ids");
    CHECK(ids.name == "input_ids");
    CHECK(ids.type == engram::dtype::i64);
    CHECK(ids.shape == std::vector<std::int64_t>{2, 64});
    CHECK(ids.numel() == 128);
    const auto ids_span = ids.as<std::int64_t>();
    REQUIRE(ids_span.size() == 128);
    const std::int64_t first[] = {7, 7, 7, 7, 7, 40711, 22563};
    for (std::size_t i = 0; i < 7; ++i) CHECK(ids_span[i] == first[i]);
    CHECK(ids.to_vector<std::int64_t>() == std::vector<std::int64_t>(ids_span.begin(), ids_span.end()));

    const auto& lookup = file.at("lookup");
    CHECK(lookup.type == engram::dtype::i64);
    CHECK(lookup.shape == std::vector<std::int64_t>{50000});
    CHECK(lookup.as<std::int64_t>()[4] == 4);

    const auto mult = file.at("multipliers.layer1").to_vector<std::int64_t>();
    CHECK(mult == std::vector<std::int64_t>{277443465890193, 17522579533745, 130190568120897});
    CHECK(file.at("primes.layer1").shape == std::vector<std::int64_t>{2, 8});
    CHECK(file.at("primes.layer1").as<std::int64_t>()[0] == 646403);
    CHECK(file.at("hash_ids.layer15").shape == std::vector<std::int64_t>{2, 64, 16});

    CHECK(file.contains("multipliers.layer15"));
    CHECK_FALSE(file.contains("multipliers.layer2"));
    CHECK(file.find("nope") == nullptr);
    REQUIRE(file.find("lookup") == &lookup);

    // Tensors come in data-offset order.
    const auto all = file.tensors();
    for (std::size_t i = 1; i < all.size(); ++i) CHECK(all[i - 1].bytes.data() < all[i].bytes.data());
    CHECK(all.front().name == "hash_ids.layer1");

    REQUIRE(file.metadata().size() == 1);
    const std::string* config = file.find_metadata("config");
    REQUIRE(config != nullptr);
    CHECK(contains_text(*config, "table_size_per_ngram"));
    CHECK(file.find_metadata("absent") == nullptr);

    const std::string msg = message_of<engram::format_error>([&] { (void)file.at("nope"); });
    CHECK(contains_text(msg, "missing tensor 'nope'"));
    CHECK(contains_text(msg, "hash_reference_default.safetensors"));

    // Wrong-type access names the tensor, its dtype and the one wanted.
    const std::string as_msg = message_of<engram::format_error>([&] { (void)ids.as<float>(); });
    CHECK(contains_text(as_msg, "input_ids"));
    CHECK(contains_text(as_msg, "I64"));
    CHECK(contains_text(as_msg, "F32"));
    REQUIRE_THROWS_AS(ids.to_vector<float>(), engram::format_error);
    REQUIRE_THROWS_AS(ids.as<std::int32_t>(), engram::format_error);
}

TEST_CASE("golden file forward_small", "[safetensors]") {
    const auto file = engram::safetensors_file::open(data_dir / "forward_small.safetensors");
    CHECK(file.tensors().size() == 30);
    const auto& norm = file.at("norm1.0.weight");
    CHECK(norm.type == engram::dtype::f32);
    CHECK(norm.shape == std::vector<std::int64_t>{64});
    const auto w = norm.as<float>();
    CHECK(w[0] == Approx(0.966484785079956f));
    CHECK(w[3] == Approx(1.1288589239120483f));
    CHECK(norm.to_vector<double>()[1] == Approx(0.9687594771385193));

    const auto& out = file.at("output");
    CHECK(out.shape == std::vector<std::int64_t>{2, 24, 4, 64});
    CHECK(out.as<float>()[1] == Approx(0.5817092657089233f));
    CHECK(file.at("short_conv.conv.weight").shape == std::vector<std::int64_t>{256, 1, 4});
    CHECK(file.at("multi_head_embedding.offsets").to_vector<std::int64_t>() ==
          std::vector<std::int64_t>{0, 1009, 2022, 3041, 4062, 5263, 6476, 7693});
    const std::string* config = file.find_metadata("config");
    REQUIRE(config != nullptr);
    CHECK(contains_text(*config, "\"kernel_size\": 4"));
}

TEST_CASE("f16 and bf16 conversion", "[safetensors]") {
    SECTION("f16 bit patterns") {
        CHECK(engram::f16_to_float(0x3c00) == 1.0f);
        CHECK(engram::f16_to_float(0xc000) == -2.0f);
        CHECK(engram::f16_to_float(0x3e00) == 1.5f);
        CHECK(engram::f16_to_float(0x3555) == 0.333251953125f);
        CHECK(engram::f16_to_float(0x7bff) == 65504.0f);              // largest finite
        CHECK(engram::f16_to_float(0x0400) == std::ldexp(1.0f, -14)); // smallest normal
        CHECK(engram::f16_to_float(0x0001) == std::ldexp(1.0f, -24)); // smallest subnormal
        CHECK(engram::f16_to_float(0x0200) == std::ldexp(1.0f, -15));
        CHECK(engram::f16_to_float(0x03ff) == std::ldexp(1023.0f, -24)); // largest subnormal
        CHECK(engram::f16_to_float(0x8001) == -std::ldexp(1.0f, -24));
        CHECK(engram::f16_to_float(0x0000) == 0.0f);
        CHECK_FALSE(std::signbit(engram::f16_to_float(0x0000)));
        CHECK(std::signbit(engram::f16_to_float(0x8000)));
        CHECK(engram::f16_to_float(0x7c00) == std::numeric_limits<float>::infinity());
        CHECK(engram::f16_to_float(0xfc00) == -std::numeric_limits<float>::infinity());
        CHECK(std::isnan(engram::f16_to_float(0x7e00)));
        CHECK(std::isnan(engram::f16_to_float(0x7c01))); // signalling NaN stays NaN, not inf
        CHECK(std::isnan(engram::f16_to_float(0xfe00)));
    }
    SECTION("bf16 bit patterns") {
        CHECK(engram::bf16_to_float(0x3f80) == 1.0f);
        CHECK(engram::bf16_to_float(0xc000) == -2.0f);
        CHECK(engram::bf16_to_float(0x4049) == 3.140625f);
        CHECK(engram::bf16_to_float(0x3eab) == 0.333984375f);
        CHECK(engram::bf16_to_float(0x0001) == std::ldexp(1.0f, -133)); // subnormal
        CHECK(engram::bf16_to_float(0x7f80) == std::numeric_limits<float>::infinity());
        CHECK(engram::bf16_to_float(0xff80) == -std::numeric_limits<float>::infinity());
        CHECK(std::isnan(engram::bf16_to_float(0x7fc0)));
        CHECK(std::signbit(engram::bf16_to_float(0x8000)));
    }
    SECTION("through a file") {
        const std::vector<std::uint16_t> half = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x7c00, 0x8000};
        const std::vector<std::uint16_t> brain = {0x3f80, 0x4049, 0x0001, 0xff80};
        engram::safetensors_writer w;
        w.add_f16("h", {2, 3}, half);
        w.add_bf16("b", {4}, brain);
        const auto f = engram::safetensors_file::from_bytes(w.to_bytes());
        CHECK(f.at("h").type == engram::dtype::f16);
        CHECK(f.at("b").type == engram::dtype::bf16);
        const auto h = f.at("h").to_vector<float>();
        REQUIRE(h.size() == 6);
        CHECK(h[0] == 1.0f);
        CHECK(h[1] == -2.0f);
        CHECK(h[2] == std::ldexp(1.0f, -24));
        CHECK(h[3] == 65504.0f);
        CHECK(std::isinf(h[4]));
        CHECK(std::signbit(h[5]));
        const auto hd = f.at("h").to_vector<double>();
        CHECK(hd[2] == std::ldexp(1.0, -24));
        const auto b = f.at("b").to_vector<float>();
        CHECK(b ==
              std::vector<float>{1.0f, 3.140625f, std::ldexp(1.0f, -133), -std::numeric_limits<float>::infinity()});
        // Zero-copy access has no F16 type: as<float>() must refuse, naming both dtypes.
        const std::string msg = message_of<engram::format_error>([&] { (void)f.at("h").as<float>(); });
        CHECK(contains_text(msg, "'h'"));
        CHECK(contains_text(msg, "F16"));
        CHECK(contains_text(msg, "F32"));
        REQUIRE_THROWS_AS(f.at("b").to_vector<std::int64_t>(), engram::format_error);
    }
}

TEST_CASE("writer -> reader round trip for every dtype", "[safetensors]") {
    using engram::dtype;
    const dtype all[] = {dtype::f64,     dtype::f32,     dtype::f16,     dtype::bf16,   dtype::i64, dtype::i32,
                         dtype::i16,     dtype::i8,      dtype::u8,      dtype::u16,    dtype::u32, dtype::u64,
                         dtype::boolean, dtype::f8_e4m3, dtype::f8_e5m2, dtype::f8_e8m0};
    engram::safetensors_writer w;
    std::vector<std::vector<std::byte>> payloads;
    unsigned seed = 0;
    for (dtype d : all) {
        // Odd element counts, so smaller dtypes leave the running offset unaligned for larger ones.
        auto bytes = byte_pattern(3 * engram::dtype_size(d), seed++);
        if (d == dtype::boolean) bytes = {std::byte{1}, std::byte{0}, std::byte{1}};
        w.add("t." + std::string(engram::dtype_name(d)), d, {3}, bytes);
        payloads.push_back(std::move(bytes));
    }
    w.add("scalar", dtype::f32, {}, byte_pattern(4, 99));
    w.add("empty", dtype::i64, {0, 5}, {});
    w.set_metadata("format", "pt");
    w.set_metadata("note", "ünïcode");
    CHECK(w.size() == 18);

    const auto bytes = w.to_bytes();
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    CHECK((8 + header_len) % 8 == 0); // data buffer starts 8-aligned
    CHECK(bytes[8] == std::byte{'{'});

    auto check = [&](const engram::safetensors_file& f) {
        REQUIRE(f.tensors().size() == 18);
        for (std::size_t i = 0; i < std::size(all); ++i) {
            const auto& t = f.at("t." + std::string(engram::dtype_name(all[i])));
            CHECK(t.type == all[i]);
            CHECK(t.shape == std::vector<std::int64_t>{3});
            CHECK(std::vector<std::byte>(t.bytes.begin(), t.bytes.end()) == payloads[i]);
            // Each tensor starts aligned to its element size (in file and in memory).
            CHECK(reinterpret_cast<std::uintptr_t>(t.bytes.data()) % engram::dtype_size(all[i]) == 0);
        }
        CHECK(f.at("scalar").shape.empty());
        CHECK(f.at("scalar").numel() == 1);
        CHECK(f.at("scalar").bytes.size() == 4);
        CHECK(f.at("empty").numel() == 0);
        CHECK(f.at("empty").as<std::int64_t>().empty());
        CHECK(f.at("empty").to_vector<std::int64_t>().empty());
        CHECK(f.at("t.BOOL").to_vector<bool>() == std::vector<bool>{true, false, true});
        CHECK(f.at("t.BOOL").as<bool>()[2]);
        REQUIRE(f.find_metadata("note") != nullptr);
        CHECK(*f.find_metadata("note") == "ünïcode");
        CHECK(f.metadata().at("format") == "pt");
        // The data buffer is contiguous: offsets cover it without gaps.
        std::size_t covered = 0;
        for (const auto& t : f.tensors()) covered += t.bytes.size();
        CHECK(covered == f.file_size() - 8 - header_len);
    };
    SECTION("in memory") { check(engram::safetensors_file::from_bytes(bytes)); }
    SECTION("on disk") {
        temp_dir dir;
        const fs::path out = dir.path / "all.safetensors";
        w.write(out);
        CHECK(dir.entries() == std::vector<std::string>{"all.safetensors"}); // no temp left behind
        const auto f = engram::safetensors_file::open(out);
        check(f);
        CHECK(f.file_size() == bytes.size());
        // The file on disk is the same image as to_bytes().
        std::ifstream in(out, std::ios::binary);
        std::vector<char> disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        REQUIRE(disk.size() == bytes.size());
        CHECK(std::memcmp(disk.data(), bytes.data(), bytes.size()) == 0);
    }
}

TEST_CASE("typed writer overloads and conversions", "[safetensors]") {
    const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f};
    const std::vector<double> f64 = {1e300, -0.5};
    const std::vector<std::int64_t> i64 = {-1, std::numeric_limits<std::int64_t>::max()};
    const std::vector<std::int32_t> i32 = {-7, 100000};
    const std::vector<std::int16_t> i16 = {-300, 300};
    const std::vector<std::int8_t> i8 = {-128, 127};
    const std::vector<std::uint8_t> u8 = {0, 255};
    const std::vector<std::uint16_t> u16 = {65535, 1};
    const std::vector<std::uint32_t> u32 = {4294967295u, 2};
    const std::vector<std::uint64_t> u64 = {9223372036854775807ull, 3};
    const std::vector<std::uint64_t> u64_big = {1, 9223372036854775808ull};
    const bool flags[] = {true, false};

    engram::safetensors_writer w;
    w.add("f32", {2, 2}, f32);
    w.add("f64", {2}, std::span<const double>(f64));
    w.add("i64", {2}, i64);
    w.add("i32", {2}, i32);
    w.add("i16", {2}, i16);
    w.add("i8", {2}, i8);
    w.add("u8", {2}, u8);
    w.add("u16", {2}, u16);
    w.add("u32", {2}, u32);
    w.add("u64", {2}, u64);
    w.add("u64_big", {2}, u64_big);
    w.add("bool", {2}, std::span<const bool>(flags));
    const auto f = engram::safetensors_file::from_bytes(w.to_bytes());

    CHECK(f.at("f32").type == engram::dtype::f32);
    CHECK(f.at("u16").type == engram::dtype::u16); // uint16_t is U16, never BF16/F16
    CHECK(f.at("i8").type == engram::dtype::i8);
    CHECK(f.at("bool").type == engram::dtype::boolean);

    const auto s = f.at("f32").as<float>();
    CHECK(std::vector<float>(s.begin(), s.end()) == f32);
    CHECK(f.at("f32").to_vector<float>() == f32);
    CHECK(f.at("f32").to_vector<double>() == std::vector<double>{1.5, -2.25, 3.0, 0.0});
    CHECK(f.at("f64").to_vector<double>() == f64);
    CHECK(f.at("f64").to_vector<float>()[1] == -0.5f);
    CHECK(f.at("u16").as<std::uint16_t>()[0] == 65535);
    CHECK(f.at("u32").to_vector<std::uint32_t>() == u32);
    CHECK(f.at("i8").as<std::int8_t>()[0] == -128);

    // Every integer dtype widens to int64.
    CHECK(f.at("i64").to_vector<std::int64_t>() == i64);
    CHECK(f.at("i32").to_vector<std::int64_t>() == std::vector<std::int64_t>{-7, 100000});
    CHECK(f.at("i16").to_vector<std::int64_t>() == std::vector<std::int64_t>{-300, 300});
    CHECK(f.at("i8").to_vector<std::int64_t>() == std::vector<std::int64_t>{-128, 127});
    CHECK(f.at("u8").to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 255});
    CHECK(f.at("u16").to_vector<std::int64_t>() == std::vector<std::int64_t>{65535, 1});
    CHECK(f.at("u32").to_vector<std::int64_t>() == std::vector<std::int64_t>{4294967295, 2});
    CHECK(f.at("u64").to_vector<std::int64_t>() ==
          std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::max(), 3});
    const std::string big = message_of<engram::format_error>([&] { (void)f.at("u64_big").to_vector<std::int64_t>(); });
    CHECK(contains_text(big, "u64_big"));
    CHECK(contains_text(big, "9223372036854775808"));

    // Exact match elsewhere: no silent narrowing.
    REQUIRE_THROWS_AS(f.at("i64").to_vector<std::int32_t>(), engram::format_error);
    REQUIRE_THROWS_AS(f.at("i32").to_vector<double>(), engram::format_error);
    REQUIRE_THROWS_AS(f.at("bool").to_vector<std::uint8_t>(), engram::format_error);
    REQUIRE_THROWS_AS(f.at("u8").to_vector<bool>(), engram::format_error);
}

TEST_CASE("as<T>() refuses misaligned data and invalid bools; to_vector copies", "[safetensors]") {
    // Header of 13 bytes: the data buffer starts at offset 21, so an I64 there is misaligned.
    std::string header =
        R"({"x":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"b":{"dtype":"BOOL","shape":[2],"data_offsets":[16,18]}})";
    while ((8 + header.size()) % 8 != 5) header += ' ';
    auto bytes = image(header, 18);
    const std::int64_t values[] = {-5, 1234567890123};
    std::memcpy(bytes.data() + 8 + header.size(), values, 16);
    bytes[8 + header.size() + 16] = std::byte{1};
    bytes[8 + header.size() + 17] = std::byte{2};
    const auto f = engram::safetensors_file::from_bytes(std::move(bytes));
    const std::string msg = message_of<engram::format_error>([&] { (void)f.at("x").as<std::int64_t>(); });
    CHECK(contains_text(msg, "'x'"));
    CHECK(contains_text(msg, "aligned"));
    CHECK(f.at("x").to_vector<std::int64_t>() == std::vector<std::int64_t>{-5, 1234567890123});
    const std::string bool_msg = message_of<engram::format_error>([&] { (void)f.at("b").as<bool>(); });
    CHECK(contains_text(bool_msg, "not 0 or 1"));
    CHECK(f.at("b").to_vector<bool>() == std::vector<bool>{true, true});
}

TEST_CASE("reader accepts gaps, padding and empty data buffers", "[safetensors]") {
    SECTION("gap between tensors, trailing spaces") {
        auto f = engram::safetensors_file::from_bytes(image(
            R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[5,6]}}    )",
            8));
        CHECK(f.tensors().size() == 2);
        CHECK(f.at("b").as<std::uint8_t>()[0] == 5);
    }
    SECTION("no tensors, metadata only, 0-byte data buffer") {
        const auto f = engram::safetensors_file::from_bytes(image(R"({"__metadata__":{"k":"v"}})"));
        CHECK(f.tensors().empty());
        CHECK(*f.find_metadata("k") == "v");
    }
    SECTION("empty object, on disk (whole file is the header)") {
        temp_dir dir;
        write_file(dir.path / "e.safetensors", image("{}"));
        const auto f = engram::safetensors_file::open(dir.path / "e.safetensors");
        CHECK(f.tensors().empty());
        CHECK(f.file_size() == 10);
    }
    SECTION("empty tensors may share an offset with others") {
        const auto f = engram::safetensors_file::from_bytes(image(
            R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}})",
            4));
        CHECK(f.at("z").numel() == 0);
    }
    SECTION("duplicate keys keep the last value") {
        const auto f = engram::safetensors_file::from_bytes(image(
            R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
            2));
        CHECK(f.at("a").shape == std::vector<std::int64_t>{2});
    }
    SECTION("an empty writer gives a valid file") {
        const engram::safetensors_writer w;
        const auto bytes = w.to_bytes();
        CHECK(bytes.size() % 8 == 0);
        CHECK(engram::safetensors_file::from_bytes(bytes).tensors().empty());
    }
}

TEST_CASE("malformed input is rejected with a specific format_error", "[safetensors]") {
    const auto entry = [](const std::string& body) { return R"({"t":)" + body + "}"; };
    struct bad_case {
        const char* label;
        std::vector<std::byte> bytes;
        const char* fragment;
    };
    const std::vector<bad_case> cases = {
        {"empty", {}, "shorter than the 8-byte"},
        {"4 bytes", {std::byte{1}, std::byte{0}, std::byte{0}, std::byte{0}}, "is 4 bytes"},
        {"header length 0", image("", 16, 0), "header length is 0"},
        {"header length beyond file", image("{}", 0, 1000), "header length 1000 exceeds"},
        {"header length above the cap", image("{}", 0, std::uint64_t{1} << 40), "limit"},
        {"header length ~2^64", image("{}", 0, ~std::uint64_t{0} - 1), "exceeds"},
        {"not JSON", image("{\"t\": nope}"), "not valid JSON"},
        {"NUL padding", image(std::string("{}\0\0\0\0\0\0", 8)), "NUL byte at header offset 2"},
        {"NUL then junk", image(std::string("{}\0{\"x\":", 7)), "NUL byte"},
        {"truncated JSON", image("{\"t\":{\"dtype\""), "not valid JSON"},
        {"JSON array", image("[1,2,3]"), "header is a JSON array"},
        {"JSON string", image("\"hi\""), "header is a JSON string"},
        {"metadata not object", image(R"({"__metadata__":[1]})"), "__metadata__ is a JSON array"},
        {"metadata non-string value", image(R"({"__metadata__":{"n":3}})"), "value for key 'n'"},
        {"entry not object", image(entry("[1]")), "tensor 't': entry is a JSON array"},
        {"missing dtype", image(entry(R"({"shape":[1],"data_offsets":[0,1]})"), 1), "field 'dtype' is missing"},
        {"dtype not string", image(entry(R"({"dtype":7,"shape":[1],"data_offsets":[0,1]})"), 1),
         "field 'dtype' is a JSON number"},
        {"unknown dtype", image(entry(R"({"dtype":"F128","shape":[1],"data_offsets":[0,16]})"), 16),
         "unknown dtype 'F128'"},
        {"missing shape", image(entry(R"({"dtype":"U8","data_offsets":[0,1]})"), 1), "field 'shape' is missing"},
        {"shape not array", image(entry(R"({"dtype":"U8","shape":3,"data_offsets":[0,3]})"), 3),
         "field 'shape' is a JSON number"},
        {"negative dim", image(entry(R"({"dtype":"U8","shape":[2,-1],"data_offsets":[0,0]})")),
         "shape[1] = -1 is negative"},
        {"float dim", image(entry(R"({"dtype":"U8","shape":[1.5],"data_offsets":[0,1]})"), 1),
         "shape[0] = 1.5 is not an integer"},
        {"string dim", image(entry(R"({"dtype":"U8","shape":["1"],"data_offsets":[0,1]})"), 1),
         "shape[0] is a JSON string"},
        {"dim above 2^63", image(entry(R"({"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,1]})"), 1),
         "exceeds 2^63 - 1"},
        {"dim beyond u64", image(entry(R"({"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]})"), 1),
         "not an integer"},
        {"dims overflow", image(entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})")),
         "overflows"},
        {"bytes overflow", image(entry(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]})")),
         "overflows"},
        {"missing offsets", image(entry(R"({"dtype":"U8","shape":[1]})"), 1), "field 'data_offsets' is missing"},
        {"offsets wrong length", image(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1,2]})"), 2),
         "expected [begin, end]"},
        {"offsets not array", image(entry(R"({"dtype":"U8","shape":[1],"data_offsets":{"a":1}})"), 2),
         "expected [begin, end]"},
        {"negative offset", image(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[-1,0]})"), 2),
         "data_offsets[0] = -1 is negative"},
        {"float offset", image(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1.0]})"), 2),
         "data_offsets[1] = 1.0 is not an integer"},
        {"begin > end", image(entry(R"({"dtype":"U8","shape":[0],"data_offsets":[2,1]})"), 2), "begin > end"},
        {"offsets out of range", image(entry(R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]})"), 3),
         "exceed the data buffer of 3 bytes"},
        {"size mismatch", image(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})"), 4), "needs 8 bytes"},
        {"overlap",
         image(
             R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
             5),
         "overlap"},
        {"contained overlap",
         image(
             R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
             8),
         "tensors 'a' [0, 8) and 'b' [4, 6) overlap"},
        {"same range",
         image(
             R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"I16","shape":[1],"data_offsets":[0,2]}})",
             2),
         "overlap"},
    };
    for (const auto& c : cases) {
        INFO(c.label);
        const std::string msg =
            message_of<engram::format_error>([&] { (void)engram::safetensors_file::from_bytes(c.bytes); });
        INFO(msg);
        CHECK(contains_text(msg, c.fragment));
        CHECK(contains_text(msg, "safetensors buffer"));
    }
}

TEST_CASE("truncated files are rejected at every cut", "[safetensors]") {
    engram::safetensors_writer w;
    const std::vector<float> values(32, 0.25f);
    w.add("w", {4, 8}, values);
    w.add("ids", {3}, std::vector<std::int64_t>{1, 2, 3});
    const auto full = w.to_bytes();
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, full.data(), 8);
    const std::size_t data_start = 8 + static_cast<std::size_t>(header_len);

    const std::pair<std::size_t, const char*> cuts[] = {
        {0, "shorter than the 8-byte"},
        {3, "shorter than the 8-byte"},
        {7, "shorter than the 8-byte"},
        {8, "exceeds"},
        {8 + header_len / 2, "exceeds"},
        {data_start - 1, "exceeds"},
        {data_start, "exceed the data buffer"},
        {data_start + 1, "exceed the data buffer"},
        {full.size() - 1, "exceed the data buffer"},
    };
    temp_dir dir;
    for (const auto& [size, fragment] : cuts) {
        INFO("cut at " << size);
        std::vector<std::byte> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(size));
        const std::string msg =
            message_of<engram::format_error>([&] { (void)engram::safetensors_file::from_bytes(cut); });
        CHECK(contains_text(msg, fragment));
        // The same through open(): the message names the file.
        const fs::path p = dir.path / ("cut" + std::to_string(size) + ".safetensors");
        write_file(p, cut);
        const std::string file_msg = message_of<engram::format_error>([&] { (void)engram::safetensors_file::open(p); });
        CHECK(contains_text(file_msg, fragment));
        CHECK(contains_text(file_msg, p.string()));
    }
    CHECK(engram::safetensors_file::from_bytes(full).tensors().size() == 2);
}

TEST_CASE("open() reports operating-system failures as io_error", "[safetensors]") {
    temp_dir dir;
    SECTION("missing file") {
        const fs::path p = dir.path / "absent.safetensors";
        const std::string msg = message_of<engram::io_error>([&] { (void)engram::safetensors_file::open(p); });
        CHECK(contains_text(msg, p.string()));
        CHECK(contains_text(msg, "No such file"));
    }
    SECTION("directory") {
        const std::string msg = message_of<engram::io_error>([&] { (void)engram::safetensors_file::open(dir.path); });
        CHECK(contains_text(msg, "is a directory"));
        CHECK(contains_text(msg, dir.path.string()));
    }
    SECTION("empty file is a format error, not an mmap failure") {
        write_file(dir.path / "empty.safetensors", {});
        const std::string msg = message_of<engram::format_error>(
            [&] { (void)engram::safetensors_file::open(dir.path / "empty.safetensors"); });
        CHECK(contains_text(msg, "file is 0 bytes"));
    }
    SECTION("permission denied") {
        if (::geteuid() == 0) return; // root reads anything
        const fs::path p = dir.path / "locked.safetensors";
        write_file(p, image("{}"));
        REQUIRE(::chmod(p.c_str(), 0) == 0);
        const std::string msg = message_of<engram::io_error>([&] { (void)engram::safetensors_file::open(p); });
        CHECK(contains_text(msg, "Permission denied"));
    }
}

TEST_CASE("safetensors_file is movable and keeps its views valid", "[safetensors]") {
    engram::safetensors_writer w;
    w.add("a", {3}, std::vector<std::int32_t>{4, 5, 6});
    temp_dir dir;
    w.write(dir.path / "m.safetensors");
    auto f = engram::safetensors_file::open(dir.path / "m.safetensors");
    const auto* before = f.at("a").bytes.data();
    engram::safetensors_file g = std::move(f);
    CHECK(g.at("a").bytes.data() == before);
    CHECK(g.at("a").as<std::int32_t>()[2] == 6);
    CHECK(f.tensors().empty()); // NOLINT(bugprone-use-after-move): moved-from is empty
    auto h = engram::safetensors_file::from_bytes(w.to_bytes());
    h = std::move(g); // releases h's buffer, takes g's mapping
    CHECK(h.at("a").to_vector<std::int64_t>() == std::vector<std::int64_t>{4, 5, 6});
    CHECK(h.path() == dir.path / "m.safetensors");
}

TEST_CASE("writer validates its input with config_error", "[safetensors]") {
    engram::safetensors_writer w;
    const std::vector<float> four(4, 1.0f);
    w.add("x", {4}, four);
    const std::string dup = message_of<engram::config_error>([&] { w.add("x", {4}, four); });
    CHECK(contains_text(dup, "duplicate"));
    CHECK(contains_text(dup, "'x'"));
    const std::string size = message_of<engram::config_error>([&] { w.add("y", {5}, four); });
    CHECK(contains_text(size, "data is 16 bytes"));
    CHECK(contains_text(size, "needs 20"));
    const std::string neg = message_of<engram::config_error>([&] { w.add("z", engram::dtype::u8, {-1}, {}); });
    CHECK(contains_text(neg, "negative"));
    const std::string over = message_of<engram::config_error>([&] {
        w.add("o", engram::dtype::f64, {std::int64_t{1} << 62, 4}, {});
    });
    CHECK(contains_text(over, "overflow"));
    REQUIRE_THROWS_AS(w.add("__metadata__", {4}, four), engram::config_error);
    REQUIRE_THROWS_AS(w.add(std::string("bad\xff"), {4}, four), engram::config_error);
    REQUIRE_THROWS_AS(w.set_metadata("k", std::string("\xc3")), engram::config_error);
    CHECK(w.size() == 1); // failed adds leave nothing behind
}

TEST_CASE("writer is atomic and leaves no temporary file on failure", "[safetensors]") {
    temp_dir dir;
    engram::safetensors_writer w;
    w.add("v", {2}, std::vector<double>{1.0, 2.0});

    SECTION("non-existent directory") {
        const fs::path out = dir.path / "no" / "such" / "out.safetensors";
        const std::string msg = message_of<engram::io_error>([&] { w.write(out); });
        CHECK(contains_text(msg, "out.safetensors"));
        CHECK(contains_text(msg, "No such file"));
        CHECK(dir.entries().empty());
    }
    SECTION("target is a directory: the rename fails after writing") {
        fs::create_directory(dir.path / "target");
        const std::string msg = message_of<engram::io_error>([&] { w.write(dir.path / "target"); });
        CHECK(contains_text(msg, "rename"));
        CHECK(contains_text(msg, (dir.path / "target").string()));
        CHECK(dir.entries() == std::vector<std::string>{"target"}); // temp file removed
    }
    SECTION("write() fails midway (file size limit): the partial temp file is removed") {
        engram::safetensors_writer big;
        big.add("big", {4096}, std::vector<float>(4096, 1.0f));
        rlimit saved{};
        REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
        const auto old_handler = std::signal(SIGXFSZ, SIG_IGN); // EFBIG instead of a signal
        rlimit limited = saved;
        limited.rlim_cur = 100; // room for the temp file's header, not its data
        REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
        std::string msg;
        try {
            big.write(dir.path / "big.safetensors");
        } catch (const engram::io_error& e) {
            msg = e.what();
        }
        ::setrlimit(RLIMIT_FSIZE, &saved);
        std::signal(SIGXFSZ, old_handler);
        CHECK(contains_text(msg, "cannot write"));
        CHECK(contains_text(msg, "big.safetensors"));
        CHECK(contains_text(msg, "File too large"));
        CHECK(dir.entries().empty());
    }
    SECTION("replaces an existing file") {
        const fs::path out = dir.path / "out.safetensors";
        write_file(out, image("garbage"));
        w.write(out);
        const auto f = engram::safetensors_file::open(out);
        CHECK(f.at("v").as<double>()[1] == 2.0);
        CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
    }
    SECTION("relative path in the current directory") {
        const fs::path cwd = fs::current_path();
        fs::current_path(dir.path);
        w.write("rel.safetensors");
        fs::current_path(cwd);
        CHECK(engram::safetensors_file::open(dir.path / "rel.safetensors").contains("v"));
    }
}
