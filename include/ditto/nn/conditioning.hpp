// The embedders of a diffusion transformer's condition c (DiT's models.py, which Latte reuses):
// TimestepEmbedder (sinusoidal features of t, then an MLP) and LabelEmbedder (a table of class
// rows plus the null class of classifier-free guidance). c = t_embedder(t) + y_embedder(y).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "activation.hpp"
#include "embedding.hpp"
#include "linear.hpp"

namespace ditto::nn {

// DiT's TimestepEmbedder: 256 sinusoidal features (cos first), then Linear, SiLU, Linear.
template <class T = float>
struct TimestepEmbedder {
  std::int64_t frequency_embedding_size = 256;
  Linear<T> mlp0, mlp2;

  TimestepEmbedder() = default;
  TimestepEmbedder(std::int64_t hidden, std::int64_t freq = 256)
      : frequency_embedding_size(freq), mlp0(freq, hidden), mlp2(hidden, hidden) {}

  template <class V>
  void visit(V& v) {
    v("mlp.0", mlp0);
    v("mlp.2", mlp2);
  }

  // t: (B) timesteps, fractional allowed -> (B, hidden)
  Tensor<T> forward(const Tensor<T>& t) const {
    Tensor<T> h = mlp0.forward(timestep_embedding(t, frequency_embedding_size));
    activate(h.data(), h.numel(), Activation::silu);
    return mlp2.forward(h);
  }

  // Training: keeps the sinusoidal features and mlp.0's output (before SiLU). No gradient for t.
  struct Acts {
    Tensor<T> freq, pre;
  };
  Tensor<T> forward_train(const Tensor<T>& t, Acts& a) const {
    a.freq = timestep_embedding(t, frequency_embedding_size);
    a.pre = mlp0.forward(a.freq);
    return mlp2.forward(silu(a.pre));
  }
  void backward(TimestepEmbedder& g, const Acts& a, const Tensor<T>& dout) const {
    const std::int64_t B = a.pre.size(0), D = a.pre.size(1);
    Tensor<T> dh({B, D}), dpre({B, D});
    mlp2.backward_into(dh.data(), g.mlp2, dout.data(), silu(a.pre).data(), B);
    activate_backward(dpre.data(), dh.data(), a.pre.data(), B * D, Activation::silu);
    mlp0.backward_into(nullptr, g.mlp0, dpre.data(), a.freq.data(), B);
  }
};

// DiT's LabelEmbedder: a table of num_classes rows, plus the null class (row num_classes) used
// for classifier-free guidance when the model was trained with label dropout.
//
// factors > 1 (a ditto extension, Latte's label_factors) embeds a label of two parts, the label
// y = a * factors + b of the pair (a, b) (a class and a motion direction), as the sum
// embedding_table[a] + factor_table[b]; the null class (y == num_classes) as embedding_table's
// last row alone. Each part is then learned from every label that has it (one direction's row
// from the clips of all classes) instead of from its pair's share of the data, and the labels
// seen by the caller (joint, num_classes of them, the null class last) do not change.
template <class T = float>
struct LabelEmbedder {
  std::int64_t num_classes = 0, factors = 1;
  Embedding<T> embedding_table, factor_table;  // factor_table: factors > 1 only
  const char* owner = "DiT";  // the model its messages name

  LabelEmbedder() = default;
  LabelEmbedder(std::int64_t classes, std::int64_t hidden, double dropout_prob, const char* owner_model = "DiT", std::int64_t factors_ = 1)
      : num_classes(classes), factors(factors_), owner(owner_model) {
    if (factors < 1 || (factors > 1 && classes % factors != 0))
      throw ArgumentError(ditto::detail::cat(owner, ": ", classes, " labels cannot be pairs of ", factors, " second parts (label_factors must be >= 1 and divide num_classes)"));
    embedding_table = Embedding<T>(classes / factors + (dropout_prob > 0 ? 1 : 0), hidden);
    if (factors > 1) factor_table = Embedding<T>(factors, hidden);
  }

  template <class V>
  void visit(V& v) {
    v("embedding_table", embedding_table);
    if (factors > 1) v("factor_table", factor_table);
  }

  // whether the table has the null class of classifier-free guidance (label dropout trained it)
  bool has_null() const { return embedding_table.num_embeddings > num_classes / factors; }

  Tensor<T> forward(const Tensor<std::int64_t>& y) const {
    check(y);
    if (factors == 1) return embedding_table.forward(y);
    Shape shape = y.shape();
    shape.push_back(embedding_table.embedding_dim);
    Tensor<T> out = Tensor<T>::empty(shape);
    const std::int64_t D = embedding_table.embedding_dim;
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      const T* a = embedding_table.weight.data() + first(y[i]) * D;
      T* o = out.data() + i * D;
      if (y[i] == num_classes) std::copy(a, a + D, o);
      else
        for (std::int64_t c = 0, b = (y[i] % factors) * D; c < D; ++c) o[c] = a[c] + factor_table.weight[b + c];
    }
    return out;
  }

  // dy: (y.shape..., hidden). Accumulates g's tables (g: this embedder's gradient tree), in label order.
  void backward(LabelEmbedder& g, const Tensor<std::int64_t>& y, const T* dy) const {
    check(y);
    if (factors == 1) return embedding_table.backward(g.embedding_table, y, dy);
    if (g.factor_table.weight.shape() != factor_table.weight.shape())  // before either table changes
      throw ShapeError(ditto::detail::cat(owner, ": the gradient's factor_table is ", shape_str(g.factor_table.weight.shape()), ", the layer's ",
                                          shape_str(factor_table.weight.shape())));
    Tensor<std::int64_t> a(y.shape());
    for (std::int64_t i = 0; i < y.numel(); ++i) a[i] = first(y[i]);
    embedding_table.backward(g.embedding_table, a, dy);
    const std::int64_t D = factor_table.embedding_dim;
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      if (y[i] == num_classes) continue;  // the null class has no second part
      T* row = g.factor_table.weight.data() + (y[i] % factors) * D;
      for (std::int64_t c = 0; c < D; ++c) row[c] += dy[i * D + c];
    }
  }

 private:
  std::int64_t first(std::int64_t y) const { return y == num_classes ? num_classes / factors : y / factors; }
  void check(const Tensor<std::int64_t>& y) const {
    const std::int64_t labels = num_classes + (has_null() ? 1 : 0);
    for (std::int64_t i = 0; i < y.numel(); ++i)
      if (y[i] < 0 || y[i] >= labels)
        throw ShapeError(ditto::detail::cat(owner, ": label ", y[i], " is outside [0, ", labels, ")",
                                            has_null() ? " (the last is the null class)" : " (no null class: class_dropout_prob is 0)"));
  }
};

}  // namespace ditto::nn
