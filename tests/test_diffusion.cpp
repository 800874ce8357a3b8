// diffusion/: schedules against the arrays of DiT's own GaussianDiffusion / SpacedDiffusion
// (tests/fixtures/diffusion_schedules.safetensors, made by tools/gen_diffusion_fixtures.py from
// the upstream code), to 1e-12 relative.
#include <ditto/diffusion/dpm_solver.hpp>
#include <ditto/diffusion/flow.hpp>
#include <ditto/diffusion/gaussian.hpp>
#include <ditto/diffusion/guidance.hpp>
#include <ditto/diffusion/losses.hpp>
#include <ditto/diffusion/sampler.hpp>
#include <ditto/diffusion/schedule.hpp>
#include <algorithm>

#include <ditto/core/rng.hpp>
#include <ditto/core/threading.hpp>
#include <ditto/einops/rearrange.hpp>
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
    // training_losses (x_t = q_sample(x_start, t, noise) inside): every term of every loss type
    for (auto [lt, lname] : {std::pair{LossType::mse, "mse"}, std::pair{LossType::rescaled_mse, "rescaled_mse"},
                             std::pair{LossType::kl, "kl"}, std::pair{LossType::rescaled_kl, "rescaled_kl"}}) {
      INFO("loss " << lname);
      const std::string k = n + ".losses." + lname + ".";
      auto model = [&](const Tensor<T>& x_t, const std::vector<std::int64_t>& tm) {
        CHECK_CLOSE(x_t, fx.get<T>(n + ".q_sample"), tol);
        for (std::size_t b = 0; b < tm.size(); ++b) CHECK(tm[b] == s.timestep_map[static_cast<std::size_t>(t[b])]);
        return model_out;
      };
      const auto terms = training_losses(s, model, x0, t, noise, LossOptions{c.mean, c.var, lt});
      auto as_t = [](const std::vector<T>& v) { return Tensor<T>({static_cast<std::int64_t>(v.size())}, v); };
      CHECK_CLOSE(as_t(terms.loss), fx.get<T>(k + "loss"), tol);
      const bool has_mse = lt == LossType::mse || lt == LossType::rescaled_mse;
      const bool has_vb = has_mse && c.var == ModelVarType::learned_range;
      CHECK(fx.contains(k + "mse") == has_mse);
      CHECK(fx.contains(k + "vb") == has_vb);
      if (has_mse) CHECK_CLOSE(as_t(terms.mse), fx.get<T>(k + "mse"), tol);
      if (has_vb) CHECK_CLOSE(as_t(terms.vb), fx.get<T>(k + "vb"), tol);
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
// Data drawn from a 1-D Gaussian mixture, noised as x = a x_0 + s n: then x ~ sum_k w_k N(a mu_k,
// a^2 sigma_k^2 + s^2), and the exact denoisers are posterior averages over the components:
// E[n | x] and E[x_0 | x] (every sampler's ideal model, in closed form).
struct Mixture {
  std::vector<double> w, mu, sigma;
  const Schedule* base = nullptr;
  // E[n | x] and E[x_0 | x] at one point
  std::pair<double, double> denoise(double x, double a, double s) const {
    double lmax = -1e300, logr[8];  // at most 8 components
    for (std::size_t k = 0; k < w.size(); ++k) {
      const double v = a * a * sigma[k] * sigma[k] + s * s;
      logr[k] = std::log(w[k]) - 0.5 * std::log(v) - (x - a * mu[k]) * (x - a * mu[k]) / (2 * v);
      lmax = std::max(lmax, logr[k]);
    }
    double norm = 0, en = 0, ex0 = 0;
    for (std::size_t k = 0; k < w.size(); ++k) {
      const double r = std::exp(logr[k] - lmax), v = a * a * sigma[k] * sigma[k] + s * s, d = x - a * mu[k];
      norm += r;
      en += r * s / v * d;
      ex0 += r * (mu[k] + a * sigma[k] * sigma[k] / v * d);
    }
    return {en / norm, ex0 / norm};
  }
  Tensor<double> eps(const Tensor<double>& x, double a, double s) const {
    Tensor<double> out(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) out[i] = denoise(x[i], a, s).first;
    return out;
  }
  // the discrete-time epsilon model: alpha_bar from the schedule at each timestep
  Tensor<double> operator()(const Tensor<double>& x, const std::vector<std::int64_t>& t) const {
    const double ab = base->alphas_cumprod[static_cast<std::size_t>(t[0])];
    return eps(x, std::sqrt(ab), std::sqrt(1 - ab));
  }
};

// Weights, means and standard deviations of the two modes, split at -0.5 (the modes below are
// 3 and 6 standard deviations away from it), each within 5 standard errors for the sample size
// (10k: weight 0.0046, means 0.0091 / 0.0036, sds 0.0065 / 0.0025). sd0 / sd1: the mode widths
// expected (the data's 0.5 and 0.3 unless a sampler is known to return something else).
void check_mixture(const Tensor<double>& x, double sd0_want = 0.5, double sd1_want = 0.3) {
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
  INFO("weight " << w0 << ", modes " << m0 << " +- " << sd0 << " and " << m1 << " +- " << sd1 << " (want 0.3, -2 +- "
                 << sd0_want << ", 1.5 +- " << sd1_want << ")");
  const double n0 = 0.3 * n, n1 = 0.7 * n;
  CHECK(std::abs(w0 - 0.3) < 5 * std::sqrt(0.3 * 0.7 / n));
  CHECK(std::abs(m0 + 2.0) < 5 * sd0_want / std::sqrt(n0));
  CHECK(std::abs(m1 - 1.5) < 5 * sd1_want / std::sqrt(n1));
  CHECK(std::abs(sd0 - sd0_want) < 5 * sd0_want / std::sqrt(2 * n0));
  CHECK(std::abs(sd1 - sd1_want) < 5 * sd1_want / std::sqrt(2 * n1));
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

TEST_CASE("v-prediction loss targets v + uniform timesteps + loss errors", "[diffusion]") {
  const Schedule s(named_beta_schedule("linear", 1000));
  Generator g(4);
  const auto x0 = g.normal<double>({2, 3, 4}), noise = g.normal<double>({2, 3, 4});
  const std::vector<std::int64_t> t{5, 700};
  const auto xt = q_sample(s, x0, t, noise);
  // a model that predicts v exactly has zero loss; one that predicts eps instead does not
  const auto v = v_from_eps_xstart(s, noise, t, x0);
  LossOptions o{ModelMeanType::v, ModelVarType::fixed_small, LossType::mse};
  CHECK(training_losses(s, v, x0, xt, t, noise, o).loss == std::vector<double>{0.0, 0.0});
  CHECK(training_losses(s, noise, x0, xt, t, noise, o).loss[1] > 0.1);  // at t = 5, v is close to eps
  CHECK_THROWS_WITH(training_losses(s, x0, x0, xt, t, noise, LossOptions{}), Catch::Contains("must have 6 channels"));
  // uniform over [0, T): every value in range, all 10 values hit, seeded
  Generator a(7), b(7);
  const auto ts = sample_timesteps(a, 5000, 10);
  CHECK(ts == sample_timesteps(b, 5000, 10));
  std::vector<int> hist(10, 0);
  for (auto v : ts) {
    REQUIRE((v >= 0 && v < 10));
    ++hist[static_cast<std::size_t>(v)];
  }
  for (int h : hist) CHECK(std::abs(h - 500) < 5 * 21.3);  // 5 standard deviations of a count
  CHECK_THROWS_WITH(sample_timesteps(a, 4, 0), Catch::Contains("at least one timestep"));
}

TEST_CASE("classifier-free guidance: DiT + Latte + plain layouts and the interval", "[diffusion]") {
  Generator g(5);
  // DiT: (2B, 2C, H, W), the first 3 channels guided, the learned variance untouched
  const auto dit = g.normal<double>({4, 8, 2, 3});
  auto guided = dit.clone();
  apply_guidance(guided, Guidance{4.0, 3, 1});
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t c = 0; c < 8; ++c)
      for (std::int64_t i = 0; i < 6; ++i) {
        const double cond = dit[(b * 8 + c) * 6 + i], uncond = dit[((b + 2) * 8 + c) * 6 + i];
        const double want = c < 3 ? uncond + 4.0 * (cond - uncond) : cond;
        const double want2 = c < 3 ? want : uncond;
        CHECK(guided[(b * 8 + c) * 6 + i] == want);
        CHECK(guided[((b + 2) * 8 + c) * 6 + i] == want2);
      }
  // Latte: (2B, F, C, H, W), the first 4 of C = 8 along dim 2
  const auto latte = g.normal<double>({2, 3, 8, 2, 2});
  auto lg = latte.clone();
  apply_guidance(lg, Guidance{2.5, 4, 2});
  for (std::int64_t f = 0; f < 3; ++f)
    for (std::int64_t c = 0; c < 8; ++c)
      for (std::int64_t i = 0; i < 4; ++i) {
        const double cond = latte(0, f, c, i / 2, i % 2), uncond = latte(1, f, c, i / 2, i % 2);
        CHECK(lg(0, f, c, i / 2, i % 2) == (c < 4 ? uncond + 2.5 * (cond - uncond) : cond));
      }
  // plain: everything; outside the interval the conditional half is kept
  auto all = dit.clone();
  apply_guidance(all, Guidance{3.0});
  CHECK(all(1, 7, 1, 2) == dit(3, 7, 1, 2) + 3.0 * (dit(1, 7, 1, 2) - dit(3, 7, 1, 2)));
  Guidance interval{3.0, -1, 1, 100, 500};
  auto outside = dit.clone();
  apply_guidance(outside, interval, 900);
  CHECK(outside(1, 7, 1, 2) == dit(1, 7, 1, 2));
  CHECK(outside(3, 7, 1, 2) == dit(1, 7, 1, 2));
  auto inside = dit.clone();
  apply_guidance(inside, interval, 300);
  CHECK(inside(1, 7, 1, 2) == all(1, 7, 1, 2));
  // errors
  auto odd = g.normal<double>({3, 4});
  CHECK_THROWS_WITH(apply_guidance(odd, Guidance{2.0}), Catch::Contains("batch of 2B"));
  CHECK_THROWS_WITH(apply_guidance(guided, Guidance{2.0, 9, 1}), Catch::Contains("asked to guide 9 channels along dim 1"));
  CHECK_THROWS_WITH(apply_guidance(guided, Guidance{2.0, 1, 4}), Catch::Contains("must be in [1, 4)"));
  // cfg_model: the two-batch model sees [x; x] and [t; t]; the result is the guided first half
  auto two = [](const Tensor<double>& x, const std::vector<std::int64_t>& t) {
    REQUIRE(x.size(0) == 4);
    REQUIRE(t == std::vector<std::int64_t>{7, 7, 7, 7});
    Tensor<double> out = x.clone();
    for (std::int64_t i = out.numel() / 2; i < out.numel(); ++i) out[i] = 0.5 * x[i];  // "unconditional"
    return out;
  };
  const auto x = g.normal<double>({2, 3});
  const auto r = cfg_model<double>(two, Guidance{2.0})(x, {7, 7});
  REQUIRE(r.shape() == Shape{2, 3});
  for (std::int64_t i = 0; i < 6; ++i) CHECK(std::abs(r[i] - (0.5 * x[i] + 2.0 * 0.5 * x[i])) < 1e-15);
}

// U-ViT's DPM-Solver (dpm_solver_pytorch.py) on a toy noise predictor, float64 upstream:
// double to 1e-10, float to 1e-5 (its coefficients are computed in double).
TEMPLATE_TEST_CASE("DPM-Solver equals U-ViT's dpm_solver_pytorch", "[diffusion][sampling]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-10;
  const SafetensorsFile fx(std::string(DITTO_FIXTURES) + "/dpm_solver.safetensors");
  const NoiseScheduleVP linear = NoiseScheduleVP::linear(), cosine = NoiseScheduleVP::cosine(),
                        discrete = NoiseScheduleVP::discrete(linspace(1e-4, 0.02, 1000));
  const std::vector<std::pair<const char*, const NoiseScheduleVP*>> schedules = {
      {"linear", &linear}, {"cosine", &cosine}, {"discrete", &discrete}};
  for (const auto& [name, ns] : schedules) {
    INFO(name);
    const auto t = fx.get<double>(std::string(name) + ".t");
    Tensor<double> la(t.shape()), lam(t.shape()), inv(t.shape());
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      la[i] = ns->log_alpha(t[i]);
      lam[i] = ns->lambda(t[i]);
      inv[i] = ns->inverse_lambda(ns->lambda(t[i]) + 0.25);
    }
    CHECK_CLOSE(la, fx.get<double>(std::string(name) + ".log_alpha"), 1e-12);
    CHECK_CLOSE(lam, fx.get<double>(std::string(name) + ".lambda"), 1e-10);
    CHECK_CLOSE(inv, fx.get<double>(std::string(name) + ".inverse_lambda"), 1e-10);
  }
  auto toy = [](const Tensor<T>& x, const std::vector<double>& t) {
    Tensor<T> eps(x.shape());
    const std::int64_t per = x.numel() / x.size(0);
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const double tt = t[static_cast<std::size_t>(i / per)];
      eps[i] = static_cast<T>(0.5 * std::sin(static_cast<double>(x[i]) + 2.0 * tt) + 0.3 * static_cast<double>(x[i]) * tt);
    }
    return eps;
  };
  struct Case {
    const char* name;
    const NoiseScheduleVP* ns;
    DpmSolverOptions o;
  };
  auto opts = [](int steps, double eps, bool fast = true, int order = 3, const char* skip = "logSNR") {
    DpmSolverOptions o;
    o.steps = steps;
    o.t_end = eps;
    o.fast = fast;
    o.order = order;
    o.skip_type = skip;
    o.progress = {};
    return o;
  };
  for (const Case& c : {Case{"linear_fast20", &linear, opts(20, 1e-4)}, Case{"linear_fast10", &linear, opts(10, 1e-3)},
                        Case{"linear_fast12", &linear, opts(12, 1e-3)}, Case{"cosine_fast15", &cosine, opts(15, 1e-3)},
                        Case{"linear_order2_uniform", &linear, opts(10, 1e-3, false, 2, "time_uniform")},
                        Case{"cosine_order1_logsnr", &cosine, opts(7, 1e-3, false, 1)},
                        Case{"discrete_fast20", &discrete, opts(20, 1e-3)},
                        Case{"discrete_order3_logsnr", &discrete, opts(9, 1e-3, false, 3)}}) {
    INFO(c.name);
    Generator unused(0);
    const auto x_T = fx.get<T>(std::string(c.name) + ".x_T");
    CHECK_CLOSE(dpm_solver_sample<T>(*c.ns, toy, x_T.shape(), unused, c.o, x_T.clone()), fx.get<T>(std::string(c.name) + ".sample"), tol);
  }
  // model calls: fast spends exactly `steps`
  int calls = 0;
  auto counting = [&](const Tensor<T>& x, const std::vector<double>& t) {
    ++calls;
    return toy(x, t);
  };
  Generator gen(1);
  for (int steps : {5, 6, 7, 20}) {
    calls = 0;
    dpm_solver_sample<T>(linear, counting, {1, 2}, gen, opts(steps, 1e-3));
    CHECK(calls == steps);
  }
  CHECK_THROWS_WITH(dpm_solver_sample<T>(linear, toy, {1, 2}, gen, opts(2, 1e-3, false, 3)), Catch::Contains("fewer than one step"));
  CHECK_THROWS_WITH(dpm_solver_sample<T>(linear, toy, {1, 2}, gen, opts(10, 0.0)), Catch::Contains("0 < t_end < t_start"));
  CHECK_THROWS_WITH(dpm_solver_sample<T>(linear, toy, {1, 2}, gen, opts(10, 1e-3, false, 2, "quadratic")),
                    Catch::Contains("unknown skip_type \"quadratic\""));
}

// diffusers' DPMSolverMultistepScheduler (its float64 algorithm: the fixture swaps in float64
// schedule arrays) on a toy model: double to 1e-10, float to 1e-5.
TEMPLATE_TEST_CASE("DPM-Solver++ multistep equals diffusers' DPMSolverMultistepScheduler", "[diffusion][sampling]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-10;
  const SafetensorsFile fx(std::string(DITTO_FIXTURES) + "/dpmpp.safetensors");
  auto toy = [](const Tensor<T>& x, const std::vector<std::int64_t>& t) {
    Tensor<T> out(x.shape());
    const std::int64_t per = x.numel() / x.size(0);
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const double tt = static_cast<double>(t[static_cast<std::size_t>(i / per)]), xv = static_cast<double>(x[i]);
      out[i] = static_cast<T>(0.5 * std::sin(xv + tt / 500.0) + 0.3 * xv * (tt / 1000.0));
    }
    return out;
  };
  struct Case {
    const char* name;
    const char* schedule;
    ModelMeanType mean;
    int order, steps;
  };
  for (const Case& c : {Case{"linear_eps_2_20", "linear", ModelMeanType::epsilon, 2, 20},
                        Case{"linear_eps_2_10", "linear", ModelMeanType::epsilon, 2, 10},
                        Case{"linear_eps_1_7", "linear", ModelMeanType::epsilon, 1, 7},
                        Case{"linear_eps_3_20", "linear", ModelMeanType::epsilon, 3, 20},
                        Case{"linear_eps_3_12", "linear", ModelMeanType::epsilon, 3, 12},
                        Case{"cosine_x0_2_15", "squaredcos_cap_v2", ModelMeanType::start_x, 2, 15},
                        Case{"cosine_v_2_25", "squaredcos_cap_v2", ModelMeanType::v, 2, 25},
                        Case{"linear_eps_2_1", "linear", ModelMeanType::epsilon, 2, 1}}) {
    const std::string n = c.name;
    INFO(n);
    const Schedule s(named_beta_schedule(c.schedule, 1000));
    const auto want_t = fx.get<std::int64_t>(n + ".timesteps");
    const auto ts = dpmpp_timesteps(1000, c.steps);
    REQUIRE(static_cast<std::int64_t>(ts.size()) == want_t.numel());
    for (std::size_t i = 0; i < ts.size(); ++i) CHECK(ts[i] == want_t[static_cast<std::int64_t>(i)]);
    DpmSolverPPOptions o;
    o.order = c.order;
    o.steps = c.steps;
    o.mean_type = c.mean;
    o.progress = {};
    Generator unused(0);
    const auto x_T = fx.get<T>(n + ".x_T");
    CHECK_CLOSE(dpmpp_sample_loop<T>(s, toy, x_T.shape(), unused, o, x_T.clone()), fx.get<T>(n + ".sample"), tol);
  }
}

TEST_CASE("DPM-Solver++ 1st order is DDIM + 2M and DPM-Solver-fast sample a mixture in 20 steps", "[diffusion][sampling]") {
  const auto betas = named_beta_schedule("linear", 1000);
  const Schedule base(betas);
  const Mixture mix{{0.3, 0.7}, {-2.0, 1.5}, {0.5, 0.3}, &base};
  // diffusers' linspace timesteps: 999, 949, ..., 50 for 20 steps
  const auto ts = dpmpp_timesteps(1000, 20);
  CHECK(ts.front() == 999);
  CHECK(ts[1] == 949);
  CHECK(ts.back() == 50);
  {
    INFO("first order = DDIM (eta 0) on the same timesteps");
    std::vector<int> use(ts.begin(), ts.end());
    std::sort(use.begin(), use.end());
    const Schedule spaced = Schedule::spaced(betas, use);
    Generator g(3);
    const auto x_T = g.normal<double>({256, 1});
    DpmSolverPPOptions o;
    o.order = 1;
    o.progress = {};
    SampleOptions so;
    so.var_type = ModelVarType::fixed_small;
    so.progress = {};
    Generator g1(0), g2(0);
    CHECK_CLOSE(dpmpp_sample_loop<double>(base, mix, {256, 1}, g1, o, x_T.clone()),
                ddim_sample_loop<double>(spaced, mix, {256, 1}, g2, so, x_T.clone()), 1e-12);
  }
  // diffusers' last step jumps from timestep 50 to sigma 0 and so returns the model's x_0
  // prediction there: E[x_0 | x_50], a posterior mean. Within mode k it is linear in x_50, so each
  // mode keeps its weight and mean and narrows to sd_k sqrt(a^2 sd_k^2 / (a^2 sd_k^2 + s^2)), with
  // a, s the signal and noise levels at timestep 50 (the modes are far apart, so the other mode's
  // share there is negligible).
  const double ab50 = base.alphas_cumprod[50];
  auto narrowed = [&](double sd) { return sd * std::sqrt(ab50 * sd * sd / (ab50 * sd * sd + 1 - ab50)); };
  {
    INFO("DPM-Solver++(2M), 20 steps");
    DpmSolverPPOptions o;
    o.progress = {};
    Generator g(1);
    check_mixture(dpmpp_sample_loop<double>(base, mix, {10000, 1}, g, o), narrowed(0.5), narrowed(0.3));
  }
  {
    // (3M, equal to diffusers above, is not within statistical error here at 20 steps: it narrows
    // the 0.3 mode to 0.273 where the closed form says 0.259; diffusers recommends order 2 too.)
    INFO("DPM-Solver++(2M), 20 steps, x_0-predicting model");
    DpmSolverPPOptions o;
    o.mean_type = ModelMeanType::start_x;
    o.progress = {};
    auto x0_model = [&](const Tensor<double>& x, const std::vector<std::int64_t>& t) {
      const double ab = base.alphas_cumprod[static_cast<std::size_t>(t[0])];
      Tensor<double> out(x.shape());
      for (std::int64_t i = 0; i < x.numel(); ++i) out[i] = mix.denoise(x[i], std::sqrt(ab), std::sqrt(1 - ab)).second;
      return out;
    };
    Generator g(1);
    check_mixture(dpmpp_sample_loop<double>(base, x0_model, {10000, 1}, g, o), narrowed(0.5), narrowed(0.3));
  }
  {
    INFO("DPM-Solver-fast, 20 model calls, discrete schedule, to t = 1e-3");
    const auto ns = NoiseScheduleVP::discrete(betas);
    auto eps_model = [&](const Tensor<double>& x, const std::vector<double>& t) { return mix.eps(x, ns.alpha(t[0]), ns.sigma(t[0])); };
    DpmSolverOptions o;
    o.t_end = 1e-3;
    o.progress = {};
    Generator g(1);
    check_mixture(dpm_solver_sample<double>(ns, eps_model, {10000, 1}, g, o));
  }
  Generator g(0);
  DpmSolverPPOptions bad;
  bad.steps = 0;
  CHECK_THROWS_WITH(dpmpp_sample_loop<double>(base, mix, {2, 1}, g, bad), Catch::Contains("expected 1 to 1000 steps, got 0"));
  auto wrong = [](const Tensor<double>& x, const std::vector<std::int64_t>&) { return Tensor<double>({x.size(0), 3}); };
  DpmSolverPPOptions o;
  o.progress = {};
  CHECK_THROWS_WITH(dpmpp_sample_loop<double>(base, wrong, {2, 1}, g, o), Catch::Contains("must have 1 channels along dim 1, got shape [2,3]"));
}

TEST_CASE("flow-matching Euler reproduces a mixture and returns a single point exactly", "[diffusion][sampling]") {
  const Mixture mix{{0.3, 0.7}, {-2.0, 1.5}, {0.5, 0.3}};
  // x_t = (1 - t) x_0 + t n: the exact velocity is E[n | x_t] - E[x_0 | x_t]
  auto velocity = [&](const Tensor<double>& x, const std::vector<double>& t) {
    Tensor<double> v(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const auto [en, ex0] = mix.denoise(x[i], 1 - t[0], t[0]);
      v[i] = en - ex0;
    }
    return v;
  };
  FlowOptions o;
  o.steps = 100;
  o.progress = {};
  Generator g(21);
  check_mixture(flow_euler_sample<double>(velocity, {10000, 1}, g, o));
  // one point p: v = (x - p) / t exactly, and Euler steps follow the straight line to p
  const double p = -0.4;
  auto to_point = [&](const Tensor<double>& x, const std::vector<double>& t) {
    Tensor<double> v(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) v[i] = (x[i] - p) / t[0];
    return v;
  };
  for (double shift : {1.0, 3.0}) {
    o.steps = 7;
    o.shift = shift;
    Generator g2(22);
    const auto x = flow_euler_sample<double>(to_point, {64, 1}, g2, o);
    for (double v : x) CHECK(std::abs(v - p) < 1e-12);
  }
  const auto t3 = flow_timesteps(4, 3.0);
  CHECK(t3.front() == 1.0);
  CHECK(t3.back() == 0.0);
  CHECK(std::abs(t3[2] - 3 * 0.5 / (1 + 2 * 0.5)) < 1e-15);
  CHECK_THROWS_WITH(flow_timesteps(0), Catch::Contains("at least 1 step"));
  CHECK_THROWS_WITH(flow_timesteps(5, 0.0), Catch::Contains("shift must be positive"));
}

TEST_CASE("every sampler gives the same samples for the same seed at 1 and 3 threads", "[diffusion][sampling]") {
  const auto betas = named_beta_schedule("linear", 1000);
  const Schedule base(betas), ddim20 = Schedule::spaced(betas, space_timesteps(1000, "ddim20"));
  const Mixture mix{{0.3, 0.7}, {-2.0, 1.5}, {0.5, 0.3}, &base};
  const auto ns = NoiseScheduleVP::discrete(betas);
  auto eps_continuous = [&](const Tensor<double>& x, const std::vector<double>& t) { return mix.eps(x, ns.alpha(t[0]), ns.sigma(t[0])); };
  auto velocity = [&](const Tensor<double>& x, const std::vector<double>& t) {
    Tensor<double> v(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const auto [en, ex0] = mix.denoise(x[i], 1 - t[0], t[0]);
      v[i] = en - ex0;
    }
    return v;
  };
  auto run_all = [&] {
    std::vector<Tensor<double>> out;
    SampleOptions so;
    so.var_type = ModelVarType::fixed_small;
    so.eta = 1.0;  // DDIM with noise
    so.progress = {};
    const Shape shape{4096, 1};  // large enough that the noise draws split over threads
    Generator g1(5), g2(5), g3(5), g4(5), g5(5);
    out.push_back(ddpm_sample_loop<double>(ddim20, mix, shape, g1, so));
    out.push_back(ddim_sample_loop<double>(ddim20, mix, shape, g2, so));
    DpmSolverPPOptions pp;
    pp.progress = {};
    pp.steps = 10;
    out.push_back(dpmpp_sample_loop<double>(base, mix, shape, g3, pp));
    DpmSolverOptions fast;
    fast.progress = {};
    fast.steps = 9;
    fast.t_end = 1e-3;
    out.push_back(dpm_solver_sample<double>(ns, eps_continuous, shape, g4, fast));
    FlowOptions fo;
    fo.progress = {};
    fo.steps = 10;
    out.push_back(flow_euler_sample<double>(velocity, shape, g5, fo));
    return out;
  };
  const int before = get_num_threads();
  set_num_threads(1);
  const auto one = run_all();
  set_num_threads(3);
  const auto three = run_all();
  set_num_threads(before);
  for (std::size_t i = 0; i < one.size(); ++i) {
    INFO("sampler " << i);
    ditto_test::require_equal(one[i], three[i]);
  }
}

TEST_CASE("a learned variance along dim 2 (Latte's videos) splits like dim 1 on the transposed layout", "[diffusion]") {
  const Schedule s(named_beta_schedule("linear", 1000));
  Generator g(8);
  const auto x5 = g.normal<double>({2, 3, 4, 2, 2});     // (B, F, C, H, W)
  auto out5 = g.normal<double>({2, 3, 8, 2, 2});         // (B, F, 2C, H, W)
  for (auto& v : out5) v = std::tanh(v);
  const std::vector<std::int64_t> t{3, 700};
  const auto video = p_mean_variance(s, out5, x5, t, ModelMeanType::epsilon, ModelVarType::learned_range, false, {}, 2);
  const auto image = p_mean_variance(s, rearrange(out5, "b f c h w -> b c f h w"), rearrange(x5, "b f c h w -> b c f h w"), t,
                                     ModelMeanType::epsilon, ModelVarType::learned_range, false);
  CHECK_CLOSE(video.mean, rearrange(image.mean, "b c f h w -> b f c h w"), 1e-15);
  CHECK_CLOSE(video.log_variance, rearrange(image.log_variance, "b c f h w -> b f c h w"), 1e-15);
  CHECK_THROWS_WITH(p_mean_variance(s, out5, x5, t, ModelMeanType::epsilon, ModelVarType::learned_range, false),
                    Catch::Contains("must have 6 channels (mean and variance) along dim 1"));
  // the loss and DPM-Solver++ take the same channel_dim
  LossOptions lo;
  lo.channel_dim = 2;
  const auto noise = g.normal<double>({2, 3, 4, 2, 2});
  CHECK(training_losses(s, out5, x5, q_sample(s, x5, t, noise), t, noise, lo).loss.size() == 2);
}
