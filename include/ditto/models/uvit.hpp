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

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../einops/rearrange.hpp"
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/conv.hpp"
#include "../nn/embedding.hpp"
#include "../nn/linear.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/init.hpp"
#include "../nn/mlp.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "../nn/adaln.hpp"  // Trace
#include "../nn/buffers.hpp"
#include "config.hpp"

namespace ditto::models {

using nn::Trace;

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
  void forward_inplace(T* x, const T* skip, const std::vector<std::int64_t>& cu, nn::BlockBuffers<T>& buf, T* cat_buf) const {
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

  // Training. What backward reads: the concatenation skip_linear saw, the block's input (after
  // the skip), its middle, both LayerNorms' statistics and outputs, the attention's activations
  // and the MLP's pre-activation.
  struct Acts {
    Tensor<T> cat, x_in, mean1, rstd1, h1, x_mid, mean2, rstd2, h2, pre;
    typename nn::Attention<T>::Acts attn;
  };
  void forward_train(T* x, const T* skip, std::int64_t rows, const typename nn::Attention<T>::Sequences& seq, Acts& a) const {
    const std::int64_t D = dim;
    if (has_skip) {
      a.cat = Tensor<T>::empty({rows, 2 * D});
      for (std::int64_t r = 0; r < rows; ++r) {
        std::copy(x + r * D, x + (r + 1) * D, a.cat.data() + r * 2 * D);
        std::copy(skip + r * D, skip + (r + 1) * D, a.cat.data() + r * 2 * D + D);
      }
      skip_linear.forward_into(a.cat.data(), x, rows);
    }
    for (auto* t : {&a.x_in, &a.h1, &a.x_mid, &a.h2}) *t = Tensor<T>::empty({rows, D});
    for (auto* t : {&a.mean1, &a.rstd1, &a.mean2, &a.rstd2}) *t = Tensor<T>::empty({rows});
    a.pre = Tensor<T>::empty({rows, mlp.fc1.out_features});
    Tensor<T> y = Tensor<T>::empty({rows, D}), hidden = Tensor<T>::empty({rows, mlp.fc1.out_features});
    std::copy(x, x + rows * D, a.x_in.data());
    norm1.forward_train(x, a.h1.data(), rows, a.mean1.data(), a.rstd1.data());
    attn.forward_train(a.h1.data(), rows, seq, y.data(), a.attn);
    add(x, y.data(), rows);
    std::copy(x, x + rows * D, a.x_mid.data());
    norm2.forward_train(x, a.h2.data(), rows, a.mean2.data(), a.rstd2.data());
    mlp.forward_train(a.h2.data(), y.data(), rows, a.pre.data(), hidden.data());
    add(x, y.data(), rows);
  }
  // dx: the gradient of the block's output, replaced by that of its input x (before the skip).
  // dskip (rows x dim, accumulated): the skip's gradient, when has_skip. Accumulates g.
  void backward(T* dx, T* dskip, UViTBlock& g, const typename nn::Attention<T>::Sequences& seq, const Acts& a) const {
    const std::int64_t rows = a.x_in.size(0), D = dim;
    Tensor<T> dh({rows, D}), dy = Tensor<T>::empty({rows, D});
    std::copy(dx, dx + rows * D, dy.data());
    mlp.backward_into(dh.data(), g.mlp, dy.data(), a.h2.data(), a.pre.data(), rows);
    norm2.backward_into(dx, g.norm2, dh.data(), a.x_mid.data(), a.mean2.data(), a.rstd2.data(), rows);
    std::copy(dx, dx + rows * D, dy.data());
    std::fill(dh.begin(), dh.end(), T(0));
    attn.backward(dh.data(), g.attn, dy.data(), a.h1.data(), rows, seq, a.attn);
    norm1.backward_into(dx, g.norm1, dh.data(), a.x_in.data(), a.mean1.data(), a.rstd1.data(), rows);
    if (has_skip) {  // x_in = skip_linear(cat(x, skip))
      Tensor<T> dcat({rows, 2 * D});
      skip_linear.backward_into(dcat.data(), g.skip_linear, dx, a.cat.data(), rows);
      for (std::int64_t r = 0; r < rows; ++r) {
        std::copy(dcat.data() + r * 2 * D, dcat.data() + r * 2 * D + D, dx + r * D);
        for (std::int64_t i = 0; i < D; ++i) dskip[r * D + i] += dcat[r * 2 * D + D + i];
      }
    }
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
  mutable nn::BlockBuffers<T> buffers;

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
    const UViTConfig& c = config;
    check_inputs(x, timesteps, y, "UViT");
    const std::int64_t g = c.grid(), p = c.patch_size, D = c.embed_dim, B = x.size(0), N = g * g, E = c.extras(), L = E + N;
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
    Tensor<T> tokens = assemble(patches.reshape({B * N, D}), time, y ? &label : nullptr, B);
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

  // Training (docs/training.md): what backward reads, kept by forward_train.
  struct Acts {
    bool checkpoint = false, check_finite = false;  // as DiT::Acts
    std::int64_t B = 0;
    Tensor<T> patches, time_freq, time_pre;         // patch rows; the time features and time_embed.0's output
    Tensor<std::int64_t> y;
    std::vector<Tensor<T>> block_in;                // checkpoint: every block's input (in, mid, out order)
    std::vector<Tensor<T>> skips;                   // the in_blocks' outputs
    std::vector<typename UViTBlock<T>::Acts> blocks;  // in_blocks, mid_block, out_blocks
    Tensor<T> x_norm, mean, rstd, normed, img;      // the final norm; decoder_pred's input; final_layer's input
  };

  Tensor<T> forward_train(const Tensor<T>& x, const Tensor<T>& timesteps, const Tensor<std::int64_t>* y, Acts& a) const {
    const UViTConfig& c = config;
    check_inputs(x, timesteps, y, "UViT.forward_train");
    const std::int64_t g = c.grid(), p = c.patch_size, D = c.embed_dim, B = x.size(0), N = g * g, E = c.extras(), L = E + N, rows = B * L;
    a.B = B;
    a.y = y ? *y : Tensor<std::int64_t>();
    a.patches = rearrange(x, "b c (h p1) (w p2) -> (b h w) (c p1 p2)", {{"p1", p}, {"p2", p}});
    Tensor<T> patch_rows = Tensor<T>::empty({B * N, D});
    patch_embed.proj_rows(a.patches.data(), B * N, patch_rows.data());
    Tensor<T> time = nn::timestep_embedding(timesteps, D);
    if (c.mlp_time_embed) {
      a.time_freq = time;
      a.time_pre = time_embed0.forward(time);
      time = time_embed2.forward(nn::silu(a.time_pre));
    }
    const Tensor<T> label = y ? label_emb.forward(*y) : Tensor<T>();
    Tensor<T> tokens = assemble(patch_rows, time, y ? &label : nullptr, B);
    const auto seq = sequences(B, L);
    const std::size_t nb = in_blocks.size() + 1 + out_blocks.size();
    a.blocks.assign(nb, typename UViTBlock<T>::Acts{});
    a.block_in.assign(a.checkpoint ? nb : 0, Tensor<T>());
    a.skips.clear();
    for (std::size_t i = 0; i < nb; ++i) {
      const T* skip = i > in_blocks.size() ? a.skips[nb - 1 - i].data() : nullptr;
      if (a.checkpoint) {
        a.block_in[i] = tokens.clone();
        typename UViTBlock<T>::Acts dropped;
        block(i).forward_train(tokens.data(), skip, rows, seq, dropped);
      } else {
        block(i).forward_train(tokens.data(), skip, rows, seq, a.blocks[i]);
      }
      if (i < in_blocks.size()) a.skips.push_back(tokens.clone());
      if (a.check_finite) nn::require_finite<T>("UViT." + block_name(i), "output", tokens.data(), tokens.numel());
    }
    a.x_norm = tokens, a.mean = Tensor<T>::empty({rows}), a.rstd = Tensor<T>::empty({rows}), a.normed = Tensor<T>::empty({rows, D});
    norm.forward_train(a.x_norm.data(), a.normed.data(), rows, a.mean.data(), a.rstd.data());
    const std::int64_t P = p * p * c.in_chans;
    Tensor<T> pred = Tensor<T>::empty({rows, P});
    decoder_pred.forward_into(a.normed.data(), pred.data(), rows);
    Tensor<T> kept = Tensor<T>::empty({B, N, P});
    for (std::int64_t b = 0; b < B; ++b) std::copy(pred.data() + (b * L + E) * P, pred.data() + (b + 1) * L * P, kept.data() + b * N * P);
    a.img = nn::unpatchify(kept, c.in_chans, p, g, g);
    return c.conv ? final_layer.forward(a.img) : a.img;
  }

  // dout: the gradient of forward_train's output (x's shape). Accumulates g and sets *dx when given.
  void backward(UViT& gr, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr) const {
    const UViTConfig& c = config;
    const std::int64_t g = c.grid(), p = c.patch_size, D = c.embed_dim, B = a.B, N = g * g, E = c.extras(), L = E + N, rows = B * L;
    const std::size_t nb = in_blocks.size() + 1 + out_blocks.size();
    if (B < 1 || a.blocks.size() != nb) throw ArgumentError("UViT.backward: the activations were not made by this model's forward_train");
    if (a.checkpoint && a.block_in.size() != nb)
      throw ArgumentError("UViT.backward: checkpoint was set after forward_train (set it before: the blocks' inputs were not kept)");
    (void)nn::zip_parameters<T>(const_cast<UViT&>(*this), gr, "UViT.backward");
    if (dout.shape() != a.img.shape())
      throw ShapeError(ditto::detail::cat("UViT.backward: expected dout of shape ", shape_str(a.img.shape()), ", got ", shape_str(dout.shape())));
    if (a.check_finite) nn::require_finite<T>("UViT.backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    Tensor<T> dimg = dout;
    if (c.conv) {
      dimg = Tensor<T>(a.img.shape());
      final_layer.backward(gr.final_layer, a.img, dout, &dimg);
    }
    const std::int64_t P = p * p * c.in_chans;
    const Tensor<T> dkept = rearrange(dimg, "b c (h p) (w q) -> b (h w) (p q c)", {{"p", p}, {"q", p}});
    Tensor<T> dpred({rows, P}), dnormed({rows, D}), dtokens({rows, D});
    for (std::int64_t b = 0; b < B; ++b) std::copy(dkept.data() + b * N * P, dkept.data() + (b + 1) * N * P, dpred.data() + (b * L + E) * P);
    decoder_pred.backward_into(dnormed.data(), gr.decoder_pred, dpred.data(), a.normed.data(), rows);
    norm.backward_into(dtokens.data(), gr.norm, dnormed.data(), a.x_norm.data(), a.mean.data(), a.rstd.data(), rows);
    const auto seq = sequences(B, L);
    std::vector<Tensor<T>> dskips;
    for (std::size_t i = 0; i < in_blocks.size(); ++i) dskips.emplace_back(Shape{rows, D});
    for (std::size_t i = nb; i-- > 0;) {
      if (i < in_blocks.size())  // an in_block's output also fed an out_block's skip
        for (std::int64_t k = 0; k < rows * D; ++k) dtokens[k] += dskips[i][k];
      typename UViTBlock<T>::Acts recomputed;
      if (a.checkpoint) {
        Tensor<T> xin = a.block_in[i].clone();
        block(i).forward_train(xin.data(), i > in_blocks.size() ? a.skips[nb - 1 - i].data() : nullptr, rows, seq, recomputed);
      }
      T* dskip = i > in_blocks.size() ? dskips[nb - 1 - i].data() : nullptr;
      block(i).backward(dtokens.data(), dskip, block_of(gr, i), seq, a.checkpoint ? recomputed : a.blocks[i]);
      if (a.check_finite) nn::require_finite<T>("UViT." + block_name(i), "input gradient", dtokens.data(), rows * D, &block_of(gr, i));
    }
    // tokens = [label, time, patches] + pos_embed
    Tensor<T> dtime({B, D}), dlabel({B, D}), dpatch_rows = Tensor<T>::empty({B * N, D});
    for (std::int64_t b = 0; b < B; ++b) {
      const T* dt = dtokens.data() + b * L * D;
      for (std::int64_t i = 0; i < L * D; ++i) gr.pos_embed[i] += dt[i];
      if (E == 2) std::copy(dt, dt + D, dlabel.data() + b * D);
      std::copy(dt + (E - 1) * D, dt + E * D, dtime.data() + b * D);
      std::copy(dt + E * D, dt + L * D, dpatch_rows.data() + b * N * D);
    }
    if (E == 2) label_emb.backward(gr.label_emb, a.y, dlabel.data());
    if (c.mlp_time_embed) {
      Tensor<T> dh({B, 4 * D}), dpre({B, 4 * D});
      time_embed2.backward_into(dh.data(), gr.time_embed2, dtime.data(), nn::silu(a.time_pre).data(), B);
      nn::activate_backward(dpre.data(), dh.data(), a.time_pre.data(), B * 4 * D, nn::Activation::silu);
      time_embed0.backward_into(nullptr, gr.time_embed0, dpre.data(), a.time_freq.data(), B);
    }
    Tensor<T> dpatches;
    if (dx) dpatches = Tensor<T>(a.patches.shape());
    patch_embed.proj_rows_backward(dx ? dpatches.data() : nullptr, gr.patch_embed, dpatch_rows.data(), a.patches.data(), B * N);
    if (dx) *dx = rearrange(dpatches, "(b h w) (c p1 p2) -> b c (h p1) (w p2)", {{"b", B}, {"h", g}, {"p1", p}, {"p2", p}});
  }

 private:
  void check_inputs(const Tensor<T>& x, const Tensor<T>& timesteps, const Tensor<std::int64_t>* y, const char* who) const {
    using ditto::detail::cat;
    const UViTConfig& c = config;
    const std::int64_t g = c.grid(), p = c.patch_size;
    if (x.dim() != 4 || x.size(1) != c.in_chans || x.size(2) != g * p || x.size(3) != g * p)
      throw ShapeError(cat(who, ": expected x (B, ", c.in_chans, ", ", g * p, ", ", g * p, "), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0);
    detail::require_samples("UViT", B, x.shape());
    if (timesteps.dim() != 1 || timesteps.size(0) != B)
      throw ShapeError(cat(who, ": expected timesteps of shape (", B, "), got ", shape_str(timesteps.shape())));
    if (c.num_classes > 0 && !y)
      throw ArgumentError(cat(who, ": this model has a label token (num_classes ", c.num_classes, "), so y is required"));
    if (c.num_classes <= 0 && y) throw ArgumentError(std::string(who) + ": this model is unconditional (num_classes <= 0) and takes no y");
    if (y && (y->dim() != 1 || y->size(0) != B))
      throw ShapeError(cat(who, ": expected y of shape (", B, "), got ", shape_str(y->shape())));
  }
  // [label (if any), time, patches...] + pos_embed: (B L, D) token rows.
  Tensor<T> assemble(const Tensor<T>& patch_rows, const Tensor<T>& time, const Tensor<T>* label, std::int64_t B) const {
    const std::int64_t D = config.embed_dim, N = config.grid() * config.grid(), E = config.extras(), L = E + N;
    Tensor<T> tokens = Tensor<T>::empty({B, L, D});
    for (std::int64_t b = 0; b < B; ++b) {
      T* out = tokens.data() + b * L * D;
      if (label) std::copy(label->data() + b * D, label->data() + (b + 1) * D, out);
      std::copy(time.data() + b * D, time.data() + (b + 1) * D, out + (E - 1) * D);
      std::copy(patch_rows.data() + b * N * D, patch_rows.data() + (b + 1) * N * D, out + E * D);
      for (std::int64_t i = 0; i < L * D; ++i) out[i] += pos_embed[i];
    }
    return tokens;
  }
  static typename nn::Attention<T>::Sequences sequences(std::int64_t B, std::int64_t L) {
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * L);
    return nn::Attention<T>::Sequences::packed(cu);
  }
  // Blocks in execution order: in_blocks, mid_block, out_blocks.
  const UViTBlock<T>& block(std::size_t i) const {
    return i < in_blocks.size() ? in_blocks[i] : i == in_blocks.size() ? mid_block : out_blocks[i - in_blocks.size() - 1];
  }
  UViTBlock<T>& block_of(UViT& m, std::size_t i) const {
    return i < in_blocks.size() ? m.in_blocks[i] : i == in_blocks.size() ? m.mid_block : m.out_blocks[i - in_blocks.size() - 1];
  }
  std::string block_name(std::size_t i) const {
    return i < in_blocks.size() ? "in_blocks." + std::to_string(i)
           : i == in_blocks.size() ? std::string("mid_block")
                                   : "out_blocks." + std::to_string(i - in_blocks.size() - 1);
  }
};

// U-ViT's _init_weights: every Linear trunc_normal(.02) with zero bias, LayerNorms 1 and 0,
// pos_embed trunc_normal(.02); the rest keep torch's defaults (the convolutions U(+-1/sqrt(fan_in)),
// the label table N(0, 1)).
template <class T>
inline void initialize_weights(UViT<T>& m, Generator& gen) {
  auto ends = [](const std::string& s, const std::string& e) { return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0; };
  const auto params = nn::trainable_parameters<T>(m);
  for (auto& [name, t] : params) {
    const bool conv = name.rfind("patch_embed.proj.", 0) == 0 || name.rfind("final_layer.", 0) == 0;
    if (conv) {  // torch's default: bounds from the fan-in of the layer's weight
      const std::string weight = name.substr(0, name.rfind('.')) + ".weight";
      const auto w = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.first == weight; });
      nn::default_uniform(*t, gen, w->second->numel() / w->second->size(0));
    } else if (name == "label_emb.weight") gen.fill_normal(*t, 0.0, 1.0);
    else if (name.find("norm") != std::string::npos && t->dim() == 1) nn::fill_constant(*t, ends(name, ".weight") ? 1.0 : 0.0);
    else if (ends(name, ".bias")) nn::fill_constant(*t, 0.0);
    else nn::trunc_normal(*t, gen, 0.02);
  }
}

}  // namespace ditto::models
