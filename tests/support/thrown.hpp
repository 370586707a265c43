#pragma once
// What a call throws, for tests that check error messages.
#include <string>      // for string
#include <string_view> // for string_view

namespace engram_test {

/// The message of the `Error` that `f` throws, or "<nothing thrown>"; other exceptions escape.
template <class Error, class F>
std::string thrown_message(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "<nothing thrown>";
}

inline bool contains(const std::string& haystack, std::string_view needle) {
    return haystack.find(needle) != std::string::npos;
}

} // namespace engram_test
