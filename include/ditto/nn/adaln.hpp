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

#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "linear.hpp"
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

// DiT's final layer (Latte's too): LayerNorm without affine, modulated by (shift, scale) =
// adaLN_modulation(SiLU(c)), then the linear projection to p * p * out_channels per token.
template <class T = float>
struct FinalLayer {
  std::int64_t hidden_size = 0;
  Linear<T> linear, adaLN_modulation;  // "adaLN_modulation.1"

  FinalLayer() = default;
  FinalLayer(std::int64_t hidden, std::int64_t patch, std::int64_t out_channels)
      : hidden_size(hidden), linear(hidden, patch * patch * out_channels), adaLN_modulation(hidden, 2 * hidden) {}

  template <class V>
  void visit(V& v) {
    v("linear", linear);
    v("adaLN_modulation.1", adaLN_modulation);
  }

  // x: B * n rows of D; silu_c: (B, D) -> (B, n, p*p*out)
  Tensor<T> forward(const T* x, std::int64_t B, std::int64_t n, const Tensor<T>& silu_c, T* scratch) const {
    const Tensor<T> mod = adaLN_modulation.forward(silu_c);  // shift, scale
    norm_modulate(x, scratch, B * n, n, hidden_size, mod.data(), mod.data() + hidden_size, 2 * hidden_size, 1e-6);
    Tensor<T> out = Tensor<T>::empty({B, n, linear.out_features});
    linear.forward_into(scratch, out.data(), B * n);
    return out;
  }

  // Training: keeps its input rows, the LayerNorm statistics, the modulated rows and mod.
  struct Acts {
    Tensor<T> x, mean, rstd, h, mod;
  };
  Tensor<T> forward_train(const T* x, std::int64_t B, std::int64_t n, const Tensor<T>& silu_c, Acts& a) const {
    const std::int64_t rows = B * n, D = hidden_size;
    a.mod = adaLN_modulation.forward(silu_c);
    a.x = Tensor<T>::empty({rows, D}), a.h = Tensor<T>::empty({rows, D}), a.mean = Tensor<T>::empty({rows}), a.rstd = Tensor<T>::empty({rows});
    std::copy(x, x + rows * D, a.x.data());
    norm_modulate(x, a.h.data(), rows, n, D, a.mod.data(), a.mod.data() + D, 2 * D, 1e-6, a.mean.data(), a.rstd.data());
    Tensor<T> out = Tensor<T>::empty({B, n, linear.out_features});
    linear.forward_into(a.h.data(), out.data(), rows);
    return out;
  }
  // dout: (B, n, p*p*out). Accumulates g, dx (rows, D) and dsilu_c (B, D).
  void backward(T* dx, FinalLayer& g, T* dsilu_c, const Tensor<T>& silu_c, const Tensor<T>& dout, const Acts& a) const {
    const std::int64_t rows = a.x.size(0), D = hidden_size, B = silu_c.size(0);
    Tensor<T> dh({rows, D}), dmod({B, 2 * D});
    linear.backward_into(dh.data(), g.linear, dout.data(), a.h.data(), rows);
    norm_modulate_backward(dx, dmod.data(), dmod.data() + D, dh.data(), a.x.data(), a.mean.data(), a.rstd.data(),
                               a.mod.data() + D, rows, rows / B, D, 2 * D);
    adaLN_modulation.backward_into(dsilu_c, g.adaLN_modulation, dmod.data(), silu_c.data(), B);
  }
};


}  // namespace ditto::nn
