#pragma once
// SPDX-License-Identifier: MIT
// Validated, memory-mapped reading and atomic writing of safetensors files (POSIX only).

#include <engram/config.hpp>
#include <engram/error.hpp>

#include <nlohmann/json.hpp> // for json (the header is JSON)

#include <fcntl.h>    // for open, O_RDONLY, O_CLOEXEC, O_DIRECTORY, O_NONBLOCK
#include <sys/mman.h> // for mmap, munmap
#include <sys/stat.h> // for fstat, fchmod, S_ISDIR, S_ISREG
#include <unistd.h>   // for close, write, fsync, unlink

#include <algorithm>    // for sort, stable_sort
#include <bit>          // for endian, bit_cast
#include <cerrno>       // for errno, EINTR, EINVAL
#include <cstddef>      // for byte, size_t
#include <cstdint>      // for int64_t, uint64_t, uint16_t, uint32_t, uintptr_t
#include <cstdio>       // for rename
#include <cstdlib>      // for mkstemp
#include <cstring>      // for memchr, memcpy, strerror
#include <filesystem>   // for path, directory_iterator
#include <functional>   // for less
#include <limits>       // for numeric_limits
#include <map>          // for map
#include <span>         // for span
#include <string>       // for string, to_string
#include <string_view>  // for string_view
#include <system_error> // for error_code
#include <type_traits>  // for is_same_v, is_integral_v, remove_cv_t
#include <utility>      // for move, exchange
#include <vector>       // for vector

ENGRAM_BEGIN_NAMESPACE

// Tensor data is reinterpreted in place (as<T>) and copied with memcpy (to_vector<T>); both
// assume the file's little-endian layout is the host's.
static_assert(std::endian::native == std::endian::little,
              "<engram/io/safetensors.hpp> supports little-endian hosts only");

/// @brief The element types of the safetensors format.
/// `f8_e8m0` is the OCP UE8M0 scale byte (2^(b - 127); 255 is NaN), DeepSeek's block-scale dtype.
enum class dtype { f64, f32, f16, bf16, i64, i32, i16, i8, u8, u16, u32, u64, boolean, f8_e4m3, f8_e5m2, f8_e8m0 };

/// @brief Bytes per element of `type` (1 for `boolean` and the 8-bit floats).
inline std::size_t dtype_size(dtype type) noexcept {
    switch (type) {
    case dtype::f64:
    case dtype::i64:
    case dtype::u64:
        return 8;
    case dtype::f32:
    case dtype::i32:
    case dtype::u32:
        return 4;
    case dtype::f16:
    case dtype::bf16:
    case dtype::i16:
    case dtype::u16:
        return 2;
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean:
    case dtype::f8_e4m3:
    case dtype::f8_e5m2:
    case dtype::f8_e8m0:
        return 1;
    }
    return 0; // not reached for a valid enumerator
}

/// @brief The safetensors spelling of `type`: "F64", "F32", ..., "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0".
inline std::string_view dtype_name(dtype type) noexcept {
    switch (type) {
    case dtype::f64:
        return "F64";
    case dtype::f32:
        return "F32";
    case dtype::f16:
        return "F16";
    case dtype::bf16:
        return "BF16";
    case dtype::i64:
        return "I64";
    case dtype::i32:
        return "I32";
    case dtype::i16:
        return "I16";
    case dtype::i8:
        return "I8";
    case dtype::u8:
        return "U8";
    case dtype::u16:
        return "U16";
    case dtype::u32:
        return "U32";
    case dtype::u64:
        return "U64";
    case dtype::boolean:
        return "BOOL";
    case dtype::f8_e4m3:
        return "F8_E4M3";
    case dtype::f8_e5m2:
        return "F8_E5M2";
    case dtype::f8_e8m0:
        return "F8_E8M0";
    }
    return "INVALID";
}

namespace detail {

inline constexpr dtype all_dtypes[] = {
    dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64,     dtype::i32,     dtype::i16,     dtype::i8,
    dtype::u8,  dtype::u16, dtype::u32, dtype::u64,  dtype::boolean, dtype::f8_e4m3, dtype::f8_e5m2, dtype::f8_e8m0};

/// Non-throwing parse used by the reader, which adds the file and tensor to the message.
inline bool try_parse_dtype(std::string_view text, dtype& out) noexcept {
    for (dtype d : all_dtypes)
        if (dtype_name(d) == text) {
            out = d;
            return true;
        }
    return false;
}

/// A value for an error message, cut short so a hostile header cannot make a huge message.
inline std::string quoted_excerpt(std::string_view text, std::size_t max = 64) {
    // Appended piece by piece: g++ 12 -O2 warns falsely (-Wrestrict) on "'" + std::string(...).
    std::string out(1, '\'');
    out.append(text.substr(0, max));
    out += '\'';
    if (text.size() > max) out.insert(out.size() - 1, "...").append(" (" + std::to_string(text.size()) + " bytes)");
    return out;
}

inline std::string json_excerpt(const nlohmann::json& value) {
    // `replace` keeps dump() from throwing on strings that are not UTF-8 (never the case for
    // parsed input, but cheap insurance for a message).
    std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > 64) text = text.substr(0, 64) + "...";
    return text;
}

inline std::string shape_string(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

/// The dtype a C++ type is stored as (a static_assert rejects types without one).
/// Integers map by width and signedness (so `long long` and `long` both mean I64 on LP64);
/// plain `char` and the character types are excluded because their meaning is text, not numbers.
template <class T>
constexpr bool is_char_like_v = std::is_same_v<T, char> || std::is_same_v<T, wchar_t> || std::is_same_v<T, char8_t> ||
                                std::is_same_v<T, char16_t> || std::is_same_v<T, char32_t>;

template <class T>
constexpr bool has_dtype_v = std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bool> ||
                             (std::is_integral_v<T> && !is_char_like_v<T> &&
                              (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8));

template <class T>
constexpr dtype dtype_of() noexcept {
    static_assert(has_dtype_v<T>, "this type has no safetensors dtype (use float, double, bool or a "
                                  "fixed-width integer; char types are rejected)");
    if constexpr (std::is_same_v<T, float>)
        return dtype::f32;
    else if constexpr (std::is_same_v<T, double>)
        return dtype::f64;
    else if constexpr (std::is_same_v<T, bool>) {
        static_assert(sizeof(bool) == 1, "BOOL tensors need a one-byte bool");
        return dtype::boolean;
    } else if constexpr (std::is_signed_v<T>) {
        if constexpr (sizeof(T) == 1)
            return dtype::i8;
        else if constexpr (sizeof(T) == 2)
            return dtype::i16;
        else if constexpr (sizeof(T) == 4)
            return dtype::i32;
        else
            return dtype::i64;
    } else {
        if constexpr (sizeof(T) == 1)
            return dtype::u8;
        else if constexpr (sizeof(T) == 2)
            return dtype::u16;
        else if constexpr (sizeof(T) == 4)
            return dtype::u32;
        else
            return dtype::u64;
    }
}

/// One element read with memcpy: tensor data need not be aligned for T.
template <class T>
inline T load(const std::byte* p) noexcept {
    T value;
    std::memcpy(&value, p, sizeof(T));
    return value;
}

/// Product of the dims with overflow checks; false on a negative dim or overflow of 2^64.
inline bool checked_numel(std::span<const std::int64_t> shape, std::uint64_t& out) noexcept {
    std::uint64_t n = 1;
    for (std::int64_t d : shape) {
        if (d < 0) return false;
        if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return false;
    }
    out = n;
    return true;
}

inline std::string errno_text(int err) { return std::string(std::strerror(err)); }

} // namespace detail

/// @brief Parses a safetensors dtype spelling ("F32", "BF16", ...).
/// @throws format_error naming the string if it is not one of the sixteen spellings.
inline dtype parse_dtype(std::string_view text) {
    dtype d{};
    if (!detail::try_parse_dtype(text, d))
        throw format_error("safetensors: unknown dtype " + detail::quoted_excerpt(text));
    return d;
}

/// @brief IEEE binary16 bits to float, exact for every input (subnormals, +-inf, NaN payloads).
inline float f16_to_float(std::uint16_t bits) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    std::uint32_t exponent = (bits >> 10) & 0x1fu;
    std::uint32_t mantissa = bits & 0x3ffu;
    std::uint32_t out;
    if (exponent == 0x1f) {
        out = sign | 0x7f800000u | (mantissa << 13); // inf, or NaN with its payload kept
    } else if (exponent != 0) {
        out = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        out = sign; // +-0
    } else {
        // Subnormal: mantissa * 2^-24. Shift the leading 1 up to the implicit-bit position
        // (bit 10), lowering the exponent once per shift; every half subnormal is a float normal.
        std::int32_t e = 1;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --e;
        }
        mantissa &= 0x3ffu;
        out = sign | (static_cast<std::uint32_t>(e + (127 - 15)) << 23) | (mantissa << 13);
    }
    return std::bit_cast<float>(out);
}

/// @brief bfloat16 bits to float (exact: bf16 is the high half of a float).
inline float bf16_to_float(std::uint16_t bits) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// @brief One tensor of a safetensors file: name, element type, shape and raw bytes.
///
/// The bytes point into the owning `safetensors_file` and stay valid while it lives (moving the
/// file keeps them valid). The shape of a scalar is empty (`numel() == 1`).
struct tensor_view {
    std::string name;
    engram::dtype type = dtype::u8;
    std::vector<std::int64_t> shape;
    std::span<const std::byte> bytes;

    /// @brief Number of elements: the product of the dims (1 for a scalar).
    std::size_t numel() const noexcept {
        std::size_t n = 1;
        for (std::int64_t d : shape) n *= static_cast<std::size_t>(d);
        return n;
    }

    /// @brief Zero-copy view of the elements as `T`.
    /// @tparam T float (F32), double (F64), bool (BOOL) or a fixed-width integer (I8..I64, U8..U64).
    /// @throws format_error naming the tensor, its dtype and the one `T` needs, if they differ; if
    ///         the data is not aligned for `T` (use `to_vector<T>()` then); for BOOL, if a byte
    ///         is neither 0 nor 1 (such a `bool` would be undefined behaviour).
    template <class T>
    std::span<const T> as() const {
        constexpr dtype wanted = detail::dtype_of<T>();
        if (type != wanted) throw mismatch(wanted, "as");
        check_size(sizeof(T));
        if (bytes.empty()) return {};
        if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(T) != 0)
            throw format_error("tensor '" + name + "' (" + std::string(dtype_name(type)) +
                               "): data is not aligned to " + std::to_string(alignof(T)) +
                               " bytes, so as<T>() cannot view it in place; use to_vector<T>()");
        if constexpr (std::is_same_v<T, bool>) check_bool_bytes();
        return {reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T)};
    }

    /// @brief Copies the elements into a vector of `T`, converting where it is lossless or
    ///        customary.
    ///
    /// - `float`: F32, F16, BF16 (exact), F64 (rounded to nearest float).
    /// - `double`: F64, F32, F16, BF16 (all exact).
    /// - `std::int64_t` (any signed 64-bit integer): I64, I32, I16, I8, U8, U16, U32, U64.
    /// - `bool`: BOOL (any non-zero byte is true).
    /// - any other `T`: its exact dtype only, as for `as<T>()`.
    /// @throws format_error naming the tensor, its dtype and the wanted type if no conversion
    ///         applies, or a U64 value exceeds INT64_MAX for an `std::int64_t` result.
    template <class T>
    std::vector<T> to_vector() const {
        constexpr dtype wanted = detail::dtype_of<T>();
        const std::size_t n = numel();
        std::vector<T> out;
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
            switch (type) {
            case dtype::f32:
                convert<float, T>(out, n);
                return out;
            case dtype::f64:
                convert<double, T>(out, n);
                return out;
            case dtype::f16:
                check_size(2);
                out.resize(n);
                for (std::size_t i = 0; i < n; ++i)
                    out[i] = static_cast<T>(f16_to_float(detail::load<std::uint16_t>(bytes.data() + 2 * i)));
                return out;
            case dtype::bf16:
                check_size(2);
                out.resize(n);
                for (std::size_t i = 0; i < n; ++i)
                    out[i] = static_cast<T>(bf16_to_float(detail::load<std::uint16_t>(bytes.data() + 2 * i)));
                return out;
            default:
                throw mismatch(wanted, "to_vector");
            }
        } else if constexpr (wanted == dtype::i64) {
            switch (type) {
            case dtype::i64:
                convert<std::int64_t, T>(out, n);
                return out;
            case dtype::i32:
                convert<std::int32_t, T>(out, n);
                return out;
            case dtype::i16:
                convert<std::int16_t, T>(out, n);
                return out;
            case dtype::i8:
                convert<std::int8_t, T>(out, n);
                return out;
            case dtype::u8:
                convert<std::uint8_t, T>(out, n);
                return out;
            case dtype::u16:
                convert<std::uint16_t, T>(out, n);
                return out;
            case dtype::u32:
                convert<std::uint32_t, T>(out, n);
                return out;
            case dtype::u64: {
                check_size(8);
                out.resize(n);
                for (std::size_t i = 0; i < n; ++i) {
                    const auto v = detail::load<std::uint64_t>(bytes.data() + 8 * i);
                    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                        throw format_error("tensor '" + name + "' (U64): element " + std::to_string(i) + " = " +
                                           std::to_string(v) + " exceeds INT64_MAX");
                    out[i] = static_cast<T>(v);
                }
                return out;
            }
            default:
                throw mismatch(wanted, "to_vector");
            }
        } else if constexpr (std::is_same_v<T, bool>) {
            if (type != dtype::boolean) throw mismatch(wanted, "to_vector");
            check_size(1);
            out.resize(n);
            for (std::size_t i = 0; i < n; ++i) out[i] = bytes[i] != std::byte{0};
            return out;
        } else {
            if (type != wanted) throw mismatch(wanted, "to_vector");
            convert<T, T>(out, n);
            return out;
        }
    }

private:
    format_error mismatch(dtype wanted, const char* what) const {
        return format_error("tensor '" + name + "' has dtype " + std::string(dtype_name(type)) + ", but " + what +
                            "<T>() wants " + std::string(dtype_name(wanted)));
    }

    // Guards views built by hand: the byte count must match the shape.
    void check_size(std::size_t element_size) const {
        std::uint64_t n = 0, total = 0;
        if (!detail::checked_numel(shape, n) || __builtin_mul_overflow(n, element_size, &total) ||
            total != bytes.size())
            throw format_error("tensor '" + name + "': " + std::to_string(bytes.size()) + " bytes do not match shape " +
                               detail::shape_string(shape) + " of " + std::string(dtype_name(type)));
    }

    void check_bool_bytes() const {
        for (std::size_t i = 0; i < bytes.size(); ++i)
            if (bytes[i] != std::byte{0} && bytes[i] != std::byte{1})
                throw format_error("tensor '" + name + "' (BOOL): element " + std::to_string(i) + " = " +
                                   std::to_string(static_cast<unsigned>(bytes[i])) + " is not 0 or 1");
    }

    template <class From, class To>
    void convert(std::vector<To>& out, std::size_t n) const {
        check_size(sizeof(From));
        out.resize(n);
        if constexpr (std::is_same_v<From, To>) {
            if (n != 0) std::memcpy(out.data(), bytes.data(), n * sizeof(To));
        } else {
            for (std::size_t i = 0; i < n; ++i)
                out[i] = static_cast<To>(detail::load<From>(bytes.data() + sizeof(From) * i));
        }
    }
};

namespace detail {

/// Largest accepted JSON header; a larger length field is treated as corruption.
inline constexpr std::uint64_t safetensors_max_header_bytes = std::uint64_t{100} << 20;

/// Reads a JSON integer in [0, 2^63 - 1]; rejects floats, negatives, larger values and non-numbers.
inline std::uint64_t json_index(const nlohmann::json& value, const std::string& context) {
    if (value.is_number_unsigned()) {
        const auto v = value.get<std::uint64_t>();
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            throw format_error(context + " = " + std::to_string(v) + " exceeds 2^63 - 1");
        return v;
    }
    if (value.is_number_integer()) // signed storage: nlohmann parses only negatives that way
        throw format_error(context + " = " + json_excerpt(value) + " is negative");
    if (value.is_number_float()) throw format_error(context + " = " + json_excerpt(value) + " is not an integer");
    throw format_error(context + " is a JSON " + value.type_name() + ", expected an integer");
}

inline void parse_safetensors(std::span<const std::byte> file, const std::string& where,
                              std::map<std::string, std::string>& metadata, std::vector<tensor_view>& tensors) {
    const std::string size_text = std::to_string(file.size());
    if (file.size() < 8)
        throw format_error(where + ": file is " + size_text + " bytes, shorter than the 8-byte header length field");
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i)
        header_len = (header_len << 8) | static_cast<std::uint64_t>(file[static_cast<std::size_t>(i)]);
    if (header_len == 0) throw format_error(where + ": header length is 0; expected a JSON object");
    if (header_len > safetensors_max_header_bytes)
        throw format_error(where + ": header length " + std::to_string(header_len) + " exceeds the " +
                           std::to_string(safetensors_max_header_bytes) + "-byte limit");
    if (header_len > file.size() - 8)
        throw format_error(where + ": header length " + std::to_string(header_len) + " exceeds the " +
                           std::to_string(file.size() - 8) + " bytes after the length field (file size " + size_text +
                           "); the file is truncated or not safetensors");

    const char* text = reinterpret_cast<const char*>(file.data() + 8);
    // nlohmann/json stops at a NUL as if the input ended, so "{}\0<junk>" would pass; JSON text
    // never contains a raw NUL, so reject it here.
    if (const void* nul = std::memchr(text, 0, static_cast<std::size_t>(header_len)))
        throw format_error(where + ": header is not valid JSON: NUL byte at header offset " +
                           std::to_string(static_cast<const char*>(nul) - text));
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(text, text + header_len);
    } catch (const nlohmann::json::exception& e) {
        throw format_error(where + ": header is not valid JSON: " + e.what());
    }
    if (!header.is_object())
        throw format_error(where + ": header is a JSON " + std::string(header.type_name()) + ", expected an object");

    const std::span<const std::byte> data = file.subspan(8 + static_cast<std::size_t>(header_len));
    struct placed {
        std::uint64_t begin, end;
        tensor_view view;
    };
    std::vector<placed> found;
    found.reserve(header.size());
    for (const auto& item : header.items()) {
        const std::string& key = item.key();
        const nlohmann::json& entry = item.value();
        if (key == "__metadata__") {
            if (!entry.is_object())
                throw format_error(where + ": __metadata__ is a JSON " + std::string(entry.type_name()) +
                                   ", expected an object of strings");
            for (const auto& m : entry.items()) {
                if (!m.value().is_string())
                    throw format_error(where + ": __metadata__ value for key " + quoted_excerpt(m.key()) +
                                       " is a JSON " + std::string(m.value().type_name()) + " (" +
                                       json_excerpt(m.value()) + "), expected a string");
                metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string ctx = where + ": tensor " + quoted_excerpt(key);
        if (!entry.is_object())
            throw format_error(ctx + ": entry is a JSON " + std::string(entry.type_name()) + ", expected an object");
        // Exactly the three fields of the format: a misspelt or extra key is corruption, not an
        // extension (the header has `__metadata__` for extensions).
        for (const auto& f : entry.items())
            if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
                throw format_error(ctx + ": unknown field " + quoted_excerpt(f.key()) +
                                   " (a tensor entry has exactly dtype, shape and data_offsets)");

        const auto field = [&](const char* name) -> const nlohmann::json& {
            const auto it = entry.find(name);
            if (it == entry.end()) throw format_error(ctx + ": field '" + name + "' is missing");
            return *it;
        };
        const nlohmann::json& dtype_json = field("dtype");
        if (!dtype_json.is_string())
            throw format_error(ctx + ": field 'dtype' is a JSON " + std::string(dtype_json.type_name()) +
                               ", expected a string");
        const std::string& dtype_text = dtype_json.get_ref<const std::string&>();
        dtype type{};
        if (!try_parse_dtype(dtype_text, type))
            throw format_error(ctx + ": unknown dtype " + quoted_excerpt(dtype_text));

        const nlohmann::json& shape_json = field("shape");
        if (!shape_json.is_array())
            throw format_error(ctx + ": field 'shape' is a JSON " + std::string(shape_json.type_name()) +
                               ", expected an array of integers");
        std::vector<std::int64_t> shape;
        shape.reserve(shape_json.size());
        for (std::size_t i = 0; i < shape_json.size(); ++i)
            shape.push_back(
                static_cast<std::int64_t>(json_index(shape_json[i], ctx + ": shape[" + std::to_string(i) + "]")));

        const nlohmann::json& offsets_json = field("data_offsets");
        if (!offsets_json.is_array() || offsets_json.size() != 2)
            throw format_error(ctx + ": field 'data_offsets' = " + json_excerpt(offsets_json) +
                               ", expected [begin, end]");
        const std::uint64_t begin = json_index(offsets_json[0], ctx + ": data_offsets[0]");
        const std::uint64_t end = json_index(offsets_json[1], ctx + ": data_offsets[1]");
        if (begin > end)
            throw format_error(ctx + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                               "] has begin > end");
        if (end > data.size())
            throw format_error(ctx + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                               "] exceed the data buffer of " + std::to_string(data.size()) +
                               " bytes (file truncated?)");

        std::uint64_t numel = 0, nbytes = 0;
        if (!checked_numel(shape, numel) || __builtin_mul_overflow(numel, dtype_size(type), &nbytes))
            throw format_error(ctx + ": shape " + shape_string(shape) + " of " + dtype_text +
                               " overflows 64-bit byte count");
        if (nbytes != end - begin)
            throw format_error(ctx + ": shape " + shape_string(shape) + " of " + dtype_text + " needs " +
                               std::to_string(nbytes) + " bytes, but data_offsets [" + std::to_string(begin) + ", " +
                               std::to_string(end) + "] hold " + std::to_string(end - begin));

        found.push_back(
            {begin, end,
             tensor_view{key, type, std::move(shape),
                         data.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin))}});
    }

    std::sort(found.begin(), found.end(), [](const placed& a, const placed& b) {
        if (a.begin != b.begin) return a.begin < b.begin;
        if (a.end != b.end) return a.end < b.end;
        return a.view.name < b.view.name;
    });
    // Empty tensors occupy no bytes and so never overlap; gaps between tensors are allowed.
    const placed* last = nullptr; // the non-empty tensor reaching furthest so far
    for (const placed& p : found) {
        if (p.begin == p.end) continue;
        if (last != nullptr && p.begin < last->end)
            throw format_error(where + ": tensors " + quoted_excerpt(last->view.name) + " [" +
                               std::to_string(last->begin) + ", " + std::to_string(last->end) + ") and " +
                               quoted_excerpt(p.view.name) + " [" + std::to_string(p.begin) + ", " +
                               std::to_string(p.end) + ") overlap");
        if (last == nullptr || p.end > last->end) last = &p;
    }
    tensors.reserve(found.size());
    for (placed& p : found) tensors.push_back(std::move(p.view));
}

/// Closes a file descriptor on scope exit.
struct fd_closer {
    int fd = -1;
    ~fd_closer() {
        if (fd >= 0) ::close(fd);
    }
};

/// Writes everything, retrying short writes and EINTR; `what` names the file for the message.
inline void write_all(int fd, const void* data, std::size_t size, const std::string& what) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
        const ::ssize_t n = ::write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw io_error("safetensors writer: cannot write " + what + ": " + errno_text(errno));
        }
        p += n;
        size -= static_cast<std::size_t>(n);
    }
}

} // namespace detail

/// @brief A read-only, validated, memory-mapped safetensors file.
///
/// `open` maps the whole file (`PROT_READ`, `MAP_PRIVATE`) and validates the header before any
/// tensor is exposed: header length, JSON syntax, every tensor's dtype, shape and offsets (in
/// range, byte count == numel * dtype_size without overflow, no two tensors overlapping; gaps are
/// allowed). Every failure is a `format_error` naming the file, the field and the value.
/// A duplicated JSON key keeps its last value (nlohmann/json's rule). A tensor entry must have
/// exactly the fields `dtype`, `shape` and `data_offsets` (an unknown field is a format_error).
///
/// Move-only; the mapping is released by the destructor. A moved-from object holds no tensors.
/// @pre Nobody truncates the file while it is mapped (reading the lost pages raises SIGBUS).
class safetensors_file {
public:
    safetensors_file(const safetensors_file&) = delete;
    safetensors_file& operator=(const safetensors_file&) = delete;

    safetensors_file(safetensors_file&& other) noexcept { take(other); }

    safetensors_file& operator=(safetensors_file&& other) noexcept {
        if (this != &other) {
            unmap();
            take(other);
        }
        return *this;
    }

    ~safetensors_file() { unmap(); }

    /// @brief Maps and validates the file at `path`.
    /// @throws io_error if it cannot be opened or mapped, or is a directory or not a regular file.
    /// @throws format_error if its content is not a valid safetensors file.
    static safetensors_file open(const std::filesystem::path& path) {
        const std::string shown = "'" + path.string() + "'";
        // O_NONBLOCK: opening a FIFO must not wait for a writer (fstat then rejects it); it does
        // not change reads of a regular file.
        detail::fd_closer fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
        if (fd.fd < 0) throw io_error("safetensors: cannot open " + shown + ": " + detail::errno_text(errno));
        struct stat st {};
        if (::fstat(fd.fd, &st) != 0)
            throw io_error("safetensors: cannot stat " + shown + ": " + detail::errno_text(errno));
        if (S_ISDIR(st.st_mode)) throw io_error("safetensors: " + shown + " is a directory, not a file");
        if (!S_ISREG(st.st_mode)) throw io_error("safetensors: " + shown + " is not a regular file");

        safetensors_file file;
        file.path_ = path;
        file.size_ = static_cast<std::size_t>(st.st_size);
        // Files under 8 bytes fail validation below; never mmap length 0 (EINVAL).
        if (file.size_ >= 8) {
            void* map = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
            if (map == MAP_FAILED)
                throw io_error("safetensors: cannot mmap " + shown + " (" + std::to_string(file.size_) +
                               " bytes): " + detail::errno_text(errno));
            file.map_ = map;
            file.map_size_ = file.size_;
            file.base_ = static_cast<const std::byte*>(map);
        }
        file.parse("safetensors file " + shown);
        return file;
    }

    /// @brief Validates an in-memory safetensors image and keeps it (for tests and fuzzing).
    /// @throws format_error as `open` does; `path()` is empty.
    static safetensors_file from_bytes(std::vector<std::byte> bytes) {
        safetensors_file file;
        file.owned_ = std::move(bytes);
        file.base_ = file.owned_.data();
        file.size_ = file.owned_.size();
        file.parse("safetensors buffer");
        return file;
    }

    /// @brief The `__metadata__` map (empty when the header has none).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

    /// @brief The metadata value for `key`, or nullptr.
    const std::string* find_metadata(std::string_view key) const {
        const auto it = metadata_.find(std::string(key));
        return it == metadata_.end() ? nullptr : &it->second;
    }

    /// @brief Whether a tensor called `name` exists.
    bool contains(std::string_view name) const { return find(name) != nullptr; }

    /// @brief The tensor called `name`, or nullptr.
    const tensor_view* find(std::string_view name) const {
        const auto it = index_.find(name);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }

    /// @brief The tensor called `name`.
    /// @throws format_error "missing tensor 'name'", with the file's path when known.
    const tensor_view& at(std::string_view name) const {
        if (const tensor_view* t = find(name)) return *t;
        throw format_error(
            (path_.empty() ? std::string("safetensors buffer") : "safetensors file '" + path_.string() + "'") +
            ": missing tensor " + detail::quoted_excerpt(name, 256));
    }

    /// @brief Every tensor, ordered by data offset (ties: by name).
    std::span<const tensor_view> tensors() const noexcept { return tensors_; }

    /// @brief The path given to `open` (empty for `from_bytes`).
    const std::filesystem::path& path() const noexcept { return path_; }

    /// @brief Size of the file or buffer in bytes.
    std::size_t file_size() const noexcept { return size_; }

private:
    safetensors_file() = default;

    void parse(const std::string& where) {
        detail::parse_safetensors({base_, size_}, where, metadata_, tensors_);
        for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    }

    void unmap() noexcept {
        if (map_ != nullptr) ::munmap(map_, map_size_);
        map_ = nullptr;
        map_size_ = 0;
    }

    // Moving a std::vector or a mapping keeps the data address, so the tensor spans stay valid.
    void take(safetensors_file& other) noexcept {
        path_ = std::move(other.path_);
        owned_ = std::move(other.owned_);
        map_ = std::exchange(other.map_, nullptr);
        map_size_ = std::exchange(other.map_size_, 0);
        base_ = std::exchange(other.base_, nullptr);
        size_ = std::exchange(other.size_, 0);
        metadata_ = std::move(other.metadata_);
        tensors_ = std::move(other.tensors_);
        index_ = std::move(other.index_);
        other.metadata_.clear();
        other.tensors_.clear();
        other.index_.clear();
    }

    std::filesystem::path path_;
    std::vector<std::byte> owned_; // from_bytes storage
    void* map_ = nullptr;          // open() mapping
    std::size_t map_size_ = 0;
    const std::byte* base_ = nullptr;
    std::size_t size_ = 0;
    std::map<std::string, std::string> metadata_;
    std::vector<tensor_view> tensors_;
    std::map<std::string, std::size_t, std::less<>> index_;
};

/// @brief The temporary files that interrupted atomic writes of `target` may have left behind:
///        `.NAME.tmp.XXXXXX` in target's directory (NAME is target's file name, XXXXXX the six
///        characters `mkstemp` chose), sorted.
///
/// Every engram writer (`safetensors_writer::write`, the table-file writer) writes such a file,
/// fsyncs it and renames it over `target`; a process killed before the rename (SIGKILL, power
/// loss) leaves it behind. Nothing ever reads these files, and a partly written one never
/// carries the target's name. They are safe to delete once no writer of `target` is running.
/// @return an empty list if the directory cannot be read.
inline std::vector<std::filesystem::path> write_temporaries(const std::filesystem::path& target) {
    std::vector<std::filesystem::path> out;
    if (!target.has_filename()) return out;
    const std::string prefix = "." + target.filename().string() + ".tmp.";
    const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
    std::error_code ec;
    for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.size() == prefix.size() + 6 && name.compare(0, prefix.size(), prefix) == 0) out.push_back(it->path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

/// @brief Builds a safetensors file in memory and writes it atomically.
///
/// Layout: the JSON header is padded with spaces so the data buffer starts 8-byte aligned; the
/// data is contiguous (no gaps, as the reference Rust reader requires), with tensors of larger
/// element size first and, within one size, in the order they were added, so every tensor starts
/// aligned to its element size. Header keys are written in sorted order.
class safetensors_writer {
public:
    /// @brief Adds a tensor, copying `data`.
    /// @throws config_error if `name` is already used or is "__metadata__", a dim is negative, the
    ///         byte count overflows, `data.size() != numel * dtype_size(type)`, or the name is not
    ///         valid UTF-8.
    void add(std::string name, dtype type, std::vector<std::int64_t> shape, std::span<const std::byte> data) {
        const std::string ctx = "safetensors writer: tensor " + detail::quoted_excerpt(name);
        if (name == "__metadata__") throw config_error(ctx + ": the name is reserved for metadata");
        if (names_.find(name) != names_.end()) throw config_error(ctx + ": duplicate tensor name");
        check_utf8(name, "tensor name");
        for (std::size_t i = 0; i < shape.size(); ++i)
            if (shape[i] < 0)
                throw config_error(ctx + ": shape[" + std::to_string(i) + "] = " + std::to_string(shape[i]) +
                                   " is negative");
        std::uint64_t numel = 0, nbytes = 0;
        if (!detail::checked_numel(shape, numel) || __builtin_mul_overflow(numel, dtype_size(type), &nbytes))
            throw config_error(ctx + ": shape " + detail::shape_string(shape) + " overflows 64-bit byte count");
        if (nbytes != data.size())
            throw config_error(ctx + ": data is " + std::to_string(data.size()) + " bytes, but shape " +
                               detail::shape_string(shape) + " of " + std::string(dtype_name(type)) + " needs " +
                               std::to_string(nbytes));
        names_.emplace(name, entries_.size());
        entries_.push_back({std::move(name), type, std::move(shape), {data.begin(), data.end()}});
    }

    /// @brief Adds a tensor of `T` values; the dtype follows from `T` (float F32, double F64,
    ///        bool BOOL, fixed-width integers I8..I64 / U8..U64, so `std::uint16_t` is U16).
    ///        F16 and BF16 bit patterns go through `add_f16` / `add_bf16`.
    template <class T, std::size_t Extent>
    void add(std::string name, std::vector<std::int64_t> shape, std::span<T, Extent> values) {
        using value_type = std::remove_cv_t<T>;
        add(std::move(name), detail::dtype_of<value_type>(), std::move(shape), std::as_bytes(values));
    }

    /// @brief As the span overload, for a vector.
    template <class T, class Allocator>
    void add(std::string name, std::vector<std::int64_t> shape, const std::vector<T, Allocator>& values) {
        static_assert(!std::is_same_v<T, bool>, "std::vector<bool> is packed; pass a span of bool");
        add(std::move(name), std::move(shape), std::span<const T>(values));
    }

    /// @brief Adds a copy of a tensor from another file.
    void add(const tensor_view& tensor) { add(tensor.name, tensor.type, tensor.shape, tensor.bytes); }

    /// @brief Adds a BF16 tensor from raw bfloat16 bit patterns.
    void add_bf16(std::string name, std::vector<std::int64_t> shape, std::span<const std::uint16_t> bits) {
        add(std::move(name), dtype::bf16, std::move(shape), std::as_bytes(bits));
    }

    /// @brief Adds an F16 tensor from raw IEEE binary16 bit patterns.
    void add_f16(std::string name, std::vector<std::int64_t> shape, std::span<const std::uint16_t> bits) {
        add(std::move(name), dtype::f16, std::move(shape), std::as_bytes(bits));
    }

    /// @brief Sets (or replaces) a `__metadata__` entry.
    /// @throws config_error if the key or value is not valid UTF-8.
    void set_metadata(std::string key, std::string value) {
        check_utf8(key, "metadata key");
        check_utf8(value, "metadata value");
        metadata_[std::move(key)] = std::move(value);
    }

    /// @brief Number of tensors added.
    std::size_t size() const noexcept { return entries_.size(); }

    /// @brief The complete file image.
    std::vector<std::byte> to_bytes() const {
        const layout plan = make_layout();
        std::vector<std::byte> out;
        out.reserve(8 + plan.header.size() + plan.data_size);
        for (std::size_t i = 0; i < 8; ++i) out.push_back(plan.prefix[i]);
        const auto* h = reinterpret_cast<const std::byte*>(plan.header.data());
        out.insert(out.end(), h, h + plan.header.size());
        for (std::size_t i : plan.order) out.insert(out.end(), entries_[i].data.begin(), entries_[i].data.end());
        return out;
    }

    /// @brief Writes the file atomically: a temporary `.<name>.tmp.XXXXXX` in the same directory is
    ///        written, fsynced, given mode 0644 and renamed over `out`; then the directory is fsynced.
    /// @throws io_error naming the path and the system error; the temporary file is removed.
    ///         A process killed before the rename leaves the temporary (see `write_temporaries`).
    void write(const std::filesystem::path& out) const {
        const layout plan = make_layout();
        const std::string target = out.string();
        if (!out.has_filename()) throw io_error("safetensors writer: output path '" + target + "' has no file name");
        const std::filesystem::path dir = out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
        std::string tmp = (dir / ("." + out.filename().string() + ".tmp.XXXXXX")).string();
        detail::fd_closer fd{::mkstemp(tmp.data())};
        if (fd.fd < 0)
            throw io_error("safetensors writer: cannot create a temporary file for '" + target + "' in '" +
                           dir.string() + "': " + detail::errno_text(errno));
        struct remover { // unlinks the temporary file unless the rename happened
            const std::string* path;
            ~remover() {
                if (path != nullptr) ::unlink(path->c_str());
            }
        } cleanup{&tmp};
        const std::string shown = "'" + tmp + "' (for '" + target + "')";
        const auto fail = [&](const char* what) {
            throw io_error("safetensors writer: cannot " + std::string(what) + " " + shown + ": " +
                           detail::errno_text(errno));
        };
        if (::fchmod(fd.fd, 0644) != 0) fail("chmod");
        detail::write_all(fd.fd, plan.prefix, 8, shown);
        detail::write_all(fd.fd, plan.header.data(), plan.header.size(), shown);
        for (std::size_t i : plan.order)
            detail::write_all(fd.fd, entries_[i].data.data(), entries_[i].data.size(), shown);
        if (::fsync(fd.fd) != 0) fail("fsync");
        const int closing = std::exchange(fd.fd, -1);
        if (::close(closing) != 0) fail("close");
        if (std::rename(tmp.c_str(), target.c_str()) != 0)
            throw io_error("safetensors writer: cannot rename '" + tmp + "' to '" + target +
                           "': " + detail::errno_text(errno));
        cleanup.path = nullptr;
        // Make the rename itself durable. Some file systems cannot fsync a directory (EINVAL).
        detail::fd_closer dir_fd{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
        if (dir_fd.fd < 0 || (::fsync(dir_fd.fd) != 0 && errno != EINVAL))
            throw io_error("safetensors writer: wrote '" + target + "' but cannot fsync its directory '" +
                           dir.string() + "': " + detail::errno_text(errno));
    }

private:
    struct entry {
        std::string name;
        dtype type;
        std::vector<std::int64_t> shape;
        std::vector<std::byte> data;
    };

    struct layout {
        std::byte prefix[8];            // little-endian header length
        std::string header;             // JSON padded with spaces
        std::vector<std::size_t> order; // entries_ indices in data order
        std::uint64_t data_size = 0;
    };

    static void check_utf8(const std::string& text, const char* what) {
        try {
            (void)nlohmann::json(text).dump();
        } catch (const nlohmann::json::exception&) {
            throw config_error(std::string("safetensors writer: ") + what + " " + detail::quoted_excerpt(text) +
                               " is not valid UTF-8");
        }
    }

    layout make_layout() const {
        layout plan;
        plan.order.resize(entries_.size());
        for (std::size_t i = 0; i < entries_.size(); ++i) plan.order[i] = i;
        std::stable_sort(plan.order.begin(), plan.order.end(), [&](std::size_t a, std::size_t b) {
            return dtype_size(entries_[a].type) > dtype_size(entries_[b].type);
        });
        nlohmann::json header = nlohmann::json::object();
        if (!metadata_.empty()) header["__metadata__"] = metadata_;
        std::uint64_t offset = 0;
        for (std::size_t i : plan.order) {
            const entry& e = entries_[i];
            const std::uint64_t end = offset + e.data.size();
            header[e.name] = {{"dtype", dtype_name(e.type)}, {"shape", e.shape}, {"data_offsets", {offset, end}}};
            offset = end;
        }
        plan.data_size = offset;
        plan.header = header.dump();
        // Pad so 8 + header length is a multiple of 8: the data buffer then starts 8-aligned.
        plan.header.append((8 - plan.header.size() % 8) % 8, ' ');
        const std::uint64_t n = plan.header.size();
        for (std::size_t i = 0; i < 8; ++i) plan.prefix[i] = static_cast<std::byte>((n >> (8 * i)) & 0xffu);
        return plan;
    }

    std::vector<entry> entries_;
    std::map<std::string, std::size_t, std::less<>> names_;
    std::map<std::string, std::string> metadata_;
};

ENGRAM_END_NAMESPACE
