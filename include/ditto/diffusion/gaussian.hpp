// One step of Gaussian diffusion, as DiT's GaussianDiffusion does it: the forward process
// q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the model's mean and variance (every
// ModelMeanType and ModelVarType), and one DDPM or DDIM step with a given noise. The model call
// itself stays outside: pass its output (called with schedule.timestep_map[t]).
//
// Shapes: x (B, C, ...), t: B spaced timesteps; a learned variance doubles C in model_output.
// Coefficients are taken from the float64 schedule and rounded to T once, as upstream's
// _extract_into_tensor(...).float() does, then the arithmetic runs in T.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "schedule.hpp"

namespace ditto::diffusion {

enum class ModelMeanType { epsilon, start_x, v };  // v: v-prediction (Salimans & Ho), not in DiT
enum class ModelVarType { fixed_small, fixed_large, learned, learned_range };

namespace detail {
template <class T>
inline void check_step(const char* what, const Schedule& s, const Tensor<T>& x, const std::vector<std::int64_t>& t) {
  if (x.dim() < 1 || static_cast<std::int64_t>(t.size()) != x.size(0))
    throw ShapeError(ditto::detail::cat(what, ": expected one timestep per batch entry: x has shape ", shape_str(x.shape()),
                                        ", t has ", t.size(), " entries"));
  if (x.size(0) < 1)  // per-sample means would divide by zero
    throw ShapeError(ditto::detail::cat(what, ": the batch is empty (x has shape ", shape_str(x.shape()), ")"));
  for (auto ti : t)
    if (ti < 0 || ti >= s.num_timesteps)
      throw ArgumentError(ditto::detail::cat(what, ": timestep ", ti, " is outside [0, ", s.num_timesteps, ")"));
}
template <class T>
inline void check_same(const char* what, const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape())
    throw ShapeError(ditto::detail::cat(what, ": expected equal shapes, got ", shape_str(a.shape()), " and ", shape_str(b.shape())));
}
// out[b, i] = f(coefficient index t[b], i) over each batch entry's elements.
template <class T, class F>
inline Tensor<T> per_sample(const Tensor<T>& like, const std::vector<std::int64_t>& t, F&& f) {
  Tensor<T> out = Tensor<T>::empty(like.shape());
  const std::int64_t n = like.numel() / std::max<std::int64_t>(like.size(0), 1);
  for (std::int64_t b = 0; b < like.size(0); ++b)
    for (std::int64_t i = 0; i < n; ++i) out[b * n + i] = f(static_cast<std::size_t>(t[static_cast<std::size_t>(b)]), b * n + i);
  return out;
}
template <class T>
inline T c(const std::vector<double>& arr, std::size_t t) {
  return static_cast<T>(arr[t]);
}
// a*x + b*y rounded as PyTorch computes it: each product rounded, then the sum. Without this the
// compiler may fuse one product into an FMA, which is more accurate but differs from upstream
// where the terms cancel (x_0 from eps at the end of a cosine schedule: coefficients near 3e4).
// Sampling steps touch a latent per call, so the stores cost nothing measurable.
template <class T>
inline T sum_of_products(T a, T x, T b, T y) {
  volatile T p = a * x;
  volatile T q = b * y;
  return p + q;
}
}  // namespace detail

// x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.
template <class T>
inline Tensor<T> q_sample(const Schedule& s, const Tensor<T>& x_start, const std::vector<std::int64_t>& t, const Tensor<T>& noise) {
  detail::check_step("q_sample", s, x_start, t);
  detail::check_same("q_sample(x_start, noise)", x_start, noise);
  return detail::per_sample(x_start, t, [&](std::size_t k, std::int64_t i) {
    return detail::sum_of_products(detail::c<T>(s.sqrt_alphas_cumprod, k), x_start[i],
                                   detail::c<T>(s.sqrt_one_minus_alphas_cumprod, k), noise[i]);
  });
}

template <class T>
struct Gaussian {
  Tensor<T> mean, variance, log_variance;
};

// q(x_{t-1} | x_t, x_0): mean = coef1 x_0 + coef2 x_t, with the posterior variance and its
// clipped log.
template <class T>
inline Gaussian<T> q_posterior_mean_variance(const Schedule& s, const Tensor<T>& x_start, const Tensor<T>& x_t,
                                             const std::vector<std::int64_t>& t) {
  detail::check_step("q_posterior_mean_variance", s, x_t, t);
  detail::check_same("q_posterior_mean_variance(x_start, x_t)", x_start, x_t);
  return {detail::per_sample(x_t, t, [&](std::size_t k, std::int64_t i) {
            return detail::sum_of_products(detail::c<T>(s.posterior_mean_coef1, k), x_start[i],
                                           detail::c<T>(s.posterior_mean_coef2, k), x_t[i]);
          }),
          detail::per_sample(x_t, t, [&](std::size_t k, std::int64_t) { return detail::c<T>(s.posterior_variance, k); }),
          detail::per_sample(x_t, t, [&](std::size_t k, std::int64_t) { return detail::c<T>(s.posterior_log_variance_clipped, k); })};
}

// Conversions between the three things a model may predict.
template <class T>
inline Tensor<T> predict_xstart_from_eps(const Schedule& s, const Tensor<T>& x_t, const std::vector<std::int64_t>& t, const Tensor<T>& eps) {
  detail::check_step("predict_xstart_from_eps", s, x_t, t);
  detail::check_same("predict_xstart_from_eps(x_t, eps)", x_t, eps);
  return detail::per_sample(x_t, t, [&](std::size_t k, std::int64_t i) {
    return detail::sum_of_products(detail::c<T>(s.sqrt_recip_alphas_cumprod, k), x_t[i],
                                   -detail::c<T>(s.sqrt_recipm1_alphas_cumprod, k), eps[i]);
  });
}
template <class T>
inline Tensor<T> predict_eps_from_xstart(const Schedule& s, const Tensor<T>& x_t, const std::vector<std::int64_t>& t, const Tensor<T>& x0) {
  detail::check_step("predict_eps_from_xstart", s, x_t, t);
  detail::check_same("predict_eps_from_xstart(x_t, x_start)", x_t, x0);
  return detail::per_sample(x_t, t, [&](std::size_t k, std::int64_t i) {
    return (detail::c<T>(s.sqrt_recip_alphas_cumprod, k) * x_t[i] - x0[i]) / detail::c<T>(s.sqrt_recipm1_alphas_cumprod, k);
  });
}
// v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, so x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v.
template <class T>
inline Tensor<T> predict_xstart_from_v(const Schedule& s, const Tensor<T>& x_t, const std::vector<std::int64_t>& t, const Tensor<T>& v) {
  detail::check_step("predict_xstart_from_v", s, x_t, t);
  detail::check_same("predict_xstart_from_v(x_t, v)", x_t, v);
  return detail::per_sample(x_t, t, [&](std::size_t k, std::int64_t i) {
    return detail::sum_of_products(detail::c<T>(s.sqrt_alphas_cumprod, k), x_t[i],
                                   -detail::c<T>(s.sqrt_one_minus_alphas_cumprod, k), v[i]);
  });
}
template <class T>
inline Tensor<T> v_from_eps_xstart(const Schedule& s, const Tensor<T>& eps, const std::vector<std::int64_t>& t, const Tensor<T>& x0) {
  detail::check_step("v_from_eps_xstart", s, eps, t);
  detail::check_same("v_from_eps_xstart(eps, x_start)", eps, x0);
  return detail::per_sample(eps, t, [&](std::size_t k, std::int64_t i) {
    return detail::sum_of_products(detail::c<T>(s.sqrt_alphas_cumprod, k), eps[i],
                                   -detail::c<T>(s.sqrt_one_minus_alphas_cumprod, k), x0[i]);
  });
}

template <class T>
struct ModelPrediction {
  Tensor<T> mean, variance, log_variance, pred_xstart;
};

namespace detail {
// Splits a model output with a learned variance into its mean and variance halves along
// `channel_dim`: x (B, ..., C, ...) and out (B, ..., 2C, ...) with C at channel_dim (1 for
// images, 2 for Latte's (B, F, C, H, W) videos). Without a learned variance, out must be x-shaped.
template <class T>
inline std::pair<Tensor<T>, Tensor<T>> split_output(const char* what, const Tensor<T>& out, const Tensor<T>& x, bool learned,
                                                     int channel_dim) {
  const int d = channel_dim;
  bool ok = x.dim() >= 2 && d >= 1 && d < x.dim() && out.dim() == x.dim();
  for (int i = 0; ok && i < x.dim(); ++i) ok = out.size(i) == (i == d && learned ? 2 * x.size(i) : x.size(i));
  if (!ok)
    throw ShapeError(ditto::detail::cat(what, ": x has shape ", shape_str(x.shape()), ", so the model output must have ",
                                        d >= 1 && d < x.dim() ? x.size(d) * (learned ? 2 : 1) : 0, " channels",
                                        learned ? " (mean and variance)" : "", " along dim ", d, ", got shape ", shape_str(out.shape())));
  if (!learned) return {out.clone(), Tensor<T>()};  // a copy: clipping x_0 must not touch the model's output
  std::int64_t outer = 1, block = 1;  // block: one channel group's values, C * inner
  for (int i = 0; i < d; ++i) outer *= x.size(i);
  for (int i = d; i < x.dim(); ++i) block *= x.size(i);
  Tensor<T> mean = Tensor<T>::empty(x.shape()), var = Tensor<T>::empty(x.shape());
  for (std::int64_t o = 0; o < outer; ++o) {
    const T* src = out.data() + o * 2 * block;
    std::copy(src, src + block, mean.data() + o * block);
    std::copy(src + block, src + 2 * block, var.data() + o * block);
  }
  return {mean, var};
}
}  // namespace detail

// p(x_{t-1} | x_t) from the model's output. learned / learned_range: model_output has 2C
// channels (along channel_dim: 1 for images, 2 for Latte's videos), the second C giving the
// log-variance (learned) or its position in [log posterior variance, log beta] as values in
// [-1, 1] (learned_range, improved DDPM / DiT). clip_denoised clamps the predicted x_0 to
// [-1, 1]; denoised_fn (optional) is applied before.
template <class T>
inline ModelPrediction<T> p_mean_variance(const Schedule& s, const Tensor<T>& model_output, const Tensor<T>& x,
                                          const std::vector<std::int64_t>& t, ModelMeanType mean_type, ModelVarType var_type,
                                          bool clip_denoised = true,
                                          const std::function<Tensor<T>(const Tensor<T>&)>& denoised_fn = {}, int channel_dim = 1) {
  detail::check_step("p_mean_variance", s, x, t);
  const bool learned = var_type == ModelVarType::learned || var_type == ModelVarType::learned_range;
  auto [out, var_values] = detail::split_output("p_mean_variance", model_output, x, learned, channel_dim);
  ModelPrediction<T> r;
  if (var_type == ModelVarType::learned) {
    r.log_variance = var_values;
  } else if (var_type == ModelVarType::learned_range) {
    r.log_variance = detail::per_sample(x, t, [&](std::size_t k, std::int64_t i) {
      const T min_log = detail::c<T>(s.posterior_log_variance_clipped, k), max_log = static_cast<T>(std::log(s.betas[k]));
      const T frac = (var_values[i] + T(1)) / T(2);
      return frac * max_log + (T(1) - frac) * min_log;
    });
  } else if (var_type == ModelVarType::fixed_large) {
    // the first step uses the posterior variance, for a better decoder likelihood (upstream)
    const auto var = [&](std::size_t k) { return k == 0 ? s.posterior_variance[s.num_timesteps > 1 ? 1 : 0] : s.betas[k]; };
    r.variance = detail::per_sample(x, t, [&](std::size_t k, std::int64_t) { return static_cast<T>(var(k)); });
    r.log_variance = detail::per_sample(x, t, [&](std::size_t k, std::int64_t) { return static_cast<T>(std::log(var(k))); });
  } else {
    r.variance = detail::per_sample(x, t, [&](std::size_t k, std::int64_t) { return detail::c<T>(s.posterior_variance, k); });
    r.log_variance = detail::per_sample(x, t, [&](std::size_t k, std::int64_t) { return detail::c<T>(s.posterior_log_variance_clipped, k); });
  }
  if (learned) {
    r.variance = Tensor<T>::empty(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) r.variance[i] = std::exp(r.log_variance[i]);
  }
  Tensor<T> x0 = mean_type == ModelMeanType::start_x ? out
                 : mean_type == ModelMeanType::v ? predict_xstart_from_v(s, x, t, out)
                                                 : predict_xstart_from_eps(s, x, t, out);
  if (denoised_fn) x0 = denoised_fn(x0);
  if (clip_denoised)
    for (auto& v : x0) v = std::clamp(v, T(-1), T(1));
  r.pred_xstart = x0;
  r.mean = q_posterior_mean_variance(s, x0, x, t).mean;
  return r;
}

// One ancestral (DDPM) step: x_{t-1} = mean + [t > 0] exp(log_variance / 2) noise.
template <class T>
inline Tensor<T> p_sample_step(const ModelPrediction<T>& p, const std::vector<std::int64_t>& t, const Tensor<T>& noise) {
  detail::check_same("p_sample_step(mean, noise)", p.mean, noise);
  return detail::per_sample(p.mean, t, [&](std::size_t k, std::int64_t i) {
    return p.mean[i] + (k != 0 ? std::exp(T(0.5) * p.log_variance[i]) * noise[i] : T(0));
  });
}

// One DDIM step (Song et al., eq. 12) from the predicted x_0; eta = 0 is deterministic, eta = 1
// matches DDPM's variance.
template <class T>
inline Tensor<T> ddim_step(const Schedule& s, const Tensor<T>& pred_xstart, const Tensor<T>& x, const std::vector<std::int64_t>& t,
                           const Tensor<T>& noise, double eta = 0.0) {
  detail::check_same("ddim_step(x, noise)", x, noise);
  const Tensor<T> eps = predict_eps_from_xstart(s, x, t, pred_xstart);
  return detail::per_sample(x, t, [&](std::size_t k, std::int64_t i) {
    const T ab = detail::c<T>(s.alphas_cumprod, k), abp = detail::c<T>(s.alphas_cumprod_prev, k);
    const T sigma = static_cast<T>(eta) * std::sqrt((T(1) - abp) / (T(1) - ab)) * std::sqrt(T(1) - ab / abp);
    const T mean = pred_xstart[i] * std::sqrt(abp) + std::sqrt(T(1) - abp - sigma * sigma) * eps[i];
    return mean + (k != 0 ? sigma * noise[i] : T(0));
  });
}

}  // namespace ditto::diffusion
