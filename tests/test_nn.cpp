// nn/: every block against torch.nn / torch.nn.functional on the same weights and inputs
// (tests/fixtures/nn_f32.safetensors and nn_f64.safetensors, made by tools/gen_nn_fixtures.py):
// relative error <= 1e-5 in float32 and <= 1e-10 in double. Then what has no torch fixture:
// packed attention, long sequences, loading and saving.
#include <ditto/core/rng.hpp>
#include <ditto/einops.hpp>
#include <ditto/nn.hpp>

#include "helpers.hpp"

using namespace ditto;
using namespace ditto::nn;
using ditto_test::require_equal;

namespace {
template <class T>
struct Fixture {
  SafetensorsFile file;
  double tol;
  Fixture() : file(std::string(DITTO_FIXTURES) + (std::is_same_v<T, float> ? "/nn_f32.safetensors" : "/nn_f64.safetensors")),
              tol(std::is_same_v<T, float> ? 1e-5 : 1e-10) {}
  Tensor<T> get(const std::string& name) const { return file.get<T>(name); }
  // Loads `block` from the tensors "case.w.*", strictly: every parameter present, none extra.
  template <class Block>
  void load_case(Block& block, const std::string& c) const {
    const std::string prefix = c + ".w.";
    load<T>(block, file, /*strict=*/true, [&](const std::string& n) {
      return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : std::string();
    });
  }
};
}  // namespace

TEMPLATE_TEST_CASE("nn blocks match torch", "[nn]", float, double) {
  using T = TestType;
  const Fixture<T> fx;
  const double tol = fx.tol;
  for (bool bias : {true, false}) {
    const std::string c = bias ? "linear_bias1" : "linear_bias0";
    INFO(c);
    Linear<T> m(12, 7, bias);
    fx.load_case(m, c);
    CHECK_CLOSE(m.forward(fx.get(c + ".in.x")), fx.get(c + ".out"), tol);
  }
  for (bool affine : {true, false}) {
    const std::string c = affine ? "layernorm_affine1" : "layernorm_affine0";
    INFO(c);
    LayerNorm<T> m(12, 1e-6, affine);
    fx.load_case(m, c);
    CHECK_CLOSE(m.forward(fx.get(c + ".in.x")), fx.get(c + ".out"), tol);
  }
  for (auto [g, affine] : {std::pair{4, true}, std::pair{2, false}, std::pair{8, true}}) {
    const std::string c = "groupnorm_g" + std::to_string(g) + "_affine" + std::to_string(int(affine));
    INFO(c);
    GroupNorm<T> m(g, 8, 1e-5, affine);
    fx.load_case(m, c);
    CHECK_CLOSE(m.forward(fx.get(c + ".in.x")), fx.get(c + ".out"), tol);
  }
  {
    RMSNorm<T> m(12, 1e-6);
    fx.load_case(m, "rmsnorm");
    CHECK_CLOSE(m.forward(fx.get("rmsnorm.in.x")), fx.get("rmsnorm.out"), tol);
  }
  const auto a = fx.get("act.in.x");
  CHECK_CLOSE(gelu(a), fx.get("act.gelu"), tol);
  CHECK_CLOSE(gelu_tanh(a), fx.get("act.gelu_tanh"), tol);
  CHECK_CLOSE(silu(a), fx.get("act.silu"), tol);
  CHECK_CLOSE(softmax(a), fx.get("act.softmax"), tol);
  {
    Mlp<T> m(12, 20, 12, Activation::gelu_tanh);
    fx.load_case(m, "mlp");
    CHECK_CLOSE(m.forward(fx.get("mlp.in.x")), fx.get("mlp.out"), tol);
  }
  {
    Embedding<T> m(11, 6);
    fx.load_case(m, "embedding");
    CHECK_CLOSE(m.forward(fx.file.template get<std::int64_t>("embedding.in.idx")), fx.get("embedding.out"), tol);
    CHECK_THROWS_WITH(m.forward(Tensor<std::int64_t>({1}, {11})), Catch::Contains("index 11 is out of range [0, 11)"));
  }
  for (bool qk : {false, true}) {
    const std::string c = qk ? "attention_qknorm1" : "attention_qknorm0";
    INFO(c);
    Attention<T> m(16, 4, true, qk);
    fx.load_case(m, c);
    CHECK_CLOSE(m.forward(fx.get(c + ".in.x")), fx.get(c + ".out"), tol);
  }
  {
    const auto q = fx.get("sdpa.in.q"), k = fx.get("sdpa.in.k"), v = fx.get("sdpa.in.v");
    const auto mask = fx.file.template get<std::uint8_t>("sdpa.in.mask");
    CHECK_CLOSE(scaled_dot_product_attention(q, k, v), fx.get("sdpa.out"), tol);
    CHECK_CLOSE(scaled_dot_product_attention(q, k, v, &mask), fx.get("sdpa.out_masked"), tol);
  }
  {
    CrossAttention<T> m(16, 10, 4);
    fx.load_case(m, "cross_attention");
    CHECK_CLOSE(m.forward(fx.get("cross_attention.in.x"), fx.get("cross_attention.in.context")),
                fx.get("cross_attention.out"), tol);
  }
  for (int dim : {8, 9}) {
    const std::string c = "timestep_dim" + std::to_string(dim);
    INFO(c);
    CHECK_CLOSE(timestep_embedding(fx.get(c + ".in.t"), dim), fx.get(c + ".cos_first"), tol);
    CHECK_CLOSE(timestep_embedding(fx.get(c + ".in.t"), dim, 10000.0, false), fx.get(c + ".sin_first"), tol);
  }
  CHECK_CLOSE(sincos_pos_embed_2d<T>(16, 4, 4), fx.get("pos2d_4x4_d16"), tol);
  CHECK_CLOSE(sincos_pos_embed_2d<T>(8, 3, 5), fx.get("pos2d_3x5_d8"), tol);
  CHECK_CLOSE(sincos_pos_embed_1d<T>(16, 4), fx.get("pos1d_4_d16"), tol);
  CHECK_CLOSE(sincos_pos_embed_3d<T>(32, 3, 2, 4), fx.get("pos3d_3x2x4_d32"), tol);
  {
    Attention<T> m(16, 4);
    fx.load_case(m, "attention_masked");
    const auto mask = fx.file.template get<std::uint8_t>("attention_masked.in.mask");
    CHECK_CLOSE(m.forward(fx.get("attention_masked.in.x"), &mask), fx.get("attention_masked.out"), tol);
  }
}

namespace {
struct Stack {  // a torch.nn.ModuleList of blocks
  std::vector<Linear<float>> blocks{Linear<float>(2, 3), Linear<float>(3, 4, false)};
  template <class V>
  void visit(V& v) {
    v("blocks", blocks);
  }
};
}  // namespace

TEST_CASE("parameter names are PyTorch's state_dict keys", "[nn]") {
  Attention<float> att(16, 4, true, true);
  std::vector<std::string> names;
  for (auto& [n, t] : named_parameters<float>(att)) names.push_back(n);
  CHECK(names == std::vector<std::string>{"qkv.weight", "qkv.bias", "q_norm.weight", "q_norm.bias", "k_norm.weight",
                                          "k_norm.bias", "proj.weight", "proj.bias"});
  CHECK(count_parameters<float>(att) == 16 * 48 + 48 + 4 * 4 + 16 * 16 + 16);
  Stack stack;
  names.clear();
  for (auto& [n, t] : named_parameters<float>(stack)) names.push_back(n);
  CHECK(names == std::vector<std::string>{"blocks.0.weight", "blocks.0.bias", "blocks.1.weight"});
}

TEST_CASE("load and save: strict reports every problem at once" , "[nn][io]") {
  Generator g(3);
  Mlp<float> m(4, 8);
  for (auto& [n, t] : named_parameters<float>(m)) *t = g.normal<float>(t->shape());
  save<float>(m, "ditto_test_mlp.safetensors");
  Mlp<float> back(4, 8);
  CHECK(load<float>(back, "ditto_test_mlp.safetensors").ok());
  auto x = g.normal<float>({3, 4});
  require_equal(back.forward(x), m.forward(x));

  save_safetensors<float>("ditto_test_bad.safetensors",
                          {{"fc1.weight", Tensor<float>({8, 5})}, {"fc1.bias", Tensor<float>({8})},
                           {"fc2.weight", Tensor<float>({4, 8})}, {"extra", Tensor<float>({1})}});
  Mlp<float> target(4, 8);
  CHECK_THROWS_WITH(load<float>(target, "ditto_test_bad.safetensors"),
                    Catch::Contains("1 missing (fc2.bias), 1 unexpected (extra), 1 wrong shape (fc1.weight: file [8,5], model [8,4])"));
  // Not strict: missing and unexpected are reported, a wrong shape is still an error.
  save_safetensors<float>("ditto_test_bad.safetensors", {{"fc1.bias", Tensor<float>::ones({8})}, {"extra", Tensor<float>({1})}});
  auto report = load<float>(target, "ditto_test_bad.safetensors", /*strict=*/false);
  CHECK(report.missing == std::vector<std::string>{"fc1.weight", "fc2.weight", "fc2.bias"});
  CHECK(report.unexpected == std::vector<std::string>{"extra"});
  CHECK(target.fc1.bias[0] == 1.0f);
  std::remove("ditto_test_mlp.safetensors");
  std::remove("ditto_test_bad.safetensors");
}

// Attention over a batch of the same sequences one by one (checked against torch above).
TEST_CASE("packed attention equals attention on each sequence alone", "[nn][attention]") {
  Generator g(5);
  const std::vector<std::int64_t> lens{5, 70, 131};
  const std::int64_t H = 2, D = 8, total = 206;
  auto q = g.normal<double>({total, H, D}), k = g.normal<double>({total, H, D}), v = g.normal<double>({total, H, D});
  std::vector<std::int64_t> cu{0, 5, 75, 206};
  auto packed = packed_attention(q, k, v, cu, cu);
  for (std::size_t s = 0; s < lens.size(); ++s) {
    const std::int64_t n = lens[s];
    auto slice = [&](const Tensor<double>& t) {  // (n, H, D) -> (1, H, n, D)
      Tensor<double> part({n, H, D}, std::vector<double>(t.data() + cu[s] * H * D, t.data() + cu[s + 1] * H * D));
      return rearrange(part, "n h d -> 1 h n d");
    };
    auto alone = rearrange(scaled_dot_product_attention(slice(q), slice(k), slice(v)), "1 h n d -> n h d");
    Tensor<double> got({n, H, D}, std::vector<double>(packed.data() + cu[s] * H * D, packed.data() + cu[s + 1] * H * D));
    CHECK_CLOSE(got, alone, 1e-12);
  }
  // The module: forward_packed over a packed batch equals forward on each sequence.
  Attention<double> att(16, 4);
  for (auto& [n, t] : named_parameters<double>(att)) *t = g.normal<double>(t->shape(), 0.0, 0.3);
  auto x = g.normal<double>({total, 16});
  auto y = att.forward_packed(x, cu);
  for (std::size_t s = 0; s < lens.size(); ++s) {
    Tensor<double> xs({1, lens[s], 16}, std::vector<double>(x.data() + cu[s] * 16, x.data() + cu[s + 1] * 16));
    Tensor<double> ys({1, lens[s], 16}, std::vector<double>(y.data() + cu[s] * 16, y.data() + cu[s + 1] * 16));
    CHECK_CLOSE(ys, att.forward(xs), 1e-12);
  }
  CHECK_THROWS_WITH(packed_attention(q, k, v, {0, 5, 200}, {0, 5, 200}), Catch::Contains("must rise from 0 to 206"));
}

// The register-tiled products against the plain path (each block's products through gemm), on
// shapes that leave partial tiles everywhere: query and key counts off the 64-blocks and the
// 4-row tiles, head dims that are not whole vectors for q/k, strided rows, masks with rows that
// see nothing (NaN in both), several threads.
TEMPLATE_TEST_CASE("tiled attention equals the plain gemm path", "[nn][attention]", float, double) {
  using T = TestType;
  constexpr std::int64_t W = ditto::nn::detail::attn_simd_width<T>();
  const int before = get_num_threads();
  Generator g(11);
  struct Case {
    std::int64_t nq, nk, d, dv, pad;  // pad: extra row stride beyond the head dims
    bool mask;
  };
  for (const Case& c : {Case{1, 1, 3, W, 0, false}, Case{5, 7, 13, W, 3, false}, Case{67, 130, 64, 64, 0, false},
                        Case{129, 65, 17, 2 * W, 5, true}, Case{200, 3, 8, 3 * W, 0, true}, Case{64, 64, 1, W, 1, false}}) {
    INFO("nq " << c.nq << " nk " << c.nk << " d " << c.d << " dv " << c.dv);
    const std::int64_t sq = c.d + c.pad, sv = c.dv + c.pad, so = c.dv + c.pad;
    auto q = g.normal<T>({c.nq, sq}), k = g.normal<T>({c.nk, sq}), v = g.normal<T>({c.nk, sv});
    Tensor<std::uint8_t> mask({c.nq, c.nk});
    for (std::int64_t i = 0; i < mask.numel(); ++i) mask[i] = (i * 7 + i / c.nk) % 5 != 0;
    if (c.mask)
      for (std::int64_t j = 0; j < c.nk; ++j) mask[2 * c.nk + j] = 0;  // row 2 attends to nothing
    for (int threads : {1, 3}) {
      set_num_threads(threads);
      Tensor<T> tiled({c.nq, so}), plain({c.nq, so});
      for (auto [out, use_tiles] : {std::pair{&tiled, true}, std::pair{&plain, false}}) {
        std::vector<AttentionProblem<T>> problems{{q.data(), k.data(), v.data(), out->data(), c.nq, c.nk, c.mask ? mask.data() : nullptr}};
        attention_kernel(problems, AttentionLayout{c.d, c.dv, sq, sq, sv, so, c.nk}, static_cast<T>(0.3), use_tiles);
      }
      for (std::int64_t i = 0; i < c.nq; ++i)
        for (std::int64_t j = 0; j < c.dv; ++j) {
          const T a = tiled[i * so + j], b = plain[i * so + j];
          if (c.mask && i == 2) {
            CHECK(std::isnan(a));
            CHECK(std::isnan(b));
          } else {
            CHECK(std::abs(a - b) <= (std::is_same_v<T, float> ? 2e-6 : 1e-14) * (1 + std::abs(b)));
          }
        }
    }
  }
  set_num_threads(before);
}

// 4096 tokens: many key blocks, no N x N matrix; sampled rows against a direct computation.
TEST_CASE("long-sequence attention equals the direct softmax on sampled rows", "[nn][attention]") {
  Generator g(6);
  const std::int64_t N = 4096, D = 16;
  auto q = g.normal<float>({1, 1, N, D}), k = g.normal<float>({1, 1, N, D}), v = g.normal<float>({1, 1, N, D});
  auto o = scaled_dot_product_attention(q, k, v);
  for (std::int64_t i : {0L, 63L, 64L, 2049L, 4095L}) {
    std::vector<double> s(N);
    double mx = -1e300, sum = 0;
    for (std::int64_t j = 0; j < N; ++j) {
      double d = 0;
      for (std::int64_t c = 0; c < D; ++c) d += double(q[i * D + c]) * k[j * D + c];
      s[j] = d / 4.0;
      mx = std::max(mx, s[j]);
    }
    for (auto& x : s) sum += (x = std::exp(x - mx));
    Tensor<float> ref({D}), got({D}, std::vector<float>(o.data() + i * D, o.data() + (i + 1) * D));
    for (std::int64_t c = 0; c < D; ++c) {
      double acc = 0;
      for (std::int64_t j = 0; j < N; ++j) acc += s[j] * v[j * D + c];
      ref[c] = static_cast<float>(acc / sum);
    }
    INFO("row " << i);
    CHECK_CLOSE(got, ref, 1e-5);
  }
}

TEMPLATE_TEST_CASE("convolutions + patch embeddings + rope match torch", "[nn][conv]", float, double) {
  using T = TestType;
  const Fixture<T> fx;
  const double tol = fx.tol;
  struct Case {
    const char* name;
    std::int64_t cin, cout, k, stride, groups;
    std::array<std::int64_t, 4> pad;  // top, bottom, left, right
  };
  for (const Case& c : {Case{"conv2d_3x3", 4, 6, 3, 1, 1, {1, 1, 1, 1}}, Case{"conv2d_s2_asym", 4, 6, 3, 2, 1, {0, 1, 0, 1}},
                        Case{"conv2d_groups", 4, 6, 3, 1, 2, {1, 1, 1, 1}}, Case{"conv2d_1x1", 8, 5, 1, 1, 1, {0, 0, 0, 0}},
                        Case{"conv2d_k4_s4", 3, 8, 4, 4, 1, {0, 0, 0, 0}}}) {
    INFO(c.name);
    Conv2d<T> m(c.cin, c.cout, {c.k, c.k}, {c.stride, c.stride}, c.pad, c.groups);
    fx.load_case(m, c.name);
    CHECK_CLOSE(m.forward(fx.get(std::string(c.name) + ".in.x")), fx.get(std::string(c.name) + ".out"), tol);
  }
  {
    Conv1d<T> m(6, 9, 1);
    fx.load_case(m, "conv1d_k1");
    CHECK_CLOSE(m.forward(fx.get("conv1d_k1.in.x")), fx.get("conv1d_k1.out"), tol);
  }
  {
    Conv3d<T> m(3, 5, {2, 3, 3}, {1, 2, 1}, {1, 1, 0});
    fx.load_case(m, "conv3d");
    CHECK_CLOSE(m.forward(fx.get("conv3d.in.x")), fx.get("conv3d.out"), tol);
  }
  CHECK_CLOSE(upsample_nearest(fx.get("upsample.in.x")), fx.get("upsample.out"), tol);
  CHECK_CLOSE(avg_pool2d(fx.get("avgpool.in.x")), fx.get("avgpool.out"), tol);
  {
    PatchEmbed<T> m(2, 4, 12);
    fx.load_case(m, "patch_embed");
    CHECK_CLOSE(m.forward(fx.get("patch_embed.in.x")), fx.get("patch_embed.out"), tol);
    // the same weights through the general convolution path give the same tokens
    auto conv = m.proj.forward(fx.get("patch_embed.in.x"));
    CHECK_CLOSE(rearrange(conv, "b d h w -> b (h w) d"), fx.get("patch_embed.out"), tol);
    CHECK_THROWS_WITH(m.forward(Tensor<T>({1, 4, 5, 6})), Catch::Contains("divisible by 2"));
  }
  {
    TubeletEmbed<T> m({2, 2, 2}, 3, 10);
    fx.load_case(m, "tubelet_embed");
    CHECK_CLOSE(m.forward(fx.get("tubelet_embed.in.x")), fx.get("tubelet_embed.out"), tol);
  }
  CHECK_CLOSE(unpatchify(fx.get("unpatchify.in.x"), 3, 2), fx.get("unpatchify.out"), tol);
  CHECK_CLOSE(rope(fx.get("rope.in.x")), fx.get("rope.interleaved"), tol);
  CHECK_CLOSE(rope(fx.get("rope.in.x"), {}, 10000.0, false), fx.get("rope.half"), tol);
  CHECK_CLOSE(rope_3d(fx.get("rope3d.in.x"), {2, 3, 2}, {4, 4, 4}), fx.get("rope3d.out"), tol);
}

// A large image goes through several column blocks; compare with the direct sum on samples.
TEST_CASE("Conv2d on a large image uses bounded column blocks and stays exact", "[nn][conv]") {
  Generator g(8);
  Conv2d<double> m(16, 8, 3, 1, 1);
  m.weight = g.normal<double>(m.weight.shape());
  m.bias = g.normal<double>(m.bias.shape());
  auto x = g.normal<double>({1, 16, 200, 180});  // K * Wo = 144 * 180 > 2^20 / 200 rows: many blocks
  auto y = m.forward(x);
  REQUIRE(y.shape() == Shape{1, 8, 200, 180});
  double err = 0;
  for (auto [o, oh, ow] : {std::array<int, 3>{0, 0, 0}, {7, 199, 179}, {3, 57, 0}, {5, 123, 91}}) {
    double s = m.bias[o];
    for (int c = 0; c < 16; ++c)
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          const int ih = oh - 1 + i, iw = ow - 1 + j;
          if (ih >= 0 && ih < 200 && iw >= 0 && iw < 180) s += m.weight(o, c, i, j) * x(0, c, ih, iw);
        }
    err = std::max(err, std::abs(s - y(0, o, oh, ow)));
  }
  CHECK(err < 1e-12);
}

// The direct 3x3 kernel against the general im2col path, on shapes that take it: output channels
// not a multiple of the register tile, widths of one to many vectors with a remainder, one row,
// several images, with and without bias, at 1 and 3 threads.
TEMPLATE_TEST_CASE("Conv2d 3x3: the direct kernel equals im2col + matrix product", "[nn][conv]", float, double) {
  using T = TestType;
  constexpr std::int64_t V = xsimd::batch<T>::size;
  Generator g(10);
  struct Case {
    std::int64_t N, C, O, H, W;
  };
  int direct = 0;
  const int before = get_num_threads();
  for (const auto& c : {Case{1, 3, 5, 4, V}, Case{2, 7, 13, 5, 3 * V}, Case{1, 16, 6, 1, 5 * V}, Case{3, 2, 1, 9, 2 * V},
                        Case{1, 32, 24, 6, 8 * V}}) {
    INFO(c.N << " " << c.C << " " << c.O << " " << c.H << " " << c.W);
    for (const bool bias : {true, false}) {
      Conv2d<T> m(c.C, c.O, 3, 1, 1, 1, bias);
      m.weight = g.normal<T>(m.weight.shape());
      if (bias) m.bias = g.normal<T>(m.bias.shape());
      const auto x = g.normal<T>({c.N, c.C, c.H, c.W});
      const auto geo = nn::detail::conv_geometry("Conv2d", x.shape(), c.C, c.O, 1, {1, 3, 3}, {1, 1, 1}, {0, 0, 1, 1, 1, 1}, 2);
      REQUIRE(nn::detail::conv3x3_direct_applies<T>(geo));
      REQUIRE(!nn::detail::conv3x3_winograd_applies<T>(geo));  // few channels: the direct kernel runs
      ++direct;
      Tensor<T> ref = Tensor<T>::empty({c.N, c.O, c.H, c.W});
      nn::detail::conv_forward_im2col(x.data(), m.weight.data(), bias ? m.bias.data() : nullptr, ref.data(), geo);
      for (const int threads : {1, 3}) {
        set_num_threads(threads);
        const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
        CHECK_CLOSE(m.forward(x), ref, tol);
      }
      set_num_threads(before);
    }
  }
  CHECK(direct == 10);
  // a width that is not whole vectors, stride 2, or asymmetric padding take the general path
  auto geo = [](Shape x, std::array<std::int64_t, 3> s, std::array<std::int64_t, 6> pad) {
    return nn::detail::conv_geometry("Conv2d", x, 4, 4, 1, {1, 3, 3}, s, pad, 2);
  };
  CHECK(!nn::detail::conv3x3_direct_applies<T>(geo({1, 4, 8, V + 1}, {1, 1, 1}, {0, 0, 1, 1, 1, 1})));
  CHECK(!nn::detail::conv3x3_direct_applies<T>(geo({1, 4, 8, 2 * V}, {1, 2, 2}, {0, 0, 1, 1, 1, 1})));
  CHECK(!nn::detail::conv3x3_direct_applies<T>(geo({1, 4, 8, 2 * V}, {1, 1, 1}, {0, 0, 0, 1, 0, 1})));
}

// Winograd F(2x2, 3x3) against im2col: odd and even sizes (partial tiles on the right and at the
// bottom), one pixel, channel counts that are not multiples of anything, forced blocks of one or
// two tile rows and the automatic choice, with and without bias, at 1 and 3 threads. Then one
// convolution large enough that Conv2d::forward takes it, and the shapes that do not.
TEMPLATE_TEST_CASE("Conv2d 3x3: Winograd F(2x2, 3x3) equals im2col + matrix product", "[nn][conv]", float, double) {
  using T = TestType;
  Generator g(11);
  struct Case {
    std::int64_t N, C, O, H, W;
  };
  const int before = get_num_threads();
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (const auto& c : {Case{1, 3, 5, 1, 1}, Case{2, 7, 13, 5, 3}, Case{1, 16, 6, 6, 9}, Case{3, 2, 1, 9, 17}, Case{1, 33, 20, 11, 40},
                        Case{2, 5, 4, 2, 2}}) {
    INFO(c.N << " " << c.C << " " << c.O << " " << c.H << " " << c.W);
    for (const bool bias : {true, false}) {
      const auto w = g.normal<T>({c.O, c.C, 3, 3}), b = g.normal<T>({c.O}), x = g.normal<T>({c.N, c.C, c.H, c.W});
      const auto geo = nn::detail::conv_geometry("Conv2d", x.shape(), c.C, c.O, 1, {1, 3, 3}, {1, 1, 1}, {0, 0, 1, 1, 1, 1}, 2);
      Tensor<T> ref = Tensor<T>::empty({c.N, c.O, c.H, c.W});
      nn::detail::conv_forward_im2col(x.data(), w.data(), bias ? b.data() : nullptr, ref.data(), geo);
      for (const int threads : {1, 3})
        for (const std::int64_t rows : {0, 1, 2}) {
          INFO("threads " << threads << " tile rows per block " << rows);
          set_num_threads(threads);
          Tensor<T> got = Tensor<T>::full({c.N, c.O, c.H, c.W}, T(1e30));  // every output must be written
          nn::detail::conv3x3_winograd(x.data(), w.data(), bias ? b.data() : nullptr, got.data(), geo, rows);
          CHECK_CLOSE(got, ref, tol);
        }
      set_num_threads(before);
    }
  }
  // through Conv2d::forward: 128 -> 130 channels at 32 x 31 (odd width) take the Winograd path
  Conv2d<T> m(128, 130, 3, 1, 1);
  m.weight = g.normal<T>(m.weight.shape());
  m.bias = g.normal<T>(m.bias.shape());
  const auto x = g.normal<T>({1, 128, 32, 31});
  const auto geo = nn::detail::conv_geometry("Conv2d", x.shape(), 128, 130, 1, {1, 3, 3}, {1, 1, 1}, {0, 0, 1, 1, 1, 1}, 2);
  REQUIRE(nn::detail::conv3x3_winograd_applies<T>(geo));
  Tensor<T> ref = Tensor<T>::empty({1, 130, 32, 31});
  nn::detail::conv_forward_im2col(x.data(), m.weight.data(), m.bias.data(), ref.data(), geo);
  CHECK_CLOSE(m.forward(x), ref, tol);
  // few channels, few tiles, stride 2 or other padding keep the other paths
  auto applies = [](std::int64_t C, std::int64_t O, std::int64_t H, std::int64_t W, std::int64_t s = 1, std::int64_t p = 1) {
    return nn::detail::conv3x3_winograd_applies<T>(
        nn::detail::conv_geometry("Conv2d", {1, C, H, W}, C, O, 1, {1, 3, 3}, {1, s, s}, {0, 0, p, p, p, p}, 2));
  };
  CHECK(applies(256, 256, 16, 16));
  CHECK(applies(512, 128, 64, 64));
  CHECK(applies(64, 64, 64, 64));
  CHECK(!applies(32, 32, 64, 64));
  CHECK(!applies(128, 128, 16, 16));
  CHECK(!applies(512, 512, 8, 8));
  CHECK(!applies(256, 256, 64, 64, 2));
  CHECK(!applies(256, 256, 64, 64, 1, 0));
}

// The fixture cases check it against torch (through timm's ViT, tests/test_models.cpp); here its
// invariants: the same size is the identity, a constant image stays constant (weights sum to 1).
TEST_CASE("interpolate_bicubic_antialias: identity at the same size, constants kept", "[nn][resize]") {
  Generator g(11);
  const auto x = g.normal<float>({2, 3, 5, 7});
  CHECK_CLOSE(interpolate_bicubic_antialias(x, 5, 7), x, 1e-6);
  const auto ones = Tensor<float>::full({1, 2, 6, 9}, 2.5f);
  for (auto [h, w] : {std::pair{12, 4}, std::pair{3, 20}, std::pair{1, 1}}) {
    const auto y = interpolate_bicubic_antialias(ones, h, w);
    REQUIRE(y.shape() == Shape{1, 2, h, w});
    for (float v : y) CHECK(std::abs(v - 2.5f) < 1e-5f);
  }
  CHECK_THROWS_WITH(interpolate_bicubic_antialias(x, 0, 3), Catch::Contains("a size >= 1"));
}

// diffusers-style separate q, k, v (and to_out.0) fused into timm's qkv through a table.
TEST_CASE("conversion tables rename and fuse tensors at load time", "[nn][io]") {
  Generator g(9);
  Attention<double> ref(8, 2);
  for (auto& [n, t] : named_parameters<double>(ref)) *t = g.normal<double>(t->shape());
  auto part = [&](const Tensor<double>& t, std::int64_t k) {  // rows [8k, 8k + 8) of qkv
    const std::int64_t cols = t.dim() == 2 ? 8 : 1;
    Shape shape = t.shape();
    shape[0] = 8;
    return Tensor<double>(shape, std::vector<double>(t.data() + k * 8 * cols, t.data() + (k + 1) * 8 * cols));
  };
  save_safetensors<double>("ditto_test_diffusers.safetensors",
                           {{"attn.to_q.weight", part(ref.qkv.weight, 0)}, {"attn.to_k.weight", part(ref.qkv.weight, 1)},
                            {"attn.to_v.weight", part(ref.qkv.weight, 2)}, {"attn.to_q.bias", part(ref.qkv.bias, 0)},
                            {"attn.to_k.bias", part(ref.qkv.bias, 1)}, {"attn.to_v.bias", part(ref.qkv.bias, 2)},
                            {"attn.to_out.0.weight", ref.proj.weight}, {"attn.to_out.0.bias", ref.proj.bias}});
  const ConversionTable diffusers = {
      {"qkv.weight", {"attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight"}},
      {"qkv.bias", {"attn.to_q.bias", "attn.to_k.bias", "attn.to_v.bias"}},
      {"proj.weight", {"attn.to_out.0.weight"}},
      {"proj.bias", {"attn.to_out.0.bias"}},
  };
  Attention<double> loaded(8, 2);
  const SafetensorsFile file("ditto_test_diffusers.safetensors");
  CHECK(load<double>(loaded, file, diffusers).ok());
  auto x = g.normal<double>({2, 5, 8});
  require_equal(loaded.forward(x), ref.forward(x));
  // a table that names a tensor the file lacks reports it under the file's name
  ConversionTable broken = diffusers;
  broken[0].sources[2] = "attn.to_value.weight";
  Attention<double> other(8, 2);
  CHECK_THROWS_WITH(load<double>(other, file, broken),
                    Catch::Contains("1 missing (attn.to_value.weight), 1 unexpected (attn.to_v.weight)"));
  std::remove("ditto_test_diffusers.safetensors");
  // "{i}" carries a layer index from the block's name to the file's
  Stack stack;
  save_safetensors<float>("ditto_test_layers.safetensors",
                          {{"layers.0.w", Tensor<float>::ones({3, 2})}, {"layers.0.b", Tensor<float>({3})},
                           {"layers.1.w", Tensor<float>::full({4, 3}, 2.0f)}});
  CHECK(load<float>(stack, SafetensorsFile("ditto_test_layers.safetensors"),
                    ConversionTable{{"blocks.{i}.weight", {"layers.{i}.w"}}, {"blocks.{i}.bias", {"layers.{i}.b"}}})
            .ok());
  CHECK(stack.blocks[1].weight[0] == 2.0f);
  std::remove("ditto_test_layers.safetensors");
}

// Masked scores are -inf: the SIMD exp must give exactly 0 for them (and UBSan watches that no
// infinity reaches an integer conversion); a row with nothing visible is NaN, as in PyTorch.
TEMPLATE_TEST_CASE("softmax and silu with infinities", "[nn]", float, double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity();
  Tensor<T> x({2, 40});
  for (int j = 0; j < 40; ++j) {
    x(0, j) = j % 3 == 0 ? -inf : static_cast<T>(j) / 10;
    x(1, j) = -inf;
  }
  auto y = softmax(x);
  double sum = 0, ref_sum = 0;
  for (int j = 0; j < 40; ++j)
    if (j % 3) ref_sum += std::exp(j / 10.0 - 3.9);
  for (int j = 0; j < 40; ++j) {
    if (j % 3 == 0) CHECK(y(0, j) == T(0));
    else CHECK(std::abs(y(0, j) - std::exp(j / 10.0 - 3.9) / ref_sum) < 1e-6);
    sum += y(0, j);
    CHECK(std::isnan(y(1, j)));
  }
  CHECK(std::abs(sum - 1.0) < 1e-6);
  Tensor<T> z({32});
  for (int j = 0; j < 32; ++j) z[j] = j % 2 ? inf : -inf;
  auto s = silu(z);
  CHECK(std::isinf(s[1]));
  CHECK(std::isnan(s[0]));  // as torch: F.silu(-inf) = nan
  auto gt = gelu_tanh(z);
  CHECK(std::isinf(gt[1]));
  CHECK(std::isnan(gt[0]));  // as torch: F.gelu(-inf, approximate="tanh") = nan
}

// Sizes that would divide by zero, or a mask that does not fit, are refused up front.
TEST_CASE("bad block arguments give a clear error", "[nn][errors]") {
  CHECK_THROWS_WITH(Conv2d<float>(4, 4, 3, 0), Catch::Contains("Conv2d: stride must be >= 1, got 0"));
  CHECK_THROWS_WITH(Conv2d<float>(4, 4, 0), Catch::Contains("Conv2d: kernel_size must be >= 1, got 0"));
  CHECK_THROWS_WITH(Conv2d<float>(4, 4, 3, 1, -1), Catch::Contains("Conv2d: padding must be >= 0, got -1"));
  CHECK_THROWS_WITH(Conv1d<float>(4, 4, 1, 0), Catch::Contains("Conv1d: stride must be >= 1"));
  CHECK_THROWS_WITH(Conv3d<float>(3, 4, {2, 0, 2}), Catch::Contains("Conv3d: kernel_size must be >= 1"));
  CHECK_THROWS_WITH(PatchEmbed<float>(0, 4, 8), Catch::Contains("kernel_size must be >= 1, got 0"));
  CHECK_THROWS_WITH(avg_pool2d(Tensor<float>({1, 1, 4, 4}), 2, 0), Catch::Contains("avg_pool2d: stride must be >= 1"));
  CHECK_THROWS_WITH(upsample_nearest(Tensor<float>({1, 1, 2, 2}), 0), Catch::Contains("factor must be >= 1"));
  CHECK_THROWS_WITH(LayerNorm<float>(0), Catch::Contains("LayerNorm: normalized_shape must be >= 1"));
  CHECK_THROWS_WITH(RMSNorm<float>(0), Catch::Contains("RMSNorm: dim must be >= 1"));
  CHECK_THROWS_WITH(Linear<float>(0, 3), Catch::Contains("Linear: in_features must be >= 1"));
  CHECK_THROWS_WITH(Embedding<float>(5, 0), Catch::Contains("Embedding: embedding_dim must be >= 1"));
  CHECK_THROWS_WITH(GroupNorm<float>(2, 0), Catch::Contains("divisible by num_groups"));
  Attention<float> att(8, 2);
  const Tensor<std::uint8_t> mask = Tensor<std::uint8_t>::ones({1, 1, 3, 3});
  CHECK_THROWS_WITH(att.forward_packed(Tensor<float>({7, 8}), {0, 3, 7}, &mask),
                    Catch::Contains("a mask needs sequences of one length"));
  CHECK_THROWS_WITH(att.forward(Tensor<float>({2, 4, 8}), &mask), Catch::Contains("mask must be (2 or 1, 2 or 1, 4, 4)"));
  CHECK_THROWS_WITH(att.forward_packed(Tensor<float>({7, 8}), {0, 3, 6}), Catch::Contains("must rise from 0 to 7"));
}
