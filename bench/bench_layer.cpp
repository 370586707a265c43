// The whole Engram layer at the reference default configuration (tables 5 x 129,280 per order,
// N = 3, K = 8, d = 64: 10,344,164 rows x 64 f32, 2.65 GB; H = 1024, M = 4, Kc = 4) with
// `randomize` weights, single-threaded, next to its limits:
//
//   layer/forward_t512     layer.forward, B = 1, T = 512 (hash, gather, gates, projections,
//                          conv), tokens/s; consecutive slices of the Zipf(1.1) stream
//   layer/gemm_bound_t512  the projections alone: an Eigen GEMM [512, D = 1024] x
//                          [D, (1+M)H = 5120] (a random weight of the layer's shape), tokens/s
//   layer/decode_step      layer.decode_step, one token (tokens/s = steps/s)
//   .../format:N           the projection weights: 0 f32, 1 bf16, 2 bf16 dot products
//                          (weight_format::bf16_dot: weights and memory vectors in bf16)
//   layer/gemm_bf16_dot_t512  the bf16 dot-product GEMM of the projection shapes alone (the
//                          bound of the forward with weight_format::bf16_dot)
//   layer/read_bandwidth   sum of 1 GiB of the table as 64-bit words (bytes/s); the decode
//                          step's bound is its weight bytes (counter weight_bytes on
//                          layer/decode_step, 21.1 MB) / this bandwidth
//
// Building the layer (randomize over 2.65 GB) takes about 20 s on one core before the first
// benchmark.
#include "bench_common.hpp"

#include <engram/kernels/gemm_bf16.hpp>
#include <engram/layer.hpp>

#include <benchmark/benchmark.h>

#include <Eigen/Dense>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace {

namespace eb = engram_bench;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr std::size_t seq = 512;

engram::layer<>& the_layer() {
    static engram::layer<> layer = [] {
        Eigen::setNbThreads(1);
        engram::layer<> l(engram::layer_config{},
                          engram::canonical_table::identity(static_cast<std::size_t>(eb::canonical_vocab)));
        l.randomize(1);
        return l;
    }();
    return layer;
}

std::size_t branch_width() {
    const engram::layer_config cfg;
    return static_cast<std::size_t>(cfg.hidden * cfg.branches);
}

const std::vector<float>& hidden_states() {
    static const auto h = [] {
        std::vector<float> v(seq * branch_width());
        std::mt19937_64 rng(3);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (auto& x : v) x = normal(rng);
        return v;
    }();
    return h;
}

constexpr engram::weight_format formats[] = {engram::weight_format::f32, engram::weight_format::bf16,
                                             engram::weight_format::bf16_dot};

/// Sets the layer's weight format for one benchmark and restores f32 after it.
struct format_scope {
    engram::layer<>& layer;
    format_scope(engram::layer<>& l, const benchmark::State& state) : layer(l) {
        layer.set_weight_format(formats[static_cast<std::size_t>(state.range(0))]);
    }
    ~format_scope() { layer.set_weight_format(engram::weight_format::f32); }
    format_scope(const format_scope&) = delete;
    format_scope& operator=(const format_scope&) = delete;
};

void BM_forward(benchmark::State& state) {
    auto& layer = the_layer();
    const format_scope scope(layer, state);
    const auto& tokens = eb::stream_token_ids();
    const auto& hidden = hidden_states();
    std::vector<float> out(hidden.size());
    static std::size_t at = 0;
    for (auto _ : state) {
        if (at + seq > tokens.size()) at = 0;
        layer.forward(std::span<const engram::token_id>(tokens).subspan(at, seq), 1, seq, hidden, out);
        at += seq;
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * seq));
}

void BM_gemm_bound(benchmark::State& state) {
    const engram::layer_config cfg;
    const auto d = static_cast<Eigen::Index>(cfg.memory_dim());
    const auto width = static_cast<Eigen::Index>((1 + cfg.branches) * cfg.hidden);
    Eigen::setNbThreads(1);
    const matrix x = matrix::Random(static_cast<Eigen::Index>(seq), d);
    const matrix w = matrix::Random(width, d);
    matrix y(static_cast<Eigen::Index>(seq), width);
    for (auto _ : state) {
        y.noalias() = x * w.transpose();
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * seq));
}

void BM_gemm_bf16_dot(benchmark::State& state) {
    const engram::layer_config cfg;
    const auto d = static_cast<std::size_t>(cfg.memory_dim());
    const auto width = static_cast<std::size_t>((1 + cfg.branches) * cfg.hidden);
    const matrix x = matrix::Random(static_cast<Eigen::Index>(seq), static_cast<Eigen::Index>(d));
    const matrix w = matrix::Random(static_cast<Eigen::Index>(width), static_cast<Eigen::Index>(d));
    const engram::kernels::packed_bf16 packed(w.data(), width, d);
    std::vector<std::uint32_t> a(seq * packed.pairs());
    for (std::size_t i = 0; i < seq; ++i)
        engram::kernels::to_bf16_pairs(x.data() + i * d, d, a.data() + i * packed.pairs());
    std::vector<float> y(seq * width), bias(width, 0.0f);
    for (auto _ : state) {
        engram::kernels::gemm_bf16_dot(packed, 0, packed.strips(), a.data(), packed.pairs(), seq, y.data(), width,
                                       bias.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * seq));
}

void BM_read_bandwidth(benchmark::State& state) {
    const auto& table = the_layer().table();
    const std::size_t bytes = std::min<std::size_t>(std::size_t{1} << 30, table.size_bytes());
    const auto* w = reinterpret_cast<const std::uint64_t*>(table.bytes());
    const std::size_t n = bytes / 8;
    for (auto _ : state) {
        std::uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (std::size_t i = 0; i + 4 <= n; i += 4) {
            a0 += w[i];
            a1 += w[i + 1];
            a2 += w[i + 2];
            a3 += w[i + 3];
        }
        benchmark::DoNotOptimize(a0 + a1 + a2 + a3);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(bytes));
}

/// Weight bytes one decode step reads: projections, biases, norms, conv (f32).
double weight_bytes() {
    const engram::layer_config cfg;
    const auto H = static_cast<double>(cfg.hidden), M = static_cast<double>(cfg.branches);
    const auto D = static_cast<double>(cfg.memory_dim()), Kc = static_cast<double>(cfg.kernel_size);
    return 4.0 * ((1 + M) * H * D + (1 + M) * H + 2 * M * H + M * H * Kc + M * H);
}

void BM_decode(benchmark::State& state) {
    auto& layer = the_layer();
    const format_scope scope(layer, state);
    const auto& tokens = eb::stream_token_ids();
    auto st = layer.new_decode_state();
    const std::size_t width = branch_width();
    std::vector<float> in(hidden_states().begin(), hidden_states().begin() + static_cast<std::ptrdiff_t>(width));
    std::vector<float> out(width);
    static std::size_t at = 0;
    for (auto _ : state) {
        layer.decode_step(st, tokens[at], in, out);
        at = (at + 1) % tokens.size();
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
    state.counters["weight_bytes"] = state.range(0) == 0 ? weight_bytes() : weight_bytes() / 2;
}

const bool registered = [] {
    benchmark::RegisterBenchmark("layer/forward_t512", BM_forward)
        ->ArgName("format")
        ->DenseRange(0, 2)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("layer/gemm_bound_t512", BM_gemm_bound)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("layer/gemm_bf16_dot_t512", BM_gemm_bf16_dot)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("layer/decode_step", BM_decode)
        ->ArgName("format")
        ->DenseRange(0, 2)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("layer/read_bandwidth", BM_read_bandwidth)->Unit(benchmark::kMillisecond);
    return true;
}();

} // namespace
