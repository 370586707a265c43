// SPDX-License-Identifier: MIT
// engram's CUDA benchmarks (needs a GPU; prints why it stops otherwise):
//   gather: our decode-gather of V4.1 rows (FP8 codes + UE8M0 scales, 264 bytes) from device
//           memory vs a same-run probe that moves the same bytes without decoding (goal >= 0.8);
//   uva:    hash + gather latency of 1, 2 and 4 tokens from a pinned host table (UVA);
//   overlap: a forward whose lookup was prefetched one layer ahead vs one that looks up itself.
// Usage: bench_cuda [--quick]. One JSON object per line, then a summary.
#include <engram/cuda/engram.cuh>
#include <engram/hash/layout.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/layer/projection.hpp>
#include <engram/ngram/orders.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace engram;

namespace {

/// The probe: the gather's access pattern (the same lanes a row, 16-byte loads of codes, one
/// scale byte, 16-byte stores of the f32 output's size) without decoding: the memory traffic of
/// the gather and nothing else.
__global__ void probe_rows(const std::byte* codes, const std::byte* scales, std::size_t dim, const std::int64_t* ids,
                           std::size_t count, uint4* out) {
    const std::size_t chunks = dim / 16, out_chunks = dim * 4 / 16; // f32 output: 4 bytes a value
    const bodies::row_lanes split(chunks);
    const unsigned lanes = split.lanes, lane = threadIdx.x & 31u;
    const std::size_t sub = split.first_chunk(lane);
    const std::size_t warp = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const std::size_t warps = static_cast<std::size_t>(gridDim.x) * blockDim.x / 32;
    for (std::size_t i = split.first_row(warp, lane); i < count; i += split.row_step(warps)) {
        const auto r = static_cast<std::size_t>(ids[i]);
        for (std::size_t c = sub; c < chunks; c += lanes) {
            uint4 v = reinterpret_cast<const uint4*>(codes + r * dim)[c];
            v.x ^= static_cast<unsigned>(scales[r * (dim / 32) + c / 2]);
            for (std::size_t k = 0; k < out_chunks / chunks; ++k)
                out[i * out_chunks + c * (out_chunks / chunks) + k] = v;
        }
    }
}

__global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

struct timer {
    cuda::event a{true}, b{true};
    void start(cudaStream_t s) { a.record(s); }
    float stop_ms(cudaStream_t s) {
        b.record(s);
        cuda::check(cudaEventSynchronize(b.get()), "sync");
        float ms = 0;
        cuda::check(cudaEventElapsedTime(&ms, a.get(), b.get()), "elapsed");
        return ms;
    }
};

template <class F>
float best_ms(int reps, F&& f) {
    float best = 1e30f;
    timer t;
    for (int r = 0; r < reps; ++r) {
        t.start(nullptr);
        f();
        best = std::min(best, t.stop_ms(nullptr));
    }
    return best;
}

struct production_policies {
    using hash_type = multiply_xor_family;
    using orders_type = orders<2, 3, 4>;
    using gate_type = copysign_gate;
    using fusion_type = production_fusion;
    using projection_type = plain_projection;
    using backend_type = cuda_backend;
};

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed, unsigned char hi = 255) {
    std::vector<std::byte> v(n);
    std::mt19937_64 rng(seed);
    for (std::size_t i = 0; i < n; i += 8) {
        std::uint64_t x = rng();
        for (std::size_t k = i; k < i + 8 && k < n; ++k, x >>= 8)
            v[k] = static_cast<std::byte>((x & 0xFFu) % (hi + 1u));
    }
    return v;
}

} // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    const std::string why = cuda::unavailable_reason();
    if (!why.empty()) {
        std::printf("bench_cuda: skipped: %s\n", why.c_str());
        return 0;
    }
    cudaDeviceProp prop{};
    cuda::check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("{\"device\": \"%s\", \"sm\": %d%d, \"sms\": %d}\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount);

    // ---- gather vs probe: V4.1 rows (256 FP8 codes + 8 scale bytes) from device memory ----
    const std::size_t dim = 256, rows = quick ? (1u << 20) : (8u << 20), count = quick ? (1u << 18) : (1u << 21);
    const auto codes = random_bytes(rows * dim, 1, 0x7E);
    const auto scales = random_bytes(rows * dim / 32, 2, 140);
    table_view tv;
    tv.encoding = row_encoding::fp8_split;
    tv.rows = codes.data();
    tv.scales = scales.data();
    tv.count = rows;
    tv.dim = dim;
    tv.row_bytes = dim;
    cuda::device_table dt(tv, cuda::table_placement::device);
    std::vector<std::int64_t> ids(count);
    std::mt19937_64 rng(3);
    for (auto& i : ids) i = static_cast<std::int64_t>(rng() % rows);
    cuda::device_buffer<std::int64_t> d_ids;
    d_ids.upload(std::span<const std::int64_t>(ids));
    cuda::device_buffer<float> out(count * dim);
    const int reps = quick ? 5 : 20;
    const float ours = best_ms(reps, [&] { cuda::gather(dt, d_ids.data(), count, out.data()); });
    const unsigned grid = cuda::gather_grid(count, {});
    const float probe = best_ms(reps, [&] {
        probe_rows<<<grid, cuda::block_threads>>>(dt.view().rows, dt.view().scales, dim, d_ids.data(), count,
                                                  reinterpret_cast<uint4*>(out.data()));
    });
    const double ours_rows = static_cast<double>(count) / (ours * 1e-3),
                 probe_rows_s = static_cast<double>(count) / (probe * 1e-3);
    std::printf("{\"gather_v41_device_mrows_s\": %.1f, \"gather_probe_mrows_s\": %.1f, \"gather_vs_probe\": %.3f, "
                "\"gather_gb_s\": %.1f}\n",
                ours_rows / 1e6, probe_rows_s / 1e6, probe / ours, ours_rows * (264.0 + 1024.0) / 1e9);

    // ---- UVA lookup latency: 1, 2, 4 tokens, 24 heads (orders 2..4 x 8), pinned host table ----
    hash_config hc;
    hc.max_ngram = 4;
    hc.table_size_per_ngram = {50000, 50000, 50000};
    hc.embed_per_ngram = 2048; // 8 heads of 256 values
    hc.layer_ids = {1};
    const token_id vocab = 129280;
    const auto layout = make_layout(hc, 1, vocab, 2);
    std::vector<token_id> lookup(static_cast<std::size_t>(vocab));
    for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<token_id>(i);
    cuda::layer_hash lh(std::span<const layer_layout>(&layout, 1), lookup);
    const auto ucodes = random_bytes(static_cast<std::size_t>(layout.total_rows) * dim, 4, 0x7E);
    const auto uscales = random_bytes(static_cast<std::size_t>(layout.total_rows) * dim / 32, 5, 140);
    table_view uv = tv;
    uv.rows = ucodes.data();
    uv.scales = uscales.data();
    uv.count = static_cast<std::size_t>(layout.total_rows);
    cuda::device_table pinned(uv, cuda::table_placement::host_pinned);
    cuda::device_buffer<token_id> toks;
    cuda::device_buffer<std::int32_t> urows(4 * layout.num_heads());
    cuda::device_buffer<float> uout(4 * layout.num_heads() * dim);
    std::printf("{");
    for (std::size_t t : {1u, 2u, 4u}) {
        std::vector<token_id> raw(t);
        for (auto& r : raw) r = static_cast<token_id>(rng() % static_cast<std::uint64_t>(vocab));
        toks.upload(std::span<const token_id>(raw));
        const float ms = best_ms(quick ? 20 : 200, [&] {
            lh.rows(toks.data(), 1, t, nullptr, urows.data());
            cuda::gather(pinned, urows.data(), t * layout.num_heads(), uout.data());
        });
        std::printf("%s\"uva_lookup_us_%zu_tokens\": %.2f", t == 1 ? "" : ", ", t, ms * 1e3);
    }
    std::printf("}\n");

    // ---- prefetch overlap: one layer (H = 1024, M = 4) ----
    layer_config cfg;
    cfg.hash = hc;
    cfg.hidden = 1024;
    cfg.branches = 4;
    const std::size_t h = 1024, m = 4, d = layout.num_heads() * dim, r = (1 + m) * h, tokens = quick ? 256 : 1024;
    std::vector<float> w(r * d), bias(r, 0.0f), ones(m * h, 1.0f);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (auto& x : w) x = normal(rng);
    layer_parameters params{cfg, layout, lookup, w, bias, ones, ones, {}, {}};
    layer<production_policies>::options o;
    o.placement = cuda::table_placement::device;
    layer<production_policies> l(params, uv, o);
    std::vector<token_id> raw(tokens);
    for (auto& x : raw) x = static_cast<token_id>(rng() % static_cast<std::uint64_t>(vocab));
    cuda::device_buffer<float> hid(tokens * m * h), lout(tokens * m * h);
    cuda::check(cudaMemset(hid.data(), 0, tokens * m * h * 4), "memset");
    const float full = best_ms(reps, [&] { l.forward(raw, 1, tokens, hid.data(), lout.data()); });
    // The lookup alone (hash + gather), on the side stream.
    float look = 1e30f, waited = 1e30f;
    timer side;
    for (int i = 0; i < reps; ++i) {
        side.start(l.prefetch_stream());
        auto t = l.prefetch(raw, 1, tokens);
        look = std::min(look, side.stop_ms(l.prefetch_stream()));
        l.forward(t, hid.data(), lout.data());
        cuda::check(cudaDeviceSynchronize(), "sync");
    }
    int clock_khz = 0;
    cuda::check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0), "clock rate");
    // Prefetch one layer ahead: the previous layer's work (a spin as long as a full forward) runs
    // on the main stream while the lookup runs on the side stream; then time the forward alone.
    int ready_at_forward = 0;
    const auto plan = l.make_plan(raw, 1, tokens);
    for (int i = 0; i < reps; ++i) {
        auto t = i % 2 == 0 ? l.prefetch(raw, 1, tokens) : l.prefetch(plan); // device hash, host plan
        spin<<<1, 1>>>(static_cast<long long>(clock_khz) * static_cast<long long>(full * 2.0f + 1.0f));
        cuda::check(cudaStreamSynchronize(nullptr), "sync"); // the previous layer is done
        ready_at_forward += l.ready(t) ? 1 : 0;              // the lookup finished under it
        timer tm;
        tm.start(nullptr);
        l.forward(t, hid.data(), lout.data());
        waited = std::min(waited, tm.stop_ms(nullptr));
    }
    std::printf("{\"overlap_tokens\": %zu, \"forward_with_lookup_ms\": %.3f, \"lookup_ms\": %.3f, "
                "\"forward_prefetched_ms\": %.3f, \"lookup_hidden\": %.2f, \"ready_at_forward\": \"%d/%d\"}\n",
                tokens, full, look, waited, look > 0 ? std::min(1.0f, (full - waited) / look) : 0.0f, ready_at_forward,
                reps);
    std::printf("summary: gather %.2fx of the probe (goal >= 0.80); UVA lookups above; prefetched forward %.3f ms vs "
                "%.3f ms with its own lookup; lookup finished before the forward in %d of %d runs\n",
                probe / ours, waited, full, ready_at_forward, reps);
    return 0;
}
