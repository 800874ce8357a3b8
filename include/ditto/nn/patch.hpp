// Patch embeddings: images and videos to tokens, and back.
//
// PatchEmbed is timm's / DiT's x_embedder: a Conv2d with kernel = stride = patch, flattened to
// tokens. Because the windows do not overlap, the convolution is exactly
//   rearrange("b c (h p1) (w p2) -> b (h w) (c p1 p2)") then a matrix product with the weight
// seen as (D, C * p * p) — one copy and one GEMM, no im2col. TubeletEmbed is the same in 3-D
// (ViViT's tubelets, a Conv3d with kernel = stride). unpatchify is DiT's inverse.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../einops/rearrange.hpp"
#include "conv.hpp"
#include "linear.hpp"

namespace ditto::nn {


// x: (B, C, H, W) -> (B, (H/ph)(W/pw), embed_dim). State names: proj.weight, proj.bias. Patches
// may be rectangular (timm's patch_size=(ph, pw)).
template <class T = float>
struct PatchEmbed {
  std::array<std::int64_t, 2> patch{2, 2};
  std::int64_t in_chans = 3, embed_dim = 0;
  Conv2d<T> proj;

  PatchEmbed() = default;
  PatchEmbed(std::int64_t patch_, std::int64_t in_chans_, std::int64_t embed_dim_, bool bias = true)
      : PatchEmbed(std::array<std::int64_t, 2>{patch_, patch_}, in_chans_, embed_dim_, bias) {}
  PatchEmbed(std::array<std::int64_t, 2> patch_, std::int64_t in_chans_, std::int64_t embed_dim_, bool bias = true)
      : patch(patch_), in_chans(in_chans_), embed_dim(embed_dim_), proj(in_chans_, embed_dim_, patch_, patch_, {0, 0, 0, 0}, 1, bias) {}

  template <class V>
  void visit(V& v) {
    v("proj", proj);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    const auto [ph, pw] = patch;
    if (x.dim() != 4 || x.size(1) != in_chans || x.size(2) % ph || x.size(3) % pw)
      throw ShapeError(ditto::detail::cat("PatchEmbed(patch=", ph, "x", pw, ", in_chans=", in_chans, "): expected (B, ", in_chans,
                                          ", H, W) with H divisible by ", ph, " and W by ", pw, ", got ", shape_str(x.shape())));
    auto tokens = rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", {{"p1", ph}, {"p2", pw}});
    Tensor<T> out = Tensor<T>::empty({x.size(0), tokens.size(1), embed_dim});
    proj_rows(tokens.data(), tokens.size(0) * tokens.size(1), out.data());
    return out;
  }

  // The projection alone, on patch rows (rows, C ph pw) -> (rows, embed_dim), and its backward
  // (accumulates g.proj and dpatches, when given). The convolution's weight (D, C, ph, pw) is the
  // matrix (D, C ph pw).
  void proj_rows(const T* patches, std::int64_t rows, T* out) const {
    linear_rows(patches, rows, in_chans * patch[0] * patch[1], embed_dim, proj.weight.data(), proj.has_bias ? proj.bias.data() : nullptr, out);
  }
  void proj_rows_backward(T* dpatches, PatchEmbed& g, const T* dout, const T* patches, std::int64_t rows) const {
    linear_rows_backward(dpatches, g.proj.weight.data(), proj.has_bias ? g.proj.bias.data() : nullptr, dout, patches, proj.weight.data(), rows,
                         in_chans * patch[0] * patch[1], embed_dim);
  }
};

// x: (B, C, T, H, W) -> (B, (T/pt)(H/ph)(W/pw), embed_dim). State names: proj.weight, proj.bias.
template <class T = float>
struct TubeletEmbed {
  std::array<std::int64_t, 3> tubelet{2, 2, 2};
  std::int64_t in_chans = 3, embed_dim = 0;
  Conv3d<T> proj;

  TubeletEmbed() = default;
  TubeletEmbed(std::array<std::int64_t, 3> size, std::int64_t in_chans_, std::int64_t embed_dim_, bool bias = true)
      : tubelet(size), in_chans(in_chans_), embed_dim(embed_dim_), proj(in_chans_, embed_dim_, size, size, {0, 0, 0}, bias) {}

  template <class V>
  void visit(V& v) {
    v("proj", proj);
  }

  Tensor<T> forward(const Tensor<T>& x) const {
    const auto [pt, ph, pw] = tubelet;
    if (x.dim() != 5 || x.size(1) != in_chans || x.size(2) % pt || x.size(3) % ph || x.size(4) % pw)
      throw ShapeError(ditto::detail::cat("TubeletEmbed(", pt, "x", ph, "x", pw, "): expected (B, ", in_chans,
                                          ", T, H, W) divisible by the tubelet, got ", shape_str(x.shape())));
    auto tokens = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", {{"pt", pt}, {"ph", ph}, {"pw", pw}});
    Tensor<T> out = Tensor<T>::empty({x.size(0), tokens.size(1), embed_dim});
    linear_rows(tokens.data(), tokens.size(0) * tokens.size(1), tokens.size(2), embed_dim, proj.weight.data(),
                proj.has_bias ? proj.bias.data() : nullptr, out.data());
    return out;
  }

  // Backward: dy (B, tokens, embed_dim). Accumulates g.proj and returns dx (x's shape), the
  // tubelet rows' gradient put back in place (a stride-kernel convolution is a product on them).
  Tensor<T> backward(TubeletEmbed& g, const Tensor<T>& x, const Tensor<T>& dy) const {
    const auto [pt, ph, pw] = tubelet;
    const Tensor<T> tokens = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", {{"pt", pt}, {"ph", ph}, {"pw", pw}});
    if (dy.shape() != Shape{tokens.size(0), tokens.size(1), embed_dim})
      throw ShapeError(ditto::detail::cat("TubeletEmbed.backward: expected dy (", tokens.size(0), ", ", tokens.size(1), ", ", embed_dim, "), got ",
                                          shape_str(dy.shape())));
    Tensor<T> dtokens(tokens.shape());
    linear_rows_backward(dtokens.data(), g.proj.weight.data(), proj.has_bias ? g.proj.bias.data() : nullptr, dy.data(), tokens.data(),
                         proj.weight.data(), tokens.size(0) * tokens.size(1), tokens.size(2), embed_dim);
    return rearrange(dtokens, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)",
                     {{"t", x.size(2) / pt}, {"h", x.size(3) / ph}, {"pt", pt}, {"ph", ph}, {"pw", pw}});
  }
};

// DiT's unpatchify: x (N, h*w, p*p*C) -> (N, C, h*p, w*p). h = w = sqrt(tokens) unless given.
template <class T>
inline Tensor<T> unpatchify(const Tensor<T>& x, std::int64_t channels, std::int64_t patch, std::int64_t h = -1,
                            std::int64_t w = -1) {
  if (x.dim() != 3 || x.size(2) != patch * patch * channels)
    throw ShapeError(ditto::detail::cat("unpatchify(C=", channels, ", p=", patch, "): expected (N, T, ", patch * patch * channels,
                                        "), got ", shape_str(x.shape())));
  if (h < 0) {
    h = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(x.size(1)))));
    w = h;
  } else if (w < 0) {
    w = x.size(1) / h;
  }
  if (h * w != x.size(1))
    throw ShapeError(ditto::detail::cat("unpatchify: ", x.size(1), " tokens do not form a ", h, " x ", w, " grid"));
  return rearrange(x, "n (h w) (p q c) -> n c (h p) (w q)", {{"h", h}, {"p", patch}, {"q", patch}});
}

// unpatchify's backward (a permutation, so its inverse): dy (N, C, h p, w p) -> (N, h w, p p C).
template <class T>
inline Tensor<T> unpatchify_backward(const Tensor<T>& dy, std::int64_t patch) {
  if (dy.dim() != 4 || dy.size(2) % patch || dy.size(3) % patch)
    throw ShapeError(ditto::detail::cat("unpatchify_backward(p=", patch, "): expected (N, C, H, W) divisible by the patch, got ", shape_str(dy.shape())));
  return rearrange(dy, "n c (h p) (w q) -> n (h w) (p q c)", {{"p", patch}, {"q", patch}});
}

// timm's PatchEmbed is a stride-p convolution, so an image whose size p does not divide loses
// its last rows and columns: x (B, C, S, S) cropped to the largest multiple of p.
template <class T>
inline Tensor<T> crop_to_patches(const Tensor<T>& x, std::int64_t p) {
  const std::int64_t S = x.size(2), kept = S / p * p, BC = x.size(0) * x.size(1);
  if (kept == S && x.size(3) == S) return x;
  Tensor<T> out = Tensor<T>::empty({x.size(0), x.size(1), kept, kept});
  for (std::int64_t bc = 0; bc < BC; ++bc)
    for (std::int64_t r = 0; r < kept; ++r)
      std::copy(x.data() + (bc * S + r) * x.size(3), x.data() + (bc * S + r) * x.size(3) + kept, out.data() + (bc * kept + r) * kept);
  return out;
}

}  // namespace ditto::nn
