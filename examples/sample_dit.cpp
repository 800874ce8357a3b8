// Class-conditional sampling from a DiT, as DiT's sample.py does it: classifier-free guidance
// (the null class in the second half of the batch, DiT's forward_with_cfg), learned sigma, DDPM
// over 250 respaced steps (or DDIM, or DPM-Solver++), seeded, with a progress bar, written as a
// PNG grid.
//
//   sample_dit --weights W.safetensors --config CONFIG.json [options]     a checkpoint
//   sample_dit [options]                                                  no checkpoint: a small random DiT
//
// options: --sampler ddpm|ddim|dpm++ (ddpm)  --steps N (250; 25 for dpm++)  --cfg-scale S (4.0)
//          --labels 207,360,387 (the labels of sample.py)  --seed N (0)  --threads N  --output grid.png
//          --vae VAE.safetensors --vae-config VAE.json   the autoencoder that decodes latents
//
// Pixel-space models (3 input channels) give pictures directly. Latent models (DiT's released
// checkpoints: 4 channels on 32x32 latents of 256x256 images) are decoded by the Stable
// Diffusion autoencoder given with --vae (FrozenAutoencoderKL's arguments in --vae-config);
// without one, the latents' first three channels are written, and the program says so.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

namespace {
std::vector<std::int64_t> parse_labels(const std::string& text) {
  std::vector<std::int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0)
      throw ArgumentError("sample_dit: --labels expects comma-separated class numbers, e.g. 207,360,387, got \"" + text + "\"");
    out.push_back(v);
  }
  if (out.empty()) throw ArgumentError("sample_dit: --labels is empty");
  return out;
}

long parse_int(const std::string& flag, const std::string& text, long lo, long hi) {
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < lo || v > hi)
    throw ArgumentError(detail::cat("sample_dit: ", flag, " expects a whole number from ", lo, " to ", hi, ", got \"", text, "\""));
  return v;
}
}  // namespace

int main(int argc, char** argv) try {
  std::map<std::string, std::string> a = {{"--sampler", "ddpm"}, {"--cfg-scale", "4.0"}, {"--labels", "207,360,387,974,88,979,417,279"},
                                          {"--seed", "0"}, {"--output", "dit_samples.png"}};
  const std::set<std::string> flags = {"--weights", "--config", "--sampler", "--steps", "--cfg-scale", "--labels",
                                       "--seed", "--threads", "--output", "--vae", "--vae-config"};
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::puts("usage: sample_dit [--weights W.safetensors --config CONFIG.json] [--sampler ddpm|ddim|dpm++] [--steps N]\n"
                "                  [--cfg-scale S] [--labels 207,360,...] [--seed N] [--threads N] [--output grid.png]\n"
                "                  [--vae VAE.safetensors --vae-config VAE.json]");
      return 0;
    }
    if (!flags.count(f) || i + 1 >= argc)
      throw ArgumentError("sample_dit: unknown argument or missing value: \"" + f + "\" (see --help)");
    a[f] = argv[++i];
  }
  if (a.count("--weights") != a.count("--config"))
    throw ArgumentError("sample_dit: --weights and --config go together (the checkpoint and its constructor arguments)");
  if (a.count("--vae") != a.count("--vae-config"))
    throw ArgumentError("sample_dit: --vae and --vae-config go together (the autoencoder's weights and its arguments)");
  if (a.count("--threads")) set_num_threads(static_cast<int>(parse_int("--threads", a["--threads"], 1, 4096)));
  const std::string sampler = a["--sampler"];
  if (sampler != "ddpm" && sampler != "ddim" && sampler != "dpm++")
    throw ArgumentError("sample_dit: --sampler must be ddpm, ddim or dpm++, got \"" + sampler + "\"");
  const bool checkpoint = a.count("--weights") > 0;
  const long steps = a.count("--steps") ? parse_int("--steps", a["--steps"], 1, 1000) : (sampler == "dpm++" ? 25 : checkpoint ? 250 : 50);
  char* end = nullptr;
  const double cfg = std::strtod(a["--cfg-scale"].c_str(), &end);
  if (*end || !std::isfinite(cfg)) throw ArgumentError("sample_dit: --cfg-scale expects a number, got \"" + a["--cfg-scale"] + "\"");
  const auto seed = static_cast<std::uint64_t>(parse_int("--seed", a["--seed"], 0, 1L << 62));

  // the model
  models::DiTConfig config;
  if (checkpoint) {
    const std::string what = "sample_dit: --config \"" + a["--config"] + "\"";
    config = models::DiTConfig::from_json(parse_json(read_file(a["--config"], what, 16 << 20), what));
  } else {
    config = models::dit_config("DiT-S/2", 32);
    config.in_channels = 3;
    config.num_classes = 1000;
  }
  models::DiT<float> dit(config);
  if (checkpoint) {
    nn::load<float>(dit, a["--weights"]);
  } else {
    Generator init(seed + 1);
    for (auto& [name, t] : nn::named_parameters<float>(dit))
      if (name != "pos_embed") init.fill_normal(*t, 0.0, 0.02);
    std::printf("sample_dit: no --weights given, so this is a randomly initialized DiT-S/2 in pixel space (32x32, 3 channels):\n"
                "            the samples show the sampler at work, not pictures. Pass a checkpoint for real ones.\n");
  }
  auto labels = parse_labels(a["--labels"]);
  const bool has_null = dit.y_embedder.has_null();
  for (auto y : labels)
    if (y >= config.num_classes)
      throw ArgumentError(detail::cat("sample_dit: label ", y, " is not a class of this model (", config.num_classes, " classes)"));
  if (cfg != 1.0 && !has_null)
    throw ArgumentError("sample_dit: guidance needs the null class, and this model has none (class_dropout_prob is 0); use --cfg-scale 1");
  const auto B = static_cast<std::int64_t>(labels.size());

  // the guided model: [x; x] with [y; null], DiT's forward_with_cfg (3 guided channels), first half back
  std::vector<std::int64_t> y2 = labels;
  for (std::int64_t b = 0; b < B; ++b) y2.push_back(config.num_classes);
  const Tensor<std::int64_t> y_cfg({2 * B}, y2), y_plain({B}, labels);
  auto model = [&](const Tensor<float>& x, const std::vector<std::int64_t>& t) {
    if (cfg == 1.0) {
      Tensor<float> tf({B});
      for (std::int64_t b = 0; b < B; ++b) tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
      return dit.forward(x, tf, y_plain);
    }
    auto two = [&](const Tensor<float>& x2, const std::vector<std::int64_t>& t2) {
      Tensor<float> tf({2 * B});
      for (std::int64_t b = 0; b < 2 * B; ++b) tf[b] = static_cast<float>(t2[static_cast<std::size_t>(b)]);
      return dit.forward(x2, tf, y_cfg);
    };
    return diffusion::cfg_model<float>(two, diffusion::Guidance{cfg, std::min<std::int64_t>(3, config.out_channels()), 1})(x, t);
  };

  // the sampler, as DiT's create_diffusion: linear betas over 1000 steps, learned sigma
  const auto betas = diffusion::named_beta_schedule("linear", 1000);
  const Shape shape{B, config.in_channels, config.input_size, config.input_size};
  Generator gen(seed);
  Tensor<float> samples;
  diffusion::SampleOptions o;
  o.var_type = config.learn_sigma ? diffusion::ModelVarType::learned_range : diffusion::ModelVarType::fixed_small;
  o.clip_denoised = config.in_channels == 3;  // pixels live in [-1, 1]; latents do not
  if (sampler == "ddpm") {
    o.progress = diffusion::terminal_progress("DDPM");
    const auto s = diffusion::Schedule::spaced(betas, diffusion::space_timesteps(1000, std::to_string(steps)));
    samples = diffusion::ddpm_sample_loop<float>(s, model, shape, gen, o);
  } else if (sampler == "ddim") {
    o.progress = diffusion::terminal_progress("DDIM");
    const auto s = diffusion::Schedule::spaced(betas, diffusion::space_timesteps(1000, "ddim" + std::to_string(steps)));
    samples = diffusion::ddim_sample_loop<float>(s, model, shape, gen, o);
  } else {
    diffusion::DpmSolverPPOptions pp;
    pp.steps = static_cast<int>(steps);
    samples = diffusion::dpmpp_sample_loop<float>(diffusion::Schedule(betas), model, shape, gen, pp);
  }

  // the picture
  Tensor<float> pictures = samples;
  if (a.count("--vae")) {
    const std::string what = "sample_dit: --vae-config \"" + a["--vae-config"] + "\"";
    models::AutoencoderKL<float> vae(models::VAEConfig::from_json(parse_json(read_file(a["--vae-config"], what, 16 << 20), what)));
    nn::load<float>(vae, a["--vae"]);
    if (samples.size(1) != vae.config.embed_dim)
      throw ArgumentError(detail::cat("sample_dit: the DiT makes ", samples.size(1), "-channel latents, the autoencoder takes ",
                                      vae.config.embed_dim));
    pictures = vae.decode(samples);  // DiT samples scaled latents, as the autoencoder's decode expects
    for (auto& v : pictures) v = std::clamp(v, -1.f, 1.f);
  } else if (config.in_channels != 3) {
    std::printf("sample_dit: a latent model (%lld channels) and no --vae to decode with, so the grid shows the latents'\n"
                "            first channels, scaled to [-1, 1]\n",
                static_cast<long long>(config.in_channels));
    const std::int64_t C = std::min<std::int64_t>(3, config.in_channels), HW = config.input_size * config.input_size;
    pictures = Tensor<float>({B, C, config.input_size, config.input_size});
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < C * HW; ++i) pictures[b * C * HW + i] = std::clamp(samples[b * config.in_channels * HW + i] / 2.5f, -1.f, 1.f);
  }
  write_png(a["--output"], make_grid(pictures, std::min<std::int64_t>(B, 4)));
  std::printf("sample_dit: %lld samples (%s, %ld steps, cfg %.2f, seed %llu) -> %s\n", static_cast<long long>(B), sampler.c_str(), steps, cfg,
              static_cast<unsigned long long>(seed), a["--output"].c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
