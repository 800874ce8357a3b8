// Attention. One kernel serves every form: a list of problems, each a query block attending to
// a key/value block, read through row strides.
//
//   softmax(q k^T * scale [masked]) v   computed flash-attention style: queries in blocks of 64,
//   keys in blocks of 64, a running max and sum per query row (online softmax, Milakov &
//   Gimelshein 2018), so memory is O(N) and 16k tokens never build an N x N matrix.
//
// The same kernel runs (B, H, N, D) tensors, timm's fused qkv layout (B, N, 3, H, D) without
// rearranging, and packed batches: sequences of different lengths in one buffer, each attending
// only to itself (block-diagonal attention, no padding compute) — what spacetime-patch models
// with videos of different sizes need.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../core/error.hpp"
#include "../core/matmul.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "activation.hpp"
#include "linear.hpp"
#include "norm.hpp"

namespace ditto::nn {

// One query block's problem: nq query rows attending to nk key rows.
template <class T>
struct AttentionProblem {
  const T* q;
  const T* k;
  const T* v;
  T* o;
  std::int64_t nq, nk;
  const std::uint8_t* mask = nullptr;  // (nq, nk) rows of mask_stride; nonzero = may attend
  T* lse = nullptr;  // training: nq values, each row's log-sum-exp of its scaled scores (what the backward needs)
};

struct AttentionLayout {
  std::int64_t d, dv;          // head dims of q/k and of v
  std::int64_t sq, sk, sv, so;  // row strides of q, k, v, o
  std::int64_t mask_stride = 0;
};

namespace detail {
inline constexpr std::int64_t kAttnBlockQ = 64, kAttnBlockK = 64;
// The backward with a thread per problem (at least kAttnBwdMinProblems of them: a constant, not
// the thread count, so the summation order, and the bits, never depend on the threads) runs on
// larger blocks, where the library's products are nearer their peak than at 64 x 64 x 64.
inline constexpr std::int64_t kAttnBwdMinProblems = 16, kAttnBwdBlockQ = 256, kAttnBwdBlockK = 128;

// Floats per SIMD vector for the tiled path (1: no such path for this type).
template <class T>
constexpr std::int64_t attn_simd_width() {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return static_cast<std::int64_t>(xsimd::batch<T>::size);
  else return 1;
}

// The register-tiled products of one (query block, key block) pair, for float and double when
// the value width is whole SIMD vectors. Both keep an R x CV tile of SIMD accumulators (rows x
// vectors) in registers while the inner index runs, so each loaded vector feeds R FMAs; 1.12-1.2x
// the library GEMM on 64 x 64 blocks, which re-packs both operands on every call.
template <class T>
struct AttnTile {
  using B = xsimd::batch<T>;
  static constexpr std::int64_t W = attn_simd_width<T>();
  // 8 rows x 2 vectors with AVX-512's 32 registers, 4 x 2 with 16: each loaded vector feeds R FMAs.
  // (4 x 4 measured 40% slower on AVX-512: GCC then re-reads the vectors from memory in every FMA.)
  static constexpr int R = sizeof(B) >= 64 ? 8 : 4, CV = 2;

  // s (rows of stride kw) = scale * q kt: q rows of stride sq, kt (d rows of stride kts) the keys
  // transposed, zero-padded to whole vectors.
  template <int RR, int CC>
  static void qk(const T* q, std::int64_t sq, const T* kt, std::int64_t kts, std::int64_t d, T scale, T* s, std::int64_t kw) {
    B acc[RR][CC];
    for (int r = 0; r < RR; ++r)
      for (int c = 0; c < CC; ++c) acc[r][c] = B(T(0));
    for (std::int64_t i = 0; i < d; ++i) {
      B kv[CC];
      for (int c = 0; c < CC; ++c) kv[c] = B::load_unaligned(kt + i * kts + c * W);
      for (int r = 0; r < RR; ++r) {
        const B qb(q[r * sq + i]);
        for (int c = 0; c < CC; ++c) acc[r][c] = xsimd::fma(qb, kv[c], acc[r][c]);
      }
    }
    const B sb(scale);
    for (int r = 0; r < RR; ++r)
      for (int c = 0; c < CC; ++c) (acc[r][c] * sb).store_unaligned(s + r * kw + c * W);
  }

  // o (rows of stride dv) += p (rows of stride kw, bk used) v (bk rows of stride sv).
  template <int RR, int CC>
  static void pv(const T* p, std::int64_t kw, std::int64_t bk, const T* v, std::int64_t sv, T* o, std::int64_t dv) {
    B acc[RR][CC];
    for (int r = 0; r < RR; ++r)
      for (int c = 0; c < CC; ++c) acc[r][c] = B::load_unaligned(o + r * dv + c * W);
    for (std::int64_t j = 0; j < bk; ++j) {
      B vv[CC];
      for (int c = 0; c < CC; ++c) vv[c] = B::load_unaligned(v + j * sv + c * W);
      for (int r = 0; r < RR; ++r) {
        const B pb(p[r * kw + j]);
        for (int c = 0; c < CC; ++c) acc[r][c] = xsimd::fma(pb, vv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < RR; ++r)
      for (int c = 0; c < CC; ++c) acc[r][c].store_unaligned(o + r * dv + c * W);
  }

  // Covers a bq x (nv vectors) area with tile(r, c) calls of compile-time sizes: full R x CV tiles,
  // then the vector tail (R x 1) and the row tail (1 x 1).
  template <class F>
  static void tiles(std::int64_t bq, std::int64_t nv, F&& tile) {
    std::int64_t r = 0;
    for (; r + R <= bq; r += R) {
      std::int64_t c = 0;
      for (; c + CV <= nv; c += CV) tile.template operator()<R, CV>(r, c);
      for (; c < nv; ++c) tile.template operator()<R, 1>(r, c);
    }
    for (; r < bq; ++r)
      for (std::int64_t c = 0; c < nv; ++c) tile.template operator()<1, 1>(r, c);
  }
};
}  // namespace detail

// Runs every problem; work is split over threads by (problem, query block). tiled = false keeps
// the plain path (each block's products through gemm), the reference the tests compare with.
template <class T>
inline void attention_kernel(const std::vector<AttentionProblem<T>>& problems, const AttentionLayout& L, T scale,
                             bool tiled = true) {
  using detail::kAttnBlockK;
  using detail::kAttnBlockQ;
  struct Item {
    std::size_t p;
    std::int64_t q0;
  };
  std::vector<Item> items;
  std::int64_t flops = 0;
  for (std::size_t p = 0; p < problems.size(); ++p) {
    for (std::int64_t q0 = 0; q0 < problems[p].nq; q0 += kAttnBlockQ) items.push_back({p, q0});
    flops += problems[p].nq * problems[p].nk * (L.d + L.dv);
  }
  const std::int64_t n_items = static_cast<std::int64_t>(items.size());
  constexpr bool simd_type = std::is_same_v<T, float> || std::is_same_v<T, double>;
  constexpr std::int64_t W = detail::attn_simd_width<T>();
  using Tile = detail::AttnTile<T>;  // only instantiated (used) for float and double
  const bool use_tiles = tiled && simd_type && L.dv % W == 0;
  const std::int64_t kw = (kAttnBlockK + W - 1) / W * W;  // a score row: whole vectors
#if defined(DITTO_COUNT_FLOPS)
  if (use_tiles) gemm_flops.fetch_add(2 * flops, std::memory_order_relaxed);  // what the two gemm calls would count
#endif
  parallel_for(n_items, flops, [&](std::int64_t lo, std::int64_t hi) {
    // per-thread workspace, allocated once per chunk
    std::vector<T> s(static_cast<std::size_t>(kAttnBlockQ * kw)), acc(static_cast<std::size_t>(kAttnBlockQ * L.dv));
    std::vector<T> m(kAttnBlockQ), l(kAttnBlockQ);
    // the tiled path's keys, transposed block by block (for each block of 64 keys, d rows of kw,
    // zero-padded; contiguous so one block's 16 KB share no cache sets): made once per problem and
    // reused by each of its query blocks this thread runs
    std::vector<T> kt;
    const AttentionProblem<T>* transposed = nullptr;
    for (std::int64_t it = lo; it < hi; ++it) {
      const auto& P = problems[items[static_cast<std::size_t>(it)].p];
      const std::int64_t q0 = items[static_cast<std::size_t>(it)].q0, bq = std::min(kAttnBlockQ, P.nq - q0);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      const T* q = P.q + q0 * L.sq;
      if (use_tiles && transposed != &P) {
        kt.assign(static_cast<std::size_t>((P.nk + kAttnBlockK - 1) / kAttnBlockK * L.d * kw), T(0));
        for (std::int64_t j = 0; j < P.nk; ++j) {
          T* col = kt.data() + (j / kAttnBlockK) * L.d * kw + j % kAttnBlockK;
          for (std::int64_t i = 0; i < L.d; ++i) col[i * kw] = P.k[j * L.sk + i];
        }
        transposed = &P;
      }
      for (std::int64_t k0 = 0; k0 < P.nk; k0 += kAttnBlockK) {
        const std::int64_t bk = std::min(kAttnBlockK, P.nk - k0);
        const std::int64_t ss = use_tiles ? kw : bk;  // row stride of s
        // s = scale * q_blk k_blk^T   (bq x bk)
        if (!use_tiles) {
          gemm<T>(false, true, bq, bk, L.d, scale, q, L.sq, P.k + k0 * L.sk, L.sk, T(0), s.data(), bk);
        } else if constexpr (simd_type) {
          const T* kb = kt.data() + (k0 / kAttnBlockK) * L.d * kw;  // this block's transposed keys
          Tile::tiles(bq, (bk + W - 1) / W, [&]<int RR, int CC>(std::int64_t r, std::int64_t c) {
            Tile::template qk<RR, CC>(q + r * L.sq, L.sq, kb + c * W, kw, L.d, scale, s.data() + r * kw + c * W, kw);
          });
        }
        for (std::int64_t i = 0; i < bq; ++i) {
          T* si = s.data() + i * ss;
          if (P.mask) {
            const std::uint8_t* mi = P.mask + (q0 + i) * L.mask_stride + k0;
            for (std::int64_t j = 0; j < bk; ++j)
              if (!mi[j]) si[j] = -std::numeric_limits<T>::infinity();
          }
          const T mx = std::max(m[i], detail::row_max(si, bk));
          if (mx == -std::numeric_limits<T>::infinity()) {  // nothing visible yet in this row
            std::fill(si, si + bk, T(0));
            continue;
          }
          // rescale what was accumulated under the old max, then add this block's weights
          const T alpha = std::exp(m[i] - mx);
          l[i] = l[i] * alpha + detail::exp_shift_sum(si, si, bk, mx);
          m[i] = mx;
          if (alpha != T(1)) {  // the max moved (most blocks after the first few leave it)
            T* ai = acc.data() + i * L.dv;
            for (std::int64_t c = 0; c < L.dv; ++c) ai[c] *= alpha;
          }
        }
        // acc += p v_blk   (bq x dv)
        if (!use_tiles) {
          gemm<T>(false, false, bq, L.dv, bk, T(1), s.data(), bk, P.v + k0 * L.sv, L.sv, T(1), acc.data(), L.dv);
        } else if constexpr (simd_type) {
          const T* vb = P.v + k0 * L.sv;
          Tile::tiles(bq, L.dv / W, [&]<int RR, int CC>(std::int64_t r, std::int64_t c) {
            Tile::template pv<RR, CC>(s.data() + r * kw, kw, bk, vb + c * W, L.sv, acc.data() + r * L.dv + c * W, L.dv);
          });
        }
      }
      for (std::int64_t i = 0; i < bq; ++i) {
        // a row that may attend to nothing gets NaN, as PyTorch's softmax of all -inf does
        const T inv = l[i] > 0 ? T(1) / l[i] : std::numeric_limits<T>::quiet_NaN();
        T* oi = P.o + (q0 + i) * L.so;
        for (std::int64_t c = 0; c < L.dv; ++c) oi[c] = acc[static_cast<std::size_t>(i * L.dv + c)] * inv;
        if (P.lse) P.lse[q0 + i] = l[i] > 0 ? m[i] + std::log(l[i]) : -std::numeric_limits<T>::infinity();
      }
    }
  });
}

// The backward of one problem: the forward's q, k, v, o and lse, the output's gradient dout (rows
// of stride so, as o), and where the gradients accumulate (+=): dq, dk, dv in the layout of q, k,
// v (strides sq, sk, sv), so a fused qkv buffer gets a fused dqkv. Problems must not share key
// rows (each problem's dk and dv are written by one thread), as no forward here shares them.
template <class T>
struct AttentionGradProblem {
  const T* q;
  const T* k;
  const T* v;
  const T* o;
  const T* dout;
  const T* lse;
  T* dq;
  T* dk;
  T* dv;
  std::int64_t nq, nk;
  const std::uint8_t* mask = nullptr;
};

// Attention's backward, blocked like its forward, in O(N) memory: the probabilities of each
// (query block, key block) pair are recomputed from q, k and lse (p = exp(s - lse)), never
// stored whole. With D_i = dout_i . o_i (the softmax's Jacobian term):
//   dv += p^T dout,  dp = dout v^T,  ds = p (dp - D),  dq += scale ds k,  dk += scale ds^T q.
// No two threads write one gradient row: with many problems (batch x heads >= 16) a thread takes
// whole problems, in one pass over their block pairs; with few, two passes split each problem,
// over key blocks (dk, dv), then over query blocks (dq), recomputing p. Either way each gradient
// row is summed in the same order for any thread count. Problems must not share query rows
// either (dq, as dk and dv), as no forward here shares them.
template <class T>
inline void attention_backward(const std::vector<AttentionGradProblem<T>>& problems, const AttentionLayout& L, T scale) {
  using detail::kAttnBlockK;
  using detail::kAttnBlockQ;
  // D_i for every query row of every problem
  std::vector<std::int64_t> d_at(problems.size() + 1, 0);
  for (std::size_t p = 0; p < problems.size(); ++p) d_at[p + 1] = d_at[p] + problems[p].nq;
  std::vector<T> Dv(static_cast<std::size_t>(d_at.back()));
  std::int64_t flops = 0;
  for (const auto& P : problems) flops += P.nq * P.nk * (L.d + L.dv);
  parallel_for(static_cast<std::int64_t>(problems.size()), d_at.back() * L.dv, [&](std::int64_t lo, std::int64_t hi) {
    for (auto p = lo; p < hi; ++p) {
      const auto& P = problems[static_cast<std::size_t>(p)];
      for (std::int64_t i = 0; i < P.nq; ++i) {
        T s = 0;
        for (std::int64_t c = 0; c < L.dv; ++c) s += P.dout[i * L.so + c] * P.o[i * L.so + c];
        Dv[static_cast<std::size_t>(d_at[static_cast<std::size_t>(p)] + i)] = s;
      }
    }
  });
  // ds (bq x bk) for one block pair, from scratch s and dp: p = exp(scale q k^T - lse), masked.
  auto block_ds = [&](const AttentionGradProblem<T>& P, const T* D, std::int64_t q0, std::int64_t bq, std::int64_t k0, std::int64_t bk,
                      T* s, T* dp) {
    gemm<T>(false, true, bq, bk, L.d, scale, P.q + q0 * L.sq, L.sq, P.k + k0 * L.sk, L.sk, T(0), s, bk);
    gemm<T>(false, true, bq, bk, L.dv, T(1), P.dout + q0 * L.so, L.so, P.v + k0 * L.sv, L.sv, T(0), dp, bk);
    for (std::int64_t i = 0; i < bq; ++i) {
      const T lse = P.lse[q0 + i], Di = D[q0 + i];
      T* si = s + i * bk;
      T* di = dp + i * bk;
      if (lse == -std::numeric_limits<T>::infinity()) {  // a row that sees nothing: no gradient
        std::fill(si, si + bk, T(0));
        std::fill(di, di + bk, T(0));
        continue;
      }
      detail::exp_shift_sum(si, si, bk, lse);  // s now holds p (in SIMD lanes)
      if (P.mask) {
        const std::uint8_t* mi = P.mask + (q0 + i) * L.mask_stride + k0;
        for (std::int64_t j = 0; j < bk; ++j)
          if (!mi[j]) si[j] = T(0);
      }
      for (std::int64_t j = 0; j < bk; ++j) di[j] = si[j] * (di[j] - Di);  // dp now holds ds
    }
  };
  if (static_cast<std::int64_t>(problems.size()) >= detail::kAttnBwdMinProblems) {
    // Enough problems to share out: one thread per problem and one pass over its (key block,
    // query block) pairs, five products per pair (dq accumulates in place, in the same order at
    // any thread count), on blocks large enough for the library's kernels.
    parallel_for(static_cast<std::int64_t>(problems.size()), 2 * flops, [&](std::int64_t lo, std::int64_t hi) {
      using detail::kAttnBwdBlockK;
      using detail::kAttnBwdBlockQ;
      // a last block up to a quarter longer takes the rest (257 keys: 128 + 129, not 128 + 128 + 1)
      auto block = [](std::int64_t at, std::int64_t n, std::int64_t b) { return n - at <= b + b / 4 ? n - at : b; };
      const std::size_t most = static_cast<std::size_t>((kAttnBwdBlockQ + kAttnBwdBlockQ / 4) * (kAttnBwdBlockK + kAttnBwdBlockK / 4));
      std::vector<T> s(most), ds(most);
      for (auto p = lo; p < hi; ++p) {
        const auto& P = problems[static_cast<std::size_t>(p)];
        const T* D = Dv.data() + d_at[static_cast<std::size_t>(p)];
        for (std::int64_t k0 = 0, bk = 0; k0 < P.nk; k0 += bk) {
          bk = block(k0, P.nk, kAttnBwdBlockK);
          for (std::int64_t q0 = 0, bq = 0; q0 < P.nq; q0 += bq) {
            bq = block(q0, P.nq, kAttnBwdBlockQ);
            block_ds(P, D, q0, bq, k0, bk, s.data(), ds.data());
            gemm<T>(true, false, bk, L.dv, bq, T(1), s.data(), bk, P.dout + q0 * L.so, L.so, T(1), P.dv + k0 * L.sv, L.sv);
            gemm<T>(true, false, bk, L.d, bq, scale, ds.data(), bk, P.q + q0 * L.sq, L.sq, T(1), P.dk + k0 * L.sk, L.sk);
            gemm<T>(false, false, bq, L.d, bk, scale, ds.data(), bk, P.k + k0 * L.sk, L.sk, T(1), P.dq + q0 * L.sq, L.sq);
          }
        }
      }
    });
    return;
  }
  // Few problems (one long sequence, few heads): split each over threads by blocks instead.
  struct Item {
    std::size_t p;
    std::int64_t at;
  };
  std::vector<Item> kitems, qitems;
  for (std::size_t p = 0; p < problems.size(); ++p) {
    for (std::int64_t k0 = 0; k0 < problems[p].nk; k0 += kAttnBlockK) kitems.push_back({p, k0});
    for (std::int64_t q0 = 0; q0 < problems[p].nq; q0 += kAttnBlockQ) qitems.push_back({p, q0});
  }
  // pass 1: each key block's dk, dv over every query block
  parallel_for(static_cast<std::int64_t>(kitems.size()), 2 * flops, [&](std::int64_t lo, std::int64_t hi) {
    std::vector<T> s(kAttnBlockQ * kAttnBlockK), ds(kAttnBlockQ * kAttnBlockK), dk(kAttnBlockK * L.d), dv(kAttnBlockK * L.dv);
    for (auto it = lo; it < hi; ++it) {
      const auto& P = problems[kitems[static_cast<std::size_t>(it)].p];
      const T* D = Dv.data() + d_at[kitems[static_cast<std::size_t>(it)].p];
      const std::int64_t k0 = kitems[static_cast<std::size_t>(it)].at, bk = std::min(kAttnBlockK, P.nk - k0);
      std::fill(dk.begin(), dk.end(), T(0));
      std::fill(dv.begin(), dv.end(), T(0));
      for (std::int64_t q0 = 0; q0 < P.nq; q0 += kAttnBlockQ) {
        const std::int64_t bq = std::min(kAttnBlockQ, P.nq - q0);
        block_ds(P, D, q0, bq, k0, bk, s.data(), ds.data());
        gemm<T>(true, false, bk, L.dv, bq, T(1), s.data(), bk, P.dout + q0 * L.so, L.so, T(1), dv.data(), L.dv);
        gemm<T>(true, false, bk, L.d, bq, scale, ds.data(), bk, P.q + q0 * L.sq, L.sq, T(1), dk.data(), L.d);
      }
      for (std::int64_t j = 0; j < bk; ++j) {
        for (std::int64_t c = 0; c < L.d; ++c) P.dk[(k0 + j) * L.sk + c] += dk[static_cast<std::size_t>(j * L.d + c)];
        for (std::int64_t c = 0; c < L.dv; ++c) P.dv[(k0 + j) * L.sv + c] += dv[static_cast<std::size_t>(j * L.dv + c)];
      }
    }
  });
  // pass 2: each query block's dq over every key block
  parallel_for(static_cast<std::int64_t>(qitems.size()), 2 * flops, [&](std::int64_t lo, std::int64_t hi) {
    std::vector<T> s(kAttnBlockQ * kAttnBlockK), ds(kAttnBlockQ * kAttnBlockK), dq(kAttnBlockQ * L.d);
    for (auto it = lo; it < hi; ++it) {
      const auto& P = problems[qitems[static_cast<std::size_t>(it)].p];
      const T* D = Dv.data() + d_at[qitems[static_cast<std::size_t>(it)].p];
      const std::int64_t q0 = qitems[static_cast<std::size_t>(it)].at, bq = std::min(kAttnBlockQ, P.nq - q0);
      std::fill(dq.begin(), dq.end(), T(0));
      for (std::int64_t k0 = 0; k0 < P.nk; k0 += kAttnBlockK) {
        const std::int64_t bk = std::min(kAttnBlockK, P.nk - k0);
        block_ds(P, D, q0, bq, k0, bk, s.data(), ds.data());
        gemm<T>(false, false, bq, L.d, bk, scale, ds.data(), bk, P.k + k0 * L.sk, L.sk, T(1), dq.data(), L.d);
      }
      for (std::int64_t i = 0; i < bq; ++i)
        for (std::int64_t c = 0; c < L.d; ++c) P.dq[(q0 + i) * L.sq + c] += dq[static_cast<std::size_t>(i * L.d + c)];
    }
  });
}

// The plain reference of attention_backward (tests): the whole softmax of each problem, held.
template <class T>
inline void attention_backward_reference(const std::vector<AttentionGradProblem<T>>& problems, const AttentionLayout& L, T scale) {
  for (const auto& P : problems) {
    std::vector<T> p(static_cast<std::size_t>(P.nq * P.nk)), dp(p.size());
    for (std::int64_t i = 0; i < P.nq; ++i) {
      T mx = -std::numeric_limits<T>::infinity();
      for (std::int64_t j = 0; j < P.nk; ++j) {
        T s = 0;
        for (std::int64_t c = 0; c < L.d; ++c) s += P.q[i * L.sq + c] * P.k[j * L.sk + c];
        s *= scale;
        if (P.mask && !P.mask[i * L.mask_stride + j]) s = -std::numeric_limits<T>::infinity();
        p[static_cast<std::size_t>(i * P.nk + j)] = s;
        mx = std::max(mx, s);
      }
      T sum = 0;
      for (std::int64_t j = 0; j < P.nk; ++j) sum += (p[static_cast<std::size_t>(i * P.nk + j)] = mx == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(p[static_cast<std::size_t>(i * P.nk + j)] - mx));
      for (std::int64_t j = 0; j < P.nk; ++j) p[static_cast<std::size_t>(i * P.nk + j)] = sum > 0 ? p[static_cast<std::size_t>(i * P.nk + j)] / sum : T(0);
      T D = 0;
      for (std::int64_t j = 0; j < P.nk; ++j) {
        T g = 0;
        for (std::int64_t c = 0; c < L.dv; ++c) g += P.dout[i * L.so + c] * P.v[j * L.sv + c];
        dp[static_cast<std::size_t>(i * P.nk + j)] = g;
        D += g * p[static_cast<std::size_t>(i * P.nk + j)];
      }
      for (std::int64_t j = 0; j < P.nk; ++j) {
        const T pij = p[static_cast<std::size_t>(i * P.nk + j)], ds = pij * (dp[static_cast<std::size_t>(i * P.nk + j)] - D);
        for (std::int64_t c = 0; c < L.dv; ++c) P.dv[j * L.sv + c] += pij * P.dout[i * L.so + c];
        for (std::int64_t c = 0; c < L.d; ++c) {
          P.dq[i * L.sq + c] += scale * ds * P.k[j * L.sk + c];
          P.dk[j * L.sk + c] += scale * ds * P.q[i * L.sq + c];
        }
      }
    }
  }
}

// q: (B, H, N, D), k: (B, H, M, D), v: (B, H, M, Dv) -> (B, H, N, Dv), like
// torch.nn.functional.scaled_dot_product_attention. mask: (B or 1, H or 1, N, M), nonzero =
// attend. scale < 0 means 1 / sqrt(D).
template <class T>
inline Tensor<T> scaled_dot_product_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                              const Tensor<std::uint8_t>* mask = nullptr, double scale = -1) {
  using ditto::detail::cat;
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.size(0) != q.size(0) || v.size(0) != q.size(0) ||
      k.size(1) != q.size(1) || v.size(1) != q.size(1) || k.size(3) != q.size(3) || v.size(2) != k.size(2))
    throw ShapeError(cat("scaled_dot_product_attention: expected q (B,H,N,D), k (B,H,M,D), v (B,H,M,Dv), got ",
                         shape_str(q.shape()), ", ", shape_str(k.shape()), ", ", shape_str(v.shape())));
  const std::int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3), M = k.size(2), Dv = v.size(3);
  if (mask && (mask->dim() != 4 || (mask->size(0) != 1 && mask->size(0) != B) ||
               (mask->size(1) != 1 && mask->size(1) != H) || mask->size(2) != N || mask->size(3) != M))
    throw ShapeError(cat("scaled_dot_product_attention: mask must be (B or 1, H or 1, ", N, ", ", M, "), got ",
                         shape_str(mask->shape())));
  Tensor<T> o = Tensor<T>::empty({B, H, N, Dv});
  std::vector<AttentionProblem<T>> problems;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t bh = b * H + h;
      const std::uint8_t* mk = nullptr;
      if (mask) mk = mask->data() + ((mask->size(0) == 1 ? 0 : b) * mask->size(1) + (mask->size(1) == 1 ? 0 : h)) * N * M;
      problems.push_back({q.data() + bh * N * D, k.data() + bh * M * D, v.data() + bh * M * Dv, o.data() + bh * N * Dv, N, M, mk});
    }
  attention_kernel(problems, AttentionLayout{D, Dv, D, D, Dv, Dv, M},
                   static_cast<T>(scale < 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : scale));
  return o;
}

// Packed sequences: q (Tq, H, D), k (Tk, H, D), v (Tk, H, Dv), where sequence s owns query rows
// [cu_q[s], cu_q[s+1]) and key rows [cu_k[s], cu_k[s+1]) (flash-attn's cu_seqlens). Each sequence
// attends only to itself. Returns (Tq, H, Dv).
template <class T>
inline Tensor<T> packed_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                  const std::vector<std::int64_t>& cu_q, const std::vector<std::int64_t>& cu_k,
                                  double scale = -1) {
  using ditto::detail::cat;
  if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3 || k.size(1) != q.size(1) || v.size(1) != q.size(1) ||
      k.size(2) != q.size(2) || v.size(0) != k.size(0))
    throw ShapeError(cat("packed_attention: expected q (Tq,H,D), k (Tk,H,D), v (Tk,H,Dv), got ", shape_str(q.shape()),
                         ", ", shape_str(k.shape()), ", ", shape_str(v.shape())));
  auto check = [](const std::vector<std::int64_t>& cu, std::int64_t total, const char* which) {
    bool ok = cu.size() >= 2 && cu.front() == 0 && cu.back() == total;
    for (std::size_t i = 1; ok && i < cu.size(); ++i) ok = cu[i] >= cu[i - 1];
    if (!ok)
      throw ShapeError(cat("packed_attention: ", which, " must rise from 0 to ", total, " (the packed length), got ",
                           shape_str(cu)));
  };
  check(cu_q, q.size(0), "cu_seqlens_q");
  check(cu_k, k.size(0), "cu_seqlens_k");
  if (cu_q.size() != cu_k.size())
    throw ShapeError(cat("packed_attention: ", cu_q.size() - 1, " query sequences but ", cu_k.size() - 1, " key sequences"));
  const std::int64_t H = q.size(1), D = q.size(2), Dv = v.size(2);
  Tensor<T> o = Tensor<T>::empty({q.size(0), H, Dv});
  std::vector<AttentionProblem<T>> problems;
  for (std::size_t s = 0; s + 1 < cu_q.size(); ++s)
    for (std::int64_t h = 0; h < H; ++h)
      problems.push_back({q.data() + (cu_q[s] * H + h) * D, k.data() + (cu_k[s] * H + h) * D,
                          v.data() + (cu_k[s] * H + h) * Dv, o.data() + (cu_q[s] * H + h) * Dv, cu_q[s + 1] - cu_q[s],
                          cu_k[s + 1] - cu_k[s], nullptr});
  attention_kernel(problems, AttentionLayout{D, Dv, H * D, H * D, H * Dv, H * Dv, 0},
                   static_cast<T>(scale < 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : scale));
  return o;
}

// Multi-head self-attention as timm's Attention: qkv = Linear(dim, 3 dim), optional LayerNorm of
// q and k over the head dim (qk_norm), attention, proj = Linear(dim, dim).
// x: (B, N, dim) -> (B, N, dim); forward_packed: x (T, dim) with cu_seqlens -> (T, dim).
template <class T = float>
struct Attention {
  std::int64_t dim = 0, num_heads = 1;
  bool qk_norm = false;
  double scale = 0;
  Linear<T> qkv, proj;
  LayerNorm<T> q_norm, k_norm;

  Attention() = default;
  Attention(std::int64_t dim_, std::int64_t heads, bool qkv_bias = true, bool qk_norm_ = false, double norm_eps = 1e-6)
      : dim(dim_), num_heads(heads), qk_norm(qk_norm_), qkv(dim_, 3 * dim_, qkv_bias), proj(dim_, dim_) {
    if (heads <= 0 || dim_ % heads != 0)
      throw ArgumentError(ditto::detail::cat("Attention(dim=", dim_, ", num_heads=", heads,
                                             "): dim must be divisible by num_heads"));
    scale = 1.0 / std::sqrt(static_cast<double>(dim_ / heads));
    if (qk_norm) q_norm = LayerNorm<T>(dim_ / heads, norm_eps), k_norm = LayerNorm<T>(dim_ / heads, norm_eps);  // two tensors each: a copy would share storage
  }

  template <class V>
  void visit(V& v) {
    v("qkv", qkv);
    if (qk_norm) {
      v("q_norm", q_norm);
      v("k_norm", k_norm);
    }
    v("proj", proj);
  }

  // mask (optional): (B or 1, H or 1, N, N), nonzero where query n may attend to key m.
  Tensor<T> forward(const Tensor<T>& x, const Tensor<std::uint8_t>* mask = nullptr) const {
    if (x.dim() != 3 || x.size(2) != dim)
      throw ShapeError(ditto::detail::cat("Attention(dim=", dim, "): expected x (B, N, ", dim, "), got shape ",
                                          shape_str(x.shape())));
    const std::int64_t B = x.size(0), N = x.size(1);
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * N);
    return forward_packed(x.reshape({B * N, dim}), cu, mask).reshape({B, N, dim});
  }

  // x: (T, dim) holding sequences [cu[s], cu[s+1]); each attends only to itself. A mask, if
  // given, is (S or 1, H or 1, n, n) for sequences that all have length n (forward's case).
  Tensor<T> forward_packed(const Tensor<T>& x, const std::vector<std::int64_t>& cu,
                           const Tensor<std::uint8_t>* mask = nullptr) const {
    if (x.dim() != 2 || x.size(1) != dim)
      throw ShapeError(ditto::detail::cat("Attention(dim=", dim, ").forward_packed: expected x (T, ", dim, "), got shape ",
                                          shape_str(x.shape())));
    bool cu_ok = cu.size() >= 2 && cu.front() == 0 && cu.back() == x.size(0);
    for (std::size_t s = 1; cu_ok && s < cu.size(); ++s) cu_ok = cu[s] >= cu[s - 1];
    if (!cu_ok)
      throw ShapeError(ditto::detail::cat("Attention.forward_packed: cu_seqlens must rise from 0 to ", x.size(0),
                                          " (the packed length), got ", shape_str(cu)));
    if (mask) {  // one (n, n) mask per sequence (or one for all): every sequence must have length n
      const std::int64_t n = cu[1] - cu[0], S = static_cast<std::int64_t>(cu.size()) - 1;
      for (std::size_t s = 1; s + 1 < cu.size(); ++s)
        if (cu[s + 1] - cu[s] != n)
          throw ShapeError("Attention.forward_packed: a mask needs sequences of one length, got cu_seqlens " + shape_str(cu));
      if (mask->dim() != 4 || (mask->size(0) != 1 && mask->size(0) != S) || (mask->size(1) != 1 && mask->size(1) != num_heads) ||
          mask->size(2) != n || mask->size(3) != n)
        throw ShapeError(ditto::detail::cat("Attention.forward_packed: mask must be (", S, " or 1, ", num_heads, " or 1, ", n,
                                            ", ", n, "), got ", shape_str(mask->shape())));
    }
    Tensor<T> out = Tensor<T>::empty({x.size(0), dim});
    Tensor<T> qkv_buf = Tensor<T>::empty({x.size(0), 3 * dim}), o_buf = Tensor<T>::empty({x.size(0), dim});
    forward_packed_into(x.data(), cu, out.data(), qkv_buf.data(), o_buf.data(), mask);
    return out;
  }

  // Attention within equal-length sequences laid out with a row stride: sequence s is rows
  // starts[s], starts[s] + stride, ..., (length of them) of x (rows x dim). Video models use it to
  // attend over frames at one spatial position (stride = tokens per frame) without transposing.
  // Buffers as forward_packed_into's; out may alias x.
  void forward_strided_into(const T* x, std::int64_t rows, const std::vector<std::int64_t>& starts, std::int64_t length,
                            std::int64_t stride, T* out, T* qkv_buf, T* o_buf) const {
    const std::int64_t H = num_heads, D = dim / num_heads, C = dim;
    for (auto s : starts)
      if (s < 0 || length < 1 || stride < 1 || s + (length - 1) * stride >= rows)
        throw ShapeError(ditto::detail::cat("Attention.forward_strided_into: a sequence from row ", s, " of ", length, " rows ", stride,
                                            " apart runs past the ", rows, " rows"));
    qkv.forward_into(x, qkv_buf, rows);
    if (qk_norm)
      parallel_for(rows, rows * C * 8, [&](std::int64_t lo, std::int64_t hi) {
        for (auto t = lo; t < hi; ++t) {
          T* row = qkv_buf + t * 3 * C;
          q_norm.forward_into(row, row, H);
          k_norm.forward_into(row + C, row + C, H);
        }
      });
    std::vector<AttentionProblem<T>> problems;
    problems.reserve(starts.size() * static_cast<std::size_t>(H));
    for (auto s : starts)
      for (std::int64_t h = 0; h < H; ++h) {
        const T* base = qkv_buf + s * 3 * C + h * D;
        problems.push_back({base, base + C, base + 2 * C, o_buf + s * C + h * D, length, length, nullptr});
      }
    attention_kernel(problems, AttentionLayout{D, D, stride * 3 * C, stride * 3 * C, stride * 3 * C, stride * C, 0},
                     static_cast<T>(scale));
    proj.forward_into(o_buf, out, rows);
  }

  // forward_packed into caller memory, for models that keep their buffers across calls: x and
  // out are (cu.back(), dim) rows (out may alias x), qkv_buf holds cu.back() x 3 dim values,
  // o_buf cu.back() x dim. cu (and the mask) as forward_packed checks them.
  void forward_packed_into(const T* x, const std::vector<std::int64_t>& cu, T* out, T* qkv_buf, T* o_buf,
                           const Tensor<std::uint8_t>* mask = nullptr) const {
    const std::int64_t Tn = cu.back(), H = num_heads, D = dim / num_heads, C = dim;
    qkv.forward_into(x, qkv_buf, Tn);  // (T, 3, H, D): q, k, v of a token side by side
    if (qk_norm)
      parallel_for(Tn, Tn * C * 8, [&](std::int64_t lo, std::int64_t hi) {
        for (auto t = lo; t < hi; ++t) {
          T* row = qkv_buf + t * 3 * C;
          q_norm.forward_into(row, row, H);  // in place: H rows of D
          k_norm.forward_into(row + C, row + C, H);
        }
      });
    // o: (T, H, D), heads side by side, as proj expects
    std::vector<AttentionProblem<T>> problems;
    problems.reserve((cu.size() - 1) * static_cast<std::size_t>(H));
    for (std::size_t s = 0; s + 1 < cu.size(); ++s)
      for (std::int64_t h = 0; h < H; ++h) {
        const T* base = qkv_buf + cu[s] * 3 * C + h * D;
        const std::int64_t n = cu[s + 1] - cu[s];
        const std::uint8_t* mk = nullptr;
        if (mask)
          mk = mask->data() + ((mask->size(0) == 1 ? 0 : static_cast<std::int64_t>(s)) * mask->size(1) +
                               (mask->size(1) == 1 ? 0 : h)) * n * n;
        problems.push_back({base, base + C, base + 2 * C, o_buf + cu[s] * C + h * D, n, n, mk});
      }
    const std::int64_t mask_stride = mask ? cu[1] - cu[0] : 0;
    attention_kernel(problems, AttentionLayout{D, D, 3 * C, 3 * C, 3 * C, C, mask_stride}, static_cast<T>(scale));
    proj.forward_into(o_buf, out, Tn);
  }

  // Training. Which rows form the sequences: packed (sequence s is rows [cu[s], cu[s+1]), the
  // layout of forward_packed) or strided (sequence s is rows starts[s] + i stride, i < length, as
  // forward_strided_into). Every sequence attends only to itself.
  struct Sequences {
    std::vector<std::int64_t> starts, lengths;
    std::int64_t stride = 1;
    static Sequences packed(const std::vector<std::int64_t>& cu) {
      Sequences s;
      for (std::size_t i = 0; i + 1 < cu.size(); ++i) s.starts.push_back(cu[i]), s.lengths.push_back(cu[i + 1] - cu[i]);
      return s;
    }
    static Sequences strided(const std::vector<std::int64_t>& starts, std::int64_t length, std::int64_t stride) {
      Sequences s;
      s.starts = starts, s.lengths.assign(starts.size(), length), s.stride = stride;
      return s;
    }
  };
  // What backward reads: the fused q, k, v (after qk_norm), the attention output before proj, the
  // logsumexp of every (sequence, head, query) (sequence s, head h, query i at (off[s] H + h n_s + i),
  // off[s] the rows before s); with qk_norm, q and k before their norms and the norms' statistics.
  struct Acts {
    Tensor<T> qkv, o, lse, q_raw, k_raw, q_mean, q_rstd, k_mean, k_rstd;
  };

  // As forward_packed_into / forward_strided_into over `rows` rows of x, keeping what backward
  // needs in a. mask: packed sequences of one length n only, as forward_packed. out must not
  // alias x (the backward reads x).
  void forward_train(const T* x, std::int64_t rows, const Sequences& seq, T* out, Acts& a,
                     const Tensor<std::uint8_t>* mask = nullptr) const {
    const std::int64_t H = num_heads, D = dim / num_heads, C = dim;
    check_sequences(seq, rows, mask, "forward_train");
    a.qkv = Tensor<T>::empty({rows, 3 * C}), a.o = Tensor<T>::empty({rows, C}), a.lse = Tensor<T>::empty({rows * H});
    qkv.forward_into(x, a.qkv.data(), rows);
    if (qk_norm) {  // per head: LayerNorm over D of q and of k, keeping the raw rows and statistics
      a.q_raw = Tensor<T>::empty({rows, C}), a.k_raw = Tensor<T>::empty({rows, C});
      for (auto* t : {&a.q_mean, &a.q_rstd, &a.k_mean, &a.k_rstd}) *t = Tensor<T>::empty({rows * H});
      Tensor<T> qn = Tensor<T>::empty({rows, C}), kn = Tensor<T>::empty({rows, C});
      for (std::int64_t t = 0; t < rows; ++t) {
        std::copy(a.qkv.data() + t * 3 * C, a.qkv.data() + t * 3 * C + C, a.q_raw.data() + t * C);
        std::copy(a.qkv.data() + t * 3 * C + C, a.qkv.data() + t * 3 * C + 2 * C, a.k_raw.data() + t * C);
      }
      q_norm.forward_train(a.q_raw.data(), qn.data(), rows * H, a.q_mean.data(), a.q_rstd.data());
      k_norm.forward_train(a.k_raw.data(), kn.data(), rows * H, a.k_mean.data(), a.k_rstd.data());
      for (std::int64_t t = 0; t < rows; ++t) {
        std::copy(qn.data() + t * C, qn.data() + (t + 1) * C, a.qkv.data() + t * 3 * C);
        std::copy(kn.data() + t * C, kn.data() + (t + 1) * C, a.qkv.data() + t * 3 * C + C);
      }
    }
    std::vector<AttentionProblem<T>> problems;
    std::int64_t off = 0;
    for (std::size_t s = 0; s < seq.starts.size(); ++s) {
      const std::int64_t n = seq.lengths[s];
      for (std::int64_t h = 0; h < H; ++h) {
        const T* base = a.qkv.data() + seq.starts[s] * 3 * C + h * D;
        problems.push_back({base, base + C, base + 2 * C, a.o.data() + seq.starts[s] * C + h * D, n, n, mask_of(mask, s, h, n),
                            a.lse.data() + off * H + h * n});
      }
      off += n;
    }
    attention_kernel(problems, layout(seq, mask), static_cast<T>(scale));
    proj.forward_into(a.o.data(), out, rows);
  }

  // dout (rows, dim): the gradient of out. Accumulates g (qkv, proj, q_norm, k_norm) and dx
  // (rows, dim; null: not needed), reading x and what forward_train kept.
  void backward(T* dx, Attention& g, const T* dout, const T* x, std::int64_t rows, const Sequences& seq, const Acts& a,
                const Tensor<std::uint8_t>* mask = nullptr) const {
    const std::int64_t H = num_heads, D = dim / num_heads, C = dim;
    check_sequences(seq, rows, mask, "backward");
    if (a.qkv.numel() != rows * 3 * C || a.lse.numel() != rows * H)
      throw ShapeError("Attention.backward: the activations were not made by forward_train on these rows");
    Tensor<T> d_o({rows, C}), dqkv({rows, 3 * C});
    proj.backward_into(d_o.data(), g.proj, dout, a.o.data(), rows);
    std::vector<AttentionGradProblem<T>> problems;
    std::int64_t off = 0;
    for (std::size_t s = 0; s < seq.starts.size(); ++s) {
      const std::int64_t n = seq.lengths[s];
      for (std::int64_t h = 0; h < H; ++h) {
        const std::int64_t at = seq.starts[s] * 3 * C + h * D, ot = seq.starts[s] * C + h * D;
        problems.push_back({a.qkv.data() + at, a.qkv.data() + at + C, a.qkv.data() + at + 2 * C, a.o.data() + ot, d_o.data() + ot,
                            a.lse.data() + off * H + h * n, dqkv.data() + at, dqkv.data() + at + C, dqkv.data() + at + 2 * C, n, n,
                            mask_of(mask, s, h, n)});
      }
      off += n;
    }
    attention_backward(problems, layout(seq, mask), static_cast<T>(scale));
    if (qk_norm) {  // through the norms: gather dq and dk, LayerNorm backward, scatter back
      Tensor<T> dqn = Tensor<T>::empty({rows, C}), dkn = Tensor<T>::empty({rows, C}), dq({rows, C}), dk({rows, C});
      for (std::int64_t t = 0; t < rows; ++t) {
        std::copy(dqkv.data() + t * 3 * C, dqkv.data() + t * 3 * C + C, dqn.data() + t * C);
        std::copy(dqkv.data() + t * 3 * C + C, dqkv.data() + t * 3 * C + 2 * C, dkn.data() + t * C);
      }
      q_norm.backward_into(dq.data(), g.q_norm, dqn.data(), a.q_raw.data(), a.q_mean.data(), a.q_rstd.data(), rows * H);
      k_norm.backward_into(dk.data(), g.k_norm, dkn.data(), a.k_raw.data(), a.k_mean.data(), a.k_rstd.data(), rows * H);
      for (std::int64_t t = 0; t < rows; ++t) {
        std::copy(dq.data() + t * C, dq.data() + (t + 1) * C, dqkv.data() + t * 3 * C);
        std::copy(dk.data() + t * C, dk.data() + (t + 1) * C, dqkv.data() + t * 3 * C + C);
      }
    }
    qkv.backward_into(dx, g.qkv, dqkv.data(), x, rows);
  }

 private:
  // The sequences must fit the rows and cover each row exactly once: every row's output and
  // logsumexp is written, and no two problems share a gradient row (attention_backward's rule).
  void check_sequences(const Sequences& seq, std::int64_t rows, const Tensor<std::uint8_t>* mask, const char* what) const {
    bool ok = seq.starts.size() == seq.lengths.size() && seq.stride >= 1;
    for (std::size_t s = 0; ok && s < seq.starts.size(); ++s)
      ok = seq.starts[s] >= 0 && seq.lengths[s] >= 0 && (seq.lengths[s] == 0 || seq.starts[s] + (seq.lengths[s] - 1) * seq.stride < rows);
    if (!ok) throw ShapeError(ditto::detail::cat("Attention.", what, ": a sequence runs past the ", rows, " rows"));
    std::vector<char> seen(static_cast<std::size_t>(rows), 0);
    std::int64_t covered = 0;
    for (std::size_t s = 0; s < seq.starts.size(); ++s)
      for (std::int64_t i = 0; i < seq.lengths[s]; ++i) {
        char& v = seen[static_cast<std::size_t>(seq.starts[s] + i * seq.stride)];
        if (v) throw ShapeError(ditto::detail::cat("Attention.", what, ": row ", seq.starts[s] + i * seq.stride, " is in two sequences"));
        v = 1, ++covered;
      }
    if (covered != rows)
      throw ShapeError(ditto::detail::cat("Attention.", what, ": the sequences cover ", covered, " of the ", rows, " rows (each row must be in one)"));
    if (mask) {
      const std::int64_t S = static_cast<std::int64_t>(seq.starts.size()), n = S ? seq.lengths[0] : 0;
      bool same = seq.stride == 1;
      for (auto l : seq.lengths) same = same && l == n;
      if (!same || mask->dim() != 4 || (mask->size(0) != 1 && mask->size(0) != S) || (mask->size(1) != 1 && mask->size(1) != num_heads) ||
          mask->size(2) != n || mask->size(3) != n)
        throw ShapeError(ditto::detail::cat("Attention.", what, ": a mask needs packed sequences of one length n and the shape (", S,
                                            " or 1, ", num_heads, " or 1, n, n), got ", shape_str(mask->shape())));
    }
  }
  static const std::uint8_t* mask_of(const Tensor<std::uint8_t>* mask, std::size_t s, std::int64_t h, std::int64_t n) {
    if (!mask) return nullptr;
    return mask->data() + ((mask->size(0) == 1 ? 0 : static_cast<std::int64_t>(s)) * mask->size(1) + (mask->size(1) == 1 ? 0 : h)) * n * n;
  }
  AttentionLayout layout(const Sequences& seq, const Tensor<std::uint8_t>* mask) const {
    const std::int64_t D = dim / num_heads, C = dim, st = seq.stride;
    return AttentionLayout{D, D, st * 3 * C, st * 3 * C, st * 3 * C, st * C, mask ? mask->size(3) : 0};
  }
};

// Multi-head attention of B batches whose queries and keys come from different rows (cross-
// attention, attention pooling): batch b's queries are nq rows of q (row stride sq, batch stride
// q_batch: 0 shares one query set across the batch) attending to its nk rows of kv, each row k
// then v side by side (2 H D wide, as Linear(context_dim, 2 dim) makes them). o: (B, nq, H D).
// lse (B H nq, optional): training, what heads_attention_backward reads.
template <class T>
inline void heads_attention(const T* q, std::int64_t sq, std::int64_t q_batch, const T* kv, T* o, std::int64_t B, std::int64_t nq,
                            std::int64_t nk, std::int64_t H, std::int64_t D, T* lse = nullptr) {
  const std::int64_t C = H * D;
  std::vector<AttentionProblem<T>> problems;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const T* kb = kv + b * nk * 2 * C + h * D;
      problems.push_back({q + b * q_batch + h * D, kb, kb + C, o + b * nq * C + h * D, nq, nk, nullptr, lse ? lse + (b * H + h) * nq : nullptr});
    }
  attention_kernel(problems, AttentionLayout{D, D, sq, 2 * C, 2 * C, C, 0}, static_cast<T>(1.0 / std::sqrt(static_cast<double>(D))));
}
// Its backward: accumulates dq (q's layout, batch stride q_batch > 0: each batch its own rows)
// and dkv (kv's layout) from dout (o's layout) and what the forward kept (q, kv, o, lse).
template <class T>
inline void heads_attention_backward(T* dq, T* dkv, const T* q, std::int64_t sq, std::int64_t q_batch, const T* kv, const T* o,
                                     const T* dout, const T* lse, std::int64_t B, std::int64_t nq, std::int64_t nk, std::int64_t H,
                                     std::int64_t D) {
  if (B > 1 && q_batch < (nq - 1) * sq + H * D)
    throw ArgumentError("heads_attention_backward: batches must not share query rows (give each batch its own copy)");
  const std::int64_t C = H * D;
  std::vector<AttentionGradProblem<T>> problems;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t kb = b * nk * 2 * C + h * D, qb = b * q_batch + h * D, ob = b * nq * C + h * D;
      problems.push_back({q + qb, kv + kb, kv + kb + C, o + ob, dout + ob, lse + (b * H + h) * nq, dq + qb, dkv + kb, dkv + kb + C, nq, nk,
                          nullptr});
    }
  attention_backward(problems, AttentionLayout{D, D, sq, 2 * C, 2 * C, C, 0}, static_cast<T>(1.0 / std::sqrt(static_cast<double>(D))));
}

// Self-attention of one sequence of L tokens whose q, k and v sit in rows of 3 H ch values
// (a 1x1 convolution's output, token-major): guided-diffusion's legacy order (per head: its q, k,
// v side by side) or the new order (every head's q, then every k, then every v). o: (L, H ch),
// heads side by side. lse (H L, optional): training, what qkv_rows_attention_backward reads.
template <class T>
inline void qkv_rows_attention(const T* qkv, T* o, std::int64_t L, std::int64_t H, std::int64_t ch, bool new_order, T* lse = nullptr) {
  const std::int64_t C = H * ch;
  std::vector<AttentionProblem<T>> problems;
  for (std::int64_t h = 0; h < H; ++h) {
    const T* q = qkv + (new_order ? h * ch : h * 3 * ch);
    problems.push_back({q, q + (new_order ? C : ch), q + (new_order ? 2 * C : 2 * ch), o + h * ch, L, L, nullptr, lse ? lse + h * L : nullptr});
  }
  attention_kernel(problems, AttentionLayout{ch, ch, 3 * C, 3 * C, 3 * C, C, 0}, static_cast<T>(1.0 / std::sqrt(static_cast<double>(ch))));
}
// Its backward: accumulates dqkv (qkv's layout) from dout (o's layout).
template <class T>
inline void qkv_rows_attention_backward(T* dqkv, const T* qkv, const T* o, const T* dout, const T* lse, std::int64_t L, std::int64_t H,
                                        std::int64_t ch, bool new_order) {
  const std::int64_t C = H * ch, kq = new_order ? C : ch;
  std::vector<AttentionGradProblem<T>> problems;
  for (std::int64_t h = 0; h < H; ++h) {
    const std::int64_t at = new_order ? h * ch : h * 3 * ch;
    problems.push_back({qkv + at, qkv + at + kq, qkv + at + 2 * kq, o + h * ch, dout + h * ch, lse + h * L, dqkv + at, dqkv + at + kq,
                        dqkv + at + 2 * kq, L, L, nullptr});
  }
  attention_backward(problems, AttentionLayout{ch, ch, 3 * C, 3 * C, 3 * C, C, 0}, static_cast<T>(1.0 / std::sqrt(static_cast<double>(ch))));
}

// Cross-attention: queries from x (B, N, dim), keys and values from a context (B, M, context_dim):
// q = Linear(dim, dim), kv = Linear(context_dim, 2 dim) (k and v side by side), proj.
template <class T = float>
struct CrossAttention {
  std::int64_t dim = 0, context_dim = 0, num_heads = 1;
  Linear<T> q, kv, proj;

  CrossAttention() = default;
  CrossAttention(std::int64_t dim_, std::int64_t context_dim_, std::int64_t heads, bool bias = true)
      : dim(dim_), context_dim(context_dim_), num_heads(heads), q(dim_, dim_, bias), kv(context_dim_, 2 * dim_, bias),
        proj(dim_, dim_) {
    if (heads <= 0 || dim_ % heads != 0)
      throw ArgumentError(ditto::detail::cat("CrossAttention(dim=", dim_, ", num_heads=", heads,
                                             "): dim must be divisible by num_heads"));
  }

  template <class V>
  void visit(V& v) {
    v("q", q);
    v("kv", kv);
    v("proj", proj);
  }

  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& context) const {
    if (x.dim() != 3 || x.size(2) != dim || context.dim() != 3 || context.size(0) != x.size(0) ||
        context.size(2) != context_dim)
      throw ShapeError(ditto::detail::cat("CrossAttention(dim=", dim, ", context_dim=", context_dim,
                                          "): expected x (B, N, ", dim, ") and context (B, M, ", context_dim, "), got ",
                                          shape_str(x.shape()), " and ", shape_str(context.shape())));
    const std::int64_t B = x.size(0), N = x.size(1), M = context.size(1), H = num_heads, D = dim / num_heads, C = dim;
    Tensor<T> qo = q.forward(x), kvo = kv.forward(context);
    Tensor<T> o = Tensor<T>::empty({B, N, C});
    heads_attention(qo.data(), C, N * C, kvo.data(), o.data(), B, N, M, H, D);
    return proj.forward(o);
  }

  // Training: the inputs, q, k and v, the attention output and its logsumexp.
  struct Acts {
    Tensor<T> x, context, qo, kvo, o, lse;
  };
  Tensor<T> forward_train(const Tensor<T>& x, const Tensor<T>& context, Acts& a) const {
    (void)forward_shapes(x, context);
    const std::int64_t B = x.size(0), N = x.size(1), M = context.size(1), H = num_heads, D = dim / num_heads, C = dim;
    a.x = x, a.context = context, a.qo = q.forward(x), a.kvo = kv.forward(context);
    a.o = Tensor<T>::empty({B, N, C}), a.lse = Tensor<T>::empty({B * H * N});
    heads_attention(a.qo.data(), C, N * C, a.kvo.data(), a.o.data(), B, N, M, H, D, a.lse.data());
    return proj.forward(a.o);
  }
  // dout (B, N, dim). Accumulates g and sets dx / dcontext when given.
  void backward(CrossAttention& g, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr, Tensor<T>* dcontext = nullptr) const {
    const std::int64_t B = a.x.size(0), N = a.x.size(1), M = a.context.size(1), H = num_heads, D = dim / num_heads, C = dim;
    if (dout.shape() != Shape{B, N, C})
      throw ShapeError(ditto::detail::cat("CrossAttention.backward: expected dout (", B, ", ", N, ", ", C, "), got ", shape_str(dout.shape())));
    Tensor<T> d_o({B, N, C}), dq({B, N, C}), dkv({B, M, 2 * C});
    proj.backward_into(d_o.data(), g.proj, dout.data(), a.o.data(), B * N);
    heads_attention_backward(dq.data(), dkv.data(), a.qo.data(), C, N * C, a.kvo.data(), a.o.data(), d_o.data(), a.lse.data(), B, N, M, H, D);
    if (dx) *dx = Tensor<T>(a.x.shape());
    if (dcontext) *dcontext = Tensor<T>(a.context.shape());
    q.backward_into(dx ? dx->data() : nullptr, g.q, dq.data(), a.x.data(), B * N);
    kv.backward_into(dcontext ? dcontext->data() : nullptr, g.kv, dkv.data(), a.context.data(), B * M);
  }

 private:
  bool forward_shapes(const Tensor<T>& x, const Tensor<T>& context) const {
    if (x.dim() != 3 || x.size(2) != dim || context.dim() != 3 || context.size(0) != x.size(0) || context.size(2) != context_dim)
      throw ShapeError(ditto::detail::cat("CrossAttention(dim=", dim, ", context_dim=", context_dim, "): expected x (B, N, ", dim,
                                          ") and context (B, M, ", context_dim, "), got ", shape_str(x.shape()), " and ", shape_str(context.shape())));
    return true;
  }
};

namespace detail {
// The two problem sets of factorized dot-product attention over fused qkv rows: heads [0, H/2)
// over each frame, [H/2, H) over each position's nt rows ns apart; run(problems, layout) for each.
template <class T, class Run>
inline void factorized_heads(const Attention<T>& attn, const T* qkv, T* o, T* lse, std::int64_t rows, const std::vector<std::int64_t>& frames,
                             const std::vector<std::int64_t>& positions, std::int64_t nt, std::int64_t ns, Run&& run) {
  const std::int64_t C = attn.dim, H = attn.num_heads, D = C / H, H2 = H / 2;
  bool ok = !frames.empty() && frames.front() == 0 && frames.back() == rows && static_cast<std::int64_t>(positions.size()) * nt == rows &&
            nt >= 1 && ns >= 1;
  for (std::size_t s = 0; ok && s + 1 < frames.size(); ++s) ok = frames[s] <= frames[s + 1];
  for (std::size_t i = 0; ok && i < positions.size(); ++i) ok = positions[i] >= 0 && positions[i] + (nt - 1) * ns < rows;
  if (!ok)
    throw ShapeError(ditto::detail::cat("factorized_dot_product_attention: the frames must run from 0 to the ", rows, " rows in order, and the ",
                                        positions.size(), " positions, each ", nt, " rows ", ns, " apart, must cover them"));
  std::vector<AttentionProblem<T>> spatial, temporal;
  for (std::size_t s = 0; s + 1 < frames.size(); ++s)
    for (std::int64_t hh = 0; hh < H2; ++hh) {
      const T* base = qkv + frames[s] * 3 * C + hh * D;
      const std::int64_t n = frames[s + 1] - frames[s];
      spatial.push_back({base, base + C, base + 2 * C, o + frames[s] * C + hh * D, n, n, nullptr, lse ? lse + frames[s] * H2 + hh * n : nullptr});
    }
  for (std::size_t i = 0; i < positions.size(); ++i)
    for (std::int64_t hh = H2; hh < H; ++hh) {
      const T* base = qkv + positions[i] * 3 * C + hh * D;
      T* l = lse ? lse + rows * H2 + (static_cast<std::int64_t>(i) * (H - H2) + hh - H2) * nt : nullptr;
      temporal.push_back({base, base + C, base + 2 * C, o + positions[i] * C + hh * D, nt, nt, nullptr, l});
    }
  run(spatial, AttentionLayout{D, D, 3 * C, 3 * C, 3 * C, C, 0});
  run(temporal, AttentionLayout{D, D, ns * 3 * C, ns * 3 * C, ns * 3 * C, ns * C, 0});
}
}  // namespace detail

// ViViT's model 4 attention (and Latte's split heads): one qkv projection; heads [0, H/2) attend
// within each frame (rows [frames[s], frames[s+1])), heads [H/2, H) across the nt frames at each
// position (rows p, p + ns, ...); proj over all heads. h, out: (rows, D).
template <class T>
inline void factorized_dot_product_attention(const Attention<T>& attn, const T* h, T* out, std::int64_t rows,
                                             const std::vector<std::int64_t>& frames, const std::vector<std::int64_t>& positions,
                                             std::int64_t nt, std::int64_t ns, T* qkv_buf, T* o_buf, T* lse = nullptr) {
  attn.qkv.forward_into(h, qkv_buf, rows);  // (rows, 3, H, D)
  detail::factorized_heads(attn, qkv_buf, o_buf, lse, rows, frames, positions, nt, ns, [&](auto& problems, const AttentionLayout& L) {
    attention_kernel(problems, L, static_cast<T>(attn.scale));
  });
  attn.proj.forward_into(o_buf, out, rows);
}

// Training: the same, keeping qkv, the head outputs and the logsumexp in a (Attention::Acts:
// lse holds the spatial heads' rows H/2 values first, then the temporal heads').
template <class T>
inline void factorized_dot_product_attention_train(const Attention<T>& attn, const T* h, T* out, std::int64_t rows,
                                                   const std::vector<std::int64_t>& frames, const std::vector<std::int64_t>& positions,
                                                   std::int64_t nt, std::int64_t ns, typename Attention<T>::Acts& a) {
  if (attn.qk_norm) throw ArgumentError("factorized_dot_product_attention_train: qk_norm is not supported here");
  const std::int64_t C = attn.dim;
  a.qkv = Tensor<T>::empty({rows, 3 * C}), a.o = Tensor<T>::empty({rows, C}), a.lse = Tensor<T>::empty({rows * attn.num_heads});
  factorized_dot_product_attention(attn, h, out, rows, frames, positions, nt, ns, a.qkv.data(), a.o.data(), a.lse.data());
}
// Its backward: dout (rows, dim). Accumulates g (qkv, proj) and dh (null: not needed).
template <class T>
inline void factorized_dot_product_attention_backward(const Attention<T>& attn, Attention<T>& g, T* dh, const T* dout, const T* h,
                                                      std::int64_t rows, const std::vector<std::int64_t>& frames,
                                                      const std::vector<std::int64_t>& positions, std::int64_t nt, std::int64_t ns,
                                                      const typename Attention<T>::Acts& a) {
  const std::int64_t C = attn.dim;
  if (a.qkv.numel() != rows * 3 * C || a.o.numel() != rows * C || a.lse.numel() != rows * attn.num_heads)
    throw ShapeError("factorized_dot_product_attention_backward: the activations were not made by its _train on these rows");
  Tensor<T> d_o({rows, C}), dqkv({rows, 3 * C});
  attn.proj.backward_into(d_o.data(), g.proj, dout, a.o.data(), rows);
  // the forward's problems, each with its gradient pointers at the same offsets
  detail::factorized_heads(attn, a.qkv.data(), const_cast<T*>(a.o.data()), const_cast<T*>(a.lse.data()), rows, frames, positions, nt, ns,
                           [&](auto& problems, const AttentionLayout& L) {
                             std::vector<AttentionGradProblem<T>> grads;
                             for (const auto& p : problems) {
                               const std::int64_t at = p.q - a.qkv.data(), ot = p.o - a.o.data();
                               grads.push_back({p.q, p.k, p.v, p.o, d_o.data() + ot, p.lse, dqkv.data() + at, dqkv.data() + at + C,
                                                dqkv.data() + at + 2 * C, p.nq, p.nk, nullptr});
                             }
                             attention_backward(grads, L, static_cast<T>(attn.scale));
                           });
  attn.qkv.backward_into(dh, g.qkv, dqkv.data(), h, rows);
}


}  // namespace ditto::nn
