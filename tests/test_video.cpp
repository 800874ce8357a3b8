// Video models without a PyTorch upstream: ViViT against ditto's own PyTorch re-implementation
// from the paper (tools/gen_vivit_fixtures.py) and against the equivalences the paper states.
#include <ditto/core/rng.hpp>
#include <ditto/models/latte.hpp>
#include <ditto/models/vit.hpp>
#include <ditto/models/vivit.hpp>
#include <ditto/nn/module.hpp>

#include <map>
#include <set>

#include "helpers.hpp"
#include "model_fixture.hpp"

using namespace ditto;
using namespace ditto::models;
using ditto_test::ModelFixture;
using ditto_test::rel_error;

namespace {
template <class T, class M>
void randomize(M& m, std::uint64_t seed, double std = 0.3) {
  Generator g(seed);
  for (auto& [n, t] : nn::named_parameters<T>(m)) g.fill_normal(*t, 0.0, std);
}
ViViTConfig vivit(const char* text) { return ViViTConfig::from_json(nlohmann::json::parse(text)); }
}  // namespace

TEMPLATE_TEST_CASE("ViViT equals ditto's PyTorch re-implementation of the paper: 4 models x 2 embeddings + every block",
                   "[models][vivit]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("vivit");
  std::set<std::string> models;
  for (const auto& [name, kwargs] : fx.configs.items()) {
    INFO(name << " " << kwargs.dump());
    ViViT<T> m(ViViTConfig::from_json(kwargs));
    fx.load_case(m, name);
    std::map<std::string, Tensor<T>> traces;
    const auto out = m.forward(fx.file.template get<T>(name + ".in.x"), [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); });
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    CHECK(fx.compare_traces(name, traces) >= 2);
    models.insert(m.config.model + "/" + m.config.embedding);
  }
  CHECK(models.size() == 7);
}

TEST_CASE("ViViT embeddings: a one-frame tubelet is ViT's patch embedding, and the central-frame and inflated initializations",
          "[models][vivit]") {
  Generator g(1);
  const ViViTConfig uni = vivit(R"({"embedding": "uniform", "num_frames": 4, "img_size": 8, "patch_size": 4, "embed_dim": 8,
                                    "depth": 1, "num_heads": 2, "num_classes": 3})");
  ViViT<double> a(uni);
  randomize<double>(a, 2);
  // tubelet_size 1: the Conv3d's weight is the Conv2d's with a unit time axis
  ViViTConfig tub1 = uni;
  tub1.embedding = "tubelet";
  ViViT<double> b(tub1);
  auto pa = nn::named_parameters<double>(a), pb = nn::named_parameters<double>(b);
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) *pb[i].second = pa[i].second->reshape(pb[i].second->shape());
  CHECK(b.tubelet_embed.proj.weight.shape() == Shape{8, 3, 1, 4, 4});
  const auto x = g.normal<double>({2, 3, 4, 8, 8});
  CHECK_CLOSE(b.forward(x), a.forward(x), 1e-13);
  CHECK_CLOSE(b.embed(x), a.embed(x), 1e-13);

  // central frame (t = 3: frame 1 of each tubelet): the tubelet embedding of a video is the frame
  // embedding of frames 1 and 4; inflation: the frame embedding of each tubelet's mean frame
  const auto w2d = a.frame_embed.proj.weight;
  nn::TubeletEmbed<double> tube({3, 4, 4}, 3, 8);
  tube.proj.bias = a.frame_embed.proj.bias;
  const auto v = g.normal<double>({2, 3, 6, 8, 8});
  tube.proj.weight = inflate_patch_weight(w2d, 3, TubeletInit::central_frame);
  Tensor<double> central({2, 3, 2, 8, 8}), mean({2, 3, 2, 8, 8});
  for (std::int64_t bc = 0; bc < 6; ++bc)
    for (std::int64_t k = 0; k < 2; ++k)
      for (std::int64_t i = 0; i < 64; ++i) {
        central[(bc * 2 + k) * 64 + i] = v[(bc * 6 + 3 * k + 1) * 64 + i];
        for (std::int64_t f = 0; f < 3; ++f) mean[(bc * 2 + k) * 64 + i] += v[(bc * 6 + 3 * k + f) * 64 + i] / 3.0;
      }
  auto per_frame = [&](const Tensor<double>& frames) {  // (B, C, 2, H, W) -> (B, 2 ns, D)
    return a.frame_embed.forward(rearrange(frames, "b c t h w -> (b t) c h w")).reshape({2, 8, 8});
  };
  CHECK_CLOSE(tube.forward(v), per_frame(central), 1e-13);
  tube.proj.weight = inflate_patch_weight(w2d, 3, TubeletInit::filter_inflation);
  CHECK_CLOSE(tube.forward(v), per_frame(mean), 1e-13);
  CHECK(rel_error(tube.forward(v), per_frame(central)) > 1e-3);  // the two initializations differ

  // frame sampling as pytorchvideo: linspace(0, T-1, n) truncated
  Tensor<float> clip({1, 1, 10, 1, 1});
  for (std::int64_t i = 0; i < 10; ++i) clip[i] = static_cast<float>(i);
  const auto picked = sample_frames_uniformly(clip, 4);
  CHECK(std::vector<float>(picked.begin(), picked.end()) == std::vector<float>{0, 3, 6, 9});
}

TEST_CASE("ViViT and ViT: model 1 on one frame is the ViT, and from an image ViT (sec. 3.4) model 3 starts as the ViT on each frame",
          "[models][vivit]") {
  const ViTConfig vc = ViTConfig::from_json(nlohmann::json::parse(
      R"({"img_size": [8, 12], "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 4, "num_classes": 5})"));
  ViT<double> image(vc);
  randomize<double>(image, 4);
  Generator g(5);
  const auto frame = g.normal<double>({2, 3, 8, 12});
  const auto logits = image.forward(frame);

  // model 1 on one frame (uniform sampling) has timm's names and shapes: the ViT's state dict
  // loads as it is, and the logits are the ViT's
  ViViT<double> one(vivit(R"({"embedding": "uniform", "num_frames": 1, "img_size": [8, 12], "patch_size": 4, "embed_dim": 16,
                              "depth": 2, "num_heads": 4, "num_classes": 5})"));
  std::map<std::string, Tensor<double>*> vit_params;
  for (auto& [n, t] : nn::named_parameters<double>(image)) vit_params[n] = t;
  auto one_params = nn::named_parameters<double>(one);
  REQUIRE(one_params.size() == vit_params.size());
  for (auto& [n, t] : one_params) {
    INFO(n);
    REQUIRE(vit_params.count(n));
    REQUIRE(t->shape() == vit_params[n]->shape());
    *t = vit_params[n]->clone();
  }
  CHECK_CLOSE(one.forward(frame.reshape({2, 3, 1, 8, 12})), logits, 1e-12);

  // model 1, tubelets of 2 frames, central-frame init: a two-frame video whose second frame is the
  // image (the first is noise) classifies as the image does
  ViViT<double> m1(vivit(R"({"num_frames": 2, "tubelet_size": 2, "img_size": [8, 12], "patch_size": 4, "embed_dim": 16, "depth": 2,
                             "num_heads": 4, "num_classes": 5})"));
  m1.init_from_vit(image, TubeletInit::central_frame);
  auto video = g.normal<double>({2, 3, 2, 8, 12});
  for (std::int64_t bc = 0; bc < 6; ++bc) std::copy(frame.data() + bc * 96, frame.data() + (bc + 1) * 96, video.data() + (bc * 2 + 1) * 96);
  CHECK_CLOSE(m1.forward(video), logits, 1e-12);
  // init_from_vit copies: changing the image model afterwards leaves the video model alone
  image.blocks[0].mlp.fc1.weight[0] += 1.0;
  CHECK_CLOSE(m1.forward(video), logits, 1e-12);
  image.blocks[0].mlp.fc1.weight[0] -= 1.0;

  // model 3 (uniform sampling, 3 frames, temporal attention zeroed): each frame runs through the
  // image model on its own, and the mean over all tokens is the mean of the frames' means. The
  // same image model pooled by the mean of its patch tokens (no cls token) is the reference.
  ViTConfig avg = vc;
  avg.class_token = false, avg.global_pool = "avg", avg.fc_norm = false;
  ViT<double> image_avg(avg);
  for (auto& [n, t] : nn::named_parameters<double>(image_avg))
    for (auto& [m, s] : nn::named_parameters<double>(image))
      if (n == m && n != "pos_embed") *t = *s;
  std::copy(image.pos_embed.data() + 16, image.pos_embed.data() + 7 * 16, image_avg.pos_embed.data());  // patch rows only
  ViViT<double> m3(vivit(R"({"model": "factorized_self_attention", "embedding": "uniform", "num_frames": 3, "img_size": [8, 12],
                             "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 4, "num_classes": 5})"));
  m3.init_from_vit(image);
  const auto clip = g.normal<double>({2, 3, 3, 8, 12});
  const auto by_frame = rearrange(clip, "b c t h w -> t b c h w");
  Tensor<double> expected({2, 5});
  for (std::int64_t f = 0; f < 3; ++f) {
    Tensor<double> one = Tensor<double>::empty({2, 3, 8, 12});
    std::copy(by_frame.data() + f * one.numel(), by_frame.data() + (f + 1) * one.numel(), one.data());
    const auto lf = image_avg.forward(one);
    for (std::int64_t i = 0; i < lf.numel(); ++i) expected[i] += lf[i] / 3.0;
  }
  CHECK_CLOSE(m3.forward(clip), expected, 1e-12);
  // once the temporal attention has weights, the frames see each other
  randomize<double>(m3.factorized_blocks[0].temporal_attn, 6);
  CHECK(rel_error(m3.forward(clip), expected) > 1e-4);

  ViViT<double> wrong(vivit(R"({"num_frames": 2, "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 4})"));
  CHECK_THROWS_WITH(wrong.init_from_vit(image), Catch::Contains("6 patch positions, the ViViT 4"));
}

TEST_CASE("ViViT factorized attention: within a frame, then across frames at one position", "[models][vivit]") {
  // 2 videos, nt = 3 frames of ns = 4 positions. Row (b, t, s) of the tokens is b*12 + t*4 + s.
  const std::int64_t B = 2, nt = 3, ns = 4, D = 8, rows = B * nt * ns;
  ViViTConfig c = vivit(R"({"model": "factorized_self_attention", "num_frames": 3, "tubelet_size": 1, "img_size": [4, 4],
                            "patch_size": 2, "embed_dim": 8, "depth": 1, "num_heads": 2, "num_classes": 0})");
  ViViTFactorizedBlock<double> blk(c);
  randomize<double>(blk, 7);
  std::vector<std::int64_t> frames, positions;
  for (std::int64_t f = 0; f <= B * nt; ++f) frames.push_back(f * ns);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < ns; ++s) positions.push_back(b * nt * ns + s);
  nn::BlockBuffers<double> buf;
  buf.ensure(rows, D, 4 * D);
  Generator g(8);
  const auto x = g.normal<double>({rows, D});
  auto row = [&](std::int64_t b, std::int64_t t, std::int64_t s) { return (b * nt + t) * ns + s; };
  // which output rows move when input row (0, 1, 2) moves
  auto moved = [&](auto step) {
    Tensor<double> a = x.clone(), p = x.clone();
    p[row(0, 1, 2) * D] += 1.0;
    step(a.data()), step(p.data());
    std::set<std::int64_t> out;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t d = 0; d < D; ++d)
        if (std::abs(a[r * D + d] - p[r * D + d]) > 1e-12) out.insert(r);
    return out;
  };
  std::set<std::int64_t> frame_1, position_2, both;
  for (std::int64_t s = 0; s < ns; ++s) frame_1.insert(row(0, 1, s));
  for (std::int64_t t = 0; t < nt; ++t) position_2.insert(row(0, t, 2));
  both = frame_1;
  both.insert(position_2.begin(), position_2.end());
  CHECK(moved([&](double* p) { blk.spatial_step(p, frames, buf); }) == frame_1);
  CHECK(moved([&](double* p) { blk.temporal_step(p, rows, positions, nt, ns, buf); }) == position_2);
  // a whole block: spatial then temporal, so every frame's tokens at any position move, in video 0 only
  const auto whole = moved([&](double* p) { blk.forward_inplace(p, rows, frames, positions, nt, ns, buf); });
  CHECK(whole.size() == static_cast<std::size_t>(nt * ns));
  CHECK(*whole.rbegin() == row(0, nt - 1, ns - 1));

  // model 4: the spatial heads see the frame, the temporal heads the position: exactly the union
  nn::Attention<double> attn(D, 2);
  randomize<double>(attn, 9);
  Tensor<double> qkv = Tensor<double>::empty({rows, 3 * D}), o = Tensor<double>::empty({rows, D});
  Tensor<double> out = Tensor<double>::empty({rows, D});
  const auto fdp = moved([&](double* p) {
    factorized_dot_product_attention(attn, p, out.data(), rows, frames, positions, nt, ns, qkv.data(), o.data());
    std::copy(out.data(), out.data() + rows * D, p);
  });
  CHECK(fdp == both);
}

TEST_CASE("ViViT configs: the paper's models and their parameter counts + clear errors", "[models][vivit]") {
  // ViViT-B (model 1, 32 frames, tubelets 2x16x16, Kinetics-400): ViT-B/16's weights with a 3-D
  // patch kernel and 16 x 196 + 1 positions
  ViViT<float> b1(vivit("{}"));
  const std::int64_t vit_b16 = 86567656, D = 768;
  CHECK(nn::count_parameters<float>(b1) == vit_b16 + D * 3 * 16 * 16 + (16 * 196 - 196) * D - 1000 * (D + 1) + 400 * (D + 1));
  // model 4 has model 1's parameters (gap); model 3 adds one attention and one LayerNorm per block
  const char* small = R"("num_frames": 4, "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 3, "num_heads": 4, "classifier": "gap")";
  auto count = [&](const std::string& model) {
    ViViT<float> m(vivit(("{\"model\": \"" + model + "\", " + small + "}").c_str()));
    return nn::count_parameters<float>(m);
  };
  CHECK(count("factorized_dot_product") == count("spatio_temporal"));
  CHECK(count("factorized_self_attention") == count("spatio_temporal") + 3 * (16 * 48 + 48 + 16 * 16 + 16 + 2 * 16));
  // model 2: a spatial ViT over 4 positions (+ cls) and a temporal one over 2 tubelets, temporal_depth 4
  ViViT<float> fe(vivit(R"({"model": "factorized_encoder", "num_frames": 4, "img_size": 8, "patch_size": 4, "embed_dim": 16,
                             "depth": 3, "num_heads": 4})"));
  CHECK(fe.encoder.pos_embed.shape() == Shape{1, 5, 16});
  CHECK(fe.temporal.pos_embed.shape() == Shape{1, 3, 16});
  CHECK(fe.temporal.blocks.size() == 4);
  CHECK(fe.forward(Tensor<float>({2, 3, 4, 8, 8})).shape() == Shape{2, 400});

  CHECK_THROWS_WITH(vivit(R"({"model": "joint"})"), Catch::Contains("the paper's models 1-4"));
  CHECK_THROWS_WITH(vivit(R"({"model": "factorized_self_attention", "classifier": "token"})"), Catch::Contains("has no cls token"));
  CHECK(vivit(R"({"model": "factorized_dot_product"})").classifier == "gap");
  CHECK_THROWS_WITH(vivit(R"({"model": "factorized_dot_product", "num_heads": 3, "embed_dim": 12})"), Catch::Contains("num_heads must be even"));
  CHECK_THROWS_WITH(vivit(R"({"embedding": "uniform", "tubelet_size": 2})"), Catch::Contains("tubelet_size must be 1, got 2"));
  CHECK(vivit(R"({"embedding": "uniform"})").tubelet_size == 1);
  CHECK_THROWS_WITH(vivit(R"({"num_frames": 5})"), Catch::Contains("num_frames 5 must be divisible by tubelet_size 2"));
  CHECK_THROWS_WITH(vivit(R"({"img_size": 100})"), Catch::Contains("img_size 100x100 must be divisible by patch_size 16x16"));
  CHECK_THROWS_WITH(vivit(R"({"depht": 1})"), Catch::Contains("unknown argument \"depht\""));
  ViViT<float> m(vivit(R"({"num_frames": 4, "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 4})"));
  CHECK_THROWS_WITH(m.forward(Tensor<float>({2, 3, 8, 8, 4})), Catch::Contains("expected x (B, 3, 4, 8, 8) (batch, channels, frames"));
}

TEMPLATE_TEST_CASE("Latte's variants 2-4 and token injection equal ditto's PyTorch re-implementation of the paper",
                   "[models][latte]", float, double) {
  using T = TestType;
  const ModelFixture<T> fx("latte_variants");
  std::set<std::string> kinds;
  for (const auto& [name, kwargs] : fx.configs.items()) {
    if (!fx.has_case(name)) continue;
    INFO(name << " " << kwargs.dump());
    Latte<T> m(LatteConfig::from_json(kwargs));
    fx.load_case(m, name);
    std::optional<Tensor<std::int64_t>> y;
    if (fx.file.contains(name + ".in.y")) y = fx.file.template get<std::int64_t>(name + ".in.y");
    std::map<std::string, Tensor<T>> traces;
    const auto out = m.forward(fx.file.template get<T>(name + ".in.x"), fx.file.template get<T>(name + ".in.t"), y ? &*y : nullptr,
                               [&](const std::string& k, const Tensor<T>& v) { traces[k] = v.clone(); });
    CHECK_CLOSE(out, fx.file.template get<T>(name + ".out"), fx.tol);
    CHECK(fx.compare_traces(name, traces) >= 2);
    kinds.insert(std::to_string(m.config.variant) + m.config.timestep_injection);
  }
  CHECK(kinds.size() >= (std::is_same_v<T, float> ? 6u : 3u));
}

TEST_CASE("Latte variants on a one-frame video: the temporal attention is a single-token attention", "[models][latte]") {
  // With one frame each temporal sequence is one token: its softmax weight is 1, so it returns
  // that token's value and the queries and keys do not matter. Scrambling the q and k rows of every
  // temporal attention leaves the output as it was; the v rows do not.
  for (const std::int64_t variant : {1, 2, 3, 4})
    for (const char* injection : {"adaln", "token"}) {
      INFO("variant " << variant << " " << injection);
      LatteConfig c = LatteConfig::from_json(nlohmann::json::parse(R"({"input_size": 8, "patch_size": 4, "in_channels": 2,
          "hidden_size": 8, "depth": 2, "num_heads": 2, "num_frames": 1, "extras": 2, "num_classes": 3})"));
      c.variant = variant, c.timestep_injection = injection;
      Latte<double> m(c);
      randomize<double>(m, 3);
      Generator g(4);
      const auto x = g.normal<double>({2, 1, 2, 8, 8});
      const Tensor<double> t({2}, std::vector<double>{10, 500});
      const Tensor<std::int64_t> y({2}, std::vector<std::int64_t>{2, 0});
      const auto before = m.forward(x, t, &y);
      // the temporal q/k rows: all of a temporal attention's, or the second half of the heads in variant 4
      std::vector<std::pair<nn::Linear<double>*, std::int64_t>> temporal;  // (qkv, first temporal row)
      for (auto& blk : m.blocks) {
        if (blk.attends == LatteAttends::time) temporal.push_back({&blk.attn.qkv, 0});
        if (blk.attends == LatteAttends::frame_then_time) temporal.push_back({&blk.attn_temporal.qkv, 0});
        if (blk.attends == LatteAttends::split_heads) temporal.push_back({&blk.attn.qkv, 4});
      }
      REQUIRE(!temporal.empty());
      for (auto [qkv, first] : temporal)
        for (std::int64_t part : {0, 8})  // q rows, then k rows
          for (std::int64_t r = part + first; r < part + (first ? 8 : 8); ++r) {
            for (std::int64_t i = 0; i < 8; ++i) qkv->weight[r * 8 + i] = 3.0 * std::sin(static_cast<double>(r * 8 + i));
            qkv->bias[r] = -1.0;
          }
      CHECK_CLOSE(m.forward(x, t, &y), before, 1e-12);
      temporal[0].first->weight[(16 + temporal[0].second) * 8] += 1.0;  // a temporal v row
      CHECK(rel_error(m.forward(x, t, &y), before) > 1e-6);
    }
}

TEST_CASE("Latte variant and injection configs + image-video inputs: clear errors", "[models][latte]") {
  auto from = [](const char* text) { return LatteConfig::from_json(nlohmann::json::parse(text)); };
  CHECK_THROWS_WITH(from(R"({"variant": 5})"), Catch::Contains("variant must be 1 (interleaved, upstream)"));
  CHECK_THROWS_WITH(from(R"({"variant": 2, "depth": 3})"), Catch::Contains("depth must be even"));
  CHECK(from(R"({"variant": 3, "depth": 3})").depth == 3);
  CHECK_THROWS_WITH(from(R"({"variant": 4, "num_heads": 3, "hidden_size": 12})"), Catch::Contains("num_heads must be even"));
  CHECK_THROWS_WITH(from(R"({"timestep_injection": "concat"})"), Catch::Contains("timestep_injection must be \"adaln\" or \"token\""));
  // parameter counts: variant 3 adds one attention and three modulation vectors per block over
  // variant 1; variant 4 has variant 1's parameters; token injection trades adaLN for LayerNorms
  auto count = [&](const std::string& extra) {
    Latte<float> m(from(("{\"input_size\": 8, \"hidden_size\": 16, \"depth\": 2, \"num_heads\": 2, \"num_frames\": 2" + extra + "}").c_str()));
    return nn::count_parameters<float>(m);
  };
  const std::int64_t D = 16;
  CHECK(count(", \"variant\": 4") == count(""));
  CHECK(count(", \"variant\": 2") == count(""));
  CHECK(count(", \"variant\": 3") == count("") + 2 * (3 * D * D + 3 * D + D * D + D + 3 * (D * D + D)));
  CHECK(count(", \"timestep_injection\": \"token\"") == count("") - 2 * (6 * D * D + 6 * D) + 2 * 4 * D - (2 * D * D + 2 * D) + 2 * D);

  const LatteConfig c = from(R"({"input_size": 8, "patch_size": 4, "in_channels": 2, "hidden_size": 8, "depth": 2, "num_heads": 2,
                                 "num_frames": 2, "extras": 2, "num_classes": 3})");
  Latte<float> m(c);
  const Tensor<float> t({2});
  const Tensor<std::int64_t> y({2}), y_image({2, 3});
  CHECK(m.forward(Tensor<float>({2, 5, 2, 8, 8}), t, &y, {}, 3, &y_image).shape() == Shape{2, 5, 4, 8, 8});
  CHECK_THROWS_WITH(m.forward(Tensor<float>({2, 5, 2, 8, 8}), t, &y, {}, 3), Catch::Contains("y_image holds the images' labels"));
  CHECK_THROWS_WITH(m.forward(Tensor<float>({2, 5, 2, 8, 8}), t, &y, {}, 2, &y_image), Catch::Contains("expected x (B, 4, 2, 8, 8)"));
  CHECK_THROWS_WITH(m.forward(Tensor<float>({2, 4, 2, 8, 8}), t, &y, {}, 2, &y_image), Catch::Contains("expected y_image of shape (2, 2)"));
  LatteConfig c3 = c;
  c3.variant = 3;
  Latte<float> m3(c3);
  CHECK_THROWS_WITH(m3.forward(Tensor<float>({2, 5, 2, 8, 8}), t, &y, {}, 3, &y_image), Catch::Contains("exist for variant 1 with adaLN"));
}
