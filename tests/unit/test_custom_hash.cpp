// A user-defined hash family plugs into the hasher without touching engram.
#include "support/catch.hpp"

#include <engram/engram.hpp>

#include <vector>

namespace user {

/// FNV-1a over the window's ids, salted per head, reduced by the head's prime.
class fnv_family {
public:
    using mix_type = std::uint64_t;
    explicit fnv_family(const engram::layer_layout& layout) : primes_(layout.primes) {}

    template <int N>
    mix_type mix(const engram::token_id* window) const noexcept {
        std::uint64_t h = 0xcbf29ce484222325ull;
        for (int k = 0; k < N; ++k) {
            h ^= static_cast<std::uint64_t>(window[k]);
            h *= 0x100000001b3ull;
        }
        return h;
    }
    std::int64_t reduce(mix_type mix, std::size_t head) const noexcept {
        const std::uint64_t salted = (mix ^ (head * 0x9E3779B97F4A7C15ull)) * 0xff51afd7ed558ccdull;
        return static_cast<std::int64_t>((salted >> 11) % static_cast<std::uint64_t>(primes_[head]));
    }

private:
    std::vector<std::int64_t> primes_;
};

/// Missing reduce(): not a hash family.
struct broken_family {
    using mix_type = int;
    explicit broken_family(const engram::layer_layout&) {}
    template <int N>
    int mix(const engram::token_id*) const noexcept {
        return 0;
    }
};

} // namespace user

static_assert(engram::hash_family<user::fnv_family>);
static_assert(!engram::hash_family<user::broken_family>);

TEST_CASE("a user hash family drives the batch and per-position APIs", "[hash][custom]") {
    engram::hash_config cfg;
    cfg.table_size_per_ngram = {300, 400};
    cfg.heads_per_ngram = 2;
    cfg.embed_per_ngram = 4;
    const auto layout = engram::make_layout(cfg, 1, 100, 0);
    engram::ngram_hasher<user::fnv_family, engram::orders<2, 3>> hasher(layout);
    const std::vector<engram::token_id> ids = {4, 8, 15, 16, 23, 42};
    std::vector<std::int64_t> out(ids.size() * 4);
    hasher.hash(ids, 1, ids.size(), out);

    user::fnv_family family(layout);
    const engram::token_id pad = layout.pad;
    for (std::size_t t = 0; t < ids.size(); ++t) {
        const engram::token_id w[3] = {ids[t], t >= 1 ? ids[t - 1] : pad, t >= 2 ? ids[t - 2] : pad};
        const auto m2 = family.mix<2>(w), m3 = family.mix<3>(w);
        CHECK(out[t * 4 + 0] == family.reduce(m2, 0));
        CHECK(out[t * 4 + 1] == family.reduce(m2, 1));
        CHECK(out[t * 4 + 2] == family.reduce(m3, 2));
        CHECK(out[t * 4 + 3] == family.reduce(m3, 3));
        for (std::size_t h = 0; h < 4; ++h) CHECK(out[t * 4 + h] < layout.primes[h]);
    }
}
