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

// One safetensors file holding F32 and I64 tensors (inputs as a user writes them: x and t as
// floats, labels as integers).
inline void save_mixed(const std::string& path, const std::vector<std::pair<std::string, ditto::Tensor<float>>>& floats,
                       const std::vector<std::pair<std::string, ditto::Tensor<std::int64_t>>>& ints = {}) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  std::string data;
  auto add = [&](const std::string& n, const char* dtype, const ditto::Shape& shape, const void* p, std::size_t bytes) {
    h[n] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + bytes}}};
    data.append(static_cast<const char*>(p), bytes);
  };
  for (const auto& [n, v] : floats) add(n, "F32", v.shape(), v.data(), static_cast<std::size_t>(v.numel()) * 4);
  for (const auto& [n, v] : ints) add(n, "I64", v.shape(), v.data(), static_cast<std::size_t>(v.numel()) * 8);
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary);
  const std::uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}
// tools/gen_unet_fixtures.py's hash_weights: value[i] = u * scale, u in [-1, 1) from a 32-bit
// hash of (state-dict name, element index).
template <class T>
inline void hash_weights(const std::string& name, ditto::Tensor<T>& t) {
  std::uint32_t h0 = 2166136261u;
  for (unsigned char ch : name) h0 = (h0 ^ ch) * 16777619u;
  double scale = 1;
  if (t.dim() > 1) scale = std::pow(static_cast<double>(t.numel() / t.size(0)), -0.5);
  const bool norm_scale = t.dim() == 1 && name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    std::uint32_t h = h0 + static_cast<std::uint32_t>(i) * 0x9E3779B1u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    h *= 0x297A2D39u;
    h ^= h >> 15;
    const double u = static_cast<double>(h >> 8) * std::ldexp(1.0, -23) - 1.0;
    t[i] = static_cast<T>(t.dim() == 1 ? (norm_scale ? 1 + 0.2 * u : 0.1 * u) : u * scale);
  }
}

// tools/gen_latte_fixtures.py's text case (extras = 78) keeps its two large tensors out of the
// file: the 77 x 768 -> hidden_size projection is hash_weights', the text embedding (B, 77, 768)
// hash_weights' values scaled back to [-1, 1) (in float64, then rounded, as the generator does).
template <class T>
ditto::Tensor<T> latte_text_input(std::int64_t B) {
  ditto::Tensor<double> u({B, 77, 768});
  hash_weights("text_embedding", u);
  ditto::Tensor<T> text = ditto::Tensor<T>::empty({B, 77, 768});
  for (std::int64_t i = 0; i < u.numel(); ++i) text[i] = static_cast<T>(u[i] * std::pow(77.0 * 768.0, 0.5));
  return text;
}

}  // namespace ditto_test
