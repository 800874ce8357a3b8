// measure_quality: how good ditto's image generator is, by ditto's own classifier. For N samples
// (N / 10 of each class) it prints the class agreement (the share the classifier labels as the
// class asked for) and the Frechet distance of the classifier's penultimate features against
// the Fashion-MNIST test set, next to the same figures for real training images, for the
// baseline that samples each class's pixel mean and covariance, and for uniform noise.
//
//   build/examples/measure_quality --generator examples/models/image.safetensors
//       --classifier examples/models/classifier.safetensors [--n 1000] [--settings ddim:50:3,dpm++:20:3] [--seed 0]
//
// --settings: the sampler:steps:cfg_scale settings to measure, comma-separated (docs/train.md
// lists the table this printed).
#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>
#include <ditto/pipelines/quality.hpp>

using namespace ditto;

int main(int argc, char** argv) try {
  std::map<std::string, std::string> a = {{"--generator", "examples/models/image.safetensors"},
                                          {"--classifier", "examples/models/classifier.safetensors"},
                                          {"--n", "1000"},
                                          {"--settings", ""},
                                          {"--seed", "0"}};
  for (int i = 1; i < argc; i += 2) {
    if (std::string(argv[i]) == "--help") {
      std::puts("usage: measure_quality [--generator G.safetensors] [--classifier C.safetensors] [--n 1000] [--settings ddim:50:3,...] [--seed 0]");
      return 0;
    }
    if (!a.count(argv[i]) || i + 1 >= argc) throw ArgumentError(std::string("measure_quality: unknown argument or missing value: ") + argv[i]);
    a[argv[i]] = argv[i + 1];
  }
  const long n = std::stol(a["--n"]);
  if (n < 20 || n > 100000 || n % 10) throw ArgumentError("measure_quality: --n must be a multiple of 10 from 20 to 100000");
  const auto seed = std::stoull(a["--seed"]);
  const auto vit = pipelines::load_classifier(a["--classifier"]);
  const auto gen = pipelines::ImageDiffusion::load(a["--generator"]);
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

  std::stringstream ss(a["--settings"].empty() ? gen.diffusion.sampler + ":" + std::to_string(gen.diffusion.sample_steps) + ":" + detail::cat(gen.diffusion.cfg_scale)
                                               : a["--settings"]);
  std::string item;
  while (std::getline(ss, item, ',')) {
    pipelines::SampleSettings s;
    const auto c1 = item.find(':'), c2 = item.rfind(':');
    if (c1 == std::string::npos || c1 == c2) throw ArgumentError("measure_quality: --settings expects sampler:steps:cfg_scale, got \"" + item + "\"");
    s.sampler = item.substr(0, c1);
    s.steps = std::stol(item.substr(c1 + 1, c2 - c1 - 1));
    s.cfg_scale = std::stod(item.substr(c2 + 1));
    s.seed = seed;
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor<float> x = gen.sample(labels, s);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    row(detail::cat("ditto's ", gen.kind, ", ", s.sampler, " ", s.steps, " steps, cfg scale ", s.cfg_scale), x, secs);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
