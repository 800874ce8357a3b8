// One training step (forward_train + the loss and its gradient + backward + AdamW): the ditto
// column of docs/performance.md's training table.
//
//   train_step MODEL BATCH THREADS [REPS]
//     DiT-S/2, DiT-B/2, ...: 4 x 32 x 32 latents, DiT's hybrid loss (learned sigma: mse + vb)
//     U-ViT-S:  64 x 64 pixels, U-ViT's small model (celeba64: patch 4, 512 wide, 13 layers), mse on the noise
//     ADM-64:   64 x 64 pixels, guided-diffusion's ImageNet-64 U-Net (192 channels, 3 res blocks, class-conditional,
//               learned sigma), the hybrid loss on its cosine schedule
//
// Random weights, inputs, timesteps and labels (the speed does not depend on them); prints the
// median of REPS steps after one warm-up and the peak resident memory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

namespace {
struct Timing {
  std::vector<double> step, fwd, bwd, opt;
};

// REPS + 1 steps of `model` (the first a warm-up): forward(acts) -> out, loss_grad(out) -> dout.
template <class Model, class Forward, class LossGrad>
Timing run(Model& model, int reps, Forward&& forward, LossGrad&& loss_grad) {
  Generator gen(0);
  for (auto& [n, p] : nn::trainable_parameters<float>(model)) gen.fill_normal(*p, 0.0, 0.02);
  train::AdamW<float, Model> opt(model, {.lr = 1e-4, .weight_decay = 0});
  auto grads = nn::zeros_like<float>(model);
  Timing tm;
  auto since = [](auto t0) { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    typename Model::Acts acts;
    const Tensor<float> out = forward(acts);
    const double t_fwd = since(t0);
    nn::zero_grad<float>(grads);
    model.backward(grads, acts, loss_grad(out));
    const double t_bwd = since(t0) - t_fwd;
    opt.step(model, grads);
    const double dt = since(t0);
    if (r > 0) tm.step.push_back(dt), tm.fwd.push_back(t_fwd), tm.bwd.push_back(t_bwd), tm.opt.push_back(dt - t_fwd - t_bwd);
  }
  return tm;
}
}  // namespace

int main(int argc, char** argv) try {
  if (argc < 4) throw ArgumentError("usage: train_step MODEL BATCH THREADS [REPS] (MODEL: DiT-S/2, DiT-B/2, ..., U-ViT-S, ADM-64)");
  const std::string name = argv[1];
  const std::int64_t B = std::stol(argv[2]);
  set_num_threads(std::stoi(argv[3]));
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  Generator gen(1);
  std::vector<std::int64_t> t(static_cast<std::size_t>(B)), labels(static_cast<std::size_t>(B));
  Tensor<float> tf({B});
  for (std::int64_t b = 0; b < B; ++b) {
    t[static_cast<std::size_t>(b)] = 999 - 100 * b % 1000, labels[static_cast<std::size_t>(b)] = 7 * b;
    tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
  }
  const Tensor<std::int64_t> y({B}, labels);
  Timing tm;
  if (name.rfind("DiT-", 0) == 0) {
    models::DiT<float> model(models::dit_config(name, 32));
    const diffusion::Schedule s(diffusion::named_beta_schedule("linear", 1000));
    const Tensor<float> x0 = gen.normal<float>({B, 4, 32, 32}), noise = gen.normal<float>({B, 4, 32, 32});
    const Tensor<float> x_t = diffusion::q_sample(s, x0, t, noise);
    tm = run(model, reps, [&](auto& acts) { return model.forward_train(x_t, tf, y, acts); },
             [&](const Tensor<float>& out) { return diffusion::training_losses_grad(s, out, x0, x_t, t, noise); });
  } else if (name == "U-ViT-S") {
    models::UViT<float> model(models::UViTConfig::from_json({{"img_size", 64}, {"patch_size", 4}, {"embed_dim", 512}, {"depth", 12},
                                                             {"num_heads", 8}, {"mlp_ratio", 4}, {"qkv_bias", false},
                                                             {"mlp_time_embed", false}, {"num_classes", -1}}));
    const diffusion::Schedule s(diffusion::named_beta_schedule("linear", 1000));
    const Tensor<float> x0 = gen.normal<float>({B, 3, 64, 64}), noise = gen.normal<float>({B, 3, 64, 64});
    const Tensor<float> x_t = diffusion::q_sample(s, x0, t, noise);
    diffusion::LossOptions o;
    o.var_type = diffusion::ModelVarType::fixed_small;  // the model predicts the noise only: mse on it
    tm = run(model, reps, [&](auto& acts) { return model.forward_train(x_t, tf, nullptr, acts); },
             [&](const Tensor<float>& out) { return diffusion::training_losses_grad(s, out, x0, x_t, t, noise, o); });
  } else if (name == "ADM-64") {
    models::UNet<float> model(models::UNetConfig::from_json(
        {{"image_size", 64}, {"in_channels", 3}, {"model_channels", 192}, {"out_channels", 6}, {"num_res_blocks", 3},
         {"attention_resolutions", {2, 4, 8}}, {"channel_mult", {1, 2, 3, 4}}, {"num_classes", 1000}, {"num_head_channels", 64},
         {"use_scale_shift_norm", true}, {"resblock_updown", true}, {"use_new_attention_order", true}}));
    const diffusion::Schedule s(diffusion::named_beta_schedule("cosine", 1000));
    const Tensor<float> x0 = gen.normal<float>({B, 3, 64, 64}), noise = gen.normal<float>({B, 3, 64, 64});
    const Tensor<float> x_t = diffusion::q_sample(s, x0, t, noise);
    tm = run(model, reps, [&](auto& acts) { return model.forward_train(x_t, tf, &y, acts); },
             [&](const Tensor<float>& out) { return diffusion::training_losses_grad(s, out, x0, x_t, t, noise); });
  } else {
    throw ArgumentError("train_step: unknown model \"" + name + "\"; expected DiT-S/2, DiT-B/2, ..., U-ViT-S or ADM-64");
  }
  for (auto* v : {&tm.step, &tm.fwd, &tm.bwd, &tm.opt}) std::sort(v->begin(), v->end());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto med = [](const std::vector<double>& v) { return v[v.size() / 2]; };
  std::printf("%s batch %ld, %d threads: %.1f ms per step (median of %d; forward_train %.1f, loss + backward %.1f, AdamW %.1f), "
              "peak RSS %.0f MB\n", name.c_str(), static_cast<long>(B), get_num_threads(), med(tm.step), reps, med(tm.fwd), med(tm.bwd),
              med(tm.opt), static_cast<double>(ru.ru_maxrss) / 1024.0);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_step: %s\n", e.what());
  return 1;
}
