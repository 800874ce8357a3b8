// Data-parallel training over MPI: a Communicator (pipelines/train.hpp) on MPI_COMM_WORLD.
// The one header of ditto that needs MPI; ditto-train includes it when CMake finds MPI
// (Debian's libopenmpi-dev), and nothing else does.
//
//   pipelines::MpiSession mpi(argc, argv);                  // MPI_Init_thread ... MPI_Finalize
//   pipelines::train(run, {.output = "runs/x", .comm = &mpi.comm()});
//   // mpirun -np 2 ditto-train CONFIG.json -o runs/x
//
// Each rank computes its share of the global batch (global_batch_size / ranks samples, by their
// place in the global batch, so the draws are the one-process run's), the gradients are
// gathered in buckets (MPI_Allgather) and summed in a fixed tree on every rank, and rank 0
// writes the files (docs/train.md#data-parallel-training-over-mpi).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

// C only: OpenMPI's and MPICH's deprecated C++ bindings are not used (and warn under -Wextra)
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include "../core/error.hpp"
#include "train.hpp"

namespace ditto::pipelines {

class MpiSession {
 public:
  MpiSession(int& argc, char**& argv) {
    int provided = 0;
    // FUNNELED: only the main thread calls MPI (OpenMP threads compute between the calls)
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) throw Error("MPI_Init_thread failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &comm_.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &comm_.size);
    comm_.allgather = [](const float* in, std::int64_t n, float* out) {  // n is a bucket: far below 2^31
      check(MPI_Allgather(in, static_cast<int>(n), MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, MPI_COMM_WORLD));
    };
    comm_.allreduce_sum_double = [](double* p, std::int64_t n) { check(MPI_Allreduce(MPI_IN_PLACE, p, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD)); };
    comm_.broadcast = [](const std::string& s) {
      std::int64_t n = static_cast<std::int64_t>(s.size());
      check(MPI_Bcast(&n, 1, MPI_INT64_T, 0, MPI_COMM_WORLD));
      std::string out = s;
      out.resize(static_cast<std::size_t>(n));
      check(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD));
      return out;
    };
  }
  ~MpiSession() { MPI_Finalize(); }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  const Communicator& comm() const { return comm_; }
  // Ends every rank: one rank's error must not leave the others waiting in a collective.
  [[noreturn]] void abort(int code) const {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();
  }

 private:
  static void check(int rc) {
    if (rc != MPI_SUCCESS) throw Error("ditto-train: an MPI collective failed (error " + std::to_string(rc) + ")");
  }
  Communicator comm_;
};

}  // namespace ditto::pipelines
