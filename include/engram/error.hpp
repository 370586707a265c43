#pragma once
// SPDX-License-Identifier: MIT
// The exception types engram throws; every message names the field and the value at fault.

#include <engram/config.hpp>

#include <stdexcept> // for runtime_error
#include <string>    // for string

ENGRAM_BEGIN_NAMESPACE

/// @brief Base of every exception engram throws.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// @brief A configuration value is invalid (zero sizes, overflowing multipliers, ...).
class config_error : public error {
public:
    using error::error;
};

/// @brief Run-time input is invalid: token ids out of range, mismatched shapes.
class input_error : public error {
public:
    using error::error;
};

/// @brief A file's content is malformed (bad header, wrong dtype or shape, truncated).
class format_error : public error {
public:
    using error::error;
};

/// @brief The operating system refused a file operation (missing file, permissions, disk full).
class io_error : public error {
public:
    using error::error;
};

/// @brief The input is well formed but uses a feature engram does not implement.
class unsupported_error : public error {
public:
    using error::error;
};

ENGRAM_END_NAMESPACE
