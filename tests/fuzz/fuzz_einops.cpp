// libFuzzer target: einops on any pattern, any given lengths (huge ones included) and small
// tensors of any shape (empty ones included), in float and in int32. Every call either returns
// a tensor of the shape the pattern says or throws a ditto::Error; a crash, a sanitizer report
// (overflow, out-of-bounds read, division by zero) or any other exception is a bug. Built with
// clang and -fsanitize=fuzzer (DITTO_BUILD_FUZZ=ON); .ci/run runs it for a bounded time from
// the seeds in tests/fuzz/corpus_einops.
//
// Input bytes: [op] [rank] [rank lengths, 0..7 each] [count] [count x (name byte, 8-byte
// length)], then the pattern text.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <ditto/einops.hpp>

namespace {
template <class T>
void run(int op, const ditto::Tensor<T>& x, const std::string& pattern, const ditto::AxisLengths& lengths) {
  static const char* reductions[] = {"sum", "mean", "max", "min", "prod"};
  // Plan first (parsing and every length product, where the overflow bugs lived), and run the
  // kernels only when the result is small: a valid pattern with huge lengths asks for terabytes,
  // which is a MemoryError, not a finding.
  using ditto::einops::Op;
  const Op kind = op % 8 == 0 ? Op::rearrange : op % 8 == 1 ? Op::repeat : Op::reduce;
  const auto red = kind == Op::reduce && op % 8 != 7 ? ditto::einops::parse_reduction(reductions[op % 8 - 2], pattern)
                                                     : ditto::einops::Reduction::none;
  if (op % 8 != 7) {
    const auto recipe = ditto::einops::cached_recipe(pattern, kind, red, lengths, static_cast<int>(x.dim()), x.shape());
    const auto cooked = ditto::einops::cook(*recipe, x.shape(), lengths, red);
    if (ditto::detail::checked_numel(cooked.out_shape, "fuzz") > (std::int64_t{1} << 20)) return;
  }
  ditto::Tensor<T> y;
  switch (op % 8) {
    case 0: y = ditto::rearrange(x, pattern, lengths); break;
    case 1: y = ditto::repeat(x, pattern, lengths); break;
    case 7: (void)ditto::parse_shape(x, pattern); return;
    default: y = ditto::reduce(x, pattern, reductions[op % 8 - 2], lengths);
  }
  // the result is a real tensor: every element can be read
  volatile double sink = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i) sink = sink + static_cast<double>(y[i]);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::size_t at = 0;
  auto byte = [&]() -> std::uint8_t { return at < size ? data[at++] : 0; };
  const int op = byte();
  const int rank = byte() % 7;
  ditto::Shape shape;
  for (int i = 0; i < rank; ++i) shape.push_back(byte() % 8);
  ditto::AxisLengths lengths;
  const int count = byte() % 4;
  for (int i = 0; i < count; ++i) {
    const std::string name(1, static_cast<char>('a' + byte() % 6));
    std::uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v |= static_cast<std::uint64_t>(byte()) << (8 * k);
    lengths[name] = static_cast<std::int64_t>(v >> (byte() % 64));  // small and huge values alike
  }
  const std::string pattern(reinterpret_cast<const char*>(data) + std::min(at, size), size - std::min(at, size));
  try {
    if (op & 0x80) {  // integers: sums and products that overflow must be refused, not wrapped
      ditto::Tensor<std::int32_t> x(shape);
      for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<std::int32_t>(i * 715827883);
      run(op, x, pattern, lengths);
    } else {
      auto x = ditto::Tensor<float>::arange(ditto::detail::checked_numel(shape, "fuzz")).reshape(shape);
      run(op, x, pattern, lengths);
    }
  } catch (const ditto::Error&) {
  }
  return 0;
}
