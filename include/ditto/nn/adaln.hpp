// adaLN (DiT paper, sec. 3.2): LayerNorm without affine, modulated per sample by a shift and a
// scale regressed from the condition, and residual branches scaled by a gate. DiT, Latte and
// ViViT's DiT-style blocks share these, forward and backward, so each is written once.
//
// Layout: `rows` token rows of d values; every n consecutive rows belong to one sample b = r / n
// and share its modulation rows shift[b], scale[b], gate[b] (each d values, mod_stride apart:
// they are slices of one (B, k * d) adaLN_modulation output).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

#include "../core/threading.hpp"
#include "norm.hpp"

namespace ditto::nn {

// Called with (upstream module name, its output) after each top-level submodule, when given.
template <class T>
using Trace = std::function<void(const std::string&, const Tensor<T>&)>;

// y[r] = LayerNorm(x[r]) * (1 + scale[b]) + shift[b]: DiT's modulate(norm(x), shift, scale) in
// one pass. When mean and rstd are given (training), the row statistics are kept for the backward.
template <class T>
inline void norm_modulate(const T* x, T* y, std::int64_t rows, std::int64_t n, std::int64_t d, const T* shift, const T* scale,
                          std::int64_t mod_stride, double eps, T* mean = nullptr, T* rstd = nullptr) {
  parallel_for(rows, rows * d * 6, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const T* xr = x + r * d;
      T* yr = y + r * d;
      const std::int64_t b = r / n;
      const T* sh = shift + b * mod_stride;
      const T* sc = scale + b * mod_stride;
      const T mu = detail::row_sum(xr, d, T(0), false) / static_cast<T>(d);
      const T var = detail::row_sum(xr, d, mu, true) / static_cast<T>(d);
      const T rs = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var) + eps));
      if (mean) mean[r] = mu, rstd[r] = rs;
      for (std::int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mu) * rs * (T(1) + sc[i]) + sh[i];
    }
  });
}

// Backward of norm_modulate. dy: (rows, d); x, mean, rstd: what the forward kept. Accumulates
// dx (rows, d), dshift[b] and dscale[b] (rows of the modulation gradient, mod_stride apart).
// The per-sample sums run over rows in order, split by sample and column, so any thread count
// gives the same bits.
template <class T>
inline void norm_modulate_backward(T* dx, T* dshift, T* dscale, const T* dy, const T* x, const T* mean, const T* rstd,
                                   const T* scale, std::int64_t rows, std::int64_t n, std::int64_t d, std::int64_t mod_stride) {
  // dx: per row, through the modulation and the normalization
  parallel_for(rows, rows * d * 8, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const T* sc = scale + (r / n) * mod_stride;
      const T* dyr = dy + r * d;
      detail::layernorm_row_backward(dx + r * d, x + r * d, mean[r], rstd[r], d, [&](std::int64_t i) { return dyr[i] * (T(1) + sc[i]); });
    }
  });
  // dshift[b] = sum over b's rows of dy, dscale[b] = sum of dy * xhat
  const std::int64_t B = rows / n;
  parallel_for(B, rows * d * 3, [&](std::int64_t lo, std::int64_t hi) {
    for (auto b = lo; b < hi; ++b) {
      T* ds = dshift + b * mod_stride;
      T* dc = dscale + b * mod_stride;
      for (std::int64_t r = b * n; r < (b + 1) * n; ++r) {
        const T* xr = x + r * d;
        const T* dyr = dy + r * d;
        for (std::int64_t i = 0; i < d; ++i) {
          ds[i] += dyr[i];
          dc[i] += dyr[i] * (xr[i] - mean[r]) * rstd[r];
        }
      }
    }
  });
}

// x[r] += gate[b] * y[r]: the adaLN-Zero gated residual.
template <class T>
inline void gated_add(T* x, const T* y, std::int64_t rows, std::int64_t n, std::int64_t d, const T* gate, std::int64_t mod_stride) {
  parallel_for(rows, rows * d, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const T* g = gate + (r / n) * mod_stride;
      T* xr = x + r * d;
      const T* yr = y + r * d;
      for (std::int64_t i = 0; i < d; ++i) xr[i] += g[i] * yr[i];
    }
  });
}

// Backward of gated_add, given dout (the gradient of the updated x; the gradient of the x that
// went in is dout itself, the residual path). Accumulates dy[r] += gate[b] * dout[r] and
// dgate[b] += sum over b's rows of dout * y (y: the branch output the forward kept).
template <class T>
inline void gated_add_backward(T* dy, T* dgate, const T* dout, const T* y, const T* gate, std::int64_t rows, std::int64_t n,
                               std::int64_t d, std::int64_t mod_stride) {
  parallel_for(rows, rows * d, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const T* g = gate + (r / n) * mod_stride;
      for (std::int64_t i = 0; i < d; ++i) dy[r * d + i] += g[i] * dout[r * d + i];
    }
  });
  const std::int64_t B = rows / n;
  parallel_for(B, rows * d * 2, [&](std::int64_t lo, std::int64_t hi) {
    for (auto b = lo; b < hi; ++b) {
      T* dg = dgate + b * mod_stride;
      for (std::int64_t r = b * n; r < (b + 1) * n; ++r)
        for (std::int64_t i = 0; i < d; ++i) dg[i] += dout[r * d + i] * y[r * d + i];
    }
  });
}

}  // namespace ditto::nn
