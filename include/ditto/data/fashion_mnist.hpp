// Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 70 000 grey 28 x 28 pictures of clothing in 10
// classes, 60 000 for training and 10 000 for testing, as Debian's dataset-fashion-mnist package
// installs them (/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz;
// tools/install-deps.sh installs it).
//
//   auto test = data::load_fashion_mnist("test");   // images (10000, 28, 28) uint8, labels (10000) int64
//   auto [x, y] = data::image_batch(test, {0, 5, 9}, -1.0f, 1.0f);  // (3, 1, 28, 28) in [-1, 1], (3)
//   data::fashion_mnist_classes[y[0]];                // "Ankle boot"
//
// The folder is DITTO_FASHION_MNIST when set, else Debian's. Both files of a split are read with
// read_idx's checks, and then: images 3-D of 28 x 28, labels 1-D, as many labels as images, each
// label 0 to 9. A missing file names the file and the Debian package.
#pragma once

#include <array>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include <sys/stat.h>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "idx.hpp"

namespace ditto::data {

// The class names, in label order (the dataset's own README).
inline constexpr std::array<const char*, 10> fashion_mnist_classes = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                                      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// Pictures with a class label each: images (N, H, W) bytes, 0 the background; labels (N).
struct LabelledImages {
  Tensor<std::uint8_t> images;
  Tensor<std::int64_t> labels;
  std::int64_t size() const { return labels.numel(); }
};

inline std::string fashion_mnist_root() {
  const char* env = std::getenv("DITTO_FASHION_MNIST");
  return env && *env ? std::string(env) : std::string("/usr/share/datasets/fashion-mnist");
}

// split: "train" (60 000) or "test" (10 000, the files named t10k). root: the folder holding the
// four files ("" for fashion_mnist_root()).
inline LabelledImages load_fashion_mnist(const std::string& split, std::string root = "") {
  using ditto::detail::cat;
  if (split != "train" && split != "test")
    throw ArgumentError(cat("load_fashion_mnist: split \"", split, "\"; expected \"train\" or \"test\""));
  if (root.empty()) root = fashion_mnist_root();
  const std::string stem = root + "/" + (split == "train" ? "train" : "t10k");
  const std::string image_path = stem + "-images-idx3-ubyte.gz", label_path = stem + "-labels-idx1-ubyte.gz";
  for (const auto& p : {image_path, label_path}) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0)
      throw IoError(cat("Fashion-MNIST: ", p, " not found; install Debian's dataset-fashion-mnist package (apt-get install ",
                        "dataset-fashion-mnist, or tools/install-deps.sh), or set DITTO_FASHION_MNIST to a folder holding the four files"));
  }
  IdxArray im = read_idx(image_path), lb = read_idx(label_path);
  if (im.dims.size() != 3 || im.dims[1] != 28 || im.dims[2] != 28)
    throw IoError(cat("Fashion-MNIST: ", image_path, " holds an array of ", im.dims.size(), " dimensions (", shape_str(im.dims),
                      "); expected (N, 28, 28) images"));
  if (lb.dims.size() != 1 || lb.dims[0] != im.dims[0])
    throw IoError(cat("Fashion-MNIST: ", label_path, " holds ", shape_str(lb.dims), "; expected (", im.dims[0], ") labels, one per image of ", image_path));
  LabelledImages d;
  d.images = Tensor<std::uint8_t>::empty(Shape(im.dims.begin(), im.dims.end()));
  std::copy(im.values.begin(), im.values.end(), d.images.data());
  d.labels = Tensor<std::int64_t>::empty({lb.dims[0]});
  for (std::int64_t i = 0; i < lb.dims[0]; ++i) {
    const std::uint8_t v = lb.values[static_cast<std::size_t>(i)];
    if (v >= fashion_mnist_classes.size())
      throw IoError(cat("Fashion-MNIST: ", label_path, ": label ", int(v), " at index ", i, "; expected a class from 0 to 9"));
    d.labels[i] = v;
  }
  return d;
}

// A batch as a model reads it: the pictures at `indices` as float (B, 1, H, W), each byte b
// mapped to lo + (hi - lo) b / 255 (DiT's transform: ToTensor then Normalize(0.5, 0.5) gives
// [-1, 1]), and their labels (B).
inline std::pair<Tensor<float>, Tensor<std::int64_t>> image_batch(const LabelledImages& d, const std::vector<std::int64_t>& indices, float lo = 0.0f,
                                                                  float hi = 1.0f) {
  using ditto::detail::cat;
  if (d.images.dim() != 3 || d.images.size(0) != d.size())
    throw ShapeError(cat("image_batch: expected images (N, H, W) and N labels, got ", shape_str(d.images.shape()), " and ", shape_str(d.labels.shape())));
  const std::int64_t B = static_cast<std::int64_t>(indices.size()), H = d.images.size(1), W = d.images.size(2);
  Tensor<float> x = Tensor<float>::empty({B, 1, H, W});
  Tensor<std::int64_t> y = Tensor<std::int64_t>::empty({B});
  const float scale = (hi - lo) / 255.0f;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t i = indices[static_cast<std::size_t>(b)];
    if (i < 0 || i >= d.size()) throw ArgumentError(cat("image_batch: index ", i, " of a dataset of ", d.size(), " pictures"));
    const std::uint8_t* src = d.images.data() + i * H * W;
    float* dst = x.data() + b * H * W;
    for (std::int64_t k = 0; k < H * W; ++k) dst[k] = lo + scale * static_cast<float>(src[k]);
    y[b] = d.labels[i];
  }
  return {std::move(x), std::move(y)};
}

}  // namespace ditto::data
