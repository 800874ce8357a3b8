// Model configs from JSON holding an upstream constructor's keyword arguments, under their
// upstream names. JSON null is Python's None. Every key must be one the constructor accepts;
// missing optional keys take upstream's defaults; missing required ones are an error.
//
//   Kwargs kw(json, "DiT");
//   c.hidden_size = kw.get<std::int64_t>("hidden_size", 1152);
//   c.image_size = kw.require<std::int64_t>("image_size");
//   kw.finish();   // throws ArgumentError naming any key the constructor does not accept
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#if defined(__linux__)
#include <sys/sysinfo.h>
#endif

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../io/json.hpp"

namespace ditto::models {

namespace detail {
// int(width * ratio), as Python computes a hidden width, without the undefined behaviour of
// casting an out-of-range double: NaN, infinities, negative products and products beyond 2^31
// (the bound of every integer argument, Kwargs below) come back as -1, which every config refuses.
inline std::int64_t scaled_width(std::int64_t width, double ratio) {
  const double v = static_cast<double>(width) * ratio;
  if (!(v >= 0 && v <= 2147483648.0)) return -1;
  return static_cast<std::int64_t>(v);
}

// This machine's memory in bytes (physical + swap), or 0 where it cannot be asked.
inline double machine_memory_bytes() {
#if defined(__linux__)
  struct sysinfo info {};
  if (sysinfo(&info) == 0) return (static_cast<double>(info.totalram) + static_cast<double>(info.totalswap)) * info.mem_unit;
#endif
  return 0;
}

// A config whose float32 weights alone (a lower bound, from the largest matrices) would not fit
// in this machine's memory is refused before anything is allocated: built block by block, it
// would otherwise run until the system kills the process (e.g. depth = 2^40).
inline void check_weights_fit(const std::string& model, double params) {
  const double memory = machine_memory_bytes();
  if (memory > 0 && params * 4 > memory)
    throw MemoryError(ditto::detail::cat(model, " config: its weights alone would take at least ", params * 4 / 1e9,
                                         " GB, more than this machine's ", memory / 1e9, " GB of memory"));
}

// The weights of `blocks` transformer blocks of `width` (a lower bound): `squares` width x width
// matrices each (qkv and proj: 4; DiT's adaLN modulation adds 6) and the MLP's two.
inline double transformer_weights(std::int64_t blocks, std::int64_t width, std::int64_t mlp_hidden, int squares) {
  const double h = static_cast<double>(width);
  return static_cast<double>(blocks) * (squares * h * h + 2 * h * static_cast<double>(mlp_hidden));
}
// DiT.__init__'s constraints on its adaLN transformer, shared by DiT and Latte (whose blocks are
// DiT's): sizes >= 1, depth >= 0, the patch fits, the heads divide the width, the 2-D sin-cos
// table splits it in four, a usable MLP width. `model` names the config in the messages.
inline void validate_dit_shape(const char* model, std::int64_t input_size, std::int64_t patch_size, std::int64_t in_channels,
                               std::int64_t hidden_size, std::int64_t depth, std::int64_t num_heads, std::int64_t mlp_hidden,
                               double mlp_ratio, double class_dropout_prob) {
  using ditto::detail::cat;
  for (auto [name, v] : {std::pair{"input_size", input_size}, std::pair{"patch_size", patch_size}, std::pair{"in_channels", in_channels},
                         std::pair{"hidden_size", hidden_size}, std::pair{"num_heads", num_heads}})
    if (v < 1) throw ArgumentError(cat(model, " config: ", name, " must be >= 1, got ", v));
  if (depth < 0) throw ArgumentError(cat(model, " config: depth must be >= 0, got ", depth));  // 0: embedder + final layer, as upstream
  if (input_size < patch_size) throw ArgumentError(cat(model, " config: input_size ", input_size, " is smaller than patch_size ", patch_size));
  if (hidden_size % num_heads)
    throw ArgumentError(cat(model, " config: hidden_size ", hidden_size, " must be divisible by num_heads ", num_heads));
  if (hidden_size % 4)  // get_2d_sincos_pos_embed splits D in halves, each into sin and cos
    throw ArgumentError(cat(model, " config: hidden_size ", hidden_size, " must be divisible by 4 (the 2-D sin-cos position table)"));
  if (mlp_hidden < 1)
    throw ArgumentError(cat(model, " config: hidden_size * mlp_ratio must be a width from 1 to 2^31, got mlp_ratio ", mlp_ratio));
  if (class_dropout_prob < 0) throw ArgumentError(cat(model, " config: class_dropout_prob must be >= 0, got ", class_dropout_prob));
}
// Every model refuses an empty batch, the same way: its kernels split work per sample, and an
// empty batch beside huge spatial sizes would plan tables for inputs that hold nothing.
inline void require_samples(const char* model, std::int64_t batch, const Shape& shape) {
  if (batch < 1)
    throw ShapeError(ditto::detail::cat(model, ": the batch is empty (input of shape ", shape_str(shape),
                                        "); at least one sample is needed"));
}
}  // namespace detail

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
      throw ArgumentError(ditto::detail::cat(model_, " config: \"", key, "\" must be ", want, ", got ", brief_json(v)));
    };
    if constexpr (std::is_same_v<V, bool>) {
      if (v.is_boolean()) return v.get<bool>();
      if (v.is_number_integer() && (v.get<std::int64_t>() == 0 || v.get<std::int64_t>() == 1)) return v.get<std::int64_t>() == 1;
      return fail("true or false");
    } else if constexpr (std::is_integral_v<V>) {
      if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxSize)) out_of_range(key, v);
      if (v.is_number_integer()) return static_cast<V>(bounded(key, v, v.get<std::int64_t>()));
      if (v.is_number_float() && v.get<double>() == std::floor(v.get<double>())) {  // 16.0 as Python's 16
        if (std::abs(v.get<double>()) > static_cast<double>(kMaxSize)) out_of_range(key, v);  // before the cast: 1e300 is undefined
        return static_cast<V>(v.get<double>());
      }
      return fail("an integer");
    } else if constexpr (std::is_floating_point_v<V>) {
      if (v.is_number()) return v.get<V>();
      return fail("a number");
    } else if constexpr (std::is_same_v<V, std::string>) {
      // (no string argument of any constructor is long; a bounded one is safe to quote in messages)
      if (v.is_string() && v.get_ref<const std::string&>().size() <= 256) return v.get<std::string>();
      return fail("a string of at most 256 characters");
    } else if constexpr (std::is_same_v<V, std::vector<std::int64_t>>) {
      if (!v.is_array()) return fail("a list of integers");
      std::vector<std::int64_t> out;
      for (const auto& e : v) {
        if (!e.is_number_integer()) return fail("a list of integers");
        if (e.is_number_unsigned() && e.get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxSize)) out_of_range(key, v);
        out.push_back(bounded(key, v, e.get<std::int64_t>()));
      }
      return out;
    } else {
      static_assert(sizeof(V) == 0, "Kwargs: unsupported type");
    }
  }

  // Every integer argument is a size, a count or a small flag: none is beyond 2^31 in any real
  // model, and bounding them here keeps every product of two of them (a grid of patches, a weight
  // matrix) inside 64 bits, so no later arithmetic can overflow.
  static constexpr std::int64_t kMaxSize = std::int64_t{1} << 31;
  std::int64_t bounded(const std::string& key, const nlohmann::json& v, std::int64_t x) const {
    if (x > kMaxSize || x < -kMaxSize) out_of_range(key, v);
    return x;
  }
  [[noreturn]] void out_of_range(const std::string& key, const nlohmann::json& v) const {
    throw ArgumentError(ditto::detail::cat(model_, " config: \"", key, "\" = ", brief_json(v), " is out of range (integer arguments are at most 2^31 in size)"));
  }

  const nlohmann::json& j_;
  std::string model_;
  std::set<std::string> accepted_;
};

}  // namespace ditto::models
