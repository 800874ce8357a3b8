// Fixed embeddings: sinusoidal timestep features and the sin-cos position tables of MAE / DiT.
// Computed in double, then rounded once to T; timestep features in float follow PyTorch's float32 order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace ditto::nn {

// t: (N) timesteps (may be fractional) -> (N, dim) features. freqs_i = max_period^(-i / half),
// half = dim / 2. cos_first = true is the DiT / GLIDE order [cos(t f), sin(t f)] (DiT's
// TimestepEmbedder.timestep_embedding); false gives [sin, cos]. An odd dim gets a zero column.
template <class T>
inline Tensor<T> timestep_embedding(const Tensor<T>& t, std::int64_t dim, double max_period = 10000.0,
                                    bool cos_first = true) {
  if (t.dim() != 1) throw ShapeError(ditto::detail::cat("timestep_embedding: expected t of shape (N), got ", shape_str(t.shape())));
  if (dim < 1) throw ArgumentError(ditto::detail::cat("timestep_embedding: dim must be >= 1, got ", dim));
  const std::int64_t n = t.size(0), half = dim / 2;
  Tensor<T> out({n, dim});  // zeros: the odd column stays 0
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t i = 0; i < half; ++i) {
      double arg;
      if constexpr (std::is_same_v<T, float>) {
        // float32 as upstream computes it (freqs, then t * freqs, each rounded to float): at t
        // near 1000 one rounding of the argument moves cos by ~6e-5, so the order matters
        const float freq = std::exp(static_cast<float>(-std::log(max_period)) * static_cast<float>(i) / static_cast<float>(half));
        arg = static_cast<double>(static_cast<float>(t[r]) * freq);
      } else {
        arg = static_cast<double>(t[r]) * std::exp(-std::log(max_period) * static_cast<double>(i) / half);
      }
      out(r, i) = static_cast<T>(cos_first ? std::cos(arg) : std::sin(arg));
      out(r, half + i) = static_cast<T>(cos_first ? std::sin(arg) : std::cos(arg));
    }
  return out;
}

// MAE's 1-D table: position p, dim d -> [sin(p w_0..w_{d/2-1}), cos(p w_...)], w_i = 10000^(-2i/d).
template <class T = float>
inline Tensor<T> sincos_pos_embed_1d(std::int64_t embed_dim, std::int64_t length) {
  if (embed_dim % 2 != 0) throw ArgumentError(ditto::detail::cat("sincos_pos_embed_1d: embed_dim must be even, got ", embed_dim));
  const std::int64_t half = embed_dim / 2;
  Tensor<T> out = Tensor<T>::empty({length, embed_dim});
  for (std::int64_t p = 0; p < length; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double w = 1.0 / std::pow(10000.0, static_cast<double>(i) / (embed_dim / 2.0));
      out(p, i) = static_cast<T>(std::sin(static_cast<double>(p) * w));
      out(p, half + i) = static_cast<T>(std::cos(static_cast<double>(p) * w));
    }
  return out;
}

// MAE / DiT's 2-D table for a grid_h x grid_w grid of patches, row-major: (grid_h * grid_w,
// embed_dim). The first half encodes the column (w) coordinate and the second the row (h),
// because upstream builds its grid with np.meshgrid(grid_w, grid_h).
template <class T = float>
inline Tensor<T> sincos_pos_embed_2d(std::int64_t embed_dim, std::int64_t grid_h, std::int64_t grid_w) {
  if (embed_dim % 4 != 0) throw ArgumentError(ditto::detail::cat("sincos_pos_embed_2d: embed_dim must be divisible by 4, got ", embed_dim));
  const std::int64_t q = embed_dim / 2;
  // first, and shaped (h, w, D) so the size check sees every factor: a table too large fails before any work
  Tensor<T> out = Tensor<T>::empty({grid_h, grid_w, embed_dim}).reshape({grid_h * grid_w, embed_dim});
  const Tensor<T> col = sincos_pos_embed_1d<T>(q, grid_w), row = sincos_pos_embed_1d<T>(q, grid_h);
  for (std::int64_t y = 0; y < grid_h; ++y)
    for (std::int64_t x = 0; x < grid_w; ++x)
      for (std::int64_t i = 0; i < q; ++i) {
        out(y * grid_w + x, i) = col(x, i);
        out(y * grid_w + x, q + i) = row(y, i);
      }
  return out;
}

// The 3-D table of video MAEs (MAE-ST, VideoMAE / MVD): a quarter of the features encode time
// (the 1-D table over t), three quarters encode space (the 2-D table over h, w); concatenated
// [temporal, spatial] for tokens in (t, h, w) row-major order: (t * h * w, embed_dim).
template <class T = float>
inline Tensor<T> sincos_pos_embed_3d(std::int64_t embed_dim, std::int64_t t, std::int64_t grid_h, std::int64_t grid_w) {
  if (embed_dim % 16 != 0)
    throw ArgumentError(ditto::detail::cat("sincos_pos_embed_3d: embed_dim must be divisible by 16, got ", embed_dim));
  const std::int64_t dt = embed_dim / 4, ds = embed_dim / 4 * 3;
  // first, and shaped (t, h, w, D) so the size check sees every factor: a table too large fails before any work
  Tensor<T> out = Tensor<T>::empty({t, grid_h, grid_w, embed_dim}).reshape({t * grid_h * grid_w, embed_dim});
  const Tensor<T> temporal = sincos_pos_embed_1d<T>(dt, t), spatial = sincos_pos_embed_2d<T>(ds, grid_h, grid_w);
  for (std::int64_t i = 0; i < t; ++i)
    for (std::int64_t p = 0; p < grid_h * grid_w; ++p) {
      T* row = out.data() + (i * grid_h * grid_w + p) * embed_dim;
      std::copy(temporal.data() + i * dt, temporal.data() + (i + 1) * dt, row);
      std::copy(spatial.data() + p * ds, spatial.data() + (p + 1) * ds, row + dt);
    }
  return out;
}

}  // namespace ditto::nn
