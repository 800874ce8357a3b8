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
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../einops/rearrange.hpp"
#include "../nn/activation.hpp"
#include "../nn/adaln.hpp"  // Trace
#include "../nn/attention.hpp"
#include "../nn/linear.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/norm.hpp"
#include "../nn/buffers.hpp"
#include "../nn/init.hpp"
#include "../nn/patch.hpp"
#include "config.hpp"
#include "../nn/vit_block.hpp"

namespace ditto::models {

using nn::Trace;
using nn::ViTBlock;

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

  // One of its blocks: timm's Block as a ViT of this width, heads and MLP has it.
  template <class T>
  nn::ViTBlock<T> block() const {
    return nn::ViTBlock<T>(embed_dim, num_heads, mlp_hidden(), qkv_bias, false, act);
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
    for (std::int64_t i = 0; i < depth; ++i) blocks.push_back(c.template block<T>());
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
    const std::int64_t S = x.size(0), D = x.size(2), L = x.size(1) + (has_cls ? 1 : 0);
    Tensor<T> tokens = assemble(x, prefix).reshape({S, L, D});
    const std::vector<std::int64_t> cu = cu_of(S, L);
    buf.ensure(S * L, D, blocks.empty() ? 1 : blocks[0].mlp.fc1.out_features);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      blocks[i].forward_inplace(tokens.data(), cu, buf);
      if (trace) trace(prefix + "blocks." + std::to_string(i), tokens);
    }
    norm.forward_into(tokens.data(), tokens.data(), S * L);
    if (trace) trace(prefix + "norm", tokens);
    return pool(tokens, has_cls);
  }

  // Training: each block's activations (or, with checkpoint, its input), the norm's input and
  // statistics. x: (S, n, D) -> (S, D) as forward.
  struct Acts {
    std::int64_t S = 0, L = 0;
    std::vector<typename ViTBlock<T>::Acts> blocks;
    std::vector<Tensor<T>> block_in;
    Tensor<T> x_norm, mean, rstd;
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a, bool checkpoint, bool check_finite, const std::string& prefix) const {
    const std::int64_t S = x.size(0), D = x.size(2), L = x.size(1) + (has_cls ? 1 : 0), rows = S * L;
    Tensor<T> tokens = assemble(x, prefix);
    a.S = S, a.L = L;
    const auto seq = nn::Attention<T>::Sequences::packed(cu_of(S, L));
    a.blocks.assign(blocks.size(), typename ViTBlock<T>::Acts{});
    a.block_in.assign(checkpoint ? blocks.size() : 0, Tensor<T>());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (checkpoint) {
        a.block_in[i] = tokens.clone();
        typename ViTBlock<T>::Acts dropped;
        blocks[i].forward_train(tokens.data(), rows, seq, dropped);
      } else {
        blocks[i].forward_train(tokens.data(), rows, seq, a.blocks[i]);
      }
      if (check_finite) nn::require_finite<T>("ViViT." + prefix + "blocks." + std::to_string(i), "output", tokens.data(), tokens.numel());
    }
    a.x_norm = tokens.clone(), a.mean = Tensor<T>::empty({rows}), a.rstd = Tensor<T>::empty({rows});
    norm.forward_train(a.x_norm.data(), tokens.data(), rows, a.mean.data(), a.rstd.data());
    return pool(tokens.reshape({S, L, D}), has_cls);
  }
  // dpooled (S, D) -> dx (S, n, D). Accumulates g.
  Tensor<T> backward(ViViTEncoder& g, const Acts& a, const Tensor<T>& dpooled, bool check_finite, const std::string& prefix) const {
    const std::int64_t S = a.S, L = a.L, D = dpooled.size(1), rows = S * L, n = L - (has_cls ? 1 : 0);
    Tensor<T> dnormed({rows, D}), dtokens({rows, D});
    for (std::int64_t s = 0; s < S; ++s)  // pool's backward: into the cls row, or spread over the L rows
      for (std::int64_t l = 0; l < (has_cls ? 1 : L); ++l)
        for (std::int64_t d = 0; d < D; ++d) dnormed[(s * L + l) * D + d] = has_cls ? dpooled[s * D + d] : dpooled[s * D + d] / static_cast<T>(L);
    norm.backward_into(dtokens.data(), g.norm, dnormed.data(), a.x_norm.data(), a.mean.data(), a.rstd.data(), rows);
    const auto seq = nn::Attention<T>::Sequences::packed(cu_of(S, L));
    for (std::size_t i = blocks.size(); i-- > 0;) {
      typename ViTBlock<T>::Acts recomputed;
      if (!a.block_in.empty()) {
        Tensor<T> x = a.block_in[i].clone();
        blocks[i].forward_train(x.data(), rows, seq, recomputed);
      }
      blocks[i].backward(dtokens.data(), g.blocks[i], seq, a.block_in.empty() ? a.blocks[i] : recomputed);
      if (check_finite)
        nn::require_finite<T>("ViViT." + prefix + "blocks." + std::to_string(i), "input gradient", dtokens.data(), dtokens.numel(), &g.blocks[i]);
    }
    // [cls,] x + pos_embed: the table and the cls token sum over the sequences
    Tensor<T> dx = Tensor<T>::empty({S, n, D});
    for (std::int64_t s = 0; s < S; ++s) {
      const T* dt = dtokens.data() + s * L * D;
      for (std::int64_t i = 0; i < L * D; ++i) g.pos_embed[i] += dt[i];
      if (has_cls) for (std::int64_t d = 0; d < D; ++d) g.cls_token[d] += dt[d];
      std::copy(dt + (L - n) * D, dt + L * D, dx.data() + s * n * D);
    }
    return dx;
  }

  // (S, n, D) -> (S L, D) token rows: [cls,] x + pos_embed
  Tensor<T> assemble(const Tensor<T>& x, const std::string& prefix) const {
    const std::int64_t S = x.size(0), n = x.size(1), D = x.size(2), L = n + (has_cls ? 1 : 0);
    if (pos_embed.numel() != L * D)
      throw ShapeError(ditto::detail::cat("ViViT: ", prefix, "pos_embed must hold (1, ", L, ", ", D, "), got ", shape_str(pos_embed.shape())));
    Tensor<T> tokens = Tensor<T>::empty({S * L, D});
    for (std::int64_t s = 0; s < S; ++s) {
      T* out = tokens.data() + s * L * D;
      if (has_cls) std::copy(cls_token.data(), cls_token.data() + D, out);
      std::copy(x.data() + s * n * D, x.data() + (s + 1) * n * D, out + (has_cls ? D : 0));
      for (std::int64_t i = 0; i < L * D; ++i) out[i] += pos_embed[i];
    }
    return tokens;
  }
  static std::vector<std::int64_t> cu_of(std::int64_t S, std::int64_t L) {
    std::vector<std::int64_t> cu;
    for (std::int64_t s = 0; s <= S; ++s) cu.push_back(s * L);
    return cu;
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
      : spatial(c.template block<T>()), temporal_norm(c.embed_dim, 1e-6), temporal_attn(c.embed_dim, c.num_heads, c.qkv_bias) {}

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

  // Training: per attention step its input, its norm's statistics and output and the
  // attention's activations; the MLP's input, norm statistics, normed rows and pre-activation.
  struct Branch {
    Tensor<T> x, mean, rstd, h;
    typename nn::Attention<T>::Acts attn;
  };
  struct Acts {
    Branch spatial, temporal;
    Tensor<T> x_mid, mean2, rstd2, h2, pre;
  };
  void forward_train(T* x, std::int64_t rows, const std::vector<std::int64_t>& frames, const std::vector<std::int64_t>& positions,
                     std::int64_t nt, std::int64_t ns, Acts& a) const {
    const std::int64_t D = spatial.dim;
    branch_train(spatial.norm1, spatial.attn, x, rows, nn::Attention<T>::Sequences::packed(frames), a.spatial);
    branch_train(temporal_norm, temporal_attn, x, rows, nn::Attention<T>::Sequences::strided(positions, nt, ns), a.temporal);
    a.x_mid = Tensor<T>::empty({rows, D}), a.h2 = Tensor<T>::empty({rows, D}), a.mean2 = Tensor<T>::empty({rows}), a.rstd2 = Tensor<T>::empty({rows});
    a.pre = Tensor<T>::empty({rows, spatial.mlp.fc1.out_features});
    std::copy(x, x + rows * D, a.x_mid.data());
    spatial.norm2.forward_train(x, a.h2.data(), rows, a.mean2.data(), a.rstd2.data());
    Tensor<T> hidden = Tensor<T>::empty({rows, spatial.mlp.fc1.out_features}), y = Tensor<T>::empty({rows, D});
    spatial.mlp.forward_train(a.h2.data(), y.data(), rows, a.pre.data(), hidden.data());
    spatial.residual(x, y.data(), rows, nullptr);
  }
  // dx: the output's gradient, replaced by the input's (the three residuals in reverse). Accumulates g.
  void backward(T* dx, ViViTFactorizedBlock& g, const std::vector<std::int64_t>& frames, const std::vector<std::int64_t>& positions,
                std::int64_t nt, std::int64_t ns, const Acts& a) const {
    const std::int64_t rows = a.x_mid.size(0), D = spatial.dim;
    Tensor<T> dh({rows, D});
    spatial.mlp.backward_into(dh.data(), g.spatial.mlp, dx, a.h2.data(), a.pre.data(), rows);
    spatial.norm2.backward_into(dx, g.spatial.norm2, dh.data(), a.x_mid.data(), a.mean2.data(), a.rstd2.data(), rows);
    branch_backward(temporal_norm, temporal_attn, g.temporal_norm, g.temporal_attn, dx, rows, nn::Attention<T>::Sequences::strided(positions, nt, ns),
                    a.temporal);
    branch_backward(spatial.norm1, spatial.attn, g.spatial.norm1, g.spatial.attn, dx, rows, nn::Attention<T>::Sequences::packed(frames), a.spatial);
  }

 private:
  // x += attn(norm(x)) over seq, keeping what branch_backward reads
  static void branch_train(const nn::LayerNorm<T>& norm, const nn::Attention<T>& attn, T* x, std::int64_t rows,
                           const typename nn::Attention<T>::Sequences& seq, Branch& b) {
    const std::int64_t D = attn.dim;
    b.x = Tensor<T>::empty({rows, D}), b.h = Tensor<T>::empty({rows, D}), b.mean = Tensor<T>::empty({rows}), b.rstd = Tensor<T>::empty({rows});
    std::copy(x, x + rows * D, b.x.data());
    norm.forward_train(x, b.h.data(), rows, b.mean.data(), b.rstd.data());
    Tensor<T> y = Tensor<T>::empty({rows, D});
    attn.forward_train(b.h.data(), rows, seq, y.data(), b.attn);
    for (std::int64_t i = 0; i < rows * D; ++i) x[i] += y[i];
  }
  static void branch_backward(const nn::LayerNorm<T>& norm, const nn::Attention<T>& attn, nn::LayerNorm<T>& gn, nn::Attention<T>& ga, T* dx,
                              std::int64_t rows, const typename nn::Attention<T>::Sequences& seq, const Branch& b) {
    Tensor<T> dh({rows, attn.dim});
    attn.backward(dh.data(), ga, dx, b.h.data(), rows, seq, b.attn);
    norm.backward_into(dx, gn, dh.data(), b.x.data(), b.mean.data(), b.rstd.data(), rows);
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
      for (std::int64_t i = 0; i < c.depth; ++i) blocks.push_back(c.template block<T>());
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
    (void)check_input(x);
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
      add_pos_embed(tokens);
      const auto layout = factorized_layout(B);
      const auto& frames = layout.first;
      const auto& positions = layout.second;
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

  // Training (docs/training.md): what backward reads, kept by forward_train (eval semantics: no
  // dropout). Models 1 and 2 keep theirs in the encoders' Acts, models 3 and 4 per block.
  struct Acts {
    bool checkpoint = false, check_finite = false;  // as DiT::Acts: recompute blocks in backward; NaN/Inf checks
    std::int64_t B = 0;
    Tensor<T> patches;  // (B nt ns, C t ph pw): the embedding's input rows (t = 1 for "uniform")
    typename ViViTEncoder<T>::Acts encoder, temporal;
    std::vector<typename ViViTFactorizedBlock<T>::Acts> factorized_blocks;
    std::vector<typename ViTBlock<T>::Acts> blocks;
    std::vector<Tensor<T>> block_in;  // checkpoint, models 3 and 4
    Tensor<T> x_norm, mean_norm, rstd_norm, head_in;
  };

  Tensor<T> forward_train(const Tensor<T>& x, Acts& a) const {
    const ViViTConfig& c = config;
    (void)check_input(x);
    const std::int64_t B = x.size(0), nt = c.nt(), ns = c.ns(), D = c.embed_dim, rows = B * nt * ns;
    a.B = B;
    // both embeddings are one product on non-overlapping (t, ph, pw) windows (t = 1: frame by frame)
    a.patches = rearrange(x, "b c (t pt) (h ph) (w pw) -> (b t h w) (c pt ph pw)",
                          {{"pt", c.tubelet_size}, {"ph", c.patch_size[0]}, {"pw", c.patch_size[1]}});
    Tensor<T> tokens = Tensor<T>::empty({B, nt * ns, D});
    const auto [w, bias] = embed_params(const_cast<ViViT&>(*this));
    nn::linear_rows(a.patches.data(), rows, a.patches.size(1), D, w->data(), bias ? bias->data() : nullptr, tokens.data());
    Tensor<T> pooled;
    if (c.model == "spatio_temporal") {
      pooled = encoder.forward_train(tokens, a.encoder, a.checkpoint, a.check_finite, "");
    } else if (c.model == "factorized_encoder") {
      const Tensor<T> frame_tokens = encoder.forward_train(tokens.reshape({B * nt, ns, D}), a.encoder, a.checkpoint, a.check_finite, "spatial.");
      pooled = temporal.forward_train(frame_tokens.reshape({B, nt, D}), a.temporal, a.checkpoint, a.check_finite, "temporal.");
    } else {
      add_pos_embed(tokens);
      const auto layout = factorized_layout(B);
      const auto& frames = layout.first;
      const auto& positions = layout.second;
      a.factorized_blocks.assign(factorized_blocks.size(), {});
      a.blocks.assign(blocks.size(), {});
      a.block_in.assign(a.checkpoint ? static_cast<std::size_t>(c.depth) : 0, Tensor<T>());
      for (std::int64_t i = 0; i < c.depth; ++i) {
        if (a.checkpoint) a.block_in[static_cast<std::size_t>(i)] = tokens.clone();
        block_train(static_cast<std::size_t>(i), tokens.data(), rows, frames, positions, a, a.checkpoint);
        if (a.check_finite) nn::require_finite<T>("ViViT.blocks." + std::to_string(i), "output", tokens.data(), tokens.numel());
      }
      a.x_norm = tokens.clone(), a.mean_norm = Tensor<T>::empty({rows}), a.rstd_norm = Tensor<T>::empty({rows});
      norm.forward_train(a.x_norm.data(), tokens.data(), rows, a.mean_norm.data(), a.rstd_norm.data());
      pooled = ViViTEncoder<T>::pool(tokens, false);
    }
    if (c.num_classes == 0) return pooled;
    a.head_in = pooled;
    return head.forward(pooled);
  }

  // dout: the gradient of forward_train's output. Accumulates g (nn::zeros_like of this model)
  // and sets *dx (x's shape) when given.
  void backward(ViViT& g, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr) const {
    using ditto::detail::cat;
    const ViViTConfig& c = config;
    const std::int64_t B = a.B, nt = c.nt(), ns = c.ns(), D = c.embed_dim, rows = B * nt * ns;
    if (B < 1 || a.patches.size(0) != rows) throw ArgumentError("ViViT.backward: the activations were not made by this model's forward_train");
    (void)nn::zip_parameters<T>(const_cast<ViViT&>(*this), g, "ViViT.backward");
    const Shape out_shape{B, c.num_classes > 0 ? c.num_classes : D};
    if (dout.shape() != out_shape) throw ShapeError(cat("ViViT.backward: expected dout of shape ", shape_str(out_shape), ", got ", shape_str(dout.shape())));
    if (a.check_finite) nn::require_finite<T>("ViViT.backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    Tensor<T> dpooled({B, D});
    if (c.num_classes > 0) head.backward_into(dpooled.data(), g.head, dout.data(), a.head_in.data(), B);
    else std::copy(dout.begin(), dout.end(), dpooled.data());
    Tensor<T> dtokens;  // (B, nt ns, D)
    if (c.model == "spatio_temporal") {
      dtokens = encoder.backward(g.encoder, a.encoder, dpooled, a.check_finite, "");
    } else if (c.model == "factorized_encoder") {
      const Tensor<T> dframes = temporal.backward(g.temporal, a.temporal, dpooled, a.check_finite, "temporal.");  // (B, nt, D)
      dtokens = encoder.backward(g.encoder, a.encoder, dframes.reshape({B * nt, D}), a.check_finite, "spatial.");
    } else {
      if (a.block_in.size() != (a.checkpoint ? static_cast<std::size_t>(c.depth) : 0))
        throw ArgumentError("ViViT.backward: checkpoint was set after forward_train (set it before: the blocks' inputs were not kept)");
      Tensor<T> dnormed({rows, D});
      for (std::int64_t b = 0; b < B; ++b)  // the mean over every token
        for (std::int64_t r = 0; r < nt * ns; ++r)
          for (std::int64_t d = 0; d < D; ++d) dnormed[(b * nt * ns + r) * D + d] = dpooled[b * D + d] / static_cast<T>(nt * ns);
      dtokens = Tensor<T>({rows, D});
      norm.backward_into(dtokens.data(), g.norm, dnormed.data(), a.x_norm.data(), a.mean_norm.data(), a.rstd_norm.data(), rows);
      const auto layout = factorized_layout(B);
      const auto& frames = layout.first;
      const auto& positions = layout.second;
      for (std::size_t i = static_cast<std::size_t>(c.depth); i-- > 0;) {
        Acts recomputed;
        if (a.checkpoint) {
          recomputed.factorized_blocks.resize(factorized_blocks.size()), recomputed.blocks.resize(blocks.size());
          Tensor<T> xi = a.block_in[i].clone();
          block_train(i, xi.data(), rows, frames, positions, recomputed, false);
        }
        const Acts& ai = a.checkpoint ? recomputed : a;
        if (c.model == "factorized_self_attention") {
          factorized_blocks[i].backward(dtokens.data(), g.factorized_blocks[i], frames, positions, nt, ns, ai.factorized_blocks[i]);
        } else {
          const auto& blk = blocks[i];
          blk.backward_with(dtokens.data(), g.blocks[i], ai.blocks[i], [&](T* dh, const T* dy, const typename nn::Attention<T>::Acts& aa) {
            nn::factorized_dot_product_attention_backward(blk.attn, g.blocks[i].attn, dh, dy, ai.blocks[i].h1.data(), rows, frames, positions, nt, ns, aa);
          });
        }
        if (a.check_finite) {
          const std::string where = "ViViT.blocks." + std::to_string(i);
          if (c.model == "factorized_self_attention") nn::require_finite<T>(where, "input gradient", dtokens.data(), dtokens.numel(), &g.factorized_blocks[i]);
          else nn::require_finite<T>(where, "input gradient", dtokens.data(), dtokens.numel(), &g.blocks[i]);
        }
      }
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < nt * ns * D; ++i) g.pos_embed[i] += dtokens[b * nt * ns * D + i];
    }
    const auto [w, bias] = embed_params(const_cast<ViViT&>(*this));
    const auto [gw, gbias] = embed_params(g);
    Tensor<T> dpatches;
    if (dx) dpatches = Tensor<T>(a.patches.shape());
    nn::linear_rows_backward(dx ? dpatches.data() : nullptr, gw->data(), gbias ? gbias->data() : nullptr, dtokens.data(), a.patches.data(),
                             w->data(), rows, a.patches.size(1), D);
    if (dx)
      *dx = rearrange(dpatches, "(b t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)",
                      {{"b", B}, {"t", nt}, {"h", c.img_size[0] / c.patch_size[0]}, {"pt", c.tubelet_size}, {"ph", c.patch_size[0]},
                       {"pw", c.patch_size[1]}});
  }

  // Initialize from an image ViT (the paper's sec. 3.4): its patch embedding inflated (or used
  // as it is with uniform sampling), its blocks, norm and head copied; positions repeated over
  // time. Model 2's temporal encoder keeps its own weights; model 3's temporal attention is set
  // to zero so that each block starts as the image model's. The ViT must match (embed_dim,
  // heads, MLP, patch size, channels, class token for models 1 and 2, patch positions).
  // VisionTransformer: models::ViT<T> (models/vit.hpp; a template so that this header does not
  // include another model's).
  template <class VisionTransformer>
  void init_from_vit(const VisionTransformer& vit, TubeletInit init = TubeletInit::central_frame) {
    using ditto::detail::cat;
    const ViViTConfig& c = config;
    const auto& v = vit.config;
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

 private:
  // x must be (B, in_chans, num_frames, H, W)
  bool check_input(const Tensor<T>& x) const {
    const ViViTConfig& c = config;
    if (x.dim() != 5 || x.size(1) != c.in_chans || x.size(2) != c.num_frames || x.size(3) != c.img_size[0] || x.size(4) != c.img_size[1])
      throw ShapeError(ditto::detail::cat("ViViT: expected x (B, ", c.in_chans, ", ", c.num_frames, ", ", c.img_size[0], ", ", c.img_size[1],
                                          ") (batch, channels, frames, height, width), got ", shape_str(x.shape())));
    detail::require_samples("ViViT", x.size(0), x.shape());
    return true;
  }
  // The embedding's weight and bias (null without one): the frame or the tubelet projection.
  static std::pair<Tensor<T>*, Tensor<T>*> embed_params(ViViT& m) {
    if (m.config.embedding == "uniform") return {&m.frame_embed.proj.weight, m.frame_embed.proj.has_bias ? &m.frame_embed.proj.bias : nullptr};
    return {&m.tubelet_embed.proj.weight, m.tubelet_embed.proj.has_bias ? &m.tubelet_embed.proj.bias : nullptr};
  }
  // models 3 and 4: tokens (B, nt ns, D) += pos_embed
  void add_pos_embed(Tensor<T>& tokens) const {
    const std::int64_t B = tokens.size(0), n = config.nt() * config.ns() * config.embed_dim;
    if (pos_embed.numel() != n)
      throw ShapeError(ditto::detail::cat("ViViT: pos_embed must hold (1, ", config.nt() * config.ns(), ", ", config.embed_dim, "), got ",
                                          shape_str(pos_embed.shape())));
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n; ++i) tokens[b * n + i] += pos_embed[i];
  }
  // (b, t, s) rows: cu of each frame, and the first row of each (b, s) sequence over t
  std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> factorized_layout(std::int64_t B) const {
    const std::int64_t nt = config.nt(), ns = config.ns();
    std::vector<std::int64_t> frames, positions;
    for (std::int64_t f = 0; f <= B * nt; ++f) frames.push_back(f * ns);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t s = 0; s < ns; ++s) positions.push_back(b * nt * ns + s);
    return {frames, positions};
  }
  // block i of model 3 or 4 on the token rows, keeping its activations in a (or not: dropped)
  void block_train(std::size_t i, T* x, std::int64_t rows, const std::vector<std::int64_t>& frames, const std::vector<std::int64_t>& positions,
                   Acts& a, bool dropped) const {
    const std::int64_t nt = config.nt(), ns = config.ns();
    if (config.model == "factorized_self_attention") {
      typename ViViTFactorizedBlock<T>::Acts tmp;
      factorized_blocks[i].forward_train(x, rows, frames, positions, nt, ns, dropped ? tmp : a.factorized_blocks[i]);
      return;
    }
    typename ViTBlock<T>::Acts tmp;
    const auto& blk = blocks[i];
    blk.forward_train_with(x, rows, dropped ? tmp : a.blocks[i], [&](const T* h, T* y, typename nn::Attention<T>::Acts& aa) {
      nn::factorized_dot_product_attention_train(blk.attn, h, y, rows, frames, positions, nt, ns, aa);
    });
  }
};

// The initialization of timm's VisionTransformer (its default weight_init ""), which ViViT's
// blocks are: cls tokens N(0, 1e-6), position embeddings and every Linear weight truncated
// N(0, 0.02) with zero biases, LayerNorms 1 and 0, the patch / tubelet embedding torch's default
// (uniform in +-1/sqrt(fan_in)).
template <class T>
inline void initialize_weights(ViViT<T>& m, Generator& gen) {
  auto ends = [](const std::string& s, const std::string& e) { return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0; };
  const auto params = nn::trainable_parameters<T>(m);
  std::int64_t patch_fan_in = 1;
  for (auto& [name, t] : params)
    if (name == "patch_embed.proj.weight") patch_fan_in = t->numel() / t->size(0);
  for (auto& [name, t] : params) {
    if (ends(name, "cls_token")) gen.fill_normal(*t, 0.0, 1e-6);
    else if (name.rfind("patch_embed.proj.", 0) == 0) nn::default_uniform(*t, gen, patch_fan_in);
    else if (name.find("norm") != std::string::npos && t->dim() == 1) nn::fill_constant(*t, ends(name, ".weight") ? 1.0 : 0.0);
    else if (ends(name, ".bias")) nn::fill_constant(*t, 0.0);
    else nn::trunc_normal(*t, gen, 0.02);
  }
}

}  // namespace ditto::models
