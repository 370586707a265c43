// engram bench prefetch: rows fetched ahead from a table file whose pages are out of the page
// cache, overlapped with a simulated host compute; prints fetch times and the throughput penalty.
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

} // namespace

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

} // namespace engram_cli
