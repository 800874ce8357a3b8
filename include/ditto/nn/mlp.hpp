// The transformer MLP, as timm's Mlp: fc1 -> activation -> fc2 (DiT: GELU(approximate="tanh")).
#pragma once

#include <cstdint>

#include "activation.hpp"
#include "linear.hpp"

namespace ditto::nn {

// x: (..., in_features) -> (..., out_features); hidden_features wide in between.
template <class T = float>
struct Mlp {
  Linear<T> fc1, fc2;
  Activation act = Activation::gelu_tanh;

  Mlp() = default;
  Mlp(std::int64_t in_features, std::int64_t hidden_features, std::int64_t out_features = -1,
      Activation act_ = Activation::gelu_tanh, bool bias = true)
      : fc1(in_features, hidden_features, bias), fc2(hidden_features, out_features < 0 ? in_features : out_features, bias),
        act(act_) {}

  template <class V>
  void visit(V& v) {
    v("fc1", fc1);
    v("fc2", fc2);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    Tensor<T> h = fc1.forward(x);
    activate(h.data(), h.numel(), act);  // in place on the hidden activations
    return fc2.forward(h);
  }

  // rows x in -> rows x out into caller memory; hidden holds rows x hidden_features values.
  void forward_into(const T* x, T* y, std::int64_t rows, T* hidden) const {
    fc1.forward_into(x, hidden, rows);
    activate(hidden, rows * fc1.out_features, act);
    fc2.forward_into(hidden, y, rows);
  }

  // Training: as forward_into, keeping pre (rows x hidden), fc1's output before the activation,
  // for the backward; `hidden` is scratch (the activation is recomputed in backward).
  void forward_train(const T* x, T* y, std::int64_t rows, T* pre, T* hidden) const {
    fc1.forward_into(x, pre, rows);
    activate(pre, hidden, rows * fc1.out_features, act);
    fc2.forward_into(hidden, y, rows);
  }

  // dy (rows, out); x and pre as forward_train kept them. Accumulates g's fc1 / fc2 and dx.
  void backward_into(T* dx, Mlp& g, const T* dy, const T* x, const T* pre, std::int64_t rows) const {
    const std::int64_t n = rows * fc1.out_features;
    Tensor<T> hidden = Tensor<T>::empty({rows, fc1.out_features}), dhidden({rows, fc1.out_features}), dpre({rows, fc1.out_features});
    activate(pre, hidden.data(), n, act);
    fc2.backward_into(dhidden.data(), g.fc2, dy, hidden.data(), rows);
    activate_backward(dpre.data(), dhidden.data(), pre, n, act);
    fc1.backward_into(dx, g.fc1, dpre.data(), x, rows);
  }
};

}  // namespace ditto::nn
