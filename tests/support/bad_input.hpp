#pragma once
// Shared by the bad-input and durability tests: a matcher on engram exception messages, the
// rows of a bad-input table, and a scratch directory removed at exit.
#include "support/catch.hpp"

#include <engram/error.hpp>

#include <unistd.h> // for getpid

#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <system_error>

namespace engram_test {

#ifdef ENGRAM_CATCH_V3
template <class T>
using matcher_base = Catch::Matchers::MatcherBase<T>;
#else
template <class T>
using matcher_base = Catch::MatcherBase<T>;
#endif

/// Matches an engram exception whose message contains `fragment`.
struct what_contains : matcher_base<engram::error> {
    explicit what_contains(std::string fragment) : fragment_(std::move(fragment)) {}
    bool match(const engram::error& e) const override {
        return std::string(e.what()).find(fragment_) != std::string::npos;
    }
    std::string describe() const override { return "has a message containing \"" + fragment_ + "\""; }

private:
    std::string fragment_;
};

enum class kind { format, config, input, io, unsupported };

/// One row of a bad-input table.
struct bad_input {
    std::string label;
    std::function<void()> load;
    kind type;
    std::string fragment;
};

/// Asserts that the row throws exactly its exception type with its fragment in the message.
inline void expect_rejected(const bad_input& row) {
    INFO("bad input: " << row.label);
    switch (row.type) {
    case kind::format:
        REQUIRE_THROWS_MATCHES(row.load(), engram::format_error, what_contains(row.fragment));
        break;
    case kind::config:
        REQUIRE_THROWS_MATCHES(row.load(), engram::config_error, what_contains(row.fragment));
        break;
    case kind::input:
        REQUIRE_THROWS_MATCHES(row.load(), engram::input_error, what_contains(row.fragment));
        break;
    case kind::io:
        REQUIRE_THROWS_MATCHES(row.load(), engram::io_error, what_contains(row.fragment));
        break;
    case kind::unsupported:
        REQUIRE_THROWS_MATCHES(row.load(), engram::unsupported_error, what_contains(row.fragment));
        break;
    }
}

/// A fresh directory `<tmp>/<prefix>_<pid>` for this process's files, removed at exit.
inline std::filesystem::path scratch_dir(const std::string& prefix) {
    namespace fs = std::filesystem;
    struct owned_dir {
        fs::path path;
        ~owned_dir() {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
    };
    static const owned_dir dir{[&] {
        const auto d = fs::temp_directory_path() / (prefix + "_" + std::to_string(::getpid()));
        fs::remove_all(d);
        fs::create_directories(d);
        return d;
    }()};
    return dir.path;
}

/// An empty directory `name` under `root` (emptied first if it exists).
inline std::filesystem::path fresh_subdir(const std::filesystem::path& root, const std::string& name) {
    const auto d = root / name;
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
}

/// The names of the entries of `dir`.
inline std::set<std::string> files_in(const std::filesystem::path& dir) {
    std::set<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename().string());
    return out;
}

} // namespace engram_test
