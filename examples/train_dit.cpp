// train_dit: trains a tiny class-conditional DiT from scratch on a toy image set, as DiT's
// train.py does (hybrid loss with learned sigma, label dropout, AdamW, EMA), then samples each
// class from the EMA model with DDIM. Writes the loss curve and the samples as PNGs.
//
//   build/examples/train_dit [--steps 2000] [--seed 0] [--output train_dit]   -> train_dit_loss.png, train_dit_samples.png
//
// The data: 8 x 8 gray pictures, each a bright 3 x 3 square in the quadrant its class names
// (0: top left, 1: top right, 2: bottom left, 3: bottom right), jittered by a pixel. A model that
// learned them draws each class's square where it belongs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

namespace {
// A batch of the toy set: x (B, 1, 8, 8) in [-1, 1] and the labels.
std::pair<Tensor<float>, Tensor<std::int64_t>> toy_batch(Generator& gen, std::int64_t B) {
  const Tensor<float> u = gen.uniform<float>({B, 3});
  Tensor<float> x = Tensor<float>::full({B, 1, 8, 8}, -1.0f);
  Tensor<std::int64_t> y({B});
  for (std::int64_t b = 0; b < B; ++b) {
    y[b] = std::min<std::int64_t>(static_cast<std::int64_t>(u(b, 0) * 4), 3);
    const std::int64_t r0 = (y[b] / 2) * 4 + static_cast<std::int64_t>(u(b, 1) * 2), c0 = (y[b] % 2) * 4 + static_cast<std::int64_t>(u(b, 2) * 2);
    for (std::int64_t r = r0; r < r0 + 3; ++r)
      for (std::int64_t c = c0; c < c0 + 3; ++c) x(b, 0, r, c) = 1.0f;
  }
  return {x, y};
}

// The loss curve (a moving average of 20 steps) on white, as a (3, H, W) picture in [-1, 1].
Tensor<float> plot(const std::vector<float>& loss) {
  const std::int64_t H = 240, W = 480, pad = 20;
  Tensor<float> img = Tensor<float>::full({3, H, W}, 1.0f);
  std::vector<float> avg(loss.size());
  for (std::size_t i = 0; i < loss.size(); ++i) {
    float s = 0;
    const std::size_t lo = i >= 19 ? i - 19 : 0;
    for (std::size_t k = lo; k <= i; ++k) s += loss[k];
    avg[i] = s / static_cast<float>(i - lo + 1);
  }
  const float top = *std::max_element(avg.begin(), avg.end());
  auto put = [&](std::int64_t r, std::int64_t c, float v) {
    if (r >= 0 && r < H && c >= 0 && c < W)
      for (int ch = 0; ch < 3; ++ch) img(ch, r, c) = ch == 2 ? 1.0f : v;
  };
  for (std::int64_t c = pad; c < W - pad; ++c) put(H - pad, c, -1.0f);  // axes
  for (std::int64_t r = pad; r <= H - pad; ++r) put(r, pad, -1.0f);
  std::int64_t pr = -1, pc = -1;
  for (std::size_t i = 0; i < avg.size(); ++i) {  // the curve, blue, joined point to point
    const std::int64_t c = pad + static_cast<std::int64_t>(static_cast<double>(i) / static_cast<double>(avg.size()) * (W - 2 * pad));
    const std::int64_t r = H - pad - static_cast<std::int64_t>(avg[i] / top * (H - 2 * pad));
    if (pr >= 0)
      for (std::int64_t k = 0, n = std::max(std::abs(r - pr), std::abs(c - pc)) + 1; k < n; ++k)
        put(pr + (r - pr) * k / n, pc + (c - pc) * k / n, -0.6f);
    pr = r, pc = c;
  }
  return img;
}
}  // namespace

int main(int argc, char** argv) try {
  std::map<std::string, std::string> a = {{"--steps", "2000"}, {"--seed", "0"}, {"--output", "train_dit"}};
  for (int i = 1; i < argc; i += 2) {
    if (std::string(argv[i]) == "--help") {
      std::printf("usage: train_dit [--steps N] [--seed N] [--output PREFIX]\n");
      return 0;
    }
    if (!a.count(argv[i]) || i + 1 >= argc) throw ArgumentError(std::string("train_dit: unknown argument or missing value: ") + argv[i]);
    a[argv[i]] = argv[i + 1];
  }
  const long steps = std::stol(a["--steps"]);
  if (steps < 1 || steps > 1000000) throw ArgumentError("train_dit: --steps must be from 1 to 10^6");
  Generator gen(std::stoull(a["--seed"]));

  // DiT-style model: 16 tokens of 64 dims, 4 classes + the null class (class_dropout_prob 0.1)
  const nlohmann::json config = {{"input_size", 8}, {"patch_size", 2}, {"in_channels", 1}, {"hidden_size", 64}, {"depth", 3},
                                 {"num_heads", 4}, {"num_classes", 4}, {"class_dropout_prob", 0.1}};
  models::DiT<float> model(models::DiTConfig::from_json(config));
  for (auto& [name, p] : nn::trainable_parameters<float>(model)) gen.fill_normal(*p, 0.0, 0.02);  // (upstream: Xavier + adaLN-Zero)
  models::DiT<float> ema = model;
  train::update_ema<float>(ema, model, 0.0);  // a copy, as train.py starts it
  train::AdamW<float, models::DiT<float>> opt(model, {.lr = 1e-3, .weight_decay = 0});
  const train::WarmupCosine schedule{50, steps, 0.1};
  auto grads = nn::zeros_like<float>(model);
  const diffusion::Schedule s(diffusion::named_beta_schedule("linear", 1000));
  const std::int64_t B = 32;

  std::vector<float> losses;
  for (long step = 0; step < steps; ++step) {
    auto [x0, y] = toy_batch(gen, B);
    for (std::int64_t b = 0; b < B; ++b)  // label dropout: the null class, as LabelEmbedder.token_drop
      if (gen.uniform<float>({1})[0] < 0.1f) y[b] = 4;
    const auto t = diffusion::sample_timesteps(gen, B, 1000);
    const Tensor<float> noise = gen.normal<float>(x0.shape()), x_t = diffusion::q_sample(s, x0, t, noise);
    Tensor<float> tf({B});
    for (std::int64_t b = 0; b < B; ++b) tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
    models::DiT<float>::Acts acts;
    const Tensor<float> out = model.forward_train(x_t, tf, y, acts);  // keeps what backward reads
    const auto terms = diffusion::training_losses(s, out, x0, x_t, t, noise);  // mse + vb, per sample
    float loss = 0;
    for (float v : terms.loss) loss += v / static_cast<float>(B);
    losses.push_back(loss);
    nn::zero_grad<float>(grads);
    model.backward(grads, acts, diffusion::training_losses_grad(s, out, x0, x_t, t, noise));
    train::clip_grad_norm<float>(grads, 1.0);
    opt.step(model, grads, schedule(step));
    train::update_ema<float>(ema, model, 0.99);
    if (step % 100 == 0 || step == steps - 1) std::printf("step %5ld  loss %.4f  (mse %.4f)\n", step, loss, terms.mse[0]);
  }
  write_png(a["--output"] + "_loss.png", plot(losses));

  // 4 samples of each class from the EMA model, 50 DDIM steps
  const std::vector<std::int64_t> labels = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
  const Tensor<std::int64_t> yl({16}, labels);
  auto net = [&](const Tensor<float>& x, const std::vector<std::int64_t>& t) {
    Tensor<float> tf({16});
    for (int b = 0; b < 16; ++b) tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
    return ema.forward(x, tf, yl);
  };
  diffusion::SampleOptions o;
  o.var_type = diffusion::ModelVarType::learned_range;
  o.clip_denoised = true;
  const auto spaced = diffusion::Schedule::spaced(diffusion::named_beta_schedule("linear", 1000), diffusion::space_timesteps(1000, "ddim50"));
  const Tensor<float> samples = diffusion::ddim_sample_loop<float>(spaced, net, {16, 1, 8, 8}, gen, o);
  write_png(a["--output"] + "_samples.png", make_grid(repeat(samples, "b c h w -> b c (h 4) (w 4)"), 4, 2, 1.0f));
  float first = 0, last = 0;
  const std::size_t k = std::min<std::size_t>(20, losses.size());
  for (std::size_t i = 0; i < k; ++i) first += losses[i] / k, last += losses[losses.size() - 1 - i] / k;
  if (!(last < 0.8f * first)) {  // the suite runs this example: a training that does not learn fails it
    std::fprintf(stderr, "train_dit: the loss did not fall (%.4f -> %.4f)\n", first, last);
    return 2;
  }
  std::printf("train_dit: %ld steps, loss %.4f -> %.4f (means of the first and last %zu); wrote %s_loss.png and %s_samples.png\n", steps, first,
              last, k, a["--output"].c_str(), a["--output"].c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
