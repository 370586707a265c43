// main() for engram's benchmarks: runs every benchmark with repetitions (5 unless
// --benchmark_repetitions is given), then prints the best rate of each as a summary.
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
            const auto it = run.counters.find("items_per_second");
            if (it == run.counters.end()) continue;
            auto& entry = best_[run.benchmark_name()];
            entry.first = std::max(entry.first, static_cast<double>(it->second));
            entry.second += 1;
            if (std::find(order_.begin(), order_.end(), run.benchmark_name()) == order_.end())
                order_.push_back(run.benchmark_name());
        }
    }
    void Finalize() override {
        ConsoleReporter::Finalize();
        if (order_.empty()) return;
        std::printf("\nbest of the repetitions (tokens/s):\n");
        for (const auto& name : order_) {
            const auto& [best, n] = best_[name];
            std::printf("  %-60s %10.3f Mtok/s  (best of %d)\n", name.c_str(), best / 1e6, n);
        }
    }

private:
    std::map<std::string, std::pair<double, int>> best_;
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
