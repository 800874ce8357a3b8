// Parameter initializers with torch.nn.init's formulas, drawn from a ditto Generator (so a seed
// gives the same model on every machine and thread count; the values are not torch's draws).
//
//   nn::xavier_uniform(linear.weight, gen);            // U(-a, a), a = sqrt(6 / (fan_in + fan_out))
//   nn::trunc_normal(vit.pos_embed, gen, 0.02);         // timm's trunc_normal_(std=.02), cut at +-2
//
// Fans are torch's: a weight (out, in, k...) has fan_in = in * prod(k), fan_out = out * prod(k).
// Upstream code that views a convolution's weight as a matrix first (DiT's patch embedding:
// xavier_uniform_(w.view([w.shape[0], -1]))) passes as_matrix, giving fan_out = out.
#pragma once

#include <cmath>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace ditto::nn {

template <class T>
inline void xavier_uniform(Tensor<T>& w, Generator& gen, double gain = 1.0, bool as_matrix = false) {
  if (w.dim() < 2) throw ShapeError("xavier_uniform: expected a weight of at least 2 dimensions, got shape " + shape_str(w.shape()));
  const double receptive = static_cast<double>(w.numel()) / static_cast<double>(w.size(0) * w.size(1));
  const double fan_in = static_cast<double>(w.size(1)) * receptive, fan_out = static_cast<double>(w.size(0)) * (as_matrix ? 1.0 : receptive);
  const double a = gain * std::sqrt(6.0 / (fan_in + fan_out));
  gen.fill_uniform(w, -a, a);
}

// Normal(mean, std) redrawn while outside [lo, hi] (timm's trunc_normal_ takes absolute bounds,
// -2 and 2 by default: with std 0.02 they are 100 standard deviations out, as upstream).
template <class T>
inline void trunc_normal(Tensor<T>& w, Generator& gen, double std = 1.0, double mean = 0.0, double lo = -2.0, double hi = 2.0) {
  if (!(lo < hi) || !(std > 0) || mean - 6 * std > hi || mean + 6 * std < lo)
    throw ArgumentError(ditto::detail::cat("trunc_normal: expected std > 0 and [lo, hi] near the mean, got mean ", mean, ", std ", std, ", [", lo, ", ", hi, "]"));
  gen.fill_normal(w, mean, std);
  Tensor<T> one({1});
  for (auto& v : w)
    while (static_cast<double>(v) < lo || static_cast<double>(v) > hi) {  // rare: a redraw from the same stream
      gen.fill_normal(one, mean, std);
      v = one[0];
    }
}

// torch's default for nn.Linear / nn.Conv*d (kaiming_uniform_(a=sqrt(5)), and the bias alike):
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = the weight's numel / its first size.
template <class T>
inline void default_uniform(Tensor<T>& t, Generator& gen, std::int64_t fan_in) {
  if (fan_in < 1) throw ArgumentError(ditto::detail::cat("default_uniform: fan_in must be >= 1, got ", fan_in));
  const double a = 1.0 / std::sqrt(static_cast<double>(fan_in));
  gen.fill_uniform(t, -a, a);
}

template <class T>
inline void fill_constant(Tensor<T>& w, double value) {
  for (auto& v : w) v = static_cast<T>(value);
}

}  // namespace ditto::nn
