// Class-conditional video sampling with Latte: classifier-free guidance (Latte's forward_with_cfg
// guides 4 channels along dim 2), learned sigma split along the channel axis of (B, F, C, H, W),
// DDPM or DDIM over respaced steps, seeded, with a progress bar; the latents are decoded frame by
// frame through the autoencoder and written as an animated GIF and a frame grid.
//
//   generate_video --weights LATTE.safetensors --config LATTE.json --vae VAE.safetensors --vae-config VAE.json [options]
//   generate_video [options]        no checkpoint: a small random Latte in pixel space, and it says so
//
// options: --sampler ddpm|ddim (ddim)  --steps N (50; 10 without a checkpoint)  --cfg-scale S (7.0)
//          --label N (0)  --seed N (0)  --threads N  --output video (writes video.gif and video.png)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <ditto/ditto.hpp>

using namespace ditto;

namespace {
long parse_int(const std::string& flag, const std::string& text, long lo, long hi) {
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < lo || v > hi)
    throw ArgumentError(detail::cat("generate_video: ", flag, " expects a whole number from ", lo, " to ", hi, ", got \"", text, "\""));
  return v;
}
nlohmann::json read_json(const std::string& path) {
  const std::string what = "generate_video: \"" + path + "\"";
  return parse_json(read_file(path, what, 16 << 20), what);
}
}  // namespace

int main(int argc, char** argv) try {
  std::map<std::string, std::string> a = {{"--sampler", "ddim"}, {"--cfg-scale", "7.0"}, {"--label", "0"}, {"--seed", "0"},
                                          {"--output", "video"}};
  const std::set<std::string> flags = {"--weights", "--config", "--vae", "--vae-config", "--sampler", "--steps",
                                       "--cfg-scale", "--label", "--seed", "--threads", "--output"};
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::puts("usage: generate_video [--weights W --config C [--vae V --vae-config VC]] [--sampler ddpm|ddim] [--steps N]\n"
                "                      [--cfg-scale S] [--label N] [--seed N] [--threads N] [--output NAME]");
      return 0;
    }
    if (!flags.count(f) || i + 1 >= argc) throw ArgumentError("generate_video: unknown argument or missing value: \"" + f + "\" (see --help)");
    a[f] = argv[++i];
  }
  if (a.count("--weights") != a.count("--config")) throw ArgumentError("generate_video: --weights and --config go together");
  if (a.count("--vae") != a.count("--vae-config")) throw ArgumentError("generate_video: --vae and --vae-config go together");
  if (a.count("--threads")) set_num_threads(static_cast<int>(parse_int("--threads", a["--threads"], 1, 4096)));
  const std::string sampler = a["--sampler"];
  if (sampler != "ddpm" && sampler != "ddim") throw ArgumentError("generate_video: --sampler must be ddpm or ddim, got \"" + sampler + "\"");
  const bool checkpoint = a.count("--weights") > 0;
  const long steps = a.count("--steps") ? parse_int("--steps", a["--steps"], 1, 1000) : (checkpoint ? 50 : 10);
  char* end = nullptr;
  const double cfg = std::strtod(a["--cfg-scale"].c_str(), &end);
  if (*end || !std::isfinite(cfg)) throw ArgumentError("generate_video: --cfg-scale expects a number, got \"" + a["--cfg-scale"] + "\"");
  const auto seed = static_cast<std::uint64_t>(parse_int("--seed", a["--seed"], 0, 1L << 62));

  models::LatteConfig config;
  if (checkpoint) {
    config = models::LatteConfig::from_json(read_json(a["--config"]));
  } else {
    config.input_size = 32, config.patch_size = 4, config.in_channels = 3, config.hidden_size = 192, config.depth = 4;
    config.num_heads = 3, config.num_frames = 8, config.num_classes = 10, config.extras = 2;
  }
  models::Latte<float> latte(config);
  if (checkpoint) {
    nn::load<float>(latte, a["--weights"]);
  } else {
    Generator init(seed + 1);
    for (auto& [name, t] : nn::named_parameters<float>(latte))
      if (name != "pos_embed" && name != "temp_embed") init.fill_normal(*t, 0.0, 0.02);
    std::printf("generate_video: no --weights given, so this is a small randomly initialized Latte in pixel space (8 frames of\n"
                "                32x32): the video shows the sampler at work, not a scene. Pass a checkpoint for real ones.\n");
  }
  const bool conditional = config.extras == 2;
  const std::int64_t label = parse_int("--label", a["--label"], 0, conditional ? config.num_classes - 1 : 0);
  const bool guided = conditional && cfg != 1.0;
  if (guided && !latte.y_embedder.has_null())
    throw ArgumentError("generate_video: guidance needs the null class, and this model has none (class_dropout_prob is 0); use --cfg-scale 1");

  // the model for the sampler: one video; with guidance [x; x] with [label; null], 4 channels of dim 2
  const Tensor<std::int64_t> y1({1}, std::vector<std::int64_t>{label}), y2({2}, std::vector<std::int64_t>{label, config.num_classes});
  auto model = [&](const Tensor<float>& x, const std::vector<std::int64_t>& t) {
    auto run = [&](const Tensor<float>& xb, const std::vector<std::int64_t>& tb) {
      Tensor<float> tf({static_cast<std::int64_t>(tb.size())});
      for (std::size_t i = 0; i < tb.size(); ++i) tf[static_cast<std::int64_t>(i)] = static_cast<float>(tb[i]);
      return latte.forward(xb, tf, conditional ? (xb.size(0) == 2 ? &y2 : &y1) : nullptr);
    };
    if (!guided) return run(x, t);
    return diffusion::cfg_model<float>(run, diffusion::Guidance{cfg, std::min<std::int64_t>(4, config.out_channels()), 2})(x, t);
  };
  const auto betas = diffusion::named_beta_schedule("linear", 1000);
  const Shape shape{1, config.num_frames, config.in_channels, config.input_size, config.input_size};
  diffusion::SampleOptions o;
  o.var_type = config.learn_sigma ? diffusion::ModelVarType::learned_range : diffusion::ModelVarType::fixed_small;
  o.channel_dim = 2;  // Latte's output is (B, F, C, H, W): the learned variance doubles C
  o.clip_denoised = config.in_channels == 3;
  o.progress = diffusion::terminal_progress(sampler == "ddpm" ? "DDPM" : "DDIM");
  Generator gen(seed);
  const auto s = diffusion::Schedule::spaced(betas, diffusion::space_timesteps(1000, (sampler == "ddim" ? "ddim" : "") + std::to_string(steps)));
  Tensor<float> latents = sampler == "ddpm" ? diffusion::ddpm_sample_loop<float>(s, model, shape, gen, o)
                                            : diffusion::ddim_sample_loop<float>(s, model, shape, gen, o);

  // frames (F, 3, H, W) in [-1, 1]: decoded one at a time through the autoencoder, or the pixels
  const std::int64_t F = config.num_frames;
  Tensor<float> video;
  if (a.count("--vae")) {
    models::AutoencoderKL<float> vae(models::VAEConfig::from_json(read_json(a["--vae-config"])));
    nn::load<float>(vae, a["--vae"]);
    if (config.in_channels != vae.config.embed_dim)
      throw ArgumentError(detail::cat("generate_video: Latte makes ", config.in_channels, "-channel latents, the autoencoder takes ",
                                      vae.config.embed_dim));
    const Tensor<float> frames = latents.reshape({F, config.in_channels, config.input_size, config.input_size});
    for (std::int64_t f = 0; f < F; ++f) {
      const std::int64_t per = frames.numel() / F;
      Tensor<float> z({1, config.in_channels, config.input_size, config.input_size});
      std::copy(frames.data() + f * per, frames.data() + (f + 1) * per, z.data());
      const Tensor<float> img = vae.decode(z);  // bounded memory: one frame at a time
      if (f == 0) video = Tensor<float>({F, img.size(1), img.size(2), img.size(3)});
      std::copy(img.begin(), img.end(), video.data() + f * img.numel());
    }
  } else {
    if (config.in_channels != 3)
      throw ArgumentError("generate_video: a latent Latte needs --vae and --vae-config to decode its frames");
    video = latents.reshape({F, 3, config.input_size, config.input_size}).clone();
  }
  for (auto& v : video) v = std::clamp(v, -1.f, 1.f);
  write_gif(a["--output"] + ".gif", video, 8.0);
  write_video_grid(a["--output"] + ".png", video, 8);
  std::printf("generate_video: %lld frames (%s, %ld steps, cfg %.2f, label %lld, seed %llu) -> %s.gif, %s.png\n",
              static_cast<long long>(F), sampler.c_str(), steps, cfg, static_cast<long long>(label),
              static_cast<unsigned long long>(seed), a["--output"].c_str(), a["--output"].c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
