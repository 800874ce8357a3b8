// Training: every backward against central differences in double (L = sum(out * gout), a
// sample of coordinates of every tensor), the fast kernels against their plain references, the
// training forward against the inference forward, and gradients at 1 and 3 threads.
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <cstring>
#include <set>
#include <tuple>

#include <sys/wait.h>
#include <unistd.h>

#include <ditto/ditto.hpp>
#include <ditto/train/checkpoint.hpp>
#include <ditto/train/optim.hpp>

#include "helpers.hpp"
#include "train_helpers.hpp"

using namespace ditto;

using namespace train_test;

TEST_CASE("linear and activation backwards equal central differences", "[train][grad]") {
  Generator gen(1);
  nn::Linear<double> lin(7, 5);
  randomize<double>(lin, gen);
  Tensor<double> x = gen.normal<double>({6, 7}), gout = gen.normal<double>({6, 5});
  auto g = nn::zeros_like<double>(lin);
  Tensor<double> dx({6, 7});
  lin.backward_into(dx.data(), g, gout.data(), x.data(), 6);
  auto checked = params_of(lin, g);
  checked.emplace_back("x", &x, &dx);
  worst_fd_error([&] { return dot(lin.forward(x), gout); }, checked);
  for (auto act : {nn::Activation::gelu, nn::Activation::gelu_tanh, nn::Activation::silu}) {
    Tensor<double> a = gen.normal<double>({40}), ga = gen.normal<double>({40}), da({40});
    a[0] = 0, a[1] = 8, a[2] = -8;  // the flat ends and the middle
    nn::activate_backward(da.data(), ga.data(), a.data(), 40, act);
    worst_fd_error([&] { return dot(nn::activate(a, act), ga); }, {{"act", &a, &da}}, 40);
  }
}

TEST_CASE("the activations' SIMD derivatives equal the plain scalar ones, out to the flat ends", "[train][grad]") {
  // activate_backward runs in SIMD lanes for float and double (one exp: 0.5 (1 + tanh u) = r,
  // 1 - tanh^2 u = 4 r e r); the scalar gelu_grad, gelu_tanh_grad, silu_grad are the reference.
  std::vector<double> xs;
  for (double v = -120; v <= 120; v += 0.37) xs.push_back(v);
  for (double v : {0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0, 10.7, -10.7, 44.0, -44.0, 88.0, -88.0, 1e30, -1e30}) xs.push_back(v);
  const auto n = static_cast<std::int64_t>(xs.size());
  for (auto [name, act] : {std::pair{"gelu", nn::Activation::gelu}, std::pair{"gelu_tanh", nn::Activation::gelu_tanh},
                           std::pair{"silu", nn::Activation::silu}}) {
    INFO(name);
    auto scalar = [&](double v) {
      return act == nn::Activation::gelu ? nn::gelu_grad(v) : act == nn::Activation::gelu_tanh ? nn::gelu_tanh_grad(v) : nn::silu_grad(v);
    };
    std::vector<double> dx(xs.size(), 0.0), ones(xs.size(), 1.0);
    nn::activate_backward(dx.data(), ones.data(), xs.data(), n, act);
    std::vector<float> xf(xs.begin(), xs.end()), dxf(xs.size(), 0.0f), onesf(xs.size(), 1.0f);
    nn::activate_backward(dxf.data(), onesf.data(), xf.data(), n, act);
    for (std::size_t i = 0; i < xs.size(); ++i) {
      INFO("x = " << xs[i]);
      const double ref = scalar(xs[i]);
      REQUIRE(std::isfinite(dx[i]));
      CHECK(std::abs(dx[i] - ref) <= 1e-14 * std::max(1.0, std::abs(ref)));
      // float: against the double reference at the float input
      const double reff = scalar(static_cast<double>(xf[i]));
      CHECK(std::abs(static_cast<double>(dxf[i]) - reff) <= 1e-6 * std::max(1.0, std::abs(reff)));
    }
    // a NaN stays NaN
    double nan = std::numeric_limits<double>::quiet_NaN(), d = 0, one = 1;
    nn::activate_backward(&d, &one, &nan, 1, act);
    CHECK(std::isnan(d));
  }
}

TEST_CASE("adaLN modulation and gate backwards equal central differences", "[train][grad]") {
  Generator gen(2);
  const std::int64_t B = 2, n = 3, D = 8, S = 6 * D, rows = B * n;
  Tensor<double> x = gen.normal<double>({rows, D}), mod = gen.normal<double>({B, S}), y = gen.normal<double>({rows, D});
  Tensor<double> gout = gen.normal<double>({rows, D});
  auto L_norm = [&] {
    Tensor<double> h({rows, D});
    nn::norm_modulate(x.data(), h.data(), rows, n, D, mod.data() + D, mod.data() + 2 * D, S, 1e-6);
    return dot(h, gout);
  };
  Tensor<double> h({rows, D}), mean({rows}), rstd({rows}), dx({rows, D}), dmod({B, S});
  nn::norm_modulate(x.data(), h.data(), rows, n, D, mod.data() + D, mod.data() + 2 * D, S, 1e-6, mean.data(), rstd.data());
  nn::norm_modulate_backward(dx.data(), dmod.data() + D, dmod.data() + 2 * D, gout.data(), x.data(), mean.data(), rstd.data(),
                             mod.data() + 2 * D, rows, n, D, S);
  worst_fd_error(L_norm, {{"x", &x, &dx}, {"mod", &mod, &dmod}}, 48);
  // x_out = x + gate * y
  auto L_gate = [&] {
    Tensor<double> xo = x.clone();
    nn::gated_add(xo.data(), y.data(), rows, n, D, mod.data() + 5 * D, S);
    return dot(xo, gout);
  };
  Tensor<double> dy({rows, D}), dmod2({B, S});
  nn::gated_add_backward(dy.data(), dmod2.data() + 5 * D, gout.data(), y.data(), mod.data() + 5 * D, rows, n, D, S);
  worst_fd_error(L_gate, {{"y", &y, &dy}, {"mod", &mod, &dmod2}}, 48);
}

TEST_CASE("attention backward: blocked equals the plain reference and central differences", "[train][grad][attention]") {
  Generator gen(3);
  // 150 queries and 70 keys: several 64-row blocks and ragged tails; d 5, dv 3; with a mask
  for (bool masked : {false, true}) {
    const std::int64_t nq = 150, nk = 70, d = 5, dv = 3;
    Tensor<double> q = gen.normal<double>({nq, d}), k = gen.normal<double>({nk, d}), v = gen.normal<double>({nk, dv});
    Tensor<double> gout = gen.normal<double>({nq, dv});
    Tensor<std::uint8_t> mask({nq, nk});
    for (std::int64_t i = 0; i < nq * nk; ++i) mask[i] = (i * 7919 % 5) != 0 || i % nk == 0;  // every row sees key 0
    const double scale = 0.45;
    const nn::AttentionLayout L{d, dv, d, d, dv, dv, masked ? nk : 0};
    auto forward = [&](Tensor<double>& o, Tensor<double>* lse) {
      nn::attention_kernel<double>({{q.data(), k.data(), v.data(), o.data(), nq, nk, masked ? mask.data() : nullptr,
                                     lse ? lse->data() : nullptr}}, L, scale);
    };
    Tensor<double> o({nq, dv}), lse({nq});
    forward(o, &lse);
    Tensor<double> dq({nq, d}), dk({nk, d}), dvv({nk, dv}), rq({nq, d}), rk({nk, d}), rv({nk, dv});
    const std::uint8_t* mk = masked ? mask.data() : nullptr;
    nn::attention_backward<double>({{q.data(), k.data(), v.data(), o.data(), gout.data(), lse.data(), dq.data(), dk.data(), dvv.data(), nq, nk, mk}},
                                   L, scale);
    nn::attention_backward_reference<double>(
        {{q.data(), k.data(), v.data(), o.data(), gout.data(), lse.data(), rq.data(), rk.data(), rv.data(), nq, nk, mk}}, L, scale);
    CHECK_CLOSE(dq, rq, 1e-12);
    CHECK_CLOSE(dk, rk, 1e-12);
    CHECK_CLOSE(dvv, rv, 1e-12);
    worst_fd_error([&] {
      Tensor<double> out({nq, dv});
      forward(out, nullptr);
      return dot(out, gout);
    }, {{"q", &q, &dq}, {"k", &k, &dk}, {"v", &v, &dvv}});
  }
}

TEST_CASE("attention backward with a thread per problem equals the plain reference", "[train][grad][attention]") {
  // 17 problems (>= 16: one pass per problem, on 256 x 128 blocks): 330 queries (256 + 74) and 290
  // keys (128 + 128 + 34), and 150 x 150 (one block each: a last block up to a quarter longer takes
  // the rest); each problem its own gradients, the inputs shared (read only)
  Generator gen(4);
  for (auto [nq, nk] : {std::pair<std::int64_t, std::int64_t>{330, 290}, {150, 150}}) {
    for (bool masked : {false, true}) {
      const std::int64_t d = 6, dv = 5, n = 17;
      const Tensor<double> q = gen.normal<double>({nq, d}), k = gen.normal<double>({nk, d}), v = gen.normal<double>({nk, dv});
      const Tensor<double> gout = gen.normal<double>({nq, dv});
      Tensor<std::uint8_t> mask({nq, nk});
      for (std::int64_t i = 0; i < nq * nk; ++i) mask[i] = (i * 7919 % 5) != 0 || i % nk == 0;
      const std::uint8_t* mk = masked ? mask.data() : nullptr;
      const nn::AttentionLayout L{d, dv, d, d, dv, dv, masked ? nk : 0};
      Tensor<double> o({nq, dv}), lse({nq});
      nn::attention_kernel<double>({{q.data(), k.data(), v.data(), o.data(), nq, nk, mk, lse.data()}}, L, 0.4);
      Tensor<double> dq({n, nq, d}), dk({n, nk, d}), dvv({n, nk, dv}), rq({nq, d}), rk({nk, d}), rv({nk, dv});
      std::vector<nn::AttentionGradProblem<double>> problems;
      for (std::int64_t i = 0; i < n; ++i)
        problems.push_back({q.data(), k.data(), v.data(), o.data(), gout.data(), lse.data(), dq.data() + i * nq * d, dk.data() + i * nk * d,
                            dvv.data() + i * nk * dv, nq, nk, mk});
      nn::attention_backward<double>(problems, L, 0.4);
      nn::attention_backward_reference<double>({{q.data(), k.data(), v.data(), o.data(), gout.data(), lse.data(), rq.data(), rk.data(), rv.data(), nq, nk, mk}},
                                               L, 0.4);
      auto part = [](const Tensor<double>& t, std::int64_t i, const Tensor<double>& like) {
        const double* at = t.data() + i * like.numel();
        return Tensor<double>(like.shape(), std::vector<double>(at, at + like.numel()));
      };
      for (std::int64_t i = 0; i < n; ++i) {
        INFO("nq " << nq << ", nk " << nk << ", masked " << masked << ", problem " << i);
        CHECK_CLOSE(part(dq, i, rq), rq, 1e-12);
        CHECK_CLOSE(part(dk, i, rk), rk, 1e-12);
        CHECK_CLOSE(part(dvv, i, rv), rv, 1e-12);
      }
    }
  }
}

TEST_CASE("the reductions ditto writes itself are the same bits at 1 and 3 threads", "[train][threads]") {
  Generator gen(9);
  const std::int64_t B = 4, n = 300, D = 96, S = 6 * D, rows = B * n;
  const Tensor<float> x = gen.normal<float>({rows, D}), dy = gen.normal<float>({rows, D}), y = gen.normal<float>({rows, D});
  const Tensor<float> mod = gen.normal<float>({B, S}), q = gen.normal<float>({rows, 32}), k = gen.normal<float>({rows, 32}), v = gen.normal<float>({rows, 32});
  auto run = [&](int threads) {
    set_num_threads(threads);
    Tensor<float> h({rows, D}), mean({rows}), rstd({rows}), dx({rows, D}), dmod({B, S}), dyy({rows, D}), db({D});
    nn::norm_modulate(x.data(), h.data(), rows, n, D, mod.data(), mod.data() + D, S, 1e-6, mean.data(), rstd.data());
    nn::norm_modulate_backward(dx.data(), dmod.data(), dmod.data() + D, dy.data(), x.data(), mean.data(), rstd.data(), mod.data() + D, rows, n, D, S);
    nn::gated_add_backward(dyy.data(), dmod.data() + 2 * D, dy.data(), y.data(), mod.data() + 2 * D, rows, n, D, S);
    nn::column_sums_into(db.data(), dy.data(), rows, D);
    // attention's own loops (the block products are library gemms on 64-row blocks, run serially per task)
    Tensor<float> o({rows, 32}), lse({rows}), dq({rows, 32}), dk({rows, 32}), dv({rows, 32});
    const nn::AttentionLayout L{32, 32, 32, 32, 32, 32, 0};
    nn::attention_kernel<float>({{q.data(), k.data(), v.data(), o.data(), rows, rows, nullptr, lse.data()}}, L, 0.2f);
    nn::attention_backward<float>({{q.data(), k.data(), v.data(), o.data(), dy.data(), lse.data(), dq.data(), dk.data(), dv.data(), rows, rows}}, L, 0.2f);
    // and 20 problems of 60 rows (a thread per problem)
    Tensor<float> o20({rows, 32}), lse20({rows}), dq20({rows, 32}), dk20({rows, 32}), dv20({rows, 32});
    std::vector<nn::AttentionProblem<float>> fw;
    std::vector<nn::AttentionGradProblem<float>> bw;
    for (std::int64_t i = 0; i < 20; ++i) {
      const std::int64_t at = i * 60 * 32;
      fw.push_back({q.data() + at, k.data() + at, v.data() + at, o20.data() + at, 60, 60, nullptr, lse20.data() + i * 60});
      bw.push_back({q.data() + at, k.data() + at, v.data() + at, o20.data() + at, dy.data() + at, lse20.data() + i * 60, dq20.data() + at,
                    dk20.data() + at, dv20.data() + at, 60, 60});
    }
    nn::attention_kernel<float>(fw, L, 0.2f);
    nn::attention_backward<float>(bw, L, 0.2f);
    // the activations (in SIMD lanes; 2003 values: both split over threads, at 667 and 1335 on 3,
    // so a thread's range ends off a vector)
    Tensor<float> act({2003}), dact({2003});
    nn::activate(x.data(), act.data(), 2003, nn::Activation::gelu_tanh);
    nn::activate_backward(dact.data(), dy.data(), x.data(), 2003, nn::Activation::gelu_tanh);
    return std::vector<Tensor<float>>{h, dx, dmod, dyy, db, dq, dk, dv, dq20, dk20, dv20, act, dact};
  };
  const int before = get_num_threads();
  const auto one = run(1), three = run(3);
  set_num_threads(before);
  for (std::size_t i = 0; i < one.size(); ++i) ditto_test::require_equal(one[i], three[i]);
}

TEST_CASE("timm Attention and Mlp backwards equal central differences", "[train][grad]") {
  Generator gen(4);
  using Seq = nn::Attention<double>::Sequences;
  Tensor<double> x = gen.normal<double>({12, 12}), gout = gen.normal<double>({12, 12});
  // packed sequences of different lengths; qk_norm; a mask; strided (temporal) sequences
  Tensor<std::uint8_t> mask({2, 1, 6, 6});
  for (std::int64_t i = 0; i < mask.numel(); ++i) mask[i] = static_cast<std::uint8_t>((i * 7 + i / 5) % 3 != 0 || i % 7 == 0);
  for (int variant = 0; variant < 4; ++variant) {
    INFO("variant " << variant);
    nn::Attention<double> attn(12, 3, true, /*qk_norm=*/variant == 1);
    randomize<double>(attn, gen);
    const Seq seq = variant == 0 || variant == 1 ? Seq::packed({0, 5, 12})
                    : variant == 2             ? Seq::packed({0, 6, 12})
                                               : Seq::strided({0, 1, 2, 3}, 3, 4);
    const Tensor<std::uint8_t>* mk = variant == 2 ? &mask : nullptr;
    auto plain = [&] {  // the inference forwards
      Tensor<double> out({12, 12}), qkv({12, 36}), o({12, 12});
      if (variant == 3) attn.forward_strided_into(x.data(), 12, seq.starts, 3, 4, out.data(), qkv.data(), o.data());
      else attn.forward_packed_into(x.data(), variant == 2 ? std::vector<std::int64_t>{0, 6, 12} : std::vector<std::int64_t>{0, 5, 12},
                                    out.data(), qkv.data(), o.data(), mk);
      return out;
    };
    Tensor<double> out({12, 12}), dx({12, 12});
    nn::Attention<double>::Acts acts;
    attn.forward_train(x.data(), 12, seq, out.data(), acts, mk);
    CHECK_CLOSE(out, plain(), 1e-14);
    auto g = nn::zeros_like<double>(attn);
    attn.backward(dx.data(), g, gout.data(), x.data(), 12, seq, acts, mk);
    auto checked = params_of(attn, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(plain(), gout); }, checked);
  }
  nn::Attention<double> attn(12, 3);
  CHECK_THROWS_WITH(attn.backward(nullptr, attn, gout.data(), x.data(), 12, Seq::packed({0, 12}), nn::Attention<double>::Acts{}),
                    Catch::Contains("not made by forward_train"));
  CHECK_THROWS_WITH([&] { Tensor<double> o({12, 12}); nn::Attention<double>::Acts a; attn.forward_train(x.data(), 12, Seq::strided({0, 1}, 4, 4), o.data(), a); }(),
                    Catch::Contains("runs past the 12 rows"));
  for (const auto& [seq, says] : {std::pair{Seq::strided({0, 0}, 12, 1), std::string("row 0 is in two sequences")},
                                  std::pair{Seq::packed({0, 5, 10}), std::string("cover 10 of the 12 rows")}}) {
    Tensor<double> o({12, 12});
    nn::Attention<double>::Acts a;
    CHECK_THROWS_WITH(attn.forward_train(x.data(), 12, seq, o.data(), a), Catch::Contains(says));
  }

  nn::Mlp<double> mlp(12, 20);
  randomize<double>(mlp, gen);
  Tensor<double> y({12, 12}), pre({12, 20}), hidden({12, 20}), dxm({12, 12});
  mlp.forward_train(x.data(), y.data(), 12, pre.data(), hidden.data());
  CHECK_CLOSE(y, mlp.forward(x), 1e-14);
  auto gm = nn::zeros_like<double>(mlp);
  mlp.backward_into(dxm.data(), gm, gout.data(), x.data(), pre.data(), 12);
  auto checked_m = params_of(mlp, gm);
  checked_m.emplace_back("x", &x, &dxm);
  worst_fd_error([&] { return dot(mlp.forward(x), gout); }, checked_m);
}

TEST_CASE("DiT backward equals central differences on every parameter and x", "[train][grad][dit]") {
  // odd sizes: input 10 cropped to 8 by patch 4 (x's cut rows get zero gradient), 3 heads,
  // learn_sigma, label dropout's null class
  Generator gen(5);
  auto config = models::DiTConfig::from_json({{"input_size", 10}, {"patch_size", 4}, {"in_channels", 2}, {"hidden_size", 12},
                                              {"depth", 2}, {"num_heads", 3}, {"mlp_ratio", 1.5}, {"num_classes", 4}});
  models::DiT<double> dit(config);
  randomize<double>(dit, gen, 0.4);
  dit.pos_embed = nn::sincos_pos_embed_2d<double>(12, 2, 2).reshape({1, 4, 12});
  Tensor<double> x = gen.normal<double>({3, 2, 10, 10});
  const Tensor<double> t({3}, std::vector<double>{1.5, 400, 999});
  const Tensor<std::int64_t> y({3}, std::vector<std::int64_t>{0, 4, 2});
  models::DiT<double>::Acts acts;
  const Tensor<double> out = dit.forward_train(x, t, y, acts);
  CHECK_CLOSE(out, dit.forward(x, t, y), 1e-13);
  const Tensor<double> gout = gen.normal<double>(out.shape());
  auto g = nn::zeros_like<double>(dit);
  Tensor<double> dx;
  dit.backward(g, acts, gout, &dx);
  CHECK(dx(0, 0, 9, 9) == 0.0);  // cropped away
  auto checked = params_of(dit, g);
  CHECK(checked.size() == nn::named_parameters<double>(dit).size() - 1);  // all but pos_embed
  checked.emplace_back("x", &x, &dx);
  worst_fd_error([&] { return dot(dit.forward(x, t, y), gout); }, checked, 6);
}

TEST_CASE("ViT backward equals central differences in every pooling and option", "[train][grad][vit]") {
  // odd configs: rectangular images and patches with a cut remainder, qk_norm, LayerScale,
  // registers, pre_norm, no_embed_class, fc_norm, attention pooling, no head, every token out
  const std::vector<nlohmann::json> configs = {
      {{"img_size", {9, 8}}, {"patch_size", {4, 2}}, {"in_chans", 2}, {"num_classes", 5}, {"embed_dim", 12}, {"depth", 2}, {"num_heads", 3},
       {"qk_norm", true}, {"init_values", 0.5}, {"reg_tokens", 2}, {"pre_norm", true}, {"mlp_ratio", 1.5}},
      {{"img_size", 8}, {"patch_size", 4}, {"in_chans", 3}, {"num_classes", 4}, {"embed_dim", 8}, {"depth", 1}, {"num_heads", 2},
       {"global_pool", "avg"}, {"class_token", false}, {"no_embed_class", true}, {"act_layer", "silu"}},
      {{"img_size", 8}, {"patch_size", 2}, {"in_chans", 1}, {"num_classes", 3}, {"embed_dim", 8}, {"depth", 1}, {"num_heads", 2},
       {"global_pool", "map"}, {"class_token", false}, {"reg_tokens", 1}, {"fc_norm", true}},
      {{"img_size", 4}, {"patch_size", 2}, {"in_chans", 2}, {"num_classes", 0}, {"embed_dim", 8}, {"depth", 2}, {"num_heads", 4},
       {"global_pool", ""}, {"qkv_bias", false}},
  };
  Generator gen(11);
  for (std::size_t k = 0; k < configs.size(); ++k) {
    INFO("config " << configs[k].dump());
    const auto config = models::ViTConfig::from_json(configs[k]);
    models::ViT<double> vit(config);
    randomize<double>(vit, gen, 0.4);
    Tensor<double> x = gen.normal<double>({2, config.in_chans, config.img_size[0], config.img_size[1]});
    models::ViT<double>::Acts acts;
    const Tensor<double> out = vit.forward_train(x, acts);
    CHECK_CLOSE(out, vit.forward(x), 1e-13);
    const Tensor<double> gout = gen.normal<double>(out.shape());
    auto g = nn::zeros_like<double>(vit);
    Tensor<double> dx;
    vit.backward(g, acts, gout, &dx);
    REQUIRE(dx.shape() == x.shape());
    if (k == 0) CHECK(dx(1, 1, 8, 7) == 0.0);  // the cut ninth row never reaches a patch
    auto checked = params_of(vit, g);
    CHECK(checked.size() == nn::named_parameters<double>(vit).size());  // timm trains pos_embed
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(vit.forward(x), gout); }, checked, 5);
  }
}

TEST_CASE("the antialiased resize's backward is its adjoint, and ViT's resampled positions train through it", "[train][grad][vit]") {
  Generator gen(12);
  for (auto [h, w, oh, ow] : {std::array<std::int64_t, 4>{5, 7, 9, 3}, {8, 8, 4, 4}, {3, 3, 3, 3}, {6, 4, 2, 11}}) {
    const Tensor<double> x = gen.normal<double>({2, 3, h, w}), y = gen.normal<double>({2, 3, oh, ow});
    // <resize(x), y> = <x, resize^T(y)> (the forward rounds to float32, as PyTorch: 1e-6)
    const double lhs = dot(nn::interpolate_bicubic_antialias(x, oh, ow), y);
    const double rhs = dot(x, nn::interpolate_bicubic_antialias_backward(y, h, w));
    CHECK(std::abs(lhs - rhs) <= 1e-6 * (std::abs(lhs) + 1));
  }
  // dynamic_img_size: an image of another size resamples the position table
  const auto config = models::ViTConfig::from_json({{"img_size", 8}, {"patch_size", 2}, {"in_chans", 1}, {"num_classes", 2}, {"embed_dim", 8},
                                                    {"depth", 1}, {"num_heads", 2}, {"dynamic_img_size", true}});
  models::ViT<float> vit(config);
  randomize<float>(vit, gen, 0.4);
  // 6 x 10: another patch count; 4 x 16: the table's 16 patches, but a 2 x 8 grid (resampled too)
  for (auto [h, w] : {std::pair<std::int64_t, std::int64_t>{6, 10}, {4, 16}}) {
  INFO(h << " x " << w);
  const Tensor<float> x = gen.normal<float>({2, 1, h, w}), gout = gen.normal<float>({2, 2});
  models::ViT<float>::Acts acts;
  CHECK_CLOSE(vit.forward_train(x, acts), vit.forward(x), 1e-6);
  CHECK(acts.resampled);
  auto g = nn::zeros_like<float>(vit);
  vit.backward(g, acts, gout);
  // the position table's gradient by finite differences of the float forward along one direction
  const Tensor<float> dir = gen.normal<float>(vit.pos_embed.shape());
  double analytic = 0;
  for (std::int64_t i = 0; i < dir.numel(); ++i) analytic += static_cast<double>(dir[i]) * g.pos_embed[i];
  auto loss_at = [&](double e) {
    models::ViT<float> m = vit;
    m.pos_embed = vit.pos_embed.clone();
    for (std::int64_t i = 0; i < dir.numel(); ++i) m.pos_embed[i] += static_cast<float>(e) * dir[i];
    const Tensor<float> o = m.forward(x);
    double s = 0;
    for (std::int64_t i = 0; i < o.numel(); ++i) s += static_cast<double>(o[i]) * gout[i];
    return s;
  };
  const double fd = (loss_at(1e-2) - loss_at(-1e-2)) / 2e-2;
  CHECK(std::abs(fd - analytic) <= 2e-3 * std::abs(analytic) + 1e-4);
  }
}

TEST_CASE("an optimizer refuses a model whose parameters share storage", "[train][optim]") {
  nn::Mlp<float> same(4, 4);
  train::AdamW<float, nn::Mlp<float>> fine(same, {});
  same.fc2.bias = same.fc1.bias;  // (4) and (4): the shapes fit, the storage is one
  CHECK_THROWS_WITH((train::AdamW<float, nn::Mlp<float>>(same, {})), Catch::Contains("fc1.bias and fc2.bias share storage"));
  CHECK_THROWS_WITH((train::SGD<float, nn::Mlp<float>>(same, {})), Catch::Contains("share storage"));
}

TEST_CASE("convolution, pooling and upsampling backwards equal central differences", "[train][grad][conv]") {
  Generator gen(13);
  // 2-D: stride 2 with asymmetric padding and groups; a 3x3 "same" conv (the fast forward paths);
  // 1-D and 3-D with strides
  {
    nn::Conv2d<double> conv(4, 6, {3, 2}, {2, 1}, {1, 0, 2, 1}, 2);
    randomize<double>(conv, gen);
    Tensor<double> x = gen.normal<double>({2, 4, 7, 5});
    const Tensor<double> y = conv.forward(x), gout = gen.normal<double>(y.shape());
    auto g = nn::zeros_like<double>(conv);
    Tensor<double> dx;
    conv.backward(g, x, gout, &dx);
    auto checked = params_of(conv, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(conv.forward(x), gout); }, checked);
  }
  {
    nn::Conv2d<double> conv(3, 8, 3, 1, 1);
    randomize<double>(conv, gen);
    Tensor<double> x = gen.normal<double>({1, 3, 8, 8});
    const Tensor<double> gout = gen.normal<double>({1, 8, 8, 8});
    auto g = nn::zeros_like<double>(conv);
    Tensor<double> dx;
    conv.backward(g, x, gout, &dx);
    auto checked = params_of(conv, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(conv.forward(x), gout); }, checked);
  }
  {
    nn::Conv1d<double> conv(4, 2, 3, 2, 1, 2, false);
    randomize<double>(conv, gen);
    Tensor<double> x = gen.normal<double>({2, 4, 9});
    const Tensor<double> gout = gen.normal<double>(conv.forward(x).shape());
    auto g = nn::zeros_like<double>(conv);
    Tensor<double> dx;
    conv.backward(g, x, gout, &dx);
    auto checked = params_of(conv, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(conv.forward(x), gout); }, checked);
  }
  {
    nn::Conv3d<double> conv(2, 3, {2, 3, 2}, {2, 1, 2}, {1, 1, 0});
    randomize<double>(conv, gen);
    Tensor<double> x = gen.normal<double>({2, 2, 5, 4, 6});
    const Tensor<double> gout = gen.normal<double>(conv.forward(x).shape());
    auto g = nn::zeros_like<double>(conv);
    Tensor<double> dx;
    conv.backward(g, x, gout, &dx);
    auto checked = params_of(conv, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(conv.forward(x), gout); }, checked);
  }
  {
    Tensor<double> x = gen.normal<double>({2, 3, 7, 6});
    for (auto [k, st] : {std::pair{2, 2}, std::pair{3, 2}, std::pair{2, 1}}) {
      const Tensor<double> gout = gen.normal<double>(nn::avg_pool2d(x, k, st).shape());
      Tensor<double> dx = nn::avg_pool2d_backward(gout, x.shape(), k, st);
      worst_fd_error([&] { return dot(nn::avg_pool2d(x, k, st), gout); }, {{"x", &x, &dx}});
    }
    const Tensor<double> gup = gen.normal<double>({2, 3, 21, 18});
    Tensor<double> dxu = nn::upsample_nearest_backward(gup, 3);
    worst_fd_error([&] { return dot(nn::upsample_nearest(x, 3), gup); }, {{"x", &x, &dxu}});
  }
  nn::Conv2d<double> conv(2, 2, 3);
  CHECK_THROWS_WITH(conv.backward(conv, Tensor<double>({1, 2, 5, 5}), Tensor<double>({1, 2, 5, 5})), Catch::Contains("is not the output's shape"));
  CHECK_THROWS_WITH(nn::avg_pool2d_backward(Tensor<double>({1, 1, 1, 1}), Shape{1, 1, 1, 3}, 2), Catch::Contains("is not avg_pool2d(kernel=2"));
  CHECK_THROWS_WITH(nn::avg_pool2d_backward(Tensor<double>({1, 1, 1, 1}), Shape{1, 1, 2, 2}, 0), Catch::Contains("kernel"));
}

TEST_CASE("U-ViT backward equals central differences with and without labels, skips and the conv", "[train][grad][uvit]") {
  const std::vector<nlohmann::json> configs = {
      {{"img_size", 8}, {"patch_size", 4}, {"in_chans", 2}, {"embed_dim", 8}, {"depth", 4}, {"num_heads", 2}, {"mlp_ratio", 1.5},
       {"num_classes", 4}, {"qkv_bias", true}, {"mlp_time_embed", true}},
      {{"img_size", 6}, {"patch_size", 2}, {"in_chans", 1}, {"embed_dim", 8}, {"depth", 3}, {"num_heads", 1}, {"conv", false},
       {"skip", false}, {"qk_scale", 0.3}},
  };
  Generator gen(14);
  for (const auto& j : configs) {
    INFO(j.dump());
    const auto config = models::UViTConfig::from_json(j);
    models::UViT<double> uvit(config);
    randomize<double>(uvit, gen, 0.4);
    Tensor<double> x = gen.normal<double>({2, config.in_chans, config.img_size, config.img_size});
    const Tensor<double> t({2}, std::vector<double>{3.5, 700});
    const Tensor<std::int64_t> y({2}, std::vector<std::int64_t>{3, 1});
    const Tensor<std::int64_t>* yp = config.num_classes > 0 ? &y : nullptr;
    check_model_backward(uvit, x, gen, 5, [&] { return uvit.forward(x, t, yp); },
                         [&](models::UViT<double>::Acts& a) { return uvit.forward_train(x, t, yp, a); });
  }
}

TEST_CASE("GroupNorm (with and without its SiLU) backward equals central differences", "[train][grad][conv]") {
  Generator gen(15);
  for (bool silu : {false, true}) {
    nn::GroupNorm<double> gn(3, 6, 1e-5);
    randomize<double>(gn, gen, 0.5);
    Tensor<double> x = gen.normal<double>({2, 6, 3, 5}, 0.5, 1.5);
    typename nn::GroupNorm<double>::Acts acts;
    const Tensor<double> y = gn.forward(x, silu, &acts);
    CHECK_CLOSE(y, gn.forward(x, silu), 0.0);
    const Tensor<double> gout = gen.normal<double>(y.shape());
    auto g = nn::zeros_like<double>(gn);
    Tensor<double> dx = gn.backward(g, x, acts, gout, silu);
    auto checked = params_of(gn, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(gn.forward(x, silu), gout); }, checked);
  }
}

TEST_CASE("ADM U-Net backward equals central differences", "[train][grad][unet]") {
  // GroupNorm(32) needs 32-channel multiples; two levels, attention at the second, labels, and
  // both resampling kinds (ResBlock up/down with scale-shift; strided conv and nearest + conv)
  const std::vector<nlohmann::json> configs = {
      {{"image_size", 8}, {"in_channels", 2}, {"model_channels", 32}, {"out_channels", 3}, {"num_res_blocks", 1},
       {"attention_resolutions", {2}}, {"channel_mult", {1, 2}}, {"num_classes", 3}, {"num_heads", 2}, {"use_scale_shift_norm", true},
       {"resblock_updown", true}},
      {{"image_size", 4}, {"in_channels", 1}, {"model_channels", 32}, {"out_channels", 1}, {"num_res_blocks", 1},
       {"attention_resolutions", {1}}, {"channel_mult", {1, 1}}, {"num_head_channels", 16}, {"use_new_attention_order", true}},
  };
  Generator gen(16);
  for (const auto& j : configs) {
    INFO(j.dump());
    const auto config = models::UNetConfig::from_json(j);
    models::UNet<double> unet(config);
    randomize<double>(unet, gen, 0.15);
    Tensor<double> x = gen.normal<double>({2, config.in_channels, config.image_size, config.image_size});
    const Tensor<double> t({2}, std::vector<double>{3.5, 700});
    const Tensor<std::int64_t> y({2}, std::vector<std::int64_t>{2, 0});
    const Tensor<std::int64_t>* yp = config.num_classes ? &y : nullptr;
    check_model_backward(unet, x, gen, 3, [&] { return unet.forward(x, t, yp); },
                         [&](models::UNet<double>::Acts& a) { return unet.forward_train(x, t, yp, a); });  // per-stage checkpointing
  }
}

TEST_CASE("RMSNorm, rotary, TubeletEmbed, unpatchify and cross-attention backwards equal central differences", "[train][grad]") {
  Generator gen(17);
  {
    nn::RMSNorm<double> rms(6);
    randomize<double>(rms, gen, 0.8);
    Tensor<double> x = gen.normal<double>({4, 6}), gout = gen.normal<double>({4, 6});
    auto g = nn::zeros_like<double>(rms);
    Tensor<double> dx = rms.backward(g, x, gout);
    auto checked = params_of(rms, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(rms.forward(x), gout); }, checked);
  }
  for (bool interleaved : {true, false}) {
    Tensor<double> x = gen.normal<double>({2, 5, 8}), gout = gen.normal<double>({2, 5, 8});
    const std::vector<double> pos = {0, 3, 1.5, 7, 2};
    Tensor<double> dx = nn::rope_backward(gout, pos, 100.0, interleaved);
    worst_fd_error([&] { return dot(nn::rope(x, pos, 100.0, interleaved), gout); }, {{"x", &x, &dx}});
    Tensor<double> x3 = gen.normal<double>({2, 12, 10}), g3 = gen.normal<double>({2, 12, 10});
    Tensor<double> dx3 = nn::rope_3d_backward(g3, {2, 3, 2}, {2, 4, 4}, 50.0, interleaved);
    worst_fd_error([&] { return dot(nn::rope_3d(x3, {2, 3, 2}, {2, 4, 4}, 50.0, interleaved), g3); }, {{"x", &x3, &dx3}});
  }
  {
    nn::TubeletEmbed<double> te({2, 3, 2}, 3, 5);
    randomize<double>(te, gen);
    Tensor<double> x = gen.normal<double>({2, 3, 4, 6, 4});
    const Tensor<double> gout = gen.normal<double>(te.forward(x).shape());
    auto g = nn::zeros_like<double>(te);
    Tensor<double> dx = te.backward(g, x, gout);
    CHECK_CLOSE(te.forward(x), rearrange(te.proj.forward(x), "b d t h w -> b (t h w) d"), 1e-13);  // the stride-kernel Conv3d
    auto checked = params_of(te, g);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] { return dot(te.forward(x), gout); }, checked);
  }
  {
    Tensor<double> x = gen.normal<double>({2, 6, 12}), gout = gen.normal<double>({2, 3, 4, 6});
    Tensor<double> dx = nn::unpatchify_backward(gout, 2);
    worst_fd_error([&] { return dot(nn::unpatchify(x, 3, 2, 2, 3), gout); }, {{"x", &x, &dx}});
  }
  {
    nn::CrossAttention<double> ca(8, 6, 2);
    randomize<double>(ca, gen);
    Tensor<double> x = gen.normal<double>({2, 5, 8}), ctx = gen.normal<double>({2, 7, 6}), gout = gen.normal<double>({2, 5, 8});
    nn::CrossAttention<double>::Acts acts;
    CHECK_CLOSE(ca.forward_train(x, ctx, acts), ca.forward(x, ctx), 1e-14);
    auto g = nn::zeros_like<double>(ca);
    Tensor<double> dx, dctx;
    ca.backward(g, acts, gout, &dx, &dctx);
    auto checked = params_of(ca, g);
    checked.emplace_back("x", &x, &dx);
    checked.emplace_back("context", &ctx, &dctx);
    worst_fd_error([&] { return dot(ca.forward(x, ctx), gout); }, checked);
  }
}

TEST_CASE("DiT gradients at 1 and 3 threads agree to 1e-5 and optimizer steps to the bit", "[train][dit][threads]") {
  // The products' libraries (OpenBLAS, Eigen) sum in another order when they run threaded, so
  // gradients move in the last bits across thread counts (documented in docs/training.md); every
  // reduction ditto writes itself, and every optimizer step, is the same for any thread count.
  Generator gen(6);
  auto config = models::DiTConfig::from_json({{"input_size", 16}, {"patch_size", 2}, {"in_channels", 4}, {"hidden_size", 64},
                                              {"depth", 2}, {"num_heads", 4}, {"num_classes", 10}});
  models::DiT<float> dit(config);
  randomize<float>(dit, gen, 0.1);
  const Tensor<float> x = gen.normal<float>({4, 4, 16, 16}), t({4}, std::vector<float>{3, 50, 500, 900});
  const Tensor<std::int64_t> y({4}, std::vector<std::int64_t>{1, 2, 3, 10});
  auto grads_at = [&](int threads) {
    set_num_threads(threads);
    models::DiT<float>::Acts acts;
    const Tensor<float> out = dit.forward_train(x, t, y, acts);
    Generator g2(7);
    auto g = nn::zeros_like<float>(dit);
    Tensor<float> dx;
    dit.backward(g, acts, g2.normal<float>(out.shape()), &dx);
    return std::pair{g, dx};
  };
  const int before = get_num_threads();
  auto [g1, dx1] = grads_at(1);
  auto [g3, dx3] = grads_at(3);
  double worst = ditto_test::rel_error(dx3, dx1);
  for (auto& [name, a, b] : nn::zip_parameters<float>(g1, g3)) worst = std::max(worst, ditto_test::rel_error(*b, *a));
  INFO("worst relative difference of a gradient between 1 and 3 threads: " << worst);
  CHECK(worst <= 1e-5);
  // one AdamW step from the same gradients: bitwise equal
  auto step_at = [&](int threads) {
    set_num_threads(threads);
    models::DiT<float> m = dit;
    for (auto& [name, p] : nn::named_parameters<float>(m)) *p = p->clone();
    train::AdamW<float, models::DiT<float>> opt(m, {.lr = 1e-3, .weight_decay = 0.01});
    auto g = g1;
    opt.step(m, g);
    opt.step(m, g);
    return m;
  };
  auto m1 = step_at(1), m3 = step_at(3);
  set_num_threads(before);
  for (auto& [name, a, b] : nn::zip_parameters<float>(m1, m3)) ditto_test::require_equal(*a, *b);
}

TEST_CASE("gradient trees line up with their model and refuse another model's", "[train]") {
  auto small = models::DiTConfig::from_json({{"input_size", 8}, {"hidden_size", 16}, {"depth", 1}, {"num_heads", 2}, {"num_classes", 3}});
  models::DiT<float> a(small), b(small);
  auto other = small;
  other.depth = 2;
  models::DiT<float> c(other);
  auto g = nn::zeros_like<float>(a);
  CHECK(g.pos_embed.numel() == 0);  // fixed: no gradient
  CHECK(a.pos_embed.numel() == 16 * 16);  // the model's own table is untouched
  CHECK(nn::zip_parameters<float>(a, g).size() == nn::trainable_parameters<float>(a).size());
  CHECK_NOTHROW(nn::zip_parameters<float>(a, b));
  CHECK_THROWS_WITH(nn::zip_parameters<float>(a, c), Catch::Contains("the two trees differ at trainable tensor"));
  for (auto& [name, p] : nn::trainable_parameters<float>(g)) (*p)[0] = 1;
  nn::zero_grad<float>(g);
  for (auto& [name, p] : nn::trainable_parameters<float>(g)) CHECK((*p)[0] == 0);
}


TEMPLATE_TEST_CASE("block gradients equal PyTorch autograd on upstream's modules", "[train][grad][fixtures]", float, double) {
  using T = TestType;
  const double tol = block_tol<T>();
  for (const char* name : {"linear", "linear_nobias"}) {
    const GradFixture<T> fx("nn", name);
    nn::Linear<T> m(7, 5, std::string(name) == "linear");
    fx.load(m);
    const Tensor<T> x = fx.in("x");
    CHECK_CLOSE(m.forward(x), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    Tensor<T> dx(x.shape());
    m.backward_into(dx.data(), g, fx.grad_out().data(), x.data(), x.numel() / 7);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
  }
  for (const char* name : {"layernorm", "layernorm_noaffine"}) {
    const GradFixture<T> fx("nn", name);
    nn::LayerNorm<T> m(6, 1e-6, std::string(name) == "layernorm");
    if (m.elementwise_affine) fx.load(m);
    const Tensor<T> x = fx.in("x");
    Tensor<T> y(x.shape()), mean({4}), rstd({4}), dx(x.shape());
    m.forward_train(x.data(), y.data(), 4, mean.data(), rstd.data());
    CHECK_CLOSE(y, fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    m.backward_into(dx.data(), g, fx.grad_out().data(), x.data(), mean.data(), rstd.data(), 4);
    if (m.elementwise_affine) fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
  }
  for (auto [name, act] : {std::pair{"gelu", nn::Activation::gelu}, std::pair{"gelu_tanh", nn::Activation::gelu_tanh},
                           std::pair{"silu", nn::Activation::silu}}) {
    const GradFixture<T> fx("nn", name);
    const Tensor<T> x = fx.in("x");
    Tensor<T> dx(x.shape());
    nn::activate_backward(dx.data(), fx.grad_out().data(), x.data(), x.numel(), act);
    INFO(name);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
  }
  {
    const GradFixture<T> fx("nn", "softmax");
    const Tensor<T> x = fx.in("x"), y = nn::softmax(x), dy = fx.grad_out();
    Tensor<T> dx(x.shape());
    const std::int64_t n = x.size(-1);
    for (std::int64_t r = 0; r < x.numel() / n; ++r) nn::softmax_row_backward(dx.data() + r * n, dy.data() + r * n, y.data() + r * n, n);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
  }
  for (const char* name : {"attention_math", "attention_masked"}) {
    const GradFixture<T> fx("nn", name);
    const Tensor<T> q = fx.in("q"), k = fx.in("k"), v = fx.in("v"), dout = fx.grad_out();
    const std::int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3), M = k.size(2), Dv = v.size(3);
    Tensor<std::uint8_t> mask({N, M});
    const bool masked = fx.file.contains(fx.c + ".in.mask");
    if (masked) mask = fx.in("mask").template to<std::uint8_t>();
    Tensor<T> o({B, H, N, Dv}), lse({B * H * N}), dq(q.shape()), dk(k.shape()), dv(v.shape());
    std::vector<nn::AttentionProblem<T>> fwd;
    std::vector<nn::AttentionGradProblem<T>> bwd;
    for (std::int64_t bh = 0; bh < B * H; ++bh) {
      fwd.push_back({q.data() + bh * N * D, k.data() + bh * M * D, v.data() + bh * M * Dv, o.data() + bh * N * Dv, N, M,
                     masked ? mask.data() : nullptr, lse.data() + bh * N});
      bwd.push_back({q.data() + bh * N * D, k.data() + bh * M * D, v.data() + bh * M * Dv, o.data() + bh * N * Dv, dout.data() + bh * N * Dv,
                     lse.data() + bh * N, dq.data() + bh * N * D, dk.data() + bh * M * D, dv.data() + bh * M * Dv, N, M,
                     masked ? mask.data() : nullptr});
    }
    const nn::AttentionLayout L{D, Dv, D, D, Dv, Dv, masked ? M : 0};
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
    nn::attention_kernel(fwd, L, scale);
    CHECK_CLOSE(o, fx.out(), tol);
    nn::attention_backward(bwd, L, scale);
    INFO(name);
    CHECK_CLOSE(dq, fx.grad("q"), tol);
    CHECK_CLOSE(dk, fx.grad("k"), tol);
    CHECK_CLOSE(dv, fx.grad("v"), tol);
  }
  {
    const GradFixture<T> fx("nn", "timm_attention");
    nn::Attention<T> m(12, 3);
    fx.load(m);
    const Tensor<T> x = fx.in("x").reshape({10, 12});
    const std::vector<std::int64_t> cu = {0, 5, 10};
    Tensor<T> out({10, 12}), dx({10, 12});
    typename nn::Attention<T>::Acts acts;
    m.forward_train(x.data(), 10, nn::Attention<T>::Sequences::packed(cu), out.data(), acts);
    CHECK_CLOSE(out.reshape({2, 5, 12}), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    m.backward(dx.data(), g, fx.grad_out().data(), x.data(), 10, nn::Attention<T>::Sequences::packed(cu), acts);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx.reshape({2, 5, 12}), fx.grad("x"), tol);
  }
  {
    const GradFixture<T> fx("nn", "timm_mlp");
    nn::Mlp<T> m(12, 20);
    fx.load(m);
    const Tensor<T> x = fx.in("x");
    Tensor<T> y(x.shape()), pre({10, 20}), hidden({10, 20}), dx(x.shape());
    m.forward_train(x.data(), y.data(), 10, pre.data(), hidden.data());
    CHECK_CLOSE(y, fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    m.backward_into(dx.data(), g, fx.grad_out().data(), x.data(), pre.data(), 10);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
  }
  {
    const GradFixture<T> fx("nn", "patch_embed");
    nn::PatchEmbed<T> m(2, 3, 16);
    fx.load(m);
    const Tensor<T> x = fx.in("x");
    const Tensor<T> patches = rearrange(x, "b c (h p1) (w p2) -> (b h w) (c p1 p2)", {{"p1", 2}, {"p2", 2}});
    CHECK_CLOSE(m.forward(x), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    Tensor<T> dpatches(patches.shape());
    m.proj_rows_backward(dpatches.data(), g, fx.grad_out().data(), patches.data(), 32);
    fx.check_grads(g, tol);
    CHECK_CLOSE(rearrange(dpatches, "(b h w) (c p1 p2) -> b c (h p1) (w p2)", {{"b", 2}, {"h", 4}, {"p1", 2}, {"p2", 2}}), fx.grad("x"), tol);
  }
  {
    const GradFixture<T> fx("nn", "timestep_embedder");
    models::TimestepEmbedder<T> m(16, 32);
    fx.load(m);
    typename models::TimestepEmbedder<T>::Acts a;
    CHECK_CLOSE(m.forward_train(fx.in("t"), a), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    m.backward(g, a, fx.grad_out());
    fx.check_grads(g, tol);
  }
  {
    const GradFixture<T> fx("nn", "label_embedder");
    models::LabelEmbedder<T> m(5, 8, 0.1);
    fx.load(m);
    const Tensor<std::int64_t> y = fx.file.template get<std::int64_t>(fx.c + ".in.y");
    CHECK_CLOSE(m.forward(y), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    m.embedding_table.backward(g.embedding_table, y, fx.grad_out().data());
    fx.check_grads(g, tol);
  }
  {
    const GradFixture<T> fx("nn", "dit_block");
    models::DiTBlock<T> m(16, 2, 48);
    fx.load(m);
    const Tensor<T> x = fx.in("x"), c = fx.in("c"), silu_c = nn::silu(c);
    const Tensor<T> mod = m.adaLN_modulation.forward(silu_c);
    const std::vector<std::int64_t> cu = {0, 5, 10};
    typename models::DiTBlock<T>::Acts a;
    Tensor<T> tokens = x.clone().reshape({10, 16});
    m.forward_train(tokens.data(), 2, 5, mod.data(), cu, a);
    CHECK_CLOSE(tokens.reshape({2, 5, 16}), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    Tensor<T> dx = fx.grad_out().clone().reshape({10, 16}), dmod({2, 96}), dsilu({2, 16}), dc({2, 16});
    m.backward(dx.data(), g, dmod.data(), mod.data(), cu, a);
    m.adaLN_modulation.backward_into(dsilu.data(), g.adaLN_modulation, dmod.data(), silu_c.data(), 2);
    nn::activate_backward(dc.data(), dsilu.data(), c.data(), 32, nn::Activation::silu);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx.reshape({2, 5, 16}), fx.grad("x"), tol);
    CHECK_CLOSE(dc, fx.grad("c"), tol);
  }
  {
    const GradFixture<T> fx("nn", "final_layer");
    models::FinalLayer<T> m(16, 2, 6);
    fx.load(m);
    const Tensor<T> x = fx.in("x"), c = fx.in("c"), silu_c = nn::silu(c);
    typename models::FinalLayer<T>::Acts a;
    CHECK_CLOSE(m.forward_train(x.data(), 2, 5, silu_c, a), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    Tensor<T> dx({10, 16}), dsilu({2, 16}), dc({2, 16});
    m.backward(dx.data(), g, dsilu.data(), silu_c, fx.grad_out(), a);
    nn::activate_backward(dc.data(), dsilu.data(), c.data(), 32, nn::Activation::silu);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx.reshape({2, 5, 16}), fx.grad("x"), tol);
    CHECK_CLOSE(dc, fx.grad("c"), tol);
  }
}

TEMPLATE_TEST_CASE("DiT gradients equal PyTorch autograd on upstream's DiT", "[train][grad][fixtures][dit]", float, double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_dit_configs.json");
  int cases = 0;
  for (const auto& [name, kwargs] : configs.items()) {
    const GradFixture<T> fx("dit", name);
    if (!fx.file.contains(name + ".out")) continue;  // float64 holds a subset
    INFO(name);
    models::DiT<T> dit(models::DiTConfig::from_json(kwargs));
    fx.load(dit);
    const Tensor<T> x = fx.in("x"), t = fx.in("t");
    const Tensor<std::int64_t> y = fx.file.template get<std::int64_t>(name + ".in.y");
    typename models::DiT<T>::Acts acts;
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
    CHECK_CLOSE(dit.forward_train(x, t, y, acts), fx.out(), tol);
    auto g = nn::zeros_like<T>(dit);
    Tensor<T> dx;
    dit.backward(g, acts, fx.grad_out(), &dx);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
    ++cases;
  }
  CHECK(cases >= (std::is_same_v<T, float> ? 3 : 2));
}

TEMPLATE_TEST_CASE("cross-entropy, L1, MSE and the Gaussian KL equal torch's with their gradients", "[train][grad][loss][fixtures]", float, double) {
  using T = TestType;
  const double tol = block_tol<T>();
  auto scaled = [](const Tensor<T>& g, const Tensor<T>& s) {  // the fixture's L is loss * grad_out
    Tensor<T> r = g.clone();
    for (auto& v : r) v *= s[0];
    return r;
  };
  auto check_loss = [&](double got, const Tensor<T>& ref) {
    INFO("loss " << got << " vs " << static_cast<double>(ref[0]));
    CHECK(std::abs(got - static_cast<double>(ref[0])) <= tol * std::abs(static_cast<double>(ref[0])));
  };
  for (auto [name, smoothing] : {std::pair{"cross_entropy", 0.1}, std::pair{"cross_entropy_plain", 0.0}}) {
    INFO(name);
    const GradFixture<T> fx("nn", name);
    const auto r = nn::cross_entropy(fx.in("x"), fx.file.template get<std::int64_t>(std::string(name) + ".in.y"), smoothing);
    check_loss(r.loss, fx.out().reshape({1}));
    CHECK_CLOSE(scaled(r.grad, fx.grad_out().reshape({1})), fx.grad("x"), tol);
  }
  for (auto [name, p] : {std::pair{"l1_loss", 1}, std::pair{"mse_loss", 2}}) {
    INFO(name);
    const GradFixture<T> fx("nn", name);
    const auto r = nn::reconstruction_loss(fx.in("x"), fx.in("target"), p);
    check_loss(r.loss, fx.out().reshape({1}));
    CHECK_CLOSE(scaled(r.grad, fx.grad_out().reshape({1})), fx.grad("x"), tol);
  }
  const GradFixture<T> fx("nn", "gaussian_kl");
  const auto kl = nn::gaussian_kl(fx.in("mean"), fx.in("logvar"));
  check_loss(kl.loss, fx.out().reshape({1}));
  CHECK_CLOSE(scaled(kl.grad_mean, fx.grad_out().reshape({1})), fx.grad("mean"), tol);
  CHECK_CLOSE(scaled(kl.grad_logvar, fx.grad_out().reshape({1})), fx.grad("logvar"), tol);
  // bad input
  const Tensor<T> logits({2, 3});
  CHECK_THROWS_WITH(nn::cross_entropy(logits, Tensor<std::int64_t>({2}, std::vector<std::int64_t>{0, 3})), Catch::Contains("target 3 (row 1) is outside [0, 3)"));
  CHECK_THROWS_WITH(nn::cross_entropy(logits, Tensor<std::int64_t>({3})), Catch::Contains("expected logits (N, C) and target (N)"));
  CHECK(std::isnan(nn::cross_entropy(logits, Tensor<std::int64_t>({2}, std::vector<std::int64_t>{-100, -100})).loss));
  CHECK_THROWS_WITH(nn::reconstruction_loss(logits, Tensor<T>({3, 2}), 1), Catch::Contains("differ in shape"));
}

TEMPLATE_TEST_CASE("ViT gradients equal PyTorch autograd on timm's VisionTransformer", "[train][grad][fixtures][vit]", float, double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_vit_configs.json");
  int cases = 0;
  for (const auto& [name, kwargs] : configs.items()) {
    const GradFixture<T> fx("vit", name);
    if (!fx.file.contains(name + ".out")) continue;  // float64 holds no resampled case
    INFO(name);
    models::ViT<T> vit(models::ViTConfig::from_json(kwargs));
    fx.load(vit);
    const Tensor<T> x = fx.in("x");
    typename models::ViT<T>::Acts acts;
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
    CHECK_CLOSE(vit.forward_train(x, acts), fx.out(), tol);
    auto g = nn::zeros_like<T>(vit);
    Tensor<T> dx;
    vit.backward(g, acts, fx.grad_out(), &dx);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
    ++cases;
  }
  CHECK(cases == (std::is_same_v<T, float> ? 4 : 3));
}

TEMPLATE_TEST_CASE("U-ViT gradients equal PyTorch autograd on baofff/U-ViT's UViT", "[train][grad][fixtures][uvit]", float, double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_uvit_configs.json");
  int cases = 0;
  for (const auto& [name, kwargs] : configs.items()) {
    const GradFixture<T> fx("uvit", name);
    INFO(name);
    models::UViT<T> uvit(models::UViTConfig::from_json(kwargs));
    fx.load(uvit);
    const Tensor<T> x = fx.in("x"), t = fx.in("timesteps");
    std::optional<Tensor<std::int64_t>> y;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    typename models::UViT<T>::Acts acts;
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
    CHECK_CLOSE(uvit.forward_train(x, t, y ? &*y : nullptr, acts), fx.out(), tol);
    auto g = nn::zeros_like<T>(uvit);
    Tensor<T> dx;
    uvit.backward(g, acts, fx.grad_out(), &dx);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
    ++cases;
  }
  CHECK(cases == 3);
}

TEMPLATE_TEST_CASE("U-Net gradients equal PyTorch autograd on guided-diffusion's UNetModel", "[train][grad][fixtures][unet]", float, double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_unet_configs.json");
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  int cases = 0;
  for (const auto& [name, entry] : configs.items()) {
    const GradFixture<T> fx("unet", name);
    INFO(name);
    models::UNet<T> unet(models::UNetConfig::from_json(entry["kwargs"]));
    hash_model_weights<T>(unet, entry);  // the generator's weights: hash_weights of each state-dict name
    const Tensor<T> x = fx.in("x"), t = fx.in("timesteps");
    std::optional<Tensor<std::int64_t>> y;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    typename models::UNet<T>::Acts acts;
    CHECK_CLOSE(unet.forward_train(x, t, y ? &*y : nullptr, acts), fx.out(), tol);
    auto g = nn::zeros_like<T>(unet);
    Tensor<T> dx;
    unet.backward(g, acts, fx.grad_out(), &dx);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
    // As GradFixture::check_grads: a gradient zero in exact arithmetic (a per-channel shift before
    // a GroupNorm of one channel per group, which removes it) holds rounding noise on both sides;
    // one whose reference is below tol times the case's largest gradient (what the tolerance
    // cannot tell from zero) is held to tol times that largest gradient instead of its own size.
    double largest = 0;
    for (auto& [pname, gt] : nn::trainable_parameters<T>(g)) {
      const std::string key = name + ".grad." + pname;
      const Tensor<T> ref = fx.file.contains(key) ? fx.grad(pname) : fx.file.template get<T>(key + ".absmax");
      for (T v : ref) largest = std::max(largest, std::abs(static_cast<double>(v)));
    }
    auto bound = [&](double own) { return own < tol * largest ? tol * largest : tol * own; };
    for (auto& [pname, gt] : nn::trainable_parameters<T>(g)) {
      INFO("grad." << pname);
      const std::string key = name + ".grad." + pname;
      if (fx.file.contains(key)) {
        const Tensor<T> ref = fx.grad(pname);
        REQUIRE(gt->shape() == ref.shape());
        double own = 0, diff = 0;
        for (std::int64_t i = 0; i < ref.numel(); ++i)
          own = std::max(own, std::abs(static_cast<double>(ref[i]))), diff = std::max(diff, std::abs(static_cast<double>((*gt)[i] - ref[i])));
        INFO("max |got - ref| " << diff << ", max |ref| " << own << ", largest gradient " << largest);
        CHECK(diff <= bound(own));
        continue;
      }
      // a sketch: the first values, max |g|, and the dot with hash_weights("sketch." + name)
      const Tensor<T> head = fx.file.template get<T>(key + ".head");
      const double absmax = static_cast<double>(fx.file.template get<T>(key + ".absmax")[0]);
      const double dot_ref = fx.file.template get<double>(key + ".dot")[0];
      double got_max = 0, dot = 0, r_abs = 0, head_diff = 0;
      Tensor<double> r(gt->shape());
      ditto_test::hash_weights("sketch." + pname, r);
      for (std::int64_t i = 0; i < gt->numel(); ++i) {
        got_max = std::max(got_max, std::abs(static_cast<double>((*gt)[i])));
        dot += static_cast<double>((*gt)[i]) * r[i], r_abs += std::abs(r[i]);
      }
      for (std::int64_t i = 0; i < head.numel(); ++i) head_diff = std::max(head_diff, std::abs(static_cast<double>((*gt)[i] - head[i])));
      INFO("max |ref| " << absmax << ", largest gradient " << largest);
      CHECK(head_diff <= bound(absmax));
      CHECK(std::abs(got_max - absmax) <= bound(absmax));
      CHECK(std::abs(dot - dot_ref) <= bound(absmax) * r_abs);  // what max |got - ref| <= tol max |ref| implies for the dot
    }
    ++cases;
  }
  CHECK(cases == 3);
}

namespace {
// Three tensors as the optimizer fixtures have them (a (3, 4), b (5), c (2, 2, 3)).
struct ThreeParams {
  Tensor<double> a, b, c;
  template <class V>
  void visit(V& v) {
    v("a", a);
    v("b", b);
    v("c", c);
  }
};
struct OptimFixture {
  SafetensorsFile file{std::string(DITTO_FIXTURES) + "/optim_f64.safetensors"};
  nlohmann::json cases = ditto_test::load_json("optim_cases.json");
  ThreeParams params(const std::string& prefix) const {
    return {file.get<double>(prefix + ".a"), file.get<double>(prefix + ".b"), file.get<double>(prefix + ".c")};
  }
  void check(ThreeParams& got, const std::string& prefix, double tol = 1e-12) const {
    const ThreeParams ref = params(prefix);
    INFO(prefix);
    CHECK_CLOSE(got.a, ref.a, tol);
    CHECK_CLOSE(got.b, ref.b, tol);
    CHECK_CLOSE(got.c, ref.c, tol);
  }
};
// 10 steps of `opt` on the fixture's gradients, each compared with torch.optim's parameters.
template <class Opt, class Factor>
void run_steps(const OptimFixture& fx, const std::string& c, Opt& opt, ThreeParams& p, Factor&& factor) {
  for (int s = 0; s < 10; ++s) {
    ThreeParams g = fx.params(ditto::detail::cat(c, ".grad.", s));
    opt.step(p, g, factor(s));
    fx.check(p, ditto::detail::cat(c, ".p.", s));
  }
}
train::AdamOptions adam_options(const nlohmann::json& a) {
  return {a["lr"], a["betas"][0], a["betas"][1], a["eps"], a["weight_decay"]};
}
}  // namespace

TEST_CASE("AdamW Adam and SGD take torch.optim's 10 steps", "[train][optim]") {
  const OptimFixture fx;
  for (const char* c : {"adamw", "adamw_dit", "adam", "adamw_cosine", "adamw_groups"}) {
    INFO(c);
    const auto& spec = fx.cases[c];
    ThreeParams p = fx.params(std::string(c) + ".p0");
    std::vector<train::ParamGroup> groups;
    if (spec.contains("param_groups"))
      for (const auto& g : spec["param_groups"]) {
        const auto names = g["params"].get<std::vector<std::string>>();
        groups.push_back({[names](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); }, g["lr"], g["weight_decay"]});
      }
    const train::WarmupCosine cosine{3, 10, 0.0};
    auto factor = [&](int s) { return std::string(c) == "adamw_cosine" ? cosine(s) : 1.0; };
    if (spec["optimizer"] == "Adam") {
      train::Adam<double, ThreeParams> opt(p, adam_options(spec["args"]), groups);
      run_steps(fx, c, opt, p, factor);
      ThreeParams m = opt.exp_avg, v = opt.exp_avg_sq;
      fx.check(m, std::string(c) + ".exp_avg.9");
      fx.check(v, std::string(c) + ".exp_avg_sq.9");
    } else {
      train::AdamW<double, ThreeParams> opt(p, adam_options(spec["args"]), groups);
      run_steps(fx, c, opt, p, factor);
      fx.check(opt.exp_avg, std::string(c) + ".exp_avg.9");
      fx.check(opt.exp_avg_sq, std::string(c) + ".exp_avg_sq.9");
    }
    if (std::string(c) == "adamw_cosine") {
      const Tensor<double> lr = fx.file.get<double>("adamw_cosine.lr");
      for (int s = 0; s < 10; ++s) CHECK(std::abs(0.01 * cosine(s) - lr[s]) < 1e-15);
    }
  }
  for (const char* c : {"sgd", "sgd_momentum", "sgd_nesterov"}) {
    INFO(c);
    const auto& a = fx.cases[c]["args"];
    ThreeParams p = fx.params(std::string(c) + ".p0");
    train::SGD<double, ThreeParams> opt(p, {a["lr"], a.value("momentum", 0.0), a.value("dampening", 0.0), a.value("weight_decay", 0.0),
                                            a.value("nesterov", false)});
    run_steps(fx, c, opt, p, [](int) { return 1.0; });
    if (fx.file.contains(std::string(c) + ".momentum_buffer.9.a")) fx.check(opt.momentum_buffer, std::string(c) + ".momentum_buffer.9");
  }
  // refusals: bad hyperparameters, another model's gradients
  ThreeParams p = fx.params("adamw.p0");
  CHECK_THROWS_AS((train::AdamW<double, ThreeParams>(p, {.lr = -1})), ArgumentError);
  CHECK_THROWS_AS((train::SGD<double, ThreeParams>(p, {.lr = 0.1, .momentum = 0, .dampening = 0, .weight_decay = 0, .nesterov = true})),
                  ArgumentError);
  train::AdamW<double, ThreeParams> opt(p, {});
  ThreeParams wrong = p;
  wrong.b = Tensor<double>({6});
  CHECK_THROWS_WITH(opt.step(p, wrong), Catch::Contains("AdamW: the two trees differ at trainable tensor #1: b [5] vs b [6]"));
}

TEST_CASE("clipping by global norm and DiT's EMA equal torch's", "[train][optim]") {
  const OptimFixture fx;
  for (auto [c, max_norm, type] : {std::tuple{"clip", 0.5, 2.0}, std::tuple{"clip_inf", 0.1, std::numeric_limits<double>::infinity()}}) {
    ThreeParams g = fx.params(std::string(c) + ".in");
    const double norm = train::clip_grad_norm<double>(g, max_norm, type);
    CHECK(std::abs(norm - fx.file.get<double>(std::string(c) + ".total_norm")[0]) < 1e-12);
    fx.check(g, std::string(c) + ".grad");
  }
  ThreeParams p = fx.params("ema.p0");
  ThreeParams ema = p;                       // shares storage until the first update copies
  train::update_ema<double>(ema, p, 0.0);    // as train.py: a copy
  CHECK(ema.a.data() != p.a.data());
  train::SGD<double, ThreeParams> opt(p, {.lr = 0.1});
  for (int s = 0; s < 10; ++s) {
    ThreeParams g = fx.params(ditto::detail::cat("ema.grad.", s));
    opt.step(p, g);
    train::update_ema<double>(ema, p, 0.9);
    fx.check(ema, ditto::detail::cat("ema.p.", s));
  }
}

namespace {
// A tiny DiT trained on the simple loss (eps MSE), as a reader's loop would: draw data, t and
// noise from one generator, forward_train, the loss's gradient, backward, clip, AdamW, EMA.
struct TinyRun {
  nlohmann::json config = {{"input_size", 8}, {"patch_size", 2}, {"in_channels", 2}, {"hidden_size", 16}, {"depth", 2},
                           {"num_heads", 2}, {"num_classes", 3}, {"learn_sigma", false}};
  nlohmann::json args = {{"lr", 1e-3}, {"batch", 4}};
  models::DiT<float> model{models::DiTConfig::from_json(config)};
  models::DiT<float> ema = model;
  train::AdamW<float, models::DiT<float>> opt{model, {.lr = 1e-3, .weight_decay = 0.01}};
  diffusion::Schedule schedule{diffusion::linear_betas(1000)};
  Generator gen{11};
  std::int64_t step = 0;
  TinyRun() {
    Generator init(3);
    for (auto& [name, p] : nn::trainable_parameters<float>(model)) {
      const Tensor<float> r = init.normal<float>(p->shape());
      for (std::int64_t i = 0; i < p->numel(); ++i) (*p)[i] = 0.2f * r[i];
    }
    train::update_ema<float>(ema, model, 0.0);
  }
  train::TrainState<models::DiT<float>, train::AdamW<float, models::DiT<float>>> state() {
    return {model, &ema, opt, step, gen, config, args};
  }
  float run(int steps) {
    float loss = 0;
    auto grads = nn::zeros_like<float>(model);
    for (int s = 0; s < steps; ++s, ++step) {
      const Tensor<float> x0 = gen.normal<float>({4, 2, 8, 8}), noise = gen.normal<float>({4, 2, 8, 8});
      const auto t = diffusion::sample_timesteps(gen, 4, 1000);
      const Tensor<float> x_t = diffusion::q_sample(schedule, x0, t, noise);
      Tensor<float> tf({4});
      for (int b = 0; b < 4; ++b) tf[b] = static_cast<float>(t[static_cast<std::size_t>(b)]);
      const Tensor<std::int64_t> y({4}, std::vector<std::int64_t>{0, 1, 2, static_cast<std::int64_t>(step % 3)});
      models::DiT<float>::Acts acts;
      const Tensor<float> out = model.forward_train(x_t, tf, y, acts);
      Tensor<float> dout(out.shape());
      loss = 0;
      for (std::int64_t i = 0; i < out.numel(); ++i) {
        const float d = out[i] - noise[i];
        loss += d * d / static_cast<float>(out.numel());
        dout[i] = 2 * d / static_cast<float>(out.numel());
      }
      nn::zero_grad<float>(grads);
      model.backward(grads, acts, dout);
      train::clip_grad_norm<float>(grads, 1.0);
      opt.step(model, grads);
      train::update_ema<float>(ema, model, 0.99);
    }
    return loss;
  }
};
template <class Model>
void require_same_tensors(Model& a, Model& b) {
  auto pa = nn::named_parameters<float>(a), pb = nn::named_parameters<float>(b);
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) ditto_test::require_equal(*pa[i].second, *pb[i].second);
}
}  // namespace

TEST_CASE("a resumed run continues bit for bit: 5 steps then save then resume then 5 equals 10", "[train][checkpoint]") {
  const std::string path = (std::filesystem::temp_directory_path() / ("ditto_ckpt_" + std::to_string(::getpid()) + ".safetensors")).string();
  TinyRun straight;
  straight.run(10);
  TinyRun first;
  first.run(5);
  train::save_checkpoint<float>(path, first.state());
  TinyRun resumed;  // fresh weights, moments, generator: all must come from the file
  const auto args = train::load_checkpoint<float>(path, resumed.state());
  CHECK(args == first.args);
  CHECK(resumed.step == 5);
  CHECK(resumed.opt.steps == 5);
  resumed.run(5);
  require_same_tensors(straight.model, resumed.model);
  require_same_tensors(straight.ema, resumed.ema);
  require_same_tensors(straight.opt.exp_avg_sq, resumed.opt.exp_avg_sq);
  CHECK(straight.gen.offset() == resumed.gen.offset());
  std::filesystem::remove(path);
}

TEST_CASE("bad checkpoints are refused and change nothing", "[train][checkpoint]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ditto_ckpt_bad_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "ckpt.safetensors").string();
  TinyRun a;
  a.run(2);
  train::save_checkpoint<float>(path, a.state());
  std::string bytes;
  {
    std::ifstream f(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  TinyRun b;
  const Tensor<float> before = b.model.blocks[0].attn.qkv.weight.clone();
  auto refused = [&](const std::string& file_bytes, const std::string& says) {
    std::ofstream((dir / "bad.safetensors").string(), std::ios::binary) << file_bytes;
    INFO(says);
    CHECK_THROWS_WITH(train::load_checkpoint<float>((dir / "bad.safetensors").string(), b.state()), Catch::Contains(says));
    ditto_test::require_equal(b.model.blocks[0].attn.qkv.weight, before);
    CHECK(b.step == 0);
  };
  refused(bytes.substr(0, bytes.size() - 100), "go past the data section");  // truncated
  std::string flipped = bytes;
  flipped[flipped.size() - 7] ^= 0x10;  // one bit of one weight
  refused(flipped, "checksum does not match");
  {  // metadata of the wrong type, and a step edited by hand (the checksum covers the metadata)
    const std::string marker = "\\\"step\\\":2";
    std::string edited = bytes;
    const auto at = edited.find(marker);
    REQUIRE(at != std::string::npos);
    edited[at + marker.size() - 1] = '3';
    refused(edited, "checksum does not match");
    edited[at + marker.size() - 1] = '-';
    refused(edited, "metadata");
  }
  // another config: named
  TinyRun c;
  c.config["hidden_size"] = 24;
  c.model = models::DiT<float>(models::DiTConfig::from_json(c.config));
  CHECK_THROWS_WITH(train::load_checkpoint<float>(path, c.state()), Catch::Contains("another model config (hidden_size: 16 in the checkpoint, 24 here)"));
  // not a checkpoint at all
  save_safetensors<float>((dir / "weights.safetensors").string(), {{"w", Tensor<float>({2})}});
  CHECK_THROWS_WITH(train::load_checkpoint<float>((dir / "weights.safetensors").string(), b.state()), Catch::Contains("not a ditto checkpoint"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a process killed during a save leaves the previous checkpoint loadable", "[train][checkpoint]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ditto_ckpt_kill_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "ckpt.safetensors").string();
  TinyRun a;
  a.model.final_layer.linear.bias[0] = 0;  // the weight that tells a save's step
  train::save_checkpoint<float>(path, a.state());
  for (int delay_us : {300, 2000, 8000}) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // saves over and over until killed, each save's weights telling its step
      try {
        for (;;) {
          a.step += 1;
          a.model.final_layer.linear.bias[0] = static_cast<float>(a.step);
          train::save_checkpoint<float>(path, a.state());
        }
      } catch (...) {
        ::_exit(3);
      }
    }
    ::usleep(static_cast<useconds_t>(delay_us));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status));
    TinyRun b;
    CHECK_NOTHROW(train::load_checkpoint<float>(path, b.state()));  // a whole checkpoint: the old one or a newer
    CHECK(b.model.final_layer.linear.bias[0] == static_cast<float>(b.step));  // weights and step from one save
    b.model.final_layer.linear.bias[0] = a.model.final_layer.linear.bias[0];
    require_same_tensors(a.model, b.model);
  }
  std::filesystem::remove_all(dir);
}

#ifdef DITTO_FORWARD
TEST_CASE("ditto-forward --backward gives every model's gradients as PyTorch autograd does", "[train][forward][dit][vit][uvit][unet][vivit][latte]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ditto_backward_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = [&](const std::string& n) { return (dir / n).string(); };
  auto run = [&](const std::string& args) {
    const int status = std::system((std::string(DITTO_FORWARD) + " " + args + " 2> " + path("err.txt")).c_str());
    std::ifstream f(path("err.txt"));
    return std::pair{WIFEXITED(status) ? WEXITSTATUS(status) : -1, std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>())};
  };
  // One fixture case through the CLI: weights and inputs as files, every gradient compared, and
  // nothing else in OUT (no grad for fixed tables, timesteps or labels).
  auto check_case = [&](const std::string& model, const std::string& which, const std::string& name) {
    INFO(model << " " << name);
    const GradFixture<float> fx(which, name);
    const auto entry = ditto_test::load_json("grad_" + which + "_configs.json")[name];
    std::ofstream(path("config.json")) << (entry.contains("kwargs") ? entry["kwargs"] : entry).dump();
    std::vector<std::pair<std::string, Tensor<float>>> w;
    const std::string wp = name + ".w.";
    for (const auto& n : fx.file.names())
      if (n.rfind(wp, 0) == 0) w.emplace_back(n.substr(wp.size()), fx.file.get<float>(n));
    save_safetensors<float>(path("w.safetensors"), w);
    std::vector<std::pair<std::string, Tensor<float>>> floats = {{"grad_out", fx.grad_out()}};
    std::vector<std::pair<std::string, Tensor<std::int64_t>>> ints;
    const std::string ip = name + ".in.";
    for (const auto& n : fx.file.names())  // every input under its forward() name: x, t or timesteps, y
      if (n.rfind(ip, 0) == 0) {
        if (models::detail::is_integer(fx.file.info(n).dtype)) ints.emplace_back(n.substr(ip.size()), fx.file.get<std::int64_t>(n));
        else floats.emplace_back(n.substr(ip.size()), fx.file.get<float>(n));
      }
    ditto_test::save_mixed(path("in.safetensors"), floats, ints);
    const auto [code, err] = run("--model " + model + " --config " + path("config.json") + " --weights " + path("w.safetensors") + " --inputs " +
                                 path("in.safetensors") + " --output " + path("out.safetensors") + " --backward");
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(path("out.safetensors"));
    CHECK_CLOSE(out.get<float>("out"), fx.out(), 1e-4);
    // every gradient the fixture holds, whole or as a sketch, by GradFixture's rule
    std::set<std::string> names;
    const std::string gp = name + ".grad.";
    for (std::string n : fx.file.names()) {
      if (n.rfind(gp, 0) != 0) continue;
      n = n.substr(gp.size());
      for (const char* suffix : {".head", ".absmax", ".dot"})
        if (n.size() > std::strlen(suffix) && n.compare(n.size() - std::strlen(suffix), std::strlen(suffix), suffix) == 0)
          n = n.substr(0, n.size() - std::strlen(suffix));  // a sketch's parts: one gradient
      names.insert(n);
    }
    double largest = 0;
    for (const auto& n : names) largest = std::max(largest, fx.ref_absmax(n));
    for (const auto& n : names) fx.check_grad(n, out.get<float>("grad." + n), 1e-4, largest);
    const auto grads = names.size();
    CHECK(out.tensors().size() == static_cast<std::size_t>(grads) + 1);  // out and one grad.* per fixture gradient
    for (const char* none : {"grad.t", "grad.timesteps", "grad.y", "grad.y_image", "grad.use_image_num", "grad.temp_embed"}) CHECK(!out.contains(none));
    bool pos_grad = false;  // a trained position table (timm's, ViViT's spatial.pos_embed, ...)
    for (const auto& n : out.names()) pos_grad = pos_grad || (n.size() >= 9 && n.compare(n.size() - 9, 9, "pos_embed") == 0);
    return pos_grad;
  };
  CHECK_FALSE(check_case("dit", "dit", "small"));  // DiT's pos_embed is fixed
  CHECK(check_case("vit", "vit", "token"));        // timm's is trained
  CHECK(check_case("vit", "vit", "map"));
  CHECK(check_case("uvit", "uvit", "cond_conv"));
  CHECK(check_case("uvit", "uvit", "uncond_mlptime"));
  for (const char* c : {"st_tubelet3_cls", "fe_uniform_gap_nohead", "fsa_tubelet2", "fdp_uniform"}) CHECK(check_case("vivit", "vivit", c));
  for (const char* c : {"uncond", "img_class", "v1_token", "v4_class"}) CHECK_FALSE(check_case("latte", "latte", c));  // Latte's tables are fixed
  {  // the U-Net: its hashed weights written out, the inputs and the stored gradients compared
    const GradFixture<float> fx("unet", "cond_legacy");
    const auto entry = ditto_test::load_json("grad_unet_configs.json")["cond_legacy"];
    std::ofstream(path("config.json")) << entry["kwargs"].dump();
    models::UNet<float> unet(models::UNetConfig::from_json(entry["kwargs"]));
    for (auto& [pname, t] : nn::named_parameters<float>(unet)) ditto_test::hash_weights(pname, *t);
    nn::save<float>(unet, path("w.safetensors"));
    ditto_test::save_mixed(path("in.safetensors"), {{"x", fx.in("x")}, {"timesteps", fx.in("timesteps")}, {"grad_out", fx.grad_out()}},
                           {{"y", fx.file.get<std::int64_t>("cond_legacy.in.y")}});
    const auto [code, err] = run("--model unet --config " + path("config.json") + " --weights " + path("w.safetensors") + " --inputs " +
                                 path("in.safetensors") + " --output " + path("out.safetensors") + " --backward");
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(path("out.safetensors"));
    CHECK_CLOSE(out.get<float>("out"), fx.out(), 1e-4);
    CHECK_CLOSE(out.get<float>("grad.x"), fx.grad("x"), 1e-4);
    CHECK_CLOSE(out.get<float>("grad.out.2.bias"), fx.grad("out.2.bias"), 1e-4);
    CHECK_CLOSE(out.get<float>("grad.time_embed.0.bias"), fx.grad("time_embed.0.bias"), 1e-4);
    CHECK(out.tensors().size() == nn::trainable_parameters<float>(unet).size() + 2);  // out, grad.x and one per parameter
  }
  // the autoencoder, under CompVis names and under diffusers' (its gradients named as the file
  // names the weights, in the file's shapes)
  for (const char* which : {"attn_nonsquare_encode", "attn_nonsquare_decode"}) {
    const bool encode = std::string(which).find("encode") != std::string::npos;
    const GradFixture<float> fx("vae", which);
    const auto entry = ditto_test::load_json("grad_vae_configs.json")[which];
    std::ofstream(path("config.json")) << entry["kwargs"].dump();
    models::AutoencoderKL<float> vae(models::VAEConfig::from_json(entry["kwargs"]));
    for (auto& [pname, t] : nn::named_parameters<float>(vae)) ditto_test::hash_weights(pname, *t);
    for (bool diffusers : {false, true}) {
      INFO(which << (diffusers ? " (diffusers names)" : " (CompVis names)"));
      std::vector<std::pair<std::string, Tensor<float>>> w;
      for (auto& [pname, t] : nn::named_parameters<float>(vae)) {
        const std::string n = diffusers ? models::diffusers_vae_names(pname, vae.config.ch_mult.size()).front() : pname;
        const bool linear = diffusers && n.find("attentions.0.to_") != std::string::npos && t->dim() == 4;  // diffusers' Linear (C, C)
        w.emplace_back(n, linear ? t->reshape({t->size(0), t->size(1)}) : *t);
      }
      save_safetensors<float>(path("w.safetensors"), w);
      ditto_test::save_mixed(path("in.safetensors"), {{encode ? "x" : "z", fx.in(encode ? "x" : "z")}, {"grad_out", fx.grad_out()}}, {});
      const auto [code, err] = run(std::string("--model ") + (encode ? "vae-encode" : "vae-decode") + " --config " + path("config.json") +
                                   " --weights " + path("w.safetensors") + " --inputs " + path("in.safetensors") + " --output " +
                                   path("out.safetensors") + " --backward");
      INFO(err);
      REQUIRE(code == 0);
      const SafetensorsFile out(path("out.safetensors"));
      CHECK_CLOSE(out.get<float>("out"), fx.out(), 1e-4);
      CHECK_CLOSE(out.get<float>(encode ? "grad.x" : "grad.z"), fx.grad(encode ? "x" : "z"), 1e-4);
      // one per parameter, under the file's name and in its shape, each the fixture's gradient of that parameter
      std::vector<std::string> compvis;
      for (auto& [pname, t] : nn::named_parameters<float>(vae)) compvis.push_back(pname);
      REQUIRE(compvis.size() == w.size());
      double largest = 0;
      for (const auto& n : compvis) largest = std::max(largest, fx.ref_absmax(n));
      for (std::size_t i = 0; i < w.size(); ++i) {
        const auto& [n, t] = w[i];
        REQUIRE(out.contains("grad." + n));
        CHECK(out.info("grad." + n).shape == t.shape());
        fx.check_grad(compvis[i], out.get<float>("grad." + n).reshape(nn::named_parameters<float>(vae)[i].second->shape()), 1e-4, largest);
      }
      CHECK(out.tensors().size() == w.size() + (encode ? 4 : 2));  // + out, logvar, z, grad.x / out, grad.z
      CHECK(!out.contains("grad.noise"));
    }
  }

  // refusals: guidance, a missing or unexpected grad_out, --trace with --backward
  const GradFixture<float> fx("dit", "small");
  std::ofstream(path("config.json")) << ditto_test::load_json("grad_dit_configs.json")["small"].dump();
  std::vector<std::pair<std::string, Tensor<float>>> w;
  for (const auto& n : fx.file.names())
    if (n.rfind("small.w.", 0) == 0) w.emplace_back(n.substr(8), fx.file.get<float>(n));
  save_safetensors<float>(path("w.safetensors"), w);
  const Tensor<std::int64_t> y = fx.file.get<std::int64_t>("small.in.y");
  ditto_test::save_mixed(path("in.safetensors"), {{"x", fx.in("x")}, {"t", fx.in("t")}, {"grad_out", fx.grad_out()}}, {{"y", y}});
  ditto_test::save_mixed(path("in_nograd.safetensors"), {{"x", fx.in("x")}, {"t", fx.in("t")}}, {{"y", y}});
  const std::string common = "--model dit --config " + path("config.json") + " --weights " + path("w.safetensors");
  for (const auto& [args, says] : std::vector<std::pair<std::string, std::string>>{
           {common + " --inputs " + path("in.safetensors") + " --output " + path("o.safetensors") + " --backward --cfg-scale 2", "takes no guidance"},
           {common + " --inputs " + path("in_nograd.safetensors") + " --output " + path("o.safetensors") + " --backward", "no tensor named \"grad_out\""},
           {common + " --inputs " + path("in.safetensors") + " --output " + path("o.safetensors"), "unexpected input \"grad_out\""},
           {common + " --inputs " + path("in.safetensors") + " --output " + path("o.safetensors") + " --backward --trace", "one or the other"}}) {
    INFO(args);
    const auto [c2, e2] = run(args);
    CHECK(c2 == 1);
    CHECK_THAT(e2, Catch::Contains(says));
  }
  std::filesystem::remove_all(dir);
}
#endif

TEST_CASE("the hybrid loss's gradient equals central differences with the mean detached in vb", "[train][grad][loss]") {
  Generator gen(12);
  const diffusion::Schedule s(diffusion::linear_betas(1000));
  const std::int64_t B = 3;
  const Tensor<double> x0 = gen.uniform<double>({B, 2, 4, 4}, -1, 1), noise = gen.normal<double>({B, 2, 4, 4});
  const std::vector<std::int64_t> t = {0, 300, 999};
  const Tensor<double> x_t = diffusion::q_sample(s, x0, t, noise);
  Tensor<double> out = gen.normal<double>({B, 4, 4, 4}, 0.0, 0.5);
  for (std::int64_t i = 0; i < 16 * 2; ++i) out[i] = x0[i] * 0.1;  // t = 0: a plausible mean keeps the decoder NLL away from its floor
  for (auto type : {diffusion::LossType::mse, diffusion::LossType::rescaled_mse}) {
    diffusion::LossOptions o;
    o.loss_type = type;
    const Tensor<double> frozen = out.clone();
    // upstream's objective: mse on the current mean, vb on the frozen mean and the current variance
    auto L = [&] {
      Tensor<double> mix = out.clone();
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < 32; ++i) mix[b * 64 + i] = frozen[b * 64 + i];
      const auto terms_mse = diffusion::training_losses(s, out, x0, x_t, t, noise, o);
      const auto terms_vb = diffusion::training_losses(s, mix, x0, x_t, t, noise, o);
      double sum = 0;
      for (std::int64_t b = 0; b < B; ++b) sum += (terms_mse.mse[b] + terms_vb.vb[b]) / B;
      return sum;
    };
    Tensor<double> g = diffusion::training_losses_grad(s, out, x0, x_t, t, noise, o);
    worst_fd_error(L, {{"model_output", &out, &g}}, 192);
  }
}

TEST_CASE("the autoencoder's training objective (L1 or L2 plus the KL) has the gradient of central differences", "[train][grad][loss][vae]") {
  // a small AutoencoderKL (2 levels, one attention) in double, the objective of ditto-train's
  // AutoencoderTask: the gradient it accumulates against central differences of the loss it
  // returns, with the noise of the same generators; the KL's weight large enough to matter
  const nlohmann::json kw = {{"embed_dim", 2},
                             {"ddconfig", {{"double_z", true}, {"z_channels", 2}, {"resolution", 8}, {"in_channels", 1}, {"out_ch", 1}, {"ch", 32},
                                           {"ch_mult", {1, 2}}, {"num_res_blocks", 1}, {"attn_resolutions", {4}}, {"dropout", 0.0}}}};
  for (const char* rec : {"l1", "l2"}) {
    const auto rc = pipelines::RunConfig::from_json({{"model", "vae"}, {"model_config", kw}, {"train", {{"kl_weight", 0.5}, {"reconstruction", rec}}}});
    pipelines::AutoencoderTask<double> task(rc, models::AutoencoderKL<double>(models::VAEConfig::from_json(kw)));
    Generator init(3);
    models::initialize_weights(task.model, init);
    Generator gen(4);
    const Tensor<double> x = gen.uniform<double>({2, 1, 8, 8}, -1, 1);
    auto gens = [] { return std::vector<Generator>{Generator(9, 1u << 24), Generator(9, 2u << 24)}; };
    // the objective by inference alone (encode, sample, decode): the mean over the 2 pictures
    // of the reconstruction sum plus 0.5 KL, with the noise the task draws
    auto L = [&] {
      const auto post = task.model.encode(x);
      auto g2 = gens();
      Tensor<double> noise(post.mean.shape());
      for (int b = 0; b < 2; ++b) {
        const Tensor<double> z = g2[static_cast<std::size_t>(b)].normal<double>({post.mean.numel() / 2});
        std::copy(z.begin(), z.end(), noise.data() + b * z.numel());
      }
      const Tensor<double> r = task.model.decode(task.model.sample(post, noise));
      double sum = 0;
      for (std::int64_t i = 0; i < x.numel(); ++i) sum += std::string(rec) == "l1" ? std::abs(r[i] - x[i]) : (r[i] - x[i]) * (r[i] - x[i]);
      for (std::int64_t i = 0; i < post.mean.numel(); ++i)
        sum += 0.5 * 0.5 * (post.mean[i] * post.mean[i] + std::exp(post.logvar[i]) - 1 - post.logvar[i]);
      return sum / 2;
    };
    auto grads = nn::zeros_like<double>(task.model);
    auto gs = gens();
    INFO(rec);
    CHECK(task.accumulate(grads, x, Tensor<std::int64_t>({2}), gs, 0.5) == Approx(L()).epsilon(1e-12));  // the loss it returns
    worst_fd_error(L, params_of(task.model, grads), 2);
  }
}

TEST_CASE("Min-SNR-gamma weights the mse term by min(SNR, gamma) over SNR, SNR or SNR + 1, and its gradient follows", "[train][grad][loss]") {
  Generator gen(13);
  const auto betas = diffusion::linear_betas(1000);
  const diffusion::Schedule s(betas);
  const std::int64_t B = 4;
  const Tensor<double> x0 = gen.uniform<double>({B, 2, 4, 4}, -1, 1), noise = gen.normal<double>({B, 2, 4, 4});
  const std::vector<std::int64_t> t = {1, 40, 300, 999};  // SNR from ~1e4 down to ~4e-5: both sides of gamma = 5
  const Tensor<double> x_t = diffusion::q_sample(s, x0, t, noise);
  Tensor<double> out = gen.normal<double>({B, 4, 4, 4}, 0.0, 0.5);
  int clipped = 0;
  for (auto mean : {diffusion::ModelMeanType::epsilon, diffusion::ModelMeanType::start_x, diffusion::ModelMeanType::v}) {
    diffusion::LossOptions plain, weighted;
    plain.mean_type = weighted.mean_type = mean;
    weighted.snr_gamma = 5;
    const auto a = diffusion::training_losses(s, out, x0, x_t, t, noise, plain);
    const auto w = diffusion::training_losses(s, out, x0, x_t, t, noise, weighted);
    for (std::int64_t b = 0; b < B; ++b) {
      double abar = 1;  // the SNR from the betas themselves, not from the schedule's tables
      for (std::int64_t k = 0; k <= t[b]; ++k) abar *= 1 - betas[static_cast<std::size_t>(k)];
      const double snr = abar / (1 - abar), m = std::min(snr, 5.0);
      const double want = mean == diffusion::ModelMeanType::epsilon ? m / snr : mean == diffusion::ModelMeanType::start_x ? m : m / (snr + 1);
      clipped += snr > 5;
      CHECK(std::abs(w.mse[b] - want * a.mse[b]) <= 1e-12 * a.mse[b]);
      CHECK(w.vb[b] == a.vb[b]);  // the variational bound is not weighted
      CHECK(w.loss[b] == Approx(w.mse[b] + w.vb[b]).epsilon(1e-14));
    }
    // the gradient of the weighted objective: mse on the current mean, vb on the frozen mean
    const Tensor<double> frozen = out.clone();
    auto L = [&] {
      Tensor<double> mix = out.clone();
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < 32; ++i) mix[b * 64 + i] = frozen[b * 64 + i];
      const auto terms_mse = diffusion::training_losses(s, out, x0, x_t, t, noise, weighted);
      const auto terms_vb = diffusion::training_losses(s, mix, x0, x_t, t, noise, weighted);
      double sum = 0;
      for (std::int64_t b = 0; b < B; ++b) sum += (terms_mse.mse[b] + terms_vb.vb[b]) / B;
      return sum;
    };
    Tensor<double> g = diffusion::training_losses_grad(s, out, x0, x_t, t, noise, weighted);
    worst_fd_error(L, {{"model_output", &out, &g}}, 256);
  }
  CHECK(clipped == 6);  // t = 1 and 40 sit above gamma in each of the 3 mean types
}

TEMPLATE_TEST_CASE("DiT's training loss and its parameter gradients equal upstream's", "[train][grad][loss][fixtures]", float, double) {
  using T = TestType;
  const GradFixture<T> fx("dit", "small");
  const auto configs = ditto_test::load_json("grad_dit_configs.json");
  models::DiT<T> dit(models::DiTConfig::from_json(configs["small"]));
  fx.load(dit);
  const diffusion::Schedule s(diffusion::linear_betas(1000));
  const Tensor<T> x0 = fx.file.template get<T>("small.loss.x_start"), noise = fx.file.template get<T>("small.loss.noise");
  const Tensor<std::int64_t> tl = fx.file.template get<std::int64_t>("small.loss.t"), y = fx.file.template get<std::int64_t>("small.loss.y");
  const std::vector<std::int64_t> t(tl.begin(), tl.end());
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  const Tensor<T> x_t = diffusion::q_sample(s, x0, t, noise);
  CHECK_CLOSE(x_t, fx.file.template get<T>("small.loss.x_t"), tol);
  Tensor<T> tf({3});
  for (int b = 0; b < 3; ++b) tf[b] = static_cast<T>(t[static_cast<std::size_t>(b)]);
  typename models::DiT<T>::Acts acts;
  const Tensor<T> out = dit.forward_train(x_t, tf, y, acts);
  CHECK_CLOSE(out, fx.file.template get<T>("small.loss.model_out"), tol);
  const auto terms = diffusion::training_losses(s, out, x0, x_t, t, noise);
  T mean = 0;
  for (T v : terms.loss) mean += v / 3;
  CHECK(std::abs(mean - fx.file.template get<T>("small.loss.value")[0]) <= tol * std::abs(fx.file.template get<T>("small.loss.value")[0]));
  auto g = nn::zeros_like<T>(dit);
  dit.backward(g, acts, diffusion::training_losses_grad(s, out, x0, x_t, t, noise));
  for (auto& [name, p] : nn::trainable_parameters<T>(g)) {
    INFO("loss.grad." << name);
    CHECK_CLOSE(*p, fx.file.template get<T>("small.loss.grad." + name), tol);
  }
}

namespace {
// A block a user writes from library blocks, outside the library: y = fc2(silu(fc1(norm(x)))) + x.
struct UserBlock {
  nn::LayerNorm<double> norm{6};
  nn::Linear<double> fc1{6, 10}, fc2{10, 6};
  template <class V>
  void visit(V& v) {
    v("norm", norm);
    v("fc1", fc1);
    v("fc2", fc2);
  }
  struct Acts {
    Tensor<double> x, mean, rstd, h, pre;
  };
  Tensor<double> forward_train(const Tensor<double>& x, Acts& a) const {
    const std::int64_t rows = x.size(0);
    a.x = x, a.mean = Tensor<double>({rows}), a.rstd = Tensor<double>({rows}), a.h = Tensor<double>({rows, 6});
    norm.forward_train(x.data(), a.h.data(), rows, a.mean.data(), a.rstd.data());
    a.pre = fc1.forward(a.h);
    Tensor<double> y = fc2.forward(nn::silu(a.pre));
    for (std::int64_t i = 0; i < y.numel(); ++i) y[i] += x[i];
    return y;
  }
  void backward(UserBlock& g, const Acts& a, const Tensor<double>& dy, Tensor<double>& dx) const {
    const std::int64_t rows = a.x.size(0);
    Tensor<double> ds({rows, 10}), dpre({rows, 10}), dh({rows, 6});
    fc2.backward_into(ds.data(), g.fc2, dy.data(), nn::silu(a.pre).data(), rows);
    nn::activate_backward(dpre.data(), ds.data(), a.pre.data(), rows * 10, nn::Activation::silu);
    fc1.backward_into(dh.data(), g.fc1, dpre.data(), a.h.data(), rows);
    dx = dy.clone();  // the residual
    norm.backward_into(dx.data(), g.norm, dh.data(), a.x.data(), a.mean.data(), a.rstd.data(), rows);
  }
};
}  // namespace

TEST_CASE("a user block composed of library blocks trains", "[train][grad]") {
  Generator gen(13);
  UserBlock blk;
  randomize<double>(blk, gen);
  Tensor<double> x = gen.normal<double>({5, 6});
  const Tensor<double> gout = gen.normal<double>({5, 6});
  UserBlock::Acts a;
  (void)blk.forward_train(x, a);
  auto g = nn::zeros_like<double>(blk);
  Tensor<double> dx;
  blk.backward(g, a, gout, dx);
  auto checked = params_of(blk, g);
  checked.emplace_back("x", &x, &dx);
  worst_fd_error([&] {
    UserBlock::Acts tmp;
    return dot(blk.forward_train(x, tmp), gout);
  }, checked);
  // and an optimizer takes it like any model
  train::AdamW<double, UserBlock> opt(blk, {.lr = 1e-2});
  const double before = dot(blk.forward_train(x, a), gout);
  for (int s = 0; s < 20; ++s) {
    nn::zero_grad<double>(g);
    (void)blk.forward_train(x, a);
    blk.backward(g, a, gout, dx);
    opt.step(blk, g);
  }
  CHECK(dot(blk.forward_train(x, a), gout) < before - 0.1);  // descending sum(y * gout)
}

namespace {
// The largest |a - b| over two gradient trees, relative to the largest |a|.
template <class T, class Model>
double tree_rel_diff(Model& a, Model& b) {
  double scale = 0, diff = 0;
  for (auto& [name, x, y] : nn::zip_parameters<T>(a, b))
    for (std::int64_t i = 0; i < x->numel(); ++i) {
      scale = std::max(scale, std::abs(static_cast<double>((*x)[i])));
      diff = std::max(diff, std::abs(static_cast<double>((*x)[i]) - static_cast<double>((*y)[i])));
    }
  return diff / scale;
}
}  // namespace

TEST_CASE("gradients accumulated over micro-batches equal the whole batch's", "[train][accumulate][dit]") {
  Generator gen(21);
  auto config = models::DiTConfig::from_json({{"input_size", 8}, {"patch_size", 2}, {"in_channels", 2}, {"hidden_size", 16},
                                              {"depth", 2}, {"num_heads", 2}, {"num_classes", 3}});
  models::DiT<double> dit(config);
  randomize<double>(dit, gen, 0.3);
  const diffusion::Schedule s(diffusion::linear_betas(1000));
  const std::int64_t B = 5;
  const Tensor<double> x0 = gen.uniform<double>({B, 2, 8, 8}, -1, 1), noise = gen.normal<double>({B, 2, 8, 8});
  const std::vector<std::int64_t> t = {3, 999, 120, 500, 42};
  const Tensor<std::int64_t> y({B}, std::vector<std::int64_t>{0, 3, 1, 2, 1});
  auto grads_of = [&](std::int64_t micro) {
    auto g = nn::zeros_like<double>(dit);
    for (const auto& mb : train::micro_batches(B, micro)) {
      const Tensor<double> xs = train::batch_slice(x0, mb.lo, mb.hi), ns = train::batch_slice(noise, mb.lo, mb.hi);
      const std::vector<std::int64_t> ts(t.begin() + mb.lo, t.begin() + mb.hi);
      const Tensor<double> x_t = diffusion::q_sample(s, xs, ts, ns);
      Tensor<double> tf({mb.hi - mb.lo});
      for (std::int64_t i = 0; i < tf.numel(); ++i) tf[i] = static_cast<double>(ts[static_cast<std::size_t>(i)]);
      models::DiT<double>::Acts acts;
      const Tensor<double> out = dit.forward_train(x_t, tf, train::batch_slice(y, mb.lo, mb.hi), acts);
      dit.backward(g, acts, diffusion::training_losses_grad(s, out, xs, x_t, ts, ns, {}, mb.weights<double>()));
    }
    return g;
  };
  auto whole = grads_of(B), parts = grads_of(2);  // 2 + 2 + 1
  CHECK(train::micro_batches(B, 2).size() == 3);
  CHECK(train::micro_batches(B, 2).back().share() == 0.2);
  CHECK(tree_rel_diff<double>(whole, parts) <= 1e-12);  // the products sum rows in another grouping: not bitwise
  CHECK_THROWS_WITH(train::micro_batches(0, 2), Catch::Contains("batch >= 1"));
  CHECK_THROWS_WITH(train::batch_slice(x0, 4, 6), Catch::Contains("samples [4, 6)"));
}

TEST_CASE("activation checkpointing gives the same gradient bits with the blocks' activations dropped", "[train][checkpoint_acts][dit][vit]") {
  Generator gen(22);
  {
    auto config = models::DiTConfig::from_json({{"input_size", 8}, {"patch_size", 2}, {"in_channels", 2}, {"hidden_size", 16},
                                                {"depth", 3}, {"num_heads", 2}, {"num_classes", 3}});
    models::DiT<float> dit(config);
    randomize<float>(dit, gen, 0.3);
    const Tensor<float> x = gen.normal<float>({3, 2, 8, 8}), t({3}, std::vector<float>{1, 50, 900});
    const Tensor<std::int64_t> y({3}, std::vector<std::int64_t>{0, 3, 1});
    auto run = [&](bool checkpoint) {
      models::DiT<float>::Acts acts;
      acts.checkpoint = checkpoint;
      const Tensor<float> out = dit.forward_train(x, t, y, acts);
      std::size_t kept = 0;
      for (const auto& b : acts.blocks) kept += static_cast<std::size_t>(b.x_in.numel());
      CHECK((kept == 0) == checkpoint);  // checkpointed: no block activations held
      auto g = nn::zeros_like<float>(dit);
      Tensor<float> dx;
      dit.backward(g, acts, Tensor<float>::ones(out.shape()), &dx);
      return std::pair{g, dx};
    };
    auto [g1, dx1] = run(false);
    auto [g2, dx2] = run(true);
    require_same_grads<float>(g1, g2);
    ditto_test::require_equal(dx1, dx2);
  }
  {
    const auto config = models::ViTConfig::from_json({{"img_size", 8}, {"patch_size", 2}, {"in_chans", 1}, {"num_classes", 3}, {"embed_dim", 8},
                                                      {"depth", 2}, {"num_heads", 2}, {"qk_norm", true}});
    models::ViT<float> vit(config);
    randomize<float>(vit, gen, 0.3);
    const Tensor<float> x = gen.normal<float>({2, 1, 8, 8}), gout = gen.normal<float>({2, 3});
    auto run = [&](bool checkpoint) {
      models::ViT<float>::Acts acts;
      acts.checkpoint = checkpoint;
      (void)vit.forward_train(x, acts);
      auto g = nn::zeros_like<float>(vit);
      vit.backward(g, acts, gout);
      return g;
    };
    auto g1 = run(false), g2 = run(true);
    require_same_grads<float>(g1, g2);
  }
}

TEST_CASE("check mode names the first block that makes a NaN or an infinity", "[train][check_finite][dit][vit]") {
  Generator gen(23);
  auto config = models::DiTConfig::from_json({{"input_size", 8}, {"patch_size", 2}, {"in_channels", 2}, {"hidden_size", 16},
                                              {"depth", 3}, {"num_heads", 2}, {"num_classes", 3}});
  models::DiT<float> dit(config);
  randomize<float>(dit, gen, 0.3);
  const Tensor<float> x = gen.normal<float>({2, 2, 8, 8}), t({2}, std::vector<float>{1, 50});
  const Tensor<std::int64_t> y({2}, std::vector<std::int64_t>{0, 3});
  models::DiT<float>::Acts acts;
  acts.check_finite = true;
  const Tensor<float> out = dit.forward_train(x, t, y, acts);  // finite: passes
  auto g = nn::zeros_like<float>(dit);
  dit.backward(g, acts, Tensor<float>::ones(out.shape()));
  // the loss's gradient
  Tensor<float> bad = Tensor<float>::ones(out.shape());
  bad[7] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(dit.backward(g, acts, bad), NumericError);
  CHECK_THROWS_WITH(dit.backward(g, acts, bad), Catch::Contains("dout (the loss's gradient) produced a non-finite value"));
  // a gradient that turns non-finite inside block 0 (its tree poisoned: the check reads it after that block's backward)
  nn::zero_grad<float>(g);
  g.blocks[0].mlp.fc1.weight[3] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(dit.backward(g, acts, Tensor<float>::ones(out.shape())), Catch::Contains("DiT.blocks.0 produced a non-finite gradient of mlp.fc1.weight"));
  // a weight that makes block 1's output NaN: forward names block 1, not the blocks after it
  dit.blocks[1].mlp.fc2.weight = dit.blocks[1].mlp.fc2.weight.clone();
  dit.blocks[1].mlp.fc2.weight[0] = std::numeric_limits<float>::quiet_NaN();
  models::DiT<float>::Acts acts2;
  acts2.check_finite = true;
  CHECK_THROWS_WITH(dit.forward_train(x, t, y, acts2), Catch::Contains("DiT.blocks.1 produced a non-finite output"));
  models::DiT<float>::Acts unchecked;  // off: no check, the NaN flows on
  CHECK(std::isnan(dit.forward_train(x, t, y, unchecked)[0]));

  const auto vc = models::ViTConfig::from_json({{"img_size", 4}, {"patch_size", 2}, {"in_chans", 1}, {"num_classes", 2}, {"embed_dim", 8},
                                                {"depth", 2}, {"num_heads", 2}});
  models::ViT<float> vit(vc);
  randomize<float>(vit, gen, 0.3);
  vit.blocks[1].attn.proj.bias[2] = std::numeric_limits<float>::infinity();
  models::ViT<float>::Acts va;
  va.check_finite = true;
  CHECK_THROWS_WITH(vit.forward_train(gen.normal<float>({1, 1, 4, 4}), va), Catch::Contains("ViT.blocks.1 produced a non-finite output"));
}
