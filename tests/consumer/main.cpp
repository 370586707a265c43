// Hashes a few tokens with the reference configuration through an installed engram.
#include <engram/engram.hpp>

#include <cstdio>
#include <vector>

int main() {
    const auto layout = engram::make_layout(engram::hash_config{}, 1, 27370, 2);
    engram::ngram_hasher<> hasher(layout);
    const std::vector<engram::token_id> ids = {7, 7, 7, 7, 7};
    std::vector<std::int64_t> out(ids.size() * hasher.num_heads());
    hasher.hash(ids, 1, ids.size(), out);
    std::printf("engram consumer: %zu heads, first id %lld\n", hasher.num_heads(), static_cast<long long>(out[0]));
    return layout.primes.front() == 646403 ? 0 : 1;
}
