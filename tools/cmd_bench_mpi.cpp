// engram bench mpi: rows exchanged between MPI ranks (run under mpirun -np N; scripts/bench-mpi.sh
// runs 1, 2 and 4). For a Zipf token stream and, given a text and its tokenizer, real text: the
// share of distinct rows per batch (what de-duplication saves), lookup throughput and bytes sent
// per token per rank, and how much of the non-blocking exchange hides behind compute.
#include "bench_cli.hpp"
#include "cli.hpp"

#if ENGRAM_CLI_MPI
#include <engram/dist/table.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/vocab/bpe_encoder.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#endif

namespace engram_cli {

#if ENGRAM_CLI_MPI
namespace {

namespace dist = engram::dist;
using hasher_type = engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>>;
using table_type = dist::mpi_storage<engram::dense_storage>::table<engram::bfloat16>;

struct mpi_bench_options {
    bool quick = false;
    std::size_t batch = 2048; ///< tokens per rank per step
    std::size_t steps = 8, reps = 3;
    double compute_us = 0; ///< 0: the measured exchange time
    std::optional<std::string> text, tokenizer, json;
};

/// One stream's results on this job (rank 0 prints them).
struct stream_result {
    std::string name;
    double unique_ratio = 0;      ///< distinct rows / positions of a step (mean over steps, largest rank)
    double lookup_s = 0;          ///< one step: hash, exchange, decode (slowest rank, best of reps)
    double exchange_s = 0;        ///< one step's exchange alone (plan made beforehand)
    double local_s = 0;           ///< the same lookups from one in-RAM table of the whole layer (limit probe)
    double bytes_per_token = 0;   ///< bytes sent per token per rank (mean over ranks)
    double nodedup_per_token = 0; ///< what sending every position's id and row would cost
    double compute_s = 0, serial_s = 0, overlap_s = 0;
};

/// Stand-in compute: a fixed amount of arithmetic (chunks of 2000 steps), calling `poll` after
/// every 16 chunks. Fixed work, not a fixed time: work the exchange does inside `poll` must lengthen it.
double compute(std::size_t chunks, const std::function<void()>& poll) {
    double x = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
        for (int i = 0; i < 2000; ++i) x += std::sqrt(static_cast<double>(i) + x * 1e-9);
        if (poll && c % 16 == 15) poll(); // about every 50-100 us
    }
    return x;
}

/// Chunks of `compute` that take about `seconds` on this core (best of 3 calibrations).
std::size_t chunks_for(double seconds) {
    double best = 1e300;
    constexpr std::size_t probe = 200;
    for (int r = 0; r < 3; ++r) {
        const auto t0 = clock_type::now();
        volatile double sink = compute(probe, {});
        (void)sink;
        best = std::min(best, seconds_since(t0));
    }
    return std::max<std::size_t>(1, static_cast<std::size_t>(seconds / (best / probe)));
}

class mpi_bench {
public:
    explicit mpi_bench(const mpi_bench_options& o) : o_(o), comm_(MPI_COMM_WORLD) {}

    int run() {
        const engram::hash_config cfg = bench_hash_config(3, o_.quick);
        const auto zipf_layout = engram::make_layout(cfg, 1, bench_vocab, 2);
        // The table: the reference demo layer's shape (orders 2..3, 10 heads; 1/8 with --quick), bf16
        // rows of 64 values (128 bytes each on the wire), split by row range.
        const auto t0 = clock_type::now();
        table_type table(comm_.native(), zipf_layout);
        fill(table);
        comm_.barrier();
        const double fill_s = comm_.max(seconds_since(t0));
        dense_full_ = std::make_unique<engram::dense_storage::table<engram::bfloat16>>(
            static_cast<std::size_t>(zipf_layout.total_rows), static_cast<std::size_t>(zipf_layout.head_dim));
        fill_dense(*dense_full_);
        if (comm_.rank() == 0) header(table, zipf_layout.num_heads(), fill_s);

        std::vector<stream_result> results;
        {
            const std::size_t need = o_.batch * o_.steps;
            auto tokens = zipf_stream(need * comm_.usize(), 7);
            results.push_back(
                measure("zipf(1.1)", hasher_type(zipf_layout), table,
                        std::vector<engram::token_id>(tokens.begin() + static_cast<long>(need * comm_.urank()),
                                                      tokens.begin() + static_cast<long>(need * (comm_.urank() + 1)))));
        }
        if (o_.text && o_.tokenizer) {
            const auto vocab = engram::canonical_table_from_tokenizer_json(*o_.tokenizer);
            const auto encoder = engram::bpe_encoder::from_tokenizer_json(*o_.tokenizer);
            std::ifstream in(*o_.text, std::ios::binary);
            if (!in) throw engram::io_error("cannot read --text '" + *o_.text + "'");
            std::stringstream ss;
            ss << in.rdbuf();
            const auto raw = encoder.encode(ss.str());
            std::vector<engram::token_id> ids(raw.size());
            for (std::size_t i = 0; i < raw.size(); ++i) ids[i] = vocab(raw[i]);
            const auto layout = engram::make_layout(cfg, 1, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id));
            // Each rank reads its own stretch of the text (wrapping round when the text is short).
            const std::size_t need = o_.batch * o_.steps;
            std::vector<engram::token_id> mine(need);
            for (std::size_t i = 0; i < need; ++i) mine[i] = ids[(need * comm_.urank() + i) % ids.size()];
            results.push_back(measure("text", hasher_type(layout), table, std::move(mine)));
            if (comm_.rank() == 0)
                std::cout << "text: " << *o_.text << " (" << raw.size() << " tokens of " << *o_.tokenizer << ")\n";
        } else if (comm_.rank() == 0) {
            std::cout << "text: skipped (give --text FILE --tokenizer TOKENIZER_JSON; scripts/bench-mpi.sh does)\n";
        }
        if (comm_.rank() == 0) report(results);
        return 0;
    }

private:
    static float value_of(std::size_t r, std::size_t j) {
        return static_cast<float>(static_cast<int>((r * 2654435761u + j * 40503u) % 2001) - 1000) / 1000.0f;
    }
    void fill(table_type& t) const {
        std::vector<float> row(t.dim());
        for (std::size_t r = t.first_owned(); r < t.first_owned() + t.owned_rows(); ++r) {
            for (std::size_t j = 0; j < row.size(); ++j) row[j] = value_of(r, j);
            t.set_row(r, row);
        }
    }
    static void fill_dense(engram::dense_storage::table<engram::bfloat16>& t) {
        std::vector<float> row(t.dim());
        for (std::size_t r = 0; r < t.rows(); ++r) {
            for (std::size_t j = 0; j < row.size(); ++j) row[j] = value_of(r, j);
            t.set_row(r, row);
        }
    }

    void header(const table_type& t, std::size_t heads, double fill_s) const {
        std::cout << "engram bench mpi" << (o_.quick ? " --quick" : "") << ": " << comm_.size() << " rank(s), table "
                  << t.rows() << " x " << t.dim() << " bf16 (" << t.wire_row_bytes() << " bytes per row), "
                  << t.owned_rows() << " rows on rank 0; " << o_.batch << " tokens per rank per step, " << heads
                  << " heads; filled in " << fill_s << " s\n";
    }

    template <class T>
    static double best_of(std::size_t reps, T&& once) {
        double best = 1e300;
        for (std::size_t r = 0; r < reps; ++r) best = std::min(best, once());
        return best;
    }

    stream_result measure(const std::string& name, const hasher_type& hasher, const table_type& table,
                          std::vector<engram::token_id> tokens) {
        stream_result res;
        res.name = name;
        const std::size_t heads = hasher.num_heads(), T = o_.batch, P = comm_.usize();
        const std::size_t wb = table.wire_row_bytes();
        // Plans of every step (hashing is part of the lookup time, measured below too).
        std::vector<engram::lookup_plan> plans;
        double unique = 0, nodedup_bytes = 0;
        for (std::size_t s = 0; s < o_.steps; ++s) {
            std::vector<engram::row_id> ids(T * heads);
            hasher.rows(std::span<const engram::token_id>(tokens).subspan(s * T, T), 1, T, ids);
            for (auto id : ids)
                if (table.partition().owner(static_cast<std::size_t>(id)) != comm_.urank())
                    nodedup_bytes += static_cast<double>(sizeof(engram::row_id) + wb);
            plans.push_back(engram::make_plan(std::move(ids), 1, T, heads));
            unique +=
                static_cast<double>(plans.back().unique_rows.size()) / static_cast<double>(plans.back().positions());
        }
        res.unique_ratio = comm_.max(unique / static_cast<double>(o_.steps)); // the same order on every rank
        const double tokens_all = static_cast<double>(T * o_.steps);

        // The exchange alone, then the whole lookup (hash + plan + exchange + decode).
        table.reset_stats();
        res.exchange_s = best_of(o_.reps, [&] {
            comm_.barrier();
            const auto t0 = clock_type::now();
            for (const auto& p : plans) (void)table.prefetch(p).memory();
            return comm_.max(seconds_since(t0)) / static_cast<double>(o_.steps);
        });
        const auto st = table.stats();
        res.bytes_per_token = static_cast<double>(comm_.sum(st.bytes_sent)) / static_cast<double>(P) /
                              (tokens_all * static_cast<double>(o_.reps));
        res.nodedup_per_token = static_cast<double>(comm_.sum(static_cast<std::uint64_t>(nodedup_bytes))) /
                                static_cast<double>(P) / tokens_all;
        res.lookup_s = best_of(o_.reps, [&] {
            comm_.barrier();
            const auto t0 = clock_type::now();
            for (std::size_t s = 0; s < o_.steps; ++s) {
                std::vector<engram::row_id> ids(T * heads);
                hasher.rows(std::span<const engram::token_id>(tokens).subspan(s * T, T), 1, T, ids);
                (void)table.prefetch_rows(std::move(ids), 1, T, heads).memory();
            }
            return comm_.max(seconds_since(t0)) / static_cast<double>(o_.steps);
        });
        // Limit probe: the same lookups from one in-RAM table of the whole layer, no exchange.
        res.local_s = best_of(o_.reps, [&] {
            const auto t0 = clock_type::now();
            std::vector<float> memory;
            for (std::size_t s = 0; s < o_.steps; ++s) {
                std::vector<engram::row_id> ids(T * heads);
                hasher.rows(std::span<const engram::token_id>(tokens).subspan(s * T, T), 1, T, ids);
                memory.resize(ids.size() * table.dim());
                dense_full_->gather(ids, memory);
            }
            return comm_.max(seconds_since(t0)) / static_cast<double>(o_.steps);
        });

        // Overlap: each step computes for compute_s (polling the exchange), sequentially after its
        // exchange, or while the next step's exchange runs.
        res.compute_s = o_.compute_us > 0 ? o_.compute_us * 1e-6 : res.exchange_s;
        res.compute_s = comm_.max(res.compute_s);
        const std::size_t chunks = chunks_for(res.compute_s);
        volatile double sink = 0;
        res.serial_s = best_of(o_.reps, [&] {
            comm_.barrier();
            const auto t0 = clock_type::now();
            for (const auto& p : plans) {
                (void)table.prefetch(p).memory();
                sink = sink + compute(chunks, {});
            }
            return comm_.max(seconds_since(t0)) / static_cast<double>(o_.steps);
        });
        res.overlap_s = best_of(o_.reps, [&] {
            comm_.barrier();
            const auto t0 = clock_type::now();
            auto next = table.prefetch(plans[0]);
            for (std::size_t s = 0; s < plans.size(); ++s) {
                auto current = std::move(next);
                if (s + 1 < plans.size()) next = table.prefetch(plans[s + 1]);
                (void)current.memory(); // this step's rows
                sink = sink + compute(chunks, [&] {
                           if (next.valid()) next.progress();
                       });
            }
            return comm_.max(seconds_since(t0)) / static_cast<double>(o_.steps);
        });
        return res;
    }

    void report(const std::vector<stream_result>& results) const {
        const auto P = static_cast<double>(comm_.size());
        const double T = static_cast<double>(o_.batch);
        std::printf("%-10s %8s %12s %12s %9s %12s %12s %9s %10s %10s %10s %8s\n", "stream", "distinct", "lookup tok/s",
                    "local tok/s", "ratio", "B/token/rank", "no-dedup B", "saved", "compute ms", "serial ms",
                    "overlap ms", "hidden");
        nlohmann::json j;
        j["ranks"] = comm_.size();
        j["batch_per_rank"] = o_.batch;
        for (const auto& r : results) {
            const double lookup_tps = T * P / r.lookup_s, local_tps = T * P / r.local_s;
            const double exchange_part = r.serial_s - r.compute_s;
            const double hidden = exchange_part > 0 ? (r.serial_s - r.overlap_s) / exchange_part : 0.0;
            std::printf("%-10s %7.1f%% %12.0f %12.0f %9.2f %12.1f %12.1f %8.1f%% %10.3f %10.3f %10.3f %7.0f%%\n",
                        r.name.c_str(), 100 * r.unique_ratio, lookup_tps, local_tps, lookup_tps / local_tps,
                        r.bytes_per_token, r.nodedup_per_token,
                        r.nodedup_per_token > 0 ? 100 * (1 - r.bytes_per_token / r.nodedup_per_token) : 0.0,
                        1e3 * r.compute_s, 1e3 * r.serial_s, 1e3 * r.overlap_s, 100 * std::clamp(hidden, 0.0, 1.0));
            j["streams"][r.name] = {{"distinct_ratio", r.unique_ratio},
                                    {"lookup_tokens_per_s", lookup_tps},
                                    {"local_tokens_per_s", local_tps},
                                    {"exchange_s", r.exchange_s},
                                    {"bytes_sent_per_token_per_rank", r.bytes_per_token},
                                    {"bytes_without_dedup_per_token_per_rank", r.nodedup_per_token},
                                    {"compute_s", r.compute_s},
                                    {"serial_step_s", r.serial_s},
                                    {"overlapped_step_s", r.overlap_s},
                                    {"exchange_hidden", std::clamp(hidden, 0.0, 1.0)}};
        }
        std::printf("distinct: distinct rows / row lookups of a step (the largest rank). lookup: hash + exchange + "
                    "decode, all ranks'\n"
                    "tokens per second (slowest rank, best of %zu); local: the same lookups, every rank from its own in-RAM\n"
                    "copy of the whole table (no exchange; the limit probe); ratio = lookup / local. B/token/rank: bytes sent to other ranks\n"
                    "(counts, distinct ids, encoded rows); no-dedup B: the same without de-duplication. overlap: a\n"
                    "step's compute while the next step's exchange runs; hidden = share of the exchange time saved.\n",
                    o_.reps);
        if (o_.json) {
            std::ofstream f(*o_.json);
            f << j.dump(2) << '\n';
            if (!f) throw engram::io_error("cannot write --json '" + *o_.json + "'");
        }
    }

    mpi_bench_options o_;
    dist::communicator comm_;
    std::unique_ptr<engram::dense_storage::table<engram::bfloat16>> dense_full_;
};

} // namespace
#endif

int cmd_bench_mpi(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram bench mpi [--quick] [--batch N] [--steps N] [--reps N] [--compute-us N] "
                                  "[--text FILE --tokenizer TOKENIZER_JSON] [--json FILE]  (under mpirun -np N)";
#if ENGRAM_CLI_MPI
    mpi_bench_options o;
    bool help = false;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= argv.size()) throw usage_error(s + " needs a value");
            return argv[++i];
        };
        if (s == "-h" || s == "--help")
            help = true;
        else if (s == "--quick")
            o.quick = true;
        else if (s == "--batch")
            o.batch = parse_count(s, value(), 16, 1u << 20);
        else if (s == "--steps")
            o.steps = parse_count(s, value(), 1, 10000);
        else if (s == "--reps")
            o.reps = parse_count(s, value(), 1, 1000);
        else if (s == "--compute-us")
            o.compute_us = static_cast<double>(parse_count(s, value(), 1, 100'000'000));
        else if (s == "--text")
            o.text = value();
        else if (s == "--tokenizer")
            o.tokenizer = value();
        else if (s == "--json")
            o.json = value();
        else if (s != "mpi")
            throw usage_error("unknown option '" + s + "' (usage: " + usage + ")");
    }
    if (help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Every rank holds 1/N of a bf16 table of the reference demo layer's shape (10,344,164 x 64;\n"
                  << "1/8 with --quick) and looks up --batch tokens per step (default 2048) of its own stretch of\n"
                  << "a Zipf(1.1) stream and, with --text and --tokenizer, of real text. Prints per stream: the\n"
                  << "distinct share of row lookups, lookup throughput against one in-RAM table, bytes sent per\n"
                  << "token per rank with and without de-duplication, and the overlap of the non-blocking exchange\n"
                  << "with --compute-us of compute per step (default: the measured exchange time).\n";
        return 0;
    }
    if (o.text.has_value() != o.tokenizer.has_value()) throw usage_error("--text and --tokenizer go together");
    static dist::mpi_session session;
    return mpi_bench(o).run();
#else
    (void)argv;
    throw engram::unsupported_error(std::string(usage) +
                                    ": this engram was built without MPI (configure with -DENGRAM_MPI=ON)");
#endif
}

} // namespace engram_cli
