// Euler sampling for flow-matching (rectified-flow) models, in the convention of Stable
// Diffusion 3 / Flux / Open-Sora: x_t = (1 - t) x_0 + t noise for t in [0, 1], and the model
// predicts the velocity v = dx_t/dt = noise - x_0. Sampling integrates dx/dt = v from t = 1 (pure
// noise) down to t = 0 with Euler steps:
//
//     x_{t_next} = x_t + (t_next - t) v(x_t, t)
//
// The times are uniform in t, optionally shifted towards the noisy end by
// t' = shift t / (1 + (shift - 1) t) (SD3's "shift", 3.0 for 1024px images; 1 = none). The model is
// called as model(x, std::vector<double> t) with t in [0, 1]; scale it inside the callable if
// the network expects e.g. 1000 t.
#pragma once

#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "sampler.hpp"
#include "schedule.hpp"

namespace ditto::diffusion {

struct FlowOptions {
  int steps = 50;
  double shift = 1.0;
  Progress progress = terminal_progress("flow euler");
};

// The steps + 1 times from 1 to 0 that flow_euler_sample visits.
inline std::vector<double> flow_timesteps(int steps, double shift = 1.0) {
  if (steps < 1) throw ArgumentError(ditto::detail::cat("flow_euler_sample: expected at least 1 step, got ", steps));
  if (!(shift > 0)) throw ArgumentError(ditto::detail::cat("flow_euler_sample: the shift must be positive, got ", shift));
  auto t = linspace(1.0, 0.0, steps + 1);
  for (auto& v : t) v = shift * v / (1 + (shift - 1) * v);
  return t;
}

// x_1 = noise (from `gen` unless `start` is given) -> x_0.
template <class T, class Model>
inline Tensor<T> flow_euler_sample(Model&& model, const Shape& shape, Generator& gen, const FlowOptions& o = {},
                                   Tensor<T> start = Tensor<T>()) {
  const auto ts = flow_timesteps(o.steps, o.shift);
  Tensor<T> x = start.numel() ? std::move(start) : gen.normal<T>(shape);
  for (int i = 0; i < o.steps; ++i) {
    const double t = ts[static_cast<std::size_t>(i)], dt = ts[static_cast<std::size_t>(i) + 1] - t;
    const Tensor<T> v = model(x, std::vector<double>(static_cast<std::size_t>(x.size(0)), t));
    if (v.shape() != x.shape())
      throw ShapeError(ditto::detail::cat("flow_euler_sample: the model must return a velocity shaped like x ", shape_str(x.shape()),
                                          ", got ", shape_str(v.shape())));
    const T h = static_cast<T>(dt);
    for (std::int64_t j = 0; j < x.numel(); ++j) x[j] += h * v[j];
    if (o.progress) o.progress(i + 1, o.steps);
  }
  return x;
}

}  // namespace ditto::diffusion
