#pragma once
// SPDX-License-Identifier: MIT
// A layer on a host's bfloat16 residual stream (DeepSeek-V4.1's): hidden states widened to float
// (exact), the layer in float, its output rounded to bf16 once (round to nearest even).

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>

#include <cstddef> // for size_t
#include <cstdint> // for uint8_t
#include <span>    // for span
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// The calling thread's float copies of a bf16 input and of the output, grown and reused.
struct bf16_io_buffers {
    std::vector<float> in, out;
    static bf16_io_buffers& local() {
        thread_local bf16_io_buffers b;
        return b;
    }
};

/// Widens `hidden`, runs `body(float hidden, float out)`, then rounds into `out` (written only
/// once the body has succeeded).
template <class Body>
void with_float_io(std::span<const bfloat16> hidden, std::span<bfloat16> out, Body&& body) {
    auto& b = bf16_io_buffers::local();
    if (b.in.size() < hidden.size()) b.in.resize(hidden.size());
    if (b.out.size() < out.size()) b.out.resize(out.size());
    for (std::size_t i = 0; i < hidden.size(); ++i) b.in[i] = hidden[i].to_float();
    body(std::span<const float>(b.in.data(), hidden.size()), std::span<float>(b.out.data(), out.size()));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = bfloat16::from_float(b.out[i]);
}

} // namespace detail

/// @brief `layer.forward` on bf16 hidden states `[B, T, M, H]`; `out` (bf16, same shape) is
///        the float output rounded once. Nothing is written to `out` if the forward throws.
template <class Layer>
void forward_bf16(const Layer& layer, std::span<const token_id> raw, std::size_t batch, std::size_t seq_len,
                  std::span<const bfloat16> hidden, std::span<bfloat16> out,
                  std::span<const std::uint8_t> token_mask = {}) {
    detail::with_float_io(hidden, out, [&](std::span<const float> h, std::span<float> o) {
        layer.forward(raw, batch, seq_len, h, o, token_mask);
    });
}

/// @brief `forward_bf16` with the rows read from another table.
template <class Layer, storage_table Table>
void forward_bf16(const Layer& layer, const Table& rows_table, std::span<const token_id> raw, std::size_t batch,
                  std::size_t seq_len, std::span<const bfloat16> hidden, std::span<bfloat16> out,
                  std::span<const std::uint8_t> token_mask = {}) {
    detail::with_float_io(hidden, out, [&](std::span<const float> h, std::span<float> o) {
        layer.forward(rows_table, raw, batch, seq_len, h, o, token_mask);
    });
}

/// @brief `layer.extend` (a chunk of a chunked prefill, or a fresh state's prefill) on bf16
///        hidden states `[T, M, H]`.
template <class Layer>
void extend_bf16(const Layer& layer, typename Layer::decode_state& state, std::span<const token_id> raw,
                 std::span<const bfloat16> hidden, std::span<bfloat16> out,
                 std::span<const std::uint8_t> token_mask = {}) {
    detail::with_float_io(
        hidden, out, [&](std::span<const float> h, std::span<float> o) { layer.extend(state, raw, h, o, token_mask); });
}

/// @brief `layer.decode_step` on one token's bf16 hidden states `[M, H]`.
template <class Layer>
void decode_step_bf16(const Layer& layer, typename Layer::decode_state& state, token_id raw,
                      std::span<const bfloat16> hidden, std::span<bfloat16> out, bool keep = true) {
    detail::with_float_io(
        hidden, out, [&](std::span<const float> h, std::span<float> o) { layer.decode_step(state, raw, h, o, keep); });
}

ENGRAM_END_NAMESPACE
