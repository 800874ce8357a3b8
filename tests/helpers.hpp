// Shared by the tests: reading JSON fixtures and comparing tensors with a printed max error.
#pragma once

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <ditto/core/tensor.hpp>

namespace ditto_test {

inline nlohmann::json load_json(const std::string& name) {
  std::ifstream f(std::string(DITTO_FIXTURES) + "/" + name);
  if (!f) throw std::runtime_error("cannot open fixture " + name + " under " DITTO_FIXTURES);
  return nlohmann::json::parse(f);
}

template <class T = float>
inline ditto::Tensor<T> tensor_from_json(const nlohmann::json& j) {
  return ditto::Tensor<T>(j.at("shape").get<ditto::Shape>(), j.at("data").get<std::vector<T>>());
}

// max|got - ref| / max|ref| (0 when both are all zeros); shapes must match exactly.
template <class T, class U>
inline double rel_error(const ditto::Tensor<T>& got, const ditto::Tensor<U>& ref) {
  REQUIRE(got.shape() == ref.shape());
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(got[i]) - static_cast<double>(ref[i])));
    scale = std::max(scale, std::abs(static_cast<double>(ref[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

// Checks relative error <= tol and prints it (with the context) when it is not.
#define CHECK_CLOSE(got, ref, tol)                                         \
  do {                                                                     \
    const double rel_error_ = ditto_test::rel_error((got), (ref));         \
    INFO("relative error " << rel_error_ << " (tolerance " << (tol) << ")"); \
    CHECK(rel_error_ <= (tol));                                            \
  } while (0)

// Exact equality, element by element, reporting the first mismatch.
template <class T>
inline void require_equal(const ditto::Tensor<T>& got, const ditto::Tensor<T>& ref) {
  REQUIRE(got.shape() == ref.shape());
  for (std::int64_t i = 0; i < ref.numel(); ++i) {
    if (got[i] != ref[i]) {
      INFO("first difference at flat index " << i << ": got " << got[i] << ", expected " << ref[i]);
      REQUIRE(got[i] == ref[i]);
    }
  }
}

}  // namespace ditto_test
