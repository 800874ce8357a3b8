// Noise schedules: the beta schedules of DDPM / improved DDPM / Stable Diffusion, every array
// GaussianDiffusion derives from them, and timestep respacing, computed in double exactly as
// facebookresearch/DiT's diffusion/gaussian_diffusion.py and respace.py do (checked to 1e-12).
//
//   auto s = diffusion::Schedule(diffusion::named_beta_schedule("linear", 1000));
//   auto fast = diffusion::Schedule::spaced(diffusion::named_beta_schedule("linear", 1000),
//                                            diffusion::space_timesteps(1000, "ddim50"));
//   fast.timestep_map[k];   // the original timestep the model is given at spaced step k
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"

namespace ditto::diffusion {

// numpy.linspace(start, stop, n) for doubles (the last value is exactly stop).
inline std::vector<double> linspace(double start, double stop, int n) {
  std::vector<double> v(static_cast<std::size_t>(std::max(n, 0)));
  if (n == 1) v[0] = start;
  if (n < 2) return v;
  const double step = (stop - start) / (n - 1);
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i * step + start;
  v.back() = stop;
  return v;
}

// Ho et al.'s linear schedule, scaled so any step count spans the same noise: 1e-4 .. 0.02 at 1000.
inline std::vector<double> linear_betas(int num_timesteps) {
  const double scale = 1000.0 / num_timesteps;
  return linspace(scale * 0.0001, scale * 0.02, num_timesteps);
}

// Improved DDPM's cosine schedule ("squaredcos_cap_v2"): betas from alpha_bar(t) = cos^2((t + s) /
// (1 + s) * pi / 2), s = 0.008, each beta capped at max_beta.
inline std::vector<double> cosine_betas(int num_timesteps, double max_beta = 0.999) {
  constexpr double pi = 3.14159265358979323846;  // Python's math.pi
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * pi / 2), 2); };
  std::vector<double> b;
  for (int i = 0; i < num_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / num_timesteps, t2 = static_cast<double>(i + 1) / num_timesteps;
    b.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return b;
}

// Stable Diffusion's "scaled_linear": linear in sqrt(beta).
inline std::vector<double> scaled_linear_betas(int num_timesteps, double beta_start = 0.00085, double beta_end = 0.012) {
  auto v = linspace(std::sqrt(beta_start), std::sqrt(beta_end), num_timesteps);
  for (auto& b : v) b *= b;
  return v;
}

// By name: "linear", "squaredcos_cap_v2" (also "cosine"), "scaled_linear".
inline std::vector<double> named_beta_schedule(const std::string& name, int num_timesteps) {
  if (num_timesteps < 1)
    throw ArgumentError(ditto::detail::cat("named_beta_schedule(\"", name, "\", ", num_timesteps,
                                           "): expected at least 1 timestep"));
  if (name == "linear") return linear_betas(num_timesteps);
  if (name == "squaredcos_cap_v2" || name == "cosine") return cosine_betas(num_timesteps);
  if (name == "scaled_linear") return scaled_linear_betas(num_timesteps);
  throw ArgumentError(ditto::detail::cat("named_beta_schedule: unknown schedule \"", name,
                                         "\"; expected linear, squaredcos_cap_v2 (cosine) or scaled_linear"));
}

// Which original timesteps a respaced process keeps (upstream's space_timesteps), sorted.
// section_counts: "250" (one section of 250 steps), "10,15,20" (equal thirds strided to 10, 15,
// 20 steps) or "ddimN" (the DDIM paper's fixed integer stride giving exactly N steps).
inline std::vector<int> space_timesteps(int num_timesteps, const std::string& section_counts) {
  using ditto::detail::cat;
  const std::string where = cat("space_timesteps(", num_timesteps, ", \"", section_counts, "\"): ");
  std::vector<int> steps;
  if (section_counts.rfind("ddim", 0) == 0) {
    const std::string n = section_counts.substr(4);
    if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos)
      throw ArgumentError(where + "expected ddim followed by a step count, e.g. ddim50");
    const long desired = std::stol(n);
    for (int i = 1; i < num_timesteps; ++i)
      if ((num_timesteps + i - 1) / i == desired) {
        for (int t = 0; t < num_timesteps; t += i) steps.push_back(t);
        return steps;
      }
    throw ArgumentError(where + cat("cannot create exactly ", desired, " steps with an integer stride"));
  }
  std::vector<int> counts;
  std::size_t start = 0;
  while (start <= section_counts.size()) {
    const std::size_t comma = std::min(section_counts.find(',', start), section_counts.size());
    const std::string item = section_counts.substr(start, comma - start);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 9)
      throw ArgumentError(where + "expected comma-separated step counts such as \"250\" or \"10,15,20\", or ddimN");
    counts.push_back(std::stoi(item));
    start = comma + 1;
  }
  const int sections = static_cast<int>(counts.size());
  const int size_per = num_timesteps / sections, extra = num_timesteps % sections;
  int start_idx = 0;
  for (int i = 0; i < sections; ++i) {
    const int size = size_per + (i < extra ? 1 : 0), count = counts[static_cast<std::size_t>(i)];
    if (size < count) throw ArgumentError(where + cat("cannot divide section of ", size, " steps into ", count));
    const double frac_stride = count <= 1 ? 1.0 : static_cast<double>(size - 1) / (count - 1);
    double cur = 0.0;
    for (int k = 0; k < count; ++k) {
      steps.push_back(start_idx + static_cast<int>(std::nearbyint(cur)));  // Python's round: half to even
      cur += frac_stride;
    }
    start_idx += size;
  }
  std::sort(steps.begin(), steps.end());
  steps.erase(std::unique(steps.begin(), steps.end()), steps.end());  // upstream returns a set
  return steps;
}

// GaussianDiffusion's arrays, all in double, indexed by (spaced) timestep.
struct Schedule {
  int num_timesteps = 0;
  std::vector<double> betas, alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next;
  std::vector<double> sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod;
  std::vector<double> sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod;
  std::vector<double> posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2;
  std::vector<int> timestep_map;  // spaced step -> original timestep (the identity when not spaced)

  Schedule() = default;
  explicit Schedule(std::vector<double> b) : betas(std::move(b)) {
    num_timesteps = static_cast<int>(betas.size());
    if (num_timesteps == 0) throw ArgumentError("Schedule: expected at least one beta");
    for (std::size_t i = 0; i < betas.size(); ++i)
      if (!(betas[i] > 0 && betas[i] <= 1))
        throw ArgumentError(ditto::detail::cat("Schedule: every beta must be in (0, 1], but beta[", i, "] = ", betas[i]));
    const std::size_t T = betas.size();
    double prod = 1.0;
    for (std::size_t i = 0; i < T; ++i) {
      prod *= 1.0 - betas[i];
      alphas_cumprod.push_back(prod);
    }
    for (std::size_t i = 0; i < T; ++i) {
      const double a = alphas_cumprod[i], prev = i ? alphas_cumprod[i - 1] : 1.0;
      alphas_cumprod_prev.push_back(prev);
      alphas_cumprod_next.push_back(i + 1 < T ? alphas_cumprod[i + 1] : 0.0);
      sqrt_alphas_cumprod.push_back(std::sqrt(a));
      sqrt_one_minus_alphas_cumprod.push_back(std::sqrt(1.0 - a));
      log_one_minus_alphas_cumprod.push_back(std::log(1.0 - a));
      sqrt_recip_alphas_cumprod.push_back(std::sqrt(1.0 / a));
      sqrt_recipm1_alphas_cumprod.push_back(std::sqrt(1.0 / a - 1));
      posterior_variance.push_back(betas[i] * (1.0 - prev) / (1.0 - a));
      posterior_mean_coef1.push_back(betas[i] * std::sqrt(prev) / (1.0 - a));
      posterior_mean_coef2.push_back((1.0 - prev) * std::sqrt(1.0 - betas[i]) / (1.0 - a));
    }
    // the posterior variance is 0 at t = 0: its log is clipped to the value at t = 1
    if (T > 1)
      for (std::size_t i = 0; i < T; ++i) posterior_log_variance_clipped.push_back(std::log(posterior_variance[i ? i : 1]));
    for (int i = 0; i < num_timesteps; ++i) timestep_map.push_back(i);
  }

  // SpacedDiffusion: keep the original steps in use_timesteps, with betas recomputed so the kept
  // steps have the original alphas_cumprod; timestep_map gives the model the original timestep.
  static Schedule spaced(const std::vector<double>& base_betas, const std::vector<int>& use_timesteps) {
    const Schedule base(base_betas);
    std::vector<double> betas;
    std::vector<int> map;
    double last = 1.0;
    for (int i = 0; i < base.num_timesteps; ++i)
      if (std::binary_search(use_timesteps.begin(), use_timesteps.end(), i)) {
        betas.push_back(1 - base.alphas_cumprod[static_cast<std::size_t>(i)] / last);
        last = base.alphas_cumprod[static_cast<std::size_t>(i)];
        map.push_back(i);
      }
    Schedule s(betas);
    s.timestep_map = map;
    return s;
  }
};

}  // namespace ditto::diffusion
