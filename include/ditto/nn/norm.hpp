// Normalizations, as torch.nn.LayerNorm / GroupNorm and the RMSNorm of LLaMA-style blocks.
// Statistics are computed in at least float32 (as upstream's GroupNorm32 does for half inputs):
// LayerNorm sums in SIMD lanes of T (each lane a partial sum, so a row of 4096 floats adds 256
// values per lane), GroupNorm and RMSNorm in double.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "activation.hpp"
#include "linear.hpp"  // detail::require_positive

namespace ditto::nn {

namespace detail {
// sum(x) or sum((x - c)^2) over a row, in SIMD lanes (float or double), scalar tail.
template <class T>
inline T row_sum(const T* x, std::int64_t n, T c, bool squares) {
  T s = 0;
  std::int64_t i = 0;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using B = xsimd::batch<T>;
    constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
    B acc(T(0)), cb(c);
    if (squares)
      for (; i + W <= n; i += W) {
        const B d = B::load_unaligned(x + i) - cb;
        acc = xsimd::fma(d, d, acc);
      }
    else
      for (; i + W <= n; i += W) acc += B::load_unaligned(x + i);
    s = xsimd::hadd(acc);
  }
  for (; i < n; ++i) s += squares ? (x[i] - c) * (x[i] - c) : x[i];
  return s;
}

// One row of LayerNorm's backward through the normalization: with xhat = (x - mean) rstd and
// g(i) the gradient of xhat[i], dx[i] += rstd (g(i) - mean(g) - xhat[i] mean(g xhat)).
// Shared by LayerNorm (g = dy * weight) and adaLN's norm_modulate (g = dy * (1 + scale)).
template <class T, class G>
inline void layernorm_row_backward(T* dx, const T* x, T mean, T rstd, std::int64_t n, G&& g) {
  T sg = 0, sgx = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const T gi = g(i), xh = (x[i] - mean) * rstd;
    sg += gi, sgx += gi * xh;
  }
  const T mg = sg / static_cast<T>(n), mgx = sgx / static_cast<T>(n);
  for (std::int64_t i = 0; i < n; ++i) dx[i] += rstd * (g(i) - mg - (x[i] - mean) * rstd * mgx);
}
}  // namespace detail

// x: (..., normalized_shape). y = (x - mean) / sqrt(var + eps) * weight + bias, over the last axis
// (biased variance, as PyTorch). elementwise_affine = false: no weight or bias.
template <class T = float>
struct LayerNorm {
  std::int64_t normalized_shape = 0;
  double eps = 1e-5;
  bool elementwise_affine = true;
  Tensor<T> weight, bias;

  LayerNorm() = default;
  explicit LayerNorm(std::int64_t dim, double eps_ = 1e-5, bool affine = true)
      : normalized_shape(dim), eps(eps_), elementwise_affine(affine),
        weight(Tensor<T>::ones({affine ? std::max<std::int64_t>(dim, 0) : 0})), bias(Shape{affine ? std::max<std::int64_t>(dim, 0) : 0}) {
    detail::require_positive("LayerNorm", "normalized_shape", dim);
  }

  template <class V>
  void visit(V& v) {
    if (elementwise_affine) {
      v("weight", weight);
      v("bias", bias);
    }
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    if (x.dim() < 1 || x.size(-1) != normalized_shape)
      throw ShapeError(ditto::detail::cat("LayerNorm(", normalized_shape, "): expected input (..., ", normalized_shape,
                                          "), got shape ", shape_str(x.shape())));
    Tensor<T> y = Tensor<T>::empty(x.shape());
    forward_into(x.data(), y.data(), x.numel() / normalized_shape);
    return y;
  }

  void forward_into(const T* x, T* y, std::int64_t rows) const {
    const std::int64_t n = normalized_shape;
    const T* w = elementwise_affine ? weight.data() : nullptr;
    const T* b = elementwise_affine ? bias.data() : nullptr;
    parallel_for(rows, rows * n * 4, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        // two passes (mean, then squared deviations), as PyTorch, in SIMD lanes
        const T mean = detail::row_sum(xr, n, T(0), false) / static_cast<T>(n);
        const T var = detail::row_sum(xr, n, mean, true) / static_cast<T>(n);
        const T rstd = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var) + eps));
        if (w) for (std::int64_t i = 0; i < n; ++i) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
        else for (std::int64_t i = 0; i < n; ++i) yr[i] = (xr[i] - mean) * rstd;
      }
    });
  }

  // Training: forward_into keeping each row's mean and rstd (rows values each) for backward.
  void forward_train(const T* x, T* y, std::int64_t rows, T* mean, T* rstd) const {
    const std::int64_t n = normalized_shape;
    parallel_for(rows, rows * n * 4, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        const T* xr = x + r * n;
        mean[r] = detail::row_sum(xr, n, T(0), false) / static_cast<T>(n);
        const T var = detail::row_sum(xr, n, mean[r], true) / static_cast<T>(n);
        rstd[r] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var) + eps));
        for (std::int64_t i = 0; i < n; ++i) {
          const T xh = (xr[i] - mean[r]) * rstd[r];
          y[r * n + i] = elementwise_affine ? xh * weight[i] + bias[i] : xh;
        }
      }
    });
  }
  // dy (rows, n); x, mean, rstd as forward_train kept them. Accumulates dx and g.weight, g.bias
  // (summed over rows in order, by column: the same bits for any thread count).
  void backward_into(T* dx, LayerNorm& g, const T* dy, const T* x, const T* mean, const T* rstd, std::int64_t rows) const {
    const std::int64_t n = normalized_shape;
    parallel_for(rows, rows * n * 8, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        const T* dyr = dy + r * n;
        detail::layernorm_row_backward(dx + r * n, x + r * n, mean[r], rstd[r], n,
                                       [&](std::int64_t i) { return dyr[i] * (elementwise_affine ? weight[i] : T(1)); });
      }
    });
    if (!elementwise_affine) return;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = 0; i < n; ++i) {
        g.weight[i] += dy[r * n + i] * (x[r * n + i] - mean[r]) * rstd[r];
        g.bias[i] += dy[r * n + i];
      }
  }
};

// x: (..., dim). y = x / sqrt(mean(x^2) + eps) * weight.
template <class T = float>
struct RMSNorm {
  std::int64_t dim = 0;
  double eps = 1e-6;
  Tensor<T> weight;

  RMSNorm() = default;
  explicit RMSNorm(std::int64_t dim_, double eps_ = 1e-6)
      : dim(dim_), eps(eps_), weight(Tensor<T>::ones({std::max<std::int64_t>(dim_, 0)})) {
    detail::require_positive("RMSNorm", "dim", dim_);
  }

  template <class V>
  void visit(V& v) {
    v("weight", weight);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    if (x.dim() < 1 || x.size(-1) != dim)
      throw ShapeError(ditto::detail::cat("RMSNorm(", dim, "): expected input (..., ", dim, "), got shape ",
                                          shape_str(x.shape())));
    Tensor<T> y = Tensor<T>::empty(x.shape());
    const std::int64_t rows = x.numel() / dim;
    parallel_for(rows, rows * dim * 3, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        const T* xr = x.data() + r * dim;
        double ss = 0;
        for (std::int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
        const T rs = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
        for (std::int64_t i = 0; i < dim; ++i) y[r * dim + i] = xr[i] * rs * weight[i];
      }
    });
    return y;
  }

  // Backward of forward(x) (it keeps nothing: rs is recomputed from x, one pass). Returns dx and
  // accumulates g.weight: with rs = 1 / sqrt(mean(x^2) + eps) and gi = dy_i w_i,
  //   dx_i = rs (gi - x_i rs^2 mean(g x)),  dw_i += sum over rows of dy_i x_i rs.
  Tensor<T> backward(RMSNorm& g, const Tensor<T>& x, const Tensor<T>& dy) const {
    if (dy.shape() != x.shape() || x.dim() < 1 || x.size(-1) != dim)
      throw ShapeError(ditto::detail::cat("RMSNorm(", dim, ").backward: expected x and dy of one shape (..., ", dim, "), got ", shape_str(x.shape()),
                                          " and ", shape_str(dy.shape())));
    const std::int64_t rows = x.numel() / dim;
    Tensor<T> dx = Tensor<T>::empty(x.shape());
    std::vector<double> rs(static_cast<std::size_t>(rows));
    parallel_for(rows, rows * dim * 6, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        const T* xr = x.data() + r * dim;
        const T* dr = dy.data() + r * dim;
        double ss = 0, sgx = 0;
        for (std::int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
        const double s = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
        rs[static_cast<std::size_t>(r)] = s;
        for (std::int64_t i = 0; i < dim; ++i) sgx += static_cast<double>(dr[i]) * weight[i] * xr[i];
        const double m = sgx / static_cast<double>(dim);
        for (std::int64_t i = 0; i < dim; ++i)
          dx[r * dim + i] = static_cast<T>(s * (static_cast<double>(dr[i]) * weight[i] - static_cast<double>(xr[i]) * s * s * m));
      }
    });
    for (std::int64_t r = 0; r < rows; ++r)  // rows in order: the same bits for any thread count
      for (std::int64_t i = 0; i < dim; ++i) g.weight[i] += static_cast<T>(static_cast<double>(dy[r * dim + i]) * x[r * dim + i] * rs[static_cast<std::size_t>(r)]);
    return dx;
  }
};

// x: (N, C, *spatial). Statistics over each group of C / num_groups channels and all positions;
// then a per-channel affine. num_groups = 32 is the U-Net / VAE default (normalization(ch)).
template <class T = float>
struct GroupNorm {
  std::int64_t num_groups = 32, num_channels = 0;
  double eps = 1e-5;
  bool affine = true;
  Tensor<T> weight, bias;

  GroupNorm() = default;
  GroupNorm(std::int64_t groups, std::int64_t channels, double eps_ = 1e-5, bool affine_ = true)
      : num_groups(groups), num_channels(channels), eps(eps_), affine(affine_),
        weight(Tensor<T>::ones({affine_ ? std::max<std::int64_t>(channels, 0) : 0})),
        bias(Shape{affine_ ? std::max<std::int64_t>(channels, 0) : 0}) {
    if (groups <= 0 || channels <= 0 || channels % groups != 0)
      throw ArgumentError(ditto::detail::cat("GroupNorm(", groups, ", ", channels,
                                             "): num_channels must be divisible by num_groups"));
  }

  template <class V>
  void visit(V& v) {
    if (affine) {
      v("weight", weight);
      v("bias", bias);
    }
  }

  // Training: each (sample, group)'s mean and rstd (in double, as the forward computes them).
  struct Acts {
    std::vector<double> mean, rstd;
  };

  // silu_after: SiLU applied in the same pass (the GroupNorm-SiLU pair of every ResBlock).
  // acts (training): where the statistics are kept for backward.
  Tensor<T> forward(const Tensor<T>& x, bool silu_after = false, Acts* acts = nullptr) const {
    if (x.dim() < 2 || x.size(1) != num_channels)
      throw ShapeError(ditto::detail::cat("GroupNorm(", num_groups, ", ", num_channels, "): expected input (N, ",
                                          num_channels, ", ...), got shape ", shape_str(x.shape())));
    if (acts) acts->mean.assign(static_cast<std::size_t>(x.size(0) * num_groups), 0.0), acts->rstd = acts->mean;
    Tensor<T> y = Tensor<T>::empty(x.shape());
    const std::int64_t N = x.size(0), C = num_channels, G = num_groups, cg = C / G;
    const std::int64_t spatial = x.numel() / std::max<std::int64_t>(N * C, 1), group = cg * spatial;
    parallel_for(N * G, N * C * spatial * 4, [&](std::int64_t lo, std::int64_t hi) {
      for (auto ng = lo; ng < hi; ++ng) {
        const T* xg = x.data() + ng * group;
        T* yg = y.data() + ng * group;
        // two passes (mean, then squared deviations); SIMD sums per channel, added in double
        double mean = 0, var = 0;
        for (std::int64_t c = 0; c < cg; ++c) mean += static_cast<double>(detail::row_sum(xg + c * spatial, spatial, T(0), false));
        mean /= static_cast<double>(group);
        for (std::int64_t c = 0; c < cg; ++c)
          var += static_cast<double>(detail::row_sum(xg + c * spatial, spatial, static_cast<T>(mean), true));
        const double rstd = 1.0 / std::sqrt(var / static_cast<double>(group) + eps);
        if (acts) acts->mean[static_cast<std::size_t>(ng)] = mean, acts->rstd[static_cast<std::size_t>(ng)] = rstd;
        const std::int64_t g = ng % G;
        for (std::int64_t c = 0; c < cg; ++c) {
          const std::int64_t ch = g * cg + c;
          const T scale = static_cast<T>(rstd * (affine ? static_cast<double>(weight[ch]) : 1.0));
          const T shift = static_cast<T>((affine ? static_cast<double>(bias[ch]) : 0.0) - mean * rstd *
                                                   (affine ? static_cast<double>(weight[ch]) : 1.0));
          const T* xc = xg + c * spatial;
          T* yc = yg + c * spatial;
          for (std::int64_t s = 0; s < spatial; ++s) yc[s] = xc[s] * scale + shift;
        }
        if (silu_after) {
          if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
            detail::map(yg, yg, 0, group, [](auto b) { return detail::silu_simd(b); });
          else
            for (std::int64_t i = 0; i < group; ++i) yg[i] = silu(yg[i]);
        }
      }
    });
    return y;
  }

  // Backward of forward(x, silu_after, &acts): dy the gradient of its output. Returns dx and
  // accumulates g.weight, g.bias. With z = xhat w + b (recomputed from x and the statistics) and
  // dz = dy (times SiLU'(z) when silu_after): dw += sum dz xhat, db += sum dz over samples and
  // positions (channels split over threads, samples in order: the same bits for any thread
  // count), and per group dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dz w.
  Tensor<T> backward(GroupNorm& gr, const Tensor<T>& x, const Acts& a, const Tensor<T>& dy, bool silu_after = false) const {
    const std::int64_t N = x.size(0), C = num_channels, G = num_groups, cg = C / G;
    const std::int64_t spatial = x.numel() / std::max<std::int64_t>(N * C, 1), group = cg * spatial;
    if (dy.shape() != x.shape() || static_cast<std::int64_t>(a.mean.size()) != N * G)
      throw ShapeError(ditto::detail::cat("GroupNorm.backward: dy ", shape_str(dy.shape()), " and the statistics of ", a.mean.size(),
                                          " groups do not fit x ", shape_str(x.shape())));
    Tensor<T> dz = Tensor<T>::empty(x.shape()), dx = Tensor<T>::empty(x.shape());
    auto xhat = [&](std::int64_t n, std::int64_t ch, std::int64_t s) {
      const auto ng = static_cast<std::size_t>(n * G + ch / cg);
      return (static_cast<double>(x[(n * C + ch) * spatial + s]) - a.mean[ng]) * a.rstd[ng];
    };
    auto wt = [&](std::int64_t ch) { return affine ? static_cast<double>(weight[ch]) : 1.0; };
    auto bs = [&](std::int64_t ch) { return affine ? static_cast<double>(bias[ch]) : 0.0; };
    parallel_for(N * C, N * C * spatial * 8, [&](std::int64_t lo, std::int64_t hi) {  // dz
      for (auto nc = lo; nc < hi; ++nc) {
        const std::int64_t n = nc / C, ch = nc % C;
        for (std::int64_t s = 0; s < spatial; ++s) {
          double d = static_cast<double>(dy[nc * spatial + s]);
          if (silu_after) {
            const double z = xhat(n, ch, s) * wt(ch) + bs(ch), sg = 1.0 / (1.0 + std::exp(-z));
            d *= sg * (1.0 + z * (1.0 - sg));
          }
          dz[nc * spatial + s] = static_cast<T>(d);
        }
      }
    });
    parallel_for(N * G, N * C * spatial * 6, [&](std::int64_t lo, std::int64_t hi) {  // dx, per group
      for (auto ng = lo; ng < hi; ++ng) {
        const std::int64_t n = ng / G, g0 = (ng % G) * cg;
        double sg = 0, sgx = 0;
        for (std::int64_t c = 0; c < cg; ++c)
          for (std::int64_t s = 0; s < spatial; ++s) {
            const double gi = static_cast<double>(dz[(n * C + g0 + c) * spatial + s]) * wt(g0 + c);
            sg += gi, sgx += gi * xhat(n, g0 + c, s);
          }
        const double mg = sg / static_cast<double>(group), mgx = sgx / static_cast<double>(group), rstd = a.rstd[static_cast<std::size_t>(ng)];
        for (std::int64_t c = 0; c < cg; ++c)
          for (std::int64_t s = 0; s < spatial; ++s) {
            const double gi = static_cast<double>(dz[(n * C + g0 + c) * spatial + s]) * wt(g0 + c);
            dx[(n * C + g0 + c) * spatial + s] = static_cast<T>(rstd * (gi - mg - xhat(n, g0 + c, s) * mgx));
          }
      }
    });
    if (affine)
      parallel_for(C, N * C * spatial * 4, [&](std::int64_t lo, std::int64_t hi) {
        for (auto ch = lo; ch < hi; ++ch) {
          double sw = 0, sb = 0;
          for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t s = 0; s < spatial; ++s) {
              const double d = static_cast<double>(dz[(n * C + ch) * spatial + s]);
              sw += d * xhat(n, ch, s), sb += d;
            }
          gr.weight[ch] += static_cast<T>(sw), gr.bias[ch] += static_cast<T>(sb);
        }
      });
    return dx;
  }
};

}  // namespace ditto::nn
