#pragma once
// SPDX-License-Identifier: MIT
// The stacked projection on the GPU through cuBLAS: P [n, R] = e [n, D] W^T, W [R, D] row-major
// (value rows, then each branch's key rows), in f32 (cublasSgemm, no TF32) or bf16 x bf16 with
// f32 accumulation (cublasGemmEx; tensor cores). The bias is added by the gate kernels.

#include <engram/cuda/gather.cuh>
#include <engram/cuda/runtime.cuh>

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>

#include <cublas_v2.h>

#include <cstddef> // for size_t
#include <span>    // for span
#include <string>  // for string, to_string
#include <utility> // for exchange, swap
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

namespace cuda {

inline void check_cublas(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw cuda_error(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s)) + " (" +
                         cublasGetStatusString(s) + ")");
}

/// The projection's number format on the GPU.
enum class projection_format {
    f32,  ///< f32 weights and memory vectors (exact float products, as host_matmul's f32)
    bf16, ///< bf16 weights and memory vectors, f32 sums (host_matmul's bf16_dot; exact for V4.1)
};

/// @brief Weights on the device and the cuBLAS call that multiplies them.
class cublas_projection {
public:
    cublas_projection() { check_cublas(cublasCreate(&handle_), "cublasCreate"); }
    cublas_projection(const cublas_projection&) = delete;
    cublas_projection& operator=(const cublas_projection&) = delete;
    cublas_projection(cublas_projection&& o) noexcept
        : handle_(std::exchange(o.handle_, nullptr)), format_(o.format_), rows_(o.rows_), cols_(o.cols_),
          w32_(std::move(o.w32_)), w16_(std::move(o.w16_)), bias_(std::move(o.bias_)) {}
    cublas_projection& operator=(cublas_projection&&) = delete;
    ~cublas_projection() {
        if (handle_ != nullptr) (void)cublasDestroy(handle_);
    }

    /// @brief Uploads W [rows, cols] and bias [rows] in `format` (bf16: rounded to nearest even).
    void set(std::span<const float> weight, std::span<const float> bias, std::size_t rows, std::size_t cols,
             projection_format format) {
        if (weight.size() != rows * cols || bias.size() != rows)
            throw config_error("cuda projection: weight has " + std::to_string(weight.size()) + " values and bias " +
                               std::to_string(bias.size()) + ", expected " + std::to_string(rows) + " x " +
                               std::to_string(cols) + " and " + std::to_string(rows));
        rows_ = rows;
        cols_ = cols;
        format_ = format;
        bias_.upload(bias);
        if (format == projection_format::f32) {
            w32_.upload(weight);
        } else {
            std::vector<bf16_bits> w(weight.size());
            for (std::size_t i = 0; i < w.size(); ++i) w[i] = bodies::bf16_bits(weight[i]);
            w16_.upload(std::span<const bf16_bits>(w));
        }
        check(cudaDeviceSynchronize(), "cuda projection upload");
    }

    [[nodiscard]] projection_format format() const noexcept { return format_; }
    [[nodiscard]] const float* bias() const noexcept { return bias_.data(); }
    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t cols() const noexcept { return cols_; }

    /// @brief P [n, rows] = e [n, cols] W^T (no bias), on `stream`. `e` is float for f32, bf16
    ///        bits for bf16.
    void forward(const void* e, std::size_t n, float* p, cudaStream_t stream) const {
        if (n == 0) return;
        check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
        const float one = 1.0f, zero = 0.0f;
        const int r = static_cast<int>(rows_), d = static_cast<int>(cols_), m = static_cast<int>(n);
        // Column-major view: W^T is W (row-major [R, D]) read as [D, R], transposed; e is [D, n].
        if (format_ == projection_format::f32) {
            check_cublas(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, r, m, d, &one, w32_.data(), d,
                                     static_cast<const float*>(e), d, &zero, p, r),
                         "cublasSgemm (projection)");
        } else {
            check_cublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, r, m, d, &one, w16_.data(), CUDA_R_16BF, d, e,
                                      CUDA_R_16BF, d, &zero, p, CUDA_R_32F, r, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx (bf16 projection)");
        }
    }

private:
    cublasHandle_t handle_ = nullptr;
    projection_format format_ = projection_format::f32;
    std::size_t rows_ = 0, cols_ = 0;
    device_buffer<float> w32_;
    device_buffer<bf16_bits> w16_;
    device_buffer<float> bias_;
};

} // namespace cuda

ENGRAM_END_NAMESPACE
