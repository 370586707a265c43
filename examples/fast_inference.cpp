// The layer's speed options on one layer: the projection weights as f32 (default), as a bf16
// copy, or as bf16 dot products (weights and memory vectors in bf16), each on 1 and 2 threads.
// Prints the time of a forward over 512 tokens and of a decode step for each, and how far each
// output is from the f32 one; exits non-zero if a format strays beyond bf16 rounding or threads
// change the bits.
#include <engram/layer.hpp>

#include <algorithm> // for max, min
#include <chrono>    // for steady_clock
#include <cmath>     // for fabs
#include <cstdio>    // for printf
#include <cstring>   // for memcmp
#include <random>    // for mt19937_64
#include <span>      // for span
#include <vector>    // for vector

namespace {

double seconds_best_of(int reps, auto&& f) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    }
    return diff / scale;
}

} // namespace

int main() {
    // The reference default widths (H = 1024, M = 4, D = 2 x 8 x 64 = 1024) with small tables.
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {20000, 20000};
    const std::size_t vocab = 30000;
    engram::layer<> layer(cfg, engram::canonical_table::identity(vocab));
    layer.randomize(7);

    const std::size_t T = 512, MH = static_cast<std::size_t>(cfg.branches * cfg.hidden);
    std::mt19937_64 rng(1);
    std::uniform_int_distribution<engram::token_id> pick(0, static_cast<engram::token_id>(vocab - 1));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<engram::token_id> ids(T);
    for (auto& t : ids) t = pick(rng);
    std::vector<float> hidden(T * MH), out(T * MH), reference(T * MH), step(MH);
    for (auto& v : hidden) v = normal(rng);

    layer.forward(ids, 1, T, hidden, reference); // f32 on one thread: the reference output

    struct choice {
        engram::weight_format format;
        const char* name;
    };
    const choice formats[] = {{engram::weight_format::f32, "f32"},
                              {engram::weight_format::bf16, "bf16"},
                              {engram::weight_format::bf16_dot, "bf16_dot"},
                              {engram::weight_format::int8, "int8"}};
    bool ok = true;
    std::printf("%-9s %8s %14s %14s %12s\n", "weights", "threads", "forward (ms)", "decode (us)", "rel. error");
    for (const auto& f : formats) {
        layer.set_weight_format(f.format);
        std::vector<float> one_thread;
        for (std::size_t threads : {1u, 2u}) {
            layer.set_threads(threads);
            const double fwd = seconds_best_of(5, [&] { layer.forward(ids, 1, T, hidden, out); });
            auto state = layer.new_decode_state();
            std::size_t t = 0;
            const double dec = seconds_best_of(5, [&] {
                for (int k = 0; k < 16; ++k, t = (t + 1) % T)
                    layer.decode_step(state, ids[t], std::span(hidden).subspan(t * MH, MH), step);
            });
            const double err = relative_error(out, reference);
            std::printf("%-9s %8zu %14.2f %14.1f %12.2e  %s\n", f.name, threads, fwd * 1e3, dec / 16 * 1e6, err,
                        layer.matmul().forward_path().c_str());
            // bf16 rounding (2^-9 per value) and int8 (2^-8 of each vector's largest value)
            // through the gates stay well under 5e-2.
            ok = ok && err <= (f.format == engram::weight_format::f32 ? 0.0 : 5e-2);
            if (threads == 1)
                one_thread = out;
            else
                ok = ok && std::memcmp(out.data(), one_thread.data(), out.size() * sizeof(float)) == 0;
        }
    }
    std::printf("%s\n", ok ? "every format within its rounding of f32; threads give the same bits"
                           : "FAILED: a format strayed or threads changed the output");
    return ok ? 0 : 1;
}
