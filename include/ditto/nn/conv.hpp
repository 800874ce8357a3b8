// Convolutions, as torch.nn.Conv1d / Conv2d / Conv3d (same parameter names and layouts), plus
// nearest upsampling and average pooling.
//
// One core serves all three: for each image and group, a block of output rows is unfolded into
// columns (im2col) and multiplied by the weights (a GEMM through Eigen). The column buffer is
// capped at about 4 MB, so a large image never materializes its full im2col. A 1x1 convolution
// with stride 1 skips unfolding: it is a matrix product on the input as it lies.
//
// 3x3 convolutions with stride 1 and padding 1 take one of two faster paths (conv_forward):
// Winograd F(2x2, 3x3) from 64 channels (conv3x3_winograd), else a direct register-tile
// kernel where output rows are whole SIMD vectors (conv3x3_direct). Tests compare both with im2col.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../core/error.hpp"
#include "../core/matmul.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../einops/rearrange.hpp"
#include "linear.hpp"  // detail::require_positive

namespace ditto::nn {

namespace detail {
struct ConvGeometry {
  std::int64_t N, C, D, H, W;          // input
  std::int64_t O, groups;              // output channels
  std::array<std::int64_t, 3> k, s;    // kernel and stride over (d, h, w)
  std::array<std::int64_t, 6> pad;     // (d_front, d_back, top, bottom, left, right)
  std::int64_t Do, Ho, Wo;             // output
};

inline ConvGeometry conv_geometry(const char* what, const Shape& x, std::int64_t in_channels, std::int64_t O,
                                  std::int64_t groups, std::array<std::int64_t, 3> k, std::array<std::int64_t, 3> s,
                                  std::array<std::int64_t, 6> pad, int spatial_dims) {
  using ditto::detail::cat;
  if (static_cast<int>(x.size()) != 2 + spatial_dims || x[1] != in_channels)
    throw ShapeError(cat(what, ": expected input (N, ", in_channels, ", ", spatial_dims == 1 ? "L" : spatial_dims == 2 ? "H, W" : "D, H, W",
                         "), got shape ", shape_str(x)));
  ConvGeometry g{};
  g.N = x[0];
  g.C = x[1];
  g.D = spatial_dims == 3 ? x[2] : 1;
  g.H = spatial_dims >= 2 ? x[x.size() - 2] : 1;
  g.W = x.back();
  g.O = O;
  g.groups = groups;
  g.k = k;
  g.s = s;
  g.pad = pad;
  auto out = [&](std::int64_t n, std::int64_t kk, std::int64_t ss, std::int64_t p0, std::int64_t p1) {
    const std::int64_t span = n + p0 + p1 - kk;
    if (span < 0) throw ShapeError(cat(what, ": input of shape ", shape_str(x), " is smaller than the kernel"));
    return span / ss + 1;
  };
  g.Do = out(g.D, k[0], s[0], pad[0], pad[1]);
  g.Ho = out(g.H, k[1], s[1], pad[2], pad[3]);
  g.Wo = out(g.W, k[2], s[2], pad[4], pad[5]);
  return g;
}

// 3x3 convolutions with stride 1, padding 1 and one group are what U-Nets and autoencoders spend
// their time in. With at least 64 channels in and out and enough 2x2 output tiles, Winograd's
// F(2x2, 3x3) does 16 multiplies where the direct form does 36 and measures 1.1-1.9x the direct
// kernel here (docs/performance.md); on fewer channels or tiles its transforms (and the kernel
// transform of every call) cost more than they save.
template <class T>
inline bool conv3x3_winograd_applies(const ConvGeometry& g) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (!(g.groups == 1 && g.D == 1 && g.k == std::array<std::int64_t, 3>{1, 3, 3} && g.s == std::array<std::int64_t, 3>{1, 1, 1} &&
          g.pad == std::array<std::int64_t, 6>{0, 0, 1, 1, 1, 1}))
      return false;
    const std::int64_t ch = std::min(g.C, g.O), tiles = g.N * ((g.H + 1) / 2) * ((g.W + 1) / 2);  // over the batch
    return ch >= 64 && tiles >= 64 && ch * tiles >= (std::int64_t{1} << 14);
  } else {
    return false;
  }
}

// Otherwise the direct 3x3 kernel applies when a row of output is whole SIMD vectors.
template <class T>
inline bool conv3x3_direct_applies(const ConvGeometry& g) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return g.groups == 1 && g.D == 1 && g.k == std::array<std::int64_t, 3>{1, 3, 3} && g.s == std::array<std::int64_t, 3>{1, 1, 1} &&
           g.pad == std::array<std::int64_t, 6>{0, 0, 1, 1, 1, 1} && g.Wo % static_cast<std::int64_t>(xsimd::batch<T>::size) == 0;
  } else {
    return false;
  }
}

// One output tile: MR output channels x NV vectors of one output row, accumulated in registers
// over every input channel and the K x K taps. in: the zero-padded input at (channel 0, the output
// row's top tap row, the tile's first column); `plane` values per padded channel, rows Wp apart.
// wp: the tile's weights packed as [c][tap][MR]. out: (MR rows P apart) x NV vectors; rows past
// `valid` are padding, computed and never stored. bias: start from the bias (the first block of
// input channels), or null: add to out. With K = 1 it is a matrix product's register tile
// (Winograd's products: `in` the rows of V, `plane` apart).
template <class T, int MR, int NV, int K = 3>
inline void conv_tile(const T* in, std::int64_t C, std::int64_t plane, std::int64_t Wp, const T* wp, const T* bias, T* out,
                      std::int64_t P, std::int64_t valid) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t V = B::size;
  B acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = bias ? B(bias[m]) : m < valid ? B::load_unaligned(out + m * P + v * V) : B(T(0));
  for (std::int64_t c = 0; c < C; ++c) {
    const T* ic = in + c * plane;
    const T* wc = wp + c * K * K * MR;
    for (int dy = 0; dy < K; ++dy)
      for (int dx = 0; dx < K; ++dx) {
        B xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = B::load_unaligned(ic + dy * Wp + dx + v * V);
        const T* wt = wc + (dy * K + dx) * MR;
        for (int m = 0; m < MR; ++m) {
          const B wb(wt[m]);
          for (int v = 0; v < NV; ++v) acc[m][v] = xsimd::fma(wb, xv[v], acc[m][v]);
        }
      }
  }
  for (std::int64_t m = 0; m < valid; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v].store_unaligned(out + m * P + v * V);
}

// y = conv3x3(x) + bias, stride 1, padding 1 (conv3x3_direct_applies). No im2col: each thread
// copies a block of input rows into a zero-padded slab and runs register tiles over it; every
// multiply-add reads an input vector straight from the slab, so nothing is unfolded or re-packed.
// Weights are packed once per call into [O / MR][C][tap][MR]. Work items are (image, block of
// rows, group of output channels): a group's weights (~128 KB, at least one block of MR) stay in
// L2 while its tiles sweep the rows, and a block of CB input channels of one tile's rows stays in
// L1 while every output block of the group runs over it.
template <class T>
inline void conv3x3_direct(const T* x, const T* w, const T* bias, T* y, const ConvGeometry& g) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t V = B::size;
  // 24 accumulators with AVX-512 (16 in 2-vector tiles), 8 with 16 registers
  constexpr int MR = 8, NV = sizeof(B) >= 64 ? 3 : 1;
  constexpr std::int64_t CB = 32;
  // slab rows: V - 1 unused, the left zero, W inputs (vector-aligned), the right zero, V - 1 unused
  const std::int64_t C = g.C, O = g.O, H = g.H, W = g.W, Wp = W + 2 * V, P = H * W, MB = (O + MR - 1) / MR;
#if defined(DITTO_COUNT_FLOPS)
  gemm_flops.fetch_add(2 * g.N * O * P * C * 9, std::memory_order_relaxed);  // the product im2col would have run
#endif
  std::vector<T> wp(static_cast<std::size_t>(MB * C * 9 * MR)), bp(static_cast<std::size_t>(MB * MR), T(0));
  if (bias) std::copy(bias, bias + O, bp.begin());
  parallel_for(MB, MB * MR * C * 9 * 4, [&](std::int64_t lo, std::int64_t hi) {  // packing is ~10% of a 512-channel 32x32 conv
    for (std::int64_t mb = lo; mb < hi; ++mb) {
      T* dst = wp.data() + mb * C * 9 * MR;
      for (std::int64_t m = 0; m < MR; ++m) {
        const std::int64_t o = mb * MR + m;
        for (std::int64_t ct = 0; ct < C * 9; ++ct) dst[ct * MR + m] = o < O ? w[o * C * 9 + ct] : T(0);
      }
    }
  });
  const std::int64_t G_max = std::clamp<std::int64_t>((std::int64_t{1} << 17) / static_cast<std::int64_t>(C * 9 * MR * sizeof(T)), 1, MB);
  const std::int64_t groups = (MB + G_max - 1) / G_max, G = (MB + groups - 1) / groups;  // even groups
  // rows per item: a slab of about 512 KB (at least one row), and enough items for every thread.
  // Smaller L2 footprints measured faster than larger ones here (2 MB L2: 128 KB of weights and
  // 512 KB of slab beat 1 MB and 1 MB by 5-15%, most at 512 channels).
  const std::int64_t threads = get_num_threads();
  std::int64_t R = std::clamp<std::int64_t>((std::int64_t{1} << 17) / std::max<std::int64_t>(C * Wp, 1) - 2, 1, H);
  if (g.N * ((H + R - 1) / R) * groups < 4 * threads)
    R = std::max<std::int64_t>(1, (g.N * H * groups + 4 * threads - 1) / (4 * threads * groups));
  R = std::min(R, H);
  const std::int64_t blocks = (H + R - 1) / R, items = g.N * blocks * groups;
  parallel_for(items, items * G * MR * C * 9 * R * W, [&](std::int64_t lo, std::int64_t hi) {
    std::vector<T> slab_store(static_cast<std::size_t>(C * (R + 2) * Wp + V));
    T* slab = slab_store.data();
    while (reinterpret_cast<std::uintptr_t>(slab) % (V * sizeof(T))) ++slab;  // the center tap's loads are aligned
    std::int64_t filled = -1;  // the (image, row block) the slab holds
    for (std::int64_t it = lo; it < hi; ++it) {
      const std::int64_t nb = it / groups, n = nb / blocks, y0 = (nb % blocks) * R, rows = std::min(R, H - y0), plane = (rows + 2) * Wp;
      if (nb != filled) {
        const T* xn = x + n * C * P;
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t r = 0; r < rows + 2; ++r) {
            T* d = slab + c * plane + r * Wp + V;  // input column 0
            const std::int64_t iy = y0 - 1 + r;
            d[-1] = d[W] = T(0);
            if (iy < 0 || iy >= H) std::fill(d, d + W, T(0));
            else std::copy(xn + (c * H + iy) * W, xn + (c * H + iy + 1) * W, d);
          }
        filled = nb;
      }
      const std::int64_t mb0 = (it % groups) * G, mb1 = std::min(MB, mb0 + G);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t x0 = 0; x0 < W;) {
          // NV vectors per tile, but never leaving a lone vector behind: 2 + 2 rather than 3 + 1
          const std::int64_t left = (W - x0) / V;
          const std::int64_t nv = left >= NV && left - NV != 1 ? NV : std::min<std::int64_t>(left, 2);
          for (std::int64_t c0 = 0; c0 < C; c0 += CB) {
            const std::int64_t cn = std::min(CB, C - c0);
            const T* in = slab + c0 * plane + r * Wp + V - 1 + x0;  // the tap at input column x0 - 1
            for (std::int64_t mb = mb0; mb < mb1; ++mb) {
              const std::int64_t valid = std::min<std::int64_t>(MR, O - mb * MR);
              const T* wm = wp.data() + (mb * C + c0) * 9 * MR;
              const T* b0 = c0 == 0 ? bp.data() + mb * MR : nullptr;  // the first channel block starts from the bias
              T* out = y + (n * O + mb * MR) * P + (y0 + r) * W + x0;
              if (nv == NV) conv_tile<T, MR, NV>(in, cn, plane, Wp, wm, b0, out, P, valid);
              else if (nv == 2) conv_tile<T, MR, 2>(in, cn, plane, Wp, wm, b0, out, P, valid);
              else conv_tile<T, MR, 1>(in, cn, plane, Wp, wm, b0, out, P, valid);
            }
          }
          x0 += nv * V;
        }
    }
  });
}

// Uninitialized scratch memory for one call (every element is written before it is read), from
// the tensor block cache so that repeated calls do not page-fault. Sizes are rounded up to a power
// of two: the layers of a network then ask for a few sizes that the cache can hand back, instead of
// one size per shape that it would keep side by side (measured: the SD encoder's peak memory
// rose by 190 MB with exact sizes).
template <class T>
inline Tensor<T> scratch(std::int64_t n) {
  std::int64_t r = 1;
  while (r < n) r *= 2;
  return Tensor<T>::empty({r});
}

// One transform code for a whole SIMD vector of tiles (X = xsimd::batch<T>) and for one tile (X = T).
template <class X, class T>
inline X wg_load(const T* p) {
  if constexpr (std::is_same_v<X, T>) return *p;
  else return X::load_unaligned(p);
}
template <class X, class T>
inline void wg_store(T* p, const X& v) {
  if constexpr (std::is_same_v<X, T>) *p = v;
  else v.store_unaligned(p);
}
// V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], for the tiles from tx on of one
// row of tiles. s: its first input row in the slab (rows Wp apart, each split into even padded
// columns at [0, half) and odd ones at [half, 2 half)): a tile's columns are even[tx], odd[tx],
// even[tx + 1], odd[tx + 1]. v: V[0][c][first tile of the row], the 16 matrices sv apart.
template <class X, class T>
inline void winograd_input(const T* s, std::int64_t Wp, std::int64_t half, std::int64_t tx, T* v, std::int64_t sv) {
  X e[4][4];  // B^T d: combinations of the four rows
  for (int q = 0; q < 4; ++q) {
    const std::int64_t j = (q & 1) * half + tx + (q >> 1);
    const X d0 = wg_load<X>(s + j), d1 = wg_load<X>(s + Wp + j), d2 = wg_load<X>(s + 2 * Wp + j), d3 = wg_load<X>(s + 3 * Wp + j);
    e[0][q] = d0 - d2;
    e[1][q] = d1 + d2;
    e[2][q] = d2 - d1;
    e[3][q] = d1 - d3;
  }
  for (int i = 0; i < 4; ++i) {  // (B^T d) B: the same combinations of the columns
    wg_store(v + (4 * i + 0) * sv + tx, X(e[i][0] - e[i][2]));
    wg_store(v + (4 * i + 1) * sv + tx, X(e[i][1] + e[i][2]));
    wg_store(v + (4 * i + 2) * sv + tx, X(e[i][2] - e[i][1]));
    wg_store(v + (4 * i + 3) * sv + tx, X(e[i][1] - e[i][3]));
  }
}
// out = A^T m A + bias, A^T = [1 1 1 0; 0 1 -1 -1]: a tile's 2x2 outputs (row-major) from its
// 16 products m[a * sm + tx].
template <class X, class T>
inline void winograd_output(const T* m, std::int64_t sm, std::int64_t tx, T bias, X out[4]) {
  X s0[4], s1[4];  // A^T m
  for (int q = 0; q < 4; ++q) {
    const X m0 = wg_load<X>(m + q * sm + tx), m1 = wg_load<X>(m + (4 + q) * sm + tx), m2 = wg_load<X>(m + (8 + q) * sm + tx),
            m3 = wg_load<X>(m + (12 + q) * sm + tx);
    s0[q] = m0 + m1 + m2;
    s1[q] = m1 - m2 - m3;
  }
  const X b(bias);
  out[0] = s0[0] + s0[1] + s0[2] + b;
  out[1] = s0[1] - s0[2] - s0[3] + b;
  out[2] = s1[0] + s1[1] + s1[2] + b;
  out[3] = s1[1] - s1[2] - s1[3] + b;
}

// Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
// each 2x2 block of outputs comes from a 4x4 block of inputs d as Y = A^T [sum_c U_c . V_c] A,
// with V = B^T d B per input channel and U = G g G^T per 3x3 kernel g. The sum over channels is
// 16 matrix products (one per position a of the 4x4 transformed tile), M_a (O, tiles) =
// U_a (O, C) @ V_a (C, tiles): 16 multiplies per 4 outputs where the direct form needs 36.
// Its transforms only add, subtract and halve, so it rounds like the direct sum (checked against
// the direct and im2col paths). Work items are (image, block of tile rows); each thread
// transforms its block, runs the 16 products on the direct kernel's register tile (conv_tile with
// one tap: 1.2x Eigen's general GEMM at these shapes, which re-packs U every call) and transforms back.
template <class T>
inline void conv3x3_winograd(const T* x, const T* w, const T* bias, T* y, const ConvGeometry& g, std::int64_t R = 0) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t Vw = B::size;
  const std::int64_t C = g.C, O = g.O, H = g.H, W = g.W, P = H * W;
  const std::int64_t th = (H + 1) / 2, tw = (W + 1) / 2, half = tw + 1, Wp = 2 * half;  // tiles; slab row: even, odd halves
#if defined(DITTO_COUNT_FLOPS)
  gemm_flops.fetch_add(2 * g.N * O * P * C * 9, std::memory_order_relaxed);  // the direct form's work, for comparable GFLOP/s
#endif
  // U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], packed for the products' register
  // tiles: U[a][o / MR][c][o % MR], output channels padded with zeros to a multiple of MR
  constexpr int MR = 8, NV = sizeof(B) >= 64 ? 3 : 1;
  const std::int64_t OB = (O + MR - 1) / MR, su = OB * MR * C + 16;
  Tensor<T> U_store = scratch<T>(16 * su);
  T* U = U_store.data();
  parallel_for(O, O * C * 40, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t o = lo; o < hi; ++o)
      for (std::int64_t c = 0; c < C; ++c) {
        const T* k = w + (o * C + c) * 9;
        T t[4][3], u[4][4];
        for (int j = 0; j < 3; ++j) {
          t[0][j] = k[j];
          t[1][j] = (k[j] + k[3 + j] + k[6 + j]) * T(0.5);
          t[2][j] = (k[j] - k[3 + j] + k[6 + j]) * T(0.5);
          t[3][j] = k[6 + j];
        }
        for (int i = 0; i < 4; ++i) {
          u[i][0] = t[i][0];
          u[i][1] = (t[i][0] + t[i][1] + t[i][2]) * T(0.5);
          u[i][2] = (t[i][0] - t[i][1] + t[i][2]) * T(0.5);
          u[i][3] = t[i][2];
        }
        for (int a = 0; a < 16; ++a) U[a * su + ((o / MR) * C + c) * MR + o % MR] = u[a / 4][a % 4];
      }
  });
  for (std::int64_t o = O; o < OB * MR; ++o)
    for (int a = 0; a < 16; ++a)
      for (std::int64_t c = 0; c < C; ++c) U[a * su + ((o / MR) * C + c) * MR + o % MR] = T(0);
  // rows of tiles per item: V of about 4 MB (16 C tiles values; measured best at 128-512 channels),
  // and at least two items per thread where the image has that many rows
  if (R <= 0) {
    R = std::max<std::int64_t>(1, ((std::int64_t{1} << 16) / C + tw / 2) / tw);
    const std::int64_t threads = get_num_threads();
    if (g.N * ((th + R - 1) / R) < 2 * threads) R = std::max<std::int64_t>(1, g.N * th / (2 * threads));
  }
  R = std::clamp<std::int64_t>(R, 1, th);
  const std::int64_t blocks = (th + R - 1) / R, items = g.N * blocks;
  parallel_for(items, items * 32 * O * C * R * tw, [&](std::int64_t lo, std::int64_t hi) {
    const std::int64_t Tmax = R * tw, plane = (2 * R + 2) * Wp;
    const std::int64_t ldmax = (Tmax + Vw - 1) / Vw * Vw;
    Tensor<T> slab_store = scratch<T>(C * plane), V_store = scratch<T>(16 * (C * ldmax + 32)), M_store = scratch<T>(16 * (O * ldmax + 32));
    T *slab = slab_store.data(), *V = V_store.data(), *M = M_store.data();
    for (std::int64_t it = lo; it < hi; ++it) {
      const std::int64_t n = it / blocks, ty0 = (it % blocks) * R, rt = std::min(R, th - ty0), T_ = rt * tw;
      // rows of V and M are ld apart: the block's tiles, padded to whole vectors (zeros in V); their
      // 16 matrices lie sv / sm apart, a cache line more than their size, so the 16 streams of a
      // transform do not all map to the same cache sets
      const std::int64_t ld = (T_ + Vw - 1) / Vw * Vw;
      const std::int64_t sv = (C * ld + 15) / 16 * 16 + 16, sm = (O * ld + 15) / 16 * 16 + 16;
      const std::int64_t y0 = 2 * ty0 - 1;  // input row of slab row 0
      const T* xn = x + n * C * P;
      // the block's input rows, zero-padded and split by column parity: padded column 2k lands at
      // slab[c][r][k], column 2k + 1 at slab[c][r][half + k], so a tile's four columns are
      // unit-stride reads at tx and tx + 1 (padded column j is input column j - 1)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t r = 0; r < 2 * rt + 2; ++r) {
          T* __restrict ev = slab + c * plane + r * Wp;
          T* __restrict od = ev + half;
          const std::int64_t iy = y0 + r;
          std::fill(ev, ev + Wp, T(0));
          if (iy < 0 || iy >= H) continue;
          const T* __restrict src = xn + (c * H + iy) * W;
          for (std::int64_t k = 0; k < tw; ++k) od[k] = src[2 * k];  // padded 2k + 1 = input 2k
          for (std::int64_t k = 1; 2 * k - 1 < W; ++k) ev[k] = src[2 * k - 1];
        }
      // V[a][c][t] = (B^T d B)[a], whole vectors of tiles, then the rest one by one
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t r = 0; r < rt; ++r) {
          const T* s0 = slab + c * plane + 2 * r * Wp;
          T* v = V + c * ld + r * tw;
          std::int64_t tx = 0;
          for (; tx + Vw <= tw; tx += Vw) winograd_input<B>(s0, Wp, half, tx, v, sv);
          for (; tx < tw; ++tx) winograd_input<T>(s0, Wp, half, tx, v, sv);
        }
      if (ld > T_)
        for (std::int64_t a = 0; a < 16; ++a)
          for (std::int64_t c = 0; c < C; ++c) std::fill(V + a * sv + c * ld + T_, V + a * sv + (c + 1) * ld, T(0));
      // M_a (O, tiles) = U_a (O, C) @ V_a (C, tiles): register tiles of MR output channels x NV
      // vectors of tiles; KC input channels of a tile's V columns stay in L1 while every block of
      // output channels runs over them
      constexpr std::int64_t KC = 128;
      alignas(64) const T zeros[MR] = {};  // the first block of input channels starts from zero
      for (std::int64_t a = 0; a < 16; ++a)
        for (std::int64_t c0 = 0; c0 < C; c0 += KC) {
          const std::int64_t kc = std::min(KC, C - c0);
          for (std::int64_t t0 = 0; t0 < ld;) {
            const std::int64_t nv = std::min<std::int64_t>(NV, (ld - t0) / Vw);
            const T* va = V + a * sv + c0 * ld + t0;
            for (std::int64_t ob = 0; ob < OB; ++ob) {
              const T* ua = U + a * su + (ob * C + c0) * MR;
              T* ma = M + a * sm + ob * MR * ld + t0;
              const std::int64_t valid = std::min<std::int64_t>(MR, O - ob * MR);
              const T* start = c0 == 0 ? zeros : nullptr;
              if (nv == NV) conv_tile<T, MR, NV, 1>(va, kc, ld, 0, ua, start, ma, ld, valid);
              else if (nv == 2) conv_tile<T, MR, 2, 1>(va, kc, ld, 0, ua, start, ma, ld, valid);
              else conv_tile<T, MR, 1, 1>(va, kc, ld, 0, ua, start, ma, ld, valid);
            }
            t0 += nv * Vw;
          }
        }
      // y = A^T m A + bias; the last row / column of a tile may fall outside
      for (std::int64_t o = 0; o < O; ++o) {
        const T bo = bias ? bias[o] : T(0);
        for (std::int64_t r = 0; r < rt; ++r) {
          const T* m = M + o * ld + r * tw;
          const std::int64_t oy = 2 * (ty0 + r), full = W / 2;  // tiles whose two columns are inside
          T* yr0 = y + (n * O + o) * P + oy * W;
          T* yr1 = oy + 1 < H ? yr0 + W : nullptr;
          std::int64_t tx = 0;
          for (; tx + Vw <= full; tx += Vw) {
            B out[4];
            winograd_output<B>(m, sm, tx, bo, out);
            alignas(64) T t[4][Vw];
            for (int i = 0; i < 4; ++i) out[i].store_aligned(t[i]);
            for (std::int64_t k = 0; k < Vw; ++k) {  // interleave the tiles' columns
              yr0[2 * (tx + k)] = t[0][k];
              yr0[2 * (tx + k) + 1] = t[1][k];
            }
            if (yr1)
              for (std::int64_t k = 0; k < Vw; ++k) {
                yr1[2 * (tx + k)] = t[2][k];
                yr1[2 * (tx + k) + 1] = t[3][k];
              }
          }
          for (; tx < tw; ++tx) {
            T out[4];
            winograd_output<T>(m, sm, tx, bo, out);
            yr0[2 * tx] = out[0];
            if (yr1) yr1[2 * tx] = out[2];
            if (2 * tx + 1 < W) {
              yr0[2 * tx + 1] = out[1];
              if (yr1) yr1[2 * tx + 1] = out[3];
            }
          }
        }
      }
    }
  });
}

// The im2col of output rows [r0, r0 + nr) of one image and group (xg: its Cg channels):
// col[kk][r * Wo + ow] = x[c][do*sd - pd + i][ho*sh - ph + j][ow*sw - pw + l], or 0 outside, for
// kk = (c, i, j, l) over K = Cg kd kh kw. Fold = true runs it backwards (col2im): each column
// value is added to the input position it was read from (the backward of the unfolding).
// Parallel over input channels: each channel's kernel offsets stay with one thread, so Fold's
// sums into a channel run in the same order (the same bits) for any thread count.
template <bool Fold, class T>
inline void unfold_rows(T* xg, const ConvGeometry& g, std::int64_t K, std::int64_t r0, std::int64_t nr, T* col) {
  const std::int64_t row_len = g.Wo, cols = nr * row_len, kvol = g.k[0] * g.k[1] * g.k[2];
  parallel_for(K / kvol, K * cols, [&](std::int64_t c_lo, std::int64_t c_hi) {
    for (std::int64_t kk = c_lo * kvol; kk < c_hi * kvol; ++kk) {
      const std::int64_t l = kk % g.k[2], j = (kk / g.k[2]) % g.k[1], i = (kk / (g.k[2] * g.k[1])) % g.k[0];
      const std::int64_t c = kk / (g.k[0] * g.k[1] * g.k[2]);
      T* dst = col + kk * cols;
      // the ow range whose input column is inside: iw = ow * sw - pw + l in [0, W)
      const std::int64_t sw = g.s[2], off = l - g.pad[4];
      const std::int64_t ow0 = std::clamp<std::int64_t>(off >= 0 ? 0 : (-off + sw - 1) / sw, 0, row_len);
      const std::int64_t ow1 = std::clamp<std::int64_t>(g.W - off > 0 ? (g.W - off + sw - 1) / sw : 0, ow0, row_len);
      for (std::int64_t r = 0; r < nr; ++r) {
        const std::int64_t od = (r0 + r) / g.Ho, oh = (r0 + r) % g.Ho;
        const std::int64_t id = od * g.s[0] - g.pad[0] + i, ih = oh * g.s[1] - g.pad[2] + j;
        T* d = dst + r * row_len;
        const bool inside = !(id < 0 || id >= g.D || ih < 0 || ih >= g.H);
        if constexpr (Fold) {
          if (!inside) continue;
          T* src = xg + (c * g.D + id) * g.H * g.W + ih * g.W + off;
          for (std::int64_t ow = ow0; ow < ow1; ++ow) src[ow * sw] += d[ow];
        } else {
          if (!inside) {
            std::fill(d, d + row_len, T(0));
            continue;
          }
          const T* src = xg + (c * g.D + id) * g.H * g.W + ih * g.W + off;
          std::fill(d, d + ow0, T(0));
          if (sw == 1) std::copy(src + ow0, src + ow1, d + ow0);  // the common case: one contiguous copy
          else for (std::int64_t ow = ow0; ow < ow1; ++ow) d[ow] = src[ow * sw];
          std::fill(d + ow1, d + row_len, T(0));
        }
      }
    }
  });
}

// The general path: blocked im2col and a matrix product, any kernel, stride, padding, groups.
template <class T>
inline void conv_forward_im2col(const T* x, const T* w, const T* bias, T* y, const ConvGeometry& g) {
  const std::int64_t Cg = g.C / g.groups, Og = g.O / g.groups;
  const std::int64_t K = Cg * g.k[0] * g.k[1] * g.k[2], P = g.Do * g.Ho * g.Wo, S = g.D * g.H * g.W;
  const bool pointwise = K == Cg && g.s == std::array<std::int64_t, 3>{1, 1, 1} &&
                         g.pad == std::array<std::int64_t, 6>{0, 0, 0, 0, 0, 0};
  // Output "rows" are (do, ho) pairs of Wo positions; a block of rows bounds the columns. Work
  // items are (image, group, row block); each thread unfolds its block into its own buffer and
  // multiplies it, so unfolding overlaps with the other threads' products. Blocks are small
  // enough that every thread gets work, and hold at most ~16 MB of columns: fewer, larger
  // products re-pack the weights less often (measured: 4 MB blocks ran 10-25% slower).
  const std::int64_t rows = g.Do * g.Ho, row_len = g.Wo;
  const std::int64_t threads = get_num_threads();
  std::int64_t block = std::clamp<std::int64_t>((std::int64_t{1} << 22) / std::max<std::int64_t>(K * row_len, 1), 1, rows);
  if (g.N * g.groups * ((rows + block - 1) / block) < 2 * threads)
    block = std::max<std::int64_t>(1, (rows + 2 * threads - 1) / (2 * threads));
  const std::int64_t n_blocks = (rows + block - 1) / block, items = pointwise ? g.N * g.groups : g.N * g.groups * n_blocks;
  parallel_for(items, items * Og * K * (pointwise ? P : block * row_len), [&](std::int64_t lo, std::int64_t hi) {
    std::vector<T> col(pointwise ? 0 : static_cast<std::size_t>(K * block * row_len));
    for (std::int64_t it = lo; it < hi; ++it) {
      const std::int64_t ng = pointwise ? it : it / n_blocks, n = ng / g.groups, gr = ng % g.groups;
      const T* xg = x + (n * g.C + gr * Cg) * S;
      const T* wg = w + gr * Og * K;
      T* yg = y + (n * g.O + gr * Og) * P;
      const std::int64_t r0 = pointwise ? 0 : (it % n_blocks) * block, nr = pointwise ? rows : std::min(block, rows - r0);
      const std::int64_t cols = nr * row_len;
      // the bias goes in through the product (y = bias, then y += w col), not as another pass
      if (bias)
        for (std::int64_t o = 0; o < Og; ++o) std::fill(yg + o * P + r0 * row_len, yg + o * P + r0 * row_len + cols, bias[gr * Og + o]);
      const T beta = bias ? T(1) : T(0);
      if (pointwise) {
        gemm<T>(false, false, Og, P, K, T(1), wg, K, xg, S, beta, yg, P);
        continue;
      }
      unfold_rows<false>(const_cast<T*>(xg), g, K, r0, nr, col.data());
      gemm<T>(false, false, Og, cols, K, T(1), wg, K, col.data(), cols, beta, yg + r0 * row_len, P);
    }
  });
}

// y (N, O, Do, Ho, Wo) = conv(x (N, C, D, H, W), w (O, C/groups, kd, kh, kw)) + bias.
template <class T>
inline void conv_forward(const T* x, const T* w, const T* bias, T* y, const ConvGeometry& g) {
  if (conv3x3_winograd_applies<T>(g)) conv3x3_winograd(x, w, bias, y, g);
  else if (conv3x3_direct_applies<T>(g)) conv3x3_direct(x, w, bias, y, g);
  else conv_forward_im2col(x, w, bias, y, g);
}

// The backward of conv_forward (every path: they compute one function), by im2col for any
// kernel, stride, padding and groups. dy (N, O, Do, Ho, Wo); x as the forward saw it. Accumulates
// dw (O, C/groups, k...) += dy col^T, db (O) += dy summed over positions, and dx (N, C, D, H, W;
// null: not needed) += col2im(w^T dy). Images and groups run in order, each product threaded
// inside (so dw and db sum in one order for any thread count; the products' own reductions are
// the libraries', as Linear's).
template <class T>
inline void conv_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const ConvGeometry& g) {
  const std::int64_t Cg = g.C / g.groups, Og = g.O / g.groups;
  const std::int64_t K = Cg * g.k[0] * g.k[1] * g.k[2], P = g.Do * g.Ho * g.Wo, S = g.D * g.H * g.W;
  const std::int64_t rows = g.Do * g.Ho, row_len = g.Wo;
  if (P == 0 || g.N == 0) return;
  const std::int64_t block = std::clamp<std::int64_t>((std::int64_t{1} << 22) / std::max<std::int64_t>(K * row_len, 1), 1, rows);
  std::vector<T> col(static_cast<std::size_t>(K * block * row_len));
  if (db)
    for (std::int64_t n = 0; n < g.N; ++n)
      for (std::int64_t o = 0; o < g.O; ++o) {
        T s = 0;
        const T* d = dy + (n * g.O + o) * P;
        for (std::int64_t i = 0; i < P; ++i) s += d[i];
        db[o] += s;
      }
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t gr = 0; gr < g.groups; ++gr) {
      const T* xg = x + (n * g.C + gr * Cg) * S;
      const T* wg = w + gr * Og * K;
      const T* dyg = dy + (n * g.O + gr * Og) * P;
      for (std::int64_t r0 = 0; r0 < rows; r0 += block) {
        const std::int64_t nr = std::min(block, rows - r0), cols = nr * row_len;
        if (dw) {
          unfold_rows<false>(const_cast<T*>(xg), g, K, r0, nr, col.data());
          gemm<T>(false, true, Og, K, cols, T(1), dyg + r0 * row_len, P, col.data(), cols, T(1), dw + gr * Og * K, K);
        }
        if (dx) {
          gemm<T>(true, false, K, cols, Og, T(1), wg, K, dyg + r0 * row_len, P, T(0), col.data(), cols);
          unfold_rows<true>(dx + (n * g.C + gr * Cg) * S, g, K, r0, nr, col.data());
        }
      }
    }
}

// A 1x1 convolution of one channel-major image x (C, L) written as token-major rows:
// out[l * ldo + o] = bias[o] + sum_c w[o, c] x[c, l], for w (O, C). Spatial attention blocks use
// it to get q / k / v in the row layout the attention kernel reads.
template <class T>
inline void pointwise_to_rows(const T* x, std::int64_t C, std::int64_t L, const T* w, const T* bias, std::int64_t O, T* out,
                              std::int64_t ldo) {
  for (std::int64_t l = 0; l < L; ++l) std::copy(bias, bias + O, out + l * ldo);
  gemm<T>(true, true, L, O, C, T(1), x, L, w, C, T(1), out, ldo);
}
// The way back, added: y[c, l] += bias[c] + sum_o w[c, o] rows[l, o], for rows (L, O), w (C, O)
// and y (C, L) channel-major: an output projection plus the residual.
template <class T>
inline void rows_to_pointwise_add(const T* rows, std::int64_t L, std::int64_t O, const T* w, const T* bias, std::int64_t C, T* y) {
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t l = 0; l < L; ++l) y[c * L + l] += bias[c];
  gemm<T>(false, true, C, L, O, T(1), w, O, rows, O, T(1), y, L);
}
}  // namespace detail

// x: (N, C, H, W) -> (N, out_channels, Ho, Wo). padding = {top, bottom, left, right} (may be
// asymmetric, as F.pad then conv); weight (out, in / groups, kh, kw).
template <class T = float>
struct Conv2d {
  std::int64_t in_channels = 0, out_channels = 0, groups = 1;
  std::array<std::int64_t, 2> kernel_size{1, 1}, stride{1, 1};
  std::array<std::int64_t, 4> padding{0, 0, 0, 0};
  bool has_bias = true;
  Tensor<T> weight, bias;

  Conv2d() = default;
  Conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride_ = 1, std::int64_t pad = 0,
         std::int64_t groups_ = 1, bool bias_ = true)
      : Conv2d(in, out, {kernel, kernel}, {stride_, stride_}, {pad, pad, pad, pad}, groups_, bias_) {}
  Conv2d(std::int64_t in, std::int64_t out, std::array<std::int64_t, 2> kernel, std::array<std::int64_t, 2> stride_,
         std::array<std::int64_t, 4> pad, std::int64_t groups_ = 1, bool bias_ = true)
      : in_channels(in), out_channels(out), groups(groups_), kernel_size(kernel), stride(stride_), padding(pad),
        has_bias(bias_) {
    for (auto k : kernel) detail::require_positive("Conv2d", "kernel_size", k);
    for (auto s : stride_) detail::require_positive("Conv2d", "stride", s);
    for (auto p : pad)
      if (p < 0) throw ArgumentError(ditto::detail::cat("Conv2d: padding must be >= 0, got ", p));
    detail::require_positive("Conv2d", "in_channels", in);
    detail::require_positive("Conv2d", "out_channels", out);
    if (groups_ <= 0 || in % groups_ || out % groups_)
      throw ArgumentError(ditto::detail::cat("Conv2d(", in, ", ", out, ", groups=", groups_,
                                             "): channels must be divisible by groups"));
    weight = Tensor<T>({out, in / groups_, kernel[0], kernel[1]});
    bias = Tensor<T>(Shape{bias_ ? out : 0});
  }

  template <class V>
  void visit(V& v) {
    v("weight", weight);
    if (has_bias) v("bias", bias);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    const auto g = detail::conv_geometry("Conv2d", x.shape(), in_channels, out_channels, groups,
                                         {1, kernel_size[0], kernel_size[1]}, {1, stride[0], stride[1]},
                                         {0, 0, padding[0], padding[1], padding[2], padding[3]}, 2);
    Tensor<T> y = Tensor<T>::empty({g.N, out_channels, g.Ho, g.Wo});
    detail::conv_forward(x.data(), weight.data(), has_bias ? bias.data() : nullptr, y.data(), g);
    return y;
  }

  // Backward: dy the gradient of forward(x). Accumulates g.weight, g.bias and dx (x's shape;
  // null: not needed).
  void backward(Conv2d& g, const Tensor<T>& x, const Tensor<T>& dy, Tensor<T>* dx = nullptr) const {
    const auto geo = detail::conv_geometry("Conv2d", x.shape(), in_channels, out_channels, groups,
                                         {1, kernel_size[0], kernel_size[1]}, {1, stride[0], stride[1]},
                                         {0, 0, padding[0], padding[1], padding[2], padding[3]}, 2);
    if (dy.numel() != geo.N * out_channels * geo.Do * geo.Ho * geo.Wo || dy.size(0) != geo.N || dy.size(1) != out_channels)
      throw ShapeError(ditto::detail::cat("Conv2d.backward: dy ", shape_str(dy.shape()), " is not the output's shape for x ", shape_str(x.shape())));
    if (dx && dx->shape() != x.shape()) *dx = Tensor<T>(x.shape());
    detail::conv_backward(dx ? dx->data() : nullptr, g.weight.data(), has_bias ? g.bias.data() : nullptr, dy.data(), x.data(), weight.data(), geo);
  }
};

// x: (N, C, L) -> (N, out_channels, Lo); padding on both ends.
template <class T = float>
struct Conv1d {
  std::int64_t in_channels = 0, out_channels = 0, kernel_size = 1, stride = 1, padding = 0, groups = 1;
  bool has_bias = true;
  Tensor<T> weight, bias;

  Conv1d() = default;
  Conv1d(std::int64_t in, std::int64_t out, std::int64_t kernel = 1, std::int64_t stride_ = 1, std::int64_t pad = 0,
         std::int64_t groups_ = 1, bool bias_ = true)
      : in_channels(in), out_channels(out), kernel_size(kernel), stride(stride_), padding(pad), groups(groups_),
        has_bias(bias_) {
    detail::require_positive("Conv1d", "kernel_size", kernel);
    detail::require_positive("Conv1d", "stride", stride_);
    detail::require_positive("Conv1d", "in_channels", in);
    detail::require_positive("Conv1d", "out_channels", out);
    if (pad < 0) throw ArgumentError(ditto::detail::cat("Conv1d: padding must be >= 0, got ", pad));
    if (groups_ <= 0 || in % groups_ || out % groups_)
      throw ArgumentError(ditto::detail::cat("Conv1d(", in, ", ", out, ", groups=", groups_,
                                             "): channels must be divisible by groups"));
    weight = Tensor<T>({out, in / groups_, kernel});
    bias = Tensor<T>(Shape{bias_ ? out : 0});
  }

  template <class V>
  void visit(V& v) {
    v("weight", weight);
    if (has_bias) v("bias", bias);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    const auto g = detail::conv_geometry("Conv1d", x.shape(), in_channels, out_channels, groups, {1, 1, kernel_size},
                                         {1, 1, stride}, {0, 0, 0, 0, padding, padding}, 1);
    Tensor<T> y = Tensor<T>::empty({g.N, out_channels, g.Wo});
    detail::conv_forward(x.data(), weight.data(), has_bias ? bias.data() : nullptr, y.data(), g);
    return y;
  }

  // Backward: dy the gradient of forward(x). Accumulates g.weight, g.bias and dx (x's shape;
  // null: not needed).
  void backward(Conv1d& g, const Tensor<T>& x, const Tensor<T>& dy, Tensor<T>* dx = nullptr) const {
    const auto geo = detail::conv_geometry("Conv1d", x.shape(), in_channels, out_channels, groups, {1, 1, kernel_size},
                                         {1, 1, stride}, {0, 0, 0, 0, padding, padding}, 1);
    if (dy.numel() != geo.N * out_channels * geo.Do * geo.Ho * geo.Wo || dy.size(0) != geo.N || dy.size(1) != out_channels)
      throw ShapeError(ditto::detail::cat("Conv1d.backward: dy ", shape_str(dy.shape()), " is not the output's shape for x ", shape_str(x.shape())));
    if (dx && dx->shape() != x.shape()) *dx = Tensor<T>(x.shape());
    detail::conv_backward(dx ? dx->data() : nullptr, g.weight.data(), has_bias ? g.bias.data() : nullptr, dy.data(), x.data(), weight.data(), geo);
  }
};

// x: (N, C, D, H, W) -> (N, out_channels, Do, Ho, Wo); symmetric padding per axis. With
// kernel = stride this is ViViT's tubelet embedding.
template <class T = float>
struct Conv3d {
  std::int64_t in_channels = 0, out_channels = 0;
  std::array<std::int64_t, 3> kernel_size{1, 1, 1}, stride{1, 1, 1}, padding{0, 0, 0};
  bool has_bias = true;
  Tensor<T> weight, bias;

  Conv3d() = default;
  Conv3d(std::int64_t in, std::int64_t out, std::array<std::int64_t, 3> kernel, std::array<std::int64_t, 3> stride_ = {1, 1, 1},
         std::array<std::int64_t, 3> pad = {0, 0, 0}, bool bias_ = true)
      : in_channels(in), out_channels(out), kernel_size(kernel), stride(stride_), padding(pad), has_bias(bias_) {
    for (auto k : kernel) detail::require_positive("Conv3d", "kernel_size", k);
    for (auto s : stride_) detail::require_positive("Conv3d", "stride", s);
    for (auto p : pad)
      if (p < 0) throw ArgumentError(ditto::detail::cat("Conv3d: padding must be >= 0, got ", p));
    detail::require_positive("Conv3d", "in_channels", in);
    detail::require_positive("Conv3d", "out_channels", out);
    weight = Tensor<T>({out, in, kernel[0], kernel[1], kernel[2]});
    bias = Tensor<T>(Shape{bias_ ? out : 0});
  }

  template <class V>
  void visit(V& v) {
    v("weight", weight);
    if (has_bias) v("bias", bias);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    const auto g = detail::conv_geometry("Conv3d", x.shape(), in_channels, out_channels, 1, kernel_size, stride,
                                         {padding[0], padding[0], padding[1], padding[1], padding[2], padding[2]}, 3);
    Tensor<T> y = Tensor<T>::empty({g.N, out_channels, g.Do, g.Ho, g.Wo});
    detail::conv_forward(x.data(), weight.data(), has_bias ? bias.data() : nullptr, y.data(), g);
    return y;
  }

  // Backward: dy the gradient of forward(x). Accumulates g.weight, g.bias and dx (x's shape;
  // null: not needed).
  void backward(Conv3d& g, const Tensor<T>& x, const Tensor<T>& dy, Tensor<T>* dx = nullptr) const {
    const auto geo = detail::conv_geometry("Conv3d", x.shape(), in_channels, out_channels, 1, kernel_size, stride,
                                         {padding[0], padding[0], padding[1], padding[1], padding[2], padding[2]}, 3);
    if (dy.numel() != geo.N * out_channels * geo.Do * geo.Ho * geo.Wo || dy.size(0) != geo.N || dy.size(1) != out_channels)
      throw ShapeError(ditto::detail::cat("Conv3d.backward: dy ", shape_str(dy.shape()), " is not the output's shape for x ", shape_str(x.shape())));
    if (dx && dx->shape() != x.shape()) *dx = Tensor<T>(x.shape());
    detail::conv_backward(dx ? dx->data() : nullptr, g.weight.data(), has_bias ? g.bias.data() : nullptr, dy.data(), x.data(), weight.data(), geo);
  }
};

// Nearest-neighbour upsampling of (N, C, H, W) by an integer factor (F.interpolate(mode="nearest")).
template <class T>
inline Tensor<T> upsample_nearest(const Tensor<T>& x, std::int64_t factor = 2) {
  if (x.dim() != 4) throw ShapeError(ditto::detail::cat("upsample_nearest: expected (N, C, H, W), got ", shape_str(x.shape())));
  detail::require_positive("upsample_nearest", "factor", factor);
  return repeat(x, "n c h w -> n c (h a) (w b)", {{"a", factor}, {"b", factor}});
}

// Average pooling of (N, C, H, W) without padding (F.avg_pool2d): a trailing row or column that
// does not fill a window is dropped, as PyTorch does.
template <class T>
inline Tensor<T> avg_pool2d(const Tensor<T>& x, std::int64_t kernel = 2, std::int64_t stride = -1) {
  if (stride < 0) stride = kernel;
  detail::require_positive("avg_pool2d", "kernel", kernel);
  detail::require_positive("avg_pool2d", "stride", stride);
  if (x.dim() != 4 || x.size(2) < kernel || x.size(3) < kernel)
    throw ShapeError(ditto::detail::cat("avg_pool2d(kernel=", kernel, "): expected (N, C, H, W) with H, W >= ", kernel,
                                        ", got ", shape_str(x.shape())));
  const std::int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const std::int64_t Ho = (H - kernel) / stride + 1, Wo = (W - kernel) / stride + 1;
  Tensor<T> y = Tensor<T>::empty({x.size(0), x.size(1), Ho, Wo});
  const T inv = T(1) / static_cast<T>(kernel * kernel);
  parallel_for(NC, NC * Ho * Wo * kernel * kernel, [&](std::int64_t lo, std::int64_t hi) {
    for (auto nc = lo; nc < hi; ++nc)
      for (std::int64_t oh = 0; oh < Ho; ++oh)
        for (std::int64_t ow = 0; ow < Wo; ++ow) {
          T s = 0;
          for (std::int64_t i = 0; i < kernel; ++i)
            for (std::int64_t j = 0; j < kernel; ++j) s += x[(nc * H + oh * stride + i) * W + ow * stride + j];
          y[(nc * Ho + oh) * Wo + ow] = s * inv;
        }
  });
  return y;
}

// avg_pool2d's backward: dy (N, C, Ho, Wo) -> dx (N, C, H, W), each output's gradient spread
// evenly over its window (overlapping windows add; a dropped trailing row gets 0).
template <class T>
inline Tensor<T> avg_pool2d_backward(const Tensor<T>& dy, const Shape& x_shape, std::int64_t kernel = 2, std::int64_t stride = -1) {
  if (stride < 0) stride = kernel;
  detail::require_positive("avg_pool2d_backward", "kernel", kernel);
  detail::require_positive("avg_pool2d_backward", "stride", stride);
  if (x_shape.size() != 4 || x_shape[2] < kernel || x_shape[3] < kernel || dy.dim() != 4 || dy.size(0) != x_shape[0] || dy.size(1) != x_shape[1] ||
      dy.size(2) != (x_shape[2] - kernel) / stride + 1 || dy.size(3) != (x_shape[3] - kernel) / stride + 1)
    throw ShapeError(ditto::detail::cat("avg_pool2d_backward: dy ", shape_str(dy.shape()), " is not avg_pool2d(kernel=", kernel, ", stride=", stride,
                                        ")'s output for x ", shape_str(x_shape)));
  const std::int64_t NC = x_shape[0] * x_shape[1], H = x_shape[2], W = x_shape[3], Ho = dy.size(2), Wo = dy.size(3);
  Tensor<T> dx(x_shape);
  const T inv = T(1) / static_cast<T>(kernel * kernel);
  parallel_for(NC, NC * Ho * Wo * kernel * kernel, [&](std::int64_t lo, std::int64_t hi) {
    for (auto nc = lo; nc < hi; ++nc)
      for (std::int64_t oh = 0; oh < Ho; ++oh)
        for (std::int64_t ow = 0; ow < Wo; ++ow) {
          const T g = dy[(nc * Ho + oh) * Wo + ow] * inv;
          for (std::int64_t i = 0; i < kernel; ++i)
            for (std::int64_t j = 0; j < kernel; ++j) dx[(nc * H + oh * stride + i) * W + ow * stride + j] += g;
        }
  });
  return dx;
}

// upsample_nearest's backward: each input pixel's gradient is the sum over its factor x factor block.
template <class T>
inline Tensor<T> upsample_nearest_backward(const Tensor<T>& dy, std::int64_t factor = 2) {
  if (dy.dim() != 4 || factor < 1 || dy.size(2) % factor || dy.size(3) % factor)
    throw ShapeError(ditto::detail::cat("upsample_nearest_backward: expected dy (N, C, H, W) with H and W divisible by ", factor, ", got ",
                                        shape_str(dy.shape())));
  return reduce(dy, "n c (h a) (w b) -> n c h w", "sum", {{"a", factor}, {"b", factor}});
}

}  // namespace ditto::nn
