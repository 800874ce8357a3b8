// Matrix products, the one place ditto's layers call into Eigen for GEMM.
//
//   gemm: C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C, row-major with leading dims.
//   batched_gemm: the same over a batch of matrices laid out with fixed strides.
//   matmul(a, b): torch.matmul for tensors (..., M, K) @ (..., K, N).
//
// Eigen parallelizes one large product with OpenMP itself; a batch of many small products is
// split over threads instead (Eigen runs serially inside a parallel region).
//
// With DITTO_USE_CBLAS (set by CMake when OpenBLAS is found, option DITTO_USE_OPENBLAS), float
// and double products go to cblas_?gemm: OpenBLAS measures 1.05-1.35x Eigen 3.4 at DiT's shapes
// (docs/performance.md). Inside a parallel region they stay on Eigen, which then runs serially,
// so OpenBLAS's own threads never oversubscribe the cores — unless OpenBLAS is Debian's OpenMP
// build (DITTO_CBLAS_OPENMP), which itself runs serially there.
//
// OpenBLAS picks its kernels from the CPU model when it loads. On a CPU newer than the OpenBLAS
// build it falls back to an old core: Debian 12's OpenBLAS 0.3.21 runs Prescott's SSE3 kernels
// on a recent Intel Xeon (32 GFLOP/s on a core whose AVX-512 does 200; docs/performance.md).
// Where that happens and this build targets AVX2 + FMA or better, the products go to Eigen
// instead (gemm_backend() says which and why). DITTO_GEMM=eigen or DITTO_GEMM=openblas in the
// environment overrides the choice; OPENBLAS_CORETYPE=SkylakeX (or Haswell) makes OpenBLAS
// itself use its modern kernels, which is faster still.
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#if defined(DITTO_COUNT_FLOPS)
#include <atomic>
#endif

#include <Eigen/Core>

#if defined(DITTO_USE_CBLAS)
#include <cblas.h>
#endif

#include "tensor.hpp"
#include "threading.hpp"

namespace ditto {

#if defined(DITTO_COUNT_FLOPS)
// Benchmarks only (define DITTO_COUNT_FLOPS): every gemm adds 2 M N K here, so a program can
// count the multiply-add work of a whole forward instead of deriving it by hand.
inline std::atomic<std::int64_t> gemm_flops{0};
#endif

namespace detail {
// OpenBLAS cores without AVX2 + FMA kernels (openblas_get_corename(), lower case).
inline bool openblas_core_lacks_fma(std::string core) {
  for (auto& ch : core) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* old : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai", "coppermine", "northwood",
                          "banias", "athlon", "opteron", "barcelona", "bobcat", "nano", "sandybridge", "generic", "unknown"})
    if (core.rfind(old, 0) == 0) return true;
  return core.empty();
}

struct GemmChoice {
  bool openblas = false;
  std::string why;
};

// Decided once per program (a function-local static: one instance, also in an interpreter).
inline const GemmChoice& gemm_choice() {
  static const GemmChoice choice = [] {
    GemmChoice c;
#if defined(DITTO_USE_CBLAS)
    const char* name = openblas_get_corename();
    const std::string core = name ? name : "";
    const char* env = std::getenv("DITTO_GEMM");
    const std::string forced = env ? env : "";
#if defined(__AVX2__) && defined(__FMA__)
    constexpr bool eigen_vectorized = true;  // Eigen compiled for AVX2 + FMA or wider
#else
    constexpr bool eigen_vectorized = false;
#endif
    if (forced == "eigen") {
      c.why = "Eigen (DITTO_GEMM=eigen; OpenBLAS core " + core + ")";
    } else if (forced == "openblas") {
      c.openblas = true, c.why = "OpenBLAS, core " + core + " (DITTO_GEMM=openblas)";
    } else if (eigen_vectorized && openblas_core_lacks_fma(core)) {
      c.why = "Eigen (OpenBLAS chose its " + core + " kernels, which have no AVX2/FMA, for this CPU; OPENBLAS_CORETYPE=SkylakeX "
              "or Haswell makes OpenBLAS use its modern ones)";
    } else {
      c.openblas = true, c.why = "OpenBLAS, core " + core;
    }
    if (!forced.empty() && forced != "eigen" && forced != "openblas")  // no throw: the first gemm may run in a parallel region
      c.why += " (DITTO_GEMM=\"" + forced + "\" ignored: expected eigen or openblas)";
#else
    c.why = "Eigen (built without OpenBLAS)";
#endif
    return c;
  }();
  return choice;
}
}  // namespace detail

// Which library runs ditto's matrix products, and why: "OpenBLAS, core SkylakeX", "Eigen (...)".
inline const std::string& gemm_backend() { return detail::gemm_choice().why; }

template <class T>
inline void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* A,
                 std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc) {
#if defined(DITTO_COUNT_FLOPS)
  gemm_flops.fetch_add(2 * M * N * K, std::memory_order_relaxed);
#endif
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  using OMap = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
  if (M == 0 || N == 0) return;
#if defined(DITTO_USE_CBLAS)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
#if defined(DITTO_CBLAS_OPENMP)
    constexpr bool anywhere = true;  // OpenBLAS's OpenMP build runs serially inside a region
#else
    constexpr bool anywhere = false;
#endif
    if (K > 0 && (anywhere || !detail::in_parallel_region()) && detail::gemm_choice().openblas) {
      const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
                    static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
      else
        cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
                    static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
      return;
    }
  }
#endif
  OMap c(C, M, N, Eigen::OuterStride<>(ldc));
  if (K == 0) {
    if (beta == T(0)) c.setZero();
    else c *= beta;
    return;
  }
  // A stored as (M,K) or, transposed, as (K,M); likewise B.
  CMap a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
  CMap b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
  if (beta == T(0)) c.setZero();
  else if (beta != T(1)) c *= beta;
  if (!trans_a && !trans_b) c.noalias() += alpha * a * b;
  else if (trans_a && !trans_b) c.noalias() += alpha * a.transpose() * b;
  else if (!trans_a && trans_b) c.noalias() += alpha * a * b.transpose();
  else c.noalias() += alpha * a.transpose() * b.transpose();
}

template <class T>
inline void batched_gemm(std::int64_t batch, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                         std::int64_t K, T alpha, const T* A, std::int64_t lda, std::int64_t stride_a, const T* B,
                         std::int64_t ldb, std::int64_t stride_b, T beta, T* C, std::int64_t ldc,
                         std::int64_t stride_c) {
  if (batch == 1) {
    gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Many products: one thread per group of products. A single product of this size would
  // already be parallel inside Eigen when the batch is small.
  const std::int64_t flops = M * N * K;
  if (batch < get_num_threads()) {
    for (std::int64_t i = 0; i < batch; ++i)
      gemm(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta, C + i * stride_c,
           ldc);
    return;
  }
  parallel_for(batch, batch * flops, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i)
      gemm(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta, C + i * stride_c,
           ldc);
  });
}

// torch.matmul for rank >= 2 operands whose batch axes are equal, or where one side has no
// batch axes (rank 2) and is shared by every batch entry: (..., M, K) @ (..., K, N) -> (..., M, N).
template <class T>
inline Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.dim() < 2 || b.dim() < 2)
    throw ShapeError(detail::cat("matmul: expected operands of rank >= 2, got shapes ", shape_str(a.shape()), " and ",
                                 shape_str(b.shape())));
  const std::int64_t M = a.size(-2), K = a.size(-1), K2 = b.size(-2), N = b.size(-1);
  if (K != K2)
    throw ShapeError(detail::cat("matmul: inner lengths differ: ", shape_str(a.shape()), " @ ", shape_str(b.shape()),
                                 " (", K, " vs ", K2, ")"));
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  if (!batch_a.empty() && !batch_b.empty() && batch_a != batch_b)
    throw ShapeError(detail::cat("matmul: batch axes differ: ", shape_str(a.shape()), " @ ", shape_str(b.shape())));
  Shape out_shape = batch_a.empty() ? batch_b : batch_a;
  std::int64_t batch = 1;
  for (auto d : out_shape) batch *= d;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor<T> c = Tensor<T>::empty(out_shape);
  batched_gemm<T>(batch, false, false, M, N, K, T(1), a.data(), K, batch_a.empty() ? 0 : M * K, b.data(), N,
                  batch_b.empty() ? 0 : K * N, T(0), c.data(), N, M * N);
  return c;
}

}  // namespace ditto
