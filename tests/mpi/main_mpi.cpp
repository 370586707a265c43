// The MPI tests' main: MPI for the whole run, then Catch2. Every rank runs every test case in
// the same order (the cases are collective); each rank's failures are its own, and mpirun's exit
// status is non-zero if any rank failed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <engram/dist/mpi.hpp>

int main(int argc, char** argv) {
    engram::dist::mpi_session mpi(&argc, &argv);
    return Catch::Session().run(argc, argv);
}
