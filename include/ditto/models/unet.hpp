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
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/norm.hpp"
#include "../nn/adaln.hpp"  // Trace
#include "config.hpp"

namespace ditto::models {

using nn::Trace;

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

  // Training. What backward reads: the input and in_layers' statistics, the conv inputs (after
  // the up/down resampling; the skip's input xs), in_conv's output hc, out_layers' statistics and
  // input (hs = hc + e; with scale-shift, hs holds the normed z and u = z (1 + scale) + shift
  // the SiLU's input), out_conv's input h2, and e = emb_layers(SiLU(emb)).
  struct Acts {
    Tensor<T> x_in, h1, xs, hc, hs, u, h2, e;
    typename nn::GroupNorm<T>::Acts gn1, gn2;
  };
  Tensor<T> forward_train(const Tensor<T>& x_in, const Tensor<T>& silu_emb, Acts& a) const {
    a.x_in = x_in;
    Tensor<T> h = in_norm.forward(x_in, true, &a.gn1);
    a.xs = x_in;
    if (up) h = nn::upsample_nearest(h), a.xs = nn::upsample_nearest(x_in);
    if (down) h = nn::avg_pool2d(h, 2), a.xs = nn::avg_pool2d(x_in, 2);
    a.h1 = h;
    a.hc = in_conv.forward(a.h1);
    a.e = emb_linear.forward(silu_emb);
    const std::int64_t B = a.hc.size(0), C = out_channels, S = a.hc.numel() / (B * C);
    if (scale_shift) {
      a.hs = out_norm.forward(a.hc, false, &a.gn2);  // the normed values z
      a.u = a.hs.clone();
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c) {
          const T scale = a.e[b * 2 * C + c], shift = a.e[b * 2 * C + C + c];
          T* p = a.u.data() + (b * C + c) * S;
          for (std::int64_t i = 0; i < S; ++i) p[i] = p[i] * (T(1) + scale) + shift;
        }
      a.h2 = nn::silu(a.u);
    } else {
      a.hs = a.hc.clone();
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c) {
          T* p = a.hs.data() + (b * C + c) * S;
          for (std::int64_t i = 0; i < S; ++i) p[i] += a.e[b * C + c];
        }
      a.h2 = out_norm.forward(a.hs, true, &a.gn2);
    }
    Tensor<T> out = out_conv.forward(a.h2);
    const Tensor<T> skip = out_channels == channels ? a.xs : skip_connection.forward(a.xs);
    for (std::int64_t i = 0; i < out.numel(); ++i) out[i] += skip[i];
    return out;
  }
  // dout -> the gradient of x_in; accumulates g and dsilu_emb (B, E).
  Tensor<T> backward(ResBlock& g, const Acts& a, const Tensor<T>& dout, T* dsilu_emb, const Tensor<T>& silu_emb) const {
    const std::int64_t B = a.hc.size(0), C = out_channels, S = a.hc.numel() / (B * C);
    Tensor<T> dh2(a.h2.shape()), dhc, de(a.e.shape());
    out_conv.backward(g.out_conv, a.h2, dout, &dh2);
    if (scale_shift) {  // h2 = silu(norm(hc) (1 + scale) + shift)
      Tensor<T> du(a.u.shape());
      nn::activate_backward(du.data(), dh2.data(), a.u.data(), du.numel(), nn::Activation::silu);
      Tensor<T> dz(a.u.shape());
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c) {
          const T scale = a.e[b * 2 * C + c];
          const T* pz = a.hs.data() + (b * C + c) * S;
          const T* pd = du.data() + (b * C + c) * S;
          T ds = 0, dsh = 0;
          for (std::int64_t i = 0; i < S; ++i) {
            ds += pd[i] * pz[i], dsh += pd[i];
            dz[(b * C + c) * S + i] = pd[i] * (T(1) + scale);
          }
          de[b * 2 * C + c] += ds, de[b * 2 * C + C + c] += dsh;
        }
      dhc = out_norm.backward(g.out_norm, a.hc, a.gn2, dz, false);
    } else {  // h2 = silu(norm(hc + e))
      dhc = out_norm.backward(g.out_norm, a.hs, a.gn2, dh2, true);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c) {
          T s = 0;
          for (std::int64_t i = 0; i < S; ++i) s += dhc[(b * C + c) * S + i];
          de[b * C + c] += s;
        }
    }
    emb_linear.backward_into(dsilu_emb, g.emb_linear, de.data(), silu_emb.data(), B);
    Tensor<T> dh1(a.h1.shape());
    in_conv.backward(g.in_conv, a.h1, dhc, &dh1);
    const Tensor<T> dh0 = up ? nn::upsample_nearest_backward(dh1) : down ? nn::avg_pool2d_backward(dh1, a.x_in.shape(), 2) : dh1;
    Tensor<T> dx = in_norm.backward(g.in_norm, a.x_in, a.gn1, dh0, true);
    Tensor<T> dxs = dout;
    if (out_channels != channels) {
      dxs = Tensor<T>(a.xs.shape());
      skip_connection.backward(g.skip_connection, a.xs, dout, &dxs);
    }
    const Tensor<T> dskip = up ? nn::upsample_nearest_backward(dxs) : down ? nn::avg_pool2d_backward(dxs, a.x_in.shape(), 2) : dxs;
    for (std::int64_t i = 0; i < dx.numel(); ++i) dx[i] += dskip[i];
    return dx;
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
      nn::qkv_rows_attention(qkv_t.data(), o.data(), L, H, ch, new_order);
      nn::detail::rows_to_pointwise_add(o.data(), L, C, proj_out.weight.data(), proj_out.bias.data(), C, out.data() + b * C * L);
    }
    return out;
  }

  // Training: the input, the norm's statistics and output, per sample the token-major q/k/v rows,
  // the attention output and its logsumexp.
  struct Acts {
    Tensor<T> x, xn, qkv_t, o, lse;  // qkv_t (B, L, 3C), o (B, L, C), lse (B, H L)
    typename nn::GroupNorm<T>::Acts gn;
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a) const {
    const std::int64_t B = x.size(0), C = channels, L = x.numel() / (B * C), H = num_heads, ch = C / H;
    a.x = x;
    a.xn = norm.forward(x, false, &a.gn);
    a.qkv_t = Tensor<T>::empty({B, L, 3 * C}), a.o = Tensor<T>::empty({B, L, C}), a.lse = Tensor<T>::empty({B, H * L});
    Tensor<T> out = x.clone();
    for (std::int64_t b = 0; b < B; ++b) {
      T* qb = a.qkv_t.data() + b * L * 3 * C;
      nn::detail::pointwise_to_rows(a.xn.data() + b * C * L, C, L, qkv.weight.data(), qkv.bias.data(), 3 * C, qb, 3 * C);
      nn::qkv_rows_attention(qb, a.o.data() + b * L * C, L, H, ch, new_order, a.lse.data() + b * H * L);
      nn::detail::rows_to_pointwise_add(a.o.data() + b * L * C, L, C, proj_out.weight.data(), proj_out.bias.data(), C, out.data() + b * C * L);
    }
    return out;
  }
  // dout -> the gradient of x (the residual's and the branch's); accumulates g.
  Tensor<T> backward(AttentionBlock& g, const Acts& a, const Tensor<T>& dout) const {
    const std::int64_t B = a.x.size(0), C = channels, L = a.x.numel() / (B * C), H = num_heads, ch = C / H;
    Tensor<T> dxn(a.x.shape()), d_o({L, C}), dqkv({L, 3 * C});
    for (std::int64_t b = 0; b < B; ++b) {
      const T* dy = dout.data() + b * C * L;  // (C, L) channel-major
      const T* ob = a.o.data() + b * L * C;   // (L, C)
      // out[c, l] += bias[c] + sum_o W[c, o] o[l, o]
      gemm<T>(false, false, C, C, L, T(1), dy, L, ob, C, T(1), g.proj_out.weight.data(), C);
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t l = 0; l < L; ++l) g.proj_out.bias[c] += dy[c * L + l];
      gemm<T>(true, false, L, C, C, T(1), dy, L, proj_out.weight.data(), C, T(0), d_o.data(), C);
      std::fill(dqkv.begin(), dqkv.end(), T(0));
      const T* qb = a.qkv_t.data() + b * L * 3 * C;
      nn::qkv_rows_attention_backward(dqkv.data(), qb, ob, d_o.data(), a.lse.data() + b * H * L, L, H, ch, new_order);
      // qkv_t[l, j] = bias[j] + sum_c W[j, c] xn[c, l]
      const T* xb = a.xn.data() + b * C * L;
      gemm<T>(true, true, 3 * C, C, L, T(1), dqkv.data(), 3 * C, xb, L, T(1), g.qkv.weight.data(), C);
      for (std::int64_t l = 0; l < L; ++l)
        for (std::int64_t j = 0; j < 3 * C; ++j) g.qkv.bias[j] += dqkv[l * 3 * C + j];
      gemm<T>(true, true, C, L, 3 * C, T(1), qkv.weight.data(), C, dqkv.data(), 3 * C, T(0), dxn.data() + b * C * L, L);
    }
    Tensor<T> dx = norm.backward(g.norm, a.x, a.gn, dxn, false);
    for (std::int64_t i = 0; i < dx.numel(); ++i) dx[i] += dout[i];
    return dx;
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

  // Training: the layer's own activations (x: a conv's input, after upsampling for Upsample).
  struct Acts {
    Tensor<T> x;
    Shape in_shape;
    typename ResBlock<T>::Acts res;
    typename AttentionBlock<T>::Acts attn;
  };
  Tensor<T> forward_train(const Tensor<T>& x, const Tensor<T>& silu_emb, Acts& a) const {
    a.in_shape = x.shape();
    switch (kind) {
      case Kind::res: return res.forward_train(x, silu_emb, a.res);
      case Kind::attn: return attn.forward_train(x, a.attn);
      case Kind::up: a.x = nn::upsample_nearest(x); return with_conv ? conv.forward(a.x) : a.x;
      default: a.x = x; return forward(x, silu_emb);
    }
  }
  Tensor<T> backward(UNetLayer& g, const Acts& a, const Tensor<T>& dout, T* dsilu_emb, const Tensor<T>& silu_emb) const {
    auto conv_back = [&](const Tensor<T>& dy) {
      Tensor<T> dx(a.x.shape());
      conv.backward(g.conv, a.x, dy, &dx);
      return dx;
    };
    switch (kind) {
      case Kind::conv: return conv_back(dout);
      case Kind::res: return res.backward(g.res, a.res, dout, dsilu_emb, silu_emb);
      case Kind::attn: return attn.backward(g.attn, a.attn, dout);
      case Kind::down: return with_conv ? conv_back(dout) : nn::avg_pool2d_backward(dout, a.in_shape, 2);
      case Kind::up: return nn::upsample_nearest_backward(with_conv ? conv_back(dout) : dout);
    }
    return dout;
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
  using Acts = std::vector<typename UNetLayer<T>::Acts>;
  Tensor<T> forward_train(Tensor<T> x, const Tensor<T>& silu_emb, Acts& a) const {
    a.assign(layers.size(), typename UNetLayer<T>::Acts{});
    for (std::size_t i = 0; i < layers.size(); ++i) x = layers[i].forward_train(x, silu_emb, a[i]);
    return x;
  }
  Tensor<T> backward(UNetStage& g, const Acts& a, Tensor<T> dout, T* dsilu_emb, const Tensor<T>& silu_emb) const {
    for (std::size_t i = layers.size(); i-- > 0;) dout = layers[i].backward(g.layers[i], a[i], dout, dsilu_emb, silu_emb);
    return dout;
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
    const UNetConfig& c = config;
    check_inputs(x, timesteps, y);
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
      const Tensor<T> joined = join(h, skip);
      h = output_blocks[i].forward(joined, silu_emb);
      if (trace) trace("output_blocks." + std::to_string(i), h);
    }
    h = out_conv.forward(detail::norm_silu(out_norm, h));
    if (trace) trace("out", h);
    return h;
  }

  // Training (docs/training.md): what backward reads, kept by forward_train.
  struct Acts {
    bool checkpoint = false, check_finite = false;  // as DiT::Acts, per stage (a TimestepEmbedSequential)
    std::int64_t B = 0;
    Tensor<T> freq, pre, emb, silu_emb;             // time features, time_embed.0's output, emb, SiLU(emb)
    Tensor<std::int64_t> y;
    std::vector<typename UNetStage<T>::Acts> stages;  // input_blocks, middle_block, output_blocks
    std::vector<Tensor<T>> stage_in;                  // checkpoint: every stage's input
    std::vector<std::int64_t> joined_h;               // per output block: the channels of h in cat([h, skip])
    Tensor<T> h_out, h_act;                           // out.0's input, out.2's input
    typename nn::GroupNorm<T>::Acts gn;
  };

  Tensor<T> forward_train(const Tensor<T>& x, const Tensor<T>& timesteps, const Tensor<std::int64_t>* y, Acts& a) const {
    const UNetConfig& c = config;
    check_inputs(x, timesteps, y);
    const std::int64_t B = x.size(0);
    a.B = B;
    a.y = y ? *y : Tensor<std::int64_t>();
    a.freq = nn::timestep_embedding(timesteps, c.model_channels);
    a.pre = time_embed0.forward(a.freq);
    a.emb = time_embed2.forward(nn::silu(a.pre));
    if (y) {
      const Tensor<T> le = label_emb.forward(*y);
      for (std::int64_t i = 0; i < a.emb.numel(); ++i) a.emb[i] += le[i];
    }
    a.silu_emb = nn::silu(a.emb);
    const std::size_t ns = input_blocks.size() + 1 + output_blocks.size();
    a.stages.assign(ns, typename UNetStage<T>::Acts{});
    a.stage_in.assign(a.checkpoint ? ns : 0, Tensor<T>());
    a.joined_h.clear();
    auto run = [&](std::size_t i, const Tensor<T>& in) {
      if (!a.checkpoint) return stage(i).forward_train(in, a.silu_emb, a.stages[i]);
      a.stage_in[i] = in;
      typename UNetStage<T>::Acts dropped;
      return stage(i).forward_train(in, a.silu_emb, dropped);
    };
    std::vector<Tensor<T>> hs;
    Tensor<T> h = x.clone();  // the acts hold it: a caller reusing x's buffer must not change them
    for (std::size_t i = 0; i < ns; ++i) {
      if (i > input_blocks.size()) {  // an output block: cat([h, skip])
        const Tensor<T> skip = hs.back();
        hs.pop_back();
        a.joined_h.push_back(h.size(1));
        h = join(h, skip);
      }
      h = run(i, h);
      if (i < input_blocks.size()) hs.push_back(h);
      if (a.check_finite) nn::require_finite<T>("UNetModel." + stage_name(i), "output", h.data(), h.numel());
    }
    a.h_out = h;
    a.h_act = out_norm.forward(h, true, &a.gn);
    return out_conv.forward(a.h_act);
  }

  // dout: the gradient of forward_train's output. Accumulates g and sets *dx when given.
  void backward(UNet& g, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr) const {
    const UNetConfig& c = config;
    const std::size_t ns = input_blocks.size() + 1 + output_blocks.size();
    if (a.B < 1 || a.stages.size() != ns) throw ArgumentError("UNetModel.backward: the activations were not made by this model's forward_train");
    if (a.checkpoint && a.stage_in.size() != ns)
      throw ArgumentError("UNetModel.backward: checkpoint was set after forward_train (set it before: the stages' inputs were not kept)");
    (void)nn::zip_parameters<T>(const_cast<UNet&>(*this), g, "UNetModel.backward");
    const Shape out_shape{a.B, c.out_channels, a.h_act.size(2), a.h_act.size(3)};
    if (dout.shape() != out_shape)
      throw ShapeError(ditto::detail::cat("UNetModel.backward: expected dout of shape ", shape_str(out_shape), ", got ", shape_str(dout.shape())));
    if (a.check_finite) nn::require_finite<T>("UNetModel.backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    Tensor<T> dact(a.h_act.shape());
    out_conv.backward(g.out_conv, a.h_act, dout, &dact);
    Tensor<T> dh = out_norm.backward(g.out_norm, a.h_out, a.gn, dact, true);
    Tensor<T> dsilu({a.B, c.time_embed_dim()});
    std::vector<Tensor<T>> dskips(input_blocks.size());  // the gradient each input block's output gets through its skip
    for (std::size_t i = ns; i-- > 0;) {
      if (i < input_blocks.size() && dskips[i].numel())
        for (std::int64_t k = 0; k < dh.numel(); ++k) dh[k] += dskips[i][k];
      typename UNetStage<T>::Acts recomputed;
      if (a.checkpoint) (void)stage(i).forward_train(a.stage_in[i], a.silu_emb, recomputed);
      dh = stage(i).backward(stage_of(g, i), a.checkpoint ? recomputed : a.stages[i], dh, dsilu.data(), a.silu_emb);
      if (a.check_finite) nn::require_finite<T>("UNetModel." + stage_name(i), "input gradient", dh.data(), dh.numel(), &stage_of(g, i));
      if (i > input_blocks.size()) {  // split d cat([h, skip]) (the skip: input block ns - 1 - i)
        const std::size_t j = i - input_blocks.size() - 1, skip_of = input_blocks.size() - 1 - j;
        const std::int64_t B = a.B, ch = a.joined_h[j], cs = dh.size(1) - ch, S = dh.size(2) * dh.size(3);
        Tensor<T> dprev({B, ch, dh.size(2), dh.size(3)}), dskip({B, cs, dh.size(2), dh.size(3)});
        for (std::int64_t b = 0; b < B; ++b) {
          std::copy(dh.data() + b * (ch + cs) * S, dh.data() + (b * (ch + cs) + ch) * S, dprev.data() + b * ch * S);
          std::copy(dh.data() + (b * (ch + cs) + ch) * S, dh.data() + (b + 1) * (ch + cs) * S, dskip.data() + b * cs * S);
        }
        dskips[skip_of] = std::move(dskip);
        dh = std::move(dprev);
      }
    }
    if (dx) *dx = dh;
    // the embedding: emb = time_embed(t) + label_emb(y), every emb_layers reading SiLU(emb)
    const std::int64_t B = a.B, E = c.time_embed_dim();
    Tensor<T> demb({B, E}), dh1({B, E}), dpre({B, E});
    nn::activate_backward(demb.data(), dsilu.data(), a.emb.data(), B * E, nn::Activation::silu);
    if (c.num_classes) label_emb.backward(g.label_emb, a.y, demb.data());
    time_embed2.backward_into(dh1.data(), g.time_embed2, demb.data(), nn::silu(a.pre).data(), B);
    nn::activate_backward(dpre.data(), dh1.data(), a.pre.data(), B * E, nn::Activation::silu);
    time_embed0.backward_into(nullptr, g.time_embed0, dpre.data(), a.freq.data(), B);
  }

 private:
  void check_inputs(const Tensor<T>& x, const Tensor<T>& timesteps, const Tensor<std::int64_t>* y) const {
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
  }
  // torch.cat([h, skip], dim=1)
  static Tensor<T> join(const Tensor<T>& h, const Tensor<T>& skip) {
    if (skip.size(2) != h.size(2) || skip.size(3) != h.size(3))
      throw ShapeError(ditto::detail::cat("UNetModel: an output block joins ", shape_str(h.shape()), " with a skip of ", shape_str(skip.shape())));
    const std::int64_t B = h.size(0), n = h.numel() / B, s = skip.numel() / B;
    Tensor<T> joined = Tensor<T>::empty({B, h.size(1) + skip.size(1), h.size(2), h.size(3)});
    for (std::int64_t b = 0; b < B; ++b) {
      std::copy(h.data() + b * n, h.data() + (b + 1) * n, joined.data() + b * (n + s));
      std::copy(skip.data() + b * s, skip.data() + (b + 1) * s, joined.data() + b * (n + s) + n);
    }
    return joined;
  }
  // Stages in execution order: input_blocks, middle_block, output_blocks.
  const UNetStage<T>& stage(std::size_t i) const {
    return i < input_blocks.size() ? input_blocks[i] : i == input_blocks.size() ? middle_block : output_blocks[i - input_blocks.size() - 1];
  }
  UNetStage<T>& stage_of(UNet& m, std::size_t i) const {
    return i < input_blocks.size() ? m.input_blocks[i] : i == input_blocks.size() ? m.middle_block : m.output_blocks[i - input_blocks.size() - 1];
  }
  std::string stage_name(std::size_t i) const {
    return i < input_blocks.size() ? "input_blocks." + std::to_string(i)
           : i == input_blocks.size() ? std::string("middle_block")
                                      : "output_blocks." + std::to_string(i - input_blocks.size() - 1);
  }
};

}  // namespace ditto::models
