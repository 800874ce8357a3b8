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
};

}  // namespace ditto::nn
