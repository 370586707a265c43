#pragma once
// SPDX-License-Identifier: MIT
// The gather: rows `ids[i]` of a device table decoded into `out [count, dim]` (float or bf16).
// One warp a row; each lane loads 16 bytes at a time (narrower where a row's alignment forces
// it), issuing all of its loads for a row before it decodes and stores; a persistent grid sized
// to the SM count (a fraction of it for background prefetches). Values decode with the host's
// bodies (engram/backend/bodies.hpp).

#include <engram/cuda/runtime.cuh>
#include <engram/cuda/table.cuh>

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/layer/parameters.hpp>

#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint8_t, uint16_t, uint32_t, int32_t, int64_t
#include <string>      // for string
#include <type_traits> // for is_same_v

ENGRAM_BEGIN_NAMESPACE

namespace cuda {

/// bfloat16 values in device memory, as their bits (what cuBLAS reads as CUDA_R_16BF).
using bf16_bits = std::uint16_t;

namespace kernels {

template <int L>
struct load_unit;
template <>
struct load_unit<16> {
    using type = uint4;
};
template <>
struct load_unit<8> {
    using type = uint2;
};
template <>
struct load_unit<4> {
    using type = unsigned;
};
template <>
struct load_unit<2> {
    using type = unsigned short;
};
template <>
struct load_unit<1> {
    using type = unsigned char;
};

template <row_encoding E>
inline constexpr int value_bytes = E == row_encoding::f32 ? 4 : (E == row_encoding::bf16 ? 2 : 1);

/// Chunks a lane loads before it decodes any: 4 x 16 bytes in flight per lane.
inline constexpr int chunks_in_flight = 4;

__device__ inline void store_value(float* out, float v) { *out = v; }
__device__ inline void store_value(bf16_bits* out, float v) { *out = bodies::bf16_bits(v); }

/// Stores n decoded values at `o`: 16-byte stores where `vector_ok` (o 16-byte aligned and n a
/// multiple of the values a store carries), one value at a time otherwise.
template <int N>
__device__ inline void store_values(float* o, const float (&v)[N], bool vector_ok) {
    if constexpr (N % 4 == 0) {
        if (vector_ok) {
#pragma unroll
            for (int q = 0; q < N / 4; ++q)
                reinterpret_cast<float4*>(o)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) o[k] = v[k];
}
template <int N>
__device__ inline void store_values(bf16_bits* o, const float (&v)[N], bool vector_ok) {
    if constexpr (N % 8 == 0) {
        if (vector_ok) {
#pragma unroll
            for (int q = 0; q < N / 8; ++q) {
                unsigned w[4];
#pragma unroll
                for (int k = 0; k < 4; ++k)
                    w[k] = static_cast<unsigned>(bodies::bf16_bits(v[8 * q + 2 * k])) |
                           (static_cast<unsigned>(bodies::bf16_bits(v[8 * q + 2 * k + 1])) << 16);
                reinterpret_cast<uint4*>(o)[q] = make_uint4(w[0], w[1], w[2], w[3]);
            }
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) o[k] = bodies::bf16_bits(v[k]);
}

/// The gather kernel; `L` bytes a load, `E` the row encoding. Rows outside the table are not
/// read: their output is NaN and `error` records the first such index.
template <row_encoding E, int L, class Id, class Out>
__global__ void gather_rows(const std::byte* rows, const std::byte* scales, std::size_t row_bytes, std::size_t dim,
                            std::size_t table_rows, const Id* ids, std::size_t count, Out* out,
                            unsigned long long* error) {
    using vec = typename load_unit<L>::type;
    constexpr int per_chunk = L / value_bytes<E>; // values a load carries
    const std::size_t chunks = dim / per_chunk;
    const bodies::row_lanes split(chunks);
    const unsigned lanes = split.lanes, lane = threadIdx.x & 31u;
    const std::size_t sub = split.first_chunk(lane);
    const std::size_t warp = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const std::size_t warps = static_cast<std::size_t>(gridDim.x) * blockDim.x / 32;
    constexpr std::size_t out_vector = sizeof(Out) == 4 ? 4 : 8; // values a 16-byte store carries
    const bool vector_ok = reinterpret_cast<std::uintptr_t>(out) % 16 == 0 && dim % out_vector == 0;
    for (std::size_t i = split.first_row(warp, lane); i < count; i += split.row_step(warps)) {
        const auto r = static_cast<std::size_t>(ids[i]);
        Out* dst = out + i * dim;
        if (static_cast<std::int64_t>(ids[i]) < 0 || r >= table_rows) {
            for (std::size_t k = sub; k < dim; k += lanes) store_value(dst + k, __int_as_float(0x7FC00000));
            if (sub == 0 && error != nullptr) atomicMin(error, static_cast<unsigned long long>(i));
            continue;
        }
        const std::byte* row = rows + r * row_bytes;
        for (std::size_t c0 = 0; c0 < chunks; c0 += lanes * chunks_in_flight) {
            vec v[chunks_in_flight];
            std::uint8_t sb[chunks_in_flight];
#pragma unroll
            for (int u = 0; u < chunks_in_flight; ++u) {
                const std::size_t c = c0 + sub + lanes * static_cast<std::size_t>(u);
                if (c < chunks) {
                    v[u] = *reinterpret_cast<const vec*>(row + c * L);
                    if constexpr (E == row_encoding::fp8_packed)
                        sb[u] = static_cast<std::uint8_t>(row[dim + c * per_chunk / 32]);
                    else if constexpr (E == row_encoding::fp8_split)
                        sb[u] = static_cast<std::uint8_t>(scales[r * (dim / 32) + c * per_chunk / 32]);
                    else
                        sb[u] = 0;
                }
            }
#pragma unroll
            for (int u = 0; u < chunks_in_flight; ++u) {
                const std::size_t c = c0 + sub + lanes * static_cast<std::size_t>(u);
                if (c >= chunks) continue;
                unsigned char bytes[L];
                memcpy(bytes, &v[u], L);
                float x[per_chunk];
#pragma unroll
                for (int k = 0; k < per_chunk; ++k) {
                    if constexpr (E == row_encoding::f32) {
                        memcpy(&x[k], bytes + 4 * k, 4);
                    } else if constexpr (E == row_encoding::bf16) {
                        std::uint16_t b = 0;
                        memcpy(&b, bytes + 2 * k, 2);
                        x[k] = bodies::bf16_value(b);
                    } else if constexpr (E == row_encoding::fp8_packed) {
                        x[k] = bodies::fp8_value(bytes[k], bodies::ue8m0_value(sb[u]));
                    } else {
                        x[k] = bodies::fp8_split_value(bytes[k], sb[u]);
                    }
                }
                store_values(dst + c * per_chunk, x, vector_ok);
            }
        }
    }
}

/// Widest load (16, 8, 4, 2 or 1 bytes, at least a value's width) that every row's values
/// start and end on, given the table's base address and stride.
inline int load_bytes(const table_view& t) {
    const auto base = reinterpret_cast<std::uintptr_t>(t.rows);
    const std::size_t vb = t.encoding == row_encoding::f32 ? 4 : (t.encoding == row_encoding::bf16 ? 2 : 1);
    for (std::size_t l : {16u, 8u, 4u, 2u}) {
        if (l < vb) break;
        if (base % l == 0 && t.row_bytes % l == 0 && (t.dim * vb) % l == 0) return static_cast<int>(l);
    }
    return static_cast<int>(vb);
}

template <row_encoding E, int L, class Id, class Out>
void launch_gather(const table_view& t, const Id* ids, std::size_t count, Out* out, unsigned long long* error,
                   unsigned grid, cudaStream_t s) {
    gather_rows<E, L, Id, Out>
        <<<grid, block_threads, 0, s>>>(t.rows, t.scales, t.row_bytes, t.dim, t.count, ids, count, out, error);
    check_launch("gather_rows");
}

} // namespace kernels

/// @brief Options of one gather launch.
struct gather_options {
    /// Share of the persistent grid (SM count x blocks_per_sm): 1 for a gather the next kernel
    /// waits on, 0.5 for a background prefetch that leaves SMs to the model's own kernels.
    double grid_fraction = 1.0;
    int blocks_per_sm = 4;
    /// Where the first out-of-range index is recorded (device memory), or null.
    unsigned long long* error = nullptr;
};

/// Blocks of the persistent grid for `count` rows.
inline unsigned gather_grid(std::size_t count, const gather_options& o) {
    static const int sms = sm_count();
    double blocks = static_cast<double>(sms) * o.blocks_per_sm * o.grid_fraction;
    const double needed = static_cast<double>((count + block_threads / 32 - 1) / (block_threads / 32));
    if (blocks > needed) blocks = needed;
    return blocks < 1.0 ? 1u : static_cast<unsigned>(blocks);
}

/// @brief Decodes rows `ids [count]` (device memory) of `table` into `out [count, dim]` (device
///        memory; float or bf16 bits), asynchronously on `stream`.
template <class Id, class Out>
void gather(const device_table& table, const Id* ids, std::size_t count, Out* out, cudaStream_t stream = nullptr,
            const gather_options& o = {}) {
    static_assert(std::is_same_v<Id, std::int32_t> || std::is_same_v<Id, std::int64_t>, "row ids are int32 or int64");
    static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, bf16_bits>, "gather decodes to float or bf16");
    if (count == 0) return;
    const table_view& t = table.view();
    const unsigned grid = gather_grid(count, o);
    const int l = kernels::load_bytes(t);
    using kernels::launch_gather;
    switch (t.encoding) {
    case row_encoding::f32:
        if (l >= 16) return launch_gather<row_encoding::f32, 16>(t, ids, count, out, o.error, grid, stream);
        return launch_gather<row_encoding::f32, 4>(t, ids, count, out, o.error, grid, stream);
    case row_encoding::bf16:
        if (l >= 16) return launch_gather<row_encoding::bf16, 16>(t, ids, count, out, o.error, grid, stream);
        return launch_gather<row_encoding::bf16, 2>(t, ids, count, out, o.error, grid, stream);
    case row_encoding::fp8_packed:
        if (l >= 16) return launch_gather<row_encoding::fp8_packed, 16>(t, ids, count, out, o.error, grid, stream);
        if (l >= 8) return launch_gather<row_encoding::fp8_packed, 8>(t, ids, count, out, o.error, grid, stream);
        return launch_gather<row_encoding::fp8_packed, 1>(t, ids, count, out, o.error, grid, stream);
    case row_encoding::fp8_split:
        if (l >= 16) return launch_gather<row_encoding::fp8_split, 16>(t, ids, count, out, o.error, grid, stream);
        if (l >= 8) return launch_gather<row_encoding::fp8_split, 8>(t, ids, count, out, o.error, grid, stream);
        return launch_gather<row_encoding::fp8_split, 1>(t, ids, count, out, o.error, grid, stream);
    }
    throw config_error("cuda::gather: unknown row encoding");
}

} // namespace cuda

ENGRAM_END_NAMESPACE
