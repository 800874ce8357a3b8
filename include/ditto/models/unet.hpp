// The ADM U-Net (Dhariwal & Nichol 2021) as openai/guided-diffusion's unet.py UNetModel builds it,
// with its state-dict names: a time embedding (plus a class embedding), input blocks of
// ResBlocks (GroupNorm, SiLU, 3x3 convolutions, the embedding added or applied as scale-shift)
// with attention at chosen downsampling factors, a middle block, output blocks fed the matching
// input block's output by concatenation, and a GroupNorm-SiLU-conv head.
//
//   models::UNet<float> unet(models::UNetConfig::from_json(kwargs));   // UNetModel's arguments
//   nn::load<float>(unet, "256x256_diffusion.safetensors");
//   auto out = unet.forward(x, timesteps, &y);                         // y: nullptr when unconditional
//
// Names inside the blocks follow the upstream Sequentials: ResBlock in_layers.0 (norm),
// in_layers.2 (conv), emb_layers.1, out_layers.0 (norm), out_layers.3 (conv), skip_connection;
// AttentionBlock norm, qkv and proj_out (1x1 Conv1d); Downsample op; Upsample conv.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/matmul.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/conv.hpp"
#include "../nn/embedding.hpp"
#include "../nn/linear.hpp"
#include "../nn/norm.hpp"
#include "config.hpp"
#include "dit.hpp"  // Trace

namespace ditto::models {

// UNetModel.__init__'s arguments (dims = 2 only; use_fp16 refused: float32 only).
struct UNetConfig {
  std::int64_t image_size = 0, in_channels = 0, model_channels = 0, out_channels = 0, num_res_blocks = 0;
  std::vector<std::int64_t> attention_resolutions;  // downsampling factors with attention (1, 2, 4, ...)
  std::vector<double> channel_mult{1, 2, 4, 8};
  bool conv_resample = true;
  std::optional<std::int64_t> num_classes;
  std::int64_t num_heads = 1, num_head_channels = -1, num_heads_upsample = -1;
  bool use_scale_shift_norm = false, resblock_updown = false, use_new_attention_order = false;

  std::int64_t time_embed_dim() const { return 4 * model_channels; }
  std::int64_t mult_channels(double m) const { return detail::scaled_width(model_channels, m); }
  bool attention_at(std::int64_t ds) const {
    for (auto r : attention_resolutions)
      if (r == ds) return true;
    return false;
  }

  static UNetConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "UNetModel");
    UNetConfig c;
    c.image_size = kw.require<std::int64_t>("image_size");
    c.in_channels = kw.require<std::int64_t>("in_channels");
    c.model_channels = kw.require<std::int64_t>("model_channels");
    c.out_channels = kw.require<std::int64_t>("out_channels");
    c.num_res_blocks = kw.require<std::int64_t>("num_res_blocks");
    c.attention_resolutions = kw.require<std::vector<std::int64_t>>("attention_resolutions");
    if (kw.has("channel_mult")) {
      const auto& v = j.at("channel_mult");
      if (!v.is_array() || v.empty())
        throw ArgumentError("UNetModel config: \"channel_mult\" must be a list of numbers, got " + brief_json(v));
      c.channel_mult.clear();
      for (const auto& e : v) {
        if (!e.is_number()) throw ArgumentError("UNetModel config: \"channel_mult\" must be a list of numbers, got " + brief_json(v));
        c.channel_mult.push_back(e.get<double>());
      }
    }
    c.conv_resample = kw.get("conv_resample", c.conv_resample);
    if (kw.get<std::int64_t>("dims", 2) != 2)
      throw ArgumentError("UNetModel config: only dims = 2 (images) is supported, got dims = " + brief_json(j.at("dims")));
    c.num_classes = kw.get_optional<std::int64_t>("num_classes");
    if (kw.get<bool>("use_fp16", false))
      throw ArgumentError("UNetModel config: use_fp16 = true is not supported; ditto runs the U-Net in float32 (set it to false)");
    kw.ignore("dropout");
    kw.ignore("use_checkpoint");
    c.num_heads = kw.get("num_heads", c.num_heads);
    c.num_head_channels = kw.get("num_head_channels", c.num_head_channels);
    c.num_heads_upsample = kw.get("num_heads_upsample", c.num_heads_upsample);
    c.use_scale_shift_norm = kw.get("use_scale_shift_norm", c.use_scale_shift_norm);
    c.resblock_updown = kw.get("resblock_updown", c.resblock_updown);
    c.use_new_attention_order = kw.get("use_new_attention_order", c.use_new_attention_order);
    kw.finish();
    c.validate();
    return c;
  }

  void validate() const {
    using ditto::detail::cat;
    for (auto [name, v] : {std::pair{"in_channels", in_channels}, std::pair{"model_channels", model_channels},
                           std::pair{"out_channels", out_channels}})
      if (v < 1) throw ArgumentError(cat("UNetModel config: ", name, " must be >= 1, got ", v));
    if (num_res_blocks < 0) throw ArgumentError(cat("UNetModel config: num_res_blocks must be >= 0, got ", num_res_blocks));
    // (each level halves H and W: 32 levels need 2^31-pixel sides, and bound every 2^level)
    if (channel_mult.empty() || channel_mult.size() > 32)
      throw ArgumentError(cat("UNetModel config: channel_mult must have 1 to 32 entries, got ", channel_mult.size()));
    for (double m : channel_mult)
      if (mult_channels(m) < 1)
        throw ArgumentError(cat("UNetModel config: channel_mult ", m, " x model_channels ", model_channels, " must be a width from 1 to 2^31"));
    if (num_classes && *num_classes < 1) throw ArgumentError(cat("UNetModel config: num_classes must be >= 1 or null, got ", *num_classes));
    if (num_heads < 1 && num_head_channels == -1) throw ArgumentError(cat("UNetModel config: num_heads must be >= 1, got ", num_heads));
    // GroupNorm32: every normalized width must be a multiple of 32, as torch requires
    for (double m : channel_mult)
      if (mult_channels(m) % 32)
        throw ArgumentError(cat("UNetModel config: channel width ", mult_channels(m), " (model_channels ", model_channels, " x ", m,
                                ") is not divisible by 32, which GroupNorm32 needs"));
    detail::check_weights_fit("UNetModel", min_weights());
  }
  // A lower bound on the parameter count: label_emb, each level's ResBlocks (two 3x3
  // convolutions, down and up), the first and the last convolution.
  double min_weights() const {
    double weights = static_cast<double>(num_classes.value_or(0)) * 4 * static_cast<double>(model_channels);
    for (double m : channel_mult)
      weights += 2 * static_cast<double>(num_res_blocks) * 18 * std::pow(static_cast<double>(mult_channels(m)), 2);
    return weights + 9 * static_cast<double>(model_channels) * static_cast<double>(in_channels + out_channels);
  }
};

namespace detail {
// GroupNorm(32) then SiLU, as a new tensor.
template <class T>
inline Tensor<T> norm_silu(const nn::GroupNorm<T>& norm, const Tensor<T>& x) {
  return norm.forward(x, /*silu_after=*/true);
}
}  // namespace detail

template <class T = float>
struct ResBlock {
  std::int64_t channels = 0, out_channels = 0;
  bool scale_shift = false, up = false, down = false, conv_skip = false;
  nn::GroupNorm<T> in_norm, out_norm;
  nn::Conv2d<T> in_conv, out_conv, skip_connection;
  nn::Linear<T> emb_linear;

  ResBlock() = default;
  ResBlock(std::int64_t ch, std::int64_t emb, std::int64_t out, bool scale_shift_, bool up_ = false, bool down_ = false)
      : channels(ch), out_channels(out), scale_shift(scale_shift_), up(up_), down(down_), in_norm(32, ch), out_norm(32, out),
        in_conv(ch, out, 3, 1, 1), out_conv(out, out, 3, 1, 1), emb_linear(emb, scale_shift_ ? 2 * out : out) {
    if (out != ch) skip_connection = nn::Conv2d<T>(ch, out, 1);
  }

  template <class V>
  void visit(V& v) {
    v("in_layers.0", in_norm);
    v("in_layers.2", in_conv);
    v("emb_layers.1", emb_linear);
    v("out_layers.0", out_norm);
    v("out_layers.3", out_conv);
    if (out_channels != channels) v("skip_connection", skip_connection);
  }

  // x: (B, C, H, W); silu_emb: SiLU(emb), (B, E).
  Tensor<T> forward(const Tensor<T>& x_in, const Tensor<T>& silu_emb) const {
    Tensor<T> h = detail::norm_silu(in_norm, x_in), x = x_in;
    if (up) h = nn::upsample_nearest(h), x = nn::upsample_nearest(x);
    if (down) h = nn::avg_pool2d(h, 2), x = nn::avg_pool2d(x, 2);
    h = in_conv.forward(h);
    const Tensor<T> e = emb_linear.forward(silu_emb);  // (B, out) or (B, 2 out): scale, shift
    const std::int64_t B = h.size(0), C = out_channels, S = h.numel() / (B * C);
    if (scale_shift) {
      h = out_norm.forward(h);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c) {
          const T scale = e[b * 2 * C + c], shift = e[b * 2 * C + C + c];
          T* p = h.data() + (b * C + c) * S;
          for (std::int64_t i = 0; i < S; ++i) p[i] = p[i] * (T(1) + scale) + shift;
        }
      nn::activate(h.data(), h.numel(), nn::Activation::silu);
    } else {
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c) {
          const T add = e[b * C + c];
          T* p = h.data() + (b * C + c) * S;
          for (std::int64_t i = 0; i < S; ++i) p[i] += add;
        }
      h = detail::norm_silu(out_norm, h);
    }
    h = out_conv.forward(h);
    const Tensor<T> skip = out_channels == channels ? x : skip_connection.forward(x);
    for (std::int64_t i = 0; i < h.numel(); ++i) h[i] += skip[i];
    return h;
  }
};

// Self-attention over the spatial positions: GroupNorm, qkv (1x1 Conv1d), attention with the
// heads laid out as upstream's legacy order (per head: q, k, v) or new order (all q, all k,
// all v), proj_out (1x1 Conv1d), residual.
template <class T = float>
struct AttentionBlock {
  std::int64_t channels = 0, num_heads = 1;
  bool new_order = false;
  nn::GroupNorm<T> norm;
  nn::Conv1d<T> qkv, proj_out;

  AttentionBlock() = default;
  AttentionBlock(std::int64_t ch, std::int64_t heads, std::int64_t head_channels, bool new_order_)
      : channels(ch), new_order(new_order_), norm(32, ch), qkv(ch, 3 * ch, 1), proj_out(ch, ch, 1) {
    if (head_channels == -1) {
      num_heads = heads;
    } else {
      if (head_channels < 1 || ch % head_channels)
        throw ArgumentError(ditto::detail::cat("UNetModel: attention channels ", ch, " are not divisible by num_head_channels ", head_channels));
      num_heads = ch / head_channels;
    }
    if (num_heads < 1 || ch % num_heads)
      throw ArgumentError(ditto::detail::cat("UNetModel: attention channels ", ch, " are not divisible by num_heads ", num_heads));
  }

  template <class V>
  void visit(V& v) {
    v("norm", norm);
    v("qkv", qkv);
    v("proj_out", proj_out);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    const std::int64_t B = x.size(0), C = channels, L = x.numel() / (B * C), H = num_heads, ch = C / H;
    const Tensor<T> xn = norm.forward(x);
    Tensor<T> qkv_t = Tensor<T>::empty({L, 3 * C}), o = Tensor<T>::empty({L, C});
    Tensor<T> out = x.clone();
    for (std::int64_t b = 0; b < B; ++b) {
      // token-major q/k/v: (L, 3C)
      nn::detail::pointwise_to_rows(xn.data() + b * C * L, C, L, qkv.weight.data(), qkv.bias.data(), 3 * C, qkv_t.data(), 3 * C);
      std::vector<nn::AttentionProblem<T>> problems;
      for (std::int64_t h = 0; h < H; ++h) {
        const T* q = qkv_t.data() + (new_order ? h * ch : h * 3 * ch);
        const T* k = q + (new_order ? C : ch);
        const T* v = q + (new_order ? 2 * C : 2 * ch);
        problems.push_back({q, k, v, o.data() + h * ch, L, L, nullptr});
      }
      nn::attention_kernel(problems, nn::AttentionLayout{ch, ch, 3 * C, 3 * C, 3 * C, C, 0},
                           static_cast<T>(1.0 / std::sqrt(static_cast<double>(ch))));
      nn::detail::rows_to_pointwise_add(o.data(), L, C, proj_out.weight.data(), proj_out.bias.data(), C, out.data() + b * C * L);
    }
    return out;
  }
};

// One entry of a TimestepEmbedSequential: a conv (the first input block), a ResBlock, an
// AttentionBlock, a Downsample (strided conv or average pool) or an Upsample (nearest, then a
// conv or not). Named by its index in the Sequential.
template <class T = float>
struct UNetLayer {
  enum class Kind { conv, res, attn, down, up } kind = Kind::conv;
  bool with_conv = false;  // down / up: a convolution ("op" / "conv") or none
  nn::Conv2d<T> conv;
  ResBlock<T> res;
  AttentionBlock<T> attn;

  template <class V>
  void visit(V& v) {
    switch (kind) {
      case Kind::conv: conv.visit(v); break;
      case Kind::res: res.visit(v); break;
      case Kind::attn: attn.visit(v); break;
      case Kind::down:
        if (with_conv) v("op", conv);
        break;
      case Kind::up:
        if (with_conv) v("conv", conv);
        break;
    }
  }

  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& silu_emb) const {
    switch (kind) {
      case Kind::conv: return conv.forward(x);
      case Kind::res: return res.forward(x, silu_emb);
      case Kind::attn: return attn.forward(x);
      case Kind::down: return with_conv ? conv.forward(x) : nn::avg_pool2d(x, 2);
      case Kind::up: return with_conv ? conv.forward(nn::upsample_nearest(x)) : nn::upsample_nearest(x);
    }
    return x;
  }
};

template <class T = float>
struct UNetStage {  // a TimestepEmbedSequential
  std::vector<UNetLayer<T>> layers;
  template <class V>
  void visit(V& v) {
    for (std::size_t i = 0; i < layers.size(); ++i) v(std::to_string(i), layers[i]);
  }
  Tensor<T> forward(Tensor<T> x, const Tensor<T>& silu_emb) const {
    for (const auto& l : layers) x = l.forward(x, silu_emb);
    return x;
  }
};

template <class T = float>
struct UNet {
  UNetConfig config;
  nn::Linear<T> time_embed0, time_embed2;  // "time_embed.0", "time_embed.2"
  nn::Embedding<T> label_emb;
  std::vector<UNetStage<T>> input_blocks, output_blocks;
  UNetStage<T> middle_block;
  nn::GroupNorm<T> out_norm;  // "out.0"
  nn::Conv2d<T> out_conv;     // "out.2"

  UNet() = default;
  explicit UNet(const UNetConfig& c) : config(c) {
    c.validate();
    using L = UNetLayer<T>;
    const std::int64_t E = c.time_embed_dim();
    time_embed0 = nn::Linear<T>(c.model_channels, E);
    time_embed2 = nn::Linear<T>(E, E);
    if (c.num_classes) label_emb = nn::Embedding<T>(*c.num_classes, E);
    auto conv_layer = [](std::int64_t in, std::int64_t out, std::int64_t stride) {
      L l;
      l.kind = L::Kind::conv;
      l.conv = nn::Conv2d<T>(in, out, 3, stride, 1);
      return l;
    };
    auto res_layer = [&](std::int64_t in, std::int64_t out, bool up = false, bool down = false) {
      L l;
      l.kind = L::Kind::res;
      l.res = ResBlock<T>(in, E, out, c.use_scale_shift_norm, up, down);
      return l;
    };
    auto attn_layer = [&](std::int64_t ch, std::int64_t heads) {
      L l;
      l.kind = L::Kind::attn;
      l.attn = AttentionBlock<T>(ch, heads, c.num_head_channels, c.use_new_attention_order);
      return l;
    };
    const std::int64_t heads_up = c.num_heads_upsample == -1 ? c.num_heads : c.num_heads_upsample;
    std::int64_t ch = c.mult_channels(c.channel_mult[0]);
    const std::int64_t input_ch = ch;
    UNetStage<T> first;
    first.layers.push_back(conv_layer(c.in_channels, ch, 1));
    input_blocks.push_back(first);
    std::vector<std::int64_t> chans{ch};
    std::int64_t ds = 1;
    const std::size_t levels = c.channel_mult.size();
    for (std::size_t level = 0; level < levels; ++level) {
      for (std::int64_t i = 0; i < c.num_res_blocks; ++i) {
        UNetStage<T> s;
        s.layers.push_back(res_layer(ch, c.mult_channels(c.channel_mult[level])));
        ch = c.mult_channels(c.channel_mult[level]);
        if (c.attention_at(ds)) s.layers.push_back(attn_layer(ch, c.num_heads));
        input_blocks.push_back(s);
        chans.push_back(ch);
      }
      if (level + 1 != levels) {
        UNetStage<T> s;
        if (c.resblock_updown) {
          s.layers.push_back(res_layer(ch, ch, false, true));
        } else {
          L l;
          l.kind = L::Kind::down;
          l.with_conv = c.conv_resample;
          if (c.conv_resample) l.conv = nn::Conv2d<T>(ch, ch, 3, 2, 1);
          s.layers.push_back(l);
        }
        input_blocks.push_back(s);
        chans.push_back(ch);
        ds *= 2;
      }
    }
    middle_block.layers = {res_layer(ch, ch), attn_layer(ch, c.num_heads), res_layer(ch, ch)};
    for (std::size_t lv = levels; lv-- > 0;) {
      for (std::int64_t i = 0; i <= c.num_res_blocks; ++i) {
        const std::int64_t ich = chans.back();
        chans.pop_back();
        UNetStage<T> s;
        s.layers.push_back(res_layer(ch + ich, c.mult_channels(c.channel_mult[lv])));
        ch = c.mult_channels(c.channel_mult[lv]);
        if (c.attention_at(ds)) s.layers.push_back(attn_layer(ch, heads_up));
        if (lv > 0 && i == c.num_res_blocks) {
          if (c.resblock_updown) {
            s.layers.push_back(res_layer(ch, ch, true, false));
          } else {
            L l;
            l.kind = L::Kind::up;
            l.with_conv = c.conv_resample;
            if (c.conv_resample) l.conv = nn::Conv2d<T>(ch, ch, 3, 1, 1);
            s.layers.push_back(l);
          }
          ds /= 2;
        }
        output_blocks.push_back(s);
      }
    }
    out_norm = nn::GroupNorm<T>(32, ch);
    out_conv = nn::Conv2d<T>(input_ch, c.out_channels, 3, 1, 1);
  }

  template <class V>
  void visit(V& v) {
    v("time_embed.0", time_embed0);
    v("time_embed.2", time_embed2);
    if (config.num_classes) v("label_emb", label_emb);
    v("input_blocks", input_blocks);
    v("middle_block", middle_block);
    v("output_blocks", output_blocks);
    v("out.0", out_norm);
    v("out.2", out_conv);
  }

  // x: (B, in_channels, H, W), any H and W the down/up path maps back onto itself (divisible by
  // 2^(levels-1)); timesteps: (B), fractional allowed; y: (B) labels, required exactly when
  // num_classes is set. -> (B, out_channels, H, W).
  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& timesteps, const Tensor<std::int64_t>* y = nullptr,
                    const Trace<T>& trace = {}) const {
    using ditto::detail::cat;
    const UNetConfig& c = config;
    if (x.dim() != 4 || x.size(1) != c.in_channels)
      throw ShapeError(cat("UNetModel: expected x (B, ", c.in_channels, ", H, W), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0), steps = static_cast<std::int64_t>(c.channel_mult.size()) - 1;
    detail::require_samples("UNetModel", B, x.shape());
    if ((x.size(2) % (std::int64_t{1} << steps)) || (x.size(3) % (std::int64_t{1} << steps)))
      throw ShapeError(cat("UNetModel: H and W must be divisible by ", std::int64_t{1} << steps, " (", steps,
                           " downsamplings and back), got ", shape_str(x.shape())));
    if (timesteps.dim() != 1 || timesteps.size(0) != B)
      throw ShapeError(cat("UNetModel: expected timesteps of shape (", B, "), got ", shape_str(timesteps.shape())));
    if (static_cast<bool>(y) != c.num_classes.has_value())
      throw ArgumentError(c.num_classes ? "UNetModel: the model is class-conditional, so y is required"
                                        : "UNetModel: the model is unconditional (num_classes is null) and takes no y");
    if (y && (y->dim() != 1 || y->size(0) != B))
      throw ShapeError(cat("UNetModel: expected y of shape (", B, "), got ", shape_str(y->shape())));
    Tensor<T> emb = time_embed0.forward(nn::timestep_embedding(timesteps, c.model_channels));
    nn::activate(emb.data(), emb.numel(), nn::Activation::silu);
    emb = time_embed2.forward(emb);
    if (trace) trace("time_embed", emb);
    if (y) {
      const Tensor<T> le = label_emb.forward(*y);
      if (trace) trace("label_emb", le);
      for (std::int64_t i = 0; i < emb.numel(); ++i) emb[i] += le[i];
    }
    const Tensor<T> silu_emb = nn::silu(emb);  // every emb_layers starts with SiLU
    std::vector<Tensor<T>> hs;
    Tensor<T> h = x;
    for (std::size_t i = 0; i < input_blocks.size(); ++i) {
      h = input_blocks[i].forward(h, silu_emb);
      hs.push_back(h);
      if (trace) trace("input_blocks." + std::to_string(i), h);
    }
    h = middle_block.forward(h, silu_emb);
    if (trace) trace("middle_block", h);
    for (std::size_t i = 0; i < output_blocks.size(); ++i) {
      const Tensor<T> skip = hs.back();
      hs.pop_back();
      if (skip.size(2) != h.size(2) || skip.size(3) != h.size(3))
        throw ShapeError(cat("UNetModel: output block ", i, " joins ", shape_str(h.shape()), " with a skip of ", shape_str(skip.shape())));
      // torch.cat([h, skip], dim=1)
      Tensor<T> joined = Tensor<T>::empty({B, h.size(1) + skip.size(1), h.size(2), h.size(3)});
      const std::int64_t a = h.numel() / B, s = skip.numel() / B;
      for (std::int64_t b = 0; b < B; ++b) {
        std::copy(h.data() + b * a, h.data() + (b + 1) * a, joined.data() + b * (a + s));
        std::copy(skip.data() + b * s, skip.data() + (b + 1) * s, joined.data() + b * (a + s) + a);
      }
      h = output_blocks[i].forward(joined, silu_emb);
      if (trace) trace("output_blocks." + std::to_string(i), h);
    }
    h = out_conv.forward(detail::norm_silu(out_norm, h));
    if (trace) trace("out", h);
    return h;
  }
};

}  // namespace ditto::models
