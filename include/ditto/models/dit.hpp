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
#include "../nn/adaln.hpp"
#include "../nn/attention.hpp"
#include "../nn/buffers.hpp"
#include "../nn/conditioning.hpp"
#include "../nn/embedding.hpp"
#include "../nn/linear.hpp"
#include "../nn/mlp.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/init.hpp"
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
    if (num_classes < 1) throw ArgumentError(ditto::detail::cat("DiT config: num_classes must be >= 1, got ", num_classes));
    detail::validate_dit_shape("DiT", input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_hidden(), mlp_ratio,
                               class_dropout_prob);
    detail::check_weights_fit("DiT", min_weights());
  }
  // A lower bound on the parameter count: the blocks' matrices, the patch embedding, the final
  // layer and the label table (every one of them is in a checkpoint).
  double min_weights() const {
    const double D = static_cast<double>(hidden_size), pp = static_cast<double>(patch_size * patch_size);
    return detail::transformer_weights(depth, hidden_size, mlp_hidden(), 10) + static_cast<double>(num_classes) * D +
           pp * static_cast<double>(in_channels + out_channels()) * D;
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

// The adaLN pieces (norm_modulate, gated_add, their backwards, FinalLayer) and Trace live in
// nn/adaln.hpp, the embedders of t and y in nn/conditioning.hpp: Latte's blocks share them.
using nn::crop_to_patches;
using nn::FinalLayer;
using nn::LabelEmbedder;
using nn::TimestepEmbedder;
using nn::Trace;
using diffusion::repeat_first_half;

// The scratch one inference forward reuses across blocks (nn/buffers.hpp).
template <class T>
using DiTBuffers = nn::BlockBuffers<T>;

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
    nn::norm_modulate(x, buf.h.data(), rows, n, D, mod + 0 * D, mod + 1 * D, S, 1e-6);
    attend(buf.h.data(), buf.y.data());
    nn::gated_add(x, buf.y.data(), rows, n, D, mod + 2 * D, S);
    nn::norm_modulate(x, buf.h.data(), rows, n, D, mod + 3 * D, mod + 4 * D, S, 1e-6);
    mlp.forward_into(buf.h.data(), buf.y.data(), rows, buf.hidden.data());
    nn::gated_add(x, buf.y.data(), rows, n, D, mod + 5 * D, S);
  }

  // x: B * n token rows of D (sequences cu), updated in place. mod: (B, 6D).
  void forward_inplace(T* x, std::int64_t B, std::int64_t n, const T* mod, const std::vector<std::int64_t>& cu,
                       DiTBuffers<T>& buf) const {
    forward_with(x, B * n, n, mod, buf,
                 [&](const T* h, T* y) { attn.forward_packed_into(h, cu, y, buf.qkv.data(), buf.o.data()); });
  }

  // Training. What backward reads, per token row (rows = B * n, D wide): the block's input, both
  // LayerNorms' mean and rstd, the modulated rows the products consume (h1, h2), the attention's
  // qkv, output before proj and logsumexp, both branch outputs before their gates, and the MLP's
  // pre-activation (its GELU is recomputed in backward).
  struct Acts {
    Tensor<T> x_in, mean1, rstd1, h1, y_attn, x_mid, mean2, rstd2, h2, pre, y_mlp;
    typename nn::Attention<T>::Acts attn;
  };
  // x: B * n rows of D updated in place (as forward_inplace); mod: (B, 6D); cu: B sequences of n.
  void forward_train(T* x, std::int64_t B, std::int64_t n, const T* mod, const std::vector<std::int64_t>& cu, Acts& a) const {
    const std::int64_t D = hidden_size, S = 6 * D, rows = B * n;
    a.x_in = Tensor<T>::empty({rows, D}), a.h1 = Tensor<T>::empty({rows, D}), a.h2 = Tensor<T>::empty({rows, D});
    a.mean1 = Tensor<T>::empty({rows}), a.rstd1 = Tensor<T>::empty({rows}), a.mean2 = Tensor<T>::empty({rows}), a.rstd2 = Tensor<T>::empty({rows});
    a.y_attn = Tensor<T>::empty({rows, D}), a.x_mid = Tensor<T>::empty({rows, D}), a.y_mlp = Tensor<T>::empty({rows, D});
    a.pre = Tensor<T>::empty({rows, mlp.fc1.out_features});
    std::copy(x, x + rows * D, a.x_in.data());
    nn::norm_modulate(x, a.h1.data(), rows, n, D, mod + 0 * D, mod + 1 * D, S, 1e-6, a.mean1.data(), a.rstd1.data());
    attn.forward_train(a.h1.data(), rows, nn::Attention<T>::Sequences::packed(cu), a.y_attn.data(), a.attn);
    nn::gated_add(x, a.y_attn.data(), rows, n, D, mod + 2 * D, S);
    std::copy(x, x + rows * D, a.x_mid.data());
    nn::norm_modulate(x, a.h2.data(), rows, n, D, mod + 3 * D, mod + 4 * D, S, 1e-6, a.mean2.data(), a.rstd2.data());
    Tensor<T> hidden = Tensor<T>::empty({rows, mlp.fc1.out_features});
    mlp.forward_train(a.h2.data(), a.y_mlp.data(), rows, a.pre.data(), hidden.data());
    nn::gated_add(x, a.y_mlp.data(), rows, n, D, mod + 5 * D, S);
  }
  // dx: (rows, D), the gradient of the block's output, replaced by the gradient of its input.
  // Accumulates g (this block's gradient tree) and dmod (B, 6D), the gradient of mod.
  void backward(T* dx, DiTBlock& g, T* dmod, const T* mod, const std::vector<std::int64_t>& cu, const Acts& a) const {
    const std::int64_t D = hidden_size, S = 6 * D, rows = a.x_in.size(0), n = cu[1] - cu[0];
    Tensor<T> dy({rows, D}), dh({rows, D});
    // x_out = x_mid + gate2 * mlp(modulate(norm(x_mid)))
    nn::gated_add_backward(dy.data(), dmod + 5 * D, dx, a.y_mlp.data(), mod + 5 * D, rows, n, D, S);
    mlp.backward_into(dh.data(), g.mlp, dy.data(), a.h2.data(), a.pre.data(), rows);
    nn::norm_modulate_backward(dx, dmod + 3 * D, dmod + 4 * D, dh.data(), a.x_mid.data(), a.mean2.data(), a.rstd2.data(),
                               mod + 4 * D, rows, n, D, S);
    // x_mid = x_in + gate1 * attn(modulate(norm(x_in)))
    std::fill(dy.begin(), dy.end(), T(0));
    std::fill(dh.begin(), dh.end(), T(0));
    nn::gated_add_backward(dy.data(), dmod + 2 * D, dx, a.y_attn.data(), mod + 2 * D, rows, n, D, S);
    attn.backward(dh.data(), g.attn, dy.data(), a.h1.data(), rows, nn::Attention<T>::Sequences::packed(cu), a.attn);
    nn::norm_modulate_backward(dx, dmod + 0 * D, dmod + 1 * D, dh.data(), a.x_in.data(), a.mean1.data(), a.rstd1.data(),
                               mod + 1 * D, rows, n, D, S);
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
    v("pos_embed", pos_embed, nn::fixed);  // requires_grad=False upstream: in checkpoints, never trained
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
    detail::require_samples("DiT", B, x.shape());
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

  // Training (docs/training.md): what backward reads, kept by forward_train. Label dropout is
  // the caller's (upstream draws it in LabelEmbedder; give y with the null class where dropped).
  struct Acts {
    // Options, set before forward_train. checkpoint: keep only each block's input and recompute
    // the block's activations in backward (activation checkpointing: less memory, one more block
    // forward each; the gradients are the same bits). check_finite: a NaN or infinity in any
    // block's output, in dout, or in any block's gradients is a NumericError naming that block.
    bool checkpoint = false, check_finite = false;
    std::int64_t B = 0;
    std::vector<Tensor<T>> block_in;     // checkpoint: each block's input rows
    Tensor<T> patches;                   // (B * n, C p p): x_embedder's input rows
    Tensor<std::int64_t> y;              // the labels
    typename TimestepEmbedder<T>::Acts t_acts;
    Tensor<T> c, silu_c;                 // (B, D): the condition, before and after SiLU
    std::vector<Tensor<T>> mods;         // per block: (B, 6D) = adaLN_modulation(SiLU(c))
    std::vector<typename DiTBlock<T>::Acts> blocks;
    typename FinalLayer<T>::Acts final_layer;
  };

  // As forward (eval semantics), keeping what backward needs in a.
  Tensor<T> forward_train(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>& y, Acts& a) const {
    using ditto::detail::cat;
    const DiTConfig& c = config;
    if (x.dim() != 4 || x.size(1) != c.in_channels || x.size(2) != c.input_size || x.size(3) != c.input_size)
      throw ShapeError(cat("DiT.forward_train: expected x (B, ", c.in_channels, ", ", c.input_size, ", ", c.input_size, "), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0), g = c.grid(), n = g * g, D = c.hidden_size, p = c.patch_size;
    detail::require_samples("DiT", B, x.shape());
    if (t.dim() != 1 || t.size(0) != B || y.dim() != 1 || y.size(0) != B)
      throw ShapeError(cat("DiT.forward_train: expected t and y of shape (", B, "), got ", shape_str(t.shape()), " and ", shape_str(y.shape())));
    a.B = B;
    a.y = y;
    a.patches = rearrange(crop_to_patches(x, p), "b c (h p1) (w p2) -> (b h w) (c p1 p2)", {{"p1", p}, {"p2", p}});
    Tensor<T> tokens = Tensor<T>::empty({B * n, D});
    x_embedder.proj_rows(a.patches.data(), B * n, tokens.data());
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n * D; ++i) tokens[b * n * D + i] += pos_embed[i];
    a.c = t_embedder.forward_train(t, a.t_acts);
    const Tensor<T> ye = y_embedder.forward(y);
    for (std::int64_t i = 0; i < a.c.numel(); ++i) a.c[i] += ye[i];
    a.silu_c = nn::silu(a.c);
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * n);
    a.mods.assign(blocks.size(), Tensor<T>());
    a.blocks.assign(blocks.size(), typename DiTBlock<T>::Acts{});
    a.block_in.assign(a.checkpoint ? blocks.size() : 0, Tensor<T>());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      a.mods[i] = blocks[i].adaLN_modulation.forward(a.silu_c);
      if (a.checkpoint) {  // the block's activations live only for this call
        a.block_in[i] = tokens.clone();
        typename DiTBlock<T>::Acts dropped;
        blocks[i].forward_train(tokens.data(), B, n, a.mods[i].data(), cu, dropped);
      } else {
        blocks[i].forward_train(tokens.data(), B, n, a.mods[i].data(), cu, a.blocks[i]);
      }
      if (a.check_finite) nn::require_finite<T>("DiT.blocks." + std::to_string(i), "output", tokens.data(), tokens.numel());
    }
    const Tensor<T> out = final_layer.forward_train(tokens.data(), B, n, a.silu_c, a.final_layer);
    if (a.check_finite) nn::require_finite<T>("DiT.final_layer", "output", out.data(), out.numel());
    return nn::unpatchify(out, c.out_channels(), p, g, g);
  }

  // dout: the gradient of forward_train's output. Accumulates g (a gradient tree of this model,
  // nn::zeros_like) for every trainable parameter, and dx (x's shape) when given.
  void backward(DiT& g, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr) const {
    const DiTConfig& c = config;
    const std::int64_t B = a.B, gr = c.grid(), n = gr * gr, D = c.hidden_size, p = c.patch_size, rows = B * n;
    if (B < 1 || a.blocks.size() != blocks.size() || a.mods.size() != blocks.size())
      throw ArgumentError("DiT.backward: the activations were not made by this model's forward_train");
    (void)nn::zip_parameters<T>(const_cast<DiT&>(*this), g, "DiT.backward");  // g must be a gradient tree of this model
    if (dout.shape() != Shape{B, c.out_channels(), gr * p, gr * p})
      throw ShapeError(ditto::detail::cat("DiT.backward: expected dout of shape ", shape_str(Shape{B, c.out_channels(), gr * p, gr * p}),
                                          ", got ", shape_str(dout.shape())));
    if (a.checkpoint && a.block_in.size() != blocks.size())
      throw ArgumentError("DiT.backward: checkpoint was set after forward_train (set it before: the blocks' inputs were not kept)");
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * n);
    if (a.check_finite) nn::require_finite<T>("DiT.backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    const Tensor<T> dtok_out = rearrange(dout, "b c (h p) (w q) -> b (h w) (p q c)", {{"p", p}, {"q", p}});  // unpatchify's inverse
    Tensor<T> dtokens({rows, D}), dsilu_c({B, D});
    final_layer.backward(dtokens.data(), g.final_layer, dsilu_c.data(), a.silu_c, dtok_out, a.final_layer);
    if (a.check_finite) nn::require_finite<T>("DiT.final_layer", "input gradient", dtokens.data(), dtokens.numel(), &g.final_layer);
    for (std::size_t i = blocks.size(); i-- > 0;) {
      Tensor<T> dmod({B, 6 * D});
      typename DiTBlock<T>::Acts recomputed;
      if (a.checkpoint) {  // the block's forward again, from its kept input
        Tensor<T> x = a.block_in[i].clone();
        blocks[i].forward_train(x.data(), B, n, a.mods[i].data(), cu, recomputed);
      }
      blocks[i].backward(dtokens.data(), g.blocks[i], dmod.data(), a.mods[i].data(), cu, a.checkpoint ? recomputed : a.blocks[i]);
      blocks[i].adaLN_modulation.backward_into(dsilu_c.data(), g.blocks[i].adaLN_modulation, dmod.data(), a.silu_c.data(), B);
      if (a.check_finite) nn::require_finite<T>("DiT.blocks." + std::to_string(i), "input gradient", dtokens.data(), dtokens.numel(), &g.blocks[i]);
    }
    Tensor<T> dcond({B, D});
    nn::activate_backward(dcond.data(), dsilu_c.data(), a.c.data(), B * D, nn::Activation::silu);
    y_embedder.backward(g.y_embedder, a.y, dcond.data());
    t_embedder.backward(g.t_embedder, a.t_acts, dcond);
    // pos_embed is fixed: no gradient. The patch embedding, and x through it.
    Tensor<T> dpatches;
    if (dx) dpatches = Tensor<T>(a.patches.shape());
    x_embedder.proj_rows_backward(dx ? dpatches.data() : nullptr, g.x_embedder, dtokens.data(), a.patches.data(), rows);
    if (a.check_finite) {
      nn::require_finite<T>("DiT.y_embedder", "gradient", dcond.data(), 0, &g.y_embedder);
      nn::require_finite<T>("DiT.t_embedder", "gradient", dcond.data(), 0, &g.t_embedder);
      nn::require_finite<T>("DiT.x_embedder", "input gradient", dpatches.data(), dpatches.numel(), &g.x_embedder);
    }
    if (dx) {
      const Tensor<T> dimg = rearrange(dpatches, "(b h w) (c p1 p2) -> b c (h p1) (w p2)", {{"b", B}, {"h", gr}, {"p1", p}, {"p2", p}});
      *dx = Tensor<T>({B, c.in_channels, c.input_size, c.input_size});  // rows and columns cut by crop_to_patches get 0
      const std::int64_t kept = gr * p, S = c.input_size;
      for (std::int64_t bc = 0; bc < B * c.in_channels; ++bc)
        for (std::int64_t r = 0; r < kept; ++r)
          std::copy(dimg.data() + (bc * kept + r) * kept, dimg.data() + (bc * kept + r + 1) * kept, dx->data() + (bc * S + r) * S);
    }
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

// DiT.initialize_weights, rule for rule: every Linear xavier_uniform with zero bias, the patch
// embedding xavier_uniform as a (hidden, C p p) matrix, the label table and the timestep MLP
// N(0, 0.02), and zeros for every adaLN modulation and the final linear layer (adaLN-Zero: each
// block starts as the identity and the model predicts 0). pos_embed stays the fixed sin-cos.
template <class T>
inline void initialize_weights(DiT<T>& m, Generator& gen) {
  auto ends = [](const std::string& s, const std::string& e) { return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0; };
  for (auto& [name, t] : nn::trainable_parameters<T>(m)) {
    if (name.find("adaLN_modulation") != std::string::npos || name.rfind("final_layer.linear.", 0) == 0 || ends(name, ".bias")) nn::fill_constant(*t, 0.0);
    else if (name == "y_embedder.embedding_table.weight" || name.rfind("t_embedder.mlp.", 0) == 0) gen.fill_normal(*t, 0.0, 0.02);
    else nn::xavier_uniform(*t, gen, 1.0, /*as_matrix=*/name == "x_embedder.proj.weight");
  }
}

}  // namespace ditto::models
