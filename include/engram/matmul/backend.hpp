#pragma once
// SPDX-License-Identifier: MIT
// The matmul seam: what a projection backend provides to the layer.

#include <engram/config.hpp>
#include <engram/matmul/format.hpp>

#include <concepts> // for same_as, convertible_to, default_initializable, copy_constructible
#include <cstddef>  // for size_t
#include <string>   // for string

ENGRAM_BEGIN_NAMESPACE

/// @brief A matmul backend: the layer's stacked projection `p = W e + b` in the chosen weight
///        format, for a block of tokens (`forward`) and for one token (`gemv`).
///
/// - `set_format(w, f)` takes what format `f` needs from the float weights (a bf16 or int8
///   copy, prepacked); throws config_error for a format the backend cannot run.
/// - `forward(w, e, n, p, threads)`: p [n, w.rows] = e [n, w.cols] W^T + bias, on `threads`
///   threads. `gemv(w, e, p)`: the same for one token, on the calling thread.
/// - `forward_path()` / `decode_path()`: which kernels run on this CPU (for logs and benches).
///
/// Backends: `host_matmul` (the default: Eigen, our AVX-512 kernels chosen at run time) and
/// `onednn_matmul` (engram/matmul/onednn.hpp, CMake target engram::onednn).
template <class B>
concept matmul_backend = std::default_initializable<B> && std::copy_constructible<B> &&
    requires(B& b, const B& cb, const matmul_weights& w, weight_format f, const float* e, float* p, std::size_t n) {
    b.set_format(w, f);
    { cb.format() } -> std::same_as<weight_format>;
    cb.forward(w, e, n, p, n);
    cb.gemv(w, e, p);
    { cb.forward_path() } -> std::convertible_to<std::string>;
    { cb.decode_path() } -> std::convertible_to<std::string>;
};

ENGRAM_END_NAMESPACE
