// Image resizing as torch.nn.functional.interpolate(x, size, mode="bicubic", antialias=True)
// (align_corners=False) computes it on float32: the antialiased kernel PyTorch ported from PIL.
// timm resamples a ViT's position table this way when an image has another size than the one it
// was trained at (resample_abs_pos_embed).
//
// Each output pixel i along an axis of n_in -> n_out samples (scale s = n_in / n_out) takes the
// input pixels within a support of 2 max(s, 1) around its center s (i + 0.5), weighted by Keys'
// cubic (a = -0.5) stretched by max(s, 1) and normalized to sum 1; pixels outside the image are
// left out (not clamped). The width is resized first, then the height, as PyTorch does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace ditto::nn {

namespace detail {
// Keys' cubic convolution kernel with a = -0.5 (PyTorch's aa_filter; evaluated in double there).
inline double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// For each output index: the first input index, the count, and the weights (float, as PyTorch's
// _compute_weights_aa computes them for float tensors).
struct AntialiasTaps {
  std::vector<std::int64_t> first, count;
  std::vector<float> weights;  // `width` per output index
  std::int64_t width = 0;
};

inline AntialiasTaps antialias_bicubic_taps(std::int64_t n_in, std::int64_t n_out) {
  AntialiasTaps t;
  const float scale = static_cast<float>(n_in) / static_cast<float>(n_out);
  const float support = scale >= 1.0f ? 2.0f * scale : 2.0f;
  const float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
  t.width = static_cast<std::int64_t>(std::ceil(support)) * 2 + 1;
  t.first.resize(n_out), t.count.resize(n_out), t.weights.assign(static_cast<std::size_t>(n_out * t.width), 0.0f);
  for (std::int64_t i = 0; i < n_out; ++i) {
    const float center = scale * (static_cast<float>(i) + 0.5f);
    const std::int64_t lo = std::max<std::int64_t>(static_cast<std::int64_t>(center - support + 0.5f), 0);
    const std::int64_t size = std::min<std::int64_t>(std::min<std::int64_t>(static_cast<std::int64_t>(center + support + 0.5f), n_in) - lo, t.width);
    float* w = t.weights.data() + i * t.width;
    float total = 0.0f;
    for (std::int64_t j = 0; j < size; ++j) {
      w[j] = static_cast<float>(keys_cubic(static_cast<double>((static_cast<float>(j + lo) - center + 0.5f) * invscale)));
      total += w[j];
    }
    if (total != 0.0f)
      for (std::int64_t j = 0; j < size; ++j) w[j] /= total;
    t.first[i] = lo, t.count[i] = std::max<std::int64_t>(size, 0);
  }
  return t;
}
}  // namespace detail

// x: (N, C, H, W) -> (N, C, out_h, out_w), computed in float32 whatever T is (as timm casts the
// position table to float32 for it), returned as T.
template <class T>
inline Tensor<T> interpolate_bicubic_antialias(const Tensor<T>& x, std::int64_t out_h, std::int64_t out_w) {
  if (x.dim() != 4 || out_h < 1 || out_w < 1)
    throw ShapeError(ditto::detail::cat("interpolate_bicubic_antialias: expected x (N, C, H, W) and a size >= 1, got ", shape_str(x.shape()),
                                        " and ", out_h, " x ", out_w));
  const std::int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  // Every buffer is sized by the request, so each goes through a tensor's checked allocation
  // (MemoryError naming the size), the output first; an empty input plans nothing.
  Tensor<T> out = Tensor<T>::empty({x.size(0), x.size(1), out_h, out_w});
  if (out.numel() == 0) return out;
  if (H == 0 || W == 0)
    throw ShapeError(ditto::detail::cat("interpolate_bicubic_antialias: cannot resize an empty image, got ", shape_str(x.shape())));
  Tensor<float> mid = Tensor<float>::empty({NC, H, out_w});
  detail::AntialiasTaps th, tv;
  try {
    th = detail::antialias_bicubic_taps(W, out_w), tv = detail::antialias_bicubic_taps(H, out_h);
  } catch (const std::bad_alloc&) {
    throw MemoryError(ditto::detail::cat("interpolate_bicubic_antialias: no memory for the taps of a resize to ", out_h, " x ", out_w));
  }
  for (std::int64_t p = 0; p < NC * H; ++p)  // rows: the width first
    for (std::int64_t o = 0; o < out_w; ++o) {
      const T* src = x.data() + p * W + th.first[o];
      const float* w = th.weights.data() + o * th.width;
      float acc = 0.0f;
      for (std::int64_t j = 0; j < th.count[o]; ++j) acc += static_cast<float>(src[j]) * w[j];
      mid[p * out_w + o] = acc;
    }
  for (std::int64_t p = 0; p < NC; ++p)  // then the height
    for (std::int64_t o = 0; o < out_h; ++o) {
      const float* w = tv.weights.data() + o * tv.width;
      for (std::int64_t c = 0; c < out_w; ++c) {
        float acc = 0.0f;
        for (std::int64_t j = 0; j < tv.count[o]; ++j) acc += mid[(p * H + tv.first[o] + j) * out_w + c] * w[j];
        out[(p * out_h + o) * out_w + c] = static_cast<T>(acc);
      }
    }
  return out;
}

// The backward (adjoint) of interpolate_bicubic_antialias: dout (N, C, out_h, out_w) -> dx (N, C,
// in_h, in_w), the same weights transposed (the resize is linear in x), accumulated in T.
template <class T>
inline Tensor<T> interpolate_bicubic_antialias_backward(const Tensor<T>& dout, std::int64_t in_h, std::int64_t in_w) {
  if (dout.dim() != 4 || in_h < 1 || in_w < 1)
    throw ShapeError(ditto::detail::cat("interpolate_bicubic_antialias_backward: expected dout (N, C, h, w) and an input size >= 1, got ",
                                        shape_str(dout.shape()), " and ", in_h, " x ", in_w));
  const std::int64_t NC = dout.size(0) * dout.size(1), out_h = dout.size(2), out_w = dout.size(3);
  Tensor<T> dx({dout.size(0), dout.size(1), in_h, in_w});
  if (dout.numel() == 0) return dx;
  Tensor<T> dmid({NC, in_h, out_w});
  const detail::AntialiasTaps th = detail::antialias_bicubic_taps(in_w, out_w), tv = detail::antialias_bicubic_taps(in_h, out_h);
  for (std::int64_t p = 0; p < NC; ++p)  // the height's transpose
    for (std::int64_t o = 0; o < out_h; ++o) {
      const float* w = tv.weights.data() + o * tv.width;
      for (std::int64_t j = 0; j < tv.count[o]; ++j)
        for (std::int64_t c = 0; c < out_w; ++c)
          dmid[(p * in_h + tv.first[o] + j) * out_w + c] += dout[(p * out_h + o) * out_w + c] * static_cast<T>(w[j]);
    }
  for (std::int64_t p = 0; p < NC * in_h; ++p)  // then the width's
    for (std::int64_t o = 0; o < out_w; ++o) {
      const float* w = th.weights.data() + o * th.width;
      for (std::int64_t j = 0; j < th.count[o]; ++j) dx[p * in_w + th.first[o] + j] += dmid[p * out_w + o] * static_cast<T>(w[j]);
    }
  return dx;
}

}  // namespace ditto::nn
