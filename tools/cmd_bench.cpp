// engram bench [lookup]: the main job (hashing, gather, forward and decode against their limits);
// `engram bench prefetch` is in cmd_bench_prefetch.cpp.
#include "cli.hpp"

#include "bench_cli.hpp"

#include <engram/hash/hasher.hpp>
#include <engram/hash/layout.hpp>
#include <engram/kernels/gemm_bf16.hpp>
#include <engram/kernels/gemm_f32.hpp>
#include <engram/layer.hpp>
#include <engram/prefetch.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/file.hpp>
#include <engram/storage/quantized.hpp>

#include "bench_projection.hpp"

#include <fcntl.h>    // for open, posix_fadvise
#include <sys/mman.h> // for mmap, mincore, munmap
#include <unistd.h>   // for write, fsync, unlink, close, sysconf

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace engram_cli {

namespace {

template <class... A>
std::string lformat(const char* f, A... a) {
    char buf[512];
    std::snprintf(buf, sizeof buf, f, a...);
    return buf;
}

// ---- engram bench [lookup]: the main job -------------------------------------------------------

struct lookup_options {
    bool quick = false;
    int max_ngram = 3;    ///< orders 2..N of the layer
    std::size_t reps = 0; ///< 0: 5 (3 with --quick)
    std::string json;
    std::string tokens;
};

/// Canonical ids read from a file of whitespace-separated integers, checked against the vocabulary.
std::vector<engram::token_id> read_token_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw engram::io_error("bench: cannot open '" + path + "'");
    std::vector<engram::token_id> out;
    std::string word;
    while (in >> word) {
        std::size_t used = 0;
        long long v = -1;
        try {
            v = std::stoll(word, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != word.size() || v < 0 || v >= bench_vocab)
            throw engram::input_error("bench: '" + path + "': token '" + word + "' is not an id in [0, " +
                                      std::to_string(bench_vocab) + ")");
        out.push_back(static_cast<engram::token_id>(v));
    }
    if (out.size() < 1024) throw engram::input_error("bench: '" + path + "' has fewer than 1024 tokens");
    return out;
}

/// Prints "  building ...: N s" on stderr every second while a long step runs (only on a terminal).
class progress_ticker {
public:
    explicit progress_ticker(std::string what) : what_(std::move(what)), t0_(clock_type::now()) {
        std::cout << "  " << what_ << " ..." << std::flush;
        if (::isatty(2) != 0)
            thread_ = std::thread([this] {
                std::unique_lock lock(m_);
                while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return done_; }))
                    std::cerr << "\r  " << what_ << ": " << static_cast<int>(seconds_since(t0_)) << " s " << std::flush;
                std::cerr << "\r" << std::string(what_.size() + 16, ' ') << "\r" << std::flush;
            });
    }
    progress_ticker(const progress_ticker&) = delete;
    progress_ticker& operator=(const progress_ticker&) = delete;
    ~progress_ticker() { finish(); }
    void finish() {
        if (finished_) return;
        finished_ = true;
        {
            std::lock_guard lock(m_);
            done_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) thread_.join();
        std::cout << " " << std::fixed << std::setprecision(1) << seconds_since(t0_) << " s\n" << std::flush;
    }

private:
    std::string what_;
    clock_type::time_point t0_;
    std::mutex m_;
    std::condition_variable cv_;
    bool done_ = false, finished_ = false;
    std::thread thread_;
};

volatile std::uint64_t g_sink = 0;

/// Best (smallest) seconds of `reps` runs of `body(rep)`.
template <class Body>
double best_seconds(std::size_t reps, Body&& body) {
    double best = 1e300;
    for (std::size_t r = 0; r < reps; ++r) {
        const auto t0 = clock_type::now();
        body(r);
        best = std::min(best, seconds_since(t0));
    }
    return best;
}

/// Runs `body(part)` for parts 0..n-1 on n threads (part 0 on the caller).
template <class Body>
void on_threads(std::size_t n, Body&& body) {
    std::vector<std::thread> workers;
    for (std::size_t p = 1; p < n; ++p) workers.emplace_back([&body, p] { body(p); });
    body(0);
    for (auto& w : workers) w.join();
}

/// The limit probe: rows copied by a bare memcpy loop (no checks, no conversion, no prefetch).
template <class V>
void probe_copy(const engram::dense_storage::table<V>& t, std::span<const engram::row_id> rows, V* out) {
    const std::size_t dim = t.dim(), bytes = dim * sizeof(V);
    const V* base = t.data();
    for (std::size_t i = 0; i < rows.size(); ++i)
        std::memcpy(out + i * dim, base + static_cast<std::size_t>(rows[i]) * dim, bytes);
}

/// Sequential read bandwidth (bytes/s, best of reps): sums `bytes` of the buffer as 64-bit words.
double read_bandwidth(const void* data, std::size_t bytes, std::size_t reps) {
    return static_cast<double>(bytes / 8 * 8) / projection_bench::read_seconds(data, bytes, reps);
}

std::string fmt_num(double v, int digits) {
    std::ostringstream os;
    os.setf(std::ios::fixed);
    os.precision(digits);
    os << v;
    return os.str();
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, then rename.
void write_atomically(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out << text;
        out.flush();
        if (!out) {
            ::unlink(tmp.c_str());
            throw engram::io_error("bench: cannot write '" + tmp + "'");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw engram::io_error("bench: cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(err));
    }
}

template <class Layer>
int run_lookup(const lookup_options& opt, const engram::layer_config& cfg) {
    Eigen::setNbThreads(1);
    const std::size_t reps = opt.reps ? opt.reps : (opt.quick ? 3 : 5);
    Layer layer(cfg, engram::canonical_table::identity(static_cast<std::size_t>(bench_vocab)));
    const auto& table = layer.table();
    const std::size_t heads = layer.num_heads(), dim = table.dim(), rows = table.rows();
    const std::size_t H = static_cast<std::size_t>(cfg.hidden), M = static_cast<std::size_t>(cfg.branches);
    const std::size_t D = layer.memory_dim(), Kc = static_cast<std::size_t>(cfg.kernel_size);
    std::cout << "engram bench" << (opt.quick ? " --quick" : "") << ": layer " << rows << " rows x " << dim << " f32 ("
              << fmt_num(static_cast<double>(table.size_bytes()) / 1e9, 2) << " GB), orders 2.." << cfg.hash.max_ngram
              << ", " << heads << " heads, D = " << D << ", H = " << H << ", M = " << M << ", Kc = " << Kc
              << "; single thread, best of " << reps << "\n";
    {
        progress_ticker p("building the layer (randomize: rows, projections, norms, conv)");
        layer.randomize(1);
    }
    engram::dense_storage::table<engram::bfloat16> table16(rows, dim);
    {
        progress_ticker p("building the bf16 copy of the rows");
        const auto src = table.values();
        const auto dst = table16.values();
        on_threads(2, [&](std::size_t part) {
            const std::size_t lo = src.size() * part / 2, hi = src.size() * (part + 1) / 2;
            for (std::size_t i = lo; i < hi; ++i) dst[i] = engram::bfloat16::from_float(src[i]);
        });
    }

    // Tokens: one long stream; each gather repetition takes its next slice.
    const std::size_t slice_tokens = opt.quick ? 16384 : 65536;
    std::vector<engram::token_id> tokens;
    if (!opt.tokens.empty()) {
        tokens = read_token_file(opt.tokens);
    } else {
        tokens = zipf_stream(std::size_t{1} << (opt.quick ? 18 : 20), 1);
    }
    const std::size_t n_tok = tokens.size();
    std::cout << "  tokens: " << n_tok
              << (opt.tokens.empty() ? " Zipf(1.1) ids over " : " ids from '" + opt.tokens + "', V' = ")
              << (opt.tokens.empty() ? std::to_string(bench_vocab) : std::to_string(bench_vocab)) << "\n";

    // 1. Hashing: the whole stream in batches of 16384 tokens (B = 1), 1 and 2 threads. As in a
    //    serving loop, each batch's row ids go to one reused buffer (2 MiB: cache-resident) per
    //    thread; the "stream" variant writes every batch's ids into one array of the whole stream
    //    (n_tok x 16 x 8 bytes, far beyond the cache: then the stores' bandwidth bounds it).
    const auto& hasher = layer.hasher();
    std::vector<engram::row_id> stream_rows(n_tok * heads);
    const std::size_t chunk = 16384;
    std::vector<engram::row_id> batch_rows[2] = {std::vector<engram::row_id>(chunk * heads),
                                                 std::vector<engram::row_id>(chunk * heads)};
    auto hash_range = [&](std::size_t lo, std::size_t hi, std::vector<engram::row_id>* reuse) {
        for (std::size_t at = lo; at < hi; at += chunk) {
            const std::size_t n = std::min(chunk, hi - at);
            const auto dst = reuse != nullptr ? std::span<engram::row_id>(*reuse).first(n * heads)
                                              : std::span<engram::row_id>(stream_rows).subspan(at * heads, n * heads);
            hasher.rows(std::span<const engram::token_id>(tokens).subspan(at, n), 1, n, dst);
        }
    };
    const double hash_s = best_seconds(reps, [&](std::size_t) { hash_range(0, n_tok, &batch_rows[0]); });
    const double hash_s2 = best_seconds(reps, [&](std::size_t) {
        on_threads(2, [&](std::size_t p) {
            hash_range(n_tok * p / 2 / chunk * chunk, p ? n_tok : n_tok / 2 / chunk * chunk, &batch_rows[p]);
        });
    });
    const double hash_stream_s = best_seconds(reps, [&](std::size_t) { hash_range(0, n_tok, nullptr); });
    const double hash_mtok = static_cast<double>(n_tok) / hash_s / 1e6;
    const double hash_mtok2 = static_cast<double>(n_tok) / hash_s2 / 1e6;
    const double hash_stream_mtok = static_cast<double>(n_tok) / hash_stream_s / 1e6;

    // 2. Gathers: slices of the stream, a shared cursor so that no measurement re-reads the rows
    //    the previous one just read.
    const std::size_t slice = std::min(slice_tokens, n_tok);
    std::size_t cursor = 0;
    auto next_slice = [&]() {
        if (cursor + slice > n_tok) cursor = 0;
        const auto s = std::span<const engram::row_id>(stream_rows).subspan(cursor * heads, slice * heads);
        cursor += slice;
        return s;
    };
    std::vector<float> out(slice * heads * dim);
    std::vector<engram::bfloat16> out16(slice * heads * dim);
    auto rate = [&](double s) { return static_cast<double>(slice) / s / 1e6; };
    const double gather_mtok =
        rate(best_seconds(reps, [&](std::size_t) { engram::gather(table, next_slice(), std::span<float>(out)); }));
    const double probe_mtok =
        rate(best_seconds(reps, [&](std::size_t) { probe_copy(table, next_slice(), out.data()); }));
    const double gather16_mtok =
        rate(best_seconds(reps, [&](std::size_t) { engram::gather(table16, next_slice(), std::span<float>(out)); }));
    const double probe16_mtok =
        rate(best_seconds(reps, [&](std::size_t) { probe_copy(table16, next_slice(), out16.data()); }));
    const double gather_mtok2 = rate(best_seconds(reps, [&](std::size_t) {
        const auto ids = next_slice();
        const std::size_t half = ids.size() / 2 / heads * heads;
        on_threads(2, [&](std::size_t p) {
            const auto part = p ? ids.subspan(half) : ids.first(half);
            engram::gather(table, part, std::span<float>(out).subspan(p ? half * dim : 0, part.size() * dim));
        });
    }));
    g_sink = g_sink + static_cast<std::uint64_t>(out[out.size() / 2] != 0.0f) + out16[7].bits;

    // 2b. Every other codec against a bare copy of rows of its own size.
    struct codec_figure {
        const char* name;
        double mtok, limit;
    };
    std::vector<codec_figure> codec_gathers = {{"f32", gather_mtok, probe_mtok}, {"bf16", gather16_mtok, probe16_mtok}};
    auto codec_gather = [&]<class Codec>(const char* name, std::type_identity<Codec>) {
        engram::dense_storage::table<Codec> t(rows, dim);
        {
            progress_ticker p(std::string("building the ") + name + " copy of the rows");
            engram_bench::fill_table(t);
        }
        const double g =
            rate(best_seconds(reps, [&](std::size_t) { engram::gather(t, next_slice(), std::span<float>(out)); }));
        std::vector<std::byte> copy(slice * heads * t.row_bytes());
        const double l = rate(best_seconds(
            reps, [&](std::size_t) { engram_bench::probe_copy(t.bytes(), t.row_bytes(), next_slice(), copy.data()); }));
        codec_gathers.push_back({name, g, l});
        g_sink = g_sink + static_cast<std::uint64_t>(copy[5]);
    };
    codec_gather("f16", std::type_identity<engram::f16_codec>{});
    codec_gather("fp8", std::type_identity<engram::fp8_e4m3_codec>{});
    codec_gather("int8", std::type_identity<engram::int8_codec>{});

    // 3. The projections: every weight format and matmul backend (bench_projection.hpp).
    namespace pb = projection_bench;
    pb::inputs in;
    in.tokens = tokens;
    in.T = std::min<std::size_t>(512, n_tok);
    const std::size_t T = in.T;
    in.reps = reps;
    in.fwd_reps = opt.quick ? 3 : 2 * reps;
    in.decode_block = opt.quick ? 32 : 64;
    in.hidden.resize(T * M * H);
    {
        std::mt19937_64 rng(3);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (auto& v : in.hidden) v = normal(rng);
    }
    in.e.resize(T * D);
    {
        std::vector<engram::row_id> ids(T * heads);
        layer.rows(std::span<const engram::token_id>(tokens).first(T), 1, T, ids);
        layer.memory(ids, in.e);
    }
    const double small_params = 4.0 * static_cast<double>((1 + M) * H + 2 * M * H + M * H * Kc + M * H);
    std::vector<pb::figures> configs;
    for (auto f : {engram::weight_format::f32, engram::weight_format::bf16, engram::weight_format::bf16_dot,
                   engram::weight_format::int8}) {
        progress_ticker p(std::string("projections: host ") + std::string(engram::to_string(f)));
        configs.push_back(pb::measure(layer, f, "host", in, small_params));
    }
    // Limits: Eigen's f32 GEMM of the projection shapes (the earlier bound) and DRAM bandwidth.
    engram::row_matrix x =
        Eigen::Map<const engram::row_matrix>(in.e.data(), static_cast<Eigen::Index>(T), static_cast<Eigen::Index>(D));
    engram::row_matrix y(static_cast<Eigen::Index>(T), static_cast<Eigen::Index>((1 + M) * H));
    const auto& w = layer.projection_weight();
    const double bound_ms = 1e3 * best_seconds(in.fwd_reps, [&](std::size_t) { y.noalias() = x * w.transpose(); });
    g_sink = g_sink + static_cast<std::uint64_t>(y(0, 0) != 0.0f);
    const std::size_t bw_bytes = std::min<std::size_t>(std::size_t{1} << 30, table.size_bytes());
    const double bandwidth = read_bandwidth(table.data(), bw_bytes, reps);
    double onednn_gemm_ms = 0;
    std::string onednn_gemm_impl = "n/a (engram built without oneDNN)";
#if ENGRAM_CLI_ONEDNN
    {
        progress_ticker p("projections: oneDNN bf16 GEMM probe, onednn_matmul bf16_dot and int8");
        onednn_gemm_ms = pb::onednn_bf16_gemm_ms(T, D, (1 + M) * H, in.fwd_reps, onednn_gemm_impl);
        // The same layer with the oneDNN backend: the table moves over (one copy in RAM).
        using dnnl_layer = engram::layer<pb::with_onednn<typename Layer::policies_type>>;
        dnnl_layer dl(cfg, layer.vocab(), std::move(layer.table()), layer.layout().multipliers);
        pb::copy_parameters(layer, dl);
        for (auto f : {engram::weight_format::bf16_dot, engram::weight_format::int8})
            configs.push_back(pb::measure(dl, f, "onednn", in, small_params));
        layer.table() = std::move(dl.table());
    }
#endif
    const pb::figures* best_fwd = &configs[0];
    const pb::figures* best_dec = &configs[0];
    for (const auto& c : configs) {
        if (c.forward_ms < best_fwd->forward_ms) best_fwd = &c;
        if (c.decode_us < best_dec->decode_us) best_dec = &c;
    }
    auto find = [&](const char* key) -> const pb::figures& {
        for (const auto& c : configs)
            if (c.key() == key) return c;
        return configs[0];
    };
    const pb::figures& f32 = find("f32");

    // Report.
    const std::string gb = fmt_num(static_cast<double>(table.size_bytes()) / 1e9, 2);
    struct line {
        std::string figure, ours, limit, ratio;
    };
    std::vector<line> lines = {
        {"hash, 1 layer x " + std::to_string(heads) + " heads", fmt_num(hash_mtok, 1) + " Mtok/s",
         "NumPy peer: bench/peers", "-"},
        {"hash, into one stream array", fmt_num(hash_stream_mtok, 1) + " Mtok/s",
         "16,384-token buffer " + fmt_num(hash_mtok, 1) + " Mtok/s", fmt_num(hash_stream_mtok / hash_mtok, 2)},
    };
    for (const auto& g : codec_gathers)
        lines.push_back({std::string("gather ") + g.name + (g.name == std::string("f32") ? "" : " -> f32") + ", " +
                             std::to_string(slice) + " tok",
                         fmt_num(g.mtok, 2) + " Mtok/s", "probe " + fmt_num(g.limit, 2) + " Mtok/s",
                         fmt_num(g.mtok / g.limit, 2)});
    lines.push_back({"forward B=1 T=" + std::to_string(T) + ", f32", fmt_num(f32.forward_ms, 2) + " ms",
                     "Eigen GEMM " + fmt_num(bound_ms, 2) + " ms", fmt_num(bound_ms / f32.forward_ms, 2)});
    for (const auto& c : configs) {
        lines.push_back({"forward " + c.key(), fmt_num(c.forward_ms, 2) + " ms",
                         "its GEMM alone " + fmt_num(c.gemm_ms, 2) + " ms", fmt_num(c.gemm_ms / c.forward_ms, 2)});
        lines.push_back({"  2 threads", fmt_num(c.forward_ms_2t, 2) + " ms",
                         "1 thread " + fmt_num(c.forward_ms, 2) + " ms",
                         fmt_num(c.forward_ms / c.forward_ms_2t, 2) + "x"});
        lines.push_back({"decode step " + c.key(), fmt_num(c.decode_us, 1) + " us",
                         "read " + fmt_num(c.weight_bytes / 1e6, 1) + " MB " + fmt_num(c.decode_bound_us, 1) + " us",
                         fmt_num(c.decode_bound_us / c.decode_us, 2)});
    }
    if (onednn_gemm_ms > 0)
        lines.push_back({"forward, fastest (" + best_fwd->key() + ")", fmt_num(best_fwd->forward_ms, 2) + " ms",
                         "oneDNN bf16 GEMM " + fmt_num(onednn_gemm_ms, 2) + " ms",
                         fmt_num(onednn_gemm_ms / best_fwd->forward_ms, 2)});
    lines.push_back({"forward, fastest (" + best_fwd->key() + ")", fmt_num(best_fwd->forward_ms, 2) + " ms",
                     "its GEMM alone " + fmt_num(best_fwd->gemm_ms, 2) + " ms",
                     fmt_num(best_fwd->gemm_ms / best_fwd->forward_ms, 2)});
    lines.push_back({"decode, fastest (" + best_dec->key() + ")", fmt_num(best_dec->decode_us, 1) + " us",
                     "read " + fmt_num(best_dec->decode_bound_us, 1) + " us",
                     fmt_num(best_dec->decode_bound_us / best_dec->decode_us, 2)});
    lines.push_back({"threads (figures)", "1", "except the 2-thread rows", ""});
    lines.push_back({"hash, 2 threads", fmt_num(hash_mtok2, 1) + " Mtok/s",
                     "1 thread " + fmt_num(hash_mtok, 1) + " Mtok/s", fmt_num(hash_mtok2 / hash_mtok, 2) + "x"});
    lines.push_back({"gather f32, 2 threads", fmt_num(gather_mtok2, 2) + " Mtok/s",
                     "1 thread " + fmt_num(gather_mtok, 2) + " Mtok/s", fmt_num(gather_mtok2 / gather_mtok, 2) + "x"});
    std::cout << "\n";
    std::cout << lformat("%-30s %-16s %-34s %s\n", "figure", "ours", "limit or peer", "ratio");
    for (const auto& l : lines)
        std::cout << lformat("%-30s %-16s %-34s %s\n", l.figure.c_str(), l.ours.c_str(), l.limit.c_str(),
                             l.ratio.c_str());
    std::cout << "\n  ratio = our speed / the limit's speed (1.00: at the limit; above 1: faster than the probe)\n"
              << "  gather probe: the same rows' stored bytes copied by a bare memcpy loop, from a table of the\n"
              << "  same codec and size (" << gb << " GB in f32)\n"
              << "  forward <key>: weight format (host_matmul) or onednn_<format> (onednn_matmul); its GEMM alone:\n"
              << "  that backend's projections [" << T << ", " << D << "] x [" << D << ", " << (1 + M) * H
              << "] on the same memory vectors (incl. rounding them to bf16 / int8)\n"
              << "  decode read: the bytes one step reads (the projection in its format + norms, conv, bias) read\n"
              << "  once from a buffer of that size (in cache when it fits, as the weights are between steps)\n"
              << "  oneDNN bf16 GEMM: " << onednn_gemm_impl << ", operands already bf16, weights prepacked\n"
              << "  paths:\n";
    for (const auto& c : configs)
        std::cout << "    " << lformat("%-16s", c.key().c_str()) << " forward " << c.forward_path << "; decode "
                  << c.decode_path << "\n";
    std::cout << "  DRAM read bandwidth " << fmt_num(bandwidth / 1e9, 2) << " GB/s (sum of "
              << fmt_num(static_cast<double>(bw_bytes) / 1e9, 2) << " GB of the table)\n";
    std::cout.flush();

    if (!opt.json.empty()) {
        std::ostringstream js;
        js.precision(10);
        auto kv = [&](const std::string& k, double v) { js << "  \"" << k << "\": " << v << ",\n"; };
        auto ks = [&](const std::string& k, const std::string& v) {
            js << "  \"" << k << "\": \"";
            for (char ch : v) {
                if (ch == '"' || ch == '\\') js << '\\';
                js << ch;
            }
            js << "\",\n";
        };
        js << "{\n";
        kv("hash_mtok_s", hash_mtok);
        kv("hash_mtok_s_2t", hash_mtok2);
        kv("hash_stream_mtok_s", hash_stream_mtok);
        for (const auto& g : codec_gathers) {
            const std::string n = g.name == std::string("f32") ? "" : std::string(g.name) + "_";
            kv("gather_" + n + "mtok_s", g.mtok);
            kv("gather_" + n + "limit_mtok_s", g.limit);
        }
        kv("gather_mtok_s_2t", gather_mtok2);
        kv("gather_tokens_per_batch", static_cast<double>(slice));
        // Every configuration, then the names the earlier benches used.
        for (const auto& c : configs) {
            kv("forward_ms_t512_" + c.key(), c.forward_ms);
            kv("forward_ms_t512_" + c.key() + "_2t", c.forward_ms_2t);
            kv("gemm_ms_t512_" + c.key(), c.gemm_ms);
            kv("decode_us_" + c.key(), c.decode_us);
            kv("decode_bound_us_" + c.key(), c.decode_bound_us);
            kv("weight_bytes_" + c.key(), c.weight_bytes);
            ks("forward_path_" + c.key(), c.forward_path);
            ks("decode_path_" + c.key(), c.decode_path);
        }
        kv("forward_ms_t512", f32.forward_ms);
        kv("forward_ms_t512_2t", f32.forward_ms_2t);
        kv("forward_bound_ms_t512", bound_ms);
        kv("gemm_f32_kernel_ms_t512", f32.gemm_ms);
        kv("gemm_bf16_dot_kernel_ms_t512", find("bf16_dot").gemm_ms);
        kv("decode_us", f32.decode_us);
        kv("decode_bound_us", f32.decode_bound_us);
        kv("weight_bytes", f32.weight_bytes);
        kv("forward_ms_t512_best", best_fwd->forward_ms);
        ks("forward_best_format", best_fwd->key());
        kv("gemm_best_ms_t512", best_fwd->gemm_ms);
        kv("decode_us_best", best_dec->decode_us);
        ks("decode_best_format", best_dec->key());
        kv("decode_bound_us_best", best_dec->decode_bound_us);
        kv("gemm_onednn_bf16_ms_t512", onednn_gemm_ms);
        ks("gemm_onednn_bf16_impl", onednn_gemm_impl);
        kv("read_bandwidth_gb_s", bandwidth / 1e9);
        kv("max_ngram", static_cast<double>(cfg.hash.max_ngram));
        kv("table_rows", static_cast<double>(rows));
        kv("table_gb_f32", static_cast<double>(table.size_bytes()) / 1e9);
        kv("reps", static_cast<double>(reps));
        kv("quick", opt.quick ? 1.0 : 0.0);
        js << "  \"threads\": 1\n}\n";
        write_atomically(opt.json, js.str());
        std::cout << "  wrote " << opt.json << "\n";
    }
    return 0;
}

int cmd_bench_lookup(const std::vector<std::string>& argv) {
    constexpr const char* usage =
        "engram bench [lookup] [--quick] [--json FILE] [--tokens FILE] [--reps N] [--max-ngram N]";
    lookup_options opt;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= argv.size()) throw usage_error(s + " needs a value");
            return argv[++i];
        };
        if (s == "-h" || s == "--help") {
            std::cout
                << "usage: " << usage << "\n       engram bench prefetch --help\n\n"
                << "lookup (the default): builds the reference default layer (tables 5 x 129,280 per order, N = 3,\n"
                << "K = 8, d = 64: 10,344,164 x 64 f32, 2.65 GB; H = 1024, M = 4, Kc = 4; 1/8 of the rows with\n"
                << "--quick) with random weights and a Zipf(1.1) token stream (or --tokens FILE: whitespace-\n"
                << "separated ids in [0, 98627)), then measures, single-threaded, best of --reps (5; 3 quick):\n"
                << "hashing; the gather of every codec (f32, bf16, f16, fp8, int8) against a bare memcpy of\n"
                << "rows of its own size; for every weight format (f32, bf16, bf16_dot, int8) with host_matmul,\n"
                << "and bf16_dot and int8 with onednn_matmul when engram was built with oneDNN: the forward\n"
                << "(B = 1, T = 512; also on 2 threads) against that backend's projections alone, and a decode\n"
                << "step against reading the bytes a step reads from a buffer of their size; the fastest\n"
                << "forward and decode and their formats; oneDNN's bf16 GEMM of the projection shapes alone;\n"
                << "the kernels each ran. Prints a table; --json FILE writes the numbers (atomically).\n"
                << "--max-ngram N: orders 2..N (default 3; N up to " << engram::max_dispatched_ngram
                << "), each order with the default rows.\n";
            return 0;
        } else if (s == "--quick") {
            opt.quick = true;
        } else if (s == "--json") {
            opt.json = value();
            if (opt.json.empty()) throw usage_error("--json needs a file name");
        } else if (s == "--tokens") {
            opt.tokens = value();
            if (opt.tokens.empty()) throw usage_error("--tokens needs a file name");
        } else if (s == "--reps") {
            opt.reps = parse_count(s, value(), 1, 1000);
        } else if (s == "--max-ngram") {
            opt.max_ngram =
                static_cast<int>(parse_count(s, value(), 2, static_cast<std::size_t>(engram::max_dispatched_ngram)));
        } else if (s.size() > 1 && s[0] == '-') {
            throw usage_error("unknown option '" + s + "' (usage: " + usage + ")");
        } else {
            throw usage_error("unexpected argument '" + s + "' (usage: " + usage + ")");
        }
    }
    engram::layer_config cfg;
    cfg.hash = bench_hash_config(opt.max_ngram, opt.quick);
    return engram::dispatch_layer(cfg.hash, [&]<class L>(std::type_identity<L>) { return run_lookup<L>(opt, cfg); });
}

/// `engram bench` / `engram bench lookup`: the main job; `engram bench prefetch`: the prefetch bench.
int cmd_bench(const std::vector<std::string>& argv) {
    // The subcommand: the first argument that is not an option or an option's value.
    static const char* const with_value[] = {"--compute-us", "--batch", "--threads",  "--steps",
                                             "--reps",       "--dir",   "--json",     "--tokens",
                                             "--max-ngram",  "--text",  "--tokenizer"};
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        if (std::find(std::begin(with_value), std::end(with_value), s) != std::end(with_value)) {
            ++i;
            continue;
        }
        if (!s.empty() && s[0] == '-') continue;
        if (s == "prefetch") return cmd_bench_prefetch(argv);
        if (s == "mpi") return cmd_bench_mpi(argv);
        if (s == "lookup") {
            std::vector<std::string> rest(argv);
            rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(i));
            return cmd_bench_lookup(rest);
        }
        throw usage_error("unknown bench '" + s + "' (lookup, the default, prefetch or mpi)");
    }
    return cmd_bench_lookup(argv);
}

const registration reg_cmd_bench{
    {"bench", "bench [lookup|prefetch|mpi] [--quick] [--json FILE]  main job: hash, gather, forward, decode vs limits",
     &cmd_bench}};

} // namespace

} // namespace engram_cli
