// Latte (Ma et al. 2024), the video diffusion transformer, as Vchitect/Latte's models/latte.py
// builds it (the paper's variant 1: spatial and temporal blocks interleaved), with its
// state-dict names. Its blocks are DiT's (adaLN-Zero); even blocks attend within each frame,
// odd blocks across the frames at each spatial position.
//
//   models::Latte<float> latte(models::LatteConfig::from_json(kwargs));
//   nn::load<float>(latte, "latte.safetensors");
//   auto out = latte.forward(x, t, &y);       // x (B, F, C, H, W) as upstream takes it; y: extras == 2
//
// Tokens stay in (batch, frame, position) order throughout: the temporal blocks attend over rows
// `positions` apart (Attention::forward_strided_into) instead of transposing the video twice per
// block pair as upstream does, and since upstream's condition (timestep + label) is the same for
// every frame and position of a video, every block modulates with one row per video.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../diffusion/guidance.hpp"
#include "../einops/rearrange.hpp"
#include "../nn/activation.hpp"
#include "../nn/embedding.hpp"
#include "../nn/patch.hpp"
#include "config.hpp"
#include "dit.hpp"

namespace ditto::models {

// Latte.__init__'s arguments, with its defaults (Latte-XL/2, 16 frames).
struct LatteConfig {
  std::int64_t input_size = 32, patch_size = 2, in_channels = 4, hidden_size = 1152, depth = 28, num_heads = 16;
  double mlp_ratio = 4.0;
  std::int64_t num_frames = 16;
  double class_dropout_prob = 0.1;
  std::int64_t num_classes = 1000;
  bool learn_sigma = true;
  std::int64_t extras = 1;             // 1: timestep only; 2: + class labels; 78: + text (not yet)
  std::string attention_mode = "math";  // math, xformers or flash: the same attention

  std::int64_t out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  std::int64_t grid() const { return input_size / patch_size; }
  std::int64_t mlp_hidden() const { return static_cast<std::int64_t>(static_cast<double>(hidden_size) * mlp_ratio); }

  // DiT's constraints on the shared parts.
  DiTConfig as_dit() const {
    DiTConfig d;
    d.input_size = input_size, d.patch_size = patch_size, d.in_channels = in_channels, d.hidden_size = hidden_size;
    d.depth = std::max<std::int64_t>(depth, 1), d.num_heads = num_heads, d.mlp_ratio = mlp_ratio;
    d.class_dropout_prob = class_dropout_prob, d.num_classes = std::max<std::int64_t>(num_classes, 1), d.learn_sigma = learn_sigma;
    return d;
  }

  static LatteConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "Latte");
    LatteConfig c;
    c.input_size = kw.get("input_size", c.input_size);
    c.patch_size = kw.get("patch_size", c.patch_size);
    c.in_channels = kw.get("in_channels", c.in_channels);
    c.hidden_size = kw.get("hidden_size", c.hidden_size);
    c.depth = kw.get("depth", c.depth);
    c.num_heads = kw.get("num_heads", c.num_heads);
    c.mlp_ratio = kw.get("mlp_ratio", c.mlp_ratio);
    c.num_frames = kw.get("num_frames", c.num_frames);
    c.class_dropout_prob = kw.get("class_dropout_prob", c.class_dropout_prob);
    c.num_classes = kw.get("num_classes", c.num_classes);
    c.learn_sigma = kw.get("learn_sigma", c.learn_sigma);
    c.extras = kw.get("extras", c.extras);
    c.attention_mode = kw.get("attention_mode", c.attention_mode);
    kw.finish();
    c.validate();
    return c;
  }

  void validate() const {
    using ditto::detail::cat;
    as_dit().validate();
    if (depth < 2 || depth % 2)
      throw ArgumentError(cat("Latte config: depth must be even (spatial and temporal blocks in pairs), got ", depth));
    if (num_frames < 1) throw ArgumentError(cat("Latte config: num_frames must be >= 1, got ", num_frames));
    if (extras == 78)
      throw ArgumentError("Latte config: extras = 78 (text embeddings) comes with text conditioning and is not supported yet; "
                          "use 1 (unconditional) or 2 (class labels)");
    if (extras != 1 && extras != 2) throw ArgumentError(cat("Latte config: extras must be 1, 2 or 78, got ", extras));
    if (attention_mode != "math" && attention_mode != "xformers" && attention_mode != "flash")
      throw ArgumentError("Latte config: attention_mode must be math, xformers or flash, got \"" + attention_mode + "\"");
  }
};

template <class T = float>
struct Latte {
  LatteConfig config;
  nn::PatchEmbed<T> x_embedder;
  TimestepEmbedder<T> t_embedder;
  LabelEmbedder<T> y_embedder;  // extras == 2
  Tensor<T> pos_embed, temp_embed;  // (1, positions, D), (1, num_frames, D): fixed sin-cos, stored in checkpoints
  std::vector<DiTBlock<T>> blocks;  // even: spatial, odd: temporal
  FinalLayer<T> final_layer;
  mutable DiTBuffers<T> buffers;

  Latte() = default;
  explicit Latte(const LatteConfig& c) : config(c) {
    c.validate();
    const std::int64_t D = c.hidden_size, g = c.grid();
    x_embedder = nn::PatchEmbed<T>(c.patch_size, c.in_channels, D);
    t_embedder = TimestepEmbedder<T>(D);
    if (c.extras == 2) y_embedder = LabelEmbedder<T>(c.num_classes, D, c.class_dropout_prob);
    pos_embed = nn::sincos_pos_embed_2d<T>(D, g, g).reshape({1, g * g, D});
    temp_embed = nn::sincos_pos_embed_1d<T>(D, c.num_frames).reshape({1, c.num_frames, D});
    for (std::int64_t i = 0; i < c.depth; ++i) blocks.emplace_back(D, c.num_heads, c.mlp_hidden());
    final_layer = FinalLayer<T>(D, c.patch_size, c.out_channels());
  }

  template <class V>
  void visit(V& v) {
    v("pos_embed", pos_embed);
    v("temp_embed", temp_embed);
    v("x_embedder", x_embedder);
    v("t_embedder", t_embedder);
    if (config.extras == 2) v("y_embedder", y_embedder);
    v("blocks", blocks);
    v("final_layer", final_layer);
  }

  // x: (B, num_frames, in_channels, input_size, input_size); t: (B); y: (B) labels when extras
  // == 2 (required then, refused otherwise). -> (B, num_frames, out_channels, H', W').
  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>* y = nullptr,
                    const Trace<T>& trace = {}) const {
    using ditto::detail::cat;
    const LatteConfig& c = config;
    if (x.dim() != 5 || x.size(1) != c.num_frames || x.size(2) != c.in_channels || x.size(3) != c.input_size ||
        x.size(4) != c.input_size)
      throw ShapeError(cat("Latte: expected x (B, ", c.num_frames, ", ", c.in_channels, ", ", c.input_size, ", ", c.input_size,
                           ") (frames as num_frames says), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0), F = c.num_frames, g = c.grid(), N = g * g, D = c.hidden_size;
    if (t.dim() != 1 || t.size(0) != B) throw ShapeError(cat("Latte: expected t of shape (", B, "), got ", shape_str(t.shape())));
    if ((c.extras == 2) != static_cast<bool>(y))
      throw ArgumentError(c.extras == 2 ? "Latte: the model is class-conditional (extras = 2), so y is required"
                                        : "Latte: the model takes no labels (extras = 1), but y was given");
    if (y && (y->dim() != 1 || y->size(0) != B)) throw ShapeError(cat("Latte: expected y of shape (", B, "), got ", shape_str(y->shape())));
    const Tensor<T> frames = x.reshape({B * F, c.in_channels, c.input_size, c.input_size});
    Tensor<T> tokens = x_embedder.forward(crop_to_patches(frames, c.patch_size));  // (B F, N, D)
    if (trace) trace("x_embedder", tokens);
    if (pos_embed.numel() != N * D || temp_embed.numel() != F * D)
      throw ShapeError(cat("Latte: pos_embed must hold (1, ", N, ", ", D, ") and temp_embed (1, ", F, ", ", D, "), got ",
                           shape_str(pos_embed.shape()), " and ", shape_str(temp_embed.shape())));
    for (std::int64_t bf = 0; bf < B * F; ++bf)
      for (std::int64_t i = 0; i < N * D; ++i) tokens[bf * N * D + i] += pos_embed[i];
    Tensor<T> cond = t_embedder.forward(t);
    if (trace) trace("t_embedder", cond);
    if (y) {
      const Tensor<T> ye = y_embedder.forward(*y);
      if (trace) trace("y_embedder", ye);
      for (std::int64_t i = 0; i < cond.numel(); ++i) cond[i] += ye[i];
    }
    const Tensor<T> silu_c = nn::silu(cond);

    const std::int64_t rows = B * F * N;
    std::vector<std::int64_t> frame_cu, position_starts;  // spatial: each frame; temporal: each (video, position)
    for (std::int64_t bf = 0; bf <= B * F; ++bf) frame_cu.push_back(bf * N);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t n = 0; n < N; ++n) position_starts.push_back(b * F * N + n);
    buffers.ensure(rows, D, c.mlp_hidden());
    Tensor<T> mod = Tensor<T>::empty({B, 6 * D});
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto& blk = blocks[i];
      blk.adaLN_modulation.forward_into(silu_c.data(), mod.data(), B);
      if (i % 2 == 0) {
        blk.forward_with(tokens.data(), rows, F * N, mod.data(), buffers, [&](const T* h, T* out) {
          blk.attn.forward_packed_into(h, frame_cu, out, buffers.qkv.data(), buffers.o.data());
        });
        if (trace) trace("blocks." + std::to_string(i), tokens.reshape({B * F, N, D}));
        if (i == 0)  // the frame embedding joins after the first spatial block, as upstream
          for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t f = 0; f < F; ++f)
              for (std::int64_t n = 0; n < N; ++n)
                for (std::int64_t d = 0; d < D; ++d) tokens[((b * F + f) * N + n) * D + d] += temp_embed[f * D + d];
      } else {
        blk.forward_with(tokens.data(), rows, F * N, mod.data(), buffers, [&](const T* h, T* out) {
          blk.attn.forward_strided_into(h, rows, position_starts, F, N, out, buffers.qkv.data(), buffers.o.data());
        });
        if (trace)  // upstream's temporal blocks see (b t) f d
          trace("blocks." + std::to_string(i), rearrange(tokens.reshape({B, F, N, D}), "b f t d -> (b t) f d"));
      }
    }
    const std::int64_t P = c.patch_size * c.patch_size * c.out_channels();
    Tensor<T> out = final_layer.forward(tokens.data(), B, F * N, silu_c, buffers.h.data()).reshape({B * F, N, P});
    if (trace) trace("final_layer", out);
    const Tensor<T> frames_out = nn::unpatchify(out, c.out_channels(), c.patch_size, g, g);  // (B F, C', H', W')
    return frames_out.reshape({B, F, c.out_channels(), g * c.patch_size, g * c.patch_size});
  }

  // Upstream's forward_with_cfg: the first half of x run twice (y's halves: labels, then the
  // null class), the first 4 channels of dim 2 guided (its output is (B, F, C, H, W)).
  Tensor<T> forward_with_cfg(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>* y, double cfg_scale,
                             const Trace<T>& trace = {}) const {
    Tensor<T> out = forward(repeat_first_half(x, "Latte"), t, y, trace);
    diffusion::apply_guidance(out, diffusion::Guidance{cfg_scale, std::min<std::int64_t>(4, out.size(2)), 2});
    return out;
  }
};

}  // namespace ditto::models
