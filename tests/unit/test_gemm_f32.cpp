// The f32 GEMM kernel of the forward against independent answers: packing against the weights
// element by element (float and bf16 sources, every edge of the 16 x 16 transposes and of the
// 32-row strips), the GEMM against double sums (bound from float accumulation), and its split
// invariance (strips and tokens in any grouping give the same bits).

#include <engram/kernels/gemm_f32.hpp>

#include "support/catch.hpp"
#include "support/random_inputs.hpp"

#include <cmath>
#include <cstring>
#include <vector>

namespace {

namespace ek = engram::kernels;
using engram_test::normal_values;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <class W>
void check_packing(const std::vector<W>& w, std::size_t rows, std::size_t cols, std::size_t ldw) {
    const std::size_t strips = (rows + 31) / 32;
    std::vector<float> packed(strips * 32 * cols, -1.0f);
    ek::pack_f32_strips(w.data(), ldw, rows, cols, packed.data());
    for (std::size_t r = 0; r < strips * 32; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
            float want = 0.0f;
            if (r < rows) {
                if constexpr (std::is_same_v<W, float>)
                    want = w[r * ldw + c];
                else
                    want = w[r * ldw + c].to_float();
            }
            if (packed[(r / 32) * 32 * cols + c * 32 + r % 32] != want)
                FAIL("rows " << rows << ", cols " << cols << ": (" << r << ", " << c << ")");
        }
}

} // namespace

TEST_CASE("pack_f32_strips: every weight in its place, zeros past the last row", "[kernels][gemm]") {
    if (!ek::gemm_f32_available()) {
        WARN("no AVX-512 F/BW on this CPU: the layer uses Eigen's GEMM; nothing to test here");
        return;
    }
    for (auto [rows, cols] :
         {std::pair<std::size_t, std::size_t>{1, 1}, {16, 16}, {31, 15}, {32, 17}, {33, 64}, {70, 100}, {512, 33}}) {
        const std::size_t ldw = cols + 5; // a row stride wider than the columns
        const auto w = normal_values(rows * ldw, rows * 7 + cols);
        check_packing(w, rows, cols, ldw);
        std::vector<engram::bfloat16> w16(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) w16[i] = engram::bfloat16::from_float(w[i]);
        check_packing(w16, rows, cols, ldw);
    }
}

TEST_CASE("gemm_f32_packed: within float accumulation of the exact product, split-invariant", "[kernels][gemm]") {
    if (!ek::gemm_f32_available()) {
        WARN("no AVX-512 F/BW on this CPU: the layer uses Eigen's GEMM; nothing to test here");
        return;
    }
    // Token tails of the 8-token tile, strip tails, odd columns.
    for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {31, 33}, {64, 96}, {100, 1030}}) {
        for (std::size_t n : {1u, 7u, 8u, 9u, 21u}) {
            const auto w = normal_values(rows * cols, rows * 3 + cols);
            const auto a = normal_values(n * cols, n + 11 * cols);
            const auto bias = normal_values(rows, 5);
            std::vector<float> packed(((rows + 31) / 32) * 32 * cols);
            ek::pack_f32_strips(w.data(), cols, rows, cols, packed.data());
            const std::size_t ldc = rows + 3;
            std::vector<float> c(n * ldc, 7.0f);
            ek::gemm_f32_packed(packed.data(), rows, cols, a.data(), cols, n, bias.data(), c.data(), ldc);
            const double gamma = static_cast<double>(cols + 2) * 0x1p-24;
            for (std::size_t i = 0; i < n; ++i) {
                for (std::size_t r = 0; r < rows; ++r) {
                    double exact = bias[r], mag = std::fabs(bias[r]);
                    for (std::size_t k = 0; k < cols; ++k) {
                        const double t = static_cast<double>(w[r * cols + k]) * a[i * cols + k];
                        exact += t;
                        mag += std::fabs(t);
                    }
                    if (!(std::fabs(c[i * ldc + r] - exact) <= gamma * mag))
                        FAIL("rows " << rows << ", cols " << cols << ", n " << n << ": (" << i << ", " << r << ")");
                }
                for (std::size_t r = rows; r < ldc; ++r) CHECK(c[i * ldc + r] == 7.0f); // nothing past the rows
            }
            // Strips and tokens split in two: the same bits.
            const std::size_t cut_rows = rows > 32 ? 32 : rows, cut_n = n / 2;
            std::vector<float> split(n * ldc, 7.0f);
            for (auto [i0, i1] : {std::pair{std::size_t{0}, cut_n}, std::pair{cut_n, n}}) {
                ek::gemm_f32_packed(packed.data(), cut_rows, cols, a.data() + i0 * cols, cols, i1 - i0, bias.data(),
                                    split.data() + i0 * ldc, ldc);
                if (rows > cut_rows)
                    ek::gemm_f32_packed(packed.data() + cut_rows * cols, rows - cut_rows, cols, a.data() + i0 * cols,
                                        cols, i1 - i0, bias.data() + cut_rows, split.data() + i0 * ldc + cut_rows, ldc);
            }
            INFO("rows " << rows << ", cols " << cols << ", n " << n);
            CHECK(same_bits(split, c));
        }
    }
}
