// libFuzzer target: the safetensors reader (header JSON, dtypes, shapes, offsets) and every
// typed view and conversion of the tensors it accepts.
#include "fuzz_common.hpp"

#include <engram/io/safetensors.hpp>

#include <cstdint>

namespace {

void read_all(const engram::tensor_view& t) {
    // Rejections of a well-formed tensor (dtype mismatch, misalignment) are format_errors, caught
    // per call so that every view is tried.
    auto attempt = [](auto&& f) {
        try {
            f();
        } catch (const engram::format_error&) {
        }
    };
    attempt([&] { (void)t.to_vector<float>(); });
    attempt([&] { (void)t.to_vector<double>(); });
    attempt([&] { (void)t.to_vector<std::int64_t>(); });
    attempt([&] { (void)t.to_vector<bool>(); });
    attempt([&] { (void)t.to_vector<std::uint8_t>(); });
    attempt([&] {
        const auto v = t.as<float>();
        engram_fuzz::require(v.size() == t.numel(), "as<float> size is numel");
    });
    attempt([&] { (void)t.as<std::int64_t>(); });
    attempt([&] { (void)t.as<bool>(); });
    attempt([&] { (void)t.as<std::uint16_t>(); });
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return engram_fuzz::run_one([&] {
        const auto file = engram::safetensors_file::from_bytes(engram_fuzz::bytes_of(data, size));
        for (const auto& t : file.tensors()) {
            // An accepted tensor holds exactly numel elements (ASan checks that reading them stays in
            // the buffer).
            engram_fuzz::require(t.bytes.size() == t.numel() * engram::dtype_size(t.type), "bytes match shape");
            engram_fuzz::require(file.find(t.name) == &t, "find returns the tensor");
            read_all(t);
        }
        for (const auto& [key, value] : file.metadata()) (void)file.find_metadata(key);
        (void)file.find("missing");
    });
}
