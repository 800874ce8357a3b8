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
// exp with its argument clamped to where exp is already 0 or infinite (below -104 / above 89 for
// float, -746 / 710 for double), and NaN routed around: xsimd's range reduction converts the
// argument to an integer, which is undefined for infinities and NaN (UBSan flags it for double).
// The result is exactly exp's: 0, inf, or NaN for NaN.
template <class B>
inline B exp_clamped(B a) {
  using T = typename B::value_type;
  const B low(std::is_same_v<T, float> ? T(-104) : T(-746)), high(std::is_same_v<T, float> ? T(89) : T(710));
  const auto nan = xsimd::isnan(a);  // (a != a is an ordered compare on some targets: false for NaN)
  B c = xsimd::select(nan, B(T(0)), a);
  c = xsimd::select(c < low, low, c);
  c = xsimd::select(c > high, high, c);
  return xsimd::select(nan, a, xsimd::exp(c));
}
// erf with its argument clamped to +-6 (where erf is +-1 in float and double already) and NaN
// routed around: xsimd's erf takes an exp of -a^2, whose range reduction would convert an
// infinite or NaN value to an integer (undefined; UBSan flags it for double without AVX-512DQ).
template <class B>
inline B erf_clamped(B a) {
  using T = typename B::value_type;
  const auto nan = xsimd::isnan(a);
  B c = xsimd::select(nan, B(T(0)), a);
  c = xsimd::select(c < B(T(-6)), B(T(-6)), c);
  c = xsimd::select(c > B(T(6)), B(T(6)), c);
  return xsimd::select(nan, a, xsimd::erf(c));
}
// SIMD versions (xsimd picks the widest instruction set the compiler targets: SSE2 without
// -march flags, AVX2 or AVX-512 with them); the scalar functions above are the plain references.
template <class B>
inline B gelu_simd(B x) {
  return B(0.5) * x * (B(1) + erf_clamped(x * B(0.70710678118654752440)));
}
// 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)) exactly: one exp instead of a tanh (measured 2x faster).
template <class B>
inline B gelu_tanh_simd(B x) {
  const B u2 = B(2 * 0.79788456080286535588) * (x + B(0.044715) * x * x * x);
  return x / (B(1) + exp_clamped(-u2));
}
template <class B>
inline B silu_simd(B x) {
  return x / (B(1) + exp_clamped(-x));
}
// y[i] = simd(x[i]) over [lo, hi). The tail shorter than a vector goes through the same SIMD code
// on a zero-padded copy, so every value is computed alike wherever a thread's range ends (results
// do not depend on the thread count).
template <class T, class F>
inline void map(const T* x, T* y, std::int64_t lo, std::int64_t hi, F&& simd) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  std::int64_t i = lo;
  for (; i + W <= hi; i += W) simd(B::load_unaligned(x + i)).store_unaligned(y + i);
  if (i < hi) {
    alignas(64) T buf[W] = {};
    std::copy(x + i, x + hi, buf);
    simd(B::load_aligned(buf)).store_aligned(buf);
    std::copy(buf, buf + (hi - i), y + i);
  }
}
// dx[i] += dy[i] * grad(x[i]) over [lo, hi), the tail as map's.
template <class T, class G>
inline void map_backward(T* dx, const T* dy, const T* x, std::int64_t lo, std::int64_t hi, G&& grad) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  std::int64_t i = lo;
  for (; i + W <= hi; i += W)
    (B::load_unaligned(dx + i) + B::load_unaligned(dy + i) * grad(B::load_unaligned(x + i))).store_unaligned(dx + i);
  if (i < hi) {
    alignas(64) T bx[W] = {}, bdy[W] = {}, bdx[W] = {};
    std::copy(x + i, x + hi, bx);
    std::copy(dy + i, dy + hi, bdy);
    std::copy(dx + i, dx + hi, bdx);
    (B::load_aligned(bdx) + B::load_aligned(bdy) * grad(B::load_aligned(bx))).store_aligned(bdx);
    std::copy(bdx, bdx + (hi - i), dx + i);
  }
}
// The derivatives in SIMD lanes, at the pre-activation x. With e = exp(a), a = -2u, and
// r = 1 / (1 + e): 0.5 (1 + tanh u) = r and 1 - tanh^2 u = 4 r (e r), with no cancellation where
// tanh u is near +-1. Beyond |a| = 80 the derivative is within 1e-32 of 0 or 1: taken as such, so
// an infinite e (or an x^3 that overflows) never makes inf * 0.
template <class B>
inline B saturate(B a, B g) {
  using T = typename B::value_type;
  const B cap(T(80));
  return xsimd::select(a > cap, B(T(0)), xsimd::select(a < -cap, B(T(1)), g));  // NaN compares false: stays NaN
}
template <class B>
inline B gelu_tanh_grad_simd(B x) {
  const B k(0.79788456080286535588), c(0.044715);
  const B x2 = x * x;
  const B a = B(-2) * k * (x + c * x2 * x);
  const B e = exp_clamped(a);
  const B r = B(1) / (B(1) + e);
  return saturate(a, r + B(2) * k * x * (B(1) + B(3) * c * x2) * ((e * r) * r));
}
template <class B>
inline B gelu_grad_simd(B x) {  // Phi(x) + x phi(x)
  return B(0.5) * (B(1) + erf_clamped(x * B(0.70710678118654752440))) + x * B(0.39894228040143267794) * exp_clamped(B(-0.5) * x * x);
}
template <class B>
inline B silu_grad_simd(B x) {  // s (1 + x (1 - s)), 1 - s = e s with e = exp(-x)
  const B e = exp_clamped(-x);
  const B s = B(1) / (B(1) + e);
  return saturate(-x, s * (B(1) + x * (e * s)));
}
}  // namespace detail

// y = act(x) over n contiguous values (y may be x), one pass, split over threads.
template <class T>
inline void activate(const T* x, T* y, std::int64_t n, Activation a) {
  if (a == Activation::identity) {
    if (x != y) std::copy(x, x + n, y);
    return;
  }
  parallel_for(n, n * 20, [&](std::int64_t lo, std::int64_t hi) {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      switch (a) {
        case Activation::gelu:
          detail::map(x, y, lo, hi, [](auto b) { return detail::gelu_simd(b); });
          break;
        case Activation::gelu_tanh:
          detail::map(x, y, lo, hi, [](auto b) { return detail::gelu_tanh_simd(b); });
          break;
        case Activation::silu:
          detail::map(x, y, lo, hi, [](auto b) { return detail::silu_simd(b); });
          break;
        default: break;
      }
    } else {
      for (auto i = lo; i < hi; ++i)
        y[i] = a == Activation::gelu ? gelu(x[i]) : a == Activation::gelu_tanh ? gelu_tanh(x[i]) : silu(x[i]);
    }
  });
}
template <class T>
inline void activate(T* x, std::int64_t n, Activation a) {
  activate(static_cast<const T*>(x), x, n, a);
}

template <class T>
inline Tensor<T> activate(const Tensor<T>& x, Activation a) {
  Tensor<T> y = Tensor<T>::empty(x.shape());
  activate(x.data(), y.data(), x.numel(), a);
  return y;
}
// The derivatives, at the pre-activation x (what a training forward keeps).
template <class T>
inline T gelu_grad(T x) {  // Phi(x) + x phi(x)
  return T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440))) + x * T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
}
template <class T>
inline T gelu_tanh_grad(T x) {
  const T k = T(0.79788456080286535588), c = T(0.044715);
  const T th = std::tanh(k * (x + c * x * x * x));
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * k * (T(1) + T(3) * c * x * x);
}
template <class T>
inline T silu_grad(T x) {  // s(x) (1 + x (1 - s(x)))
  const T s = T(1) / (T(1) + std::exp(-x));
  return s * (T(1) + x * (T(1) - s));
}

// dx += dy * act'(x) over n values, x the pre-activation, in SIMD lanes for float and double (the
// scalar derivatives above are the plain reference, and serve other types). Each value on its own,
// so any split over threads gives the same bits.
template <class T>
inline void activate_backward(T* dx, const T* dy, const T* x, std::int64_t n, Activation a) {
  parallel_for(n, n * 30, [&](std::int64_t lo, std::int64_t hi) {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      switch (a) {
        case Activation::gelu: detail::map_backward(dx, dy, x, lo, hi, [](auto b) { return detail::gelu_grad_simd(b); }); break;
        case Activation::gelu_tanh: detail::map_backward(dx, dy, x, lo, hi, [](auto b) { return detail::gelu_tanh_grad_simd(b); }); break;
        case Activation::silu: detail::map_backward(dx, dy, x, lo, hi, [](auto b) { return detail::silu_grad_simd(b); }); break;
        default: for (auto i = lo; i < hi; ++i) dx[i] += dy[i];
      }
    } else {
      switch (a) {
        case Activation::gelu: for (auto i = lo; i < hi; ++i) dx[i] += dy[i] * gelu_grad(x[i]); break;
        case Activation::gelu_tanh: for (auto i = lo; i < hi; ++i) dx[i] += dy[i] * gelu_tanh_grad(x[i]); break;
        case Activation::silu: for (auto i = lo; i < hi; ++i) dx[i] += dy[i] * silu_grad(x[i]); break;
        default: for (auto i = lo; i < hi; ++i) dx[i] += dy[i];
      }
    }
  });
}

template <class T> inline Tensor<T> gelu(const Tensor<T>& x) { return activate(x, Activation::gelu); }
template <class T> inline Tensor<T> gelu_tanh(const Tensor<T>& x) { return activate(x, Activation::gelu_tanh); }
template <class T> inline Tensor<T> silu(const Tensor<T>& x) { return activate(x, Activation::silu); }

namespace detail {
// max of a row, in SIMD lanes.
template <class T>
inline T row_max(const T* x, std::int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  std::int64_t j = 0;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using B = xsimd::batch<T>;
    constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
    if (n >= W) {
      B mb = B::load_unaligned(x);
      for (j = W; j + W <= n; j += W) mb = xsimd::max(mb, B::load_unaligned(x + j));
      alignas(64) T lanes[W];
      mb.store_aligned(lanes);
      for (std::int64_t k = 0; k < W; ++k) m = std::max(m, lanes[k]);
    }
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}
// y = exp(x - m) (y may be x); returns the sum of y. In SIMD lanes.
template <class T>
inline T exp_shift_sum(const T* x, T* y, std::int64_t n, T m) {
  T s = 0;
  std::int64_t i = 0;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using B = xsimd::batch<T>;
    constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
    B acc(T(0)), mb(m);
    for (; i + W <= n; i += W) {
      const B e = exp_clamped(B::load_unaligned(x + i) - mb);  // masked -inf scores give 0
      e.store_unaligned(y + i);
      acc += e;
    }
    s = xsimd::hadd(acc);
  }
  for (; i < n; ++i) s += (y[i] = std::exp(x[i] - m));
  return s;
}
}  // namespace detail

// Softmax of one row of n values: y = exp(x - max x) / sum (y may be x). Three passes over the
// row (max; exp and sum; scale), the first two in SIMD lanes.
template <class T>
inline void softmax_row(const T* x, T* y, std::int64_t n) {
  const T m = detail::row_max(x, n);
  const T inv = T(1) / detail::exp_shift_sum(x, y, n, m);
  for (std::int64_t k = 0; k < n; ++k) y[k] *= inv;  // vectorized by the compiler (no reduction)
}

// Softmax over the last axis.
template <class T>
inline Tensor<T> softmax(const Tensor<T>& x) {
  Tensor<T> y = Tensor<T>::empty(x.shape());
  if (y.numel() == 0) return y;
  const std::int64_t n = y.size(-1), rows = y.numel() / n;
  parallel_for(rows, rows * n * 10, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) softmax_row(x.data() + r * n, y.data() + r * n, n);
  });
  return y;
}

// Backward of softmax_row from its output y: dx += y * (dy - dy . y).
template <class T>
inline void softmax_row_backward(T* dx, const T* dy, const T* y, std::int64_t n) {
  T s = 0;
  for (std::int64_t k = 0; k < n; ++k) s += dy[k] * y[k];
  for (std::int64_t k = 0; k < n; ++k) dx[k] += y[k] * (dy[k] - s);
}

}  // namespace ditto::nn
