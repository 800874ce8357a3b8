// rearrange against memcpy on 64 MB tensors, at 1 and 2 threads (docs/performance.md).
// Bytes processed count the read and the write: 2 x the tensor's size.
//
//   build/bench/bench_einops --benchmark_counters_tabular=true
#include <cstring>

#include <benchmark/benchmark.h>

#include <ditto/ditto.hpp>

using namespace ditto;

// 16M floats = 64 MB in every case.
static const Shape kImages{16, 4, 512, 512};      // b c H W, patchify with p = 2
static const Shape kVideo{4, 16, 4, 256, 256};    // b t c h w

static void set_threads(benchmark::State& state) { set_num_threads(static_cast<int>(state.range(0))); }

// The copy every data-movement kernel is measured against: memcpy split over the same threads.
static void BM_memcpy(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full(kImages, 1.0f);
  auto y = Tensor<float>::empty(kImages);
  const std::int64_t n = x.numel();
  for (auto _ : state) {
    parallel_for(n / 4096, n, [&](std::int64_t lo, std::int64_t hi) {
      std::memcpy(y.data() + lo * 4096, x.data() + lo * 4096, static_cast<std::size_t>((hi - lo) * 4096) * sizeof(float));
    });
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * 8);
}

static void BM_patchify(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full(kImages, 1.0f);
  for (auto _ : state) {
    auto y = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", 2}, {"p2", 2}});
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

// The same into a reused output: no allocation, no page faults.
static void BM_patchify_into(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full(kImages, 1.0f);
  auto y = Tensor<float>::full({16, 256 * 256, 16}, 0.0f);
  for (auto _ : state) {
    rearrange_into(y, x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", 2}, {"p2", 2}});
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

static void BM_unpatchify_into(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full({16, 256 * 256, 16}, 1.0f);
  auto y = Tensor<float>::full(kImages, 0.0f);
  for (auto _ : state) {
    rearrange_into(y, x, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", {{"h", 256}, {"p1", 2}, {"p2", 2}});
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

static void BM_video_channels_first_into(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full(kVideo, 1.0f);
  auto y = Tensor<float>::full({4, 4, 16, 256, 256}, 0.0f);
  for (auto _ : state) {
    rearrange_into(y, x, "b t c h w -> b c t h w");
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

static void BM_transpose_2d_into(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full({4096, 4096}, 1.0f);
  auto y = Tensor<float>::full({4096, 4096}, 0.0f);
  for (auto _ : state) {
    rearrange_into(y, x, "a b -> b a");
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

static void BM_unpatchify(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full({16, 256 * 256, 16}, 1.0f);
  for (auto _ : state) {
    auto y = rearrange(x, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", {{"h", 256}, {"p1", 2}, {"p2", 2}});
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

static void BM_video_channels_first(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full(kVideo, 1.0f);
  for (auto _ : state) {
    auto y = rearrange(x, "b t c h w -> b c t h w");
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

static void BM_transpose_2d(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full({4096, 4096}, 1.0f);
  for (auto _ : state) {
    auto y = rearrange(x, "a b -> b a");
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 8);
}

// A pure reshape is a view: no data moves, whatever the size.
static void BM_reshape_view(benchmark::State& state) {
  set_threads(state);
  auto x = Tensor<float>::full(kImages, 1.0f);
  for (auto _ : state) {
    auto y = rearrange(x, "b c h w -> b (c h w)");
    benchmark::DoNotOptimize(y.data());
  }
}

#define THREADS ->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_memcpy) THREADS;
BENCHMARK(BM_patchify) THREADS;
BENCHMARK(BM_patchify_into) THREADS;
BENCHMARK(BM_unpatchify_into) THREADS;
BENCHMARK(BM_video_channels_first_into) THREADS;
BENCHMARK(BM_transpose_2d_into) THREADS;
BENCHMARK(BM_unpatchify) THREADS;
BENCHMARK(BM_video_channels_first) THREADS;
BENCHMARK(BM_transpose_2d) THREADS;
BENCHMARK(BM_reshape_view)->Arg(1)->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
