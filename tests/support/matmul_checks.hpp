#pragma once
// Conformance checks every matmul backend passes (host_matmul, onednn_matmul): each weight
// format's forward and gemv against oracles written here from the format's definition (double
// sums of the rounded operands; the int8 format's integers and scaling step exactly), forward
// against gemv, and thread counts against one thread.

#include <engram/layer/config.hpp>
#include <engram/matmul/backend.hpp>
#include <engram/storage/row_types.hpp>

#include "support/catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace engram_test {

struct matmul_case {
    std::size_t rows, cols;
    std::vector<float> w, bias;
    [[nodiscard]] engram::matmul_weights view() const { return {w.data(), bias.data(), rows, cols}; }
};

/// Weights ~ N(0, 0.05) with a few rows of larger and of all-zero values (per-row scales).
inline matmul_case make_matmul_case(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.05f);
    matmul_case c{rows, cols, std::vector<float>(rows * cols), std::vector<float>(rows)};
    for (std::size_t r = 0; r < rows; ++r) {
        const float gain = r % 37 == 5 ? 20.0f : 1.0f;
        for (std::size_t k = 0; k < cols; ++k) c.w[r * cols + k] = r % 97 == 11 ? 0.0f : gain * normal(rng);
        c.bias[r] = normal(rng);
    }
    return c;
}

inline std::vector<float> matmul_inputs(std::size_t n, std::size_t cols, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> e(n * cols);
    for (auto& v : e) v = normal(rng);
    if (n > 2)
        for (std::size_t k = 0; k < cols; ++k) e[2 * cols + k] = 0.0f; // an all-zero token
    return e;
}

/// A small layer configuration for layer-level matmul tests (D = 96: K not a multiple of 32).
inline engram::layer_config small_layer_config(std::int64_t hidden, std::int64_t branches) {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {400, 550};
    cfg.hash.heads_per_ngram = 2;
    cfg.hash.embed_per_ngram = 48;
    cfg.hidden = hidden;
    cfg.branches = branches;
    cfg.kernel_size = 3;
    return cfg;
}

inline float round_bf16(float x) { return engram::bfloat16::from_float(x).to_float(); }

/// The int8 format by its definition: symmetric per-vector quantisation (scale max|x| / 127,
/// q = clamp(round-half-even(x * 127 / max|x|))), exact integer sums, fma(sum, s_e * s_w, b).
struct int8_oracle {
    static float quantize(const float* x, std::size_t n, std::vector<int>& q) {
        float amax = 0;
        for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
        q.assign(n, 0);
        if (amax == 0) return 1.0f;
        const float inv = 127.0f / amax;
        for (std::size_t i = 0; i < n; ++i)
            q[i] = static_cast<int>(std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f));
        return amax / 127.0f;
    }
    static std::vector<float> run(const matmul_case& c, const std::vector<float>& e, std::size_t n) {
        std::vector<std::vector<int>> qw(c.rows);
        std::vector<float> sw(c.rows);
        for (std::size_t r = 0; r < c.rows; ++r) sw[r] = quantize(c.w.data() + r * c.cols, c.cols, qw[r]);
        std::vector<float> p(n * c.rows);
        std::vector<int> qe;
        for (std::size_t t = 0; t < n; ++t) {
            const float se = quantize(e.data() + t * c.cols, c.cols, qe);
            for (std::size_t r = 0; r < c.rows; ++r) {
                std::int64_t acc = 0;
                for (std::size_t k = 0; k < c.cols; ++k) acc += static_cast<std::int64_t>(qe[k]) * qw[r][k];
                p[t * c.rows + r] = std::fma(static_cast<float>(acc), se * sw[r], c.bias[r]);
            }
        }
        return p;
    }
};

/// Largest |got - oracle| / (sum_k |e_k w_k| + |b|) over all outputs, the oracle in double on
/// the operands rounded as `format` rounds them (f32: as given; bf16: w; bf16_dot: w and e).
inline double float_format_error(const matmul_case& c, const std::vector<float>& e, std::size_t n,
                                 const std::vector<float>& got, engram::weight_format f) {
    const bool round_w = f != engram::weight_format::f32, round_e = f == engram::weight_format::bf16_dot;
    double worst = 0;
    for (std::size_t t = 0; t < n; ++t)
        for (std::size_t r = 0; r < c.rows; ++r) {
            double s = c.bias[r], mag = std::fabs(c.bias[r]);
            for (std::size_t k = 0; k < c.cols; ++k) {
                const double a = round_e ? round_bf16(e[t * c.cols + k]) : e[t * c.cols + k];
                const double b = round_w ? round_bf16(c.w[r * c.cols + k]) : c.w[r * c.cols + k];
                s += a * b;
                mag += std::fabs(a * b);
            }
            worst = std::max(worst, std::fabs(got[t * c.rows + r] - s) / (mag > 0 ? mag : 1.0));
        }
    return worst;
}

/// The int8 format against the exact float product: within the quantisation bound
/// (s_e / 2) sum|w| + (s_w / 2) sum|e| + K s_e s_w / 4 plus float rounding, for every output.
inline void check_int8_error_bound(const matmul_case& c, const std::vector<float>& e, std::size_t n,
                                   const std::vector<float>& got) {
    std::vector<int> q;
    std::size_t violations = 0;
    double worst_share = 0;
    for (std::size_t t = 0; t < n; ++t) {
        const float* et = e.data() + t * c.cols;
        const double se = int8_oracle::quantize(et, c.cols, q);
        double sum_e = 0;
        for (std::size_t k = 0; k < c.cols; ++k) sum_e += std::fabs(et[k]);
        for (std::size_t r = 0; r < c.rows; ++r) {
            const float* wr = c.w.data() + r * c.cols;
            const double sw = int8_oracle::quantize(wr, c.cols, q);
            double exact = c.bias[r], sum_w = 0, mag = std::fabs(c.bias[r]);
            for (std::size_t k = 0; k < c.cols; ++k) {
                exact += static_cast<double>(et[k]) * wr[k];
                sum_w += std::fabs(wr[k]);
                mag += std::fabs(static_cast<double>(et[k]) * wr[k]);
            }
            const double bound =
                se / 2 * sum_w + sw / 2 * sum_e + static_cast<double>(c.cols) * se * sw / 4 + 1e-6 * mag + 1e-30;
            const double err = std::fabs(got[t * c.rows + r] - exact);
            worst_share = std::max(worst_share, err / bound);
            if (err > bound) ++violations;
        }
    }
    INFO("int8 error / bound, worst: " << worst_share);
    CHECK(violations == 0);
    CHECK(worst_share > 0.0); // the check can fail: quantisation does change the values
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// What a backend promises beyond the oracles (host_matmul promises all of it).
struct matmul_promises {
    bool decode_bits_bf16_dot = true; ///< gemv gives forward's bits for bf16_dot
    bool thread_bits_float = true;    ///< forward's bits do not depend on threads (float formats)
};

/// Every format of backend `B` on a few shapes (channel tails, K not a multiple of 4 or 32, one
/// and many tokens, an all-zero token and an all-zero weight row).
template <class B>
void check_matmul_backend(B& backend, matmul_promises promises = {}) {
    using engram::weight_format;
    struct shape {
        std::size_t rows, cols, n;
    };
    for (const shape s : {shape{650, 1030, 13}, shape{96, 64, 1}, shape{1040, 96, 520}}) {
        const auto c = make_matmul_case(s.rows, s.cols, s.rows * 31 + s.cols);
        const auto e = matmul_inputs(s.n, s.cols, s.n + 7);
        for (auto f : {weight_format::f32, weight_format::bf16, weight_format::bf16_dot, weight_format::int8}) {
            backend.set_format(c.view(), f);
            CAPTURE(s.rows, s.cols, s.n, std::string(engram::to_string(f)), backend.forward_path(),
                    backend.decode_path());
            REQUIRE(backend.format() == f);
            std::vector<float> p(s.n * s.rows), p2(s.n * s.rows), dec(s.n * s.rows);
            // Float sums of K products: within (K + 2) u of sum |e_k w_k| (u = 2^-24).
            const double float_bound = static_cast<double>(s.cols + 2) * 0x1p-24;
            backend.forward(c.view(), e.data(), s.n, p.data(), 1);
            if (f == weight_format::int8) {
                CHECK(same_bits(p, int8_oracle::run(c, e, s.n)));
                check_int8_error_bound(c, e, s.n, p);
            } else {
                CHECK(float_format_error(c, e, s.n, p, f) < float_bound);
            }
            // One token at a time.
            for (std::size_t t = 0; t < s.n; ++t)
                backend.gemv(c.view(), e.data() + t * s.cols, dec.data() + t * s.rows);
            if (f == weight_format::int8 || (f == weight_format::bf16_dot && promises.decode_bits_bf16_dot))
                CHECK(same_bits(p, dec));
            else
                CHECK(float_format_error(c, e, s.n, dec, f) < float_bound);
            // Two threads.
            backend.forward(c.view(), e.data(), s.n, p2.data(), 2);
            if (f == weight_format::int8 || promises.thread_bits_float)
                CHECK(same_bits(p, p2));
            else
                CHECK(float_format_error(c, e, s.n, p2, f) < float_bound);
        }
    }
}

} // namespace engram_test
