// The oneDNN matmul backend (engram::onednn): every format against the same oracles as
// host_matmul (tests/support/matmul_checks.hpp), both decode paths, int8 bit for bit against
// host_matmul, and layers with onednn_matmul against layers with host_matmul.

#include <engram/layer.hpp>
#include <engram/matmul/onednn.hpp>

#include "support/catch.hpp"
#include "support/matmul_checks.hpp"
#include "support/random_inputs.hpp"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <omp.h>

namespace {

using engram_test::make_matmul_case;
using engram_test::matmul_inputs;
using engram_test::same_bits;

struct onednn_policies : engram::layer_policies {
    using matmul_type = engram::onednn_matmul;
};

/// ONEDNN_MAX_CPU_ISA, when ctest runs this binary a second time with oneDNN held below AVX-512.
std::string max_isa() {
    const char* v = std::getenv("ONEDNN_MAX_CPU_ISA");
    return v != nullptr ? v : "";
}

/// Whether /proc/cpuinfo lists `flag` (e.g. amx_bf16).
bool cpu_has(const std::string& flag) {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0) return (line + ' ').find(' ' + flag + ' ') != std::string::npos;
    return false;
}

} // namespace

TEST_CASE("onednn_matmul: which kernels run here", "[matmul][onednn]") {
    const auto c = make_matmul_case(650, 1030, 3);
    engram::onednn_matmul backend;
    const bool amx = cpu_has("amx_bf16") && cpu_has("amx_int8");
    const bool held_back = !max_isa().empty();
    std::cout << "onednn_matmul on this CPU" << (held_back ? " with ONEDNN_MAX_CPU_ISA=" + max_isa() : "") << ":\n";
    if (!amx) std::cout << "  skipped: oneDNN's AMX kernels (no amx-bf16/amx-int8 on this CPU)\n";
    for (auto f : {engram::weight_format::bf16_dot, engram::weight_format::int8}) {
        backend.set_format(c.view(), f);
        const std::string path = backend.forward_path();
        std::cout << "  " << engram::to_string(f) << ": forward " << path << ", decode " << backend.decode_path()
                  << '\n';
        if (held_back) {
            // Below AVX-512 oneDNN has other kernels or none (then host_matmul runs, and says why).
            if (path.rfind("onednn: ", 0) == 0)
                CHECK(path.find("avx512") == std::string::npos);
            else
                CHECK(path.find("(oneDNN: no ") != std::string::npos);
        } else {
            CHECK(path.rfind("onednn: ", 0) == 0);
            if (amx) CHECK(path.find("amx") != std::string::npos);
        }
    }
    backend.set_format(c.view(), engram::weight_format::f32);
    CHECK(backend.forward_path() == engram::host_matmul{}.forward_path()); // f32 runs host_matmul
}

TEST_CASE("onednn_matmul: the threads of a call are its own, the caller's OpenMP setting is restored",
          "[matmul][onednn]") {
    const auto c = make_matmul_case(520, 96, 4);
    const auto e = matmul_inputs(40, c.cols, 5);
    engram::onednn_matmul backend;
    backend.set_format(c.view(), engram::weight_format::int8);
    omp_set_num_threads(3);
    std::vector<float> one(40 * c.rows), two(40 * c.rows);
    backend.forward(c.view(), e.data(), 40, one.data(), 1);
    CHECK(omp_get_max_threads() == 3);
    backend.forward(c.view(), e.data(), 40, two.data(), 2);
    CHECK(omp_get_max_threads() == 3);
    CHECK(same_bits(one, two));
}

TEST_CASE("onednn_matmul: every format against its oracle, both decode paths", "[matmul][onednn]") {
    for (auto choice : {engram::onednn_matmul::decode_choice::ours, engram::onednn_matmul::decode_choice::onednn,
                        engram::onednn_matmul::decode_choice::fastest}) {
        engram::onednn_matmul backend;
        backend.set_decode(choice);
        // oneDNN's float sums differ from ours in order (forward vs decode, and maybe threads):
        // bf16_dot is checked against the oracle's bound there, not bit for bit.
        engram_test::check_matmul_backend(backend, {.decode_bits_bf16_dot = false, .thread_bits_float = false});
    }
}

TEST_CASE("onednn_matmul int8 gives host_matmul's bits", "[matmul][onednn][int8]") {
    const auto c = make_matmul_case(1040, 1030, 5);
    const std::size_t n = 37;
    const auto e = matmul_inputs(n, c.cols, 9);
    engram::onednn_matmul dnnl;
    engram::host_matmul host;
    dnnl.set_format(c.view(), engram::weight_format::int8);
    host.set_format(c.view(), engram::weight_format::int8);
    std::vector<float> a(n * c.rows), b(n * c.rows);
    dnnl.forward(c.view(), e.data(), n, a.data(), 2);
    host.forward(c.view(), e.data(), n, b.data(), 1);
    CHECK(same_bits(a, b));
}

TEST_CASE("layer with onednn_matmul: int8 and f32 as host_matmul's bits, bf16_dot within rounding",
          "[matmul][onednn][layer]") {
    const auto cfg = engram_test::small_layer_config(96, 2);
    engram::layer<> host(cfg, engram::canonical_table::identity(500));
    engram::layer<onednn_policies> dnnl(cfg, engram::canonical_table::identity(500));
    host.randomize(4, 0.3f);
    dnnl.randomize(4, 0.3f);
    const std::size_t T = 600, MH = 2 * 96; // two blocks: primitives for M = 512 and M = 88
    const auto ids = engram_test::token_ids(T, 5);
    const auto hidden = engram_test::normal_values(T * MH, 6);
    for (auto f : {engram::weight_format::f32, engram::weight_format::int8, engram::weight_format::bf16_dot}) {
        CAPTURE(std::string(engram::to_string(f)));
        host.set_weight_format(f);
        dnnl.set_weight_format(f);
        std::vector<float> a(T * MH), b(T * MH), steps(T * MH);
        host.forward(ids, 1, T, hidden, a);
        dnnl.set_threads(2);
        dnnl.forward(ids, 1, T, hidden, b);
        auto state = dnnl.new_decode_state();
        for (std::size_t t = 0; t < 20; ++t)
            dnnl.decode_step(state, ids[t], std::span<const float>(hidden).subspan(t * MH, MH),
                             std::span<float>(steps).subspan(t * MH, MH));
        if (f == engram::weight_format::bf16_dot) {
            double diff = 0, scale = 0;
            for (std::size_t i = 0; i < a.size(); ++i) {
                diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
                scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
            }
            CHECK(diff / scale < 1e-4);
        } else {
            CHECK(same_bits(a, b));
        }
        if (f == engram::weight_format::int8) { // decode = forward: int8 only (f32's GEMV sums in another order)
            CHECK(std::equal(steps.begin(), steps.begin() + 20 * MH, a.begin(),
                             [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; }));
        }
    }
}
