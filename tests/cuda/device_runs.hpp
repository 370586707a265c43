// SPDX-License-Identifier: MIT
// The CUDA backend's test runs, compiled by nvcc (device_runs.cu) and called from the Catch2
// cases in test_cuda_device.cpp (compiled by the host compiler, with the host layer): plain C++
// in, plain C++ out, so that neither side includes the other's headers.
#pragma once

#include <engram/hash/layout.hpp>
#include <engram/layer/parameters.hpp>
#include <engram/types.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace engram_cuda_test {

/// Why the GPU cases cannot run here ("" when a device is usable).
std::string unavailable();

/// The device's name and compute capability, for the log.
std::string device_name();

/// Row ids of every layer (layer after layer, [B, T, heads] each) from one hash launch.
std::vector<std::int64_t> hash_layers(std::span<const engram::layer_layout> layouts,
                                      std::span<const engram::token_id> lookup,
                                      std::optional<engram::token_id> dead_token, std::span<const engram::token_id> raw,
                                      std::size_t batch, std::size_t seq_len, std::span<const std::uint8_t> mask,
                                      bool int32_ids);

/// Where a table is placed: 0 device, 1 host_registered, 2 host_pinned.
/// Rows `ids` decoded on the device (bf16 output widened back to float when `bf16_out`).
std::vector<float> gather(const engram::table_view& table, int placement, std::span<const std::int64_t> ids,
                          bool bf16_out);

/// The layer families the runner builds.
enum class family {
    demo,       ///< orders 2..3, reference gate, reference fusion (conv), plain projection
    production, ///< orders 2..3, reference gate, production fusion (token mask), plain projection
    v41,        ///< orders 2..4, copysign gate, masked production fusion, FP8 block projection
};

/// How the device runs the batch.
enum class mode {
    forward,  ///< forward(raw, ...)
    prefetch, ///< prefetch(...) then forward(ticket, ...), the next batch prefetched in between
    decode,   ///< decode_step token by token, per sequence
};

struct layer_run {
    family kind = family::demo;
    mode how = mode::forward;
    int placement = 0;
    bool bf16_projection = false;
};

/// The device layer's output [B, T, M, H] for hidden [B, T, M, H] (mask optional).
std::vector<float> run_layer(const layer_run& run, const engram::layer_parameters& params,
                             const engram::table_view& table, std::span<const engram::token_id> raw, std::size_t batch,
                             std::size_t seq_len, std::span<const float> hidden, std::span<const std::uint8_t> mask);

/// The device layer's row ids [B, T, heads] (its hash kernel, copied back).
std::vector<engram::row_id> layer_rows(const layer_run& run, const engram::layer_parameters& params,
                                       const engram::table_view& table, std::span<const engram::token_id> raw,
                                       std::size_t batch, std::size_t seq_len, std::span<const std::uint8_t> mask);

/// Error messages the device layer gives for bad input ("" if it did not throw).
std::string bad_token_message(const engram::layer_parameters& params, const engram::table_view& table);

} // namespace engram_cuda_test
