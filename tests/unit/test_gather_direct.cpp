// The gather of directly addressable rows (dense, mmap): the generic loop and the AVX-512 loops
// (bf16, f16, FP8, int8) against a row-by-row decode, on odd widths, odd counts and every output offset inside a
// cache line (guards on both sides: nothing outside the output is written).
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/storage/direct.hpp>
#include <engram/storage/quantized.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace {

/// A block of `rows` encoded rows of width `dim`: random bit patterns for f32 and bf16 (NaN
/// payloads, infinities and subnormals included), random floats encoded for the others.
template <class Codec>
std::vector<std::byte> random_rows(std::size_t rows, std::size_t dim, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const std::size_t bytes = Codec::row_bytes(dim);
    std::vector<std::byte> block(rows * bytes);
    if constexpr (std::is_same_v<Codec, engram::f32_codec> || std::is_same_v<Codec, engram::bf16_codec>) {
        for (auto& b : block) b = static_cast<std::byte>(rng() & 0xFF);
    } else {
        std::normal_distribution<float> normal(0.0f, 3.0f);
        std::vector<float> values(dim);
        for (std::size_t r = 0; r < rows; ++r) {
            for (auto& v : values) v = normal(rng);
            Codec::encode(values.data(), block.data() + r * bytes, dim);
        }
    }
    return block;
}

/// The expected output: each row decoded on its own with the codec's scalar decode.
template <class Codec>
std::vector<float> reference(const std::vector<std::byte>& block, std::size_t dim,
                             const std::vector<engram::row_id>& ids) {
    const std::size_t bytes = Codec::row_bytes(dim);
    std::vector<float> out(ids.size() * dim);
    for (std::size_t i = 0; i < ids.size(); ++i)
        Codec::decode(block.data() + static_cast<std::size_t>(ids[i]) * bytes, out.data() + i * dim, dim);
    return out;
}

constexpr std::uint32_t guard_bits = 0x7FC0DEADu; // a NaN no gather writes

bool is_guard(const float* p) {
    std::uint32_t bits;
    std::memcpy(&bits, p, 4);
    return bits == guard_bits;
}

/// Runs `gather(out)` into a buffer whose output starts `offset` floats after a 64-byte
/// boundary, with guard values on both sides; checks the output bit for bit and the guards.
template <class Gather>
void check_at_offset(const std::vector<float>& expected, std::size_t offset, Gather&& gather) {
    const std::size_t guard = 32;
    std::vector<float> storage(expected.size() + 2 * guard + 32);
    float* base = storage.data();
    while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
    float* out = base + guard + offset; // base + guard is 64-byte aligned (guard = 32 floats)
    float* end = out + expected.size();
    for (float* p = base; p < end + guard; ++p) std::memcpy(p, &guard_bits, 4);
    gather(out);
    for (const float* p = base; p < out; ++p) REQUIRE(is_guard(p));
    for (const float* p = end; p < end + guard; ++p) REQUIRE(is_guard(p));
    if (!expected.empty()) REQUIRE(std::memcmp(out, expected.data(), expected.size() * sizeof(float)) == 0);
}

template <class Codec>
void check_codec(std::initializer_list<std::size_t> dims) {
    const std::size_t rows = 97;
    for (std::size_t dim : dims) {
        const auto block = random_rows<Codec>(rows, dim, dim);
        for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{41}}) {
            std::mt19937_64 rng(count * 31 + dim);
            std::vector<engram::row_id> ids(count);
            for (auto& id : ids) id = static_cast<engram::row_id>(rng() % rows);
            const auto expected = reference<Codec>(block, dim, ids);
            for (std::size_t offset = 0; offset < 16; ++offset) {
                INFO("codec " << Codec::name << ", dim " << dim << ", " << count << " rows, output offset " << offset
                              << " floats");
                check_at_offset(expected, offset, [&](float* out) {
                    engram::detail::gather_rows_plain<Codec>(block.data(), Codec::row_bytes(dim), dim, ids, out);
                });
#if ENGRAM_DETAIL_GATHER_AVX512
                if constexpr (engram::detail::avx512_decoder<Codec>::exists)
                    if (engram::detail::avx512_available())
                        check_at_offset(expected, offset, [&](float* out) {
                            engram::detail::gather_rows_avx512<Codec>(block.data(), Codec::row_bytes(dim), dim, ids,
                                                                      out);
                        });
#endif
            }
        }
    }
}

} // namespace

TEST_CASE("direct gather: the generic and AVX-512 loops agree with a row-by-row decode", "[gather]") {
    if (!engram::detail::avx512_available())
        WARN("this CPU has no AVX-512 (F, BW, VL): only the generic loop is checked");
    check_codec<engram::f32_codec>({1, 3, 15, 16, 17, 31, 32, 48, 64, 100});
    check_codec<engram::bf16_codec>({1, 3, 15, 16, 17, 31, 32, 48, 64, 100});
    check_codec<engram::f16_codec>({1, 5, 16, 64, 70});
    check_codec<engram::fp8_e4m3_codec>({32, 64, 96});
    check_codec<engram::int8_codec>({1, 7, 16, 64, 65});
}

TEST_CASE("dense gather: bf16 rows through engram::gather are exact (AVX-512 path where available)", "[gather]") {
    // 40,000 rows x 64 -> 10 MB of f32 output (more than the caches hold).
    const std::size_t rows = 5000, dim = 64, n = 40000;
    engram::dense_storage::table<engram::bfloat16> table(rows, dim);
    std::mt19937_64 rng(11);
    for (auto& v : table.values()) v.bits = static_cast<std::uint16_t>(rng());
    std::vector<engram::row_id> ids(n);
    for (auto& id : ids) id = static_cast<engram::row_id>(rng() % rows);
    std::vector<float> out(n * dim + 1);
    // One float in: the output starts 4 bytes past the vector's alignment.
    engram::gather(table, ids, std::span<float>(out.data() + 1, n * dim));
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t c = 0; c < dim; ++c) {
            const std::uint32_t want = static_cast<std::uint32_t>(table.row(static_cast<std::size_t>(ids[i]))[c].bits)
                                       << 16;
            std::uint32_t got;
            std::memcpy(&got, &out[1 + i * dim + c], 4);
            if (got != want) FAIL("row " << i << " value " << c << ": " << got << " != " << want);
        }
    CHECK(out[0] == 0.0f);
}
