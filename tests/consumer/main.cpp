#include <ditto/ditto.hpp>
#include <iostream>

int main() {
  auto x = ditto::Tensor<float>::arange(24).reshape({2, 3, 4});
  auto y = ditto::rearrange(x, "b c h -> b h c");
  std::cout << "ditto " << DITTO_VERSION_STRING << " consumer: " << ditto::shape_str(y.shape()) << "\n";
  return y(1, 3, 2) == x(1, 2, 3) ? 0 : 1;
}
