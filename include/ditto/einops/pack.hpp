// einops' pack and unpack: concatenate tensors whose middle axes differ, remembering the shapes
// so the result can be split back.
//
//   auto [packed, ps] = pack({cls, patches, registers}, "b * d");  // (b,1,d) (b,h,w,d) (b,4,d)
//   auto parts = unpack(packed, ps, "b * d");                       // the three back
//
// This is how Sora-style models put sequences of different sizes in one buffer.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "pattern.hpp"

namespace ditto {

namespace einops::detail {
struct PackPattern {
  std::int64_t before = 0, after = 0;
};
inline PackPattern analyze_pack(std::string_view pattern, std::string_view op) {
  using ditto::detail::cat;
  std::vector<std::string_view> axes;
  std::size_t i = 0;
  while (i < pattern.size()) {
    while (i < pattern.size() && pattern[i] == ' ') ++i;
    std::size_t j = i;
    while (j < pattern.size() && pattern[j] != ' ') ++j;
    if (j > i) axes.push_back(pattern.substr(i, j - i));
    i = j;
  }
  PackPattern p;
  int stars = 0;
  for (std::size_t k = 0; k < axes.size(); ++k) {
    for (std::size_t m = 0; m < k; ++m)
      if (axes[m] == axes[k])
        throw EinopsError(cat(op, "(..., \"", pattern, "\"): axis '", axes[k], "' appears twice"));
    if (axes[k] == "*") {
      ++stars;
      p.before = static_cast<std::int64_t>(k);
    } else if (!ditto::einops::detail::valid_name(axes[k], false)) {
      throw EinopsError(cat(op, "(..., \"", pattern, "\"): invalid axis name '", axes[k], "'"));
    }
  }
  if (stars != 1)
    throw EinopsError(cat(op, "(..., \"", pattern, "\"): the pattern needs exactly one '*' axis, found ", stars));
  p.after = static_cast<std::int64_t>(axes.size()) - p.before - 1;
  return p;
}
}  // namespace einops::detail

// Packs tensors into one along the '*' position. Returns the packed tensor and, for each input,
// the shape its '*' stood for (pass it to unpack).
template <class T>
inline std::pair<Tensor<T>, std::vector<Shape>> pack(const std::vector<Tensor<T>>& xs, std::string_view pattern) {
  using ditto::detail::cat;
  const auto p = einops::detail::analyze_pack(pattern, "pack");
  if (xs.empty()) throw EinopsError(cat("pack(..., \"", pattern, "\"): expected at least one tensor"));
  const std::int64_t min_rank = p.before + p.after;
  std::vector<Shape> packed_shapes;
  std::vector<std::int64_t> packed_len;
  Shape outer, inner;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape& s = xs[i].shape();
    const auto r = static_cast<std::int64_t>(s.size());
    if (r < min_rank)
      throw EinopsError(cat("pack(..., \"", pattern, "\"): tensor #", i, " has shape ", shape_str(s),
                            " but the pattern needs at least ", min_rank, " axes"));
    Shape o(s.begin(), s.begin() + p.before), in(s.end() - p.after, s.end());
    if (i == 0) {
      outer = o;
      inner = in;
    } else if (o != outer || in != inner) {
      throw EinopsError(cat("pack(..., \"", pattern, "\"): tensor #", i, " has shape ", shape_str(s),
                            ", whose axes outside '*' differ from tensor #0's shape ", shape_str(xs[0].shape())));
    }
    Shape star(s.begin() + p.before, s.end() - p.after);
    std::int64_t n = 1;
    for (auto d : star) n *= d;
    packed_shapes.push_back(std::move(star));
    packed_len.push_back(n);
    total += n;
  }
  std::int64_t n_outer = 1, n_inner = 1;
  for (auto d : outer) n_outer *= d;
  for (auto d : inner) n_inner *= d;
  Shape out_shape = outer;
  out_shape.push_back(total);
  out_shape.insert(out_shape.end(), inner.begin(), inner.end());
  Tensor<T> out = Tensor<T>::empty(out_shape);
  T* dst = out.data();
  for (std::int64_t o = 0; o < n_outer; ++o)
    for (std::size_t i = 0; i < xs.size(); ++i) {
      const std::int64_t chunk = packed_len[i] * n_inner;
      if (chunk) std::memcpy(dst, xs[i].data() + o * chunk, static_cast<std::size_t>(chunk) * sizeof(T));
      dst += chunk;
    }
  return {std::move(out), std::move(packed_shapes)};
}

// Splits a packed tensor back. One entry of one packed shape may be -1 (inferred).
template <class T>
inline std::vector<Tensor<T>> unpack(const Tensor<T>& x, const std::vector<Shape>& packed_shapes,
                                     std::string_view pattern) {
  using ditto::detail::cat;
  const auto p = einops::detail::analyze_pack(pattern, "unpack");
  const Shape& s = x.shape();
  if (x.dim() != p.before + 1 + p.after)
    throw EinopsError(cat("unpack(..., \"", pattern, "\"): expected a tensor of rank ", p.before + 1 + p.after,
                          ", got shape ", shape_str(s)));
  std::vector<std::int64_t> lens;
  int unknown = -1;
  std::int64_t known = 0;
  for (std::size_t i = 0; i < packed_shapes.size(); ++i) {
    std::int64_t n = 1;
    int minus = 0;
    for (auto d : packed_shapes[i]) {
      if (d == -1) ++minus;
      else if (d < 0)
        throw EinopsError(cat("unpack(..., \"", pattern, "\"): packed shape #", i, " ", shape_str(packed_shapes[i]),
                              " has a negative length"));
      else if (__builtin_mul_overflow(n, d, &n))
        throw EinopsError(cat("unpack(..., \"", pattern, "\"): packed shape #", i, " ", shape_str(packed_shapes[i]),
                              " has more elements than fit in int64"));
    }
    if (minus > 1 || (minus == 1 && unknown >= 0))
      throw EinopsError(cat("unpack(..., \"", pattern, "\"): more than one -1 in the packed shapes; cannot infer"));
    if (minus) unknown = static_cast<int>(i);
    else if (__builtin_add_overflow(known, n, &known))
      throw EinopsError(cat("unpack(..., \"", pattern, "\"): the packed shapes total more elements than fit in int64"));
    lens.push_back(n);  // for the -1 entry: the product of its known lengths
  }
  const std::int64_t axis_len = s[static_cast<std::size_t>(p.before)];
  std::vector<Shape> shapes = packed_shapes;
  if (unknown >= 0) {
    const std::int64_t rest = axis_len - known, per = lens[static_cast<std::size_t>(unknown)];
    if (rest < 0 || per == 0 || rest % per != 0)
      throw EinopsError(cat("unpack(..., \"", pattern, "\"): could not split axis of length ", axis_len,
                            " into the packed shapes (the -1 entry does not divide the rest, ", rest, ")"));
    for (auto& d : shapes[static_cast<std::size_t>(unknown)])
      if (d == -1) d = rest / per;
    lens[static_cast<std::size_t>(unknown)] = rest;
    known = axis_len;
  }
  if (known != axis_len)
    throw EinopsError(cat("unpack(..., \"", pattern, "\"): could not split axis ", p.before, " of length ", axis_len,
                          " (shape ", shape_str(s), ") into packed shapes totalling ", known));
  std::int64_t n_outer = 1, n_inner = 1;
  for (std::int64_t d = 0; d < p.before; ++d) n_outer *= s[static_cast<std::size_t>(d)];
  for (std::int64_t d = p.before + 1; d < x.dim(); ++d) n_inner *= s[static_cast<std::size_t>(d)];
  std::vector<Tensor<T>> out;
  std::int64_t start = 0;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    Shape shape(s.begin(), s.begin() + p.before);
    shape.insert(shape.end(), shapes[i].begin(), shapes[i].end());
    shape.insert(shape.end(), s.begin() + p.before + 1, s.end());
    Tensor<T> t = Tensor<T>::empty(shape);
    const std::int64_t chunk = lens[i] * n_inner;
    for (std::int64_t o = 0; o < n_outer; ++o)
      if (chunk)
        std::memcpy(t.data() + o * chunk, x.data() + (o * axis_len + start) * n_inner,
                    static_cast<std::size_t>(chunk) * sizeof(T));
    start += lens[i];
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace ditto
