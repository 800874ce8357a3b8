// Training checkpoints: everything a run needs to continue bit for bit, in one .safetensors file.
//
//   train::save_checkpoint<float>("run/ckpt.safetensors", {model, &ema, opt, step, gen, config, args});
//   train::load_checkpoint<float>("run/ckpt.safetensors", {model, &ema, opt, step, gen, config, args});
//
// Tensors: model.<name> (the state dict, fixed tables included), ema.<name>, and the optimizer's
// state trees optim.<tree>.<name> (exp_avg, exp_avg_sq; momentum_buffer). Metadata: the format,
// the step, the optimizer's step count and hyperparameters, the generator's seed and offset, the
// model config and the training arguments (JSON), and a checksum of every tensor's bytes.
//
// Saving is atomic (FileWriter: temporary file, fsync, rename), so a process killed during a save
// leaves the previous checkpoint whole. Loading checks the format, the checksum, the config
// (a different one is refused naming the first differing key) and every name and shape before it
// assigns anything: a refused checkpoint changes nothing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "../io/json.hpp"
#include "../io/safetensors.hpp"
#include "../nn/module.hpp"

namespace ditto::train {

inline constexpr const char* kCheckpointFormat = "ditto-checkpoint-1";

// What a checkpoint holds, by reference: saved from, or loaded into, these objects.
template <class Model, class Optimizer>
struct TrainState {
  Model& model;
  Model* ema;  // null: no EMA
  Optimizer& optimizer;
  std::int64_t& step;
  Generator& gen;
  const nlohmann::json& config;  // the model's constructor arguments (compared on load)
  const nlohmann::json& args;    // the training arguments (saved; returned on load in args_out)
};

namespace detail {
// A 64-bit hash of bytes, 8 at a time (a multiply-xorshift mix): corruption of any byte shows.
inline std::uint64_t hash_bytes(std::uint64_t h, const unsigned char* p, std::size_t n) {
  auto mix = [](std::uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
  };
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = mix(h ^ w) * 0x9E3779B97F4A7C15ULL;
  }
  std::uint64_t tail = n;
  for (; i < n; ++i) tail = tail << 8 | p[i];
  return mix(h ^ tail);
}

// Every tensor of a checkpoint: (file name, the object's tensor).
template <class T, class Model, class Optimizer>
std::vector<std::pair<std::string, Tensor<T>*>> checkpoint_tensors(TrainState<Model, Optimizer>& s) {
  std::vector<std::pair<std::string, Tensor<T>*>> out;
  for (auto& [name, t] : nn::named_parameters<T>(s.model)) out.emplace_back("model." + name, t);
  if (s.ema)
    for (auto& [name, t] : nn::named_parameters<T>(*s.ema)) out.emplace_back("ema." + name, t);
  for (auto& [tree, m] : s.optimizer.state())
    for (auto& [name, t] : nn::trainable_parameters<T>(*m)) out.emplace_back("optim." + tree + "." + name, t);
  return out;
}

// The checksum of a checkpoint: the metadata (all but the checksum itself) and every tensor's
// bytes in name order.
template <class T>
inline std::uint64_t checksum(const nlohmann::json& meta, const std::vector<std::pair<std::string, Tensor<T>>>& sorted) {
  nlohmann::json m = meta;
  m.erase("checksum");
  const std::string text = m.dump();
  std::uint64_t h = hash_bytes(0, reinterpret_cast<const unsigned char*>(text.data()), text.size());
  for (const auto& [name, t] : sorted)
    h = hash_bytes(h, reinterpret_cast<const unsigned char*>(t.data()), static_cast<std::size_t>(t.numel()) * sizeof(T));
  return h;
}

// The first key where two JSON objects differ, as "key: a vs b" ("" when equal).
inline std::string first_difference(const nlohmann::json& a, const nlohmann::json& b) {
  if (!a.is_object() || !b.is_object()) return a == b ? "" : "(the whole config): " + brief_json(a) + " vs " + brief_json(b);
  for (const auto& [k, v] : a.items())
    if (!b.contains(k) || b[k] != v) return k + ": " + brief_json(v) + " in the checkpoint, " + (b.contains(k) ? brief_json(b[k]) : "absent") + " here";
  for (const auto& [k, v] : b.items())
    if (!a.contains(k)) return k + ": absent in the checkpoint, " + brief_json(v) + " here";
  return "";
}
}  // namespace detail

template <class T, class Model, class Optimizer>
inline void save_checkpoint(const std::string& path, TrainState<Model, Optimizer> s) {
  std::vector<std::pair<std::string, Tensor<T>>> tensors;
  for (auto& [name, t] : detail::checkpoint_tensors<T>(s)) tensors.emplace_back(name, *t);
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::json meta = {{"step", s.step},
                         {"optimizer", s.optimizer.describe()},
                         {"optimizer_steps", s.optimizer.steps},
                         {"rng_seed", std::to_string(s.gen.seed())},
                         {"rng_offset", std::to_string(s.gen.offset())},
                         {"has_ema", s.ema != nullptr}};
  meta["checksum"] = std::to_string(detail::checksum(meta, tensors));
  save_safetensors<T>(path, tensors,
                      {{"format", kCheckpointFormat}, {"ditto", meta.dump()}, {"config", s.config.dump()}, {"args", s.args.dump()}});
}

// Loads into s (the model, EMA and optimizer must be built from the same config). Returns the
// training arguments the checkpoint was saved with.
template <class T, class Model, class Optimizer>
inline nlohmann::json load_checkpoint(const std::string& path, TrainState<Model, Optimizer> s) {
  const std::string what = "load_checkpoint(\"" + path + "\")";
  const SafetensorsFile file(path);
  auto fail = [&](const std::string& why) { return IoError(what + ": " + why); };
  const auto& md = file.metadata();
  if (!md.count("format") || md.at("format") != kCheckpointFormat)
    throw fail(ditto::detail::cat("not a ditto checkpoint (metadata format is ", md.count("format") ? "\"" + md.at("format") + "\"" : "absent",
                                  ", expected \"", kCheckpointFormat, "\")"));
  for (const char* k : {"ditto", "config", "args"})
    if (!md.count(k)) throw fail(ditto::detail::cat("the metadata has no \"", k, "\" entry"));
  const nlohmann::json meta = parse_json(md.at("ditto"), what + " metadata"), config = parse_json(md.at("config"), what + " config"),
                       args = parse_json(md.at("args"), what + " args");
  // every metadata field, typed and in range, before anything else is looked at
  std::uint64_t seed = 0, offset = 0;
  std::int64_t step = 0, optimizer_steps = 0;
  bool has_ema = false;
  std::string optimizer, sum;
  try {
    auto digits = [](const nlohmann::json& v) {
      const std::string& s = v.get_ref<const std::string&>();
      if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) throw std::invalid_argument("not a whole number: " + s);
      return std::stoull(s);
    };
    seed = digits(meta.at("rng_seed"));
    offset = digits(meta.at("rng_offset"));
    step = meta.at("step").get<std::int64_t>();
    optimizer_steps = meta.at("optimizer_steps").get<std::int64_t>();
    has_ema = meta.at("has_ema").get<bool>();
    optimizer = meta.at("optimizer").get<std::string>();
    sum = meta.at("checksum").get<std::string>();
    if (step < 0 || optimizer_steps < 0) throw std::invalid_argument("a negative step count");
  } catch (const std::exception& e) {
    throw fail(std::string("the metadata is malformed: ") + e.what());
  }
  if (const std::string d = detail::first_difference(config, s.config); !d.empty())
    throw fail("the checkpoint was saved from another model config (" + d + ")");
  if (has_ema != (s.ema != nullptr))
    throw fail(s.ema ? "the checkpoint holds no EMA, but one was given" : "the checkpoint holds an EMA, but none was given");
  if (optimizer != s.optimizer.describe())
    throw fail("the checkpoint's optimizer is " + optimizer + ", this run's is " + s.optimizer.describe());
  // every name, shape and dtype, before anything is read
  const auto dest = detail::checkpoint_tensors<T>(s);
  std::vector<std::string> problems;
  for (const auto& [name, t] : dest) {
    if (!file.contains(name)) problems.push_back(name + " (missing)");
    else if (file.info(name).shape != t->shape())
      problems.push_back(name + " (file " + shape_str(file.info(name).shape) + ", model " + shape_str(t->shape()) + ")");
    else if (file.info(name).dtype != ditto::detail::dtype_of<T>())
      problems.push_back(name + " (stored as " + dtype_name(file.info(name).dtype) + ", loaded as " + dtype_name(ditto::detail::dtype_of<T>()) + ")");
  }
  if (file.tensors().size() != dest.size()) problems.push_back(ditto::detail::cat("the file holds ", file.tensors().size(), " tensors, ", dest.size(), " expected"));
  if (!problems.empty()) {
    std::string list;
    for (std::size_t i = 0; i < problems.size() && i < 5; ++i) list += (i ? ", " : "") + problems[i];
    throw fail(ditto::detail::cat(problems.size(), " problem(s): ", list, problems.size() > 5 ? ", ..." : ""));
  }
  // read into new tensors, check the checksum over them (name order) and the metadata
  std::vector<std::pair<std::string, Tensor<T>>> read;
  for (const auto& [name, t] : dest) read.emplace_back(name, file.get<T>(name));
  std::vector<std::pair<std::string, Tensor<T>>> sorted = read;
  std::sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  if (sum != std::to_string(detail::checksum(meta, sorted)))
    throw fail("the checksum does not match the one saved: the file is corrupted");
  // nothing can fail from here: the state changes all at once
  for (std::size_t i = 0; i < dest.size(); ++i) *dest[i].second = std::move(read[i].second);
  s.step = step;
  s.optimizer.steps = optimizer_steps;
  s.gen = Generator(seed, offset);
  return args;
}

}  // namespace ditto::train
