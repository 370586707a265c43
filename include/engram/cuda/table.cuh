#pragma once
// SPDX-License-Identifier: MIT
// A row table the CUDA kernels read: copied into device memory, or left in host memory that is
// page-locked and mapped (a table file's mapping registered in place, or a pinned copy), read by
// the gather over the bus (UVA).

#include <engram/cuda/runtime.cuh>

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/layer/parameters.hpp>

#include <algorithm> // for min, max
#include <cstddef>   // for byte, size_t
#include <cstdint>   // for uintptr_t
#include <cstring>   // for memcpy
#include <string>    // for string
#include <unistd.h>  // for sysconf

ENGRAM_BEGIN_NAMESPACE

namespace cuda {

/// Where a device table's rows live.
enum class table_placement {
    device,          ///< copied into device memory (HBM): fastest, needs the table's size on the GPU
    host_registered, ///< the host table's own memory (e.g. a mapped checkpoint), page-locked in place: no copy
    host_pinned,     ///< copied into pinned host memory (cudaHostAlloc)
};

[[nodiscard]] constexpr const char* placement_name(table_placement p) noexcept {
    switch (p) {
    case table_placement::device:
        return "device";
    case table_placement::host_registered:
        return "host_registered";
    case table_placement::host_pinned:
        return "host_pinned";
    }
    return "?";
}

/// @brief The rows of a host table where kernels can read them (see `table_placement`). With
///        `host_registered` the host table must stay alive, mapped and unchanged while this lives.
class device_table {
public:
    device_table() = default;
    /// @throws config_error for an empty view; cuda_error if memory or registration is refused.
    device_table(const table_view& host, table_placement where) : host_(host), where_(where) {
        if (host.rows == nullptr || host.count == 0 || host.dim == 0)
            throw config_error("cuda::device_table: the table view is empty");
        if (host.encoding == row_encoding::fp8_split && host.scales == nullptr)
            throw config_error("cuda::device_table: fp8 (two tensors) rows without scales");
        view_ = host;
        const std::size_t rb = host.rows_bytes(), sb = host.scales_bytes();
        switch (where) {
        case table_placement::device: {
            auto* d = device_.reserve(rb + sb);
            check(cudaMemcpy(d, host.rows, rb, cudaMemcpyHostToDevice), "cudaMemcpy (table rows)");
            if (sb != 0)
                check(cudaMemcpy(d + rb, host.scales, sb, cudaMemcpyHostToDevice), "cudaMemcpy (table scales)");
            view_.rows = d;
            view_.scales = sb != 0 ? d + rb : nullptr;
            break;
        }
        case table_placement::host_pinned: {
            pinned_ = pinned_buffer(rb + sb);
            auto* h = static_cast<std::byte*>(pinned_.data());
            std::memcpy(h, host.rows, rb);
            if (sb != 0) std::memcpy(h + rb, host.scales, sb);
            const auto* d = static_cast<const std::byte*>(pinned_.device_pointer());
            view_.rows = d;
            view_.scales = sb != 0 ? d + rb : nullptr;
            break;
        }
        case table_placement::host_registered: {
            if (sb == 0) {
                rows_reg_ = host_registration(host.rows, rb);
                view_.rows = rows_reg_.device_pointer();
                break;
            }
            // Two regions (codes and scales, often in one mapped file): one registration when
            // their pages touch, as a page can be registered once only.
            const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
            const auto r0 = reinterpret_cast<std::uintptr_t>(host.rows), r1 = r0 + rb;
            const auto s0 = reinterpret_cast<std::uintptr_t>(host.scales), s1 = s0 + sb;
            const bool touch = !((r1 - 1) / page < s0 / page || (s1 - 1) / page < r0 / page);
            if (touch) {
                const auto lo = std::min(r0, s0), hi = std::max(r1, s1);
                rows_reg_ = host_registration(reinterpret_cast<const void*>(lo), hi - lo);
                view_.rows = rows_reg_.device_pointer() + (r0 - lo);
                view_.scales = rows_reg_.device_pointer() + (s0 - lo);
            } else {
                rows_reg_ = host_registration(host.rows, rb);
                scales_reg_ = host_registration(host.scales, sb);
                view_.rows = rows_reg_.device_pointer();
                view_.scales = scales_reg_.device_pointer();
            }
            break;
        }
        }
    }

    /// The rows as kernels address them (device or mapped host pointers).
    [[nodiscard]] const table_view& view() const noexcept { return view_; }
    /// The host table's view this was made from.
    [[nodiscard]] const table_view& host_view() const noexcept { return host_; }
    [[nodiscard]] table_placement placement() const noexcept { return where_; }
    [[nodiscard]] std::size_t rows() const noexcept { return view_.count; }
    [[nodiscard]] std::size_t dim() const noexcept { return view_.dim; }
    /// Bytes of rows and scales.
    [[nodiscard]] std::size_t size_bytes() const noexcept { return view_.rows_bytes() + view_.scales_bytes(); }

private:
    table_view host_{}, view_{};
    table_placement where_ = table_placement::device;
    device_buffer<std::byte> device_;
    pinned_buffer pinned_;
    host_registration rows_reg_, scales_reg_;
};

} // namespace cuda

ENGRAM_END_NAMESPACE
