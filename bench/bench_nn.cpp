// Blocks against the machine's best and against PyTorch (bench/nn_torch.py measures the same
// shapes): Linear at DiT shapes next to raw OpenBLAS SGEMM, element-wise kernels in GB/s,
// attention at 1k-8k tokens, Conv2d 3x3 at U-Net / VAE shapes. docs/performance.md has the table.
//
//   build/bench/bench_nn --benchmark_filter=Linear
#include <benchmark/benchmark.h>

#include <ditto/ditto.hpp>

#if defined(DITTO_USE_CBLAS)
#include <cblas.h>
#endif

using namespace ditto;

static void set_threads(benchmark::State& state, int arg) { set_num_threads(static_cast<int>(state.range(arg))); }

// Linear(in -> out) on `tokens` rows. Args: tokens, in, out, threads.
static void BM_Linear(benchmark::State& state) {
  set_threads(state, 3);
  const std::int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  nn::Linear<float> lin(K, N);
  Generator g(0);
  lin.weight = g.normal<float>({N, K});
  auto x = g.normal<float>({M, K});
  Tensor<float> y({M, N});
  for (auto _ : state) {
    lin.forward_into(x.data(), y.data(), M);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}

#if defined(DITTO_USE_CBLAS)
// The fastest SGEMM on this machine: OpenBLAS called directly, no bias.
static void BM_OpenBLAS_sgemm(benchmark::State& state) {
  set_threads(state, 3);
  const std::int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  Generator g(0);
  auto w = g.normal<float>({N, K});
  auto x = g.normal<float>({M, K});
  Tensor<float> y({M, N});
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                1.f, x.data(), static_cast<int>(K), w.data(), static_cast<int>(K), 0.f, y.data(), static_cast<int>(N));
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}
#endif

static void linear_args(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (int tokens : {256, 1024})
      for (auto [in, out] : {std::pair{1152, 3456}, std::pair{1152, 4608}, std::pair{4608, 1152}})
        b->Args({tokens, in, out, threads});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// Element-wise kernels over 16M floats (64 MB in, 64 MB out). Arg: threads.
static constexpr std::int64_t kRows = 4096, kCols = 4096;
template <int Kind>
static void BM_Elementwise(benchmark::State& state) {
  set_threads(state, 0);
  Generator g(1);
  auto x = g.normal<float>({kRows, kCols});
  nn::LayerNorm<float> ln(kCols);
  Tensor<float> y = Tensor<float>::empty({kRows, kCols});
  for (auto _ : state) {
    if constexpr (Kind == 0) {
      nn::activate(x.data(), y.data(), x.numel(), nn::Activation::gelu_tanh);
    } else if constexpr (Kind == 1) {
      nn::activate(x.data(), y.data(), x.numel(), nn::Activation::gelu);
    } else if constexpr (Kind == 2) {
      nn::activate(x.data(), y.data(), x.numel(), nn::Activation::silu);
    } else if constexpr (Kind == 3) {
      ln.forward_into(x.data(), y.data(), kRows);
    } else {
      y = nn::softmax(x);
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * 8);
}

// Attention, 16 heads of 64, batch 1. Args: tokens, threads.
static void BM_Attention(benchmark::State& state) {
  set_threads(state, 1);
  const std::int64_t N = state.range(0);
  Generator g(2);
  auto q = g.normal<float>({1, 16, N, 64}), k = g.normal<float>({1, 16, N, 64}), v = g.normal<float>({1, 16, N, 64});
  for (auto _ : state) benchmark::DoNotOptimize(nn::scaled_dot_product_attention(q, k, v).data());
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * 16 * N * N * 64, benchmark::Counter::kIsIterationInvariantRate);
}

// Conv2d 3x3, padding 1, batch 1. Args: channels, size, threads.
static void BM_Conv3x3(benchmark::State& state) {
  set_threads(state, 2);
  const std::int64_t C = state.range(0), S = state.range(1);
  nn::Conv2d<float> conv(C, C, 3, 1, 1);
  Generator g(3);
  conv.weight = g.normal<float>(conv.weight.shape(), 0.0, 0.05);
  auto x = g.normal<float>({1, C, S, S});
  for (auto _ : state) benchmark::DoNotOptimize(conv.forward(x).data());
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * C * C * 9 * S * S, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_Linear)->Apply(linear_args);
#if defined(DITTO_USE_CBLAS)
BENCHMARK(BM_OpenBLAS_sgemm)->Apply(linear_args);
#endif
BENCHMARK_TEMPLATE(BM_Elementwise, 0)->Name("BM_GELU_tanh")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Elementwise, 1)->Name("BM_GELU")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Elementwise, 2)->Name("BM_SiLU")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Elementwise, 3)->Name("BM_LayerNorm")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Elementwise, 4)->Name("BM_Softmax")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Attention)->Args({1024, 1})->Args({1024, 2})->Args({4096, 2})->Args({8192, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Conv3x3)->Args({128, 64, 1})->Args({128, 64, 2})->Args({128, 256, 1})->Args({128, 256, 2})->Args({256, 128, 1})->Args({256, 128, 2})->Args({512, 64, 1})->Args({512, 64, 2})->Args({512, 32, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
