// The one-pass kernels behind rearrange, repeat and reduce. The output is written contiguously
// in one pass; the input is read through strides (0 for an axis that repeat adds), so no
// intermediate tensor is ever made (einops on NumPy does reshape + transpose + reshape, each
// possibly a copy).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/threading.hpp"

namespace ditto::einops {

// A walk over output axes (lengths + input strides) and reduced axes, simplified:
// unit axes dropped, and neighbours merged where the input is contiguous across them.
struct StridedPlan {
  static constexpr int kMax = 64;
  int rank = 0;
  std::int64_t len[kMax] = {}, stride[kMax] = {};
  int red_rank = 0;
  std::int64_t red_len[kMax] = {}, red_stride[kMax] = {};
};

inline int collapse(const std::vector<std::int64_t>& len, const std::vector<std::int64_t>& stride, std::int64_t* out_len,
                    std::int64_t* out_stride) {
  int r = 0;
  for (std::size_t i = 0; i < len.size(); ++i) {
    if (len[i] == 1) continue;
    // axis i follows axis r-1 in the input as if they were one axis: merge them
    if (r > 0 && out_stride[r - 1] == stride[i] * len[i]) {
      out_len[r - 1] *= len[i];
      out_stride[r - 1] = stride[i];
    } else {
      out_len[r] = len[i];
      out_stride[r] = stride[i];
      ++r;
    }
  }
  return r;
}

inline StridedPlan make_plan(const std::vector<std::int64_t>& len, const std::vector<std::int64_t>& stride,
                             const std::vector<std::int64_t>& red_len, const std::vector<std::int64_t>& red_stride) {
  StridedPlan p;
  if (len.size() > StridedPlan::kMax || red_len.size() > StridedPlan::kMax)
    throw ShapeError(ditto::detail::cat("einops: at most ", StridedPlan::kMax, " elementary axes are supported, got ",
                                        len.size() + red_len.size()));
  p.rank = collapse(len, stride, p.len, p.stride);
  p.red_rank = collapse(red_len, red_stride, p.red_len, p.red_stride);
  return p;
}

// out[i] = in[offset(i)] for every output element, output in row-major order.
// The last two axes form the inner tile (a small 2-D loop the compiler vectorizes when the
// innermost input stride is 1 or 0); the axes before it are walked with an odometer, split over
// threads.
template <class T>
inline void strided_copy(const T* in, T* out, const StridedPlan& p) {
  if (p.rank == 0) {
    out[0] = in[0];
    return;
  }
  const int r = p.rank;
  const std::int64_t n1 = p.len[r - 1], s1 = p.stride[r - 1];
  const std::int64_t n0 = r >= 2 ? p.len[r - 2] : 1, s0 = r >= 2 ? p.stride[r - 2] : 0;
  const int outer_rank = std::max(r - 2, 0);
  std::int64_t outer = 1;
  for (int d = 0; d < outer_rank; ++d) outer *= p.len[d];
  const std::int64_t tile = n0 * n1;
  parallel_for(outer, outer * tile, [&](std::int64_t lo, std::int64_t hi) {
    std::int64_t idx[StridedPlan::kMax];
    std::int64_t off = 0, rem = lo;
    for (int d = outer_rank - 1; d >= 0; --d) {
      idx[d] = rem % p.len[d];
      rem /= p.len[d];
      off += idx[d] * p.stride[d];
    }
    T* o = out + lo * tile;
    for (std::int64_t it = lo; it < hi; ++it) {
      const T* src = in + off;
      if (s1 == 1) {
        for (std::int64_t a = 0; a < n0; ++a, o += n1) std::memcpy(o, src + a * s0, static_cast<std::size_t>(n1) * sizeof(T));
      } else if (s1 == 0) {
        for (std::int64_t a = 0; a < n0; ++a, o += n1) std::fill(o, o + n1, src[a * s0]);
      } else if (s0 == 1 && n0 >= 8 && n1 >= 8) {
        // a transpose tile: read columns of length n0 contiguously, 8 rows of output at a time
        for (std::int64_t b0 = 0; b0 < n1; b0 += 8) {
          const std::int64_t bn = std::min<std::int64_t>(8, n1 - b0);
          for (std::int64_t a = 0; a < n0; ++a)
            for (std::int64_t b = 0; b < bn; ++b) o[a * n1 + b0 + b] = src[a + (b0 + b) * s1];
        }
        o += tile;
      } else {
        for (std::int64_t a = 0; a < n0; ++a, o += n1) {
          const T* row = src + a * s0;
          for (std::int64_t b = 0; b < n1; ++b) o[b] = row[b * s1];
        }
      }
      for (int d = outer_rank - 1; d >= 0; --d) {
        off += p.stride[d];
        if (++idx[d] < p.len[d]) break;
        off -= p.stride[d] * p.len[d];
        idx[d] = 0;
      }
    }
  });
}

// Accumulator type: double for floating point (so a sum over a million floats stays accurate),
// int64 for integers.
template <class T>
using accumulator_t = std::conditional_t<std::is_floating_point_v<T>, double, std::int64_t>;

// out[i] = reduce over the reduced axes of in[offset(i) + reduced offset], for each output element.
// Kind: 0 sum, 1 mean, 2 max, 3 min, 4 prod.
template <class T>
inline void strided_reduce(const T* in, T* out, std::int64_t out_count, const StridedPlan& p, int kind) {
  using Acc = accumulator_t<T>;
  std::int64_t red_count = 1;
  for (int d = 0; d < p.red_rank; ++d) red_count *= p.red_len[d];
  const int rr = p.red_rank;
  const std::int64_t inner_len = rr > 0 ? p.red_len[rr - 1] : 1, inner_stride = rr > 0 ? p.red_stride[rr - 1] : 0;
  const std::int64_t outer_red = rr > 0 ? red_count / inner_len : 1;
  parallel_for(out_count, out_count * std::max<std::int64_t>(red_count, 1), [&](std::int64_t lo, std::int64_t hi) {
    std::int64_t idx[StridedPlan::kMax], ridx[StridedPlan::kMax];
    std::int64_t off = 0, rem = lo;
    for (int d = p.rank - 1; d >= 0; --d) {
      idx[d] = rem % p.len[d];
      rem /= p.len[d];
      off += idx[d] * p.stride[d];
    }
    for (std::int64_t i = lo; i < hi; ++i) {
      Acc acc;
      if (kind == 2) acc = static_cast<Acc>(std::numeric_limits<T>::lowest());
      else if (kind == 3) acc = static_cast<Acc>(std::numeric_limits<T>::max());
      else if (kind == 4) acc = Acc(1);
      else acc = Acc(0);
      bool nan = false;
      std::fill(ridx, ridx + std::max(rr - 1, 0), 0);
      std::int64_t roff = off;
      for (std::int64_t j = 0; j < outer_red; ++j) {
        const T* src = in + roff;
        switch (kind) {
          case 0:
          case 1:
            for (std::int64_t k = 0; k < inner_len; ++k) acc += static_cast<Acc>(src[k * inner_stride]);
            break;
          case 2:
            for (std::int64_t k = 0; k < inner_len; ++k) {
              const Acc v = static_cast<Acc>(src[k * inner_stride]);
              if constexpr (std::is_floating_point_v<T>) nan |= std::isnan(v);
              acc = v > acc ? v : acc;
            }
            break;
          case 3:
            for (std::int64_t k = 0; k < inner_len; ++k) {
              const Acc v = static_cast<Acc>(src[k * inner_stride]);
              if constexpr (std::is_floating_point_v<T>) nan |= std::isnan(v);
              acc = v < acc ? v : acc;
            }
            break;
          default:
            for (std::int64_t k = 0; k < inner_len; ++k) acc *= static_cast<Acc>(src[k * inner_stride]);
        }
        for (int d = rr - 2; d >= 0; --d) {
          roff += p.red_stride[d];
          if (++ridx[d] < p.red_len[d]) break;
          roff -= p.red_stride[d] * p.red_len[d];
          ridx[d] = 0;
        }
      }
      if constexpr (std::is_floating_point_v<T>) {
        if (nan) acc = std::numeric_limits<Acc>::quiet_NaN();  // max/min propagate NaN, as torch does
        if (kind == 1) acc /= static_cast<Acc>(red_count);
      }
      out[i] = static_cast<T>(acc);
      for (int d = p.rank - 1; d >= 0; --d) {
        off += p.stride[d];
        if (++idx[d] < p.len[d]) break;
        off -= p.stride[d] * p.len[d];
        idx[d] = 0;
      }
    }
  });
}

}  // namespace ditto::einops
