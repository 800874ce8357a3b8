// Built without -fopenmp (as an interpreter loads the headers): the serial code paths compile,
// set_num_threads is accepted, and results equal a plain loop. A plain main: no Catch2 needed.
#include <cstdio>
#include <cstdlib>

#include <ditto/ditto.hpp>

#if defined(_OPENMP)
#error "this test must be compiled without OpenMP"
#endif

static int failures = 0;
#define EXPECT(cond)                                              \
  do {                                                            \
    if (!(cond)) {                                                \
      std::printf("FAILED: %s (line %d)\n", #cond, __LINE__);     \
      ++failures;                                                 \
    }                                                             \
  } while (0)

int main() {
  using namespace ditto;
  EXPECT(!has_openmp());
  set_num_threads(4);
  EXPECT(get_num_threads() == 1);
  auto x = Generator(1).normal<float>({4, 6, 8});
  auto y = rearrange(x, "a (b c) d -> d a c b", {{"b", 2}});
  bool same = true;
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 2; ++b)
      for (int c = 0; c < 3; ++c)
        for (int d = 0; d < 8; ++d) same &= y(d, a, c, b) == x(a, b * 3 + c, d);
  EXPECT(same);
  auto s = reduce(x, "a b d -> d", "sum");
  double ref = 0;
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 6; ++b) ref += x(a, b, 5);
  EXPECT(std::abs(s[5] - ref) < 1e-5);
  auto m = matmul(Tensor<float>({2, 2}, {1, 2, 3, 4}), Tensor<float>({2, 2}, {5, 6, 7, 8}));
  EXPECT(m[0] == 19 && m[1] == 22 && m[2] == 43 && m[3] == 50);
  // Same random numbers as an OpenMP build would draw (the first value of seed 1 is fixed).
  EXPECT(Generator(1).normal<float>({1})[0] == x[0]);
  std::printf("no-OpenMP build: %s\n", failures ? "FAILED" : "ok");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
