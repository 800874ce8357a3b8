// Sampling loops: DDPM (ancestral) and DDIM over any model, seeded, with progress reporting.
//
//   auto model = [&](const Tensor<float>& x, const std::vector<std::int64_t>& t) { return dit.forward(x, t, y); };
//   Generator gen(0);
//   auto x0 = diffusion::ddim_sample_loop<float>(schedule, model, {4, 4, 32, 32}, gen, options);
//
// The model receives the original timesteps (schedule.timestep_map), as upstream's
// SpacedDiffusion gives them. All noise comes from the Generator, so a seed gives the same
// samples for any thread count.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include <unistd.h>

#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "gaussian.hpp"
#include "schedule.hpp"

namespace ditto::diffusion {

// Called after each step with (steps done, total steps).
using Progress = std::function<void(int, int)>;

// A terminal progress bar on stderr (steps, it/s, ETA) when stderr is a terminal; silent
// otherwise, so logs and pipes stay clean.
inline Progress terminal_progress(const char* label = "sampling") {
  if (!::isatty(STDERR_FILENO)) return {};
  auto start = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [start, label](int done, int total) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - *start).count();
    const double rate = done / std::max(secs, 1e-9), eta = (total - done) / std::max(rate, 1e-9);
    const int width = 30, filled = total ? width * done / total : width;
    std::fprintf(stderr, "\r%s [%.*s%*s] %d/%d  %.1f it/s  ETA %.0fs ", label, filled,
                 "##############################", width - filled, "", done, total, rate, eta);
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
}

struct SampleOptions {
  ModelMeanType mean_type = ModelMeanType::epsilon;
  ModelVarType var_type = ModelVarType::learned_range;  // DiT with learn_sigma
  bool clip_denoised = false;                           // DiT's sample.py samples latents unclipped
  double eta = 0.0;                                     // DDIM only
  int channel_dim = 1;                                  // where a learned variance doubles the channels: 2 for Latte
  Progress progress = terminal_progress();
};

namespace detail {
template <class T, class Model>
inline Tensor<T> run_loop(const Schedule& s, Model&& model, const Shape& shape, Generator& gen, const SampleOptions& o,
                          bool ddim, Tensor<T> x) {
  if (x.numel() == 0) x = gen.normal<T>(shape);
  const std::int64_t B = x.size(0);
  for (int i = s.num_timesteps - 1; i >= 0; --i) {
    const std::vector<std::int64_t> t(static_cast<std::size_t>(B), i);
    const std::vector<std::int64_t> t_model(static_cast<std::size_t>(B), s.timestep_map[static_cast<std::size_t>(i)]);
    const Tensor<T> out = model(x, t_model);
    const auto p = p_mean_variance(s, out, x, t, o.mean_type, o.var_type, o.clip_denoised, {}, o.channel_dim);
    const Tensor<T> noise = gen.normal<T>(x.shape());
    x = ddim ? ddim_step(s, p.pred_xstart, x, t, noise, o.eta) : p_sample_step(p, t, noise);
    if (o.progress) o.progress(s.num_timesteps - i, s.num_timesteps);
  }
  return x;
}
}  // namespace detail

// DDPM ancestral sampling (upstream p_sample_loop) from x_T ~ N(0, I), or from `start` if given.
template <class T, class Model>
inline Tensor<T> ddpm_sample_loop(const Schedule& s, Model&& model, const Shape& shape, Generator& gen,
                                  const SampleOptions& options = {}, Tensor<T> start = Tensor<T>()) {
  return detail::run_loop<T>(s, model, shape, gen, options, false, std::move(start));
}

// DDIM sampling (upstream ddim_sample_loop); eta = 0 is the deterministic ODE sampler.
template <class T, class Model>
inline Tensor<T> ddim_sample_loop(const Schedule& s, Model&& model, const Shape& shape, Generator& gen,
                                  const SampleOptions& options = {}, Tensor<T> start = Tensor<T>()) {
  return detail::run_loop<T>(s, model, shape, gen, options, true, std::move(start));
}

}  // namespace ditto::diffusion
