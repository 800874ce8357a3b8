// The pictures of docs/diffusion.md: the noise schedules, and what each sampler makes of a toy
// data distribution (a 1-D mixture of two Gaussians) when given its exact denoiser.
//
//   diffusion_plots [OUT_DIR]      (default docs/images: writes schedules.png, mixture_samples.png)
//
// Plots go through Debian's gnuplot (`apt-get install gnuplot-nox`), an optional dependency of
// this example only. Without it, the gnuplot scripts (data inline) are written next to where the
// pictures would be, with the command that turns them into PNGs.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;
using namespace ditto::diffusion;

// Data: 0.3 N(-2, 0.5^2) + 0.7 N(1.5, 0.3^2). Noised as x = a x_0 + s n, each component stays
// Gaussian, so E[n | x] and E[x_0 | x] are posterior averages over the two components.
struct Mixture {
  double w[2] = {0.3, 0.7}, mu[2] = {-2.0, 1.5}, sd[2] = {0.5, 0.3};

  double density(double x) const {
    double p = 0;
    for (int k = 0; k < 2; ++k) p += w[k] * std::exp(-0.5 * std::pow((x - mu[k]) / sd[k], 2)) / (sd[k] * std::sqrt(2 * M_PI));
    return p;
  }
  // {E[n | x], E[x_0 | x]}
  std::pair<double, double> denoise(double x, double a, double s) const {
    double r[2], v[2], norm = 0, en = 0, ex0 = 0, lmax = -1e300;
    for (int k = 0; k < 2; ++k) {
      v[k] = a * a * sd[k] * sd[k] + s * s;
      r[k] = std::log(w[k]) - 0.5 * std::log(v[k]) - std::pow(x - a * mu[k], 2) / (2 * v[k]);
      lmax = std::max(lmax, r[k]);
    }
    for (int k = 0; k < 2; ++k) {
      const double p = std::exp(r[k] - lmax), d = x - a * mu[k];
      norm += p;
      en += p * s / v[k] * d;
      ex0 += p * (mu[k] + a * sd[k] * sd[k] / v[k] * d);
    }
    return {en / norm, ex0 / norm};
  }
  Tensor<double> eps(const Tensor<double>& x, double a, double s) const {
    Tensor<double> out(x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) out[i] = denoise(x[i], a, s).first;
    return out;
  }
};

// One gnuplot data block: "$name << EOD ... EOD".
static std::string block(const std::string& name, const std::vector<std::vector<double>>& columns) {
  std::ostringstream out;
  out << "$" << name << " << EOD\n";
  for (std::size_t i = 0; i < columns[0].size(); ++i) {
    for (const auto& c : columns) out << c[i] << ' ';
    out << '\n';
  }
  out << "EOD\n";
  return out.str();
}

// Runs the script through gnuplot, or leaves it on disk with the command to run.
static void plot(const std::string& script, const std::string& png) {
  const std::string gp = png.substr(0, png.size() - 4) + ".gp";
  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
    if (FILE* pipe = ::popen("gnuplot", "w")) {
      std::fputs(script.c_str(), pipe);
      if (::pclose(pipe) == 0) {
        std::printf("wrote %s\n", png.c_str());
        return;
      }
    }
    throw IoError("diffusion_plots: gnuplot failed on the script for " + png);
  }
  std::ofstream(gp) << script;
  std::printf("gnuplot not found (apt-get install gnuplot-nox): wrote %s; run `gnuplot %s` for %s\n", gp.c_str(), gp.c_str(),
              png.c_str());
}

static std::string schedules_script(const std::string& png) {
  const int T = 1000;
  std::vector<double> t, ab[3], snr[3];
  const char* names[3] = {"linear", "squaredcos_cap_v2", "scaled_linear"};
  Schedule s[3] = {Schedule(named_beta_schedule(names[0], T)), Schedule(named_beta_schedule(names[1], T)),
                   Schedule(named_beta_schedule(names[2], T))};
  for (int i = 0; i < T; ++i) {
    t.push_back(i);
    for (int k = 0; k < 3; ++k) {
      const double a = s[k].alphas_cumprod[static_cast<std::size_t>(i)];
      ab[k].push_back(a);
      snr[k].push_back(std::log(a / (1 - a)));
    }
  }
  std::ostringstream g;
  g << block("S", {t, ab[0], ab[1], ab[2], snr[0], snr[1], snr[2]});
  g << "set terminal pngcairo size 1100,420 font 'sans,11'\nset output '" << png << "'\n"
    << "set multiplot layout 1,2\nset xlabel 'timestep t'\nset grid\nset key top right\n"
    << "set title 'signal kept: alpha_bar(t)'\nset ylabel 'alpha_bar'\n"
    << "plot $S u 1:2 w l lw 2 t 'linear (DDPM, DiT)', $S u 1:3 w l lw 2 t 'squaredcos\\_cap\\_v2 (improved DDPM)', "
       "$S u 1:4 w l lw 2 t 'scaled\\_linear (Stable Diffusion)'\n"
    << "set title 'log SNR: log(alpha_bar / (1 - alpha_bar))'\nset ylabel 'log SNR'\n"
    << "plot $S u 1:5 w l lw 2 t 'linear', $S u 1:6 w l lw 2 t 'squaredcos\\_cap\\_v2', $S u 1:7 w l lw 2 t 'scaled\\_linear'\n"
    << "unset multiplot\n";
  return g.str();
}

// Density histogram of x over [lo, hi) in `bins` bins (bin centres, densities).
static std::vector<std::vector<double>> histogram(const Tensor<double>& x, double lo, double hi, int bins) {
  std::vector<double> centre, dens(static_cast<std::size_t>(bins), 0.0);
  const double width = (hi - lo) / bins;
  for (double v : x)
    if (v >= lo && v < hi) dens[static_cast<std::size_t>((v - lo) / width)] += 1;
  for (int b = 0; b < bins; ++b) {
    centre.push_back(lo + (b + 0.5) * width);
    dens[static_cast<std::size_t>(b)] /= static_cast<double>(x.numel()) * width;
  }
  return {centre, dens};
}

static std::string mixture_script(const std::string& png) {
  const Mixture mix;
  const auto betas = named_beta_schedule("linear", 1000);
  const Schedule base(betas);
  const std::int64_t n = 20000;
  const Shape shape{n, 1};
  auto eps_discrete = [&](const Tensor<double>& x, const std::vector<std::int64_t>& t) {
    const double ab = base.alphas_cumprod[static_cast<std::size_t>(t[0])];
    return mix.eps(x, std::sqrt(ab), std::sqrt(1 - ab));
  };
  SampleOptions so;
  so.var_type = ModelVarType::fixed_small;
  so.progress = terminal_progress("DDPM, 1000 steps");
  std::vector<std::pair<std::string, Tensor<double>>> runs;
  Generator g1(1);
  runs.emplace_back("DDPM, 1000 steps", ddpm_sample_loop<double>(base, eps_discrete, shape, g1, so));
  so.progress = terminal_progress("DDIM, 50 steps");
  Generator g2(1);
  runs.emplace_back("DDIM (eta 0), 50 steps",
                    ddim_sample_loop<double>(Schedule::spaced(betas, space_timesteps(1000, "ddim50")), eps_discrete, shape, g2, so));
  DpmSolverPPOptions pp;
  Generator g3(1);
  runs.emplace_back("DPM-Solver++(2M), 20 steps", dpmpp_sample_loop<double>(base, eps_discrete, shape, g3, pp));
  const auto ns = NoiseScheduleVP::discrete(betas);
  DpmSolverOptions fast;
  fast.t_end = 1e-3;
  Generator g4(1);
  runs.emplace_back("DPM-Solver-fast, 20 calls",
                    dpm_solver_sample<double>(
                        ns, [&](const Tensor<double>& x, const std::vector<double>& t) { return mix.eps(x, ns.alpha(t[0]), ns.sigma(t[0])); },
                        shape, g4, fast));
  FlowOptions fo;
  fo.steps = 100;
  Generator g5(1);
  runs.emplace_back("flow matching, Euler, 100 steps",
                    flow_euler_sample<double>(
                        [&](const Tensor<double>& x, const std::vector<double>& t) {
                          Tensor<double> v(x.shape());
                          for (std::int64_t i = 0; i < x.numel(); ++i) {
                            const auto [en, ex0] = mix.denoise(x[i], 1 - t[0], t[0]);
                            v[i] = en - ex0;
                          }
                          return v;
                        },
                        shape, g5, fo));
  std::ostringstream g;
  std::vector<double> xs, ps;
  for (int i = 0; i <= 400; ++i) {
    xs.push_back(-4.0 + 7.0 * i / 400);
    ps.push_back(mix.density(xs.back()));
  }
  g << block("D", {xs, ps});
  for (std::size_t r = 0; r < runs.size(); ++r) g << block("H" + std::to_string(r), histogram(runs[r].second, -4.0, 3.0, 84));
  g << "set terminal pngcairo size 1100,700 font 'sans,11'\nset output '" << png << "'\n"
    << "set multiplot layout 2,3 title '20,000 samples of 0.3 N(-2, 0.5^2) + 0.7 N(1.5, 0.3^2) with the exact denoiser'\n"
    << "set xrange [-4:3]\nset yrange [0:1.05]\nset grid\nset key top left\n";
  for (std::size_t r = 0; r < runs.size(); ++r)
    g << "set title '" << runs[r].first << "'\nplot $D w l lw 2 lc 'black' t 'data density', $H" << r
      << " w steps lw 1.5 lc 'red' t 'samples'\n";
  g << "unset multiplot\n";
  return g.str();
}

int main(int argc, char** argv) try {
  if (argc > 2) {
    std::fprintf(stderr, "usage: %s [OUT_DIR]   (default docs/images)\n", argv[0]);
    return 2;
  }
  const std::string dir = argc == 2 ? argv[1] : "docs/images";
  if (!std::filesystem::is_directory(dir) || dir.find('\'') != std::string::npos)
    throw ArgumentError("diffusion_plots: OUT_DIR must be an existing folder (without quotes in its name), got '" + dir + "'");
  plot(schedules_script(dir + "/schedules.png"), dir + "/schedules.png");
  plot(mixture_script(dir + "/mixture_samples.png"), dir + "/mixture_samples.png");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
