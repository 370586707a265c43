// Quantized row codecs (f16, FP8 E4M3 + UE8M0 block scales, int8 + row scale): decode against
// scalar references written here from the format definitions, round-trip error bounds, special
// values, dense tables of each codec and selection by name.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/storage/quantized.hpp>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using engram::bf16_codec;
using engram::f16_codec;
using engram::f32_codec;
using engram::fp8_e4m3_codec;
using engram::int8_codec;

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

// --- references, from the format definitions only ---------------------------------------------

/// FP8 E4M3 (fn) code -> value: (-1)^s 2^(e-7) (1 + m/8); e = 0: (-1)^s 2^-6 m/8; S.1111.111 NaN.
double ref_e4m3(unsigned c) {
    const unsigned s = c >> 7, e = (c >> 3) & 15u, m = c & 7u;
    if (e == 15 && m == 7) return std::nan("");
    const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, static_cast<int>(e) - 7);
    return s != 0 ? -mag : mag;
}

/// IEEE binary16 bits -> value: (-1)^s 2^(e-15) (1 + m/1024); e = 0: 2^-14 m/1024; e = 31: inf/NaN.
double ref_half(unsigned h) {
    const unsigned s = h >> 15, e = (h >> 10) & 31u, m = h & 1023u;
    double mag = 0;
    if (e == 31)
        mag = m == 0 ? HUGE_VAL : std::nan("");
    else if (e == 0)
        mag = std::ldexp(m / 1024.0, -14);
    else
        mag = std::ldexp(1.0 + m / 1024.0, static_cast<int>(e) - 15);
    return s != 0 ? -mag : mag;
}

template <class C>
std::vector<std::byte> encode(const std::vector<float>& x) {
    std::vector<std::byte> bytes(C::row_bytes(x.size()));
    C::encode(x.data(), bytes.data(), x.size());
    return bytes;
}

template <class C>
std::vector<float> decode(const std::vector<std::byte>& bytes, std::size_t dim) {
    std::vector<float> out(dim);
    C::decode(bytes.data(), out.data(), dim);
    return out;
}

template <class C>
std::vector<float> round_trip(const std::vector<float>& x) {
    return decode<C>(encode<C>(x), x.size());
}

/// The scale value i of an encoded row was stored with (1 for the unscaled codecs).
template <class C>
double scale_of(const std::vector<std::byte>& bytes, std::size_t dim, std::size_t i) {
    if constexpr (std::is_same_v<C, fp8_e4m3_codec>)
        return C::block_scale(bytes.data(), dim, i / C::block);
    else if constexpr (std::is_same_v<C, int8_codec>)
        return C::row_scale(bytes.data(), dim);
    else
        return 1.0;
}

std::uint16_t half_bits(float x) {
    const auto bytes = encode<f16_codec>({x});
    std::uint16_t h;
    std::memcpy(&h, bytes.data(), 2);
    return h;
}

/// One FP8 block: 32 values; returns codes and the scale byte.
struct fp8_block {
    std::vector<std::uint8_t> codes;
    std::uint8_t scale_byte;
};
fp8_block fp8_encode_block(const std::vector<float>& x) {
    const auto bytes = encode<fp8_e4m3_codec>(x);
    fp8_block b{{}, static_cast<std::uint8_t>(bytes[32])};
    for (std::size_t i = 0; i < 32; ++i) b.codes.push_back(static_cast<std::uint8_t>(bytes[i]));
    return b;
}

bool same_float(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    return a == b && std::signbit(a) == std::signbit(b);
}

/// Random test rows: standard normal, uniform in [-1, 1], and a wide range of magnitudes.
std::vector<std::vector<float>> sample_rows(std::size_t dim, float max_magnitude_log2, float min_magnitude_log2) {
    std::mt19937 rng(20240611);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::uniform_real_distribution<float> exponent(min_magnitude_log2, max_magnitude_log2);
    std::vector<std::vector<float>> rows;
    for (int r = 0; r < 64; ++r) {
        std::vector<float> row(dim);
        for (auto& v : row) {
            switch (r % 3) {
            case 0:
                v = normal(rng);
                break;
            case 1:
                v = uniform(rng);
                break;
            default:
                v = (rng() & 1u ? -1.0f : 1.0f) * std::exp2(exponent(rng));
                break;
            }
        }
        rows.push_back(std::move(row));
    }
    // Wide range inside one block/row too: scaled codecs keep the bound relative to the scale.
    std::vector<float> mixed(dim);
    for (std::size_t i = 0; i < dim; ++i)
        mixed[i] = static_cast<float>(i % 2 == 0 ? 1 : -1) * std::exp2(static_cast<float>(i % 30) - 20.0f);
    rows.push_back(std::move(mixed));
    return rows;
}

} // namespace

// --- decode against the references -----------------------------------------------------------

TEST_CASE("fp8 e4m3: every code times every kind of scale decodes like the formula", "[codecs]") {
    // One row of 256 values: codes 0..255, block j scaled by scale_bytes[j].
    const std::uint8_t scale_bytes[8] = {127, 0, 1, 60, 100, 140, 200, 246};
    std::vector<std::byte> row(fp8_e4m3_codec::row_bytes(256));
    for (unsigned c = 0; c < 256; ++c) row[c] = static_cast<std::byte>(c);
    for (std::size_t j = 0; j < 8; ++j) row[256 + j] = static_cast<std::byte>(scale_bytes[j]);
    std::vector<float> out(256);
    fp8_e4m3_codec::decode(row.data(), out.data(), 256);
    for (unsigned c = 0; c < 256; ++c) {
        const int b = scale_bytes[c / 32];
        INFO("code " << c << " scale byte " << b);
        const double ref = std::ldexp(ref_e4m3(c), b - 127);
        if (std::isnan(ref)) {
            CHECK(std::isnan(out[c]));
        } else {
            CHECK(static_cast<double>(out[c]) == ref);
            CHECK(std::signbit(out[c]) == std::signbit(ref));
        }
    }

    // The whole code table at unit scale, and the special values of the format.
    for (std::size_t j = 0; j < 8; ++j) row[256 + j] = static_cast<std::byte>(127);
    for (std::size_t j = 0; j < 8; ++j)
        for (unsigned c = 0; c < 256; ++c) row[j * 32 + (c % 32)] = static_cast<std::byte>(c);
    for (unsigned base = 0; base < 256; base += 32) {
        for (unsigned i = 0; i < 32; ++i) row[i] = static_cast<std::byte>(base + i);
        fp8_e4m3_codec::decode(row.data(), out.data(), 256);
        for (unsigned i = 0; i < 32; ++i) {
            INFO("code " << base + i);
            const double ref = ref_e4m3(base + i);
            CHECK((std::isnan(ref) ? std::isnan(out[i]) : static_cast<double>(out[i]) == ref));
        }
    }
    row[0] = std::byte{0x7E};
    row[1] = std::byte{0xFE};
    row[2] = std::byte{0x01};
    row[3] = std::byte{0x08};
    row[4] = std::byte{0x7F};
    row[5] = std::byte{0xFF};
    row[6] = std::byte{0x80};
    fp8_e4m3_codec::decode(row.data(), out.data(), 256);
    CHECK(out[0] == 448.0f);
    CHECK(out[1] == -448.0f);
    CHECK(out[2] == 0x1.0p-9f); // smallest subnormal
    CHECK(out[3] == 0x1.0p-6f); // smallest normal
    CHECK(std::isnan(out[4]));
    CHECK(std::isnan(out[5]));
    CHECK((out[6] == 0.0f && std::signbit(out[6])));

    // Scale byte 255 is UE8M0's NaN; the encoder never writes it.
    row[256] = std::byte{255};
    fp8_e4m3_codec::decode(row.data(), out.data(), 256);
    CHECK(std::isnan(out[0]));
}

TEST_CASE("f16: all 65536 codes decode like the formula", "[codecs]") {
    const std::size_t n = 65536;
    std::vector<std::byte> row(f16_codec::row_bytes(n));
    for (std::size_t h = 0; h < n; ++h) {
        const auto bits = static_cast<std::uint16_t>(h);
        std::memcpy(row.data() + 2 * h, &bits, 2);
    }
    std::vector<float> out(n);
    f16_codec::decode(row.data(), out.data(), n);
    std::size_t mismatches = 0;
    for (std::size_t h = 0; h < n; ++h) {
        const double ref = ref_half(static_cast<unsigned>(h));
        const bool ok = std::isnan(ref)
                            ? std::isnan(out[h])
                            : static_cast<double>(out[h]) == ref && std::signbit(out[h]) == std::signbit(ref);
        if (!ok) {
            ++mismatches;
            INFO("half code " << h << " decoded " << out[h] << " expected " << ref);
            CHECK(ok);
        }
    }
    CHECK(mismatches == 0);
    CHECK(out[0x7BFF] == 65504.0f);
    CHECK(out[0x0001] == 0x1.0p-24f);
    CHECK(out[0x0400] == 0x1.0p-14f);
    CHECK(out[0x3C00] == 1.0f);
    CHECK(out[0xFC00] == -inf);
}

// --- encode: rounding, exact round trips ------------------------------------------------------

TEST_CASE("f16: every finite half round-trips exactly; midpoints round to even", "[codecs]") {
    std::size_t bad = 0;
    for (unsigned h = 0; h < 65536; ++h) {
        const double v = ref_half(h);
        if (std::isnan(v)) {
            if (!std::isnan(ref_half(half_bits(static_cast<float>(v))))) ++bad;
            continue;
        }
        if (half_bits(static_cast<float>(v)) != h) {
            ++bad;
            INFO("half code " << h);
            CHECK(half_bits(static_cast<float>(v)) == h);
        }
        // Between h and the next code of larger magnitude (inf after 65504): the midpoint ties to
        // the even code, anything past it goes up, anything short of it goes down.
        const unsigned mag = h & 0x7FFFu;
        if (mag >= 0x7C00u) continue;
        const double next = ref_half(h + 1);
        const double mid = std::isinf(next) ? std::copysign(65520.0, v) : (v + next) / 2;
        const auto fmid = static_cast<float>(mid);
        REQUIRE(static_cast<double>(fmid) == mid); // 12 significant bits fit a float
        const unsigned even = (h & 1u) == 0 ? h : h + 1;
        const float toward_zero = std::nextafter(fmid, 0.0f);
        const float away = std::nextafter(fmid, std::copysign(inf, fmid));
        if (half_bits(fmid) != even || half_bits(toward_zero) != h || half_bits(away) != h + 1) {
            ++bad;
            INFO("half code " << h << " midpoint " << mid);
            CHECK(half_bits(fmid) == even);
            CHECK(half_bits(toward_zero) == h);
            CHECK(half_bits(away) == h + 1);
        }
    }
    CHECK(bad == 0);
    // Below the smallest subnormal: 2^-25 ties to zero, anything above rounds to 2^-24.
    CHECK(half_bits(0x1.0p-25f) == 0x0000);
    CHECK(half_bits(std::nextafter(0x1.0p-25f, 1.0f)) == 0x0001);
    CHECK(half_bits(-0x1.0p-26f) == 0x8000);
    CHECK(half_bits(1e-30f) == 0x0000);
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__FLT16_MANT_DIG__)
TEST_CASE("f16: encode matches the compiler's _Float16 conversion", "[codecs]") {
    std::mt19937 rng(7);
    std::size_t bad = 0;
    for (int i = 0; i < 200000; ++i) {
        // Random float bit patterns of every magnitude, NaNs excluded.
        float x = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
        if (std::isnan(x)) continue;
        if (i % 2 == 0) x = std::ldexp(std::fmod(x, 1.0f) + 1.0f, static_cast<int>(rng() % 48) - 30);
        const auto ref = static_cast<_Float16>(x);
        std::uint16_t ref_bits;
        std::memcpy(&ref_bits, &ref, 2);
        if (half_bits(x) != ref_bits) {
            ++bad;
            INFO("x = " << x);
            CHECK(half_bits(x) == ref_bits);
        }
    }
    CHECK(bad == 0);
}
#endif

TEST_CASE("fp8 e4m3: values on the grid round-trip exactly at any scale", "[codecs]") {
    // Block: 448 s first (so the encoder picks scale s), then 31 codes times s.
    for (const int b : {0, 1, 50, 119, 127, 128, 200, 246}) {
        const double s = std::ldexp(1.0, b - 127);
        for (unsigned first = 0; first < 256; first += 31) {
            std::vector<float> x(32);
            std::vector<unsigned> codes(32, 0x7E);
            x[0] = static_cast<float>(448.0 * s);
            for (unsigned i = 1; i < 32; ++i) {
                unsigned c = (first + i - 1) % 256;
                if ((c & 0x7Fu) == 0x7Fu) c = 0x00; // NaN codes: tested separately
                codes[i] = c;
                x[i] = static_cast<float>(ref_e4m3(c) * s);
            }
            const auto block = fp8_encode_block(x);
            INFO("scale byte " << b << " first code " << first);
            REQUIRE(block.scale_byte == b);
            for (unsigned i = 0; i < 32; ++i) CHECK(block.codes[i] == codes[i]);
            const auto y = round_trip<fp8_e4m3_codec>(x);
            for (unsigned i = 0; i < 32; ++i) CHECK(same_float(y[i], x[i]));
        }
    }
}

TEST_CASE("fp8 e4m3: midpoints between codes round to even, beyond 448 saturates", "[codecs]") {
    std::size_t bad = 0;
    for (unsigned c = 0; c < 0x7E; ++c) {
        for (const float sign : {1.0f, -1.0f}) {
            const double lo = ref_e4m3(c), hi = ref_e4m3(c + 1);
            const auto mid = static_cast<float>(sign * (lo + hi) / 2);
            const unsigned s = sign < 0 ? 0x80u : 0u;
            std::vector<float> x(32, 0.0f);
            x[0] = 448.0f; // unit scale
            x[1] = mid;
            x[2] = std::nextafter(mid, 0.0f);
            x[3] = std::nextafter(mid, sign * inf);
            const auto block = fp8_encode_block(x);
            const unsigned even = ((c & 1u) == 0 ? c : c + 1) | s;
            if (block.scale_byte != 127 || block.codes[1] != even || block.codes[2] != (c | s) ||
                block.codes[3] != ((c + 1) | s)) {
                ++bad;
                INFO("code " << c << " midpoint " << mid);
                CHECK(block.codes[1] == even);
                CHECK(block.codes[2] == (c | s));
                CHECK(block.codes[3] == ((c + 1) | s));
            }
        }
    }
    CHECK(bad == 0);

    // Saturation needs a value beyond 448 s, which only infinity is (the scale follows amax).
    std::vector<float> x(32, 0.5f);
    x[0] = 448.0f;
    x[1] = inf;
    x[2] = -inf;
    auto block = fp8_encode_block(x);
    CHECK(block.scale_byte == 127);
    CHECK(block.codes[1] == 0x7E);
    CHECK(block.codes[2] == 0xFE);
    const auto y = round_trip<fp8_e4m3_codec>(x);
    CHECK(y[1] == 448.0f);
    CHECK(y[2] == -448.0f);
}

TEST_CASE("fp8 e4m3: the block scale is the smallest power of two with amax / s <= 448", "[codecs]") {
    auto scale_byte = [](float amax) {
        std::vector<float> x(32, 0.0f);
        x[5] = -amax;
        x[6] = amax / 3;
        return static_cast<int>(fp8_encode_block(x).scale_byte);
    };
    CHECK(scale_byte(448.0f) == 127);
    CHECK(scale_byte(std::nextafter(448.0f, inf)) == 128);
    CHECK(scale_byte(224.0f) == 126);
    CHECK(scale_byte(1.0f) == 119);
    CHECK(scale_byte(1.75f) == 119);
    CHECK(scale_byte(std::nextafter(1.75f, inf)) == 120);
    CHECK(scale_byte(FLT_MAX) == 247);
    CHECK(scale_byte(1e-40f) == 0); // clamped at 2^-127
    CHECK(scale_byte(std::numeric_limits<float>::denorm_min()) == 0);

    std::mt19937 rng(11);
    std::uniform_real_distribution<float> exponent(-110.0f, 120.0f);
    for (int i = 0; i < 10000; ++i) {
        const float amax = std::exp2(exponent(rng)) * (1.0f + static_cast<float>(rng() % 1000) / 1000.0f);
        const int b = scale_byte(amax);
        const double s = std::ldexp(1.0, b - 127);
        INFO("amax " << amax << " byte " << b);
        REQUIRE(amax / s <= 448.0);
        REQUIRE(amax / (s / 2) > 448.0);
    }
}

TEST_CASE("fp8 e4m3: a large value costs its block's small values precision, within the bound", "[codecs]") {
    // DeepSeek's layout: 8 blocks of 32; +-1000 in block 1 only.
    std::vector<float> x(256);
    for (std::size_t i = 0; i < 256; ++i) x[i] = 0.01f * static_cast<float>(static_cast<int>(i % 17) - 8);
    x[40] = 1000.0f;
    x[41] = -1000.0f;
    const auto bytes = encode<fp8_e4m3_codec>(x);
    REQUIRE(bytes.size() == 264);
    const auto y = decode<fp8_e4m3_codec>(bytes, 256);
    CHECK(fp8_e4m3_codec::block_scale(bytes.data(), 256, 1) == 4.0f); // 1000 / 4 = 250 <= 448
    CHECK(y[40] == 1024.0f);                                          // 250 rounds to 256 (step 16)
    CHECK(y[41] == -1024.0f);
    constexpr auto bound = fp8_e4m3_codec::max_error;
    for (std::size_t i = 0; i < 256; ++i) {
        INFO("value " << i << " = " << x[i] << " decoded " << y[i]);
        const double s = fp8_e4m3_codec::block_scale(bytes.data(), 256, i / 32);
        CHECK(std::abs(static_cast<double>(y[i]) - x[i]) <= bound.at(x[i], s));
        // The other blocks keep their own (much finer) scale.
        if (i / 32 != 1) CHECK(s == 0x1.0p-12); // amax 0.08 = 1.28 * 2^-4
    }
}

TEST_CASE("int8: integers round-trip exactly, halves round to even", "[codecs]") {
    std::vector<float> x(255);
    for (int i = 0; i < 255; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(i - 127);
    const auto bytes = encode<int8_codec>(x);
    REQUIRE(bytes.size() == 259);
    CHECK(int8_codec::row_scale(bytes.data(), 255) == 1.0f);
    CHECK(round_trip<int8_codec>(x) == x);
    for (std::size_t i = 0; i < 255; ++i)
        CHECK(static_cast<int>(static_cast<std::int8_t>(static_cast<std::uint8_t>(bytes[i]))) ==
              static_cast<int>(i) - 127);

    // Scaled by a power of two, still exact.
    std::vector<float> scaled(x);
    for (auto& v : scaled) v = std::ldexp(v, -20);
    CHECK(round_trip<int8_codec>(scaled) == scaled);

    // Scale 1 (amax 127): 2.5 -> 2, 3.5 -> 4, -0.5 -> 0, 126.5 -> 126.
    const std::vector<float> halves = {127.0f, 2.5f, 3.5f, -0.5f, 126.5f, -2.5f, 0.49999997f};
    CHECK(round_trip<int8_codec>(halves) == std::vector<float>{127.0f, 2.0f, 4.0f, 0.0f, 126.0f, -2.0f, 0.0f});
}

// --- error bounds on random data --------------------------------------------------------------

TEMPLATE_TEST_CASE("round trip error stays within the documented bound", "[codecs]", f32_codec, bf16_codec, f16_codec,
                   fp8_e4m3_codec, int8_codec) {
    using C = TestType;
    constexpr auto bound = engram::codec_error_bound_v<C>;
    CHECK(engram::codec_error_bound(C::name) == bound);
    // f16 has 5 exponent bits: keep its wide-range data inside [2^-30, 2^15].
    const bool narrow = std::is_same_v<C, f16_codec>;
    const std::size_t dim = 256;
    double worst = 0; // largest error / bound seen
    for (const auto& x : sample_rows(dim, narrow ? 15.0f : 60.0f, narrow ? -30.0f : -60.0f)) {
        const auto bytes = encode<C>(x);
        REQUIRE(bytes.size() == C::row_bytes(dim));
        const auto y = decode<C>(bytes, dim);
        for (std::size_t i = 0; i < dim; ++i) {
            const double s = scale_of<C>(bytes, dim, i);
            const double err = std::abs(static_cast<double>(y[i]) - x[i]);
            const double allowed = bound.at(x[i], s);
            if (err > allowed) {
                INFO(C::name << ": x = " << x[i] << " decoded " << y[i] << " scale " << s);
                CHECK(err <= allowed);
            }
            if (allowed > 0) worst = std::max(worst, err / allowed);
        }
    }
    INFO(C::name << ": worst error / bound = " << worst);
    CHECK(worst <= 1.0);
    if constexpr (!std::is_same_v<C, f32_codec>) CHECK(worst > 0.4); // the bound is not loose by much
}

TEST_CASE("error bounds: the documented constants", "[codecs]") {
    CHECK(engram::codec_error_bound("f32") == engram::error_bound{0.0, 0.0});
    CHECK(engram::codec_error_bound("bf16").relative == 0x1.0p-8);
    CHECK(engram::codec_error_bound("f16").relative == 0x1.0p-11);
    CHECK(engram::codec_error_bound("f16").absolute == 0x1.0p-25);
    CHECK(engram::codec_error_bound("fp8").relative == 0x1.0p-4);
    CHECK(engram::codec_error_bound("fp8").absolute == 0x1.0p-10);
    CHECK(engram::codec_error_bound("int8").absolute <= 0.5 + 0x1.0p-16);
    STATIC_REQUIRE(fp8_e4m3_codec::max_error.at(-2.0, 8.0) == 2.0 / 16 + 8.0 / 1024);
    REQUIRE_THROWS_AS(engram::codec_error_bound("fp4"), engram::config_error);
}

// --- zeros, NaN, infinity ---------------------------------------------------------------------

TEST_CASE("zero blocks and rows", "[codecs]") {
    SECTION("fp8: a zero block gets scale byte 127 and codes 0, next to a non-zero block") {
        std::vector<float> x(64, 0.0f);
        x[40] = 3.0f;
        x[41] = -0.0f;
        const auto bytes = encode<fp8_e4m3_codec>(x);
        CHECK(static_cast<int>(bytes[64]) == fp8_e4m3_codec::zero_block_scale);
        CHECK(static_cast<int>(bytes[65]) == 120); // 3 <= 448 * 2^-7, not <= 448 * 2^-8
        for (std::size_t i = 0; i < 32; ++i) CHECK(static_cast<int>(bytes[i]) == 0);
        const auto y = decode<fp8_e4m3_codec>(bytes, 64);
        CHECK(y[40] == 3.0f);
        CHECK((y[41] == 0.0f && std::signbit(y[41])));
        for (std::size_t i = 0; i < 32; ++i) CHECK(y[i] == 0.0f);
    }
    SECTION("int8: an all-zero row has scale 0 and decodes to zeros") {
        const std::vector<float> x(10, 0.0f);
        const auto bytes = encode<int8_codec>(x);
        CHECK(int8_codec::row_scale(bytes.data(), 10) == 0.0f);
        CHECK(round_trip<int8_codec>(x) == x);
    }
    SECTION("f16: signed zeros") {
        CHECK(half_bits(0.0f) == 0x0000);
        CHECK(half_bits(-0.0f) == 0x8000);
    }
}

TEST_CASE("NaN and infinity", "[codecs]") {
    SECTION("f16: NaN stays NaN, infinity stays infinity, overflow goes to infinity") {
        const auto y = round_trip<f16_codec>({qnan, -qnan, inf, -inf, 65504.0f, 65519.0f, 65520.0f, -1e6f, 1e38f});
        CHECK(std::isnan(y[0]));
        CHECK(std::isnan(y[1]));
        CHECK(y[2] == inf);
        CHECK(y[3] == -inf);
        CHECK(y[4] == 65504.0f);
        CHECK(y[5] == 65504.0f);
        CHECK(y[6] == inf);
        CHECK(y[7] == -inf);
        CHECK(y[8] == inf);
        CHECK(f16_codec::max_finite == 65504.0f);
    }
    SECTION("fp8: NaN encodes as the NaN code; infinity saturates; neither moves the scale") {
        std::vector<float> x(32, 0.0f);
        x[0] = 2.0f;
        x[1] = qnan;
        x[2] = -qnan;
        x[3] = inf;
        x[4] = -inf;
        const auto block = fp8_encode_block(x);
        CHECK(block.scale_byte == 120); // from amax 2 alone
        CHECK((block.codes[1] & 0x7Fu) == 0x7Fu);
        CHECK((block.codes[2] & 0x7Fu) == 0x7Fu);
        CHECK(block.codes[3] == 0x7E);
        CHECK(block.codes[4] == 0xFE);
        const auto y = round_trip<fp8_e4m3_codec>(x);
        CHECK(y[0] == 2.0f);
        CHECK(std::isnan(y[1]));
        CHECK(std::isnan(y[2]));
        CHECK(y[3] == 448.0f / 128);
        CHECK(y[4] == -448.0f / 128);

        // A block of only NaN and infinity has no finite amax: the zero-block scale.
        const std::vector<float> odd(32, qnan);
        CHECK(fp8_encode_block(odd).scale_byte == fp8_e4m3_codec::zero_block_scale);
        std::vector<float> infs(32, -inf);
        const auto yi = round_trip<fp8_e4m3_codec>(infs);
        CHECK(yi[0] == -448.0f);
    }
    SECTION("int8: NaN encodes as 0, infinity as +-127; the scale comes from the finite values") {
        const auto bytes = encode<int8_codec>({-4.0f, qnan, inf, -inf, 1.0f});
        CHECK(int8_codec::row_scale(bytes.data(), 5) == 4.0f / 127);
        CHECK(static_cast<std::int8_t>(bytes[1]) == 0);
        CHECK(static_cast<std::int8_t>(bytes[2]) == 127);
        CHECK(static_cast<std::int8_t>(bytes[3]) == -127);
        const auto y = decode<int8_codec>(bytes, 5);
        CHECK(std::abs(y[0] + 4.0f) <= 1e-6f);
        CHECK(y[1] == 0.0f);
        CHECK(y[2] == 127 * (4.0f / 127));
        CHECK(std::abs(y[4] - 1.0f) <= 2.0f / 127);
        CHECK(round_trip<int8_codec>({qnan, qnan}) == std::vector<float>{0.0f, 0.0f});
    }
    SECTION("int8: a row at FLT_MAX decodes finite") {
        const auto y = round_trip<int8_codec>({FLT_MAX, -FLT_MAX, 1.0f});
        CHECK(std::isfinite(y[0]));
        CHECK(std::isfinite(y[1]));
        CHECK(std::abs(static_cast<double>(y[0]) - FLT_MAX) <= 0x1.0p-20 * FLT_MAX);
    }
}

// --- dimensions and sizes ---------------------------------------------------------------------

TEST_CASE("check_dim: fp8 needs a positive multiple of 32; the others a positive dim", "[codecs]") {
    REQUIRE_THROWS_AS(fp8_e4m3_codec::check_dim(0), engram::config_error);
    REQUIRE_THROWS_AS(fp8_e4m3_codec::check_dim(100), engram::config_error);
    std::string message;
    try {
        fp8_e4m3_codec::check_dim(33);
    } catch (const engram::config_error& e) {
        message = e.what();
    }
    INFO(message);
    CHECK(message.find("dim (33)") != std::string::npos);
    CHECK(message.find("multiple of 32") != std::string::npos);
    fp8_e4m3_codec::check_dim(32);
    fp8_e4m3_codec::check_dim(7168);
    REQUIRE_THROWS_AS(f16_codec::check_dim(0), engram::config_error);
    REQUIRE_THROWS_AS(int8_codec::check_dim(0), engram::config_error);
    f16_codec::check_dim(3);
    int8_codec::check_dim(3);
    REQUIRE_THROWS_AS(engram::dense_storage::table<fp8_e4m3_codec>(10, 33), engram::config_error);
}

TEST_CASE("row sizes: DeepSeek's FP8 layout is 264 bytes for 256 values", "[codecs]") {
    STATIC_REQUIRE(fp8_e4m3_codec::row_bytes(256) == 264);
    STATIC_REQUIRE(fp8_e4m3_codec::row_bytes(64) == 66);
    STATIC_REQUIRE(f16_codec::row_bytes(64) == 128);
    STATIC_REQUIRE(f16_codec::row_bytes(256) == 512);
    STATIC_REQUIRE(int8_codec::row_bytes(64) == 68);
    STATIC_REQUIRE(int8_codec::row_bytes(256) == 260);
    // The figures docs/codecs.md quotes, from real tables.
    CHECK(engram::dense_storage::table<fp8_e4m3_codec>(4, 256).row_bytes() == 264);
    CHECK(engram::dense_storage::table<fp8_e4m3_codec>(4, 64).row_bytes() == 66);
    CHECK(engram::dense_storage::table<int8_codec>(4, 256).row_bytes() == 260);
    CHECK(engram::dense_storage::table<f16_codec>(4, 64).row_bytes() == 128);
    CHECK(engram::dense_storage::table<bf16_codec>(4, 256).row_bytes() == 512);
    CHECK(engram::dense_storage::table<float>(4, 256).row_bytes() == 1024);
}

// --- dense tables of each codec ---------------------------------------------------------------

TEMPLATE_TEST_CASE("dense table of a codec: set_row, get_row and gather decode to float", "[codecs][storage]",
                   f32_codec, bf16_codec, f16_codec, fp8_e4m3_codec, int8_codec) {
    using C = TestType;
    STATIC_REQUIRE(engram::row_codec<C>);
    STATIC_REQUIRE(engram::storage_policy<engram::dense_storage, C>);
    const std::size_t rows = 40;
    for (const std::size_t dim : {std::size_t{64}, std::size_t{256}}) {
        engram::dense_storage::table<C> table(rows, dim);
        CHECK(table.row_bytes() == C::row_bytes(dim));
        CHECK(table.size_bytes() == rows * C::row_bytes(dim));
        std::mt19937 rng(static_cast<unsigned>(dim));
        std::normal_distribution<float> normal(0.0f, 0.5f);
        std::vector<float> values(rows * dim);
        for (auto& v : values) v = normal(rng);
        for (std::size_t r = 0; r < rows; ++r) table.set_row(r, std::span<const float>(values.data() + r * dim, dim));

        const std::vector<engram::row_id> ids = {39, 0, 7, 7, 21, 38};
        std::vector<float> out(ids.size() * dim, -1.0f);
        engram::gather(table, std::span<const engram::row_id>(ids), std::span<float>(out));
        std::vector<float> row(dim);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const auto r = static_cast<std::size_t>(ids[i]);
            const auto enc = table.encoded_row(r);
            REQUIRE(enc.size() == C::row_bytes(dim));
            C::decode(enc.data(), row.data(), dim);
            std::vector<float> got(row);
            table.get_row(r, std::span<float>(got));
            for (std::size_t c = 0; c < dim; ++c) {
                INFO(C::name << " dim " << dim << " row " << r << " col " << c);
                REQUIRE(out[i * dim + c] == row[c]);
                REQUIRE(got[c] == row[c]);
                // And the decoded value is the stored one within the codec's bound.
                const std::vector<std::byte> bytes(enc.begin(), enc.end());
                const double s = scale_of<C>(bytes, dim, c);
                const double x = values[r * dim + c];
                REQUIRE(std::abs(static_cast<double>(row[c]) - x) <= engram::codec_error_bound_v<C>.at(x, s));
            }
        }
        // Encoding the same values again gives the stored bytes.
        const auto again = encode<C>(std::vector<float>(values.begin() + 7 * dim, values.begin() + 8 * dim));
        const auto stored = table.encoded_row(7);
        CHECK(std::equal(again.begin(), again.end(), stored.begin(), stored.end()));

        REQUIRE_THROWS_AS(table.set_row(rows, std::span<const float>(values.data(), dim)), engram::input_error);
        REQUIRE_THROWS_AS(table.set_row(0, std::span<const float>(values.data(), dim - 1)), engram::input_error);
    }
}

// --- selection by name ------------------------------------------------------------------------

TEST_CASE("dispatch_codec: each name reaches its codec; unknown names are config errors", "[codecs]") {
    for (const std::string name : {"f32", "bf16", "f16", "fp8", "int8"}) {
        const std::string got = engram::dispatch_codec(name, [](auto codec) {
            using C = decltype(codec);
            static_assert(engram::row_codec<C>);
            return std::string(C::name);
        });
        CHECK(got == name);
    }
    CHECK(engram::dispatch_codec("fp8", [](auto c) { return decltype(c)::row_bytes(256); }) == 264);
    CHECK(engram::dispatch_codec("int8", [](auto c) { return decltype(c)::row_bytes(64); }) == 68);
    // A table chosen at run time.
    const std::size_t bytes = engram::dispatch_codec("f16", [](auto c) {
        engram::dense_storage::table<decltype(c)> t(3, 64);
        return t.size_bytes();
    });
    CHECK(bytes == 3 * 128);

    REQUIRE_THROWS_AS(engram::dispatch_codec("fp4", [](auto) { return 0; }), engram::config_error);
    std::string message;
    try {
        engram::dispatch_codec("x", [](auto) {});
    } catch (const engram::config_error& e) {
        message = e.what();
    }
    CHECK(message == "unknown codec 'x' (f32, bf16, f16, fp8, int8)");
}
