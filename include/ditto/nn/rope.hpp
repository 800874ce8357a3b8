// Rotary position embeddings (RoFormer, Su et al. 2021): each pair of features of a query or key
// is rotated by an angle proportional to the token's position, so q.k depends on relative
// position only.
//
//   interleaved = true:  pairs (x0, x1), (x2, x3), ...  (RoFormer, rotary-embedding-torch)
//   interleaved = false: pairs (x_i, x_{i+D/2})         (GPT-NeoX, rotate_half)
//   angle of pair i at position p: p * theta^(-2i / D)
//
// rope_3d splits the head dim into three parts rotated by a token's (t, h, w) coordinates: the
// spacetime form video transformers use.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"

namespace ditto::nn {

namespace detail {
// Rotates the features [off, off + dim) of a row by angles pos * inv_freq.
template <class T>
inline void rotate_row(T* row, std::int64_t off, std::int64_t dim, double pos, double theta, bool interleaved) {
  const std::int64_t half = dim / 2;
  for (std::int64_t i = 0; i < half; ++i) {
    const double ang = pos * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    const T c = static_cast<T>(std::cos(ang)), s = static_cast<T>(std::sin(ang));
    T* a = row + off + (interleaved ? 2 * i : i);
    T* b = row + off + (interleaved ? 2 * i + 1 : i + half);
    const T x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x0 * s + x1 * c;
  }
}
}  // namespace detail

// x: (..., N, D), positions: N values (or empty: 0..N-1). Returns the rotated copy.
template <class T>
inline Tensor<T> rope(const Tensor<T>& x, std::vector<double> positions = {}, double theta = 10000.0,
                      bool interleaved = true) {
  if (x.dim() < 2 || x.size(-1) % 2)
    throw ShapeError(ditto::detail::cat("rope: expected (..., N, D) with D even, got ", shape_str(x.shape())));
  const std::int64_t N = x.size(-2), D = x.size(-1), rows = x.numel() / D;
  if (positions.empty())
    for (std::int64_t i = 0; i < N; ++i) positions.push_back(static_cast<double>(i));
  if (static_cast<std::int64_t>(positions.size()) != N)
    throw ShapeError(ditto::detail::cat("rope: ", positions.size(), " positions for ", N, " tokens"));
  Tensor<T> y = x.clone();
  parallel_for(rows, rows * D * 8, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) detail::rotate_row(y.data() + r * D, 0, D, positions[static_cast<std::size_t>(r % N)], theta, interleaved);
  });
  return y;
}

// rope's backward: a rotation's transpose is the rotation by the opposite angle, so dx is dy
// rotated by -pos (the same positions, theta and layout as the forward).
template <class T>
inline Tensor<T> rope_backward(const Tensor<T>& dy, std::vector<double> positions = {}, double theta = 10000.0, bool interleaved = true) {
  if (dy.dim() < 2) throw ShapeError(ditto::detail::cat("rope_backward: expected (..., N, D), got ", shape_str(dy.shape())));
  if (positions.empty())
    for (std::int64_t i = 0; i < dy.size(-2); ++i) positions.push_back(static_cast<double>(i));
  for (auto& p : positions) p = -p;
  return rope(dy, positions, theta, interleaved);
}

// x: (..., N, D) with N = T * H * W tokens in (t, h, w) row-major order; the head dim is split
// into dims[0] + dims[1] + dims[2] = D features rotated by t, h and w respectively. sign = -1
// rotates the other way: rope_3d's backward (rope_3d_backward).
template <class T>
inline Tensor<T> rope_3d(const Tensor<T>& x, std::array<std::int64_t, 3> grid, std::array<std::int64_t, 3> dims,
                         double theta = 10000.0, bool interleaved = true, double sign = 1.0) {
  const std::int64_t D = x.size(-1), N = x.dim() >= 2 ? x.size(-2) : 0;
  if (x.dim() < 2 || dims[0] + dims[1] + dims[2] != D || dims[0] % 2 || dims[1] % 2 || dims[2] % 2 ||
      grid[0] * grid[1] * grid[2] != N)
    throw ShapeError(ditto::detail::cat("rope_3d: expected (..., ", grid[0] * grid[1] * grid[2], ", ", dims[0] + dims[1] + dims[2],
                                        ") with even parts, got ", shape_str(x.shape())));
  Tensor<T> y = x.clone();
  const std::int64_t rows = x.numel() / D;
  parallel_for(rows, rows * D * 8, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const std::int64_t n = r % N, t = n / (grid[1] * grid[2]), h = (n / grid[2]) % grid[1], w = n % grid[2];
      T* row = y.data() + r * D;
      detail::rotate_row(row, 0, dims[0], sign * static_cast<double>(t), theta, interleaved);
      detail::rotate_row(row, dims[0], dims[1], sign * static_cast<double>(h), theta, interleaved);
      detail::rotate_row(row, dims[0] + dims[1], dims[2], sign * static_cast<double>(w), theta, interleaved);
    }
  });
  return y;
}
template <class T>
inline Tensor<T> rope_3d_backward(const Tensor<T>& dy, std::array<std::int64_t, 3> grid, std::array<std::int64_t, 3> dims,
                                  double theta = 10000.0, bool interleaved = true) {
  return rope_3d(dy, grid, dims, theta, interleaved, -1.0);
}

}  // namespace ditto::nn
