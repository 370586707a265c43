#pragma once
// SPDX-License-Identifier: MIT
// The stacked projection on the GPU through cuBLAS: P [n, R] = e [n, D] W^T, W [R, D] row-major
// (value rows, then each branch's key rows), in f32 (cublasSgemm, no TF32) or bf16 x bf16 with
// f32 accumulation (cuBLASLt, its algorithm chosen once per token count; cublasGemmEx where
// cuBLASLt offers none). The bias is added by the gate kernels.

#include <engram/cuda/gather.cuh>
#include <engram/cuda/runtime.cuh>

#include <engram/backend/bodies.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef> // for size_t, byte
#include <map>     // for map
#include <memory>  // for unique_ptr
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

/// @brief cuBLASLt's bf16 x bf16 -> f32 matmul of one shape (R outputs, n tokens, D inputs),
///        with the algorithm its heuristic picks for a workspace of `workspace` bytes; `usable()`
///        is false where cuBLASLt offers none.
class lt_bf16_plan {
public:
    lt_bf16_plan(cublasLtHandle_t lt, int r, int n, int d, std::size_t workspace) {
        check_cublas(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        check_cublas(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
        check_cublas(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
        // Column-major: W (row-major [R, D]) is [D, R] with ld D, transposed; e is [D, n]; P [R, n].
        check_cublas(cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, d, r, d), "cublasLtMatrixLayoutCreate (W)");
        check_cublas(cublasLtMatrixLayoutCreate(&b_, CUDA_R_16BF, d, n, d), "cublasLtMatrixLayoutCreate (e)");
        check_cublas(cublasLtMatrixLayoutCreate(&c_, CUDA_R_32F, r, n, r), "cublasLtMatrixLayoutCreate (P)");
        cublasLtMatmulPreference_t pref = nullptr;
        check_cublas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
        (void)cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                   sizeof workspace);
        cublasLtMatmulHeuristicResult_t result{};
        int found = 0;
        const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, op_, a_, b_, c_, c_, pref, 1, &result, &found);
        (void)cublasLtMatmulPreferenceDestroy(pref);
        usable_ = s == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
        if (usable_) algo_ = result.algo;
    }
    lt_bf16_plan(const lt_bf16_plan&) = delete;
    lt_bf16_plan& operator=(const lt_bf16_plan&) = delete;
    ~lt_bf16_plan() {
        if (c_ != nullptr) (void)cublasLtMatrixLayoutDestroy(c_);
        if (b_ != nullptr) (void)cublasLtMatrixLayoutDestroy(b_);
        if (a_ != nullptr) (void)cublasLtMatrixLayoutDestroy(a_);
        if (op_ != nullptr) (void)cublasLtMatmulDescDestroy(op_);
    }
    [[nodiscard]] bool usable() const noexcept { return usable_; }
    void run(cublasLtHandle_t lt, const void* w, const void* e, float* p, void* workspace, std::size_t bytes,
             cudaStream_t stream) const {
        const float one = 1.0f, zero = 0.0f;
        check_cublas(cublasLtMatmul(lt, op_, &one, w, a_, e, b_, &zero, p, c_, p, c_, &algo_, workspace, bytes, stream),
                     "cublasLtMatmul (bf16 projection)");
    }

private:
    cublasLtMatmulDesc_t op_ = nullptr;
    cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
    cublasLtMatmulAlgo_t algo_{};
    bool usable_ = false;
};

/// @brief Weights on the device and the cuBLAS call that multiplies them.
class cublas_projection {
public:
    /// cuBLASLt's workspace for the bf16 matmuls.
    static constexpr std::size_t lt_workspace = std::size_t{32} << 20;

    cublas_projection() {
        check_cublas(cublasCreate(&handle_), "cublasCreate");
        check_cublas(cublasLtCreate(&lt_), "cublasLtCreate");
    }
    cublas_projection(const cublas_projection&) = delete;
    cublas_projection& operator=(const cublas_projection&) = delete;
    cublas_projection(cublas_projection&& o) noexcept
        : handle_(std::exchange(o.handle_, nullptr)), lt_(std::exchange(o.lt_, nullptr)), format_(o.format_),
          rows_(o.rows_), cols_(o.cols_), w32_(std::move(o.w32_)), w16_(std::move(o.w16_)), bias_(std::move(o.bias_)),
          workspace_(std::move(o.workspace_)), plans_(std::move(o.plans_)) {}
    cublas_projection& operator=(cublas_projection&&) = delete;
    ~cublas_projection() {
        plans_.clear();
        if (lt_ != nullptr) (void)cublasLtDestroy(lt_);
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
            workspace_.reserve(lt_workspace);
        }
        plans_.clear();
        check(cudaDeviceSynchronize(), "cuda projection upload");
    }

    [[nodiscard]] projection_format format() const noexcept { return format_; }
    [[nodiscard]] const float* bias() const noexcept { return bias_.data(); }
    [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::size_t cols() const noexcept { return cols_; }

    /// The call the last `forward` of `n` tokens makes: "cublasSgemm", "cublasLtMatmul" or
    /// "cublasGemmEx" (bf16 where cuBLASLt has no algorithm for the shape).
    [[nodiscard]] const char* path(std::size_t n) const {
        if (format_ == projection_format::f32) return "cublasSgemm";
        return plan(n).usable() ? "cublasLtMatmul" : "cublasGemmEx";
    }

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
        } else if (const lt_bf16_plan& lt = plan(n); lt.usable()) {
            lt.run(lt_, w16_.data(), e, p, workspace_.data(), lt_workspace, stream);
        } else {
            check_cublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, r, m, d, &one, w16_.data(), CUDA_R_16BF, d, e,
                                      CUDA_R_16BF, d, &zero, p, CUDA_R_32F, r, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx (bf16 projection)");
        }
    }

private:
    /// The cuBLASLt plan of n tokens (made on first use, kept).
    const lt_bf16_plan& plan(std::size_t n) const {
        auto it = plans_.find(n);
        if (it == plans_.end())
            it = plans_
                     .emplace(n, std::make_unique<lt_bf16_plan>(lt_, static_cast<int>(rows_), static_cast<int>(n),
                                                                static_cast<int>(cols_), lt_workspace))
                     .first;
        return *it->second;
    }

    cublasHandle_t handle_ = nullptr;
    cublasLtHandle_t lt_ = nullptr;
    projection_format format_ = projection_format::f32;
    std::size_t rows_ = 0, cols_ = 0;
    device_buffer<float> w32_;
    device_buffer<bf16_bits> w16_;
    device_buffer<float> bias_;
    device_buffer<std::byte> workspace_;
    mutable std::map<std::size_t, std::unique_ptr<lt_bf16_plan>> plans_;
};

} // namespace cuda

ENGRAM_END_NAMESPACE
