// Activations and softmax, element-wise over contiguous memory. Each has a raw-pointer form
// (for fused loops inside blocks) and a tensor form returning a new tensor.
//
//   gelu:      x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))                 (torch GELU())
//   gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))          (GELU(approximate="tanh"), DiT's MLP)
//   silu:      x * sigmoid(x)                                           (adaLN and timestep MLPs)
//   softmax:   over the last axis, max-subtracted so exp never overflows
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "../core/tensor.hpp"
#include "../core/threading.hpp"

namespace ditto::nn {

enum class Activation { gelu, gelu_tanh, silu, identity };

template <class T>
inline T gelu(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}
template <class T>
inline T gelu_tanh(T x) {
  const T k = T(0.79788456080286535588);  // sqrt(2/pi)
  return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
}
template <class T>
inline T silu(T x) {
  return x / (T(1) + std::exp(-x));
}

namespace detail {
// SIMD versions (xsimd picks the widest instruction set the compiler targets: SSE2 without
// -march flags, AVX2 or AVX-512 with them); the scalar functions above finish the tail.
template <class B>
inline B gelu_simd(B x) {
  return B(0.5) * x * (B(1) + xsimd::erf(x * B(0.70710678118654752440)));
}
template <class B>
inline B gelu_tanh_simd(B x) {
  return B(0.5) * x * (B(1) + xsimd::tanh(B(0.79788456080286535588) * (x + B(0.044715) * x * x * x)));
}
template <class B>
inline B silu_simd(B x) {
  return x / (B(1) + xsimd::exp(-x));
}
template <class T, class F, class S>
inline void map_inplace(T* x, std::int64_t lo, std::int64_t hi, F&& simd, S&& scalar) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  std::int64_t i = lo;
  for (; i + W <= hi; i += W) simd(B::load_unaligned(x + i)).store_unaligned(x + i);
  for (; i < hi; ++i) x[i] = scalar(x[i]);
}
}  // namespace detail

// In place over n contiguous values, split over threads.
template <class T>
inline void activate(T* x, std::int64_t n, Activation a) {
  if (a == Activation::identity) return;
  parallel_for(n, n * 20, [&](std::int64_t lo, std::int64_t hi) {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      switch (a) {
        case Activation::gelu:
          detail::map_inplace(x, lo, hi, [](auto b) { return detail::gelu_simd(b); }, [](T v) { return gelu(v); });
          break;
        case Activation::gelu_tanh:
          detail::map_inplace(x, lo, hi, [](auto b) { return detail::gelu_tanh_simd(b); }, [](T v) { return gelu_tanh(v); });
          break;
        case Activation::silu:
          detail::map_inplace(x, lo, hi, [](auto b) { return detail::silu_simd(b); }, [](T v) { return silu(v); });
          break;
        default: break;
      }
    } else {
      for (auto i = lo; i < hi; ++i)
        x[i] = a == Activation::gelu ? gelu(x[i]) : a == Activation::gelu_tanh ? gelu_tanh(x[i]) : silu(x[i]);
    }
  });
}

template <class T>
inline Tensor<T> activate(const Tensor<T>& x, Activation a) {
  Tensor<T> y = x.clone();
  activate(y.data(), y.numel(), a);
  return y;
}
template <class T> inline Tensor<T> gelu(const Tensor<T>& x) { return activate(x, Activation::gelu); }
template <class T> inline Tensor<T> gelu_tanh(const Tensor<T>& x) { return activate(x, Activation::gelu_tanh); }
template <class T> inline Tensor<T> silu(const Tensor<T>& x) { return activate(x, Activation::silu); }

// Softmax of one row of n values, in place.
template <class T>
inline void softmax_row(T* x, std::int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  T s = 0;
  std::int64_t i = 0;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using B = xsimd::batch<T>;
    constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
    B acc(T(0)), mb(m);
    for (; i + W <= n; i += W) {
      const B e = xsimd::exp(B::load_unaligned(x + i) - mb);
      e.store_unaligned(x + i);
      acc += e;
    }
    s = xsimd::hadd(acc);
  }
  for (; i < n; ++i) s += (x[i] = std::exp(x[i] - m));
  const T inv = T(1) / s;
  for (std::int64_t k = 0; k < n; ++k) x[k] *= inv;
}

// Softmax over the last axis.
template <class T>
inline Tensor<T> softmax(const Tensor<T>& x) {
  Tensor<T> y = x.clone();
  if (y.numel() == 0) return y;
  const std::int64_t n = y.size(-1), rows = y.numel() / n;
  parallel_for(rows, rows * n * 10, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) softmax_row(y.data() + r * n, n);
  });
  return y;
}

}  // namespace ditto::nn
