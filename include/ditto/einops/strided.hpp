// The one-pass kernels behind rearrange, repeat and reduce. The output is written contiguously
// in one pass; the input is read through strides (0 for an axis that repeat adds), so no
// intermediate tensor is ever made (einops on NumPy does reshape + transpose + reshape, each
// possibly a copy).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

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

// Non-temporal stores of whole 64-byte lines (SSE2 is part of x86-64; elsewhere plain stores).
inline void stream_lines(float* dst, const float* src, std::int64_t count) {
#if defined(__SSE2__)
  for (std::int64_t k = 0; k < count; k += 4) _mm_stream_ps(dst + k, _mm_load_ps(src + k));
#else
  std::memcpy(dst, src, static_cast<std::size_t>(count) * sizeof(float));
#endif
}
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}
inline std::int64_t p_total(const StridedPlan& p) {
  std::int64_t n = 1;
  for (int d = 0; d < p.rank; ++d) n *= p.len[d];
  return n;
}

// One loop of a copy: its length and how far one step moves in the input and in the output.
struct Loop {
  std::int64_t len, in_stride, out_stride;
};

// Runs body(in_offset, out_offset, index) over every point of `loops` (the last loop fastest),
// split over threads. `work` is the element count each point stands for (for the threshold).
template <class Body>
inline void for_each_point(const Loop* loops, int n, std::int64_t work, Body&& body) {
  std::int64_t total = 1;
  for (int d = 0; d < n; ++d) total *= loops[d].len;
  parallel_for(total, total * work, [&](std::int64_t lo, std::int64_t hi) {
    std::int64_t idx[StridedPlan::kMax + 2] = {};
    std::int64_t ioff = 0, ooff = 0, rem = lo;
    for (int d = n - 1; d >= 0; --d) {
      idx[d] = rem % loops[d].len;
      rem /= loops[d].len;
      ioff += idx[d] * loops[d].in_stride;
      ooff += idx[d] * loops[d].out_stride;
    }
    for (std::int64_t it = lo; it < hi; ++it) {
      body(ioff, ooff, idx);
      for (int d = n - 1; d >= 0; --d) {
        ioff += loops[d].in_stride;
        ooff += loops[d].out_stride;
        if (++idx[d] < loops[d].len) break;
        ioff -= loops[d].in_stride * loops[d].len;
        ooff -= loops[d].out_stride * loops[d].len;
        idx[d] = 0;
      }
    }
  });
}

// out[i] = in[offset(i)] for every output element (output contiguous, row-major). Three
// strategies, chosen from the strides:
//  - rows: the innermost output axis is long and contiguous (or broadcast) in the input:
//    memcpy / fill each row ("b t c h w -> b c t h w" copies rows of h*w).
//  - tiles: the innermost output axis is long but strided, and another long axis is contiguous
//    in the input: a blocked 2-D transpose of 64x64 tiles that stay in L1 ("a b -> b a").
//  - micro-blocks: the innermost output axes are short (patchify's (p1 p2 c)): they form a
//    block of at most 64 elements with precomputed input offsets, and the loop around it runs
//    along the axis whose input stride is smallest, so reads stream through memory.
template <class T>
inline void strided_copy(const T* in, T* out, const StridedPlan& p) {
  const int r = p.rank;
  if (r == 0) {
    out[0] = in[0];
    return;
  }
  std::int64_t out_stride[StridedPlan::kMax];
  out_stride[r - 1] = 1;
  for (int d = r - 2; d >= 0; --d) out_stride[d] = out_stride[d + 1] * p.len[d + 1];
  Loop loops[StridedPlan::kMax + 2];
  int n = 0;
  const std::int64_t n1 = p.len[r - 1], s1 = p.stride[r - 1];

  if (n1 >= 16 && (s1 == 1 || s1 == 0)) {  // rows
    for (int d = 0; d < r - 1; ++d) loops[n++] = {p.len[d], p.stride[d], out_stride[d]};
    for_each_point(loops, n, n1, [&](std::int64_t io, std::int64_t oo, const std::int64_t*) {
      if (s1 == 1) std::memcpy(out + oo, in + io, static_cast<std::size_t>(n1) * sizeof(T));
      else std::fill(out + oo, out + oo + n1, in[io]);
    });
    return;
  }
  int j = -1;  // the long axis that is contiguous in the input
  for (int d = 0; d < r - 1; ++d)
    if (p.stride[d] == 1 && p.len[d] >= 16) j = d;
  if (n1 >= 16 && j >= 0) {  // tiles
    constexpr std::int64_t TB = 64;
    const std::int64_t nj = p.len[j], oj = out_stride[j];
    for (int d = 0; d < r - 1; ++d)
      if (d != j) loops[n++] = {p.len[d], p.stride[d], out_stride[d]};
    const int tj = n, t1 = n + 1;
    loops[n++] = {(nj + TB - 1) / TB, TB, TB * oj};
    loops[n++] = {(n1 + TB - 1) / TB, TB * s1, TB};
    for_each_point(loops, n, TB * TB, [&](std::int64_t io, std::int64_t oo, const std::int64_t* idx) {
      const std::int64_t a_end = std::min(TB, nj - idx[tj] * TB), b_end = std::min(TB, n1 - idx[t1] * TB);
      const T* src = in + io;
      T* dst = out + oo;
      for (std::int64_t a = 0; a < a_end; ++a)  // output rows: contiguous writes along b (measured
                                                 // faster than contiguous reads, and 64 > 32 > 16)
        for (std::int64_t b = 0; b < b_end; ++b) dst[a * oj + b] = src[b * s1 + a];
    });
    return;
  }
  // micro-blocks: trailing output axes with at most 64 elements in all
  int m_axes = 0;
  std::int64_t m = 1;
  while (m_axes < r && m * p.len[r - 1 - m_axes] <= 64) m *= p.len[r - 1 - m_axes++];
  if (m_axes == 0) {  // one long strided axis and nothing contiguous: gather rows
    for (int d = 0; d < r - 1; ++d) loops[n++] = {p.len[d], p.stride[d], out_stride[d]};
    for_each_point(loops, n, n1, [&](std::int64_t io, std::int64_t oo, const std::int64_t*) {
      for (std::int64_t b = 0; b < n1; ++b) out[oo + b] = in[io + b * s1];
    });
    return;
  }
  std::int64_t in_off[64];
  for (std::int64_t k = 0; k < m; ++k) {  // input offset of each element of the block
    std::int64_t rem = k, off = 0;
    for (int d = r - 1; d >= r - m_axes; --d) {
      off += (rem % p.len[d]) * p.stride[d];
      rem /= p.len[d];
    }
    in_off[k] = off;
  }
  // The loop around the block runs along the outer axis with the smallest input stride (ties:
  // the longest), so reads stream through memory.
  int along = -1;
  for (int d = 0; d < r - m_axes; ++d)
    if (along < 0 || p.stride[d] < p.stride[along] || (p.stride[d] == p.stride[along] && p.len[d] > p.len[along]))
      along = d;
  for (int d = 0; d < r - m_axes; ++d)
    if (d != along) loops[n++] = {p.len[d], p.stride[d], out_stride[d]};
  const std::int64_t n_along = along >= 0 ? p.len[along] : 1;
  // Streaming stores pay off when the output is far larger than the caches.
  const bool stream = p_total(p) * static_cast<std::int64_t>(sizeof(T)) >= (std::int64_t{32} << 20);
  const std::int64_t is_along = along >= 0 ? p.stride[along] : 0, os_along = along >= 0 ? out_stride[along] : 0;
  // The block size as a constant lets the compiler unroll the gather; other sizes loop.
  auto run = [&](auto block) {
    constexpr std::int64_t M = decltype(block)::value;
    const std::int64_t mm = M > 0 ? M : m;
    for_each_point(loops, n, n_along * mm, [&](std::int64_t io, std::int64_t oo, const std::int64_t*) {
      const T* src = in + io;
      T* dst = out + oo;
      if constexpr (M > 0 && std::is_same_v<T, float> && (M * sizeof(T)) % 64 == 0) {
        // Whole cache lines: gather a line, then write it with streaming stores (no read for
        // ownership of an output line that is about to be overwritten), as memcpy does.
        if (stream && (reinterpret_cast<std::uintptr_t>(dst) % 64) == 0 && os_along % 16 == 0) {
          alignas(64) T line[M];
          for (std::int64_t i = 0; i < n_along; ++i, src += is_along, dst += os_along) {
            for (std::int64_t k = 0; k < M; ++k) line[k] = src[in_off[k]];
            stream_lines(dst, line, M);
          }
          store_fence();  // on the thread that issued the stores, before the region's barrier
          return;
        }
      }
      for (std::int64_t i = 0; i < n_along; ++i, src += is_along, dst += os_along)
        for (std::int64_t k = 0; k < mm; ++k) dst[k] = src[in_off[k]];
    });
  };
  switch (m) {
    case 2: run(std::integral_constant<std::int64_t, 2>{}); break;
    case 4: run(std::integral_constant<std::int64_t, 4>{}); break;
    case 8: run(std::integral_constant<std::int64_t, 8>{}); break;
    case 12: run(std::integral_constant<std::int64_t, 12>{}); break;
    case 16: run(std::integral_constant<std::int64_t, 16>{}); break;
    case 32: run(std::integral_constant<std::int64_t, 32>{}); break;
    case 48: run(std::integral_constant<std::int64_t, 48>{}); break;
    default: run(std::integral_constant<std::int64_t, 0>{});
  }
}

// Accumulator type: double for floating point (so a sum over a million floats stays accurate),
// int64 for integers.
template <class T>
using accumulator_t = std::conditional_t<std::is_floating_point_v<T>, double, std::int64_t>;

// out[i] = reduce over the reduced axes of in[offset(i) + reduced offset], for each output element.
// Kind: 0 sum, 1 mean, 2 max, 3 min, 4 prod. The reduced axes must not be empty (the caller fills
// the identity then). Returns false when an integer sum or product does not fit in T (or in the
// int64 accumulator): the caller refuses it rather than hand back a wrapped number.
template <class T>
inline bool strided_reduce(const T* in, T* out, std::int64_t out_count, const StridedPlan& p, int kind) {
  using Acc = accumulator_t<T>;
  std::atomic<bool> fits{true};  // set from inside the parallel region, which must not throw
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
      bool nan = false, over = false;
      std::fill(ridx, ridx + std::max(rr - 1, 0), 0);
      std::int64_t roff = off;
      for (std::int64_t j = 0; j < outer_red; ++j) {
        const T* src = in + roff;
        switch (kind) {
          case 0:
          case 1:
            if constexpr (std::is_floating_point_v<T>) {
              for (std::int64_t k = 0; k < inner_len; ++k) acc += static_cast<Acc>(src[k * inner_stride]);
            } else {
              for (std::int64_t k = 0; k < inner_len; ++k)
                over |= __builtin_add_overflow(acc, static_cast<Acc>(src[k * inner_stride]), &acc);
            }
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
            if constexpr (std::is_floating_point_v<T>) {
              for (std::int64_t k = 0; k < inner_len; ++k) acc *= static_cast<Acc>(src[k * inner_stride]);
            } else {
              for (std::int64_t k = 0; k < inner_len; ++k)
                over |= __builtin_mul_overflow(acc, static_cast<Acc>(src[k * inner_stride]), &acc);
            }
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
      } else {
        if (over || acc < static_cast<Acc>(std::numeric_limits<T>::lowest()) ||
            acc > static_cast<Acc>(std::numeric_limits<T>::max()))
          fits.store(false, std::memory_order_relaxed);
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
  return fits.load();
}

}  // namespace ditto::einops
