// DiT forward time and peak memory: the ditto column of the DiT table in docs/performance.md.
//
//   dit_forward MODEL BATCH THREADS [REPS]      e.g. dit_forward DiT-XL/2 1 2
//
// Random weights (the speed does not depend on their values), 256x256 images' latents
// (4 x 32 x 32), labels and timesteps. Prints the median time of REPS forwards after one warm-up,
// the matrix-product FLOP/s it amounts to, and the peak resident memory next to the weights' size.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

// Multiply-adds x 2 of every matrix product in one forward (attention included).
static double dit_flops(const models::DiTConfig& c, std::int64_t B) {
  const double N = static_cast<double>(c.grid() * c.grid()), D = static_cast<double>(c.hidden_size);
  const double H = static_cast<double>(c.mlp_hidden()), P = static_cast<double>(c.patch_size * c.patch_size);
  // per block: qkv, q k^T, p v, proj, fc1 + fc2, adaLN_modulation (one row per image)
  const double block = 2 * N * D * 3 * D + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * H + 2 * D * 6 * D;
  const double per_image = c.depth * block + 2 * N * D * P * c.in_channels + 2 * N * D * P * c.out_channels() +
                           2 * (256 * D + D * D) + 2 * D * 2 * D;
  return per_image * static_cast<double>(B);
}

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL BATCH THREADS [REPS]   (e.g. DiT-XL/2 1 2)\n", argv[0]);
    return 2;
  }
  const std::string name = argv[1];
  const std::int64_t B = std::atoll(argv[2]);
  const int threads = std::atoi(argv[3]), reps = argc > 4 ? std::atoi(argv[4]) : 5;
  if (B < 1 || threads < 1 || reps < 1) throw ArgumentError("dit_forward: BATCH, THREADS and REPS must be >= 1");
  set_num_threads(threads);
  const models::DiTConfig c = models::dit_config(name);
  models::DiT<float> dit(c);
  Generator gen(0);
  for (auto& [n, t] : nn::named_parameters<float>(dit))
    if (n != "pos_embed") gen.fill_normal(*t, 0.0, 0.02);
  const double weight_mb = static_cast<double>(nn::count_parameters<float>(dit)) * 4 / (1 << 20);
  const auto x = gen.normal<float>({B, c.in_channels, c.input_size, c.input_size});
  Tensor<float> t({B});
  Tensor<std::int64_t> y({B});
  for (std::int64_t b = 0; b < B; ++b) t[b] = static_cast<float>(999 - 100 * b), y[b] = 7 * b;
  dit.forward(x, t, y);  // warm-up: buffers, OpenBLAS threads
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = dit.forward(x, t, y);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("%-9s B=%lld threads=%d  %9.1f ms  %6.1f GFLOP/s  peak RSS %6.0f MB (weights %5.0f MB)\n", name.c_str(),
              static_cast<long long>(B), threads, med, dit_flops(c, B) / med / 1e6, ru.ru_maxrss / 1024.0, weight_mb);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
