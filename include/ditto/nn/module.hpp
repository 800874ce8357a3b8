// How blocks own and list their parameters (loading and saving them: nn/state_dict.hpp).
//
// A block is a plain struct whose members are tensors and other blocks, named as in the
// upstream PyTorch module. It lists them in one function:
//
//   template <class V> void visit(V& v) { v("fc1", fc1); v("fc2", fc2); }
//
// and everything else is built on that: named_parameters(block) yields ("fc1.weight", tensor),
// ..., exactly PyTorch's state_dict() keys; load() and save() (nn/state_dict.hpp) read and write
// .safetensors under those names; counting, gradients and optimizers walk the same list. No string lookups at run
// time. A tensor upstream keeps with requires_grad=False (a fixed sin-cos table) is listed as
// v("pos_embed", pos_embed, nn::fixed): in the state dict, but not trainable.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../io/safetensors.hpp"

namespace ditto::nn {

// The tag of a fixed (non-trainable) tensor in a visit: v("pos_embed", pos_embed, nn::fixed).
struct Fixed {};
inline constexpr Fixed fixed{};

namespace detail {
template <class B, class V>
concept Visitable = requires(B& b, V& v) { b.visit(v); };

// Walks a block tree, calling f(full_name, tensor, trainable) for every tensor.
template <class T, class F>
struct Walker {
  F& f;
  std::string prefix;
  void operator()(const std::string& name, Tensor<T>& t) { f(prefix + name, t, true); }
  void operator()(const std::string& name, Tensor<T>& t, Fixed) { f(prefix + name, t, false); }
  template <class B>
  void operator()(const std::string& name, B& block) {
    Walker sub{f, prefix + name + "."};
    block.visit(sub);
  }
  // A torch.nn.ModuleList: "blocks.0.", "blocks.1.", ...
  template <class B>
  void operator()(const std::string& name, std::vector<B>& blocks) {
    for (std::size_t i = 0; i < blocks.size(); ++i) (*this)(name + "." + std::to_string(i), blocks[i]);
  }
};
}  // namespace detail

// Every parameter and buffer of a block, under its state-dict name, in declaration order.
template <class T, class Block>
inline std::vector<std::pair<std::string, Tensor<T>*>> named_parameters(Block& block) {
  std::vector<std::pair<std::string, Tensor<T>*>> out;
  auto collect = [&](const std::string& name, Tensor<T>& t, bool) { out.emplace_back(name, &t); };
  detail::Walker<T, decltype(collect)> w{collect, ""};
  block.visit(w);
  return out;
}

// The trainable ones only: what torch's named_parameters() yields with requires_grad=True.
template <class T, class Block>
inline std::vector<std::pair<std::string, Tensor<T>*>> trainable_parameters(Block& block) {
  std::vector<std::pair<std::string, Tensor<T>*>> out;
  auto collect = [&](const std::string& name, Tensor<T>& t, bool trainable) {
    if (trainable) out.emplace_back(name, &t);
  };
  detail::Walker<T, decltype(collect)> w{collect, ""};
  block.visit(w);
  return out;
}

// A gradient (or optimizer-moment) tree: a copy of the block whose trainable tensors are new
// zero tensors of the same shapes (fixed ones are left empty: they have no gradient). Names,
// and so checkpoints and optimizers, line up with the block's own.
template <class T, class Block>
inline Block zeros_like(const Block& block) {
  Block g = block;  // tensors are shared handles: every one is replaced below
  auto reset = [](const std::string&, Tensor<T>& t, bool trainable) { t = trainable ? Tensor<T>(t.shape()) : Tensor<T>(); };
  detail::Walker<T, decltype(reset)> w{reset, ""};
  g.visit(w);
  return g;
}

// Sets every trainable tensor of a gradient tree to zero (backwards accumulate into it).
template <class T, class Block>
inline void zero_grad(Block& grads) {
  for (auto& [name, t] : trainable_parameters<T>(grads)) std::fill(t->begin(), t->end(), T(0));
}

// Two trees of the same model side by side: (name, a's tensor, b's tensor) for every trainable
// tensor. Trees whose names or shapes differ (an optimizer handed another model's gradients)
// are refused with the first difference.
template <class T, class BlockA, class BlockB>
inline std::vector<std::tuple<std::string, Tensor<T>*, Tensor<T>*>> zip_parameters(BlockA& a, BlockB& b, const char* what = "zip_parameters") {
  auto pa = trainable_parameters<T>(a), pb = trainable_parameters<T>(b);
  std::vector<std::tuple<std::string, Tensor<T>*, Tensor<T>*>> out;
  for (std::size_t i = 0; i < std::max(pa.size(), pb.size()); ++i) {
    if (i >= pa.size() || i >= pb.size() || pa[i].first != pb[i].first || pa[i].second->shape() != pb[i].second->shape())
      throw ShapeError(ditto::detail::cat(what, ": the two trees differ at trainable tensor #", i, ": ",
                                          i < pa.size() ? pa[i].first + " " + shape_str(pa[i].second->shape()) : std::string("(none)"), " vs ",
                                          i < pb.size() ? pb[i].first + " " + shape_str(pb[i].second->shape()) : std::string("(none)")));
    out.emplace_back(pa[i].first, pa[i].second, pb[i].second);
  }
  return out;
}

// Tensors are shared handles, so `a = b = LayerNorm(...)` makes two parameters one storage: an
// optimizer would then update it twice. Refuses a tree where two trainable tensors overlap in
// memory (a tied weight must be listed once, as upstream's named_parameters() lists it).
template <class T, class Block>
inline void require_distinct_storage(Block& block, const char* what) {
  auto params = trainable_parameters<T>(block);
  std::vector<std::pair<const T*, std::size_t>> spans;
  for (std::size_t i = 0; i < params.size(); ++i)
    if (params[i].second->numel() > 0) spans.emplace_back(params[i].second->data(), i);
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i) {
    const auto& [prev_ptr, prev] = spans[i - 1];
    if (spans[i].first < prev_ptr + params[prev].second->numel())
      throw ArgumentError(ditto::detail::cat(what, ": trainable tensors ", params[prev].first, " and ", params[spans[i].second].first,
                                             " share storage (build each with its own tensor; a tied weight is listed once)"));
  }
}

// Training's check mode (docs/training.md): the index of the first NaN or infinity in n values,
// or -1 when every one is finite.
template <class T>
inline std::int64_t first_non_finite(const T* x, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(static_cast<double>(x[i]))) return i;
  return -1;
}
// Throws NumericError naming `where` (a block, e.g. "DiT.blocks.3") and what held the value when
// the values, or any trainable tensor of the gradient tree `grads` (null: none), are not finite.
template <class T, class Block = int>
inline void require_finite(const std::string& where, const char* what, const T* x, std::int64_t n, Block* grads = nullptr) {
  if (const auto i = first_non_finite(x, n); i >= 0)
    throw NumericError(ditto::detail::cat(where, " produced a non-finite ", what, " (", static_cast<double>(x[i]), " at index ", i, " of ", n,
                                          "): the first block to do so"));
  if constexpr (!std::is_same_v<Block, int>)
    if (grads)
      for (auto& [name, t] : trainable_parameters<T>(*grads))
        if (const auto i = first_non_finite(t->data(), t->numel()); i >= 0)
          throw NumericError(ditto::detail::cat(where, " produced a non-finite gradient of ", name, " (", static_cast<double>((*t)[i]), " at index ", i,
                                                "): the first block to do so"));
}

// The number of scalars in a block (what `sum(p.numel() for p in m.state_dict().values())` says).
template <class T, class Block>
inline std::int64_t count_parameters(Block& block) {
  std::int64_t n = 0;
  for (auto& [name, t] : named_parameters<T>(block)) n += t->numel();
  return n;
}

}  // namespace ditto::nn
