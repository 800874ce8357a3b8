// Losses with their gradients, as torch.nn.functional computes them (reduction "mean"): the
// classifier's cross-entropy, the reconstruction losses L1 and L2, and the KL term of a
// diagonal Gaussian posterior (the autoencoder's, as latent-diffusion's DiagonalGaussian-
// Distribution.kl() and LPIPSWithDiscriminator sum it). Each returns the loss and the gradient
// of that loss with respect to its float inputs, in double for the sum (a batch mean of float32
// terms summed in float would lose digits the tests check).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace ditto::nn {

template <class T>
struct LossGrad {
  double loss = 0;
  Tensor<T> grad;  // the gradient of loss with respect to the (first) input, its shape
};

// F.cross_entropy(logits, target, ignore_index, label_smoothing), reduction "mean":
// logits (N, C), target (N) class indices. With p = softmax(logits) and e = label_smoothing,
//   loss_i = (1 - e) (-log p[i, y_i]) + e mean_c(-log p[i, c]),  loss = mean over the rows kept,
// rows whose target is ignore_index are left out of both the sum and the count (every row left
// out: NaN, as torch). grad[i] = (p[i] - (1 - e) onehot(y_i) - e / C) / kept.
template <class T>
inline LossGrad<T> cross_entropy(const Tensor<T>& logits, const Tensor<std::int64_t>& target, double label_smoothing = 0.0,
                                 std::int64_t ignore_index = -100) {
  using ditto::detail::cat;
  if (logits.dim() != 2 || target.dim() != 1 || target.size(0) != logits.size(0))
    throw ShapeError(cat("cross_entropy: expected logits (N, C) and target (N), got ", shape_str(logits.shape()), " and ", shape_str(target.shape())));
  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    throw ArgumentError(cat("cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing));
  const std::int64_t N = logits.size(0), C = logits.size(1);
  if (C < 1) throw ShapeError("cross_entropy: logits need at least one class, got shape " + shape_str(logits.shape()));
  std::int64_t kept = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    if (target[i] == ignore_index) continue;
    if (target[i] < 0 || target[i] >= C)
      throw ShapeError(cat("cross_entropy: target ", target[i], " (row ", i, ") is outside [0, ", C, ") and is not ignore_index ", ignore_index));
    ++kept;
  }
  LossGrad<T> r{0.0, Tensor<T>(logits.shape())};
  if (kept == 0) {  // torch: 0 / 0
    r.loss = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  const double e = label_smoothing, inv = 1.0 / static_cast<double>(kept);
  for (std::int64_t i = 0; i < N; ++i) {
    if (target[i] == ignore_index) continue;
    const T* z = logits.data() + i * C;
    double m = -std::numeric_limits<double>::infinity(), s = 0, zsum = 0;
    for (std::int64_t c = 0; c < C; ++c) m = std::max(m, static_cast<double>(z[c]));
    for (std::int64_t c = 0; c < C; ++c) s += std::exp(static_cast<double>(z[c]) - m), zsum += static_cast<double>(z[c]);
    const double lse = m + std::log(s);  // -log p_c = lse - z_c
    r.loss += ((1 - e) * (lse - static_cast<double>(z[target[i]])) + e * (lse - zsum / static_cast<double>(C))) * inv;
    T* g = r.grad.data() + i * C;
    for (std::int64_t c = 0; c < C; ++c) {
      const double p = std::exp(static_cast<double>(z[c]) - lse);
      g[c] = static_cast<T>((p - (c == target[i] ? 1 - e : 0.0) - e / static_cast<double>(C)) * inv);
    }
  }
  return r;
}

// F.l1_loss(x, target) (p = 1) or F.mse_loss(x, target) (p = 2), reduction "mean"; the gradient
// is with respect to x (torch's sign(0) = 0 for L1).
template <class T>
inline LossGrad<T> reconstruction_loss(const Tensor<T>& x, const Tensor<T>& target, int p) {
  if (x.shape() != target.shape())
    throw ShapeError(ditto::detail::cat("reconstruction_loss: x ", shape_str(x.shape()), " and target ", shape_str(target.shape()), " differ in shape"));
  if (p != 1 && p != 2) throw ArgumentError(ditto::detail::cat("reconstruction_loss: p must be 1 (L1) or 2 (MSE), got ", p));
  LossGrad<T> r{0.0, Tensor<T>(x.shape())};
  const double inv = 1.0 / static_cast<double>(x.numel());
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(target[i]);
    r.loss += (p == 1 ? std::abs(d) : d * d) * inv;
    r.grad[i] = static_cast<T>((p == 1 ? (d > 0 ? 1.0 : d < 0 ? -1.0 : 0.0) : 2 * d) * inv);
  }
  return r;
}

// The KL divergence of N(mean, exp(logvar)) from N(0, 1), summed over every axis but the first
// and averaged over it, as latent-diffusion's autoencoder loss takes it:
//   kl = 0.5 sum(mean^2 + exp(logvar) - 1 - logvar) / B.
// grad is d kl / d mean = mean / B; grad_logvar = 0.5 (exp(logvar) - 1) / B.
template <class T>
struct KLGrad {
  double loss = 0;
  Tensor<T> grad_mean, grad_logvar;
};
template <class T>
inline KLGrad<T> gaussian_kl(const Tensor<T>& mean, const Tensor<T>& logvar) {
  if (mean.shape() != logvar.shape() || mean.dim() < 1 || mean.size(0) < 1)
    throw ShapeError(ditto::detail::cat("gaussian_kl: expected mean and logvar of one shape (B, ...), got ", shape_str(mean.shape()), " and ",
                                        shape_str(logvar.shape())));
  KLGrad<T> r{0.0, Tensor<T>(mean.shape()), Tensor<T>(mean.shape())};
  const double inv = 1.0 / static_cast<double>(mean.size(0));
  for (std::int64_t i = 0; i < mean.numel(); ++i) {
    const double m = mean[i], lv = logvar[i], v = std::exp(lv);
    r.loss += 0.5 * (m * m + v - 1 - lv) * inv;
    r.grad_mean[i] = static_cast<T>(m * inv);
    r.grad_logvar[i] = static_cast<T>(0.5 * (v - 1) * inv);
  }
  return r;
}

}  // namespace ditto::nn
