// diffusion/: schedules against the arrays of DiT's own GaussianDiffusion / SpacedDiffusion
// (tests/fixtures/diffusion_schedules.safetensors, made by tools/gen_diffusion_fixtures.py from
// the upstream code), to 1e-12 relative.
#include <ditto/diffusion/schedule.hpp>
#include <algorithm>

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
