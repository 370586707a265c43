// Plugging a user-defined hash family into engram without touching the library.
#include <engram/engram.hpp>

#include <cstdio>
#include <vector>

namespace my {

/// A multiply-shift family: one 64-bit mix per order, a different odd multiplier per head.
/// A family needs: a constructor from the layer's layout, `mix<N>(window)` (window[0] is the
/// current canonical id, window[k] the one k tokens back) and `reduce(mix, head)` returning a
/// row inside `[0, layout.primes[head])`.
class multiply_shift_family {
public:
    using mix_type = std::uint64_t;

    explicit multiply_shift_family(const engram::layer_layout& layout) : sizes_(layout.primes) {}

    template <int N>
    mix_type mix(const engram::token_id* window) const noexcept {
        std::uint64_t h = 0;
        for (int k = 0; k < N; ++k) h = (h + static_cast<std::uint64_t>(window[k])) * 0x9E3779B97F4A7C15ull;
        return h;
    }

    std::int64_t reduce(mix_type mix, std::size_t head) const noexcept {
        const std::uint64_t a = 0xD6E8FEB86659FD93ull + 2 * head; // odd
        const std::uint64_t x = (mix * a) >> 20;
        return static_cast<std::int64_t>(x % static_cast<std::uint64_t>(sizes_[head]));
    }

private:
    std::vector<std::int64_t> sizes_;
};

} // namespace my

// The concept states the contract; a mismatch fails here, with the requirement named.
static_assert(engram::hash_family<my::multiply_shift_family>);

int main() {
    engram::hash_config cfg;
    cfg.max_ngram = 4; // orders 2, 3, 4 (DeepSeek-V4.1 style)
    cfg.table_size_per_ngram = {1000, 1000, 1000};
    cfg.heads_per_ngram = 2;
    cfg.embed_per_ngram = 16;
    const auto layout = engram::make_layout(cfg, 1, /*V'=*/5000, /*canonical pad=*/0);

    engram::ngram_hasher<my::multiply_shift_family, engram::orders<2, 3, 4>> hasher(layout);
    const std::vector<engram::token_id> ids = {11, 22, 33, 44, 55};
    std::vector<engram::row_id> rows(ids.size() * hasher.num_heads());
    hasher.rows(ids, 1, ids.size(), rows);
    for (std::size_t t = 0; t < ids.size(); ++t) {
        std::printf("t=%zu:", t);
        for (std::size_t h = 0; h < hasher.num_heads(); ++h) {
            const auto r = rows[t * hasher.num_heads() + h];
            if (r < layout.offsets[h] || r >= layout.offsets[h] + layout.primes[h]) return 1;
            std::printf(" %lld", static_cast<long long>(r));
        }
        std::printf("\n");
    }
    return 0;
}
