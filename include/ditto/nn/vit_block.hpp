// timm's vision transformer Block: x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)), pre-norm
// with residuals, LayerScale optional. ViT's blocks (models/vit.hpp) and ViViT's (models/vivit.hpp)
// are these, under timm's names (norm1, attn, ls1, norm2, mlp, ls2). forward_with and
// forward_train_with / backward_with take the attention as an argument, for ViViT's factorized
// attentions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "activation.hpp"
#include "attention.hpp"
#include "buffers.hpp"
#include "mlp.hpp"
#include "norm.hpp"

namespace ditto::nn {

// timm's LayerScale: a learned per-channel gain on a residual branch ("gamma").
template <class T = float>
struct LayerScale {
  Tensor<T> gamma;
  template <class V>
  void visit(V& v) {
    v("gamma", gamma);
  }
};

template <class T = float>
struct ViTBlock {
  std::int64_t dim = 0;
  bool layer_scale = false;
  LayerNorm<T> norm1, norm2;
  Attention<T> attn;
  LayerScale<T> ls1, ls2;
  Mlp<T> mlp;

  ViTBlock() = default;
  // timm's Block(dim, num_heads, mlp_ratio, qkv_bias, qk_norm, init_values, act_layer): LayerNorm
  // eps 1e-6 (timm's ViT), LayerScale when init_values is given.
  ViTBlock(std::int64_t dim_, std::int64_t num_heads, std::int64_t mlp_hidden, bool qkv_bias = true, bool qk_norm = false,
           Activation act = Activation::gelu, std::optional<double> init_values = std::nullopt)
      : dim(dim_), layer_scale(init_values.has_value()), norm1(dim_, 1e-6), norm2(dim_, 1e-6), attn(dim_, num_heads, qkv_bias, qk_norm, 1e-6),
        mlp(dim_, mlp_hidden, dim_, act) {
    if (layer_scale) {
      ls1.gamma = Tensor<T>::full({dim_}, static_cast<T>(*init_values));
      ls2.gamma = Tensor<T>::full({dim_}, static_cast<T>(*init_values));
    }
  }

  template <class V>
  void visit(V& v) {
    v("norm1", norm1);
    v("attn", attn);
    if (layer_scale) v("ls1", ls1);
    v("norm2", norm2);
    v("mlp", mlp);
    if (layer_scale) v("ls2", ls2);
  }

  // x: rows of dim for sequences cu, in place. buf: h, qkv, o, y, hidden as DiT's.
  void forward_inplace(T* x, const std::vector<std::int64_t>& cu, BlockBuffers<T>& buf) const {
    forward_with(x, cu.back(), buf, [&](const T* h, T* out) { attn.forward_packed_into(h, cu, out, buf.qkv.data(), buf.o.data()); });
  }

  // The block with its attention given: attend(h, out) maps the normed rows h to out (rows x
  // dim), using buf.qkv and buf.o if it likes. ViViT's factorized models attend differently.
  template <class Attend>
  void forward_with(T* x, std::int64_t rows, BlockBuffers<T>& buf, Attend&& attend) const {
    norm1.forward_into(x, buf.h.data(), rows);
    attend(buf.h.data(), buf.y.data());
    residual(x, buf.y.data(), rows, layer_scale ? ls1.gamma.data() : nullptr);
    norm2.forward_into(x, buf.h.data(), rows);
    mlp.forward_into(buf.h.data(), buf.y.data(), rows, buf.hidden.data());
    residual(x, buf.y.data(), rows, layer_scale ? ls2.gamma.data() : nullptr);
  }

  // Training. What backward reads, per token row: the block's input and middle, both LayerNorms'
  // statistics and outputs, the attention's activations, both branch outputs (LayerScale's
  // gradient) and the MLP's pre-activation.
  struct Acts {
    Tensor<T> x_in, mean1, rstd1, h1, y_attn, x_mid, mean2, rstd2, h2, pre, y_mlp;
    typename Attention<T>::Acts attn;
  };
  // x: rows of dim, updated in place; seq: which rows attend to each other.
  void forward_train(T* x, std::int64_t rows, const typename Attention<T>::Sequences& seq, Acts& a) const {
    forward_train_with(x, rows, a, [&](const T* h, T* y, typename Attention<T>::Acts& aa) { attn.forward_train(h, rows, seq, y, aa); });
  }
  // The block with its attention given (as forward_with): attend(h, y, attn_acts).
  template <class Attend>
  void forward_train_with(T* x, std::int64_t rows, Acts& a, Attend&& attend) const {
    const std::int64_t D = dim;
    for (auto* t : {&a.x_in, &a.h1, &a.y_attn, &a.x_mid, &a.h2, &a.y_mlp}) *t = Tensor<T>::empty({rows, D});
    for (auto* t : {&a.mean1, &a.rstd1, &a.mean2, &a.rstd2}) *t = Tensor<T>::empty({rows});
    a.pre = Tensor<T>::empty({rows, mlp.fc1.out_features});
    std::copy(x, x + rows * D, a.x_in.data());
    norm1.forward_train(x, a.h1.data(), rows, a.mean1.data(), a.rstd1.data());
    attend(a.h1.data(), a.y_attn.data(), a.attn);
    residual(x, a.y_attn.data(), rows, layer_scale ? ls1.gamma.data() : nullptr);
    std::copy(x, x + rows * D, a.x_mid.data());
    norm2.forward_train(x, a.h2.data(), rows, a.mean2.data(), a.rstd2.data());
    Tensor<T> hidden = Tensor<T>::empty({rows, mlp.fc1.out_features});
    mlp.forward_train(a.h2.data(), a.y_mlp.data(), rows, a.pre.data(), hidden.data());
    residual(x, a.y_mlp.data(), rows, layer_scale ? ls2.gamma.data() : nullptr);
  }
  // dx: (rows, dim), the gradient of the block's output, replaced by the gradient of its input
  // (the residual stream passes it through; each branch adds its part). Accumulates g.
  void backward(T* dx, ViTBlock& g, const typename Attention<T>::Sequences& seq, const Acts& a) const {
    const std::int64_t rows = a.x_in.size(0);
    backward_with(dx, g, a, [&](T* dh, const T* dy, const typename Attention<T>::Acts& aa) {
      attn.backward(dh, g.attn, dy, a.h1.data(), rows, seq, aa);
    });
  }
  // With the attention's backward given: attend_back(dh, dy, attn_acts) accumulates dh (the
  // normed rows' gradient) and g.attn from dy (the attention output's).
  template <class AttendBack>
  void backward_with(T* dx, ViTBlock& g, const Acts& a, AttendBack&& attend_back) const {
    const std::int64_t rows = a.x_in.size(0);
    Tensor<T> dy = Tensor<T>::empty({rows, dim}), dh({rows, dim});
    // x_out = x_mid + ls2 * mlp(norm2(x_mid))
    scale_back(dy.data(), layer_scale ? &g.ls2.gamma : nullptr, dx, a.y_mlp.data(), rows, layer_scale ? ls2.gamma.data() : nullptr);
    mlp.backward_into(dh.data(), g.mlp, dy.data(), a.h2.data(), a.pre.data(), rows);
    norm2.backward_into(dx, g.norm2, dh.data(), a.x_mid.data(), a.mean2.data(), a.rstd2.data(), rows);
    // x_mid = x_in + ls1 * attn(norm1(x_in))
    std::fill(dh.begin(), dh.end(), T(0));
    scale_back(dy.data(), layer_scale ? &g.ls1.gamma : nullptr, dx, a.y_attn.data(), rows, layer_scale ? ls1.gamma.data() : nullptr);
    attend_back(dh.data(), dy.data(), a.attn);
    norm1.backward_into(dx, g.norm1, dh.data(), a.x_in.data(), a.mean1.data(), a.rstd1.data(), rows);
  }
  // LayerScale's backward: dy = gamma * dout, dgamma += sum over rows of dout * y (rows in order).
  void scale_back(T* dy, Tensor<T>* dgamma, const T* dout, const T* y, std::int64_t rows, const T* gamma) const {
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = 0; i < dim; ++i) {
        dy[r * dim + i] = gamma ? gamma[i] * dout[r * dim + i] : dout[r * dim + i];
        if (dgamma) (*dgamma)[i] += dout[r * dim + i] * y[r * dim + i];
      }
  }

  // x[r] += gamma * y[r] (gamma: LayerScale, or null for 1)
  void residual(T* x, const T* y, std::int64_t rows, const T* gamma) const {
    parallel_for(rows, rows * dim, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        T* xr = x + r * dim;
        const T* yr = y + r * dim;
        if (gamma) for (std::int64_t i = 0; i < dim; ++i) xr[i] += gamma[i] * yr[i];
        else for (std::int64_t i = 0; i < dim; ++i) xr[i] += yr[i];
      }
    });
  }
};

}  // namespace ditto::nn
