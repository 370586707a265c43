// The bf16 dot-product kernels against independent answers: packing and rounding against
// bfloat16::from_float element by element, the GEMM and GEMV against double sums of the same
// bf16 products (bound from float accumulation), and their split invariance (any split of the
// strips or tokens, and the GEMV against the GEMM's first token, give the same bits).

#include <engram/kernels/gemm_bf16.hpp>

#include "support/catch.hpp"
#include "support/random_inputs.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

namespace ek = engram::kernels;
using engram::bfloat16;
using engram_test::normal_values;

float round_bf16(float x) { return bfloat16::from_float(x).to_float(); }

/// Element i of a pairs array, widened.
float pair_element(const std::vector<std::uint32_t>& a, std::size_t i) {
    const std::uint32_t w = a[i / 2];
    return std::bit_cast<float>(i % 2 == 0 ? w << 16 : w & 0xFFFF0000u);
}

std::vector<std::uint32_t> to_pairs(const std::vector<float>& x, std::size_t n_rows, std::size_t cols) {
    const std::size_t pairs = (cols + 1) / 2;
    std::vector<std::uint32_t> a(n_rows * pairs, 0xDEADBEEFu);
    for (std::size_t i = 0; i < n_rows; ++i) ek::to_bf16_pairs(x.data() + i * cols, cols, a.data() + i * pairs);
    return a;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

} // namespace

TEST_CASE("to_bf16_pairs rounds every element as bfloat16::from_float", "[kernels][bf16]") {
    std::vector<float> x = normal_values(200, 1);
    // Ties (round to even both ways), the largest finite, infinities, NaNs, zeros, a subnormal.
    const float special[] = {std::bit_cast<float>(0x3F808000u),
                             std::bit_cast<float>(0x3F818000u),
                             std::bit_cast<float>(0x3F80FFFFu),
                             std::numeric_limits<float>::max(),
                             std::numeric_limits<float>::infinity(),
                             -std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::quiet_NaN(),
                             std::bit_cast<float>(0x7F800001u),
                             0.0f,
                             -0.0f,
                             std::numeric_limits<float>::denorm_min(),
                             -1.0f};
    for (std::size_t i = 0; i < std::size(special); ++i) x[3 * i + 5] = special[i];
    for (std::size_t n : {0u, 1u, 2u, 31u, 32u, 33u, 64u, 95u, 200u}) {
        std::vector<std::uint32_t> out((n + 1) / 2 + 1, 0xDEADBEEFu);
        ek::to_bf16_pairs(x.data(), n, out.data());
        for (std::size_t i = 0; i < n; ++i) {
            INFO("n = " << n << ", i = " << i << ", x = " << x[i]);
            const std::uint32_t w = out[i / 2];
            CHECK((i % 2 == 0 ? w & 0xFFFFu : w >> 16) == bfloat16::from_float(x[i]).bits);
        }
        if (n % 2 == 1) CHECK(out[n / 2] >> 16 == 0u); // the missing half is zero
        CHECK(out[(n + 1) / 2] == 0xDEADBEEFu);        // nothing written past the end
    }
}

TEST_CASE("packed_bf16 holds every weight rounded, zeros past the edges", "[kernels][bf16]") {
    for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {31, 7}, {32, 64}, {33, 95}, {70, 2}}) {
        const auto w = normal_values(rows * cols, rows + 100 * cols);
        const ek::packed_bf16 p(w.data(), rows, cols);
        CHECK(p.rows() == rows);
        CHECK(p.cols() == cols);
        CHECK(p.pairs() == (cols + 1) / 2);
        CHECK(p.strips() == (rows + 31) / 32);
        CHECK(p.bytes() == p.strips() * 32 * p.pairs() * 4);
        for (std::size_t r = 0; r < p.strips() * 32; ++r)
            for (std::size_t c = 0; c < 2 * p.pairs(); ++c) {
                const float want = r < rows && c < cols ? round_bf16(w[r * cols + c]) : 0.0f;
                if (p.at(r, c) != want) FAIL("rows " << rows << ", cols " << cols << ": (" << r << ", " << c << ")");
            }
    }
}

TEST_CASE("bf16 GEMM and GEMV: within float accumulation of the exact sum of the bf16 products", "[kernels][bf16]") {
    // Shapes: tails of the 12-token tile, of the 32-row strip, odd columns, two column passes.
    const std::pair<std::size_t, std::size_t> shapes[] = {{1, 1},   {31, 33},    {32, 64},
                                                          {45, 95}, {100, 1024}, {33, 1100}};
    for (auto [rows, cols] : shapes) {
        for (std::size_t n : {1u, 5u, 12u, 13u, 25u}) {
            const auto w = normal_values(rows * cols, rows * 31 + cols);
            const auto x = normal_values(n * cols, n + cols);
            const auto bias = normal_values(rows, 7);
            const ek::packed_bf16 p(w.data(), rows, cols);
            const auto a = to_pairs(x, n, cols);
            const std::size_t ldc = rows + 3; // a row stride wider than the rows
            std::vector<float> c(n * ldc, -7.0f);
            for (std::size_t i = 0; i < n; ++i)
                for (std::size_t r = 0; r < rows; ++r) c[i * ldc + r] = bias[r];
            ek::gemm_bf16_dot(p, 0, p.strips(), a.data(), p.pairs(), n, c.data(), ldc);
            const double gamma = static_cast<double>(cols + 2) * 0x1p-24;
            for (std::size_t i = 0; i < n; ++i) {
                for (std::size_t r = 0; r < rows; ++r) {
                    double exact = bias[r], abs_sum = std::fabs(bias[r]);
                    for (std::size_t k = 0; k < cols; ++k) {
                        const double prod = static_cast<double>(p.at(r, k)) * round_bf16(x[i * cols + k]);
                        exact += prod;
                        abs_sum += std::fabs(prod);
                    }
                    if (!(std::fabs(c[i * ldc + r] - exact) <= gamma * abs_sum))
                        FAIL("rows " << rows << ", cols " << cols << ", n " << n << ": (" << i << ", " << r
                                     << ") = " << c[i * ldc + r] << ", exact " << exact);
                }
                for (std::size_t r = rows; r < ldc; ++r) CHECK(c[i * ldc + r] == -7.0f); // padding untouched
            }

            // Started from the bias instead of C: C's old values are not read, the same bits.
            std::vector<float> from_bias(n * ldc, std::numeric_limits<float>::quiet_NaN());
            for (std::size_t i = 0; i < n; ++i)
                for (std::size_t r = rows; r < ldc; ++r) from_bias[i * ldc + r] = -7.0f;
            ek::gemm_bf16_dot(p, 0, p.strips(), a.data(), p.pairs(), n, from_bias.data(), ldc, bias.data());
            CHECK(same_bits(from_bias, c));

            // Any split of the strips and of the tokens gives the same bits.
            std::vector<float> split(n * ldc, -7.0f);
            for (std::size_t i = 0; i < n; ++i)
                for (std::size_t r = 0; r < rows; ++r) split[i * ldc + r] = bias[r];
            const std::size_t half_n = n / 2, mid_strip = p.strips() / 2;
            for (auto [s0, s1] : {std::pair{std::size_t{0}, mid_strip}, std::pair{mid_strip, p.strips()}}) {
                ek::gemm_bf16_dot(p, s0, s1, a.data(), p.pairs(), half_n, split.data(), ldc);
                ek::gemm_bf16_dot(p, s0, s1, a.data() + half_n * p.pairs(), p.pairs(), n - half_n,
                                  split.data() + half_n * ldc, ldc);
            }
            INFO("rows " << rows << ", cols " << cols << ", n " << n);
            CHECK(same_bits(split, c));

            // The GEMV of the first token is the GEMM's first row, bit for bit.
            std::vector<float> y(bias.begin(), bias.end());
            ek::gemv_bf16_dot(p, a.data(), y.data());
            CHECK(same_bits(y, std::vector<float>(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(rows))));
        }
    }
}

TEST_CASE("bf16 GEMV: every strip group and tail against the exact sum", "[kernels][bf16]") {
    // 4-strip groups plus 0..3 whole strips plus a partial strip.
    for (std::size_t rows : {32u, 128u, 160u, 200u, 257u, 5120u}) {
        const std::size_t cols = 96;
        const auto w = normal_values(rows * cols, rows);
        const auto x = normal_values(cols, 3);
        const ek::packed_bf16 p(w.data(), rows, cols);
        const auto a = to_pairs(x, 1, cols);
        std::vector<float> y(rows + 1, 0.0f);
        y[rows] = 42.0f;
        ek::gemv_bf16_dot(p, a.data(), y.data());
        CHECK(y[rows] == 42.0f);
        for (std::size_t r = 0; r < rows; ++r) {
            double exact = 0, abs_sum = 0;
            for (std::size_t k = 0; k < cols; ++k) {
                const double prod = static_cast<double>(p.at(r, k)) * pair_element(a, k);
                exact += prod;
                abs_sum += std::fabs(prod);
            }
            if (!(std::fabs(y[r] - exact) <= 100 * 0x1p-24 * abs_sum)) FAIL("rows " << rows << ", row " << r);
        }
    }
}
