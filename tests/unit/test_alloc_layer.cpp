// Steady state allocates nothing: after one call of each shape, repeated forward, forward_memory
// and decode_step calls take no memory from operator new or (glibc) malloc. This executable
// replaces the global allocation functions with counting ones, so it is a test of its own.

#include <engram/layer.hpp>

#include "support/catch.hpp"
#include "support/random_inputs.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <span>
#include <vector>

namespace {

std::atomic<bool> g_counting{false};
std::atomic<std::size_t> g_allocations{0};

void note_allocation() noexcept {
    if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
}

void* checked(void* p) {
    if (p == nullptr) throw std::bad_alloc();
    return p;
}

std::size_t aligned_size(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

/// free() behind a call g++ does not look through (it flags free() of operator new's memory).
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void release(void* p) noexcept {
    std::free(p);
}

} // namespace

// ---- counting replacements of the global allocation functions ---------------------------------

void* operator new(std::size_t n) {
    note_allocation();
    return checked(std::malloc(n == 0 ? 1 : n));
}
void* operator new[](std::size_t n) {
    note_allocation();
    return checked(std::malloc(n == 0 ? 1 : n));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    note_allocation();
    return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    note_allocation();
    return std::malloc(n == 0 ? 1 : n);
}
void* operator new(std::size_t n, std::align_val_t a) {
    note_allocation();
    const auto al = static_cast<std::size_t>(a);
    return checked(std::aligned_alloc(al, aligned_size(n == 0 ? 1 : n, al)));
}
void* operator new[](std::size_t n, std::align_val_t a) {
    note_allocation();
    const auto al = static_cast<std::size_t>(a);
    return checked(std::aligned_alloc(al, aligned_size(n == 0 ? 1 : n, al)));
}
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }

// Eigen takes its GEMM packing buffers from malloc: count malloc too (glibc, without sanitizers,
// whose own malloc interceptors this would bypass).
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define ENGRAM_TEST_COUNTS_MALLOC 1
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* malloc(std::size_t n) noexcept {
    note_allocation();
    return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) noexcept {
    note_allocation();
    return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) noexcept {
    note_allocation();
    return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) noexcept {
    note_allocation();
    return __libc_memalign(a, n);
}
void* memalign(std::size_t a, std::size_t n) noexcept {
    note_allocation();
    return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) noexcept {
    note_allocation();
    void* p = __libc_memalign(a, n);
    if (p == nullptr) return 12; // ENOMEM
    *out = p;
    return 0;
}
}
#else
#define ENGRAM_TEST_COUNTS_MALLOC 0
#endif

namespace {

/// Allocations made by `body` on any thread.
template <class Body>
std::size_t allocations_of(Body&& body) {
    g_allocations.store(0);
    g_counting.store(true);
    body();
    g_counting.store(false);
    return g_allocations.load();
}

engram::layer_config small_config() {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {400, 550};
    cfg.hash.heads_per_ngram = 2;
    cfg.hash.embed_per_ngram = 64;
    cfg.hidden = 96;
    cfg.branches = 2;
    return cfg;
}

using engram_test::normal_values;
using engram_test::token_ids;

struct production_policies : engram::layer_policies {
    using fusion_type = engram::production_fusion;
};

} // namespace

TEST_CASE("the counting allocator sees allocations", "[alloc]") {
    CHECK(allocations_of([] { std::vector<float> v(1000, 1.0f); }) >= 1);
#if ENGRAM_TEST_COUNTS_MALLOC
    CHECK(allocations_of([] {
              void* volatile p = std::malloc(64);
              std::free(p);
          }) == 1);
#endif
}

TEMPLATE_TEST_CASE("forward and decode_step allocate nothing once warm", "[alloc][layer]", engram::layer_policies,
                   production_policies) {
    engram::layer<TestType> layer(small_config(), engram::canonical_table::identity(500));
    layer.randomize(3, 0.2f);
    const std::size_t B = 2, T = 100, MH = 192, D = layer.memory_dim();
    const auto ids = token_ids(B * T, 1);
    const auto hidden = normal_values(B * T * MH, 2);
    const auto e = normal_values(B * T * D, 3);
    std::vector<float> out(hidden.size()), step(MH);
    auto state = layer.new_decode_state();

    for (auto format : {engram::weight_format::f32, engram::weight_format::bf16, engram::weight_format::bf16_dot,
                        engram::weight_format::int8}) {
        layer.set_weight_format(format);
        auto run = [&] {
            layer.forward(ids, B, T, hidden, out);
            layer.forward_memory(e, B, T, hidden, out);
            for (std::size_t t = 0; t < 20; ++t)
                layer.decode_step(state, ids[t], std::span(hidden).subspan(t * MH, MH), step);
        };
        run(); // warm: the workspace grows to these shapes
        INFO("weights format " << static_cast<int>(format));
        CHECK(allocations_of(run) == 0);
        CHECK(allocations_of(run) == 0);
    }

    // A larger call grows the workspace (the counter is live), then is free again.
    const std::size_t T2 = 3 * T;
    const auto ids2 = token_ids(T2, 4);
    const auto hidden2 = normal_values(T2 * MH, 5);
    std::vector<float> out2(hidden2.size());
    CHECK(allocations_of([&] { layer.forward(ids2, 1, T2, hidden2, out2); }) > 0);
    CHECK(allocations_of([&] { layer.forward(ids2, 1, T2, hidden2, out2); }) == 0);
    // Smaller shapes than the largest seen reuse it.
    CHECK(allocations_of([&] { layer.forward(ids, B, T, hidden, out); }) == 0);
}
