#pragma once
// SPDX-License-Identifier: MIT
// Splitting a loop over [0, count) between threads started for the call.

#include <engram/config.hpp>

#include <algorithm> // for min
#include <cstddef>   // for size_t
#include <exception> // for exception_ptr, current_exception, rethrow_exception
#include <thread>    // for thread
#include <vector>    // for vector

ENGRAM_BEGIN_NAMESPACE

namespace detail {

/// @brief Runs `body(lo, hi)` over [0, count): on the calling thread, or split into `threads`
///        contiguous ranges (`threads - 1` threads started for the call, the caller takes the
///        first). Rethrows the first exception of any range once all have ended.
template <class Body>
void split_ranges(std::size_t threads, std::size_t count, Body&& body) {
    const std::size_t n = std::min(threads, count);
    if (n <= 1) {
        if (count != 0) body(std::size_t{0}, count);
        return;
    }
    std::vector<std::exception_ptr> errors(n);
    auto part = [&](std::size_t c) {
        try {
            body(count * c / n, count * (c + 1) / n);
        } catch (...) {
            errors[c] = std::current_exception();
        }
    };
    {
        std::vector<std::thread> workers;
        workers.reserve(n - 1);
        for (std::size_t c = 1; c < n; ++c) workers.emplace_back(part, c);
        part(0);
        for (auto& w : workers) w.join();
    }
    for (auto& err : errors)
        if (err) std::rethrow_exception(err);
}

} // namespace detail

ENGRAM_END_NAMESPACE
