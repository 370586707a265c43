#pragma once
// SPDX-License-Identifier: MIT
// Shared pieces of the libFuzzer targets: engram's own exceptions are the expected answer to
// malformed input; anything else (another exception, a crash, a sanitizer report) is a finding.

#include <engram/error.hpp>

#include <cstddef>     // for byte, size_t
#include <cstdint>     // for uint8_t
#include <cstdio>      // for fprintf
#include <cstdlib>     // for abort
#include <string_view> // for string_view
#include <vector>      // for vector

namespace engram_fuzz {

/// Runs `f` on one input; an engram::error is a normal rejection.
template <class F>
int run_one(F&& f) {
    try {
        f();
    } catch (const engram::error&) {
    }
    return 0;
}

/// Stops the run when an invariant of accepted input is broken (reported as a crash).
inline void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "engram fuzz: invariant broken: %s\n", what);
        std::abort();
    }
}

inline std::vector<std::byte> bytes_of(const std::uint8_t* data, std::size_t size) {
    const auto* p = reinterpret_cast<const std::byte*>(data);
    return {p, p + size};
}

inline std::string_view text_of(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

} // namespace engram_fuzz
