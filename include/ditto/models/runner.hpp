// What ditto-forward does, as a library call: build a model from its upstream constructor's
// arguments (JSON), load upstream weights by name, read the forward() arguments from a
// safetensors file, run the forward (or forward_with_cfg), and return the outputs by name:
// `out`, and with trace, `trace.<module>` for each top-level submodule.
//
//   auto outputs = models::run_forward({"dit", config, weights, inputs});
//   save_safetensors("out.safetensors", outputs);
//
// Every problem (unknown model, config key, missing or mis-shaped weight or input, input of
// the wrong type) is a ditto error naming what was expected and what was found.
//
// Lazy on purpose: run_forward and the run_* functions it calls are templates (`template <int
// = 0>`) only so that a file that includes this header compiles the models' forwards and
// backwards where it calls run_forward, not in every file. An inline non-template is compiled,
// with every template it calls, in each file that includes it (docs/development.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/rng.hpp"
#include "../io/safetensors.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "dit.hpp"
#include "latte.hpp"
#include "unet.hpp"
#include "vae.hpp"
#include "uvit.hpp"
#include "vit.hpp"
#include "vivit.hpp"

namespace ditto::models {

struct ForwardRequest {
  std::string model;               // vit, vivit, dit, uvit, unet, latte, vae-encode, vae-decode
  nlohmann::json config;           // the upstream constructor's keyword arguments
  const SafetensorsFile* weights = nullptr;
  const SafetensorsFile* inputs = nullptr;
  std::optional<double> cfg_scale;  // --cfg-scale; an input tensor `cfg_scale` also selects it
  bool trace = false;
  bool backward = false;            // --backward: also the gradients of sum(out * grad_out) (docs/forward.md)
  std::uint64_t seed = 0;           // --seed: vae-encode's posterior noise when the inputs hold none
};

using NamedTensors = std::vector<std::pair<std::string, Tensor<float>>>;

namespace detail {
inline bool is_integer(DType d) {
  return d == DType::I64 || d == DType::I32 || d == DType::I16 || d == DType::I8 || d == DType::U8;
}

// The forward() arguments in an inputs file: each name must be one the model takes.
struct Inputs {
  const SafetensorsFile& file;
  std::string model;
  std::set<std::string> accepted;

  bool has(const std::string& name) {
    accepted.insert(name);
    return file.contains(name);
  }
  void require(const std::string& name) {
    if (!has(name))
      throw ArgumentError(ditto::detail::cat(model, ": the inputs have no tensor named \"", name, "\" (", model, "'s forward takes ",
                                             expected(), ")"));
  }
  std::string expected() const {
    std::string s;
    for (const auto& n : accepted) s += (s.empty() ? "" : ", ") + n;
    return s;
  }
  // A float tensor of a given rank (any float or integer dtype; integers are exact below 2^24).
  Tensor<float> floats(const std::string& name, int rank) {
    require(name);
    const auto& info = file.info(name);
    if (static_cast<int>(info.shape.size()) != rank)
      throw ShapeError(ditto::detail::cat(model, ": input \"", name, "\" must have ", rank, " dimensions, got shape ", shape_str(info.shape)));
    Tensor<float> t = file.get<float>(name);
    for (float v : t)
      if (!std::isfinite(v)) throw ArgumentError(ditto::detail::cat(model, ": input \"", name, "\" holds a non-finite value (", v, ")"));
    return t;
  }
  // Labels: an integer dtype only (a float label would be truncated silently).
  Tensor<std::int64_t> labels(const std::string& name, std::size_t rank = 1, const char* shape = "(B)") {
    require(name);
    const auto& info = file.info(name);
    if (!is_integer(info.dtype))
      throw ArgumentError(ditto::detail::cat(model, ": input \"", name, "\" holds class labels and must be I64 (an integer type), got ",
                                             dtype_name(info.dtype)));
    if (info.shape.size() != rank)
      throw ShapeError(ditto::detail::cat(model, ": input \"", name, "\" must have shape ", shape, ", got ", shape_str(info.shape)));
    return file.get<std::int64_t>(name);
  }
  // After reading: anything else in the file is an error, so a misspelled name is not ignored.
  void finish() const {
    for (const auto& n : file.names())
      if (!accepted.count(n))
        throw ArgumentError(ditto::detail::cat(model, ": unexpected input \"", n, "\"; ", model, "'s forward takes ", expected()));
  }
};

// The guidance scale of a model with forward_with_cfg: --cfg-scale, or a 1-element input
// `cfg_scale` (both: they must agree); none: the plain forward.
inline std::optional<double> guidance_scale(const ForwardRequest& r, Inputs& in, const char* model) {
  std::optional<double> scale = r.cfg_scale;
  if (in.has("cfg_scale")) {
    const Tensor<float> s = in.floats("cfg_scale", static_cast<int>(r.inputs->info("cfg_scale").shape.size()));
    if (s.numel() != 1)
      throw ShapeError(ditto::detail::cat(model, ": input \"cfg_scale\" must hold one value, got shape ", shape_str(s.shape())));
    if (r.cfg_scale && *r.cfg_scale != s[0])
      throw ArgumentError(ditto::detail::cat(model, ": --cfg-scale ", *r.cfg_scale, " and the input cfg_scale ", s[0], " disagree"));
    scale = s[0];
  }
  return scale;
}

// Before a model is built: a weights file with far fewer values than the config's model has
// parameters (a lower bound) cannot load, so it is refused before gigabytes are allocated and
// zero-filled for a model whose weights were never there. A smaller gap (under 2^26 values,
// 256 MB) is left to the load, whose report names each missing or mis-shaped tensor.
inline void check_weights_cover(const char* model, double min_weights, const SafetensorsFile& weights) {
  double values = 0;
  for (const auto& [name, info] : weights.tensors()) {
    double n = 1;
    for (auto d : info.shape) n *= static_cast<double>(d);
    values += n;
  }
  if (min_weights - values > static_cast<double>(std::int64_t{1} << 26))
    throw IoError(ditto::detail::cat(model, ": the weights file \"", weights.path(), "\" holds ", values,
                                     " values, but the config's model has at least ", min_weights,
                                     " parameters: the config does not describe these weights"));
}

// The model of r.config, built once the weights file can hold it (check_weights_cover).
template <class Model>
inline Model model_for(const ForwardRequest& r, const char* upstream) {
  using Config = std::remove_cvref_t<decltype(std::declval<Model>().config)>;
  const Config config = Config::from_json(r.config);
  check_weights_cover(upstream, config.min_weights(), *r.weights);
  return Model(config);
}

template <class Model>
inline void load_weights(Model& m, const SafetensorsFile& weights) {
  nn::load<float>(m, weights, /*strict=*/true);
}

// With --trace, each module's output is added to the outputs as "trace.<name>".
inline Trace<float> trace_into(const ForwardRequest& r, NamedTensors& outputs) {
  if (!r.trace) return {};
  return [&outputs](const std::string& name, const Tensor<float>& v) { outputs.emplace_back("trace." + name, v.clone()); };
}

// --backward: the gradient of every trainable parameter, under "grad.<upstream name>".
template <class Model>
inline void add_parameter_grads(NamedTensors& outputs, Model& grads) {
  for (auto& [name, g] : nn::trainable_parameters<float>(grads)) outputs.emplace_back("grad." + name, *g);
}

// --backward for a model with forward_train / backward: out, every trainable parameter's
// gradient of sum(out * grad_out), and grad.x. forward_train(acts) runs the model's training forward.
template <class Model, class ForwardTrain>
inline NamedTensors run_backward(const ForwardRequest& r, const char* upstream, Model& model, const Tensor<float>& grad_out,
                                 ForwardTrain&& forward_train) {
  if (r.trace) throw ArgumentError(std::string(upstream) + ": --backward and --trace are one or the other");
  NamedTensors outputs;
  typename Model::Acts acts;
  outputs.emplace_back("out", forward_train(acts));
  auto grads = nn::zeros_like<float>(model);
  Tensor<float> dx;
  model.backward(grads, acts, grad_out, &dx);
  add_parameter_grads(outputs, grads);
  outputs.emplace_back("grad.x", std::move(dx));
  return outputs;
}

template <int = 0>  // lazy: see the top of this file
inline NamedTensors run_dit(const ForwardRequest& r) {
  DiT<float> dit = model_for<DiT<float>>(r, "DiT");
  load_weights(dit, *r.weights);
  Inputs in{*r.inputs, "DiT", {}};
  const Tensor<float> x = in.floats("x", 4), t = in.floats("t", 1);
  const Tensor<std::int64_t> y = in.labels("y");
  const std::optional<double> scale = guidance_scale(r, in, "DiT");
  std::optional<Tensor<float>> grad_out;
  if (r.backward) grad_out = in.floats("grad_out", 4);
  in.finish();
  NamedTensors outputs;
  if (r.backward) {  // eval semantics (no label dropout), as upstream's model.eval() with autograd
    if (scale) throw ArgumentError("DiT: --backward takes no guidance scale (forward_with_cfg has no backward here)");
    return run_backward(r, "DiT", dit, *grad_out, [&](DiT<float>::Acts& acts) { return dit.forward_train(x, t, y, acts); });
  }
  const Trace<float> trace = trace_into(r, outputs);
  Tensor<float> out = scale ? dit.forward_with_cfg(x, t, y, *scale, trace) : dit.forward(x, t, y, trace);
  outputs.emplace_back("out", std::move(out));
  return outputs;
}

// A model without an upstream forward_with_cfg refuses guidance, from the flag or the inputs.
inline void refuse_guidance(const ForwardRequest& r, const std::string& model) {
  if (r.cfg_scale || r.inputs->contains("cfg_scale"))
    throw ArgumentError(model + " has no forward_with_cfg upstream, so it takes no guidance scale (--cfg-scale or an input cfg_scale)");
}

// The classifiers: forward(x) -> logits. ViT takes images (rank 4), ViViT videos (rank 5).
template <class Model, class Config>
inline NamedTensors run_classifier(const ForwardRequest& r, const char* upstream, std::int64_t rank) {
  refuse_guidance(r, upstream);
  Model model = model_for<Model>(r, upstream);
  load_weights(model, *r.weights);
  Inputs in{*r.inputs, upstream, {}};
  const Tensor<float> x = in.floats("x", rank);
  std::optional<Tensor<float>> grad_out;
  if (r.backward) grad_out = in.floats("grad_out", static_cast<int>(r.inputs->contains("grad_out") ? r.inputs->info("grad_out").shape.size() : 2));
  in.finish();
  NamedTensors outputs;
  if (r.backward) {
    if constexpr (requires { typename Model::Acts; }) {
      return run_backward(r, upstream, model, *grad_out, [&](typename Model::Acts& acts) { return model.forward_train(x, acts); });
    } else {
      throw ArgumentError(ditto::detail::cat("--backward: ", r.model, " has no backward in ditto yet (docs/training.md lists what comes next)"));
    }
  }
  const Trace<float> trace = trace_into(r, outputs);
  outputs.emplace_back("out", model.forward(x, trace));
  return outputs;
}

// U-ViT and the U-Net: forward(x, timesteps, y or nullptr), no guidance upstream.
template <class Model, class Config>
inline NamedTensors run_x_timesteps_y(const ForwardRequest& r, const char* upstream) {
  refuse_guidance(r, upstream);
  Model model = model_for<Model>(r, upstream);
  load_weights(model, *r.weights);
  Inputs in{*r.inputs, upstream, {}};
  const Tensor<float> x = in.floats("x", 4), t = in.floats("timesteps", 1);
  std::optional<Tensor<std::int64_t>> y;
  if (in.has("y")) y = in.labels("y");
  std::optional<Tensor<float>> grad_out;
  if (r.backward) grad_out = in.floats("grad_out", 4);
  in.finish();
  NamedTensors outputs;
  if (r.backward) {
    if constexpr (requires { typename Model::Acts; }) {
      return run_backward(r, upstream, model, *grad_out,
                          [&](typename Model::Acts& acts) { return model.forward_train(x, t, y ? &*y : nullptr, acts); });
    } else {
      throw ArgumentError(ditto::detail::cat("--backward: ", r.model, " has no backward in ditto yet (docs/training.md lists what comes next)"));
    }
  }
  const Trace<float> trace = trace_into(r, outputs);
  outputs.emplace_back("out", model.forward(x, t, y ? &*y : nullptr, trace));
  return outputs;
}

template <int = 0>  // lazy: see the top of this file
inline NamedTensors run_latte(const ForwardRequest& r) {
  Latte<float> latte = model_for<Latte<float>>(r, "Latte");
  load_weights(latte, *r.weights);
  Inputs in{*r.inputs, "Latte", {}};
  const Tensor<float> x = in.floats("x", 5), t = in.floats("t", 1);
  std::optional<Tensor<std::int64_t>> y;
  if (in.has("y")) y = in.labels("y");
  std::optional<double> scale = guidance_scale(r, in, "Latte");
  // latte_img.py's forward(..., y_image, use_image_num): images after the video frames
  std::int64_t use_image_num = 0;
  std::optional<Tensor<std::int64_t>> y_image;
  if (in.has("use_image_num")) {
    const Tensor<std::int64_t> n = in.labels("use_image_num", 1, "(1)");
    if (n.numel() != 1) throw ShapeError(ditto::detail::cat("Latte: input \"use_image_num\" must hold one integer, got shape ", shape_str(n.shape())));
    use_image_num = n[0];
  }
  if (in.has("y_image")) y_image = in.labels("y_image", 2, "(B, use_image_num)");
  std::optional<Tensor<float>> text;  // extras = 78: (B, 77, 768), any shape upstream's reshape(B, -1) takes
  if (in.has("text_embedding")) {
    const int rank = static_cast<int>(r.inputs->info("text_embedding").shape.size());
    if (rank < 2) throw ShapeError(ditto::detail::cat("Latte: input \"text_embedding\" must be (B, 77, 768), got shape ",
                                                    shape_str(r.inputs->info("text_embedding").shape)));
    text = in.floats("text_embedding", rank);
  }
  std::optional<Tensor<float>> grad_out;
  if (r.backward) grad_out = in.floats("grad_out", 5);
  in.finish();
  if (scale && use_image_num)
    throw ArgumentError("Latte: forward_with_cfg takes no images (use_image_num), as upstream's does not");
  NamedTensors outputs;
  const Tensor<std::int64_t>* yp = y ? &*y : nullptr;
  const Tensor<float>* tp = text ? &*text : nullptr;
  if (r.backward) {  // eval semantics (no label dropout), as upstream's model.eval() with autograd
    if (scale) throw ArgumentError("Latte: --backward takes no guidance scale (forward_with_cfg has no backward here)");
    if (r.trace) throw ArgumentError("Latte: --backward and --trace are one or the other");
    Latte<float>::Acts acts;
    outputs.emplace_back("out", latte.forward_train(x, t, yp, acts, use_image_num, y_image ? &*y_image : nullptr, tp));
    auto grads = nn::zeros_like<float>(latte);
    Tensor<float> dx, dtext;
    latte.backward(grads, acts, *grad_out, &dx, tp ? &dtext : nullptr);
    add_parameter_grads(outputs, grads);
    outputs.emplace_back("grad.x", std::move(dx));
    if (tp) outputs.emplace_back("grad.text_embedding", dtext.reshape(tp->shape()));
    return outputs;
  }
  const Trace<float> trace = trace_into(r, outputs);
  outputs.emplace_back("out", scale ? latte.forward_with_cfg(x, t, yp, *scale, trace, tp)
                                    : latte.forward(x, t, yp, trace, use_image_num, y_image ? &*y_image : nullptr, tp));
  return outputs;
}

// vae-encode: x -> out (the posterior mean), logvar (clamped), z = scale_factor (mean + std noise);
// vae-decode: z (scaled) -> out.
template <int = 0>  // lazy: see the top of this file
inline NamedTensors run_vae(const ForwardRequest& r, bool encode) {
  refuse_guidance(r, "FrozenAutoencoderKL");
  AutoencoderKL<float> vae = model_for<AutoencoderKL<float>>(r, "FrozenAutoencoderKL");
  const bool diffusers = has_diffusers_vae_names(*r.weights);
  const nn::ConversionTable table = diffusers ? diffusers_vae_table(vae) : nn::ConversionTable{};
  if (diffusers) nn::load<float>(vae, *r.weights, table);  // either naming loads
  else load_weights(vae, *r.weights);
  Inputs in{*r.inputs, encode ? "vae-encode" : "vae-decode", {}};
  NamedTensors outputs;
  if (r.backward && r.trace) throw ArgumentError("FrozenAutoencoderKL: --backward and --trace are one or the other");
  const Trace<float> trace = trace_into(r, outputs);
  // --backward: every parameter's gradient (upstream's wrapper freezes none of them for this
  // purpose: all are listed, the half a call never reaches as zeros), named as the weights file
  // names it (CompVis or diffusers, in the file's shape: diffusers' attention projections are
  // Linear (C, C)).
  auto add_grads = [&](AutoencoderKL<float>& grads) {
    for (auto& [name, g] : nn::trainable_parameters<float>(grads)) {
      if (!diffusers) {
        outputs.emplace_back("grad." + name, *g);
        continue;
      }
      const std::string n = nn::source_of(table, *r.weights, name).names.front();  // its name and shape in the file
      outputs.emplace_back("grad." + n, g->reshape(r.weights->info(n).shape));
    }
  };
  if (encode) {
    const Tensor<float> x = in.floats("x", 4);
    std::optional<Tensor<float>> noise;
    if (in.has("noise")) noise = in.floats("noise", 4);
    std::optional<Tensor<float>> grad_out;
    if (r.backward) grad_out = in.floats("grad_out", 4);
    in.finish();
    AutoencoderKL<float>::EncodeActs acts;
    auto post = r.backward ? vae.encode_train(x, acts) : vae.encode(x, trace);
    if (r.backward) {  // the gradients of sum(mean * grad_out); none for the noise
      auto grads = nn::zeros_like<float>(vae);
      Tensor<float> dx;
      vae.encode_backward(grads, acts, *grad_out, Tensor<float>(), &dx);
      add_grads(grads);
      outputs.emplace_back("grad.x", std::move(dx));
    }
    Generator gen(r.seed);
    Tensor<float> z = noise ? vae.sample(post, *noise) : vae.sample(post, gen);
    outputs.emplace_back("out", std::move(post.mean));
    outputs.emplace_back("logvar", std::move(post.logvar));
    outputs.emplace_back("z", std::move(z));
  } else {
    const Tensor<float> z = in.floats("z", 4);
    std::optional<Tensor<float>> grad_out;
    if (r.backward) grad_out = in.floats("grad_out", 4);
    in.finish();
    if (!r.backward) {
      outputs.emplace_back("out", vae.decode(z, trace));
      return outputs;
    }
    AutoencoderKL<float>::DecodeActs acts;
    outputs.emplace_back("out", vae.decode_train(z, acts));
    auto grads = nn::zeros_like<float>(vae);
    Tensor<float> dz;
    vae.decode_backward(grads, acts, *grad_out, &dz);
    add_grads(grads);
    outputs.emplace_back("grad.z", std::move(dz));
  }
  return outputs;
}
}  // namespace detail

inline const std::vector<std::string>& forward_models() {
  static const std::vector<std::string> names = {"vit", "vivit", "dit", "uvit", "unet", "latte", "vae-encode", "vae-decode"};
  return names;
}

template <int = 0>  // lazy: see the top of this file
inline NamedTensors run_forward(const ForwardRequest& r) {
  if (!r.weights || !r.inputs) throw ArgumentError("run_forward: weights and inputs are required");
  if (r.cfg_scale && !std::isfinite(*r.cfg_scale))
    throw ArgumentError(ditto::detail::cat("run_forward: the guidance scale must be finite, got ", *r.cfg_scale));
  if (r.model == "dit") return detail::run_dit(r);
  if (r.model == "vit") return detail::run_classifier<ViT<float>, ViTConfig>(r, "VisionTransformer", 4);
  if (r.model == "vivit") return detail::run_classifier<ViViT<float>, ViViTConfig>(r, "ViViT", 5);
  if (r.model == "uvit") return detail::run_x_timesteps_y<UViT<float>, UViTConfig>(r, "UViT");
  if (r.model == "unet") return detail::run_x_timesteps_y<UNet<float>, UNetConfig>(r, "UNetModel");
  if (r.model == "latte") return detail::run_latte(r);
  if (r.model == "vae-encode" || r.model == "vae-decode") return detail::run_vae(r, r.model == "vae-encode");
  throw ArgumentError(ditto::detail::cat("unknown --model \"", r.model, "\"; expected one of vit, vivit, dit, uvit, unet, latte, vae-encode, vae-decode"));
}

}  // namespace ditto::models
