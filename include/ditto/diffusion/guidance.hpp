// Classifier-free guidance (Ho & Salimans): the model runs on a batch of 2B, its first B entries
// conditioned and its last B unconditioned (null label / empty text), and the guided prediction
// uncond + scale * (cond - uncond) replaces both halves.
//
// Which channels are guided is a parameter, because upstream models differ: DiT's
// forward_with_cfg guides the first 3 channels along dim 1 (of (2B, C, H, W)), Latte's the first 4
// along dim 2 (its output is (2B, F, C, H, W)); the plain form guides everything. The rest (e.g. a
// learned variance) is left as the model returned it.
//
//   diffusion::Guidance g{.scale = 4.0, .channels = 3, .dim = 1};          // as DiT
//   diffusion::apply_guidance(out, g, t_model[0]);                           // in place on (2B, ...)
//   auto guided = diffusion::cfg_model<float>(two_b_model, g);               // (x: B) -> output: B
//
// A guidance interval (Kynkaanniemi et al. 2024) applies the scale only for model timesteps in
// [interval_low, interval_high]; elsewhere the conditional prediction is used unchanged.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace ditto::diffusion {

struct Guidance {
  double scale = 1.0;
  std::int64_t channels = -1;  // how many leading entries of `dim` are guided; -1: all
  int dim = 1;                 // the channel dimension of the model output
  double interval_low = -std::numeric_limits<double>::infinity();
  double interval_high = std::numeric_limits<double>::infinity();

  bool active(double t_model) const { return t_model >= interval_low && t_model <= interval_high; }
};

// out: (2B, ...), conditional half first. Writes the guided values into both halves.
template <class T>
inline void apply_guidance(Tensor<T>& out, const Guidance& g, double t_model = 0.0) {
  using ditto::detail::cat;
  if (out.dim() < 1 || out.size(0) % 2 != 0)
    throw ShapeError(cat("apply_guidance: expected a batch of 2B (conditional, then unconditional), got shape ",
                         shape_str(out.shape())));
  if (g.dim < 1 || g.dim >= out.dim())
    throw ArgumentError(cat("apply_guidance: the guided dimension must be in [1, ", out.dim(), ") for an output of shape ",
                            shape_str(out.shape()), ", got dim ", g.dim));
  const std::int64_t n = out.size(g.dim), channels = g.channels < 0 ? n : g.channels;
  if (channels > n)
    throw ShapeError(cat("apply_guidance: asked to guide ", channels, " channels along dim ", g.dim, ", but the output of shape ",
                         shape_str(out.shape()), " has ", n));
  const T scale = static_cast<T>(g.active(t_model) ? g.scale : 1.0);
  // out viewed as (2, B * outer, n, inner): guide rows [0, channels) of the middle axis
  std::int64_t inner = 1, outer = 1;
  for (int d = g.dim + 1; d < out.dim(); ++d) inner *= out.size(d);
  for (int d = 1; d < g.dim; ++d) outer *= out.size(d);
  const std::int64_t half = out.numel() / 2, rows = out.size(0) / 2 * outer;
  T* cond = out.data();
  T* uncond = out.data() + half;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = r * n * inner; i < (r * n + channels) * inner; ++i) {
      const T v = uncond[i] + scale * (cond[i] - uncond[i]);
      cond[i] = v;
      uncond[i] = v;
    }
}

// A sampling-loop model (x: (B, ...), t) from one that takes the doubled batch: x is repeated
// as [x; x], t as [t; t], the two-batch model is called (it must put its null condition on the
// second half), and the guided first half is returned. With scale 1 (or outside the interval)
// the model still runs on 2B; call the conditional model directly to save that.
template <class T, class Model>
inline auto cfg_model(Model two_batch_model, Guidance g) {
  return [model = std::move(two_batch_model), g](const Tensor<T>& x, const std::vector<std::int64_t>& t) {
    Shape shape = x.shape();
    shape[0] *= 2;
    Tensor<T> x2 = Tensor<T>::empty(shape);
    std::copy(x.begin(), x.end(), x2.data());
    std::copy(x.begin(), x.end(), x2.data() + x.numel());
    std::vector<std::int64_t> t2(t);
    t2.insert(t2.end(), t.begin(), t.end());
    Tensor<T> out = model(x2, t2);
    if (out.dim() < 1 || out.size(0) != shape[0])
      throw ShapeError(ditto::detail::cat("cfg_model: the model was given a batch of ", shape[0], " and returned shape ",
                                          shape_str(out.shape())));
    apply_guidance(out, g, t.empty() ? 0.0 : static_cast<double>(t[0]));
    Shape half = out.shape();
    half[0] /= 2;
    Tensor<T> r = Tensor<T>::empty(half);
    std::copy(out.data(), out.data() + r.numel(), r.data());
    return r;
  };
}

// forward_with_cfg's input: the first half of the batch, twice ([x[:B/2]; x[:B/2]]); upstream
// ignores the second half of x and takes the labels of both halves of y.
template <class T>
inline Tensor<T> repeat_first_half(const Tensor<T>& x, const char* model) {
  if (x.dim() < 1 || x.size(0) % 2)
    throw ShapeError(ditto::detail::cat(model, ".forward_with_cfg: expected an even batch (conditional half, then unconditional), got ",
                                        shape_str(x.shape())));
  const std::int64_t half = x.numel() / 2;
  Tensor<T> combined = Tensor<T>::empty(x.shape());
  std::copy(x.data(), x.data() + half, combined.data());
  std::copy(x.data(), x.data() + half, combined.data() + half);
  return combined;
}


}  // namespace ditto::diffusion
