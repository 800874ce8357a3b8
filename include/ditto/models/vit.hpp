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
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/linear.hpp"
#include "../nn/mlp.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "../nn/resize.hpp"
#include "config.hpp"
#include "dit.hpp"  // Trace

namespace ditto::models {

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

template <class T = float>
struct LayerScale {
  Tensor<T> gamma;
  template <class V>
  void visit(V& v) {
    v("gamma", gamma);
  }
};

template <class T = float>
struct ViTBlock {
  std::int64_t dim = 0;
  bool layer_scale = false;
  nn::LayerNorm<T> norm1, norm2;
  nn::Attention<T> attn;
  LayerScale<T> ls1, ls2;
  nn::Mlp<T> mlp;

  ViTBlock() = default;
  ViTBlock(const ViTConfig& c)
      : dim(c.embed_dim), layer_scale(c.init_values.has_value()), norm1(c.embed_dim, 1e-6), norm2(c.embed_dim, 1e-6),
        attn(c.embed_dim, c.num_heads, c.qkv_bias, c.qk_norm, 1e-6), mlp(c.embed_dim, c.mlp_hidden(), c.embed_dim, c.act) {
    if (layer_scale) {
      ls1.gamma = Tensor<T>::full({c.embed_dim}, static_cast<T>(*c.init_values));
      ls2.gamma = Tensor<T>::full({c.embed_dim}, static_cast<T>(*c.init_values));
    }
  }

  template <class V>
  void visit(V& v) {
    v("norm1", norm1);
    v("attn", attn);
    if (layer_scale) v("ls1", ls1);
    v("norm2", norm2);
    v("mlp", mlp);
    if (layer_scale) v("ls2", ls2);
  }

  // x: rows of dim for sequences cu, in place. buf: h, qkv, o, y, hidden as DiT's.
  void forward_inplace(T* x, const std::vector<std::int64_t>& cu, DiTBuffers<T>& buf) const {
    forward_with(x, cu.back(), buf, [&](const T* h, T* out) { attn.forward_packed_into(h, cu, out, buf.qkv.data(), buf.o.data()); });
  }

  // The block with its attention given: attend(h, out) maps the normed rows h to out (rows x
  // dim), using buf.qkv and buf.o if it likes. ViViT's factorized models attend differently.
  template <class Attend>
  void forward_with(T* x, std::int64_t rows, DiTBuffers<T>& buf, Attend&& attend) const {
    norm1.forward_into(x, buf.h.data(), rows);
    attend(buf.h.data(), buf.y.data());
    residual(x, buf.y.data(), rows, layer_scale ? ls1.gamma.data() : nullptr);
    norm2.forward_into(x, buf.h.data(), rows);
    mlp.forward_into(buf.h.data(), buf.y.data(), rows, buf.hidden.data());
    residual(x, buf.y.data(), rows, layer_scale ? ls2.gamma.data() : nullptr);
  }

  // x[r] += gamma * y[r] (gamma: LayerScale, or null for 1)
  void residual(T* x, const T* y, std::int64_t rows, const T* gamma) const {
    parallel_for(rows, rows * dim, [&](std::int64_t lo, std::int64_t hi) {
      for (auto r = lo; r < hi; ++r) {
        T* xr = x + r * dim;
        const T* yr = y + r * dim;
        if (gamma) for (std::int64_t i = 0; i < dim; ++i) xr[i] += gamma[i] * yr[i];
        else for (std::int64_t i = 0; i < dim; ++i) xr[i] += yr[i];
      }
    });
  }
};

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
    const std::int64_t B = x.size(0), L = x.size(1), D = dim, hd = D / num_heads;
    const Tensor<T> query = q.forward(latent.reshape({1, D}));  // the same query for every image
    const Tensor<T> keys_values = kv.forward(x);                 // (B, L, 2D): k then v
    Tensor<T> o = Tensor<T>::empty({B, D});
    std::vector<nn::AttentionProblem<T>> problems;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < num_heads; ++h) {
        const T* kb = keys_values.data() + b * L * 2 * D + h * hd;
        problems.push_back({query.data() + h * hd, kb, kb + D, o.data() + b * D + h * hd, 1, L, nullptr});
      }
    nn::attention_kernel(problems, nn::AttentionLayout{hd, hd, D, 2 * D, 2 * D, D, 0},
                         static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd))));
    Tensor<T> out = proj.forward(o);
    const Tensor<T> m = mlp.forward(norm.forward(out));
    for (std::int64_t i = 0; i < out.numel(); ++i) out[i] += m[i];
    return out;
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
  mutable DiTBuffers<T> buffers;

  ViT() = default;
  explicit ViT(const ViTConfig& c) : config(c) {
    c.validate();
    patch_embed = nn::PatchEmbed<T>(c.patch_size, c.in_chans, c.embed_dim, /*bias=*/!c.pre_norm);
    if (c.class_token) cls_token = Tensor<T>({1, 1, c.embed_dim});
    if (c.reg_tokens) reg_token = Tensor<T>({1, c.reg_tokens, c.embed_dim});
    pos_embed = Tensor<T>({1, c.embed_len(), c.embed_dim});
    if (c.pre_norm) norm_pre = nn::LayerNorm<T>(c.embed_dim, 1e-6);
    for (std::int64_t i = 0; i < c.depth; ++i) blocks.emplace_back(c);
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
  Tensor<T> forward(const Tensor<T>& x, const Trace<T>& trace = {}) const {
    using ditto::detail::cat;
    const ViTConfig& c = config;
    const auto [ph, pw] = c.patch_size;
    if (x.dim() != 4 || x.size(1) != c.in_chans || (!c.dynamic_img_size && (x.size(2) != c.img_size[0] || x.size(3) != c.img_size[1])))
      throw ShapeError(cat("ViT: expected x (B, ", c.in_chans, ", ", c.img_size[0], ", ", c.img_size[1], "), got ", shape_str(x.shape()),
                           " (dynamic_img_size = true takes other sizes)"));
    if (c.dynamic_img_size && !c.dynamic_img_pad && (x.size(2) % ph || x.size(3) % pw))
      throw ShapeError(cat("ViT: with dynamic_img_size, the image's height and width must be divisible by the patch size ", ph, "x", pw,
                           " (or set dynamic_img_pad), got ", shape_str(x.shape())));
    detail::require_samples("ViT", x.size(0), x.shape());
    // timm's PatchEmbed: a stride-p convolution drops a remainder; dynamic_img_pad pads it instead
    const std::int64_t H = c.dynamic_img_pad ? (x.size(2) + ph - 1) / ph * ph : x.size(2) / ph * ph;
    const std::int64_t W = c.dynamic_img_pad ? (x.size(3) + pw - 1) / pw * pw : x.size(3) / pw * pw;
    Tensor<T> xin = x;
    if (H != x.size(2) || W != x.size(3)) {
      xin = Tensor<T>({x.size(0), c.in_chans, H, W});  // zeros: the padding
      for (std::int64_t bc = 0; bc < x.size(0) * c.in_chans; ++bc)
        for (std::int64_t r = 0; r < std::min(H, x.size(2)); ++r)
          std::copy(x.data() + (bc * x.size(2) + r) * x.size(3), x.data() + (bc * x.size(2) + r) * x.size(3) + std::min(W, x.size(3)),
                    xin.data() + (bc * H + r) * W);
    }
    const Tensor<T> patches = patch_embed.forward(xin);  // (B, N, D)
    if (trace)  // with dynamic_img_size timm's PatchEmbed returns the grid, NHWC
      trace("patch_embed", c.dynamic_img_size ? patches.reshape({x.size(0), H / ph, W / pw, c.embed_dim}) : patches);
    const std::int64_t B = x.size(0), N = patches.size(1), D = c.embed_dim, P = c.prefix_tokens(), L = P + N;
    const Tensor<T> pos = c.dynamic_img_size ? resampled_pos_embed(H / ph, W / pw) : pos_embed;
    if (pos.size(1) != (c.no_embed_class ? N : L))
      throw ShapeError(cat("ViT: ", N, " patches do not fit pos_embed of shape ", shape_str(pos.shape())));
    // [cls, reg..., patches] + pos_embed (over all of them, or the patches only with no_embed_class)
    Tensor<T> tokens = Tensor<T>::empty({B, L, D});
    for (std::int64_t b = 0; b < B; ++b) {
      T* out = tokens.data() + b * L * D;
      if (c.class_token) std::copy(cls_token.data(), cls_token.data() + D, out);
      if (c.reg_tokens) std::copy(reg_token.data(), reg_token.data() + c.reg_tokens * D, out + (c.class_token ? D : 0));
      std::copy(patches.data() + b * N * D, patches.data() + (b + 1) * N * D, out + P * D);
      T* pos_target = c.no_embed_class ? out + P * D : out;
      for (std::int64_t i = 0; i < pos.numel(); ++i) pos_target[i] += pos[i];
    }
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
    Tensor<T> pooled;
    if (c.global_pool == "map") {
      pooled = attn_pool.forward(tokens);
      if (trace) trace("attn_pool", pooled);
    } else if (c.global_pool == "avg") {
      pooled = Tensor<T>({B, D});
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = P; n < L; ++n)
          for (std::int64_t d = 0; d < D; ++d) pooled[b * D + d] += tokens[(b * L + n) * D + d];
      for (auto& v : pooled) v /= static_cast<T>(N);
    } else if (c.global_pool == "token") {
      pooled = Tensor<T>::empty({B, D});
      for (std::int64_t b = 0; b < B; ++b) std::copy(tokens.data() + b * L * D, tokens.data() + b * L * D + D, pooled.data() + b * D);
    } else {
      pooled = tokens;
    }
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
};

}  // namespace ditto::models
