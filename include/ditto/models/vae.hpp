// The latent autoencoder of Stable Diffusion (AutoencoderKL), which DiT, U-ViT and Latte sample
// in: the CompVis Encoder / Decoder (ResnetBlocks with GroupNorm(32, eps 1e-6) and SiLU, single-
// head spatial attention, strided-conv downsampling, nearest upsampling), the 1x1 quant convs,
// and the diagonal Gaussian posterior, as U-ViT's libs/autoencoder.py FrozenAutoencoderKL builds
// them, under their state-dict names (encoder.down.0.block.1.norm1.weight, ...).
//
//   models::AutoencoderKL<float> vae(models::VAEConfig::from_json(kwargs));  // ddconfig, embed_dim, scale_factor
//   nn::load<float>(vae, "autoencoder_kl.safetensors");
//   auto post = vae.encode(images);       // images (B, 3, H, W) in [-1, 1] -> mean, logvar (clamped)
//   auto z = vae.sample(post, gen);       // scale_factor * (mean + std * noise)
//   auto images2 = vae.decode(z);         // z scaled as the diffusion model sees it
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/matmul.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "../einops/rearrange.hpp"
#include "../nn/activation.hpp"
#include "../nn/attention.hpp"
#include "../nn/conv.hpp"
#include "../nn/init.hpp"
#include "../io/safetensors.hpp"
#include "../nn/module.hpp"
#include "../nn/norm.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/adaln.hpp"  // Trace
#include "config.hpp"

namespace ditto::models {

using nn::Trace;

// FrozenAutoencoderKL's arguments: ddconfig (the Encoder / Decoder keywords), embed_dim,
// scale_factor (pretrained_path is accepted and ignored: weights come from a file).
struct VAEConfig {
  bool double_z = true;
  std::int64_t z_channels = 4, resolution = 256, in_channels = 3, out_ch = 3, ch = 128;
  std::vector<std::int64_t> ch_mult{1, 2, 4, 8};  // the Encoder's default; SD's config says 1, 2, 4, 4
  std::int64_t num_res_blocks = 2;
  std::vector<std::int64_t> attn_resolutions;
  bool resamp_with_conv = true, attention = true;  // attn_type "vanilla" (true) or "none"
  bool give_pre_end = false, tanh_out = false;
  std::int64_t embed_dim = 4;
  double scale_factor = 0.18215;

  bool attn_at(std::int64_t res) const { return std::find(attn_resolutions.begin(), attn_resolutions.end(), res) != attn_resolutions.end(); }

  static VAEConfig from_json(const nlohmann::json& j) {
    Kwargs kw(j, "FrozenAutoencoderKL");
    VAEConfig c;
    if (!j.is_object() || !j.contains("ddconfig"))
      throw ArgumentError("FrozenAutoencoderKL config: missing required argument \"ddconfig\"");
    kw.ignore("ddconfig");
    c.embed_dim = kw.require<std::int64_t>("embed_dim");
    c.scale_factor = kw.get("scale_factor", c.scale_factor);
    kw.ignore("pretrained_path");
    kw.finish();
    Kwargs dd(j.at("ddconfig"), "ddconfig");
    c.double_z = dd.get("double_z", c.double_z);
    c.z_channels = dd.require<std::int64_t>("z_channels");
    c.resolution = dd.require<std::int64_t>("resolution");
    c.in_channels = dd.require<std::int64_t>("in_channels");
    c.out_ch = dd.require<std::int64_t>("out_ch");
    c.ch = dd.require<std::int64_t>("ch");
    c.ch_mult = dd.get("ch_mult", c.ch_mult);
    c.num_res_blocks = dd.require<std::int64_t>("num_res_blocks");
    c.attn_resolutions = dd.require<std::vector<std::int64_t>>("attn_resolutions");
    dd.ignore("dropout");
    c.resamp_with_conv = dd.get("resamp_with_conv", c.resamp_with_conv);
    c.give_pre_end = dd.get("give_pre_end", c.give_pre_end);
    c.tanh_out = dd.get("tanh_out", c.tanh_out);
    const std::string attn_type = dd.get<std::string>("attn_type", "vanilla");
    if (dd.get("use_linear_attn", false) || attn_type == "linear")
      throw ArgumentError("ddconfig: linear attention (use_linear_attn / attn_type \"linear\") is not supported; the SD autoencoder uses \"vanilla\"");
    if (attn_type != "vanilla" && attn_type != "none")
      throw ArgumentError("ddconfig: attn_type must be \"vanilla\", \"linear\" or \"none\", got \"" + attn_type + "\"");
    c.attention = attn_type == "vanilla";
    // no dd.finish(): upstream's Encoder and Decoder take **ignore_kwargs, so other keys are ignored
    c.validate();
    return c;
  }

  void validate() const {
    using ditto::detail::cat;
    if (!double_z) throw ArgumentError("FrozenAutoencoderKL config: ddconfig.double_z must be true (upstream asserts it)");
    for (auto [name, v] : {std::pair{"z_channels", z_channels}, std::pair{"in_channels", in_channels}, std::pair{"out_ch", out_ch},
                           std::pair{"ch", ch}, std::pair{"embed_dim", embed_dim}, std::pair{"resolution", resolution}})
      if (v < 1) throw ArgumentError(cat("FrozenAutoencoderKL config: ", name, " must be >= 1, got ", v));
    if (ch_mult.empty() || ch_mult.size() > 32 || num_res_blocks < 0)  // 32 levels: 2^31-pixel sides; bounds every 2^level
      throw ArgumentError(cat("FrozenAutoencoderKL config: ch_mult must have 1 to 32 entries and num_res_blocks be >= 0, got ",
                              ch_mult.size(), " entries and ", num_res_blocks));
    for (auto m : ch_mult) {
      if (m < 1 || static_cast<double>(ch) * static_cast<double>(m) > 1e15)  // the product below must not overflow
        throw ArgumentError(cat("FrozenAutoencoderKL config: ch_mult entries must be from 1 to 1e15 / ch, got ", m));
      if ((ch * m) % 32)
        throw ArgumentError(cat("FrozenAutoencoderKL config: width ch * ch_mult = ", ch * m, " must be a positive multiple of 32 (GroupNorm 32)"));
    }
    if (ch % 32) throw ArgumentError(cat("FrozenAutoencoderKL config: ch ", ch, " must be a multiple of 32 (GroupNorm 32)"));
    detail::check_weights_fit("FrozenAutoencoderKL", min_weights());
  }
  // A lower bound on the parameter count: the encoder's and decoder's ResBlocks and their first
  // and last convolutions.
  double min_weights() const {
    double weights = 9 * static_cast<double>(ch) * static_cast<double>(in_channels + out_ch);
    for (auto m : ch_mult) weights += 2 * static_cast<double>(num_res_blocks) * 18 * std::pow(static_cast<double>(ch * m), 2);
    return weights;
  }
};

namespace detail {
template <class T>
inline Tensor<T> vae_norm_silu(const nn::GroupNorm<T>& norm, const Tensor<T>& x) {
  return norm.forward(x, /*silu_after=*/true);
}

// The training options of encode_train / decode_train (AutoencoderKL::EncodeActs, DecodeActs),
// carried down to the blocks with the upstream module name of where they are.
struct VAETrain {
  bool checkpoint = false, check_finite = false;
  std::string name;  // e.g. "encoder.down.1"
  VAETrain at(const std::string& child) const { return {checkpoint, check_finite, name + "." + child}; }
};
// One ResnetBlock or AttnBlock of a training forward. checkpoint: keep only its input (in kept)
// and drop its activations; backward runs its forward_train again from there.
template <class Block, class T>
inline Tensor<T> vae_block_train(const Block& b, const Tensor<T>& x, typename Block::Acts& a, Tensor<T>& kept, const VAETrain& o) {
  Tensor<T> y;
  if (o.checkpoint) {
    kept = x;
    typename Block::Acts dropped;
    y = b.forward_train(x, dropped);
  } else {
    y = b.forward_train(x, a);
  }
  if (o.check_finite) nn::require_finite<T>(o.name, "output", y.data(), y.numel());
  return y;
}
template <class Block, class T>
inline Tensor<T> vae_block_backward(const Block& b, Block& g, const typename Block::Acts& a, const Tensor<T>& kept, const Tensor<T>& dy,
                                    const VAETrain& o) {
  Tensor<T> dx;
  if (o.checkpoint) {
    typename Block::Acts recomputed;
    (void)b.forward_train(kept, recomputed);
    dx = b.backward(g, recomputed, dy);
  } else {
    dx = b.backward(g, a, dy);
  }
  if (o.check_finite) nn::require_finite<T>(o.name, "input gradient", dx.data(), dx.numel(), &g);
  return dx;
}
}  // namespace detail

// CompVis ResnetBlock without a time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x)))))),
// the shortcut a 1x1 conv (nin_shortcut) when the width changes.
template <class T = float>
struct VAEResnetBlock {
  std::int64_t in_channels = 0, out_channels = 0;
  nn::GroupNorm<T> norm1, norm2;
  nn::Conv2d<T> conv1, conv2, nin_shortcut;

  VAEResnetBlock() = default;
  VAEResnetBlock(std::int64_t in, std::int64_t out)
      : in_channels(in), out_channels(out), norm1(32, in, 1e-6), norm2(32, out, 1e-6), conv1(in, out, 3, 1, 1), conv2(out, out, 3, 1, 1) {
    if (in != out) nin_shortcut = nn::Conv2d<T>(in, out, 1);
  }
  template <class V>
  void visit(V& v) {
    v("norm1", norm1);
    v("conv1", conv1);
    v("norm2", norm2);
    v("conv2", conv2);
    if (in_channels != out_channels) v("nin_shortcut", nin_shortcut);
  }
  Tensor<T> forward(const Tensor<T>& x) const {
    Tensor<T> h = conv2.forward(detail::vae_norm_silu(norm2, conv1.forward(detail::vae_norm_silu(norm1, x))));
    const Tensor<T> skip = in_channels == out_channels ? x : nin_shortcut.forward(x);
    for (std::int64_t i = 0; i < h.numel(); ++i) h[i] += skip[i];
    return h;
  }

  // Training: the input, both GroupNorms' statistics, the convolutions' inputs (dropout is 0).
  struct Acts {
    Tensor<T> x, h1, c1, h2;  // x; silu(norm1(x)); conv1's output; silu(norm2(c1))
    typename nn::GroupNorm<T>::Acts gn1, gn2;
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a) const {
    a.x = x;
    a.h1 = norm1.forward(x, true, &a.gn1);
    a.c1 = conv1.forward(a.h1);
    a.h2 = norm2.forward(a.c1, true, &a.gn2);
    Tensor<T> h = conv2.forward(a.h2);
    const Tensor<T> skip = in_channels == out_channels ? x : nin_shortcut.forward(x);
    for (std::int64_t i = 0; i < h.numel(); ++i) h[i] += skip[i];
    return h;
  }
  // dy: the output's gradient -> the input's. Accumulates g.
  Tensor<T> backward(VAEResnetBlock& g, const Acts& a, const Tensor<T>& dy) const {
    Tensor<T> dh2, dc1, dh1;
    conv2.backward(g.conv2, a.h2, dy, &dh2);
    dc1 = norm2.backward(g.norm2, a.c1, a.gn2, dh2, true);
    conv1.backward(g.conv1, a.h1, dc1, &dh1);
    Tensor<T> dx = norm1.backward(g.norm1, a.x, a.gn1, dh1, true);
    if (in_channels == out_channels) {
      for (std::int64_t i = 0; i < dx.numel(); ++i) dx[i] += dy[i];
    } else {
      nin_shortcut.backward(g.nin_shortcut, a.x, dy, &dx);  // accumulates into dx
    }
    return dx;
  }
};

// CompVis AttnBlock: one head over the H*W positions, q / k / v / proj_out 1x1 convs, residual.
template <class T = float>
struct VAEAttnBlock {
  std::int64_t channels = 0;
  nn::GroupNorm<T> norm;
  nn::Conv2d<T> q, k, v, proj_out;

  VAEAttnBlock() = default;
  explicit VAEAttnBlock(std::int64_t c) : channels(c), norm(32, c, 1e-6), q(c, c, 1), k(c, c, 1), v(c, c, 1), proj_out(c, c, 1) {}
  template <class V>
  void visit(V& vis) {
    vis("norm", norm);
    vis("q", q);
    vis("k", k);
    vis("v", v);
    vis("proj_out", proj_out);
  }
  Tensor<T> forward(const Tensor<T>& x) const {
    const std::int64_t B = x.size(0), C = channels, L = x.size(2) * x.size(3);
    const Tensor<T> hn = norm.forward(x);
    Tensor<T> qkv = Tensor<T>::empty({L, 3 * C}), o = Tensor<T>::empty({L, C});
    Tensor<T> out = x.clone();
    const nn::Conv2d<T>* convs[3] = {&q, &k, &v};
    for (std::int64_t b = 0; b < B; ++b) {
      for (int j = 0; j < 3; ++j)  // token-major: qkv[:, j C : (j + 1) C]
        nn::detail::pointwise_to_rows(hn.data() + b * C * L, C, L, convs[j]->weight.data(), convs[j]->bias.data(), C, qkv.data() + j * C,
                                      3 * C);
      nn::attention_kernel(std::vector<nn::AttentionProblem<T>>{{qkv.data(), qkv.data() + C, qkv.data() + 2 * C, o.data(), L, L, nullptr}},
                           nn::AttentionLayout{C, C, 3 * C, 3 * C, 3 * C, C, 0}, static_cast<T>(1.0 / std::sqrt(static_cast<double>(C))));
      nn::detail::rows_to_pointwise_add(o.data(), L, C, proj_out.weight.data(), proj_out.bias.data(), C, out.data() + b * C * L);
    }
    return out;
  }

  // Training: the input, the norm's statistics, and per image the normed pixels as rows (L, C),
  // q, k, v side by side (L, 3C), the attention output (L, C) and its logsumexp (L). The 1x1
  // convolutions are products on the pixel rows (a (C, C, 1, 1) weight is the (out, in) matrix).
  struct Acts {
    Tensor<T> x, hn_rows, qkv, o, lse;  // hn_rows, qkv, o, lse: (B, L, .)
    typename nn::GroupNorm<T>::Acts gn;
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a) const {
    const std::int64_t B = x.size(0), C = channels, L = x.size(2) * x.size(3);
    a.x = x;
    a.hn_rows = rows_of(norm.forward(x, false, &a.gn));
    a.qkv = Tensor<T>::empty({B, L, 3 * C}), a.o = Tensor<T>::empty({B, L, C}), a.lse = Tensor<T>::empty({B, L});
    Tensor<T> proj = Tensor<T>::empty({B, L, C});
    for (std::int64_t b = 0; b < B; ++b) {
      T* qkv = a.qkv.data() + b * L * 3 * C;
      const nn::Conv2d<T>* convs[3] = {&q, &k, &v};
      Tensor<T> part = Tensor<T>::empty({L, C});
      for (int j = 0; j < 3; ++j) {
        nn::linear_rows(a.hn_rows.data() + b * L * C, L, C, C, convs[j]->weight.data(), convs[j]->bias.data(), part.data());
        for (std::int64_t l = 0; l < L; ++l) std::copy(part.data() + l * C, part.data() + (l + 1) * C, qkv + l * 3 * C + j * C);
      }
      nn::attention_kernel(std::vector<nn::AttentionProblem<T>>{{qkv, qkv + C, qkv + 2 * C, a.o.data() + b * L * C, L, L, nullptr,
                                                                 a.lse.data() + b * L}},
                           nn::AttentionLayout{C, C, 3 * C, 3 * C, 3 * C, C, 0}, scale());
      nn::linear_rows(a.o.data() + b * L * C, L, C, C, proj_out.weight.data(), proj_out.bias.data(), proj.data() + b * L * C);
    }
    Tensor<T> out = pixels_of(proj, x.shape());
    for (std::int64_t i = 0; i < out.numel(); ++i) out[i] += x[i];
    return out;
  }
  Tensor<T> backward(VAEAttnBlock& g, const Acts& a, const Tensor<T>& dy) const {
    const std::int64_t B = a.x.size(0), C = channels, L = a.x.size(2) * a.x.size(3);
    const Tensor<T> dy_rows = rows_of(dy);
    Tensor<T> dhn_rows({B, L, C});
    for (std::int64_t b = 0; b < B; ++b) {
      const T* qkv = a.qkv.data() + b * L * 3 * C;
      Tensor<T> d_o({L, C}), dqkv({L, 3 * C});
      nn::linear_rows_backward(d_o.data(), g.proj_out.weight.data(), g.proj_out.bias.data(), dy_rows.data() + b * L * C, a.o.data() + b * L * C,
                               proj_out.weight.data(), L, C, C);
      nn::attention_backward(std::vector<nn::AttentionGradProblem<T>>{{qkv, qkv + C, qkv + 2 * C, a.o.data() + b * L * C, d_o.data(),
                                                                       a.lse.data() + b * L, dqkv.data(), dqkv.data() + C, dqkv.data() + 2 * C, L,
                                                                       L, nullptr}},
                             nn::AttentionLayout{C, C, 3 * C, 3 * C, 3 * C, C, 0}, scale());
      const nn::Conv2d<T>* convs[3] = {&q, &k, &v};
      nn::Conv2d<T>* gconvs[3] = {&g.q, &g.k, &g.v};
      Tensor<T> part = Tensor<T>::empty({L, C});
      for (int j = 0; j < 3; ++j) {
        for (std::int64_t l = 0; l < L; ++l) std::copy(dqkv.data() + l * 3 * C + j * C, dqkv.data() + l * 3 * C + (j + 1) * C, part.data() + l * C);
        nn::linear_rows_backward(dhn_rows.data() + b * L * C, gconvs[j]->weight.data(), gconvs[j]->bias.data(), part.data(),
                                 a.hn_rows.data() + b * L * C, convs[j]->weight.data(), L, C, C);
      }
    }
    Tensor<T> dx = norm.backward(g.norm, a.x, a.gn, pixels_of(dhn_rows, a.x.shape()), false);
    for (std::int64_t i = 0; i < dx.numel(); ++i) dx[i] += dy[i];  // the residual
    return dx;
  }

 private:
  T scale() const { return static_cast<T>(1.0 / std::sqrt(static_cast<double>(channels))); }
  // (B, C, H, W) <-> (B, H W, C): the pixels as rows
  static Tensor<T> rows_of(const Tensor<T>& x) { return rearrange(x, "b c h w -> b (h w) c"); }
  static Tensor<T> pixels_of(const Tensor<T>& rows, const Shape& shape) {
    return rearrange(rows, "b (h w) c -> b c h w", {{"h", shape[2]}});
  }
};

template <class T = float>
struct VAELevel {  // encoder.down.N / decoder.up.N
  std::vector<VAEResnetBlock<T>> block;
  std::vector<VAEAttnBlock<T>> attn;
  bool resample = false, with_conv = true;
  nn::Conv2d<T> conv;  // downsample.conv / upsample.conv
  bool down = true;
  template <class V>
  void visit(V& v) {
    v("block", block);
    v("attn", attn);
    if (resample && with_conv) v(down ? "downsample.conv" : "upsample.conv", conv);
  }
  Tensor<T> run(Tensor<T> h) const {
    for (std::size_t i = 0; i < block.size(); ++i) {
      h = block[i].forward(h);
      if (!attn.empty()) h = attn[i].forward(h);
    }
    if (!resample) return h;
    if (down) return with_conv ? conv.forward(h) : nn::avg_pool2d(h, 2);
    h = nn::upsample_nearest(h);
    return with_conv ? conv.forward(h) : h;
  }

  // Training: the blocks' activations and the resampling's input (the conv's, after upsampling).
  struct Acts {
    std::vector<typename VAEResnetBlock<T>::Acts> block;
    std::vector<typename VAEAttnBlock<T>::Acts> attn;
    std::vector<Tensor<T>> block_in, attn_in;  // checkpoint: the blocks' inputs instead
    Tensor<T> resample_in, conv_in;
  };
  Tensor<T> run_train(Tensor<T> h, Acts& a, const detail::VAETrain& o) const {
    a.block.assign(block.size(), {});
    a.attn.assign(attn.size(), {});
    a.block_in.assign(block.size(), {});
    a.attn_in.assign(attn.size(), {});
    for (std::size_t i = 0; i < block.size(); ++i) {
      h = detail::vae_block_train(block[i], h, a.block[i], a.block_in[i], o.at("block." + std::to_string(i)));
      if (!attn.empty()) h = detail::vae_block_train(attn[i], h, a.attn[i], a.attn_in[i], o.at("attn." + std::to_string(i)));
    }
    if (!resample) return h;
    a.resample_in = h;
    if (!down) h = nn::upsample_nearest(h);
    if (!with_conv) return down ? nn::avg_pool2d(h, 2) : h;
    a.conv_in = h;
    Tensor<T> out = conv.forward(h);
    if (o.check_finite) nn::require_finite<T>(o.name + (down ? ".downsample.conv" : ".upsample.conv"), "output", out.data(), out.numel());
    return out;
  }
  Tensor<T> backward(VAELevel& g, const Acts& a, Tensor<T> dh, const detail::VAETrain& o) const {
    if (resample) {
      if (with_conv) {
        Tensor<T> d;
        conv.backward(g.conv, a.conv_in, dh, &d);
        if (o.check_finite)
          nn::require_finite<T>(o.name + (down ? ".downsample.conv" : ".upsample.conv"), "input gradient", d.data(), d.numel(), &g.conv);
        dh = std::move(d);
      } else if (down) {
        dh = nn::avg_pool2d_backward(dh, a.resample_in.shape(), 2);
      }
      if (!down) dh = nn::upsample_nearest_backward(dh);
    }
    for (std::size_t i = block.size(); i-- > 0;) {
      if (!attn.empty()) dh = detail::vae_block_backward(attn[i], g.attn[i], a.attn[i], a.attn_in[i], dh, o.at("attn." + std::to_string(i)));
      dh = detail::vae_block_backward(block[i], g.block[i], a.block[i], a.block_in[i], dh, o.at("block." + std::to_string(i)));
    }
    return dh;
  }
};

template <class T = float>
struct VAEMid {
  VAEResnetBlock<T> block_1, block_2;
  VAEAttnBlock<T> attn_1;
  bool attention = true;
  template <class V>
  void visit(V& v) {
    v("block_1", block_1);
    if (attention) v("attn_1", attn_1);
    v("block_2", block_2);
  }
  Tensor<T> forward(const Tensor<T>& x) const {
    Tensor<T> h = block_1.forward(x);
    if (attention) h = attn_1.forward(h);
    return block_2.forward(h);
  }

  struct Acts {
    typename VAEResnetBlock<T>::Acts block_1, block_2;
    typename VAEAttnBlock<T>::Acts attn_1;
    Tensor<T> block_1_in, attn_1_in, block_2_in;  // checkpoint: the blocks' inputs instead
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a, const detail::VAETrain& o) const {
    a = Acts{};  // nothing left from an earlier call
    Tensor<T> h = detail::vae_block_train(block_1, x, a.block_1, a.block_1_in, o.at("block_1"));
    if (attention) h = detail::vae_block_train(attn_1, h, a.attn_1, a.attn_1_in, o.at("attn_1"));
    return detail::vae_block_train(block_2, h, a.block_2, a.block_2_in, o.at("block_2"));
  }
  Tensor<T> backward(VAEMid& g, const Acts& a, const Tensor<T>& dy, const detail::VAETrain& o) const {
    Tensor<T> dh = detail::vae_block_backward(block_2, g.block_2, a.block_2, a.block_2_in, dy, o.at("block_2"));
    if (attention) dh = detail::vae_block_backward(attn_1, g.attn_1, a.attn_1, a.attn_1_in, dh, o.at("attn_1"));
    return detail::vae_block_backward(block_1, g.block_1, a.block_1, a.block_1_in, dh, o.at("block_1"));
  }
};

template <class T = float>
struct VAEEncoder {
  nn::Conv2d<T> conv_in, conv_out;
  std::vector<VAELevel<T>> down;
  VAEMid<T> mid;
  nn::GroupNorm<T> norm_out;
  template <class V>
  void visit(V& v) {
    v("conv_in", conv_in);
    v("down", down);
    v("mid", mid);
    v("norm_out", norm_out);
    v("conv_out", conv_out);
  }
  Tensor<T> forward(const Tensor<T>& x) const {
    Tensor<T> h = conv_in.forward(x);
    for (const auto& level : down) h = level.run(h);
    return conv_out.forward(detail::vae_norm_silu(norm_out, mid.forward(h)));
  }

  struct Acts {
    Tensor<T> x, mid_out, h_out;  // the input; mid's output; silu(norm_out(mid_out)), conv_out's input
    std::vector<typename VAELevel<T>::Acts> down;
    typename VAEMid<T>::Acts mid;
    typename nn::GroupNorm<T>::Acts gn;
    bool checkpointed = false;  // what forward_train ran with
  };
  Tensor<T> forward_train(const Tensor<T>& x, Acts& a, const detail::VAETrain& o = {}) const {
    a.x = x.clone();  // its own copy: the caller may change x before backward
    a.checkpointed = o.checkpoint;
    Tensor<T> h = conv_in.forward(x);
    a.down.assign(down.size(), {});
    for (std::size_t i = 0; i < down.size(); ++i) h = down[i].run_train(h, a.down[i], o.at("down." + std::to_string(i)));
    a.mid_out = mid.forward_train(h, a.mid, o.at("mid"));
    a.h_out = norm_out.forward(a.mid_out, true, &a.gn);
    Tensor<T> out = conv_out.forward(a.h_out);
    if (o.check_finite) nn::require_finite<T>(o.name + ".conv_out", "output", out.data(), out.numel());
    return out;
  }
  // dy: the gradient of the output (B, 2 z_channels, h, w). Accumulates g; sets *dx when given.
  void backward(VAEEncoder& g, const Acts& a, const Tensor<T>& dy, Tensor<T>* dx, detail::VAETrain o = {}) const {
    o.checkpoint = a.checkpointed;
    Tensor<T> dh;
    conv_out.backward(g.conv_out, a.h_out, dy, &dh);
    if (o.check_finite) nn::require_finite<T>(o.name + ".conv_out", "input gradient", dh.data(), dh.numel(), &g.conv_out);
    dh = norm_out.backward(g.norm_out, a.mid_out, a.gn, dh, true);
    if (o.check_finite) nn::require_finite<T>(o.name + ".norm_out", "input gradient", dh.data(), dh.numel(), &g.norm_out);
    dh = mid.backward(g.mid, a.mid, dh, o.at("mid"));
    for (std::size_t i = down.size(); i-- > 0;) dh = down[i].backward(g.down[i], a.down[i], dh, o.at("down." + std::to_string(i)));
    Tensor<T> d;
    conv_in.backward(g.conv_in, a.x, dh, dx ? &d : nullptr);
    if (o.check_finite) nn::require_finite<T>(o.name + ".conv_in", "input gradient", d.data(), d.numel(), &g.conv_in);
    if (dx) *dx = std::move(d);
  }
};

template <class T = float>
struct VAEDecoder {
  nn::Conv2d<T> conv_in, conv_out;
  VAEMid<T> mid;
  std::vector<VAELevel<T>> up;  // up[0] is the finest level, run last (upstream's order)
  nn::GroupNorm<T> norm_out;
  bool give_pre_end = false, tanh_out = false;
  template <class V>
  void visit(V& v) {
    v("conv_in", conv_in);
    v("mid", mid);
    v("up", up);
    v("norm_out", norm_out);
    v("conv_out", conv_out);
  }
  Tensor<T> forward(const Tensor<T>& z) const {
    Tensor<T> h = mid.forward(conv_in.forward(z));
    for (std::size_t i = up.size(); i-- > 0;) h = up[i].run(h);
    if (give_pre_end) return h;
    h = conv_out.forward(detail::vae_norm_silu(norm_out, h));
    if (tanh_out)
      for (auto& v : h) v = std::tanh(v);
    return h;
  }

  struct Acts {
    Tensor<T> z, up_out, h_out, out;  // the input; the last level's output; conv_out's input; the (tanh) output
    typename VAEMid<T>::Acts mid;
    std::vector<typename VAELevel<T>::Acts> up;
    typename nn::GroupNorm<T>::Acts gn;
    bool checkpointed = false;  // what forward_train ran with
  };
  Tensor<T> forward_train(const Tensor<T>& z, Acts& a, const detail::VAETrain& o = {}) const {
    a.z = z;
    a.checkpointed = o.checkpoint;
    Tensor<T> h = mid.forward_train(conv_in.forward(z), a.mid, o.at("mid"));
    a.up.assign(up.size(), {});
    for (std::size_t i = up.size(); i-- > 0;) h = up[i].run_train(h, a.up[i], o.at("up." + std::to_string(i)));
    if (give_pre_end) return h;
    a.up_out = h;
    a.h_out = norm_out.forward(h, true, &a.gn);
    h = conv_out.forward(a.h_out);
    if (tanh_out)
      for (auto& v : h) v = std::tanh(v);
    if (o.check_finite) nn::require_finite<T>(o.name + ".conv_out", "output", h.data(), h.numel());
    a.out = h;
    return h.clone();  // the caller's own tensor: a.out (the tanh gradient's) stays as it was
  }
  void backward(VAEDecoder& g, const Acts& a, const Tensor<T>& dy, Tensor<T>* dz, detail::VAETrain o = {}) const {
    o.checkpoint = a.checkpointed;
    Tensor<T> dh = dy.clone();
    if (!give_pre_end) {
      if (tanh_out)
        for (std::int64_t i = 0; i < dh.numel(); ++i) dh[i] *= T(1) - a.out[i] * a.out[i];
      Tensor<T> d;
      conv_out.backward(g.conv_out, a.h_out, dh, &d);
      if (o.check_finite) nn::require_finite<T>(o.name + ".conv_out", "input gradient", d.data(), d.numel(), &g.conv_out);
      dh = norm_out.backward(g.norm_out, a.up_out, a.gn, d, true);
      if (o.check_finite) nn::require_finite<T>(o.name + ".norm_out", "input gradient", dh.data(), dh.numel(), &g.norm_out);
    }
    for (std::size_t i = 0; i < up.size(); ++i) dh = up[i].backward(g.up[i], a.up[i], dh, o.at("up." + std::to_string(i)));
    dh = mid.backward(g.mid, a.mid, dh, o.at("mid"));
    Tensor<T> d;
    conv_in.backward(g.conv_in, a.z, dh, dz ? &d : nullptr);
    if (o.check_finite) nn::require_finite<T>(o.name + ".conv_in", "input gradient", d.data(), d.numel(), &g.conv_in);
    if (dz) *dz = std::move(d);
  }
};

template <class T = float>
struct AutoencoderKL {
  VAEConfig config;
  VAEEncoder<T> encoder;
  VAEDecoder<T> decoder;
  nn::Conv2d<T> quant_conv, post_quant_conv;

  struct Posterior {
    Tensor<T> mean, logvar;  // logvar clamped to [-30, 20], as DiagonalGaussianDistribution
  };

  AutoencoderKL() = default;
  explicit AutoencoderKL(const VAEConfig& c) : config(c) {
    c.validate();
    const std::int64_t levels = static_cast<std::int64_t>(c.ch_mult.size());
    // encoder
    encoder.conv_in = nn::Conv2d<T>(c.in_channels, c.ch, 3, 1, 1);
    std::int64_t res = c.resolution, block_in = c.ch;
    for (std::int64_t i = 0; i < levels; ++i) {
      VAELevel<T> level;
      const std::int64_t out = c.ch * c.ch_mult[static_cast<std::size_t>(i)];
      for (std::int64_t j = 0; j < c.num_res_blocks; ++j) {
        level.block.emplace_back(block_in, out);
        block_in = out;
        if (c.attention && c.attn_at(res)) level.attn.emplace_back(out);
      }
      if (i != levels - 1) {
        level.resample = true, level.with_conv = c.resamp_with_conv, level.down = true;
        // CompVis pads (0, 1, 0, 1) then a stride-2 3x3 conv without padding
        if (c.resamp_with_conv) level.conv = nn::Conv2d<T>(block_in, block_in, {3, 3}, {2, 2}, {0, 1, 0, 1});
        res /= 2;
      }
      encoder.down.push_back(std::move(level));
    }
    encoder.mid = make_mid(block_in);
    encoder.norm_out = nn::GroupNorm<T>(32, block_in, 1e-6);
    encoder.conv_out = nn::Conv2d<T>(block_in, 2 * c.z_channels, 3, 1, 1);
    // decoder
    block_in = c.ch * c.ch_mult.back();
    res = c.resolution >> (levels - 1);
    decoder.conv_in = nn::Conv2d<T>(c.z_channels, block_in, 3, 1, 1);
    decoder.mid = make_mid(block_in);
    decoder.up.resize(static_cast<std::size_t>(levels));
    for (std::int64_t i = levels - 1; i >= 0; --i) {
      VAELevel<T>& level = decoder.up[static_cast<std::size_t>(i)];
      const std::int64_t out = c.ch * c.ch_mult[static_cast<std::size_t>(i)];
      for (std::int64_t j = 0; j <= c.num_res_blocks; ++j) {
        level.block.emplace_back(block_in, out);
        block_in = out;
        if (c.attention && c.attn_at(res)) level.attn.emplace_back(out);
      }
      if (i != 0) {
        level.resample = true, level.with_conv = c.resamp_with_conv, level.down = false;
        if (c.resamp_with_conv) level.conv = nn::Conv2d<T>(block_in, block_in, 3, 1, 1);
        res *= 2;
      }
    }
    decoder.norm_out = nn::GroupNorm<T>(32, block_in, 1e-6);
    decoder.conv_out = nn::Conv2d<T>(block_in, c.out_ch, 3, 1, 1);
    decoder.give_pre_end = c.give_pre_end, decoder.tanh_out = c.tanh_out;
    quant_conv = nn::Conv2d<T>(2 * c.z_channels, 2 * c.embed_dim, 1);
    post_quant_conv = nn::Conv2d<T>(c.embed_dim, c.z_channels, 1);
  }

  template <class V>
  void visit(V& v) {
    v("encoder", encoder);
    v("decoder", decoder);
    v("quant_conv", quant_conv);
    v("post_quant_conv", post_quant_conv);
  }

  // images (B, in_channels, H, W) in [-1, 1], H and W divisible by 2^(levels-1) -> the posterior
  // (B, embed_dim, H / 2^(levels-1), W / ...).
  // trace, when given, receives the top-level submodules' outputs: encoder, quant_conv.
  Posterior encode(const Tensor<T>& x, const Trace<T>& trace = {}) const {
    check_images(x, "AutoencoderKL.encode");
    const Tensor<T> h = encoder.forward(x);
    if (trace) trace("encoder", h);
    const Tensor<T> moments = quant_conv.forward(h);
    if (trace) trace("quant_conv", moments);
    Posterior p = split_moments(moments);
    for (auto& v : p.logvar) v = std::clamp(v, T(-30), T(20));
    return p;
  }
  // z = scale_factor * (mean + exp(logvar / 2) * noise)
  Tensor<T> sample(const Posterior& p, const Tensor<T>& noise) const {
    if (noise.shape() != p.mean.shape())
      throw ShapeError(ditto::detail::cat("AutoencoderKL.sample: noise must be shaped like the mean ", shape_str(p.mean.shape()), ", got ",
                                          shape_str(noise.shape())));
    Tensor<T> z = Tensor<T>::empty(p.mean.shape());
    const T s = static_cast<T>(config.scale_factor);
    for (std::int64_t i = 0; i < z.numel(); ++i) z[i] = s * (p.mean[i] + std::exp(T(0.5) * p.logvar[i]) * noise[i]);
    return z;
  }
  Tensor<T> sample(const Posterior& p, Generator& gen) const { return sample(p, gen.normal<T>(p.mean.shape())); }

  // z: the scaled latent (B, embed_dim, h, w) -> images (B, out_ch, h * 2^(levels-1), ...).
  // trace as encode's: post_quant_conv, decoder.
  Tensor<T> decode(const Tensor<T>& z, const Trace<T>& trace = {}) const {
    check_latent(z, "AutoencoderKL.decode");
    const Tensor<T> h = post_quant_conv.forward(unscale(z));
    if (trace) trace("post_quant_conv", h);
    Tensor<T> out = decoder.forward(h);
    if (trace) trace("decoder", out);
    return out;
  }

  // Training (docs/training.md): encode and decode each keep their own activations. The
  // posterior's logvar is clamped as upstream's, so its gradient is 0 where the clamp held.
  //
  // Options, set before encode_train / decode_train, as DiT::Acts's: checkpoint keeps only each
  // ResnetBlock's and AttnBlock's input and recomputes its activations in backward (the same
  // bits); check_finite makes a NaN or infinity in any block's output or input gradient an error
  // naming the block by its upstream name ("AutoencoderKL.encoder.down.1.block.0").
  struct EncodeActs {
    bool checkpoint = false, check_finite = false;
    typename VAEEncoder<T>::Acts encoder;
    Tensor<T> h, logvar_raw;  // quant_conv's input; the logvar before the clamp
  };
  Posterior encode_train(const Tensor<T>& x, EncodeActs& a) const {
    check_images(x, "AutoencoderKL.encode_train");
    a.h = encoder.forward_train(x, a.encoder, {a.checkpoint, a.check_finite, "AutoencoderKL.encoder"});
    Posterior p = split_moments(quant_conv.forward(a.h));
    a.logvar_raw = p.logvar.clone();
    for (auto& v : p.logvar) v = std::clamp(v, T(-30), T(20));
    return p;
  }
  // dmean, dlogvar: the gradients of the posterior's mean and clamped logvar (an empty tensor
  // for 0). Accumulates g (the encoder's and quant_conv's parameters); sets *dx when given.
  void encode_backward(AutoencoderKL& g, const EncodeActs& a, const Tensor<T>& dmean, const Tensor<T>& dlogvar, Tensor<T>* dx = nullptr) const {
    (void)nn::zip_parameters<T>(const_cast<AutoencoderKL&>(*this), g, "AutoencoderKL.encode_backward");
    const Shape shape = a.logvar_raw.shape();
    if (a.h.numel() == 0) throw ArgumentError("AutoencoderKL.encode_backward: the activations were not made by encode_train");
    for (const Tensor<T>* d : {&dmean, &dlogvar})  // an empty tensor (no elements, rank <= 1): no gradient
      if ((d->numel() || d->dim() > 1) && d->shape() != shape)
        throw ShapeError(ditto::detail::cat("AutoencoderKL.encode_backward: expected gradients of the posterior's shape ", shape_str(shape), ", got ",
                                            shape_str(d->shape())));
    const std::int64_t B = shape[0], E = shape[1], S = shape[2] * shape[3];
    Tensor<T> dmoments({B, 2 * E, shape[2], shape[3]});
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < E * S; ++i) {
        if (dmean.numel()) dmoments[b * 2 * E * S + i] = dmean[b * E * S + i];
        const T raw = a.logvar_raw[b * E * S + i];
        if (dlogvar.numel() && raw >= T(-30) && raw <= T(20)) dmoments[(b * 2 + 1) * E * S + i] = dlogvar[b * E * S + i];
      }
    if (a.check_finite) nn::require_finite<T>("AutoencoderKL.encode_backward's dmean / dlogvar", "value", dmoments.data(), dmoments.numel());
    Tensor<T> dh;
    quant_conv.backward(g.quant_conv, a.h, dmoments, &dh);
    if (a.check_finite) nn::require_finite<T>("AutoencoderKL.quant_conv", "input gradient", dh.data(), dh.numel(), &g.quant_conv);
    encoder.backward(g.encoder, a.encoder, dh, dx, {false, a.check_finite, "AutoencoderKL.encoder"});
  }
  // sample's backward: z = s (mean + exp(logvar / 2) noise) -> (dmean, dlogvar) from dz.
  std::pair<Tensor<T>, Tensor<T>> sample_backward(const Posterior& p, const Tensor<T>& noise, const Tensor<T>& dz) const {
    if (noise.shape() != p.mean.shape() || dz.shape() != p.mean.shape() || p.logvar.shape() != p.mean.shape())
      throw ShapeError(ditto::detail::cat("AutoencoderKL.sample_backward: logvar, noise and dz must be shaped like the mean ", shape_str(p.mean.shape()),
                                          ", got ", shape_str(p.logvar.shape()), ", ", shape_str(noise.shape()), " and ", shape_str(dz.shape())));
    Tensor<T> dmean = Tensor<T>::empty(dz.shape()), dlogvar = Tensor<T>::empty(dz.shape());
    const T s = static_cast<T>(config.scale_factor);
    for (std::int64_t i = 0; i < dz.numel(); ++i) {
      dmean[i] = s * dz[i];
      dlogvar[i] = s * dz[i] * noise[i] * T(0.5) * std::exp(T(0.5) * p.logvar[i]);
    }
    return {dmean, dlogvar};
  }

  struct DecodeActs {
    bool checkpoint = false, check_finite = false;  // as EncodeActs's
    typename VAEDecoder<T>::Acts decoder;
    Tensor<T> unscaled;  // post_quant_conv's input, z / scale_factor
    Shape out_shape;
  };
  Tensor<T> decode_train(const Tensor<T>& z, DecodeActs& a) const {
    check_latent(z, "AutoencoderKL.decode_train");
    a.unscaled = unscale(z);
    Tensor<T> out = decoder.forward_train(post_quant_conv.forward(a.unscaled), a.decoder, {a.checkpoint, a.check_finite, "AutoencoderKL.decoder"});
    a.out_shape = out.shape();
    return out;
  }
  // dout: the decoded images' gradient. Accumulates g (the decoder's and post_quant_conv's);
  // sets *dz (the scaled latent's gradient) when given.
  void decode_backward(AutoencoderKL& g, const DecodeActs& a, const Tensor<T>& dout, Tensor<T>* dz = nullptr) const {
    (void)nn::zip_parameters<T>(const_cast<AutoencoderKL&>(*this), g, "AutoencoderKL.decode_backward");
    if (a.unscaled.numel() == 0) throw ArgumentError("AutoencoderKL.decode_backward: the activations were not made by decode_train");
    if (dout.shape() != a.out_shape)
      throw ShapeError(ditto::detail::cat("AutoencoderKL.decode_backward: expected dout of the decoded images' shape ", shape_str(a.out_shape),
                                          ", got ", shape_str(dout.shape())));
    if (a.check_finite) nn::require_finite<T>("AutoencoderKL.decode_backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    Tensor<T> dh, du;
    decoder.backward(g.decoder, a.decoder, dout, &dh, {false, a.check_finite, "AutoencoderKL.decoder"});
    post_quant_conv.backward(g.post_quant_conv, a.unscaled, dh, dz ? &du : nullptr);
    if (a.check_finite) nn::require_finite<T>("AutoencoderKL.post_quant_conv", "input gradient", du.data(), du.numel(), &g.post_quant_conv);
    if (dz) *dz = unscale(du);  // d(z / s) / dz = 1 / s
  }

  // Decoding in overlapping tiles with blended seams, as diffusers' AutoencoderKL.tiled_decode:
  // latent tiles of tile_latent x tile_latent every tile_latent (1 - overlap), each decoded on
  // its own (so the decoder's activations stay those of one tile however large the image), then
  // blended linearly over overlap * tile pixels with the tile above and the tile to the left, and
  // cropped to the stride. GroupNorm sees one tile at a time, so the result differs slightly
  // from decode() on images larger than a tile; on one tile it is decode() itself.
  Tensor<T> decode_tiled(const Tensor<T>& z, std::int64_t tile_latent = 64, double overlap = 0.25) const {
    using ditto::detail::cat;
    if (tile_latent < 1 || !(overlap >= 0 && overlap < 1))
      throw ArgumentError(cat("AutoencoderKL.decode_tiled: expected tile_latent >= 1 and overlap in [0, 1), got ", tile_latent, " and ", overlap));
    if (z.dim() != 4 || z.size(1) != config.embed_dim)
      throw ShapeError(cat("AutoencoderKL.decode_tiled: expected z (B, ", config.embed_dim, ", h, w), got ", shape_str(z.shape())));
    detail::require_samples("AutoencoderKL.decode_tiled", z.size(0), z.shape());
    const std::int64_t f = std::int64_t{1} << (config.ch_mult.size() - 1), tile_px = tile_latent * f;
    const std::int64_t stride = std::max<std::int64_t>(static_cast<std::int64_t>(static_cast<double>(tile_latent) * (1 - overlap)), 1);
    const std::int64_t blend = static_cast<std::int64_t>(static_cast<double>(tile_px) * overlap), keep = tile_px - blend;
    const std::int64_t B = z.size(0), E = z.size(1), h = z.size(2), w = z.size(3), C = config.out_ch;
    std::vector<std::vector<Tensor<T>>> tiles;  // decoded, blended in place as upstream does
    for (std::int64_t i = 0; i < h; i += stride) {
      tiles.emplace_back();
      for (std::int64_t j = 0; j < w; j += stride) {
        const std::int64_t th = std::min(tile_latent, h - i), tw = std::min(tile_latent, w - j);
        Tensor<T> zt = Tensor<T>::empty({B, E, th, tw});
        for (std::int64_t be = 0; be < B * E; ++be)
          for (std::int64_t r = 0; r < th; ++r)
            std::copy(z.data() + (be * h + i + r) * w + j, z.data() + (be * h + i + r) * w + j + tw, zt.data() + (be * th + r) * tw);
        tiles.back().push_back(decode(zt));
      }
    }
    const std::int64_t H = h * f, W = w * f;
    Tensor<T> out = Tensor<T>::empty({B, C, H, W});
    std::int64_t y0 = 0;
    for (std::size_t ti = 0; ti < tiles.size(); ++ti) {
      std::int64_t x0 = 0, rows_kept = 0;
      for (std::size_t tj = 0; tj < tiles[ti].size(); ++tj) {
        Tensor<T>& b = tiles[ti][tj];
        const std::int64_t bh = b.size(2), bw = b.size(3);
        if (ti > 0) {  // blend_v with the tile above
          const Tensor<T>& a = tiles[ti - 1][tj];
          const std::int64_t ah = a.size(2), e = std::min({ah, bh, blend});
          for (std::int64_t bc = 0; bc < B * C; ++bc)
            for (std::int64_t y = 0; y < e; ++y) {
              const T wb = static_cast<T>(static_cast<double>(y) / static_cast<double>(e)), wa = T(1) - wb;
              const T* ar = a.data() + (bc * ah + ah - e + y) * a.size(3);
              T* br = b.data() + (bc * bh + y) * bw;
              for (std::int64_t x = 0; x < std::min(bw, a.size(3)); ++x) br[x] = ar[x] * wa + br[x] * wb;
            }
        }
        if (tj > 0) {  // blend_h with the tile to the left
          const Tensor<T>& a = tiles[ti][tj - 1];
          const std::int64_t aw = a.size(3), e = std::min({aw, bw, blend});
          for (std::int64_t bc = 0; bc < B * C; ++bc)
            for (std::int64_t y = 0; y < std::min(bh, a.size(2)); ++y)
              for (std::int64_t x = 0; x < e; ++x) {
                const T wb = static_cast<T>(static_cast<double>(x) / static_cast<double>(e)), wa = T(1) - wb;
                T& v = b.data()[(bc * bh + y) * bw + x];
                v = a.data()[(bc * a.size(2) + y) * aw + aw - e + x] * wa + v * wb;
              }
        }
        // keep the top-left keep x keep of the tile
        const std::int64_t kh = std::min(keep, bh), kw = std::min(keep, bw);
        for (std::int64_t bc = 0; bc < B * C; ++bc)
          for (std::int64_t y = 0; y < kh && y0 + y < H; ++y)
            std::copy(b.data() + (bc * bh + y) * bw, b.data() + (bc * bh + y) * bw + std::min(kw, W - x0),
                      out.data() + (bc * H + y0 + y) * W + x0);
        x0 += kw;
        rows_kept = kh;
      }
      y0 += rows_kept;
    }
    if (y0 != H)
      throw ShapeError(cat("AutoencoderKL.decode_tiled: tiles of ", tile_latent, " with overlap ", overlap, " do not cover a ", h, " x ", w,
                           " latent (kept ", y0, " of ", H, " rows); use a smaller overlap or larger tiles"));
    return out;
  }

 private:
  void check_images(const Tensor<T>& x, const char* who) const {
    const std::int64_t f = std::int64_t{1} << (config.ch_mult.size() - 1);
    if (x.dim() != 4 || x.size(1) != config.in_channels || x.size(2) % f || x.size(3) % f)
      throw ShapeError(ditto::detail::cat(who, ": expected images (B, ", config.in_channels, ", H, W) with H and W divisible by ", f, ", got ",
                                          shape_str(x.shape())));
    detail::require_samples(who, x.size(0), x.shape());
  }
  void check_latent(const Tensor<T>& z, const char* who) const {
    if (z.dim() != 4 || z.size(1) != config.embed_dim)
      throw ShapeError(ditto::detail::cat(who, ": expected z (B, ", config.embed_dim, ", h, w), got ", shape_str(z.shape())));
    detail::require_samples(who, z.size(0), z.shape());
  }
  // quant_conv's output (B, 2E, h, w) -> mean, logvar (unclamped)
  Posterior split_moments(const Tensor<T>& moments) const {
    const std::int64_t B = moments.size(0), E = config.embed_dim, S = moments.size(2) * moments.size(3);
    Posterior p{Tensor<T>::empty({B, E, moments.size(2), moments.size(3)}), Tensor<T>::empty({B, E, moments.size(2), moments.size(3)})};
    for (std::int64_t b = 0; b < B; ++b) {
      std::copy(moments.data() + b * 2 * E * S, moments.data() + (b * 2 + 1) * E * S, p.mean.data() + b * E * S);
      std::copy(moments.data() + (b * 2 + 1) * E * S, moments.data() + (b + 1) * 2 * E * S, p.logvar.data() + b * E * S);
    }
    return p;
  }
  Tensor<T> unscale(const Tensor<T>& z) const {
    Tensor<T> u = Tensor<T>::empty(z.shape());
    const T inv = static_cast<T>(1.0 / config.scale_factor);
    for (std::int64_t i = 0; i < z.numel(); ++i) u[i] = inv * z[i];
    return u;
  }
  VAEMid<T> make_mid(std::int64_t c) const {
    VAEMid<T> m;
    m.block_1 = VAEResnetBlock<T>(c, c);
    m.block_2 = VAEResnetBlock<T>(c, c);
    m.attention = config.attention;
    if (config.attention) m.attn_1 = VAEAttnBlock<T>(c);
    return m;
  }
};

// The diffusers name of one of AutoencoderKL's parameters (diffusers' own converter,
// convert_ldm_vae_checkpoint, maps them the same way): down.N.block.M -> down_blocks.N.resnets.M,
// nin_shortcut -> conv_shortcut, downsample / upsample -> downsamplers.0 / upsamplers.0,
// decoder.up.N -> up_blocks.(levels - 1 - N), mid.block_1 / block_2 -> mid_block.resnets.0 / 1,
// mid.attn_1.{norm, q, k, v, proj_out} -> mid_block.attentions.0.{group_norm, to_q, to_k, to_v,
// to_out.0} (old diffusers: query, key, value, proj_attn), norm_out -> conv_norm_out.
inline std::vector<std::string> diffusers_vae_names(const std::string& name, std::size_t levels) {
  auto starts = [&](const std::string& p) { return name.rfind(p, 0) == 0; };
  auto replace = [](std::string s, const std::string& from, const std::string& to) {
    const auto at = s.find(from);
    return at == std::string::npos ? s : s.substr(0, at) + to + s.substr(at + from.size());
  };
  std::string n = name;
  for (const char* part : {"encoder.down.", "decoder.up."}) {
    if (!starts(part)) continue;
    const std::size_t i0 = std::string(part).size(), i1 = n.find('.', i0);
    std::size_t level = std::stoul(n.substr(i0, i1 - i0));
    if (std::string(part) == "decoder.up.") level = levels - 1 - level;
    std::string rest = n.substr(i1 + 1);
    rest = replace(replace(replace(rest, "block.", "resnets."), "downsample.", "downsamplers.0."), "upsample.", "upsamplers.0.");
    n = std::string(part).substr(0, std::string(part).size() - 1) + "_blocks." + std::to_string(level) + "." + rest;
  }
  n = replace(replace(n, "nin_shortcut", "conv_shortcut"), "norm_out", "conv_norm_out");
  n = replace(replace(n, "mid.block_1.", "mid_block.resnets.0."), "mid.block_2.", "mid_block.resnets.1.");
  if (n.find("mid.attn_1.") == std::string::npos) return {n};
  n = replace(n, "mid.attn_1.", "mid_block.attentions.0.");
  const std::string stem = n.substr(0, n.rfind('.', n.rfind('.') - 1) + 1), leaf = n.substr(stem.size());  // e.g. "q.weight"
  const std::string part = leaf.substr(0, leaf.find('.')), kind = leaf.substr(leaf.find('.'));
  if (part == "norm") return {stem + "group_norm" + kind};
  const std::string now = part == "proj_out" ? "to_out.0" : "to_" + part;
  const std::string old = part == "q" ? "query" : part == "k" ? "key" : part == "v" ? "value" : "proj_attn";
  return {stem + now + kind, stem + old + kind};
}

// diffusers' layout of AutoencoderKL's weights as a conversion table (nn/state_dict.hpp): one
// rule per parameter, from diffusers_vae_names (old diffusers' query / key / value / proj_attn
// as the alternative of to_q / to_k / to_v / to_out.0), squeezing the 1x1 convolutions: the
// attention projections, Linear (C, C) in diffusers, load into them.
template <class T>
inline nn::ConversionTable diffusers_vae_table(AutoencoderKL<T>& vae) {
  nn::ConversionTable table;
  for (auto& [name, t] : nn::named_parameters<T>(vae)) {
    std::string sources;
    for (const auto& n : diffusers_vae_names(name, vae.config.ch_mult.size())) sources += (sources.empty() ? "" : "|") + n;
    const bool pointwise = t->dim() == 4 && t->size(2) == 1 && t->size(3) == 1;  // a 1x1 conv: diffusers may hold a Linear
    table.push_back({name, {sources}, pointwise});
  }
  return table;
}
// Loads AutoencoderKL weights saved under diffusers' names (a diffusers
// diffusion_pytorch_model.safetensors) through that table, strictly by default: every
// parameter present, nothing extra, missing ones named as diffusers names them.
template <class T>
inline nn::LoadReport load_diffusers(AutoencoderKL<T>& vae, const SafetensorsFile& file, bool strict = true) {
  return nn::load<T>(vae, file, diffusers_vae_table(vae), strict);
}

// Whether a weights file uses diffusers' names (it has encoder.conv_norm_out, which CompVis
// calls encoder.norm_out).
inline bool has_diffusers_vae_names(const SafetensorsFile& file) { return file.contains("encoder.conv_norm_out.weight"); }

// The initialization ldm's AutoencoderKL trains from (it sets none of its own): torch's defaults,
// every convolution's weight and bias uniform in +-1/sqrt(fan_in) (the layer weight's fan-in),
// GroupNorms 1 and 0.
template <class T>
inline void initialize_weights(AutoencoderKL<T>& m, Generator& gen) {
  const auto params = nn::trainable_parameters<T>(m);
  std::map<std::string, std::int64_t> fan_in;  // layer -> its weight's numel / out channels
  for (auto& [name, t] : params)
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && t->dim() == 4) fan_in[name.substr(0, name.size() - 7)] = t->numel() / t->size(0);
  for (auto& [name, t] : params) {
    const std::string layer = name.substr(0, name.rfind('.')), leaf = name.substr(name.rfind('.') + 1);
    if (const auto f = fan_in.find(layer); f != fan_in.end()) nn::default_uniform(*t, gen, f->second);
    else if (t->dim() == 1) nn::fill_constant(*t, leaf == "weight" ? 1.0 : 0.0);  // a GroupNorm
    else throw ArgumentError("initialize_weights(AutoencoderKL): no rule for " + name);
  }
}

}  // namespace ditto::models
