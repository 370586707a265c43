#pragma once
// SPDX-License-Identifier: MIT
// The host backend tag: kernels run on the CPU that calls them.

#include <engram/config.hpp>

ENGRAM_BEGIN_NAMESPACE

/// @brief Backend policy for CPU execution (the default). A backend is a tag type; generic code
///        asks it for its name and whether it is available in this build.
struct host_backend {
    static constexpr const char* name = "host";
    static constexpr bool available() noexcept { return true; }
};

ENGRAM_END_NAMESPACE
