// bench_v41: DeepSeek-V4.1-Flash's Engram layer at its real size, each figure next to its limit
// measured in the same run (best of N; the machines are shared and noisy).
//
// 1. Lookup: a sparse 101 GB file in the checkpoint's exact layout (`layers.1.engram.embed.weight`
//    F8_E4M3 [384006168, 256], `embed.scale` F8_E8M0 [384006168, 8]) opened in place; the 24 rows
//    of each of 10,000 hashed tokens gathered and decoded to bf16 and to f32, against a bare probe
//    that copies the same bytes (codes and scales) with the same prefetching; VmRSS after the
//    10,000 tokens. The touched rows are written first (random codes, realistic scales); the rest
//    of the file is holes. Every run maps the file afresh, so each pays the same page faults.
// 2. The layer at real width (hidden 5120, hc 4, wkv 6144 -> 25600, random FP8 weights) on T = 512
//    (forward) and T = 1 (decode step), rows from that table, against the same projection as a
//    plain bf16 GEMM (GEMV) of those shapes with the same kernel, for the bf16_dot and f32 weight
//    formats, on 1 and 2 threads.
//
// Usage: bench_v41 [--quick] [--lookup-only | --layer-only] [--dir DIR] (DIR: where the sparse
// files go; default /tmp)
#include <engram/layer/bf16_io.hpp>
#include <engram/model/deepseek_v41.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace v41 = engram::deepseek_v41;
using clock_type = std::chrono::steady_clock;

double seconds(const std::function<void()>& f) {
    const auto t0 = clock_type::now();
    f();
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// The best (smallest) time of `reps` runs of `f`.
double best_of(int reps, const std::function<void()>& f) {
    double best = 1e300;
    for (int i = 0; i < reps; ++i) best = std::min(best, seconds(f));
    return best;
}

std::string cpu_line() {
    std::ifstream in("/proc/cpuinfo");
    std::string line, model, flags;
    while (std::getline(in, line)) {
        if (model.empty() && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
        if (flags.empty() && line.rfind("flags", 0) == 0) flags = line;
    }
    std::string have;
    for (const char* f : {"avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "avx512ifma", "amx_bf16", "amx_int8"})
        if (flags.find(std::string(" ") + f) != std::string::npos) have += std::string(" ") + f;
    return model + " (" + std::to_string(std::thread::hardware_concurrency()) + " threads;" + have + ")";
}

long vm_rss_kib() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

/// A token map with V4.1-Flash's sizes (V = 129,280 onto V' = 99,092; which id maps where does
/// not matter to these figures).
engram::canonical_table flash_vocab() {
    std::vector<engram::token_id> lookup(129280);
    for (std::size_t i = 0; i < lookup.size(); ++i) lookup[i] = static_cast<engram::token_id>(i % 99092);
    return engram::canonical_table::from_lookup(std::move(lookup));
}

/// A safetensors file of `rows` x 256 FP8 codes and `rows` x 8 scale bytes, all holes.
void write_sparse_table(const std::filesystem::path& path, std::int64_t rows) {
    const std::int64_t codes = rows * 256, scales = rows * 8;
    std::string header = "{\"layers.1.engram.embed.weight\":{\"dtype\":\"F8_E4M3\",\"shape\":[" + std::to_string(rows) +
                         ",256],\"data_offsets\":[0," + std::to_string(codes) +
                         "]},\"layers.1.engram.embed.scale\":{\"dtype\":\"F8_E8M0\",\"shape\":[" +
                         std::to_string(rows) + ",8],\"data_offsets\":[" + std::to_string(codes) + "," +
                         std::to_string(codes + scales) + "]}}";
    while ((header.size() + 8) % 4096 != 0) header += ' '; // the rows start on a page
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) throw std::runtime_error("cannot create " + path.string());
    std::uint64_t n = header.size();
    if (::write(fd, &n, 8) != 8 || ::write(fd, header.data(), header.size()) != static_cast<ssize_t>(header.size()) ||
        ::ftruncate(fd, static_cast<off_t>(8 + header.size() + static_cast<std::uint64_t>(codes + scales))) != 0)
        throw std::runtime_error("cannot write " + path.string());
    ::close(fd);
}

/// Writes random codes and scale bytes 118..121 into the rows `ids` (the header is `data` bytes long).
void fill_rows(const std::filesystem::path& path, std::uint64_t data, std::int64_t rows,
               const std::vector<engram::row_id>& ids) {
    const int fd = ::open(path.c_str(), O_RDWR);
    std::mt19937_64 rng(5);
    std::vector<std::uint8_t> codes(256);
    for (engram::row_id r : ids) {
        for (auto& c : codes) {
            c = static_cast<std::uint8_t>(rng());
            if ((c & 0x7F) == 0x7F) c = 0x30;
        }
        std::uint8_t s[8];
        for (auto& b : s) b = static_cast<std::uint8_t>(118 + rng() % 4);
        const auto at = static_cast<off_t>(data + static_cast<std::uint64_t>(r) * 256);
        const auto sat =
            static_cast<off_t>(data + static_cast<std::uint64_t>(rows) * 256 + static_cast<std::uint64_t>(r) * 8);
        if (::pwrite(fd, codes.data(), 256, at) != 256 || ::pwrite(fd, s, 8, sat) != 8)
            throw std::runtime_error("cannot write rows of " + path.string());
    }
    ::close(fd);
}

/// Where the probe reads: the codes and scales regions of the mapped file.
struct fp8_view_t {
    const std::byte* codes;
    const std::byte* scales;
};

/// The probe: the same bytes as the gather (256 codes + 8 scales a row) copied, prefetching
/// 16 rows ahead as the gather does.
void probe(const fp8_view_t* t, const std::vector<engram::row_id>& ids, std::size_t first, std::size_t n,
           std::byte* out) {
    constexpr std::size_t ahead = 16;
    auto pf = [&](std::size_t i) {
        const auto r = static_cast<std::size_t>(ids[i]);
        for (std::size_t l = 0; l < 256; l += 64) __builtin_prefetch(t->codes + r * 256 + l);
        __builtin_prefetch(t->scales + r * 8);
    };
    for (std::size_t i = first; i < first + std::min(n, ahead); ++i) pf(i);
    for (std::size_t i = first; i < first + n; ++i) {
        if (i + ahead < first + n) pf(i + ahead);
        const auto r = static_cast<std::size_t>(ids[i]);
        std::memcpy(out + (i - first) * 264, t->codes + r * 256, 256);
        std::memcpy(out + (i - first) * 264 + 256, t->scales + r * 8, 8);
    }
}

void bench_lookup(const std::filesystem::path& dir, bool quick) {
    const auto cfg = v41::flash_config();
    const auto vocab = flash_vocab();
    const auto layout = cfg.layouts(vocab)[0];
    const std::int64_t rows = layout.total_rows;
    const std::size_t tokens = 10000, heads = layout.num_heads();
    std::vector<engram::token_id> raw(tokens);
    std::mt19937_64 rng(1);
    for (auto& t : raw) t = static_cast<engram::token_id>(rng() % 129280);
    std::vector<engram::row_id> ids(tokens * heads);
    v41::layer_type::hasher_type(layout).rows_tokens(vocab, raw, 1, tokens, ids);

    const auto path = dir / ("engram_bench_v41_" + std::to_string(::getpid()) + ".safetensors");
    write_sparse_table(path, rows);
    const std::uint64_t data = 4096;
    fill_rows(path, data, rows, ids);
    std::printf("lookup: %s, %.1f GB sparse (%lld rows x 256 FP8 + 8 E8M0), %zu tokens x %zu rows\n", path.c_str(),
                static_cast<double>(rows) * 264 / 1e9, static_cast<long long>(rows), tokens, heads);

    const long rss0 = vm_rss_kib();
    long rss_after = rss0;
    const int reps = quick ? 4 : 8;
    double t_bf16 = 1e300, t_f32 = 1e300, t_probe = 1e300, t_tok_bf16 = 1e300, t_tok_probe = 1e300;
    const std::size_t batch = 512 * heads;
    std::vector<engram::bfloat16> out16(batch * 256);
    std::vector<float> out32(batch * 256);
    std::vector<std::byte> raw_out(batch * 264);
    for (int rep = 0; rep < reps; ++rep) {
        auto timed_probe = [&](std::size_t step) {
            const auto file = engram::safetensors_file::open(path);
            const fp8_view_t view{file.at("layers.1.engram.embed.weight").bytes.data(),
                                  file.at("layers.1.engram.embed.scale").bytes.data()};
            ::madvise(const_cast<std::byte*>(view.codes) - data, static_cast<std::size_t>(rows) * 264, MADV_RANDOM);
            auto pass = [&] {
                for (std::size_t i = 0; i < ids.size(); i += step)
                    probe(&view, ids, i, std::min(step, ids.size() - i), raw_out.data());
            };
            if (std::getenv("ENGRAM_BENCH_WARM")) pass();
            return seconds(pass);
        };
        // A fresh mapping for each measurement: every one pays the same minor faults.
        auto timed_gather = [&](auto&& one_batch) {
            const auto table =
                engram::fp8_tensor_table::open(path, "layers.1.engram.embed.weight", "layers.1.engram.embed.scale");
            auto pass = [&] {
                for (std::size_t i = 0; i < ids.size(); i += batch)
                    one_batch(table, i, std::min(batch, ids.size() - i));
            };
            if (std::getenv("ENGRAM_BENCH_WARM")) pass();
            const double t = seconds(pass);
            rss_after = std::max(rss_after, vm_rss_kib()); // while the table is mapped
            return t;
        };
        if (rep % 2 == 1) { // alternate which runs first
            t_probe = std::min(t_probe, timed_probe(batch));
            t_tok_probe = std::min(t_tok_probe, timed_probe(heads));
        }
        t_bf16 = std::min(t_bf16, timed_gather([&](const auto& t, std::size_t i, std::size_t n) {
                              t.gather(std::span<const engram::row_id>(ids).subspan(i, n),
                                       std::span<engram::bfloat16>(out16.data(), n * 256));
                          }));
        t_f32 = std::min(t_f32, timed_gather([&](const auto& t, std::size_t i, std::size_t n) {
                             t.gather(std::span<const engram::row_id>(ids).subspan(i, n),
                                      std::span<float>(out32.data(), n * 256));
                         }));
        t_tok_bf16 = std::min(t_tok_bf16, timed_gather([&](const auto& t, std::size_t i, std::size_t n) {
                                  for (std::size_t k = i; k < i + n; k += heads)
                                      t.gather(std::span<const engram::row_id>(ids).subspan(k, heads),
                                               std::span<engram::bfloat16>(out16.data(), heads * 256));
                              }));
        if (rep % 2 == 0) {
            t_probe = std::min(t_probe, timed_probe(batch));
            t_tok_probe = std::min(t_tok_probe, timed_probe(heads));
        }
    }
    const double n_rows = static_cast<double>(ids.size());
    auto line = [&](const char* what, double t, double probe_t) {
        std::printf("  %-44s %8.2f Mrows/s %7.2f GB/s of rows read   %.3f of the probe\n", what, n_rows / t / 1e6,
                    n_rows * 264 / t / 1e9, probe_t / t);
    };
    std::printf("  %-44s %8.2f Mrows/s %7.2f GB/s\n", "probe (copy the same 264 B a row, 512 tokens)",
                n_rows / t_probe / 1e6, n_rows * 264 / t_probe / 1e9);
    line("gather -> bf16, 512 tokens a call", t_bf16, t_probe);
    line("gather -> f32, 512 tokens a call", t_f32, t_probe);
    std::printf("  %-44s %8.2f Mrows/s\n", "probe, one token (24 rows) a call", n_rows / t_tok_probe / 1e6);
    line("gather -> bf16, one token (24 rows) a call", t_tok_bf16, t_tok_probe);
    std::printf(
        "  VmRSS: %.1f MiB before opening, %.1f MiB after %zu tokens (%zu rows of %.1f GB; %.1f KiB a row touched)\n",
        rss0 / 1024.0, rss_after / 1024.0, tokens, ids.size(), static_cast<double>(rows) * 264 / 1e9,
        static_cast<double>(rss_after - rss0) / n_rows);
    std::filesystem::remove(path);
}

/// A V4.1 layer at real width with random FP8 weights; rows from a sparse table as above.
void bench_layer(const std::filesystem::path& dir, bool quick) {
    const auto cfg = v41::flash_config();
    const auto vocab = flash_vocab();
    const auto layout = cfg.layouts(vocab)[0];
    const std::size_t t_long = 512;
    std::vector<engram::token_id> raw(t_long);
    std::mt19937_64 rng(2);
    for (auto& t : raw) t = static_cast<engram::token_id>(rng() % 129280);
    std::vector<engram::row_id> ids(t_long * layout.num_heads());
    v41::layer_type::hasher_type(layout).rows_tokens(vocab, raw, 1, t_long, ids);
    const auto path = dir / ("engram_bench_v41_layer_" + std::to_string(::getpid()) + ".safetensors");
    write_sparse_table(path, layout.total_rows);
    fill_rows(path, 4096, layout.total_rows, ids);

    // wkv [25600, 6144] FP8 with 32x32 scales, norm weights around 1.
    const std::int64_t out_rows = 25600, in_cols = 6144;
    std::vector<std::uint8_t> w(static_cast<std::size_t>(out_rows * in_cols)), ws(800 * 192);
    for (auto& c : w) {
        c = static_cast<std::uint8_t>(rng());
        if ((c & 0x7F) == 0x7F) c = 0x30;
    }
    for (auto& s : ws) s = static_cast<std::uint8_t>(112 + rng() % 3);
    std::vector<std::uint16_t> qk(4 * 5120);
    for (auto& v : qk) v = engram::bfloat16::from_float(1.0f + 0.01f * static_cast<float>(rng() % 100)).bits;
    engram::safetensors_writer wr;
    auto bytes = [](const std::vector<std::uint8_t>& v) {
        return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size());
    };
    wr.add("layers.1.engram.wkv.weight", engram::dtype::f8_e4m3, {out_rows, in_cols}, bytes(w));
    wr.add("layers.1.engram.wkv.scale", engram::dtype::f8_e8m0, {800, 192}, bytes(ws));
    wr.add_bf16("layers.1.engram.q_weight", {4, 5120}, qk);
    wr.add_bf16("layers.1.engram.k_weight", {4, 5120}, qk);
    w = {};
    v41::tensor_set tensors;
    tensors.add_all(
        std::make_shared<const engram::safetensors_file>(engram::safetensors_file::from_bytes(wr.to_bytes())));
    tensors.add_all(std::make_shared<const engram::safetensors_file>(engram::safetensors_file::open(path)));

    const std::size_t width = 4 * 5120;
    std::vector<engram::bfloat16> hidden(t_long * width), out(t_long * width);
    std::normal_distribution<float> nd;
    for (auto& h : hidden) h = engram::bfloat16::from_float(nd(rng));
    const int reps = quick ? 2 : 4, step_reps = quick ? 5 : 15;
    std::printf("layer: hidden 5120 x hc 4, wkv 6144 -> 25600 (FP8, dequantised once), rows in place from %.1f GB\n",
                static_cast<double>(layout.total_rows) * 264 / 1e9);
    for (auto format : {engram::weight_format::bf16_dot, engram::weight_format::f32}) {
        const char* fname = format == engram::weight_format::bf16_dot ? "bf16_dot" : "f32";
        double load_s = 0;
        std::optional<v41::layer_type> layer;
        load_s = seconds([&] { layer.emplace(v41::load_layer(cfg, 1, vocab, tensors, format)); });
        // The limit: the same projection as one bf16 GEMM / GEMV of these shapes (the kernel the
        // bf16_dot layer uses), on memory vectors already in bf16 pairs.
        const engram::kernels::packed_bf16 packed(layer->projection_weight().data(), 25600, 6144);
        std::vector<std::uint32_t> e16(t_long * packed.pairs());
        std::vector<float> e(6144), p(t_long * 25600);
        for (std::size_t i = 0; i < t_long; ++i) {
            for (auto& v : e) v = nd(rng);
            engram::kernels::to_bf16_pairs(e.data(), e.size(), e16.data() + i * packed.pairs());
        }
        for (std::size_t threads : {std::size_t{1}, std::size_t{2}}) {
            layer->set_threads(threads);
            auto gemm = [&](std::size_t n) {
                std::vector<std::thread> pool;
                const std::size_t strips = packed.strips();
                for (std::size_t c = 1; c < threads; ++c)
                    pool.emplace_back([&, c] {
                        engram::kernels::gemm_bf16_dot(packed, strips * c / threads, strips * (c + 1) / threads,
                                                       e16.data(), packed.pairs(), n, p.data(), 25600, nullptr);
                    });
                engram::kernels::gemm_bf16_dot(packed, 0, strips / threads, e16.data(), packed.pairs(), n, p.data(),
                                               25600, nullptr);
                for (auto& t : pool) t.join();
            };
            const double g512 = best_of(reps, [&] { gemm(t_long); });
            const double f512 = best_of(reps, [&] { engram::forward_bf16(*layer, raw, 1, t_long, hidden, out); });
            std::printf("  %-8s %zu thread(s)  T = 512: forward %8.1f ms   bf16 GEMM %8.1f ms   GEMM/forward %.3f"
                        "   (%.0f GFLOP/s)\n",
                        fname, threads, f512 * 1e3, g512 * 1e3, g512 / f512, 2.0 * 512 * 25600 * 6144 / f512 / 1e9);
            if (threads == 1) {
                const double g1 =
                    best_of(step_reps, [&] { engram::kernels::gemv_bf16_dot(packed, e16.data(), p.data()); });
                auto state = layer->new_decode_state();
                std::size_t t = 0;
                const double s1 = best_of(step_reps, [&] {
                    engram::decode_step_bf16(*layer, state, raw[t % t_long],
                                             std::span<const engram::bfloat16>(hidden).subspan(0, width),
                                             std::span<engram::bfloat16>(out).subspan(0, width));
                    ++t;
                });
                std::printf("  %-8s 1 thread     T = 1:   step    %8.2f ms   bf16 GEMV %8.2f ms   GEMV/step    %.3f"
                            "   (%.1f GB/s of weights)\n",
                            fname, s1 * 1e3, g1 * 1e3, g1 / s1,
                            (format == engram::weight_format::f32 ? 4.0 : 2.0) * 25600 * 6144 / s1 / 1e9);
            }
        }
        std::printf("  %-8s load (wkv dequantised, packed): %.2f s\n", fname, load_s);
    }
    std::filesystem::remove(path);
}

} // namespace

int main(int argc, char** argv) {
    bool quick = false, lookup = true, layer = true;
    std::filesystem::path dir = "/tmp";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick")
            quick = true;
        else if (a == "--lookup-only")
            layer = false;
        else if (a == "--layer-only")
            lookup = false;
        else if (a == "--dir" && i + 1 < argc)
            dir = argv[++i];
        else {
            std::fprintf(stderr, "usage: bench_v41 [--quick] [--lookup-only | --layer-only] [--dir DIR]\n");
            return 2;
        }
    }
    std::printf("CPU: %s\n", cpu_line().c_str());
    try {
        if (lookup) bench_lookup(dir, quick);
        if (layer) bench_layer(dir, quick);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_v41: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
