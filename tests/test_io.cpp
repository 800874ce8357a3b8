// io/: safetensors reading, writing and rejecting hostile files; PNG round trips.
#include <cstdio>
#include <fstream>
#include <iterator>

#include <ditto/core/rng.hpp>
#include <ditto/io/image.hpp>
#include <ditto/io/safetensors.hpp>

#include "helpers.hpp"

using namespace ditto;
using ditto_test::require_equal;

namespace {
// A safetensors file assembled by hand (independently of save_safetensors): length, header, data.
std::string file_bytes(const std::string& header, const std::string& data, std::uint64_t claimed = ~0ull) {
  const std::uint64_t n = claimed == ~0ull ? header.size() : claimed;
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s + header + data;
}
SafetensorsFile parse(const std::string& bytes) { return SafetensorsFile::from_bytes(bytes.data(), bytes.size(), "t"); }
std::string floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}
}  // namespace

TEST_CASE("safetensors: a hand-made file reads back with every dtype converted", "[io][safetensors]") {
  // F16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), +inf. BF16: 1.0, 3.140625, -0.0.
  const std::string f16("\x00\x3c\x00\xc0\xff\x7b\x01\x00\x00\x7c", 10);
  const std::string bf16("\x80\x3f\x49\x40\x00\x80", 6);
  const std::string i64("\xff\xff\xff\xff\xff\xff\xff\xff\x07\x00\x00\x00\x00\x00\x00\x00", 16);  // -1, 7
  const std::string u8b("\x00\x05\x01", 3);
  const std::string data = floats({1.5f, -2.25f, 3.0f, 0.125f}) + f16 + bf16 + i64 + u8b + u8b;
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("h":{"dtype":"F16","shape":[5],"data_offsets":[16,26]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[26,32]},)"
      R"("i":{"dtype":"I64","shape":[2],"data_offsets":[32,48]},"u":{"dtype":"U8","shape":[3],"data_offsets":[48,51]},)"
      R"("z":{"dtype":"BOOL","shape":[3],"data_offsets":[51,54]}})";
  auto f = parse(file_bytes(header, data));
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.names() == std::vector<std::string>{"a", "b", "h", "i", "u", "z"});
  require_equal(f.get<float>("a"), Tensor<float>({2, 2}, {1.5f, -2.25f, 3.0f, 0.125f}));
  auto h = f.get<float>("h");
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.0f);
  CHECK(h[2] == 65504.0f);
  CHECK(h[3] == std::ldexp(1.0f, -24));
  CHECK(std::isinf(h[4]));
  require_equal(f.get<float>("b"), Tensor<float>({3}, {1.0f, 3.140625f, -0.0f}));
  CHECK(std::signbit(f.get<float>("b")[2]));
  require_equal(f.get<std::int64_t>("i"), Tensor<std::int64_t>({2}, {-1, 7}));
  require_equal(f.get<double>("i"), Tensor<double>({2}, {-1.0, 7.0}));
  require_equal(f.get<float>("u"), Tensor<float>({3}, {0, 5, 1}));
  require_equal(f.get<std::uint8_t>("z"), Tensor<std::uint8_t>({3}, {0, 1, 1}));
  CHECK_THROWS_WITH(f.get<float>("missing"), Catch::Contains("no tensor named \"missing\" (the file has 6: a, b, h"));
}

TEST_CASE("safetensors: save then load round-trips through a memory-mapped file", "[io][safetensors]") {
  Generator g(1);
  auto w = g.normal<float>({3, 5});
  auto b = g.normal<float>({5});
  auto empty = Tensor<float>::empty({0, 4});
  const std::string path = "ditto_test_roundtrip.safetensors";
  save_safetensors<float>(path, {{"w", w}, {"b", b}, {"e", empty}}, {{"format", "pt"}});
  SafetensorsFile f(path);
  require_equal(f.get("w"), w);
  require_equal(f.get("b"), b);
  CHECK(f.get("e").shape() == Shape{0, 4});
  CHECK(f.info("w").dtype == DType::F32);
  CHECK(f.metadata().at("format") == "pt");
  auto d = g.normal<double>({2, 2});
  save_safetensors<double>(path, {{"d", d}});
  CHECK(SafetensorsFile(path).info("d").dtype == DType::F64);
  require_equal(SafetensorsFile(path).get<double>("d"), d);
  CHECK_THROWS_WITH(save_safetensors<float>(path, {{"x", w}, {"x", b}}), Catch::Contains("given twice"));
  std::remove(path.c_str());
  CHECK_THROWS_WITH(SafetensorsFile("no/such/file.safetensors"), Catch::Contains("cannot open"));
}

TEST_CASE("safetensors: hostile files are refused with a message naming the problem", "[io][safetensors]") {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string d8 = floats({1, 2});
  struct Bad {
    std::string bytes, expect;
  };
  const std::vector<Bad> cases = {
      {std::string("\x05\x00\x00", 3), "fewer than the 8-byte header length"},
      {file_bytes("{" + ok_entry + "}", d8, 4096), "the header claims 4096 bytes but the file has only"},
      {file_bytes("{}", "", 1ull << 40), "the header claims 1099511627776 bytes; at most 100000000"},
      {file_bytes("{\"a\":", ""), "not valid JSON"},
      {file_bytes("[1,2]", ""), "must be a JSON object"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[[[[1]]]],"data_offsets":[0,4]}})", "abcd"), "nests 6 levels"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", d8), "go past the data section"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
       "overlap"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8), "belong to no tensor"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", d8), "the tensors cover 4"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8), "needs 12 bytes but data_offsets give 8"},
      {file_bytes(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})", d8), "unknown dtype \"F8\""},
      {file_bytes("{" + ok_entry + "," + ok_entry + "}", d8), "names \"a\" twice"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8), "non-negative integers"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8), "end before they begin"},
      {file_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", d8), "missing dtype"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", d8),
       "more than 2^62"},
      {file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", d8), "unknown key \"extra\""},
      {file_bytes(R"({"__metadata__":{"k":1},)" + ok_entry + "}", d8), "must be a string"},
      // the reference reader (serde_json) refuses these; nlohmann alone would take the last key
      // and stop at the NUL
      {file_bytes(R"({"a":{"dtype":"F16","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8),
       "repeats an entry's key \"dtype\" inside one object"},
      {file_bytes(R"({"__metadata__":{"k":"1","k":"2"},)" + ok_entry + "}", d8), "repeats an entry's key \"k\""},
      {file_bytes("{" + ok_entry + std::string("}\0\0\0", 4), d8), "NUL byte at offset"},
      {file_bytes("{" + ok_entry + std::string("}\0   ", 5), d8), "NUL byte at offset"},
  };
  for (const auto& c : cases) {
    INFO("expecting: " << c.expect);
    CHECK_THROWS_AS(parse(c.bytes), IoError);
    CHECK_THROWS_WITH(parse(c.bytes), Catch::Contains(c.expect));
  }
  // Every truncation of a valid file is refused, never read out of bounds (ASan watches).
  const std::string good = file_bytes("{" + ok_entry + "}", d8);
  CHECK_NOTHROW(parse(good));
  for (std::size_t n = 0; n < good.size(); ++n) CHECK_THROWS_AS(parse(good.substr(0, n)), IoError);
}

TEST_CASE("PNG write and read round-trip through stb", "[io][image]") {
  Tensor<float> img({3, 4, 5});
  for (std::int64_t i = 0; i < img.numel(); ++i) img[i] = static_cast<float>(i % 51) / 25.0f - 1.0f;
  write_png("ditto_test_image.png", img);
  auto back = read_image("ditto_test_image.png");
  std::remove("ditto_test_image.png");
  REQUIRE(back.shape() == img.shape());
  CHECK_CLOSE(back, img, 1.0 / 255.0 + 1e-6);  // rounding to 8 bits: at most half a step of 2/255
  CHECK_THROWS_AS(write_png("x.png", Tensor<float>({2, 4, 4})), ShapeError);
  CHECK_THROWS_WITH(read_image("no/such.png"), Catch::Contains("read_image(\"no/such.png\")"));
}

TEST_CASE("make_grid lays images out as torchvision does", "[io][image]") {
  // 5 one-channel 2x3 images, 3 per row, padding 1: a (3, 2*3+1, 3*4+1) grid, gray -> RGB.
  Tensor<float> imgs({5, 1, 2, 3});
  for (std::int64_t k = 0; k < 5; ++k)
    for (std::int64_t i = 0; i < 6; ++i) imgs[k * 6 + i] = static_cast<float>(k) + 0.1f * static_cast<float>(i);
  auto grid = make_grid(imgs, 3, 1, -1.0f);
  REQUIRE(grid.shape() == Shape{3, 7, 13});
  CHECK(grid(0, 0, 0) == -1.0f);                          // padding
  CHECK(grid(2, 1, 1) == imgs(0, 0, 0, 0));               // image 0 at (1, 1), every channel
  CHECK(grid(0, 2, 7) == imgs(1, 0, 1, 2));               // image 1 starts at column 1 + 4
  CHECK(grid(1, 4, 1) == imgs(3, 0, 0, 0));               // image 3: second row, first column
  CHECK(grid(0, 4, 9) == -1.0f);                          // no image 5: padding
  CHECK_THROWS_AS(make_grid(Tensor<float>({2, 3}), 2), ShapeError);
}

TEST_CASE("write_gif: an independent decoder (stb_image) reads every frame back", "[io][image]") {
  Generator g(4);
  const std::int64_t T = 3, H = 80, W = 100;  // 8000 random pixels a frame: the LZW table fills and resets
  auto video = g.uniform<float>({T, 3, H, W}, -1.0, 1.0);
  for (std::int64_t i = 0; i < H * W; ++i) {  // frame 2: a smooth gradient (long LZW runs)
    video[2 * 3 * H * W + i] = static_cast<float>(i % W) / W * 2 - 1;
    video[2 * 3 * H * W + H * W + i] = static_cast<float>(i / W) / H * 2 - 1;
    video[2 * 3 * H * W + 2 * H * W + i] = 0.0f;
  }
  write_gif("ditto_test.gif", video, 10.0);
  std::ifstream f("ditto_test.gif", std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::remove("ditto_test.gif");
  int* delays = nullptr;
  int w = 0, h = 0, frames = 0, comp = 0;
  unsigned char* px = stbi_load_gif_from_memory(bytes.data(), static_cast<int>(bytes.size()), &delays, &w, &h, &frames, &comp, 4);
  REQUIRE(px != nullptr);
  CHECK(w == W);
  CHECK(h == H);
  REQUIRE(frames == T);
  CHECK(delays[0] == 100);  // ms
  std::int64_t wrong = 0;
  auto byte = [](float v) { return static_cast<int>(std::lround(std::clamp((v + 1.0f) * 127.5f, 0.0f, 255.0f))); };
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t i = 0; i < H * W; ++i) {
      const float* v = video.data() + t * 3 * H * W + i;
      const auto want = detail::gif_palette_color(detail::gif_palette_index(byte(v[0]), byte(v[H * W]), byte(v[2 * H * W])));
      const unsigned char* got = px + (t * H * W + i) * 4;
      wrong += got[0] != want[0] || got[1] != want[1] || got[2] != want[2];
    }
  CHECK(wrong == 0);
  // the palette is close: every channel within half a step of the 6-level cube
  CHECK(std::abs(detail::gif_palette_color(detail::gif_palette_index(200, 30, 90))[0] - 200) <= 26);
  stbi_image_free(px);
  stbi_image_free(delays);
  CHECK_THROWS_AS(write_gif("x.gif", Tensor<float>({2, 2, 4, 4})), ShapeError);
}
