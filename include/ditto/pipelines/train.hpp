// ditto-train as a library call: one JSON config trains a model of the library on a dataset,
// with DiT's train.py recipe (AdamW, EMA, label dropout, checkpoints), and writes what a run
// leaves behind: a checkpoint to resume from, the EMA model, the loss curve, sample grids.
//
//   const auto run = pipelines::RunConfig::from_json(parse_json(read_file("image.json")));
//   pipelines::train(run, {.output = "runs/image"});                    // or {.resume = true}
//
// The config (docs/train.md has every key):
//   {"model": "dit" | "uvit" | "vit" | "latte" | "vivit" | "vae",
//    "model_config": {upstream constructor arguments},
//    "data": {"dataset": "fashion_mnist" | "image_folder" | "moving_fashion_mnist", "hflip": false, ...},
//    "train": {"global_batch_size": 256, "steps": 1000, "lr": 1e-4, "weight_decay": 0, "ema_decay": 0.9999,
//              "ckpt_every": 0, "log_every": 100, "sample_every": 0, "seed": 0, ...},
//    "diffusion": {"noise_schedule": "linear", "diffusion_steps": 1000, "sampler": "ddim", ...}}
// A key no section knows is an error naming it.
//
// Randomness: every draw that belongs to a sample (its flip, label dropout, timestep and noise)
// comes from Generator(noise_seed, (step * global_batch_size + i) << 24), i its place in the
// global batch. A sample's draws do not depend on the micro-batch or on which process computes
// it, and the data order is ShuffledBatches' (seeded, resumable): a resumed run continues bit for
// bit, and data-parallel ranks reproduce the one-process run.
//
// In the output folder: checkpoint.safetensors (model, EMA, optimizer, step, data position,
// losses: train/checkpoint.hpp, written atomically), model.safetensors (the EMA weights with the
// metadata pipelines/generate.hpp reads), loss.png, samples.png (diffusion: 10 rows of classes,
// or a row of frames per (class, direction) clip) or accuracy lines (classifiers), and config.json.
// Video models (latte, vivit) train on moving Fashion-MNIST clips (data/moving.hpp), labelled by
// the joint (class, direction) label class * directions + direction.
//
// Lazy on purpose: train() is a template (`template <int = 0>`) only so that a file that includes
// ditto.hpp compiles the training of every model where it calls train(), not in every file. An
// inline non-template is compiled, with every template it calls, in each file that includes it
// (docs/development.md, CI's time budget).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../data/fashion_mnist.hpp"
#include "../data/image_folder.hpp"
#include "../data/loader.hpp"
#include "../data/moving.hpp"
#include "../diffusion/gaussian.hpp"
#include "../diffusion/losses.hpp"
#include "../diffusion/schedule.hpp"
#include "../einops/rearrange.hpp"
#include "../io/file.hpp"
#include "../io/image.hpp"
#include "../io/json.hpp"
#include "../models/config.hpp"
#include "../models/dit.hpp"
#include "../models/uvit.hpp"
#include "../models/latte.hpp"
#include "../models/vit.hpp"
#include "../models/vivit.hpp"
#include "../models/vae.hpp"
#include "../nn/loss.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../train/checkpoint.hpp"
#include "../train/optim.hpp"
#include "generate.hpp"

namespace ditto::pipelines {

// ---- the config ------------------------------------------------------------------------------

struct TrainSettings {
  std::int64_t global_batch_size = 256;  // DiT's train.py
  std::int64_t micro_batch_size = 0;     // samples per forward/backward (0: the whole batch); the result does not depend on it
  std::int64_t steps = 1000;
  double lr = 1e-4, weight_decay = 0.0, ema_decay = 0.9999;  // DiT's train.py: AdamW(lr=1e-4, weight_decay=0), EMA 0.9999
  double beta1 = 0.9, beta2 = 0.999, grad_clip = 0.0;        // grad_clip 0: none (DiT clips nothing)
  std::int64_t warmup_steps = 0;
  std::string lr_schedule = "constant";  // or "cosine": from lr to 0 over the steps, after the warmup
  double label_smoothing = 0.0;          // classifiers only
  double kl_weight = 1e-6;               // the autoencoder: the KL term's weight (ldm's lossconfig kl_weight)
  std::string reconstruction = "l1";     // the autoencoder: "l1" (ldm's |x - x'|) or "l2" ((x - x')^2), summed over pixels
  std::int64_t ckpt_every = 0, log_every = 100, sample_every = 0;  // 0: only at the end (ckpt, sample), never (log)
  std::int64_t seed = 0, threads = 0;    // threads 0: the library's default

  static TrainSettings from_json(const nlohmann::json& j) {
    models::Kwargs kw(j, "train");
    TrainSettings t;
    t.global_batch_size = kw.get("global_batch_size", t.global_batch_size);
    t.micro_batch_size = kw.get("micro_batch_size", t.micro_batch_size);
    t.steps = kw.get("steps", t.steps);
    t.lr = kw.get("lr", t.lr);
    t.weight_decay = kw.get("weight_decay", t.weight_decay);
    t.ema_decay = kw.get("ema_decay", t.ema_decay);
    t.beta1 = kw.get("beta1", t.beta1);
    t.beta2 = kw.get("beta2", t.beta2);
    t.grad_clip = kw.get("grad_clip", t.grad_clip);
    t.warmup_steps = kw.get("warmup_steps", t.warmup_steps);
    t.lr_schedule = kw.get("lr_schedule", t.lr_schedule);
    t.label_smoothing = kw.get("label_smoothing", t.label_smoothing);
    t.kl_weight = kw.get("kl_weight", t.kl_weight);
    t.reconstruction = kw.get("reconstruction", t.reconstruction);
    t.ckpt_every = kw.get("ckpt_every", t.ckpt_every);
    t.log_every = kw.get("log_every", t.log_every);
    t.sample_every = kw.get("sample_every", t.sample_every);
    t.seed = kw.get("seed", t.seed);
    t.threads = kw.get("threads", t.threads);
    kw.finish();
    t.validate();
    return t;
  }
  void validate() const {
    using ditto::detail::cat;
    auto fail = [](const std::string& m) { throw ArgumentError("train config: " + m); };
    if (global_batch_size < 1 || global_batch_size > 65536) fail(cat("global_batch_size must be from 1 to 65536, got ", global_batch_size));
    if (micro_batch_size < 0 || micro_batch_size > global_batch_size)
      fail(cat("micro_batch_size must be from 0 (the whole batch) to global_batch_size ", global_batch_size, ", got ", micro_batch_size));
    // (every step's loss goes into the checkpoint's metadata: 10^6 of them stay far below its 100 MB bound)
    if (steps < 1 || steps > 1000000) fail(cat("steps must be from 1 to 10^6, got ", steps));
    if (!(lr >= 0 && lr < 10)) fail(cat("lr must be in [0, 10), got ", lr));
    if (!(weight_decay >= 0 && weight_decay < 10)) fail(cat("weight_decay must be in [0, 10), got ", weight_decay));
    if (!(ema_decay >= 0 && ema_decay < 1)) fail(cat("ema_decay must be in [0, 1), got ", ema_decay));
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) fail(cat("beta1 and beta2 must be in [0, 1), got ", beta1, " and ", beta2));
    if (!(grad_clip >= 0) || !std::isfinite(grad_clip)) fail(cat("grad_clip must be >= 0 (0: none), got ", grad_clip));
    if (warmup_steps < 0) fail(cat("warmup_steps must be >= 0, got ", warmup_steps));
    if (lr_schedule != "constant" && lr_schedule != "cosine") fail("lr_schedule must be \"constant\" or \"cosine\", got \"" + lr_schedule + "\"");
    if (!(label_smoothing >= 0 && label_smoothing <= 1)) fail(cat("label_smoothing must be in [0, 1], got ", label_smoothing));
    if (!(kl_weight >= 0 && kl_weight <= 1e6)) fail(cat("kl_weight must be from 0 to 10^6, got ", kl_weight));
    if (reconstruction != "l1" && reconstruction != "l2") fail("reconstruction must be \"l1\" or \"l2\", got \"" + reconstruction.substr(0, 64) + "\"");
    if (ckpt_every < 0 || log_every < 0 || sample_every < 0) fail("ckpt_every, log_every and sample_every must be >= 0 (0: at the end only / never)");
    if (seed < 0) fail(cat("seed must be >= 0, got ", seed));
    if (threads < 0 || threads > 4096) fail(cat("threads must be from 0 (the default) to 4096, got ", threads));
  }
  double lr_factor(std::int64_t step) const {
    if (step < warmup_steps) return static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (lr_schedule == "constant") return 1.0;
    return train::WarmupCosine{warmup_steps, steps, 0.0}(step);
  }
};

struct DataSettings {
  std::string dataset = "fashion_mnist";  // or "image_folder", or "moving_fashion_mnist" (video clips)
  std::string root;         // fashion_mnist (and the clips' source): "" for DITTO_FASHION_MNIST or Debian's folder; image_folder: root/<class>/<picture>
  std::string test_root;    // image_folder: another such folder, for a classifier's test accuracy ("" : none)
  std::int64_t image_size = 0, channels = 3;  // image_folder: DiT's center_crop_arr to image_size; 3 (RGB) or 1 (grey)
  bool hflip = false;       // random horizontal flip (DiT's transform flips; clothes survive it)
  std::int64_t crop_padding = 0;  // torchvision's RandomCrop(size, padding): a random shift of up to this many pixels (0: none)
  double p_uncond = 0.1;    // U-ViT's label dropout (its dataset config's p_uncond); DiT's is class_dropout_prob
  // moving_fashion_mnist: the clips' recipe (data::MovingOptions), how many clips each split
  // has, and the seed that fixes them (clip i of the training split is a pure function of it)
  data::MovingOptions moving;
  std::int64_t train_clips = 60000, test_clips = 10000, clip_seed = 0;

  bool is_video() const { return dataset == "moving_fashion_mnist"; }

  static DataSettings from_json(const nlohmann::json& j) {
    models::Kwargs kw(j, "data");
    DataSettings d;
    d.dataset = kw.get("dataset", d.dataset);
    d.root = kw.get("root", d.root);
    d.test_root = kw.get("test_root", d.test_root);
    d.image_size = kw.get("image_size", d.image_size);
    d.channels = kw.get("channels", d.channels);
    d.hflip = kw.get("hflip", d.hflip);
    d.crop_padding = kw.get("crop_padding", d.crop_padding);
    d.p_uncond = kw.get("p_uncond", d.p_uncond);
    d.moving.frames = kw.get("frames", d.moving.frames);
    d.moving.canvas = kw.get("canvas", d.moving.canvas);
    d.moving.item = kw.get("item", d.moving.item);
    d.moving.max_items = kw.get("max_items", d.moving.max_items);
    d.moving.directions = kw.get("directions", d.moving.directions);
    d.moving.speed = kw.get("speed", d.moving.speed);
    d.train_clips = kw.get("train_clips", d.train_clips);
    d.test_clips = kw.get("test_clips", d.test_clips);
    d.clip_seed = kw.get("clip_seed", d.clip_seed);
    kw.finish();
    using ditto::detail::cat;
    if (d.dataset != "fashion_mnist" && d.dataset != "image_folder" && d.dataset != "moving_fashion_mnist")
      throw ArgumentError("data config: dataset \"" + d.dataset + "\" is not known; expected \"fashion_mnist\", \"image_folder\" or \"moving_fashion_mnist\"");
    if (d.dataset == "image_folder") {
      if (d.root.empty()) throw ArgumentError("data config: an image_folder needs \"root\", the folder of class sub-folders");
      if (d.image_size < 1 || d.image_size > 4096) throw ArgumentError(cat("data config: an image_folder needs \"image_size\" from 1 to 4096, got ", d.image_size));
      if (d.channels != 1 && d.channels != 3) throw ArgumentError(cat("data config: channels must be 1 or 3, got ", d.channels));
    } else if (d.image_size != 0 || !d.test_root.empty() || j.contains("channels")) {
      throw ArgumentError("data config: image_size, channels and test_root are an image_folder's (Fashion-MNIST is 28 x 28 grey, with its test split)");
    }
    for (const char* k : {"frames", "canvas", "item", "max_items", "directions", "speed", "train_clips", "test_clips", "clip_seed"})
      if (!d.is_video() && j.contains(k))
        throw ArgumentError(cat("data config: \"", k, "\" is a moving_fashion_mnist key; dataset is \"", d.dataset, "\""));
    if (d.is_video()) {
      d.moving.validate();
      if (d.hflip) throw ArgumentError("data config: hflip would reverse the clips' left and right motion, so their direction labels; moving_fashion_mnist trains without it");
      if (d.crop_padding != 0) throw ArgumentError("data config: crop_padding is for pictures; the clips' items already move over their canvas (set \"speed\" and \"canvas\" instead)");
      if (d.train_clips < 1 || d.train_clips > 100000000 || d.test_clips < 0 || d.test_clips > 100000000)
        throw ArgumentError(cat("data config: train_clips must be from 1 to 10^8 and test_clips from 0 to 10^8, got ", d.train_clips, " and ", d.test_clips));
      if (d.clip_seed < 0) throw ArgumentError(cat("data config: clip_seed must be >= 0, got ", d.clip_seed));
    }
    if (d.crop_padding < 0 || d.crop_padding > 64) throw ArgumentError(cat("data config: crop_padding must be from 0 to 64 pixels, got ", d.crop_padding));
    if (!(d.p_uncond >= 0 && d.p_uncond < 1)) throw ArgumentError(cat("data config: p_uncond must be in [0, 1), got ", d.p_uncond));
    return d;
  }
};

struct RunConfig {
  std::string model;           // dit, uvit, latte (diffusion); vit, vivit (classifiers); vae (the autoencoder)
  nlohmann::json model_config;  // the constructor's arguments
  DataSettings data;
  TrainSettings train;
  DiffusionSettings diffusion;
  nlohmann::json raw;          // the config as given (saved in checkpoints and model files)

  static RunConfig from_json(const nlohmann::json& j) {
    if (!j.is_object()) throw ArgumentError("ditto-train config: expected a JSON object with model, model_config, data, train, got " + brief_json(j));
    for (const auto& [k, v] : j.items())
      if (k != "model" && k != "model_config" && k != "data" && k != "train" && k != "diffusion")
        throw ArgumentError("ditto-train config: unknown key \"" + k + "\"; expected model, model_config, data, train and (diffusion models) diffusion");
    RunConfig r;
    r.raw = j;
    if (!j.contains("model") || !j["model"].is_string()) throw ArgumentError("ditto-train config: \"model\" must name the model (dit, uvit, latte, vit, vivit or vae)");
    r.model = j["model"].get<std::string>();
    if (r.model != "dit" && r.model != "uvit" && r.model != "vit" && r.model != "latte" && r.model != "vivit" && r.model != "vae")
      throw ArgumentError("ditto-train config: model \"" + r.model.substr(0, 64) +
                          "\" is not one ditto-train trains yet; expected dit, uvit, latte (class-conditional diffusion), vit, vivit (classifiers) or vae (the autoencoder)");
    if (!j.contains("model_config")) throw ArgumentError("ditto-train config: \"model_config\" (the model's constructor arguments) is missing");
    r.model_config = j["model_config"];
    r.data = DataSettings::from_json(j.value("data", nlohmann::json::object()));
    if (r.is_video() != r.data.is_video())
      throw ArgumentError("ditto-train config: a " + r.model + (r.is_video() ? " trains on video clips (data: {\"dataset\": \"moving_fashion_mnist\"})"
                                                                                 : " trains on pictures (dataset fashion_mnist or image_folder), not on \"" + r.data.dataset + "\""));
    r.train = TrainSettings::from_json(j.value("train", nlohmann::json::object()));
    if (!r.is_diffusion() && j.contains("diffusion"))
      throw ArgumentError("ditto-train config: a " + r.model + (r.model == "vae" ? " autoencoder" : " classifier") + " has no \"diffusion\" section");
    r.diffusion = DiffusionSettings::from_json(j.value("diffusion", nlohmann::json::object()));
    if (r.model != "vit" && r.model != "vivit" && r.train.label_smoothing != 0) throw ArgumentError("train config: label_smoothing is for classifiers (model vit or vivit)");
    for (const char* k : {"kl_weight", "reconstruction"})
      if (r.model != "vae" && j.contains("train") && j["train"].is_object() && j["train"].contains(k))
        throw ArgumentError(std::string("train config: \"") + k + "\" is the autoencoder's (model vae); this model is a " + r.model);
    if (r.model != "uvit" && j.contains("data") && j["data"].is_object() && j["data"].contains("p_uncond"))
      throw ArgumentError("data config: p_uncond is U-ViT's label dropout; a dit or latte takes class_dropout_prob in model_config, a classifier none");
    if (r.model == "vit" && r.model_config.is_object()) {  // what timm's constructor takes for training but ditto does not do
      for (const char* k : {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"})
        if (r.model_config.contains(k) && !(r.model_config[k].is_number() && r.model_config[k].get<double>() == 0))
          throw ArgumentError(std::string("ditto-train: model_config \"") + k + "\" = " + brief_json(r.model_config[k]) +
                              "; ditto trains without dropout (0 or leave it out)");
      if (r.model_config.contains("weight_init") && r.model_config["weight_init"] != "")
        throw ArgumentError("ditto-train: model_config \"weight_init\" = " + brief_json(r.model_config["weight_init"]) +
                            "; ditto-train initializes as timm's default (\"\" or leave it out)");
      if (r.model_config.contains("fix_init") && r.model_config["fix_init"] != false)
        throw ArgumentError("ditto-train: model_config \"fix_init\" is not done by ditto-train (false or leave it out)");
    }
    if (r.is_diffusion()) {  // what sampling would refuse, refused before any training
      const auto& d = r.diffusion;
      if (d.sampler != "dpm++")
        (void)diffusion::space_timesteps(static_cast<int>(d.diffusion_steps), (d.sampler == "ddim" ? "ddim" : "") + std::to_string(d.sample_steps));
      const bool dropout = r.model == "uvit" ? r.data.p_uncond > 0
                                             : (r.model_config.is_object() && r.model_config.value("class_dropout_prob", 0.1) > 0);
      if (d.cfg_scale != 1.0 && !dropout)
        throw ArgumentError("diffusion config: cfg_scale " + std::to_string(d.cfg_scale) +
                            " needs the null class, which only label dropout trains (class_dropout_prob or p_uncond > 0); use cfg_scale 1");
    }
    return r;
  }
  bool is_diffusion() const { return model == "dit" || model == "uvit" || model == "latte"; }
  bool is_video() const { return model == "latte" || model == "vivit"; }
};

// The keys a resumed run may change: how long it runs and how often it reports.
inline nlohmann::json resumable_part(nlohmann::json raw) {
  if (raw.contains("train") && raw["train"].is_object())
    for (const char* k : {"steps", "ckpt_every", "log_every", "sample_every", "threads"}) raw["train"].erase(k);
  return raw;
}

// The processes of a data-parallel run (pipelines/mpi.hpp makes one from MPI_COMM_WORLD). Alone:
// rank 0 of 1, and the reductions do nothing.
struct Communicator {
  int rank = 0, size = 1;
  std::function<void(const float*, std::int64_t, float*)> allgather;  // n values from each rank -> size * n, in rank order, on every rank
  std::function<void(double*, std::int64_t)> allreduce_sum_double;     // in place
  std::function<std::string(const std::string&)> broadcast;  // rank 0's string, on every rank
  std::int64_t bucket_floats = 1 << 22;                       // gradients are gathered in buckets of this many floats (16 MB)
};

struct TrainOptions {
  std::string output = "ditto-run";  // the folder of the run's files (made when missing)
  bool resume = false;               // continue from output/checkpoint.safetensors
  bool progress = true;              // a progress bar on stderr when it is a terminal, log lines on stdout
  std::int64_t stop_after = -1;      // >= 0: stop (after a checkpoint) once this step is reached (tests of resume)
  std::function<void(std::int64_t, double)> on_step = {};  // (step, loss) after each step
  const Communicator* comm = nullptr;  // data-parallel: this process's rank (null: alone)
};

struct TrainResult {
  std::int64_t steps = 0;      // the step reached
  std::vector<float> losses;   // every step's loss, from step 0
  double seconds = 0;          // training time of this process (a resumed run adds the earlier ones)
  double test_accuracy = -1;   // classifiers: the EMA model's accuracy on the test split at the end
  double test_reconstruction = -1;  // the autoencoder: the EMA model's mean |x - x'| per pixel on 1000 test pictures
};

// ---- pieces ----------------------------------------------------------------------------------

namespace detail {
inline std::uint64_t noise_seed(std::int64_t seed) { return static_cast<std::uint64_t>(seed) * 0x9E3779B97F4A7C15ULL + 0xD1770ULL; }
inline std::uint64_t order_seed(std::int64_t seed) { return static_cast<std::uint64_t>(seed) ^ 0x5EEDULL; }
// The generator of the i-th sample of the global batch at `step`.
inline Generator sample_generator(std::int64_t seed, std::int64_t step, std::int64_t global_batch, std::int64_t i) {
  return Generator(noise_seed(seed), (static_cast<std::uint64_t>(step) * static_cast<std::uint64_t>(global_batch) + static_cast<std::uint64_t>(i)) << 24);
}
inline double uniform01(Generator& g) { return g.uniform<double>({1})[0]; }

inline void make_dirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);  // no error when it exists already
  if (ec) throw IoError("ditto-train: cannot make the folder \"" + path + "\": " + ec.message());
  if (!std::filesystem::is_directory(path, ec)) throw IoError("ditto-train: \"" + path + "\" is not a folder");
}

// A loss curve (and its moving average over 1% of the steps) on white, (3, H, W) in [-1, 1].
inline Tensor<float> plot_curve(const std::vector<float>& values) {
  const std::int64_t H = 300, W = 600, pad = 24;
  Tensor<float> img = Tensor<float>::full({3, H, W}, 1.0f);
  if (values.empty()) return img;
  const std::size_t window = std::max<std::size_t>(1, values.size() / 100);
  std::vector<float> avg(values.size());
  double s = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    s += values[i];
    if (i >= window) s -= values[i - window];
    avg[i] = static_cast<float>(s / static_cast<double>(std::min(i + 1, window)));
  }
  float top = 0;
  for (float v : avg) top = std::max(top, std::isfinite(v) ? v : 0.0f);
  if (!(top > 0)) top = 1;
  auto put = [&](std::int64_t r, std::int64_t c, float rr, float gg, float bb) {
    if (r >= 0 && r < H && c >= 0 && c < W) img(0, r, c) = rr, img(1, r, c) = gg, img(2, r, c) = bb;
  };
  for (std::int64_t c = pad; c < W - pad; ++c) put(H - pad, c, -1, -1, -1);
  for (std::int64_t r = pad; r <= H - pad; ++r) put(r, pad, -1, -1, -1);
  for (int k = 1; k < 4; ++k)  // grid lines at quarters of the top value
    for (std::int64_t c = pad; c < W - pad; c += 3) put(H - pad - k * (H - 2 * pad) / 4, c, 0.6f, 0.6f, 0.6f);
  auto curve = [&](const std::vector<float>& v, float rr, float gg, float bb) {
    std::int64_t pr = -1, pc = -1;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i])) continue;
      const std::int64_t c = pad + static_cast<std::int64_t>(static_cast<double>(i) / static_cast<double>(std::max<std::size_t>(v.size() - 1, 1)) * (W - 2 * pad - 1));
      const std::int64_t r = H - pad - static_cast<std::int64_t>(std::min(v[i] / top, 1.0f) * (H - 2 * pad));
      if (pr >= 0)
        for (std::int64_t k = 0, n = std::max(std::abs(r - pr), std::abs(c - pc)) + 1; k < n; ++k) put(pr + (r - pr) * k / n, pc + (c - pc) * k / n, rr, gg, bb);
      pr = r, pc = c;
    }
  };
  curve(values, 0.55f, 0.7f, 1.0f);  // every step, light blue
  curve(avg, -1.0f, -0.5f, 0.6f);    // the moving average, dark blue
  return img;
}

// Sums in a fixed binary tree: the i-th value pushed joins the aligned block of 2^k it belongs
// to (older + newer), so a sum over M leaves equals the same tree's sum of the sums of aligned
// power-of-two blocks of them. That is what makes micro-batch gradients add up to the same bits
// on 1 rank and on N (when each rank holds a power of two of them).
struct PairwiseSum {
  std::vector<std::pair<int, std::vector<float>>> stack;
  void push(std::vector<float> v) {
    int level = 0;
    while (!stack.empty() && stack.back().first == level) {
      std::vector<float>& older = stack.back().second;
      for (std::size_t i = 0; i < v.size(); ++i) older[i] += v[i];
      v = std::move(older);
      stack.pop_back();
      ++level;
    }
    stack.emplace_back(level, std::move(v));
  }
  std::vector<float> finish() {
    std::vector<float> r = std::move(stack.front().second);
    for (std::size_t k = 1; k < stack.size(); ++k)
      for (std::size_t i = 0; i < r.size(); ++i) r[i] += stack[k].second[i];
    stack.clear();
    return r;
  }
};
template <class Model>
inline std::vector<float> flatten(Model& g) {
  std::vector<float> out;
  for (auto& [name, t] : nn::trainable_parameters<float>(g)) out.insert(out.end(), t->begin(), t->end());
  return out;
}
template <class Model>
inline void unflatten(const std::vector<float>& v, Model& g) {
  std::size_t at = 0;
  for (auto& [name, t] : nn::trainable_parameters<float>(g)) {
    std::copy(v.begin() + static_cast<std::ptrdiff_t>(at), v.begin() + static_cast<std::ptrdiff_t>(at + static_cast<std::size_t>(t->numel())), t->begin());
    at += static_cast<std::size_t>(t->numel());
  }
}

// A progress bar: step, loss, it/s, ETA, on stderr when it is a terminal.
struct ProgressBar {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::int64_t first = 0, total = 0;
  bool tty = ::isatty(STDERR_FILENO) != 0;
  void show(std::int64_t step, double loss) const {
    if (!tty) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = static_cast<double>(step - first) / std::max(secs, 1e-9);
    const double eta = std::min(static_cast<double>(total - step) / std::max(rate, 1e-9), 359999.0);  // shown up to 99:59:59
    const int width = 30, filled = static_cast<int>(width * step / std::max<std::int64_t>(total, 1));
    std::fprintf(stderr, "\rtrain [%.*s%*s] step %lld/%lld  loss %.4f  %.2f it/s  ETA %02d:%02d:%02d ", filled, "##############################",
                 width - filled, "", static_cast<long long>(step), static_cast<long long>(total), loss, rate, static_cast<int>(eta / 3600),
                 static_cast<int>(eta / 60) % 60, static_cast<int>(eta) % 60);
    if (step == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
  void clear() const {
    if (tty) std::fprintf(stderr, "\r%100s\r", "");
  }
};
}  // namespace detail

// The training split's pictures and labels, and the test split (for classifiers' accuracy); or,
// for moving_fashion_mnist, the two splits' clips (made on demand: clip i is a pure function of
// the clip seed and i) and their joint (class, direction) labels.
struct Dataset {
  data::LabelledPictures train, test;  // (N, C, H, W) bytes
  std::shared_ptr<const data::MovingFashionMnist> train_clips, test_clips;
  std::vector<std::string> classes;    // for clips: "<class>, <direction>" in joint-label order

  bool video() const { return train_clips != nullptr; }
  std::int64_t train_size() const { return video() ? train_clips->size() : train.size(); }
  std::int64_t test_size() const { return video() ? (test_clips ? test_clips->size() : 0) : test.size(); }
  // values in one sample: C H W, or T C H W
  std::int64_t sample_values() const {
    if (video()) return train_clips->options().frames * train_clips->options().canvas * train_clips->options().canvas;
    return train.images.numel() / std::max<std::int64_t>(train.size(), 1);
  }
};

inline data::LabelledPictures as_pictures(data::LabelledImages d) {
  const std::int64_t N = d.images.size(0), H = d.images.size(1), W = d.images.size(2);
  return {d.images.reshape({N, 1, H, W}), std::move(d.labels)};
}

// The joint labels' names of moving Fashion-MNIST: class c with direction d is c * directions + d.
inline std::vector<std::string> moving_classes(std::int64_t directions) {
  std::vector<std::string> names;
  for (const char* c : data::fashion_mnist_classes)
    for (std::int64_t d = 0; d < directions; ++d) names.push_back(std::string(c) + ", " + data::direction_name(d, directions));
  return names;
}

inline Dataset load_dataset(const DataSettings& d, bool with_test) {
  Dataset out;
  if (d.is_video()) {  // the training split's clips from Fashion-MNIST's training pictures, the test split's from its test pictures
    const auto seed = static_cast<std::uint64_t>(d.clip_seed);
    out.train_clips = std::make_shared<data::MovingFashionMnist>(data::load_fashion_mnist("train", d.root), d.moving, 2 * seed, d.train_clips);
    if (with_test && d.test_clips > 0)
      out.test_clips = std::make_shared<data::MovingFashionMnist>(data::load_fashion_mnist("test", d.root), d.moving, 2 * seed + 1, d.test_clips);
    out.classes = moving_classes(d.moving.directions);
  } else if (d.dataset == "fashion_mnist") {
    out.train = as_pictures(data::load_fashion_mnist("train", d.root));
    if (with_test) out.test = as_pictures(data::load_fashion_mnist("test", d.root));
    out.classes.assign(data::fashion_mnist_classes.begin(), data::fashion_mnist_classes.end());
  } else {
    auto f = data::load_image_folder(d.root, d.image_size, static_cast<int>(d.channels));
    out.train = std::move(f.set);
    out.classes = f.classes;
    if (with_test && !d.test_root.empty()) {
      auto t = data::load_image_folder(d.test_root, d.image_size, static_cast<int>(d.channels));
      if (t.classes != out.classes)
        throw IoError(ditto::detail::cat("data config: test_root's class folders (", t.classes.size(), ", first \"", t.classes.front(), "\") differ from root's (",
                                         out.classes.size(), ", first \"", out.classes.front(), "\")"));
      out.test = std::move(t.set);
    }
  }
  return out;
}

// The batch of these dataset indices: images (B, C, H, W) in [-1, 1] (flipped and shifted where
// the sample's generator says so) or clips (B, T, 1, S, S) in [-1, 1], and labels. gens[i] is
// sample i's generator, advanced past the flip (and the crop's two offsets, when crop_padding > 0).
inline std::pair<Tensor<float>, Tensor<std::int64_t>> training_batch(const Dataset& ds, const DataSettings& d, const std::vector<std::int64_t>& indices,
                                                                    std::vector<Generator>& gens) {
  std::vector<bool> flips;
  for (auto& g : gens) flips.push_back(detail::uniform01(g) < 0.5 && d.hflip);  // drawn always: the stream does not depend on hflip
  if (ds.video()) return ds.train_clips->batch(indices, -1.0f, 1.0f);
  auto batch = data::picture_batch(ds.train, indices, flips, -1.0f, 1.0f);
  if (d.crop_padding > 0) {  // drawn only then, so that the runs made before the option keep their streams
    const std::int64_t n = 2 * d.crop_padding + 1;
    auto offset = [n](Generator& g) { return std::min(n - 1, static_cast<std::int64_t>(detail::uniform01(g) * static_cast<double>(n))); };
    std::vector<std::pair<std::int64_t, std::int64_t>> offsets;
    for (auto& g : gens) {
      const std::int64_t top = offset(g);
      offsets.emplace_back(top, offset(g));
    }
    data::random_crop(batch.first, offsets, d.crop_padding, -1.0f);  // torchvision fills with 0: byte 0, Fashion-MNIST's background
  }
  return batch;
}

// ---- the tasks: what one model does with a batch ---------------------------------------------

// Class-conditional diffusion (DiT, U-ViT on pictures; Latte on clips, (B, T, C, H, W)): label
// dropout to the null class, a uniform timestep, Gaussian noise, DiT's loss (mse on the noise,
// plus vb with a learned sigma).
template <class Model>
struct DiffusionTask {
  Model model, ema;
  diffusion::Schedule schedule;
  diffusion::LossOptions loss;
  std::int64_t null_class = 0;
  double p_drop = 0;

  DiffusionTask(const RunConfig& rc, Model m) : model(std::move(m)) {
    schedule = diffusion::Schedule(diffusion::named_beta_schedule(rc.diffusion.noise_schedule, static_cast<int>(rc.diffusion.diffusion_steps)));
    loss.snr_gamma = rc.diffusion.snr_gamma;
    if constexpr (std::is_same_v<Model, models::DiT<float>> || std::is_same_v<Model, models::Latte<float>>) {
      if constexpr (std::is_same_v<Model, models::Latte<float>>) {
        if (model.config.extras != 2)
          throw ArgumentError(ditto::detail::cat("ditto-train: a latte trains class-conditionally here: model_config extras must be 2 (timestep + class), got ",
                                                 model.config.extras));
        loss.channel_dim = 2;  // (B, T, C, H, W): a learned variance doubles dimension 2
      }
      null_class = model.config.num_classes;
      p_drop = model.config.class_dropout_prob;
      loss.var_type = model.config.learn_sigma ? diffusion::ModelVarType::learned_range : diffusion::ModelVarType::fixed_large;  // create_diffusion's
    } else {
      if (model.config.num_classes < 2)
        throw ArgumentError("ditto-train: a uvit trains class-conditionally: num_classes must count the classes plus the null class (e.g. 11 for Fashion-MNIST)");
      null_class = model.config.num_classes - 1;
      p_drop = rc.data.p_uncond;
      loss.var_type = diffusion::ModelVarType::fixed_small;
    }
  }
  std::int64_t classes() const { return null_class; }
  Tensor<float> forward_train(const Tensor<float>& x, const Tensor<float>& t, const Tensor<std::int64_t>& y, typename Model::Acts& a) const {
    if constexpr (std::is_same_v<Model, models::DiT<float>>) return model.forward_train(x, t, y, a);
    else return model.forward_train(x, t, &y, a);  // U-ViT, Latte
  }

  // Accumulates into g the gradient of (sum over these samples of their loss) * weight; returns
  // that sum times weight.
  double accumulate(Model& g, Tensor<float> x0, Tensor<std::int64_t> y, std::vector<Generator>& gens, double weight) const {
    const std::int64_t B = x0.size(0), per = x0.numel() / B;
    std::vector<std::int64_t> t(static_cast<std::size_t>(B));
    Tensor<float> noise(x0.shape()), tf({B});
    for (std::int64_t b = 0; b < B; ++b) {
      Generator& gen = gens[static_cast<std::size_t>(b)];
      if (detail::uniform01(gen) < p_drop) y[b] = null_class;  // LabelEmbedder.token_drop
      t[static_cast<std::size_t>(b)] = diffusion::sample_timesteps(gen, 1, schedule.num_timesteps)[0];
      tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
      const Tensor<float> z = gen.normal<float>({per});
      std::copy(z.begin(), z.end(), noise.data() + b * per);
    }
    const Tensor<float> x_t = diffusion::q_sample(schedule, x0, t, noise);
    typename Model::Acts acts;
    const Tensor<float> out = forward_train(x_t, tf, y, acts);
    const auto terms = diffusion::training_losses(schedule, out, x0, x_t, t, noise, loss);
    double sum = 0;
    for (float v : terms.loss) sum += v;
    const std::vector<float> w(static_cast<std::size_t>(B), static_cast<float>(weight));
    model.backward(g, acts, diffusion::training_losses_grad(schedule, out, x0, x_t, t, noise, loss, w));
    return sum * weight;
  }
};

// A classifier (ViT on pictures, ViViT on clips): cross-entropy (with label smoothing) on the
// labels. ViViT takes videos as torch's Conv3d does, (B, C, T, H, W).
template <class Model>
inline Tensor<float> classifier_input(const Tensor<float>& x) {
  if constexpr (std::is_same_v<Model, models::ViViT<float>>) return rearrange(x, "b t c h w -> b c t h w");
  else return x;
}

template <class Model>
struct ClassifierTask {
  Model model, ema;
  double label_smoothing = 0;
  ClassifierTask(const RunConfig& rc, Model m) : model(std::move(m)), label_smoothing(rc.train.label_smoothing) {}

  double accumulate(Model& g, const Tensor<float>& x, const Tensor<std::int64_t>& y, std::vector<Generator>&, double weight) const {
    typename Model::Acts acts;
    const Tensor<float> logits = model.forward_train(classifier_input<Model>(x), acts);
    auto ce = nn::cross_entropy(logits, y, label_smoothing);  // the mean over these rows
    const double rows = static_cast<double>(x.size(0));
    for (auto& v : ce.grad) v = static_cast<float>(v * rows * weight);
    model.backward(g, acts, ce.grad);
    return ce.loss * rows * weight;
  }
};

// The autoencoder (ldm's AutoencoderKL on pictures): latent diffusion's first-stage objective
// without its perceptual and adversarial terms, i.e. ldm's LPIPSWithDiscriminator with
// perceptual_weight 0, the discriminator off and its logvar at 0. Per sample:
//   sum over pixels of |x - x'| (or (x - x')^2) + kl_weight * KL(q(z|x) || N(0, I)),
//   x' = decode(z), z = scale_factor * (mean + exp(logvar / 2) * noise),
// KL = 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) over the latent (DiagonalGaussianDistribution.kl).
// The noise is drawn from the sample's generator; the labels are not used.
template <class T = float>
struct AutoencoderTask {  // T: double for the gradient checks
  using Model = models::AutoencoderKL<T>;
  Model model, ema;
  double kl_weight = 1e-6;
  bool l2 = false;
  AutoencoderTask(const RunConfig& rc, Model m) : model(std::move(m)), kl_weight(rc.train.kl_weight), l2(rc.train.reconstruction == "l2") {}

  double accumulate(Model& g, const Tensor<T>& x, const Tensor<std::int64_t>&, std::vector<Generator>& gens, double weight) const {
    typename Model::EncodeActs ea;
    const typename Model::Posterior p = model.encode_train(x, ea);
    const std::int64_t B = x.size(0), L = p.mean.numel() / B, P = x.numel() / B;
    Tensor<T> noise(p.mean.shape());
    for (std::int64_t b = 0; b < B; ++b) {
      const Tensor<T> z = gens[static_cast<std::size_t>(b)].template normal<T>({L});
      std::copy(z.begin(), z.end(), noise.data() + b * L);
    }
    typename Model::DecodeActs da;
    const Tensor<T> rec = model.decode_train(model.sample(p, noise), da);
    // the loss and its gradient: d/dx' of |x' - x| is sign(x' - x) (0 where equal, as torch's)
    double sum = 0;
    Tensor<T> drec(rec.shape());
    for (std::int64_t i = 0; i < B * P; ++i) {
      const double e = static_cast<double>(rec[i]) - static_cast<double>(x[i]);
      sum += l2 ? e * e : std::abs(e);
      drec[i] = static_cast<T>(weight * (l2 ? 2 * e : (e > 0) - (e < 0)));
    }
    for (std::int64_t i = 0; i < B * L; ++i) {
      const double m = static_cast<double>(p.mean[i]), lv = static_cast<double>(p.logvar[i]);
      sum += kl_weight * 0.5 * (m * m + std::exp(lv) - 1 - lv);
    }
    Tensor<T> dz;
    model.decode_backward(g, da, drec, &dz);
    auto [dmean, dlogvar] = model.sample_backward(p, noise, dz);
    for (std::int64_t i = 0; i < B * L; ++i) {  // the KL term's own gradient
      dmean[i] += static_cast<T>(weight * kl_weight * static_cast<double>(p.mean[i]));
      dlogvar[i] += static_cast<T>(weight * kl_weight * 0.5 * (std::exp(static_cast<double>(p.logvar[i])) - 1));
    }
    model.encode_backward(g, ea, dmean, dlogvar);
    return sum * weight;
  }
  // The mean |x - x'| per pixel over these pictures, x' the decoded posterior mean (the mode).
  static double reconstruction_error(const Model& m, const data::LabelledPictures& d, std::int64_t n) {
    double err = 0;
    n = std::min(n, d.size());
    for (std::int64_t lo = 0; lo < n; lo += 100) {
      std::vector<std::int64_t> idx;
      for (std::int64_t i = lo; i < std::min(n, lo + 100); ++i) idx.push_back(i);
      const auto x = data::picture_batch(d, idx, std::vector<bool>(idx.size(), false), -1.0f, 1.0f).first;
      const auto post = m.encode(x);
      const Tensor<T> r = m.decode(m.sample(post, Tensor<T>(post.mean.shape())));  // zero noise: the mode
      for (std::int64_t i = 0; i < x.numel(); ++i) err += std::abs(static_cast<double>(r[i]) - static_cast<double>(x[i]));
    }
    return err / static_cast<double>(n * d.images.numel() / std::max<std::int64_t>(d.size(), 1));
  }
};

// The share of a split a classifier labels as its labels (batches of 500): the pictures of
// `d`, or the clips of `clips` (joint labels).
template <class Model>
inline double accuracy(const Model& m, const data::LabelledPictures& d, const data::MovingFashionMnist* clips = nullptr) {
  std::int64_t right = 0;
  const std::int64_t n = clips ? clips->size() : d.size();
  for (std::int64_t lo = 0; lo < n; lo += 500) {
    std::vector<std::int64_t> idx;
    for (std::int64_t i = lo; i < std::min(n, lo + 500); ++i) idx.push_back(i);
    auto [x, y] = clips ? clips->batch(idx, -1.0f, 1.0f) : data::picture_batch(d, idx, std::vector<bool>(idx.size(), false), -1.0f, 1.0f);
    const Tensor<float> logits = m.forward(classifier_input<Model>(x));
    const std::int64_t C = logits.size(1);
    for (std::int64_t b = 0; b < x.size(0); ++b) {
      const float* row = logits.data() + b * C;
      if (std::max_element(row, row + C) - row == y[b]) ++right;
    }
  }
  return static_cast<double>(right) / static_cast<double>(n);
}

// ---- the loop ----------------------------------------------------------------------------------

namespace detail {
template <class Task, class Model>
inline TrainResult run(Task& task, const RunConfig& rc, const TrainOptions& o) {
  using ditto::detail::cat;
  const TrainSettings& ts = rc.train;
  if (ts.threads > 0) set_num_threads(static_cast<int>(ts.threads));
  const Communicator alone;
  const Communicator& comm = o.comm ? *o.comm : alone;
  const bool writer = comm.rank == 0;  // rank 0 writes every file; every rank reads the checkpoint on a resume
  const std::int64_t G = ts.global_batch_size;
  if (comm.size > 1) {
    if (G % comm.size != 0)
      throw ArgumentError(cat("ditto-train: global_batch_size ", G, " cannot be split evenly over ", comm.size, " ranks; use a multiple of ", comm.size));
    if (comm.broadcast(rc.raw.dump()) != rc.raw.dump())
      throw ArgumentError(cat("ditto-train: rank ", comm.rank, "'s config differs from rank 0's; every rank must train the same config"));
    if (comm.broadcast(o.output) != o.output || comm.broadcast(o.resume ? "resume" : "new") != (o.resume ? "resume" : "new"))
      throw ArgumentError(cat("ditto-train: rank ", comm.rank, "'s --output or --resume differs from rank 0's"));
  }
  const std::int64_t shard = G / comm.size, shard_lo = comm.rank * shard;
  if (writer) make_dirs(o.output);
  const std::string ckpt_path = o.output + "/checkpoint.safetensors";
  const Dataset ds = load_dataset(rc.data, !rc.is_diffusion());
  if constexpr (std::is_same_v<Model, models::AutoencoderKL<float>>) {  // the pictures' channels and size must suit the model
    const auto& c = task.model.config;
    const std::int64_t C = ds.train.images.size(1), H = ds.train.images.size(2), W = ds.train.images.size(3), f = std::int64_t{1} << (c.ch_mult.size() - 1);
    if (c.in_channels != C || c.out_ch != C || H % f || W % f)
      throw ArgumentError(cat("ditto-train: the pictures are ", C, " x ", H, " x ", W, "; the autoencoder takes in_channels ", c.in_channels, " and gives out_ch ",
                              c.out_ch, " (both must be ", C, "), and its ", c.ch_mult.size(), " levels need sides divisible by ", f));
    if (G > ds.train_size()) throw ArgumentError(cat("ditto-train: global_batch_size ", G, " is larger than the ", ds.train_size(), " training pictures"));
    const std::int64_t latent = c.embed_dim * (H / f) * (W / f);
    if (latent > (std::int64_t{1} << 24))  // each sample's generator has 2^24 counters (2^25 values)
      throw ArgumentError(cat("ditto-train: a picture's latent of ", latent, " values is more than the 2^24 a sample's generator may draw"));
  } else {  // the model's classes must be the dataset's
    const auto K = static_cast<std::int64_t>(ds.classes.size());
    std::int64_t have = 0, want = K;
    const char* rule = "num_classes";
    if constexpr (std::is_same_v<Model, models::UViT<float>>) have = task.model.config.num_classes, want = K + 1, rule = "num_classes (U-ViT counts the null class)";
    else have = task.model.config.num_classes;
    if (have != want)
      throw ArgumentError(cat("ditto-train: model_config ", rule, " is ", have, "; the dataset has ", K, ds.video() ? " (class, direction) pairs" : " classes",
                              ", so expected ", want));
    if (G > ds.train_size())
      throw ArgumentError(cat("ditto-train: global_batch_size ", G, " is larger than the ", ds.train_size(), ds.video() ? " training clips" : " training pictures"));
    const std::int64_t per = ds.sample_values();
    if (per > (std::int64_t{1} << 24))  // each sample's generator has 2^24 counters (2^25 values)
      throw ArgumentError(cat("ditto-train: a sample of ", per, " values is more than the 2^24 a sample's generator may draw"));
    if (ds.video()) {  // the clips' shape must be the model's
      const auto& mo = ds.train_clips->options();
      std::int64_t frames = 0, size = 0, chans = 0;
      if constexpr (std::is_same_v<Model, models::Latte<float>>) frames = task.model.config.num_frames, size = task.model.config.input_size, chans = task.model.config.in_channels;
      if constexpr (std::is_same_v<Model, models::ViViT<float>>)
        frames = task.model.config.num_frames, size = task.model.config.img_size[0] == task.model.config.img_size[1] ? task.model.config.img_size[0] : -1,
        chans = task.model.config.in_chans;
      if (frames != mo.frames || size != mo.canvas || chans != 1)
        throw ArgumentError(cat("ditto-train: the clips are ", mo.frames, " frames of 1 x ", mo.canvas, " x ", mo.canvas, "; model_config takes ", frames,
                                " frames of ", chans, " x ", size, " x ", size, " (num_frames, the input size and the channels must match data's frames and canvas, and 1)"));
      if constexpr (std::is_same_v<Model, models::Latte<float>>)  // two summed embeddings: the class's and the direction's
        if (task.model.config.label_factors != 1 && task.model.config.label_factors != mo.directions)
          throw ArgumentError(cat("ditto-train: model_config label_factors is ", task.model.config.label_factors, "; the labels are (class, direction) pairs of ",
                                  mo.directions, " directions, so expected ", mo.directions, " (a class and a direction table) or 1 (one table of pairs)"));
    }
  }
  if (!o.resume && writer && std::filesystem::exists(ckpt_path))
    throw IoError("ditto-train: " + ckpt_path + " exists (an earlier run); pass --resume to continue it, or choose another --output");
  const std::int64_t micro = ts.micro_batch_size > 0 ? std::min(ts.micro_batch_size, shard) : shard;

  Generator init(noise_seed(ts.seed) + 1);
  models::initialize_weights(task.model, init);
  task.ema = task.model;
  train::update_ema<float>(task.ema, task.model, 0.0);  // a copy with its own storage, as train.py's deepcopy
  train::AdamW<float, Model> opt(task.model, {.lr = ts.lr, .beta1 = ts.beta1, .beta2 = ts.beta2, .eps = 1e-8, .weight_decay = ts.weight_decay});
  data::ShuffledBatches order(ds.train_size(), G, order_seed(ts.seed));
  std::int64_t step = 0;
  Generator unused(0);  // (the run draws from per-sample generators; the checkpoint's generator slot stays 0)
  TrainResult result;
  double earlier_seconds = 0;
  const nlohmann::json& mconf = rc.model_config;

  if (o.resume) {
    {  // the recipe first (a clearer message than the optimizer's or the model's mismatch below)
      if (!std::filesystem::exists(ckpt_path))
        throw IoError("ditto-train --resume: " + ckpt_path + " not found (nothing to resume; leave out --resume to start the run)");
      const SafetensorsFile f(ckpt_path);
      if (f.metadata().count("args")) {
        const nlohmann::json a = parse_json(f.metadata().at("args"), ckpt_path + " args");
        if (a.is_object() && a.contains("run")) {
          const std::string diff = train::detail::first_difference(resumable_part(a.at("run")), resumable_part(rc.raw));
          if (!diff.empty()) throw ArgumentError("ditto-train --resume: " + ckpt_path + " was trained with another config (" + diff + ")");
        }
      }
    }
    nlohmann::json args_dummy;
    const nlohmann::json saved = train::load_checkpoint<float>(ckpt_path, train::TrainState<Model, train::AdamW<float, Model>>{
                                                                              task.model, &task.ema, opt, step, unused, mconf, args_dummy});
    for (const char* k : {"run", "order", "losses", "seconds"})
      if (!saved.contains(k)) throw IoError(cat("ditto-train --resume: ", ckpt_path, " is a ditto checkpoint but not ditto-train's (no \"", k, "\" in its arguments)"));
    // everything but the length and the reporting must be what the checkpoint was trained with
    if (rc.train.lr_schedule == "cosine" && saved.at("run").at("train").value("steps", std::int64_t{1000}) != rc.train.steps)
      throw ArgumentError("ditto-train --resume: a cosine schedule runs over its steps; this run's steps differ from the checkpoint's");
    const std::string diff = train::detail::first_difference(resumable_part(saved.at("run")), resumable_part(rc.raw));
    if (!diff.empty()) throw ArgumentError("ditto-train --resume: " + ckpt_path + " was trained with another config (" + diff + ")");
    order.restore({saved.at("order").at("epoch").get<std::int64_t>(), saved.at("order").at("position").get<std::int64_t>()});
    result.losses = saved.at("losses").get<std::vector<float>>();
    earlier_seconds = saved.at("seconds").get<double>();
    if (static_cast<std::int64_t>(result.losses.size()) != step)
      throw IoError(cat("ditto-train --resume: ", ckpt_path, " holds ", result.losses.size(), " losses for ", step, " steps"));
  } else if (writer) {
    // a config beside the run's files, to see what made them (and to reproduce them)
    const std::string text = rc.raw.dump(2) + "\n";
    write_file(o.output + "/config.json", text.data(), text.size(), "ditto-train: " + o.output + "/config.json");
  }

  auto model_metadata = [&](double seconds) {
    nlohmann::json classes = ds.classes;
    return std::map<std::string, std::string>{{"ditto_model", rc.model},
                                              {"config", mconf.dump()},
                                              {"run", rc.raw.dump()},
                                              {"classes", classes.dump()},
                                              {"step", std::to_string(step)},
                                              {"train_seconds", cat(seconds)}};
  };
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return earlier_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  auto save_all = [&] {
    if (!writer) return;
    const nlohmann::json args = {{"run", rc.raw},
                                 {"order", {{"epoch", order.state().epoch}, {"position", order.state().position}}},
                                 {"losses", result.losses},
                                 {"seconds", seconds()}};
    train::save_checkpoint<float>(ckpt_path, train::TrainState<Model, train::AdamW<float, Model>>{task.model, &task.ema, opt, step, unused, mconf, args});
    nn::save<float>(task.ema, o.output + "/model.safetensors", model_metadata(seconds()));
    write_png(o.output + "/loss.png", plot_curve(result.losses));
  };
  auto report = [&]() {  // samples (diffusion), test accuracy (classifiers) or reconstructions (the autoencoder) from the EMA model
    if (!writer) return;
    if constexpr (std::is_same_v<Model, models::AutoencoderKL<float>>) {
      const data::LabelledPictures& shown = ds.test.size() ? ds.test : ds.train;  // 2 rows of 8 pictures over their 2 rows of reconstructions
      std::vector<std::int64_t> idx;
      for (std::int64_t i = 0; i < std::min<std::int64_t>(16, shown.size()); ++i) idx.push_back(i);
      const auto x = data::picture_batch(shown, idx, std::vector<bool>(idx.size(), false), -1.0f, 1.0f).first;
      const auto post = task.ema.encode(x);
      const Tensor<float> r = task.ema.decode(task.ema.sample(post, Tensor<float>(post.mean.shape())));
      const std::int64_t cols = std::min<std::int64_t>(8, x.size(0)), rows = x.size(0) / cols, per = x.numel() / x.size(0);
      Tensor<float> both({2 * rows * cols, x.size(1), x.size(2), x.size(3)});
      for (std::int64_t k = 0; k < rows * cols; ++k) {  // row pairs: originals, then their reconstructions
        const std::int64_t row = k / cols, col = k % cols;
        std::copy(x.data() + k * per, x.data() + (k + 1) * per, both.data() + ((2 * row) * cols + col) * per);
        std::copy(r.data() + k * per, r.data() + (k + 1) * per, both.data() + ((2 * row + 1) * cols + col) * per);
      }
      for (auto& v : both) v = std::clamp(v, -1.0f, 1.0f);
      write_png(o.output + "/samples.png", make_grid(both, cols, 2, 1.0f));
      if (ds.test.size()) {
        result.test_reconstruction = AutoencoderTask<float>::reconstruction_error(task.ema, ds.test, 1000);
        if (o.progress) std::printf("step %lld  test reconstruction %.4f (mean |x - x'| per pixel in [-1, 1], EMA, 1000 pictures)\n", static_cast<long long>(step),
                                    result.test_reconstruction);
      }
    } else if constexpr (std::is_same_v<Model, models::ViT<float>> || std::is_same_v<Model, models::ViViT<float>>) {
      if (ds.test_size() == 0) return;  // an image_folder without test_root, or test_clips 0
      result.test_accuracy = accuracy(task.ema, ds.test, ds.test_clips.get());
      if (o.progress) std::printf("step %lld  test accuracy %.4f (EMA)\n", static_cast<long long>(step), result.test_accuracy);
    } else {
      ImageDiffusion g;
      g.kind = rc.model;
      if constexpr (std::is_same_v<Model, models::DiT<float>>) g.dit = std::make_shared<Model>(task.ema);
      else if constexpr (std::is_same_v<Model, models::Latte<float>>) g.latte = std::make_shared<Model>(task.ema);
      else g.uvit = std::make_shared<Model>(task.ema);
      g.diffusion = rc.diffusion;
      g.classes = ds.classes;
      SampleSettings s{.sampler = rc.diffusion.sampler, .steps = rc.diffusion.sample_steps, .cfg_scale = rc.diffusion.cfg_scale, .seed = 0};
      s.cfg_interval = rc.diffusion.cfg_interval;
      if (g.video()) {  // a clip of each (class, direction), a row of frames each
        const std::int64_t dirs = rc.data.moving.directions;
        const Tensor<float> v = g.sample(video_labels_per_class(g.num_classes() / dirs, dirs, dirs), s);
        write_png(o.output + "/samples.png", make_grid(v.reshape({v.size(0) * v.size(1), v.size(2), v.size(3), v.size(4)}), v.size(1), 2, 1.0f));
      } else {
        const Tensor<float> x = g.sample(labels_per_class(g.num_classes(), 8), s);
        write_png(o.output + "/samples.png", make_grid(x, 8, 2, 1.0f));
      }
    }
  };

  ProgressBar bar;
  bar.first = step;
  bar.total = ts.steps;
  const std::int64_t end = o.stop_after >= 0 ? std::min(o.stop_after, ts.steps) : ts.steps;
  auto grads = nn::zeros_like<float>(task.model), scratch = nn::zeros_like<float>(task.model);
  const std::int64_t local_micro = (shard + micro - 1) / micro;
  const bool direct = comm.size == 1 && local_micro == 1;  // one backward into the gradient tree
  while (step < end) {
    const std::vector<std::int64_t> idx = order.next();
    nn::zero_grad<float>(grads);
    double loss = 0;
    PairwiseSum sum;  // each micro-batch's gradient on its own, then summed in a fixed tree
    for (std::int64_t lo = shard_lo; lo < shard_lo + shard; lo += micro) {  // this rank's share of the global batch
      const std::int64_t hi = std::min(shard_lo + shard, lo + micro);
      std::vector<Generator> gens;
      for (std::int64_t i = lo; i < hi; ++i) gens.push_back(sample_generator(ts.seed, step, G, i));
      auto [x, y] = training_batch(ds, rc.data, std::vector<std::int64_t>(idx.begin() + lo, idx.begin() + hi), gens);
      if (direct) {
        loss += task.accumulate(grads, std::move(x), std::move(y), gens, 1.0 / static_cast<double>(G));
      } else {
        nn::zero_grad<float>(scratch);
        loss += task.accumulate(scratch, std::move(x), std::move(y), gens, 1.0 / static_cast<double>(G));
        sum.push(flatten(scratch));
      }
    }
    if (!direct) {
      std::vector<float> total = sum.finish();
      if (comm.size > 1) {  // every rank's sum, gathered in buckets and summed in the same tree on every rank
        std::vector<float> gathered;
        for (std::int64_t a = 0, n = static_cast<std::int64_t>(total.size()); a < n; a += comm.bucket_floats) {
          const std::int64_t len = std::min(comm.bucket_floats, n - a);
          gathered.resize(static_cast<std::size_t>(len * comm.size));
          comm.allgather(total.data() + a, len, gathered.data());
          PairwiseSum ranks;
          for (int r = 0; r < comm.size; ++r)
            ranks.push(std::vector<float>(gathered.begin() + r * len, gathered.begin() + (r + 1) * len));
          const std::vector<float> b = ranks.finish();
          std::copy(b.begin(), b.end(), total.begin() + a);
        }
        comm.allreduce_sum_double(&loss, 1);
      }
      unflatten(total, grads);
    }
    if (!std::isfinite(loss)) throw NumericError(cat("ditto-train: the loss is ", loss, " at step ", step, "; the checkpoint of the last good step is kept"));
    if (ts.grad_clip > 0) train::clip_grad_norm<float>(grads, ts.grad_clip);
    opt.step(task.model, grads, ts.lr_factor(step));
    train::update_ema<float>(task.ema, task.model, ts.ema_decay);
    result.losses.push_back(static_cast<float>(loss));
    ++step;
    if (o.on_step) o.on_step(step, loss);
    if (o.progress && writer) {
      bar.show(step, loss);
      if (ts.log_every > 0 && step % ts.log_every == 0) {
        bar.clear();
        double avg = 0;
        const std::int64_t n = std::min<std::int64_t>(ts.log_every, step);
        for (std::int64_t i = step - n; i < step; ++i) avg += result.losses[static_cast<std::size_t>(i)] / static_cast<double>(n);
        std::printf("step %7lld  loss %.5f  (mean of the last %lld)  %.1f s\n", static_cast<long long>(step), avg, static_cast<long long>(n), seconds());
        std::fflush(stdout);
      }
    }
    const bool last = step == end;
    if ((ts.ckpt_every > 0 && step % ts.ckpt_every == 0) || last) save_all();
    if ((ts.sample_every > 0 && step % ts.sample_every == 0) || (last && step == ts.steps)) report();
  }
  if (o.progress && writer) bar.clear();
  result.steps = step;
  result.seconds = seconds();
  return result;
}
}  // namespace detail

// Trains rc's model as configured; see the top of this file.
template <int = 0>  // lazy: see the top of this file
inline TrainResult train(const RunConfig& rc, const TrainOptions& o = {}) {
  if (rc.model == "dit") {
    DiffusionTask<models::DiT<float>> task(rc, models::DiT<float>(models::DiTConfig::from_json(rc.model_config)));
    return detail::run<DiffusionTask<models::DiT<float>>, models::DiT<float>>(task, rc, o);
  }
  if (rc.model == "uvit") {
    DiffusionTask<models::UViT<float>> task(rc, models::UViT<float>(models::UViTConfig::from_json(rc.model_config)));
    return detail::run<DiffusionTask<models::UViT<float>>, models::UViT<float>>(task, rc, o);
  }
  if (rc.model == "latte") {
    DiffusionTask<models::Latte<float>> task(rc, models::Latte<float>(models::LatteConfig::from_json(rc.model_config)));
    return detail::run<DiffusionTask<models::Latte<float>>, models::Latte<float>>(task, rc, o);
  }
  if (rc.model == "vae") {
    AutoencoderTask<float> task(rc, models::AutoencoderKL<float>(models::VAEConfig::from_json(rc.model_config)));
    return detail::run<AutoencoderTask<float>, models::AutoencoderKL<float>>(task, rc, o);
  }
  if (rc.model == "vivit") {
    ClassifierTask<models::ViViT<float>> task(rc, models::ViViT<float>(models::ViViTConfig::from_json(rc.model_config)));
    return detail::run<ClassifierTask<models::ViViT<float>>, models::ViViT<float>>(task, rc, o);
  }
  ClassifierTask<models::ViT<float>> task(rc, models::ViT<float>(models::ViTConfig::from_json(rc.model_config)));
  return detail::run<ClassifierTask<models::ViT<float>>, models::ViT<float>>(task, rc, o);
}

}  // namespace ditto::pipelines
