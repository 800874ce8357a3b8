// The scratch an inference forward reuses block after block: a normed copy h of the token rows,
// q/k/v, the attention output, a branch output y and the MLP's hidden rows. Sized on first use;
// a larger batch grows them. Shared by the transformer models (DiT, ViT, ViViT, U-ViT, Latte).
#pragma once

#include <cstdint>

#include "../core/tensor.hpp"

namespace ditto::nn {

template <class T>
struct BlockBuffers {
  Tensor<T> h, qkv, o, y, hidden;
  // A copied model (an EMA, a gradient tree) gets buffers of its own, not handles to these:
  // two models must not share scratch.
  BlockBuffers() = default;
  BlockBuffers(const BlockBuffers&) {}
  BlockBuffers& operator=(const BlockBuffers&) { return *this = BlockBuffers(); }
  BlockBuffers(BlockBuffers&&) = default;
  BlockBuffers& operator=(BlockBuffers&&) = default;
  void ensure(std::int64_t rows, std::int64_t d, std::int64_t mlp_hidden) {
    if (h.numel() >= rows * d && hidden.numel() >= rows * mlp_hidden) return;
    h = Tensor<T>::empty({rows, d});
    qkv = Tensor<T>::empty({rows, 3 * d});
    o = Tensor<T>::empty({rows, d});
    y = Tensor<T>::empty({rows, d});
    hidden = Tensor<T>::empty({rows, mlp_hidden});
  }
};

}  // namespace ditto::nn
