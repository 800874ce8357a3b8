// Must NOT compile: 'w' is on the right side only. The test checks the compiler names the problem.
#include <ditto/einops/static.hpp>

int main() {
  ditto::Tensor<float> x({2, 3, 4});
  auto y = ditto::rearrange<"b c h -> b c h w">(x);
  return static_cast<int>(y.dim());
}
