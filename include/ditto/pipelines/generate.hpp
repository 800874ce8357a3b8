// Class-conditional image generation from a model that ditto-train made: the model file, the
// diffusion it was trained with, and sampling with classifier-free guidance.
//
//   auto g = pipelines::ImageDiffusion::load("examples/models/image.safetensors");
//   pipelines::SampleSettings s{.sampler = "ddim", .steps = 50, .cfg_scale = 2.0, .seed = 0};
//   Tensor<float> x = g.sample({0, 0, 1, 1}, s);     // (4, C, H, W) in [-1, 1]
//   s.cfg_interval = {0, 600};                        // guide only model timesteps 0..600
//
// A model file is a .safetensors of the EMA weights under upstream names, with metadata:
// "ditto_model" (dit, uvit, latte, vit, vivit or vae), "config" (the constructor's arguments, JSON), "run" (the
// whole ditto-train config that made it) and "classes" (the class names). The layer: pipelines/
// sits on top of everything (models, diffusion, train, data); nothing includes it but tools/,
// examples and tests (and ditto.hpp, which includes everything). A model card beside the file (image.safetensors -> image.json) holds the
// command that made it, its training time and, under "sample", the sampler settings docs/
// measured best, which become the defaults.
//
// Lazy on purpose: ImageDiffusion is an alias of BasicImageDiffusion<> and load_autoencoder a
// template (`template <int = 0>`) only so that a file that includes ditto.hpp compiles DiT, U-ViT,
// Latte and the samplers where it loads or samples a model, not in every file. An inline
// non-template is compiled, with every template it calls, in each file that includes it: the
// pipelines and the runner cost 12 of the 19 s `g++ -fsyntax-only` took on ditto.hpp before.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "../data/moving.hpp"
#include "../diffusion/dpm_solver.hpp"
#include "../diffusion/guidance.hpp"
#include "../diffusion/sampler.hpp"
#include "../diffusion/schedule.hpp"
#include "../io/file.hpp"
#include "../io/json.hpp"
#include "../io/safetensors.hpp"
#include "../models/config.hpp"
#include "../models/dit.hpp"
#include "../models/latte.hpp"
#include "../models/uvit.hpp"
#include "../models/vae.hpp"
#include "../models/vit.hpp"
#include "../nn/state_dict.hpp"

namespace ditto::pipelines {

// A guidance interval that holds every model timestep: DiT's guidance, at every step.
inline constexpr std::array<double, 2> every_timestep = {0, std::numeric_limits<double>::infinity()};

// The "diffusion" section of a run: the forward process a model was trained on and the sampler
// that docs/ measured best for it (ditto-sample's defaults).
struct DiffusionSettings {
  std::string noise_schedule = "linear";  // DiT's create_diffusion: linear betas over 1000 steps
  std::int64_t diffusion_steps = 1000;
  std::string sampler = "ddim";           // ddim, ddpm or dpm++
  std::int64_t sample_steps = 50;
  double cfg_scale = 1.0;                 // DiT's convention: uncond + s (cond - uncond); 1 = none
  // The guidance interval (Kynkaanniemi et al. 2024): the model timesteps [low, high] that are
  // guided; the others take the conditional prediction alone (half the model's work there).
  // Default: all of them, as DiT. JSON: "cfg_interval": [low, high].
  std::array<double, 2> cfg_interval = every_timestep;
  double snr_gamma = 0;                   // training only: Min-SNR-gamma loss weighting (diffusion::LossOptions); 0 = off, as DiT

  static DiffusionSettings from_json(const nlohmann::json& j) {
    models::Kwargs kw(j, "diffusion");
    DiffusionSettings d;
    d.noise_schedule = kw.get("noise_schedule", d.noise_schedule);
    d.diffusion_steps = kw.get("diffusion_steps", d.diffusion_steps);
    d.sampler = kw.get("sampler", d.sampler);
    d.sample_steps = kw.get("sample_steps", d.sample_steps);
    d.cfg_scale = kw.get("cfg_scale", d.cfg_scale);
    if (j.is_object() && j.contains("cfg_interval")) d.cfg_interval = read_interval(j["cfg_interval"], "diffusion config");
    kw.ignore("cfg_interval");  // read above
    d.snr_gamma = kw.get("snr_gamma", d.snr_gamma);
    kw.finish();
    d.validate();
    return d;
  }
  nlohmann::json to_json() const {
    nlohmann::json j = {{"noise_schedule", noise_schedule}, {"diffusion_steps", diffusion_steps}, {"sampler", sampler}, {"sample_steps", sample_steps}, {"cfg_scale", cfg_scale}, {"snr_gamma", snr_gamma}};
    if (!whole_interval(cfg_interval)) j["cfg_interval"] = {cfg_interval[0], cfg_interval[1]};
    return j;
  }
  static bool whole_interval(const std::array<double, 2>& iv) { return iv == every_timestep; }
  // [low, high] from JSON: two numbers, 0 <= low <= high
  static std::array<double, 2> read_interval(const nlohmann::json& v, const std::string& who) {
    using ditto::detail::cat;
    if (!v.is_array() || v.size() != 2 || !v[0].is_number() || !v[1].is_number())
      throw ArgumentError(cat(who, ": cfg_interval must be [low, high], two model timesteps, got ", v.dump().substr(0, 80)));
    const std::array<double, 2> iv = {v[0].get<double>(), v[1].get<double>()};
    check_interval(iv, who);
    return iv;
  }
  static void check_interval(const std::array<double, 2>& iv, const std::string& who) {
    using ditto::detail::cat;
    if (!(iv[0] >= 0) || !(iv[1] >= iv[0]) || std::isnan(iv[1]))
      throw ArgumentError(cat(who, ": the guidance interval must be [low, high] with 0 <= low <= high (model timesteps), got [", iv[0], ", ", iv[1], "]"));
  }
  void validate() const {
    using ditto::detail::cat;
    if (diffusion_steps < 2 || diffusion_steps > 100000) throw ArgumentError(cat("diffusion config: diffusion_steps must be from 2 to 100000, got ", diffusion_steps));
    (void)diffusion::named_beta_schedule(noise_schedule, static_cast<int>(diffusion_steps));  // names the known schedules when unknown
    check_sampler(sampler, sample_steps, cfg_scale, diffusion_steps, "diffusion config");
    check_interval(cfg_interval, "diffusion config");
    if (!std::isfinite(snr_gamma) || snr_gamma < 0 || snr_gamma > 1e6)
      throw ArgumentError(cat("diffusion config: snr_gamma must be 0 (off) or a positive number up to 1e6 (Min-SNR-gamma; the paper uses 5), got ", snr_gamma));
  }
  static void check_sampler(const std::string& sampler, std::int64_t steps, double cfg, std::int64_t T, const std::string& who) {
    using ditto::detail::cat;
    if (sampler != "ddim" && sampler != "ddpm" && sampler != "dpm++")
      throw ArgumentError(cat(who, ": sampler must be ddim, ddpm or dpm++, got \"", sampler, "\""));
    if (steps < 1 || steps > T) throw ArgumentError(cat(who, ": the sampler's steps must be from 1 to ", T, " (the diffusion's steps), got ", steps));
    if (!std::isfinite(cfg) || cfg < 0 || cfg > 100) throw ArgumentError(cat(who, ": the guidance scale must be from 0 to 100, got ", cfg));
  }
};

struct SampleSettings {
  std::string sampler = "ddim";
  std::int64_t steps = 50;
  double cfg_scale = 1.0;
  std::uint64_t seed = 0;
  bool progress = false;
  std::int64_t chunk = 100;  // samples per batch through the model (the values do not depend on it)
  std::array<double, 2> cfg_interval = every_timestep;  // the guided model timesteps (DiffusionSettings)
};

// The model file's metadata, checked.
struct ModelFile {
  std::string kind;          // dit, uvit, latte, vit, vivit, vae
  nlohmann::json config, run;
  std::vector<std::string> classes;

  static ModelFile read(const SafetensorsFile& f, const std::string& path) {
    using ditto::detail::cat;
    const auto& md = f.metadata();
    auto need = [&](const char* k) -> const std::string& {
      if (!md.count(k))
        throw IoError(cat(path, ": not a ditto model file (its metadata has no \"", k, "\"; ditto-train writes model.safetensors with ditto_model, config, run and classes)"));
      return md.at(k);
    };
    ModelFile m;
    m.kind = need("ditto_model");
    if (m.kind != "dit" && m.kind != "uvit" && m.kind != "vit" && m.kind != "latte" && m.kind != "vivit" && m.kind != "vae")
      throw IoError(cat(path, ": ditto_model is \"", m.kind.substr(0, 64), "\"; expected dit, uvit, latte, vit, vivit or vae"));
    m.config = parse_json(need("config"), path + " config");
    m.run = parse_json(need("run"), path + " run");
    const nlohmann::json classes = parse_json(need("classes"), path + " classes");
    if (!classes.is_array() || classes.empty() || classes.size() > 100000)
      throw IoError(cat(path, ": classes must be a non-empty list of names, got ", brief_json(classes)));
    for (const auto& c : classes) {
      if (!c.is_string()) throw IoError(cat(path, ": classes must be names (strings), got ", brief_json(c)));
      m.classes.push_back(c.get<std::string>());
    }
    return m;
  }
};

// A DiT or a U-ViT that generates images of a class (the conditioning every ditto-train
// diffusion run uses), or a Latte that generates videos (B, T, C, H, W) of a label (for moving
// Fashion-MNIST, a (class, direction) pair), with its diffusion.
template <int = 0>  // lazy: see the top of this file
struct BasicImageDiffusion {
  std::string kind;  // "dit", "uvit" or "latte"
  std::shared_ptr<models::DiT<float>> dit;
  std::shared_ptr<models::UViT<float>> uvit;
  std::shared_ptr<models::Latte<float>> latte;
  DiffusionSettings diffusion;
  std::vector<std::string> classes;

  static BasicImageDiffusion load(const std::string& path) {
    const SafetensorsFile f(path);
    const ModelFile m = ModelFile::read(f, path);
    if (m.kind != "dit" && m.kind != "uvit" && m.kind != "latte")
      throw ArgumentError(ditto::detail::cat(path, ": a \"", m.kind, "\" model does not generate (expected a dit, uvit or latte model file)"));
    BasicImageDiffusion g;
    g.kind = m.kind;
    g.classes = m.classes;
    g.diffusion = DiffusionSettings::from_json(m.run.contains("diffusion") ? m.run["diffusion"] : nlohmann::json::object());
    if (m.kind == "dit") {
      g.dit = std::make_shared<models::DiT<float>>(models::DiTConfig::from_json(m.config));
      nn::load<float>(*g.dit, f);
    } else if (m.kind == "latte") {
      g.latte = std::make_shared<models::Latte<float>>(models::LatteConfig::from_json(m.config));
      nn::load<float>(*g.latte, f);
      // the joint labels' directions: the run's data.directions (MovingOptions' default when absent)
      g.moving_directions = data::MovingOptions{}.directions;
      if (m.run.contains("data") && m.run["data"].is_object() && m.run["data"].contains("directions")) {
        const auto& d = m.run["data"]["directions"];
        if (!d.is_number_integer() || (d.get<std::int64_t>() != 4 && d.get<std::int64_t>() != 8))
          throw IoError(path + ": the run's data.directions is " + d.dump().substr(0, 64) + "; expected 4 or 8");
        g.moving_directions = d.get<std::int64_t>();
      }
    } else {
      g.uvit = std::make_shared<models::UViT<float>>(models::UViTConfig::from_json(m.config));
      nn::load<float>(*g.uvit, f);
    }
    g.check();
    // A card beside the file (image.safetensors -> image.json) may name the best measured
    // sampler settings: {"sample": {"sampler": "ddim", "steps": 50, "cfg_scale": 3.0}}, and
    // optionally "cfg_interval": [low, high].
    const std::string stem = path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0 ? path.substr(0, path.size() - 12) : "";
    if (!stem.empty() && ::access((stem + ".json").c_str(), R_OK) == 0) {
      const nlohmann::json card = parse_json(read_file(stem + ".json", stem + ".json", 1 << 20), stem + ".json");
      if (card.is_object() && card.contains("sample")) {
        models::Kwargs kw(card["sample"], stem + ".json sample");
        g.diffusion.sampler = kw.get("sampler", g.diffusion.sampler);
        g.diffusion.sample_steps = kw.get("steps", g.diffusion.sample_steps);
        g.diffusion.cfg_scale = kw.get("cfg_scale", g.diffusion.cfg_scale);
        if (card["sample"].contains("cfg_interval")) g.diffusion.cfg_interval = DiffusionSettings::read_interval(card["sample"]["cfg_interval"], stem + ".json sample");
        kw.ignore("cfg_interval");  // read above
        kw.finish();
        g.diffusion.validate();
      }
    }
    return g;
  }

  std::int64_t moving_directions = 4;  // latte on moving Fashion-MNIST: the directions of its joint labels

  bool video() const { return latte != nullptr; }
  // The labels the model is conditioned on (without the null class) and the null class.
  std::int64_t num_classes() const { return dit ? dit->config.num_classes : latte ? latte->config.num_classes : uvit->config.num_classes - 1; }
  std::int64_t null_class() const { return num_classes(); }
  bool has_null() const {
    if (dit) return dit->y_embedder.has_null();
    if (latte) return latte->config.extras == 2 && latte->y_embedder.has_null();
    return uvit->config.num_classes >= 2;
  }
  // (B, C, H, W) images, or (B, T, C, H, W) videos
  Shape image_shape(std::int64_t B) const {
    if (dit) return {B, dit->config.in_channels, dit->config.input_size, dit->config.input_size};
    if (latte) return {B, latte->config.num_frames, latte->config.in_channels, latte->config.input_size, latte->config.input_size};
    return {B, uvit->config.in_chans, uvit->config.img_size, uvit->config.img_size};
  }
  bool learned_sigma() const { return (dit && dit->config.learn_sigma) || (latte && latte->config.learn_sigma); }
  // As DiT's create_diffusion (Latte's too): learned_range with learn_sigma, else fixed_large
  // (sigma_small is False); U-ViT predicts the noise alone and ditto-train trains it with fixed_small.
  diffusion::ModelVarType var_type() const {
    if (dit || latte) return learned_sigma() ? diffusion::ModelVarType::learned_range : diffusion::ModelVarType::fixed_large;
    return diffusion::ModelVarType::fixed_small;
  }
  int channel_dim() const { return latte ? 2 : 1; }
  void check() const {
    if (latte && latte->config.extras != 2)
      throw ArgumentError("ImageDiffusion: a latte generates by label when extras is 2 (timestep + class), got " + std::to_string(latte->config.extras));
    // sample()'s noise keys: class << 40 stays below the DDPM stream's 2^60
    if (num_classes() >= (std::int64_t{1} << 20)) throw ArgumentError(ditto::detail::cat("ImageDiffusion: ", num_classes(), " classes; at most 2^20 - 1"));
    if (latte && num_classes() % moving_directions != 0)
      throw ArgumentError(ditto::detail::cat("ImageDiffusion: a latte's ", num_classes(), " labels are not (class, direction) pairs of ", moving_directions, " directions"));
    if (latte && latte->config.label_factors != 1 && latte->config.label_factors != moving_directions)
      throw ArgumentError(ditto::detail::cat("ImageDiffusion: a latte's label_factors is ", latte->config.label_factors, "; its labels are pairs of ",
                                             moving_directions, " directions, so expected ", moving_directions, " or 1"));
    if (uvit && uvit->config.num_classes < 2)
      throw ArgumentError("ImageDiffusion: a U-ViT generates by class when num_classes counts the classes plus the null class (U-ViT's convention), got " +
                          std::to_string(uvit->config.num_classes));
    if (static_cast<std::int64_t>(classes.size()) != num_classes())
      throw ArgumentError(ditto::detail::cat("ImageDiffusion: the model has ", num_classes(), " classes, its file names ", classes.size()));
  }

  // The model's output at x (B, C, H, W), timesteps t, labels y (the null class allowed).
  Tensor<float> forward(const Tensor<float>& x, const std::vector<std::int64_t>& t, const Tensor<std::int64_t>& y) const {
    Tensor<float> tf({static_cast<std::int64_t>(t.size())});
    for (std::size_t i = 0; i < t.size(); ++i) tf[static_cast<std::int64_t>(i)] = static_cast<float>(t[i]);
    if (dit) return dit->forward(x, tf, y);
    return latte ? latte->forward(x, tf, &y) : uvit->forward(x, tf, &y);
  }

  // Samples (labels.size(), C, H, W) in [-1, 1]. The k-th sample of label c starts from the noise
  // of Generator(seed, (c << 40) + (k << 20)): with DDIM and DPM-Solver++ (deterministic from
  // there) a sample does not depend on how many are drawn, on the other labels or on `chunk`.
  // DDPM also draws noise at every step, for a chunk at once: its samples depend on the chunking.
  Tensor<float> sample(const std::vector<std::int64_t>& labels, const SampleSettings& s) const {
    using ditto::detail::cat;
    DiffusionSettings::check_sampler(s.sampler, s.steps, s.cfg_scale, diffusion.diffusion_steps, "sample");
    DiffusionSettings::check_interval(s.cfg_interval, "sample");
    if (labels.empty() || labels.size() > (std::size_t{1} << 20)) throw ArgumentError("ImageDiffusion.sample: expected 1 to 2^20 labels");
    for (auto y : labels)
      if (y < 0 || y >= num_classes()) throw ArgumentError(cat("ImageDiffusion.sample: label ", y, " is not a class of this model (0 to ", num_classes() - 1, ")"));
    if (s.cfg_scale != 1.0 && !has_null())
      throw ArgumentError("ImageDiffusion.sample: guidance needs the null class, and this model has none (trained without label dropout); use cfg_scale 1");
    if (s.chunk < 1) throw ArgumentError(cat("ImageDiffusion.sample: chunk must be >= 1, got ", s.chunk));
    const auto N = static_cast<std::int64_t>(labels.size());
    Tensor<float> out(image_shape(N));
    const std::int64_t per = out.numel() / N;
    if (per > (std::int64_t{1} << 21)) throw ArgumentError(cat("ImageDiffusion.sample: a sample of ", per, " values is more than the 2^21 its generator may draw"));
    if (s.sampler == "ddpm" && static_cast<double>(s.steps) * static_cast<double>(per) > 0x1p37)  // a chunk's stream below
      throw ArgumentError(cat("ImageDiffusion.sample: ddpm draws ", s.steps, " x ", per, " values a sample, more than its noise stream's 2^37"));
    std::vector<std::uint64_t> noise_key(static_cast<std::size_t>(N));
    {
      std::vector<std::int64_t> seen(static_cast<std::size_t>(num_classes()), 0);
      for (std::int64_t i = 0; i < N; ++i) {
        const auto c = static_cast<std::uint64_t>(labels[static_cast<std::size_t>(i)]);
        noise_key[static_cast<std::size_t>(i)] = (c << 40) + (static_cast<std::uint64_t>(seen[c]++) << 20);
      }
    }
    const auto betas = diffusion::named_beta_schedule(diffusion.noise_schedule, static_cast<int>(diffusion.diffusion_steps));
    const int T = static_cast<int>(diffusion.diffusion_steps);
    for (std::int64_t lo = 0; lo < N; lo += s.chunk) {
      const std::int64_t B = std::min(s.chunk, N - lo);
      Tensor<float> x0(image_shape(B));
      for (std::int64_t b = 0; b < B; ++b) {
        Generator g(s.seed, noise_key[static_cast<std::size_t>(lo + b)]);
        const Tensor<float> z = g.normal<float>({per});
        std::copy(z.begin(), z.end(), x0.data() + b * per);
      }
      std::vector<std::int64_t> ys(labels.begin() + lo, labels.begin() + lo + B), y2 = ys;
      for (std::int64_t b = 0; b < B; ++b) y2.push_back(null_class());
      const Tensor<std::int64_t> y_plain({B}, ys), y_cfg({2 * B}, y2);
      // DiT's forward_with_cfg guides 3 channels, Latte's 4 (of dimension 2), U-ViT's all
      const std::int64_t guided = dit ? std::min<std::int64_t>(3, dit->config.out_channels()) : latte ? std::min<std::int64_t>(4, latte->config.out_channels()) : -1;
      const diffusion::Guidance guidance{s.cfg_scale, guided, channel_dim(), s.cfg_interval[0], s.cfg_interval[1]};
      auto model = [&](const Tensor<float>& x, const std::vector<std::int64_t>& t) {
        // the loops give every sample of a batch the same timestep; outside the interval the
        // unconditional half is not computed
        if (s.cfg_scale == 1.0 || t.empty() || !guidance.active(static_cast<double>(t[0]))) return forward(x, t, y_plain);
        auto two = [&](const Tensor<float>& x2, const std::vector<std::int64_t>& t2) { return forward(x2, t2, y_cfg); };
        return diffusion::cfg_model<float>(two, guidance)(x, t);
      };
      // ddpm's noise: chunk lo's stream starts at 2^60 + lo * 2^36, room for steps * B * per < 2^36 draws
      Generator gen(s.seed, (static_cast<std::uint64_t>(1) << 60) + static_cast<std::uint64_t>(lo) * (std::uint64_t{1} << 36));
      Tensor<float> xs;
      diffusion::SampleOptions o;
      o.var_type = var_type();
      o.clip_denoised = true;  // pixels live in [-1, 1]
      o.channel_dim = channel_dim();
      o.progress = s.progress ? diffusion::terminal_progress(s.sampler.c_str()) : diffusion::Progress();
      if (s.sampler == "dpm++") {
        diffusion::DpmSolverPPOptions pp;
        pp.steps = static_cast<int>(s.steps);
        pp.progress = o.progress;
        pp.channel_dim = channel_dim();
        xs = diffusion::dpmpp_sample_loop<float>(diffusion::Schedule(betas), model, x0.shape(), gen, pp, x0);
      } else {
        const std::string spacing = (s.sampler == "ddim" ? "ddim" : "") + std::to_string(s.steps);
        const auto sched = diffusion::Schedule::spaced(betas, diffusion::space_timesteps(T, spacing));
        xs = s.sampler == "ddim" ? diffusion::ddim_sample_loop<float>(sched, model, x0.shape(), gen, o, x0)
                                 : diffusion::ddpm_sample_loop<float>(sched, model, x0.shape(), gen, o, x0);
      }
      for (std::int64_t i = 0; i < B * per; ++i) out[lo * per + i] = std::clamp(xs[i], -1.0f, 1.0f);
    }
    return out;
  }
};
using ImageDiffusion = BasicImageDiffusion<>;

// A model of one kind from a file ditto-train wrote: its config from the metadata, its weights
// by name. `what` says what the caller wanted, for the error when the file holds another kind.
template <class Model, class Config>
Model load_model_file(const std::string& path, const std::string& kind, const std::string& what) {
  const SafetensorsFile f(path);
  const ModelFile m = ModelFile::read(f, path);
  if (m.kind != kind) throw ArgumentError(path + ": a \"" + m.kind + "\" model file; expected " + what);
  Model model(Config::from_json(m.config));
  nn::load<float>(model, f);
  return model;
}

// An autoencoder ditto-train made (model.safetensors of a "vae" run): ldm's AutoencoderKL with
// the EMA weights, its config the run's model_config.
template <int = 0>  // lazy: see the top of this file
inline models::AutoencoderKL<float> load_autoencoder(const std::string& path) {
  return load_model_file<models::AutoencoderKL<float>, models::VAEConfig>(path, "vae", "a vae (an autoencoder ditto-train made)");
}

// K labels of each class in order: 0 x K, 1 x K, ... (a class grid's rows).
inline std::vector<std::int64_t> labels_per_class(std::int64_t classes, std::int64_t K) {
  if (classes < 1 || K < 1 || classes * K > 10000000)
    throw ArgumentError(ditto::detail::cat("labels_per_class: expected classes >= 1 and K >= 1 (at most 10^7 in all), got ", classes, " and ", K));
  std::vector<std::int64_t> y;
  for (std::int64_t c = 0; c < classes; ++c)
    for (std::int64_t k = 0; k < K; ++k) y.push_back(c);
  return y;
}

// Moving Fashion-MNIST's joint labels for K clips of each class in class order, the directions
// cycling within a class: clip k of class c is c * directions + k % directions.
inline std::vector<std::int64_t> video_labels_per_class(std::int64_t classes, std::int64_t directions, std::int64_t K) {
  if (directions < 1) throw ArgumentError(ditto::detail::cat("video_labels_per_class: expected directions >= 1, got ", directions));
  std::vector<std::int64_t> y;
  for (const std::int64_t c : labels_per_class(classes, K)) y.push_back(c * directions + static_cast<std::int64_t>(y.size() % static_cast<std::size_t>(K)) % directions);
  return y;
}

}  // namespace ditto::pipelines
