// Must not compile: a family without reduce() is rejected where the hasher is instantiated,
// and the diagnostic names the concept (checked by the ctest that builds this target).
#include <engram/engram.hpp>

struct no_reduce_family {
    using mix_type = std::int64_t;
    explicit no_reduce_family(const engram::layer_layout&) {}
    template <int N>
    mix_type mix(const engram::token_id*) const noexcept {
        return 0;
    }
};

int main() {
    engram::ngram_hasher<no_reduce_family, engram::orders<2, 3>> hasher(engram::layer_layout{});
    return static_cast<int>(hasher.num_heads());
}
