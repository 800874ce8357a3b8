// Optimizers with torch.optim's semantics, exactly (the same formulas in the same order, so 10
// steps agree with torch's to rounding): AdamW, Adam, SGD with momentum / dampening / Nesterov;
// parameter groups; clipping by global norm; learning-rate schedules; DiT's EMA.
//
//   auto grads = nn::zeros_like<float>(model);
//   train::AdamW<float, models::DiT<float>> opt(model, {.lr = 1e-4, .weight_decay = 0});
//   ... model.backward(grads, acts, dout);
//   train::clip_grad_norm<float>(grads, 1.0);
//   opt.step(model, grads);            // opt.step(model, grads, schedule(step)) scales the lr
//   train::update_ema<float>(ema, model, 0.9999);
//
// An optimizer keeps its state as gradient trees of the model (nn::zeros_like), so each moment
// lives under its parameter's name, and every step checks that the trees it is given line up
// with it (nn::zip_parameters refuses another model's gradients).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/threading.hpp"
#include "../nn/module.hpp"

namespace ditto::train {

// A parameter group: the trainable tensors whose names `member` accepts take this lr and weight
// decay (the first group that accepts a name wins; the rest take the optimizer's own).
struct ParamGroup {
  std::function<bool(const std::string&)> member;
  double lr = 0, weight_decay = 0;
};

// The usual exclusion from weight decay: biases, norms' scales and shifts, embeddings of position.
inline bool is_norm_or_bias(const std::string& name) {
  return name.size() >= 5 && (name.compare(name.size() - 5, 5, ".bias") == 0 || name.find("norm") != std::string::npos ||
                              name.find("pos_embed") != std::string::npos);
}

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0;  // AdamW: decoupled (p *= 1 - lr wd); Adam: L2 (g += wd p)
};

namespace detail {
// For each trainable tensor of the model: its lr and weight decay, from the groups.
inline std::pair<double, double> group_of(const std::vector<ParamGroup>& groups, const std::string& name, double lr, double wd) {
  for (const auto& g : groups)
    if (g.member && g.member(name)) return {g.lr, g.weight_decay};
  return {lr, wd};
}

// f(i) for i in [0, n), split over threads (each element on its own: any split gives the same bits).
template <class F>
inline void for_each_element(std::int64_t n, F&& f) {
  parallel_for(n, n * 8, [&](std::int64_t lo, std::int64_t hi) {
    for (auto i = lo; i < hi; ++i) f(i);
  });
}

// torch's Adam / AdamW step (torch 1.13 _single_tensor_adam, amsgrad off), on one tensor.
template <class T>
inline void adam_update(T* p, const T* g, T* m, T* v, std::int64_t n, std::int64_t step, double lr, double wd, const AdamOptions& o,
                        bool decoupled) {
  // the scalars in double, rounded once to T, as torch computes them in Python floats
  const T b1 = static_cast<T>(o.beta1), b2 = static_cast<T>(o.beta2);
  const double bc1 = 1 - std::pow(o.beta1, static_cast<double>(step)), bc2 = 1 - std::pow(o.beta2, static_cast<double>(step));
  const T step_size = static_cast<T>(lr / bc1), bc2_sqrt = static_cast<T>(std::sqrt(bc2)), eps = static_cast<T>(o.eps);
  const T decay = static_cast<T>(1 - lr * wd), l2 = static_cast<T>(wd);
  for_each_element(n, [&](std::int64_t i) {
    T grad = g[i];
    if (decoupled) p[i] *= decay;              // AdamW: p.mul_(1 - lr * weight_decay)
    else if (l2 != T(0)) grad += l2 * p[i];    // Adam: grad = grad.add(param, alpha=weight_decay)
    m[i] = m[i] * b1 + grad * (T(1) - b1);     // exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    v[i] = v[i] * b2 + grad * grad * (T(1) - b2);  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);        // param.addcdiv_(exp_avg, denom, value=-step_size)
  });
}
}  // namespace detail

// Adam and AdamW (torch.optim.Adam / AdamW): Model is the model's type; the moments are two
// gradient trees of it.
template <class T, class Model, bool Decoupled>
class AdamBase {
 public:
  AdamBase(const Model& model, AdamOptions options, std::vector<ParamGroup> groups = {})
      : exp_avg(nn::zeros_like<T>(model)), exp_avg_sq(nn::zeros_like<T>(model)), options_(options), groups_(std::move(groups)) {
    if (!(options.lr >= 0) || !(options.eps >= 0) || !(options.beta1 >= 0 && options.beta1 < 1) || !(options.beta2 >= 0 && options.beta2 < 1) ||
        !(options.weight_decay >= 0))
      throw ArgumentError(ditto::detail::cat(name(), ": expected lr, eps, weight_decay >= 0 and betas in [0, 1), got lr ", options.lr,
                                             ", betas (", options.beta1, ", ", options.beta2, "), eps ", options.eps, ", weight_decay ",
                                             options.weight_decay));
    nn::require_distinct_storage<T>(const_cast<Model&>(model), name());
  }
  static const char* name() { return Decoupled ? "AdamW" : "Adam"; }

  // One step: model -= update(grads), every group's lr times lr_factor (a schedule's value).
  void step(Model& model, Model& grads, double lr_factor = 1.0) {
    auto pg = nn::zip_parameters<T>(model, grads, name());
    auto pm = nn::zip_parameters<T>(model, exp_avg, name());
    auto pv = nn::zip_parameters<T>(model, exp_avg_sq, name());
    ++steps;
    for (std::size_t i = 0; i < pg.size(); ++i) {
      const auto& [pname, p, g] = pg[i];
      const auto [lr, wd] = detail::group_of(groups_, pname, options_.lr, options_.weight_decay);
      detail::adam_update(p->data(), g->data(), std::get<2>(pm[i])->data(), std::get<2>(pv[i])->data(), p->numel(), steps,
                          lr * lr_factor, wd, options_, Decoupled);
    }
  }

  const AdamOptions& options() const { return options_; }
  // For checkpoints: the state trees by name, and the hyperparameters.
  std::vector<std::pair<std::string, Model*>> state() { return {{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}}; }
  // (JSON numbers round-trip: a resumed run's optimizer must be this one exactly)
  std::string describe() const {
    nlohmann::json g = nlohmann::json::array();
    for (const auto& grp : groups_) g.push_back({grp.lr, grp.weight_decay});
    return nlohmann::json{{"optimizer", name()}, {"lr", options_.lr}, {"betas", {options_.beta1, options_.beta2}}, {"eps", options_.eps},
                          {"weight_decay", options_.weight_decay}, {"groups", g}}.dump();
  }
  std::int64_t steps = 0;  // torch's state['step'] (the same for every tensor here)
  Model exp_avg, exp_avg_sq;

 private:
  AdamOptions options_;
  std::vector<ParamGroup> groups_;
};
template <class T, class Model>
using AdamW = AdamBase<T, Model, true>;
template <class T, class Model>
using Adam = AdamBase<T, Model, false>;

struct SGDOptions {
  double lr = 1e-2, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};

// torch.optim.SGD (torch 1.13 _single_tensor_sgd): the momentum buffer starts as the first
// gradient (not zeros), as torch's does.
template <class T, class Model>
class SGD {
 public:
  SGD(const Model& model, SGDOptions options, std::vector<ParamGroup> groups = {})
      : momentum_buffer(nn::zeros_like<T>(model)), options_(options), groups_(std::move(groups)) {
    if (!(options.lr >= 0) || !(options.momentum >= 0) || !(options.weight_decay >= 0) ||
        (options.nesterov && (options.momentum <= 0 || options.dampening != 0)))
      throw ArgumentError(ditto::detail::cat("SGD: expected lr, momentum, weight_decay >= 0, and Nesterov with momentum > 0 and no "
                                             "dampening; got lr ", options.lr, ", momentum ", options.momentum, ", dampening ",
                                             options.dampening, ", nesterov ", options.nesterov));
    nn::require_distinct_storage<T>(const_cast<Model&>(model), "SGD");
  }

  void step(Model& model, Model& grads, double lr_factor = 1.0) {
    auto pg = nn::zip_parameters<T>(model, grads, "SGD");
    auto pb = nn::zip_parameters<T>(model, momentum_buffer, "SGD");
    const bool first = steps++ == 0;
    const T mu = static_cast<T>(options_.momentum), damp = T(1) - static_cast<T>(options_.dampening);
    for (std::size_t i = 0; i < pg.size(); ++i) {
      const auto& [pname, pt, gt] = pg[i];
      const auto [lr0, wd0] = detail::group_of(groups_, pname, options_.lr, options_.weight_decay);
      const T lr = static_cast<T>(lr0 * lr_factor), wd = static_cast<T>(wd0);
      T* p = pt->data();
      const T* g = gt->data();
      T* buf = std::get<2>(pb[i])->data();
      detail::for_each_element(pt->numel(), [&](std::int64_t k) {
        T d = g[k];
        if (wd != T(0)) d += wd * p[k];
        if (mu != T(0)) {
          buf[k] = first ? d : buf[k] * mu + d * damp;  // buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
          d = options_.nesterov ? d + mu * buf[k] : buf[k];
        }
        p[k] -= lr * d;  // param.add_(d_p, alpha=-lr)
      });
    }
  }

  std::vector<std::pair<std::string, Model*>> state() { return {{"momentum_buffer", &momentum_buffer}}; }
  std::string describe() const {
    nlohmann::json g = nlohmann::json::array();
    for (const auto& grp : groups_) g.push_back({grp.lr, grp.weight_decay});
    return nlohmann::json{{"optimizer", "SGD"}, {"lr", options_.lr}, {"momentum", options_.momentum}, {"dampening", options_.dampening},
                          {"weight_decay", options_.weight_decay}, {"nesterov", options_.nesterov}, {"groups", g}}.dump();
  }
  std::int64_t steps = 0;
  Model momentum_buffer;

 private:
  SGDOptions options_;
  std::vector<ParamGroup> groups_;
};

// torch.nn.utils.clip_grad_norm_: the norm of all gradients together (norm_type 2, or infinity
// for the largest magnitude); when it exceeds max_norm, every gradient is scaled by
// max_norm / (norm + 1e-6). Returns the norm before clipping. Sums run in double, tensor by
// tensor in order: the same for any thread count.
template <class T, class Model>
inline double clip_grad_norm(Model& grads, double max_norm, double norm_type = 2.0) {
  if (!(max_norm > 0) || !(norm_type == 2.0 || norm_type == std::numeric_limits<double>::infinity()))
    throw ArgumentError(ditto::detail::cat("clip_grad_norm: expected max_norm > 0 and norm_type 2 or infinity, got ", max_norm, " and ", norm_type));
  const bool inf = norm_type == std::numeric_limits<double>::infinity();
  double total = 0;
  auto params = nn::trainable_parameters<T>(grads);
  for (auto& [name, g] : params) {
    double t = 0;  // torch takes each tensor's norm, then the norm of those
    for (T v : *g) t = inf ? std::max(t, std::abs(static_cast<double>(v))) : t + static_cast<double>(v) * static_cast<double>(v);
    total = inf ? std::max(total, t) : total + t;
  }
  if (!inf) total = std::sqrt(total);
  // torch multiplies by clamp(coef, max=1): a no-op below max_norm, and NaN for a NaN norm
  const double coef = max_norm / (total + 1e-6), clamped = std::isnan(coef) ? coef : std::min(coef, 1.0);
  if (clamped != 1.0)
    for (auto& [name, g] : params)
      for (T& v : *g) v *= static_cast<T>(clamped);
  return total;
}

// DiT's train.py update_ema: ema = decay * ema + (1 - decay) * model over named_parameters()
// (fixed tables such as pos_embed included, as upstream's parameters are). decay 0 copies.
template <class T, class Model>
inline void update_ema(Model& ema, Model& model, double decay) {
  auto pe = nn::named_parameters<T>(ema), pm = nn::named_parameters<T>(model);
  if (pe.size() != pm.size())
    throw ShapeError(ditto::detail::cat("update_ema: the EMA has ", pe.size(), " tensors, the model ", pm.size()));
  const T d = static_cast<T>(decay), rest = static_cast<T>(1 - decay);
  for (std::size_t i = 0; i < pe.size(); ++i) {
    if (pe[i].first != pm[i].first || pe[i].second->shape() != pm[i].second->shape())
      throw ShapeError(ditto::detail::cat("update_ema: the EMA's ", pe[i].first, " ", shape_str(pe[i].second->shape()),
                                          " does not match the model's ", pm[i].first, " ", shape_str(pm[i].second->shape())));
    if (pe[i].second->data() == pm[i].second->data()) *pe[i].second = pe[i].second->clone();  // a copied model shares storage
    T* e = pe[i].second->data();
    const T* p = pm[i].second->data();
    detail::for_each_element(pe[i].second->numel(), [&](std::int64_t k) { e[k] = e[k] * d + p[k] * rest; });  // mul_(decay).add_(p, alpha=1-decay)
  }
}

// Learning-rate schedules: the factor of the base lr at step s (s = 0 for the first step), as
// torch's LambdaLR takes them.
struct ConstantLR {
  double operator()(std::int64_t) const { return 1.0; }
};
// Linear warm-up over `warmup` steps ((s + 1) / warmup), then cosine decay to min_factor at `total`.
struct WarmupCosine {
  std::int64_t warmup = 0, total = 1;
  double min_factor = 0;
  double operator()(std::int64_t s) const {
    if (s < warmup) return static_cast<double>(s + 1) / static_cast<double>(warmup);
    if (s >= total) return min_factor;
    const double progress = static_cast<double>(s - warmup) / static_cast<double>(std::max<std::int64_t>(total - warmup, 1));
    return min_factor + (1 - min_factor) * 0.5 * (1 + std::cos(3.14159265358979323846 * progress));
  }
};

}  // namespace ditto::train
