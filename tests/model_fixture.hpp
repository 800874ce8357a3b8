// A model's fixture: tests/fixtures/<model>_f32 / _f64.safetensors (weights "case.w.*", inputs
// "case.in.*", the output "case.out", traces "case.trace.<module>") and <model>_configs.json.
#pragma once

#include <ditto/io/safetensors.hpp>
#include <ditto/nn/module.hpp>
#include <ditto/nn/state_dict.hpp>

#include <map>
#include <string>
#include <type_traits>

#include "helpers.hpp"

namespace ditto_test {
template <class T>
struct ModelFixture {
  ditto::SafetensorsFile file;
  nlohmann::json configs;
  double tol;
  ModelFixture(const std::string& model)
      : file(std::string(DITTO_FIXTURES) + "/" + model + (std::is_same_v<T, float> ? "_f32" : "_f64") + ".safetensors"),
        configs(ditto_test::load_json(model + "_configs.json")),
        tol(std::is_same_v<T, float> ? 1e-4 : 1e-10) {}
  bool has_case(const std::string& c) const { return file.contains(c + ".out"); }
  // Every "case.trace.<module>" of the fixture against the model's trace of that module; returns
  // how many were compared.
  int compare_traces(const std::string& c, std::map<std::string, ditto::Tensor<T>>& traces) const {
    int compared = 0;
    const std::string prefix = c + ".trace.";
    for (const auto& n : file.names()) {
      if (n.rfind(prefix, 0) != 0) continue;
      const std::string k = n.substr(prefix.size());
      INFO("trace " << k);
      REQUIRE(traces.count(k));
      CHECK_CLOSE(traces[k], file.template get<T>(n), tol);
      ++compared;
    }
    return compared;
  }
  template <class Block>
  void load_case(Block& block, const std::string& c, bool strict = true) const {
    const std::string prefix = c + ".w.";
    ditto::nn::load<T>(block, file, strict, [&](const std::string& n) {
      return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : std::string();
    });
  }
};
}  // namespace ditto_test
