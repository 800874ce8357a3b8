// Gradient accumulation over micro-batches: a batch too large for memory runs as several
// forward_train / backward calls whose gradients add up in one gradient tree (every backward
// accumulates, +=). For the gradient to equal the whole batch's, each sample's loss must carry
// the whole batch's weight 1/B, not its micro-batch's 1/b: micro_batches says which samples
// each call takes and that weight, which the loss gradients take as their per-sample weights
// (diffusion::training_losses_grad's `weight`; nn::cross_entropy's gradient, a mean over its
// micro-batch's kept rows, scaled by kept rows in the micro-batch / kept rows in the batch,
// which is share() when no row is ignored).
//
//   nn::zero_grad<float>(grads);
//   for (const auto& mb : train::micro_batches(B, 16)) {
//     const auto x = train::batch_slice(x_all, mb.lo, mb.hi);  // ... and t, y, noise
//     auto out = model.forward_train(x_t, t, y, acts);
//     model.backward(grads, acts, diffusion::training_losses_grad(s, out, x, x_t, tv, noise, {}, mb.weights<float>()));
//   }
//   opt.step(model, grads);
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace ditto::train {

struct MicroBatch {
  std::int64_t lo = 0, hi = 0;  // samples [lo, hi) of the batch
  std::int64_t batch = 0;       // the whole batch's size B
  // Each of the hi - lo samples' loss weights: 1 / B.
  template <class T>
  std::vector<T> weights() const {
    return std::vector<T>(static_cast<std::size_t>(hi - lo), static_cast<T>(1.0 / static_cast<double>(batch)));
  }
  // The factor that turns a mean over this micro-batch into its share of the whole batch's mean.
  double share() const { return static_cast<double>(hi - lo) / static_cast<double>(batch); }
};

// [0, B) in consecutive micro-batches of `size` samples (the last may be smaller).
inline std::vector<MicroBatch> micro_batches(std::int64_t batch, std::int64_t size) {
  if (batch < 1 || size < 1)
    throw ArgumentError(ditto::detail::cat("micro_batches: expected a batch >= 1 and a micro-batch size >= 1, got ", batch, " and ", size));
  std::vector<MicroBatch> out;
  for (std::int64_t lo = 0; lo < batch; lo += size) out.push_back({lo, std::min(batch, lo + size), batch});
  return out;
}

// Samples [lo, hi) of x along its first axis, as a new tensor.
template <class T>
inline Tensor<T> batch_slice(const Tensor<T>& x, std::int64_t lo, std::int64_t hi) {
  if (x.dim() < 1 || lo < 0 || hi < lo || hi > x.size(0))
    throw ShapeError(ditto::detail::cat("batch_slice: samples [", lo, ", ", hi, ") of a tensor of shape ", shape_str(x.shape())));
  Shape shape = x.shape();
  shape[0] = hi - lo;
  const std::int64_t per = x.size(0) ? x.numel() / x.size(0) : 0;
  Tensor<T> out = Tensor<T>::empty(shape);
  std::copy(x.data() + lo * per, x.data() + hi * per, out.data());
  return out;
}

}  // namespace ditto::train
