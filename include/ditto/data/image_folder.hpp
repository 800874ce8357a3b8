// A folder of one's own pictures, labelled by sub-folder as torchvision's ImageFolder labels
// them, prepared as DiT's train.py prepares ImageNet: center_crop_arr (halvings with PIL's BOX
// filter while the short side is at least twice the size, a BICUBIC resize of the short side to
// the size, a center crop), then a random horizontal flip at batch time.
//
//   auto d = data::load_image_folder("pictures/", 64);       // pictures/<class>/**/*.png|jpg
//   d.classes;                                                // the sub-folders, sorted
//   d.set.images;                                             // (N, 3, 64, 64) bytes, d.set.labels (N)
//
// The resizes are Pillow's (Resample.c: its filters, its coefficients rounded to 22-bit fixed
// point, the horizontal pass then the vertical one, each rounded to a byte), so a picture comes
// out with the bytes DiT's transform gives it (tested against Pillow 9.4). torchvision's order:
// the classes are the sub-folder names sorted, the files of a class every file below its
// folder (links followed) with an image extension, folder by folder in sorted order, names
// sorted within a folder. ditto decodes PNG and JPEG only: a file with another image extension
// (.bmp, .webp, ...) is refused naming it, as is a class folder with no picture.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../io/image.hpp"

namespace ditto::data {

namespace detail {
inline double pil_box(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }
inline double pil_bicubic(double x) {
  const double a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}
constexpr int kPilPrecision = 32 - 8 - 2;

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: for each output index, the first input
// index and the fixed-point weights.
struct PilCoeffs {
  std::vector<int> first, count;
  std::vector<std::vector<std::int32_t>> k;
};
inline PilCoeffs pil_coeffs(int in_size, int out_size, bool bicubic) {
  const double support0 = bicubic ? 2.0 : 0.5;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0), support = support0 * filterscale, ss = 1.0 / filterscale;
  PilCoeffs c;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    std::vector<double> w(static_cast<std::size_t>(std::max(xmax, 0)));
    double ww = 0;
    for (int x = 0; x < xmax; ++x) ww += w[static_cast<std::size_t>(x)] = bicubic ? pil_bicubic((x + xmin - center + 0.5) * ss) : pil_box((x + xmin - center + 0.5) * ss);
    std::vector<std::int32_t> k(w.size());
    for (std::size_t x = 0; x < w.size(); ++x) {
      const double v = ww != 0 ? w[x] / ww : w[x];
      k[x] = static_cast<std::int32_t>(v < 0 ? -0.5 + v * (1 << kPilPrecision) : 0.5 + v * (1 << kPilPrecision));
    }
    c.first.push_back(xmin);
    c.count.push_back(xmax);
    c.k.push_back(std::move(k));
  }
  return c;
}
inline std::uint8_t pil_clip8(std::int64_t v) { return static_cast<std::uint8_t>(std::clamp<std::int64_t>(v >> kPilPrecision, 0, 255)); }
}  // namespace detail

// Pillow's Image.resize((out_w, out_h), BOX or BICUBIC) of a (C, H, W) byte image.
inline Tensor<std::uint8_t> pil_resize(const Tensor<std::uint8_t>& img, std::int64_t out_w, std::int64_t out_h, bool bicubic) {
  using ditto::detail::cat;
  if (img.dim() != 3 || out_w < 1 || out_h < 1 || out_w > (1 << 20) || out_h > (1 << 20))
    throw ShapeError(cat("pil_resize: expected a (C, H, W) image and a size of 1 to 2^20, got ", shape_str(img.shape()), " to ", out_w, " x ", out_h));
  const std::int64_t C = img.size(0), H = img.size(1), W = img.size(2);
  if (H == out_h && W == out_w) return img.clone();  // Image.resize's own shortcut
  const auto ch = detail::pil_coeffs(static_cast<int>(W), static_cast<int>(out_w), bicubic);
  const auto cv = detail::pil_coeffs(static_cast<int>(H), static_cast<int>(out_h), bicubic);
  const bool horizontal = out_w != W, vertical = out_h != H;
  // the rows the vertical pass reads: the horizontal pass makes only these (Pillow's ybox)
  const std::int64_t y0 = vertical ? cv.first.front() : 0, y1 = vertical ? cv.first.back() + cv.count.back() : H;
  Tensor<std::uint8_t> tmp = Tensor<std::uint8_t>::empty({C, y1 - y0, out_w});
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = y0; y < y1; ++y) {
      const std::uint8_t* row = img.data() + (c * H + y) * W;
      std::uint8_t* out = tmp.data() + (c * (y1 - y0) + y - y0) * out_w;
      if (!horizontal) {
        std::copy(row, row + W, out);
        continue;
      }
      for (std::int64_t x = 0; x < out_w; ++x) {
        std::int64_t s = std::int64_t{1} << (detail::kPilPrecision - 1);
        const auto& k = ch.k[static_cast<std::size_t>(x)];
        for (int i = 0; i < ch.count[static_cast<std::size_t>(x)]; ++i) s += std::int64_t{row[ch.first[static_cast<std::size_t>(x)] + i]} * k[static_cast<std::size_t>(i)];
        out[x] = detail::pil_clip8(s);
      }
    }
  if (!vertical) return tmp;
  Tensor<std::uint8_t> out = Tensor<std::uint8_t>::empty({C, out_h, out_w});
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < out_h; ++y) {
      const auto& k = cv.k[static_cast<std::size_t>(y)];
      const std::int64_t first = cv.first[static_cast<std::size_t>(y)] - y0;
      for (std::int64_t x = 0; x < out_w; ++x) {
        std::int64_t s = std::int64_t{1} << (detail::kPilPrecision - 1);
        for (int i = 0; i < cv.count[static_cast<std::size_t>(y)]; ++i)
          s += std::int64_t{tmp.data()[(c * (y1 - y0) + first + i) * out_w + x]} * k[static_cast<std::size_t>(i)];
        out.data()[(c * out_h + y) * out_w + x] = detail::pil_clip8(s);
      }
    }
  return out;
}

// DiT's center_crop_arr (from ADM): (C, H, W) bytes -> (C, size, size) bytes.
inline Tensor<std::uint8_t> center_crop_arr(Tensor<std::uint8_t> img, std::int64_t size) {
  if (img.dim() != 3 || size < 1) throw ShapeError("center_crop_arr: expected a (C, H, W) image and a size >= 1, got " + shape_str(img.shape()));
  while (std::min(img.size(1), img.size(2)) >= 2 * size) img = pil_resize(img, img.size(2) / 2, img.size(1) / 2, /*bicubic=*/false);
  const double scale = static_cast<double>(size) / static_cast<double>(std::min(img.size(1), img.size(2)));
  // Python's round: halves to even, as nearbyint in the default rounding mode
  img = pil_resize(img, static_cast<std::int64_t>(std::nearbyint(static_cast<double>(img.size(2)) * scale)),
                   static_cast<std::int64_t>(std::nearbyint(static_cast<double>(img.size(1)) * scale)), /*bicubic=*/true);
  const std::int64_t C = img.size(0), H = img.size(1), W = img.size(2), cy = (H - size) / 2, cx = (W - size) / 2;
  Tensor<std::uint8_t> out = Tensor<std::uint8_t>::empty({C, size, size});
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < size; ++y) std::copy_n(img.data() + (c * H + cy + y) * W + cx, size, out.data() + (c * size + y) * size);
  return out;
}

// Pictures with a class each, (N, C, H, W) bytes (LabelledImages keeps Fashion-MNIST's (N, H, W)).
struct LabelledPictures {
  Tensor<std::uint8_t> images;
  Tensor<std::int64_t> labels;
  std::int64_t size() const { return labels.numel(); }
};

struct ImageFolder {
  std::vector<std::string> classes;  // sub-folder names, sorted: label i is classes[i]
  std::vector<std::string> files;    // every picture's path, in label order
  LabelledPictures set;              // center_crop_arr'ed to (N, channels, size, size)
};

inline bool has_image_extension(const std::string& name) {
  std::string ext = std::filesystem::path(name).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* e : {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})  // torchvision's IMG_EXTENSIONS
    if (ext == e) return true;
  return false;
}

// root/<class>/.../<picture>; channels 3 (RGB, ImageFolder's loader converts to RGB) or 1 (grey).
inline ImageFolder load_image_folder(const std::string& root, std::int64_t size, int channels = 3, std::int64_t max_pictures = 1000000) {
  namespace fs = std::filesystem;
  using ditto::detail::cat;
  const std::string what = "load_image_folder(\"" + root + "\")";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw IoError(what + ": not a folder");
  if (size < 1 || size > 4096) throw ArgumentError(cat(what, ": size must be from 1 to 4096, got ", size));
  if (channels != 1 && channels != 3) throw ArgumentError(cat(what, ": channels must be 1 or 3, got ", channels));
  ImageFolder f;
  for (const auto& e : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink))
    if (e.is_directory()) f.classes.push_back(e.path().filename().string());
  std::sort(f.classes.begin(), f.classes.end());
  if (f.classes.empty()) throw IoError(what + ": no class sub-folders (expected root/<class>/<picture>, as torchvision's ImageFolder)");
  std::vector<std::int64_t> labels;
  for (std::size_t c = 0; c < f.classes.size(); ++c) {
    const fs::path dir = fs::path(root) / f.classes[c];
    std::vector<fs::path> dirs = {dir};
    for (const auto& e : fs::recursive_directory_iterator(dir, fs::directory_options::follow_directory_symlink))
      if (e.is_directory()) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) { return a.string() < b.string(); });  // sorted(os.walk(...))
    std::size_t found = 0;
    for (const auto& d : dirs) {
      std::vector<std::string> names;
      for (const auto& e : fs::directory_iterator(d))
        if (!e.is_directory() && has_image_extension(e.path().filename().string())) names.push_back(e.path().filename().string());
      std::sort(names.begin(), names.end());
      for (const auto& n : names) {
        f.files.push_back((d / n).string());
        labels.push_back(static_cast<std::int64_t>(c));
        ++found;
        if (static_cast<std::int64_t>(f.files.size()) > max_pictures) throw IoError(cat(what, ": more than ", max_pictures, " pictures (raise max_pictures)"));
      }
    }
    if (found == 0) throw IoError(cat(what, ": the class folder \"", f.classes[c], "\" holds no picture (.png, .jpg, ...)"));
  }
  const auto N = static_cast<std::int64_t>(f.files.size());
  f.set.images = Tensor<std::uint8_t>::empty({N, channels, size, size});
  f.set.labels = Tensor<std::int64_t>({N}, labels);
  const std::int64_t per = channels * size * size;
  for (std::int64_t i = 0; i < N; ++i) {
    const std::string& p = f.files[static_cast<std::size_t>(i)];
    std::string ext = fs::path(p).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (ext != ".png" && ext != ".jpg" && ext != ".jpeg")
      throw IoError(cat(what, ": ", p, " has an image extension ditto does not decode (it reads PNG and JPEG); convert it or move it out"));
    const Tensor<std::uint8_t> img = center_crop_arr(read_image_bytes(p, channels), size);
    std::copy(img.begin(), img.end(), f.set.images.data() + i * per);
  }
  return f;
}

// A batch: pictures at `indices` as float (B, C, H, W), byte b -> lo + (hi - lo) b / 255, flipped
// left-right where flips[i] (DiT's RandomHorizontalFlip), and the labels.
inline std::pair<Tensor<float>, Tensor<std::int64_t>> picture_batch(const LabelledPictures& d, const std::vector<std::int64_t>& indices,
                                                                    const std::vector<bool>& flips, float lo = -1.0f, float hi = 1.0f) {
  using ditto::detail::cat;
  if (flips.size() != indices.size()) throw ArgumentError(cat("picture_batch: ", indices.size(), " indices and ", flips.size(), " flips"));
  const auto B = static_cast<std::int64_t>(indices.size());
  const std::int64_t C = d.images.size(1), H = d.images.size(2), W = d.images.size(3);
  Tensor<float> x = Tensor<float>::empty({B, C, H, W});
  Tensor<std::int64_t> y = Tensor<std::int64_t>::empty({B});
  const float scale = (hi - lo) / 255.0f;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t i = indices[static_cast<std::size_t>(b)];
    if (i < 0 || i >= d.size()) throw ArgumentError(cat("picture_batch: index ", i, " of a set of ", d.size(), " pictures"));
    for (std::int64_t r = 0; r < C * H; ++r)
      for (std::int64_t c = 0; c < W; ++c)
        x[(b * C * H + r) * W + c] = lo + scale * static_cast<float>(d.images[(i * C * H + r) * W + (flips[static_cast<std::size_t>(b)] ? W - 1 - c : c)]);
    y[b] = d.labels[i];
  }
  return {std::move(x), std::move(y)};
}

// torchvision's RandomCrop(size = (H, W), padding = P) on a batch (B, C, H, W), in place: each
// picture is padded by P pixels of `fill` on every side and cut back to H x W at (top, left) =
// offsets[b], each in [0, 2P]; so it moves by (P - top, P - left) pixels, and what comes in is
// background. A Fashion-MNIST item is a few pixels off centre in real photos too: the shift teaches
// a coarse-patched ViT that the patch grid is not the item's.
inline void random_crop(Tensor<float>& x, const std::vector<std::pair<std::int64_t, std::int64_t>>& offsets, std::int64_t padding, float fill) {
  using ditto::detail::cat;
  if (x.dim() != 4) throw ShapeError(cat("random_crop: expected pictures (B, C, H, W), got ", x.dim(), " dimensions"));
  const std::int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (static_cast<std::int64_t>(offsets.size()) != B) throw ArgumentError(cat("random_crop: ", B, " pictures and ", offsets.size(), " offsets"));
  if (padding < 0) throw ArgumentError(cat("random_crop: padding must be >= 0, got ", padding));
  // Every offset is checked before any picture moves: a bad one leaves the whole batch as it was.
  for (std::int64_t b = 0; b < B; ++b) {
    const auto [top, left] = offsets[static_cast<std::size_t>(b)];
    if (top < 0 || top > 2 * padding || left < 0 || left > 2 * padding)
      throw ArgumentError(cat("random_crop: offsets (", top, ", ", left, ") of picture ", b, " must be in [0, ", 2 * padding, "]"));
  }
  std::vector<float> plane(static_cast<std::size_t>(H * W));
  for (std::int64_t b = 0; b < B; ++b) {
    const auto [top, left] = offsets[static_cast<std::size_t>(b)];
    const std::int64_t dy = top - padding, dx = left - padding;  // output (r, c) reads input (r + dy, c + dx)
    for (std::int64_t ch = 0; ch < C; ++ch) {
      float* p = x.data() + (b * C + ch) * H * W;
      std::copy(p, p + H * W, plane.begin());
      for (std::int64_t r = 0; r < H; ++r)
        for (std::int64_t c = 0; c < W; ++c) {
          const std::int64_t rr = r + dy, cc = c + dx;
          p[r * W + c] = (rr >= 0 && rr < H && cc >= 0 && cc < W) ? plane[static_cast<std::size_t>(rr * W + cc)] : fill;
        }
    }
  }
}

}  // namespace ditto::data
