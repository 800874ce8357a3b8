// Latte (Ma et al. 2024), the video diffusion transformer, as Vchitect/Latte's models/latte.py
// builds it (the paper's variant 1: spatial and temporal blocks interleaved), with its
// state-dict names, plus models/latte_img.py's image-video joint input and the paper's other
// variants. Its blocks are DiT's (adaLN-Zero), built from nn/'s adaLN and conditioning pieces.
//
//   models::Latte<float> latte(models::LatteConfig::from_json(kwargs));
//   nn::load<float>(latte, "latte.safetensors");
//   auto out = latte.forward(x, t, &y);       // x (B, F, C, H, W) as upstream takes it; y: extras == 2
//   latte.forward(x, t, nullptr, {}, 0, nullptr, &text);  // extras == 78: text (B, 77, 768)
//
// The paper's four model variants (sec. 3.2, fig. 2), chosen by `variant` (a ditto extension;
// upstream's code is variant 1 only):
//   1 interleaved: even blocks attend within each frame, odd blocks across the frames at each
//     spatial position (upstream);
//   2 late fusion: the first depth/2 blocks attend within frames, the rest across frames;
//   3 factorized self-attention: every block attends within the frame (attn), then across frames
//     (attn_temporal), then its MLP; adaLN gives it nine vectors instead of six;
//   4 factorized dot-product attention: every block's heads split, the first num_heads/2 within
//     the frame and the rest across frames, one projection over all.
// The frame embedding temp_embed joins the tokens before the first block that attends across
// frames (after block 0 in variant 1, as upstream).
// Timestep (and class) injection, `timestep_injection` (also a ditto extension):
//   "adaln" (upstream, the paper's S-AdaLN): c = t_emb + y_emb modulates every block, DiT-style;
//   "token" (the paper's "all tokens"): c is one more token at the head of every frame's tokens;
//     blocks are plain pre-norm blocks (norm1, attn, norm2, mlp: LayerNorm with affine, eps 1e-6),
//     the condition token travels across frames like any position, and the final layer
//     (norm_final with affine, linear) reads the patch tokens only.
//
// Tokens stay in (batch, frame, position) order throughout: temporal attention reads rows one
// frame apart (Attention::forward_strided_into) instead of transposing the video twice per block
// pair as upstream does, and where the condition is the same for every frame and position of a
// video, every block modulates with one row per video.
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
#include "../nn/adaln.hpp"
#include "../nn/attention.hpp"
#include "../nn/buffers.hpp"
#include "../nn/conditioning.hpp"
#include "../nn/embedding.hpp"
#include "../nn/init.hpp"
#include "../nn/linear.hpp"
#include "../nn/mlp.hpp"
#include "../nn/module.hpp"
#include "../nn/state_dict.hpp"
#include "../nn/norm.hpp"
#include "../nn/patch.hpp"
#include "config.hpp"

namespace ditto::models {

using nn::crop_to_patches;
using nn::FinalLayer;
using nn::LabelEmbedder;
using nn::TimestepEmbedder;
using nn::Trace;
using diffusion::repeat_first_half;

// Latte.__init__'s arguments, with its defaults (Latte-XL/2, 16 frames), and ditto's three
// extensions: variant, timestep_injection and label_factors.
struct LatteConfig {
  std::int64_t input_size = 32, patch_size = 2, in_channels = 4, hidden_size = 1152, depth = 28, num_heads = 16;
  double mlp_ratio = 4.0;
  std::int64_t num_frames = 16;
  double class_dropout_prob = 0.1;
  std::int64_t num_classes = 1000;
  bool learn_sigma = true;
  std::int64_t extras = 1;             // 1: timestep only; 2: + class labels; 78: + a (B, 77, 768) text embedding
  static constexpr std::int64_t text_features = 77 * 768;  // extras == 78: upstream's Linear(77 * 768, hidden_size)
  std::string attention_mode = "math";  // math, xformers or flash: the same attention
  std::int64_t variant = 1;             // the paper's model variants 1-4 (upstream: 1)
  std::string timestep_injection = "adaln";  // or "token"
  // > 1: the num_classes labels are pairs (a, b), y = a * label_factors + b (a class and a motion
  // direction), embedded as the sum of two tables (nn::LabelEmbedder's factors); 1: one table (upstream)
  std::int64_t label_factors = 1;

  std::int64_t out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  std::int64_t grid() const { return input_size / patch_size; }
  std::int64_t mlp_hidden() const { return detail::scaled_width(hidden_size, mlp_ratio); }
  bool adaln() const { return timestep_injection == "adaln"; }
  // tokens of one frame: the patches, and the condition token when it is one
  std::int64_t frame_tokens() const { return grid() * grid() + (adaln() ? 0 : 1); }

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
    c.variant = kw.get("variant", c.variant);
    c.timestep_injection = kw.get("timestep_injection", c.timestep_injection);
    c.label_factors = kw.get("label_factors", c.label_factors);
    kw.finish();
    c.validate();
    return c;
  }

  // A lower bound on the parameter count: the blocks' matrices (with adaLN: 10 D x D each), the
  // patch embedding, the final projection and, for extras == 2, the label table.
  double min_weights() const {
    const double D = static_cast<double>(hidden_size), pp = static_cast<double>(patch_size * patch_size);
    return detail::transformer_weights(depth, hidden_size, mlp_hidden(), adaln() ? 10 : 4) +
           (extras == 2 ? static_cast<double>(num_classes / label_factors + (label_factors > 1 ? label_factors : 0)) * D : 0.0) + pp * static_cast<double>(in_channels + out_channels()) * D;
  }

  void validate() const {
    using ditto::detail::cat;
    detail::validate_dit_shape("Latte", input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_hidden(), mlp_ratio,
                               class_dropout_prob);
    if (variant < 1 || variant > 4)
      throw ArgumentError(cat("Latte config: variant must be 1 (interleaved, upstream), 2 (late fusion), 3 (factorized self-attention) "
                              "or 4 (factorized dot-product attention), got ", variant));
    if ((variant == 1 || variant == 2) && (depth < 0 || depth % 2))
      throw ArgumentError(cat("Latte config: depth must be even and >= 0 (spatial and temporal blocks in pairs) for variant ", variant, ", got ", depth));
    if (variant == 4 && num_heads % 2)
      throw ArgumentError(cat("Latte config: variant 4 splits the heads in half (spatial, temporal), so num_heads must be even, got ", num_heads));
    if (timestep_injection != "adaln" && timestep_injection != "token")
      throw ArgumentError("Latte config: timestep_injection must be \"adaln\" or \"token\", got \"" + timestep_injection + "\"");
    if (num_frames < 1) throw ArgumentError(cat("Latte config: num_frames must be >= 1, got ", num_frames));
    if (extras == 2 && num_classes < 1)
      throw ArgumentError(cat("Latte config: a class-conditional model (extras = 2) needs num_classes >= 1, got ", num_classes));
    if (label_factors < 1) throw ArgumentError(cat("Latte config: label_factors must be >= 1, got ", label_factors));
    if (label_factors > 1 && (extras != 2 || num_classes % label_factors != 0))
      throw ArgumentError(cat("Latte config: label_factors ", label_factors, " splits each class label in two parts, so it needs extras = 2 (got ", extras,
                              ") and num_classes divisible by it (got ", num_classes, ")"));
    if (extras != 1 && extras != 2 && extras != 78)
      throw ArgumentError(cat("Latte config: extras must be 1 (timestep), 2 (+ class labels) or 78 (+ text embedding), got ", extras));
    if (attention_mode != "math" && attention_mode != "xformers" && attention_mode != "flash")
      throw ArgumentError("Latte config: attention_mode must be math, xformers or flash, got \"" + attention_mode + "\"");
    detail::check_weights_fit("Latte", min_weights());
  }
};

// Which tokens a Latte block's attention sees.
enum class LatteAttends { frame, time, frame_then_time, split_heads };

// Where the sequences lie in the (batch, frame, position) token rows: frames: cu of each frame;
// positions: the first row of each (video, position) sequence, `length` rows `stride` apart.
struct LatteLayout {
  std::vector<std::int64_t> frames, positions;
  std::int64_t length = 0, stride = 0;
};

// One Latte block: DiT's block (adaLN) or a plain pre-norm block (token injection) attending as
// `attends` says. adaLN chunks: shift, scale, gate per attention, then for the MLP.
template <class T = float>
struct LatteBlock {
  LatteAttends attends = LatteAttends::frame;
  bool adaln = true;
  std::int64_t hidden_size = 0;
  nn::Attention<T> attn, attn_temporal;    // attn_temporal: frame_then_time
  nn::Mlp<T> mlp;
  nn::LayerNorm<T> norm1, norm_temporal, norm2;  // token injection
  nn::Linear<T> adaLN_modulation;           // adaLN: "adaLN_modulation.1", D -> 6D (9D with two attentions)

  LatteBlock() = default;
  LatteBlock(const LatteConfig& c, LatteAttends a)
      : attends(a), adaln(c.adaln()), hidden_size(c.hidden_size), attn(c.hidden_size, c.num_heads, /*qkv_bias=*/true),
        mlp(c.hidden_size, c.mlp_hidden(), c.hidden_size, nn::Activation::gelu_tanh) {
    const std::int64_t D = c.hidden_size;
    if (two_attentions()) attn_temporal = nn::Attention<T>(D, c.num_heads, true);
    if (adaln) adaLN_modulation = nn::Linear<T>(D, chunks() * D);
    else {
      norm1 = nn::LayerNorm<T>(D, 1e-6), norm2 = nn::LayerNorm<T>(D, 1e-6);  // not one copied: copies share storage
      if (two_attentions()) norm_temporal = nn::LayerNorm<T>(D, 1e-6);
    }
  }
  bool two_attentions() const { return attends == LatteAttends::frame_then_time; }
  std::int64_t chunks() const { return two_attentions() ? 9 : 6; }

  template <class V>
  void visit(V& v) {
    if (!adaln) v("norm1", norm1);
    v("attn", attn);
    if (two_attentions()) {
      if (!adaln) v("norm_temporal", norm_temporal);
      v("attn_temporal", attn_temporal);
    }
    if (!adaln) v("norm2", norm2);
    v("mlp", mlp);
    if (adaln) v("adaLN_modulation.1", adaLN_modulation);
  }

  // x: `rows` token rows of D in place, laid out as L says. adaLN: mod holds chunks() * D per
  // condition, one condition per rows_per_cond consecutive rows.
  void forward(T* x, std::int64_t rows, std::int64_t rows_per_cond, const T* mod, const LatteLayout& L, nn::BlockBuffers<T>& buf) const {
    const std::int64_t D = hidden_size;
    auto spatial = [&](const nn::Attention<T>& a, const T* h, T* y) { a.forward_packed_into(h, L.frames, y, buf.qkv.data(), buf.o.data()); };
    auto temporal = [&](const nn::Attention<T>& a, const T* h, T* y) {
      a.forward_strided_into(h, rows, L.positions, L.length, L.stride, y, buf.qkv.data(), buf.o.data());
    };
    auto first = [&](const T* h, T* y) {
      if (attends == LatteAttends::time) temporal(attn, h, y);
      else if (attends == LatteAttends::split_heads)
        nn::factorized_dot_product_attention(attn, h, y, rows, L.frames, L.positions, L.length, L.stride, buf.qkv.data(), buf.o.data());
      else spatial(attn, h, y);
    };
    // one residual branch: x += gate * f(modulate(norm(x))) (adaLN) or x += f(norm(x)) (token)
    std::int64_t chunk = 0;
    auto branch = [&](const nn::LayerNorm<T>& norm, auto&& f) {
      if (adaln) {
        const std::int64_t S = chunks() * D;
        nn::norm_modulate(x, buf.h.data(), rows, rows_per_cond, D, mod + chunk * D, mod + (chunk + 1) * D, S, 1e-6);
        f(buf.h.data(), buf.y.data());
        nn::gated_add(x, buf.y.data(), rows, rows_per_cond, D, mod + (chunk + 2) * D, S);
        chunk += 3;
      } else {
        norm.forward_into(x, buf.h.data(), rows);
        f(buf.h.data(), buf.y.data());
        parallel_for(rows, rows * D, [&](std::int64_t lo, std::int64_t hi) {
          for (std::int64_t i = lo * D; i < hi * D; ++i) x[i] += buf.y[i];
        });
      }
    };
    branch(norm1, first);
    if (two_attentions()) branch(norm_temporal, [&](const T* h, T* y) { temporal(attn_temporal, h, y); });
    branch(norm2, [&](const T* h, T* y) { mlp.forward_into(h, y, rows, buf.hidden.data()); });
  }

  // Training: per residual branch its input, its norm's statistics and output, its output (the
  // gate's gradient) and the attention's activations; the MLP's pre-activation.
  struct Branch {
    Tensor<T> x, mean, rstd, h, y;
    typename nn::Attention<T>::Acts attn;
  };
  struct Acts {
    Branch first, temporal, mlp;
    Tensor<T> pre;
  };
  void forward_train(T* x, std::int64_t rows, std::int64_t rows_per_cond, const T* mod, const LatteLayout& L, Acts& a) const {
    std::int64_t chunk = 0;
    branch_train(x, rows, rows_per_cond, mod, chunk, norm1, a.first, [&](const T* h, T* y, typename nn::Attention<T>::Acts& aa) {
      if (attends == LatteAttends::time) attn.forward_train(h, rows, temporal_sequences(L), y, aa);
      else if (attends == LatteAttends::split_heads)
        nn::factorized_dot_product_attention_train(attn, h, y, rows, L.frames, L.positions, L.length, L.stride, aa);
      else attn.forward_train(h, rows, nn::Attention<T>::Sequences::packed(L.frames), y, aa);
    });
    if (two_attentions())
      branch_train(x, rows, rows_per_cond, mod, chunk, norm_temporal, a.temporal, [&](const T* h, T* y, typename nn::Attention<T>::Acts& aa) {
        attn_temporal.forward_train(h, rows, temporal_sequences(L), y, aa);
      });
    branch_train(x, rows, rows_per_cond, mod, chunk, norm2, a.mlp, [&](const T* h, T* y, typename nn::Attention<T>::Acts&) {
      a.pre = Tensor<T>::empty({rows, mlp.fc1.out_features});
      Tensor<T> hidden = Tensor<T>::empty({rows, mlp.fc1.out_features});
      mlp.forward_train(h, y, rows, a.pre.data(), hidden.data());
    });
  }
  // dx: the output's gradient, replaced by the input's. Accumulates g and, with adaLN, dmod
  // (mod's layout). The branches in reverse.
  void backward(T* dx, LatteBlock& g, T* dmod, const T* mod, std::int64_t rows, std::int64_t rows_per_cond, const LatteLayout& L,
                const Acts& a) const {
    std::int64_t chunk = chunks() - 3;
    branch_backward(dx, dmod, mod, rows, rows_per_cond, chunk, norm2, g.norm2, a.mlp, [&](T* dh, const T* dy) {
      mlp.backward_into(dh, g.mlp, dy, a.mlp.h.data(), a.pre.data(), rows);
    });
    if (two_attentions())
      branch_backward(dx, dmod, mod, rows, rows_per_cond, chunk, norm_temporal, g.norm_temporal, a.temporal, [&](T* dh, const T* dy) {
        attn_temporal.backward(dh, g.attn_temporal, dy, a.temporal.h.data(), rows, temporal_sequences(L), a.temporal.attn);
      });
    branch_backward(dx, dmod, mod, rows, rows_per_cond, chunk, norm1, g.norm1, a.first, [&](T* dh, const T* dy) {
      if (attends == LatteAttends::time) attn.backward(dh, g.attn, dy, a.first.h.data(), rows, temporal_sequences(L), a.first.attn);
      else if (attends == LatteAttends::split_heads)
        nn::factorized_dot_product_attention_backward(attn, g.attn, dh, dy, a.first.h.data(), rows, L.frames, L.positions, L.length, L.stride,
                                                      a.first.attn);
      else attn.backward(dh, g.attn, dy, a.first.h.data(), rows, nn::Attention<T>::Sequences::packed(L.frames), a.first.attn);
    });
  }

 private:
  static typename nn::Attention<T>::Sequences temporal_sequences(const LatteLayout& L) {
    return nn::Attention<T>::Sequences::strided(L.positions, L.length, L.stride);
  }
  // One residual branch, x += gate * f(modulate(norm(x))) (adaLN) or x += f(norm(x)) (token),
  // keeping what branch_backward reads; chunk: the branch's first adaLN chunk, advanced by 3.
  template <class F>
  void branch_train(T* x, std::int64_t rows, std::int64_t n, const T* mod, std::int64_t& chunk, const nn::LayerNorm<T>& norm, Branch& b,
                    F&& f) const {
    const std::int64_t D = hidden_size, S = chunks() * D;
    for (auto* t : {&b.x, &b.h, &b.y}) *t = Tensor<T>::empty({rows, D});
    b.mean = Tensor<T>::empty({rows}), b.rstd = Tensor<T>::empty({rows});
    std::copy(x, x + rows * D, b.x.data());
    if (adaln) nn::norm_modulate(x, b.h.data(), rows, n, D, mod + chunk * D, mod + (chunk + 1) * D, S, 1e-6, b.mean.data(), b.rstd.data());
    else norm.forward_train(x, b.h.data(), rows, b.mean.data(), b.rstd.data());
    f(b.h.data(), b.y.data(), b.attn);
    if (adaln) nn::gated_add(x, b.y.data(), rows, n, D, mod + (chunk + 2) * D, S);
    else for (std::int64_t i = 0; i < rows * D; ++i) x[i] += b.y[i];
    chunk += 3;
  }
  // f_back(dh, dy) accumulates dh (the normed rows' gradient) from dy (the branch output's).
  template <class F>
  void branch_backward(T* dx, T* dmod, const T* mod, std::int64_t rows, std::int64_t n, std::int64_t& chunk, const nn::LayerNorm<T>& norm,
                       nn::LayerNorm<T>& gnorm, const Branch& b, F&& f_back) const {
    const std::int64_t D = hidden_size, S = chunks() * D;
    Tensor<T> dy({rows, D}), dh({rows, D});
    if (adaln) nn::gated_add_backward(dy.data(), dmod + (chunk + 2) * D, dx, b.y.data(), mod + (chunk + 2) * D, rows, n, D, S);
    else std::copy(dx, dx + rows * D, dy.data());
    f_back(dh.data(), dy.data());
    if (adaln)
      nn::norm_modulate_backward(dx, dmod + chunk * D, dmod + (chunk + 1) * D, dh.data(), b.x.data(), b.mean.data(), b.rstd.data(),
                                 mod + (chunk + 1) * D, rows, n, D, S);
    else norm.backward_into(dx, gnorm, dh.data(), b.x.data(), b.mean.data(), b.rstd.data(), rows);
    chunk -= 3;
  }
};

// The token-injection model's last layer: LayerNorm (affine, eps 1e-6) and the linear
// projection to patches, on the patch tokens.
template <class T = float>
struct LatteTokenFinalLayer {
  nn::LayerNorm<T> norm_final;
  nn::Linear<T> linear;
  template <class V>
  void visit(V& v) {
    v("norm_final", norm_final);
    v("linear", linear);
  }
};

template <class T = float>
struct Latte {
  LatteConfig config;
  nn::PatchEmbed<T> x_embedder;
  TimestepEmbedder<T> t_embedder;
  LabelEmbedder<T> y_embedder;  // extras == 2
  nn::Linear<T> text_embedding_projection;  // extras == 78: "text_embedding_projection.1" (SiLU is module 0)
  Tensor<T> pos_embed, temp_embed;  // (1, positions, D), (1, num_frames, D): fixed sin-cos, stored in checkpoints
  std::vector<LatteBlock<T>> blocks;
  FinalLayer<T> final_layer;                 // adaLN
  LatteTokenFinalLayer<T> token_final_layer;  // token injection: "final_layer"
  mutable nn::BlockBuffers<T> buffers;

  Latte() = default;
  explicit Latte(const LatteConfig& c) : config(c) {
    c.validate();
    const std::int64_t D = c.hidden_size, g = c.grid();
    x_embedder = nn::PatchEmbed<T>(c.patch_size, c.in_channels, D);
    t_embedder = TimestepEmbedder<T>(D);
    if (c.extras == 2) y_embedder = LabelEmbedder<T>(c.num_classes, D, c.class_dropout_prob, "Latte", c.label_factors);
    if (c.extras == 78) text_embedding_projection = nn::Linear<T>(LatteConfig::text_features, D);
    pos_embed = nn::sincos_pos_embed_2d<T>(D, g, g).reshape({1, g * g, D});
    temp_embed = nn::sincos_pos_embed_1d<T>(D, c.num_frames).reshape({1, c.num_frames, D});
    for (std::int64_t i = 0; i < c.depth; ++i) blocks.emplace_back(c, attends(i));
    const std::int64_t P = c.patch_size * c.patch_size * c.out_channels();
    if (c.adaln()) final_layer = FinalLayer<T>(D, c.patch_size, c.out_channels());
    else token_final_layer = LatteTokenFinalLayer<T>{nn::LayerNorm<T>(D, 1e-6), nn::Linear<T>(D, P)};
  }

  LatteAttends attends(std::int64_t i) const {
    switch (config.variant) {
      case 1: return i % 2 ? LatteAttends::time : LatteAttends::frame;
      case 2: return i < config.depth / 2 ? LatteAttends::frame : LatteAttends::time;
      case 3: return LatteAttends::frame_then_time;
      default: return LatteAttends::split_heads;
    }
  }
  // temp_embed joins before the first block that attends across frames
  std::int64_t temp_embed_block() const {
    for (std::int64_t i = 0; i < config.depth; ++i)
      if (attends(i) != LatteAttends::frame) return i;
    return config.depth;
  }

  // The conditions every block and the final layer read: cond = t_emb (+ y_emb) (+ text
  // projection) per video; with labelled images, frame_cond per frame (the video's cond for the
  // video frames, t_emb + the image's label embedding for the images); their SiLUs; silu_final,
  // the final layer's (t (+ y), never the text, as upstream).
  struct Conditions {
    Tensor<T> cond, frame_cond, silu_c, silu_frame, silu_final;
  };
  // How block i runs: `calls` calls x_step values apart on `rows` rows (a temporal block beside
  // images: once per video, on its video frames), its condition rows (B, or B Ft per frame).
  struct BlockCall {
    std::int64_t calls = 1, x_step = 0, rows = 0, rows_per_cond = 0, conditions = 0;
    bool per_frame = false;
    const LatteLayout* layout = nullptr;
    const Tensor<T>& silu(const Conditions& cd) const { return per_frame ? cd.silu_frame : cd.silu_c; }
  };
  template <class V>
  void visit(V& v) {
    v("pos_embed", pos_embed, nn::fixed);  // requires_grad=False upstream: in checkpoints, never trained
    v("temp_embed", temp_embed, nn::fixed);
    v("x_embedder", x_embedder);
    v("t_embedder", t_embedder);
    if (config.extras == 2) v("y_embedder", y_embedder);
    if (config.extras == 78) v("text_embedding_projection.1", text_embedding_projection);
    v("blocks", blocks);
    if (config.adaln()) v("final_layer", final_layer);
    else v("final_layer", token_final_layer);
  }

  // x: (B, num_frames + use_image_num, in_channels, input_size, input_size); t: (B); y: (B)
  // labels when extras == 2 (required then, refused otherwise). use_image_num, y_image: as
  // models/latte_img.py: the last use_image_num frames are images, which the temporal blocks
  // leave alone; with extras == 2 their labels are y_image (B, use_image_num), as upstream's
  // training forward takes them (its eval forward cannot combine images and labels).
  // text_embedding: (B, 77, 768) when extras == 78 (required then, refused otherwise), as
  // models/latte.py: SiLU + Linear of the flattened embedding joins t in every block's condition,
  // while the final layer takes t alone, as upstream's does.
  // -> (B, frames, out_channels, H', W').
  Tensor<T> forward(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>* y = nullptr, const Trace<T>& trace = {},
                    std::int64_t use_image_num = 0, const Tensor<std::int64_t>* y_image = nullptr,
                    const Tensor<T>* text_embedding = nullptr) const {
    const LatteConfig& c = config;
    check_inputs(x, t, y, use_image_num, y_image, text_embedding);
    const std::int64_t I = use_image_num, F = c.num_frames, Ft = F + I;
    const std::int64_t B = x.size(0), g = c.grid(), N = g * g, Np = c.frame_tokens(), D = c.hidden_size;
    const bool image_labels = c.extras == 2 && I > 0;
    const Tensor<T> frames_in = x.reshape({B * Ft, c.in_channels, c.input_size, c.input_size});
    const Tensor<T> patches = x_embedder.forward(crop_to_patches(frames_in, c.patch_size));  // (B Ft, N, D)
    if (trace) trace("x_embedder", patches);
    const Tensor<T> temb = t_embedder.forward(t);  // (B, D)
    if (trace) trace("t_embedder", temb);
    std::optional<Tensor<T>> ye, te, yi;
    if (y) {
      ye = y_embedder.forward(*y);
      if (trace) trace("y_embedder", *ye);
    }
    if (text_embedding) {
      te = text_embedding_projection.forward(nn::silu(text_embedding->reshape({B, LatteConfig::text_features})));
      if (trace) trace("text_embedding_projection", *te);
    }
    if (image_labels) yi = y_embedder.forward(y_image->reshape({B * I}));
    const Conditions cd = conditions(temb, ye ? &*ye : nullptr, te ? &*te : nullptr, yi ? &*yi : nullptr, B, I);
    const std::int64_t rows = B * Ft * Np, lead = Np - N;
    Tensor<T> tokens = assemble(patches.data(), cd.cond, B, Ft);
    const auto layout = layouts(B, Ft);

    buffers.ensure(rows, D, c.mlp_hidden());
    Tensor<T> mod = Tensor<T>::empty({B * Ft, 9 * D});
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto& blk = blocks[i];
      if (static_cast<std::int64_t>(i) == temp_embed_block()) add_temp_embed(tokens.data(), B, Ft);
      const BlockCall bc = block_call(i, B, Ft, image_labels, layout);
      if (blk.adaln) blk.adaLN_modulation.forward_into(bc.silu(cd).data(), mod.data(), bc.conditions);
      for (std::int64_t k = 0; k < bc.calls; ++k)
        blk.forward(tokens.data() + k * bc.x_step, bc.rows, bc.rows_per_cond, mod.data() + k * blk.chunks() * D, *bc.layout, buffers);
      if (!trace) continue;
      if (blk.attends != LatteAttends::time) {
        trace("blocks." + std::to_string(i), tokens);
        continue;
      }
      Tensor<T> v = Tensor<T>::empty({B, F, Np, D});  // upstream's temporal blocks see the video frames as (b t) f d
      for (std::int64_t b = 0; b < B; ++b)
        std::copy(tokens.data() + b * Ft * Np * D, tokens.data() + (b * Ft + F) * Np * D, v.data() + b * F * Np * D);
      trace("blocks." + std::to_string(i), rearrange(v, "b f t d -> (b t) f d"));
    }
    const Tensor<T>& silu_frame = cd.silu_frame;
    const Tensor<T>& silu_final = cd.silu_final;

    const std::int64_t P = c.patch_size * c.patch_size * c.out_channels();
    Tensor<T> out;
    if (c.adaln()) {
      out = image_labels ? final_layer.forward(tokens.data(), B * Ft, N, silu_frame, buffers.h.data())
                         : final_layer.forward(tokens.data(), B, Ft * N, silu_final, buffers.h.data());
      out = out.reshape({B * Ft, N, P});
    } else {  // the patch tokens, without each frame's condition token
      for (std::int64_t bf = 0; bf < B * Ft; ++bf)
        std::copy(tokens.data() + (bf * Np + lead) * D, tokens.data() + (bf + 1) * Np * D, buffers.h.data() + bf * N * D);
      token_final_layer.norm_final.forward_into(buffers.h.data(), buffers.h.data(), B * Ft * N);
      out = Tensor<T>::empty({B * Ft, N, P});
      token_final_layer.linear.forward_into(buffers.h.data(), out.data(), B * Ft * N);
    }
    if (trace) trace("final_layer", out);
    const Tensor<T> frames_out = nn::unpatchify(out, c.out_channels(), c.patch_size, g, g);  // (B Ft, C', H', W')
    return frames_out.reshape({B, Ft, c.out_channels(), g * c.patch_size, g * c.patch_size});
  }

  // Training (docs/training.md): what backward reads, kept by forward_train. Eval semantics: no
  // label dropout (upstream's model.eval(); latte_img.py's training forward with dropout 0).
  struct Acts {
    bool checkpoint = false, check_finite = false;  // as DiT::Acts: recompute blocks in backward; NaN/Inf checks
    std::int64_t B = 0, I = 0;
    Tensor<T> patches;                      // (B Ft N, C p p): x_embedder's input rows
    std::optional<Tensor<std::int64_t>> y, y_image;
    Tensor<T> text;                         // (B, 77 768): the flattened text embedding
    Shape text_shape;                       // as the caller gave it
    typename TimestepEmbedder<T>::Acts t_acts;
    Tensor<T> temb;
    Conditions cd;
    std::vector<Tensor<T>> mods;            // per block: adaLN_modulation's output
    std::vector<std::vector<typename LatteBlock<T>::Acts>> blocks;  // per block, per call
    std::vector<Tensor<T>> block_in;        // checkpoint: each block's input
    typename FinalLayer<T>::Acts final_layer;
    Tensor<T> final_x, final_mean, final_rstd, final_h;  // token injection: norm_final and linear
  };

  // As forward (no trace): -> (B, frames, out_channels, H', W').
  Tensor<T> forward_train(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>* y, Acts& a, std::int64_t use_image_num = 0,
                          const Tensor<std::int64_t>* y_image = nullptr, const Tensor<T>* text_embedding = nullptr) const {
    const LatteConfig& c = config;
    check_inputs(x, t, y, use_image_num, y_image, text_embedding);
    const std::int64_t I = use_image_num, Ft = c.num_frames + I, B = x.size(0), g = c.grid(), N = g * g, Np = c.frame_tokens();
    const std::int64_t D = c.hidden_size, p = c.patch_size, lead = Np - N;
    const bool image_labels = c.extras == 2 && I > 0;
    a.B = B, a.I = I;
    a.patches = rearrange(crop_to_patches(x.reshape({B * Ft, c.in_channels, c.input_size, c.input_size}), p),
                          "b c (h p1) (w p2) -> (b h w) (c p1 p2)", {{"p1", p}, {"p2", p}});
    Tensor<T> patch_rows = Tensor<T>::empty({B * Ft * N, D});
    x_embedder.proj_rows(a.patches.data(), B * Ft * N, patch_rows.data());
    a.temb = t_embedder.forward_train(t, a.t_acts);
    std::optional<Tensor<T>> ye, te, yi;
    a.y.reset(), a.y_image.reset();
    if (y) a.y = y->clone(), ye = y_embedder.forward(*y);  // own copies: the caller may change its inputs before backward
    if (text_embedding) {
      a.text = text_embedding->reshape({B, LatteConfig::text_features}).clone();
      a.text_shape = text_embedding->shape();
      te = text_embedding_projection.forward(nn::silu(a.text));
    }
    if (image_labels) a.y_image = y_image->clone(), yi = y_embedder.forward(y_image->reshape({B * I}));
    a.cd = conditions(a.temb, ye ? &*ye : nullptr, te ? &*te : nullptr, yi ? &*yi : nullptr, B, I);
    Tensor<T> tokens = assemble(patch_rows.data(), a.cd.cond, B, Ft);
    const auto layout = layouts(B, Ft);
    a.mods.assign(blocks.size(), Tensor<T>());
    a.blocks.assign(blocks.size(), {});
    a.block_in.assign(a.checkpoint ? blocks.size() : 0, Tensor<T>());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (static_cast<std::int64_t>(i) == temp_embed_block()) add_temp_embed(tokens.data(), B, Ft);
      const BlockCall bc = block_call(i, B, Ft, image_labels, layout);
      if (blocks[i].adaln) a.mods[i] = blocks[i].adaLN_modulation.forward(bc.silu(a.cd));
      if (a.checkpoint) a.block_in[i] = tokens.clone();
      block_train(i, tokens.data(), bc, a.mods[i], a.checkpoint ? nullptr : &a.blocks[i]);
      if (a.check_finite) nn::require_finite<T>("Latte.blocks." + std::to_string(i), "output", tokens.data(), tokens.numel());
    }
    Tensor<T> out;
    if (c.adaln()) {
      out = image_labels ? final_layer.forward_train(tokens.data(), B * Ft, N, a.cd.silu_frame, a.final_layer)
                         : final_layer.forward_train(tokens.data(), B, Ft * N, a.cd.silu_final, a.final_layer);
    } else {  // the patch tokens, without each frame's condition token
      a.final_x = Tensor<T>::empty({B * Ft * N, D}), a.final_h = Tensor<T>::empty({B * Ft * N, D});
      a.final_mean = Tensor<T>::empty({B * Ft * N}), a.final_rstd = Tensor<T>::empty({B * Ft * N});
      for (std::int64_t bf = 0; bf < B * Ft; ++bf)
        std::copy(tokens.data() + (bf * Np + lead) * D, tokens.data() + (bf + 1) * Np * D, a.final_x.data() + bf * N * D);
      token_final_layer.norm_final.forward_train(a.final_x.data(), a.final_h.data(), B * Ft * N, a.final_mean.data(), a.final_rstd.data());
      out = token_final_layer.linear.forward(a.final_h);
    }
    if (a.check_finite) nn::require_finite<T>("Latte.final_layer", "output", out.data(), out.numel());
    return nn::unpatchify(out.reshape({B * Ft, N, p * p * c.out_channels()}), c.out_channels(), p, g, g)
        .reshape({B, Ft, c.out_channels(), g * p, g * p});
  }

  // dout: the gradient of forward_train's output. Accumulates g (nn::zeros_like of this model)
  // and sets *dx (x's shape; 0 where crop_to_patches cut) and, with text (extras 78), *dtext
  // (text_embedding's shape) when given.
  void backward(Latte& g, const Acts& a, const Tensor<T>& dout, Tensor<T>* dx = nullptr, Tensor<T>* dtext = nullptr) const {
    using ditto::detail::cat;
    const LatteConfig& c = config;
    const std::int64_t B = a.B, I = a.I, F = c.num_frames, Ft = F + I, gr = c.grid(), N = gr * gr, Np = c.frame_tokens(), lead = Np - N;
    const std::int64_t D = c.hidden_size, p = c.patch_size, rows = B * Ft * Np;
    const bool image_labels = c.extras == 2 && I > 0;
    if (B < 1 || a.blocks.size() != blocks.size() || a.patches.size(0) != B * Ft * N)
      throw ArgumentError("Latte.backward: the activations were not made by this model's forward_train");
    (void)nn::zip_parameters<T>(const_cast<Latte&>(*this), g, "Latte.backward");
    const Shape out_shape{B, Ft, c.out_channels(), gr * p, gr * p};
    if (dout.shape() != out_shape) throw ShapeError(cat("Latte.backward: expected dout of shape ", shape_str(out_shape), ", got ", shape_str(dout.shape())));
    if (a.block_in.size() != (a.checkpoint ? blocks.size() : 0))
      throw ArgumentError("Latte.backward: checkpoint was set after forward_train (set it before: the blocks' inputs were not kept)");
    if (a.check_finite) nn::require_finite<T>("Latte.backward's dout (the loss's gradient)", "value", dout.data(), dout.numel());
    const Tensor<T> dout_rows = nn::unpatchify_backward(dout.reshape({B * Ft, c.out_channels(), gr * p, gr * p}), p);  // (B Ft, N, P)
    Tensor<T> dtokens({rows, D}), dsilu_c({B, D}), dsilu_frame(image_labels ? Shape{B * Ft, D} : Shape{0}), dsilu_final({B, D});
    if (c.adaln()) {
      if (image_labels) final_layer.backward(dtokens.data(), g.final_layer, dsilu_frame.data(), a.cd.silu_frame, dout_rows, a.final_layer);
      else final_layer.backward(dtokens.data(), g.final_layer, dsilu_final.data(), a.cd.silu_final, dout_rows, a.final_layer);
    } else {
      const std::int64_t n = B * Ft * N;
      Tensor<T> dh({n, D}), drows({n, D});
      token_final_layer.linear.backward_into(dh.data(), g.token_final_layer.linear, dout_rows.data(), a.final_h.data(), n);
      token_final_layer.norm_final.backward_into(drows.data(), g.token_final_layer.norm_final, dh.data(), a.final_x.data(), a.final_mean.data(),
                                                 a.final_rstd.data(), n);
      for (std::int64_t bf = 0; bf < B * Ft; ++bf)
        std::copy(drows.data() + bf * N * D, drows.data() + (bf + 1) * N * D, dtokens.data() + (bf * Np + lead) * D);
    }
    if (a.check_finite) {
      if (c.adaln()) nn::require_finite<T>("Latte.final_layer", "input gradient", dtokens.data(), dtokens.numel(), &g.final_layer);
      else nn::require_finite<T>("Latte.final_layer", "input gradient", dtokens.data(), dtokens.numel(), &g.token_final_layer);
    }
    const auto layout = layouts(B, Ft);
    for (std::size_t i = blocks.size(); i-- > 0;) {
      const BlockCall bc = block_call(i, B, Ft, image_labels, layout);
      std::vector<typename LatteBlock<T>::Acts> recomputed;
      if (a.checkpoint) {
        Tensor<T> xi = a.block_in[i].clone();
        block_train(i, xi.data(), bc, a.mods[i], &recomputed);
      }
      const auto& acts = a.checkpoint ? recomputed : a.blocks[i];
      Tensor<T> dmod(blocks[i].adaln ? a.mods[i].shape() : Shape{0});
      const std::int64_t S = blocks[i].chunks() * D;
      for (std::int64_t k = 0; k < bc.calls; ++k)
        blocks[i].backward(dtokens.data() + k * bc.x_step, g.blocks[i], dmod.data() + (blocks[i].adaln ? k * S : 0),
                           blocks[i].adaln ? a.mods[i].data() + k * S : nullptr, bc.rows, bc.rows_per_cond, *bc.layout, acts[static_cast<std::size_t>(k)]);
      if (blocks[i].adaln)
        blocks[i].adaLN_modulation.backward_into(bc.per_frame ? dsilu_frame.data() : dsilu_c.data(), g.blocks[i].adaLN_modulation, dmod.data(),
                                                 bc.silu(a.cd).data(), bc.conditions);
      if (a.check_finite) nn::require_finite<T>("Latte.blocks." + std::to_string(i), "input gradient", dtokens.data(), dtokens.numel(), &g.blocks[i]);
    }
    // the conditions: SiLU's backward, then the sums that built them. The final layer reads
    // silu_final, which is silu_c itself unless there is text (then SiLU(t_emb)).
    Tensor<T> dcond({B, D}), dtemb({B, D});
    if (c.extras == 78) nn::activate_backward(dtemb.data(), dsilu_final.data(), a.temb.data(), B * D, nn::Activation::silu);
    else for (std::int64_t i = 0; i < B * D; ++i) dsilu_c[i] += dsilu_final[i];
    nn::activate_backward(dcond.data(), dsilu_c.data(), a.cd.cond.data(), B * D, nn::Activation::silu);
    if (lead)  // each frame's condition token is cond itself
      for (std::int64_t bf = 0; bf < B * Ft; ++bf)
        for (std::int64_t d = 0; d < D; ++d) dcond[(bf / Ft) * D + d] += dtokens[bf * Np * D + d];
    if (image_labels) {  // frame_cond: cond for the video frames, t_emb + y_image's embedding for the images
      Tensor<T> dframe({B * Ft, D}), dyi({B * I, D});
      nn::activate_backward(dframe.data(), dsilu_frame.data(), a.cd.frame_cond.data(), B * Ft * D, nn::Activation::silu);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t f = 0; f < Ft; ++f)
          for (std::int64_t d = 0; d < D; ++d) {
            const T v = dframe[(b * Ft + f) * D + d];
            if (f < F) dcond[b * D + d] += v;
            else dtemb[b * D + d] += v, dyi[(b * I + f - F) * D + d] = v;
          }
      y_embedder.backward(g.y_embedder, a.y_image->reshape({B * I}), dyi.data());
    }
    for (std::int64_t i = 0; i < B * D; ++i) dtemb[i] += dcond[i];
    if (a.y) y_embedder.backward(g.y_embedder, *a.y, dcond.data());
    if (c.extras == 78) {  // te = Linear(SiLU(text))
      const Tensor<T> silu_text = nn::silu(a.text);
      Tensor<T> dsilu_text({B, LatteConfig::text_features});
      text_embedding_projection.backward_into(dsilu_text.data(), g.text_embedding_projection, dcond.data(), silu_text.data(), B);
      if (dtext) {
        *dtext = Tensor<T>({B, LatteConfig::text_features});
        nn::activate_backward(dtext->data(), dsilu_text.data(), a.text.data(), dtext->numel(), nn::Activation::silu);
        *dtext = dtext->reshape(a.text_shape);
      }
    }
    t_embedder.backward(g.t_embedder, a.t_acts, dtemb);
    if (a.check_finite) {
      nn::require_finite<T>("Latte.t_embedder", "gradient", dtemb.data(), 0, &g.t_embedder);
      nn::require_finite<T>("Latte.y_embedder", "gradient", dtemb.data(), 0, &g.y_embedder);
      nn::require_finite<T>("Latte.text_embedding_projection", "gradient", dtemb.data(), 0, &g.text_embedding_projection);
    }
    // the patches: pos_embed is fixed, so the token rows' gradient is the patch rows'
    Tensor<T> dpatch_rows = Tensor<T>::empty({B * Ft * N, D});
    for (std::int64_t bf = 0; bf < B * Ft; ++bf)
      std::copy(dtokens.data() + (bf * Np + lead) * D, dtokens.data() + (bf + 1) * Np * D, dpatch_rows.data() + bf * N * D);
    Tensor<T> dpatches;
    if (dx) dpatches = Tensor<T>(a.patches.shape());
    x_embedder.proj_rows_backward(dx ? dpatches.data() : nullptr, g.x_embedder, dpatch_rows.data(), a.patches.data(), B * Ft * N);
    if (a.check_finite) nn::require_finite<T>("Latte.x_embedder", "input gradient", dpatches.data(), dpatches.numel(), &g.x_embedder);
    if (dx) {
      const Tensor<T> dimg = rearrange(dpatches, "(b h w) (c p1 p2) -> b c (h p1) (w p2)", {{"b", B * Ft}, {"h", gr}, {"p1", p}, {"p2", p}});
      *dx = Tensor<T>({B, Ft, c.in_channels, c.input_size, c.input_size});  // rows and columns cut by crop_to_patches get 0
      const std::int64_t kept = gr * p, S = c.input_size;
      for (std::int64_t bc = 0; bc < B * Ft * c.in_channels; ++bc)
        for (std::int64_t r = 0; r < kept; ++r)
          std::copy(dimg.data() + (bc * kept + r) * kept, dimg.data() + (bc * kept + r + 1) * kept, dx->data() + (bc * S + r) * S);
    }
  }

  // Upstream's forward_with_cfg: the first half of x run twice (y's halves: labels, then the
  // null class; a text embedding's: the prompt's, then the empty prompt's, as the caller
  // passes them), the first 4 channels of dim 2 guided (its output is (B, F, C, H, W)).
  Tensor<T> forward_with_cfg(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>* y, double cfg_scale,
                             const Trace<T>& trace = {}, const Tensor<T>* text_embedding = nullptr) const {
    Tensor<T> out = forward(repeat_first_half(x, "Latte"), t, y, trace, 0, nullptr, text_embedding);
    diffusion::apply_guidance(out, diffusion::Guidance{cfg_scale, std::min<std::int64_t>(4, out.size(2)), 2});
    return out;
  }

 private:
  // forward's and forward_train's argument checks
  void check_inputs(const Tensor<T>& x, const Tensor<T>& t, const Tensor<std::int64_t>* y, std::int64_t use_image_num,
                    const Tensor<std::int64_t>* y_image, const Tensor<T>* text_embedding) const {
    using ditto::detail::cat;
    const LatteConfig& c = config;
    const std::int64_t I = use_image_num, F = c.num_frames;
    if (I < 0 || I > (std::int64_t{1} << 31)) throw ArgumentError(cat("Latte: use_image_num must be from 0 to 2^31, got ", I));
    const std::int64_t Ft = F + I;
    if (I > 0 && (c.variant != 1 || !c.adaln()))
      throw ArgumentError("Latte: images beside the video (use_image_num) exist for variant 1 with adaLN, as models/latte_img.py has them");
    if (x.dim() != 5 || x.size(1) != Ft || x.size(2) != c.in_channels || x.size(3) != c.input_size || x.size(4) != c.input_size)
      throw ShapeError(cat("Latte: expected x (B, ", Ft, ", ", c.in_channels, ", ", c.input_size, ", ", c.input_size, ") (num_frames ", F,
                           I ? cat(" + use_image_num ", I) : std::string(), " frames), got ", shape_str(x.shape())));
    const std::int64_t B = x.size(0), N = c.grid() * c.grid(), D = c.hidden_size;
    detail::require_samples("Latte", B, x.shape());
    if (t.dim() != 1 || t.size(0) != B) throw ShapeError(cat("Latte: expected t of shape (", B, "), got ", shape_str(t.shape())));
    if ((c.extras == 2) != static_cast<bool>(y))
      throw ArgumentError(c.extras == 2 ? "Latte: the model is class-conditional (extras = 2), so y is required"
                                        : cat("Latte: the model takes no labels (extras = ", c.extras, "), but y was given"));
    if ((c.extras == 78) != static_cast<bool>(text_embedding))
      throw ArgumentError(c.extras == 78 ? "Latte: the model is text-conditioned (extras = 78), so text_embedding (B, 77, 768) is required"
                                         : cat("Latte: the model takes no text (extras = ", c.extras, "), but text_embedding was given"));
    if (text_embedding && (text_embedding->dim() < 2 || text_embedding->size(0) != B || text_embedding->numel() != B * LatteConfig::text_features))
      throw ShapeError(cat("Latte: expected text_embedding (", B, ", 77, 768) (", LatteConfig::text_features, " values per video), got ",
                           shape_str(text_embedding->shape())));
    if (text_embedding && I > 0)
      throw ArgumentError("Latte: text conditioning with images (use_image_num) is models/latte_img.py's, whose projection takes 1024 "
                          "features, not this model's 77 x 768");
    if (y && (y->dim() != 1 || y->size(0) != B)) throw ShapeError(cat("Latte: expected y of shape (", B, "), got ", shape_str(y->shape())));
    const bool image_labels = c.extras == 2 && I > 0;
    if (image_labels != static_cast<bool>(y_image))
      throw ArgumentError(image_labels ? "Latte: with images (use_image_num > 0) and labels (extras = 2), y_image holds the images' labels"
                                       : "Latte: y_image was given, but it labels images of a class-conditional model (use_image_num > 0, extras = 2)");
    if (y_image && (y_image->dim() != 2 || y_image->size(0) != B || y_image->size(1) != I))
      throw ShapeError(cat("Latte: expected y_image of shape (", B, ", ", I, "), got ", shape_str(y_image->shape())));
    if (pos_embed.numel() != N * D || temp_embed.numel() != F * D)
      throw ShapeError(cat("Latte: pos_embed must hold (1, ", N, ", ", D, ") and temp_embed (1, ", F, ", ", D, "), got ",
                           shape_str(pos_embed.shape()), " and ", shape_str(temp_embed.shape())));

  }

  Conditions conditions(const Tensor<T>& temb, const Tensor<T>* ye, const Tensor<T>* te, const Tensor<T>* yi, std::int64_t B,
                        std::int64_t I) const {
    const std::int64_t D = config.hidden_size, F = config.num_frames, Ft = F + I;
    Conditions cd;
    cd.cond = temb.clone();
    for (const Tensor<T>* e : {ye, te})
      if (e) for (std::int64_t i = 0; i < cd.cond.numel(); ++i) cd.cond[i] += (*e)[i];
    if (yi) {
      cd.frame_cond = Tensor<T>::empty({B * Ft, D});
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t f = 0; f < Ft; ++f)
          for (std::int64_t d = 0; d < D; ++d)
            cd.frame_cond[(b * Ft + f) * D + d] = f < F ? cd.cond[b * D + d] : temb[b * D + d] + (*yi)[(b * I + f - F) * D + d];
      cd.silu_frame = nn::silu(cd.frame_cond);
    }
    cd.silu_c = nn::silu(cd.cond);
    cd.silu_final = te ? nn::silu(temb) : cd.silu_c;
    return cd;
  }
  // tokens (B Ft, Np, D): [condition token,] patches + pos_embed, from (B Ft N, D) patch rows
  Tensor<T> assemble(const T* patch_rows, const Tensor<T>& cond, std::int64_t B, std::int64_t Ft) const {
    const std::int64_t D = config.hidden_size, N = config.grid() * config.grid(), Np = config.frame_tokens(), lead = Np - N;
    Tensor<T> tokens = Tensor<T>::empty({B * Ft, Np, D});
    for (std::int64_t bf = 0; bf < B * Ft; ++bf) {
      T* out = tokens.data() + bf * Np * D;
      if (lead) std::copy(cond.data() + (bf / Ft) * D, cond.data() + (bf / Ft + 1) * D, out);
      for (std::int64_t i = 0; i < N * D; ++i) out[lead * D + i] = patch_rows[bf * N * D + i] + pos_embed[i];
    }
    return tokens;
  }
  // every frame; the video frames of one batch entry (temporal blocks beside images)
  std::pair<LatteLayout, LatteLayout> layouts(std::int64_t B, std::int64_t Ft) const {
    const std::int64_t Np = config.frame_tokens();
    LatteLayout all, video;
    for (std::int64_t bf = 0; bf <= B * Ft; ++bf) all.frames.push_back(bf * Np);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t n = 0; n < Np; ++n) all.positions.push_back(b * Ft * Np + n);
    all.length = video.length = config.num_frames, all.stride = video.stride = Np;
    for (std::int64_t n = 0; n < Np; ++n) video.positions.push_back(n);
    return {all, video};
  }
  // the video frames only, as latte_img.py (temp_embed is fixed: its backward passes through)
  void add_temp_embed(T* tokens, std::int64_t B, std::int64_t Ft) const {
    const std::int64_t D = config.hidden_size, Np = config.frame_tokens();
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t f = 0; f < config.num_frames; ++f)
        for (std::int64_t n = 0; n < Np; ++n)
          for (std::int64_t d = 0; d < D; ++d) tokens[((b * Ft + f) * Np + n) * D + d] += temp_embed[f * D + d];
  }
  BlockCall block_call(std::size_t i, std::int64_t B, std::int64_t Ft, bool image_labels, const std::pair<LatteLayout, LatteLayout>& L) const {
    const std::int64_t Np = config.frame_tokens(), F = config.num_frames;
    BlockCall bc;
    bc.per_frame = image_labels && blocks[i].attends == LatteAttends::frame;
    bc.conditions = bc.per_frame ? B * Ft : B;
    if (blocks[i].attends == LatteAttends::time && Ft > F) {
      bc.calls = B, bc.x_step = Ft * Np * config.hidden_size, bc.rows = F * Np, bc.rows_per_cond = F * Np, bc.layout = &L.second;
    } else {
      bc.rows = B * Ft * Np, bc.rows_per_cond = bc.per_frame ? Np : Ft * Np, bc.layout = &L.first;
    }
    return bc;
  }
  // block i's training forward over its calls, keeping each call's activations in *acts (null:
  // dropped, checkpointing)
  void block_train(std::size_t i, T* x, const BlockCall& bc, const Tensor<T>& mod, std::vector<typename LatteBlock<T>::Acts>* acts) const {
    const std::int64_t S = blocks[i].chunks() * config.hidden_size;
    std::vector<typename LatteBlock<T>::Acts> dropped;
    auto& out = acts ? *acts : dropped;
    out.assign(static_cast<std::size_t>(bc.calls), {});
    for (std::int64_t k = 0; k < bc.calls; ++k)
      blocks[i].forward_train(x + k * bc.x_step, bc.rows, bc.rows_per_cond, blocks[i].adaln ? mod.data() + k * S : nullptr, *bc.layout,
                              out[static_cast<std::size_t>(k)]);
  }
};

// Latte's initialize_weights (models/latte.py, DiT's scheme): xavier-uniform Linear weights
// (x_embedder's conv as a (D, C p p) matrix) with zero biases, N(0, 0.02) for the label table(s) and
// the timestep MLP, zeros for every adaLN modulation and the final linear (adaLN-Zero: each block
// starts as the identity, the model's output as 0). pos_embed and temp_embed are the fixed
// sin-cos tables the constructor made. LayerNorms with an affine (the "token" injection, a ditto
// extension) start at 1 and 0, as torch's.
template <class T>
inline void initialize_weights(Latte<T>& m, Generator& gen) {
  auto ends = [](const std::string& s, const std::string& e) { return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0; };
  for (auto& [name, t] : nn::trainable_parameters<T>(m)) {
    if (name.find("adaLN_modulation") != std::string::npos || name.rfind("final_layer.linear.", 0) == 0 || ends(name, ".bias")) nn::fill_constant(*t, 0.0);
    else if (name.rfind("y_embedder.", 0) == 0 || name.rfind("t_embedder.mlp.", 0) == 0) gen.fill_normal(*t, 0.0, 0.02);
    else if (t->dim() == 1) nn::fill_constant(*t, 1.0);  // a LayerNorm's weight
    else nn::xavier_uniform(*t, gen, 1.0, /*as_matrix=*/name == "x_embedder.proj.weight");
  }
}

}  // namespace ditto::models
