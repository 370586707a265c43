// Shared pieces of the engram command-line tool: argument parsing and case-file reading.
#pragma once

#include <engram/engram.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram_cli {

/// A usage mistake (unknown option, missing argument): exit code 2.
struct usage_error : engram::error {
    using engram::error::error;
};

/// `s` on one line (newlines become spaces): every error is one line on stderr.
inline std::string one_line(std::string s) {
    for (char& c : s)
        if (c == '\n' || c == '\r') c = ' ';
    return s;
}

/// Ends the command with `status` and prints nothing (the error was reported elsewhere: by rank
/// 0 of an MPI run, for an error every rank saw).
struct quiet_exit {
    int status = 1;
};

/// Positional arguments and options of one subcommand.
struct args {
    std::vector<std::string> positional;
    std::optional<std::string> output;
    std::vector<std::string> flags;
    bool help = false;

    /// Parses `argv`; `-o/--output FILE` and the given boolean `known_flags` are accepted.
    static args parse(const std::vector<std::string>& argv, std::initializer_list<std::string_view> known_flags = {}) {
        args a;
        for (std::size_t i = 0; i < argv.size(); ++i) {
            const std::string& s = argv[i];
            if (s == "-h" || s == "--help") {
                a.help = true;
            } else if (s == "-o" || s == "--output") {
                if (i + 1 >= argv.size()) throw usage_error(s + " needs a file name");
                a.output = argv[++i];
            } else if (s.rfind("--output=", 0) == 0) {
                a.output = s.substr(9);
            } else if (s.size() > 1 && s[0] == '-') {
                bool known = false;
                for (auto f : known_flags) known = known || s == f;
                if (!known) throw usage_error("unknown option '" + s + "'");
                a.flags.push_back(s);
            } else {
                a.positional.push_back(s);
            }
        }
        return a;
    }
    [[nodiscard]] bool has(std::string_view flag) const {
        for (const auto& f : flags)
            if (f == flag) return true;
        return false;
    }
    /// Checks the count of positional arguments and, if `needs_output`, that -o was given.
    void expect(std::size_t n_positional, bool needs_output, const char* usage) const {
        if (positional.size() != n_positional || (needs_output && !output))
            throw usage_error(std::string("usage: ") + usage);
    }
};

/// The value of an integer option (`flag` names it in the error): decimal digits only, in
/// [lo, hi]. @throws usage_error otherwise.
inline std::size_t parse_count(const std::string& flag, const std::string& text, std::size_t lo, std::size_t hi) {
    bool digits = !text.empty() && text.size() <= 19;
    std::size_t v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') digits = false;
        if (digits) v = v * 10 + static_cast<std::size_t>(c - '0');
    }
    if (!digits || v < lo || v > hi)
        throw usage_error(flag + " needs an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                          "], got '" + text + "'");
    return v;
}

/// The parsed `config` metadata of a case or checkpoint file.
inline nlohmann::json read_config(const engram::safetensors_file& file) {
    const std::string* text = file.find_metadata("config");
    if (text == nullptr) throw engram::format_error(file.path().string() + ": no 'config' entry in the metadata");
    return engram::parse_config_text(*text);
}

/// An integer tensor of the given rank, converted to int64.
inline std::vector<std::int64_t> read_ids(const engram::safetensors_file& file, std::string_view name,
                                          std::size_t rank) {
    const auto& t = file.at(name);
    if (t.shape.size() != rank)
        throw engram::format_error(file.path().string() + ": tensor '" + std::string(name) + "' has rank " +
                                   std::to_string(t.shape.size()) + ", expected " + std::to_string(rank));
    switch (t.type) {
    case engram::dtype::i64:
    case engram::dtype::i32:
        return t.to_vector<std::int64_t>();
    default:
        throw engram::format_error(file.path().string() + ": tensor '" + std::string(name) + "' has dtype " +
                                   std::string(engram::dtype_name(t.type)) + ", expected I64 (or I32)");
    }
}

/// The optional `token_mask` (U8 or BOOL [B, T], 0 = dead) of a DeepSeek-V4.1 case; empty when absent.
inline std::vector<std::uint8_t> read_token_mask(const engram::safetensors_file& file,
                                                 const std::vector<std::int64_t>& id_shape) {
    const engram::tensor_view* t = file.find("token_mask");
    if (t == nullptr) return {};
    if (t->type != engram::dtype::u8 && t->type != engram::dtype::boolean)
        throw engram::format_error(file.path().string() + ": tensor 'token_mask' has dtype " +
                                   std::string(engram::dtype_name(t->type)) + ", expected U8");
    if (t->shape != id_shape)
        throw engram::format_error(file.path().string() + ": tensor 'token_mask' has shape " +
                                   engram::detail::shape_string(t->shape) + ", expected " +
                                   engram::detail::shape_string(id_shape) + " (that of 'input_ids')");
    const auto* p = reinterpret_cast<const std::uint8_t*>(t->bytes.data());
    return {p, p + t->bytes.size()};
}

/// One subcommand. Each tools/cmd_*.cpp registers its commands with a static
/// `engram_cli::registration`, so adding a command touches no shared file.
struct command {
    const char* name;
    const char* synopsis; ///< one line for `engram --help`
    int (*run)(const std::vector<std::string>& argv);
};

inline std::vector<command>& registry() {
    static std::vector<command> commands;
    return commands;
}

struct registration {
    explicit registration(command c) { registry().push_back(c); }
};

} // namespace engram_cli
