// What the training tests share (test_train.cpp, test_train_video.cpp): central differences,
// random blocks, gradient fixtures from PyTorch autograd, and the model-level check.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include <ditto/ditto.hpp>

#include "helpers.hpp"

namespace train_test {
using namespace ditto;
using Checked = std::vector<std::tuple<std::string, Tensor<double>*, const Tensor<double>*>>;

// The worst relative error, over the tensors, of `analytic` against central differences of L at
// up to `per` coordinates of each (spread over the tensor): max |fd - analytic| / max |analytic|.
inline double worst_fd_error(const std::function<double()>& L, const Checked& checked, int per = 10, double h = 1e-6) {
  // Central differences carry an absolute rounding noise of about eps |L| / h, so a gradient that
  // is zero (k_norm's bias: softmax ignores a shift shared by every key) or tiny (a conv bias
  // before a GroupNorm, which removes it) is held to that noise (64 ulps of L over h, ~1e-9 here)
  // on top of the relative 1e-6: far below the size of any wrong gradient.
  const double noise = 64 * std::numeric_limits<double>::epsilon() * std::abs(L()) / h;
  double worst = 0;
  for (const auto& [name, x, g] : checked) {
    REQUIRE(x->shape() == g->shape());
    double scale = 0, diff = 0;
    for (double v : *g) scale = std::max(scale, std::abs(v));
    const std::int64_t n = x->numel(), step = std::max<std::int64_t>(1, n / per);
    for (std::int64_t i = 0; i < n; i += step) {
      const double keep = (*x)[i];
      (*x)[i] = keep + h;
      const double up = L();
      (*x)[i] = keep - h;
      const double down = L();
      (*x)[i] = keep;
      diff = std::max(diff, std::abs((up - down) / (2 * h) - (*g)[i]));
    }
    const double rel = scale > 0 ? diff / scale : diff;
    INFO(name << ": relative error " << rel << " (max |grad| " << scale << ", max |fd - grad| " << diff << ", noise " << noise << ")");
    CHECK(diff <= 1e-6 * scale + noise);
    worst = std::max(worst, rel);
  }
  return worst;
}

inline double dot(const Tensor<double>& a, const Tensor<double>& b) {
  REQUIRE(a.shape() == b.shape());
  double s = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) s += a[i] * b[i];
  return s;
}

// Every tensor of a block drawn from N(0, scale^2) (adaLN-Zero's zeros would hide gradients).
template <class T, class Block>
void randomize(Block& block, Generator& gen, double scale = 0.3) {
  for (auto& [name, t] : nn::named_parameters<T>(block)) {
    const Tensor<T> r = gen.normal<T>(t->shape());
    for (std::int64_t i = 0; i < t->numel(); ++i) (*t)[i] = static_cast<T>(scale) * r[i];
  }
}

// Two gradient trees of one model, equal to the bit (checkpointing, thread counts).
template <class T, class Model>
void require_same_grads(Model& a, Model& b) {
  for (auto& [name, x, y] : nn::zip_parameters<T>(a, b)) {
    INFO(name);
    ditto_test::require_equal(*x, *y);
  }
}

// The block's trainable tensors and their gradients, paired for worst_fd_error.
template <class Block>
Checked params_of(Block& block, Block& grads, const std::string& prefix = "") {
  Checked out;
  for (auto& [name, p, g] : nn::zip_parameters<double>(block, grads)) out.emplace_back(prefix + name, p, g);
  return out;
}
// A model's backward against central differences on every parameter and x, and the same
// gradient bits with activation checkpointing. forward() runs the inference forward on x,
// forward_train(acts) the training one.
template <class Model, class Forward, class ForwardTrain>
void check_model_backward(Model& model, Tensor<double>& x, Generator& gen, int per, Forward&& forward, ForwardTrain&& forward_train) {
  typename Model::Acts acts;
  const Tensor<double> out = forward_train(acts);
  CHECK_CLOSE(out, forward(), 1e-13);
  const Tensor<double> gout = gen.normal<double>(out.shape());
  auto g = nn::zeros_like<double>(model);
  Tensor<double> dx;
  model.backward(g, acts, gout, &dx);
  auto checked = params_of(model, g);
  checked.emplace_back("x", &x, &dx);
  worst_fd_error([&] { return dot(forward(), gout); }, checked, per);
  typename Model::Acts ck;  // checkpointing: the same bits
  ck.checkpoint = true;
  (void)forward_train(ck);
  auto g2 = nn::zeros_like<double>(model);
  Tensor<double> dx2;
  model.backward(g2, ck, gout, &dx2);
  require_same_grads<double>(g, g2);
  ditto_test::require_equal(dx, dx2);
}
// tests/fixtures/grad_{nn,dit}_{f32,f64}.safetensors (tools/gen_grad_fixtures.py: PyTorch autograd
// on upstream's modules, L = sum(out * grad_out)): "case.w.*", "case.in.*", "case.grad_out",
// "case.out", "case.grad.*".
template <class T>
struct GradFixture {
  SafetensorsFile file;
  std::string c;
  GradFixture(const std::string& which, std::string case_name)
      : file(std::string(DITTO_FIXTURES) + "/grad_" + which + (std::is_same_v<T, float> ? "_f32" : "_f64") + ".safetensors"),
        c(std::move(case_name)) {}
  Tensor<T> in(const std::string& n) const { return file.get<T>(c + ".in." + n); }
  Tensor<T> grad(const std::string& n) const { return file.get<T>(c + ".grad." + n); }
  Tensor<T> grad_out() const { return file.get<T>(c + ".grad_out"); }
  Tensor<T> out() const { return file.get<T>(c + ".out"); }
  template <class Block>
  void load(Block& b) const {
    const std::string prefix = c + ".w.";
    nn::load<T>(b, file, true, [&](const std::string& n) { return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : std::string(); });
  }
  // every trainable tensor of g against "case.grad.<name>". A gradient that is zero in exact
  // arithmetic (qk_norm's k_norm.bias: softmax ignores a shift shared by every key) holds only
  // rounding noise on both sides, so relative to itself it means nothing: a reference below 1e-6
  // of the case's largest gradient is compared relative to that largest gradient instead.
  template <class Block>
  void check_grads(Block& g, double tol) const {
    int n = 0;
    double largest = 0;
    for (auto& [name, t] : nn::trainable_parameters<T>(g)) largest = std::max(largest, ref_absmax(name));
    for (auto& [name, t] : nn::trainable_parameters<T>(g)) {
      check_grad(name, *t, tol, largest);
      ++n;
    }
    CHECK(n > 0);
  }
  // max |ref| of "case.grad.<n>", stored whole or as a sketch
  double ref_absmax(const std::string& n) const {
    const std::string key = c + ".grad." + n;
    if (!file.contains(key)) return static_cast<double>(file.get<T>(key + ".absmax")[0]);
    double m = 0;
    for (T v : grad(n)) m = std::max(m, std::abs(static_cast<double>(v)));
    return m;
  }
  // got against "case.grad.<n>" (the rule above), stored whole, or as a sketch of a large
  // gradient (tools/gen_grad_unet_fixtures.py): its first values (.head), max |g| (.absmax) and
  // the dot with hash_weights("sketch." + n) (.dot), so every element counts.
  void check_grad(const std::string& n, const Tensor<T>& got, double tol, double largest) const {
    INFO(c << ": grad." << n);
    const std::string key = c + ".grad." + n;
    const double own = ref_absmax(n), bound = own < 1e-6 * largest ? tol * largest : tol * own;
    if (file.contains(key)) {
      const Tensor<T> ref = grad(n);
      REQUIRE(got.shape() == ref.shape());
      double diff = 0;
      for (std::int64_t i = 0; i < ref.numel(); ++i) diff = std::max(diff, std::abs(static_cast<double>(got[i]) - static_cast<double>(ref[i])));
      INFO("max |got - ref| " << diff << ", max |ref| " << own << ", the case's largest gradient " << largest);
      CHECK(diff <= bound);
      return;
    }
    const Tensor<T> head = file.get<T>(key + ".head");
    const double dot_ref = file.get<double>(key + ".dot")[0];
    double got_max = 0, d = 0, r_abs = 0, head_diff = 0;
    Tensor<double> r(got.shape());
    ditto_test::hash_weights("sketch." + n, r);
    for (std::int64_t i = 0; i < got.numel(); ++i) {
      got_max = std::max(got_max, std::abs(static_cast<double>(got[i])));
      d += static_cast<double>(got[i]) * r[i], r_abs += std::abs(r[i]);
    }
    for (std::int64_t i = 0; i < head.numel(); ++i) head_diff = std::max(head_diff, std::abs(static_cast<double>(got[i] - head[i])));
    INFO("a sketch: max |ref| " << own << ", the case's largest gradient " << largest);
    CHECK(head_diff <= bound);
    CHECK(std::abs(got_max - own) <= bound);
    CHECK(std::abs(d - dot_ref) <= bound * r_abs);  // what max |got - ref| <= bound implies for the dot
  }
};
// A model's weights as the hashed-weight generators make them (tools/gen_grad_unet_fixtures.py,
// gen_grad_vae_fixtures.py): hash_weights of each state-dict name, under exactly the names and
// shapes the config entry records.
template <class T, class Model>
void hash_model_weights(Model& m, const nlohmann::json& entry) {
  std::size_t n = 0;
  for (auto& [pname, t] : nn::named_parameters<T>(m)) {
    INFO(pname);
    REQUIRE(entry["state_dict"].contains(pname));
    CHECK(t->shape() == entry["state_dict"][pname].template get<Shape>());
    ditto_test::hash_weights(pname, *t);
    ++n;
  }
  CHECK(n == entry["state_dict"].size());
}
template <class T>
constexpr double block_tol() { return std::is_same_v<T, float> ? 1e-5 : 1e-10; }
}  // namespace train_test
