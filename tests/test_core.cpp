// core/: tensor, errors, version, threads, random numbers, matrix products.
#include <array>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include <ditto/core/matmul.hpp>
#include <ditto/core/rng.hpp>
#include <ditto/core/tensor.hpp>
#include <ditto/core/threading.hpp>
#include <ditto/core/version.hpp>
#include <xtensor/xmath.hpp>

#include "helpers.hpp"

using namespace ditto;
using ditto_test::require_equal;

TEST_CASE("version macros agree with the CMake project version", "[core]") {
  CHECK(std::string(DITTO_VERSION_STRING) == DITTO_CMAKE_VERSION);
  CHECK(DITTO_VERSION == DITTO_VERSION_MAJOR * 10000 + DITTO_VERSION_MINOR * 100 + DITTO_VERSION_PATCH);
}

TEST_CASE("tensor construction and element access", "[core][tensor]") {
  Tensor<float> z({2, 3});
  CHECK(z.dim() == 2);
  CHECK(z.numel() == 6);
  CHECK(z.size(-1) == 3);
  for (float v : z) CHECK(v == 0.0f);

  Tensor<float> x({2, 2}, {1, 2, 3, 4});
  CHECK(x(1, 0) == 3.0f);
  CHECK(x.at({0, 1}) == 2.0f);
  CHECK_THROWS_AS(x.at({2, 0}), ShapeError);
  CHECK_THROWS_AS(x.at({0}), ShapeError);
  CHECK_THROWS_AS(x.size(2), ShapeError);
  CHECK_THROWS_WITH((Tensor<float>({2, 2}, {1, 2, 3})), Catch::Contains("expected 4 values, got 3"));
  CHECK_THROWS_WITH(Tensor<float>({2, -1}), Catch::Contains("negative length"));
  // A hostile shape must not wrap around to a small allocation.
  CHECK_THROWS_WITH(Tensor<float>::empty({1 << 30, 1 << 30, 1 << 30}), Catch::Contains("more elements than fit"));

  Tensor<double> s = Tensor<double>::full({}, 2.5);  // rank 0
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s[0] == 2.5);
  CHECK(Tensor<int>::arange(4)[3] == 3);
}

TEST_CASE("a tensor larger than memory is a MemoryError that says how large", "[core][tensor]") {
  // 2^50 floats (4 PB): within size_t, beyond any machine. (The sanitizer run sets
  // allocator_may_return_null=1 so that ASan returns null as the allocator does without it.)
  CHECK_THROWS_AS(Tensor<float>::empty({1 << 20, 1 << 20, 1 << 10}), MemoryError);
  CHECK_THROWS_WITH(Tensor<float>::empty({1 << 20, 1 << 20, 1 << 10}), Catch::Contains("cannot allocate a tensor of 1125899906842624 elements"));
}

TEST_CASE("reshape is a view / clone is a copy", "[core][tensor]") {
  auto x = Tensor<float>::arange(12);
  auto v = x.reshape({3, -1});
  CHECK(v.shape() == Shape{3, 4});
  CHECK(v.shares_storage_with(x));
  v(1, 1) = 100.0f;
  CHECK(x[5] == 100.0f);
  auto c = x.clone();
  c[5] = 0.0f;
  CHECK(x[5] == 100.0f);
  CHECK_FALSE(c.shares_storage_with(x));
  CHECK_THROWS_WITH(x.reshape({5, -1}), Catch::Contains("cannot be split"));
  CHECK_THROWS_WITH(x.reshape({5, 2}), Catch::Contains("expected 10 elements"));
  CHECK_THROWS_WITH(x.reshape({-1, -1}), Catch::Contains("only one length can be -1"));
  auto d = x.to<double>();
  CHECK(d[5] == 100.0);
}

TEST_CASE("tensors interoperate with xtensor expressions", "[core][tensor]") {
  Tensor<float> x({2, 3}, {0, 1, 2, 3, 4, 5});
  auto y = Tensor<float>::from_xt(2.0f * x.xt() + 1.0f);
  require_equal(y, Tensor<float>({2, 3}, {1, 3, 5, 7, 9, 11}));
  x.xt() *= 2.0f;  // writes through
  CHECK(x[5] == 10.0f);
  CHECK(x.xt().shape()[1] == 3u);
}

TEST_CASE("tensors print like PyTorch", "[core][tensor]") {
  std::ostringstream os;
  os << Tensor<float>({2, 2}, {0, 1.5f, 2, 3});
  CHECK(os.str() == "tensor([[0., 1.5],\n        [2., 3.]], shape=[2,2])");
  std::ostringstream big;
  big << Tensor<float>::arange(10);
  CHECK(big.str() == "tensor([0., 1., 2., ..., 7., 8., 9.], shape=[10])");
}

TEST_CASE("thread count and parallel_for", "[core][threads]") {
  CHECK_THROWS_AS(set_num_threads(0), ArgumentError);
  const int before = get_num_threads();
  set_num_threads(2);
  CHECK(get_num_threads() == (has_openmp() ? 2 : 1));
  // Every index is visited exactly once, whatever the split.
  std::vector<int> hits(100000, 0);
  parallel_for(static_cast<std::int64_t>(hits.size()), 1 << 20, [&](std::int64_t lo, std::int64_t hi) {
    for (auto i = lo; i < hi; ++i) hits[static_cast<std::size_t>(i)] += 1;
  });
  CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  set_num_threads(before);
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors", "[core][rng]") {
  // From Random123's kat_vectors: philox4x32 10 rounds.
  auto r0 = detail::philox4x32_10({0, 0, 0, 0}, 0);
  CHECK(r0 == std::array<std::uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  auto r1 = detail::philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffffffffffull);
  CHECK(r1 == std::array<std::uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  auto r2 = detail::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                  (std::uint64_t{0x299f31d0u} << 32) | 0xa4093822u);
  CHECK(r2 == std::array<std::uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("random draws are reproducible and independent of the thread count", "[core][rng]") {
  const int before = get_num_threads();
  set_num_threads(1);
  Generator g1(1234);
  auto a = g1.normal<float>({1000, 1000});
  auto a2 = g1.normal<float>({7});
  set_num_threads(4);
  Generator g2(1234);
  auto b = g2.normal<float>({1000, 1000});
  auto b2 = g2.normal<float>({7});
  set_num_threads(before);
  require_equal(a, b);
  require_equal(a2, b2);
  // A second draw continues the stream instead of repeating it.
  Generator g3(1234);
  auto c = g3.normal<float>({7});
  CHECK(c[0] == a[0]);
  CHECK(a2[0] != a[0]);
  // Another seed, another stream.
  CHECK(Generator(1235).normal<float>({1})[0] != a[0]);

  // Moments of 10^6 standard normals: mean 0 (sd 1e-3), variance 1 (sd ~1.4e-3), 4th moment 3.
  double m1 = 0, m2 = 0, m4 = 0;
  for (float v : a) {
    m1 += v;
    m2 += double(v) * v;
    m4 += double(v) * v * v * v;
  }
  const double n = static_cast<double>(a.numel());
  CHECK(std::abs(m1 / n) < 5e-3);
  CHECK(std::abs(m2 / n - 1.0) < 7e-3);
  CHECK(std::abs(m4 / n - 3.0) < 0.05);

  auto u = Generator(7).uniform<double>({200000}, -1.0, 3.0);
  double lo = 10, hi = -10, mean = 0;
  for (double v : u) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    mean += v;
  }
  CHECK(lo >= -1.0);
  CHECK(hi < 3.0);
  CHECK(std::abs(mean / 200000 - 1.0) < 0.02);
  CHECK_THROWS_AS(Generator(7).uniform<float>({2}, 1.0, 0.0), ArgumentError);
}

// Plain triple loop: the reference the Eigen path is checked against.
template <class T>
static Tensor<T> naive_matmul(const Tensor<T>& a, const Tensor<T>& b) {
  const auto M = a.size(0), K = a.size(1), N = b.size(1);
  Tensor<T> c({M, N});
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) {
      long double s = 0;
      for (std::int64_t k = 0; k < K; ++k) s += static_cast<long double>(a(i, k)) * b(k, j);
      c(i, j) = static_cast<T>(s);
    }
  return c;
}

TEST_CASE("matrix products go to OpenBLAS only where its kernels are modern", "[core][matmul]") {
  // OpenBLAS falls back to old cores on CPUs newer than its build (Prescott on a 2024 Xeon):
  // those have no AVX2 / FMA kernels, and an FMA-vectorized Eigen is then the faster product.
  for (const char* old : {"Prescott", "Core2", "Penryn", "Nehalem", "Atom", "Sandybridge", "Barcelona", "Generic", ""})
    CHECK(detail::openblas_core_lacks_fma(old));
  for (const char* modern : {"Haswell", "SkylakeX", "Cooperlake", "SapphireRapids", "Zen", "Excavator", "Cortex-A57"})
    CHECK_FALSE(detail::openblas_core_lacks_fma(modern));
  // DITTO_GEMM chooses by hand (ctest runs this executable once more with DITTO_GEMM=eigen).
  const char* env = std::getenv("DITTO_GEMM");
  const std::string forced = env ? env : "";
  INFO("gemm_backend(): " << gemm_backend());
  if (forced == "eigen") CHECK(gemm_backend().rfind("Eigen (DITTO_GEMM=eigen", 0) == 0);
#if defined(DITTO_USE_CBLAS)
  if (forced == "openblas") CHECK(gemm_backend().rfind("OpenBLAS", 0) == 0);
#if defined(__AVX2__) && defined(__FMA__)
  const bool eigen_instead = detail::openblas_core_lacks_fma(openblas_get_corename());
#else
  const bool eigen_instead = false;  // an unvectorized Eigen is no better than an old OpenBLAS core
#endif
  if (forced.empty()) CHECK(detail::gemm_choice().openblas == !eigen_instead);
#else
  CHECK(gemm_backend().rfind("Eigen", 0) == 0);
#endif
}

TEST_CASE("matmul and gemm against a triple loop", "[core][matmul]") {
  Generator g(3);
  auto a = g.normal<double>({37, 53});
  auto b = g.normal<double>({53, 29});
  CHECK_CLOSE(matmul(a, b), naive_matmul(a, b), 1e-13);
  auto af = a.to<float>(), bf = b.to<float>();
  CHECK_CLOSE(matmul(af, bf), naive_matmul(a, b), 1e-5);

  // Transposed operands: C = A^T B^T with A stored (K, M) and B stored (N, K).
  auto at = g.normal<double>({53, 37});
  auto bt = g.normal<double>({29, 53});
  Tensor<double> c({37, 29});
  gemm<double>(true, true, 37, 29, 53, 1.0, at.data(), 37, bt.data(), 53, 0.0, c.data(), 29);
  Tensor<double> at_t({37, 53}), bt_t({53, 29});
  for (int i = 0; i < 37; ++i)
    for (int k = 0; k < 53; ++k) at_t(i, k) = at(k, i);
  for (int k = 0; k < 53; ++k)
    for (int j = 0; j < 29; ++j) bt_t(k, j) = bt(j, k);
  CHECK_CLOSE(c, naive_matmul(at_t, bt_t), 1e-13);

  // Batched, with a shared right operand.
  auto xb = g.normal<double>({5, 7, 11});
  auto w = g.normal<double>({11, 3});
  auto yb = matmul(xb, w);
  REQUIRE(yb.shape() == Shape{5, 7, 3});
  for (int i = 0; i < 5; ++i) {
    auto xi = Tensor<double>({7, 11}, std::vector<double>(xb.data() + i * 77, xb.data() + (i + 1) * 77));
    auto yi = Tensor<double>({7, 3}, std::vector<double>(yb.data() + i * 21, yb.data() + (i + 1) * 21));
    CHECK_CLOSE(yi, naive_matmul(xi, w), 1e-13);
  }
  CHECK_THROWS_WITH(matmul(a, a), Catch::Contains("inner lengths differ"));
  CHECK_THROWS_WITH(matmul(Tensor<double>({2, 3, 4}), Tensor<double>({3, 4, 5})), Catch::Contains("batch axes differ"));
}
