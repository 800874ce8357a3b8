// measure_quality: how good ditto's generators are, by ditto's own classifiers.
//
// Images (a DiT or U-ViT on Fashion-MNIST): for N samples (N / 10 of each class) it prints the
// class agreement (the share the ViT labels as the class asked for) and the Frechet distance of
// the ViT's penultimate features against the Fashion-MNIST test set, next to the same figures
// for real training images, for the baseline that samples each class's pixel mean and
// covariance, and for uniform noise.
//
// Videos (a Latte on moving Fashion-MNIST): for N clips (N / 10 of each class, the directions
// cycling) it prints the class, direction and (class, direction) agreement by the ViViT, next to
// the same figures for real clips of the training and test splits (made by the Latte's own data
// recipe, from its file) and for uniform noise.
//
//   build/examples/measure_quality [--generator examples/models/image.safetensors]
//       [--classifier examples/models/classifier.safetensors] [--n 1000] [--settings ddim:50:3,dpm++:20:3] [--seed 0]
//   build/examples/measure_quality --generator examples/models/video.safetensors
//       [--classifier examples/models/video-classifier.safetensors] ...
//
// --settings: the sampler:steps:cfg_scale[:low-high] settings to measure, comma-separated (low-high:
// a guidance interval in model timesteps) (docs/train.md
// lists the tables this printed).
#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>
#include <ditto/pipelines/quality.hpp>

using namespace ditto;

// "sampler:steps:cfg_scale[:low-high],..." (low-high: the guidance interval in model timesteps;
// empty: the model's own best setting)
static std::vector<pipelines::SampleSettings> parse_settings(const std::string& text, const pipelines::ImageDiffusion& gen, std::uint64_t seed) {
  std::vector<pipelines::SampleSettings> out;
  if (text.empty()) {
    pipelines::SampleSettings s;
    s.sampler = gen.diffusion.sampler, s.steps = gen.diffusion.sample_steps, s.cfg_scale = gen.diffusion.cfg_scale;
    s.cfg_interval = gen.diffusion.cfg_interval, s.seed = seed;
    out.push_back(s);
    return out;
  }
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::vector<std::string> f;
    std::stringstream is(item);
    for (std::string p; std::getline(is, p, ':');) f.push_back(p);
    if (f.size() != 3 && f.size() != 4) throw ArgumentError("measure_quality: --settings expects sampler:steps:cfg_scale[:low-high], got \"" + item + "\"");
    pipelines::SampleSettings s;
    s.sampler = f[0];
    s.steps = std::stol(f[1]);
    s.cfg_scale = std::stod(f[2]);
    if (f.size() == 4) {
      const auto dash = f[3].find('-');
      if (dash == std::string::npos) throw ArgumentError("measure_quality: a guidance interval is low-high, got \"" + f[3] + "\"");
      s.cfg_interval = {std::stod(f[3].substr(0, dash)), std::stod(f[3].substr(dash + 1))};
    }
    s.seed = seed;
    out.push_back(s);
  }
  return out;
}

// How a setting reads in a table row.
static std::string describe(const pipelines::SampleSettings& st) {
  std::string r = detail::cat(st.sampler, " ", st.steps, " steps, cfg scale ", st.cfg_scale);
  if (!pipelines::DiffusionSettings::whole_interval(st.cfg_interval)) r += detail::cat(" at timesteps ", st.cfg_interval[0], "-", st.cfg_interval[1]);
  return r;
}

// The video table: class, direction and joint agreement by the ViViT.
static int videos(const pipelines::ImageDiffusion& gen, const std::string& gen_path, const std::string& classifier_path, long n,
                  const std::vector<pipelines::SampleSettings>& settings, std::uint64_t seed) {
  const auto vivit = pipelines::load_video_classifier(classifier_path);
  const SafetensorsFile f(gen_path);
  const auto run = pipelines::ModelFile::read(f, gen_path).run;
  const auto d = pipelines::DataSettings::from_json(run.contains("data") ? run["data"] : nlohmann::json::object());
  if (!d.is_video()) throw ArgumentError("measure_quality: " + gen_path + " was not trained on moving_fashion_mnist");
  const std::int64_t dirs = d.moving.directions;
  if (vivit.config.num_classes != gen.num_classes())
    throw ArgumentError(detail::cat("measure_quality: the ViViT has ", vivit.config.num_classes, " classes, the Latte ", gen.num_classes()));
  auto row = [&](const std::string& what, const Tensor<float>& clips, const std::vector<std::int64_t>& wanted, double seconds) {
    const auto got = pipelines::classify_videos(vivit, clips);
    std::printf("| %s | %.1f%% | %.1f%% | %.1f%% | %s |\n", what.c_str(),
                100 * pipelines::agreement(pipelines::class_of(got, dirs), pipelines::class_of(wanted, dirs)),
                100 * pipelines::agreement(pipelines::direction_of(got, dirs), pipelines::direction_of(wanted, dirs)), 100 * pipelines::agreement(got, wanted),
                seconds > 0 ? detail::cat(seconds, " s").c_str() : "");
    std::fflush(stdout);
  };
  std::printf("| %ld clips | class agreement | direction agreement | (class, direction) agreement | sampling time |\n|---|---|---|---|---|\n", n);
  const auto data = pipelines::load_dataset(d, true);
  std::vector<std::int64_t> first(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) first[static_cast<std::size_t>(i)] = i;
  for (const auto& [what, clips] : {std::pair{"real clips, training split", data.train_clips}, std::pair{"real clips, test split", data.test_clips}}) {
    if (!clips || clips->size() < n) {
      std::printf("| %s | (the split has %lld clips, fewer than %ld) | | | |\n", what, static_cast<long long>(clips ? clips->size() : 0), n);
      continue;
    }
    auto [x, y] = clips->batch(first, -1.0f, 1.0f);
    row(what, x, std::vector<std::int64_t>(y.begin(), y.end()), 0);
  }
  const auto labels = pipelines::video_labels_per_class(gen.num_classes() / dirs, dirs, n / (gen.num_classes() / dirs));
  row("uniform noise", Generator(seed).uniform<float>(gen.image_shape(static_cast<std::int64_t>(labels.size())), -1.0, 1.0), labels, 0);
  for (const auto& st : settings) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor<float> x = gen.sample(labels, st);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    row("ditto's latte, " + describe(st), x, labels, secs);
  }
  return 0;
}

int main(int argc, char** argv) try {
  std::map<std::string, std::string> a = {{"--generator", "examples/models/image.safetensors"},
                                          {"--classifier", ""},
                                          {"--n", "1000"},
                                          {"--settings", ""},
                                          {"--seed", "0"}};
  for (int i = 1; i < argc; i += 2) {
    if (std::string(argv[i]) == "--help") {
      std::puts("usage: measure_quality [--generator G.safetensors] [--classifier C.safetensors] [--n 1000] [--settings ddim:50:3,...] [--seed 0]\n"
                "(the classifier defaults to examples/models/classifier.safetensors for images, video-classifier.safetensors for videos)");
      return 0;
    }
    if (!a.count(argv[i]) || i + 1 >= argc) throw ArgumentError(std::string("measure_quality: unknown argument or missing value: ") + argv[i]);
    a[argv[i]] = argv[i + 1];
  }
  const long n = std::stol(a["--n"]);
  if (n < 20 || n > 100000 || n % 10) throw ArgumentError("measure_quality: --n must be a multiple of 10 from 20 to 100000");
  const auto seed = std::stoull(a["--seed"]);
  const auto gen = pipelines::ImageDiffusion::load(a["--generator"]);
  const auto settings = parse_settings(a["--settings"], gen, seed);
  if (gen.video()) return videos(gen, a["--generator"], a["--classifier"].empty() ? "examples/models/video-classifier.safetensors" : a["--classifier"], n, settings, seed);
  const auto vit = pipelines::load_classifier(a["--classifier"].empty() ? "examples/models/classifier.safetensors" : a["--classifier"]);
  const auto test = data::load_fashion_mnist("test"), train = data::load_fashion_mnist("train");
  std::vector<std::int64_t> all(static_cast<std::size_t>(test.size()));
  for (std::int64_t i = 0; i < test.size(); ++i) all[static_cast<std::size_t>(i)] = i;
  const auto test_stats = pipelines::stats(pipelines::features_and_labels(vit, data::image_batch(test, all, -1.0f, 1.0f).first).first);
  const auto labels = pipelines::labels_per_class(10, n / 10);

  auto row = [&](const std::string& what, const Tensor<float>& images, double seconds) {
    const auto [f, got] = pipelines::features_and_labels(vit, images);
    std::printf("| %s | %.1f%% | %.3f | %s |\n", what.c_str(), 100 * pipelines::agreement(got, labels),
                pipelines::frechet_distance(pipelines::stats(f), test_stats), seconds > 0 ? detail::cat(seconds, " s").c_str() : "");
    std::fflush(stdout);
  };
  std::printf("| %ld images | class agreement | Frechet distance to the test set | sampling time |\n|---|---|---|---|\n", n);
  {  // real training images: the first n / 10 of each class
    std::vector<std::int64_t> idx;
    std::vector<int> taken(10, 0);
    for (std::int64_t i = 0; i < train.size() && static_cast<long>(idx.size()) < n; ++i)
      if (taken[static_cast<std::size_t>(train.labels[i])] < n / 10) ++taken[static_cast<std::size_t>(train.labels[i])], idx.push_back(i);
    std::sort(idx.begin(), idx.end(), [&](auto x, auto y) { return train.labels[x] < train.labels[y] || (train.labels[x] == train.labels[y] && x < y); });
    row("real training images", data::image_batch(train, idx, -1.0f, 1.0f).first, 0);
  }
  row("baseline: each class's pixel mean and covariance", pipelines::class_gaussian_samples(train, labels, seed), 0);
  row("uniform noise", Generator(seed).uniform<float>({n, 1, 28, 28}, -1.0, 1.0), 0);

  for (const auto& st : settings) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor<float> x = gen.sample(labels, st);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    row("ditto's " + gen.kind + ", " + describe(st), x, secs);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
