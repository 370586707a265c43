// engram: the command-line tool. Every failure prints one line on stderr and exits non-zero.
#include "cli.hpp"

#include <cstdio>
#include <exception>
#include <iostream>
#include <new>

namespace {

constexpr const char* usage_text =
    "usage: engram <command> [options]\n"
    "\n"
    "commands:\n"
    "  compress-vocab TOKENIZER_JSON -o OUT.safetensors   canonical vocabulary of a byte-level BPE tokenizer\n"
    "  hash CASE.safetensors -o OUT.safetensors           row ids of every configured layer (reference hash)\n"
    "  forward CASE.safetensors -o OUT.safetensors [--stream]\n"
    "                                                     run the Engram layer of a forward case\n"
    "  inspect FILE                                       readable summary of a case, table or checkpoint file\n"
    "  version                                            print the engram version\n"
    "\n"
    "Run 'engram <command> --help' for a command's details.\n";

std::string one_line(std::string s) {
    for (char& c : s)
        if (c == '\n' || c == '\r') c = ' ';
    return s;
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        std::cerr << usage_text;
        return 2;
    }
    const std::string command = args.front();
    args.erase(args.begin());
    try {
        if (command == "compress-vocab") return engram_cli::cmd_compress_vocab(args);
        if (command == "hash") return engram_cli::cmd_hash(args);
        if (command == "inspect") return engram_cli::cmd_inspect(args);
        if (command == "forward") return engram_cli::cmd_forward(args);
        if (command == "version" || command == "--version") {
            std::cout << "engram " << ENGRAM_VERSION_MAJOR << '.' << ENGRAM_VERSION_MINOR << '.' << ENGRAM_VERSION_PATCH
                      << '\n';
            return 0;
        }
        if (command == "help" || command == "-h" || command == "--help") {
            std::cout << usage_text;
            return 0;
        }
        std::cerr << "engram: unknown command '" << one_line(command) << "' (try 'engram --help')\n";
        return 2;
    } catch (const engram_cli::usage_error& e) {
        std::cerr << "engram " << command << ": " << one_line(e.what()) << '\n';
        return 2;
    } catch (const engram::error& e) {
        std::cerr << "engram " << command << ": error: " << one_line(e.what()) << '\n';
        return 1;
    } catch (const std::bad_alloc&) {
        std::cerr << "engram " << command << ": error: out of memory\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "engram " << command << ": error: " << one_line(e.what()) << '\n';
        return 1;
    }
}
