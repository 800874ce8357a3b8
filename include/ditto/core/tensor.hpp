// The tensor: a row-major, contiguous, reference-counted block of scalars with a shape.
//
//   Tensor<float> x({2, 3, 4});          // zeros, shape [2,3,4]
//   auto y = x.reshape({6, -1});          // a view: same storage, shape [6,4]
//   auto e = x.xt();                      // an xtensor expression over the same memory
//
// Design: a tensor is always contiguous and row-major (like PyTorch's default layout), so every
// kernel sees plain pointers with known strides. Operations that only reinterpret the shape
// (reshape, flatten, unsqueeze) return views that share storage, as torch's .view() does; every
// other operation writes a new contiguous tensor. Copies are cheap handles (shared ownership);
// use clone() for a deep copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iomanip>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>

#include "error.hpp"

namespace ditto {

// A shape, PyTorch-style: signed lengths (so -1 can mean "infer" where an API allows it).
using Shape = std::vector<std::int64_t>;

namespace detail {
// Product of lengths; throws on a negative length or on overflow (a hostile shape must not wrap).
inline std::int64_t checked_numel(const Shape& shape, std::string_view where) {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0) throw ShapeError(cat(where, ": shape ", shape_str(shape), " has a negative length"));
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d)
      throw ShapeError(cat(where, ": shape ", shape_str(shape), " has more elements than fit in int64"));
    n *= d;
  }
  return n;
}

// Uninitialized storage, 64-byte aligned (a cache line; aligned for AVX-512 loads). Blocks of
// 8 MB and more are 2 MB aligned and, on Linux, marked for transparent huge pages: a fresh
// 64 MB output then takes 32 page faults instead of 16384, which halves the cost of writing it
// the first time (measured: docs/performance.md).
inline constexpr std::size_t kHugeThreshold = std::size_t{8} << 20;
inline constexpr std::size_t kHugeAlign = std::size_t{2} << 20;

// Freed blocks of 1 MB and more are kept for reuse, up to 256 MB in all: a forward allocates and
// frees the same activation sizes layer after layer, and every fresh block costs page faults and
// the kernel zeroing its pages (measured: 9% of an autoencoder decode at 256x256). A request takes
// the smallest kept block of at least its size and at most 25% more. The cache lives for the
// whole program (never destroyed, so a tensor freed during static destruction stays safe).
class BlockCache {
 public:
  static constexpr std::size_t kMin = std::size_t{1} << 20, kCap = std::size_t{256} << 20;
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache;  // one per program (an inline function's static)
    return *cache;
  }
  static std::size_t align_for(std::size_t bytes) { return bytes >= kHugeThreshold ? kHugeAlign : 64; }
  // A kept block for `bytes`, or null; *got is the block's real size.
  void* take(std::size_t bytes, std::size_t* got) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.lower_bound(bytes);
    if (it == blocks_.end() || it->first > bytes + bytes / 4) return nullptr;
    void* p = it->second;
    *got = it->first;
    held_ -= it->first;
    blocks_.erase(it);
    return p;
  }
  // Keeps the block if there is room; otherwise frees it.
  void give(void* p, std::size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (held_ + bytes <= kCap) {
        blocks_.emplace(bytes, p);
        held_ += bytes;
        return;
      }
    }
    ::operator delete(p, std::align_val_t{align_for(bytes)});
  }

 private:
  std::mutex mutex_;
  std::multimap<std::size_t, void*> blocks_;
  std::size_t held_ = 0;
};

template <class T>
inline std::shared_ptr<T> allocate(std::int64_t n) {
  static_assert(std::is_trivially_copyable_v<T>, "ditto tensors hold trivially copyable scalars");
  if (n == 0) return {};
  if (static_cast<std::uint64_t>(n) > std::numeric_limits<std::size_t>::max() / sizeof(T) / 2)
    throw ShapeError(cat("tensor allocation of ", n, " elements does not fit in memory"));
  const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
  // operator new's std::bad_alloc says nothing of what was asked; this says how much. (The
  // nothrow form, so that AddressSanitizer builds take the same path: their throwing new aborts.)
  auto fresh = [&](std::size_t align) {
    void* p = ::operator new(bytes, std::align_val_t{align}, std::nothrow);
    if (!p) throw MemoryError(cat("cannot allocate a tensor of ", n, " elements (", static_cast<double>(bytes) / 1e9, " GB): out of memory"));
    return p;
  };
  if (bytes < BlockCache::kMin) {
    void* p = fresh(64);
    return std::shared_ptr<T>(static_cast<T*>(p), [](T* q) { ::operator delete(static_cast<void*>(q), std::align_val_t{64}); });
  }
  std::size_t got = bytes;
  void* p = BlockCache::instance().take(bytes, &got);
  if (!p) {
    p = fresh(BlockCache::align_for(bytes));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (BlockCache::align_for(bytes) == kHugeAlign) ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
  }
  return std::shared_ptr<T>(static_cast<T*>(p), [got](T* q) { BlockCache::instance().give(static_cast<void*>(q), got); });
}
}  // namespace detail

template <class T = float>
class Tensor {
  static_assert(std::is_arithmetic_v<T>, "Tensor<T>: T must be an arithmetic type");

 public:
  using value_type = T;

  // An empty tensor of shape [0].
  Tensor() : shape_{0} {}

  // Zeros of the given shape (the safe default; use Tensor::empty for uninitialized memory).
  explicit Tensor(Shape shape) : Tensor(empty(std::move(shape))) { fill(T(0)); }

  // A tensor with the given values in row-major order: Tensor<float>({2, 2}, {1, 2, 3, 4}).
  Tensor(Shape shape, std::initializer_list<T> values) : Tensor(empty(std::move(shape))) {
    assign(values.begin(), values.size());
  }
  Tensor(Shape shape, const std::vector<T>& values) : Tensor(empty(std::move(shape))) {
    assign(values.data(), values.size());
  }

  // Uninitialized storage: for kernels that write every element.
  static Tensor empty(Shape shape) {
    Tensor t(PrivateTag{});
    std::int64_t n = detail::checked_numel(shape, "Tensor");
    t.shape_ = std::move(shape);
    t.storage_ = detail::allocate<T>(n);
    t.data_ = t.storage_.get();
    return t;
  }
  static Tensor zeros(Shape shape) { return Tensor(std::move(shape)); }
  static Tensor full(Shape shape, T value) {
    Tensor t = empty(std::move(shape));
    t.fill(value);
    return t;
  }
  static Tensor ones(Shape shape) { return full(std::move(shape), T(1)); }
  // 0, 1, ..., n-1 as a 1-D tensor (torch.arange(n)).
  static Tensor arange(std::int64_t n) {
    Tensor t = empty({n});
    for (std::int64_t i = 0; i < n; ++i) t.data_[i] = static_cast<T>(i);
    return t;
  }
  // A tensor over memory someone else owns (a memory-mapped file, another tensor's buffer):
  // `owner` keeps it alive. The memory must hold numel(shape) contiguous elements at `data`.
  static Tensor from_blob(Shape shape, T* data, std::shared_ptr<void> owner) {
    Tensor t(PrivateTag{});
    detail::checked_numel(shape, "Tensor::from_blob");
    t.shape_ = std::move(shape);
    t.storage_ = std::shared_ptr<T>(std::move(owner), data);
    t.data_ = data;
    return t;
  }
  // Evaluates an xtensor expression into a new tensor: Tensor<float>::from_xt(xt::sin(a.xt())).
  template <class E>
  static Tensor from_xt(const xt::xexpression<E>& expr) {
    const auto& e = expr.derived_cast();
    Shape shape(e.shape().begin(), e.shape().end());
    Tensor t = empty(std::move(shape));
    auto view = t.xt();
    view = e;
    return t;
  }

  // --- shape ---------------------------------------------------------------------------------
  const Shape& shape() const noexcept { return shape_; }
  std::int64_t dim() const noexcept { return static_cast<std::int64_t>(shape_.size()); }
  // Length of one axis; negative axes count from the end, as in PyTorch.
  std::int64_t size(std::int64_t axis) const { return shape_[normalize_axis(axis)]; }
  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto d : shape_) n *= d;
    return n;
  }

  // --- data ----------------------------------------------------------------------------------
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  T* begin() noexcept { return data_; }
  T* end() noexcept { return data_ + numel(); }
  const T* begin() const noexcept { return data_; }
  const T* end() const noexcept { return data_ + numel(); }
  // Flat (row-major) element access, unchecked.
  T& operator[](std::int64_t i) noexcept { return data_[i]; }
  const T& operator[](std::int64_t i) const noexcept { return data_[i]; }
  // Multi-index access with bounds checks: x.at({0, 2, 1}).
  T& at(std::initializer_list<std::int64_t> index) { return data_[offset_of(index)]; }
  const T& at(std::initializer_list<std::int64_t> index) const { return data_[offset_of(index)]; }
  // Multi-index access without checks, for loops that know their bounds: x(b, i, j).
  template <class... I>
  T& operator()(I... index) noexcept {
    return data_[unchecked_offset(static_cast<std::int64_t>(index)...)];
  }
  template <class... I>
  const T& operator()(I... index) const noexcept {
    return data_[unchecked_offset(static_cast<std::int64_t>(index)...)];
  }

  void fill(T value) noexcept { std::fill(data_, data_ + numel(), value); }

  // --- views and copies ---------------------------------------------------------------------
  // The same storage under another shape with the same number of elements; one length may be -1
  // (inferred). No data is copied: writing through the view writes the original.
  Tensor reshape(Shape shape) const {
    std::int64_t known = 1, infer = -1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] == -1) {
        if (infer >= 0) throw ShapeError(detail::cat("reshape(", shape_str(shape), "): only one length can be -1"));
        infer = static_cast<std::int64_t>(i);
      } else if (shape[i] < 0) {
        throw ShapeError(detail::cat("reshape(", shape_str(shape), "): negative length ", shape[i]));
      } else {
        known *= shape[i];
      }
    }
    const std::int64_t n = numel();
    if (infer >= 0) {
      if (known == 0 || n % known != 0)
        throw ShapeError(detail::cat("reshape(", shape_str(shape), "): a tensor of shape ", shape_str(shape_), " (",
                                     n, " elements) cannot be split so"));
      shape[static_cast<std::size_t>(infer)] = n / known;
    } else if (known != n) {
      throw ShapeError(detail::cat("reshape(", shape_str(shape), "): expected ", known,
                                   " elements to match, but the tensor has shape ", shape_str(shape_), " (", n,
                                   " elements)"));
    }
    Tensor t = *this;
    t.shape_ = std::move(shape);
    return t;
  }
  // Flattens to one axis (a view).
  Tensor flatten() const { return reshape({numel()}); }
  // A deep copy with its own storage.
  Tensor clone() const {
    Tensor t = empty(shape_);
    if (numel() > 0) std::memcpy(t.data_, data_, static_cast<std::size_t>(numel()) * sizeof(T));
    return t;
  }
  // Element-wise conversion to another scalar type (a new tensor).
  template <class U>
  Tensor<U> to() const {
    Tensor<U> t = Tensor<U>::empty(shape_);
    for (std::int64_t i = 0, n = numel(); i < n; ++i) t[i] = static_cast<U>(data_[i]);
    return t;
  }
  // True when both tensors look at the same memory (one is a view of the other).
  template <class U>
  bool shares_storage_with(const Tensor<U>& other) const noexcept {
    return static_cast<const void*>(data_) == static_cast<const void*>(other.data()) && data_ != nullptr;
  }

  // An xtensor view of this tensor's memory (no copy): use xtensor's expressions and functions.
  // The view holds a raw pointer: keep the tensor alive while you use it.
  auto xt() {
    return xt::adapt(data_, static_cast<std::size_t>(numel()), xt::no_ownership(), xt_shape());
  }
  auto xt() const {
    return xt::adapt(data_, static_cast<std::size_t>(numel()), xt::no_ownership(), xt_shape());
  }

 private:
  struct PrivateTag {};
  explicit Tensor(PrivateTag) {}

  template <class P>
  void assign(const P* values, std::size_t count) {
    if (static_cast<std::int64_t>(count) != numel())
      throw ShapeError(detail::cat("Tensor(", shape_str(shape_), ", values): expected ", numel(),
                                   " values, got ", count));
    std::copy(values, values + count, data_);
  }
  std::vector<std::size_t> xt_shape() const { return {shape_.begin(), shape_.end()}; }

  std::size_t normalize_axis(std::int64_t axis) const {
    const std::int64_t r = dim();
    if (axis < -r || axis >= r)
      throw ShapeError(detail::cat("axis ", axis, " is out of range for a tensor of shape ", shape_str(shape_)));
    return static_cast<std::size_t>(axis < 0 ? axis + r : axis);
  }
  std::int64_t offset_of(std::initializer_list<std::int64_t> index) const {
    if (static_cast<std::int64_t>(index.size()) != dim())
      throw ShapeError(detail::cat("at(): ", index.size(), " indices for a tensor of rank ", dim(), " (shape ",
                                   shape_str(shape_), ")"));
    std::int64_t off = 0, k = 0;
    for (auto i : index) {
      if (i < 0 || i >= shape_[k])
        throw ShapeError(detail::cat("at(): index ", i, " out of range for axis ", k, " of shape ",
                                     shape_str(shape_)));
      off = off * shape_[k] + i;
      ++k;
    }
    return off;
  }
  template <class... I>
  std::int64_t unchecked_offset(I... index) const noexcept {
    std::int64_t off = 0, k = 0;
    ((off = off * shape_[k++] + index), ...);
    return off;
  }

  std::shared_ptr<T> storage_;  // owner; may alias a larger block (from_blob)
  T* data_ = nullptr;
  Shape shape_;
};

// Prints like PyTorch: tensor([[0., 1.], [2., 3.]]) with the shape, eliding the middle of
// axes longer than 6 so a notebook cell stays readable.
template <class T>
inline std::ostream& operator<<(std::ostream& os, const Tensor<T>& t) {
  const Shape& s = t.shape();
  const std::int64_t n = t.numel();
  std::ostringstream body;
  if constexpr (std::is_floating_point_v<T>) body << std::setprecision(4);
  auto print = [&](auto&& self, std::int64_t axis, std::int64_t offset, std::int64_t stride) -> void {
    if (axis == t.dim()) {
      T v = t.data()[offset];
      if constexpr (std::is_floating_point_v<T>) {
        if (v == std::floor(v) && std::abs(v) < 1e6) body << static_cast<long long>(v) << ".";
        else body << v;
      } else {
        body << +v;
      }
      return;
    }
    const std::int64_t len = s[axis], inner = stride / std::max<std::int64_t>(len, 1);
    body << "[";
    for (std::int64_t i = 0; i < len; ++i) {
      if (len > 6 && i == 3) {
        body << "..., ";
        i = len - 3;
      }
      self(self, axis + 1, offset + i * inner, inner);
      if (i + 1 < len) body << (axis + 1 == t.dim() ? ", " : ",\n" + std::string(static_cast<std::size_t>(axis) + 8, ' '));
    }
    body << "]";
  };
  if (n > 0 || t.dim() == 0) print(print, 0, 0, n);
  else body << "[]";
  return os << "tensor(" << body.str() << ", shape=" << shape_str(s) << ")";
}

}  // namespace ditto
