// What a sampler costs besides the model: each sampler runs with a model that returns a fixed
// output instantly, so the time per step is the sampler's own work (noise, the step's arithmetic,
// the x_0 / variance conversions), next to one DiT-S/2 forward at 256 tokens measured here too.
//
//   sampler_overhead [THREADS]      (default 2)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;
using namespace ditto::diffusion;

static double median_ms(const std::function<void()>& f, int reps) {
  f();
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  set_num_threads(threads);
  // DiT-S/2 on 256x256 latents, learn_sigma: x (1, 4, 32, 32), output (1, 8, 32, 32)
  const models::DiTConfig c = models::dit_config("DiT-S/2");
  models::DiT<float> dit(c);
  Generator gen(0);
  for (auto& [n, t] : nn::named_parameters<float>(dit))
    if (n != "pos_embed") gen.fill_normal(*t, 0.0, 0.02);
  const auto x = gen.normal<float>({1, 4, 32, 32});
  const Tensor<float> t = Tensor<float>::full({1}, 500.0f);
  const Tensor<std::int64_t> y({1});
  const double forward = median_ms([&] { dit.forward(x, t, y); }, 7);

  const auto fixed = gen.normal<float>({1, 8, 32, 32});  // eps and the variance channels
  auto instant = [&](const Tensor<float>&, const std::vector<std::int64_t>&) { return fixed; };
  auto instant_eps = [&](const Tensor<float>&, const std::vector<double>&) {
    Tensor<float> e = Tensor<float>::empty({1, 4, 32, 32});
    std::copy(fixed.data(), fixed.data() + e.numel(), e.data());
    return e;
  };
  const auto betas = named_beta_schedule("linear", 1000);
  const Schedule s250 = Schedule::spaced(betas, space_timesteps(1000, "250")), full(betas);
  SampleOptions so;
  so.progress = {};
  DpmSolverPPOptions pp;
  pp.progress = {};
  pp.steps = 50;
  DpmSolverOptions fast;
  fast.progress = {};
  fast.steps = 48;
  FlowOptions fo;
  fo.progress = {};
  const auto ns = NoiseScheduleVP::discrete(betas);
  struct Row {
    const char* name;
    int steps;
    std::function<void()> run;
  };
  const std::vector<Row> rows = {
      {"DDPM (learned sigma), 250 steps", 250, [&] { Generator g(1); ddpm_sample_loop<float>(s250, instant, {1, 4, 32, 32}, g, so); }},
      {"DDIM eta 0, 250 steps", 250, [&] { Generator g(1); ddim_sample_loop<float>(s250, instant, {1, 4, 32, 32}, g, so); }},
      {"DPM-Solver++(2M), 50 steps", 50, [&] { Generator g(1); dpmpp_sample_loop<float>(full, instant, {1, 4, 32, 32}, g, pp); }},
      {"DPM-Solver-fast, 48 calls", 48, [&] { Generator g(1); dpm_solver_sample<float>(ns, instant_eps, {1, 4, 32, 32}, g, fast); }},
      {"flow Euler, 50 steps", 50, [&] { Generator g(1); flow_euler_sample<float>(instant_eps, {1, 4, 32, 32}, g, fo); }},
  };
  std::printf("DiT-S/2 forward (B=1, 256 tokens, %d threads): %.2f ms\n", threads, forward);
  for (const auto& r : rows) {
    const double per_step = median_ms(r.run, 5) / r.steps;
    std::printf("%-34s %8.4f ms per step = %6.3f%% of the forward\n", r.name, per_step, 100 * per_step / forward);
  }
  return 0;
}
