// DiT (Peebles & Xie 2023) as facebookresearch/DiT's models.py builds it: patch embedding plus
// fixed sin-cos positions, timestep and label embeddings summed into a condition c, N
// transformer blocks with adaLN-Zero, a final adaLN layer, unpatchify. Parameter names are
// upstream's state-dict keys, so DiT's released checkpoints (converted to .safetensors) load
// as they are.
//
//   auto dit = models::DiT<float>(models::dit_config("DiT-XL/2"));
//   nn::load(dit, "DiT-XL-2-256x256.safetensors");
//   auto out = dit.forward(x, t, y);        // x (B, 4, 32, 32), t (B) float, y (B) int64
//
// One DiT block, with c the condition (B, D) and x the tokens (B, N, D):
//   shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c)).chunk(6)
//   x = x + gate1 * attn(LayerNorm(x) * (1 + scale1) + shift1)
//   x = x + gate2 * mlp(LayerNorm(x) * (1 + scale2) + shift2)
// (LayerNorm without affine, eps 1e-6; mlp = fc1, GELU-tanh, fc2.) The forward fuses each
// LayerNorm with its modulation and each gate with its residual into single passes, computes
// SiLU(c) once for all blocks, and runs every block in one set of buffers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../diffusion/guidance.hpp"
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/embedding.hpp"
#include "../nn/linear.hpp"
#include "../nn/mlp.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "config.hpp"

namespace ditto::models {

// DiT.__init__'s arguments, with its defaults (DiT-XL/2 on 256x256 ImageNet latents).
struct DiTConfig {
  std::int64_t input_size = 32, patch_size = 2, in_channels = 4, hidden_size = 1152, depth = 28, num_heads = 16;
  double mlp_ratio = 4.0, class_dropout_prob = 0.1;
  std::int64_t num_classes = 1000;
  bool learn_sigma = true;

  std::int64_t out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  std::int64_t grid() const { return input_size / patch_size; }
  std::int64_t mlp_hidden() const { return detail::scaled_width(hidden_size, mlp_ratio); }

  // From upstream's keyword arguments (JSON); unknown keys are an error.
  static DiTConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "DiT");
    DiTConfig c;
    c.input_size = kw.get("input_size", c.input_size);
    c.patch_size = kw.get("patch_size", c.patch_size);
    c.in_channels = kw.get("in_channels", c.in_channels);
    c.hidden_size = kw.get("hidden_size", c.hidden_size);
    c.depth = kw.get("depth", c.depth);
    c.num_heads = kw.get("num_heads", c.num_heads);
    c.mlp_ratio = kw.get("mlp_ratio", c.mlp_ratio);
    c.class_dropout_prob = kw.get("class_dropout_prob", c.class_dropout_prob);
    c.num_classes = kw.get("num_classes", c.num_classes);
    c.learn_sigma = kw.get("learn_sigma", c.learn_sigma);
    kw.finish();
    c.validate();
    return c;
  }

  // What upstream's constructor would refuse (or build into a model that cannot run).
  void validate() const {
    using ditto::detail::cat;
    for (auto [name, v] : {std::pair{"input_size", input_size}, std::pair{"patch_size", patch_size},
                           std::pair{"in_channels", in_channels}, std::pair{"hidden_size", hidden_size},
                           std::pair{"num_heads", num_heads}, std::pair{"num_classes", num_classes}})
      if (v < 1) throw ArgumentError(cat("DiT config: ", name, " must be >= 1, got ", v));
    if (depth < 0) throw ArgumentError(cat("DiT config: depth must be >= 0, got ", depth));  // 0: embedder + final layer, as upstream
    if (input_size < patch_size)
      throw ArgumentError(cat("DiT config: input_size ", input_size, " is smaller than patch_size ", patch_size));
    if (hidden_size % num_heads)
      throw ArgumentError(cat("DiT config: hidden_size ", hidden_size, " must be divisible by num_heads ", num_heads));
    if (hidden_size % 4)  // get_2d_sincos_pos_embed splits D in halves, each into sin and cos
      throw ArgumentError(cat("DiT config: hidden_size ", hidden_size, " must be divisible by 4 (the 2-D sin-cos position table)"));
    if (mlp_hidden() < 1) throw ArgumentError(cat("DiT config: hidden_size * mlp_ratio must be a width from 1 to 2^31, got mlp_ratio ", mlp_ratio));
    if (class_dropout_prob < 0) throw ArgumentError(cat("DiT config: class_dropout_prob must be >= 0, got ", class_dropout_prob));
    detail::check_weights_fit("DiT", detail::transformer_weights(depth, hidden_size, mlp_hidden(), 10) +
                                         static_cast<double>(num_classes * hidden_size));
  }
};

// The named configs of models.py: "DiT-XL/2", "DiT-L/4", "DiT-B/8", "DiT-S/2", ...
inline DiTConfig dit_config(const std::string& name, std::int64_t input_size = 32) {
  DiTConfig c;
  c.input_size = input_size;
  const auto slash = name.find('/');
  const std::string size = name.substr(0, slash == std::string::npos ? name.size() : slash);
  const std::string patch = slash == std::string::npos ? "" : name.substr(slash + 1);
  bool known = true;
  if (size == "DiT-XL") c.depth = 28, c.hidden_size = 1152, c.num_heads = 16;
  else if (size == "DiT-L") c.depth = 24, c.hidden_size = 1024, c.num_heads = 16;
  else if (size == "DiT-B") c.depth = 12, c.hidden_size = 768, c.num_heads = 12;
  else if (size == "DiT-S") c.depth = 12, c.hidden_size = 384, c.num_heads = 6;
  else known = false;
  if (!known || (patch != "2" && patch != "4" && patch != "8"))
    throw ArgumentError(ditto::detail::cat("dit_config: unknown model \"", name,
                                           "\"; expected DiT-S, DiT-B, DiT-L or DiT-XL with /2, /4 or /8, e.g. DiT-XL/2"));
  c.patch_size = patch[0] - '0';
  return c;
}

// timm's PatchEmbed is a stride-p convolution, so an image whose size p does not divide loses
// its last rows and columns: x (B, C, S, S) cropped to the largest multiple of p.
template <class T>
inline Tensor<T> crop_to_patches(const Tensor<T>& x, std::int64_t p) {
  const std::int64_t S = x.size(2), kept = S / p * p, BC = x.size(0) * x.size(1);
  if (kept == S && x.size(3) == S) return x;
  Tensor<T> out = Tensor<T>::empty({x.size(0), x.size(1), kept, kept});
  for (std::int64_t bc = 0; bc < BC; ++bc)
    for (std::int64_t r = 0; r < kept; ++r)
      std::copy(x.data() + (bc * S + r) * x.size(3), x.data() + (bc * S + r) * x.size(3) + kept, out.data() + (bc * kept + r) * kept);
  return out;
}

// forward_with_cfg's input: the first half of the batch, twice ([x[:B/2]; x[:B/2]]); upstream
// ignores the second half of x and takes the labels of both halves of y.
template <class T>
inline Tensor<T> repeat_first_half(const Tensor<T>& x, const char* model) {
  if (x.dim() < 1 || x.size(0) % 2)
    throw ShapeError(ditto::detail::cat(model, ".forward_with_cfg: expected an even batch (conditional half, then unconditional), got ",
                                        shape_str(x.shape())));
  const std::int64_t half = x.numel() / 2;
  Tensor<T> combined = Tensor<T>::empty(x.shape());
  std::copy(x.data(), x.data() + half, combined.data());
  std::copy(x.data(), x.data() + half, combined.data() + half);
  return combined;
}

// Called with (upstream module name, its output) after each top-level submodule, when given.
template <class T>
using Trace = std::function<void(const std::string&, const Tensor<T>&)>;

namespace detail {
// y[r] = LayerNorm(x[r]) * (1 + scale[b]) + shift[b] for rows r of batch entry b = r / n:
// DiT's modulate(norm(x), shift, scale) in one pass. LayerNorm without affine, eps as given.
template <class T>
inline void norm_modulate(const T* x, T* y, std::int64_t rows, std::int64_t n_per_batch, std::int64_t d, const T* shift,
                          const T* scale, std::int64_t mod_stride, double eps) {
  parallel_for(rows, rows * d * 6, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const T* xr = x + r * d;
      T* yr = y + r * d;
      const std::int64_t b = r / n_per_batch;
      const T* sh = shift + b * mod_stride;
      const T* sc = scale + b * mod_stride;
      const T mean = nn::detail::row_sum(xr, d, T(0), false) / static_cast<T>(d);
      const T var = nn::detail::row_sum(xr, d, mean, true) / static_cast<T>(d);
      const T rstd = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var) + eps));
      for (std::int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * rstd * (T(1) + sc[i]) + sh[i];
    }
  });
}
// x[r] += gate[b] * y[r]: the adaLN-Zero gated residual.
template <class T>
inline void gated_add(T* x, const T* y, std::int64_t rows, std::int64_t n_per_batch, std::int64_t d, const T* gate,
                      std::int64_t mod_stride) {
  parallel_for(rows, rows * d, [&](std::int64_t lo, std::int64_t hi) {
    for (auto r = lo; r < hi; ++r) {
      const T* g = gate + (r / n_per_batch) * mod_stride;
      T* xr = x + r * d;
      const T* yr = y + r * d;
      for (std::int64_t i = 0; i < d; ++i) xr[i] += g[i] * yr[i];
    }
  });
}
}  // namespace detail

// DiT's TimestepEmbedder: 256 sinusoidal features (cos first), then Linear, SiLU, Linear.
template <class T = float>
struct TimestepEmbedder {
  std::int64_t frequency_embedding_size = 256;
  nn::Linear<T> mlp0, mlp2;

  TimestepEmbedder() = default;
  TimestepEmbedder(std::int64_t hidden, std::int64_t freq = 256)
      : frequency_embedding_size(freq), mlp0(freq, hidden), mlp2(hidden, hidden) {}

  template <class V>
  void visit(V& v) {
    v("mlp.0", mlp0);
    v("mlp.2", mlp2);
  }

  // t: (B) timesteps, fractional allowed -> (B, hidden)
  Tensor<T> forward(const Tensor<T>& t) const {
    Tensor<T> h = mlp0.forward(nn::timestep_embedding(t, frequency_embedding_size));
    nn::activate(h.data(), h.numel(), nn::Activation::silu);
    return mlp2.forward(h);
  }
};

// DiT's LabelEmbedder: a table of num_classes rows, plus the null class (row num_classes) used
// for classifier-free guidance when the model was trained with label dropout.
template <class T = float>
struct LabelEmbedder {
  std::int64_t num_classes = 0;
  nn::Embedding<T> embedding_table;

  LabelEmbedder() = default;
  LabelEmbedder(std::int64_t classes, std::int64_t hidden, double dropout_prob)
      : num_classes(classes), embedding_table(classes + (dropout_prob > 0 ? 1 : 0), hidden) {}

  template <class V>
  void visit(V& v) {
    v("embedding_table", embedding_table);
  }

  Tensor<T> forward(const Tensor<std::int64_t>& y) const {
    for (std::int64_t i = 0; i < y.numel(); ++i)
      if (y[i] < 0 || y[i] >= embedding_table.num_embeddings)
        throw ShapeError(ditto::detail::cat("DiT: label ", y[i], " is outside [0, ", embedding_table.num_embeddings, ")",
                                            embedding_table.num_embeddings > num_classes ? " (the last is the null class)"
                                                                                         : " (no null class: class_dropout_prob is 0)"));
    return embedding_table.forward(y);
  }
};

// Buffers one forward reuses across blocks: tokens x, a normed copy h, q/k/v, attention and MLP
// intermediates. Sized on first use; a larger batch grows them.
template <class T>
struct DiTBuffers {
  Tensor<T> h, qkv, o, y, hidden;
  void ensure(std::int64_t rows, std::int64_t d, std::int64_t mlp_hidden) {
    if (h.numel() >= rows * d && hidden.numel() >= rows * mlp_hidden) return;
    h = Tensor<T>::empty({rows, d});
    qkv = Tensor<T>::empty({rows, 3 * d});
    o = Tensor<T>::empty({rows, d});
    y = Tensor<T>::empty({rows, d});
    hidden = Tensor<T>::empty({rows, mlp_hidden});
  }
};

template <class T = float>
struct DiTBlock {
  std::int64_t hidden_size = 0;
  nn::Attention<T> attn;
  nn::Mlp<T> mlp;
  nn::Linear<T> adaLN_modulation;  // "adaLN_modulation.1": SiLU is module 0

  DiTBlock() = default;
  DiTBlock(std::int64_t hidden, std::int64_t heads, std::int64_t mlp_hidden)
      : hidden_size(hidden), attn(hidden, heads, /*qkv_bias=*/true), mlp(hidden, mlp_hidden, hidden, nn::Activation::gelu_tanh),
        adaLN_modulation(hidden, 6 * hidden) {}

  template <class V>
  void visit(V& v) {
    v("attn", attn);
    v("mlp", mlp);
    v("adaLN_modulation.1", adaLN_modulation);
  }

  // x: rows of D, updated in place; every rows_per_cond consecutive rows share one condition,
  // mod: (rows / rows_per_cond, 6D) = adaLN_modulation(SiLU(c)). attend(h, y) runs the attention
  // from the normed rows h into y (packed sequences for DiT, also strided ones for video).
  template <class Attend>
  void forward_with(T* x, std::int64_t rows, std::int64_t rows_per_cond, const T* mod, DiTBuffers<T>& buf, Attend&& attend) const {
    const std::int64_t D = hidden_size, S = 6 * D, n = rows_per_cond;
    detail::norm_modulate(x, buf.h.data(), rows, n, D, mod + 0 * D, mod + 1 * D, S, 1e-6);
    attend(buf.h.data(), buf.y.data());
    detail::gated_add(x, buf.y.data(), rows, n, D, mod + 2 * D, S);
    detail::norm_modulate(x, buf.h.data(), rows, n, D, mod + 3 * D, mod + 4 * D, S, 1e-6);
    mlp.forward_into(buf.h.data(), buf.y.data(), rows, buf.hidden.data());
    detail::gated_add(x, buf.y.data(), rows, n, D, mod + 5 * D, S);
  }

  // x: B * n token rows of D (sequences cu), updated in place. mod: (B, 6D).
  void forward_inplace(T* x, std::int64_t B, std::int64_t n, const T* mod, const std::vector<std::int64_t>& cu,
                       DiTBuffers<T>& buf) const {
    forward_with(x, B * n, n, mod, buf,
                 [&](const T* h, T* y) { attn.forward_packed_into(h, cu, y, buf.qkv.data(), buf.o.data()); });
  }

  // The block alone (allocating): x (B, N, D), c (B, D).
  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& c) const {
    if (x.dim() != 3 || x.size(2) != hidden_size || c.dim() != 2 || c.size(0) != x.size(0) || c.size(1) != hidden_size)
      throw ShapeError(ditto::detail::cat("DiTBlock(", hidden_size, "): expected x (B, N, ", hidden_size, ") and c (B, ", hidden_size,
                                          "), got ", shape_str(x.shape()), " and ", shape_str(c.shape())));
    const std::int64_t B = x.size(0), n = x.size(1);
    const Tensor<T> mod = adaLN_modulation.forward(nn::silu(c));
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * n);
    DiTBuffers<T> buf;
    buf.ensure(B * n, hidden_size, mlp.fc1.out_features);
    Tensor<T> out = x.clone();
    forward_inplace(out.data(), B, n, mod.data(), cu, buf);
    return out;
  }
};

template <class T = float>
struct FinalLayer {
  std::int64_t hidden_size = 0;
  nn::Linear<T> linear, adaLN_modulation;  // "adaLN_modulation.1"

  FinalLayer() = default;
  FinalLayer(std::int64_t hidden, std::int64_t patch, std::int64_t out_channels)
      : hidden_size(hidden), linear(hidden, patch * patch * out_channels), adaLN_modulation(hidden, 2 * hidden) {}

  template <class V>
  void visit(V& v) {
    v("linear", linear);
    v("adaLN_modulation.1", adaLN_modulation);
  }

  // x: B * n rows of D; silu_c: (B, D) -> (B, n, p*p*out)
  Tensor<T> forward(const T* x, std::int64_t B, std::int64_t n, const Tensor<T>& silu_c, T* scratch) const {
    const Tensor<T> mod = adaLN_modulation.forward(silu_c);  // shift, scale
    detail::norm_modulate(x, scratch, B * n, n, hidden_size, mod.data(), mod.data() + hidden_size, 2 * hidden_size, 1e-6);
    Tensor<T> out = Tensor<T>::empty({B, n, linear.out_features});
    linear.forward_into(scratch, out.data(), B * n);
    return out;
  }
};

template <class T = float>
struct DiT {
  DiTConfig config;
  nn::PatchEmbed<T> x_embedder;
  TimestepEmbedder<T> t_embedder;
  LabelEmbedder<T> y_embedder;
  Tensor<T> pos_embed;  // (1, N, D): fixed sin-cos, but stored in checkpoints
  std::vector<DiTBlock<T>> blocks;
  FinalLayer<T> final_layer;
  mutable DiTBuffers<T> buffers;  // scratch of forward(); a DiT is not shared by threads calling forward

  DiT() = default;
  explicit DiT(const DiTConfig& c) : config(c) {
    c.validate();
    x_embedder = nn::PatchEmbed<T>(c.patch_size, c.in_channels, c.hidden_size);
    t_embedder = TimestepEmbedder<T>(c.hidden_size);
    y_embedder = LabelEmbedder<T>(c.num_classes, c.hidden_size, c.class_dropout_prob);
    pos_embed = nn::sincos_pos_embed_2d<T>(c.hidden_size, c.grid(), c.grid()).reshape({1, c.grid() * c.grid(), c.hidden_size});
    for (std::int64_t i = 0; i < c.depth; ++i) blocks.emplace_back(c.hidden_size, c.num_heads, c.mlp_hidden());
    final_layer = FinalLayer<T>(c.hidden_size, c.patch_size, c.out_channels());
  }

  template <class V>
  void visit(V& v) {
    v("pos_embed", pos_embed);
    v("x_embedder", x_embedder);
    v("t_embedder", t_embedder);
    v("y_embedder", y_embedder);
    v("blocks", blocks);
    v("final_layer", final_layer);
  }

  // x: (B, in_channels, input_size, input_size); t: (B) timesteps; y: (B) labels in
  // [0, num_classes] (num_classes: the null class). -> (B, out_channels, H', W'), H' = grid * patch.
  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>& y, const Trace<T>& trace = {}) const {
    using ditto::detail::cat;
    const DiTConfig& c = config;
    if (x.dim() != 4 || x.size(1) != c.in_channels || x.size(2) != c.input_size || x.size(3) != c.input_size)
      throw ShapeError(cat("DiT: expected x (B, ", c.in_channels, ", ", c.input_size, ", ", c.input_size, "), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0), g = c.grid(), n = g * g, D = c.hidden_size;
    if (t.dim() != 1 || t.size(0) != B)
      throw ShapeError(cat("DiT: expected t of shape (", B, "), one timestep per batch entry, got ", shape_str(t.shape())));
    if (y.dim() != 1 || y.size(0) != B)
      throw ShapeError(cat("DiT: expected y of shape (", B, "), one label per batch entry, got ", shape_str(y.shape())));
    Tensor<T> tokens = x_embedder.forward(crop_to_patches(x, c.patch_size));  // (B, n, D)
    if (trace) trace("x_embedder", tokens);
    if (pos_embed.numel() != n * D)
      throw ShapeError(cat("DiT: pos_embed must hold (1, ", n, ", ", D, "), got ", shape_str(pos_embed.shape())));
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n * D; ++i) tokens[b * n * D + i] += pos_embed[i];
    Tensor<T> cond = t_embedder.forward(t);
    if (trace) trace("t_embedder", cond);
    const Tensor<T> ye = y_embedder.forward(y);
    if (trace) trace("y_embedder", ye);
    for (std::int64_t i = 0; i < cond.numel(); ++i) cond[i] += ye[i];
    const Tensor<T> silu_c = nn::silu(cond);  // every adaLN_modulation starts with SiLU(c)

    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * n);
    buffers.ensure(B * n, D, c.mlp_hidden());
    Tensor<T> mod = Tensor<T>::empty({B, 6 * D});
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      blocks[i].adaLN_modulation.forward_into(silu_c.data(), mod.data(), B);
      blocks[i].forward_inplace(tokens.data(), B, n, mod.data(), cu, buffers);
      if (trace) trace("blocks." + std::to_string(i), tokens);
    }
    const Tensor<T> out = final_layer.forward(tokens.data(), B, n, silu_c, buffers.h.data());
    if (trace) trace("final_layer", out);
    return nn::unpatchify(out, c.out_channels(), c.patch_size, g, g);
  }

  // Upstream's forward_with_cfg: the first half of x is run twice (with the labels of y's two
  // halves: conditional, then e.g. the null class), and the first 3 output channels of both
  // halves become uncond + scale (cond - uncond).
  Tensor<T> forward_with_cfg(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>& y, double cfg_scale,
                             const Trace<T>& trace = {}) const {
    Tensor<T> out = forward(repeat_first_half(x, "DiT"), t, y, trace);
    diffusion::apply_guidance(out, diffusion::Guidance{cfg_scale, std::min<std::int64_t>(3, out.size(1)), 1});
    return out;
  }
};

}  // namespace ditto::models
