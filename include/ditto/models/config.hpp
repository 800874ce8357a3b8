// Model configs from JSON holding an upstream constructor's keyword arguments, under their
// upstream names. JSON null is Python's None. Every key must be one the constructor accepts;
// missing optional keys take upstream's defaults; missing required ones are an error.
//
//   Kwargs kw(json, "DiT");
//   c.hidden_size = kw.get<std::int64_t>("hidden_size", 1152);
//   c.image_size = kw.require<std::int64_t>("image_size");
//   kw.finish();   // throws ArgumentError naming any key the constructor does not accept
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"

namespace ditto::models {

class Kwargs {
 public:
  Kwargs(const nlohmann::json& j, std::string model) : j_(j), model_(std::move(model)) {
    if (!j_.is_object())
      throw ArgumentError(ditto::detail::cat(model_, " config: expected a JSON object of constructor arguments, got ", j_.type_name()));
  }

  bool has(const std::string& key) {
    accepted_.insert(key);
    return j_.contains(key);
  }
  bool is_null(const std::string& key) {
    accepted_.insert(key);
    return j_.contains(key) && j_[key].is_null();
  }

  // An optional argument with upstream's default.
  template <class V>
  V get(const std::string& key, V fallback) {
    accepted_.insert(key);
    if (!j_.contains(key)) return fallback;
    return convert<V>(key, j_[key]);
  }
  // An optional argument that may be None: nullopt when absent or null.
  template <class V>
  std::optional<V> get_optional(const std::string& key) {
    accepted_.insert(key);
    if (!j_.contains(key) || j_[key].is_null()) return std::nullopt;
    return convert<V>(key, j_[key]);
  }
  // A required argument (no default upstream).
  template <class V>
  V require(const std::string& key) {
    accepted_.insert(key);
    if (!j_.contains(key))
      throw ArgumentError(ditto::detail::cat(model_, " config: missing required argument \"", key, "\""));
    return convert<V>(key, j_[key]);
  }
  // Accepted and ignored (e.g. dropout or use_checkpoint, inert at inference).
  void ignore(const std::string& key) { accepted_.insert(key); }

  // After every argument was read: a key the constructor does not take is an error.
  void finish() const {
    for (const auto& [key, value] : j_.items())
      if (!accepted_.count(key)) {
        std::string names;
        for (const auto& k : accepted_) names += (names.empty() ? "" : ", ") + k;
        throw ArgumentError(ditto::detail::cat(model_, " config: unknown argument \"", key, "\"; ", model_, " accepts ", names));
      }
  }

 private:
  template <class V>
  V convert(const std::string& key, const nlohmann::json& v) const {
    auto fail = [&](const char* want) -> V {
      throw ArgumentError(ditto::detail::cat(model_, " config: \"", key, "\" must be ", want, ", got ", v.dump()));
    };
    if constexpr (std::is_same_v<V, bool>) {
      if (v.is_boolean()) return v.get<bool>();
      if (v.is_number_integer() && (v.get<std::int64_t>() == 0 || v.get<std::int64_t>() == 1)) return v.get<std::int64_t>() == 1;
      return fail("true or false");
    } else if constexpr (std::is_integral_v<V>) {
      if (v.is_number_integer()) return v.get<V>();
      if (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<std::int64_t>(v.get<double>())) &&
          std::abs(v.get<double>()) < 1e15)
        return static_cast<V>(v.get<double>());
      return fail("an integer");
    } else if constexpr (std::is_floating_point_v<V>) {
      if (v.is_number()) return v.get<V>();
      return fail("a number");
    } else if constexpr (std::is_same_v<V, std::string>) {
      if (v.is_string()) return v.get<std::string>();
      return fail("a string");
    } else if constexpr (std::is_same_v<V, std::vector<std::int64_t>>) {
      if (!v.is_array()) return fail("a list of integers");
      std::vector<std::int64_t> out;
      for (const auto& e : v) {
        if (!e.is_number_integer()) return fail("a list of integers");
        out.push_back(e.get<std::int64_t>());
      }
      return out;
    } else {
      static_assert(sizeof(V) == 0, "Kwargs: unsupported type");
    }
  }

  const nlohmann::json& j_;
  std::string model_;
  std::set<std::string> accepted_;
};

}  // namespace ditto::models
