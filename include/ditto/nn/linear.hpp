// Linear and Embedding, as torch.nn.Linear / torch.nn.Embedding (same parameter names and layout).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "../core/error.hpp"
#include "../core/matmul.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"

namespace ditto::nn {

namespace detail {
// Sizes a block is built with must be positive: a zero length or stride would divide by zero
// later, in forward.
inline void require_positive(const char* block, const char* name, std::int64_t value) {
  if (value < 1) throw ArgumentError(ditto::detail::cat(block, ": ", name, " must be >= 1, got ", value));
}
}  // namespace detail

// y (rows, out) = x (rows, in) W^T + b, W stored (out, in); b may be null. The bias goes in
// through the product (y = b, then y += x W^T): no separate threaded pass, whose waking threads
// measurably slowed OpenBLAS at 2 threads. Shared by Linear and the patch embeddings.
template <class T>
inline void linear_rows(const T* x, std::int64_t rows, std::int64_t in, std::int64_t out, const T* weight,
                        const T* bias, T* y) {
  if (rows == 0) return;
  if (bias)
    for (std::int64_t r = 0; r < rows; ++r) std::copy(bias, bias + out, y + r * out);
  gemm<T>(false, true, rows, out, in, T(1), x, in, weight, in, bias ? T(1) : T(0), y, out);
}

// out[c] += sum over rows r of y[r * cols + c]: columns split over threads, rows summed in order.
template <class T>
inline void column_sums_into(T* out, const T* y, std::int64_t rows, std::int64_t cols) {
  constexpr std::int64_t kChunk = 64;  // columns per task: contiguous reads along a row
  parallel_for((cols + kChunk - 1) / kChunk, rows * cols, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t ch = lo; ch < hi; ++ch) {
      const std::int64_t c0 = ch * kChunk, c1 = std::min(cols, c0 + kChunk);
      T acc[kChunk] = {};
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = c0; c < c1; ++c) acc[c - c0] += y[r * cols + c];
      for (std::int64_t c = c0; c < c1; ++c) out[c] += acc[c - c0];
    }
  });
}

// Backward of linear_rows. dy: (rows, out); x: (rows, in), the forward's input (what it keeps).
// Accumulates dW (out, in) += dy^T x, db (out) += column sums of dy, dx (rows, in) += dy W; any
// of dw, db, dx may be null (not needed). The column sums run rows in order for each column, so
// they are the same for any thread count.
template <class T>
inline void linear_rows_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* weight, std::int64_t rows,
                                 std::int64_t in, std::int64_t out) {
  if (rows == 0) return;
  if (dw) gemm<T>(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dw, in);
  if (dx) gemm<T>(false, false, rows, in, out, T(1), dy, out, weight, in, T(1), dx, in);
  if (db) column_sums_into(db, dy, rows, out);
}

// y = x W^T + b.  x: (..., in_features), weight: (out_features, in_features), bias: (out_features).
template <class T = float>
struct Linear {
  std::int64_t in_features = 0, out_features = 0;
  bool has_bias = true;
  Tensor<T> weight, bias;

  Linear() = default;
  Linear(std::int64_t in, std::int64_t out, bool bias_ = true)
      : in_features(in), out_features(out), has_bias(bias_), weight({std::max<std::int64_t>(out, 0), std::max<std::int64_t>(in, 0)}),
        bias(Shape{bias_ ? std::max<std::int64_t>(out, 0) : 0}) {
    detail::require_positive("Linear", "in_features", in);
    detail::require_positive("Linear", "out_features", out);
  }

  template <class V>
  void visit(V& v) {
    v("weight", weight);
    if (has_bias) v("bias", bias);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    if (x.dim() < 1 || x.size(-1) != in_features)
      throw ShapeError(ditto::detail::cat("Linear(", in_features, ", ", out_features, "): expected input (..., ",
                                          in_features, "), got shape ", shape_str(x.shape())));
    Shape shape = x.shape();
    shape.back() = out_features;
    Tensor<T> y = Tensor<T>::empty(shape);
    forward_into(x.data(), y.data(), x.numel() / in_features);
    return y;
  }

  // rows x in_features -> rows x out_features, into caller memory (no allocation).
  void forward_into(const T* x, T* y, std::int64_t rows) const {
    linear_rows(x, rows, in_features, out_features, weight.data(), has_bias ? bias.data() : nullptr, y);
  }

  // Backward of forward_into: x (rows, in) as the forward saw it, dy (rows, out). Accumulates
  // g.weight, g.bias (g: this layer's gradient tree) and dx (rows, in; null: not needed).
  void backward_into(T* dx, Linear& g, const T* dy, const T* x, std::int64_t rows) const {
    linear_rows_backward(dx, g.weight.data(), has_bias ? g.bias.data() : nullptr, dy, x, weight.data(), rows, in_features,
                         out_features);
  }
};

// A lookup table: idx (any shape, integer) -> (idx.shape..., embedding_dim).
template <class T = float>
struct Embedding {
  std::int64_t num_embeddings = 0, embedding_dim = 0;
  Tensor<T> weight;

  Embedding() = default;
  Embedding(std::int64_t num, std::int64_t dim)
      : num_embeddings(num), embedding_dim(dim), weight({std::max<std::int64_t>(num, 0), std::max<std::int64_t>(dim, 0)}) {
    detail::require_positive("Embedding", "num_embeddings", num);
    detail::require_positive("Embedding", "embedding_dim", dim);
  }

  template <class V>
  void visit(V& v) {
    v("weight", weight);
  }

  template <class I>
  Tensor<T> forward(const Tensor<I>& idx) const {
    static_assert(std::is_integral_v<I>, "Embedding: indices must be integers");
    Shape shape = idx.shape();
    shape.push_back(embedding_dim);
    Tensor<T> y = Tensor<T>::empty(shape);
    for (std::int64_t i = 0; i < idx.numel(); ++i) {
      const auto k = static_cast<std::int64_t>(idx[i]);
      if (k < 0 || k >= num_embeddings)
        throw ShapeError(ditto::detail::cat("Embedding(", num_embeddings, ", ", embedding_dim, "): index ", k,
                                            " is out of range [0, ", num_embeddings, ")"));
      std::copy(weight.data() + k * embedding_dim, weight.data() + (k + 1) * embedding_dim,
                y.data() + i * embedding_dim);
    }
    return y;
  }

  // dy: (idx.shape..., embedding_dim). g.weight's rows += dy's rows, in index order (a label used
  // twice sums both, the same for any thread count).
  template <class I>
  void backward(Embedding& g, const Tensor<I>& idx, const T* dy) const {
    if (g.weight.shape() != weight.shape())
      throw ShapeError(ditto::detail::cat("Embedding.backward: the gradient's table is ", shape_str(g.weight.shape()), ", the layer's ",
                                          shape_str(weight.shape())));
    for (std::int64_t i = 0; i < idx.numel(); ++i)
      if (idx[i] < 0 || static_cast<std::int64_t>(idx[i]) >= num_embeddings)
        throw ShapeError(ditto::detail::cat("Embedding.backward: index ", static_cast<std::int64_t>(idx[i]), " is out of range [0, ", num_embeddings, ")"));
    for (std::int64_t i = 0; i < idx.numel(); ++i) {
      T* row = g.weight.data() + static_cast<std::int64_t>(idx[i]) * embedding_dim;
      for (std::int64_t c = 0; c < embedding_dim; ++c) row[c] += dy[i * embedding_dim + c];
    }
  }
};

}  // namespace ditto::nn
