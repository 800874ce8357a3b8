// einops/: every case of tests/fixtures/einops_cases.json (outputs of real einops 0.8 on NumPy,
// made by tools/gen_einops_fixtures.py), plus what einops has no fixture for: views, the
// recipe cache, compile-time patterns, thread independence, and the fast paths of the kernels
// against a plain loop.
#include <atomic>
#include <thread>

#include <ditto/core/rng.hpp>
#include <ditto/einops.hpp>

#include "helpers.hpp"

using namespace ditto;
using ditto_test::require_equal;
using ditto_test::tensor_from_json;

namespace {
AxisLengths lengths_of(const nlohmann::json& c) {
  AxisLengths l;
  for (auto& [k, v] : c.at("lengths").items()) l[k] = v.get<std::int64_t>();
  return l;
}
std::vector<Tensor<float>> inputs_of(const nlohmann::json& c) {
  std::vector<Tensor<float>> xs;
  for (const auto& j : c.at("inputs")) xs.push_back(tensor_from_json(j));
  return xs;
}
}  // namespace

TEST_CASE("einops fixtures: rearrange reduce repeat and einsum equal einops 0.8", "[einops]") {
  const auto fx = ditto_test::load_json("einops_cases.json");
  int n = 0;
  for (const auto& c : fx.at("valid")) {
    const std::string op = c.at("op"), pattern = c.at("pattern");
    const auto xs = inputs_of(c);
    const auto ref = tensor_from_json(c.at("output"));
    const auto lengths = lengths_of(c);
    const bool as_list = c.at("as_list");
    INFO(op << "(\"" << pattern << "\") on " << shape_str(xs[0].shape()));
    Tensor<float> got;
    if (op == "rearrange") {
      got = as_list ? rearrange(xs, pattern, lengths) : rearrange(xs[0], pattern, lengths);
      require_equal(got, ref);  // data movement only: exact
    } else if (op == "repeat") {
      got = repeat(xs[0], pattern, lengths);
      require_equal(got, ref);
    } else if (op == "reduce") {
      const std::string red = c.at("reduction");
      got = as_list ? reduce(xs, pattern, red, lengths) : reduce(xs[0], pattern, red, lengths);
      // NumPy sums in float32 (pairwise), ditto in double: equal to float32 rounding.
      CHECK_CLOSE(got, ref, 1e-6);
      // In double, the same data gives the same answer.
      if (!as_list) CHECK_CLOSE(reduce(xs[0].to<double>(), pattern, red, lengths), ref, 1e-6);
    } else if (op == "einsum") {
      got = einsum(xs, pattern);
      CHECK_CLOSE(got, ref, 1e-6);
      std::vector<Tensor<double>> xd;
      for (const auto& x : xs) xd.push_back(x.to<double>());
      CHECK_CLOSE(einsum(xd, pattern), ref, 1e-6);
    } else {
      FAIL("unknown op " << op);
    }
    ++n;
  }
  CHECK(n >= 60);
}

TEST_CASE("einops fixtures: pack unpack and parse_shape", "[einops]") {
  const auto fx = ditto_test::load_json("einops_cases.json");
  for (const auto& c : fx.at("pack")) {
    const std::string pattern = c.at("pattern");
    INFO("pack(\"" << pattern << "\")");
    const auto xs = inputs_of(c);
    auto [packed, ps] = pack(xs, pattern);
    require_equal(packed, tensor_from_json(c.at("output")));
    CHECK(ps == c.at("packed_shapes").get<std::vector<Shape>>());
    auto back = unpack(packed, ps, pattern);
    REQUIRE(back.size() == xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) require_equal(back[i], xs[i]);
    // One packed shape may be -1: inferred from the others.
    auto ps_infer = ps;
    for (auto& d : ps_infer.back()) d = -1;
    if (ps_infer.back().size() == 1) {
      auto back2 = unpack(packed, ps_infer, pattern);
      require_equal(back2.back(), xs.back());
    }
  }
  for (const auto& c : fx.at("parse_shape")) {
    const std::string pattern = c.at("pattern");
    INFO("parse_shape(\"" << pattern << "\")");
    auto got = parse_shape(Tensor<float>(c.at("shape").get<Shape>()), pattern);
    AxisLengths ref;
    for (auto& [k, v] : c.at("result").items()) ref[k] = v.get<std::int64_t>();
    CHECK(got == ref);
  }
}

TEST_CASE("einops fixtures: invalid patterns throw EinopsError with a specific message", "[einops][errors]") {
  const auto fx = ditto_test::load_json("einops_cases.json");
  int n = 0;
  for (const auto& c : fx.at("invalid")) {
    const std::string op = c.at("op"), pattern = c.at("pattern"), expect = c.at("expect");
    INFO(op << "(\"" << pattern << "\") must fail with \"" << expect << "\" (einops said: "
            << c.at("einops_error").get<std::string>() << ")");
    const auto lengths = lengths_of(c);
    auto run = [&] {
      if (op == "pack" || op == "einsum") {
        std::vector<Tensor<float>> xs;
        for (const auto& s : c.at("shapes")) xs.emplace_back(s.get<Shape>());
        if (op == "pack") pack(xs, pattern);
        else einsum(xs, pattern);
        return;
      }
      Tensor<float> x(c.at("shape").get<Shape>());
      if (op == "rearrange") rearrange(x, pattern, lengths);
      else if (op == "repeat") repeat(x, pattern, lengths);
      else if (op == "reduce") reduce(x, pattern, c.at("reduction").get<std::string>(), lengths);
      else if (op == "parse_shape") parse_shape(x, pattern);
    };
    CHECK_THROWS_AS(run(), EinopsError);
    CHECK_THROWS_WITH(run(), Catch::Contains(expect));
    // The message quotes the pattern so the reader sees which call failed.
    if (op != "pack") CHECK_THROWS_WITH(run(), Catch::Contains(pattern));
    ++n;
  }
  CHECK(n >= 15);
}

TEST_CASE("messages quote the pattern and the shape and the axis", "[einops][errors]") {
  Tensor<float> x({2, 3, 4});
  CHECK_THROWS_WITH(rearrange(x, "b c h w -> b (h w) c"),
                    "rearrange(\"b c h w -> b (h w) c\") on input of shape [2,3,4]: the left side has 4 axes but "
                    "the input has rank 3");
  CHECK_THROWS_WITH(rearrange(x, "b c (h p) -> b c h p", {{"p", 3}}),
                    "rearrange(\"b c (h p) -> b c h p\", p=3) on input of shape [2,3,4]: input axis 2 of length 4 "
                    "cannot be split as (h p): 4 is not divisible by 3");
  CHECK_THROWS_WITH(unpack(Tensor<float>({2, 5}), {{2}, {2}}, "b *"), Catch::Contains("totalling 4"));
  CHECK_THROWS_WITH(reduce(Tensor<float>({2, 0}), "a b -> a", "max"), Catch::Contains("empty axis"));
  CHECK_THROWS_WITH(reduce(Tensor<int>({2, 3}), "a b -> a", "mean"), Catch::Contains("integer tensor"));
}

TEST_CASE("rearrange returns a view exactly when the result is a reshape", "[einops]") {
  auto x = Tensor<float>::arange(24).reshape({2, 3, 4});
  CHECK(rearrange(x, "b c h -> (b c h)").shares_storage_with(x));
  CHECK(rearrange(x, "b c (h p) -> b 1 c h p", {{"p", 2}}).shares_storage_with(x));
  CHECK_FALSE(rearrange(x, "b c h -> b h c").shares_storage_with(x));
  // Permuting only unit axes is still a reshape.
  auto y = Tensor<float>::arange(6).reshape({1, 6, 1});
  CHECK(rearrange(y, "a b c -> c b a").shares_storage_with(y));
  // repeat and reduce always return new storage.
  CHECK_FALSE(repeat(x, "b c h -> b c h").shares_storage_with(x));
}

TEST_CASE("a pattern used in a loop is parsed once", "[einops]") {
  auto x = Tensor<float>::arange(24).reshape({2, 3, 4});
  rearrange(x, "b c h -> h c b");
  const auto size = einops::recipe_cache_size();
  for (int i = 0; i < 100; ++i) rearrange(x, "b c h -> h c b");
  CHECK(einops::recipe_cache_size() == size);
  rearrange(x, "b c h -> c h b");
  CHECK(einops::recipe_cache_size() == size + 1);
}

TEST_CASE("compile-time patterns give the same results and ranks known to the compiler", "[einops][static]") {
  static_assert(einops::output_rank<"b c h w -> b (h w) c"> == 3);
  static_assert(einops::input_rank<"b c h w -> b (h w) c"> == 4);
  static_assert(einops::output_rank<"b ... -> b (...)"> == -1);
  static_assert(einops::check_pattern("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", einops::Op::rearrange));
  static_assert(einops::parse_pattern("a b -> a", einops::Op::rearrange).problem == einops::Problem::one_side_only);
  static_assert(einops::parse_pattern("a (b -> a", einops::Op::rearrange).problem == einops::Problem::unbalanced_open);

  auto x = Generator(5).normal<float>({2, 3, 4, 6});
  const AxisLengths p{{"p1", 2}, {"p2", 3}};
  require_equal(rearrange<"b c (h p1) (w p2) -> b (h w) (p1 p2 c)">(x, p),
                rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p));
  require_equal(reduce<"b c h w -> b c">(x, "max"), reduce(x, "b c h w -> b c", "max"));
  require_equal(repeat<"b c h w -> b c h w r">(x, {{"r", 2}}), repeat(x, "b c h w -> b c h w r", {{"r", 2}}));
  CHECK_THROWS_WITH(rearrange<"b c h -> b h c">(x), Catch::Contains("the left side has 3 axes but the input has rank 4"));
}

// The plain loop the strided kernels are checked against: out[b, h*W + w, (p1*P2 + p2)*C + c].
TEST_CASE("kernel fast paths equal a plain loop for patchify and transpose tiles on any thread count", "[einops]") {
  const int before = get_num_threads();
  auto x = Generator(9).normal<float>({3, 5, 12, 20});  // b c (h p1) (w p2), p1 = 4, p2 = 2
  const std::int64_t B = 3, C = 5, P1 = 4, P2 = 2, H = 3, W = 10;
  Tensor<float> ref({B, H * W, P1 * P2 * C});
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t p1 = 0; p1 < P1; ++p1)
          for (std::int64_t w = 0; w < W; ++w)
            for (std::int64_t p2 = 0; p2 < P2; ++p2)
              ref(b, h * W + w, (p1 * P2 + p2) * C + c) = x(b, c, h * P1 + p1, w * P2 + p2);
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    require_equal(rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", 4}, {"p2", 2}}), ref);
    // and back
    require_equal(rearrange(ref, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", {{"h", 3}, {"p1", 4}, {"p2", 2}}), x);
  }
  // A large 2-D transpose goes through the tiled path; a large reduce through the threaded one.
  auto m = Generator(10).normal<float>({300, 257});
  Tensor<float> mt({257, 300});
  for (int i = 0; i < 300; ++i)
    for (int j = 0; j < 257; ++j) mt(j, i) = m(i, j);
  Tensor<float> colsum({257});
  for (int j = 0; j < 257; ++j) {
    double s = 0;
    for (int i = 0; i < 300; ++i) s += m(i, j);
    colsum[j] = static_cast<float>(s);
  }
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    require_equal(rearrange(m, "a b -> b a"), mt);
    CHECK_CLOSE(reduce(m, "a b -> b", "sum"), colsum, 1e-7);
  }
  set_num_threads(before);
}

TEST_CASE("einsum handles repeated and summed and batch axes beyond the fixtures", "[einops]") {
  Generator g(11);
  auto a = g.normal<double>({2, 3, 4});
  auto b = g.normal<double>({4, 5});
  auto c = einsum(a, b, "x y k, k z -> z x y");
  REQUIRE(c.shape() == Shape{5, 2, 3});
  double err = 0;
  for (int x = 0; x < 2; ++x)
    for (int y = 0; y < 3; ++y)
      for (int z = 0; z < 5; ++z) {
        double s = 0;
        for (int k = 0; k < 4; ++k) s += a(x, y, k) * b(k, z);
        err = std::max(err, std::abs(s - c(z, x, y)));
      }
  CHECK(err < 1e-12);
  // trace
  auto sq = g.normal<double>({6, 6});
  double tr = 0;
  for (int i = 0; i < 6; ++i) tr += sq(i, i);
  CHECK(std::abs(einsum(sq, "i i ->")[0] - tr) < 1e-12);
  CHECK_THROWS_WITH(einsum(sq, "i j -> i i"), Catch::Contains("appears twice"));
  CHECK_THROWS_WITH(einsum(sq, sq, "i j -> i j"), Catch::Contains("1 operands but 2 tensors"));
}

TEST_CASE("the _into variants write into a given tensor and check it", "[einops]") {
  auto x = Generator(12).normal<float>({2, 3, 4, 6});
  Tensor<float> out({2, 4, 18});
  rearrange_into(out, x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", 2}, {"p2", 3}});
  require_equal(out, rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", 2}, {"p2", 3}}));
  Tensor<float> pooled({2, 3});
  reduce_into(pooled, x, "b c h w -> b c", "max");
  require_equal(pooled, reduce(x, "b c h w -> b c", "max"));
  Tensor<float> rep({2, 3, 4, 6, 2});
  repeat_into(rep, x, "b c h w -> b c h w r", {{"r", 2}});
  require_equal(rep, repeat(x, "b c h w -> b c h w r", {{"r", 2}}));
  // A pure reshape still copies into the given tensor.
  Tensor<float> flat({2, 72});
  rearrange_into(flat, x, "b c h w -> b (c h w)");
  CHECK_FALSE(flat.shares_storage_with(x));
  CHECK(flat[71] == x[71]);
  CHECK_THROWS_WITH(rearrange_into(flat, x, "b c h w -> b h w c"),
                    Catch::Contains("the output tensor has shape [2,72] but the result has shape [2,4,6,3]"));
  auto same = x.reshape({2, 3, 24});
  CHECK_THROWS_WITH(rearrange_into(same, x, "b c h w -> b c (h w)"), Catch::Contains("overlaps the input"));
}

// Outputs of 32 MB and more take the streaming-store path of the micro-block kernel.
TEST_CASE("large patchify through the streaming path equals a plain loop", "[einops]") {
  const std::int64_t B = 8, C = 4, H = 512, W = 512, P = 2;  // 8M floats = 32 MB
  auto x = Tensor<float>::empty({B, C, H, W});
  for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(i % 1000003);
  const int before = get_num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    auto y = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", {{"p1", P}, {"p2", P}});
    bool ok = true;
    const std::int64_t h2 = H / P, w2 = W / P;
    for (std::int64_t b = 0; b < B && ok; ++b)
      for (std::int64_t h = 0; h < h2; ++h)
        for (std::int64_t w = 0; w < w2; ++w)
          for (std::int64_t p1 = 0; p1 < P; ++p1)
            for (std::int64_t p2 = 0; p2 < P; ++p2)
              for (std::int64_t c = 0; c < C; ++c)
                ok &= y(b, h * w2 + w, (p1 * P + p2) * C + c) == x(b, c, h * P + p1, w * P + p2);
    CHECK(ok);
  }
  set_num_threads(before);
}

// Calls from several threads at once share the recipe cache; results must not depend on it.
TEST_CASE("einops may be called from several threads at once", "[einops][threads]") {
  auto x = Generator(13).normal<float>({4, 6, 8});
  const std::vector<std::string> patterns = {"a b c -> c b a", "a (b k) c -> k a b c", "a b c -> (c a) b",
                                             "a b (c k) -> b k a c"};
  std::vector<Tensor<float>> expected;
  for (const auto& p : patterns) expected.push_back(rearrange(x, p, p.find('k') != std::string::npos
                                                                          ? AxisLengths{{"k", 2}} : AxisLengths{}));
  std::atomic<int> mismatches{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::size_t k = static_cast<std::size_t>(t + i) % patterns.size();
        // a fresh pattern string each time, so lookups really go through the cache
        const std::string p = patterns[k] + std::string(static_cast<std::size_t>(i % 3), ' ');
        auto y = rearrange(x, p, p.find('k') != std::string::npos ? AxisLengths{{"k", 2}} : AxisLengths{});
        if (!std::equal(y.begin(), y.end(), expected[k].begin())) ++mismatches;
      }
    });
  for (auto& th : pool) th.join();
  CHECK(mismatches == 0);
}
