// batch_prep: how long ditto-train takes to prepare a batch, next to how long a training step
// takes, to decide whether a background thread preparing the next batch could pay
// (docs/data.md#a-background-thread-for-the-next-batch). Prints the median of 20 runs of:
// a batch of 128 Fashion-MNIST pictures (every other one flipped, mapped to [-1, 1]) and batches of
// 16 and 64 moving Fashion-MNIST clips (made on demand from their seed).
//
//   build/bench/batch_prep
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

template <class F>
static double median_ms(F&& f) {
  std::vector<double> t;
  for (int r = 0; r < 20; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f(r);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() try {
  const auto train = pipelines::as_pictures(data::load_fashion_mnist("train"));
  data::ShuffledBatches order(train.size(), 128, 0);
  const double pictures = median_ms([&](int) {
    const auto idx = order.next();
    std::vector<bool> flips;
    for (std::size_t i = 0; i < idx.size(); ++i) flips.push_back(i % 2 == 0);
    (void)data::picture_batch(train, idx, flips, -1.0f, 1.0f);
  });
  const data::MovingFashionMnist clips(data::load_fashion_mnist("train"), {}, 0, 60000);
  auto clip_batch = [&](std::int64_t B) {
    return median_ms([&](int r) {
      std::vector<std::int64_t> idx;
      for (std::int64_t i = 0; i < B; ++i) idx.push_back((r * B + i) * 7919 % 60000);
      (void)clips.batch(idx, -1.0f, 1.0f);
    });
  };
  std::printf("| batch | preparation (median of 20) |\n|---|---|\n");
  std::printf("| 128 Fashion-MNIST pictures, flipped, in [-1, 1] | %.3f ms |\n", pictures);
  std::printf("| 16 moving Fashion-MNIST clips (8 x 32 x 32) | %.3f ms |\n", clip_batch(16));
  std::printf("| 64 moving Fashion-MNIST clips | %.3f ms |\n", clip_batch(64));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
