// ditto-sample: samples the generators ditto trained itself (examples/models/) or any model file
// ditto-train wrote, as a class grid PNG and as tensors (docs/train.md#ditto-sample).
//
//   ditto-sample --model image --png grid.png                 10 rows (the classes) of 8 samples
//   ditto-sample --model runs/image/model.safetensors --per-class 100 --tensors samples.safetensors
//
// Every error is one line on stderr and a non-zero exit: 2 for a bad command line, 1 for
// anything found wrong while running.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include <ditto/core/threading.hpp>
#include <ditto/io/image.hpp>
#include <ditto/io/safetensors.hpp>
#include <ditto/pipelines/generate.hpp>

#ifndef DITTO_MODELS_DIR
#define DITTO_MODELS_DIR "examples/models"
#endif

int main(int argc, char** argv) {
  CLI::App app{"ditto-sample: class-conditional samples from a model ditto trained (examples/models/) or from a ditto-train model file"};
  std::string model = "image", png, tensors, sampler;
  long long per_class = 8, seed = 0;
  std::optional<long long> steps;
  std::optional<double> cfg;
  int threads = 0;
  app.add_option("--model", model, "image (examples/models/image.safetensors), video, or a model file's path")->capture_default_str();
  app.add_option("--per-class", per_class, "samples of each class")->check(CLI::Range(1LL, 100000LL))->capture_default_str();
  app.add_option("--seed", seed, "the seed of the starting noise")->check(CLI::Range(0LL, 1LL << 62))->capture_default_str();
  app.add_option("--steps", steps, "sampler steps (default: the model's best measured setting)")->check(CLI::Range(1LL, 100000LL));
  app.add_option("--sampler", sampler, "ddim, dpm++ or ddpm (default: the model's)")->check(CLI::IsMember({"ddim", "dpm++", "ddpm"}));
  app.add_option("--cfg-scale", cfg, "classifier-free guidance as DiT's forward_with_cfg: uncond + S (cond - uncond); 1 = none")
      ->check(CLI::Range(0.0, 100.0));
  app.add_option("--png", png, "write the samples as a grid, a row per class");
  app.add_option("--tensors", tensors, "write images (N, C, H, W) float32 in [0, 1] and labels (N) int64 as .safetensors");
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
    if (threads > 0) set_num_threads(threads);
    const char* env = std::getenv("DITTO_MODELS");
    const std::string dir = env && *env ? env : DITTO_MODELS_DIR;
    if (model == "video")
      throw ArgumentError("ditto-sample: the video model (a Latte on moving Fashion-MNIST) is not trained yet; --model image or a model file");
    const std::string path = model == "image" ? dir + "/image.safetensors" : model;
    if (png.empty() && tensors.empty()) png = "samples.png";
    const auto g = pipelines::ImageDiffusion::load(path);
    pipelines::SampleSettings s;
    s.sampler = sampler.empty() ? g.diffusion.sampler : sampler;
    s.steps = steps ? *steps : g.diffusion.sample_steps;
    s.cfg_scale = cfg ? *cfg : g.diffusion.cfg_scale;
    s.seed = static_cast<std::uint64_t>(seed);
    s.progress = true;
    const auto labels = pipelines::labels_per_class(g.num_classes(), per_class);
    const Tensor<float> x = g.sample(labels, s);
    std::printf("ditto-sample: %zu samples of %s (%s, %lld steps, cfg scale %.2f, seed %lld)\n", labels.size(), path.c_str(), s.sampler.c_str(),
                static_cast<long long>(s.steps), s.cfg_scale, seed);
    if (!png.empty()) {
      write_png(png, make_grid(x, per_class, 2, 1.0f));
      std::printf("ditto-sample: wrote %s (a row per class: ", png.c_str());
      for (std::size_t c = 0; c < g.classes.size(); ++c) std::printf("%s%s", c ? ", " : "", g.classes[c].c_str());
      std::printf(")\n");
    }
    if (!tensors.empty()) {
      Tensor<float> images = x.clone();
      for (auto& v : images) v = (v + 1.0f) * 0.5f;  // [0, 1], 0 the background as in the IDX files
      const Tensor<std::int64_t> y({static_cast<std::int64_t>(labels.size())}, labels);
      save_safetensors(tensors, {view_of("images", images), view_of("labels", y)}, {{"model", path}});
      std::printf("ditto-sample: wrote %s (images %s float32 in [0, 1], labels int64)\n", tensors.c_str(), shape_str(images.shape()).c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
