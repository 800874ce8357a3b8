// Hostile input, by class (issue 13: what an outside probe found): lengths whose products wrap
// int64, empty reductions, integer sums that do not fit, JSON nested to blow the stack, writes
// that fail (full disk, file-size limit, a directory), truncated or oversized pictures, FIFOs,
// empty batches, sizes whose arithmetic would overflow. Each test would fail (or crash under
// ASan / UBSan, which .ci/run runs it under) if its class came back.
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ditto/ditto.hpp>

#include "helpers.hpp"

using namespace ditto;
using namespace ditto::models;

namespace {
// A scratch folder of this process, removed at the end.
struct Scratch {
  std::filesystem::path dir;
  Scratch() : dir(std::filesystem::temp_directory_path() / ("ditto_hostile_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(dir);
  }
  ~Scratch() { std::filesystem::remove_all(dir); }
  std::string path(const std::string& name) const { return (dir / name).string(); }
  std::size_t entries() const {
    return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()));
  }
};
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void spit(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }
}  // namespace

TEST_CASE("einops: length products that wrap int64 are refused" " not matched", "[hostile][einops]") {
  const auto x = Tensor<float>::arange(6);
  // 9 * 6148914691236517206 wraps to 6: read out of bounds before
  CHECK_THROWS_WITH(reduce(x, "(a b) -> a", "sum", {{"a", 9}, {"b", 6148914691236517206}}), Catch::Contains("overflows int64"));
  // anonymous lengths whose product wraps: returned the input unchanged before
  CHECK_THROWS_WITH(reduce(x, "(a 614593552242831 443040817301103) -> a", "sum"), Catch::Contains("overflows int64"));
  CHECK_THROWS_AS(rearrange(x, "(a b c) -> a b c", {{"b", std::int64_t{1} << 40}, {"c", std::int64_t{1} << 40}}), EinopsError);
  // repeat's new axes: a group whose product wraps, and an output too large to hold
  CHECK_THROWS_WITH(repeat(x, "a -> a (b c)", {{"b", std::int64_t{1} << 40}, {"c", std::int64_t{1} << 40}}),
                    Catch::Contains("the length of output axis 1 overflows int64"));
  CHECK_THROWS_AS(repeat(x, "a -> a b c", {{"b", std::int64_t{1} << 40}, {"c", std::int64_t{1} << 40}}), ShapeError);
  // an empty input may carry huge lengths: the result is empty, as einops gives
  const Tensor<float> empty({0, 6});
  CHECK(rearrange(empty, "(a b) c -> a b c", {{"b", std::int64_t{1} << 62}}).shape() == Shape{0, std::int64_t{1} << 62, 6});
  CHECK(repeat(empty, "a c -> a b c", {{"b", std::int64_t{1} << 62}}).shape() == Shape{0, std::int64_t{1} << 62, 6});
  // unpack's packed shapes
  const auto packed = Tensor<float>::arange(12).reshape({2, 6});
  CHECK_THROWS_WITH(unpack(packed, std::vector<Shape>{{std::int64_t{1} << 40, std::int64_t{1} << 40}}, "b *"),
                    Catch::Contains("more elements than fit in int64"));
}

TEST_CASE("einops: a pattern holding the recipe cache's separator never reuses another pattern's recipe", "[hostile][einops]") {
  // found by fuzz_einops (its input kept as tests/fuzz/corpus_einops/regression-cache-key; it fails
  // only after another input filled the cache): "(a b) -> a" with a
  // length for a was cached under the key that "(a b) -> a|a" with no lengths then looked up,
  // and the reused recipe read a length that was not there (undefined behaviour)
  const Tensor<float> x = Tensor<float>::arange(2);
  CHECK(reduce(x, "(a b) -> a", "prod", {{"a", 2}}).shape() == Shape{2});
  CHECK_THROWS_AS(reduce(x, "(a b) -> a|a", "prod"), EinopsError);
  CHECK_THROWS_AS(rearrange(x, "(a b) -> a|a"), EinopsError);
}

TEST_CASE("einops: reductions over an empty axis give the identity as einops does", "[hostile][einops]") {
  const Tensor<float> x({0, 3});
  const auto sum = reduce(x, "a b -> b", "sum"), prod = reduce(x, "a b -> b", "prod"), mean = reduce(x, "a b -> b", "mean");
  REQUIRE(sum.shape() == Shape{3});
  for (int i = 0; i < 3; ++i) {
    CHECK(sum[i] == 0.0f);
    CHECK(prod[i] == 1.0f);
    CHECK(std::isnan(mean[i]));
  }
  CHECK_THROWS_WITH(reduce(x, "a b -> b", "max"), Catch::Contains("cannot take max or min over an empty axis"));
  CHECK_THROWS_AS(reduce(x, "a b -> b", "min"), EinopsError);
  const Tensor<std::int32_t> xi({2, 0, 3});
  CHECK(reduce(xi, "a b c -> a c", "sum")[5] == 0);
  CHECK(reduce(xi, "a b c -> a c", "prod")[5] == 1);
  CHECK(reduce(x, "a b -> a", "max").numel() == 0);  // nothing to reduce into: empty, not an error
}

TEST_CASE("einops: integer sums that do not fit the type are refused" " not wrapped", "[hostile][einops]") {
  // numpy promotes to int64 and gives 6e9; ditto keeps int32 and refuses instead of 1705032704
  const Tensor<std::int32_t> big({3}, std::vector<std::int32_t>{2000000000, 2000000000, 2000000000});
  CHECK_THROWS_WITH(reduce(big, "a ->", "sum"), Catch::Contains("does not fit in the input's integer type (32-bit)"));
  CHECK(reduce(big.to<std::int64_t>(), "a ->", "sum")[0] == 6000000000);
  const Tensor<std::int32_t> small({3}, std::vector<std::int32_t>{-2000000000, 2000000000, 7});
  CHECK(reduce(small, "a ->", "sum")[0] == 7);  // a sum that fits at the end is fine
  const Tensor<std::int64_t> huge({2}, std::vector<std::int64_t>{std::int64_t{1} << 40, std::int64_t{1} << 40});
  CHECK_THROWS_AS(reduce(huge, "a ->", "prod"), EinopsError);  // wraps int64 itself
  const Tensor<std::uint8_t> bytes({2}, std::vector<std::uint8_t>{200, 100});
  CHECK_THROWS_AS(reduce(bytes, "a ->", "sum"), EinopsError);
}

TEST_CASE("JSON nested beyond any config is refused before parsing and long values are cut in messages", "[hostile][config]") {
  const std::string deep = "{\"depth\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  CHECK_THROWS_WITH(parse_json(deep, "config"), Catch::Contains("nests 100001 levels deep; at most 64"));
  CHECK_THROWS_WITH(parse_json("{\"a\": [1, 2", "config"), Catch::Contains("config: not valid JSON"));
  CHECK(parse_json("{\"a\": [[1]]}", "config")["a"][0][0] == 1);
  // a 5 MB value quoted in an error message comes back as a line
  nlohmann::json j = {{"input_size", std::string(5 << 20, '7')}};
  std::string msg;
  try {
    (void)DiTConfig::from_json(j);
  } catch (const ArgumentError& e) {
    msg = e.what();
  }
  CHECK_THAT(msg, Catch::Contains("\"input_size\" must be an integer, got \"777"));
  CHECK(msg.size() < 200);
  nlohmann::json list = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) list.push_back(i);
  CHECK(brief_json(list).size() < 100);
  CHECK(brief_json(nlohmann::json{{std::string(1 << 20, 'k'), 1}}).size() < 100);  // keys are cut too
  CHECK(brief_json(nlohmann::json::parse(std::string(30, '[') + std::string(30, ']'))) == "[[[[[...]]]]]");
  // a string argument is bounded, so no model echoes megabytes
  CHECK_THROWS_WITH(ViTConfig::from_json({{"act_layer", std::string(1 << 20, 'x')}}), Catch::Contains("at most 256 characters"));
}

TEST_CASE("writers report a full disk and leave no file behind", "[hostile][io]") {
  const Scratch s;
  const Tensor<float> img = Tensor<float>::full({3, 4, 4}, 0.5f);
  if (std::filesystem::exists("/dev/full")) {
    CHECK_THROWS_WITH(save_safetensors<float>("/dev/full", {{"x", img}}), Catch::Contains("write failed: No space left on device"));
    CHECK_THROWS_WITH(write_png("/dev/full", img), Catch::Contains("write_png(\"/dev/full\"): write failed"));
    CHECK_THROWS_WITH(write_gif("/dev/full", img.reshape({1, 3, 4, 4})), Catch::Contains("write_gif(\"/dev/full\"): write failed"));
  }
  CHECK_NOTHROW(save_safetensors<float>("/dev/null", {{"x", img}}));  // a device is written in place, never replaced
  CHECK(std::filesystem::is_character_file("/dev/null"));
  std::filesystem::create_directories(s.path("folder"));
  CHECK_THROWS_WITH(write_png(s.path("folder"), img), Catch::Contains("is a directory"));
  CHECK_THROWS_WITH(write_png(s.path("no/such/folder/x.png"), img), Catch::Contains("cannot create a file in its folder"));
  CHECK(s.entries() == 1);  // only the folder: no temporary file left
}

TEST_CASE("a save that fails midway leaves the previous file whole" " and a link is followed", "[hostile][io]") {
  const Scratch s;
  const std::string path = s.path("w.safetensors");
  const Tensor<float> old_t = Tensor<float>::full({4}, 1.5f);
  save_safetensors<float>(path, {{"w", old_t}});
  ::chmod(path.c_str(), 0640);
  const std::string before = slurp(path);
  // A child process under a 4 KB file-size limit (SIGXFSZ ignored, as Python's subprocess
  // leaves it) saves 4 MB over the file: the write fails, the child reports it, and the file
  // still holds the old checkpoint.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{4096, 4096};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    try {
      save_safetensors<float>(path, {{"w", Tensor<float>::full({1 << 20}, 2.0f)}});
    } catch (const IoError& e) {
      ::_exit(std::string(e.what()).find("write failed: File too large") != std::string::npos ? 0 : 3);
    }
    ::_exit(4);  // the save claimed success
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(slurp(path) == before);
  CHECK(s.entries() == 1);  // the temporary file was removed
  ditto_test::require_equal(SafetensorsFile(path).get<float>("w"), old_t);
  // a successful save replaces the file and keeps its permissions; through a symbolic link the
  // file it names is replaced, and the link stays a link
  std::filesystem::create_symlink(path, s.path("link.safetensors"));
  save_safetensors<float>(s.path("link.safetensors"), {{"w", Tensor<float>::full({2}, 3.0f)}});
  CHECK(std::filesystem::is_symlink(s.path("link.safetensors")));
  CHECK(SafetensorsFile(path).get<float>("w")[1] == 3.0f);
  struct stat st {};
  ::stat(path.c_str(), &st);
  CHECK((st.st_mode & 0777) == 0640);
}

TEST_CASE("a FIFO is refused at once instead of blocking forever", "[hostile][io]") {
  const Scratch s;
  const std::string fifo = s.path("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_THROWS_WITH(SafetensorsFile(fifo), Catch::Contains("is not a regular file"));
  CHECK_THROWS_WITH(read_file(fifo, "--config", 1 << 20), Catch::Contains("--config: is not a regular file"));
  CHECK_THROWS_WITH(read_image(fifo), Catch::Contains("is not a regular file"));
  CHECK_THROWS_WITH(write_png(fifo, Tensor<float>({1, 2, 2})), Catch::Contains("is a FIFO that nothing reads"));  // not a hang
  CHECK_THROWS_WITH(read_file(s.dir.string(), "x", 1 << 20), Catch::Contains("is a directory"));
  spit(s.path("big.json"), std::string(100, ' '));
  CHECK_THROWS_WITH(read_file(s.path("big.json"), "x", 10), Catch::Contains("has 100 bytes; at most 10"));
}

TEST_CASE("read_image takes complete PNG and JPEG files of a bounded size only", "[hostile][image]") {
  const Scratch s;
  Generator gen(3);
  Tensor<float> img = gen.uniform<float>({3, 16, 24}, -1, 1);
  write_png(s.path("a.png"), img);
  const std::string png = slurp(s.path("a.png"));
  CHECK(read_image(s.path("a.png")).shape() == Shape{3, 16, 24});
  std::string jpg;
  std::vector<unsigned char> rgb(16 * 24 * 3, 128);
  stbi_write_jpg_to_func([](void* c, void* d, int n) { static_cast<std::string*>(c)->append(static_cast<char*>(d), n); }, &jpg,
                         24, 16, 3, rgb.data(), 90);
  spit(s.path("a.jpg"), jpg);
  CHECK(read_image(s.path("a.jpg"), 1).shape() == Shape{1, 16, 24});
  // every truncation is refused (stb decodes some with the missing rows made up)
  for (std::size_t n : {png.size() - 1, png.size() - 12, png.size() / 2, std::size_t{40}, std::size_t{9}}) {
    spit(s.path("t.png"), png.substr(0, n));
    INFO("PNG cut to " << n << " bytes");
    CHECK_THROWS_AS(read_image(s.path("t.png")), IoError);
  }
  for (std::size_t n : {jpg.size() - 1, jpg.size() - 2, jpg.size() * 3 / 4, jpg.size() / 2, std::size_t{200}}) {
    spit(s.path("t.jpg"), jpg.substr(0, n));
    INFO("JPEG cut to " << n << " bytes");
    CHECK_THROWS_WITH(read_image(s.path("t.jpg")), Catch::Contains("read_image(\"" + s.path("t.jpg") + "\")") &&
                                                        (Catch::Contains("truncated") || Catch::Contains("header")));
  }
  // other formats are refused by their signature (BMP, PPM, GIF, PSD)
  for (const std::string& head : {std::string("BM\x36\x00\x00\x00", 6), std::string("P6\n2 2\n255\n"), std::string("GIF89a"),
                                  std::string("8BPS\x00\x01")}) {
    spit(s.path("other"), head + std::string(64, '\x01'));
    CHECK_THROWS_WITH(read_image(s.path("other")), Catch::Contains("not a PNG or JPEG file"));
  }
  // a header claiming 20000 x 20000 is refused before decoding; a smaller bound refuses this one
  std::string claim = png;
  const unsigned char dims[8] = {0, 0, 0x4e, 0x20, 0, 0, 0x4e, 0x20};  // IHDR width and height, big-endian
  std::memcpy(claim.data() + 16, dims, 8);
  spit(s.path("claim.png"), claim);
  CHECK_THROWS_WITH(read_image(s.path("claim.png")), Catch::Contains("claims 20000 x 20000 pixels; at most 67108864"));
  std::memset(claim.data() + 16, 0xFF, 8);  // 2^32 - 1 squared would overflow a product
  spit(s.path("claim.png"), claim);
  CHECK_THROWS_WITH(read_image(s.path("claim.png")), Catch::Contains("claims 4294967295 x 4294967295 pixels"));
  CHECK_THROWS_WITH(read_image(s.path("a.png"), 3, 100), Catch::Contains("claims 24 x 16 pixels"));
}

TEST_CASE("every model refuses an empty batch with one message", "[hostile][models]") {
  const std::string says = "the batch is empty";
  {
    DiT<float> m(DiTConfig::from_json({{"input_size", 8}, {"hidden_size", 32}, {"depth", 1}, {"num_heads", 2}, {"num_classes", 4}}));
    CHECK_THROWS_WITH(m.forward(Tensor<float>({0, 4, 8, 8}), Tensor<float>({0}), Tensor<std::int64_t>({0})), Catch::Contains(says));
  }
  {
    ViT<float> m(ViTConfig::from_json({{"img_size", 16}, {"patch_size", 8}, {"embed_dim", 16}, {"depth", 1}, {"num_heads", 2},
                                       {"num_classes", 3}, {"dynamic_img_size", true}}));
    // batch 0 claiming 2^30 x 2^30: refused before the position table is resampled to it
    CHECK_THROWS_WITH(m.forward(Tensor<float>({0, 3, std::int64_t{1} << 30, std::int64_t{1} << 30})), Catch::Contains(says));
  }
  {
    ViViT<float> m(ViViTConfig::from_json({{"img_size", 8}, {"patch_size", 4}, {"num_frames", 2}, {"embed_dim", 16}, {"depth", 1},
                                           {"num_heads", 2}, {"num_classes", 3}}));
    CHECK_THROWS_WITH(m.forward(Tensor<float>({0, 3, 2, 8, 8})), Catch::Contains(says));
  }
  {
    UViT<float> m(UViTConfig::from_json({{"img_size", 8}, {"patch_size", 2}, {"embed_dim", 16}, {"depth", 2}, {"num_heads", 2}}));
    CHECK_THROWS_WITH(m.forward(Tensor<float>({0, 3, 8, 8}), Tensor<float>({0})), Catch::Contains(says));
  }
  {
    UNet<float> m(UNetConfig::from_json({{"image_size", 16}, {"in_channels", 3}, {"model_channels", 32}, {"out_channels", 3},
                                         {"num_res_blocks", 1}, {"attention_resolutions", {2}}, {"channel_mult", {1, 2}}}));
    CHECK_THROWS_WITH(m.forward(Tensor<float>({0, 3, 16, 16}), Tensor<float>({0})), Catch::Contains(says));  // SIGFPE before
  }
  {
    Latte<float> m(LatteConfig::from_json({{"input_size", 8}, {"hidden_size", 16}, {"depth", 2}, {"num_heads", 2}, {"num_frames", 2},
                                           {"in_channels", 3}}));
    CHECK_THROWS_WITH(m.forward(Tensor<float>({0, 2, 3, 8, 8}), Tensor<float>({0})), Catch::Contains(says));
    CHECK_THROWS_WITH(m.forward(Tensor<float>({1, 2, 3, 8, 8}), Tensor<float>({1}), nullptr, {}, std::numeric_limits<std::int64_t>::max()),
                      Catch::Contains("use_image_num must be from 0 to 2^31"));
  }
  {
    AutoencoderKL<float> m(VAEConfig::from_json(
        {{"embed_dim", 4},
         {"ddconfig", {{"double_z", true}, {"z_channels", 4}, {"resolution", 16}, {"in_channels", 3}, {"out_ch", 3}, {"ch", 32},
                       {"ch_mult", {1, 2}}, {"num_res_blocks", 1}, {"attn_resolutions", nlohmann::json::array()}}}}));
    CHECK_THROWS_WITH(m.encode(Tensor<float>({0, 3, 16384, 16384})), Catch::Contains(says));  // asked for 51 GB before
    CHECK_THROWS_WITH(m.decode(Tensor<float>({0, 4, 2048, 2048})), Catch::Contains(says));
    CHECK_THROWS_WITH(m.decode_tiled(Tensor<float>({0, 4, 2048, 2048})), Catch::Contains(says));
  }
}

TEST_CASE("sizes from outside are bounded before any arithmetic or allocation", "[hostile][models]") {
  // U-Net / autoencoder levels: 2^level is taken of each (2^64 and beyond was undefined)
  nlohmann::json unet = {{"image_size", 16}, {"in_channels", 3}, {"model_channels", 32}, {"out_channels", 3}, {"num_res_blocks", 1},
                         {"attention_resolutions", nlohmann::json::array()}, {"channel_mult", std::vector<int>(64, 1)}};
  CHECK_THROWS_WITH(UNetConfig::from_json(unet), Catch::Contains("channel_mult must have 1 to 32 entries, got 64"));
  nlohmann::json vae = {{"embed_dim", 4},
                        {"ddconfig", {{"double_z", true}, {"z_channels", 4}, {"resolution", 16}, {"in_channels", 3}, {"out_ch", 3},
                                      {"ch", 32}, {"ch_mult", std::vector<int>(65, 1)}, {"num_res_blocks", 1},
                                      {"attn_resolutions", nlohmann::json::array()}}}};
  CHECK_THROWS_WITH(VAEConfig::from_json(vae), Catch::Contains("ch_mult must have 1 to 32 entries"));
  // weights counted whole (the patch embedding too): 2^26 input channels are terabytes
  CHECK_THROWS_AS(DiTConfig::from_json({{"input_size", 8}, {"hidden_size", 1152}, {"depth", 1}, {"num_heads", 16},
                                        {"in_channels", 1 << 26}}),
                  MemoryError);
  // a config the weights file cannot describe is refused before its model is allocated
  const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  bytes += header + std::string(4, '\0');
  const auto tiny = SafetensorsFile::from_bytes(bytes.data(), bytes.size(), "tiny.safetensors");
  ForwardRequest r;
  r.model = "dit";
  r.config = {{"input_size", 8}, {"hidden_size", 32}, {"depth", 1}, {"num_heads", 2}, {"num_classes", 4}, {"in_channels", 1 << 20}};
  r.weights = &tiny;
  r.inputs = &tiny;
  CHECK_THROWS_WITH(run_forward(r), Catch::Contains("\"tiny.safetensors\" holds 1 values, but the config's model has at least"));
  // resampling to a size that cannot exist: a ditto error, not std::bad_alloc
  CHECK_THROWS_AS(nn::interpolate_bicubic_antialias(Tensor<float>({1, 1, 14, 14}), std::int64_t{1} << 30, std::int64_t{1} << 30),
                  ditto::Error);
  CHECK(nn::interpolate_bicubic_antialias(Tensor<float>({0, 1, 14, 14}), std::int64_t{1} << 30, std::int64_t{1} << 30).numel() == 0);
  // grids: padding near 2^62 would overflow the grid's size
  CHECK_THROWS_WITH(make_grid(Tensor<float>({2, 3, 4, 4}), 2, std::int64_t{1} << 62), Catch::Contains("0 <= padding <= 2^20"));
}

TEST_CASE("a load that fails leaves every tensor of the block as it was", "[hostile][io]") {
  const Scratch s;
  nn::Linear<float> lin(3, 4);
  lin.weight = Tensor<float>::full({4, 3}, 1.0f);
  // the weight matches (and comes first), the bias does not: nothing may be assigned
  save_safetensors<float>(s.path("w.safetensors"), {{"weight", Tensor<float>::full({4, 3}, 7.0f)}, {"bias", Tensor<float>({5})}});
  CHECK_THROWS_WITH(nn::load<float>(lin, s.path("w.safetensors")), Catch::Contains("bias: file [5], model [4]"));
  CHECK(lin.weight[0] == 1.0f);
  const nn::ConversionTable table = {{"weight", {"w"}}};
  save_safetensors<float>(s.path("c.safetensors"), {{"w", Tensor<float>::full({4, 3}, 7.0f)}});
  CHECK_THROWS_WITH(nn::load<float>(lin, SafetensorsFile(s.path("c.safetensors")), table), Catch::Contains("1 missing (bias)"));
  CHECK(lin.weight[0] == 1.0f);
}

TEST_CASE("Latte's label errors name Latte" " and image frames are bounded", "[hostile][models]") {
  Latte<float> m(LatteConfig::from_json({{"input_size", 8}, {"hidden_size", 16}, {"depth", 2}, {"num_heads", 2}, {"num_frames", 2},
                                         {"in_channels", 3}, {"extras", 2}, {"num_classes", 3}}));
  const Tensor<std::int64_t> y({1}, std::vector<std::int64_t>{7});
  CHECK_THROWS_WITH(m.forward(Tensor<float>({1, 2, 3, 8, 8}), Tensor<float>({1}), &y), Catch::StartsWith("Latte: label 7 is outside [0, 4)"));
}
