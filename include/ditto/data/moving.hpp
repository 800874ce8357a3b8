// Moving Fashion-MNIST: video clips made in code from Fashion-MNIST pictures, by the Moving-MNIST
// recipe (Srivastava et al. 2015): items pasted on a black canvas move in a straight line and
// bounce off its edges, over T frames. Here every item of a clip is of one class and all move in
// one direction, so a clip has two labels: the class and the direction of motion.
//
//   data::MovingFashionMnist clips(data::load_fashion_mnist("train"), {}, /*seed=*/0, /*size=*/60000);
//   auto c = clips.clip(17);                      // frames (8, 1, 32, 32) in [0, 1], c.cls, c.direction
//   auto [x, y] = clips.batch({0, 1, 2}, -1, 1);  // (3, 8, 1, 32, 32), labels cls * directions + direction
//
// Defaults (MovingOptions): 8 frames of a 32 x 32 canvas, items scaled to 14 x 14 (2 x 2 means),
// 1 to 3 items, 2 pixels a frame, 4 directions (0 right, 1 down, 2 left, 3 up; with 8, every 45
// degrees from right, clockwise as the rows grow downwards). An item bounces (its position is
// reflected at the edges, as Moving-MNIST's); the direction label is the one it starts with.
// Overlapping items combine by their maximum. Clip i is a pure function of (seed, i): the set
// needs no storage, a resumed run sees the same clips, and any thread or process can make any
// clip.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "fashion_mnist.hpp"

namespace ditto::data {

struct MovingOptions {
  std::int64_t frames = 8, canvas = 32, item = 14, max_items = 3, directions = 4;
  double speed = 2.0;  // pixels a frame

  void validate() const {
    using ditto::detail::cat;
    if (frames < 1 || frames > 1024) throw ArgumentError(cat("MovingOptions: frames must be from 1 to 1024, got ", frames));
    if (item < 1 || 28 % item != 0) throw ArgumentError(cat("MovingOptions: item must divide 28 (28, 14, 7, 4, 2 or 1), got ", item));
    if (canvas < item || canvas > 4096) throw ArgumentError(cat("MovingOptions: canvas must be from item (", item, ") to 4096, got ", canvas));
    if (max_items < 1 || max_items > 16) throw ArgumentError(cat("MovingOptions: max_items must be from 1 to 16, got ", max_items));
    if (directions != 4 && directions != 8) throw ArgumentError(cat("MovingOptions: directions must be 4 or 8, got ", directions));
    if (!(speed >= 0 && speed <= 1024)) throw ArgumentError(cat("MovingOptions: speed must be from 0 to 1024 pixels a frame, got ", speed));
  }
};

// The names of the directions, in label order.
inline const char* direction_name(std::int64_t d, std::int64_t directions) {
  static constexpr std::array<const char*, 8> eight = {"right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right"};
  static constexpr std::array<const char*, 4> four = {"right", "down", "left", "up"};
  if (d < 0 || d >= directions || (directions != 4 && directions != 8)) throw ArgumentError(ditto::detail::cat("direction_name: ", d, " of ", directions));
  return directions == 4 ? four[static_cast<std::size_t>(d)] : eight[static_cast<std::size_t>(d)];
}

struct MovingClip {
  Tensor<float> frames;  // (T, 1, canvas, canvas) in [0, 1], 0 the background
  std::int64_t cls = 0, direction = 0, items = 0;
};

class MovingFashionMnist {
 public:
  MovingFashionMnist(LabelledImages source, MovingOptions o, std::uint64_t seed, std::int64_t size)
      : src_(std::move(source)), o_(o), seed_(seed), size_(size) {
    o_.validate();
    if (size < 1) throw ArgumentError(ditto::detail::cat("MovingFashionMnist: size must be >= 1, got ", size));
    if (src_.images.dim() != 3 || src_.images.size(1) != 28 || src_.images.size(2) != 28)
      throw ShapeError("MovingFashionMnist: expected Fashion-MNIST's (N, 28, 28) pictures, got " + shape_str(src_.images.shape()));
    if (src_.labels.numel() != src_.images.size(0))
      throw ShapeError(ditto::detail::cat("MovingFashionMnist: ", src_.images.size(0), " pictures and ", src_.labels.numel(), " labels"));
    for (std::int64_t i = 0; i < src_.size(); ++i) {
      if (src_.labels[i] < 0 || src_.labels[i] >= static_cast<std::int64_t>(by_class_.size()))
        throw ArgumentError(ditto::detail::cat("MovingFashionMnist: label ", src_.labels[i], " at row ", i, "; expected a class from 0 to 9"));
      by_class_[static_cast<std::size_t>(src_.labels[i])].push_back(i);
    }
    for (std::size_t c = 0; c < by_class_.size(); ++c)
      if (by_class_[c].empty()) throw ArgumentError(ditto::detail::cat("MovingFashionMnist: the source has no picture of class ", c));
  }

  std::int64_t size() const { return size_; }
  const MovingOptions& options() const { return o_; }
  std::int64_t classes() const { return static_cast<std::int64_t>(by_class_.size()); }
  // The joint label of (class, direction): what a model conditioned on both takes.
  std::int64_t joint(std::int64_t cls, std::int64_t direction) const { return cls * o_.directions + direction; }

  MovingClip clip(std::int64_t i) const {
    using ditto::detail::cat;
    if (i < 0 || i >= size_) throw ArgumentError(cat("MovingFashionMnist.clip: index ", i, " of a set of ", size_, " clips"));
    Generator g(seed_, static_cast<std::uint64_t>(i) << 24);
    const Tensor<double> u = g.uniform<double>({3 + 3 * o_.max_items});
    auto pick = [&](double v, std::int64_t n) { return std::min<std::int64_t>(static_cast<std::int64_t>(v * static_cast<double>(n)), n - 1); };
    MovingClip c;
    c.cls = pick(u[0], classes());
    c.direction = pick(u[1], o_.directions);
    c.items = 1 + pick(u[2], o_.max_items);
    const double angle = 2 * 3.14159265358979323846 * static_cast<double>(c.direction) / static_cast<double>(o_.directions);
    double vx = o_.speed * std::cos(angle), vy = o_.speed * std::sin(angle);  // +y: down the rows
    if (std::abs(vx) < 1e-9) vx = 0;
    if (std::abs(vy) < 1e-9) vy = 0;
    const std::int64_t S = o_.canvas, P = o_.item, k = 28 / P, L = S - P;
    c.frames = Tensor<float>({o_.frames, 1, S, S});
    const auto& pool = by_class_[static_cast<std::size_t>(c.cls)];
    for (std::int64_t n = 0; n < c.items; ++n) {
      const std::int64_t pic = pool[static_cast<std::size_t>(pick(u[3 + 3 * n], static_cast<std::int64_t>(pool.size())))];
      std::vector<float> item(static_cast<std::size_t>(P * P));  // the picture scaled by k x k means
      const std::uint8_t* px = src_.images.data() + pic * 28 * 28;
      for (std::int64_t r = 0; r < P; ++r)
        for (std::int64_t q = 0; q < P; ++q) {
          double s = 0;
          for (std::int64_t a = 0; a < k; ++a)
            for (std::int64_t b = 0; b < k; ++b) s += px[(r * k + a) * 28 + q * k + b];
          item[static_cast<std::size_t>(r * P + q)] = static_cast<float>(s / (255.0 * k * k));
        }
      const double x0 = u[4 + 3 * n] * static_cast<double>(L), y0 = u[5 + 3 * n] * static_cast<double>(L);
      for (std::int64_t t = 0; t < o_.frames; ++t) {
        const std::int64_t x = bounce(x0 + vx * static_cast<double>(t), L), y = bounce(y0 + vy * static_cast<double>(t), L);
        float* f = c.frames.data() + t * S * S;
        for (std::int64_t r = 0; r < P; ++r)
          for (std::int64_t q = 0; q < P; ++q) {
            float& dst = f[(y + r) * S + x + q];
            dst = std::max(dst, item[static_cast<std::size_t>(r * P + q)]);
          }
      }
    }
    return c;
  }

  // Clips at `indices` as (B, T, 1, S, S) with [0, 1] mapped to [lo, hi] (Latte's layout), and
  // their joint labels cls * directions + direction.
  std::pair<Tensor<float>, Tensor<std::int64_t>> batch(const std::vector<std::int64_t>& indices, float lo = 0.0f, float hi = 1.0f) const {
    const auto B = static_cast<std::int64_t>(indices.size());
    const std::int64_t per = o_.frames * o_.canvas * o_.canvas;
    Tensor<float> x = Tensor<float>::empty({B, o_.frames, 1, o_.canvas, o_.canvas});
    Tensor<std::int64_t> y = Tensor<std::int64_t>::empty({B});
    for (std::int64_t b = 0; b < B; ++b) {
      const MovingClip c = clip(indices[static_cast<std::size_t>(b)]);
      for (std::int64_t i = 0; i < per; ++i) x[b * per + i] = lo + (hi - lo) * c.frames[i];
      y[b] = joint(c.cls, c.direction);
    }
    return {std::move(x), std::move(y)};
  }

 private:
  // p reflected into [0, L] (period 2L), rounded to a pixel.
  static std::int64_t bounce(double p, std::int64_t L) {
    if (L == 0) return 0;
    const double period = 2.0 * static_cast<double>(L);
    double q = std::fmod(p, period);
    if (q < 0) q += period;
    if (q > static_cast<double>(L)) q = period - q;
    return std::clamp<std::int64_t>(static_cast<std::int64_t>(std::lround(q)), 0, L);
  }

  LabelledImages src_;
  MovingOptions o_;
  std::uint64_t seed_;
  std::int64_t size_;
  std::array<std::vector<std::int64_t>, 10> by_class_;
};

}  // namespace ditto::data
