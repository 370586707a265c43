// The matmul seam: host_matmul's every format on this CPU against oracles from the formats'
// definitions (tests/support/matmul_checks.hpp), the int8 kernels' paths against each other,
// and the layer with int8 weights (forward = decode, bit for bit; close to f32).

#include <engram/kernels/gemm_int8.hpp>
#include <engram/layer.hpp>
#include <engram/matmul/host.hpp>

#include "support/catch.hpp"
#include "support/matmul_checks.hpp"
#include "support/random_inputs.hpp"

#include <cstring>
#include <iostream>
#include <limits>
#include <vector>

namespace {

namespace ek = engram::kernels;
using engram_test::int8_oracle;
using engram_test::make_matmul_case;
using engram_test::matmul_inputs;
using engram_test::same_bits;

void print_paths_once() {
    static bool done = false;
    if (done) return;
    done = true;
    std::cout << "host_matmul on this CPU: int8 " << (ek::gemm_int8_uses_vnni() ? "AVX512-VNNI" : "portable")
              << ", bf16_dot " << (ek::gemm_bf16_uses_avx512() ? "AVX512_BF16" : "portable") << ", f32 "
              << (ek::gemm_f32_available() ? "AVX-512 strips" : "Eigen") << '\n';
    if (!ek::gemm_int8_uses_vnni()) std::cout << "  skipped: the VNNI int8 kernel (no avx512_vnni on this CPU)\n";
    if (!ek::gemm_bf16_uses_avx512()) std::cout << "  skipped: the AVX512_BF16 kernel (no avx512_bf16 on this CPU)\n";
}

} // namespace

TEST_CASE("quantize_int8: symmetric per-vector scale, round half to even, zero and non-finite vectors",
          "[matmul][int8]") {
    const float x[] = {1.27f, -0.635f, 0.005f, 0.015f, 0.0f, -1.27f};
    std::int8_t q[6];
    const float s = ek::quantize_int8(x, 6, q);
    CHECK(s == 1.27f / 127.0f);
    // 0.005 * 100 = 0.5 -> 0 (even), 0.015 * 100 = 1.5 -> 2, -0.635 * 100 = -63.5 -> -64.
    const std::int8_t want[] = {127, -64, 0, 2, 0, -127};
    for (int i = 0; i < 6; ++i) CHECK(int{q[i]} == int{want[i]});
    const float zeros[3] = {};
    CHECK(ek::quantize_int8(zeros, 3, q) == 1.0f);
    CHECK((q[0] == 0 && q[1] == 0 && q[2] == 0));
    const float bad[2] = {std::numeric_limits<float>::infinity(), 1.0f};
    ek::quantize_int8(bad, 2, q);
    CHECK((q[0] == 0 && q[1] == 0));
}

TEST_CASE("int8 activations: the dispatched quantisation (AVX-512 here if the CPU has it) gives the portable bits",
          "[matmul][int8]") {
    if (!ek::int8_steps_use_avx512())
        std::cout << "  note: the AVX-512 int8 quantise/scale steps are not on this CPU: both runs are portable\n";
    std::vector<float> x = matmul_inputs(6, 37, 4);         // 37: a masked tail
    x[37 + 5] = std::numeric_limits<float>::quiet_NaN();    // token 1: a NaN (ignored, quantised to 0)
    x[3 * 37 + 1] = std::numeric_limits<float>::infinity(); // token 3: an infinity (all zeros)
    for (std::size_t k = 0; k < 37; ++k) x[4 * 37 + k] = 1e-40f * static_cast<float>(k); // token 4: subnormals
    ek::int8_activations a, b;
    a.quantize(x.data(), 6, 37, 10);
    b.quantize_portable(x.data(), 6, 37, 10);
    CHECK(a.stride == 40);
    CHECK(std::memcmp(a.u.data(), b.u.data(), 6 * 40) == 0);
    CHECK(std::memcmp(a.scale.data(), b.scale.data(), 6 * sizeof(float)) == 0);
    CHECK(int{b.u[40 + 5]} == 128); // token 1 starts at the stride (40)
    CHECK(b.scale[3] == 1.0f);
    // The scaling step.
    const auto c = make_matmul_case(37, 8, 2);
    const ek::packed_int8 w(c.w.data(), 37, 8, 8);
    std::vector<std::int32_t> acc(37);
    for (std::size_t i = 0; i < acc.size(); ++i) acc[i] = static_cast<std::int32_t>(i * 7919) - 100000;
    std::vector<float> p1(37), p2(37);
    ek::int8_finish(acc.data(), w, 0.013f, c.bias.data(), p1.data(), 0, 37);
    ek::int8_finish_portable(acc.data(), w, 0.013f, c.bias.data(), p2.data(), 0, 37);
    CHECK(same_bits(p1, p2));
}

TEST_CASE("int8 kernels: the portable and the VNNI path give the oracle's bits", "[matmul][int8]") {
    print_paths_once();
    for (auto [rows, cols, n] : {std::tuple<std::size_t, std::size_t, std::size_t>{33, 7, 9},
                                 {650, 1030, 17},
                                 {16, 4, 1},
                                 {650, 1030, 1},
                                 {200, 64, 1}}) { // one token: strips in groups of 8, a tail
        const auto c = make_matmul_case(rows, cols, rows + cols);
        const auto e = matmul_inputs(n, cols, n);
        const ek::packed_int8 w(c.w.data(), rows, cols, cols);
        ek::int8_activations a;
        a.quantize(e.data(), n, cols, w.k4());
        std::vector<float> portable(n * rows), dispatched(n * rows);
        ek::gemm_int8_portable(w, 0, w.strips(), a, n, c.bias.data(), portable.data(), rows);
        ek::gemm_int8(w, 0, w.strips(), a, n, c.bias.data(), dispatched.data(), rows);
        const auto oracle = int8_oracle::run(c, e, n);
        CHECK(same_bits(portable, oracle));
        CHECK(same_bits(dispatched, oracle));
        // Any split of the strips gives the same bits.
        std::vector<float> split(n * rows);
        const std::size_t mid = w.strips() / 2;
        ek::gemm_int8(w, 0, mid, a, n, c.bias.data(), split.data(), rows);
        ek::gemm_int8(w, mid, w.strips(), a, n, c.bias.data(), split.data(), rows);
        CHECK(same_bits(split, oracle));
    }
}

TEST_CASE("host_matmul: every format against its oracle, forward = gemv, threads", "[matmul]") {
    print_paths_once();
    engram::host_matmul backend;
    CHECK(backend.format() == engram::weight_format::f32);
    engram_test::check_matmul_backend(backend);
    const auto c = make_matmul_case(32, 8, 1);
    CHECK_THROWS_AS(backend.set_format(c.view(), static_cast<engram::weight_format>(9)), engram::config_error);
}

TEST_CASE("weight formats by name", "[matmul]") {
    for (auto f : {engram::weight_format::f32, engram::weight_format::bf16, engram::weight_format::bf16_dot,
                   engram::weight_format::int8})
        CHECK(engram::parse_weight_format(engram::to_string(f)) == f);
    CHECK_FALSE(engram::parse_weight_format("fp8").has_value());
}

TEST_CASE("layer with int8 weights: forward and decode give the same bits, close to f32", "[matmul][layer]") {
    const auto cfg = engram_test::small_layer_config(64, 2);
    engram::layer<> f32(cfg, engram::canonical_table::identity(500)), q(cfg, engram::canonical_table::identity(500));
    f32.randomize(3, 0.3f);
    q.randomize(3, 0.3f);
    q.set_weight_format(engram::weight_format::int8);
    CHECK(q.projection_format() == engram::weight_format::int8);
    const std::size_t T = 40, MH = 2 * 64;
    const auto ids = engram_test::token_ids(T, 77);
    const auto hidden = engram_test::normal_values(T * MH, 78);
    std::vector<float> ref(T * MH), got(T * MH), steps(T * MH);
    f32.forward(ids, 1, T, hidden, ref);
    q.forward(ids, 1, T, hidden, got);
    auto state = q.new_decode_state();
    for (std::size_t t = 0; t < T; ++t)
        q.decode_step(state, ids[t], std::span<const float>(hidden).subspan(t * MH, MH),
                      std::span<float>(steps).subspan(t * MH, MH));
    CHECK(same_bits(got, steps));
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
    }
    INFO("int8 vs f32, largest difference / largest value: " << diff / scale);
    CHECK(diff / scale < 0.05);
    CHECK(diff > 0);
}
