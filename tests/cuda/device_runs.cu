// SPDX-License-Identifier: MIT
// The device half of the CUDA tests (see device_runs.hpp): builds the CUDA layer and runs it.

#include "device_runs.hpp"

#include <engram/cuda/engram.cuh>
#include <engram/hash/multiply_xor.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/layer/projection.hpp>
#include <engram/ngram/orders.hpp>

#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace engram_cuda_test {

namespace {

using namespace engram;

// Policy sets as a CUDA program would name them (no host layer needed in this file).
template <class Orders, class Gate, class Fusion, class Projection>
struct policies {
    using hash_type = multiply_xor_family;
    using orders_type = Orders;
    using gate_type = Gate;
    using fusion_type = Fusion;
    using projection_type = Projection;
    using backend_type = cuda_backend;
};
using demo_policies = policies<orders<2, 3>, reference_gate, reference_fusion, plain_projection>;
using production_policies = policies<orders<2, 3>, reference_gate, production_fusion, plain_projection>;
using v41_policies = policies<orders<2, 3, 4>, copysign_gate, masked_production_fusion, fp8_block_projection>;

static_assert(std::is_same_v<layer<demo_policies>, layer<demo_policies, cuda_backend>>,
              "the backend tag selects the CUDA layer");

cuda::table_placement placement_of(int p) {
    switch (p) {
    case 1:
        return cuda::table_placement::host_registered;
    case 2:
        return cuda::table_placement::host_pinned;
    default:
        return cuda::table_placement::device;
    }
}

template <class T>
T* to_device(cuda::device_buffer<T>& b, std::span<const T> v) {
    b.upload(v);
    cuda::check(cudaDeviceSynchronize(), "upload");
    return b.data();
}

template <class Layer>
std::vector<float> run(Layer& l, const layer_run& r, std::span<const token_id> raw, std::size_t batch,
                       std::size_t seq_len, std::span<const float> hidden, std::span<const std::uint8_t> mask) {
    cuda::device_buffer<float> hid, out;
    to_device(hid, hidden);
    out.reserve(hidden.size());
    const std::size_t width = hidden.size() / (batch * seq_len);
    std::vector<float> host(hidden.size());
    switch (r.how) {
    case mode::forward:
        l.forward(raw, batch, seq_len, hid.data(), out.data(), mask);
        break;
    case mode::prefetch: {
        // This batch's lookup (hashed on the device) and a second one (its first sequence, planned
        // on the host) in flight before the forward.
        auto t = l.prefetch(raw, batch, seq_len, mask);
        auto next = l.prefetch(
            l.make_plan(raw.subspan(0, seq_len), 1, seq_len, mask.empty() ? mask : mask.subspan(0, seq_len)));
        l.forward(t, hid.data(), out.data());
        cuda::device_buffer<float> out2;
        out2.reserve(seq_len * width);
        l.forward(next, hid.data(), out2.data());
        std::vector<float> second(seq_len * width);
        cuda::check(cudaMemcpy(second.data(), out2.data(), second.size() * sizeof(float), cudaMemcpyDeviceToHost),
                    "copy");
        cuda::check(cudaMemcpy(host.data(), out.data(), host.size() * sizeof(float), cudaMemcpyDeviceToHost), "copy");
        if (std::memcmp(second.data(), host.data(), second.size() * sizeof(float)) != 0)
            throw std::runtime_error("the second prefetched batch differs from the first's first sequence");
        return host;
    }
    case mode::decode:
        for (std::size_t b = 0; b < batch; ++b) {
            auto st = l.new_decode_state();
            for (std::size_t t = 0; t < seq_len; ++t) {
                const std::size_t g = b * seq_len + t;
                l.decode_step(st, raw[g], hid.data() + g * width, out.data() + g * width, mask.empty() || mask[g] != 0);
            }
        }
        break;
    }
    cuda::check(cudaDeviceSynchronize(), "layer run");
    cuda::check(cudaMemcpy(host.data(), out.data(), host.size() * sizeof(float), cudaMemcpyDeviceToHost), "copy");
    return host;
}

template <class P, class F>
auto with_layer(const layer_run& r, const layer_parameters& params, const table_view& table, F&& f) {
    typename layer<P>::options o;
    o.placement = placement_of(r.placement);
    if (r.bf16_projection) o.format = cuda::projection_format::bf16;
    layer<P> l(params, table, o);
    static bool told = false;
    if (!told && r.bf16_projection) {
        std::printf("cuda.device: bf16 projection of 38 tokens through %s\n", l.projection().path(38));
        told = true;
    }
    return f(l);
}

template <class F>
auto dispatch(const layer_run& r, const layer_parameters& params, const table_view& table, F&& f) {
    switch (r.kind) {
    case family::demo:
        return with_layer<demo_policies>(r, params, table, f);
    case family::production:
        return with_layer<production_policies>(r, params, table, f);
    case family::v41:
        break;
    }
    return with_layer<v41_policies>(r, params, table, f);
}

} // namespace

std::string unavailable() { return cuda::unavailable_reason(); }

std::string device_name() {
    cudaDeviceProp p{};
    int dev = 0;
    cuda::check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda::check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
           std::to_string(p.multiProcessorCount) + " SMs)";
}

std::vector<std::int64_t> hash_layers(std::span<const layer_layout> layouts, std::span<const token_id> lookup,
                                      std::optional<token_id> dead_token, std::span<const token_id> raw,
                                      std::size_t batch, std::size_t seq_len, std::span<const std::uint8_t> mask,
                                      bool int32_ids) {
    cuda::layer_hash h(layouts, lookup, dead_token);
    cuda::device_buffer<token_id> ids;
    cuda::device_buffer<std::uint8_t> m;
    to_device(ids, raw);
    if (!mask.empty()) to_device(m, mask);
    const std::size_t n = batch * seq_len * h.heads_total();
    std::vector<std::int64_t> out(n);
    if (int32_ids) {
        cuda::device_buffer<std::int32_t> rows(n);
        h.rows(ids.data(), batch, seq_len, mask.empty() ? nullptr : m.data(), rows.data());
        h.check_errors();
        std::vector<std::int32_t> r32(n);
        cuda::check(cudaMemcpy(r32.data(), rows.data(), n * 4, cudaMemcpyDeviceToHost), "copy");
        for (std::size_t i = 0; i < n; ++i) out[i] = r32[i];
    } else {
        cuda::device_buffer<std::int64_t> rows(n);
        h.rows(ids.data(), batch, seq_len, mask.empty() ? nullptr : m.data(), rows.data());
        h.check_errors();
        cuda::check(cudaMemcpy(out.data(), rows.data(), n * 8, cudaMemcpyDeviceToHost), "copy");
    }
    return out;
}

std::vector<float> gather(const table_view& table, int placement, std::span<const std::int64_t> ids, bool bf16_out) {
    cuda::device_table t(table, placement_of(placement));
    cuda::device_buffer<std::int64_t> d_ids;
    to_device(d_ids, ids);
    const std::size_t n = ids.size() * table.dim;
    std::vector<float> out(n);
    if (bf16_out) {
        cuda::device_buffer<cuda::bf16_bits> o(n);
        cuda::gather(t, d_ids.data(), ids.size(), o.data());
        std::vector<std::uint16_t> b(n);
        cuda::check(cudaMemcpy(b.data(), o.data(), n * 2, cudaMemcpyDeviceToHost), "copy");
        for (std::size_t i = 0; i < n; ++i) out[i] = bodies::bf16_value(b[i]);
    } else {
        cuda::device_buffer<float> o(n);
        cuda::gather(t, d_ids.data(), ids.size(), o.data());
        cuda::check(cudaMemcpy(out.data(), o.data(), n * 4, cudaMemcpyDeviceToHost), "copy");
    }
    return out;
}

std::vector<float> run_layer(const layer_run& r, const layer_parameters& params, const table_view& table,
                             std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                             std::span<const float> hidden, std::span<const std::uint8_t> mask) {
    return dispatch(r, params, table, [&](auto& l) { return run(l, r, raw, batch, seq_len, hidden, mask); });
}

std::vector<row_id> layer_rows(const layer_run& r, const layer_parameters& params, const table_view& table,
                               std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                               std::span<const std::uint8_t> mask) {
    return dispatch(r, params, table, [&](auto& l) {
        std::vector<row_id> out(batch * seq_len * l.num_heads());
        l.rows(raw, batch, seq_len, out, mask);
        if (l.make_plan(raw, batch, seq_len, mask).rows != out)
            throw std::runtime_error("the host plan's row ids differ from the device hash's");
        return out;
    });
}

std::string bad_token_message(const layer_parameters& params, const table_view& table) {
    layer_run r;
    return dispatch(r, params, table, [&](auto& l) -> std::string {
        const token_id bad[2] = {0, static_cast<token_id>(params.vocab_lookup.size())};
        cuda::device_buffer<float> buf(2 * params.config.branches * params.config.hidden);
        try {
            l.forward(bad, 1, 2, buf.data(), buf.data());
        } catch (const input_error& e) {
            return e.what();
        }
        return {};
    });
}

} // namespace engram_cuda_test
