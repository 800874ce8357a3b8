// models/: each model against its upstream implementation on the same weights and inputs
// (tests/fixtures/<model>_f32 / _f64.safetensors and <model>_configs.json, made by
// tools/gen_<model>_fixtures.py from the upstream code): relative error <= 1e-4 for whole models
// in float32 and <= 1e-10 in double, layer by layer through the traces; then config and input
// errors.
#include <ditto/core/rng.hpp>
#include <ditto/models/dit.hpp>
#include <ditto/models/latte.hpp>
#include <ditto/models/runner.hpp>
#include <ditto/models/unet.hpp>
#include <ditto/models/vae.hpp>
#include <ditto/models/uvit.hpp>
#include <ditto/models/vit.hpp>
#include <ditto/nn/module.hpp>

#include <cstdio>
#include <cstring>
#include <set>
#include <tuple>

#include "helpers.hpp"
#include "model_fixture.hpp"

using ditto_test::ModelFixture;

using namespace ditto;
using namespace ditto::models;


TEMPLATE_TEST_CASE("DiT equals facebookresearch/DiT: forward + forward_with_cfg + every block", "[models][dit]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("dit");
  int cases = 0;
  for (const auto& [name, kwargs] : fx.configs.items()) {
    if (!fx.has_case(name)) continue;  // float64 holds a subset
    INFO(name << " " << kwargs.dump());
    ++cases;
    DiT<T> dit(DiTConfig::from_json(kwargs));
    fx.load_case(dit, name);
    const auto x = fx.file.template get<T>(name + ".in.x");
    const auto t = fx.file.template get<T>(name + ".in.t");
    const auto y = fx.file.template get<std::int64_t>(name + ".in.y");
    std::map<std::string, Tensor<T>> traces;
    const auto out = dit.forward(x, t, y, [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); });
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    for (const auto& [k, v] : traces) {
      INFO("trace " << k);
      CHECK_CLOSE(v, fx.file.template get<T>(name + ".trace." + k), fx.tol);
    }
    CHECK(traces.size() == static_cast<std::size_t>(dit.config.depth + 4));
    if (fx.file.contains(name + ".cfg_out")) {
      const double scale = fx.file.template get<T>(name + ".in.cfg_scale")[0];
      CHECK_CLOSE(dit.forward_with_cfg(x, t, y, scale), fx.file.template get<T>(name + ".cfg_out"), fx.tol);
    }
    // a second forward reuses the buffers and gives the same answer
    ditto_test::require_equal(dit.forward(x, t, y), out);
  }
  CHECK(cases >= 2);
}

TEMPLATE_TEST_CASE("ViT equals timm's VisionTransformer: pooling + register tokens + LayerScale + every traced module",
                   "[models][vit]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("vit");
  int cases = 0;
  for (const auto& [name, kwargs] : fx.configs.items()) {
    if (!fx.has_case(name)) continue;
    INFO(name << " " << kwargs.dump());
    ++cases;
    ViT<T> vit(ViTConfig::from_json(kwargs));
    fx.load_case(vit, name);
    const auto x = fx.file.template get<T>(name + ".in.x");
    std::map<std::string, Tensor<T>> traces;
    const auto out = vit.forward(x, [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); });
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    CHECK(fx.compare_traces(name, traces) >= 5);
  }
  CHECK(cases >= 2);
}

TEST_CASE("ViT configs: timm's arguments + clear errors", "[models][vit]") {
  auto from = [](const char* text) { return ViTConfig::from_json(nlohmann::json::parse(text)); };
  const ViTConfig b16 = from("{}");
  CHECK((b16.embed_dim == 768 && b16.depth == 12 && b16.patch_size[0] == 16 && b16.embed_len() == 197));
  CHECK(from(R"({"img_size": [24, 40], "patch_size": [8, 4]})").embed_len() == 3 * 10 + 1);
  // ViT-B/16's parameter count in timm: 86,567,656
  ViT<float> vit(b16);
  CHECK(nn::count_parameters<float>(vit) == 86567656);
  CHECK_THROWS_WITH(from(R"({"global_pool": "max"})"), Catch::Contains("global_pool must be"));
  CHECK_THROWS_WITH(from(R"({"class_token": false})"), Catch::Contains("needs class_token"));
  CHECK_THROWS_WITH(from(R"({"act_layer": "relu"})"), Catch::Contains("act_layer \"relu\" is not supported"));
  CHECK_THROWS_WITH(from(R"({"norm_layer": "rmsnorm"})"), Catch::Contains("\"norm_layer\" other than its default"));
  CHECK_THROWS_WITH(from(R"({"img_size": [1, 2, 3]})"), Catch::Contains("an integer or a pair"));
  CHECK_THROWS_WITH(from(R"({"embed_dim": 100})"), Catch::Contains("divisible by num_heads 12"));
  CHECK_THROWS_WITH(from(R"({"depht": 3})"), Catch::Contains("unknown argument \"depht\""));
  CHECK(from(R"({"drop_rate": 0.1, "drop_path_rate": 0.2, "weight_init": "jax", "fix_init": true})").depth == 12);
  const ViTConfig small = from(R"({"img_size": 16, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2, "num_classes": 3})");
  ViT<float> v(small);
  CHECK(v.forward(Tensor<float>({2, 3, 16, 16})).shape() == Shape{2, 3});
  CHECK_THROWS_WITH(v.forward(Tensor<float>({2, 3, 16, 24})), Catch::Contains("expected x (B, 3, 16, 16)"));
  // dynamic_img_size: sizes divisible by the patch (or any, padded); a square grid to resample
  ViT<float> dyn(from(R"({"img_size": 16, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2, "num_classes": 3,
                          "dynamic_img_size": true})"));
  CHECK(dyn.forward(Tensor<float>({1, 3, 24, 40})).shape() == Shape{1, 3});
  CHECK(dyn.resampled_pos_embed(2, 2).data() == dyn.pos_embed.data());  // the trained grid: the table itself
  CHECK(dyn.resampled_pos_embed(3, 5).shape() == Shape{1, 1 + 15, 8});
  CHECK_THROWS_WITH(dyn.forward(Tensor<float>({1, 3, 20, 16})), Catch::Contains("must be divisible by the patch size 8x8"));
  ViT<float> rect(from(R"({"img_size": [16, 24], "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2, "dynamic_img_size": true})"));
  CHECK_THROWS_WITH(rect.forward(Tensor<float>({1, 3, 16, 16})), Catch::Contains("resamples a square grid of positions (as timm does)"));
}

TEMPLATE_TEST_CASE("U-ViT equals baofff/U-ViT: label and time tokens + long skips + conv head + every traced module",
                   "[models][uvit]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("uvit");
  int cases = 0;
  for (const auto& [name, kwargs] : fx.configs.items()) {
    if (!fx.has_case(name)) continue;
    INFO(name << " " << kwargs.dump());
    ++cases;
    UViT<T> m(UViTConfig::from_json(kwargs));
    fx.load_case(m, name);
    const auto x = fx.file.template get<T>(name + ".in.x");
    const auto t = fx.file.template get<T>(name + ".in.timesteps");
    std::optional<Tensor<std::int64_t>> y;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    std::map<std::string, Tensor<T>> traces;
    const auto out = m.forward(x, t, y ? &*y : nullptr, [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); });
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    CHECK(fx.compare_traces(name, traces) >= 6);
  }
  CHECK(cases >= 1);
}

TEST_CASE("U-ViT configs: the configs/ folder + upstream's arguments + clear errors", "[models][uvit]") {
  const UViTConfig huge = uvit_config("imagenet256_uvit_huge");
  CHECK((huge.embed_dim == 1152 && huge.depth == 28 && huge.num_classes == 1001 && !huge.conv && huge.in_chans == 4));
  CHECK_THROWS_WITH(uvit_config("mscoco_uvit_small"), Catch::Contains("unknown config \"mscoco_uvit_small\""));
  auto from = [](const char* text) { return UViTConfig::from_json(nlohmann::json::parse(text)); };
  CHECK(from(R"({"name": "uvit", "use_checkpoint": true, "qk_scale": null})").embed_dim == 768);
  CHECK_THROWS_WITH(from(R"({"name": "uvit_t2i"})"), Catch::Contains("uvit_t2i is a different model"));
  CHECK_THROWS_WITH(from(R"({"clip_dim": 768})"), Catch::Contains("unknown argument \"clip_dim\""));
  CHECK_THROWS_WITH(from(R"({"embed_dim": 100})"), Catch::Contains("divisible by num_heads 12"));
  UViT<float> cond(from(R"({"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 2, "num_heads": 2, "num_classes": 3})"));
  UViT<float> uncond(from(R"({"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 2, "num_heads": 2})"));
  const Tensor<float> x({2, 3, 8, 8}), t({2});
  const Tensor<std::int64_t> y({2});
  CHECK_THROWS_WITH(cond.forward(x, t), Catch::Contains("so y is required"));
  CHECK_THROWS_WITH(uncond.forward(x, t, &y), Catch::Contains("takes no y"));
  CHECK_THROWS_WITH(cond.forward(Tensor<float>({2, 3, 8, 4}), t, &y), Catch::Contains("expected x (B, 3, 8, 8)"));
  CHECK(cond.forward(x, t, &y).shape() == Shape{2, 3, 8, 8});
}

namespace {
using ditto_test::hash_weights;

using ditto_test::latte_text_input;
template <class T>
void load_latte_text_case(Latte<T>& m, const ModelFixture<T>& fx, const std::string& name) {
  for (auto& [n, p] : nn::named_parameters<T>(m)) p->fill(std::numeric_limits<T>::quiet_NaN());
  fx.load_case(m, name, /*strict=*/false);
  hash_weights("text_embedding_projection.1.weight", m.text_embedding_projection.weight);
  for (auto& [n, p] : nn::named_parameters<T>(m)) {  // every other parameter came from the file
    INFO("parameter " << n);
    REQUIRE(std::none_of(p->begin(), p->end(), [](T v) { return std::isnan(v); }));
  }
}
}  // namespace

TEMPLATE_TEST_CASE("ADM U-Net equals guided-diffusion's UNetModel: names + shapes + forward + every traced block",
                   "[models][unet]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("unet");
  int cases = 0;
  for (const auto& [name, c] : fx.configs.items()) {
    if (!fx.has_case(name)) continue;
    INFO(name << " " << c["kwargs"].dump());
    ++cases;
    UNet<T> built(UNetConfig::from_json(c["kwargs"]));
    // the state dict: upstream's names and shapes, exactly
    std::vector<std::pair<std::string, Tensor<T>>> weights;
    std::set<std::string> mine;
    for (auto& [n, t] : nn::named_parameters<T>(built)) {
      INFO("parameter " << n);
      REQUIRE(c["state_dict"].contains(n));
      CHECK(c["state_dict"][n].template get<Shape>() == t->shape());
      hash_weights(n, *t);
      weights.emplace_back(n, *t);
      mine.insert(n);
    }
    for (const auto& [n, shape] : c["state_dict"].items()) {
      INFO("upstream parameter " << n);
      CHECK(mine.count(n));
    }
    // through a file, strictly, as a checkpoint would load
    const std::string path = "ditto_test_unet_" + name + (std::is_same_v<T, float> ? "_f32" : "_f64") + ".safetensors";  // ctest -j: one per type
    save_safetensors(path, weights);
    UNet<T> m(UNetConfig::from_json(c["kwargs"]));
    nn::load<T>(m, path);
    std::remove(path.c_str());
    const auto x = fx.file.template get<T>(name + ".in.x");
    const auto t = fx.file.template get<T>(name + ".in.timesteps");
    std::optional<Tensor<std::int64_t>> y;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    std::map<std::string, Tensor<T>> traces;
    const auto out = m.forward(x, t, y ? &*y : nullptr, [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); });
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    CHECK(fx.compare_traces(name, traces) >= 8);
  }
  CHECK(cases >= 1);
}

TEST_CASE("U-Net configs: required arguments + refusals + input errors", "[models][unet]") {
  auto from = [](const char* text) { return UNetConfig::from_json(nlohmann::json::parse(text)); };
  const char* base = R"({"image_size": 8, "in_channels": 3, "model_channels": 32, "out_channels": 3, "num_res_blocks": 1,
                         "attention_resolutions": [2], "channel_mult": [1, 1])";
  auto with = [&](const char* extra) { return from((std::string(base) + extra + "}").c_str()); };
  CHECK(with("").channel_mult.size() == 2);
  CHECK_THROWS_WITH(from(R"({"image_size": 8})"), Catch::Contains("missing required argument \"in_channels\""));
  CHECK_THROWS_WITH(with(R"(, "use_fp16": true)"), Catch::Contains("use_fp16 = true is not supported"));
  CHECK_THROWS_WITH(with(R"(, "dims": 3)"), Catch::Contains("only dims = 2"));
  CHECK_THROWS_WITH(with(R"(, "learn_sigma": true)"), Catch::Contains("unknown argument \"learn_sigma\""));
  CHECK_THROWS_WITH(from(R"({"image_size": 8, "in_channels": 3, "model_channels": 48, "out_channels": 3, "num_res_blocks": 1,
                             "attention_resolutions": []})"), Catch::Contains("not divisible by 32"));
  CHECK(with(R"(, "dropout": 0.1, "use_checkpoint": true, "num_classes": null)").num_classes == std::nullopt);
  UNet<float> m(with(R"(, "num_classes": 4)"));
  const Tensor<float> t({1});
  const Tensor<std::int64_t> y({1});
  CHECK_THROWS_WITH(m.forward(Tensor<float>({1, 3, 8, 8}), t), Catch::Contains("class-conditional, so y is required"));
  CHECK_THROWS_WITH(m.forward(Tensor<float>({1, 3, 8, 7}), t, &y), Catch::Contains("divisible by 2"));
  CHECK(m.forward(Tensor<float>({1, 3, 6, 10}), t, &y).shape() == Shape{1, 3, 6, 10});
}

TEMPLATE_TEST_CASE("Latte equals Vchitect/Latte: spatial + temporal blocks, forward_with_cfg, latte_img's images, every traced module",
                   "[models][latte]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("latte");
  int cases = 0, image_cases = 0, text_cases = 0;
  for (const auto& [name, kwargs] : fx.configs.items()) {
    if (!fx.has_case(name)) continue;
    INFO(name << " " << kwargs.dump());
    ++cases;
    Latte<T> m(LatteConfig::from_json(kwargs));
    const bool text_case = kwargs.value("extras", 1) == 78;
    if (text_case) load_latte_text_case(m, fx, name);
    else fx.load_case(m, name);
    const auto x = fx.file.template get<T>(name + ".in.x");
    std::optional<Tensor<T>> text;
    if (text_case) text = latte_text_input<T>(x.size(0));
    const auto t = fx.file.template get<T>(name + ".in.t");
    std::optional<Tensor<std::int64_t>> y;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    std::optional<Tensor<std::int64_t>> y_image;  // latte_img.py's cases: images after the video
    if (fx.file.contains(name + ".in.y_image")) y_image = fx.file.template get<std::int64_t>(name + ".in.y_image");
    const std::int64_t images = fx.file.contains(name + ".in.use_image_num") ? fx.file.template get<std::int64_t>(name + ".in.use_image_num")[0] : 0;
    std::map<std::string, Tensor<T>> traces;
    const auto out = m.forward(x, t, y ? &*y : nullptr, [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); }, images,
                               y_image ? &*y_image : nullptr, text ? &*text : nullptr);
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    CHECK(fx.compare_traces(name, traces) >= 3 + m.config.depth);  // embedders, final layer, every block
    if (text_case) {
      ++text_cases;
      CHECK(traces.count("text_embedding_projection"));
      // the text matters: another prompt gives another video, and none at all is refused
      Tensor<T> other = text->clone();
      for (std::int64_t i = 0; i < other.numel(); ++i) other[i] = -other[i];
      CHECK(ditto_test::rel_error(m.forward(x, t, nullptr, {}, 0, nullptr, &other), out) > 1e-3);
      CHECK_THROWS_WITH(m.forward(x, t), Catch::Contains("text-conditioned (extras = 78), so text_embedding (B, 77, 768) is required"));
      const Tensor<T> short_text({x.size(0), 77, 767});
      CHECK_THROWS_WITH(m.forward(x, t, nullptr, {}, 0, nullptr, &short_text), Catch::Contains("expected text_embedding (2, 77, 768)"));
    }
    if (images) {
      ++image_cases;
      continue;
    }
    const double scale = fx.file.template get<T>(name + ".in.cfg_scale")[0];
    CHECK_CLOSE(m.forward_with_cfg(x, t, y ? &*y : nullptr, scale, {}, text ? &*text : nullptr), fx.file.template get<T>(name + ".cfg_out"),
                fx.tol);
  }
  CHECK(cases >= 2);
  CHECK(image_cases >= 1);
  CHECK(text_cases == 1);
}

TEST_CASE("Latte configs: upstream's arguments + refusals + a one-frame video's temporal blocks", "[models][latte]") {
  auto from = [](const char* text) { return LatteConfig::from_json(nlohmann::json::parse(text)); };
  CHECK(from("{}").num_frames == 16);
  CHECK_THROWS_WITH(from(R"({"depth": 3})"), Catch::Contains("depth must be even"));
  CHECK(from(R"({"extras": 78})").extras == 78);  // text embeddings
  CHECK_THROWS_WITH(from(R"({"extras": 3})"), Catch::Contains("extras must be 1 (timestep), 2 (+ class labels) or 78 (+ text embedding), got 3"));
  CHECK_THROWS_WITH(from(R"({"attention_mode": "fast"})"), Catch::Contains("attention_mode must be math, xformers or flash"));
  CHECK_THROWS_WITH(from(R"({"use_image_num": 2})"), Catch::Contains("unknown argument \"use_image_num\""));
  const LatteConfig c = from(R"({"input_size": 8, "patch_size": 4, "in_channels": 2, "hidden_size": 8, "depth": 2, "num_heads": 2,
                                 "num_frames": 1})");
  Latte<double> m(c);
  Generator g(3);
  for (auto& [n, t] : nn::named_parameters<double>(m))
    if (n != "pos_embed" && n != "temp_embed") g.fill_normal(*t, 0.0, 0.3);
  // with one frame each position's temporal attention sees only itself: its softmax weight is 1
  // and it returns that token's value, so the queries and keys do not matter. Scrambling the q
  // and k rows of the temporal block's qkv leaves the output as it was; the v rows do not.
  const auto x = g.normal<double>({2, 1, 2, 8, 8});
  const Tensor<double> t({2}, std::vector<double>{10, 500});
  const auto before = m.forward(x, t);
  auto& qkv = m.blocks[1].attn.qkv;
  for (std::int64_t i = 0; i < 2 * 8 * 8; ++i) qkv.weight[i] = 3.0 * std::sin(static_cast<double>(i));  // q, k rows
  for (std::int64_t i = 0; i < 2 * 8; ++i) qkv.bias[i] = -1.0;
  CHECK_CLOSE(m.forward(x, t), before, 1e-13);
  qkv.weight[2 * 8 * 8] += 1.0;  // a v row
  CHECK(ditto_test::rel_error(m.forward(x, t), before) > 1e-6);
  CHECK_THROWS_WITH(m.forward(g.normal<double>({2, 2, 2, 8, 8}), t), Catch::Contains("expected x (B, 1, 2, 8, 8)"));
  const Tensor<std::int64_t> y({2});
  CHECK_THROWS_WITH(m.forward(x, t, &y), Catch::Contains("takes no labels (extras = 1)"));
  const Tensor<double> text({2, 77, 768});
  CHECK_THROWS_WITH(m.forward(x, t, nullptr, {}, 0, nullptr, &text), Catch::Contains("takes no text (extras = 1), but text_embedding was given"));
  // text with images is latte_img.py's (another projection): refused
  LatteConfig tc = c;
  tc.extras = 78;
  tc.num_frames = 1;
  Latte<double> tm(tc);
  CHECK_THROWS_WITH(tm.forward(g.normal<double>({2, 2, 2, 8, 8}), t, nullptr, {}, 1, nullptr, &text), Catch::Contains("models/latte_img.py"));
  CHECK(tm.text_embedding_projection.weight.shape() == Shape{8, 77 * 768});
}

namespace {
// A model with every parameter set by hash_weights, after checking its names and shapes against
// upstream's state dict (the fixture's JSON), loaded strictly from a .safetensors file.
template <class Model, class T = float>
void hashed_weights_roundtrip(Model& m, const nlohmann::json& state_dict, const std::string& tag) {
  std::vector<std::pair<std::string, Tensor<T>>> weights;
  std::set<std::string> mine;
  for (auto& [n, t] : nn::named_parameters<T>(m)) {
    INFO("parameter " << n);
    REQUIRE(state_dict.contains(n));
    CHECK(state_dict[n].template get<Shape>() == t->shape());
    hash_weights(n, *t);
    weights.emplace_back(n, t->clone());
    mine.insert(n);
  }
  for (const auto& [n, shape] : state_dict.items()) {
    INFO("upstream parameter " << n);
    CHECK(mine.count(n));
  }
  for (auto& [n, t] : nn::named_parameters<T>(m)) t->fill(T(0));  // so only the file can give them back
  // one file per tag and scalar type: ctest -j runs the float and double cases at once, and one
  // rewriting the file the other has memory-mapped was a SIGBUS there
  const std::string path = "ditto_test_" + tag + (std::is_same_v<T, float> ? "_f32" : "_f64") + ".safetensors";
  save_safetensors(path, weights);
  nn::load<T>(m, path);
  std::remove(path.c_str());
}
}  // namespace

TEMPLATE_TEST_CASE("AutoencoderKL equals U-ViT's FrozenAutoencoderKL: encode + sample + decode", "[models][vae]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("vae");
  int cases = 0;
  for (const auto& [name, c] : fx.configs.items()) {
    INFO(name << " " << c["kwargs"].dump());
    ++cases;
    AutoencoderKL<T> vae(VAEConfig::from_json(c["kwargs"]));
    hashed_weights_roundtrip<AutoencoderKL<T>, T>(vae, c["state_dict"], "vae_" + name);
    std::map<std::string, Tensor<T>> traces;
    auto record = [&](const char* step) {
      return [&traces, step](const std::string& k, const Tensor<T>& v) { traces[std::string(step) + k] = v.clone(); };
    };
    const auto post = vae.encode(fx.file.template get<T>(name + ".in.x"), record("trace_encode."));
    CHECK_CLOSE(post.mean, fx.file.template get<T>(name + ".mean"), fx.tol);
    CHECK_CLOSE(post.logvar, fx.file.template get<T>(name + ".logvar"), fx.tol);
    CHECK_CLOSE(vae.sample(post, fx.file.template get<T>(name + ".in.noise")), fx.file.template get<T>(name + ".z"), fx.tol);
    CHECK_CLOSE(vae.decode(fx.file.template get<T>(name + ".in.z"), record("trace_decode.")), fx.file.template get<T>(name + ".decoded"), fx.tol);
    for (const char* k : {"trace_encode.encoder", "trace_encode.quant_conv", "trace_decode.post_quant_conv", "trace_decode.decoder"}) {
      INFO(k);
      REQUIRE(traces.count(k));
      CHECK_CLOSE(traces[k], fx.file.template get<T>(name + "." + k), fx.tol);
    }
    if (fx.file.contains(name + ".tiled")) {  // diffusers' tiled_decode on 4x4 latent tiles, a quarter overlapping
      const auto z_big = fx.file.template get<T>(name + ".in.z_big");
      CHECK_CLOSE(vae.decode_tiled(z_big, 4, 0.25), fx.file.template get<T>(name + ".tiled"), fx.tol);
      // one tile covering the latent is decode() itself
      ditto_test::require_equal(vae.decode_tiled(z_big, 16, 0.25), vae.decode(z_big));
    }
  }
  CHECK(cases == 2);
}

TEST_CASE("AutoencoderKL loads diffusers' names as diffusers' converter maps them", "[models][vae]") {
  const auto table = ditto_test::load_json("vae_diffusers_names.json");
  for (const auto& [name, c] : table.items()) {
    INFO(name);
    const nlohmann::json kwargs = {{"ddconfig", c["ddconfig"]}, {"embed_dim", c["ddconfig"]["z_channels"]}};
    AutoencoderKL<float> ref(VAEConfig::from_json(kwargs));
    std::map<std::string, Tensor<float>> compvis;
    for (auto& [n, t] : nn::named_parameters<float>(ref)) {
      hash_weights(n, *t);
      compvis[n] = *t;
    }
    // the file as diffusers stores it: its names, its shapes (attention projections as Linear);
    // then as older diffusers named the attention projections (query, key, value, proj_attn)
    for (bool old_names : {false, true}) {
      INFO((old_names ? "old diffusers attention names" : "diffusers names"));
      std::vector<std::pair<std::string, Tensor<float>>> file;
      for (const auto& [dname, entry] : c["keys"].items()) {
        const std::string from = entry[0];
        REQUIRE(compvis.count(from));
        std::string n = dname;
        for (const auto& [now, before] : {std::pair{".to_q.", ".query."}, std::pair{".to_k.", ".key."}, std::pair{".to_v.", ".value."},
                                          std::pair{".to_out.0.", ".proj_attn."}})
          if (const auto at = n.find(now); old_names && at != std::string::npos) n = n.substr(0, at) + before + n.substr(at + std::strlen(now));
        file.emplace_back(n, compvis[from].clone().reshape(entry[1].get<Shape>()));
      }
      REQUIRE(file.size() == compvis.size());
      const std::string path = "ditto_test_vae_diffusers_" + name + ".safetensors";
      save_safetensors(path, file);
      AutoencoderKL<float> got(VAEConfig::from_json(kwargs));
      const SafetensorsFile f(path);
      CHECK(has_diffusers_vae_names(f));
      CHECK(load_diffusers(got, f).ok());
      for (auto& [n, t] : nn::named_parameters<float>(got)) {
        INFO(n);
        ditto_test::require_equal(*t, compvis[n]);
      }
      std::remove(path.c_str());
    }
  }
  // a missing weight is named in the diffusers naming
  AutoencoderKL<float> vae(VAEConfig::from_json({{"ddconfig", table["small"]["ddconfig"]}, {"embed_dim", 3}}));
  save_safetensors<float>("ditto_test_vae_partial.safetensors", {{"encoder.conv_norm_out.weight", Tensor<float>({64})}});
  CHECK_THROWS_WITH(load_diffusers(vae, SafetensorsFile("ditto_test_vae_partial.safetensors")),
                    Catch::Contains("123 missing (encoder.conv_in.weight, encoder.conv_in.bias, encoder.down_blocks.0.resnets.0.norm1.weight"));
  std::remove("ditto_test_vae_partial.safetensors");
}

TEST_CASE("AutoencoderKL configs + input errors", "[models][vae]") {
  auto from = [](const char* text) { return VAEConfig::from_json(nlohmann::json::parse(text)); };
  const char* sd = R"({"ddconfig": {"double_z": true, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0},
                       "embed_dim": 4, "pretrained_path": "assets/stable-diffusion/autoencoder_kl.pth"})";
  const VAEConfig c = from(sd);
  CHECK((c.scale_factor == 0.18215 && c.ch_mult.size() == 4));
  // the Stable Diffusion autoencoder's size: 83,653,863 parameters
  AutoencoderKL<float> vae(c);
  CHECK(nn::count_parameters<float>(vae) == 83653863);
  CHECK_THROWS_WITH(from(R"({"embed_dim": 4})"), Catch::Contains("missing required argument \"ddconfig\""));
  CHECK_THROWS_WITH(from(R"({"ddconfig": {"z_channels": 4}, "embed_dim": 4})"), Catch::Contains("missing required argument \"resolution\""));
  CHECK_THROWS_WITH(from(R"({"ddconfig": {}, "embed_dim": 4, "monitor": "val"})"), Catch::Contains("unknown argument \"monitor\""));
  CHECK_THROWS_WITH(vae.encode(Tensor<float>({1, 3, 12, 16})), Catch::Contains("divisible by 8"));
  CHECK_THROWS_WITH(vae.decode(Tensor<float>({1, 3, 4, 4})), Catch::Contains("expected z (B, 4, h, w)"));
}

// Hostile sizes (what tools/crosscheck_forward.py --hostile throws at ditto-forward): refused
// at once with a message, never an overflow, a hang or the system's out-of-memory kill.
TEST_CASE("configs refuse sizes no machine can hold, before allocating anything", "[models][config]") {
  auto dit = [](const char* text) { return DiTConfig::from_json(nlohmann::json::parse(text)); };
  CHECK_THROWS_WITH(dit(R"({"input_size": 1099511627776})"), Catch::Contains("\"input_size\" = 1099511627776 is out of range (integer arguments are at most 2^31"));
  CHECK_THROWS_WITH(dit(R"({"depth": 18446744073709551615})"), Catch::Contains("\"depth\" = 18446744073709551615 is out of range"));
  CHECK_THROWS_WITH(dit(R"({"num_classes": 1e300})"), Catch::Contains("is out of range"));
  CHECK_THROWS_WITH(dit(R"({"mlp_ratio": 1e300})"), Catch::Contains("hidden_size * mlp_ratio must be a width from 1 to 2^31, got mlp_ratio 1e+300"));
  // 2^31 blocks of DiT-XL's width: 10^16 weights, refused by their count (the config alone
  // is cheap; building it block by block would run until the system kills the process)
  CHECK_THROWS_AS(dit(R"({"depth": 2147483648})"), MemoryError);
  CHECK_THROWS_WITH(dit(R"({"depth": 2147483648})"), Catch::Contains("DiT config: its weights alone would take at least"));
  CHECK_THROWS_AS(UNetConfig::from_json(nlohmann::json::parse(R"({"image_size": 8, "in_channels": 3, "model_channels": 64, "out_channels": 3,
      "num_res_blocks": 2147483648, "attention_resolutions": []})")), MemoryError);
  CHECK_THROWS_WITH(UNetConfig::from_json(nlohmann::json::parse(R"({"image_size": 8, "in_channels": 3, "model_channels": 64, "out_channels": 3,
      "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1e300]})")), Catch::Contains("must be a width from 1 to 2^31"));
  // a position table too large fails before its 1-D parts are computed (which took minutes)
  volatile std::int64_t big = std::int64_t{1} << 31;  // volatile: GCC would otherwise warn about the loops it never reaches
  CHECK_THROWS(nn::sincos_pos_embed_2d<float>(16, big / 2, big / 2));
  CHECK_THROWS(nn::sincos_pos_embed_3d<float>(16, big, big, big));
}

TEST_CASE("DiT configs: named sizes + upstream's arguments + clear errors", "[models][dit]") {
  const DiTConfig xl = dit_config("DiT-XL/2");
  CHECK((xl.depth == 28 && xl.hidden_size == 1152 && xl.num_heads == 16 && xl.patch_size == 2));
  CHECK(dit_config("DiT-S/8").patch_size == 8);
  CHECK_THROWS_WITH(dit_config("DiT-M/2"), Catch::Contains("unknown model \"DiT-M/2\""));
  CHECK_THROWS_WITH(dit_config("DiT-S/3"), Catch::Contains("unknown model \"DiT-S/3\""));
  // upstream's parameter count for DiT-S/2 (state_dict of models.DiT_S_2(): 32,963,360)
  DiT<float> s2(dit_config("DiT-S/2"));
  CHECK(nn::count_parameters<float>(s2) == 32963360);
  auto from = [](const char* text) { return DiTConfig::from_json(nlohmann::json::parse(text)); };
  CHECK(from("{}").hidden_size == 1152);
  CHECK(from(R"({"learn_sigma": false, "in_channels": 3})").out_channels() == 3);
  CHECK_THROWS_WITH(from(R"({"hidden_size": 64, "num_heads": 4, "hiden": 3})"), Catch::Contains("unknown argument \"hiden\""));
  CHECK_THROWS_WITH(from(R"({"depth": "two"})"), Catch::Contains("\"depth\" must be an integer, got \"two\""));
  CHECK_THROWS_WITH(from(R"({"hidden_size": 30, "num_heads": 3})"), Catch::Contains("divisible by 4"));
  CHECK_THROWS_WITH(from(R"({"hidden_size": 32, "num_heads": 3})"), Catch::Contains("divisible by num_heads 3"));
  CHECK_THROWS_WITH(from("[1, 2]"), Catch::Contains("expected a JSON object"));
  // inputs
  DiTConfig c = from(R"({"input_size": 8, "hidden_size": 16, "depth": 1, "num_heads": 2, "num_classes": 3})");
  DiT<float> dit(c);
  const auto x = Tensor<float>({2, 4, 8, 8});
  const auto t = Tensor<float>({2});
  CHECK_THROWS_WITH(dit.forward(Tensor<float>({2, 4, 8, 6}), t, Tensor<std::int64_t>({2})), Catch::Contains("expected x (B, 4, 8, 8)"));
  CHECK_THROWS_WITH(dit.forward(x, Tensor<float>({3}), Tensor<std::int64_t>({2})), Catch::Contains("expected t of shape (2)"));
  CHECK_THROWS_WITH(dit.forward(x, t, Tensor<std::int64_t>({2}, std::vector<std::int64_t>{0, 4})),
                    Catch::Contains("label 4 is outside [0, 4) (the last is the null class)"));
  CHECK_THROWS_WITH(dit.forward_with_cfg(Tensor<float>({3, 4, 8, 8}), Tensor<float>({3}), Tensor<std::int64_t>({3}), 4.0),
                    Catch::Contains("expected an even batch"));
  CHECK(dit.forward(x, t, Tensor<std::int64_t>({2}, std::vector<std::int64_t>{0, 3})).shape() == Shape{2, 8, 8, 8});
}

#ifdef DITTO_FORWARD
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace {
// A scratch folder, and ditto-forward run in it: {exit code, stderr}.
struct ForwardRun {
  std::filesystem::path dir;
  ForwardRun() : dir(std::filesystem::temp_directory_path() / ("ditto_forward_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(dir);
  }
  ~ForwardRun() { std::filesystem::remove_all(dir); }
  std::string path(const std::string& name) const { return (dir / name).string(); }
  std::pair<int, std::string> run(const std::string& args) const {
    const std::string err = path("stderr.txt");
    const int status = std::system((std::string(DITTO_FORWARD) + " " + args + " 2> " + err).c_str());
    std::ifstream f(err);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
  }
  void write_json(const std::string& name, const nlohmann::json& j) const { std::ofstream(path(name)) << j.dump(); }
};

// The tensors of a fixture case under a prefix, renamed without it.
template <class T>
std::vector<std::pair<std::string, Tensor<T>>> with_prefix(const SafetensorsFile& f, const std::string& prefix) {
  std::vector<std::pair<std::string, Tensor<T>>> out;
  for (const auto& n : f.names())
    if (n.rfind(prefix, 0) == 0) out.emplace_back(n.substr(prefix.size()), f.get<T>(n));
  return out;
}

}  // namespace

TEST_CASE("ditto-forward runs DiT on upstream weights and inputs", "[models][dit][forward]") {
  const ModelFixture<float> fx("dit");
  const ForwardRun r;
  const std::string c = "small";
  r.write_json("config.json", fx.configs[c]);
  save_safetensors(r.path("w.safetensors"), with_prefix<float>(fx.file, c + ".w."));
  save_safetensors<float>(r.path("x.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}});
  // inputs as a user writes them: x and t F32 (t fractional), y I64, in one file; variants with
  // cfg_scale, with y as F32 (refused) and with a tensor the model does not take (refused)
  auto write_inputs = [&](const std::string& name, bool y_as_float, bool with_cfg, const std::string& extra = "") {
    const auto x = fx.file.get<float>(c + ".in.x");
    const auto y = fx.file.get<std::int64_t>(c + ".in.y");
    std::vector<std::pair<std::string, Tensor<float>>> floats = {{"x", x}, {"t", fx.file.get<float>(c + ".in.t")}};
    std::vector<std::pair<std::string, Tensor<std::int64_t>>> ints;
    if (y_as_float) floats.emplace_back("y", y.to<float>());
    else ints.emplace_back("y", y);
    if (with_cfg) floats.emplace_back("cfg_scale", fx.file.get<float>(c + ".in.cfg_scale"));
    if (!extra.empty()) floats.emplace_back(extra, x);
    ditto_test::save_mixed(r.path(name), floats, ints);
  };
  write_inputs("in.safetensors", false, false);
  write_inputs("in_cfg.safetensors", false, true);
  write_inputs("in_yfloat.safetensors", true, false);
  write_inputs("in_extra.safetensors", false, false, "z");
  const std::string common = "--model dit --config " + r.path("config.json") + " --weights " + r.path("w.safetensors");
  {
    INFO("forward with --trace");
    const auto [code, err] = r.run(common + " --inputs " + r.path("in.safetensors") + " --output " + r.path("out.safetensors") +
                                   " --trace --threads 2");
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(r.path("out.safetensors"));
    CHECK(out.info("out").dtype == DType::F32);
    CHECK_CLOSE(out.get<float>("out"), fx.file.get<float>(c + ".out"), 1e-4);
    CHECK_CLOSE(out.get<float>("trace.blocks.1"), fx.file.get<float>(c + ".trace.blocks.1"), 1e-4);
    CHECK(out.contains("trace.x_embedder"));
    CHECK(out.contains("trace.final_layer"));
  }
  for (const char* how : {"input", "flag"}) {
    INFO("forward_with_cfg from the " << how);
    const std::string scale = std::to_string(fx.file.get<float>(c + ".in.cfg_scale")[0]);
    const auto [code, err] = std::string(how) == "input"
                                 ? r.run(common + " --inputs " + r.path("in_cfg.safetensors") + " --output " + r.path("cfg.safetensors"))
                                 : r.run(common + " --inputs " + r.path("in.safetensors") + " --output " + r.path("cfg.safetensors") +
                                         " --cfg-scale " + scale);
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(r.path("cfg.safetensors"));
    CHECK_CLOSE(out.get<float>("out"), fx.file.get<float>(c + ".cfg_out"), 1e-4);
    CHECK(!out.contains("trace.blocks.0"));
  }
  // errors: one line naming the problem, non-zero exit (2: the command line, 1: the contents)
  struct Bad {
    std::string args;
    int code;
    std::string says;
  };
  r.write_json("bad_config.json", nlohmann::json{{"input_size", 8}, {"hidden_size", 32}, {"depth", 2}, {"num_heads", 2},
                                                 {"num_classes", 10}, {"window", 3}});
  r.write_json("big_config.json", nlohmann::json{{"input_size", 8}, {"hidden_size", 32}, {"depth", 3}, {"num_heads", 2},
                                                 {"num_classes", 10}});
  {
    std::ofstream(r.path("truncated.safetensors"), std::ios::binary) << std::string("\x10\x00\x00\x00", 4);
  }
  // hostile files (issue 13): a FIFO that would block, JSON nested 100,000 deep (a recursive
  // printer would overflow the stack), a config whose model the weights file cannot hold (refused
  // before gigabytes are zero-filled), an empty batch, outputs that cannot be written
  REQUIRE(::mkfifo(r.path("fifo").c_str(), 0600) == 0);
  std::ofstream(r.path("deep.json")) << "{\"depth\": " << std::string(100000, '[') << std::string(100000, ']') << "}";
  r.write_json("wide_config.json", nlohmann::json{{"input_size", 8}, {"hidden_size", 32}, {"depth", 2}, {"num_heads", 2},
                                                  {"num_classes", 10}, {"in_channels", 1 << 20}});
  ditto_test::save_mixed(r.path("in_empty.safetensors"), {{"x", Tensor<float>({0, 4, 8, 8})}, {"t", Tensor<float>({0})}},
             {{"y", Tensor<std::int64_t>({0})}});
  std::filesystem::create_directories(r.path("a_folder"));
  const std::string in = " --inputs " + r.path("in.safetensors") + " --output " + r.path("o.safetensors");
  const std::string weights = " --weights " + r.path("w.safetensors");
  for (const Bad& b : {Bad{"", 2, "missing --model"},
                       Bad{"--model dit --config " + r.path("fifo") + weights + in, 1, "is not a regular file"},
                       Bad{"--model dit --config " + r.path("config.json") + " --weights " + r.path("fifo") + in, 1,
                           "is not a regular file"},
                       Bad{common + " --inputs " + r.path("fifo") + " --output " + r.path("o.safetensors"), 1, "is not a regular file"},
                       Bad{"--model dit --config " + r.path("deep.json") + weights + in, 1, "nests 100001 levels deep"},
                       Bad{"--model dit --config " + r.path("wide_config.json") + weights + in, 1, "does not describe these weights"},
                       Bad{common + " --inputs " + r.path("in_empty.safetensors") + " --output " + r.path("o.safetensors"), 1,
                           "the batch is empty"},
                       Bad{common + " --inputs " + r.path("in.safetensors") + " --output /dev/full", 1, "write failed"},
                       Bad{common + " --inputs " + r.path("in.safetensors") + " --output " + r.path("a_folder"), 1, "is a directory"},
                       Bad{common + in + " --threads 0", 2, "--threads expects a whole number"},
                       Bad{common + in + " --cfg-scale abc", 2, "--cfg-scale expects a finite number, got \"abc\""},
                       Bad{common + in + " --bogus", 2, "unknown argument \"--bogus\""},
                       Bad{"--model gan --config " + r.path("config.json") + weights + in, 1,
                           "unknown --model \"gan\""},
                       Bad{"--model dit --config " + r.path("bad_config.json") + " --weights " + r.path("w.safetensors") + in, 1,
                           "unknown argument \"window\""},
                       Bad{"--model dit --config " + r.path("big_config.json") + " --weights " + r.path("w.safetensors") + in, 1,
                           "blocks.2.attn.qkv.weight"},
                       Bad{"--model dit --config " + r.path("config.json") + " --weights " + r.path("truncated.safetensors") + in, 1,
                           "truncated.safetensors"},
                       Bad{common + " --inputs " + r.path("x.safetensors") + " --output " + r.path("o.safetensors"), 1,
                           "no tensor named \"t\""},
                       Bad{common + " --inputs " + r.path("in_yfloat.safetensors") + " --output " + r.path("o.safetensors"), 1,
                           "must be I64"},
                       Bad{common + " --inputs " + r.path("in_extra.safetensors") + " --output " + r.path("o.safetensors"), 1,
                           "unexpected input \"z\""},
                       Bad{common + " --inputs " + r.path("in_cfg.safetensors") + " --output " + r.path("o.safetensors") +
                               " --cfg-scale 1.5", 1, "disagree"}}) {
    INFO(b.args);
    const auto [code, err] = r.run(b.args);
    CHECK(code == b.code);
    CHECK_THAT(err, Catch::Contains(b.says));
  }
}

// ditto-forward --model on a fixture case whose config.json, w.safetensors and in.safetensors
// are written, with --trace: `out` and trace.<trace> against the fixture. Returns the command
// line without --trace, for further runs.
static std::string check_forward(const ForwardRun& r, const SafetensorsFile& fx, const std::string& c, const std::string& model,
                                 const std::string& trace) {
  const std::string args = "--model " + model + " --config " + r.path("config.json") + " --weights " + r.path("w.safetensors") +
                           " --inputs " + r.path("in.safetensors") + " --output " + r.path("out.safetensors");
  const auto [code, err] = r.run(args + " --trace");
  INFO(err);
  REQUIRE(code == 0);
  const SafetensorsFile out(r.path("out.safetensors"));
  CHECK_CLOSE(out.get<float>("out"), fx.get<float>(c + ".out"), 1e-4);
  CHECK_CLOSE(out.get<float>("trace." + trace), fx.get<float>(c + ".trace." + trace), 1e-4);
  return args;
}

// A model without forward_with_cfg upstream refuses a guidance scale.
static void check_refuses_guidance(const ForwardRun& r, const std::string& args, const std::string& upstream) {
  const auto [code, err] = r.run(args + " --cfg-scale 2");
  CHECK(code == 1);
  CHECK_THAT(err, Catch::Contains(upstream + " has no forward_with_cfg upstream"));
}

// U-ViT / U-Net: inputs x, timesteps (and y when the fixture has it).
static void check_x_timesteps_y_forward(const ForwardRun& r, const SafetensorsFile& fx, const std::string& c, const std::string& model,
                                        const std::string& trace, const std::string& upstream) {
  std::vector<std::pair<std::string, Tensor<std::int64_t>>> labels;
  if (fx.contains(c + ".in.y")) labels.emplace_back("y", fx.get<std::int64_t>(c + ".in.y"));
  ditto_test::save_mixed(r.path("in.safetensors"), {{"x", fx.get<float>(c + ".in.x")}, {"timesteps", fx.get<float>(c + ".in.timesteps")}}, labels);
  check_refuses_guidance(r, check_forward(r, fx, c, model, trace), upstream);
}

TEST_CASE("ditto-forward runs U-ViT (with and without y) and refuses guidance for it", "[models][uvit][forward]") {
  const ModelFixture<float> fx("uvit");
  const ForwardRun r;
  for (const std::string c : {"cond_conv", "uncond_mlptime_qkscale"}) {
    INFO(c);
    r.write_json("config.json", fx.configs[c]);
    save_safetensors(r.path("w.safetensors"), with_prefix<float>(fx.file, c + ".w."));
    check_x_timesteps_y_forward(r, fx.file, c, "uvit", "mid_block", "UViT");
  }
}

TEST_CASE("ditto-forward runs the U-Net (class-conditional, and non-square unconditional)", "[models][unet][forward]") {
  const ModelFixture<float> fx("unet");
  const ForwardRun r;
  for (const std::string c : {"cond_legacy", "scaleshift_updown_neworder_nonsquare"}) {
    INFO(c);
    r.write_json("config.json", fx.configs[c]["kwargs"]);
    UNet<float> m(UNetConfig::from_json(fx.configs[c]["kwargs"]));
    std::vector<std::pair<std::string, Tensor<float>>> weights;
    for (auto& [n, t] : nn::named_parameters<float>(m)) {
      hash_weights(n, *t);
      weights.emplace_back(n, *t);
    }
    save_safetensors(r.path("w.safetensors"), weights);
    check_x_timesteps_y_forward(r, fx.file, c, "unet", "middle_block", "UNetModel");
  }
}

TEST_CASE("ditto-forward runs Latte with and without guidance, and with images", "[models][latte][forward]") {
  const ModelFixture<float> fx("latte");
  const ForwardRun r;
  for (const std::string c : {"uncond", "class_patch4_odd"}) {
    INFO(c);
    r.write_json("config.json", fx.configs[c]);
    save_safetensors(r.path("w.safetensors"), with_prefix<float>(fx.file, c + ".w."));
    std::vector<std::pair<std::string, Tensor<std::int64_t>>> labels;
    if (fx.file.contains(c + ".in.y")) labels.emplace_back("y", fx.file.get<std::int64_t>(c + ".in.y"));
    ditto_test::save_mixed(r.path("in.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}, {"t", fx.file.get<float>(c + ".in.t")}}, labels);
    ditto_test::save_mixed(r.path("in_cfg.safetensors"),
               {{"x", fx.file.get<float>(c + ".in.x")}, {"t", fx.file.get<float>(c + ".in.t")},
                {"cfg_scale", fx.file.get<float>(c + ".in.cfg_scale")}},
               labels);
    const std::string args = "--model latte --config " + r.path("config.json") + " --weights " + r.path("w.safetensors") +
                             " --output " + r.path("out.safetensors");
    auto [code, err] = r.run(args + " --inputs " + r.path("in.safetensors") + " --trace");
    INFO(err);
    REQUIRE(code == 0);
    {
      const SafetensorsFile out(r.path("out.safetensors"));
      CHECK_CLOSE(out.get<float>("out"), fx.file.get<float>(c + ".out"), 1e-4);
      CHECK_CLOSE(out.get<float>("trace.blocks.1"), fx.file.get<float>(c + ".trace.blocks.1"), 1e-4);
    }
    std::tie(code, err) = r.run(args + " --inputs " + r.path("in_cfg.safetensors"));
    REQUIRE(code == 0);
    const SafetensorsFile out(r.path("out.safetensors"));
    CHECK_CLOSE(out.get<float>("out"), fx.file.get<float>(c + ".cfg_out"), 1e-4);
  }
  {  // the paper's other variants and the timestep token are config keys like upstream's
    const ModelFixture<float> fv("latte_variants");
    const std::string c = "v3_token";
    r.write_json("config.json", fv.configs[c]);
    save_safetensors(r.path("w.safetensors"), with_prefix<float>(fv.file, c + ".w."));
    ditto_test::save_mixed(r.path("in.safetensors"), {{"x", fv.file.get<float>(c + ".in.x")}, {"t", fv.file.get<float>(c + ".in.t")}});
    check_forward(r, fv.file, c, "latte", "blocks.1");
  }
  {  // extras = 78: the text embedding is an input like upstream's forward(..., text_embedding)
    const std::string c = "text";
    r.write_json("config.json", fx.configs[c]);
    Latte<float> m(LatteConfig::from_json(fx.configs[c]));
    load_latte_text_case(m, fx, c);
    std::vector<std::pair<std::string, Tensor<float>>> weights;
    for (auto& [n, p] : nn::named_parameters<float>(m)) weights.emplace_back(n, *p);
    save_safetensors(r.path("w.safetensors"), weights);
    const auto x = fx.file.get<float>(c + ".in.x");
    ditto_test::save_mixed(r.path("in.safetensors"), {{"x", x}, {"t", fx.file.get<float>(c + ".in.t")}, {"text_embedding", latte_text_input<float>(x.size(0))}});
    const std::string args = check_forward(r, fx.file, c, "latte", "text_embedding_projection");
    const auto [code, err] = r.run(args + " --cfg-scale " + std::to_string(fx.file.get<float>(c + ".in.cfg_scale")[0]));
    INFO(err);
    REQUIRE(code == 0);
    CHECK_CLOSE(SafetensorsFile(r.path("out.safetensors")).get<float>("out"), fx.file.get<float>(c + ".cfg_out"), 1e-4);
    ditto_test::save_mixed(r.path("in.safetensors"), {{"x", x}, {"t", fx.file.get<float>(c + ".in.t")}});
    const auto [code2, err2] = r.run(args);
    CHECK(code2 == 1);
    CHECK_THAT(err2, Catch::Contains("text_embedding (B, 77, 768) is required"));
  }
  // latte_img.py's inputs: images after the video, their labels, and how many there are
  const std::string c = "img_class";
  r.write_json("config.json", fx.configs[c]);
  save_safetensors(r.path("w.safetensors"), with_prefix<float>(fx.file, c + ".w."));
  std::vector<std::pair<std::string, Tensor<std::int64_t>>> labels = {
      {"y", fx.file.get<std::int64_t>(c + ".in.y")}, {"y_image", fx.file.get<std::int64_t>(c + ".in.y_image")},
      {"use_image_num", fx.file.get<std::int64_t>(c + ".in.use_image_num")}};
  ditto_test::save_mixed(r.path("in.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}, {"t", fx.file.get<float>(c + ".in.t")}}, labels);
  const std::string args = "--model latte --config " + r.path("config.json") + " --weights " + r.path("w.safetensors") + " --inputs " +
                           r.path("in.safetensors") + " --output " + r.path("out.safetensors");
  const auto [code, err] = r.run(args);
  INFO(err);
  REQUIRE(code == 0);
  CHECK_CLOSE(SafetensorsFile(r.path("out.safetensors")).get<float>("out"), fx.file.get<float>(c + ".out"), 1e-4);
  const auto [code2, err2] = r.run(args + " --cfg-scale 4");
  CHECK(code2 == 1);
  CHECK_THAT(err2, Catch::Contains("forward_with_cfg takes no images"));
  labels.pop_back();  // without use_image_num the frames do not add up
  ditto_test::save_mixed(r.path("in.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}, {"t", fx.file.get<float>(c + ".in.t")}}, labels);
  const auto [code3, err3] = r.run(args);
  CHECK(code3 == 1);
  CHECK_THAT(err3, Catch::Contains("expected x (B, 2, 3, 8, 8)"));
}

TEST_CASE("ditto-forward runs vae-encode (noise given or seeded) and vae-decode", "[models][vae][forward]") {
  const ModelFixture<float> fx("vae");
  const ForwardRun r;
  const std::string c = "attn_nonsquare";
  r.write_json("config.json", fx.configs[c]["kwargs"]);
  AutoencoderKL<float> m(VAEConfig::from_json(fx.configs[c]["kwargs"]));
  std::vector<std::pair<std::string, Tensor<float>>> weights;
  for (auto& [n, t] : nn::named_parameters<float>(m)) {
    hash_weights(n, *t);
    weights.emplace_back(n, *t);
  }
  save_safetensors(r.path("w.safetensors"), weights);
  save_safetensors<float>(r.path("enc.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}, {"noise", fx.file.get<float>(c + ".in.noise")}});
  save_safetensors<float>(r.path("enc_seed.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}});
  save_safetensors<float>(r.path("dec.safetensors"), {{"z", fx.file.get<float>(c + ".in.z")}});
  const std::string base = "--config " + r.path("config.json") + " --weights " + r.path("w.safetensors") + " --output " + r.path("o.safetensors");
  {
    const auto [code, err] = r.run("--model vae-encode " + base + " --inputs " + r.path("enc.safetensors"));
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(r.path("o.safetensors"));
    CHECK_CLOSE(out.get<float>("out"), fx.file.get<float>(c + ".mean"), 1e-4);
    CHECK_CLOSE(out.get<float>("logvar"), fx.file.get<float>(c + ".logvar"), 1e-4);
    CHECK_CLOSE(out.get<float>("z"), fx.file.get<float>(c + ".z"), 1e-4);
  }
  {  // seeded: the same seed, the same z; another seed, another z
    auto z_for = [&](const char* seed) {
      const auto [code, err] = r.run("--model vae-encode " + base + " --inputs " + r.path("enc_seed.safetensors") + " --seed " + seed);
      INFO(err);
      REQUIRE(code == 0);
      return SafetensorsFile(r.path("o.safetensors")).get<float>("z");
    };
    const auto a = z_for("7"), b = z_for("7"), d = z_for("8");
    ditto_test::require_equal(a, b);
    CHECK(ditto_test::rel_error(a, d) > 1e-3);
  }
  {
    const auto [code, err] = r.run("--model vae-decode " + base + " --inputs " + r.path("dec.safetensors") + " --trace");
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(r.path("o.safetensors"));
    CHECK_CLOSE(out.get<float>("out"), fx.file.get<float>(c + ".decoded"), 1e-4);
    CHECK_CLOSE(out.get<float>("trace.post_quant_conv"), fx.file.get<float>(c + ".trace_decode.post_quant_conv"), 1e-4);
    CHECK_CLOSE(out.get<float>("trace.decoder"), fx.file.get<float>(c + ".trace_decode.decoder"), 1e-4);
  }
  {
    const auto [code, err] = r.run("--model vae-encode " + base + " --inputs " + r.path("enc.safetensors") + " --trace");
    INFO(err);
    REQUIRE(code == 0);
    const SafetensorsFile out(r.path("o.safetensors"));
    CHECK_CLOSE(out.get<float>("trace.encoder"), fx.file.get<float>(c + ".trace_encode.encoder"), 1e-4);
    CHECK_CLOSE(out.get<float>("trace.quant_conv"), fx.file.get<float>(c + ".trace_encode.quant_conv"), 1e-4);
  }
  const auto [code, err] = r.run("--model vae-encode " + base + " --inputs " + r.path("enc.safetensors") + " --seed -1");
  CHECK(code == 2);
  CHECK_THAT(err, Catch::Contains("--seed expects a whole number"));
  // the same weights under diffusers' names decode the same
  const auto table = ditto_test::load_json("vae_diffusers_names.json")["small"];
  r.write_json("small.json", {{"ddconfig", table["ddconfig"]}, {"embed_dim", 3}});
  AutoencoderKL<float> small(VAEConfig::from_json({{"ddconfig", table["ddconfig"]}, {"embed_dim", 3}}));
  std::map<std::string, Tensor<float>> compvis;
  for (auto& [n, t] : nn::named_parameters<float>(small)) {
    hash_weights(n, *t);
    compvis[n] = *t;
  }
  std::vector<std::pair<std::string, Tensor<float>>> cv(compvis.begin(), compvis.end()), df;
  for (const auto& [dname, entry] : table["keys"].items()) df.emplace_back(dname, compvis[entry[0]].clone().reshape(entry[1].get<Shape>()));
  save_safetensors(r.path("cv.safetensors"), cv);
  save_safetensors(r.path("df.safetensors"), df);
  Generator g(2);
  save_safetensors<float>(r.path("z.safetensors"), {{"z", g.normal<float>({1, 3, 4, 5})}});
  auto decoded = [&](const std::string& weights) {
    const auto [c2, e2] = r.run("--model vae-decode --config " + r.path("small.json") + " --weights " + r.path(weights) + " --inputs " +
                                r.path("z.safetensors") + " --output " + r.path("o.safetensors"));
    INFO(e2);
    REQUIRE(c2 == 0);
    return SafetensorsFile(r.path("o.safetensors")).get<float>("out");
  };
  ditto_test::require_equal(decoded("df.safetensors"), decoded("cv.safetensors"));
}

TEST_CASE("ditto-forward runs ViT and ViViT and refuses guidance for them", "[models][vit][vivit][forward]") {
  const ForwardRun r;
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {  // model, case, upstream's name
      {"vit", "avg_ls_reg_rect", "VisionTransformer"}, {"vit", "nopool_crop", "VisionTransformer"},
      {"vivit", "fe_cls", "ViViT"}, {"vivit", "fdp_uniform_2heads", "ViViT"}};
  for (const auto& [model, c, upstream] : cases) {
    INFO(model << " " << c);
    const ModelFixture<float> fx(model);
    r.write_json("config.json", fx.configs[c]);
    save_safetensors(r.path("w.safetensors"), with_prefix<float>(fx.file, c + ".w."));
    save_safetensors<float>(r.path("in.safetensors"), {{"x", fx.file.get<float>(c + ".in.x")}});
    const std::string block = fx.file.contains(c + ".trace.blocks.0") ? "blocks.0" : "spatial.blocks.0";
    check_refuses_guidance(r, check_forward(r, fx.file, c, model, block), upstream);
  }
}
#endif
