#pragma once
// SPDX-License-Identifier: MIT
// Namespace and feature macros shared by every engram header.

#include <engram/version.hpp>

/// Every public name lives in `engram::v0_1`, reached as `engram::`; two engram versions in
/// one program then cannot violate the one-definition rule.
#define ENGRAM_BEGIN_NAMESPACE                                                                                         \
    namespace engram {                                                                                                 \
    inline namespace v0_1 {
#define ENGRAM_END_NAMESPACE                                                                                           \
    }                                                                                                                  \
    }

/// Function-like feature test: `#if ENGRAM_HAS_CUDA()`; a misspelling is a hard error.
#if defined(__CUDACC__)
#define ENGRAM_HAS_CUDA() 1
#define ENGRAM_HOST_DEVICE __host__ __device__ inline
#else
#define ENGRAM_HAS_CUDA() 0
#define ENGRAM_HOST_DEVICE inline
#endif

/// `ENGRAM_UNROLL(n)`: unroll the next loop n times (GCC and Clang); nothing under nvcc, whose
/// front end does not know the GCC pragma in host code.
#define ENGRAM_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__) || !(defined(__GNUC__) || defined(__clang__))
#define ENGRAM_UNROLL(n)
#else
#define ENGRAM_UNROLL(n) ENGRAM_PRAGMA(GCC unroll n)
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ENGRAM_ALWAYS_INLINE inline __attribute__((always_inline))
#define ENGRAM_LIKELY(x) __builtin_expect(!!(x), 1)
#define ENGRAM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ENGRAM_ALWAYS_INLINE inline
#define ENGRAM_LIKELY(x) (x)
#define ENGRAM_UNLIKELY(x) (x)
#endif
