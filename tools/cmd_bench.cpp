// engram bench [lookup]: the main job (hashing, gather, forward and decode against their limits).
// engram bench prefetch: rows fetched ahead from a table file whose pages are out of the page
// cache, overlapped with a simulated host compute; prints fetch times and the throughput penalty.
#include "cli.hpp"

#include "../bench/bench_common.hpp" // zipf_tokens, canonical_vocab: the same stream as bench/

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

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// V' of the DeepSeek-V3 tokenizer after compression: the reference demo's layer.
constexpr engram::token_id bench_vocab = engram_bench::canonical_vocab;

struct bench_options {
    bool quick = false;
    std::optional<double> compute_us;
    std::vector<std::size_t> batches;
    std::size_t default_batch = 64;
    std::size_t threads = 16;
    std::size_t steps = 0; ///< 0: 24 (10 with --quick)
    std::size_t reps = 0;  ///< 0: 6 (3 with --quick)
    std::string dir;
    bool caller_plan = false; ///< make plans on the compute thread instead of the pool
    int max_ngram = 3;        ///< orders 2..N of the layer shape
};

// ---- inputs -----------------------------------------------------------------------------------

/// Canonical ids drawn from Zipf(1.1) over the vocabulary (a stand-in for text), frequent ids
/// spread over the id space by a fixed permutation.
std::vector<engram::token_id> zipf_stream(std::size_t n, std::uint64_t seed) {
    return engram_bench::zipf_tokens(n, 1.1, seed);
}

/// Fills the table with pseudo-random values in [-0.05, 0.05) (xorshift, two values per draw).
void fill_table(engram::dense_storage::table<float>& t) {
    const auto values = t.values();
    const std::size_t n = values.size();
    const unsigned parts = 2;
    std::vector<std::thread> workers;
    for (unsigned p = 0; p < parts; ++p)
        workers.emplace_back([&, p] {
            std::uint64_t s = 0x9e3779b97f4a7c15ull * (p + 1);
            for (std::size_t i = n * p / parts; i < n * (p + 1) / parts; ++i) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                values[i] = (static_cast<float>(s >> 40) * (1.0f / 16777216.0f) - 0.5f) * 0.1f;
            }
        });
    for (auto& w : workers) w.join();
}

/// A file of the table's rows in `dir`, written and fsynced (clean pages can be dropped).
std::string write_table_file(const std::string& dir, const engram::dense_storage::table<float>& t) {
    std::string path = dir + "/engram-bench-prefetch-XXXXXX";
    const int fd = ::mkstemp(path.data());
    if (fd < 0) throw engram::io_error("bench: cannot create a file in '" + dir + "': " + std::strerror(errno));
    const auto* p = reinterpret_cast<const char*>(t.bytes());
    std::size_t left = t.size_bytes();
    while (left > 0) {
        const ::ssize_t n = ::write(fd, p, std::min<std::size_t>(left, std::size_t{64} << 20));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = errno;
            ::close(fd);
            ::unlink(path.c_str());
            throw engram::io_error("bench: cannot write '" + path + "': " + std::strerror(err));
        }
        p += n;
        left -= static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        ::unlink(path.c_str());
        throw engram::io_error("bench: cannot fsync '" + path + "'");
    }
    return path;
}

/// Pages of the file resident in the page cache, by mincore on a private read-only mapping.
std::pair<std::size_t, std::size_t> resident_pages(int fd, std::size_t bytes) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t pages = (bytes + page - 1) / page;
    void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return {0, 0};
    std::vector<unsigned char> vec(pages);
    std::size_t resident = 0;
    if (::mincore(map, bytes, vec.data()) == 0)
        for (unsigned char c : vec) resident += c & 1u;
    ::munmap(map, bytes);
    return {resident, pages};
}

// ---- simulated host compute --------------------------------------------------------------------

/// The host's compute: a busy loop until a wall-clock deadline. It stands for work elsewhere
/// (an accelerator running the model's layers) whose duration does not depend on this CPU; the
/// CPU time the I/O threads take is reported apart ("I/O CPU").
struct busy_compute {
    static void run(double us) {
        const auto deadline = clock_type::now() + std::chrono::nanoseconds(static_cast<std::int64_t>(us * 1000.0));
        while (clock_type::now() < deadline) {
        }
    }
};

double cpu_seconds(clockid_t id) {
    timespec ts{};
    ::clock_gettime(id, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// ---- measurements ------------------------------------------------------------------------------

struct stats {
    std::vector<double> v;
    void add(double x) { v.push_back(x); }
    [[nodiscard]] double quantile(double q) const {
        if (v.empty()) return 0;
        std::vector<double> s = v;
        std::sort(s.begin(), s.end());
        return s[static_cast<std::size_t>(
            std::min<double>(static_cast<double>(s.size()) - 1, std::floor(q * static_cast<double>(s.size()))))];
    }
    [[nodiscard]] double median() const { return quantile(0.5); }
    [[nodiscard]] double mean() const {
        double s = 0;
        for (double x : v) s += x;
        return v.empty() ? 0 : s / static_cast<double>(v.size());
    }
};

struct batch_result {
    std::size_t tokens = 0, rows = 0;
    stats unique, plan_us, ram_us, cold_us, drop_us, copy_us;
    double compute_us = 0;
    double step_compute_us = 0, step_prefetch_us = 0, stall_us = 0, io_cpu_us = 0;
    double overhead = 0;                   ///< share of the prefetch steps' time spent outside the compute
    double paired_min = 0, paired_max = 0; ///< the penalty of single compute-only / prefetch block pairs
    [[nodiscard]] double penalty() const { return 1.0 - step_compute_us / step_prefetch_us; }
};

template <class Hasher>
class prefetch_bench {
public:
    prefetch_bench(bench_options opt, const engram::layer_layout& layout)
        : opt_(std::move(opt)), hasher_(layout), heads_(hasher_.num_heads()),
          ram_(static_cast<std::size_t>(layout.total_rows), static_cast<std::size_t>(layout.head_dim)) {}

    int run() {
        const std::size_t rows = ram_.rows(), dim = ram_.dim();
        const double gb = static_cast<double>(ram_.size_bytes()) / 1e9;
        std::cout << "engram bench prefetch" << (opt_.quick ? " --quick" : "") << ": table " << rows << " x " << dim
                  << " f32 (" << fixed(gb, 2) << " GB), " << heads_ << " heads per token\n";
        auto t0 = clock_type::now();
        fill_table(ram_);
        const std::string path = write_table_file(opt_.dir, ram_);
        engram::file_table<float> disk(path, 0, rows, dim);
        ::unlink(path.c_str()); // the open table keeps the data; the file goes when the bench ends
        std::cout << "  file: " << path << " (written + fsynced in " << fixed(seconds_since(t0), 1)
                  << " s; unlinked, freed at exit)\n"
                  << "  reads: pread, " << opt_.threads << " I/O threads (" << opt_.threads
                  << " requests in flight), POSIX_FADV_RANDOM, rows within " << disk.merge_gap() << " B merged\n";

        disk.drop_page_cache();
        const auto [res, pages] = resident_pages(disk.native_handle(), disk.size_bytes());
        std::cout << "  page cache: posix_fadvise(DONTNEED) before every cold step; mincore after a drop: " << res
                  << " of " << pages << " pages resident"
                  << (res * 100 > pages ? "  ** the kernel kept pages: disk numbers are NOT cold **" : "") << '\n';

        std::cout << "  compute: a busy loop on the calling thread until a wall-clock deadline (stands for the "
                     "model's layers)\n";

        const std::size_t steps = opt_.steps ? opt_.steps : (opt_.quick ? 10 : 24);
        const std::size_t reps = opt_.reps ? opt_.reps : (opt_.quick ? 3 : 6);
        std::size_t max_batch = 0;
        for (auto b : opt_.batches) max_batch = std::max(max_batch, b);
        // One long token stream; every measurement reads its own slices of it.
        const std::size_t slices = steps * reps * 3 + 4;
        const auto tokens = zipf_stream(max_batch * slices, 7);
        std::vector<engram::row_id> stream_rows(tokens.size() * heads_);
        hasher_.rows(tokens, 1, tokens.size(), stream_rows);
        std::cout << "  tokens: Zipf(1.1) over " << bench_vocab << " ids, one stream; " << steps << " steps x " << reps
                  << " repetitions per measurement\n\n";

        engram::io_pool pool(opt_.threads);
        engram::prefetcher from_disk(disk, pool);
        engram::prefetcher from_ram(ram_, pool);

        std::vector<batch_result> results;
        for (std::size_t b : opt_.batches) {
            batch_result r;
            r.tokens = b;
            r.rows = b * heads_;
            std::size_t next_slice = 0;
            auto slice = [&](std::size_t i) {
                return std::span<const engram::row_id>(stream_rows).subspan(i * b * heads_, b * heads_);
            };
            std::vector<float> e(b * heads_ * dim);
            // Fetch time from RAM and from the cold file (the pool also builds e); plan and copy costs.
            for (std::size_t rep = 0; rep < reps; ++rep) {
                for (std::size_t s = 0; s < steps; ++s) {
                    const auto ids = slice(next_slice++);
                    auto t = clock_type::now();
                    const auto plan = engram::make_plan(ids, b, 1, heads_);
                    r.plan_us.add(seconds_since(t) * 1e6);
                    r.unique.add(static_cast<double>(plan.unique_rows.size()));
                    t = clock_type::now();
                    from_ram.prefetch(plan).wait();
                    r.ram_us.add(seconds_since(t) * 1e6);
                    t = clock_type::now();
                    disk.drop_page_cache();
                    r.drop_us.add(seconds_since(t) * 1e6);
                    t = clock_type::now();
                    const auto ticket = from_disk.prefetch(plan);
                    ticket.wait();
                    r.cold_us.add(seconds_since(t) * 1e6);
                    t = clock_type::now();
                    ticket.memory(plan, e);
                    r.copy_us.add(seconds_since(t) * 1e6);
                }
            }
            const bool is_default = b == opt_.default_batch;
            r.compute_us = opt_.compute_us ? *opt_.compute_us : default_compute(r);
            pipelined(r, from_disk, disk, stream_rows, next_slice, steps, reps);
            if (is_default) {
                default_result_ = results.size();
                if (!opt_.compute_us) {
                    // How the penalty depends on compute / fetch: compute at the median and at the
                    // largest cold fetch time measured.
                    for (double target : {r.cold_us.median(), r.cold_us.quantile(1.0)}) {
                        batch_result v = r;
                        v.compute_us = std::max(100.0, std::ceil(target / 100.0) * 100.0);
                        pipelined(v, from_disk, disk, stream_rows, next_slice, steps, reps);
                        sweep_.push_back(v);
                    }
                }
            }
            results.push_back(std::move(r));
            print_progress(results.back());
        }
        print_table(results);
        if (!sweep_.empty()) {
            const auto& r = results[*default_result_];
            std::cout << "\n" << r.tokens << " tokens/step, penalty against compute per step:\n";
            const char* labels[] = {"median cold fetch", "p90 cold fetch (default)", "largest cold fetch"};
            const batch_result* rows[] = {&sweep_[0], &r, &sweep_[1]};
            for (int i = 0; i < 3; ++i)
                std::cout << format(
                    "  compute %7.0f us = %-25s stall %7.1f us/step  overhead %5.2f%%  penalty %5.2f%%\n",
                    rows[i]->compute_us, labels[i], rows[i]->stall_us, 100.0 * rows[i]->overhead,
                    100.0 * rows[i]->penalty());
        }
        if (default_result_) {
            const auto& r = results[*default_result_];
            std::cout << "\nprefetch penalty: " << fixed(100.0 * r.penalty(), 2) << "% (" << r.tokens << " tokens x "
                      << heads_ << " heads per step; compute " << fixed(r.compute_us, 0)
                      << " us/step vs cold fetch median " << fixed(r.cold_us.median(), 0) << " us, p90 "
                      << fixed(r.cold_us.quantile(0.9), 0) << " us; " << opt_.threads << " I/O threads)\n";
        }
        return 0;
    }

private:
    static std::string fixed(double v, int digits) {
        std::ostringstream os;
        os.setf(std::ios::fixed);
        os.precision(digits);
        os << v;
        return os.str();
    }

    /// The default compute per step: the p90 cold fetch time of that batch (so the compute is at
    /// least the fetch time in 9 steps out of 10), rounded up to 100 us.
    static double default_compute(const batch_result& r) {
        return std::max(100.0, std::ceil(r.cold_us.quantile(0.9) / 100.0) * 100.0);
    }

    /// Compute-only steps against steps that overlap the next step's cold fetch with compute.
    void pipelined(batch_result& r, const engram::prefetcher<engram::file_table<float>>& from_disk,
                   const engram::file_table<float>& disk, const std::vector<engram::row_id>& stream_rows,
                   std::size_t& next_slice, std::size_t steps, std::size_t reps) {
        const std::size_t b = r.tokens;
        auto slice = [&](std::size_t i) {
            return std::span<const engram::row_id>(stream_rows)
                .subspan((i % (stream_rows.size() / (b * heads_))) * b * heads_, b * heads_);
        };
        // Blocks of compute-only steps and of prefetch steps alternate, so that both see the same
        // background load; the penalty compares their total times.
        double total_compute_only = 0, total_prefetch = 0, total_inside = 0, total_stall = 0, total_io_cpu = 0;
        stats paired;
        for (std::size_t rep = 0; rep < reps; ++rep) {
            // Compute only: the rows are RAM-resident and free.
            auto t0 = clock_type::now();
            for (std::size_t s = 0; s < steps; ++s) compute_.run(r.compute_us);
            const double a = seconds_since(t0);

            // With prefetch: step s waits for its rows (fetched during step s-1), assembles them,
            // starts the cold fetch of step s+1 and computes. The page-cache drop that keeps the
            // next reads cold is a benchmark artifact: nothing is in flight while it runs, and its
            // time is taken off the clock.
            const std::size_t first = next_slice;
            next_slice += steps + 1;
            // The next step's fetch: row ids handed to the pool, which makes the plan (default),
            // or a plan made on this thread (--caller-plan).
            auto start = [&](std::size_t i) {
                const auto ids = slice(i);
                if (opt_.caller_plan) return from_disk.prefetch(engram::make_plan(ids, b, 1, heads_));
                return from_disk.prefetch_rows(std::vector<engram::row_id>(ids.begin(), ids.end()), b, 1, heads_);
            };
            disk.drop_page_cache();
            auto ticket = start(first);
            ticket.wait(); // step 0's rows are fetched before the clock starts
            double stalled = 0, dropping = 0, inside = 0;
            const double cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID), main0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
            t0 = clock_type::now();
            for (std::size_t s = 0; s < steps; ++s) {
                const auto w = clock_type::now();
                ticket.wait();
                stalled += seconds_since(w);
                const std::span<const float> memory = ticket.memory(); // e [tokens, 16 x 64], built by the pool
                sink_ = memory[memory.size() / 2];
                const auto d = clock_type::now();
                disk.drop_page_cache();
                dropping += seconds_since(d);
                auto next_ticket = start(first + s + 1);
                const auto c = clock_type::now();
                compute_.run(r.compute_us);
                inside += seconds_since(c);
                ticket = std::move(next_ticket);
            }
            const double wall = seconds_since(t0) - dropping;
            total_io_cpu +=
                (cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0) - (cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - main0);
            ticket.wait();
            total_compute_only += a;
            total_prefetch += wall;
            total_inside += inside;
            total_stall += stalled;
            paired.add(1.0 - a / wall);
        }
        const auto n = static_cast<double>(steps * reps);
        r.step_compute_us = total_compute_only * 1e6 / n;
        r.step_prefetch_us = total_prefetch * 1e6 / n;
        r.stall_us = total_stall * 1e6 / n;
        r.io_cpu_us = total_io_cpu * 1e6 / n;
        r.overhead = 1.0 - total_inside / total_prefetch;
        r.paired_min = paired.quantile(0.0);
        r.paired_max = paired.quantile(1.0);
    }

    void print_progress(const batch_result& r) const {
        std::cout << "  " << r.tokens << " tokens/step: cold fetch " << fixed(r.cold_us.median(), 0) << " us, RAM "
                  << fixed(r.ram_us.median(), 0) << " us; compute " << fixed(r.compute_us, 0) << " us: penalty "
                  << fixed(100.0 * r.penalty(), 2) << "% (block pairs " << fixed(100.0 * r.paired_min, 1) << ".."
                  << fixed(100.0 * r.paired_max, 1) << "%), compute thread outside compute "
                  << fixed(100.0 * r.overhead, 2) << "%\n";
    }

    template <class... A>
    static std::string format(const char* f, A... a) {
        char buf[512];
        std::snprintf(buf, sizeof buf, f, a...);
        return buf;
    }

    void print_table(const std::vector<batch_result>& results) const {
        const char* head = "%7s %6s %7s | %7s %8s | %10s %10s | %8s %7s | %9s | %10s %10s %7s %8s | %8s %8s\n";
        std::cout << '\n'
                  << format(head, "tokens", "rows", "unique", "plan", "RAM", "cold med", "cold p90", "drop", "copy e",
                            "compute", "step comp", "step pref", "stall", "I/O CPU", "overhead", "penalty")
                  << format(head, "/step", "/step", "(mean)", "us", "fetch us", "fetch us", "fetch us", "us", "us",
                            "us/step", "only us", "+fetch us", "us", "us/step", "", "");
        for (const auto& r : results)
            std::cout << format(
                "%7zu %6zu %7.0f | %7.1f %8.0f | %10.0f %10.0f | %8.1f %7.1f | %9.0f | %10.0f %10.0f %7.1f %8.0f | "
                "%7.2f%% %7.2f%%\n",
                r.tokens, r.rows, r.unique.mean(), r.plan_us.median(), r.ram_us.median(), r.cold_us.median(),
                r.cold_us.quantile(0.9), r.drop_us.median(), r.copy_us.median(), r.compute_us, r.step_compute_us,
                r.step_prefetch_us, r.stall_us, r.io_cpu_us, 100.0 * r.overhead, 100.0 * r.penalty());
        std::cout
            << "  fetch = prefetch(plan) until wait() returns: the unique rows, decoded, and the memory vectors e\n"
            << "  built from them by the I/O threads; cold = page cache dropped just before (drop: its cost);\n"
            << "  plan = make_plan on the calling thread; copy e = ticket.memory(plan, e), a copy the caller can "
               "skip;\n"
            << "  pipelined steps: the next step's row ids go to prefetch_rows (the pool makes the plan"
            << (opt_.caller_plan ? "; here\n  --caller-plan: make_plan on the compute thread" : "") << "), then\n"
            << "  the compute runs; the step's rows are waited for at its start (stall); the page-cache drop\n"
            << "  between steps is off the clock; I/O CPU = CPU time of the other threads per step;\n"
            << "  overhead = share of the prefetch steps' wall time the compute thread spent outside the compute\n"
            << "  (a lower bound of the penalty that background load on the machine does not blur);\n"
            << "  penalty = 1 - (steps/s with prefetch) / (steps/s compute only), from alternating blocks.\n";
        std::cout.flush();
    }

    bench_options opt_;
    Hasher hasher_;
    std::size_t heads_;
    engram::dense_storage::table<float> ram_;
    busy_compute compute_;
    std::optional<std::size_t> default_result_;
    std::vector<batch_result> sweep_;
    float sink_ = 0;
};

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
    const auto* w = static_cast<const std::uint64_t*>(data);
    const std::size_t n = bytes / 8;
    const double s = best_seconds(reps, [&](std::size_t) {
        std::uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        std::size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            a0 += w[i];
            a1 += w[i + 1];
            a2 += w[i + 2];
            a3 += w[i + 3];
        }
        for (; i < n; ++i) a0 += w[i];
        g_sink = g_sink + a0 + a1 + a2 + a3;
    });
    return static_cast<double>(n * 8) / s;
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

/// The reference default hashing shape with orders 2..N (5 x 129,280 rows per order; 1/8 quick).
engram::hash_config bench_hash_config(int max_ngram, bool quick) {
    engram::hash_config cfg;
    cfg.max_ngram = max_ngram;
    cfg.table_size_per_ngram.assign(static_cast<std::size_t>(max_ngram - 1), quick ? 80800 : 646400);
    return cfg;
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

int cmd_bench_prefetch(const std::vector<std::string>& argv) {
    constexpr const char* usage =
        "engram bench prefetch [--quick] [--compute-us N] [--batch N ...] [--threads N] [--steps N] [--reps N] "
        "[--dir DIR] [--caller-plan] [--max-ngram N]";
    bench_options opt;
    bool help = false;
    std::vector<std::string> positional;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= argv.size()) throw usage_error(s + " needs a value");
            return argv[++i];
        };
        if (s == "-h" || s == "--help") {
            help = true;
        } else if (s == "--quick") {
            opt.quick = true;
        } else if (s == "--compute-us") {
            opt.compute_us = static_cast<double>(parse_count(s, value(), 1, 10'000'000));
        } else if (s == "--batch") {
            opt.batches.push_back(parse_count(s, value(), 1, 4096));
        } else if (s == "--threads") {
            opt.threads = parse_count(s, value(), 1, 256);
        } else if (s == "--steps") {
            opt.steps = parse_count(s, value(), 2, 100000);
        } else if (s == "--reps") {
            opt.reps = parse_count(s, value(), 1, 1000);
        } else if (s == "--caller-plan") {
            opt.caller_plan = true;
        } else if (s == "--max-ngram") {
            opt.max_ngram =
                static_cast<int>(parse_count(s, value(), 2, static_cast<std::size_t>(engram::max_dispatched_ngram)));
        } else if (s == "--dir") {
            opt.dir = value();
        } else if (s.size() > 1 && s[0] == '-') {
            throw usage_error("unknown option '" + s + "'");
        } else {
            positional.push_back(s);
        }
    }
    if (help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "prefetch: builds a table of the reference default layer's shape (10,344,164 x 64 f32, 2.65 GB;\n"
                  << "1/8 of it with --quick), writes it to a file in DIR ($TMPDIR or /tmp; deleted at exit) and\n"
                  << "keeps the same rows in RAM. For each batch (tokens per step, 16 rows each; default 1 16 64\n"
                  << "256) it measures the fetch time per step from RAM and from the file with its pages dropped\n"
                  << "from the page cache (posix_fadvise DONTNEED, checked with mincore), then a pipelined run: each\n"
                  << "step computes for --compute-us (default: that batch's p90 cold fetch time, rounded up) while\n"
                  << "the next step's rows are prefetched. Prints a table and 'prefetch penalty: X%' for the default\n"
                  << "batch (64 tokens, or the first --batch given). --threads: I/O threads (default 16).\n"
                  << "The pipelined steps hand row ids to the pool, which makes the plan and the memory vectors;\n"
                  << "--caller-plan makes the plan on the compute thread instead. --max-ngram N: orders 2..N\n"
                  << "(default 3), each with the default 5 x 129,280 rows.\n";
        return 0;
    }
    if (positional.size() != 1 || positional[0] != "prefetch") throw usage_error(std::string("usage: ") + usage);
    if (opt.batches.empty())
        opt.batches = {1, 16, 64, 256};
    else
        opt.default_batch = opt.batches.front();
    if (opt.dir.empty()) {
        const char* tmp = std::getenv("TMPDIR");
        opt.dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    }
    const engram::hash_config cfg = bench_hash_config(opt.max_ngram, opt.quick);
    const auto layout = engram::make_layout(cfg, 1, bench_vocab, 2);
    return engram::dispatch_orders(layout.orders, [&]<class Orders>(Orders) {
        prefetch_bench<engram::ngram_hasher<engram::multiply_xor_family, Orders>> bench(opt, layout);
        return bench.run();
    });
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
                << "hashing, gather f32 and bf16 against a bare memcpy random-row probe, the forward (B = 1,\n"
                << "T = 512) against an Eigen GEMM of the projection shapes, one decode step against weight\n"
                << "bytes / read bandwidth, the forward and decode again with bf16 projection weights and with\n"
                << "bf16 dot products (weight_format::bf16_dot; its forward on 2 threads too), and\n"
                << "the forward, hashing and gather on 2 threads. Prints a table; --json FILE writes the\n"
                << "numbers (atomically). --max-ngram N: orders 2..N (default 3; N up to "
                << engram::max_dispatched_ngram << "), each order with the default rows.\n";
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
    static const char* const with_value[] = {"--compute-us", "--batch", "--threads", "--steps",    "--reps",
                                             "--dir",        "--json",  "--tokens",  "--max-ngram"};
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        if (std::find(std::begin(with_value), std::end(with_value), s) != std::end(with_value)) {
            ++i;
            continue;
        }
        if (!s.empty() && s[0] == '-') continue;
        if (s == "prefetch") return cmd_bench_prefetch(argv);
        if (s == "lookup") {
            std::vector<std::string> rest(argv);
            rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(i));
            return cmd_bench_lookup(rest);
        }
        throw usage_error("unknown bench '" + s + "' (lookup, the default, or prefetch)");
    }
    return cmd_bench_lookup(argv);
}

const registration reg_cmd_bench{
    {"bench", "bench [lookup|prefetch] [--quick] [--json FILE]  main job: hash, gather, forward, decode vs limits",
     &cmd_bench}};

} // namespace

} // namespace engram_cli
