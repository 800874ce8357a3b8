// ViViT (Arnab et al. 2021, "ViViT: A Video Vision Transformer"): video classifiers built from
// ViT's blocks. The official code is JAX (google-research/scenic); ditto follows the paper, with
// timm's names for everything a ViT also has, so an image ViT's weights initialize a ViViT
// (init_from_vit, the paper's sec. 3.4) and a one-frame model 1 is timm's ViT.
//
//   models::ViViT<float> vivit(models::ViViTConfig::from_json(kwargs));
//   nn::load<float>(vivit, "vivit.safetensors");
//   auto logits = vivit.forward(video);   // (B, C, T, H, W), as torch's Conv3d takes videos
//
// Token embeddings (sec. 3.2), both giving tokens in (t, h, w) order:
//   "tubelet":  non-overlapping t x h x w tubes, a Conv3d with kernel = stride (patch_embed.proj,
//               weight (D, C, t, h, w));
//   "uniform":  each frame embedded on its own, ViT's 2-D patch embedding (weight (D, C, h, w));
//               equal to a tubelet of one frame. sample_frames_uniformly picks the frames.
// Models (sec. 3.3), with L = depth:
//   1 "spatio_temporal":           [cls,] all nt*ns tokens + pos_embed -> L ViT blocks -> norm -> head.
//   2 "factorized_encoder":        spatial.* (a ViT encoder over each frame's ns tokens, [cls,] +
//                                  pos_embed, L blocks, norm) gives one token per frame (its cls or
//                                  mean); temporal.* (temporal_depth blocks over the nt frame tokens)
//                                  -> its cls or mean -> head.
//   3 "factorized_self_attention": each block: x += attn(norm1(x)) within each frame,
//                                  x += temporal_attn(temporal_norm(x)) across frames at one position,
//                                  x += mlp(norm2(x)). No cls token (the paper: it would be ambiguous
//                                  between the two reshapes): mean of all tokens -> head.
//   4 "factorized_dot_product":    ViT blocks whose attention heads split: the first num_heads/2 attend
//                                  within the frame, the rest across frames at the position; the
//                                  heads are concatenated and projected together. Mean -> head.
// Blocks are timm's (pre-norm, LayerNorm eps 1e-6, GELU, fused qkv). Tokens stay in (t, s) order:
// within-frame attention attends over consecutive rows and across-frame attention over rows ns
// apart, so no block transposes the video.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../einops/rearrange.hpp"
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/linear.hpp"
#include "../nn/module.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "config.hpp"
#include "../nn/buffers.hpp"
#include "../nn/module.hpp"
#include "vit.hpp"

namespace ditto::models {

struct ViViTConfig {
  std::string model = "spatio_temporal";  // or factorized_encoder, factorized_self_attention, factorized_dot_product
  std::string embedding = "tubelet";      // or "uniform"
  std::int64_t num_frames = 32;
  std::array<std::int64_t, 2> img_size{224, 224}, patch_size{16, 16};
  std::int64_t tubelet_size = 2;  // frames per tubelet ("uniform": 1)
  std::int64_t in_chans = 3, num_classes = 400;
  std::int64_t embed_dim = 768, depth = 12, temporal_depth = 4, num_heads = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  std::string classifier = "token";  // "token" (a cls token) or "gap" (mean of the tokens)
  nn::Activation act = nn::Activation::gelu;

  std::int64_t nt() const { return num_frames / tubelet_size; }
  std::int64_t ns() const { return (img_size[0] / patch_size[0]) * (img_size[1] / patch_size[1]); }
  bool cls() const { return classifier == "token"; }
  std::int64_t mlp_hidden() const { return detail::scaled_width(embed_dim, mlp_ratio); }

  // The ViT whose blocks these are (depth and tokens aside).
  ViTConfig block_config() const {
    ViTConfig v;
    v.embed_dim = embed_dim, v.num_heads = num_heads, v.mlp_ratio = mlp_ratio, v.qkv_bias = qkv_bias, v.act = act;
    return v;
  }

  static ViViTConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "ViViT");
    ViViTConfig c;
    auto pair = [&](const char* key, std::array<std::int64_t, 2> fallback) {
      if (!kw.has(key)) return fallback;
      if (j.at(key).is_array()) {
        const auto l = kw.get<std::vector<std::int64_t>>(key, {});
        if (l.size() != 2) throw ArgumentError(ditto::detail::cat("ViViT config: \"", key, "\" must be an integer or a pair, got ", brief_json(j.at(key))));
        return std::array<std::int64_t, 2>{l[0], l[1]};
      }
      const auto n = kw.get<std::int64_t>(key, 0);
      return std::array<std::int64_t, 2>{n, n};
    };
    c.model = kw.get("model", c.model);
    c.embedding = kw.get("embedding", c.embedding);
    c.num_frames = kw.get("num_frames", c.num_frames);
    c.img_size = pair("img_size", c.img_size);
    c.patch_size = pair("patch_size", c.patch_size);
    c.tubelet_size = kw.get("tubelet_size", c.embedding == "uniform" ? std::int64_t{1} : c.tubelet_size);
    c.in_chans = kw.get("in_chans", c.in_chans);
    c.num_classes = kw.get("num_classes", c.num_classes);
    c.embed_dim = kw.get("embed_dim", c.embed_dim);
    c.depth = kw.get("depth", c.depth);
    c.temporal_depth = kw.get("temporal_depth", c.temporal_depth);
    c.num_heads = kw.get("num_heads", c.num_heads);
    c.mlp_ratio = kw.get("mlp_ratio", c.mlp_ratio);
    c.qkv_bias = kw.get("qkv_bias", c.qkv_bias);
    c.classifier = kw.get("classifier", c.model == "spatio_temporal" || c.model == "factorized_encoder" ? c.classifier : std::string("gap"));
    if (auto a = kw.get_optional<std::string>("act_layer")) {
      if (*a == "gelu") c.act = nn::Activation::gelu;
      else if (*a == "gelu_tanh") c.act = nn::Activation::gelu_tanh;
      else throw ArgumentError("ViViT config: act_layer \"" + *a + "\" is not supported; expected gelu or gelu_tanh");
    }
    kw.finish();
    c.validate();
    return c;
  }

  void validate() const {
    using ditto::detail::cat;
    if (model != "spatio_temporal" && model != "factorized_encoder" && model != "factorized_self_attention" && model != "factorized_dot_product")
      throw ArgumentError(cat("ViViT config: model must be spatio_temporal, factorized_encoder, factorized_self_attention or "
                              "factorized_dot_product (the paper's models 1-4), got \"", model, "\""));
    if (embedding != "tubelet" && embedding != "uniform")
      throw ArgumentError(cat("ViViT config: embedding must be \"tubelet\" or \"uniform\", got \"", embedding, "\""));
    if (classifier != "token" && classifier != "gap")
      throw ArgumentError(cat("ViViT config: classifier must be \"token\" or \"gap\", got \"", classifier, "\""));
    if (cls() && (model == "factorized_self_attention" || model == "factorized_dot_product"))
      throw ArgumentError(cat("ViViT config: model ", model, " has no cls token (the paper: it would be ambiguous between the "
                              "spatial and temporal reshapes); use classifier \"gap\""));
    for (auto [name, v] : {std::pair{"num_frames", num_frames}, std::pair{"img_size", std::min(img_size[0], img_size[1])},
                           std::pair{"patch_size", std::min(patch_size[0], patch_size[1])}, std::pair{"tubelet_size", tubelet_size},
                           std::pair{"in_chans", in_chans}, std::pair{"embed_dim", embed_dim}, std::pair{"num_heads", num_heads}})
      if (v < 1) throw ArgumentError(cat("ViViT config: ", name, " must be >= 1, got ", v));
    if (depth < 0 || temporal_depth < 0 || num_classes < 0)
      throw ArgumentError(cat("ViViT config: depth, temporal_depth and num_classes must be >= 0"));
    if (embedding == "uniform" && tubelet_size != 1)
      throw ArgumentError(cat("ViViT config: uniform frame sampling embeds single frames, so tubelet_size must be 1, got ", tubelet_size));
    if (num_frames % tubelet_size)
      throw ArgumentError(cat("ViViT config: num_frames ", num_frames, " must be divisible by tubelet_size ", tubelet_size));
    if (img_size[0] % patch_size[0] || img_size[1] % patch_size[1])
      throw ArgumentError(cat("ViViT config: img_size ", img_size[0], "x", img_size[1], " must be divisible by patch_size ", patch_size[0],
                              "x", patch_size[1]));
    if (embed_dim % num_heads)
      throw ArgumentError(cat("ViViT config: embed_dim ", embed_dim, " must be divisible by num_heads ", num_heads));
    if (model == "factorized_dot_product" && num_heads % 2)
      throw ArgumentError(cat("ViViT config: factorized_dot_product splits the heads in half (spatial, temporal), so num_heads must be "
                              "even, got ", num_heads));
    if (mlp_hidden() < 1) throw ArgumentError(cat("ViViT config: embed_dim * mlp_ratio must be a width from 1 to 2^31, got mlp_ratio ", mlp_ratio));
    detail::check_weights_fit("ViViT", min_weights());
  }
  // A lower bound on the parameter count: the blocks' matrices, the embedding and the head.
  double min_weights() const {
    const std::int64_t blocks = depth + (model == "factorized_encoder" ? temporal_depth : 0);  // only model 2 has temporal blocks
    return detail::transformer_weights(blocks, embed_dim, mlp_hidden(), 4) +
           (static_cast<double>(num_classes) + static_cast<double>(tubelet_size) * static_cast<double>(patch_size[0]) *
                                                   static_cast<double>(patch_size[1]) * static_cast<double>(in_chans)) *
               static_cast<double>(embed_dim);
  }
};

// The frames uniform frame sampling keeps: n of T at linspace(0, T - 1, n), truncated (as
// pytorchvideo's uniform_temporal_subsample). x: (B, C, T, H, W) -> (B, C, n, H, W).
template <class T>
inline Tensor<T> sample_frames_uniformly(const Tensor<T>& x, std::int64_t n) {
  if (x.dim() != 5 || n < 1)
    throw ShapeError(ditto::detail::cat("sample_frames_uniformly: expected a video (B, C, T, H, W) and n >= 1, got ", shape_str(x.shape()),
                                        " and n = ", n));
  const std::int64_t BC = x.size(0) * x.size(1), Tn = x.size(2), HW = x.size(3) * x.size(4);
  Tensor<T> out = Tensor<T>::empty({x.size(0), x.size(1), n, x.size(3), x.size(4)});
  for (std::int64_t bc = 0; bc < BC; ++bc)
    for (std::int64_t i = 0; i < n; ++i) {
      const double pos = n == 1 ? 0.0 : static_cast<double>(i) * static_cast<double>(Tn - 1) / static_cast<double>(n - 1);
      const auto f = std::min<std::int64_t>(static_cast<std::int64_t>(pos), Tn - 1);
      std::copy(x.data() + (bc * Tn + f) * HW, x.data() + (bc * Tn + f + 1) * HW, out.data() + (bc * n + i) * HW);
    }
  return out;
}

// A tubelet embedding's weight from an image patch embedding's (sec. 3.4):
//   central_frame:    E = [0, ..., E_image, ..., 0], E_image at frame t / 2 (the paper's best);
//   filter_inflation: E_image / t at every frame (the temporal mean of the input, embedded).
// w2d: (D, C, ph, pw) -> (D, C, t, ph, pw).
enum class TubeletInit { central_frame, filter_inflation };

template <class T>
inline Tensor<T> inflate_patch_weight(const Tensor<T>& w2d, std::int64_t t, TubeletInit init) {
  if (w2d.dim() != 4 || t < 1)
    throw ShapeError(ditto::detail::cat("inflate_patch_weight: expected a Conv2d weight (D, C, ph, pw) and t >= 1, got ", shape_str(w2d.shape()),
                                        " and t = ", t));
  const std::int64_t DC = w2d.size(0) * w2d.size(1), P = w2d.size(2) * w2d.size(3);
  Tensor<T> w({w2d.size(0), w2d.size(1), t, w2d.size(2), w2d.size(3)});  // zeros
  for (std::int64_t dc = 0; dc < DC; ++dc)
    for (std::int64_t f = 0; f < t; ++f) {
      if (init == TubeletInit::central_frame && f != t / 2) continue;
      const T scale = init == TubeletInit::central_frame ? T(1) : static_cast<T>(1.0 / static_cast<double>(t));
      for (std::int64_t i = 0; i < P; ++i) w[(dc * t + f) * P + i] = scale * w2d[dc * P + i];
    }
  return w;
}

// A ViT encoder over token sequences: [cls,] tokens + pos_embed, blocks, norm. Model 1 uses it at
// the top level (timm's names), model 2 twice (spatial.*, temporal.*).
template <class T = float>
struct ViViTEncoder {
  bool has_cls = true;
  Tensor<T> cls_token, pos_embed;  // (1, 1, D), (1, [1 +] n, D)
  std::vector<ViTBlock<T>> blocks;
  nn::LayerNorm<T> norm;

  ViViTEncoder() = default;
  ViViTEncoder(const ViViTConfig& c, std::int64_t n, std::int64_t depth) : has_cls(c.cls()), norm(c.embed_dim, 1e-6) {
    if (has_cls) cls_token = Tensor<T>({1, 1, c.embed_dim});
    pos_embed = Tensor<T>({1, n + (has_cls ? 1 : 0), c.embed_dim});
    for (std::int64_t i = 0; i < depth; ++i) blocks.emplace_back(c.block_config());
  }

  template <class V>
  void visit(V& v) {
    if (has_cls) v("cls_token", cls_token);
    v("pos_embed", pos_embed);
    v("blocks", blocks);
    v("norm", norm);
  }

  // x: (S, n, D) sequences -> (S, D): each sequence's cls token, or its mean, after the norm.
  Tensor<T> forward(const Tensor<T>& x, nn::BlockBuffers<T>& buf, const std::string& prefix, const Trace<T>& trace) const {
    const std::int64_t S = x.size(0), n = x.size(1), D = x.size(2), L = n + (has_cls ? 1 : 0);
    if (pos_embed.numel() != L * D)
      throw ShapeError(ditto::detail::cat("ViViT: ", prefix, "pos_embed must hold (1, ", L, ", ", D, "), got ", shape_str(pos_embed.shape())));
    Tensor<T> tokens = Tensor<T>::empty({S, L, D});
    for (std::int64_t s = 0; s < S; ++s) {
      T* out = tokens.data() + s * L * D;
      if (has_cls) std::copy(cls_token.data(), cls_token.data() + D, out);
      std::copy(x.data() + s * n * D, x.data() + (s + 1) * n * D, out + (has_cls ? D : 0));
      for (std::int64_t i = 0; i < L * D; ++i) out[i] += pos_embed[i];
    }
    std::vector<std::int64_t> cu;
    for (std::int64_t s = 0; s <= S; ++s) cu.push_back(s * L);
    buf.ensure(S * L, D, blocks.empty() ? 1 : blocks[0].mlp.fc1.out_features);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      blocks[i].forward_inplace(tokens.data(), cu, buf);
      if (trace) trace(prefix + "blocks." + std::to_string(i), tokens);
    }
    norm.forward_into(tokens.data(), tokens.data(), S * L);
    if (trace) trace(prefix + "norm", tokens);
    return pool(tokens, has_cls);
  }

  // (S, L, D) -> (S, D): token 0, or the mean over the L tokens
  static Tensor<T> pool(const Tensor<T>& tokens, bool first) {
    const std::int64_t S = tokens.size(0), L = tokens.size(1), D = tokens.size(2);
    Tensor<T> out({S, D});
    for (std::int64_t s = 0; s < S; ++s) {
      T* o = out.data() + s * D;
      if (first) {
        std::copy(tokens.data() + s * L * D, tokens.data() + s * L * D + D, o);
        continue;
      }
      for (std::int64_t l = 0; l < L; ++l)
        for (std::int64_t d = 0; d < D; ++d) o[d] += tokens[(s * L + l) * D + d];
      for (std::int64_t d = 0; d < D; ++d) o[d] /= static_cast<T>(L);
    }
    return out;
  }
};

// Model 3's block: spatial attention, temporal attention, MLP, each pre-norm with a residual.
template <class T = float>
struct ViViTFactorizedBlock {
  ViTBlock<T> spatial;  // norm1, attn, norm2, mlp (timm's names, flattened into this block)
  nn::LayerNorm<T> temporal_norm;
  nn::Attention<T> temporal_attn;

  ViViTFactorizedBlock() = default;
  explicit ViViTFactorizedBlock(const ViViTConfig& c)
      : spatial(c.block_config()), temporal_norm(c.embed_dim, 1e-6), temporal_attn(c.embed_dim, c.num_heads, c.qkv_bias) {}

  template <class V>
  void visit(V& v) {
    v("norm1", spatial.norm1);
    v("attn", spatial.attn);
    v("temporal_norm", temporal_norm);
    v("temporal_attn", temporal_attn);
    v("norm2", spatial.norm2);
    v("mlp", spatial.mlp);
  }

  // x: (B nt ns, D) rows in (b, t, s) order, in place. frames: cu of each (b, t); positions: the
  // first row of each (b, s) sequence over t.
  void forward_inplace(T* x, std::int64_t rows, const std::vector<std::int64_t>& frames, const std::vector<std::int64_t>& positions,
                       std::int64_t nt, std::int64_t ns, nn::BlockBuffers<T>& buf) const {
    spatial_step(x, frames, buf);
    temporal_step(x, rows, positions, nt, ns, buf);
    spatial.norm2.forward_into(x, buf.h.data(), rows);
    spatial.mlp.forward_into(buf.h.data(), buf.y.data(), rows, buf.hidden.data());
    spatial.residual(x, buf.y.data(), rows, nullptr);
  }
  // x += attn(norm1(x)), each frame on its own
  void spatial_step(T* x, const std::vector<std::int64_t>& frames, nn::BlockBuffers<T>& buf) const {
    const std::int64_t rows = frames.back();
    spatial.norm1.forward_into(x, buf.h.data(), rows);
    spatial.attn.forward_packed_into(buf.h.data(), frames, buf.y.data(), buf.qkv.data(), buf.o.data());
    spatial.residual(x, buf.y.data(), rows, nullptr);
  }
  // x += temporal_attn(temporal_norm(x)), each spatial position across the frames
  void temporal_step(T* x, std::int64_t rows, const std::vector<std::int64_t>& positions, std::int64_t nt, std::int64_t ns,
                     nn::BlockBuffers<T>& buf) const {
    temporal_norm.forward_into(x, buf.h.data(), rows);
    temporal_attn.forward_strided_into(buf.h.data(), rows, positions, nt, ns, buf.y.data(), buf.qkv.data(), buf.o.data());
    spatial.residual(x, buf.y.data(), rows, nullptr);
  }
};

// Model 4's attention (heads split between frames and time) is nn::factorized_dot_product_attention.
using nn::factorized_dot_product_attention;

template <class T = float>
struct ViViT {
  ViViTConfig config;
  nn::PatchEmbed<T> frame_embed;    // "uniform": patch_embed.proj (D, C, ph, pw)
  nn::TubeletEmbed<T> tubelet_embed;  // "tubelet": patch_embed.proj (D, C, t, ph, pw)
  ViViTEncoder<T> encoder;          // model 1 (top-level names), model 2 "spatial"
  ViViTEncoder<T> temporal;         // model 2 "temporal"
  std::vector<ViTBlock<T>> blocks;  // model 4
  std::vector<ViViTFactorizedBlock<T>> factorized_blocks;  // model 3, "blocks"
  Tensor<T> pos_embed;              // models 3, 4: (1, nt ns, D)
  nn::LayerNorm<T> norm;            // models 3, 4
  nn::Linear<T> head;
  mutable nn::BlockBuffers<T> buffers;

  ViViT() = default;
  explicit ViViT(const ViViTConfig& c) : config(c) {
    c.validate();
    const std::int64_t D = c.embed_dim;
    if (c.embedding == "uniform") frame_embed = nn::PatchEmbed<T>(c.patch_size, c.in_chans, D);
    else tubelet_embed = nn::TubeletEmbed<T>({c.tubelet_size, c.patch_size[0], c.patch_size[1]}, c.in_chans, D);
    if (c.model == "spatio_temporal") encoder = ViViTEncoder<T>(c, c.nt() * c.ns(), c.depth);
    if (c.model == "factorized_encoder") {
      encoder = ViViTEncoder<T>(c, c.ns(), c.depth);
      temporal = ViViTEncoder<T>(c, c.nt(), c.temporal_depth);
    }
    if (c.model == "factorized_self_attention")
      for (std::int64_t i = 0; i < c.depth; ++i) factorized_blocks.emplace_back(c);
    if (c.model == "factorized_dot_product")
      for (std::int64_t i = 0; i < c.depth; ++i) blocks.emplace_back(c.block_config());
    if (factorized()) {
      pos_embed = Tensor<T>({1, c.nt() * c.ns(), D});
      norm = nn::LayerNorm<T>(D, 1e-6);
    }
    if (c.num_classes > 0) head = nn::Linear<T>(D, c.num_classes);
  }

  bool factorized() const { return config.model == "factorized_self_attention" || config.model == "factorized_dot_product"; }

  template <class V>
  void visit(V& v) {
    if (config.embedding == "uniform") v("patch_embed", frame_embed);
    else v("patch_embed", tubelet_embed);
    if (config.model == "spatio_temporal") encoder.visit(v);  // cls_token, pos_embed, blocks, norm
    if (config.model == "factorized_encoder") {
      v("spatial", encoder);
      v("temporal", temporal);
    }
    if (factorized()) {
      v("pos_embed", pos_embed);
      if (config.model == "factorized_self_attention") v("blocks", factorized_blocks);
      else v("blocks", blocks);
      v("norm", norm);
    }
    if (config.num_classes > 0) v("head", head);
  }

  // x: (B, C, T, H, W) -> (B, nt ns, D) tokens in (t, h, w) order
  Tensor<T> embed(const Tensor<T>& x) const {
    const ViViTConfig& c = config;
    if (x.dim() != 5 || x.size(1) != c.in_chans || x.size(2) != c.num_frames || x.size(3) != c.img_size[0] || x.size(4) != c.img_size[1])
      throw ShapeError(ditto::detail::cat("ViViT: expected x (B, ", c.in_chans, ", ", c.num_frames, ", ", c.img_size[0], ", ", c.img_size[1],
                                          ") (batch, channels, frames, height, width), got ", shape_str(x.shape())));
    detail::require_samples("ViViT", x.size(0), x.shape());
    if (c.embedding == "tubelet") return tubelet_embed.forward(x);
    const std::int64_t B = x.size(0);
    const Tensor<T> frames = rearrange(x, "b c t h w -> (b t) c h w");
    return frame_embed.forward(frames).reshape({B, c.num_frames * c.ns(), c.embed_dim});
  }

  // x: (B, in_chans, num_frames, H, W) -> logits (B, num_classes), or the pooled features
  // (B, embed_dim) with num_classes 0.
  Tensor<T> forward(const Tensor<T>& x, const Trace<T>& trace = {}) const {
    const ViViTConfig& c = config;
    Tensor<T> tokens = embed(x);
    if (trace) trace("patch_embed", tokens);
    const std::int64_t B = x.size(0), nt = c.nt(), ns = c.ns(), D = c.embed_dim, rows = B * nt * ns;
    Tensor<T> pooled;
    if (c.model == "spatio_temporal") {
      pooled = encoder.forward(tokens, buffers, "", trace);
    } else if (c.model == "factorized_encoder") {
      const Tensor<T> frame_tokens = encoder.forward(tokens.reshape({B * nt, ns, D}), buffers, "spatial.", trace);  // (B nt, D)
      if (trace) trace("spatial", frame_tokens.reshape({B, nt, D}));
      pooled = temporal.forward(frame_tokens.reshape({B, nt, D}), buffers, "temporal.", trace);
    } else {
      if (pos_embed.numel() != nt * ns * D)
        throw ShapeError(ditto::detail::cat("ViViT: pos_embed must hold (1, ", nt * ns, ", ", D, "), got ", shape_str(pos_embed.shape())));
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < nt * ns * D; ++i) tokens[b * nt * ns * D + i] += pos_embed[i];
      std::vector<std::int64_t> frames, positions;
      for (std::int64_t f = 0; f <= B * nt; ++f) frames.push_back(f * ns);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t s = 0; s < ns; ++s) positions.push_back(b * nt * ns + s);
      buffers.ensure(rows, D, c.mlp_hidden());
      for (std::int64_t i = 0; i < c.depth; ++i) {
        if (c.model == "factorized_self_attention") {
          factorized_blocks[i].forward_inplace(tokens.data(), rows, frames, positions, nt, ns, buffers);
        } else {
          const auto& blk = blocks[i];
          blk.forward_with(tokens.data(), rows, buffers, [&](const T* h, T* out) {
            factorized_dot_product_attention(blk.attn, h, out, rows, frames, positions, nt, ns, buffers.qkv.data(), buffers.o.data());
          });
        }
        if (trace) trace("blocks." + std::to_string(i), tokens);
      }
      norm.forward_into(tokens.data(), tokens.data(), rows);
      if (trace) trace("norm", tokens);
      pooled = ViViTEncoder<T>::pool(tokens, false);
    }
    if (trace) trace("pooled", pooled);
    if (c.num_classes == 0) return pooled;
    Tensor<T> logits = head.forward(pooled);
    if (trace) trace("head", logits);
    return logits;
  }

  // Initialize from an image ViT (the paper's sec. 3.4): its patch embedding inflated (or used
  // as it is with uniform sampling), its blocks, norm and head copied; positions repeated over
  // time. Model 2's temporal encoder keeps its own weights; model 3's temporal attention is set
  // to zero so that each block starts as the image model's. The ViT must match (embed_dim,
  // heads, MLP, patch size, channels, class token for models 1 and 2, patch positions).
  void init_from_vit(const ViT<T>& vit, TubeletInit init = TubeletInit::central_frame) {
    using ditto::detail::cat;
    const ViViTConfig& c = config;
    const ViTConfig& v = vit.config;
    if (v.embed_dim != c.embed_dim || v.num_heads != c.num_heads || v.mlp_hidden() != c.mlp_hidden() || v.patch_size != c.patch_size ||
        v.in_chans != c.in_chans || v.reg_tokens != 0 || v.init_values || v.qk_norm || v.pre_norm || v.use_fc_norm() ||
        v.qkv_bias != c.qkv_bias || v.act != c.act || v.no_embed_class)
      throw ArgumentError("ViViT.init_from_vit: the ViT's embed_dim, num_heads, MLP width, patch_size, in_chans, qkv_bias and "
                          "activation must match, without register tokens, LayerScale, qk_norm, pre_norm, fc_norm or no_embed_class");
    if (v.grid_h() * v.grid_w() != c.ns())
      throw ArgumentError(cat("ViViT.init_from_vit: the ViT has ", v.grid_h() * v.grid_w(), " patch positions, the ViViT ", c.ns()));
    if (c.cls() && (c.model == "spatio_temporal" || c.model == "factorized_encoder") && !v.class_token)
      throw ArgumentError("ViViT.init_from_vit: the ViViT has a cls token but the ViT has none");
    if (c.embedding == "uniform") frame_embed.proj = vit.patch_embed.proj;
    else {
      tubelet_embed.proj.weight = inflate_patch_weight(vit.patch_embed.proj.weight, c.tubelet_size, init);
      if (vit.patch_embed.proj.has_bias) tubelet_embed.proj.bias = vit.patch_embed.proj.bias.clone();
    }
    const std::int64_t D = c.embed_dim, ns = c.ns(), nt = c.nt(), vp = v.class_token ? 1 : 0;
    // patch positions of the ViT, repeated for each of nt frames, after `lead` leading rows
    auto repeated_positions = [&](Tensor<T>& dst, std::int64_t lead) {
      for (std::int64_t f = 0; f < nt; ++f)
        std::copy(vit.pos_embed.data() + vp * D, vit.pos_embed.data() + (vp + ns) * D, dst.data() + (lead + f * ns) * D);
    };
    auto copy_blocks = [&](std::vector<ViTBlock<T>>& dst) {
      for (std::size_t i = 0; i < dst.size(); ++i) dst[i] = vit.blocks[i];
    };
    if (static_cast<std::int64_t>(vit.blocks.size()) < c.depth)
      throw ArgumentError(cat("ViViT.init_from_vit: the ViT has ", vit.blocks.size(), " blocks, the ViViT needs ", c.depth));
    if (c.model == "spatio_temporal" || c.model == "factorized_encoder") {
      if (c.cls()) {
        encoder.cls_token = vit.cls_token.clone();
        std::copy(vit.pos_embed.data(), vit.pos_embed.data() + D, encoder.pos_embed.data());
      }
      if (c.model == "spatio_temporal") repeated_positions(encoder.pos_embed, c.cls() ? 1 : 0);
      else std::copy(vit.pos_embed.data() + vp * D, vit.pos_embed.data() + (vp + ns) * D, encoder.pos_embed.data() + (c.cls() ? D : 0));
      copy_blocks(encoder.blocks);
      encoder.norm = vit.norm;
    } else {
      repeated_positions(pos_embed, 0);
      norm = vit.norm;
      if (c.model == "factorized_dot_product") copy_blocks(blocks);
      for (std::size_t i = 0; i < factorized_blocks.size(); ++i) {
        auto& fb = factorized_blocks[i];
        fb.spatial = vit.blocks[i];
        fb.temporal_norm = vit.blocks[i].norm1;
        for (auto* w : {&fb.temporal_attn.qkv.weight, &fb.temporal_attn.qkv.bias, &fb.temporal_attn.proj.weight, &fb.temporal_attn.proj.bias})
          w->fill(T(0));
      }
    }
    if (c.num_classes > 0 && v.num_classes == c.num_classes) head = vit.head;
    for (auto& [name, t] : nn::named_parameters<T>(*this)) *t = t->clone();  // own copies, not the ViT's storage
  }
};

}  // namespace ditto::models
