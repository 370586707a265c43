// main() for engram's benchmarks: runs every benchmark with repetitions (5 unless
// --benchmark_repetitions is given), then prints the best rate (and the best CPU time per
// iteration) of each as a summary.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

/// The console output as usual, plus the best items/s of each benchmark's repetitions.
class best_of_reporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const auto& run : runs) {
            if (run.run_type != Run::RT_Iteration || run.error_occurred) continue;
            const auto items = run.counters.find("items_per_second");
            const auto bytes = run.counters.find("bytes_per_second");
            if (items == run.counters.end() && bytes == run.counters.end()) continue;
            auto& e = best_[run.benchmark_name()];
            if (e.n == 0) order_.push_back(run.benchmark_name());
            e.bytes = items == run.counters.end();
            e.rate = std::max(e.rate, static_cast<double>(e.bytes ? bytes->second : items->second));
            const double t = run.GetAdjustedCPUTime();
            e.time = e.n == 0 ? t : std::min(e.time, t);
            e.unit = benchmark::GetTimeUnitString(run.time_unit);
            e.n += 1;
        }
    }
    void Finalize() override {
        ConsoleReporter::Finalize();
        if (order_.empty()) return;
        std::printf("\nbest of the repetitions (tokens/s; bytes/s where marked):\n");
        for (const auto& name : order_) {
            const auto& e = best_[name];
            if (e.bytes)
                std::printf("  %-60s %10.3f GB/s    ", name.c_str(), e.rate / 1e9);
            else if (e.rate >= 1e5)
                std::printf("  %-60s %10.3f Mtok/s  ", name.c_str(), e.rate / 1e6);
            else
                std::printf("  %-60s %10.3f ktok/s  ", name.c_str(), e.rate / 1e3);
            std::printf("(%.4g %s per iteration, best of %d)\n", e.time, e.unit, e.n);
        }
    }

private:
    struct entry {
        double rate = 0, time = 0;
        const char* unit = "";
        bool bytes = false;
        int n = 0;
    };
    std::map<std::string, entry> best_;
    std::vector<std::string> order_;
};

} // namespace

int main(int argc, char** argv) {
    std::vector<char*> args(argv, argv + argc);
    bool has_reps = false;
    for (int i = 1; i < argc; ++i) has_reps = has_reps || std::strncmp(argv[i], "--benchmark_repetitions", 23) == 0;
    static char reps[] = "--benchmark_repetitions=5";
    if (!has_reps) args.insert(args.begin() + 1, reps);
    static char no_color[] = "--benchmark_color=false";
    if (!isatty(STDOUT_FILENO)) args.insert(args.begin() + 1, no_color);
    int n = static_cast<int>(args.size());
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
    best_of_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    return 0;
}
