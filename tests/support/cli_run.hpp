#pragma once
// Runs the engram tool from a test (ENGRAM_CLI, its path, comes from the build) and reads files
// back whole.
#include <sys/wait.h> // for WIFEXITED, WEXITSTATUS
#include <unistd.h>   // for getpid

#include <cstdlib>    // for system
#include <filesystem> // for path
#include <fstream>    // for ifstream
#include <sstream>    // for stringstream
#include <string>     // for string

namespace engram_test {

/// The whole file at `p` (empty if it cannot be read).
inline std::string slurp(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

/// A directory of this test process, `<temp>/<prefix><pid>`, created on first use.
inline std::filesystem::path process_dir(const std::string& prefix) {
    auto d = std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
}

/// `p` in single quotes, for a shell command line.
inline std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

/// The exit code (-1 if the tool did not exit normally) and what it printed.
struct cli_result {
    int code = -1;
    std::string out, err;
};

/// Runs `engram <args>` through the shell; stdout and stderr pass through files in `dir`.
inline cli_result run_cli(const std::string& args, const std::filesystem::path& dir) {
    const auto out = dir / "stdout.txt", err = dir / "stderr.txt";
    const std::string cmd = quoted(ENGRAM_CLI) + " " + args + " > " + quoted(out) + " 2> " + quoted(err);
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

} // namespace engram_test
