// The machine's peak float32 FLOP/s, measured: each thread runs independent chains of SIMD
// fused multiply-adds (xsimd, the widest the build targets) that never touch memory. The
// denominator of the "fraction of peak" columns in docs/performance.md.
//
//   peak_flops THREADS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <xsimd/xsimd.hpp>

#include <ditto/core/threading.hpp>

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (threads < 1) {
    std::fprintf(stderr, "usage: %s THREADS\n", argv[0]);
    return 2;
  }
  ditto::set_num_threads(threads);
  using B = xsimd::batch<float>;
  constexpr int chains = 16;  // enough independent FMAs to cover latency x ports
  const long iters = 20'000'000;
  std::vector<float> sink(static_cast<std::size_t>(threads), 0.f);
  const auto t0 = std::chrono::steady_clock::now();
  ditto::parallel_for(threads, 1L << 40, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t th = lo; th < hi; ++th) {
      B acc[chains];
      for (int c = 0; c < chains; ++c) acc[c] = B(1.0f + 1e-7f * static_cast<float>(c));
      const B a(0.999999f), b(1e-7f);
      for (long i = 0; i < iters; ++i)
        for (int c = 0; c < chains; ++c) acc[c] = xsimd::fma(acc[c], a, b);
      B s(0.f);
      for (int c = 0; c < chains; ++c) s += acc[c];
      sink[static_cast<std::size_t>(th)] = xsimd::hadd(s);
    }
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flops = 2.0 * B::size * chains * static_cast<double>(iters) * threads;
  std::printf("peak float32: %.1f GFLOP/s on %d threads (%zu-wide FMA; checksum %g)\n", flops / secs / 1e9, threads, B::size,
              static_cast<double>(sink[0]));
  return 0;
}
