#pragma once
// SPDX-License-Identifier: MIT
// The owner of one mmap'ed region: unmapped when destroyed, moved by swapping (the tables that
// keep rows in mapped memory hold one).

#include <engram/config.hpp>

#include <sys/mman.h>  // for mmap, munmap, MAP_FAILED
#include <sys/types.h> // for off_t

#include <cstddef> // for size_t
#include <utility> // for swap

ENGRAM_BEGIN_NAMESPACE

namespace detail {

class mapping {
public:
    mapping() = default;
    /// Maps `bytes` bytes (`::mmap(nullptr, bytes, prot, flags, fd, offset)`); on failure the
    /// mapping is empty and errno says why (the caller words the error).
    mapping(std::size_t bytes, int prot, int flags, int fd, ::off_t offset) noexcept {
        void* p = ::mmap(nullptr, bytes, prot, flags, fd, offset);
        if (p != MAP_FAILED) addr_ = p, bytes_ = bytes;
    }
    mapping(const mapping&) = delete;
    mapping& operator=(const mapping&) = delete;
    mapping(mapping&& o) noexcept { swap(o); }
    mapping& operator=(mapping&& o) noexcept {
        mapping tmp(std::move(o));
        swap(tmp);
        return *this;
    }
    ~mapping() {
        if (addr_ != nullptr) ::munmap(addr_, bytes_);
    }

    [[nodiscard]] bool empty() const noexcept { return addr_ == nullptr; }
    [[nodiscard]] void* get() const noexcept { return addr_; }
    [[nodiscard]] std::size_t size() const noexcept { return bytes_; }
    void swap(mapping& o) noexcept {
        std::swap(addr_, o.addr_);
        std::swap(bytes_, o.bytes_);
    }

private:
    void* addr_ = nullptr;
    std::size_t bytes_ = 0;
};

} // namespace detail

ENGRAM_END_NAMESPACE
