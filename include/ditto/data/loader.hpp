// Seeded shuffling in batches that a resumed run continues exactly where it stopped.
//
//   data::ShuffledBatches order(train.size(), 64, /*seed=*/0);   // drop_last, as DiT's DataLoader
//   for (int step = 0; step < steps; ++step) {
//     const std::vector<std::int64_t> idx = order.next();        // 64 indices of this batch
//     auto [x, y] = data::image_batch(train, idx, -1.0f, 1.0f);
//     ...
//   }
//   state.sampler = order.state();                                // into a checkpoint: {epoch, position}
//   order.restore(saved);                                         // after a resume: the same next batches
//
// Epoch e visits the items in the order of a Fisher-Yates shuffle whose draws are Philox under
// the seed at counters (i, e): a pure function of (seed, epoch), so restoring {epoch, position}
// only recomputes that epoch's permutation and never replays earlier draws. With drop_last (the
// default, as DiT's train.py), an epoch ends when fewer than a batch of items are left; without
// it the last batch of an epoch is shorter.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"

namespace ditto::data {

class ShuffledBatches {
 public:
  struct State {
    std::int64_t epoch = 0, position = 0;  // the next batch starts at permutation[position] of this epoch
    bool operator==(const State&) const = default;
  };

  ShuffledBatches(std::int64_t items, std::int64_t batch, std::uint64_t seed, bool drop_last = true)
      : items_(items), batch_(batch), seed_(seed), drop_last_(drop_last) {
    using ditto::detail::cat;
    if (items < 1) throw ArgumentError(cat("ShuffledBatches: ", items, " items; expected at least 1"));
    if (batch < 1) throw ArgumentError(cat("ShuffledBatches: batch ", batch, "; expected at least 1"));
    if (drop_last && batch > items)
      throw ArgumentError(cat("ShuffledBatches: batch ", batch, " is larger than the ", items, " items, and drop_last leaves no batch"));
    shuffle(0);
  }

  // The indices of the next batch (a new epoch's order when this one is used up).
  std::vector<std::int64_t> next() {
    const std::int64_t left = items_ - state_.position;
    if (left == 0 || (drop_last_ && left < batch_)) shuffle(state_.epoch + 1);
    const std::int64_t n = std::min(batch_, items_ - state_.position);
    std::vector<std::int64_t> out(order_.begin() + state_.position, order_.begin() + state_.position + n);
    state_.position += n;
    return out;
  }

  State state() const { return state_; }
  void restore(State s) {
    using ditto::detail::cat;
    if (s.epoch < 0 || s.position < 0 || s.position > items_)
      throw ArgumentError(cat("ShuffledBatches.restore: epoch ", s.epoch, ", position ", s.position, "; expected epoch >= 0 and a position from 0 to ",
                              items_));
    shuffle(s.epoch);
    state_ = s;
  }
  // The order of epoch e (the permutation its batches walk).
  const std::vector<std::int64_t>& order() const { return order_; }
  std::int64_t batches_per_epoch() const { return drop_last_ ? items_ / batch_ : (items_ + batch_ - 1) / batch_; }

 private:
  void shuffle(std::int64_t epoch) {
    order_.resize(static_cast<std::size_t>(items_));
    std::iota(order_.begin(), order_.end(), std::int64_t{0});
    for (std::int64_t i = items_ - 1; i > 0; --i) {  // Fisher-Yates: j uniform in [0, i]
      const auto r = ditto::detail::philox4x32_10(
          {static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(static_cast<std::uint64_t>(i) >> 32), static_cast<std::uint32_t>(epoch),
           static_cast<std::uint32_t>(static_cast<std::uint64_t>(epoch) >> 32)},
          seed_);
      const std::uint64_t u = (std::uint64_t{r[0]} << 32) | r[1];
      const auto j = static_cast<std::int64_t>((static_cast<unsigned __int128>(u) * static_cast<std::uint64_t>(i + 1)) >> 64);
      std::swap(order_[static_cast<std::size_t>(i)], order_[static_cast<std::size_t>(j)]);
    }
    state_ = {epoch, 0};
  }

  std::int64_t items_, batch_;
  std::uint64_t seed_;
  bool drop_last_;
  State state_;
  std::vector<std::int64_t> order_;
};

}  // namespace ditto::data
