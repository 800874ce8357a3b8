// Training the video models and the autoencoder: ViViT (its four models), Latte (every variant,
// the image-video joint input, text), against central differences in double and PyTorch autograd.
#include <map>
#include <optional>
#include <tuple>

#include <ditto/ditto.hpp>

#include "helpers.hpp"
#include "train_helpers.hpp"

using namespace ditto;
using namespace train_test;

TEST_CASE("ViViT backward equals central differences in its four models", "[train][grad][vivit]") {
  const std::vector<nlohmann::json> configs = {
      {{"model", "spatio_temporal"}, {"num_frames", 4}, {"img_size", 4}, {"patch_size", 2}, {"tubelet_size", 2}, {"in_chans", 2},
       {"embed_dim", 8}, {"depth", 1}, {"num_heads", 2}, {"num_classes", 3}},
      {{"model", "factorized_encoder"}, {"embedding", "uniform"}, {"num_frames", 3}, {"img_size", {4, 6}}, {"patch_size", {2, 3}},
       {"in_chans", 1}, {"embed_dim", 8}, {"depth", 1}, {"temporal_depth", 1}, {"num_heads", 2}, {"num_classes", 0}, {"classifier", "gap"},
       {"act_layer", "gelu_tanh"}},
      {{"model", "factorized_encoder"}, {"num_frames", 4}, {"img_size", 4}, {"patch_size", 2}, {"tubelet_size", 2}, {"in_chans", 1},
       {"embed_dim", 8}, {"depth", 1}, {"temporal_depth", 2}, {"num_heads", 2}, {"num_classes", 2}, {"qkv_bias", false}},
      {{"model", "factorized_self_attention"}, {"num_frames", 3}, {"img_size", 4}, {"patch_size", 2}, {"tubelet_size", 1}, {"in_chans", 2},
       {"embed_dim", 8}, {"depth", 2}, {"num_heads", 2}, {"num_classes", 3}, {"classifier", "gap"}},
      {{"model", "factorized_dot_product"}, {"embedding", "uniform"}, {"num_frames", 3}, {"img_size", 4}, {"patch_size", 2},
       {"in_chans", 1}, {"embed_dim", 8}, {"depth", 2}, {"num_heads", 4}, {"num_classes", 2}, {"classifier", "gap"}, {"mlp_ratio", 1.5}},
  };
  Generator gen(41);
  for (const auto& j : configs) {
    INFO(j.dump());
    models::ViViT<double> m(models::ViViTConfig::from_json(j));
    randomize<double>(m, gen, 0.4);
    const auto& c = m.config;
    Tensor<double> x = gen.normal<double>({2, c.in_chans, c.num_frames, c.img_size[0], c.img_size[1]});
    check_model_backward(m, x, gen, 5, [&] { return m.forward(x); }, [&](models::ViViT<double>::Acts& a) { return m.forward_train(x, a); });
  }
}

TEMPLATE_TEST_CASE("ViViT gradients equal PyTorch autograd on ditto's re-implementation of the paper", "[train][grad][fixtures][vivit]",
                   float, double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_vivit_configs.json");
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  int cases = 0;
  for (const auto& [name, kwargs] : configs.items()) {
    const GradFixture<T> fx("vivit", name);
    INFO(name);
    models::ViViT<T> m(models::ViViTConfig::from_json(kwargs));
    fx.load(m);
    const Tensor<T> x = fx.in("x");
    typename models::ViViT<T>::Acts acts;
    CHECK_CLOSE(m.forward_train(x, acts), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    Tensor<T> dx;
    m.backward(g, acts, fx.grad_out(), &dx);
    fx.check_grads(g, tol);
    CHECK_CLOSE(dx, fx.grad("x"), tol);
    ++cases;
  }
  CHECK(cases == 6);
}

TEST_CASE("Latte backward equals central differences in every variant, with images and with text", "[train][grad][latte]") {
  struct Case {
    nlohmann::json kwargs;
    std::int64_t images = 0;
  };
  const nlohmann::json base = {{"input_size", 4}, {"patch_size", 2}, {"in_channels", 2}, {"hidden_size", 8}, {"num_heads", 2},
                               {"mlp_ratio", 1.5}, {"num_frames", 3}, {"depth", 2}};
  auto with = [&](nlohmann::json extra) {
    nlohmann::json j = base;
    j.update(extra);
    return j;
  };
  const std::vector<Case> cases = {
      {with({{"learn_sigma", true}})},
      {with({{"input_size", 5}, {"extras", 2}, {"num_classes", 3}, {"learn_sigma", false}})},  // a cut remainder, labels
      {with({{"extras", 2}, {"num_classes", 3}}), 2},                                            // images with their own labels
      {with({{"num_frames", 2}}), 1},                                                            // images, unconditional
      {with({{"variant", 2}, {"depth", 4}, {"extras", 2}, {"num_classes", 3}})},
      {with({{"variant", 3}, {"depth", 1}})},
      {with({{"variant", 4}, {"num_heads", 4}, {"extras", 2}, {"num_classes", 2}})},
      {with({{"variant", 1}, {"timestep_injection", "token"}, {"extras", 2}, {"num_classes", 3}})},
      {with({{"variant", 3}, {"depth", 1}, {"timestep_injection", "token"}})},
  };
  Generator gen(43);
  for (const auto& [kwargs, I] : cases) {
    INFO(kwargs.dump() << " use_image_num " << I);
    models::Latte<double> m(models::LatteConfig::from_json(kwargs));
    randomize<double>(m, gen, 0.4);
    const auto& c = m.config;
    Tensor<double> x = gen.normal<double>({2, c.num_frames + I, c.in_channels, c.input_size, c.input_size});
    const Tensor<double> t({2}, std::vector<double>{3.5, 700});
    const Tensor<std::int64_t> y({2}, std::vector<std::int64_t>{2, 0}), yi({2, 2}, std::vector<std::int64_t>{1, 2, 0, 1});  // the I = 2 case's
    const Tensor<std::int64_t>* yp = c.extras == 2 ? &y : nullptr;
    const Tensor<std::int64_t>* yip = c.extras == 2 && I > 0 ? &yi : nullptr;
    // with images, enough coordinates of x that the image frames are among them
    check_model_backward(m, x, gen, I > 0 ? 16 : 4, [&] { return m.forward(x, t, yp, {}, I, yip); },
                         [&](models::Latte<double>::Acts& a) { return m.forward_train(x, t, yp, a, I, yip); });
  }
  SECTION("text (extras = 78): the projection's weight and the text embedding") {
    models::Latte<double> m(models::LatteConfig::from_json(with({{"extras", 78}})));
    randomize<double>(m, gen, 0.4);
    Tensor<double> x = gen.normal<double>({2, 3, 2, 4, 4}), text = gen.normal<double>({2, 77, 768});
    const Tensor<double> t({2}, std::vector<double>{3.5, 700});
    models::Latte<double>::Acts a;
    const Tensor<double> out = m.forward_train(x, t, nullptr, a, 0, nullptr, &text);
    CHECK_CLOSE(out, m.forward(x, t, nullptr, {}, 0, nullptr, &text), 1e-13);
    const Tensor<double> gout = gen.normal<double>(out.shape());
    auto g = nn::zeros_like<double>(m);
    Tensor<double> dx, dtext;
    m.backward(g, a, gout, &dx, &dtext);
    auto checked = params_of(m, g);
    checked.emplace_back("x", &x, &dx);
    Tensor<double> dtext3 = dtext.reshape({2, 77, 768});
    checked.emplace_back("text_embedding", &text, &dtext3);
    worst_fd_error([&] { return dot(m.forward(x, t, nullptr, {}, 0, nullptr, &text), gout); }, checked, 4);
  }
}

TEST_CASE("Latte's label_factors: a class table and a direction table summed equal one table of the sums, with its rows' gradient sums",
          "[train][grad][latte]") {
  nlohmann::json kw = {{"input_size", 4}, {"patch_size", 2}, {"in_channels", 2}, {"hidden_size", 8}, {"num_heads", 2}, {"num_frames", 3},
                       {"depth", 2}, {"extras", 2}, {"num_classes", 6}, {"class_dropout_prob", 0.1}};
  models::Latte<double> joint(models::LatteConfig::from_json(kw));
  kw["label_factors"] = 3;  // 6 labels = 2 classes x 3 directions
  models::Latte<double> f(models::LatteConfig::from_json(kw));
  Generator gen(47);
  randomize<double>(f, gen, 0.4);
  std::map<std::string, Tensor<double>*> fp;
  for (auto& [n, p] : nn::named_parameters<double>(f)) fp[n] = p;
  const Tensor<double>& A = *fp.at("y_embedder.embedding_table.weight");
  const Tensor<double>& Bt = *fp.at("y_embedder.factor_table.weight");
  REQUIRE(A.shape() == Shape{3, 8});  // 2 classes and the null class
  REQUIRE(Bt.shape() == Shape{3, 8});
  for (auto& [n, p] : nn::named_parameters<double>(joint)) {
    if (n != "y_embedder.embedding_table.weight") {
      *p = fp.at(n)->clone();
      continue;
    }
    REQUIRE(p->shape() == Shape{7, 8});
    for (std::int64_t y = 0; y < 7; ++y)
      for (std::int64_t c = 0; c < 8; ++c) (*p)(y, c) = y == 6 ? A(2, c) : A(y / 3, c) + Bt(y % 3, c);
  }
  Tensor<double> x = gen.normal<double>({3, 3, 2, 4, 4});
  const Tensor<double> t({3}, std::vector<double>{3.5, 700, 250});
  const Tensor<std::int64_t> y({3}, std::vector<std::int64_t>{4, 6, 2});  // (1, 1), the null class, (0, 2)
  models::Latte<double>::Acts af, aj;
  const Tensor<double> out = f.forward_train(x, t, &y, af);
  CHECK_CLOSE(out, joint.forward_train(x, t, &y, aj), 1e-13);
  CHECK_CLOSE(f.forward(x, t, &y), out, 1e-13);
  const Tensor<double> gout = gen.normal<double>(out.shape());
  auto gf = nn::zeros_like<double>(f);
  auto gj = nn::zeros_like<double>(joint);
  f.backward(gf, af, gout);
  joint.backward(gj, aj, gout);
  std::map<std::string, Tensor<double>*> gfp;
  for (auto& [n, p] : nn::named_parameters<double>(gf)) gfp[n] = p;
  const Tensor<double>& gA = *gfp.at("y_embedder.embedding_table.weight");
  const Tensor<double>& gB = *gfp.at("y_embedder.factor_table.weight");
  for (auto& [n, p] : nn::named_parameters<double>(gj)) {
    if (n != "y_embedder.embedding_table.weight") {
      CHECK_CLOSE(*gfp.at(n), *p, 1e-13);
      continue;
    }
    const Tensor<double>& G = *p;
    double worst = 0, scale = 0;
    for (std::int64_t c = 0; c < 8; ++c) {
      for (std::int64_t a = 0; a < 2; ++a) {
        double s = 0;
        for (std::int64_t b = 0; b < 3; ++b) s += G(a * 3 + b, c);
        worst = std::max(worst, std::abs(gA(a, c) - s)), scale = std::max(scale, std::abs(s));
      }
      worst = std::max(worst, std::abs(gA(2, c) - G(6, c)));
      for (std::int64_t b = 0; b < 3; ++b) {
        double s = 0;
        for (std::int64_t a = 0; a < 2; ++a) s += G(a * 3 + b, c);  // the null row has no direction
        worst = std::max(worst, std::abs(gB(b, c) - s)), scale = std::max(scale, std::abs(s));
      }
    }
    REQUIRE(scale > 0);
    CHECK(worst <= 1e-13 * scale);
  }
  // and against central differences, every parameter and x
  check_model_backward(f, x, gen, 4, [&] { return f.forward(x, t, &y); },
                       [&](models::Latte<double>::Acts& a) { return f.forward_train(x, t, &y, a); });
  const Tensor<std::int64_t> beyond({1}, std::vector<std::int64_t>{7});
  CHECK_THROWS_WITH(f.forward(gen.normal<double>({1, 3, 2, 4, 4}), Tensor<double>({1}, std::vector<double>{1}), &beyond),
                    Catch::Contains("label 7 is outside [0, 7)"));
  for (const auto& [key, value, extras] : {std::tuple{"label_factors", 4, 2}, std::tuple{"label_factors", 0, 2}, std::tuple{"label_factors", 3, 1}}) {
    nlohmann::json bad = kw;
    bad[key] = value;
    bad["extras"] = extras;
    CHECK_THROWS_WITH(models::LatteConfig::from_json(bad), Catch::Contains("label_factors"));
  }
}

TEMPLATE_TEST_CASE("Latte gradients equal PyTorch autograd on Vchitect/Latte and ditto's variants", "[train][grad][fixtures][latte]", float,
                   double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_latte_configs.json");
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  int cases = 0;
  for (const auto& [name, entry] : configs.items()) {
    const GradFixture<T> fx("latte", name);
    INFO(name);
    models::Latte<T> m(models::LatteConfig::from_json(entry["kwargs"]));
    const std::int64_t I = entry["use_image_num"];
    const bool text = m.config.extras == 78;
    if (text) {  // the generator's two large tensors come from hash_weights (tools/gen_latte_fixtures.py)
      for (auto& [n, p] : nn::named_parameters<T>(m)) p->fill(std::numeric_limits<T>::quiet_NaN());
      const std::string prefix = name + ".w.";
      nn::load<T>(m, fx.file, false, [&](const std::string& n) { return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : std::string(); });
      ditto_test::hash_weights("text_embedding_projection.1.weight", m.text_embedding_projection.weight);
      for (auto& [n, p] : nn::named_parameters<T>(m)) {
        INFO("parameter " << n);
        REQUIRE(std::none_of(p->begin(), p->end(), [](T v) { return std::isnan(v); }));
      }
    } else {
      fx.load(m);
    }
    const Tensor<T> x = fx.in("x"), t = fx.in("t");
    std::optional<Tensor<std::int64_t>> y, y_image;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    if (fx.file.contains(name + ".in.y_image")) y_image = fx.file.template get<std::int64_t>(name + ".in.y_image");
    const Tensor<T> text_in = text ? ditto_test::latte_text_input<T>(x.size(0)) : Tensor<T>();
    typename models::Latte<T>::Acts acts;
    CHECK_CLOSE(m.forward_train(x, t, y ? &*y : nullptr, acts, I, y_image ? &*y_image : nullptr, text ? &text_in : nullptr), fx.out(), tol);
    auto g = nn::zeros_like<T>(m);
    Tensor<T> dx, dtext;
    m.backward(g, acts, fx.grad_out(), &dx, text ? &dtext : nullptr);
    fx.check_grads(g, tol);
    fx.check_grad("x", dx, tol, fx.ref_absmax("x"));  // whole, or a sketch when large
    if (text) fx.check_grad("text_embedding", dtext.reshape({x.size(0), 77, 768}), tol, fx.ref_absmax("text_embedding"));
    ++cases;
  }
  CHECK(cases == 10);
}

TEST_CASE("the autoencoder's encoder and decoder backwards equal central differences", "[train][grad][vae]") {
  // GroupNorm(32) needs 32-channel widths; attention and conv resampling, then neither
  const std::vector<nlohmann::json> configs = {
      {{"ddconfig", {{"double_z", true}, {"z_channels", 2}, {"resolution", 8}, {"in_channels", 2}, {"out_ch", 2}, {"ch", 32}, {"ch_mult", {1, 1}},
                     {"num_res_blocks", 1}, {"attn_resolutions", {4}}, {"dropout", 0.0}}},
       {"embed_dim", 2}},
      {{"ddconfig", {{"double_z", true}, {"z_channels", 2}, {"resolution", 8}, {"in_channels", 1}, {"out_ch", 1}, {"ch", 32}, {"ch_mult", {1, 2}},
                     {"num_res_blocks", 1}, {"attn_resolutions", nlohmann::json::array()}, {"attn_type", "none"}, {"resamp_with_conv", false}, {"tanh_out", true}}},
       {"embed_dim", 1}, {"scale_factor", 0.5}},
      {{"ddconfig", {{"double_z", true}, {"z_channels", 1}, {"resolution", 8}, {"in_channels", 1}, {"out_ch", 1}, {"ch", 32}, {"ch_mult", {1, 1}},
                     {"num_res_blocks", 1}, {"attn_resolutions", {8}}, {"give_pre_end", true}}},
       {"embed_dim", 2}},
  };
  Generator gen(47);
  for (const auto& j : configs) {
    INFO(j.dump());
    models::AutoencoderKL<double> vae(models::VAEConfig::from_json(j));
    randomize<double>(vae, gen, 0.15);
    const auto& c = vae.config;
    // one logvar channel far above the clamp's 20: its gradient must be 0, as torch.clamp's
    vae.quant_conv.bias[c.embed_dim] = 45;
    Tensor<double> x = gen.normal<double>({2, c.in_channels, 4, 6}), z = gen.normal<double>({1, c.embed_dim, 2, 3});
    // encode: L = sum(mean * gm) + sum(logvar * gl), every parameter and x
    models::AutoencoderKL<double>::EncodeActs ea;
    const auto post = vae.encode_train(x, ea);
    const auto ref = vae.encode(x);
    CHECK_CLOSE(post.mean, ref.mean, 1e-13);
    CHECK_CLOSE(post.logvar, ref.logvar, 1e-13);
    CHECK(post.logvar[0] == 20.0);  // clamped
    const Tensor<double> gm = gen.normal<double>(post.mean.shape()), gl = gen.normal<double>(post.mean.shape());
    auto g = nn::zeros_like<double>(vae);
    Tensor<double> dx;
    vae.encode_backward(g, ea, gm, gl, &dx);
    Checked checked;
    for (auto& [name, p, gp] : nn::zip_parameters<double>(vae, g))
      if (name.rfind("encoder.", 0) == 0 || name.rfind("quant_conv.", 0) == 0) checked.emplace_back(name, p, gp);
    checked.emplace_back("x", &x, &dx);
    worst_fd_error([&] {
      const auto p = vae.encode(x);
      return dot(p.mean, gm) + dot(p.logvar, gl);
    }, checked, 3);
    for (auto& [name, gp] : nn::trainable_parameters<double>(g))  // encode never reaches the decoder
      if (name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0) CHECK(std::all_of(gp->begin(), gp->end(), [](double v) { return v == 0; }));
    // decode: every parameter and z
    models::AutoencoderKL<double>::DecodeActs da;
    const Tensor<double> out = vae.decode_train(z, da);
    CHECK_CLOSE(out, vae.decode(z), 1e-13);
    const Tensor<double> gout = gen.normal<double>(out.shape());
    auto g2 = nn::zeros_like<double>(vae);
    Tensor<double> dz;
    vae.decode_backward(g2, da, gout, &dz);
    Checked dchecked;
    for (auto& [name, p, gp] : nn::zip_parameters<double>(vae, g2))
      if (name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0) dchecked.emplace_back(name, p, gp);
    dchecked.emplace_back("z", &z, &dz);
    worst_fd_error([&] { return dot(vae.decode(z), gout); }, dchecked, 3);
    // activation checkpointing (each ResnetBlock and AttnBlock recomputed in backward): the same bits
    {
      models::AutoencoderKL<double>::EncodeActs ec;
      ec.checkpoint = true;
      (void)vae.encode_train(x, ec);
      CHECK(ec.encoder.down[0].block[0].h1.numel() == 0);  // the block's activations were dropped
      auto gc = nn::zeros_like<double>(vae);
      Tensor<double> dxc;
      vae.encode_backward(gc, ec, gm, gl, &dxc);
      require_same_grads<double>(g, gc);
      ditto_test::require_equal(dx, dxc);
      models::AutoencoderKL<double>::DecodeActs dc;
      dc.checkpoint = true;
      (void)vae.decode_train(z, dc);
      auto gd = nn::zeros_like<double>(vae);
      Tensor<double> dzc;
      vae.decode_backward(gd, dc, gout, &dzc);
      require_same_grads<double>(g2, gd);
      ditto_test::require_equal(dz, dzc);
    }
    // the reparameterized sample's backward: z = s (mean + exp(logvar / 2) noise)
    const Tensor<double> noise = gen.normal<double>(post.mean.shape()), gz = gen.normal<double>(post.mean.shape());
    auto [dmean, dlogvar] = vae.sample_backward(post, noise, gz);
    auto p = post;
    worst_fd_error([&] { return dot(vae.sample(p, noise), gz); }, {{"mean", &p.mean, &dmean}, {"logvar", &p.logvar, &dlogvar}}, 20);
  }
}

TEST_CASE("the autoencoder's check mode names the first block that makes a NaN or an infinity", "[train][check_finite][vae]") {
  models::AutoencoderKL<float> vae(models::VAEConfig::from_json(
      {{"ddconfig", {{"double_z", true}, {"z_channels", 2}, {"resolution", 8}, {"in_channels", 2}, {"out_ch", 2}, {"ch", 32}, {"ch_mult", {1, 1}},
                     {"num_res_blocks", 1}, {"attn_resolutions", {4}}, {"dropout", 0.0}}},
       {"embed_dim", 2}}));
  Generator gen(5);
  randomize<float>(vae, gen, 0.15f);
  const Tensor<float> x = gen.normal<float>({1, 2, 8, 8}), z = gen.normal<float>({1, 2, 4, 4});
  // a NaN weight in encoder.down.1's attention: the first block whose output holds it
  auto& w = vae.encoder.down[1].attn[0].proj_out.weight;
  const Tensor<float> saved = w.clone();
  w[3] = std::numeric_limits<float>::quiet_NaN();
  models::AutoencoderKL<float>::EncodeActs ea;
  ea.check_finite = true;
  CHECK_THROWS_WITH(vae.encode_train(x, ea), Catch::Contains("AutoencoderKL.encoder.down.1.attn.0 produced a non-finite output"));
  models::AutoencoderKL<float>::EncodeActs off;  // off by default: no error, the NaN flows out
  CHECK(std::isnan(vae.encode_train(x, off).mean[0]));
  std::copy(saved.begin(), saved.end(), w.begin());
  // an infinite loss gradient into decode_backward; a gradient that turns non-finite in a block
  models::AutoencoderKL<float>::DecodeActs da;
  da.check_finite = true;
  const Tensor<float> out = vae.decode_train(z, da);  // finite: passes
  auto g = nn::zeros_like<float>(vae);
  vae.decode_backward(g, da, Tensor<float>::ones(out.shape()));
  Tensor<float> bad = Tensor<float>::ones(out.shape());
  bad[5] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(vae.decode_backward(g, da, bad), Catch::Contains("decode_backward's dout (the loss's gradient) produced a non-finite value"));
  nn::zero_grad<float>(g);
  g.decoder.up[1].block[0].conv2.weight[0] = std::numeric_limits<float>::infinity();  // its tree poisoned: read after its backward
  CHECK_THROWS_WITH(vae.decode_backward(g, da, Tensor<float>::ones(out.shape())),
                    Catch::Contains("AutoencoderKL.decoder.up.1.block.0 produced a non-finite gradient of conv2.weight"));
  // a weight that overflows decoder.mid.block_1 (the decoder's first block)
  vae.decoder.mid.block_1.conv1.weight.fill(3e37f);
  models::AutoencoderKL<float>::DecodeActs db;
  db.check_finite = true;
  CHECK_THROWS_WITH(vae.decode_train(z, db), Catch::Contains("AutoencoderKL.decoder.mid.block_1 produced a non-finite output"));
}

TEMPLATE_TEST_CASE("autoencoder gradients equal PyTorch autograd on U-ViT's FrozenAutoencoderKL", "[train][grad][fixtures][vae]", float, double) {
  using T = TestType;
  const auto configs = ditto_test::load_json("grad_vae_configs.json");
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  int cases = 0;
  for (const auto& [name, entry] : configs.items()) {
    const GradFixture<T> fx("vae", name);
    INFO(name);
    models::AutoencoderKL<T> vae(models::VAEConfig::from_json(entry["kwargs"]));
    hash_model_weights<T>(vae, entry);  // the generator's weights: hash_weights of each state-dict name
    auto g = nn::zeros_like<T>(vae);
    Tensor<T> din;
    if (entry["mode"] == "encode") {
      typename models::AutoencoderKL<T>::EncodeActs a;
      CHECK_CLOSE(vae.encode_train(fx.in("x"), a).mean, fx.out(), tol);
      vae.encode_backward(g, a, fx.grad_out(), Tensor<T>(), &din);
      CHECK_CLOSE(din, fx.grad("x"), tol);
    } else {
      typename models::AutoencoderKL<T>::DecodeActs a;
      CHECK_CLOSE(vae.decode_train(fx.in("z"), a), fx.out(), tol);
      vae.decode_backward(g, a, fx.grad_out(), &din);
      CHECK_CLOSE(din, fx.grad("z"), tol);
    }
    fx.check_grads(g, tol);  // the half a call never reaches: zeros on both sides
    ++cases;
  }
  CHECK(cases == 4);
}
