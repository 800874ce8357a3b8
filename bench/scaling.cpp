// Thread scaling of the hot blocks: one line per (block, thread count), the ditto column of the
// scaling table in docs/performance.md (bench/scaling_torch.py measures the same shapes on
// PyTorch; bench/run_scaling.sh runs both).
//
//   scaling THREADS [THREADS ...]        e.g. scaling 1 2 4 8 16
//
// Blocks: Linear at a DiT-XL shape, attention (16 heads of 64) at 4096 tokens, 3x3
// convolutions at U-Net / autoencoder shapes (batch 1), and GELU-tanh and LayerNorm over 64 MB.
// Each figure is the median of at least 5 calls and 0.5 s after a warm-up call.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

static double median_s(const std::function<void()>& f) {
  f();
  std::vector<double> s;
  double total = 0;
  while (s.size() < 5 || total < 0.5) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    total += s.back();
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

static void report(const char* name, int threads, double seconds, double work, const char* unit) {
  std::printf("%-34s threads=%-3d %9.2f ms %8.1f %s\n", name, threads, seconds * 1e3, work / seconds / 1e9, unit);
  std::fflush(stdout);
}

int main(int argc, char** argv) try {
  std::vector<int> thread_counts;
  for (int i = 1; i < argc; ++i) thread_counts.push_back(std::atoi(argv[i]));
  if (thread_counts.empty() || *std::min_element(thread_counts.begin(), thread_counts.end()) < 1) {
    std::fprintf(stderr, "usage: %s THREADS [THREADS ...]\n", argv[0]);
    return 2;
  }
  std::printf("matrix products: %s\n", gemm_backend().c_str());
  Generator g(0);
  // Linear 1024 x 1152 -> 4608 (DiT-XL's fc1 over 4 images of 256 tokens)
  nn::Linear<float> lin(1152, 4608);
  lin.weight = g.normal<float>({4608, 1152}, 0.0, 0.03);
  const auto xl = g.normal<float>({1024, 1152});
  Tensor<float> yl({1024, 4608});
  // attention at 4096 tokens
  const auto q = g.normal<float>({1, 16, 4096, 64}), k = g.normal<float>({1, 16, 4096, 64}), v = g.normal<float>({1, 16, 4096, 64});
  // 3x3 convolutions
  struct ConvCase {
    std::int64_t c, s;
  };
  const std::vector<ConvCase> convs = {{128, 64}, {128, 256}, {256, 128}, {512, 64}};
  // element-wise, 64 MB in and 64 MB out
  const auto xe = g.normal<float>({4096, 4096});
  Tensor<float> ye = Tensor<float>::empty({4096, 4096});
  nn::LayerNorm<float> ln(4096);

  for (int t : thread_counts) {
    set_num_threads(t);
    report("Linear 1024x1152->4608", t, median_s([&] { lin.forward_into(xl.data(), yl.data(), 1024); }), 2.0 * 1024 * 1152 * 4608,
           "GFLOP/s");
    report("attention 4096 tokens, 16x64", t, median_s([&] { (void)nn::scaled_dot_product_attention(q, k, v); }),
           4.0 * 16 * 4096.0 * 4096 * 64, "GFLOP/s");
    for (const auto& [c, s] : convs) {
      nn::Conv2d<float> conv(c, c, 3, 1, 1);
      conv.weight = g.normal<float>(conv.weight.shape(), 0.0, 0.05);
      const auto x = g.normal<float>({1, c, s, s});
      const std::string name = "Conv2d 3x3 " + std::to_string(c) + " at " + std::to_string(s) + "x" + std::to_string(s);
      report(name.c_str(), t, median_s([&] { (void)conv.forward(x); }), 2.0 * c * c * 9 * s * s, "GFLOP/s");
    }
    report("GELU tanh (64 MB)", t, median_s([&] { nn::activate(xe.data(), ye.data(), xe.numel(), nn::Activation::gelu_tanh); }),
           8.0 * xe.numel(), "GB/s");
    report("LayerNorm (64 MB)", t, median_s([&] { ln.forward_into(xe.data(), ye.data(), 4096); }), 8.0 * xe.numel(), "GB/s");
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
