// Threads. ditto parallelizes with OpenMP when the compiler has it (-fopenmp) and runs the same
// code serially when it does not (interpreters such as clang-repl load the headers without it).
// Every `#pragma omp` in ditto lives inside a function of a header like this one.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(DITTO_USE_CBLAS)
extern "C" void openblas_set_num_threads(int);
#endif

namespace ditto {

namespace detail {
// 0 = not set by the user: use what OpenMP would use (OMP_NUM_THREADS or the core count).
// An inline variable has one instance per program, also when headers are included twice.
inline std::atomic<int> g_num_threads{0};
}  // namespace detail

namespace detail {
// True inside an OpenMP parallel region with more than one thread.
inline bool in_parallel_region() {
#if defined(_OPENMP)
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}
}  // namespace detail

// True when this translation unit was compiled with OpenMP.
inline constexpr bool has_openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

// Sets the number of threads ditto's kernels use (like torch.set_num_threads). n >= 1.
inline void set_num_threads(int n) {
  if (n < 1) throw ArgumentError(detail::cat("set_num_threads(", n, "): expected a thread count >= 1"));
  detail::g_num_threads = n;
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
#if defined(DITTO_USE_CBLAS)
  openblas_set_num_threads(n);
#endif
}

// The number of threads a parallel region will use; 1 without OpenMP.
inline int get_num_threads() {
#if defined(_OPENMP)
  int n = detail::g_num_threads.load();
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

// Runs f(begin_i, end_i) over [0, n) split into contiguous chunks, one per thread, in parallel
// when the work is large enough to pay for waking threads (`cost` = n * work per item, in rough
// "element operations"; below ~32k the region overhead dominates). f must be safe to call
// concurrently on disjoint ranges. Chunks are static, so a chunk's range depends only on n and
// the thread count.
template <class F>
inline void parallel_for(std::int64_t n, std::int64_t cost, F&& f) {
  if (n <= 0) return;
  int threads = get_num_threads();
  if (threads <= 1 || n == 1 || cost < (1 << 15)) {
    f(std::int64_t{0}, n);
    return;
  }
  threads = static_cast<int>(std::min<std::int64_t>(threads, n));
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    if (lo < hi) f(lo, hi);
  }
#else
  f(std::int64_t{0}, n);
#endif
}

}  // namespace ditto
