// One training step (forward_train + DiT's hybrid loss and its gradient + backward + AdamW):
// the ditto column of docs/performance.md's training table.
//
//   train_step MODEL BATCH THREADS [REPS]      MODEL: DiT-S/2, DiT-B/2, ... on 4 x 32 x 32 latents
//
// Random weights, latents, timesteps and labels (the speed does not depend on them); prints the
// median of REPS steps after one warm-up and the peak resident memory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

int main(int argc, char** argv) try {
  if (argc < 4) throw ArgumentError("usage: train_step MODEL BATCH THREADS [REPS]");
  const std::string name = argv[1];
  const std::int64_t B = std::stol(argv[2]);
  set_num_threads(std::stoi(argv[3]));
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  models::DiT<float> model(models::dit_config(name, 32));
  Generator gen(0);
  for (auto& [n, p] : nn::trainable_parameters<float>(model)) gen.fill_normal(*p, 0.0, 0.02);
  train::AdamW<float, models::DiT<float>> opt(model, {.lr = 1e-4, .weight_decay = 0});
  auto grads = nn::zeros_like<float>(model);
  const diffusion::Schedule s(diffusion::named_beta_schedule("linear", 1000));
  const Tensor<float> x0 = gen.normal<float>({B, 4, 32, 32}), noise = gen.normal<float>({B, 4, 32, 32});
  std::vector<std::int64_t> t(static_cast<std::size_t>(B)), labels(static_cast<std::size_t>(B));
  Tensor<float> tf({B});
  for (std::int64_t b = 0; b < B; ++b) {
    t[static_cast<std::size_t>(b)] = 999 - 100 * b % 1000, labels[static_cast<std::size_t>(b)] = 7 * b;
    tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
  }
  const Tensor<std::int64_t> y({B}, labels);
  const Tensor<float> x_t = diffusion::q_sample(s, x0, t, noise);
  std::vector<double> ms, fwd, bwd, opt_ms;
  auto since = [](auto t0) { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    models::DiT<float>::Acts acts;
    const Tensor<float> out = model.forward_train(x_t, tf, y, acts);
    const double t_fwd = since(t0);
    nn::zero_grad<float>(grads);
    model.backward(grads, acts, diffusion::training_losses_grad(s, out, x0, x_t, t, noise));
    const double t_bwd = since(t0) - t_fwd;
    opt.step(model, grads);
    const double dt = since(t0);
    if (r > 0) ms.push_back(dt), fwd.push_back(t_fwd), bwd.push_back(t_bwd), opt_ms.push_back(dt - t_fwd - t_bwd);  // the first is the warm-up
  }
  for (auto* v : {&ms, &fwd, &bwd, &opt_ms}) std::sort(v->begin(), v->end());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("%s batch %ld, %d threads: %.1f ms per step (median of %d; forward_train %.1f, loss + backward %.1f, AdamW %.1f), "
              "peak RSS %.0f MB\n", name.c_str(), static_cast<long>(B), get_num_threads(), ms[ms.size() / 2], reps, fwd[fwd.size() / 2],
              bwd[bwd.size() / 2], opt_ms[opt_ms.size() / 2], static_cast<double>(ru.ru_maxrss) / 1024.0);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_step: %s\n", e.what());
  return 1;
}
