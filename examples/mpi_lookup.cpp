// Rows over MPI ranks: each rank holds a share of one layer's table, hashes its own tokens, and
// fetches the rows it needs from their owners (distinct ids out, encoded bf16 rows back). The
// memory vectors equal a dense table's on every rank. Run: mpirun -np 4 example_mpi_lookup
#include <engram/dist/table.hpp>
#include <engram/engram.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
    engram::dist::mpi_session mpi(&argc, &argv);
    const engram::dist::communicator world(MPI_COMM_WORLD);

    // One layer's layout (orders 2 and 3, 4 heads each, d = 8) over an identity vocabulary of 500.
    engram::hash_config cfg;
    cfg.table_size_per_ngram = {2000, 2000};
    cfg.heads_per_ngram = 4;
    cfg.embed_per_ngram = 32;
    const auto layout = engram::make_layout(cfg, 1, 500, 0);
    engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>> hasher(layout);

    // The distributed table, split by head: each rank stores only the rows it owns (collective).
    using storage = engram::dist::mpi_storage<engram::dense_storage, engram::dist::split::heads>;
    storage::table<engram::bfloat16> table(MPI_COMM_WORLD, layout);
    engram::dense_storage::table<engram::bfloat16> whole(table.rows(), table.dim()); // to check against
    std::vector<float> row(table.dim());
    for (std::size_t r = 0; r < table.rows(); ++r) {
        for (std::size_t j = 0; j < row.size(); ++j)
            row[j] = static_cast<float>(r % 97) + 0.125f * static_cast<float>(j);
        table.set_row(r, row); // stored only where owned
        whole.set_row(r, row);
    }

    // Each rank's own tokens [B = 1, T = 64]: row ids, then one exchange (collective).
    std::vector<engram::token_id> tokens(64);
    for (std::size_t t = 0; t < tokens.size(); ++t)
        tokens[t] = static_cast<engram::token_id>((t * 7 + static_cast<std::size_t>(world.rank()) * 13) % 50);
    std::vector<engram::row_id> ids(tokens.size() * hasher.num_heads());
    hasher.rows(tokens, 1, tokens.size(), ids);
    std::vector<float> memory(ids.size() * table.dim()), expected(memory.size());
    table.gather(std::span<const engram::row_id>(ids), std::span<float>(memory));
    whole.gather(std::span<const engram::row_id>(ids), std::span<float>(expected));

    const bool same = memory == expected;
    const auto& st = table.stats();
    std::printf("rank %d of %d: owns rows [%zu, %zu); %llu lookups, %llu distinct rows, %llu asked of other ranks, "
                "%llu bytes sent; memory vectors %s a dense table's\n",
                world.rank(), world.size(), table.first_owned(), table.first_owned() + table.owned_rows(),
                static_cast<unsigned long long>(st.positions), static_cast<unsigned long long>(st.unique_rows),
                static_cast<unsigned long long>(st.remote_rows), static_cast<unsigned long long>(st.bytes_sent),
                same ? "equal" : "DIFFER from");
    return world.sum(same ? 0 : 1) == 0 ? 0 : 1;
}
