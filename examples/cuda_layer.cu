// SPDX-License-Identifier: MIT
// The Engram layer on a GPU by changing one policy tag: a host layer is built (here with random
// weights; a checkpoint loader gives the same object), then the CUDA layer of the same policies
// with `backend_type = engram::cuda_backend` is made from it: parameters copied to the device,
// rows read in place from the host table over UVA. It compares the two outputs and prints the
// largest difference, or why it cannot run (no GPU).
#include <engram/cuda/layer.cuh>
#include <engram/layer.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

struct host_policies : engram::layer_policies {
    using fusion_type = engram::production_fusion;
};
struct gpu_policies : host_policies {
    using backend_type = engram::cuda_backend; // the one change
};

int main() {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {10007, 10007};
    cfg.hidden = 256;
    cfg.branches = 4;
    engram::layer<host_policies> host(cfg, engram::canonical_table::identity(1000));
    host.randomize(1);

    const std::size_t batch = 2, seq = 64, width = 4 * 256;
    std::vector<engram::token_id> ids(batch * seq);
    std::vector<float> hidden(batch * seq * width), want(hidden.size()), got(hidden.size());
    std::mt19937 rng(2);
    for (auto& t : ids) t = static_cast<engram::token_id>(rng() % 1000);
    std::normal_distribution<float> normal;
    for (auto& h : hidden) h = normal(rng);
    host.forward(ids, batch, seq, hidden, want);

    if (const std::string why = engram::cuda::unavailable_reason(); !why.empty()) {
        std::printf("cuda_layer: the host layer ran; the GPU layer cannot: %s\n", why.c_str());
        return 0;
    }
    engram::layer<gpu_policies>::options o;
    o.placement = engram::cuda::table_placement::host_registered; // rows stay in host memory
    engram::layer<gpu_policies> gpu(host, o);
    engram::cuda::device_buffer<float> d_hidden, d_out(hidden.size());
    d_hidden.upload(std::span<const float>(hidden));
    gpu.forward(ids, batch, seq, d_hidden.data(), d_out.data());
    engram::cuda::check(cudaMemcpy(got.data(), d_out.data(), got.size() * 4, cudaMemcpyDeviceToHost), "copy");
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    std::printf("cuda_layer: GPU vs host, largest difference %.3g over %zu values\n", worst, got.size());
    return worst <= 1e-4 ? 0 : 1;
}
