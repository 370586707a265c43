#pragma once
// SPDX-License-Identifier: MIT
// The default matmul backend: our own AVX-512 kernels where the CPU has them (f32 strips,
// AVX512_BF16 dot products, AVX512-VNNI int8), chosen at run time, and Eigen / portable loops
// elsewhere. No dependency beyond Eigen.

#include <engram/config.hpp>
#include <engram/detail/threads.hpp>
#include <engram/error.hpp>
#include <engram/kernels/gemm_bf16.hpp>
#include <engram/kernels/gemm_f32.hpp>
#include <engram/kernels/gemm_int8.hpp>
#include <engram/kernels/gemv_bf16.hpp>
#include <engram/matmul/backend.hpp>
#include <engram/storage/row_types.hpp>

#include <Eigen/Core>

#include <algorithm> // for copy_n, min
#include <cstddef>   // for size_t
#include <cstdint>   // for uint32_t
#include <memory>    // for unique_ptr, make_unique
#include <string>    // for string, to_string
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief The default matmul backend (see `matmul_backend`).
///
/// `forward` splits the output channels into panels of `panel_rows` weight rows, the unit of
/// threading: each panel is computed by one thread with the same code whatever the thread
/// count, so the output is bit-identical for every `threads`. Per format, on this CPU:
/// - f32: AVX-512: the panel packed into strips, then our f32 kernel from the bias; elsewhere
///   Eigen's GEMM after the bias. `gemv`: our AVX-512 GEMV, or 8 float lanes per row.
/// - bf16: the same on the bf16 copy, widened to float panel by panel; `gemv` widens on load.
/// - bf16_dot: AVX512_BF16 `vdpbf16ps` (portable loop elsewhere) from the bias; `gemv` is the
///   same kernel on one token, so forward and decode give the same bits.
/// - int8: AVX512-VNNI `vpdpbusd` (portable loop elsewhere), exact int32 sums and one scaling
///   step: the same bits in forward, decode and on every CPU.
class host_matmul {
public:
    /// Weight rows per panel of `forward` (a multiple of every kernel's strip height).
    static constexpr std::size_t panel_rows = 512;
    /// The largest token count Eigen's packing buffers are sized for (larger n still works).
    static constexpr std::size_t block_tokens = 512;
    static_assert(panel_rows % kernels::packed_bf16::strip == 0 && panel_rows % kernels::packed_int8::strip == 0);

    /// @throws config_error for a value outside the enum.
    void set_format(const matmul_weights& w, weight_format f) {
        if (f != weight_format::f32 && f != weight_format::bf16 && f != weight_format::bf16_dot &&
            f != weight_format::int8)
            throw config_error("set_weight_format: unknown format " + std::to_string(static_cast<int>(f)));
        w16_ = {};
        packed_ = {};
        packed8_ = {};
        if (f == weight_format::bf16) {
            w16_.resize(w.rows * w.cols);
            for (std::size_t i = 0; i < w16_.size(); ++i) w16_[i] = bfloat16::from_float(w.w[i]);
        } else if (f == weight_format::bf16_dot) {
            packed_ = kernels::packed_bf16(w.w, w.rows, w.cols);
        } else if (f == weight_format::int8) {
            packed8_ = kernels::packed_int8(w.w, w.rows, w.cols, w.cols);
        }
        format_ = f;
    }
    [[nodiscard]] weight_format format() const noexcept { return format_; }

    /// The int8 weights (weight_format::int8; empty otherwise).
    [[nodiscard]] const kernels::packed_int8& int8_weights() const noexcept { return packed8_; }
    /// The packed bf16 weights (weight_format::bf16_dot; empty otherwise).
    [[nodiscard]] const kernels::packed_bf16& bf16_weights() const noexcept { return packed_; }

    /// p [n, rows] = e [n, cols] W^T + bias, the panels split between `threads` threads.
    void forward(const matmul_weights& w, const float* e, std::size_t n, float* p, std::size_t threads) const {
        workspace& ws = local();
        const std::uint32_t* e16 = nullptr;
        if (format_ == weight_format::bf16_dot) {
            const std::size_t pairs = packed_.pairs();
            std::uint32_t* buf = grow(ws.e16, n * pairs);
            for (std::size_t i = 0; i < n; ++i) kernels::to_bf16_pairs(e + i * w.cols, w.cols, buf + i * pairs);
            e16 = buf;
        } else if (format_ == weight_format::int8) {
            ws.a8.quantize(e, n, w.cols, packed8_.k4());
        }
        const kernels::int8_activations& a8 = ws.a8;
        const std::size_t panels = (w.rows + panel_rows - 1) / panel_rows;
        detail::split_ranges(threads, panels, [&](std::size_t lo, std::size_t hi) {
            workspace& tws = local();
            for (std::size_t pi = lo; pi < hi; ++pi) panel(tws, w, e, e16, a8, n, p, pi * panel_rows);
        });
    }

    /// p [rows] = W e + bias for one token.
    void gemv(const matmul_weights& w, const float* e, float* p) const {
        workspace& ws = local();
        switch (format_) {
        case weight_format::bf16_dot: {
            // As the forward: the bias, then the dot products accumulated onto it.
            std::uint32_t* e16 = grow(ws.e16, packed_.pairs());
            kernels::to_bf16_pairs(e, w.cols, e16);
            std::copy_n(w.bias, w.rows, p);
            kernels::gemv_bf16_dot(packed_, e16, p);
            return;
        }
        case weight_format::int8:
            ws.a8.quantize(e, 1, w.cols, packed8_.k4());
            kernels::gemm_int8(packed8_, 0, packed8_.strips(), ws.a8, 1, w.bias, p, w.rows);
            return;
        case weight_format::bf16:
            kernels::gemv_bf16(w16_.data(), e, p, w.rows, w.cols);
            break;
        case weight_format::f32:
            kernels::gemv_f32(w.w, e, p, w.rows, w.cols);
            break;
        }
        for (std::size_t c = 0; c < w.rows; ++c) p[c] += w.bias[c];
    }

    /// The kernels `forward` runs in the current format on this CPU.
    [[nodiscard]] std::string forward_path() const {
        switch (format_) {
        case weight_format::bf16_dot:
            return kernels::gemm_bf16_uses_avx512() ? "ours: avx512_bf16 vdpbf16ps" : "ours: portable bf16 dot";
        case weight_format::int8:
            return kernels::gemm_int8_uses_vnni() ? "ours: avx512_vnni vpdpbusd" : "ours: portable int8";
        case weight_format::bf16:
            return kernels::gemm_f32_available() ? "ours: avx512 f32 strips (bf16 widened)" : "eigen (bf16 widened)";
        case weight_format::f32:
            break;
        }
        return kernels::gemm_f32_available() ? "ours: avx512 f32 strips" : "eigen";
    }
    /// The kernels `gemv` runs in the current format on this CPU.
    [[nodiscard]] std::string decode_path() const {
        switch (format_) {
        case weight_format::bf16_dot:
            return kernels::gemm_bf16_uses_avx512() ? "ours: avx512_bf16 gemv" : "ours: portable bf16 dot";
        case weight_format::int8:
            return kernels::gemm_int8_uses_vnni() ? "ours: avx512_vnni gemv" : "ours: portable int8";
        case weight_format::bf16:
        case weight_format::f32:
            break;
        }
        return kernels::gemv_bf16_uses_avx512() ? "ours: avx512 gemv" : "ours: portable gemv";
    }

    /// Frees the calling thread's scratch memory.
    static void release_workspace() { local() = workspace{}; }

private:
    /// Scratch memory of one thread, grown to the largest call seen.
    struct workspace {
        std::vector<float> panel;       ///< [panel_rows, cols] weights packed in strips, or bf16 widened
        std::vector<std::uint32_t> e16; ///< [n, pairs] memory vectors as bf16 pairs (bf16_dot)
        kernels::int8_activations a8;   ///< memory vectors as int8 (int8)
#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
        /// Eigen's GEMM packing buffers, kept across calls (Eigen would malloc them per product).
        using blocking_type = Eigen::internal::gemm_blocking_space<Eigen::ColMajor, float, float, Eigen::Dynamic,
                                                                   Eigen::Dynamic, Eigen::Dynamic, 1, false>;
        std::unique_ptr<blocking_type> blocking;
        Eigen::Index blocking_k = 0;
#endif
    };

    static workspace& local() {
        thread_local workspace ws;
        return ws;
    }

    template <class V>
    static V* grow(std::vector<V>& v, std::size_t n) {
        if (v.size() < n) v.resize(n);
        return v.data();
    }

    /// Columns [r0, r0 + panel_rows) of p [n, rows].
    void panel(workspace& ws, const matmul_weights& w, const float* e, const std::uint32_t* e16,
               const kernels::int8_activations& a8, std::size_t n, float* p, std::size_t r0) const {
        const std::size_t d = w.cols, rows = w.rows, nr = std::min(panel_rows, rows - r0);
        if (format_ == weight_format::bf16_dot) {
            const std::size_t strip = kernels::packed_bf16::strip;
            kernels::gemm_bf16_dot(packed_, r0 / strip, (r0 + nr + strip - 1) / strip, e16, packed_.pairs(), n, p, rows,
                                   w.bias);
            return;
        }
        if (format_ == weight_format::int8) {
            const std::size_t strip = kernels::packed_int8::strip;
            kernels::gemm_int8(packed8_, r0 / strip, (r0 + nr + strip - 1) / strip, a8, n, w.bias, p, rows);
            return;
        }
        if (kernels::gemm_f32_available()) {
            // AVX-512: the panel packed into strips (bf16 weights widened on the way), then the
            // GEMM from the bias.
            float* buf = grow(ws.panel, panel_rows * d);
            if (format_ == weight_format::bf16)
                kernels::pack_f32_strips(w16_.data() + r0 * d, d, nr, d, buf);
            else
                kernels::pack_f32_strips(w.w + r0 * d, d, nr, d, buf);
            kernels::gemm_f32_packed(buf, nr, d, e, d, n, w.bias + r0, p + r0, rows);
            return;
        }
        for (std::size_t i = 0; i < n; ++i) std::copy_n(w.bias + r0, nr, p + i * rows + r0);
        const float* wp = w.w + r0 * d;
        if (format_ == weight_format::bf16) {
            float* buf = grow(ws.panel, panel_rows * d);
            kernels::widen_bf16(w16_.data() + r0 * d, buf, nr * d);
            wp = buf;
        }
        gemm_accumulate(ws, wp, static_cast<Eigen::Index>(nr), e, static_cast<Eigen::Index>(n),
                        static_cast<Eigen::Index>(d), p + r0, static_cast<Eigen::Index>(rows));
    }

    /// p [n, rows] (row stride `ldp`) += w [rows, D] e^T for e [n, D]: Eigen's GEMM. With Eigen
    /// 3.4 its packing buffers live in the workspace, so that the call allocates nothing; the
    /// blocking depends only on the constants and D, so every panel of every call (on any
    /// thread) accumulates in the same order.
    static void gemm_accumulate(workspace& ws, const float* w, Eigen::Index rows, const float* e, Eigen::Index n,
                                Eigen::Index d_mem, float* p, Eigen::Index ldp) {
#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
        if (!ws.blocking || ws.blocking_k != d_mem) {
            ws.blocking = std::make_unique<typename workspace::blocking_type>(
                static_cast<Eigen::Index>(panel_rows), static_cast<Eigen::Index>(block_tokens), d_mem, 1, true);
            ws.blocking->allocateAll();
            ws.blocking_k = d_mem;
        }
        // p^T [rows, n] (column-major, leading dimension ldp) += w (row-major) * e^T (column-major).
        Eigen::internal::general_matrix_matrix_product<Eigen::Index, float, Eigen::RowMajor, false, float,
                                                       Eigen::ColMajor, false, Eigen::ColMajor, 1>::run(rows, n, d_mem,
                                                                                                        w, d_mem, e,
                                                                                                        d_mem, p, 1,
                                                                                                        ldp, 1.0f,
                                                                                                        *ws.blocking);
#else
        (void)ws;
        using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        using outer = Eigen::OuterStride<>;
        Eigen::Map<matrix, 0, outer> pm(p, n, rows, outer(ldp));
        pm.noalias() += Eigen::Map<const matrix>(e, n, d_mem) * Eigen::Map<const matrix>(w, rows, d_mem).transpose();
#endif
    }

    weight_format format_ = weight_format::f32;
    std::vector<bfloat16> w16_;    ///< bf16 copy (bf16)
    kernels::packed_bf16 packed_;  ///< bf16 copy packed for dot products (bf16_dot)
    kernels::packed_int8 packed8_; ///< int8 copy packed for vpdpbusd (int8)
};

static_assert(matmul_backend<host_matmul>);

ENGRAM_END_NAMESPACE
