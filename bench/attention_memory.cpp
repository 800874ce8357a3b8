// Attention at long sequence lengths: time and peak resident memory of one call, 16 heads of
// 64, batch 1. The naive softmax(q k^T) v needs 16 * N^2 * 4 bytes for the scores alone
// (16 GiB at 16k tokens, 64 GiB at 32k); ditto's blocked kernel needs O(N).
//
//   build/bench/attention_memory 16384 2
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ditto/ditto.hpp>

int main(int argc, char** argv) try {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s TOKENS THREADS\n", argv[0]);
    return 2;
  }
  const long n = std::stol(argv[1]);
  const int threads = std::stoi(argv[2]);
  if (n < 1 || threads < 1) throw ditto::ArgumentError("attention_memory: TOKENS and THREADS must be positive");
  ditto::set_num_threads(threads);
  ditto::Generator g(0);
  auto q = g.normal<float>({1, 16, n, 64}), k = g.normal<float>({1, 16, n, 64}), v = g.normal<float>({1, 16, n, 64});
  const auto t0 = std::chrono::steady_clock::now();
  auto o = ditto::nn::scaled_dot_product_attention(q, k, v);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double inputs_mib = 4.0 * 16 * n * 64 * 4 / (1 << 20);  // q, k, v, out
  std::printf("tokens %ld threads %d: %.2f s, %.1f GFLOP/s, peak RSS %.0f MiB (q, k, v and output: %.0f MiB; naive scores: %.0f MiB)\n",
              n, threads, secs, 4.0 * 16 * n * n * 64 / secs / 1e9, ru.ru_maxrss / 1024.0, inputs_mib,
              16.0 * n * n * 4 / (1 << 20));
  return o.numel() > 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "attention_memory: %s\n", e.what());
  return 1;
}
