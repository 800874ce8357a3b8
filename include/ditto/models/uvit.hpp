// U-ViT (Bao et al. 2023) as baofff/U-ViT's libs/uvit.py builds it: everything is a token (the
// time, the class label, the image patches), a ViT with long skip connections between shallow
// and deep blocks (skip_linear on the concatenation), then a linear patch decoder and an
// optional 3x3 convolution. Parameter names are upstream's state-dict keys.
//
//   models::UViT<float> uvit(models::uvit_config("imagenet256_uvit_huge"));
//   nn::load<float>(uvit, "imagenet256_uvit_huge.safetensors");
//   auto eps = uvit.forward(z, timesteps, &y);   // z (B, 4, 32, 32); y (B) int64, or nullptr
//
// Tokens: [label (if num_classes > 0), time, patches...] + pos_embed. in_blocks (depth / 2),
// mid_block, out_blocks (depth / 2, each first mixing in the matching in_block's output:
// x = skip_linear(cat(x, skip))); Block = x + attn(norm1(x)), x + mlp(norm2(x)) with LayerNorm
// (eps 1e-5), GELU, attention in upstream's "math" mode (scale qk_scale or head_dim^-0.5).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/conv.hpp"
#include "../nn/embedding.hpp"
#include "../nn/linear.hpp"
#include "../nn/mlp.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "config.hpp"
#include "dit.hpp"  // Trace, DiTBuffers

namespace ditto::models {

// UViT.__init__'s arguments, with its defaults.
struct UViTConfig {
  std::int64_t img_size = 224, patch_size = 16, in_chans = 3, embed_dim = 768, depth = 12, num_heads = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = false;
  std::optional<double> qk_scale;
  bool mlp_time_embed = false;
  std::int64_t num_classes = -1;  // > 0: a label token (ImageNet configs: 1001, the last the null class)
  bool conv = true, skip = true;

  std::int64_t grid() const { return img_size / patch_size; }
  std::int64_t extras() const { return num_classes > 0 ? 2 : 1; }
  std::int64_t mlp_hidden() const { return detail::scaled_width(embed_dim, mlp_ratio); }
  double scale() const {  // upstream: qk_scale or head_dim ** -0.5 (so 0 and None both mean the default)
    return qk_scale && *qk_scale != 0 ? *qk_scale : 1.0 / std::sqrt(static_cast<double>(embed_dim / num_heads));
  }

  static UViTConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "UViT");
    UViTConfig c;
    c.img_size = kw.get("img_size", c.img_size);
    c.patch_size = kw.get("patch_size", c.patch_size);
    c.in_chans = kw.get("in_chans", c.in_chans);
    c.embed_dim = kw.get("embed_dim", c.embed_dim);
    c.depth = kw.get("depth", c.depth);
    c.num_heads = kw.get("num_heads", c.num_heads);
    c.mlp_ratio = kw.get("mlp_ratio", c.mlp_ratio);
    c.qkv_bias = kw.get("qkv_bias", c.qkv_bias);
    c.qk_scale = kw.get_optional<double>("qk_scale");
    c.mlp_time_embed = kw.get("mlp_time_embed", c.mlp_time_embed);
    c.num_classes = kw.get("num_classes", c.num_classes);
    c.conv = kw.get("conv", c.conv);
    c.skip = kw.get("skip", c.skip);
    kw.ignore("use_checkpoint");  // gradient checkpointing: no effect on the forward
    if (kw.has("norm_layer") && !kw.is_null("norm_layer"))
      throw ArgumentError("UViT config: \"norm_layer\" other than its default (nn.LayerNorm) is not supported, got " + brief_json(j.at("norm_layer")));
    kw.ignore("name");  // the "name" key of U-ViT's config.nnet (always "uvit" here)
    if (j.contains("name") && j.at("name") != "uvit")
      throw ArgumentError("UViT config: name " + brief_json(j.at("name")) + " is not \"uvit\" (uvit_t2i is a different model)");
    kw.finish();
    c.validate();
    return c;
  }

  void validate() const {
    using ditto::detail::cat;
    for (auto [name, v] : {std::pair{"img_size", img_size}, std::pair{"patch_size", patch_size}, std::pair{"in_chans", in_chans},
                           std::pair{"embed_dim", embed_dim}, std::pair{"num_heads", num_heads}})
      if (v < 1) throw ArgumentError(cat("UViT config: ", name, " must be >= 1, got ", v));
    if (depth < 0) throw ArgumentError(cat("UViT config: depth must be >= 0, got ", depth));
    if (img_size < patch_size) throw ArgumentError(cat("UViT config: img_size ", img_size, " is smaller than patch_size ", patch_size));
    if (embed_dim % num_heads) throw ArgumentError(cat("UViT config: embed_dim ", embed_dim, " must be divisible by num_heads ", num_heads));
    if (mlp_hidden() < 1) throw ArgumentError(cat("UViT config: embed_dim * mlp_ratio must be a width from 1 to 2^31, got mlp_ratio ", mlp_ratio));
    detail::check_weights_fit("UViT", min_weights());
  }
  // A lower bound on the parameter count: the blocks' matrices, patch_embed and decoder_pred.
  double min_weights() const {
    return detail::transformer_weights(depth, embed_dim, mlp_hidden(), 4) +
           2 * static_cast<double>(patch_size) * static_cast<double>(patch_size) * static_cast<double>(in_chans) * static_cast<double>(embed_dim);
  }
};

// The nnet configs of U-ViT's configs/ folder, by file name (without .py).
inline UViTConfig uvit_config(const std::string& name) {
  UViTConfig c;
  c.mlp_ratio = 4;
  c.qkv_bias = false;
  c.mlp_time_embed = false;
  if (name == "cifar10_uvit_small") c.img_size = 32, c.patch_size = 2, c.embed_dim = 512, c.depth = 12, c.num_heads = 8;
  else if (name == "celeba64_uvit_small") c.img_size = 64, c.patch_size = 4, c.embed_dim = 512, c.depth = 12, c.num_heads = 8;
  else if (name == "imagenet64_uvit_mid") c.img_size = 64, c.patch_size = 4, c.embed_dim = 768, c.depth = 16, c.num_heads = 12, c.num_classes = 1000;
  else if (name == "imagenet64_uvit_large") c.img_size = 64, c.patch_size = 4, c.embed_dim = 1024, c.depth = 20, c.num_heads = 16, c.num_classes = 1000;
  else if (name == "imagenet256_uvit_large") c.img_size = 32, c.patch_size = 2, c.in_chans = 4, c.embed_dim = 1024, c.depth = 20, c.num_heads = 16, c.num_classes = 1001;
  else if (name == "imagenet256_uvit_huge") c.img_size = 32, c.patch_size = 2, c.in_chans = 4, c.embed_dim = 1152, c.depth = 28, c.num_heads = 16, c.num_classes = 1001, c.conv = false;
  else if (name == "imagenet512_uvit_large") c.img_size = 64, c.patch_size = 4, c.in_chans = 4, c.embed_dim = 1024, c.depth = 20, c.num_heads = 16, c.num_classes = 1001;
  else if (name == "imagenet512_uvit_huge") c.img_size = 64, c.patch_size = 4, c.in_chans = 4, c.embed_dim = 1152, c.depth = 28, c.num_heads = 16, c.num_classes = 1001, c.conv = false;
  else
    throw ArgumentError("uvit_config: unknown config \"" + name + "\"; expected one of cifar10_uvit_small, celeba64_uvit_small, "
                        "imagenet64_uvit_mid, imagenet64_uvit_large, imagenet256_uvit_large, imagenet256_uvit_huge, "
                        "imagenet512_uvit_large, imagenet512_uvit_huge (mscoco_uvit_small is the text-to-image model)");
  return c;
}

template <class T = float>
struct UViTBlock {
  std::int64_t dim = 0;
  bool has_skip = false;
  nn::LayerNorm<T> norm1, norm2;
  nn::Attention<T> attn;
  nn::Mlp<T> mlp;
  nn::Linear<T> skip_linear;

  UViTBlock() = default;
  UViTBlock(const UViTConfig& c, bool skip)
      : dim(c.embed_dim), has_skip(skip), norm1(c.embed_dim), norm2(c.embed_dim), attn(c.embed_dim, c.num_heads, c.qkv_bias),
        mlp(c.embed_dim, c.mlp_hidden(), c.embed_dim, nn::Activation::gelu) {
    attn.scale = c.scale();
    if (skip) skip_linear = nn::Linear<T>(2 * c.embed_dim, c.embed_dim);
  }

  template <class V>
  void visit(V& v) {
    v("norm1", norm1);
    v("attn", attn);
    v("norm2", norm2);
    v("mlp", mlp);
    if (has_skip) v("skip_linear", skip_linear);
  }

  // x: rows of dim in place; skip: the matching in_block's output (rows of dim) when has_skip.
  // cat_buf: rows x 2 dim.
  void forward_inplace(T* x, const T* skip, const std::vector<std::int64_t>& cu, DiTBuffers<T>& buf, T* cat_buf) const {
    const std::int64_t rows = cu.back();
    if (has_skip) {
      parallel_for(rows, rows * dim * 2, [&](std::int64_t lo, std::int64_t hi) {
        for (auto r = lo; r < hi; ++r) {
          std::copy(x + r * dim, x + (r + 1) * dim, cat_buf + r * 2 * dim);
          std::copy(skip + r * dim, skip + (r + 1) * dim, cat_buf + r * 2 * dim + dim);
        }
      });
      skip_linear.forward_into(cat_buf, x, rows);
    }
    norm1.forward_into(x, buf.h.data(), rows);
    attn.forward_packed_into(buf.h.data(), cu, buf.y.data(), buf.qkv.data(), buf.o.data());
    add(x, buf.y.data(), rows);
    norm2.forward_into(x, buf.h.data(), rows);
    mlp.forward_into(buf.h.data(), buf.y.data(), rows, buf.hidden.data());
    add(x, buf.y.data(), rows);
  }

 private:
  void add(T* x, const T* y, std::int64_t rows) const {
    parallel_for(rows * dim, rows * dim, [&](std::int64_t lo, std::int64_t hi) {
      for (auto i = lo; i < hi; ++i) x[i] += y[i];
    });
  }
};

template <class T = float>
struct UViT {
  UViTConfig config;
  nn::PatchEmbed<T> patch_embed;
  nn::Linear<T> time_embed0, time_embed2;  // "time_embed.0", "time_embed.2" with mlp_time_embed
  nn::Embedding<T> label_emb;
  Tensor<T> pos_embed;
  std::vector<UViTBlock<T>> in_blocks, out_blocks;
  UViTBlock<T> mid_block;
  nn::LayerNorm<T> norm;
  nn::Linear<T> decoder_pred;
  nn::Conv2d<T> final_layer;
  mutable DiTBuffers<T> buffers;

  UViT() = default;
  explicit UViT(const UViTConfig& c) : config(c) {
    c.validate();
    const std::int64_t D = c.embed_dim;
    patch_embed = nn::PatchEmbed<T>(c.patch_size, c.in_chans, D);
    if (c.mlp_time_embed) time_embed0 = nn::Linear<T>(D, 4 * D), time_embed2 = nn::Linear<T>(4 * D, D);
    if (c.num_classes > 0) label_emb = nn::Embedding<T>(c.num_classes, D);
    pos_embed = Tensor<T>({1, c.extras() + c.grid() * c.grid(), D});
    for (std::int64_t i = 0; i < c.depth / 2; ++i) in_blocks.emplace_back(c, false);
    mid_block = UViTBlock<T>(c, false);
    for (std::int64_t i = 0; i < c.depth / 2; ++i) out_blocks.emplace_back(c, c.skip);
    norm = nn::LayerNorm<T>(D);
    decoder_pred = nn::Linear<T>(D, c.patch_size * c.patch_size * c.in_chans);
    if (c.conv) final_layer = nn::Conv2d<T>(c.in_chans, c.in_chans, 3, 1, 1);
  }

  template <class V>
  void visit(V& v) {
    v("pos_embed", pos_embed);
    v("patch_embed", patch_embed);
    if (config.mlp_time_embed) {
      v("time_embed.0", time_embed0);
      v("time_embed.2", time_embed2);
    }
    if (config.num_classes > 0) v("label_emb", label_emb);
    v("in_blocks", in_blocks);
    v("mid_block", mid_block);
    v("out_blocks", out_blocks);
    v("norm", norm);
    v("decoder_pred", decoder_pred);
    if (config.conv) v("final_layer", final_layer);
  }

  // x: (B, in_chans, img_size, img_size); timesteps: (B), fractional allowed; y: (B) labels when
  // num_classes > 0 (required then, refused otherwise, as upstream) -> (B, in_chans, H, W).
  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& timesteps, const Tensor<std::int64_t>* y = nullptr,
                    const Trace<T>& trace = {}) const {
    using ditto::detail::cat;
    const UViTConfig& c = config;
    const std::int64_t g = c.grid(), p = c.patch_size, D = c.embed_dim;
    if (x.dim() != 4 || x.size(1) != c.in_chans || x.size(2) != g * p || x.size(3) != g * p)
      throw ShapeError(cat("UViT: expected x (B, ", c.in_chans, ", ", g * p, ", ", g * p, "), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0), N = g * g, E = c.extras(), L = E + N;
    detail::require_samples("UViT", B, x.shape());
    if (timesteps.dim() != 1 || timesteps.size(0) != B)
      throw ShapeError(cat("UViT: expected timesteps of shape (", B, "), got ", shape_str(timesteps.shape())));
    if (c.num_classes > 0 && !y)
      throw ArgumentError(cat("UViT: this model has a label token (num_classes ", c.num_classes, "), so y is required"));
    if (c.num_classes <= 0 && y) throw ArgumentError("UViT: this model is unconditional (num_classes <= 0) and takes no y");
    if (y && (y->dim() != 1 || y->size(0) != B))
      throw ShapeError(cat("UViT: expected y of shape (", B, "), got ", shape_str(y->shape())));
    const Tensor<T> patches = patch_embed.forward(x);
    if (trace) trace("patch_embed", patches);
    Tensor<T> time = nn::timestep_embedding(timesteps, D);
    if (c.mlp_time_embed) {
      time = time_embed0.forward(time);
      nn::activate(time.data(), time.numel(), nn::Activation::silu);
      time = time_embed2.forward(time);
    }
    if (trace) trace("time_embed", time);
    Tensor<T> label;
    if (y) {
      label = label_emb.forward(*y);
      if (trace) trace("label_emb", label);
    }
    Tensor<T> tokens = Tensor<T>::empty({B, L, D});
    for (std::int64_t b = 0; b < B; ++b) {
      T* out = tokens.data() + b * L * D;
      if (y) std::copy(label.data() + b * D, label.data() + (b + 1) * D, out);
      std::copy(time.data() + b * D, time.data() + (b + 1) * D, out + (E - 1) * D);
      std::copy(patches.data() + b * N * D, patches.data() + (b + 1) * N * D, out + E * D);
      for (std::int64_t i = 0; i < L * D; ++i) out[i] += pos_embed[i];
    }
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * L);
    buffers.ensure(B * L, D, c.mlp_hidden());
    std::vector<Tensor<T>> skips;  // the in_blocks' outputs, used last-first
    for (std::size_t i = 0; i < in_blocks.size(); ++i) {
      in_blocks[i].forward_inplace(tokens.data(), nullptr, cu, buffers, nullptr);
      skips.push_back(tokens.clone());
      if (trace) trace("in_blocks." + std::to_string(i), tokens);
    }
    mid_block.forward_inplace(tokens.data(), nullptr, cu, buffers, nullptr);
    if (trace) trace("mid_block", tokens);
    Tensor<T> cat_buf = c.skip && !out_blocks.empty() ? Tensor<T>::empty({B * L, 2 * D}) : Tensor<T>();
    for (std::size_t i = 0; i < out_blocks.size(); ++i) {
      const Tensor<T>& s = skips[skips.size() - 1 - i];
      out_blocks[i].forward_inplace(tokens.data(), s.data(), cu, buffers, cat_buf.data());
      if (trace) trace("out_blocks." + std::to_string(i), tokens);
    }
    norm.forward_into(tokens.data(), tokens.data(), B * L);
    if (trace) trace("norm", tokens);
    Tensor<T> pred = decoder_pred.forward(tokens);  // (B, L, p*p*C)
    if (trace) trace("decoder_pred", pred);
    // drop the extra tokens, unpatchify ('B (h w) (p1 p2 C) -> B C (h p1) (w p2)')
    const std::int64_t P = p * p * c.in_chans;
    Tensor<T> kept = Tensor<T>::empty({B, N, P});
    for (std::int64_t b = 0; b < B; ++b) std::copy(pred.data() + (b * L + E) * P, pred.data() + (b + 1) * L * P, kept.data() + b * N * P);
    Tensor<T> img = nn::unpatchify(kept, c.in_chans, p, g, g);
    if (c.conv) img = final_layer.forward(img);
    if (trace) trace("final_layer", img);
    return img;
  }
};

}  // namespace ditto::models
