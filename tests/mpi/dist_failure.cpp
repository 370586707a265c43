// Failures that only one rank sees, run under mpirun by expect_failure.sh:
//   killed_rank     rank 1 is killed (SIGKILL) between exchanges, while the others are inside
//                   one: the job must end with an error, not hang.
//   one_rank_fails  rank 1 throws outside any collective (a local error); like `engram forward`
//                   it reports the error on one line and calls MPI_Abort, ending every rank.
#include <engram/dist/table.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    engram::dist::mpi_session mpi(&argc, &argv);
    const std::string mode = argc > 1 ? argv[1] : "";
    engram::dist::communicator world(MPI_COMM_WORLD);
    try {
        using table_type = engram::dist::mpi_storage<engram::dense_storage>::table<float>;
        const table_type table(MPI_COMM_WORLD, 1000, 16);
        std::vector<engram::row_id> ids;
        for (int i = 0; i < 64; ++i) ids.push_back((i * 37 + world.rank() * 11) % 1000);
        std::vector<float> out(ids.size() * 16);
        for (int step = 0;; ++step) {
            if (step == 3 && world.rank() == 1) {
                if (mode == "killed_rank") std::raise(SIGKILL);
                if (mode == "one_rank_fails") throw engram::io_error("rank 1 could not read its input (simulated)");
            }
            table.gather(std::span<const engram::row_id>(ids), std::span<float>(out));
            if (step > 1000) break; // never reached when a rank fails
        }
        std::fprintf(stderr, "dist_failure: the failure of rank 1 was not noticed\n");
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "dist_failure: error: rank %d: %s\n", world.rank(), e.what());
        world.abort(3);
    }
}
