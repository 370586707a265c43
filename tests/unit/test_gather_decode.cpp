// The AVX-512 row decodes (storage/decode_avx512.hpp) of the bf16, f16, FP8 E4M3 and int8
// codecs against the codecs' scalar decode, bit for bit, and against values computed here from
// the formats' definitions: every f16 bit pattern, every FP8 code under every scale byte, every
// int8 value under special scales; then rows with special values, on widths that are not
// multiples of 16, through the dense, mmap and sharded (dense and mmap shards) gathers.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/storage/decode_avx512.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/sharded.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#if defined(__x86_64__)
#include <xmmintrin.h> // for _mm_getcsr, _mm_setcsr
#endif

namespace {

namespace fs = std::filesystem;
using engram::row_id;

std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }

/// Decodes one row with the vector decode chosen at run time (row_decoder) and with the scalar
/// decode; both outputs start with the same garbage, so unwritten values would show.
template <class Codec>
void require_same_decode(const std::byte* row, std::size_t dim) {
    std::vector<float> scalar(dim + 1, std::bit_cast<float>(0x7FC0DEADu)), vec(scalar);
    Codec::decode(row, scalar.data(), dim);
    engram::detail::row_decoder<Codec>()(row, vec.data(), dim);
    for (std::size_t i = 0; i <= dim; ++i)
        if (bits_of(scalar[i]) != bits_of(vec[i]))
            FAIL(Codec::name << " dim " << dim << " value " << i << ": vector 0x" << std::hex << bits_of(vec[i])
                             << " != scalar 0x" << bits_of(scalar[i]));
}

/// binary16 bits `h` as float from the definition (sign, 5-bit exponent with bias 15, 10-bit
/// fraction), NaN as the float NaN with the payload in the fraction's top bits.
std::uint32_t half_reference(std::uint16_t h) {
    const std::uint32_t sign = (h & 0x8000u) ? 0x80000000u : 0u;
    const int e = (h >> 10) & 31;
    const int m = h & 1023;
    if (e == 31) return sign | 0x7F800000u | (static_cast<std::uint32_t>(m) << 13);
    const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    return sign | bits_of(static_cast<float>(v));
}

/// FP8 E4M3 code `c` at unit scale from the definition (bias 7, 3-bit fraction, S.1111.111 NaN).
double e4m3_reference(unsigned c) {
    const int e = (c >> 3) & 15, m = c & 7;
    const double v = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
    return (c & 0x80u) ? -v : v;
}

bool avx512() {
    static const bool ok = [] {
        const bool a = engram::detail::avx512_available();
        if (!a) WARN("this CPU has no AVX-512 (F, BW, VL): the vector decodes are not exercised");
        return a;
    }();
    return ok;
}

} // namespace

TEST_CASE("decode f16: every bit pattern, vector == scalar == definition", "[gather][decode]") {
    (void)avx512();
    std::vector<std::byte> row(65536 * 2);
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto v = static_cast<std::uint16_t>(h);
        std::memcpy(row.data() + 2 * h, &v, 2);
    }
    require_same_decode<engram::f16_codec>(row.data(), 65536);
    std::vector<float> out(65536);
    engram::detail::row_decoder<engram::f16_codec>()(row.data(), out.data(), 65536);
    for (std::uint32_t h = 0; h < 65536; ++h)
        if (bits_of(out[h]) != half_reference(static_cast<std::uint16_t>(h)))
            FAIL("f16 0x" << std::hex << h << " -> 0x" << bits_of(out[h]) << ", expected 0x"
                          << half_reference(static_cast<std::uint16_t>(h)));
    // Every width 1..40 (tails of every length) from every starting pattern offset.
    for (std::size_t dim = 1; dim <= 40; ++dim)
        for (std::size_t at = 0; at + dim <= 65536; at += 997)
            require_same_decode<engram::f16_codec>(row.data() + 2 * at, dim);
}

TEST_CASE("decode bf16: every bit pattern, vector == scalar == definition", "[gather][decode]") {
    std::vector<std::byte> row(65536 * 2);
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto v = static_cast<std::uint16_t>(h);
        std::memcpy(row.data() + 2 * h, &v, 2);
    }
    require_same_decode<engram::bf16_codec>(row.data(), 65536);
    std::vector<float> out(65536);
    engram::detail::row_decoder<engram::bf16_codec>()(row.data(), out.data(), 65536);
    for (std::uint32_t h = 0; h < 65536; ++h) REQUIRE(bits_of(out[h]) == h << 16);
    for (std::size_t dim = 1; dim <= 40; ++dim) require_same_decode<engram::bf16_codec>(row.data() + 2 * dim, dim);
}

TEST_CASE("decode fp8: every code under every scale byte, vector == scalar == definition", "[gather][decode]") {
    // Rows of 256 values (codes 0..255) and 8 scale bytes: 32 rows cover all 256 scale bytes.
    const std::size_t dim = 256, bytes = engram::fp8_e4m3_codec::row_bytes(dim);
    std::vector<std::byte> row(bytes);
    std::vector<float> out(dim);
    for (unsigned r = 0; r < 32; ++r) {
        for (unsigned c = 0; c < 256; ++c) row[c] = static_cast<std::byte>(c);
        for (unsigned j = 0; j < 8; ++j) row[dim + j] = static_cast<std::byte>(8 * r + j);
        require_same_decode<engram::fp8_e4m3_codec>(row.data(), dim);
        engram::detail::row_decoder<engram::fp8_e4m3_codec>()(row.data(), out.data(), dim);
        for (unsigned c = 0; c < 256; ++c) {
            const unsigned b = 8 * r + c / 32;
            INFO("code 0x" << std::hex << c << ", scale byte 0x" << b);
            const float got = out[c];
            if ((c & 0x7Fu) == 0x7Fu) { // the code's NaN, whatever the scale
                REQUIRE(bits_of(got) == (0x7FC00000u | ((c & 0x80u) << 24)));
                continue;
            }
            if (b == 255) { // UE8M0 NaN: the scale's NaN
                REQUIRE(bits_of(got) == 0x7FC00000u);
                continue;
            }
            // Exact in double, and in float up to 2^128 (multiples of 2^-136 with at most 4
            // significant bits); past that, infinity.
            const double want = e4m3_reference(c) * std::ldexp(1.0, b == 0 ? -127 : static_cast<int>(b) - 127);
            if (std::fabs(want) > static_cast<double>(std::numeric_limits<float>::max())) {
                REQUIRE(got == (want > 0 ? 1.0f : -1.0f) * std::numeric_limits<float>::infinity());
                continue;
            }
            REQUIRE(bits_of(got) == bits_of(static_cast<float>(want)));
            REQUIRE(static_cast<double>(got) == want);
        }
    }
    // Codes in shuffled order (each 16-value half of a block differs), one and three blocks.
    std::mt19937_64 rng(5);
    for (std::size_t d : {std::size_t{32}, std::size_t{96}}) {
        std::vector<std::byte> r2(engram::fp8_e4m3_codec::row_bytes(d));
        for (int trial = 0; trial < 200; ++trial) {
            for (auto& b : r2) b = static_cast<std::byte>(rng() & 0xFF);
            require_same_decode<engram::fp8_e4m3_codec>(r2.data(), d);
        }
    }
}

TEST_CASE("decode int8: every value under special scales, vector == scalar == q * scale", "[gather][decode]") {
    const float specials[] = {0.0f,
                              -0.0f,
                              1.0f,
                              -2.5f,
                              0x1.0p-149f,
                              0x1.fffffcp-127f,
                              std::numeric_limits<float>::max() / 127.0f,
                              std::numeric_limits<float>::max(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(),
                              std::bit_cast<float>(0xFF800001u), // signalling NaN, negative
                              3.1e-5f};
    for (std::size_t dim : {std::size_t{1}, std::size_t{15}, std::size_t{16}, std::size_t{17}, std::size_t{256}}) {
        std::vector<std::byte> row(engram::int8_codec::row_bytes(dim));
        std::vector<float> out(dim);
        for (float scale : specials) {
            for (std::size_t first = 0; first < 256; first += dim) {
                for (std::size_t i = 0; i < dim; ++i) row[i] = static_cast<std::byte>((first + i) & 0xFF);
                engram::detail::store_le32(row.data() + dim, bits_of(scale));
                require_same_decode<engram::int8_codec>(row.data(), dim);
                engram::detail::row_decoder<engram::int8_codec>()(row.data(), out.data(), dim);
                for (std::size_t i = 0; i < dim; ++i) {
                    const auto q = static_cast<std::int8_t>(static_cast<std::uint8_t>(row[i]));
                    INFO("q " << int(q) << ", scale bits 0x" << std::hex << bits_of(scale));
                    const double want = static_cast<double>(q) * static_cast<double>(scale); // exact
                    if (std::isnan(want)) {
                        REQUIRE(std::isnan(out[i]));
                    } else if (std::fabs(want) > std::numeric_limits<float>::max()) {
                        // Past the largest float: infinity from halfway to the next power up
                        // (ties go to the even infinity), the largest float below.
                        const double halfway = std::ldexp(2.0 - std::ldexp(1.0, -24), 127);
                        const float mag = std::fabs(want) >= halfway ? std::numeric_limits<float>::infinity()
                                                                     : std::numeric_limits<float>::max();
                        REQUIRE(out[i] == (want > 0 ? mag : -mag));
                    } else {
                        REQUIRE(bits_of(out[i]) == bits_of(static_cast<float>(want)));
                    }
                }
            }
        }
    }
}

#if defined(__x86_64__)
TEST_CASE("decode: vector == scalar with denormals flushed (MXCSR FTZ and DAZ set)", "[gather][decode]") {
    // vcvtph2ps converts binary16 subnormals exactly whatever MXCSR says, as the scalar f16
    // decode (integer arithmetic) does; products with subnormal scales flush in both.
    struct restore_csr {
        unsigned saved = _mm_getcsr();
        ~restore_csr() { _mm_setcsr(saved); }
    } guard;
    _mm_setcsr(guard.saved | 0x8040u); // FTZ (bit 15), DAZ (bit 6)
    std::vector<std::byte> halves(65536 * 2);
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto v = static_cast<std::uint16_t>(h);
        std::memcpy(halves.data() + 2 * h, &v, 2);
    }
    require_same_decode<engram::f16_codec>(halves.data(), 65536);
    const std::size_t dim = 256;
    std::vector<std::byte> row(engram::fp8_e4m3_codec::row_bytes(dim));
    for (unsigned r = 0; r < 32; ++r) {
        for (unsigned c = 0; c < 256; ++c) row[c] = static_cast<std::byte>(c);
        for (unsigned j = 0; j < 8; ++j) row[dim + j] = static_cast<std::byte>(8 * r + j);
        require_same_decode<engram::fp8_e4m3_codec>(row.data(), dim);
    }
    std::vector<std::byte> q(engram::int8_codec::row_bytes(256));
    for (unsigned i = 0; i < 256; ++i) q[i] = static_cast<std::byte>(i);
    for (float scale : {0x1.0p-149f, 0x1.0p-127f, 0x1.0p-120f, 1.0f}) {
        engram::detail::store_le32(q.data() + 256, bits_of(scale));
        require_same_decode<engram::int8_codec>(q.data(), 256);
    }
}
#endif

namespace {

/// `rows` encoded rows of width `dim` with special values: random bit patterns for bf16/f16
/// (NaN payloads, infinities, subnormals, +-0, max), random bytes (every code, every scale
/// byte) for FP8, random bytes with a scale from a list of specials for int8.
template <class Codec>
std::vector<std::byte> special_rows(std::size_t rows, std::size_t dim, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const std::size_t bytes = Codec::row_bytes(dim);
    std::vector<std::byte> block(rows * bytes);
    for (auto& b : block) b = static_cast<std::byte>(rng() & 0xFF);
    if constexpr (std::is_same_v<Codec, engram::f16_codec> || std::is_same_v<Codec, engram::bf16_codec>) {
        const std::uint16_t pick[] = {0x0000, 0x8000, 0x7C00, 0xFC00, 0x7BFF, 0xFBFF, 0x0001, 0x83FF,
                                      0x7E00, 0x7C01, 0xFFFF, 0x7F80, 0xFF80, 0x7F7F, 0x007F, 0x7FC1};
        for (std::size_t v = 0; v < rows * dim; v += 3) std::memcpy(block.data() + 2 * v, &pick[rng() % 16], 2);
    } else if constexpr (std::is_same_v<Codec, engram::int8_codec>) {
        const float scales[] = {0.5f,
                                0.0f,
                                -0.0f,
                                0x1.0p-149f,
                                std::numeric_limits<float>::max(),
                                std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::quiet_NaN(),
                                7e-3f};
        for (std::size_t r = 0; r < rows; ++r)
            engram::detail::store_le32(block.data() + r * bytes + dim, bits_of(scales[r % 8]));
    }
    return block;
}

/// Each row of `block` decoded on its own with the scalar decode.
template <class Codec>
std::vector<float> scalar_gather(const std::vector<std::byte>& block, std::size_t dim, const std::vector<row_id>& ids) {
    const std::size_t bytes = Codec::row_bytes(dim);
    std::vector<float> out(ids.size() * dim);
    for (std::size_t i = 0; i < ids.size(); ++i)
        Codec::decode(block.data() + static_cast<std::size_t>(ids[i]) * bytes, out.data() + i * dim, dim);
    return out;
}

template <class Table>
void require_gather(const Table& table, const std::vector<row_id>& ids, const std::vector<float>& expected,
                    const char* what) {
    std::vector<float> out(expected.size() + 1, std::bit_cast<float>(0x7FC0DEADu));
    // One float in: the output is not 64-byte aligned.
    engram::gather(table, std::span<const row_id>(ids), std::span<float>(out.data() + 1, expected.size()));
    REQUIRE(bits_of(out[0]) == 0x7FC0DEADu);
    for (std::size_t i = 0; i < expected.size(); ++i)
        if (bits_of(out[1 + i]) != bits_of(expected[i]))
            FAIL(what << ": value " << i << " is 0x" << std::hex << bits_of(out[1 + i]) << ", scalar decode 0x"
                      << bits_of(expected[i]));
}

fs::path scratch(const std::string& name) {
    return fs::temp_directory_path() / ("engram_gather_decode_" + std::to_string(::getpid()) + "_" + name);
}

template <class Codec>
void check_tables(std::initializer_list<std::size_t> dims) {
    const std::size_t rows = 203;
    for (std::size_t dim : dims) {
        INFO("codec " << Codec::name << ", dim " << dim);
        const std::size_t bytes = Codec::row_bytes(dim);
        const auto block = special_rows<Codec>(rows, dim, dim * 7 + 1);
        std::mt19937_64 rng(dim);
        for (std::size_t count :
             {std::size_t{1}, std::size_t{15}, std::size_t{16}, std::size_t{17}, std::size_t{500}}) {
            std::vector<row_id> ids(count);
            for (auto& id : ids) id = static_cast<row_id>(rng() % rows);
            const auto expected = scalar_gather<Codec>(block, dim, ids);
            INFO(count << " rows");

            engram::dense_storage::table<Codec> dense(rows, dim);
            for (std::size_t r = 0; r < rows; ++r)
                std::memcpy(dense.encoded_row(r).data(), block.data() + r * bytes, bytes);
            require_gather(dense, ids, expected, "dense");

            engram::sharded_storage<engram::dense_storage, 3>::table<Codec> sharded(rows, dim);
            for (std::size_t k = 0; k < sharded.num_shards(); ++k)
                for (std::size_t r = 0; r < sharded.shard(k).rows(); ++r)
                    std::memcpy(sharded.shard(k).encoded_row(r).data(),
                                block.data() + (sharded.first_row(k) + r) * bytes, bytes);
            require_gather(sharded, ids, expected, "sharded dense");
            // More than 8 shards: rows found by binary search, addresses through encoded_row.
            engram::sharded_storage<engram::dense_storage, 9>::table<Codec> sharded9(rows, dim);
            for (std::size_t k = 0; k < sharded9.num_shards(); ++k)
                for (std::size_t r = 0; r < sharded9.shard(k).rows(); ++r)
                    std::memcpy(sharded9.shard(k).encoded_row(r).data(),
                                block.data() + (sharded9.first_row(k) + r) * bytes, bytes);
            require_gather(sharded9, ids, expected, "sharded dense, 9 shards");

            // The rows in a file behind a 13-byte header: mapped whole, and as 4 mapped shards.
            const fs::path path = scratch(std::string(Codec::name) + "_" + std::to_string(dim));
            struct remove_at_exit {
                fs::path p;
                ~remove_at_exit() {
                    std::error_code ec;
                    fs::remove(p, ec);
                }
            } guard{path};
            {
                std::ofstream f(path, std::ios::binary);
                const char header[13] = "engram-test.";
                f.write(header, 13);
                f.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(block.size()));
                REQUIRE(f.good());
            }
            using mmap_t = engram::mmap_storage::table<Codec>;
            const mmap_t mapped(path, 13, rows, dim);
            require_gather(mapped, ids, expected, "mmap");
            const auto bounds = engram::shard_bounds_by_rows(rows, 4);
            const auto mapped_shards =
                engram::make_sharded_table(std::span<const std::size_t>(bounds), [&](std::size_t first, std::size_t n) {
                    return mmap_t(path, 13 + first * bytes, n, dim);
                });
            require_gather(mapped_shards, ids, expected, "sharded mmap");
        }
    }
}

} // namespace

TEST_CASE("gather: vector decodes through dense, mmap and sharded tables == scalar decode", "[gather][decode]") {
    (void)avx512();
    check_tables<engram::bf16_codec>({1, 15, 17, 32, 64, 96});
    check_tables<engram::f16_codec>({1, 15, 17, 32, 64, 96});
    check_tables<engram::fp8_e4m3_codec>({32, 64, 96});
    check_tables<engram::int8_codec>({1, 15, 17, 32, 64, 96});
    check_tables<engram::f32_codec>({1, 17, 64});
}

TEST_CASE("gather: the decoder picked at run time is the vector one where the CPU has AVX-512", "[gather][decode]") {
    const bool vec = avx512();
    CHECK((engram::detail::row_decoder<engram::f32_codec>() == &engram::f32_codec::decode));
    CHECK((engram::detail::row_decoder<engram::f16_codec>() == &engram::f16_codec::decode) == !vec);
    CHECK((engram::detail::row_decoder<engram::bf16_codec>() == &engram::bf16_codec::decode) == !vec);
    CHECK((engram::detail::row_decoder<engram::fp8_e4m3_codec>() == &engram::fp8_e4m3_codec::decode) == !vec);
    CHECK((engram::detail::row_decoder<engram::int8_codec>() == &engram::int8_codec::decode) == !vec);
}
