// einops' einsum: Einstein summation with readable, multi-letter axis names.
//
//   einsum(q, k, "b h i d, b h j d -> b h i j")   // attention scores
//   einsum(x, "i i -> i")                          // diagonal
//
// Operands are contracted pairwise, left to right. Each contraction is arranged as a batched
// matrix product (batch, free_a, sum) @ (batch, sum, free_b) and runs through ditto::gemm
// (Eigen); axes that no later step needs are summed out as early as possible.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/matmul.hpp"
#include "../core/tensor.hpp"
#include "pattern.hpp"
#include "rearrange.hpp"
#include "strided.hpp"

namespace ditto {

namespace einops::detail {

// An operand during contraction: its data and the (unique) axis names of its axes.
template <class T>
struct Labeled {
  Tensor<T> t;
  std::vector<std::string> axes;
};

inline std::vector<std::string> split_operands(std::string_view lhs) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= lhs.size(); ++i)
    if (i == lhs.size() || lhs[i] == ',') {
      parts.emplace_back(lhs.substr(start, i - start));
      start = i + 1;
    }
  return parts;
}

// Names of one side's axes; "..." becomes "...0", "...1", ... (n_ell of them).
inline std::vector<std::string> einsum_axes(const Side& s, std::int64_t n_ell, const std::string& where) {
  std::vector<std::string> out;
  for (int g = 0; g < s.n_groups; ++g) {
    if (s.group_size(g) == 0) throw EinopsError(where + "singleton axes '()' or '1' are not supported in einsum");
    if (s.group_size(g) > 1 || s.group_paren[g])
      throw EinopsError(where + "axis compositions like (h w) are not supported in einsum; rearrange first");
    const Axis& a = s.axes[s.group_start[g]];
    if (a.anonymous) throw EinopsError(where + "anonymous axes like '" + std::string(a.name) + "' are not supported in einsum");
    if (a.ellipsis) {
      for (std::int64_t k = 0; k < n_ell; ++k) out.push_back("..." + std::to_string(k));
    } else {
      out.emplace_back(a.name);
    }
  }
  return out;
}

// Takes diagonals of repeated axes ("i i") so every axis name appears once.
template <class T>
inline Labeled<T> unique_axes(const Tensor<T>& t, const std::vector<std::string>& axes, const std::string& where) {
  std::vector<std::string> names;
  std::vector<std::int64_t> len, stride;
  std::int64_t s = 1;
  std::vector<std::int64_t> strides(axes.size());
  for (std::size_t i = axes.size(); i-- > 0;) {
    strides[i] = s;
    if (__builtin_mul_overflow(s, t.shape()[i], &s)) throw ShapeError(where + ": the operand's axis lengths overflow int64");
  }
  for (std::size_t i = 0; i < axes.size(); ++i) {
    auto it = std::find(names.begin(), names.end(), axes[i]);
    if (it == names.end()) {
      names.push_back(axes[i]);
      len.push_back(t.shape()[i]);
      stride.push_back(strides[i]);
    } else {
      const auto k = static_cast<std::size_t>(it - names.begin());
      if (len[k] != t.shape()[i])
        throw EinopsError(where + ditto::detail::cat("repeated axis '", axes[i], "' has lengths ", len[k], " and ",
                                                     t.shape()[i]));
      stride[k] += strides[i];
    }
  }
  if (names.size() == axes.size()) return {t, names};
  Tensor<T> out = Tensor<T>::empty(Shape(len.begin(), len.end()));
  if (out.numel()) strided_copy(t.data(), out.data(), make_plan(len, stride, {}, {}));
  return {out, names};
}

// Builds a rearrange/reduce pattern over generated axis names (einsum names like "...0" are not
// valid einops names).
inline std::string joined(const std::vector<std::string>& axes, const std::vector<std::string>& all) {
  std::string s;
  for (const auto& a : axes) {
    s += " a" + std::to_string(std::find(all.begin(), all.end(), a) - all.begin());
  }
  return s;
}

template <class T>
inline Labeled<T> sum_out(const Labeled<T>& x, const std::vector<std::string>& keep, const std::vector<std::string>& all) {
  std::vector<std::string> kept;
  for (const auto& a : x.axes)
    if (std::find(keep.begin(), keep.end(), a) != keep.end()) kept.push_back(a);
  if (kept.size() == x.axes.size()) return x;
  return {reduce(x.t, joined(x.axes, all) + " ->" + joined(kept, all), "sum"), kept};
}

template <class T>
inline Labeled<T> permute(const Labeled<T>& x, const std::vector<std::string>& order, const std::vector<std::string>& all) {
  if (order == x.axes) return x;
  return {rearrange(x.t, joined(x.axes, all) + " ->" + joined(order, all)), order};
}

}  // namespace einops::detail

// Einstein summation over any number of operands: "a b, b c -> a c".
template <class T>
inline Tensor<T> einsum(const std::vector<Tensor<T>>& xs, std::string_view pattern) {
  using namespace einops;
  using einops::detail::Labeled;
  using ditto::detail::cat;
  const std::string where = cat("einsum(\"", pattern, "\"): ");
  const auto arrow = pattern.find("->");
  if (arrow == std::string_view::npos) throw EinopsError(where + "the pattern needs '->'");
  const auto lhs = einops::detail::split_operands(pattern.substr(0, arrow));
  if (lhs.size() != xs.size())
    throw EinopsError(where + cat("the pattern has ", lhs.size(), " operands but ", xs.size(), " tensors were given"));
  // Parse and name every operand's axes; check that shared axes have equal lengths.
  std::vector<std::string> all;  // every axis name, in order of first appearance
  std::vector<std::int64_t> all_len;
  std::int64_t n_ell = -1;
  std::vector<Labeled<T>> ops;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const auto r = parse_side(lhs[i], {.allow_underscore = false, .allow_duplicates = true});
    if (r.problem != Problem::none)
      throw EinopsError(where + cat("operand ", i, ": ", describe(r.problem), " ('", r.token, "')"));
    const std::int64_t fixed = r.side.n_groups - (r.side.has_ellipsis ? 1 : 0);
    if (r.side.has_ellipsis ? xs[i].dim() < fixed : xs[i].dim() != fixed)
      throw EinopsError(where + cat("operand ", i, " has shape ", shape_str(xs[i].shape()), " but its pattern \"", lhs[i],
                                    "\" has ", fixed, " axes", r.side.has_ellipsis ? " besides '...'" : ""));
    std::int64_t ell = r.side.has_ellipsis ? xs[i].dim() - fixed : -1;
    if (ell >= 0) {
      if (n_ell >= 0 && n_ell != ell)
        throw EinopsError(where + cat("'...' covers ", n_ell, " axes in one operand and ", ell, " in operand ", i));
      n_ell = ell;
    }
    auto axes = einops::detail::einsum_axes(r.side, std::max<std::int64_t>(ell, 0), where);
    for (std::size_t k = 0; k < axes.size(); ++k) {
      auto it = std::find(all.begin(), all.end(), axes[k]);
      if (it == all.end()) {
        all.push_back(axes[k]);
        all_len.push_back(xs[i].shape()[k]);
      } else if (all_len[static_cast<std::size_t>(it - all.begin())] != xs[i].shape()[k]) {
        throw EinopsError(where + cat("axis '", axes[k], "' has length ", all_len[static_cast<std::size_t>(it - all.begin())],
                                      " in one operand and ", xs[i].shape()[k], " in operand ", i, " (shape ",
                                      shape_str(xs[i].shape()), ")"));
      }
    }
    ops.push_back(einops::detail::unique_axes(xs[i], axes, where));
  }
  const auto rr = parse_side(pattern.substr(arrow + 2));
  if (rr.problem != Problem::none)
    throw EinopsError(where + cat("output: ", describe(rr.problem), " ('", rr.token, "')"));
  if (rr.side.has_ellipsis && n_ell < 0) throw EinopsError(where + "'...' is in the output but in no operand");
  const auto out_axes = einops::detail::einsum_axes(rr.side, std::max<std::int64_t>(n_ell, 0), where);
  for (const auto& a : out_axes)
    if (std::find(all.begin(), all.end(), a) == all.end())
      throw EinopsError(where + cat("output axis '", a, "' is in no operand"));

  // Contract left to right. Before each step, sum out what neither the partner nor a later step
  // needs; batch = shared and needed later, summed = shared and not needed later.
  auto needed_after = [&](std::size_t i) {
    std::vector<std::string> need = out_axes;
    for (std::size_t j = i + 1; j < ops.size(); ++j) need.insert(need.end(), ops[j].axes.begin(), ops[j].axes.end());
    return need;
  };
  Labeled<T> cur = ops[0];
  for (std::size_t i = 1; i <= ops.size(); ++i) {
    std::vector<std::string> need = needed_after(i - 1);
    if (i < ops.size()) need.insert(need.end(), ops[i].axes.begin(), ops[i].axes.end());
    cur = einops::detail::sum_out(cur, need, all);
    if (i == ops.size()) break;
    std::vector<std::string> need_b = needed_after(i);
    need_b.insert(need_b.end(), cur.axes.begin(), cur.axes.end());
    Labeled<T> b = einops::detail::sum_out(ops[i], need_b, all);
    const std::vector<std::string> later = needed_after(i);
    auto has = [](const std::vector<std::string>& v, const std::string& a) {
      return std::find(v.begin(), v.end(), a) != v.end();
    };
    std::vector<std::string> batch, free_a, summed, free_b;
    for (const auto& a : cur.axes) {
      if (has(b.axes, a)) (has(later, a) ? batch : summed).push_back(a);
      else free_a.push_back(a);
    }
    for (const auto& a : b.axes)
      if (!has(cur.axes, a)) free_b.push_back(a);
    auto len_of = [&](const std::vector<std::string>& v) {
      std::int64_t n = 1;
      for (const auto& a : v)  // an empty tensor can have axes whose product overflows
        if (__builtin_mul_overflow(n, all_len[static_cast<std::size_t>(std::find(all.begin(), all.end(), a) - all.begin())], &n))
          throw ShapeError("einsum: a product of axis lengths overflows int64 (an empty operand with huge axes)");
      return n;
    };
    auto concat = [](std::vector<std::string> x, const std::vector<std::string>& y, const std::vector<std::string>& z) {
      x.insert(x.end(), y.begin(), y.end());
      x.insert(x.end(), z.begin(), z.end());
      return x;
    };
    const auto A = einops::detail::permute(cur, concat(batch, free_a, summed), all);
    const auto B = einops::detail::permute(b, concat(batch, summed, free_b), all);
    const std::int64_t nb = len_of(batch), M = len_of(free_a), K = len_of(summed), N = len_of(free_b);
    const auto res_axes = concat(batch, free_a, free_b);
    Shape res_shape;
    for (const auto& a : res_axes)
      res_shape.push_back(all_len[static_cast<std::size_t>(std::find(all.begin(), all.end(), a) - all.begin())]);
    Tensor<T> res = Tensor<T>::empty(res_shape);
    if (res.numel() > 0)
      batched_gemm<T>(nb, false, false, M, N, K, T(1), A.t.data(), K, M * K, B.t.data(), N, K * N, T(0), res.data(), N,
                      M * N);
    cur = {res, res_axes};
  }
  return einops::detail::permute(cur, out_axes, all).t;
}

template <class T>
inline Tensor<T> einsum(const Tensor<T>& a, std::string_view pattern) {
  return einsum(std::vector<Tensor<T>>{a}, pattern);
}
template <class T>
inline Tensor<T> einsum(const Tensor<T>& a, const Tensor<T>& b, std::string_view pattern) {
  return einsum(std::vector<Tensor<T>>{a, b}, pattern);
}
template <class T>
inline Tensor<T> einsum(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& c, std::string_view pattern) {
  return einsum(std::vector<Tensor<T>>{a, b, c}, pattern);
}

}  // namespace ditto
