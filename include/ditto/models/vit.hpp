// The Vision Transformer classifier (Dosovitskiy et al. 2021) as timm's VisionTransformer builds
// it (timm 0.9), with its state-dict names: the layout of google-research's ViT-B/16 ports
// (cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
// mlp.fc2}, norm, head) and timm's options: register tokens, LayerScale (init_values), q/k norm,
// no_embed_class, pre_norm, average pooling with fc_norm, attention pooling ("map"),
// rectangular images and patches, other image sizes (dynamic_img_size: the position table
// resampled as timm does).
//
//   models::ViT<float> vit(models::ViTConfig::from_json(kwargs));   // timm's keyword arguments
//   nn::load<float>(vit, "vit_base_patch16_224.safetensors");
//   auto logits = vit.forward(images);                              // (B, 3, 224, 224) -> (B, 1000)
//
// One block: x = x + ls1 * attn(norm1(x)); x = x + ls2 * mlp(norm2(x)) (pre-norm, LayerNorm eps
// 1e-6, GELU).
#pragma once

#include <array>
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
#include "../nn/linear.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/init.hpp"
#include "../nn/mlp.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "../nn/resize.hpp"
#include "../nn/adaln.hpp"  // Trace
#include "../nn/buffers.hpp"
#include "../nn/vit_block.hpp"
#include "config.hpp"

namespace ditto::models {

using nn::Trace;

// VisionTransformer.__init__'s arguments that change inference, with timm's defaults (ViT-B/16).
struct ViTConfig {
  std::array<std::int64_t, 2> img_size{224, 224}, patch_size{16, 16};
  std::int64_t in_chans = 3, num_classes = 1000;
  std::string global_pool = "token";  // "token", "avg", "map" (attention pooling) or "" (none)
  std::int64_t embed_dim = 768, depth = 12, num_heads = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = true, qk_norm = false;
  std::optional<double> init_values;  // LayerScale when set
  bool class_token = true, no_embed_class = false;
  std::int64_t reg_tokens = 0;
  bool pre_norm = false;
  std::optional<bool> fc_norm;  // None: on when global_pool == "avg"
  bool dynamic_img_size = false, dynamic_img_pad = false;
  nn::Activation act = nn::Activation::gelu;

  std::int64_t grid_h() const { return img_size[0] / patch_size[0]; }
  std::int64_t grid_w() const { return img_size[1] / patch_size[1]; }
  std::int64_t prefix_tokens() const { return (class_token ? 1 : 0) + reg_tokens; }
  std::int64_t embed_len() const { return grid_h() * grid_w() + (no_embed_class ? 0 : prefix_tokens()); }
  bool use_fc_norm() const { return fc_norm ? *fc_norm : global_pool == "avg"; }
  std::int64_t mlp_hidden() const { return detail::scaled_width(embed_dim, mlp_ratio); }

  static ViTConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "VisionTransformer");
    ViTConfig c;
    auto pair = [&](const char* key, std::array<std::int64_t, 2> fallback) {
      if (!kw.has(key)) return fallback;
      const auto& v = j.at(key);
      if (v.is_array()) {
        const auto l = kw.get<std::vector<std::int64_t>>(key, {});
        if (l.size() != 2) throw ArgumentError(ditto::detail::cat("VisionTransformer config: \"", key, "\" must be an integer or a pair, got ", brief_json(v)));
        return std::array<std::int64_t, 2>{l[0], l[1]};
      }
      const auto n = kw.get<std::int64_t>(key, 0);
      return std::array<std::int64_t, 2>{n, n};
    };
    c.img_size = pair("img_size", c.img_size);
    c.patch_size = pair("patch_size", c.patch_size);
    c.in_chans = kw.get("in_chans", c.in_chans);
    c.num_classes = kw.get("num_classes", c.num_classes);
    c.global_pool = kw.get("global_pool", c.global_pool);
    c.embed_dim = kw.get("embed_dim", c.embed_dim);
    c.depth = kw.get("depth", c.depth);
    c.num_heads = kw.get("num_heads", c.num_heads);
    c.mlp_ratio = kw.get("mlp_ratio", c.mlp_ratio);
    c.qkv_bias = kw.get("qkv_bias", c.qkv_bias);
    c.qk_norm = kw.get("qk_norm", c.qk_norm);
    c.init_values = kw.get_optional<double>("init_values");
    c.class_token = kw.get("class_token", c.class_token);
    c.no_embed_class = kw.get("no_embed_class", c.no_embed_class);
    c.reg_tokens = kw.get("reg_tokens", c.reg_tokens);
    c.pre_norm = kw.get("pre_norm", c.pre_norm);
    c.fc_norm = kw.get_optional<bool>("fc_norm");
    c.dynamic_img_size = kw.get("dynamic_img_size", c.dynamic_img_size);
    c.dynamic_img_pad = kw.get("dynamic_img_pad", c.dynamic_img_pad);
    // training-only arguments: inert at inference
    for (const char* k : {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
                          "weight_init", "fix_init"})
      kw.ignore(k);
    if (auto a = kw.get_optional<std::string>("act_layer")) {
      if (*a == "gelu") c.act = nn::Activation::gelu;
      else if (*a == "gelu_tanh") c.act = nn::Activation::gelu_tanh;
      else if (*a == "silu" || *a == "swish") c.act = nn::Activation::silu;
      else throw ArgumentError("VisionTransformer config: act_layer \"" + *a + "\" is not supported; ditto has gelu, gelu_tanh and silu");
    }
    for (const char* k : {"norm_layer", "embed_layer", "block_fn", "mlp_layer"})
      if (kw.has(k) && !kw.is_null(k))
        throw ArgumentError(ditto::detail::cat("VisionTransformer config: \"", k, "\" other than its default (null) is not supported, got ",
                                               brief_json(j.at(k))));
    kw.finish();
    c.validate();
    return c;
  }

  void validate() const {
    using ditto::detail::cat;
    if (global_pool != "token" && global_pool != "avg" && global_pool != "map" && !global_pool.empty())
      throw ArgumentError(cat("VisionTransformer config: global_pool must be \"token\", \"avg\", \"map\" or \"\", got \"", global_pool, "\""));
    if (!class_token && global_pool == "token")
      throw ArgumentError("VisionTransformer config: global_pool \"token\" needs class_token (timm asserts the same)");
    for (auto [name, v] : {std::pair{"img_size", std::min(img_size[0], img_size[1])}, std::pair{"patch_size", std::min(patch_size[0], patch_size[1])},
                           std::pair{"in_chans", in_chans}, std::pair{"embed_dim", embed_dim}, std::pair{"num_heads", num_heads}})
      if (v < 1) throw ArgumentError(cat("VisionTransformer config: ", name, " must be >= 1, got ", v));
    if (depth < 0 || num_classes < 0 || reg_tokens < 0)
      throw ArgumentError(cat("VisionTransformer config: depth, num_classes and reg_tokens must be >= 0"));
    if (embed_dim % num_heads)
      throw ArgumentError(cat("VisionTransformer config: embed_dim ", embed_dim, " must be divisible by num_heads ", num_heads));
    if (grid_h() < 1 || grid_w() < 1) throw ArgumentError("VisionTransformer config: img_size is smaller than patch_size");
    if (mlp_hidden() < 1) throw ArgumentError(cat("VisionTransformer config: embed_dim * mlp_ratio must be a width from 1 to 2^31, got mlp_ratio ", mlp_ratio));
    detail::check_weights_fit("VisionTransformer", min_weights());
  }
  // A lower bound on the parameter count: the blocks' matrices, the patch embedding and the head.
  double min_weights() const {
    return detail::transformer_weights(depth, embed_dim, mlp_hidden(), 4) +
           (static_cast<double>(num_classes) + static_cast<double>(patch_size[0]) * static_cast<double>(patch_size[1]) * static_cast<double>(in_chans)) *
               static_cast<double>(embed_dim);
  }
};

// timm's Block (and LayerScale) live in nn/vit_block.hpp: ViViT's models are made of them too.
using nn::LayerScale;
using nn::ViTBlock;

// ViT's blocks: timm's Block with this config's width, heads, MLP, biases, q/k norm, LayerScale.
template <class T>
inline ViTBlock<T> vit_block(const ViTConfig& c) {
  return ViTBlock<T>(c.embed_dim, c.num_heads, c.mlp_hidden(), c.qkv_bias, c.qk_norm, c.act, c.init_values);
}

// timm's AttentionPoolLatent (global_pool "map"): one learned latent query attends over all
// tokens, then proj, and a residual MLP on its LayerNorm: x + mlp(norm(x)). -> (B, D).
template <class T = float>
struct AttentionPoolLatent {
  std::int64_t dim = 0, num_heads = 1;
  Tensor<T> latent;  // (1, 1, D)
  nn::Linear<T> q, kv, proj;
  nn::LayerNorm<T> norm;
  nn::Mlp<T> mlp;

  AttentionPoolLatent() = default;
  AttentionPoolLatent(std::int64_t d, std::int64_t heads, std::int64_t mlp_hidden)
      : dim(d), num_heads(heads), latent({1, 1, d}), q(d, d), kv(d, 2 * d), proj(d, d), norm(d, 1e-6),
        mlp(d, mlp_hidden, d, nn::Activation::gelu) {}

  template <class V>
  void visit(V& v) {
    v("latent", latent);
    v("q", q);
    v("kv", kv);
    v("proj", proj);
    v("norm", norm);
    v("mlp", mlp);
  }

  // x: (B, L, D) -> (B, D)
  Tensor<T> forward(const Tensor<T>& x) const {
    const std::int64_t B = x.size(0), L = x.size(1), D = dim;
    const Tensor<T> query = q.forward(latent.reshape({1, D}));  // the same query for every image (batch stride 0)
    const Tensor<T> keys_values = kv.forward(x);                 // (B, L, 2D): k then v
    Tensor<T> o = Tensor<T>::empty({B, D});
    nn::heads_attention(query.data(), D, 0, keys_values.data(), o.data(), B, 1, L, num_heads, D / num_heads);
    Tensor<T> out = proj.forward(o);
    const Tensor<T> m = mlp.forward(norm.forward(out));
    for (std::int64_t i = 0; i < out.numel(); ++i) out[i] += m[i];
    return out;
  }

  // Training: the query (one copy per image, so each has its own gradient rows), k and v, the
  // attention output and lse, proj's output and the norm's and MLP's activations.
  struct Acts {
    Tensor<T> x, query, keys_values, o, lse, out, mean, rstd, h, pre;
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a) const {
    const std::int64_t B = x.size(0), L = x.size(1), D = dim;
    a.x = x;
    const Tensor<T> q1 = q.forward(latent.reshape({1, D}));
    a.query = Tensor<T>::empty({B, D});
    for (std::int64_t b = 0; b < B; ++b) std::copy(q1.data(), q1.data() + D, a.query.data() + b * D);
    a.keys_values = kv.forward(x);
    a.o = Tensor<T>::empty({B, D}), a.lse = Tensor<T>::empty({B * num_heads});
    nn::heads_attention(a.query.data(), D, D, a.keys_values.data(), a.o.data(), B, 1, L, num_heads, D / num_heads, a.lse.data());
    a.out = proj.forward(a.o);
    a.h = Tensor<T>::empty({B, D}), a.mean = Tensor<T>::empty({B}), a.rstd = Tensor<T>::empty({B});
    norm.forward_train(a.out.data(), a.h.data(), B, a.mean.data(), a.rstd.data());
    a.pre = Tensor<T>::empty({B, mlp.fc1.out_features});
    Tensor<T> y = Tensor<T>::empty({B, D}), hidden = Tensor<T>::empty({B, mlp.fc1.out_features});
    mlp.forward_train(a.h.data(), y.data(), B, a.pre.data(), hidden.data());
    for (std::int64_t i = 0; i < y.numel(); ++i) y[i] += a.out[i];
    return y;
  }
  // dy (B, D) -> the gradient of x (B, L, D); accumulates g.
  Tensor<T> backward(AttentionPoolLatent& g, const Acts& a, const Tensor<T>& dy) const {
    const std::int64_t B = a.x.size(0), L = a.x.size(1), D = dim;
    Tensor<T> dout = dy.clone(), dh({B, D}), d_o({B, D}), dq({B, D}), dkv({B, L, 2 * D}), dx({B, L, D}), dq1({1, D});
    mlp.backward_into(dh.data(), g.mlp, dy.data(), a.h.data(), a.pre.data(), B);
    norm.backward_into(dout.data(), g.norm, dh.data(), a.out.data(), a.mean.data(), a.rstd.data(), B);
    proj.backward_into(d_o.data(), g.proj, dout.data(), a.o.data(), B);
    nn::heads_attention_backward(dq.data(), dkv.data(), a.query.data(), D, D, a.keys_values.data(), a.o.data(), d_o.data(), a.lse.data(), B, 1,
                                 L, num_heads, D / num_heads);
    kv.backward_into(dx.data(), g.kv, dkv.data(), a.x.data(), B * L);
    for (std::int64_t b = 0; b < B; ++b)  // the shared query: its copies' gradients summed
      for (std::int64_t i = 0; i < D; ++i) dq1[i] += dq[b * D + i];
    q.backward_into(g.latent.data(), g.q, dq1.data(), latent.data(), 1);
    return dx;
  }
};

template <class T = float>
struct ViT {
  ViTConfig config;
  nn::PatchEmbed<T> patch_embed;
  Tensor<T> cls_token, reg_token, pos_embed;
  nn::LayerNorm<T> norm_pre, norm, fc_norm;
  std::vector<ViTBlock<T>> blocks;
  AttentionPoolLatent<T> attn_pool;  // global_pool "map"
  nn::Linear<T> head;
  mutable nn::BlockBuffers<T> buffers;

  ViT() = default;
  explicit ViT(const ViTConfig& c) : config(c) {
    c.validate();
    patch_embed = nn::PatchEmbed<T>(c.patch_size, c.in_chans, c.embed_dim, /*bias=*/!c.pre_norm);
    if (c.class_token) cls_token = Tensor<T>({1, 1, c.embed_dim});
    if (c.reg_tokens) reg_token = Tensor<T>({1, c.reg_tokens, c.embed_dim});
    pos_embed = Tensor<T>({1, c.embed_len(), c.embed_dim});
    if (c.pre_norm) norm_pre = nn::LayerNorm<T>(c.embed_dim, 1e-6);
    for (std::int64_t i = 0; i < c.depth; ++i) blocks.push_back(vit_block<T>(c));
    if (c.use_fc_norm()) fc_norm = nn::LayerNorm<T>(c.embed_dim, 1e-6);
    else norm = nn::LayerNorm<T>(c.embed_dim, 1e-6);
    if (c.global_pool == "map") attn_pool = AttentionPoolLatent<T>(c.embed_dim, c.num_heads, c.mlp_hidden());
    if (c.num_classes > 0) head = nn::Linear<T>(c.embed_dim, c.num_classes);
  }

  template <class V>
  void visit(V& v) {
    if (config.class_token) v("cls_token", cls_token);
    if (config.reg_tokens) v("reg_token", reg_token);
    v("pos_embed", pos_embed);
    v("patch_embed", patch_embed);
    if (config.pre_norm) v("norm_pre", norm_pre);
    v("blocks", blocks);
    if (config.use_fc_norm()) v("fc_norm", fc_norm);
    else v("norm", norm);
    if (config.global_pool == "map") v("attn_pool", attn_pool);
    if (config.num_classes > 0) v("head", head);
  }

  // timm's resample_abs_pos_embed for a grid of gh x gw patches (dynamic_img_size): the patch
  // rows of pos_embed, taken as a square grid, resized by antialiased bicubic interpolation in
  // float32; the prefix rows (cls, registers; none with no_embed_class) kept. As timm, a table
  // whose row count already fits a square grid is used as it is.
  Tensor<T> resampled_pos_embed(std::int64_t gh, std::int64_t gw) const {
    const std::int64_t prefix = config.no_embed_class ? 0 : config.prefix_tokens(), D = config.embed_dim;
    const std::int64_t rows = pos_embed.size(1);
    if (gh * gw + prefix == rows && gh == gw) return pos_embed;
    const auto hw = static_cast<std::int64_t>(std::sqrt(static_cast<double>(rows - prefix)));
    if (hw * hw != rows - prefix)
      throw ShapeError(ditto::detail::cat("ViT: dynamic_img_size resamples a square grid of positions (as timm does), but pos_embed has ",
                                          rows - prefix, " patch positions (img_size ", config.img_size[0], "x", config.img_size[1], ")"));
    Tensor<T> grid = Tensor<T>::empty({1, D, hw, hw});  // (1, hw*hw, D) -> (1, D, hw, hw)
    for (std::int64_t p = 0; p < hw * hw; ++p)
      for (std::int64_t d = 0; d < D; ++d) grid[d * hw * hw + p] = pos_embed[(prefix + p) * D + d];
    const Tensor<T> resized = nn::interpolate_bicubic_antialias(grid, gh, gw);
    Tensor<T> out = Tensor<T>::empty({1, prefix + gh * gw, D});
    std::copy(pos_embed.data(), pos_embed.data() + prefix * D, out.data());
    for (std::int64_t p = 0; p < gh * gw; ++p)
      for (std::int64_t d = 0; d < D; ++d) out[(prefix + p) * D + d] = resized[d * gh * gw + p];
    return out;
  }

  // x: (B, in_chans, H, W) with (H, W) = img_size (any size divisible by the patch with
  // dynamic_img_size, any size with dynamic_img_pad too) -> logits (B, num_classes); num_classes 0:
  // the pooled features (B, embed_dim); global_pool "": every token, (B, tokens, classes or dim).
  // The checked input, cut to whole patches as timm's stride-p convolution does, or padded to
  // them with dynamic_img_pad.
  Tensor<T> padded_input(const Tensor<T>& x, const char* who) const {
    using ditto::detail::cat;
    const ViTConfig& c = config;
    const auto [ph, pw] = c.patch_size;
    if (x.dim() != 4 || x.size(1) != c.in_chans || (!c.dynamic_img_size && (x.size(2) != c.img_size[0] || x.size(3) != c.img_size[1])))
      throw ShapeError(cat(who, ": expected x (B, ", c.in_chans, ", ", c.img_size[0], ", ", c.img_size[1], "), got ", shape_str(x.shape()),
                           " (dynamic_img_size = true takes other sizes)"));
    if (c.dynamic_img_size && !c.dynamic_img_pad && (x.size(2) % ph || x.size(3) % pw))
      throw ShapeError(cat(who, ": with dynamic_img_size, the image's height and width must be divisible by the patch size ", ph, "x", pw,
                           " (or set dynamic_img_pad), got ", shape_str(x.shape())));
    detail::require_samples("ViT", x.size(0), x.shape());
    const std::int64_t H = c.dynamic_img_pad ? (x.size(2) + ph - 1) / ph * ph : x.size(2) / ph * ph;
    const std::int64_t W = c.dynamic_img_pad ? (x.size(3) + pw - 1) / pw * pw : x.size(3) / pw * pw;
    if (H == x.size(2) && W == x.size(3)) return x;
    Tensor<T> xin({x.size(0), c.in_chans, H, W});  // zeros: the padding
    copy_window(x, xin);
    return xin;
  }
  // Copies the overlap of two (B, C, h, w) images (top-left aligned) from src into dst.
  static void copy_window(const Tensor<T>& src, Tensor<T>& dst) {
    const std::int64_t BC = src.size(0) * src.size(1), rows = std::min(src.size(2), dst.size(2)), cols = std::min(src.size(3), dst.size(3));
    for (std::int64_t bc = 0; bc < BC; ++bc)
      for (std::int64_t r = 0; r < rows; ++r)
        std::copy(src.data() + (bc * src.size(2) + r) * src.size(3), src.data() + (bc * src.size(2) + r) * src.size(3) + cols,
                  dst.data() + (bc * dst.size(2) + r) * dst.size(3));
  }

  Tensor<T> forward(const Tensor<T>& x, const Trace<T>& trace = {}) const {
    using ditto::detail::cat;
    const ViTConfig& c = config;
    const auto [ph, pw] = c.patch_size;
    const Tensor<T> xin = padded_input(x, "ViT");
    const std::int64_t H = xin.size(2), W = xin.size(3);
    const Tensor<T> patches = patch_embed.forward(xin);  // (B, N, D)
    if (trace)  // with dynamic_img_size timm's PatchEmbed returns the grid, NHWC
      trace("patch_embed", c.dynamic_img_size ? patches.reshape({x.size(0), H / ph, W / pw, c.embed_dim}) : patches);
    const std::int64_t B = x.size(0), N = patches.size(1), D = c.embed_dim, P = c.prefix_tokens(), L = P + N;
    Tensor<T> tokens = assemble(patches.data(), B, H / ph, W / pw).reshape({B, L, D});
    if (trace) trace("pos_drop", tokens), trace("patch_drop", tokens);
    if (c.pre_norm) norm_pre.forward_into(tokens.data(), tokens.data(), B * L);
    if (trace) trace("norm_pre", tokens);
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * L);
    buffers.ensure(B * L, D, c.mlp_hidden());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      blocks[i].forward_inplace(tokens.data(), cu, buffers);
      if (trace) trace("blocks." + std::to_string(i), tokens);
    }
    if (trace) trace("blocks", tokens);
    if (!c.use_fc_norm()) norm.forward_into(tokens.data(), tokens.data(), B * L);
    if (trace) trace("norm", tokens);
    // forward_head: pool, fc_norm, head
    Tensor<T> pooled = pool(tokens);
    if (trace && c.global_pool == "map") trace("attn_pool", pooled);
    if (c.use_fc_norm()) pooled = fc_norm.forward(pooled);
    if (trace) trace("fc_norm", pooled), trace("head_drop", pooled);
    if (c.num_classes == 0) {
      if (trace) trace("head", pooled);
      return pooled;
    }
    Tensor<T> logits = head.forward(pooled);
    if (trace) trace("head", logits);
    return logits;
  }

  // Training (docs/training.md): what backward reads, kept by forward_train (eval semantics: no
  // dropout, no drop path).
  struct Acts {
    bool checkpoint = false, check_finite = false;  // as DiT::Acts: recompute blocks in backward; NaN/Inf checks
    std::vector<Tensor<T>> block_in;                // checkpoint: each block's input rows
    std::int64_t B = 0, H = 0, W = 0, in_h = 0, in_w = 0;  // the padded (H, W) and the given image size
    bool resampled = false;                     // the position table was resampled for this grid
    Tensor<T> patches;                          // (B N, C ph pw): patch_embed's input rows
    Tensor<T> x_pre, mean_pre, rstd_pre;        // norm_pre (pre_norm)
    std::vector<typename ViTBlock<T>::Acts> blocks;
    Tensor<T> x_norm, mean_norm, rstd_norm;     // norm (or, with fc_norm, fc_norm on the pooled rows)
    typename AttentionPoolLatent<T>::Acts pool;
    Tensor<T> head_in;                          // the head's input rows
  };

  Tensor<T> forward_train(const Tensor<T>& x, Acts& a) const {
    using ditto::detail::cat;
    const ViTConfig& c = config;
    const auto [ph, pw] = c.patch_size;
    const Tensor<T> xin = padded_input(x, "ViT.forward_train");
    const std::int64_t B = x.size(0), H = xin.size(2), W = xin.size(3), gh = H / ph, gw = W / pw, N = gh * gw, D = c.embed_dim;
    const std::int64_t P = c.prefix_tokens(), L = P + N, rows = B * L;
    a.B = B, a.H = H, a.W = W, a.in_h = x.size(2), a.in_w = x.size(3);
    a.patches = rearrange(xin, "b c (h p1) (w p2) -> (b h w) (c p1 p2)", {{"p1", ph}, {"p2", pw}});
    Tensor<T> patch_rows = Tensor<T>::empty({B * N, D});
    patch_embed.proj_rows(a.patches.data(), B * N, patch_rows.data());
    Tensor<T> tokens = assemble(patch_rows.data(), B, gh, gw, &a.resampled);
    if (c.pre_norm) {
      a.x_pre = tokens.clone(), a.mean_pre = Tensor<T>::empty({rows}), a.rstd_pre = Tensor<T>::empty({rows});
      norm_pre.forward_train(a.x_pre.data(), tokens.data(), rows, a.mean_pre.data(), a.rstd_pre.data());
    }
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * L);
    const auto seq = nn::Attention<T>::Sequences::packed(cu);
    a.blocks.assign(blocks.size(), typename ViTBlock<T>::Acts{});
    a.block_in.assign(a.checkpoint ? blocks.size() : 0, Tensor<T>());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (a.checkpoint) {
        a.block_in[i] = tokens.clone();
        typename ViTBlock<T>::Acts dropped;
        blocks[i].forward_train(tokens.data(), rows, seq, dropped);
      } else {
        blocks[i].forward_train(tokens.data(), rows, seq, a.blocks[i]);
      }
      if (a.check_finite) nn::require_finite<T>("ViT.blocks." + std::to_string(i), "output", tokens.data(), tokens.numel());
    }
    if (!c.use_fc_norm()) layer_norm_train(norm, tokens, a);
    Tensor<T> pooled = pool(tokens.reshape({B, L, D}), &a.pool);
    if (c.use_fc_norm()) layer_norm_train(fc_norm, pooled, a);
    if (c.num_classes == 0) return pooled;
    a.head_in = pooled;
    return head.forward(pooled);
  }

  // dout: the gradient of forward_train's output. Accumulates g (nn::zeros_like of this model)
  // and sets *dx (x's shape) when given: 0 where padding or a cut remainder never reached a patch.
  void backward(ViT& g, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr) const {
    using ditto::detail::cat;
    const ViTConfig& c = config;
    const auto [ph, pw] = c.patch_size;
    const std::int64_t B = a.B, gh = a.H / ph, gw = a.W / pw, N = gh * gw, D = c.embed_dim, P = c.prefix_tokens(), L = P + N, rows = B * L;
    if (B < 1 || a.blocks.size() != blocks.size()) throw ArgumentError("ViT.backward: the activations were not made by this model's forward_train");
    (void)nn::zip_parameters<T>(const_cast<ViT&>(*this), g, "ViT.backward");
    Shape pooled_shape = c.global_pool.empty() ? Shape{B, L, D} : Shape{B, D};
    Shape out_shape = pooled_shape;
    if (c.num_classes > 0) out_shape.back() = c.num_classes;
    if (dout.shape() != out_shape)
      throw ShapeError(cat("ViT.backward: expected dout of shape ", shape_str(out_shape), ", got ", shape_str(dout.shape())));
    if (a.check_finite) nn::require_finite<T>("ViT.backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    Tensor<T> dpooled(pooled_shape);
    if (c.num_classes > 0) head.backward_into(dpooled.data(), g.head, dout.data(), a.head_in.data(), a.head_in.numel() / D);
    else std::copy(dout.begin(), dout.end(), dpooled.data());
    if (c.use_fc_norm()) dpooled = layer_norm_backward(fc_norm, g.fc_norm, dpooled, a);
    // the pooling's backward: into the token rows
    Tensor<T> dtokens({rows, D});
    if (c.global_pool == "map") {
      dtokens = attn_pool.backward(g.attn_pool, a.pool, dpooled).reshape({rows, D});
    } else if (c.global_pool == "avg") {
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = P; n < L; ++n)
          for (std::int64_t d = 0; d < D; ++d) dtokens[(b * L + n) * D + d] = dpooled[b * D + d] / static_cast<T>(N);
    } else if (c.global_pool == "token") {
      for (std::int64_t b = 0; b < B; ++b) std::copy(dpooled.data() + b * D, dpooled.data() + (b + 1) * D, dtokens.data() + b * L * D);
    } else {
      std::copy(dpooled.begin(), dpooled.end(), dtokens.data());
    }
    if (!c.use_fc_norm()) dtokens = layer_norm_backward(norm, g.norm, dtokens, a);
    std::vector<std::int64_t> cu;
    for (std::int64_t b = 0; b <= B; ++b) cu.push_back(b * L);
    const auto seq = nn::Attention<T>::Sequences::packed(cu);
    if (a.checkpoint && a.block_in.size() != blocks.size())
      throw ArgumentError("ViT.backward: checkpoint was set after forward_train (set it before: the blocks' inputs were not kept)");
    if (a.check_finite) nn::require_finite<T>("ViT's head and pooling", "input gradient", dtokens.data(), dtokens.numel(), &g);
    for (std::size_t i = blocks.size(); i-- > 0;) {
      typename ViTBlock<T>::Acts recomputed;
      if (a.checkpoint) {
        Tensor<T> x = a.block_in[i].clone();
        blocks[i].forward_train(x.data(), rows, seq, recomputed);
      }
      blocks[i].backward(dtokens.data(), g.blocks[i], seq, a.checkpoint ? recomputed : a.blocks[i]);
      if (a.check_finite) nn::require_finite<T>("ViT.blocks." + std::to_string(i), "input gradient", dtokens.data(), dtokens.numel(), &g.blocks[i]);
    }
    if (c.pre_norm) {
      Tensor<T> d({rows, D});
      norm_pre.backward_into(d.data(), g.norm_pre, dtokens.data(), a.x_pre.data(), a.mean_pre.data(), a.rstd_pre.data(), rows);
      dtokens = d;
    }
    // [cls, reg..., patches] + pos: the prefix tokens and the table sum over the batch
    Tensor<T> dpos({1, c.no_embed_class ? N : L, D}), dpatch_rows = Tensor<T>::empty({B * N, D});
    for (std::int64_t b = 0; b < B; ++b) {
      const T* dt = dtokens.data() + b * L * D;
      if (c.class_token) for (std::int64_t d = 0; d < D; ++d) g.cls_token[d] += dt[d];
      if (c.reg_tokens)
        for (std::int64_t i = 0; i < c.reg_tokens * D; ++i) g.reg_token[i] += dt[(c.class_token ? D : 0) + i];
      const T* dpos_src = c.no_embed_class ? dt + P * D : dt;
      for (std::int64_t i = 0; i < dpos.numel(); ++i) dpos[i] += dpos_src[i];
      std::copy(dt + P * D, dt + L * D, dpatch_rows.data() + b * N * D);
    }
    pos_embed_backward(g.pos_embed, dpos, gh, gw, a.resampled);
    Tensor<T> dpatches;
    if (dx) dpatches = Tensor<T>(a.patches.shape());
    patch_embed.proj_rows_backward(dx ? dpatches.data() : nullptr, g.patch_embed, dpatch_rows.data(), a.patches.data(), B * N);
    if (dx) {
      const Tensor<T> dimg = rearrange(dpatches, "(b h w) (c p1 p2) -> b c (h p1) (w p2)", {{"b", B}, {"h", gh}, {"p1", ph}, {"p2", pw}});
      *dx = Tensor<T>({B, c.in_chans, a.in_h, a.in_w});
      copy_window(dimg, *dx);
    }
  }

 private:
  // [cls, reg..., patches] + pos_embed (over all of them, or the patches only with no_embed_class):
  // (B L, D) token rows from B gh gw patch rows. The table is resampled for another grid with
  // dynamic_img_size; *resampled (when given) says whether it was.
  Tensor<T> assemble(const T* patch_rows, std::int64_t B, std::int64_t gh, std::int64_t gw, bool* resampled = nullptr) const {
    const ViTConfig& c = config;
    const std::int64_t N = gh * gw, D = c.embed_dim, P = c.prefix_tokens(), L = P + N;
    const Tensor<T> pos = c.dynamic_img_size ? resampled_pos_embed(gh, gw) : pos_embed;
    if (pos.size(1) != (c.no_embed_class ? N : L))
      throw ShapeError(ditto::detail::cat("ViT: ", N, " patches do not fit pos_embed of shape ", shape_str(pos.shape())));
    if (resampled) *resampled = pos.data() != pos_embed.data();  // resampled_pos_embed hands back the table itself when it fits
    Tensor<T> tokens = Tensor<T>::empty({B * L, D});
    for (std::int64_t b = 0; b < B; ++b) {
      T* out = tokens.data() + b * L * D;
      if (c.class_token) std::copy(cls_token.data(), cls_token.data() + D, out);
      if (c.reg_tokens) std::copy(reg_token.data(), reg_token.data() + c.reg_tokens * D, out + (c.class_token ? D : 0));
      std::copy(patch_rows + b * N * D, patch_rows + (b + 1) * N * D, out + P * D);
      T* pos_target = c.no_embed_class ? out + P * D : out;
      for (std::int64_t i = 0; i < pos.numel(); ++i) pos_target[i] += pos[i];
    }
    return tokens;
  }
  // forward_head's pooling of the token rows (B, L, D): the latent attention pool, the mean of
  // the patch tokens, the class token, or every token.
  Tensor<T> pool(const Tensor<T>& tokens, typename AttentionPoolLatent<T>::Acts* acts = nullptr) const {
    const ViTConfig& c = config;
    const std::int64_t B = tokens.size(0), L = tokens.size(1), D = tokens.size(2), P = c.prefix_tokens(), N = L - P;
    if (c.global_pool == "map") return acts ? attn_pool.forward_train(tokens, *acts) : attn_pool.forward(tokens);
    if (c.global_pool == "avg") {
      Tensor<T> pooled({B, D});
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = P; n < L; ++n)
          for (std::int64_t d = 0; d < D; ++d) pooled[b * D + d] += tokens[(b * L + n) * D + d];
      for (auto& v : pooled) v /= static_cast<T>(N);
      return pooled;
    }
    if (c.global_pool == "token") {
      Tensor<T> pooled = Tensor<T>::empty({B, D});
      for (std::int64_t b = 0; b < B; ++b) std::copy(tokens.data() + b * L * D, tokens.data() + b * L * D + D, pooled.data() + b * D);
      return pooled;
    }
    return tokens;
  }
  // The final norm (or fc_norm) of rows x, in place, keeping its input and statistics in a.
  static void layer_norm_train(const nn::LayerNorm<T>& ln, Tensor<T>& x, Acts& a) {
    const std::int64_t rows = x.numel() / ln.normalized_shape;
    a.x_norm = x.clone(), a.mean_norm = Tensor<T>::empty({rows}), a.rstd_norm = Tensor<T>::empty({rows});
    ln.forward_train(a.x_norm.data(), x.data(), rows, a.mean_norm.data(), a.rstd_norm.data());
  }
  static Tensor<T> layer_norm_backward(const nn::LayerNorm<T>& ln, nn::LayerNorm<T>& g, const Tensor<T>& dy, const Acts& a) {
    Tensor<T> dx(dy.shape());
    ln.backward_into(dx.data(), g, dy.data(), a.x_norm.data(), a.mean_norm.data(), a.rstd_norm.data(), dy.numel() / ln.normalized_shape);
    return dx;
  }
  // dpos: the gradient of the table the forward used; resampled_pos_embed's backward when the
  // grid was resampled (the prefix rows kept, the patch rows through the resize's adjoint).
  void pos_embed_backward(Tensor<T>& g, const Tensor<T>& dpos, std::int64_t gh, std::int64_t gw, bool resampled) const {
    if (!resampled) {
      for (std::int64_t i = 0; i < g.numel(); ++i) g[i] += dpos[i];
      return;
    }
    const std::int64_t prefix = config.no_embed_class ? 0 : config.prefix_tokens(), D = config.embed_dim;
    const auto hw = static_cast<std::int64_t>(std::sqrt(static_cast<double>(pos_embed.size(1) - prefix)));
    for (std::int64_t i = 0; i < prefix * D; ++i) g[i] += dpos[i];
    Tensor<T> dgrid = Tensor<T>::empty({1, D, gh, gw});
    for (std::int64_t p = 0; p < gh * gw; ++p)
      for (std::int64_t d = 0; d < D; ++d) dgrid[d * gh * gw + p] = dpos[(prefix + p) * D + d];
    const Tensor<T> dsrc = nn::interpolate_bicubic_antialias_backward(dgrid, hw, hw);
    for (std::int64_t p = 0; p < hw * hw; ++p)
      for (std::int64_t d = 0; d < D; ++d) g[(prefix + p) * D + d] += dsrc[d * hw * hw + p];
  }
};

// timm's VisionTransformer.init_weights (weight_init "", timm 0.9): pos_embed trunc_normal(.02),
// the class token N(0, 1e-6), register tokens zeros, every Linear trunc_normal(.02) with zero
// bias, norms 1 and 0, and torch's defaults for the patch embedding's convolution (and attention
// pooling's latent query trunc_normal_tf_(std = dim^-0.5): cut at 2 standard deviations).
template <class T>
inline void initialize_weights(ViT<T>& m, Generator& gen) {
  auto ends = [](const std::string& s, const std::string& e) { return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0; };
  const std::int64_t patch_fan_in = m.config.in_chans * m.config.patch_size[0] * m.config.patch_size[1];
  for (auto& [name, t] : nn::trainable_parameters<T>(m)) {
    if (name == "cls_token") gen.fill_normal(*t, 0.0, 1e-6);
    else if (name == "reg_token") nn::fill_constant(*t, 0.0);
    else if (name.rfind("patch_embed.proj.", 0) == 0) nn::default_uniform(*t, gen, patch_fan_in);
    else if (name == "attn_pool.latent") {
      const double sd = std::pow(static_cast<double>(m.config.embed_dim), -0.5);
      nn::trunc_normal(*t, gen, sd, 0.0, -2 * sd, 2 * sd);
    }
    else if (name.find("norm") != std::string::npos && t->dim() == 1) nn::fill_constant(*t, ends(name, ".weight") ? 1.0 : 0.0);
    else if (name.find("gamma") != std::string::npos || name.find(".ls") != std::string::npos) continue;  // LayerScale keeps init_values
    else if (ends(name, ".bias")) nn::fill_constant(*t, 0.0);
    else nn::trunc_normal(*t, gen, 0.02);
  }
}

}  // namespace ditto::models
