// DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): fast ODE samplers for diffusion
// models, in the two forms people use.
//
// 1. dpm_solver_sample: the singlestep solver of U-ViT's dpm_solver_pytorch.py on a VP noise
//    schedule in continuous time (NoiseScheduleVP: "linear" beta 0.1..20, "cosine", or "discrete"
//    from betas as dpm_solver_pp.py interpolates them). Its default, DPM-Solver-fast, spends
//    `steps` model calls on K = steps / 3 + 1 steps uniform in logSNR, of order 3 (the last one or
//    two of order 2 or 1). The model predicts noise and gets continuous times t in [eps, T]:
//        model(x, std::vector<double> t) -> eps
//    (a discrete-time model trained on 0..N-1 takes 1000 * max(t - 1/N, 0), upstream's
//    time_input_type '1', or N * t as U-ViT's discrete scripts pass it).
//
// 2. dpmpp_sample_loop: DPM-Solver++ multistep (2M by default) as diffusers'
//    DPMSolverMultistepScheduler runs with its defaults (timestep_spacing "linspace", midpoint,
//    lower_order_final, final sigma 0) on a discrete Schedule; the model gets integer timesteps:
//        model(x, std::vector<int64_t> t) -> eps, x_0 or v   (2C channels allowed: the first C are used)
//
// Per step, coefficients are computed once in double; the element-wise work runs in T.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "gaussian.hpp"
#include "sampler.hpp"
#include "schedule.hpp"

namespace ditto::diffusion {

// alpha_t, sigma_t and the half-logSNR lambda_t = log(alpha_t / sigma_t) of a VP process in
// continuous time t in [0, T].
struct NoiseScheduleVP {
  enum class Kind { linear, cosine, discrete };
  Kind kind = Kind::linear;
  double beta_0 = 0.1, beta_1 = 20.0;  // linear: the continuous betas (1000x DDPM's)
  double T = 1.0;                       // where sampling starts by default
  std::vector<double> t_knots, log_alpha_knots;  // discrete: log alpha at t = 1/N, 2/N, ..., 1

  static NoiseScheduleVP linear(double beta_0 = 0.1, double beta_1 = 20.0) {
    NoiseScheduleVP s;
    s.beta_0 = beta_0;
    s.beta_1 = beta_1;
    return s;
  }
  // improved DDPM's cosine schedule; T = 0.9946 because log alpha diverges at t = 1 (upstream)
  static NoiseScheduleVP cosine() {
    NoiseScheduleVP s;
    s.kind = Kind::cosine;
    s.T = 0.9946;
    return s;
  }
  // A discrete-time model's betas, log alpha interpolated piecewise-linearly in t (dpm_solver_pp.py).
  static NoiseScheduleVP discrete(const std::vector<double>& betas) {
    if (betas.size() < 2) throw ArgumentError("NoiseScheduleVP::discrete: expected at least 2 betas");
    NoiseScheduleVP s;
    s.kind = Kind::discrete;
    const double N = static_cast<double>(betas.size());
    double acc = 0;
    for (std::size_t i = 0; i < betas.size(); ++i) {
      if (!(betas[i] > 0 && betas[i] < 1))
        throw ArgumentError(ditto::detail::cat("NoiseScheduleVP::discrete: every beta must be in (0, 1), beta[", i, "] = ", betas[i]));
      acc += std::log1p(-betas[i]);
      s.log_alpha_knots.push_back(0.5 * acc);
    }
    s.t_knots = linspace(1.0 / N, 1.0, static_cast<int>(betas.size()));
    return s;
  }

  double log_alpha(double t) const {
    switch (kind) {
      case Kind::linear: return -0.25 * t * t * (beta_1 - beta_0) - 0.5 * t * beta_0;
      case Kind::cosine: return std::log(std::cos((t + cs) / (1 + cs) * pi / 2)) - std::log(std::cos(cs / (1 + cs) * pi / 2));
      case Kind::discrete: return interpolate(t, t_knots, log_alpha_knots, false);
    }
    return 0;
  }
  double alpha(double t) const { return std::exp(log_alpha(t)); }
  double sigma(double t) const { return std::sqrt(-std::expm1(2 * log_alpha(t))); }
  double lambda(double t) const {
    const double la = log_alpha(t);
    return la - 0.5 * std::log(-std::expm1(2 * la));
  }
  // t with lambda(t) = l.
  double inverse_lambda(double l) const {
    const double lae = logaddexp0(-2 * l);  // log(1 + e^{-2l}) = -2 log alpha
    switch (kind) {
      case Kind::linear: {
        const double tmp = 2 * (beta_1 - beta_0) * lae, delta = beta_0 * beta_0 + tmp;
        return tmp / (std::sqrt(delta) + beta_0) / (beta_1 - beta_0);
      }
      case Kind::cosine:
        return std::acos(std::exp(-0.5 * lae + std::log(std::cos(cs / (1 + cs) * pi / 2)))) * 2 * (1 + cs) / pi - cs;
      case Kind::discrete: return interpolate(-0.5 * lae, log_alpha_knots, t_knots, true);
    }
    return 0;
  }

 private:
  static constexpr double pi = 3.14159265358979323846, cs = 0.008;
  static double logaddexp0(double a) { return a > 0 ? a + std::log1p(std::exp(-a)) : std::log1p(std::exp(a)); }
  // Piecewise-linear through (xs, ys), the outer segments extended; xs increasing, or decreasing
  // when `reversed` (then walked from the back).
  static double interpolate(double x, const std::vector<double>& xs, const std::vector<double>& ys, bool reversed) {
    const std::size_t K = xs.size();
    auto X = [&](std::size_t i) { return reversed ? xs[K - 1 - i] : xs[i]; };
    auto Y = [&](std::size_t i) { return reversed ? ys[K - 1 - i] : ys[i]; };
    std::size_t lo = 0, hi = K - 1;  // find the segment [k, k + 1] holding x, clamped to the ends
    while (hi - lo > 1) {
      const std::size_t mid = (lo + hi) / 2;
      (X(mid) <= x ? lo : hi) = mid;
    }
    return Y(lo) + (x - X(lo)) * (Y(lo + 1) - Y(lo)) / (X(lo + 1) - X(lo));
  }
};

struct DpmSolverOptions {
  int steps = 20;               // model calls (NFE)
  double t_end = 1e-4;          // "eps" upstream: where sampling stops (1e-3 suggested for <= 15 steps)
  double t_start = -1;          // "T": < 0 takes the schedule's T
  bool fast = true;             // DPM-Solver-fast; otherwise steps / order steps of `order`
  int order = 3;                // 1, 2 or 3 (when not fast)
  std::string skip_type = "logSNR";  // when not fast: "logSNR" or "time_uniform"
  Progress progress = terminal_progress("dpm-solver");
};

namespace detail {
// out[i] = a * x[i] + b * y[i] (+ c * z[i])
template <class T>
inline Tensor<T> comb(double a, const Tensor<T>& x, double b, const Tensor<T>& y) {
  Tensor<T> out = Tensor<T>::empty(x.shape());
  const T ca = static_cast<T>(a), cb = static_cast<T>(b);
  for (std::int64_t i = 0; i < x.numel(); ++i) out[i] = ca * x[i] + cb * y[i];
  return out;
}
template <class T>
inline Tensor<T> comb(double a, const Tensor<T>& x, double b, const Tensor<T>& y, double c, const Tensor<T>& z) {
  Tensor<T> out = Tensor<T>::empty(x.shape());
  const T ca = static_cast<T>(a), cb = static_cast<T>(b), cc = static_cast<T>(c);
  for (std::int64_t i = 0; i < x.numel(); ++i) out[i] = ca * x[i] + cb * y[i] + cc * z[i];
  return out;
}
template <class T, class Model>
inline Tensor<T> call_eps(Model& model, const Tensor<T>& x, double t) {
  Tensor<T> eps = model(x, std::vector<double>(static_cast<std::size_t>(x.size(0)), t));
  if (eps.shape() != x.shape())
    throw ShapeError(ditto::detail::cat("dpm_solver_sample: the model must return noise shaped like x ", shape_str(x.shape()),
                                        ", got ", shape_str(eps.shape())));
  return eps;
}
}  // namespace detail

// One singlestep DPM-Solver step of order 1, 2 (r1 = 1/2) or 3 (r1 = 1/3, r2 = 2/3) from time s
// to time t, noise prediction (upstream's dpm_solver_{first,second,third}_update).
template <class T, class Model>
inline Tensor<T> dpm_solver_step(const NoiseScheduleVP& ns, Model& model, const Tensor<T>& x, double s, double t, int order) {
  const double ls = ns.lambda(s), lt = ns.lambda(t), h = lt - ls;
  const double la_s = ns.log_alpha(s), la_t = ns.log_alpha(t), sig_t = ns.sigma(t);
  const double phi_1 = std::expm1(h);
  const Tensor<T> eps_s = detail::call_eps(model, x, s);
  if (order == 1) return detail::comb(std::exp(la_t - la_s), x, -sig_t * phi_1, eps_s);
  if (order == 2) {
    const double r1 = 0.5, s1 = ns.inverse_lambda(ls + r1 * h);
    const Tensor<T> x_s1 = detail::comb(std::exp(ns.log_alpha(s1) - la_s), x, -ns.sigma(s1) * std::expm1(r1 * h), eps_s);
    const Tensor<T> eps_s1 = detail::call_eps(model, x_s1, s1);
    // x_t = e^{..} x - sig_t phi_1 eps_s - (0.5 / r1) sig_t phi_1 (eps_s1 - eps_s)
    const double k = (0.5 / r1) * sig_t * phi_1;
    return detail::comb(std::exp(la_t - la_s), x, -sig_t * phi_1 + k, eps_s, -k, eps_s1);
  }
  if (order != 3) throw ArgumentError(ditto::detail::cat("dpm_solver_step: the order must be 1, 2 or 3, got ", order));
  const double r1 = 1.0 / 3.0, r2 = 2.0 / 3.0;
  const double s1 = ns.inverse_lambda(ls + r1 * h), s2 = ns.inverse_lambda(ls + r2 * h);
  const double phi_11 = std::expm1(r1 * h), phi_12 = std::expm1(r2 * h);
  const double phi_22 = std::expm1(r2 * h) / (r2 * h) - 1, phi_2 = std::expm1(h) / h - 1;
  const Tensor<T> x_s1 = detail::comb(std::exp(ns.log_alpha(s1) - la_s), x, -ns.sigma(s1) * phi_11, eps_s);
  const Tensor<T> eps_s1 = detail::call_eps(model, x_s1, s1);
  const double k2 = r2 / r1 * ns.sigma(s2) * phi_22;
  const Tensor<T> x_s2 = detail::comb(std::exp(ns.log_alpha(s2) - la_s), x, -ns.sigma(s2) * phi_12 + k2, eps_s, -k2, eps_s1);
  const Tensor<T> eps_s2 = detail::call_eps(model, x_s2, s2);
  const double k = (1.0 / r2) * sig_t * phi_2;
  return detail::comb(std::exp(la_t - la_s), x, -sig_t * phi_1 + k, eps_s, -k, eps_s2);
}

// The steps' times and orders that dpm_solver_sample takes (upstream's get_time_steps and
// get_time_steps_for_dpm_solver_fast): times has one more entry than orders.
inline std::pair<std::vector<double>, std::vector<int>> dpm_solver_plan(const NoiseScheduleVP& ns, const DpmSolverOptions& o) {
  using ditto::detail::cat;
  const double t_T = o.t_start < 0 ? ns.T : o.t_start, t_0 = o.t_end;
  if (!(t_0 > 0 && t_0 < t_T && t_T <= ns.T))
    throw ArgumentError(cat("dpm_solver_sample: expected 0 < t_end < t_start <= T = ", ns.T, ", got t_end ", t_0, ", t_start ", t_T));
  if (o.steps < 1) throw ArgumentError(cat("dpm_solver_sample: expected at least 1 step, got ", o.steps));
  std::vector<int> orders;
  int n = 0;
  std::string skip = o.skip_type;
  if (o.fast) {
    const int K = o.steps / 3 + 1;
    orders.assign(static_cast<std::size_t>(std::max(K - (o.steps % 3 == 0 ? 2 : 1), 0)), 3);
    if (o.steps % 3 == 0) orders.insert(orders.end(), {2, 1});
    else orders.push_back(o.steps % 3);
    n = K;
    skip = "logSNR";
  } else {
    if (o.order < 1 || o.order > 3) throw ArgumentError(cat("dpm_solver_sample: the order must be 1, 2 or 3, got ", o.order));
    n = o.steps / o.order;
    if (n < 1) throw ArgumentError(cat("dpm_solver_sample: ", o.steps, " model calls are fewer than one step of order ", o.order));
    orders.assign(static_cast<std::size_t>(n), o.order);
  }
  std::vector<double> times;
  if (skip == "logSNR") {
    for (double l : linspace(ns.lambda(t_T), ns.lambda(t_0), n + 1)) times.push_back(ns.inverse_lambda(l));
  } else if (skip == "time_uniform") {
    times = linspace(t_T, t_0, n + 1);
  } else {
    throw ArgumentError(cat("dpm_solver_sample: unknown skip_type \"", skip, "\"; expected logSNR or time_uniform"));
  }
  return {times, orders};
}

// Sample from x_T (drawn from `gen` unless `start` is given) to t_end.
template <class T, class Model>
inline Tensor<T> dpm_solver_sample(const NoiseScheduleVP& ns, Model&& model, const Shape& shape, Generator& gen,
                                   const DpmSolverOptions& o = {}, Tensor<T> start = Tensor<T>()) {
  const auto [times, orders] = dpm_solver_plan(ns, o);
  Tensor<T> x = start.numel() ? std::move(start) : gen.normal<T>(shape);
  int done = 0;
  for (std::size_t i = 0; i < orders.size(); ++i) {
    x = dpm_solver_step<T>(ns, model, x, times[i], times[i + 1], orders[i]);
    done += orders[i];
    if (o.progress) o.progress(done, o.fast ? o.steps : static_cast<int>(orders.size()) * orders[0]);
  }
  return x;
}

struct DpmSolverPPOptions {
  int steps = 20;
  int order = 2;  // 2: DPM-Solver++(2M); 1: DDIM; 3: 3M
  ModelMeanType mean_type = ModelMeanType::epsilon;
  bool lower_order_final = true;  // second order for the step before the last, when steps < 15
  int channel_dim = 1;            // where a learned variance doubles the channels: 2 for Latte
  Progress progress = terminal_progress("dpm-solver++");
};

// The timesteps diffusers' "linspace" spacing picks: round(linspace(0, N - 1, steps + 1)),
// reversed, without the final 0.
inline std::vector<std::int64_t> dpmpp_timesteps(int num_train_timesteps, int steps) {
  if (steps < 1 || steps > num_train_timesteps)
    throw ArgumentError(ditto::detail::cat("dpmpp_sample_loop: expected 1 to ", num_train_timesteps, " steps, got ", steps));
  std::vector<std::int64_t> t;
  const auto l = linspace(0.0, num_train_timesteps - 1.0, steps + 1);
  for (int i = steps; i >= 1; --i) t.push_back(static_cast<std::int64_t>(std::nearbyint(l[static_cast<std::size_t>(i)])));
  return t;
}

// DPM-Solver++ multistep over the (unspaced) schedule `s`.
template <class T, class Model>
inline Tensor<T> dpmpp_sample_loop(const Schedule& s, Model&& model, const Shape& shape, Generator& gen,
                                   const DpmSolverPPOptions& o = {}, Tensor<T> start = Tensor<T>()) {
  using ditto::detail::cat;
  if (o.order < 1 || o.order > 3) throw ArgumentError(cat("dpmpp_sample_loop: the order must be 1, 2 or 3, got ", o.order));
  // sigma = sqrt((1 - abar) / abar) at each timestep, then 0; alpha_t, sigma_t and lambda from it
  const auto ts = dpmpp_timesteps(s.num_timesteps, o.steps);
  const int n = static_cast<int>(ts.size());
  std::vector<double> alpha, sigma, lambda;
  for (int i = 0; i <= n; ++i) {
    const auto at = static_cast<std::size_t>(i < n ? ts[static_cast<std::size_t>(i)] : 0);
    const double sg = i < n ? std::sqrt((1 - s.alphas_cumprod[at]) / s.alphas_cumprod[at]) : 0.0;
    const double a = 1 / std::sqrt(sg * sg + 1);
    alpha.push_back(a);
    sigma.push_back(sg * a);
    lambda.push_back(std::log(a) - std::log(sg * a));  // +inf at the end
  }
  Tensor<T> x = start.numel() ? std::move(start) : gen.normal<T>(shape);
  const std::int64_t B = x.size(0);
  std::vector<Tensor<T>> m;  // the last x_0 predictions, newest last
  int lower_order_nums = 0;
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    const std::vector<std::int64_t> tm(static_cast<std::size_t>(B), s.timestep_map[static_cast<std::size_t>(ts[k])]);
    const Tensor<T> raw = model(x, tm);
    // DPM-Solver++ uses the mean part only (diffusers drops a learned variance's channels too)
    const bool has_var = raw.dim() == x.dim() && o.channel_dim >= 1 && o.channel_dim < x.dim() &&
                         raw.size(o.channel_dim) == 2 * x.size(o.channel_dim);
    const Tensor<T> out = detail::split_output("dpmpp_sample_loop", raw, x, has_var, o.channel_dim).first;
    // x_0 from the model's prediction at (alpha[k], sigma[k])
    Tensor<T> x0 = Tensor<T>::empty(x.shape());
    const T a = static_cast<T>(alpha[k]), sg = static_cast<T>(sigma[k]);
    for (std::int64_t j = 0; j < x.numel(); ++j) {
      const T xv = x[j], ov = out[j];
      x0[j] = o.mean_type == ModelMeanType::epsilon ? (xv - sg * ov) / a : o.mean_type == ModelMeanType::start_x ? ov : a * xv - sg * ov;
    }
    m.push_back(std::move(x0));
    if (static_cast<int>(m.size()) > o.order) m.erase(m.begin());
    const bool last = i == n - 1;  // to sigma 0: always first order, which returns x_0 itself
    const bool second_last = i == n - 2 && o.lower_order_final && n < 15;
    const double h = lambda[k + 1] - lambda[k];
    if (last) {
      x = m.back();
    } else if (o.order == 1 || lower_order_nums < 1) {
      x = detail::comb(sigma[k + 1] / sigma[k], x, -alpha[k + 1] * std::expm1(-h), m.back());
    } else if (o.order == 2 || lower_order_nums < 2 || second_last) {
      // D0 = m0, D1 = (m0 - m1) / r0, midpoint: x = (s_t/s_0) x - a_t (e^-h - 1) (D0 + D1 / 2)
      const double r0 = (lambda[k] - lambda[k - 1]) / h, c = -alpha[k + 1] * std::expm1(-h);
      const auto& m0 = m[m.size() - 1];
      const auto& m1 = m[m.size() - 2];
      x = detail::comb(sigma[k + 1] / sigma[k], x, c * (1 + 0.5 / r0), m0, -c * 0.5 / r0, m1);
    } else {
      const double r0 = (lambda[k] - lambda[k - 1]) / h, r1 = (lambda[k - 1] - lambda[k - 2]) / h;
      const double e = std::expm1(-h);
      const double c0 = -alpha[k + 1] * e, c1 = alpha[k + 1] * (e / h + 1), c2 = -alpha[k + 1] * ((e + h) / (h * h) - 0.5);
      const auto &m0 = m[2], &m1 = m[1], &m2 = m[0];
      // D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
      // D2 = (D1_0 - D1_1) / (r0 + r1); x = (s_t/s_0) x + c0 D0 + c1 D1 + c2 D2
      const double u = 1 / r0, v = 1 / r1, w = r0 / (r0 + r1), z = 1 / (r0 + r1);
      // D1_0 - D1_1 = u m0 - (u + v) m1 + v m2
      const double a0 = c0 + c1 * (u + w * u) + c2 * z * u;
      const double a1 = c1 * (-u - w * (u + v)) - c2 * z * (u + v);
      const double a2 = c1 * w * v + c2 * z * v;
      Tensor<T> next = detail::comb(sigma[k + 1] / sigma[k], x, a0, m0, a1, m1);
      const T ta2 = static_cast<T>(a2);
      for (std::int64_t j = 0; j < next.numel(); ++j) next[j] += ta2 * m2[j];
      x = std::move(next);
    }
    if (lower_order_nums < o.order) ++lower_order_nums;
    if (o.progress) o.progress(i + 1, n);
  }
  return x;
}

}  // namespace ditto::diffusion
