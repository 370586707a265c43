#pragma once
// SPDX-License-Identifier: MIT
// Gate and fusion kernels: DeepSeek-V4.1's activation quantisation before the projection, the
// gate of every (token, branch) with its fusion (`h + g v`, or the demo's normalised u), and the
// demo's short convolution with `u + SiLU(y)`. Whole batches and decode steps share them: a
// token's convolution rows are addressed through `conv_rows` (a batch's rows, or a decode
// state's ring). Every value is computed by the host's bodies (engram/backend/bodies.hpp).

#include <engram/cuda/gather.cuh>
#include <engram/cuda/runtime.cuh>

#include <engram/backend/bodies.hpp>
#include <engram/backend/layer_bodies.hpp>
#include <engram/config.hpp>
#include <engram/types.hpp>

#include <cstddef> // for size_t
#include <cstdint> // for uint8_t

ENGRAM_BEGIN_NAMESPACE

namespace cuda {

using bodies::conv_rows;
using bodies::gate_args;

namespace kernels {

/// Sum of a double over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ inline double block_sum(double v, double* shared) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
    __syncthreads(); // the previous call's readers are done with `shared`
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    double s = 0;
    const int warps = static_cast<int>(blockDim.x / 32);
    for (int w = 0; w < warps; ++w) s += shared[w]; // the same order in every thread
    return s;
}

/// One block per (token, branch): the gate's three sums, alpha, then the fusion.
template <class Gate, bool HasConv>
__global__ void gate_fuse(gate_args a) {
    __shared__ double shared[32];
    const std::size_t i = blockIdx.x / static_cast<unsigned>(a.branches);
    const auto m = static_cast<std::size_t>(blockIdx.x % static_cast<unsigned>(a.branches));
    const auto h = static_cast<std::size_t>(a.hidden_size);
    bodies::gate_terms t;
    for (std::size_t c = threadIdx.x; c < h; c += blockDim.x) {
        const bodies::gate_terms x = bodies::gate_channel(a, i, m, c);
        t.kk += x.kk;
        t.hh += x.hh;
        t.dot += x.dot;
    }
    t.kk = block_sum(t.kk, shared);
    t.hh = block_sum(t.hh, shared);
    t.dot = block_sum(t.dot, shared);
    const float alpha = bodies::gate_value<Gate>(a, i, t);
    if (threadIdx.x == 0) a.alpha[i * static_cast<std::size_t>(a.branches) + m] = alpha;
    if constexpr (HasConv) {
        double uu = 0;
        for (std::size_t c = threadIdx.x; c < h; c += blockDim.x) {
            const double u = bodies::gated_value(a, i, alpha, c);
            uu += u * u;
        }
        const double r = bodies::rms_scale(block_sum(uu, shared), 1.0 / static_cast<double>(h), a.conv_eps);
        for (std::size_t c = threadIdx.x; c < h; c += blockDim.x) bodies::norm_channel(a, i, m, alpha, r, c);
    } else {
        for (std::size_t c = threadIdx.x; c < h; c += blockDim.x) bodies::production_channel(a, i, m, alpha, c);
    }
}

/// One thread per (token, channel): the convolution and `Y = u + SiLU(y)`.
static __global__ void conv_silu(gate_args a, std::size_t tokens) {
    const std::size_t mh = static_cast<std::size_t>(a.hidden_size) * static_cast<std::size_t>(a.branches);
    const std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (g < tokens * mh) bodies::conv_channel(a, g / mh, g % mh);
}

/// One thread per block of 32 values: DeepSeek-V4.1's act_quant of e [n, d] into bf16 (exact).
static __global__ void act_quant(const float* e, std::size_t n, std::size_t d, bf16_bits* out) {
    const std::size_t blocks_per_row = (d + 31) / 32;
    const std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (g >= n * blocks_per_row) return;
    const std::size_t i = g / blocks_per_row;
    bodies::act_quant_block(e + i * d, d, g % blocks_per_row, out + i * d);
}

/// One decode step's hash (one thread): push the token into the state's window, then the rows.
template <class Id>
__global__ void decode_hash(token_id* window, int w, const token_id* lookup, token_id raw, bool live, token_id pad,
                            const bodies::hash_params* params, Id* rows) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    bodies::push_window(window, w, live ? lookup[raw] : pad, live, pad);
    bodies::hash_heads(*params, window, rows);
}

} // namespace kernels

} // namespace cuda

ENGRAM_END_NAMESPACE
