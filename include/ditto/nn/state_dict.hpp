// A block's tensors to and from .safetensors, by state-dict name: one loader (strict by default,
// every problem in one error, the block unchanged when it refuses), the conversion tables that
// map other layouts of the same weights onto a block's names, and save.
//
//   nn::load<float>(dit, "DiT-XL-2-256x256.safetensors");            // upstream's names
//   nn::load<float>(vit, file, diffusers_attention);                  // through a conversion table
//   models::load_diffusers(vae, file);                                // the autoencoder's table, built from its names
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../io/safetensors.hpp"
#include "module.hpp"

namespace ditto::nn {

// What load() found: like PyTorch's _IncompatibleKeys.
struct LoadReport {
  std::vector<std::string> missing, unexpected;
  bool ok() const { return missing.empty() && unexpected.empty(); }
};

// A conversion table: how another layout of the same weights maps onto a block's names. Each
// rule makes the block's tensor `target` from the file's tensors `sources`, concatenated along
// dim 0 (one source: a rename; several: a fusion, e.g. diffusers' to_q, to_k, to_v into timm's
// qkv). A source may list alternatives, "new|old": the first one the file holds is read (a
// format that renamed its keys between versions). "{i}" in a rule stands for a layer index
// (digits) and is carried from target to sources. With `squeeze`, the file's tensor may lack
// the model's trailing size-1 dimensions (a Linear (O, I) stored for a 1x1 Conv2d (O, I, 1, 1)).
// Names no rule matches load as they are. Document each table next to the model that uses it.
struct ConversionRule {
  std::string target;
  std::vector<std::string> sources;
  bool squeeze = false;
};
using ConversionTable = std::vector<ConversionRule>;

// Where one of a block's tensors comes from: the file's names (each source's alternative the
// file holds, or its first alternative when it holds none) and whether the rule squeezes.
struct TensorSource {
  std::vector<std::string> names;
  bool squeeze = false;
};

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

// The loader every form of load() is: source_of(name) says where each of the block's tensors
// comes from (no names: nowhere, missing as `name`); the file's names in `ignored` are neither
// read nor unexpected. Every name and shape is checked in the file's header before any tensor
// is read, so a refused load leaves the block as it was; then tensors are read one by one (no
// more than one copy of the weights held; a checkpoint, train/checkpoint.hpp, reads all first).
template <class T, class Block, class SourceOf>
inline LoadReport load_with(Block& block, const SafetensorsFile& file, SourceOf&& source_of, const std::set<std::string>& ignored,
                            bool strict) {
  LoadReport report;
  std::vector<std::string> wrong;
  std::set<std::string> used;
  std::vector<std::tuple<Tensor<T>*, Shape, std::vector<std::string>>> to_read;
  for (auto& [name, t] : named_parameters<T>(block)) {
    const TensorSource src = source_of(name);
    if (src.names.empty()) {
      report.missing.push_back(name);
      continue;
    }
    bool complete = true;
    for (const auto& n : src.names) {
      if (!file.contains(n)) report.missing.push_back(n), complete = false;
      else used.insert(n);  // claimed by this tensor, even when a sibling is missing
    }
    if (!complete) continue;
    Shape shape = file.info(src.names[0]).shape;
    bool same_tail = src.names.size() == 1 || !shape.empty();  // a fusion concatenates along dim 0; one source may be a scalar
    for (std::size_t k = 1; k < src.names.size() && same_tail; ++k) {
      const Shape& sk = file.info(src.names[k]).shape;
      same_tail = sk.size() == shape.size() && std::equal(sk.begin() + 1, sk.end(), shape.begin() + 1);
      if (same_tail) shape[0] += sk[0];
    }
    Shape padded = shape;  // squeeze: the model's trailing 1s the file leaves out
    if (src.squeeze)
      while (padded.size() < t->shape().size() && t->shape()[padded.size()] == 1) padded.push_back(1);
    if (!same_tail || padded != t->shape()) {
      const std::string as_file = src.names.size() == 1 && src.names[0] != name ? " (" + src.names[0] + " in the file)" : "";
      wrong.push_back(ditto::detail::cat(name, as_file, ": file ", same_tail ? shape_str(shape) : std::string("(sources do not concatenate)"),
                                         ", model ", shape_str(t->shape())));
      continue;
    }
    to_read.emplace_back(t, padded, src.names);
  }
  for (const auto& n : file.names())
    if (!used.count(n) && !ignored.count(n)) report.unexpected.push_back(n);
  throw_if_problems(file.path(), report, wrong, strict);
  for (auto& [t, shape, names] : to_read) {
    if (names.size() == 1) {
      *t = file.get<T>(names[0]).reshape(shape);
      continue;
    }
    Tensor<T> fused = Tensor<T>::empty(shape);
    std::int64_t at = 0;
    for (const auto& n : names) {
      const Tensor<T> part = file.get<T>(n);
      std::copy(part.begin(), part.end(), fused.data() + at);
      at += part.numel();
    }
    *t = std::move(fused);
  }
  return report;
}
}  // namespace detail

// Where `table` takes the block's tensor `name` from in `file` (its own name when no rule
// matches). ditto-forward names the autoencoder's gradients this way, as the file names them.
inline TensorSource source_of(const ConversionTable& table, const SafetensorsFile& file, const std::string& name) {
  for (const auto& rule : table) {
    std::string index;
    if (!detail::match_rule(rule.target, name, index)) continue;
    TensorSource src{{}, rule.squeeze};
    for (const auto& pattern : rule.sources) {
      const std::string filled = detail::fill_rule(pattern, index);
      std::vector<std::string> alternatives;
      for (std::size_t at = 0;;) {
        const auto bar = filled.find('|', at);
        alternatives.push_back(filled.substr(at, bar == std::string::npos ? std::string::npos : bar - at));
        if (bar == std::string::npos) break;
        at = bar + 1;
      }
      std::string chosen = alternatives.front();
      for (const auto& a : alternatives)
        if (file.contains(a)) {
          chosen = a;
          break;
        }
      src.names.push_back(chosen);
    }
    return src;
  }
  return {{name}, false};
}

// Loads a block's tensors from a safetensors file by name through a conversion table,
// converting dtypes. A wrongly shaped tensor is always an error; with strict (the default, as
// load_state_dict) so is any missing or unexpected name (missing ones named as the file would
// name them). All problems are reported together in one IoError, and the block is left as it
// was when the load is refused.
template <class T, class Block>
inline LoadReport load(Block& block, const SafetensorsFile& file, const ConversionTable& table, bool strict = true) {
  return detail::load_with<T>(block, file, [&](const std::string& name) { return source_of(table, file, name); }, {}, strict);
}

// Upstream's names as they are, or `rename` mapping each file name to the block's name ("" drops
// it: neither read nor unexpected).
template <class T, class Block>
inline LoadReport load(Block& block, const SafetensorsFile& file, bool strict = true,
                       const std::function<std::string(const std::string&)>& rename = {}) {
  if (!rename) return load<T>(block, file, ConversionTable{}, strict);
  std::map<std::string, std::string> file_names;  // block name -> file name
  std::set<std::string> dropped;
  for (const auto& name : file.names()) {
    const std::string mine = rename(name);
    if (mine.empty()) dropped.insert(name);
    else file_names[mine] = name;
  }
  return detail::load_with<T>(block, file, [&](const std::string& name) {
    const auto it = file_names.find(name);
    return it == file_names.end() ? TensorSource{} : TensorSource{{it->second}, false};
  }, dropped, strict);
}
template <class T, class Block>
inline LoadReport load(Block& block, const std::string& path, bool strict = true,
                       const std::function<std::string(const std::string&)>& rename = {}) {
  return load<T>(block, SafetensorsFile(path), strict, rename);
}

// Saves every tensor of a block under its state-dict name.
template <class T, class Block>
inline void save(Block& block, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, Tensor<T>>> tensors;
  for (auto& [name, t] : named_parameters<T>(block)) tensors.emplace_back(name, *t);
  save_safetensors<T>(path, tensors, metadata);
}

}  // namespace ditto::nn
