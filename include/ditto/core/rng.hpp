// Seeded random numbers that do not depend on the thread count.
//
//   ditto::Generator gen(42);
//   auto noise = gen.normal<float>({4, 3, 32, 32});   // N(0, 1)
//   auto u = gen.uniform<float>({10}, -1.0, 1.0);     // U[-1, 1)
//
// Why counter-based (Philox4x32-10, Salmon et al. 2011, the generator PyTorch uses on GPUs):
// element k of a draw is a pure function of (seed, counter + k/2), so any thread can produce any
// element without stepping a shared state. Filling in parallel therefore gives bit-identical
// tensors for 1, 2 or 16 threads, and two draws from one generator never overlap (each draw
// advances the counter past the values it used).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "tensor.hpp"
#include "threading.hpp"

namespace ditto {

namespace detail {
// Philox4x32 with 10 rounds: four 32-bit outputs per 128-bit counter under a 64-bit key.
inline std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> ctr, std::uint64_t key64) noexcept {
  constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  std::uint32_t k0 = static_cast<std::uint32_t>(key64), k1 = static_cast<std::uint32_t>(key64 >> 32);
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t{M0} * ctr[0], p1 = std::uint64_t{M1} * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ k0, static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ k1, static_cast<std::uint32_t>(p0)};
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

// Two doubles in [0, 1) with 53 random bits each, from counter c.
inline std::array<double, 2> philox_uniform2(std::uint64_t seed, std::uint64_t c) noexcept {
  auto r = philox4x32_10({static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(c >> 32), 0u, 0u}, seed);
  constexpr double inv53 = 1.0 / 9007199254740992.0;  // 2^-53
  const std::uint64_t a = ((std::uint64_t{r[0]} << 32) | r[1]) >> 11;
  const std::uint64_t b = ((std::uint64_t{r[2]} << 32) | r[3]) >> 11;
  return {static_cast<double>(a) * inv53, static_cast<double>(b) * inv53};
}
}  // namespace detail

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) : seed_(seed) {}
  // A generator resumed where another stood (a checkpoint's seed() and offset()).
  Generator(std::uint64_t seed, std::uint64_t offset) : seed_(seed), offset_(offset) {}

  std::uint64_t seed() const noexcept { return seed_; }
  // How many counters earlier draws used; a draw of n values advances it by ceil(n / 2).
  std::uint64_t offset() const noexcept { return offset_; }

  // Standard normal draws (Box-Muller on two 53-bit uniforms), scaled: mean + std * N(0, 1).
  template <class T = float>
  Tensor<T> normal(Shape shape, double mean = 0.0, double std = 1.0) {
    Tensor<T> t = Tensor<T>::empty(std::move(shape));
    fill_normal(t, mean, std);
    return t;
  }
  template <class T>
  void fill_normal(Tensor<T>& t, double mean = 0.0, double std = 1.0) {
    fill(t, [mean, std](std::array<double, 2> u, int k) {
      constexpr double two_pi = 6.283185307179586476925286766559;
      const double radius = std::sqrt(-2.0 * std::log(1.0 - u[0]));  // 1 - u in (0, 1]: log is finite
      const double angle = two_pi * u[1];
      return mean + std * radius * (k == 0 ? std::cos(angle) : std::sin(angle));
    });
  }

  // Uniform draws in [low, high).
  template <class T = float>
  Tensor<T> uniform(Shape shape, double low = 0.0, double high = 1.0) {
    Tensor<T> t = Tensor<T>::empty(std::move(shape));
    fill_uniform(t, low, high);
    return t;
  }
  template <class T>
  void fill_uniform(Tensor<T>& t, double low = 0.0, double high = 1.0) {
    if (!(low <= high))
      throw ArgumentError(detail::cat("Generator::uniform(low=", low, ", high=", high, "): expected low <= high"));
    fill(t, [low, high](std::array<double, 2> u, int k) { return low + (high - low) * u[k]; });
  }

 private:
  // Element i gets value k = i % 2 of counter offset + i / 2, whichever thread computes it.
  template <class T, class F>
  void fill(Tensor<T>& t, F&& value) {
    const std::int64_t n = t.numel();
    const std::uint64_t base = offset_, seed = seed_;
    T* out = t.data();
    parallel_for((n + 1) / 2, n * 40, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t c = lo; c < hi; ++c) {
        const auto u = detail::philox_uniform2(seed, base + static_cast<std::uint64_t>(c));
        out[2 * c] = static_cast<T>(value(u, 0));
        if (2 * c + 1 < n) out[2 * c + 1] = static_cast<T>(value(u, 1));
      }
    });
    offset_ += static_cast<std::uint64_t>((n + 1) / 2);
  }

  std::uint64_t seed_;
  std::uint64_t offset_ = 0;
};

}  // namespace ditto
