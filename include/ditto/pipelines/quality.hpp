// Measuring generators with a classifier ditto trained: class agreement (the share of samples
// the classifier labels as the class they were asked for) and the Frechet distance between the
// classifier's penultimate features of the samples and of real images (FID's formula, on
// Fashion-MNIST's own feature space instead of Inception's).
//
//   const auto vit = pipelines::load_classifier("examples/models/classifier.safetensors");
//   const auto [f, got] = pipelines::features_and_labels(vit, images);  // (N, embed_dim), labels; images in [-1, 1]
//   const double fd = pipelines::frechet_distance(pipelines::stats(f), pipelines::stats(f_test));
//   const double agree = pipelines::agreement(got, labels);
//
// Videos (moving Fashion-MNIST): a ViViT ditto trained labels clips by their joint (class,
// direction) label; class_of / direction_of split it, for the class and direction agreements.
//   const auto vivit = pipelines::load_video_classifier("examples/models/video-classifier.safetensors");
//   const auto got = pipelines::classify_videos(vivit, videos);     // videos (N, T, 1, H, W) in [-1, 1]
//
// Lazy on purpose: the functions that load or run a classifier, and those that use Eigen's
// decompositions (stats, frechet_distance, class_gaussian_samples), are templates (`template <int
// = 0>`) only so that a file that includes ditto.hpp compiles them where it calls them, not in
// every file (docs/development.md, CI's time budget).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "../data/fashion_mnist.hpp"
#include "../io/safetensors.hpp"
#include "../einops/rearrange.hpp"
#include "../models/vit.hpp"
#include "../models/vivit.hpp"
#include "../nn/state_dict.hpp"
#include "generate.hpp"

namespace ditto::pipelines {

template <int = 0>  // lazy: see the top of this file
inline models::ViT<float> load_classifier(const std::string& path) {
  return load_model_file<models::ViT<float>, models::ViTConfig>(path, "vit", "a vit classifier");
}

template <int = 0>  // lazy: see the top of this file
inline models::ViViT<float> load_video_classifier(const std::string& path) {
  return load_model_file<models::ViViT<float>, models::ViViTConfig>(path, "vivit", "a vivit classifier");
}

// The ViViT's labels of videos (N, T, C, H, W) in [-1, 1] (Latte's layout, as ditto-sample and
// MovingFashionMnist::batch give them), in batches of 100.
template <int = 0>  // lazy: see the top of this file
inline std::vector<std::int64_t> classify_videos(const models::ViViT<float>& vivit, const Tensor<float>& videos) {
  if (videos.dim() != 5 || videos.size(0) < 1) throw ShapeError("classify_videos: expected videos (N, T, C, H, W), got " + shape_str(videos.shape()));
  const std::int64_t N = videos.size(0), per = videos.numel() / N;
  std::vector<std::int64_t> labels;
  for (std::int64_t lo = 0; lo < N; lo += 100) {
    const std::int64_t B = std::min<std::int64_t>(100, N - lo);
    Tensor<float> x({B, videos.size(1), videos.size(2), videos.size(3), videos.size(4)});
    std::copy(videos.data() + lo * per, videos.data() + (lo + B) * per, x.data());
    const Tensor<float> logits = vivit.forward(rearrange(x, "b t c h w -> b c t h w"));
    const std::int64_t C = logits.size(1);
    for (std::int64_t b = 0; b < B; ++b) labels.push_back(std::max_element(logits.data() + b * C, logits.data() + (b + 1) * C) - (logits.data() + b * C));
  }
  return labels;
}

// The class and the direction parts of joint labels class * directions + direction.
inline std::vector<std::int64_t> class_of(const std::vector<std::int64_t>& joint, std::int64_t directions) {
  std::vector<std::int64_t> out;
  for (auto j : joint) out.push_back(j / directions);
  return out;
}
inline std::vector<std::int64_t> direction_of(const std::vector<std::int64_t>& joint, std::int64_t directions) {
  std::vector<std::int64_t> out;
  for (auto j : joint) out.push_back(j % directions);
  return out;
}

// The classifier's pre-logits features (timm's forward_head(pre_logits=True)) and its labels,
// in batches of 250.
template <int = 0>  // lazy: see the top of this file
inline std::pair<Tensor<float>, std::vector<std::int64_t>> features_and_labels(const models::ViT<float>& vit, const Tensor<float>& images) {
  if (images.dim() != 4 || images.size(0) < 1) throw ShapeError("features: expected images (N, C, H, W), got " + shape_str(images.shape()));
  const std::int64_t N = images.size(0), per = images.numel() / N, D = vit.config.embed_dim;
  Tensor<float> feats({N, D});
  std::vector<std::int64_t> labels;
  for (std::int64_t lo = 0; lo < N; lo += 250) {
    const std::int64_t B = std::min<std::int64_t>(250, N - lo);
    Tensor<float> x({B, images.size(1), images.size(2), images.size(3)});
    std::copy(images.data() + lo * per, images.data() + (lo + B) * per, x.data());
    Tensor<float> pooled;
    const Tensor<float> logits = vit.forward(x, [&](const std::string& name, const Tensor<float>& t) {
      if (name == "head_drop") pooled = t.clone();
    });
    std::copy(pooled.data(), pooled.data() + B * D, feats.data() + lo * D);
    const std::int64_t C = logits.size(1);
    for (std::int64_t b = 0; b < B; ++b) labels.push_back(std::max_element(logits.data() + b * C, logits.data() + (b + 1) * C) - (logits.data() + b * C));
  }
  return {feats, labels};
}

inline double agreement(const std::vector<std::int64_t>& got, const std::vector<std::int64_t>& wanted) {
  if (got.size() != wanted.size() || got.empty())
    throw ShapeError(ditto::detail::cat("agreement: ", got.size(), " labels against ", wanted.size(), " wanted"));
  std::size_t same = 0;
  for (std::size_t i = 0; i < got.size(); ++i) same += got[i] == wanted[i];
  return static_cast<double>(same) / static_cast<double>(got.size());
}

struct GaussianStats {
  Eigen::VectorXd mean;
  Eigen::MatrixXd cov;  // unbiased (N - 1), as FID's np.cov
};

template <int = 0>  // lazy: see the top of this file
inline GaussianStats stats(const Tensor<float>& f) {
  if (f.dim() != 2 || f.size(0) < 2) throw ShapeError("stats: expected features (N >= 2, D), got " + shape_str(f.shape()));
  const std::int64_t N = f.size(0), D = f.size(1);
  Eigen::MatrixXd X(N, D);
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t j = 0; j < D; ++j) X(i, j) = f(i, j);
  GaussianStats s;
  s.mean = X.colwise().mean().transpose();
  const Eigen::MatrixXd C = X.rowwise() - s.mean.transpose();
  s.cov = C.transpose() * C / static_cast<double>(N - 1);
  return s;
}

// |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)); tr((C1 C2)^(1/2)) = sum of the square roots of the
// eigenvalues of C1^(1/2) C2 C1^(1/2) (symmetric, so no complex parts to drop, unlike scipy's sqrtm).
template <int = 0>  // lazy: see the top of this file
inline double frechet_distance(const GaussianStats& a, const GaussianStats& b) {
  if (a.mean.size() != b.mean.size()) throw ShapeError(ditto::detail::cat("frechet_distance: ", a.mean.size(), " features against ", b.mean.size()));
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> ea(a.cov);
  const Eigen::MatrixXd root = ea.eigenvectors() * ea.eigenvalues().cwiseMax(0.0).cwiseSqrt().asDiagonal() * ea.eigenvectors().transpose();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> em(root * b.cov * root);
  const double tr_sqrt = em.eigenvalues().cwiseMax(0.0).cwiseSqrt().sum();
  return (a.mean - b.mean).squaredNorm() + a.cov.trace() + b.cov.trace() - 2 * tr_sqrt;
}

// The baseline generator: each class's pixel mean and covariance (over the training images),
// sampled as a Gaussian (images in [-1, 1], clipped). A model that only learned these two
// moments per class would draw this.
template <int = 0>  // lazy: see the top of this file
inline Tensor<float> class_gaussian_samples(const data::LabelledImages& train, const std::vector<std::int64_t>& labels, std::uint64_t seed) {
  const std::int64_t H = train.images.size(1), W = train.images.size(2), P = H * W, N = static_cast<std::int64_t>(labels.size());
  Tensor<float> out({N, 1, H, W});
  Generator gen(seed);
  for (std::int64_t c = 0; c < 10; ++c) {
    std::vector<std::int64_t> idx;
    for (std::int64_t i = 0; i < train.size(); ++i)
      if (train.labels[i] == c) idx.push_back(i);
    if (idx.empty()) continue;
    Eigen::MatrixXd X(static_cast<Eigen::Index>(idx.size()), P);
    for (std::size_t r = 0; r < idx.size(); ++r)
      for (std::int64_t k = 0; k < P; ++k) X(static_cast<Eigen::Index>(r), k) = train.images.data()[idx[r] * P + k] / 127.5 - 1.0;
    const Eigen::VectorXd mu = X.colwise().mean().transpose();
    const Eigen::MatrixXd C = X.rowwise() - mu.transpose();
    Eigen::MatrixXd cov = C.transpose() * C / static_cast<double>(idx.size() - 1);
    cov.diagonal().array() += 1e-4;  // border pixels are always 0: a tiny floor makes it positive definite
    const Eigen::MatrixXd L = cov.llt().matrixL();
    for (std::int64_t n = 0; n < N; ++n) {
      if (labels[static_cast<std::size_t>(n)] != c) continue;
      const Tensor<double> z = gen.normal<double>({P});
      const Eigen::VectorXd x = mu + L * Eigen::Map<const Eigen::VectorXd>(z.data(), P);
      for (std::int64_t k = 0; k < P; ++k) out[n * P + k] = static_cast<float>(std::clamp(x(k), -1.0, 1.0));
    }
  }
  return out;
}

}  // namespace ditto::pipelines
