// einops' rearrange, reduce and repeat on ditto tensors, with einops 0.8 semantics.
//
//   rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", 2}, {"p2", 2}})  // patchify
//   reduce(x, "b c h w -> b c", "mean")                                            // global pool
//   repeat(x, "h w -> h w c", {{"c", 3}})                                          // gray -> RGB
//
// A pattern is parsed once per (pattern, input rank, names of the given lengths) and cached.
// rearrange returns a view (shared storage, no copy) when the result is a pure reshape of the
// input, as einops does; otherwise one strided pass writes a new contiguous tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "recipe.hpp"
#include "strided.hpp"

namespace ditto {

namespace einops::detail {

// Runs a cooked recipe: writes the result into `out` (already of the output shape).
template <class T>
inline void run(const Tensor<T>& x, Tensor<T>& out, const Cooked& c, std::string_view pattern, Op op, Reduction red,
                const AxisLengths& lengths) {
  if (out.numel() == 0) return;
  // From here the output is not empty, so neither is the input unless a reduced axis is: every
  // product of lengths the plan forms is then at most an element count, and cannot overflow.
  if (op == Op::reduce) {
    const bool empty = std::find(c.red_len.begin(), c.red_len.end(), 0) != c.red_len.end();
    if (empty && (red == Reduction::max || red == Reduction::min))
      throw EinopsError(where(op, red, pattern, lengths, &x.shape()) + "cannot take max or min over an empty axis");
    if constexpr (!std::is_floating_point_v<T>) {
      if (red == Reduction::mean)
        throw EinopsError(where(op, red, pattern, lengths, &x.shape()) +
                          "mean of an integer tensor is not defined; convert with .to<float>() first");
    }
    if (empty) {  // an empty axis: the reduction's identity, as einops (numpy, torch) gives
      const T identity = red == Reduction::prod ? T(1) : red == Reduction::mean ? std::numeric_limits<T>::quiet_NaN() : T(0);
      std::fill(out.data(), out.data() + out.numel(), identity);
      return;
    }
    const StridedPlan plan = make_plan(c.out_len, c.out_stride, c.red_len, c.red_stride);
    const int kind = red == Reduction::sum ? 0 : red == Reduction::mean ? 1 : red == Reduction::max ? 2
                     : red == Reduction::min ? 3 : 4;
    // numpy promotes an integer sum to int64; ditto keeps the input's type and refuses a result
    // that does not fit in it (or in int64) instead of returning a wrapped number.
    if (!strided_reduce(x.data(), out.data(), out.numel(), plan, kind))
      throw EinopsError(where(op, red, pattern, lengths, &x.shape()) +
                        ditto::detail::cat("the ", reduction_name(red), " does not fit in the input's integer type (",
                                           sizeof(T) * 8, "-bit); convert with .to<std::int64_t>() first"));
  } else {
    strided_copy(x.data(), out.data(), make_plan(c.out_len, c.out_stride, c.red_len, c.red_stride));
  }
}

template <class T>
inline Tensor<T> apply(const Tensor<T>& x, std::string_view pattern, Op op, Reduction red,
                       const AxisLengths& lengths) {
  const auto recipe = cached_recipe(pattern, op, red, lengths, static_cast<int>(x.dim()), x.shape());
  const Cooked c = cook(*recipe, x.shape(), lengths, red);
  if (c.is_view) return x.reshape(c.out_shape);
  Tensor<T> out = Tensor<T>::empty(c.out_shape);
  run(x, out, c, pattern, op, red, lengths);
  return out;
}

// The same, into a caller's tensor: for loops that must not allocate.
template <class T>
inline void apply_into(Tensor<T>& out, const Tensor<T>& x, std::string_view pattern, Op op, Reduction red,
                       const AxisLengths& lengths) {
  const auto recipe = cached_recipe(pattern, op, red, lengths, static_cast<int>(x.dim()), x.shape());
  const Cooked c = cook(*recipe, x.shape(), lengths, red);
  if (out.shape() != c.out_shape)
    throw ShapeError(where(op, red, pattern, lengths, &x.shape()) + ditto::detail::cat("the output tensor has shape ",
                     shape_str(out.shape()), " but the result has shape ", shape_str(c.out_shape)));
  if (out.numel() > 0 && x.numel() > 0 && out.data() < x.data() + x.numel() && x.data() < out.data() + out.numel())
    throw ShapeError(where(op, red, pattern, lengths, &x.shape()) + "the output tensor overlaps the input");
  if (c.is_view) {
    if (x.numel()) std::copy(x.data(), x.data() + x.numel(), out.data());
    return;
  }
  run(x, out, c, pattern, op, red, lengths);
}

// Stacks equally shaped tensors on a new first axis (einops accepts a list of tensors).
template <class T>
inline Tensor<T> stack(const std::vector<Tensor<T>>& xs, std::string_view what) {
  if (xs.empty()) throw EinopsError(ditto::detail::cat(what, ": expected a non-empty list of tensors"));
  Shape shape = xs[0].shape();
  for (std::size_t i = 1; i < xs.size(); ++i)
    if (xs[i].shape() != shape)
      throw EinopsError(ditto::detail::cat(what, ": list entries must have one shape, but #0 is ", shape_str(shape),
                                           " and #", i, " is ", shape_str(xs[i].shape())));
  const std::int64_t n = xs[0].numel();
  shape.insert(shape.begin(), static_cast<std::int64_t>(xs.size()));
  Tensor<T> out = Tensor<T>::empty(shape);
  for (std::size_t i = 0; i < xs.size(); ++i)
    std::copy(xs[i].data(), xs[i].data() + n, out.data() + static_cast<std::int64_t>(i) * n);
  return out;
}

}  // namespace einops::detail

// Reorders, splits and merges axes: transpose, reshape, squeeze/unsqueeze, stack and
// concatenate in one notation.
template <class T>
inline Tensor<T> rearrange(const Tensor<T>& x, std::string_view pattern, const AxisLengths& lengths = {}) {
  return einops::detail::apply(x, pattern, einops::Op::rearrange, einops::Reduction::none, lengths);
}
// A list of equally shaped tensors is stacked on a new first axis first.
template <class T>
inline Tensor<T> rearrange(const std::vector<Tensor<T>>& xs, std::string_view pattern,
                           const AxisLengths& lengths = {}) {
  return rearrange(einops::detail::stack(xs, "rearrange"), pattern, lengths);
}

// Rearranges and reduces the axes missing from the output with "sum", "mean", "max", "min" or
// "prod". Floating-point sums accumulate in double.
template <class T>
inline Tensor<T> reduce(const Tensor<T>& x, std::string_view pattern, std::string_view reduction,
                        const AxisLengths& lengths = {}) {
  const auto red = einops::parse_reduction(reduction, pattern);
  return einops::detail::apply(x, pattern, einops::Op::reduce, red, lengths);
}
template <class T>
inline Tensor<T> reduce(const std::vector<Tensor<T>>& xs, std::string_view pattern, std::string_view reduction,
                        const AxisLengths& lengths = {}) {
  return reduce(einops::detail::stack(xs, "reduce"), pattern, reduction, lengths);
}

// Rearranges and adds new axes (whose lengths are given) by repeating the data.
template <class T>
inline Tensor<T> repeat(const Tensor<T>& x, std::string_view pattern, const AxisLengths& lengths = {}) {
  return einops::detail::apply(x, pattern, einops::Op::repeat, einops::Reduction::none, lengths);
}

// The same three, writing into `out` (which must already have the result's shape and must not
// overlap x) instead of allocating: for hot loops that reuse their buffers. Always a copy.
template <class T>
inline void rearrange_into(Tensor<T>& out, const Tensor<T>& x, std::string_view pattern,
                           const AxisLengths& lengths = {}) {
  einops::detail::apply_into(out, x, pattern, einops::Op::rearrange, einops::Reduction::none, lengths);
}
template <class T>
inline void reduce_into(Tensor<T>& out, const Tensor<T>& x, std::string_view pattern, std::string_view reduction,
                        const AxisLengths& lengths = {}) {
  einops::detail::apply_into(out, x, pattern, einops::Op::reduce, einops::parse_reduction(reduction, pattern),
                             lengths);
}
template <class T>
inline void repeat_into(Tensor<T>& out, const Tensor<T>& x, std::string_view pattern,
                        const AxisLengths& lengths = {}) {
  einops::detail::apply_into(out, x, pattern, einops::Op::repeat, einops::Reduction::none, lengths);
}

// The lengths of a tensor's axes by name: parse_shape(x, "b _ h w") -> {b: 2, h: 5, w: 7}.
// "_" skips an axis; "..." skips any number; "1" checks a length of 1.
template <class T>
inline AxisLengths parse_shape(const Tensor<T>& x, std::string_view pattern) {
  using ditto::detail::cat;
  const auto r = einops::parse_side(pattern, {.allow_underscore = true});
  const std::string where = cat("parse_shape(\"", pattern, "\") on shape ", shape_str(x.shape()), ": ");
  if (r.problem != einops::Problem::none)
    throw EinopsError(where + std::string(einops::describe(r.problem)) + cat(" ('", r.token, "')"));
  const einops::Side& s = r.side;
  for (int g = 0; g < s.n_groups; ++g)
    if (s.group_size(g) > 1) throw EinopsError(where + "composite axes like (h w) cannot be parsed from a shape");
  const std::int64_t fixed = s.n_groups - (s.has_ellipsis ? 1 : 0);
  if (s.has_ellipsis ? x.dim() < fixed : x.dim() != fixed)
    throw EinopsError(where + cat("the pattern has ", fixed, " axes", s.has_ellipsis ? " besides '...'" : "",
                                  " but the tensor has rank ", x.dim()));
  AxisLengths out;
  std::int64_t dim = 0;
  for (int g = 0; g < s.n_groups; ++g) {
    if (s.group_size(g) == 0) {
      if (x.size(dim) != 1) throw EinopsError(where + cat("axis ", dim, " should have length 1, not ", x.size(dim)));
      ++dim;
      continue;
    }
    const einops::Axis& a = s.axes[s.group_start[g]];
    if (a.ellipsis) {
      dim += x.dim() - fixed;
      continue;
    }
    if (a.anonymous && a.anonymous != x.size(dim))
      throw EinopsError(where + cat("axis ", dim, " should have length ", a.anonymous, ", not ", x.size(dim)));
    if (!a.anonymous && a.name != "_") out[std::string(a.name)] = x.size(dim);
    ++dim;
  }
  return out;
}

}  // namespace ditto
