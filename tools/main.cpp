// engram: the command-line tool. Every failure prints one line on stderr and exits non-zero
// (1 for bad input, 2 for a usage mistake).
#include "cli.hpp"

#include <algorithm>
#include <exception>
#include <iostream>
#include <new>

namespace {

void print_usage(std::ostream& os) {
    auto commands = engram_cli::registry();
    std::sort(commands.begin(), commands.end(),
              [](const auto& a, const auto& b) { return std::string_view(a.name) < std::string_view(b.name); });
    os << "usage: engram <command> [options]\n\ncommands:\n";
    for (const auto& c : commands) os << "  " << c.synopsis << '\n';
    os << "  version                                            print the engram version\n"
       << "\nRun 'engram <command> --help' for a command's details.\n";
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        print_usage(std::cerr);
        return 2;
    }
    const std::string name = args.front();
    args.erase(args.begin());
    try {
        for (const auto& c : engram_cli::registry())
            if (name == c.name) return c.run(args);
        if (name == "version" || name == "--version") {
            std::cout << "engram " << ENGRAM_VERSION_MAJOR << '.' << ENGRAM_VERSION_MINOR << '.' << ENGRAM_VERSION_PATCH
                      << '\n';
            return 0;
        }
        if (name == "help" || name == "-h" || name == "--help") {
            print_usage(std::cout);
            return 0;
        }
        std::cerr << "engram: unknown command '" << engram_cli::one_line(name) << "' (try 'engram --help')\n";
        return 2;
    } catch (const engram_cli::quiet_exit& e) {
        return e.status;
    } catch (const engram_cli::usage_error& e) {
        std::cerr << "engram " << name << ": " << engram_cli::one_line(e.what()) << '\n';
        return 2;
    } catch (const engram::error& e) {
        std::cerr << "engram " << name << ": error: " << engram_cli::one_line(e.what()) << '\n';
        return 1;
    } catch (const std::bad_alloc&) {
        std::cerr << "engram " << name << ": error: out of memory\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "engram " << name << ": error: " << engram_cli::one_line(e.what()) << '\n';
        return 1;
    }
}
