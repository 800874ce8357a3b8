// The einops tour: cut an image into ViT patches, draw them apart, mask most of them as MAE does,
// and write the three panels side by side as one PNG.
//
//   einops_tour OUT.png [IN.png]      (IN must be 256x256 or larger; a picture is drawn otherwise)
#include <cmath>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include <ditto/ditto.hpp>

using namespace ditto;

// A 256x256 landscape in [-1, 1]: sky gradient, a sun, two hills. Stands in for a photo.
static Tensor<float> draw_landscape(std::int64_t size) {
  Tensor<float> img({3, size, size});
  for (std::int64_t y = 0; y < size; ++y)
    for (std::int64_t x = 0; x < size; ++x) {
      const float u = float(x) / size, v = float(y) / size;
      float r = 0.25f + 0.6f * v, g = 0.45f + 0.3f * v, b = 0.95f - 0.3f * v;  // sky
      if (std::hypot(u - 0.7f, v - 0.3f) < 0.12f) r = 1.0f, g = 0.85f, b = 0.3f;  // sun
      if (v > 0.65f + 0.08f * std::sin(9.0f * u)) r = 0.2f, g = 0.55f + 0.2f * u, b = 0.25f;  // hill
      if (v > 0.8f + 0.05f * std::cos(13.0f * u + 1.0f)) r = 0.15f, g = 0.35f, b = 0.15f;    // near hill
      img(0, y, x) = 2 * r - 1, img(1, y, x) = 2 * g - 1, img(2, y, x) = 2 * b - 1;
    }
  return img;
}

int main(int argc, char** argv) try {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s OUT.png [IN.png]\n", argv[0]);
    return 2;
  }
  const std::int64_t size = 256, p = 32, grid = size / p, gap = 3;
  Tensor<float> image = draw_landscape(size);
  if (argc == 3) {
    Tensor<float> in = read_image(argv[2]);
    if (in.size(1) < size || in.size(2) < size)
      throw ArgumentError(detail::cat("einops_tour: IN.png must be at least 256x256, got ", in.size(2), "x",
                                      in.size(1)));
    for (std::int64_t c = 0; c < 3; ++c)  // top-left crop
      for (std::int64_t y = 0; y < size; ++y)
        for (std::int64_t x = 0; x < size; ++x) image(c, y, x) = in(c, y, x);
  }

  // 1. ViT patchify: (C, H, W) -> (N, C, p, p), one entry per 32x32 patch.
  auto patches = rearrange(image, "c (h p1) (w p2) -> (h w) c p1 p2", {{"p1", p}, {"p2", p}});
  std::cout << "image " << shape_str(image.shape()) << " -> patches " << shape_str(patches.shape()) << "\n";

  // 2. Draw each patch on a white tile with a gap around it, then put the tiles back in a grid.
  const std::int64_t t = p + 2 * gap;
  Tensor<float> tiles = Tensor<float>::ones({grid * grid, 3, t, t});
  for (std::int64_t n = 0; n < grid * grid; ++n)
    for (std::int64_t c = 0; c < 3; ++c)
      for (std::int64_t y = 0; y < p; ++y)
        for (std::int64_t x = 0; x < p; ++x) tiles(n, c, y + gap, x + gap) = patches(n, c, y, x);
  auto apart = rearrange(tiles, "(h w) c p1 p2 -> c (h p1) (w p2)", {{"h", grid}});

  // 3. MAE: keep a random 25% of the patches, gray out the rest (same tiles, masked).
  Generator gen(0);
  auto scores = gen.uniform<float>({grid * grid});
  Tensor<float> masked = tiles.clone();
  for (std::int64_t n = 0; n < grid * grid; ++n)
    if (scores[n] > 0.25f)
      for (std::int64_t c = 0; c < 3; ++c)
        for (std::int64_t y = 0; y < p; ++y)
          for (std::int64_t x = 0; x < p; ++x) masked(n, c, y + gap, x + gap) = 0.1f;
  auto mae = rearrange(masked, "(h w) c p1 p2 -> c (h p1) (w p2)", {{"h", grid}});

  // The original, padded to the panels' size, then all three side by side: pack along width.
  Tensor<float> framed = Tensor<float>::ones({3, grid * t, grid * t});
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t y = 0; y < size; ++y)
      for (std::int64_t x = 0; x < size; ++x) framed(c, y + grid * gap, x + grid * gap) = image(c, y, x);
  auto [panel, widths] = pack(std::vector{framed, apart, mae}, "c h *");
  std::cout << "panels " << shape_str(panel.shape()) << " (three of width " << widths[0][0] << ")\n";

  // What a ViT sees: tokens of patch*patch*C values, and their mean color per patch.
  auto tokens = rearrange(image, "c (h p1) (w p2) -> (h w) (p1 p2 c)", {{"p1", p}, {"p2", p}});
  auto mean_color = reduce(image, "c (h p1) (w p2) -> h w c", "mean", {{"p1", p}, {"p2", p}});
  std::cout << "tokens " << shape_str(tokens.shape()) << ", mean color of the top-left patch: ("
            << mean_color(0, 0, 0) << ", " << mean_color(0, 0, 1) << ", " << mean_color(0, 0, 2) << ")\n";

  write_png(argv[1], panel);
  std::cout << "wrote " << argv[1] << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "einops_tour: %s\n", e.what());
  return 1;
}
