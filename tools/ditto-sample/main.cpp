// ditto-sample: samples the generators ditto trained itself (examples/models/) or any model file
// ditto-train wrote, as a class grid PNG, an animated GIF (videos) and as tensors
// (docs/train.md#ditto-sample).
//
//   ditto-sample --model image --png grid.png                 10 rows (the classes) of 8 samples
//   ditto-sample --model runs/image/model.safetensors --per-class 100 --tensors samples.safetensors
//   ditto-sample --model video --gif clips.gif                10 rows of 8 clips, the directions cycling
//
// Every error is one line on stderr and a non-zero exit: 2 for a bad command line, 1 for
// anything found wrong while running.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <ditto/core/threading.hpp>
#include <ditto/io/image.hpp>
#include <ditto/io/safetensors.hpp>
#include <ditto/data/moving.hpp>
#include <ditto/pipelines/generate.hpp>

#ifndef DITTO_MODELS_DIR
#define DITTO_MODELS_DIR "examples/models"
#endif

int main(int argc, char** argv) {
  CLI::App app{"ditto-sample: class-conditional samples from a model ditto trained (examples/models/) or from a ditto-train model file"};
  std::string model = "image", png, gif, tensors, sampler;
  long long per_class = 8, seed = 0;
  std::optional<long long> steps;
  std::optional<double> cfg;
  std::optional<std::vector<double>> interval;
  int threads = 0;
  app.add_option("--model", model, "image (examples/models/image.safetensors), video, or a model file's path")->capture_default_str();
  app.add_option("--per-class", per_class, "samples of each class")->check(CLI::Range(1LL, 100000LL))->capture_default_str();
  app.add_option("--seed", seed, "the seed of the starting noise")->check(CLI::Range(0LL, 1LL << 62))->capture_default_str();
  app.add_option("--steps", steps, "sampler steps (default: the model's best measured setting)")->check(CLI::Range(1LL, 100000LL));
  app.add_option("--sampler", sampler, "ddim, dpm++ or ddpm (default: the model's)")->check(CLI::IsMember({"ddim", "dpm++", "ddpm"}));
  app.add_option("--cfg-scale", cfg, "classifier-free guidance as DiT's forward_with_cfg: uncond + S (cond - uncond); 1 = none")
      ->check(CLI::Range(0.0, 100.0));
  app.add_option("--cfg-interval", interval,
                 "LOW,HIGH: guide only the model timesteps from LOW to HIGH (Kynkaanniemi et al. 2024), the others unguided "
                 "(default: the model's; without one, all)")
      ->delimiter(',')
      ->expected(2)
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--png", png, "write the samples as a grid, a row per class (videos: a row of frames per clip)");
  app.add_option("--gif", gif, "videos: write an animated GIF of the clips, a row per class");
  app.add_option("--tensors", tensors,
                 "write images (N, C, H, W) or videos (N, T, C, H, W) float32 in [0, 1], labels (N) int64 (and for videos directions (N) int64) as .safetensors");
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 4096));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "ditto-sample: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    using namespace ditto;
    using ditto::detail::cat;
    if (threads > 0) set_num_threads(threads);
    const char* env = std::getenv("DITTO_MODELS");
    const std::string dir = env && *env ? env : DITTO_MODELS_DIR;
    const std::string path = model == "image" ? dir + "/image.safetensors" : model == "video" ? dir + "/video.safetensors" : model;
    if ((model == "image" || model == "video") && !std::filesystem::exists(path))
      throw ArgumentError("ditto-sample: the embedded " + model + " model " + path + " is missing (examples/models/ of the source tree holds it; DITTO_MODELS names another folder)");
    const auto g = pipelines::ImageDiffusion::load(path);
    if (!gif.empty() && !g.video()) throw ArgumentError("ditto-sample: --gif needs a video model; " + path + " generates images (--png, --tensors)");
    if (png.empty() && gif.empty() && tensors.empty()) (g.video() ? gif : png) = g.video() ? "samples.gif" : "samples.png";
    pipelines::SampleSettings s;
    s.sampler = sampler.empty() ? g.diffusion.sampler : sampler;
    s.steps = steps ? *steps : g.diffusion.sample_steps;
    s.cfg_scale = cfg ? *cfg : g.diffusion.cfg_scale;
    s.cfg_interval = interval ? std::array<double, 2>{(*interval)[0], (*interval)[1]} : g.diffusion.cfg_interval;
    s.seed = static_cast<std::uint64_t>(seed);
    s.progress = true;
    // videos: the model's labels are (class, direction) pairs, class * directions + direction
    const std::int64_t dirs = g.video() ? g.moving_directions : 1;
    if (g.num_classes() % dirs != 0)
      throw ArgumentError(cat("ditto-sample: ", path, " has ", g.num_classes(), " labels, not a number of classes times its ", dirs, " directions"));
    const auto labels = g.video() ? pipelines::video_labels_per_class(g.num_classes() / dirs, dirs, per_class) : pipelines::labels_per_class(g.num_classes(), per_class);
    const Tensor<float> x = g.sample(labels, s);
    const auto N = static_cast<std::int64_t>(labels.size());
    const std::string where = pipelines::DiffusionSettings::whole_interval(s.cfg_interval) ? "" : cat(" at timesteps ", s.cfg_interval[0], " to ", s.cfg_interval[1]);
    std::printf("ditto-sample: %zu samples of %s (%s, %lld steps, cfg scale %.2f%s, seed %lld)\n", labels.size(), path.c_str(), s.sampler.c_str(),
                static_cast<long long>(s.steps), s.cfg_scale, where.c_str(), seed);
    auto class_rows = [&] {  // the class names, one per grid row
      std::string names;
      for (std::int64_t c = 0; c < g.num_classes() / dirs; ++c) {
        const std::string& n = g.classes[static_cast<std::size_t>(c * dirs)];
        names += (c ? ", " : "") + (g.video() ? n.substr(0, n.rfind(", ")) : n);
      }
      return names;
    };
    if (!png.empty()) {
      if (g.video()) {
        write_png(png, make_grid(x.reshape({N * x.size(1), x.size(2), x.size(3), x.size(4)}), x.size(1), 2, 1.0f));
        std::printf("ditto-sample: wrote %s (a row of frames per clip, %lld clips of each class in turn: %s)\n", png.c_str(), per_class, class_rows().c_str());
      } else {
        write_png(png, make_grid(x, per_class, 2, 1.0f));
        std::printf("ditto-sample: wrote %s (a row per class: %s)\n", png.c_str(), class_rows().c_str());
      }
    }
    if (!gif.empty()) {  // frame t: the clips' frames t in a grid, a row per class
      const std::int64_t T = x.size(1), per = x.numel() / (N * T);
      Tensor<float> frame({N, x.size(2), x.size(3), x.size(4)}), frames;
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t i = 0; i < N; ++i) std::copy_n(x.data() + (i * T + t) * per, per, frame.data() + i * per);
        const Tensor<float> grid = make_grid(frame, per_class, 2, 1.0f);
        if (t == 0) frames = Tensor<float>({T, grid.size(0), grid.size(1), grid.size(2)});
        std::copy(grid.begin(), grid.end(), frames.data() + t * grid.numel());
      }
      write_gif(gif, frames, 4.0);
      std::string dnames;
      for (std::int64_t d = 0; d < dirs; ++d) dnames += std::string(d ? ", " : "") + data::direction_name(d, dirs);
      std::printf("ditto-sample: wrote %s (%lld frames; a row per class: %s; the directions cycle along a row: %s)\n", gif.c_str(), static_cast<long long>(T),
                  class_rows().c_str(), dnames.c_str());
    }
    if (!tensors.empty()) {
      Tensor<float> images = x.clone();
      for (auto& v : images) v = (v + 1.0f) * 0.5f;  // [0, 1], 0 the background as in the IDX files
      std::vector<std::int64_t> cls(labels.size()), dir(labels.size());
      for (std::size_t i = 0; i < labels.size(); ++i) cls[i] = labels[i] / dirs, dir[i] = labels[i] % dirs;
      const Tensor<std::int64_t> y({N}, cls), d({N}, dir);
      if (g.video()) save_safetensors(tensors, {view_of("videos", images), view_of("labels", y), view_of("directions", d)}, {{"model", path}});
      else save_safetensors(tensors, {view_of("images", images), view_of("labels", y)}, {{"model", path}});
      std::printf("ditto-sample: wrote %s (%s %s float32 in [0, 1], labels%s int64)\n", tensors.c_str(), g.video() ? "videos" : "images",
                  shape_str(images.shape()).c_str(), g.video() ? " and directions" : "");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
