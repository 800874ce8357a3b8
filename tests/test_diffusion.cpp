// diffusion/: schedules against the arrays of DiT's own GaussianDiffusion / SpacedDiffusion
// (tests/fixtures/diffusion_schedules.safetensors, made by tools/gen_diffusion_fixtures.py from
// the upstream code), to 1e-12 relative.
#include <ditto/diffusion/gaussian.hpp>
#include <ditto/diffusion/sampler.hpp>
#include <ditto/diffusion/schedule.hpp>
#include <algorithm>

#include <ditto/core/rng.hpp>
#include <ditto/io/safetensors.hpp>

#include "helpers.hpp"

using namespace ditto;
using namespace ditto::diffusion;

namespace {
Tensor<double> as_tensor(const std::vector<double>& v) { return Tensor<double>({static_cast<std::int64_t>(v.size())}, v); }
}  // namespace

TEST_CASE("schedules and respacing equal DiT's float64 arrays", "[diffusion]") {
  const SafetensorsFile fx(std::string(DITTO_FIXTURES) + "/diffusion_schedules.safetensors");
  struct Case {
    const char* name;
    int steps;
    const char* respacing;
  };
  for (const Case& c : {Case{"linear", 1000, ""}, Case{"squaredcos_cap_v2", 1000, ""}, Case{"linear", 100, ""},
                        Case{"linear", 1000, "250"}, Case{"linear", 1000, "ddim50"}, Case{"linear", 1000, "10,15,20"},
                        Case{"squaredcos_cap_v2", 1000, "ddim25"}, Case{"linear", 1000, "7,3"}}) {
    std::string key = std::string(c.name) + "_" + std::to_string(c.steps) + "_" + (*c.respacing ? c.respacing : "full");
    std::replace(key.begin(), key.end(), ',', '-');
    INFO(key);
    const auto betas = named_beta_schedule(c.name, c.steps);
    const Schedule s = *c.respacing ? Schedule::spaced(betas, space_timesteps(c.steps, c.respacing)) : Schedule(betas);
    const std::vector<std::pair<const char*, const std::vector<double>*>> arrays = {
        {"betas", &s.betas}, {"alphas_cumprod", &s.alphas_cumprod}, {"alphas_cumprod_prev", &s.alphas_cumprod_prev},
        {"alphas_cumprod_next", &s.alphas_cumprod_next}, {"sqrt_alphas_cumprod", &s.sqrt_alphas_cumprod},
        {"sqrt_one_minus_alphas_cumprod", &s.sqrt_one_minus_alphas_cumprod},
        {"log_one_minus_alphas_cumprod", &s.log_one_minus_alphas_cumprod},
        {"sqrt_recip_alphas_cumprod", &s.sqrt_recip_alphas_cumprod},
        {"sqrt_recipm1_alphas_cumprod", &s.sqrt_recipm1_alphas_cumprod}, {"posterior_variance", &s.posterior_variance},
        {"posterior_log_variance_clipped", &s.posterior_log_variance_clipped},
        {"posterior_mean_coef1", &s.posterior_mean_coef1}, {"posterior_mean_coef2", &s.posterior_mean_coef2}};
    for (const auto& [name, values] : arrays) {
      INFO(name);
      CHECK_CLOSE(as_tensor(*values), fx.get<double>(key + "." + name), 1e-12);
    }
    const auto map = fx.get<std::int64_t>(key + ".timestep_map");
    REQUIRE(static_cast<std::int64_t>(s.timestep_map.size()) == map.numel());
    for (std::int64_t i = 0; i < map.numel(); ++i) CHECK(s.timestep_map[static_cast<std::size_t>(i)] == map[i]);
  }
}

TEST_CASE("space_timesteps and schedule errors name the problem", "[diffusion]") {
  CHECK(space_timesteps(10, "ddim5") == std::vector<int>{0, 2, 4, 6, 8});
  CHECK(space_timesteps(10, "10") == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK_THROWS_WITH(space_timesteps(10, "ddim6"), Catch::Contains("cannot create exactly 6 steps with an integer stride"));
  CHECK_THROWS_WITH(space_timesteps(10, "3,8"), Catch::Contains("cannot divide section of 5 steps into 8"));
  CHECK_THROWS_WITH(space_timesteps(10, "a,b"), Catch::Contains("comma-separated step counts"));
  CHECK_THROWS_WITH(space_timesteps(10, "ddimx"), Catch::Contains("ddim followed by a step count"));
  CHECK_THROWS_WITH(named_beta_schedule("quadratic", 10), Catch::Contains("unknown schedule \"quadratic\""));
  CHECK_THROWS_WITH(Schedule({0.1, 0.0}), Catch::Contains("beta[1] = 0"));
  // Stable Diffusion's scaled_linear: sqrt-linear from 0.00085 to 0.012
  const auto sl = scaled_linear_betas(1000);
  CHECK(std::abs(sl.front() - 0.00085) < 1e-15);
  CHECK(std::abs(sl.back() - 0.012) < 1e-15);
  CHECK(std::abs(std::sqrt(sl[500]) - (std::sqrt(0.00085) + 500 * (std::sqrt(0.012) - std::sqrt(0.00085)) / 999)) < 1e-15);
}

// One step of each kind against DiT's own methods: float32 as upstream runs (1e-5), float64
// with upstream's coefficient extraction kept in float64 (1e-10).
TEMPLATE_TEST_CASE("diffusion steps equal DiT's q_sample + posterior + p_mean_variance + p_sample + ddim_sample",
                   "[diffusion]", float, double) {
  using T = TestType;
  const bool f32 = std::is_same_v<T, float>;
  const SafetensorsFile fx(std::string(DITTO_FIXTURES) + (f32 ? "/diffusion_steps_f32.safetensors" : "/diffusion_steps_f64.safetensors"));
  const double tol = f32 ? 1e-5 : 1e-10;
  struct Case {
    const char* name;
    const char* schedule;
    const char* respacing;
    ModelMeanType mean;
    ModelVarType var;
  };
  for (const Case& c : {Case{"eps_learned_range", "linear", "", ModelMeanType::epsilon, ModelVarType::learned_range},
                        Case{"eps_fixed_small_ddim50", "linear", "ddim50", ModelMeanType::epsilon, ModelVarType::fixed_small},
                        Case{"x0_fixed_large_250", "squaredcos_cap_v2", "250", ModelMeanType::start_x, ModelVarType::fixed_large},
                        // DiT's code maps LEARNED through the [-1, 1] range too (it only uses
                        // LEARNED_RANGE); ditto's `learned` is guided-diffusion's raw log-variance,
                        // checked below, so this case is compared as learned_range.
                        Case{"eps_learned_cos", "squaredcos_cap_v2", "", ModelMeanType::epsilon, ModelVarType::learned_range}}) {
    const std::string n = c.name;
    INFO(n);
    const auto betas = named_beta_schedule(c.schedule, 1000);
    const Schedule s = *c.respacing ? Schedule::spaced(betas, space_timesteps(1000, c.respacing)) : Schedule(betas);
    const auto x0 = fx.get<T>(n + ".x_start"), xt = fx.get<T>(n + ".x_t"), noise = fx.get<T>(n + ".noise");
    const auto model_out = fx.get<T>(n + ".model_output");
    const auto tt = fx.get<std::int64_t>(n + ".t");
    const std::vector<std::int64_t> t(tt.begin(), tt.end());
    CHECK_CLOSE(q_sample(s, x0, t, noise), fx.get<T>(n + ".q_sample"), tol);
    const auto post = q_posterior_mean_variance(s, x0, xt, t);
    CHECK_CLOSE(post.mean, fx.get<T>(n + ".q_posterior.mean"), tol);
    CHECK_CLOSE(post.variance, fx.get<T>(n + ".q_posterior.variance"), tol);
    CHECK_CLOSE(post.log_variance, fx.get<T>(n + ".q_posterior.log_variance"), tol);
    for (bool clip : {false, true}) {
      INFO("clip_denoised " << clip);
      const auto p = p_mean_variance(s, model_out, xt, t, c.mean, c.var, clip);
      const std::string k = n + ".p_mean_variance.clip" + std::to_string(int(clip)) + ".";
      CHECK_CLOSE(p.mean, fx.get<T>(k + "mean"), tol);
      CHECK_CLOSE(p.variance, fx.get<T>(k + "variance"), tol);
      CHECK_CLOSE(p.log_variance, fx.get<T>(k + "log_variance"), tol);
      CHECK_CLOSE(p.pred_xstart, fx.get<T>(k + "pred_xstart"), tol);
      if (!clip) CHECK_CLOSE(p_sample_step(p, t, noise), fx.get<T>(n + ".p_sample"), tol);
      if (clip)
        for (int eta : {0, 1})
          CHECK_CLOSE(ddim_step(s, p.pred_xstart, xt, t, noise, eta), fx.get<T>(n + ".ddim_sample.eta" + std::to_string(eta)), tol);
    }
  }
}

TEST_CASE("eps + x0 + v conversions invert each other", "[diffusion]") {
  const Schedule s(named_beta_schedule("linear", 1000));
  Generator g(1);
  auto x0 = g.normal<double>({2, 3, 4}), eps = g.normal<double>({2, 3, 4});
  const std::vector<std::int64_t> t{10, 900};
  auto xt = q_sample(s, x0, t, eps);
  CHECK_CLOSE(predict_xstart_from_eps(s, xt, t, eps), x0, 1e-12);
  CHECK_CLOSE(predict_eps_from_xstart(s, xt, t, x0), eps, 1e-9);
  CHECK_CLOSE(predict_xstart_from_v(s, xt, t, v_from_eps_xstart(s, eps, t, x0)), x0, 1e-12);
  // learned (guided-diffusion): the second half of the channels is the log-variance itself
  Tensor<double> out({2, 6, 4});
  for (std::int64_t i = 0; i < out.numel(); ++i) out[i] = 0.01 * static_cast<double>(i % 17) - 0.05;
  const auto p = p_mean_variance(s, out, x0, t, ModelMeanType::epsilon, ModelVarType::learned, false);
  CHECK(p.log_variance(1, 2, 3) == out(1, 5, 3));
  CHECK(std::abs(p.variance(0, 1, 2) - std::exp(out(0, 4, 2))) < 1e-15);
  CHECK_THROWS_WITH(q_sample(s, x0, {1}, eps), Catch::Contains("one timestep per batch entry"));
  CHECK_THROWS_WITH(q_sample(s, x0, {1, 1000}, eps), Catch::Contains("timestep 1000 is outside [0, 1000)"));
  CHECK_THROWS_WITH(p_mean_variance(s, x0, x0, t, ModelMeanType::epsilon, ModelVarType::learned_range),
                    Catch::Contains("must have 6 channels (mean and variance)"));
}

namespace {
// The exact epsilon-predictor for data drawn from a 1-D Gaussian mixture: at noise level
// alpha_bar, x_t ~ sum_k w_k N(sqrt(ab) mu_k, ab sigma_k^2 + 1 - ab), and
// eps*(x_t) = -sqrt(1 - ab) * d/dx log p_t(x_t).
struct Mixture {
  std::vector<double> w, mu, sigma;
  const Schedule* base;
  Tensor<double> operator()(const Tensor<double>& x, const std::vector<std::int64_t>& t) const {
    Tensor<double> eps(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const double ab = base->alphas_cumprod[static_cast<std::size_t>(t[static_cast<std::size_t>(i)])];
      double norm = 0, score = 0, lmax = -1e300;
      double logr[8];  // at most 8 components
      for (std::size_t k = 0; k < w.size(); ++k) {
        const double m = std::sqrt(ab) * mu[k], v = ab * sigma[k] * sigma[k] + 1 - ab;
        logr[k] = std::log(w[k]) - 0.5 * std::log(v) - (x[i] - m) * (x[i] - m) / (2 * v);
        lmax = std::max(lmax, logr[k]);
      }
      for (std::size_t k = 0; k < w.size(); ++k) {
        const double r = std::exp(logr[k] - lmax), m = std::sqrt(ab) * mu[k], v = ab * sigma[k] * sigma[k] + 1 - ab;
        norm += r;
        score += r * (-(x[i] - m) / v);
      }
      eps[i] = -std::sqrt(1 - ab) * score / norm;
    }
    return eps;
  }
};

// Weights, means and standard deviations of the two modes, split at -0.5 (the modes below are
// 3 and 6 standard deviations away from it).
void check_mixture(const Tensor<double>& x) {
  const double n = static_cast<double>(x.numel());
  double s[2] = {0, 0}, ss[2] = {0, 0}, c[2] = {0, 0};
  for (double v : x) {
    const int k = v < -0.5 ? 0 : 1;
    c[k] += 1;
    s[k] += v;
    ss[k] += v * v;
  }
  const double w0 = c[0] / n;
  const double m0 = s[0] / c[0], m1 = s[1] / c[1];
  const double sd0 = std::sqrt(ss[0] / c[0] - m0 * m0), sd1 = std::sqrt(ss[1] / c[1] - m1 * m1);
  INFO("weight " << w0 << ", modes " << m0 << " +- " << sd0 << " and " << m1 << " +- " << sd1);
  // 5 standard errors for 10k samples (weight 0.0046, means 0.0091 / 0.0036, sds 0.0065 / 0.0025)
  CHECK(std::abs(w0 - 0.2996) < 0.023);
  CHECK(std::abs(m0 + 2.0) < 0.046);
  CHECK(std::abs(m1 - 1.5) < 0.018);
  CHECK(std::abs(sd0 - 0.5) < 0.033);
  CHECK(std::abs(sd1 - 0.3) < 0.013);
}
}  // namespace

TEST_CASE("DDPM and DDIM with the exact predictor reproduce a Gaussian mixture", "[diffusion][sampling]") {
  const auto betas = named_beta_schedule("linear", 1000);
  const Schedule base(betas);
  const Mixture model{{0.3, 0.7}, {-2.0, 1.5}, {0.5, 0.3}, &base};
  SampleOptions o;
  o.mean_type = ModelMeanType::epsilon;
  o.var_type = ModelVarType::fixed_small;
  o.progress = {};
  {
    INFO("DDPM, 1000 steps");
    Generator gen(1);
    check_mixture(ddpm_sample_loop<double>(base, model, {10000, 1}, gen, o));
  }
  {
    INFO("DDIM eta 0, 50 steps");
    const Schedule ddim50 = Schedule::spaced(betas, space_timesteps(1000, "ddim50"));
    Generator gen(2);
    check_mixture(ddim_sample_loop<double>(ddim50, model, {10000, 1}, gen, o));
  }
}

TEST_CASE("DDIM with the exact predictor of one point returns that point + seeds reproduce", "[diffusion][sampling]") {
  const auto betas = named_beta_schedule("squaredcos_cap_v2", 1000);
  const Schedule s = Schedule::spaced(betas, space_timesteps(1000, "ddim25"));
  const Schedule base(betas);
  const double point = 0.7;
  auto model = [&](const Tensor<double>& x, const std::vector<std::int64_t>& t) {
    Tensor<double> eps(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const double ab = base.alphas_cumprod[static_cast<std::size_t>(t[static_cast<std::size_t>(i)])];
      eps[i] = (x[i] - std::sqrt(ab) * point) / std::sqrt(1 - ab);
    }
    return eps;
  };
  SampleOptions o;
  o.var_type = ModelVarType::fixed_small;
  o.progress = {};
  int calls = 0;
  o.progress = [&](int done, int total) { calls += (done <= total); };
  Generator gen(3);
  auto x = ddim_sample_loop<double>(s, model, {64, 1}, gen, o);
  double err = 0;
  for (double v : x) err = std::max(err, std::abs(v - point));
  CHECK(err < 1e-9);
  CHECK(calls == 25);
  // same seed, same samples
  Generator g1(9), g2(9);
  o.progress = {};
  auto a = ddpm_sample_loop<double>(s, model, {8, 1}, g1, o), b = ddpm_sample_loop<double>(s, model, {8, 1}, g2, o);
  ditto_test::require_equal(a, b);
}
