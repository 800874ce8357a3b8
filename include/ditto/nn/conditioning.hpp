// The embedders of a diffusion transformer's condition c (DiT's models.py, which Latte reuses):
// TimestepEmbedder (sinusoidal features of t, then an MLP) and LabelEmbedder (a table of class
// rows plus the null class of classifier-free guidance). c = t_embedder(t) + y_embedder(y).
#pragma once

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
template <class T = float>
struct LabelEmbedder {
  std::int64_t num_classes = 0;
  Embedding<T> embedding_table;
  const char* owner = "DiT";  // the model its messages name

  LabelEmbedder() = default;
  LabelEmbedder(std::int64_t classes, std::int64_t hidden, double dropout_prob, const char* owner_model = "DiT")
      : num_classes(classes), embedding_table(classes + (dropout_prob > 0 ? 1 : 0), hidden), owner(owner_model) {}

  template <class V>
  void visit(V& v) {
    v("embedding_table", embedding_table);
  }

  Tensor<T> forward(const Tensor<std::int64_t>& y) const {
    for (std::int64_t i = 0; i < y.numel(); ++i)
      if (y[i] < 0 || y[i] >= embedding_table.num_embeddings)
        throw ShapeError(ditto::detail::cat(owner, ": label ", y[i], " is outside [0, ", embedding_table.num_embeddings, ")",
                                            embedding_table.num_embeddings > num_classes ? " (the last is the null class)"
                                                                                         : " (no null class: class_dropout_prob is 0)"));
    return embedding_table.forward(y);
  }
};

}  // namespace ditto::nn
