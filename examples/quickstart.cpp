// Quick start: tokens -> canonical ids -> row ids -> memory vectors, with the reference hash.
#include <engram/engram.hpp>

#include <cstdio>
#include <vector>

int main() {
    // 1. A canonical vocabulary. Real models load it from a tokenizer.json
    //    (<engram/vocab/tokenizer_json.hpp>) or a safetensors 'lookup' tensor; here raw ids
    //    0..999 fold pairwise (t and t + 500 share an id), so V = 1000 and V' = 500.
    std::vector<engram::token_id> lookup(1000);
    for (std::size_t t = 0; t < lookup.size(); ++t) lookup[t] = static_cast<engram::token_id>(t % 500);
    const auto vocab = engram::canonical_table::from_lookup(lookup);

    // 2. The hashing configuration (a small version of the reference's) and one layer's layout:
    //    multipliers from NumPy-compatible seeding, distinct primes, offsets.
    engram::hash_config cfg;
    cfg.table_size_per_ngram = {2000, 2000};
    cfg.heads_per_ngram = 4;
    cfg.embed_per_ngram = 32; // d = 8 per head
    cfg.layer_ids = {1, 15};
    const auto layout = engram::make_layout(cfg, 1, vocab.canonical_size(), vocab.canonical_pad_id(cfg.pad_id));

    // 3. Row ids for a [B = 1, T = 6] batch: orders 2 and 3, 4 heads each.
    engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>> hasher(layout);
    const std::vector<engram::token_id> raw = {17, 517, 42, 17, 517, 42};
    std::vector<engram::token_id> canonical(raw.size());
    vocab.map(raw, canonical);
    std::vector<engram::row_id> rows(raw.size() * hasher.num_heads());
    hasher.rows(canonical, 1, raw.size(), rows);

    // 4. A dense table and the gather into memory vectors [B, T, heads * d].
    engram::dense_storage::table<float> table(static_cast<std::size_t>(layout.total_rows),
                                              static_cast<std::size_t>(layout.head_dim));
    for (std::size_t r = 0; r < table.rows(); ++r) table.row(r)[0] = static_cast<float>(r);
    std::vector<float> memory(rows.size() * table.dim());
    engram::gather(table, std::span<const engram::row_id>(rows), std::span<float>(memory));

    for (std::size_t t = 0; t < raw.size(); ++t) {
        std::printf("t=%zu raw=%lld canonical=%lld rows:", t, static_cast<long long>(raw[t]),
                    static_cast<long long>(canonical[t]));
        for (std::size_t h = 0; h < hasher.num_heads(); ++h)
            std::printf(" %lld", static_cast<long long>(rows[t * hasher.num_heads() + h]));
        std::printf("\n");
    }
    // Raw 17 and 517 share a canonical id, so the bigram at t = 4 (17, 517) is canonically the
    // bigram at t = 1 (517, 17): both are (17, 17) and get the same rows in the bigram heads.
    const std::size_t k = static_cast<std::size_t>(layout.heads_per_order), heads = hasher.num_heads();
    const bool same = std::equal(rows.begin() + 4 * heads, rows.begin() + 4 * heads + k, rows.begin() + 1 * heads);
    std::printf("bigram rows at t=4 equal those at t=1: %s\n", same ? "yes" : "no");
    return same ? 0 : 1;
}
