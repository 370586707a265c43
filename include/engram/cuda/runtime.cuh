#pragma once
// SPDX-License-Identifier: MIT
// The CUDA backend's thin runtime layer: the backend tag, errors, and owners of device memory,
// pinned host memory, host registrations, streams and events. Compiled by nvcc only.

#if !defined(__CUDACC__)
#error                                                                                                                 \
    "engram/cuda/*.cuh are CUDA headers: compile this file with nvcc (CMake: enable_language(CUDA), link engram::cuda)"
#endif

#include <engram/config.hpp>
#include <engram/error.hpp>

#include <cuda_runtime.h>

#include <unistd.h> // for sysconf

#include <cstddef> // for size_t, byte
#include <cstdint> // for uintptr_t
#include <span>    // for span
#include <string>  // for string
#include <utility> // for exchange, swap

ENGRAM_BEGIN_NAMESPACE

/// @brief Backend policy for CUDA execution: `layer_policies::backend_type = cuda_backend`
///        selects `engram::layer<P, cuda_backend>` (engram/cuda/layer.cuh).
struct cuda_backend {
    static constexpr const char* name = "cuda";
    /// Whether a CUDA device can be used by this process.
    static bool available() noexcept {
        int n = 0;
        return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    }
};

namespace cuda {

/// @brief A CUDA runtime or cuBLAS call failed; the message names the call and the error.
class cuda_error : public error {
public:
    using error::error;
};

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw cuda_error(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

/// Why no CUDA device can be used here (empty when one can): for tests and tools that skip.
inline std::string unavailable_reason() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); // clear the sticky error of a failed query
        return std::string("no usable CUDA device: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    }
    if (n == 0) return "no CUDA device";
    return {};
}

/// Multiprocessors of the current device (sizes persistent grids).
inline int sm_count() {
    int dev = 0, n = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SM count)");
    return n;
}

/// @brief Device memory for `n` values of T (cudaMalloc), grown on demand. Addresses are stable
///        until a `reserve` asks for more than the capacity.
template <class T>
class device_buffer {
public:
    device_buffer() = default;
    explicit device_buffer(std::size_t n) { reserve(n); }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    device_buffer(device_buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), cap_(std::exchange(o.cap_, 0)) {}
    device_buffer& operator=(device_buffer&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(cap_, o.cap_);
        return *this;
    }
    ~device_buffer() {
        if (p_ != nullptr) (void)cudaFree(p_);
    }

    /// Room for at least n values (the old contents are dropped when it grows).
    T* reserve(std::size_t n) {
        if (n <= cap_) return p_;
        if (p_ != nullptr) check(cudaFree(p_), "cudaFree");
        p_ = nullptr;
        cap_ = 0;
        check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
        cap_ = n;
        return p_;
    }
    /// Copies `host` in (growing the buffer), on `stream` (synchronous for pageable memory).
    T* upload(std::span<const T> host, cudaStream_t stream = nullptr) {
        reserve(host.size());
        if (!host.empty())
            check(cudaMemcpyAsync(p_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream),
                  "cudaMemcpyAsync");
        return p_;
    }
    [[nodiscard]] T* data() const noexcept { return p_; }
    [[nodiscard]] std::size_t capacity() const noexcept { return cap_; }

private:
    T* p_ = nullptr;
    std::size_t cap_ = 0;
};

/// @brief Pinned, mapped host memory (cudaHostAlloc): the host writes it, kernels read it over
///        the bus through `device_pointer()` (UVA).
class pinned_buffer {
public:
    pinned_buffer() = default;
    explicit pinned_buffer(std::size_t bytes) : bytes_(bytes) {
        check(cudaHostAlloc(&p_, bytes == 0 ? 1 : bytes, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc");
    }
    pinned_buffer(const pinned_buffer&) = delete;
    pinned_buffer& operator=(const pinned_buffer&) = delete;
    pinned_buffer(pinned_buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    pinned_buffer& operator=(pinned_buffer&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(bytes_, o.bytes_);
        return *this;
    }
    ~pinned_buffer() {
        if (p_ != nullptr) (void)cudaFreeHost(p_);
    }
    [[nodiscard]] void* data() const noexcept { return p_; }
    [[nodiscard]] std::size_t size() const noexcept { return bytes_; }
    [[nodiscard]] const void* device_pointer() const {
        void* d = nullptr;
        check(cudaHostGetDevicePointer(&d, p_, 0), "cudaHostGetDevicePointer");
        return d;
    }

private:
    void* p_ = nullptr;
    std::size_t bytes_ = 0;
};

/// @brief Existing host memory (a mapped table file, a dense table) page-locked and mapped for
///        the device (cudaHostRegister, read-only where the device supports it), unregistered on
///        destruction. The memory must outlive the registration.
class host_registration {
public:
    host_registration() = default;
    host_registration(const void* p, std::size_t bytes) {
        if (p == nullptr || bytes == 0) return;
        // Whole pages: a mapping starts and ends on page boundaries, so the range stays in it.
        const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        const auto begin = reinterpret_cast<std::uintptr_t>(p) / page * page;
        const auto end = (reinterpret_cast<std::uintptr_t>(p) + bytes + page - 1) / page * page;
        base_ = reinterpret_cast<void*>(begin);
        const std::size_t len = end - begin;
        cudaError_t e =
            cudaHostRegister(base_, len, cudaHostRegisterMapped | cudaHostRegisterPortable | cudaHostRegisterReadOnly);
        if (e == cudaErrorNotSupported || e == cudaErrorInvalidValue) { // no read-only registration here
            (void)cudaGetLastError();
            e = cudaHostRegister(base_, len, cudaHostRegisterMapped | cudaHostRegisterPortable);
        }
        if (e != cudaSuccess) base_ = nullptr;
        check(e, "cudaHostRegister (table rows)");
        void* d = nullptr;
        check(cudaHostGetDevicePointer(&d, base_, 0), "cudaHostGetDevicePointer");
        device_ = static_cast<const std::byte*>(d) + (reinterpret_cast<std::uintptr_t>(p) - begin);
    }
    host_registration(const host_registration&) = delete;
    host_registration& operator=(const host_registration&) = delete;
    host_registration(host_registration&& o) noexcept
        : base_(std::exchange(o.base_, nullptr)), device_(std::exchange(o.device_, nullptr)) {}
    host_registration& operator=(host_registration&& o) noexcept {
        std::swap(base_, o.base_);
        std::swap(device_, o.device_);
        return *this;
    }
    ~host_registration() {
        if (base_ != nullptr) (void)cudaHostUnregister(base_);
    }
    /// The registered memory's address for kernels (the `p` given).
    [[nodiscard]] const std::byte* device_pointer() const noexcept { return device_; }

private:
    void* base_ = nullptr;
    const std::byte* device_ = nullptr;
};

/// @brief A non-blocking stream (owned).
class stream {
public:
    stream() { check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"); }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
    stream(stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    stream& operator=(stream&& o) noexcept {
        std::swap(s_, o.s_);
        return *this;
    }
    ~stream() {
        if (s_ != nullptr) (void)cudaStreamDestroy(s_);
    }
    [[nodiscard]] cudaStream_t get() const noexcept { return s_; }
    void synchronize() const { check(cudaStreamSynchronize(s_), "cudaStreamSynchronize"); }

private:
    cudaStream_t s_ = nullptr;
};

/// @brief An event without timing (owned): marks a point of a stream that another waits on.
class event {
public:
    explicit event(bool timing = false) {
        check(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming), "cudaEventCreate");
    }
    event(const event&) = delete;
    event& operator=(const event&) = delete;
    event(event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
    event& operator=(event&& o) noexcept {
        std::swap(e_, o.e_);
        return *this;
    }
    ~event() {
        if (e_ != nullptr) (void)cudaEventDestroy(e_);
    }
    [[nodiscard]] cudaEvent_t get() const noexcept { return e_; }
    void record(cudaStream_t s) const { check(cudaEventRecord(e_, s), "cudaEventRecord"); }
    /// Makes `s` wait for this event (no host wait).
    void wait_on(cudaStream_t s) const { check(cudaStreamWaitEvent(s, e_, 0), "cudaStreamWaitEvent"); }
    /// Whether the work before the event has finished (no wait).
    [[nodiscard]] bool done() const {
        const cudaError_t r = cudaEventQuery(e_);
        if (r == cudaErrorNotReady) return false;
        check(r, "cudaEventQuery");
        return true;
    }

private:
    cudaEvent_t e_ = nullptr;
};

/// Threads per block of the element-wise kernels.
inline constexpr int block_threads = 256;

/// Blocks covering n items at `block_threads` each (at least one).
inline unsigned blocks_for(std::size_t n) {
    return static_cast<unsigned>((n + block_threads - 1) / block_threads > 0 ? (n + block_threads - 1) / block_threads
                                                                             : 1);
}

/// Checks the launch just made (a bad configuration shows at once; faults show at the next sync).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

} // namespace cuda

ENGRAM_END_NAMESPACE
