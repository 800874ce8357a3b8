// How blocks own and list their parameters, and how weights load and save.
//
// A block is a plain struct whose members are tensors and other blocks, named as in the
// upstream PyTorch module. It lists them in one function:
//
//   template <class V> void visit(V& v) { v("fc1", fc1); v("fc2", fc2); }
//
// and everything else is built on that: named_parameters(block) yields ("fc1.weight", tensor),
// ..., exactly PyTorch's state_dict() keys; load() and save() read and write .safetensors under
// those names; counting, gradients and optimizers walk the same list. No string lookups at run
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

// What load() found: like PyTorch's _IncompatibleKeys.
struct LoadReport {
  std::vector<std::string> missing, unexpected;
  bool ok() const { return missing.empty() && unexpected.empty(); }
};

namespace detail {
// One IoError listing every problem of a load, or nothing when there is none to report.
inline void throw_if_problems(const std::string& path, const LoadReport& report, const std::vector<std::string>& wrong,
                              bool strict) {
  if (wrong.empty() && (!strict || report.ok())) return;
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (std::size_t i = 0; i < v.size() && i < 10; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 10) s += ditto::detail::cat(", ... (", v.size() - 10, " more)");
    return s;
  };
  std::string msg = "load(\"" + path + "\"): ";
  bool first = true;
  auto part = [&](const std::vector<std::string>& v, const char* what) {
    if (v.empty()) return;
    msg += ditto::detail::cat(first ? "" : ", ", v.size(), " ", what, " (", list(v), ")");
    first = false;
  };
  part(report.missing, "missing");
  if (strict) part(report.unexpected, "unexpected");
  part(wrong, "wrong shape");
  throw IoError(msg);
}
}  // namespace detail

// Loads a block's tensors from a safetensors file by name, converting dtypes. A wrongly shaped
// tensor is always an error; with strict (the default, as load_state_dict) so is any missing or
// unexpected name. All problems are reported together in one IoError, and a load refused for
// its names or shapes leaves the block as it was: they are all in the file's header and are
// checked before any tensor is read (reading then assigns tensor by tensor, so no more than one
// copy of the weights is held; a checkpoint, train/checkpoint.hpp, reads everything first).
// `rename` maps a file's name to the block's name ("" drops it): one conversion table per
// foreign layout of the same weights (e.g. diffusers' names), applied here, at load time.
template <class T, class Block>
inline LoadReport load(Block& block, const SafetensorsFile& file, bool strict = true,
                       const std::function<std::string(const std::string&)>& rename = {}) {
  auto params = named_parameters<T>(block);
  std::map<std::string, std::string> file_names;  // block name -> file name
  LoadReport report;
  for (const auto& name : file.names()) {
    const std::string mine = rename ? rename(name) : name;
    if (mine.empty()) continue;
    file_names[mine] = name;
  }
  std::vector<std::string> wrong;
  std::set<std::string> used;
  std::vector<std::pair<Tensor<T>*, std::string>> to_read;
  for (auto& [name, t] : params) {
    auto it = file_names.find(name);
    if (it == file_names.end()) {
      report.missing.push_back(name);
      continue;
    }
    used.insert(name);
    const auto& info = file.info(it->second);
    if (info.shape != t->shape()) {
      wrong.push_back(ditto::detail::cat(name, ": file ", shape_str(info.shape), ", model ", shape_str(t->shape())));
      continue;
    }
    to_read.emplace_back(t, it->second);
  }
  for (const auto& [mine, theirs] : file_names)
    if (!used.count(mine)) report.unexpected.push_back(theirs);
  detail::throw_if_problems(file.path(), report, wrong, strict);
  for (auto& [t, source] : to_read) *t = file.get<T>(source);
  return report;
}
template <class T, class Block>
inline LoadReport load(Block& block, const std::string& path, bool strict = true,
                       const std::function<std::string(const std::string&)>& rename = {}) {
  return load<T>(block, SafetensorsFile(path), strict, rename);
}

// A conversion table: how another layout of the same weights maps onto a block's names. Each
// rule makes the block's tensor `target` from the file's tensors `sources`, concatenated along
// dim 0 (one source: a rename; several: a fusion, e.g. diffusers' to_q, to_k, to_v into timm's
// qkv). "{i}" in a rule stands for a layer index (digits) and is carried from target to sources.
// Names no rule matches load as they are. Document each table next to the model that uses it.
struct ConversionRule {
  std::string target;
  std::vector<std::string> sources;
};
using ConversionTable = std::vector<ConversionRule>;

namespace detail {
// Matches name against pattern with at most one "{i}"; sets index on success.
inline bool match_rule(const std::string& pattern, const std::string& name, std::string& index) {
  const auto at = pattern.find("{i}");
  if (at == std::string::npos) return pattern == name;
  const std::string pre = pattern.substr(0, at), post = pattern.substr(at + 3);
  if (name.size() <= pre.size() + post.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - post.size(), post.size(), post) != 0)
    return false;
  index = name.substr(pre.size(), name.size() - pre.size() - post.size());
  return !index.empty() && index.find_first_not_of("0123456789") == std::string::npos;
}
inline std::string fill_rule(const std::string& pattern, const std::string& index) {
  const auto at = pattern.find("{i}");
  return at == std::string::npos ? pattern : pattern.substr(0, at) + index + pattern.substr(at + 3);
}
}  // namespace detail

// load() through a conversion table. Missing names are reported under the file's (source) names.
template <class T, class Block>
inline LoadReport load(Block& block, const SafetensorsFile& file, const ConversionTable& table, bool strict = true) {
  LoadReport report;
  std::vector<std::string> wrong;
  std::set<std::string> used;
  std::vector<std::tuple<Tensor<T>*, Shape, std::vector<std::string>>> to_read;  // read once nothing is wrong
  for (auto& [name, t] : named_parameters<T>(block)) {
    std::vector<std::string> sources{name};
    for (const auto& rule : table) {
      std::string index;
      if (detail::match_rule(rule.target, name, index)) {
        sources.clear();
        for (const auto& src : rule.sources) sources.push_back(detail::fill_rule(src, index));
        break;
      }
    }
    bool complete = true;
    for (const auto& src : sources) {
      if (!file.contains(src)) {
        report.missing.push_back(src);
        complete = false;
      } else {
        used.insert(src);  // claimed by this rule, even when a sibling is missing
      }
    }
    if (!complete) continue;
    Shape shape = file.info(sources[0]).shape;
    bool same_tail = !shape.empty();
    for (std::size_t k = 1; k < sources.size() && same_tail; ++k) {
      const Shape& sk = file.info(sources[k]).shape;
      same_tail = sk.size() == shape.size() && std::equal(sk.begin() + 1, sk.end(), shape.begin() + 1);
      if (same_tail) shape[0] += sk[0];
    }
    if (!same_tail || shape != t->shape()) {
      wrong.push_back(ditto::detail::cat(name, ": file ", same_tail ? shape_str(shape) : std::string("(sources do not concatenate)"),
                                         ", model ", shape_str(t->shape())));
      continue;
    }
    to_read.emplace_back(t, shape, std::move(sources));
  }
  for (const auto& name : file.names())
    if (!used.count(name)) report.unexpected.push_back(name);
  detail::throw_if_problems(file.path(), report, wrong, strict);
  for (auto& [t, shape, sources] : to_read) {
    if (sources.size() == 1) {
      *t = file.get<T>(sources[0]);
      continue;
    }
    Tensor<T> fused = Tensor<T>::empty(shape);
    std::int64_t at = 0;
    for (const auto& src : sources) {
      const Tensor<T> part = file.get<T>(src);
      std::copy(part.begin(), part.end(), fused.data() + at);
      at += part.numel();
    }
    *t = std::move(fused);
  }
  return report;
}

// Saves every tensor of a block under its state-dict name.
template <class T, class Block>
inline void save(Block& block, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, Tensor<T>>> tensors;
  for (auto& [name, t] : named_parameters<T>(block)) tensors.emplace_back(name, *t);
  save_safetensors<T>(path, tensors, metadata);
}

}  // namespace ditto::nn
