// Pictures: PNG/JPEG files <-> (C, H, W) float tensors with values in [-1, 1] (the range
// diffusion models work in). Uses stb_image / stb_image_write, compiled privately into each
// translation unit that includes this header (STB_*_STATIC), so ditto stays header-only and
// a program that also uses stb elsewhere does not get duplicate symbols.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

#if !defined(DITTO_STB_INCLUDED)
#define DITTO_STB_INCLUDED
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

namespace ditto {

// Reads a PNG, JPEG, BMP, ... file into a (C, H, W) tensor in [-1, 1]; C = 3 (RGB) unless
// `channels` asks for 1 (gray) or 4 (RGBA).
inline Tensor<float> read_image(const std::string& path, int channels = 3) {
  if (channels != 1 && channels != 3 && channels != 4)
    throw ArgumentError(detail::cat("read_image(\"", path, "\"): channels must be 1, 3 or 4, got ", channels));
  int w = 0, h = 0, c = 0;
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(stbi_load(path.c_str(), &w, &h, &c, channels),
                                                          stbi_image_free);
  if (!pixels) throw IoError(detail::cat("read_image(\"", path, "\"): ", stbi_failure_reason()));
  Tensor<float> out = Tensor<float>::empty({channels, h, w});
  for (int ch = 0; ch < channels; ++ch)
    for (std::int64_t i = 0, n = std::int64_t{h} * w; i < n; ++i)
      out[ch * n + i] = pixels.get()[i * channels + ch] / 127.5f - 1.0f;
  return out;
}

// Writes a (C, H, W) tensor in [-1, 1] (C = 1, 3 or 4) as a PNG; values outside are clipped.
inline void write_png(const std::string& path, const Tensor<float>& image) {
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3 && image.size(0) != 4))
    throw ShapeError(detail::cat("write_png(\"", path, "\"): expected a (C, H, W) tensor with C = 1, 3 or 4, got shape ",
                                 shape_str(image.shape())));
  const auto c = image.size(0), h = image.size(1), w = image.size(2);
  std::vector<unsigned char> pixels(static_cast<std::size_t>(c * h * w));
  for (std::int64_t ch = 0; ch < c; ++ch)
    for (std::int64_t i = 0; i < h * w; ++i) {
      const float v = std::clamp((image[ch * h * w + i] + 1.0f) * 127.5f, 0.0f, 255.0f);
      pixels[static_cast<std::size_t>(i * c + ch)] = static_cast<unsigned char>(std::lround(v));
    }
  if (!stbi_write_png(path.c_str(), static_cast<int>(w), static_cast<int>(h), static_cast<int>(c), pixels.data(),
                      static_cast<int>(w * c)))
    throw IoError(detail::cat("write_png(\"", path, "\"): could not write the file"));
}

}  // namespace ditto
