// Training losses, as DiT's GaussianDiffusion.training_losses computes them: the simple MSE on
// the model's prediction (epsilon, x_0 or v), plus, for a learned variance, the variational-bound
// term of improved DDPM (KL between the true and the model's posterior, or the decoder's
// discretized Gaussian log-likelihood at t = 0), in bits per dimension.
//
//   auto t = diffusion::sample_timesteps(gen, B, s.num_timesteps);       // uniform over [0, T)
//   auto noise = gen.normal<float>(x0.shape());
//   auto x_t = diffusion::q_sample(s, x0, t, noise);
//   auto terms = diffusion::training_losses(s, model(x_t, t), x0, x_t, t, noise, options);
//   terms.loss[b];   // = mse[b] + vb[b] per sample; average over the batch for the objective
//
// The vb term sees the mean part of the output as a constant (upstream's detach): when backward
// passes arrive, its gradient flows into the variance channels only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "gaussian.hpp"
#include "schedule.hpp"

namespace ditto::diffusion {

// MSE: the simple loss (+ vb when the variance is learned). rescaled_mse: vb scaled by T / 1000
// (upstream's rescale_learned_sigmas). kl: the variational bound alone; rescaled_kl: times T.
enum class LossType { mse, rescaled_mse, kl, rescaled_kl };

struct LossOptions {
  ModelMeanType mean_type = ModelMeanType::epsilon;
  ModelVarType var_type = ModelVarType::learned_range;  // DiT with learn_sigma
  LossType loss_type = LossType::mse;                   // DiT's default (rescale_learned_sigmas=False)
  int channel_dim = 1;                                  // 2 for Latte's (B, F, C, H, W) videos
  // Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
  // Weighting Strategy"; diffusers' --snr_gamma): 0 = off (upstream DiT). Otherwise sample b's
  // mse term is multiplied by min(SNR_t, gamma) / SNR_t for epsilon, min(SNR_t, gamma) for x_0
  // and min(SNR_t, gamma) / (SNR_t + 1) for v, with SNR_t = abar_t / (1 - abar_t): the nearly
  // clean steps, whose targets conflict with the noisy ones', stop dominating the gradient.
  // The vb term is not weighted.
  double snr_gamma = 0;
};

// Per-sample terms, each of length B. mse / vb are empty where the loss type has none.
template <class T>
struct LossTerms {
  std::vector<T> loss, mse, vb;
};

// Timesteps drawn uniformly from [0, num_timesteps), one per batch entry (upstream's
// UniformSampler), from the Generator so a seed fixes them.
inline std::vector<std::int64_t> sample_timesteps(Generator& gen, std::int64_t batch, int num_timesteps) {
  if (batch < 0 || num_timesteps < 1)
    throw ArgumentError(ditto::detail::cat("sample_timesteps: expected a batch >= 0 and at least one timestep, got batch ",
                                           batch, " and ", num_timesteps, " timesteps"));
  const Tensor<double> u = gen.uniform<double>({batch});
  std::vector<std::int64_t> t(static_cast<std::size_t>(batch));
  for (std::int64_t b = 0; b < batch; ++b)
    t[static_cast<std::size_t>(b)] = std::min<std::int64_t>(static_cast<std::int64_t>(u[b] * num_timesteps), num_timesteps - 1);
  return t;
}

// KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), element-wise, in nats.
template <class T>
inline T normal_kl(T mean1, T logvar1, T mean2, T logvar2) {
  const T d = mean1 - mean2;
  return T(0.5) * (T(-1) + logvar2 - logvar1 + std::exp(logvar1 - logvar2) + d * d * std::exp(-logvar2));
}

// The tanh approximation of the standard normal CDF that upstream uses (as GELU's).
template <class T>
inline T approx_standard_normal_cdf(T x) {
  return T(0.5) * (T(1) + std::tanh(static_cast<T>(0.7978845608028654) * (x + T(0.044715) * x * x * x)));
}

// log P(x | N(mean, e^(2 log_scale))) for x an 8-bit image scaled to [-1, 1]: the Gaussian mass of
// x's bin of width 2/255, the outer bins reaching to -inf / +inf. In nats.
template <class T>
inline T discretized_gaussian_log_likelihood(T x, T mean, T log_scale) {
  const T inv_stdv = std::exp(-log_scale), centered = x - mean;
  const T cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + T(1) / T(255)));
  const T cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - T(1) / T(255)));
  if (x < T(-0.999)) return std::log(std::max(cdf_plus, T(1e-12)));
  if (x > T(0.999)) return std::log(std::max(T(1) - cdf_min, T(1e-12)));
  return std::log(std::max(cdf_plus - cdf_min, T(1e-12)));
}

namespace detail {
// What the mean channels are trained to predict: the noise, x_0 or v.
template <class T>
inline Tensor<T> mse_target(const Schedule& s, const Tensor<T>& x_start, const std::vector<std::int64_t>& t, const Tensor<T>& noise,
                            ModelMeanType mean_type) {
  return mean_type == ModelMeanType::epsilon ? noise : mean_type == ModelMeanType::start_x ? x_start : v_from_eps_xstart(s, noise, t, x_start);
}

// Upstream's _vb_terms_bpd with clip_denoised=False, per sample, in bits: the decoder NLL at
// t = 0, the KL to the true posterior elsewhere.
template <class T>
inline std::vector<T> vb_terms_bpd(const Schedule& s, const Tensor<T>& model_output, const Tensor<T>& x_start,
                                   const Tensor<T>& x_t, const std::vector<std::int64_t>& t, ModelMeanType mean_type,
                                   ModelVarType var_type, int channel_dim) {
  const auto truth = q_posterior_mean_variance(s, x_start, x_t, t);
  const auto p = p_mean_variance(s, model_output, x_t, t, mean_type, var_type, /*clip_denoised=*/false, {}, channel_dim);
  const std::int64_t B = x_t.size(0), per = x_t.numel() / B;
  std::vector<T> out(static_cast<std::size_t>(B));
  for (std::int64_t b = 0; b < B; ++b) {
    T acc = 0;  // mean_flat in T, as upstream sums in its dtype
    if (t[static_cast<std::size_t>(b)] == 0)
      for (std::int64_t i = b * per; i < (b + 1) * per; ++i)
        acc += -discretized_gaussian_log_likelihood(x_start[i], p.mean[i], T(0.5) * p.log_variance[i]);
    else
      for (std::int64_t i = b * per; i < (b + 1) * per; ++i)
        acc += normal_kl(truth.mean[i], truth.log_variance[i], p.mean[i], p.log_variance[i]);
    out[static_cast<std::size_t>(b)] = acc / static_cast<T>(per) / static_cast<T>(std::log(2.0));
  }
  return out;
}
}  // namespace detail

namespace detail {
// The mse term's weight at step k: 1, or Min-SNR-gamma's (see LossOptions::snr_gamma).
inline double mse_weight(const Schedule& s, std::int64_t k, const LossOptions& o) {
  if (o.snr_gamma <= 0) return 1.0;
  const double a = s.alphas_cumprod[static_cast<std::size_t>(k)], snr = a / (1.0 - a), m = std::min(snr, o.snr_gamma);
  switch (o.mean_type) {
    case ModelMeanType::epsilon: return m / snr;
    case ModelMeanType::start_x: return m;
    default: return m / (snr + 1.0);  // v
  }
}
}  // namespace detail

// The loss terms for one batch, from the model's output on x_t = q_sample(x_start, t, noise).
template <class T>
inline LossTerms<T> training_losses(const Schedule& s, const Tensor<T>& model_output, const Tensor<T>& x_start,
                                    const Tensor<T>& x_t, const std::vector<std::int64_t>& t, const Tensor<T>& noise,
                                    const LossOptions& o = {}) {
  detail::check_step("training_losses", s, x_t, t);
  detail::check_same("training_losses(x_start, x_t)", x_start, x_t);
  detail::check_same("training_losses(x_start, noise)", x_start, noise);
  const bool learned = o.var_type == ModelVarType::learned || o.var_type == ModelVarType::learned_range;
  const Tensor<T> pred = detail::split_output("training_losses", model_output, x_t, learned, o.channel_dim).first;  // the mean part
  const std::int64_t B = x_t.size(0), per = x_t.numel() / B;
  LossTerms<T> r;
  if (o.loss_type == LossType::kl || o.loss_type == LossType::rescaled_kl) {
    r.loss = detail::vb_terms_bpd(s, model_output, x_start, x_t, t, o.mean_type, o.var_type, o.channel_dim);
    if (o.loss_type == LossType::rescaled_kl)
      for (auto& v : r.loss) v *= static_cast<T>(s.num_timesteps);
    return r;
  }
  if (learned) {
    r.vb = detail::vb_terms_bpd(s, model_output, x_start, x_t, t, o.mean_type, o.var_type, o.channel_dim);
    if (o.loss_type == LossType::rescaled_mse)
      for (auto& v : r.vb) v *= static_cast<T>(s.num_timesteps / 1000.0);
  }
  const Tensor<T> target = detail::mse_target(s, x_start, t, noise, o.mean_type);
  r.mse.resize(static_cast<std::size_t>(B));
  r.loss.resize(static_cast<std::size_t>(B));
  for (std::int64_t b = 0; b < B; ++b) {
    const T* pb = pred.data() + b * per;
    const T* tgt = target.data() + b * per;
    T acc = 0;
    for (std::int64_t i = 0; i < per; ++i) acc += (tgt[i] - pb[i]) * (tgt[i] - pb[i]);
    const auto k = static_cast<std::size_t>(b);
    r.mse[k] = acc / static_cast<T>(per) * static_cast<T>(detail::mse_weight(s, t[k], o));
    r.loss[k] = r.mse[k] + (learned ? r.vb[k] : T(0));
  }
  return r;
}

namespace detail {
// d/d log_scale of discretized_gaussian_log_likelihood (0 where its 1e-12 floor holds).
template <class T>
inline T discretized_gaussian_log_likelihood_dlogscale(T x, T mean, T log_scale) {
  const T inv_stdv = std::exp(-log_scale), centered = x - mean, k = static_cast<T>(0.7978845608028654), c = T(0.044715);
  auto cdf_and_slope = [&](T u, T& slope) {  // the tanh CDF and its derivative in log_scale (du/dls = -u)
    const T th = std::tanh(k * (u + c * u * u * u));
    slope = T(0.5) * (T(1) - th * th) * k * (T(1) + T(3) * c * u * u) * -u;
    return T(0.5) * (T(1) + th);
  };
  T s_plus, s_min;
  const T cdf_plus = cdf_and_slope(inv_stdv * (centered + T(1) / T(255)), s_plus);
  const T cdf_min = cdf_and_slope(inv_stdv * (centered - T(1) / T(255)), s_min);
  if (x < T(-0.999)) return cdf_plus > T(1e-12) ? s_plus / cdf_plus : T(0);
  if (x > T(0.999)) return T(1) - cdf_min > T(1e-12) ? -s_min / (T(1) - cdf_min) : T(0);
  return cdf_plus - cdf_min > T(1e-12) ? (s_plus - s_min) / (cdf_plus - cdf_min) : T(0);
}
}  // namespace detail

// The gradient of sum_b weight[b] * loss[b] (default weight 1/B: the batch mean DiT trains on)
// with respect to the model's output, for the mse and rescaled_mse losses. As upstream, the vb
// term sees the mean channels detached: it reaches only the variance channels, and the mse only
// the mean channels. (The kl losses, where vb trains the mean too, are refused.)
template <class T>
inline Tensor<T> training_losses_grad(const Schedule& s, const Tensor<T>& model_output, const Tensor<T>& x_start, const Tensor<T>& x_t,
                                      const std::vector<std::int64_t>& t, const Tensor<T>& noise, const LossOptions& o = {},
                                      std::vector<T> weight = {}) {
  detail::check_step("training_losses_grad", s, x_t, t);
  detail::check_same("training_losses_grad(x_start, x_t)", x_start, x_t);
  detail::check_same("training_losses_grad(x_start, noise)", x_start, noise);
  if (o.loss_type != LossType::mse && o.loss_type != LossType::rescaled_mse)
    throw ArgumentError("training_losses_grad: only the mse and rescaled_mse losses have a gradient here (the kl losses train the mean through vb)");
  const bool learned = o.var_type == ModelVarType::learned || o.var_type == ModelVarType::learned_range;
  const auto [pred, var_values] = detail::split_output("training_losses_grad", model_output, x_t, learned, o.channel_dim);
  const std::int64_t B = x_t.size(0), per = x_t.numel() / B;
  if (weight.empty()) weight.assign(static_cast<std::size_t>(B), T(1) / static_cast<T>(B));
  if (static_cast<std::int64_t>(weight.size()) != B)
    throw ShapeError(ditto::detail::cat("training_losses_grad: expected ", B, " weights, got ", weight.size()));
  const Tensor<T> target = detail::mse_target(s, x_start, t, noise, o.mean_type);
  Tensor<T> dmean(x_t.shape()), dvar(learned ? x_t.shape() : Shape{0});
  for (std::int64_t b = 0; b < B; ++b) {
    const T wb = weight[static_cast<std::size_t>(b)] * static_cast<T>(detail::mse_weight(s, t[static_cast<std::size_t>(b)], o));
    for (std::int64_t i = b * per; i < (b + 1) * per; ++i) dmean[i] = T(-2) * (target[i] - pred[i]) / static_cast<T>(per) * wb;
  }
  if (learned) {
    const auto truth = q_posterior_mean_variance(s, x_start, x_t, t);
    const auto p = p_mean_variance(s, model_output, x_t, t, o.mean_type, o.var_type, /*clip_denoised=*/false, {}, o.channel_dim);
    const T rescale = o.loss_type == LossType::rescaled_mse ? static_cast<T>(s.num_timesteps / 1000.0) : T(1);
    for (std::int64_t b = 0; b < B; ++b) {
      const auto k = static_cast<std::size_t>(t[static_cast<std::size_t>(b)]);
      // d log_variance / d var_values: learned_range interpolates between log posterior variance and log beta
      const T dlv = o.var_type == ModelVarType::learned_range
                        ? T(0.5) * (static_cast<T>(std::log(s.betas[k])) - static_cast<T>(s.posterior_log_variance_clipped[k]))
                        : T(1);
      const T scale = dlv / static_cast<T>(per) / static_cast<T>(std::log(2.0)) * rescale * weight[static_cast<std::size_t>(b)];
      for (std::int64_t i = b * per; i < (b + 1) * per; ++i) {
        const T lv2 = p.log_variance[i];
        T g;
        if (k == 0) {  // decoder NLL: -log P, with log_scale = lv2 / 2
          g = T(-0.5) * detail::discretized_gaussian_log_likelihood_dlogscale(x_start[i], p.mean[i], T(0.5) * lv2);
        } else {  // d KL(truth || model) / d lv2
          const T d = truth.mean[i] - p.mean[i];
          g = T(0.5) * (T(1) - std::exp(truth.log_variance[i] - lv2) - d * d * std::exp(-lv2));
        }
        dvar[i] = g * scale;
      }
    }
  }
  if (!learned) return dmean;
  // back into the output's layout: per leading index, the mean block then the variance block
  const int d = o.channel_dim;
  std::int64_t outer = 1, block = 1;
  for (int i = 0; i < d; ++i) outer *= x_t.size(i);
  for (int i = d; i < x_t.dim(); ++i) block *= x_t.size(i);
  Tensor<T> grad = Tensor<T>::empty(model_output.shape());
  for (std::int64_t r = 0; r < outer; ++r) {
    std::copy(dmean.data() + r * block, dmean.data() + (r + 1) * block, grad.data() + r * 2 * block);
    std::copy(dvar.data() + r * block, dvar.data() + (r + 1) * block, grad.data() + r * 2 * block + block);
  }
  return grad;
}

// As above, calling the model: model(x_t, timestep_map[t]) -> output.
template <class T, class Model>
inline LossTerms<T> training_losses(const Schedule& s, Model&& model, const Tensor<T>& x_start,
                                    const std::vector<std::int64_t>& t, const Tensor<T>& noise, const LossOptions& o = {}) {
  const Tensor<T> x_t = q_sample(s, x_start, t, noise);
  std::vector<std::int64_t> t_model(t.size());
  for (std::size_t i = 0; i < t.size(); ++i) t_model[i] = s.timestep_map[static_cast<std::size_t>(t[i])];
  return training_losses(s, static_cast<const Tensor<T>&>(model(x_t, t_model)), x_start, x_t, t, noise, o);
}

}  // namespace ditto::diffusion
