// Pictures: PNG/JPEG files <-> (C, H, W) float tensors with values in [-1, 1] (the range
// diffusion models work in). Uses stb_image / stb_image_write, compiled privately into each
// translation unit that includes this header (STB_*_STATIC), so ditto stays header-only and
// a program that also uses stb elsewhere does not get duplicate symbols.
#pragma once

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "file.hpp"

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

// The largest picture read_image decodes by default: 2^26 pixels (8192 x 8192), 1 GB as float RGBA.
inline constexpr std::int64_t kMaxImagePixels = std::int64_t{1} << 26;

namespace detail {
// Whether a PNG or JPEG file is complete: stb_image decodes a truncated JPEG (the missing part
// comes back gray) and some truncated PNGs without a word, so the structure is walked here. A
// PNG's chunks, by their lengths, must reach a whole IEND chunk (its CRC included: stb stops
// before it); a JPEG's segments, by their lengths (so an EXIF thumbnail inside APP1 is skipped
// whole), then its scans' entropy data, must reach the end-of-image marker.
inline bool image_is_complete(const std::string& bytes, bool png) {
  const std::size_t n = bytes.size();
  auto byte = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  if (png) {
    for (std::size_t at = 8; at + 12 <= n;) {
      const std::uint64_t len = std::uint64_t{byte(at)} << 24 | std::uint64_t{byte(at + 1)} << 16 | std::uint64_t{byte(at + 2)} << 8 | byte(at + 3);
      if (bytes.compare(at + 4, 4, "IEND") == 0) return len == 0;
      if (len > n - at - 12) return false;  // the chunk runs past the end
      at += 12 + static_cast<std::size_t>(len);
    }
    return false;
  }
  std::size_t at = 2;  // after SOI
  while (at + 2 <= n) {
    if (byte(at) != 0xFF) return false;
    const unsigned char m = byte(at + 1);
    if (m == 0xFF) {  // fill byte
      ++at;
      continue;
    }
    if (m == 0xD9) return true;  // EOI
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {  // markers without a length
      at += 2;
      continue;
    }
    if (at + 4 > n) return false;
    const std::size_t len = std::size_t{byte(at + 2)} << 8 | byte(at + 3);
    if (len < 2 || at + 2 + len > n) return false;
    at += 2 + len;
    if (m == 0xDA) {  // a scan: entropy-coded data up to the next marker (FF 00 is a stuffed FF, FF D0-D7 restarts)
      while (at + 1 < n && !(byte(at) == 0xFF && byte(at + 1) != 0x00 && !(byte(at + 1) >= 0xD0 && byte(at + 1) <= 0xD7))) ++at;
      if (at + 1 >= n) return false;
    }
  }
  return false;
}
}  // namespace detail

// Reads a PNG or JPEG file into a (C, H, W) tensor of its bytes; C = 3 (RGB) unless `channels`
// asks for 1 (gray) or 4 (RGBA). Other formats (which stb_image would also take, with weaker
// checks) are refused, so are truncated files and pictures of more than `max_pixels` pixels
// (checked from the header, before anything is decoded).
inline Tensor<std::uint8_t> read_image_bytes(const std::string& path, int channels = 3, std::int64_t max_pixels = kMaxImagePixels) {
  const std::string what = detail::cat("read_image(\"", path, "\")");
  if (channels != 1 && channels != 3 && channels != 4)
    throw ArgumentError(detail::cat(what, ": channels must be 1, 3 or 4, got ", channels));
  // A compressed file is far smaller than its pixels; 1 GB is beyond any picture ditto reads.
  const std::string bytes = read_file(path, what, std::uint64_t{1} << 30);
  const bool png = bytes.size() >= 8 && bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
  const bool jpeg = bytes.size() >= 3 && bytes.compare(0, 3, "\xFF\xD8\xFF") == 0;
  if (!png && !jpeg) {
    std::string head;
    for (std::size_t i = 0; i < std::min<std::size_t>(bytes.size(), 8); ++i)
      head += detail::cat(i ? " " : "", "0123456789abcdef"[static_cast<unsigned char>(bytes[i]) >> 4],
                          "0123456789abcdef"[static_cast<unsigned char>(bytes[i]) & 15]);
    throw IoError(detail::cat(what, ": not a PNG or JPEG file (it starts with bytes [", head,
                              "]); ditto reads only these two formats"));
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(bytes.size());
  auto too_large = [&](std::int64_t w, std::int64_t h) {
    if (w > 0 && h > 0 && w <= max_pixels / h) return;  // (no product: a header may claim 2^32 x 2^32)
    throw IoError(detail::cat(what, ": the ", png ? "PNG" : "JPEG", " claims ", w, " x ", h, " pixels; at most ",
                              max_pixels, " are read (raise max_pixels to read it)"));
  };
  if (png && bytes.size() >= 24 && bytes.compare(12, 4, "IHDR") == 0) {  // IHDR's size first: stb refuses some as "too large"
    auto be32 = [&](std::size_t at) {
      std::int64_t v = 0;
      for (std::size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes[at + i]);
      return v;
    };
    too_large(be32(16), be32(20));
  }
  int w = 0, h = 0, c = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &c))
    throw IoError(detail::cat(what, ": cannot read the ", png ? "PNG" : "JPEG", " header"));
  too_large(w, h);
  if (!detail::image_is_complete(bytes, png))
    throw IoError(detail::cat(what, ": the ", png ? "PNG" : "JPEG", " is truncated (no ",
                              png ? "IEND chunk" : "end-of-image marker after its scan", ")"));
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(stbi_load_from_memory(data, len, &w, &h, &c, channels),
                                                          stbi_image_free);
  if (!pixels) {
    const char* why = stbi_failure_reason();
    throw IoError(detail::cat(what, ": cannot decode: ", why && *why ? why : "corrupt or truncated data"));
  }
  Tensor<std::uint8_t> out = Tensor<std::uint8_t>::empty({channels, h, w});
  for (int ch = 0; ch < channels; ++ch)
    for (std::int64_t i = 0, n = std::int64_t{h} * w; i < n; ++i) out[ch * n + i] = pixels.get()[i * channels + ch];
  return out;
}

// As read_image_bytes, in [-1, 1] (byte b -> b / 127.5 - 1).
inline Tensor<float> read_image(const std::string& path, int channels = 3, std::int64_t max_pixels = kMaxImagePixels) {
  const Tensor<std::uint8_t> b = read_image_bytes(path, channels, max_pixels);
  Tensor<float> out = Tensor<float>::empty(b.shape());
  for (std::int64_t i = 0; i < b.numel(); ++i) out[i] = b[i] / 127.5f - 1.0f;
  return out;
}

// Writes a (C, H, W) tensor in [-1, 1] (C = 1, 3 or 4) as a PNG; values outside are clipped.
// Atomic where the target is a regular file (io/file.hpp): a failed write leaves no partial PNG.
inline void write_png(const std::string& path, const Tensor<float>& image) {
  const std::string what = detail::cat("write_png(\"", path, "\")");
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3 && image.size(0) != 4))
    throw ShapeError(detail::cat(what, ": expected a (C, H, W) tensor with C = 1, 3 or 4, got shape ",
                                 shape_str(image.shape())));
  const auto c = image.size(0), h = image.size(1), w = image.size(2);
  if (h < 1 || w < 1 || h > (1 << 24) || w > (1 << 24) || w * c > INT32_MAX)
    throw ShapeError(detail::cat(what, ": a PNG needs 1 to 2^24 rows and columns, got ", h, " x ", w));
  std::vector<unsigned char> pixels(static_cast<std::size_t>(c * h * w));
  for (std::int64_t ch = 0; ch < c; ++ch)
    for (std::int64_t i = 0; i < h * w; ++i) {
      const float v = std::clamp((image[ch * h * w + i] + 1.0f) * 127.5f, 0.0f, 255.0f);
      pixels[static_cast<std::size_t>(i * c + ch)] = static_cast<unsigned char>(std::lround(v));
    }
  std::string png;
  auto append = [](void* ctx, void* data, int size) { static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<std::size_t>(size)); };
  if (!stbi_write_png_to_func(append, &png, static_cast<int>(w), static_cast<int>(h), static_cast<int>(c), pixels.data(),
                              static_cast<int>(w * c)))
    throw IoError(what + ": could not encode the PNG");
  write_file(path, png.data(), png.size(), what);
}

// torchvision.utils.make_grid: images (B, C, H, W) laid out nrow per row, `padding` pixels of
// pad_value around and between them. One-channel images become three channels, as torchvision
// does. Values are not rescaled (ditto images are already in [-1, 1]).
inline Tensor<float> make_grid(const Tensor<float>& images, std::int64_t nrow = 8, std::int64_t padding = 2,
                               float pad_value = 0.0f) {
  // (padding is bounded so that no size below can overflow; the grid's element count is checked
  // when it is allocated)
  if (images.dim() != 4 || images.size(0) == 0 || nrow < 1 || padding < 0 || padding > (1 << 20))
    throw ShapeError(detail::cat("make_grid: expected (B, C, H, W) with B >= 1, nrow >= 1, 0 <= padding <= 2^20; got shape ",
                                 shape_str(images.shape()), ", nrow ", nrow, ", padding ", padding));
  const std::int64_t B = images.size(0), C0 = images.size(1), H = images.size(2), W = images.size(3);
  const std::int64_t C = C0 == 1 ? 3 : C0;
  const std::int64_t xmaps = std::min(nrow, B), ymaps = (B + xmaps - 1) / xmaps;
  const std::int64_t height = H + padding, width = W + padding;
  Tensor<float> grid = Tensor<float>::full({C, height * ymaps + padding, width * xmaps + padding}, pad_value);
  for (std::int64_t k = 0; k < B; ++k) {
    const std::int64_t y = k / xmaps, x = k % xmaps;
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < H; ++i)
        for (std::int64_t j = 0; j < W; ++j)
          grid(c, y * height + padding + i, x * width + padding + j) = images(k, C0 == 1 ? 0 : c, i, j);
  }
  return grid;
}

namespace detail {
// The GIF palette: a 6x6x6 color cube (216 colors) and 40 grays, shared by every frame.
inline std::uint8_t gif_palette_index(int r, int g, int b) {
  auto level = [](int v) { return (v * 5 + 127) / 255; };  // 0..5
  const int cr = level(r), cg = level(g), cb = level(b);
  const int cube = 36 * cr + 6 * cg + cb;
  // a near-gray pixel is better served by the finer gray ramp
  const int mx = std::max({r, g, b}), mn = std::min({r, g, b});
  if (mx - mn < 12) {
    const int gray = (r + g + b) / 3, gi = std::clamp((gray * 39 + 127) / 255, 0, 39);
    const int gv = gi * 255 / 39, cv = cr * 51;
    if (std::abs(gv - gray) < std::abs(cv - gray) || cr != cg || cg != cb) return static_cast<std::uint8_t>(216 + gi);
  }
  return static_cast<std::uint8_t>(cube);
}
inline std::array<std::uint8_t, 3> gif_palette_color(int i) {
  if (i < 216) return {static_cast<std::uint8_t>(i / 36 * 51), static_cast<std::uint8_t>(i / 6 % 6 * 51),
                       static_cast<std::uint8_t>(i % 6 * 51)};
  const auto v = static_cast<std::uint8_t>((i - 216) * 255 / 39);
  return {v, v, v};
}

// GIF's LZW: variable-width codes (9..12 bits for 8-bit pixels), packed LSB first into
// sub-blocks of at most 255 bytes. The dictionary is a trie keyed by (prefix code, byte).
inline void gif_lzw(const std::vector<std::uint8_t>& pixels, std::vector<std::uint8_t>& out) {
  constexpr int kMinCode = 8, kClear = 256, kEnd = 257;
  std::vector<std::uint8_t> bytes;
  std::uint32_t acc = 0;
  int nbits = 0, width = kMinCode + 1, next = kEnd + 1;
  auto emit = [&](int code) {
    acc |= static_cast<std::uint32_t>(code) << nbits;
    nbits += width;
    while (nbits >= 8) {
      bytes.push_back(static_cast<std::uint8_t>(acc & 0xff));
      acc >>= 8;
      nbits -= 8;
    }
  };
  std::vector<std::int16_t> child(4096 * 256, -1);  // child[prefix * 256 + byte] = code
  emit(kClear);
  int prefix = -1;
  for (std::uint8_t p : pixels) {
    if (prefix < 0) {
      prefix = p;
      continue;
    }
    const int c = child[static_cast<std::size_t>(prefix) * 256 + p];
    if (c >= 0) {
      prefix = c;
      continue;
    }
    emit(prefix);
    if (next < 4096) {
      child[static_cast<std::size_t>(prefix) * 256 + p] = static_cast<std::int16_t>(next);
      if (next == (1 << width) && width < 12) ++width;
      ++next;
    } else {  // dictionary full: start over
      emit(kClear);
      std::fill(child.begin(), child.end(), -1);
      width = kMinCode + 1;
      next = kEnd + 1;
    }
    prefix = p;
  }
  if (prefix >= 0) emit(prefix);
  emit(kEnd);
  if (nbits > 0) bytes.push_back(static_cast<std::uint8_t>(acc & 0xff));
  out.push_back(kMinCode);
  for (std::size_t i = 0; i < bytes.size(); i += 255) {
    const std::size_t n = std::min<std::size_t>(255, bytes.size() - i);
    out.push_back(static_cast<std::uint8_t>(n));
    out.insert(out.end(), bytes.begin() + static_cast<std::ptrdiff_t>(i), bytes.begin() + static_cast<std::ptrdiff_t>(i + n));
  }
  out.push_back(0);
}
}  // namespace detail

// Writes a video (T, C, H, W) in [-1, 1] (C = 1 or 3) as an animated GIF that loops forever,
// `fps` frames per second (GIF stores delays in 1/100 s). Colors are mapped to a fixed
// 256-color palette (a 6x6x6 cube and 40 grays).
inline void write_gif(const std::string& path, const Tensor<float>& video, double fps = 8.0) {
  if (video.dim() != 4 || (video.size(1) != 1 && video.size(1) != 3) || video.size(0) < 1)
    throw ShapeError(detail::cat("write_gif(\"", path, "\"): expected a (T, C, H, W) video with C = 1 or 3, got shape ",
                                 shape_str(video.shape())));
  if (!(fps > 0)) throw ArgumentError(detail::cat("write_gif(\"", path, "\"): fps must be positive, got ", fps));
  const std::int64_t T = video.size(0), C = video.size(1), H = video.size(2), W = video.size(3);
  if (H > 65535 || W > 65535) throw ShapeError(detail::cat("write_gif: frames of ", W, "x", H, " exceed GIF's 65535"));
  std::vector<std::uint8_t> out = {'G', 'I', 'F', '8', '9', 'a'};
  auto u16 = [&](std::int64_t v) {
    out.push_back(static_cast<std::uint8_t>(v & 0xff));
    out.push_back(static_cast<std::uint8_t>((v >> 8) & 0xff));
  };
  u16(W);
  u16(H);
  out.insert(out.end(), {0xF7, 0, 0});  // global color table of 256 entries
  for (int i = 0; i < 256; ++i) {
    const auto c = detail::gif_palette_color(i);
    out.insert(out.end(), c.begin(), c.end());
  }
  out.insert(out.end(), {0x21, 0xFF, 0x0B, 'N', 'E', 'T', 'S', 'C', 'A', 'P', 'E', '2', '.', '0', 0x03, 0x01, 0, 0, 0});
  const auto delay = static_cast<std::int64_t>(std::lround(100.0 / fps));
  auto byte = [](float v) { return static_cast<int>(std::lround(std::clamp((v + 1.0f) * 127.5f, 0.0f, 255.0f))); };
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(H * W));
  for (std::int64_t t = 0; t < T; ++t) {
    out.insert(out.end(), {0x21, 0xF9, 0x04, 0x00});  // graphic control: delay, no transparency
    u16(std::max<std::int64_t>(delay, 1));
    out.insert(out.end(), {0, 0, 0x2C});
    u16(0);
    u16(0);
    u16(W);
    u16(H);
    out.push_back(0);
    for (std::int64_t i = 0; i < H * W; ++i) {
      const float* f = video.data() + t * C * H * W + i;
      const int r = byte(f[0]), g = byte(f[C == 3 ? H * W : 0]), b = byte(f[C == 3 ? 2 * H * W : 0]);
      pixels[static_cast<std::size_t>(i)] = detail::gif_palette_index(r, g, b);
    }
    detail::gif_lzw(pixels, out);
  }
  out.push_back(0x3B);
  write_file(path, out.data(), out.size(), detail::cat("write_gif(\"", path, "\")"));  // atomic, as write_png
}

// A video (T, C, H, W) as one PNG: its frames in a grid of nrow per row (make_grid).
inline void write_video_grid(const std::string& path, const Tensor<float>& video, std::int64_t nrow = 8,
                             std::int64_t padding = 2) {
  write_png(path, make_grid(video, nrow, padding, 1.0f));
}

}  // namespace ditto
