// data/: IDX files (plain and gzipped; every way a file can be wrong), Fashion-MNIST from Debian's
// package, and the resumable shuffled batches.
#include <filesystem>
#include <fstream>
#include <set>

#if defined(DITTO_USE_ZLIB)
#include <zlib.h>
#endif

#include <ditto/ditto.hpp>

#include "helpers.hpp"

using namespace ditto;

namespace {
std::string temp_dir() {
  const auto d = std::filesystem::temp_directory_path() / ("ditto_data_" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return d.string();
}
std::vector<std::uint8_t> idx_bytes(std::vector<std::uint32_t> dims, std::uint8_t type = 0x08, std::int64_t values = -1) {
  std::vector<std::uint8_t> b = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  std::int64_t n = 1;
  for (auto d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(d >> s));
    n *= d;
  }
  if (values >= 0) n = values;
  for (std::int64_t i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(i * 7 % 251));
  return b;
}
std::string write(const std::string& path, const std::vector<std::uint8_t>& b) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return path;
}
#if defined(DITTO_USE_ZLIB)
std::string write_gz(const std::string& path, const std::vector<std::uint8_t>& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f);
  REQUIRE(gzwrite(f, b.data(), static_cast<unsigned>(b.size())) == static_cast<int>(b.size()));
  gzclose(f);
  return path;
}
#endif
}  // namespace

TEST_CASE("IDX files read exactly as their header says, plain and gzipped", "[data][idx]") {
  const std::string dir = temp_dir();
  const auto bytes = idx_bytes({3, 4, 5});
  std::vector<std::string> paths = {write(dir + "/a.idx", bytes)};
#if defined(DITTO_USE_ZLIB)
  paths.push_back(write_gz(dir + "/a.idx.gz", bytes));
#endif
  for (const auto& p : paths) {
    INFO(p);
    const auto a = data::read_idx(p);
    CHECK(a.dims == std::vector<std::int64_t>{3, 4, 5});
    REQUIRE(a.values.size() == 60);
    for (std::size_t i = 0; i < 60; ++i) CHECK(a.values[i] == static_cast<std::uint8_t>(i * 7 % 251));
  }
  const auto one = data::read_idx(write(dir + "/b.idx", idx_bytes({2})));  // 1-D (labels)
  CHECK(one.dims == std::vector<std::int64_t>{2});
  std::filesystem::remove_all(dir);
}

TEST_CASE("IDX files that are wrong in any way are refused, naming what was expected", "[data][idx][hostile]") {
  const std::string dir = temp_dir();
  auto refused = [&](const std::string& name, const std::vector<std::uint8_t>& b, const std::string& says) {
    INFO(name);
    CHECK_THROWS_WITH(data::read_idx(write(dir + "/" + name, b)), Catch::Contains(says));
  };
  refused("empty", {}, "expected at least the 4-byte header");
  refused("magic", {1, 0, 8, 1, 0, 0, 0, 1, 5}, "its first two bytes are 1, 0; expected 0, 0");
  refused("type", idx_bytes({2, 2}, 0x0d), "value type 0x0d; expected 0x08");
  refused("nodims", {0, 0, 8, 0}, "0 dimensions; expected 1 to 8");
  refused("ninedims", {0, 0, 8, 9}, "9 dimensions; expected 1 to 8");
  refused("header", {0, 0, 8, 3, 0, 0, 0, 2, 0, 0}, "ends inside its header (dimension 1 of 3)");
  refused("truncated", idx_bytes({10, 10}, 0x08, 99), "truncated: its header declares 100 value bytes, the file holds 99");
  refused("trailing", idx_bytes({10, 10}, 0x08, 101), "holds more bytes than its header declares (100 values)");
  // a header declaring (2^32 - 1)^3 values: refused from the header, before any allocation
  refused("huge", {0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "more than the limit of");
  CHECK_THROWS_WITH(data::read_idx(write(dir + "/limit", idx_bytes({10, 10})), 99), Catch::Contains("10 x 10 values, more than the limit of 99 bytes"));
  CHECK_THROWS_WITH(data::read_idx(dir + "/missing.idx"), Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(data::read_idx(dir), Catch::Contains("is a directory"));
#if defined(DITTO_USE_ZLIB)
  // gzip: a stream cut short, and one with a flipped byte in its compressed data
  const std::string gz = write_gz(dir + "/ok.gz", idx_bytes({50, 50}));
  std::ifstream in(gz, std::ios::binary);
  std::vector<std::uint8_t> z((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  refused("cut.gz", std::vector<std::uint8_t>(z.begin(), z.begin() + static_cast<std::ptrdiff_t>(z.size() / 2)), "truncated");
  auto flipped = z;
  flipped[z.size() / 2] ^= 0x55;
  flipped[z.size() / 2 + 1] ^= 0x55;
  CHECK_THROWS_AS(data::read_idx(write(dir + "/flipped.gz", flipped)), IoError);
  auto crc = z;
  crc[z.size() - 6] ^= 1;  // the CRC-32 of the trailer
  CHECK_THROWS_WITH(data::read_idx(write(dir + "/crc.gz", crc)), Catch::Contains("not a valid gzip stream"));
#endif
  std::filesystem::remove_all(dir);
}

TEST_CASE("Fashion-MNIST: a folder of the four files, checked, and a missing one names the Debian package", "[data][fashion]") {
  const std::string dir = temp_dir();
  // a small stand-in folder in the dataset's layout
  auto labels = idx_bytes({12});
  for (std::size_t i = 8; i < labels.size(); ++i) labels[i] = static_cast<std::uint8_t>((i - 8) % 10);
#if defined(DITTO_USE_ZLIB)
  write_gz(dir + "/t10k-images-idx3-ubyte.gz", idx_bytes({12, 28, 28}));
  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", labels);
  const auto d = data::load_fashion_mnist("test", dir);
  CHECK(d.images.shape() == Shape{12, 28, 28});
  CHECK(d.size() == 12);
  CHECK(d.labels[11] == 1);
  auto [x, y] = data::image_batch(d, {3, 0}, -1.0f, 1.0f);
  CHECK(x.shape() == Shape{2, 1, 28, 28});
  CHECK(y[0] == 3);
  CHECK(x[0] == Approx(-1.0f + 2.0f * static_cast<float>(d.images[3 * 784]) / 255.0f));
  CHECK_THROWS_AS(data::image_batch(d, {12}), ArgumentError);
  // wrong shapes and labels
  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", idx_bytes({11}));
  CHECK_THROWS_WITH(data::load_fashion_mnist("test", dir), Catch::Contains("expected (12) labels, one per image"));
  auto bad = labels;
  bad[10] = 10;
  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", bad);
  CHECK_THROWS_WITH(data::load_fashion_mnist("test", dir), Catch::Contains("label 10 at index 2; expected a class from 0 to 9"));
  write_gz(dir + "/t10k-images-idx3-ubyte.gz", idx_bytes({12, 28, 27}));
  CHECK_THROWS_WITH(data::load_fashion_mnist("test", dir), Catch::Contains("expected (N, 28, 28) images"));
#endif
  CHECK_THROWS_WITH(data::load_fashion_mnist("train", dir), Catch::Contains("train-images-idx3-ubyte.gz not found; install Debian's dataset-fashion-mnist"));
  CHECK_THROWS_WITH(data::load_fashion_mnist("val", dir), Catch::Contains("expected \"train\" or \"test\""));
  std::filesystem::remove_all(dir);
  CHECK(std::string(data::fashion_mnist_classes[9]) == "Ankle boot");
}

TEST_CASE("Fashion-MNIST from Debian's dataset-fashion-mnist: 60 000 + 10 000 pictures, 10 balanced classes", "[data][fashion][dataset]") {
  // tools/install-deps.sh installs the package; CI runs it first.
  const std::string root = data::fashion_mnist_root();
  if (!std::filesystem::exists(root + "/t10k-images-idx3-ubyte.gz")) {
    FAIL("Fashion-MNIST is not installed at " << root << ": apt-get install dataset-fashion-mnist (tools/install-deps.sh)");
  }
  for (auto [split, n] : {std::pair<const char*, std::int64_t>{"test", 10000}, {"train", 60000}}) {
    INFO(split);
    const auto d = data::load_fashion_mnist(split);
    CHECK(d.images.shape() == Shape{n, 28, 28});
    std::vector<std::int64_t> per(10, 0);
    for (auto v : d.labels) ++per[static_cast<std::size_t>(v)];
    for (auto c : per) CHECK(c == n / 10);  // the dataset is balanced
    // pictures, not noise: a dark background around a brighter middle
    double corner = 0, middle = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      corner += d.images[i * 784];
      middle += d.images[i * 784 + 14 * 28 + 14];
    }
    CHECK(corner / static_cast<double>(n) < 5.0);
    CHECK(middle / static_cast<double>(n) > 60.0);
  }
}

TEST_CASE("shuffled batches: every item once an epoch, seeded, and a restored state continues exactly", "[data][loader]") {
  data::ShuffledBatches a(103, 10, 7);  // drop_last: 10 batches an epoch, 3 items left out
  CHECK(a.batches_per_epoch() == 10);
  std::set<std::int64_t> seen;
  for (int i = 0; i < 10; ++i)
    for (auto v : a.next()) CHECK(seen.insert(v).second);  // no item twice in an epoch
  CHECK(seen.size() == 100);
  CHECK(a.state() == data::ShuffledBatches::State{0, 100});
  const auto first_order = a.order();
  const auto b11 = a.next();  // the 11th batch opens epoch 1, in another order
  CHECK(a.state() == data::ShuffledBatches::State{1, 10});
  CHECK(a.order() != first_order);
  // the same seed gives the same batches; another seed, others
  data::ShuffledBatches same(103, 10, 7), other(103, 10, 8);
  for (int i = 0; i < 10; ++i) (void)same.next();
  CHECK(same.next() == b11);
  CHECK(other.order() != first_order);
  // resume: 25 batches straight equal 13, a saved state restored into a new object, then 12
  data::ShuffledBatches straight(103, 10, 7), before(103, 10, 7);
  std::vector<std::vector<std::int64_t>> want, got;
  for (int i = 0; i < 25; ++i) want.push_back(straight.next());
  for (int i = 0; i < 13; ++i) got.push_back(before.next());
  data::ShuffledBatches after(103, 10, 7);
  after.restore(before.state());
  for (int i = 0; i < 12; ++i) got.push_back(after.next());
  CHECK(got == want);
  // without drop_last the epoch's last batch is short
  data::ShuffledBatches keep(23, 10, 1, false);
  CHECK(keep.next().size() == 10);
  CHECK(keep.next().size() == 10);
  CHECK(keep.next().size() == 3);
  CHECK(keep.next().size() == 10);
  // bad arguments
  CHECK_THROWS_AS(data::ShuffledBatches(0, 1, 0), ArgumentError);
  CHECK_THROWS_AS(data::ShuffledBatches(5, 0, 0), ArgumentError);
  CHECK_THROWS_WITH(data::ShuffledBatches(5, 6, 0), Catch::Contains("drop_last leaves no batch"));
  CHECK_THROWS_AS(a.restore({0, 104}), ArgumentError);
  CHECK_THROWS_AS(a.restore({-1, 0}), ArgumentError);
}

TEST_CASE("ImageFolder: torchvision's order, DiT's center_crop_arr with Pillow's bytes", "[data]") {
  const auto want = ditto_test::load_json("image_folder_expected.json");
  const std::string root = std::string(DITTO_FIXTURES) + "/image_folder";
  const auto f = data::load_image_folder(root, want["size"].get<std::int64_t>());
  CHECK(f.classes == want["classes"].get<std::vector<std::string>>());
  REQUIRE(f.files.size() == want["pictures"].size());
  REQUIRE(f.set.images.shape() == Shape{static_cast<std::int64_t>(f.files.size()), 3, 16, 16});
  int compared = 0;
  for (std::size_t i = 0; i < f.files.size(); ++i) {
    const auto& p = want["pictures"][i];
    INFO(p["file"]);
    CHECK(f.files[i] == root + "/" + p["file"].get<std::string>());
    CHECK(f.set.labels[static_cast<std::int64_t>(i)] == p["label"].get<std::int64_t>());
    if (!p.contains("chw")) continue;
    const auto chw = p["chw"].get<std::vector<int>>();
    int differ = 0;
    for (std::size_t k = 0; k < chw.size(); ++k) differ += f.set.images[static_cast<std::int64_t>(i * chw.size() + k)] != chw[k];
    CHECK(differ == 0);  // every byte as Pillow's BOX / BICUBIC resizes make it
    ++compared;
  }
  CHECK(compared == 5);
  // the flip, at batch time: the last column becomes the first
  const auto [x, y] = data::picture_batch(f.set, {1, 1}, {false, true});
  CHECK(x(0, 2, 5, 0) == x(1, 2, 5, 15));
  CHECK(x(0, 0, 3, 15) == x(1, 0, 3, 0));
  CHECK(y[0] == f.set.labels[1]);
  CHECK(x(0, 1, 2, 3) == -1.0f + 2.0f / 255.0f * f.set.images[(1 * 3 + 1) * 256 + 2 * 16 + 3]);

  // torchvision's RandomCrop(16, padding=P): pad every side with the fill, then cut 16 x 16 at
  // (top, left); compared with that, written out plainly on a padded copy
  const std::int64_t P = 3;
  const std::vector<std::pair<std::int64_t, std::int64_t>> offsets = {{P, P}, {0, 2 * P}, {5, 1}};
  const auto [xb, yb] = data::picture_batch(f.set, {0, 1, 2}, {false, false, false});
  Tensor<float> cropped = xb.clone();
  data::random_crop(cropped, offsets, P, -1.0f);
  std::int64_t wrong = 0;
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t c = 0; c < 3; ++c) {
      std::vector<float> padded((16 + 2 * P) * (16 + 2 * P), -1.0f);
      for (std::int64_t r = 0; r < 16; ++r)
        for (std::int64_t q = 0; q < 16; ++q) padded[static_cast<std::size_t>((r + P) * (16 + 2 * P) + q + P)] = xb(b, c, r, q);
      const auto [top, left] = offsets[static_cast<std::size_t>(b)];
      for (std::int64_t r = 0; r < 16; ++r)
        for (std::int64_t q = 0; q < 16; ++q) wrong += cropped(b, c, r, q) != padded[static_cast<std::size_t>((r + top) * (16 + 2 * P) + q + left)];
    }
  CHECK(wrong == 0);
  CHECK(cropped(1, 0, 0, 15) == -1.0f);  // (top 0, left 2P): the top rows and the right columns are fill
  CHECK(cropped(1, 0, 3, 12) == xb(1, 0, 0, 15));
  const Tensor<float> before = cropped.clone();
  CHECK_THROWS_WITH(data::random_crop(cropped, {{0, 0}, {1, 1}, {0, 7}}, P, -1.0f), Catch::Contains("offsets (0, 7) of picture 2 must be in [0, 6]"));
  CHECK(std::equal(before.data(), before.data() + before.numel(), cropped.data()));  // refused before pictures 0 and 1 moved
  CHECK_THROWS_WITH(data::random_crop(cropped, {{0, 0}}, P, -1.0f), Catch::Contains("3 pictures and 1 offsets"));

  // what is refused, naming it
  const auto tmp = std::filesystem::temp_directory_path() / ("ditto_folder_" + std::to_string(::getpid()));
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp / "empty");
  CHECK_THROWS_WITH(data::load_image_folder(tmp.string(), 16), Catch::Contains("\"empty\" holds no picture"));
  std::filesystem::copy_file(root + "/coats/y.png", tmp / "empty" / "y.png");
  std::ofstream(tmp / "empty" / "w.bmp") << "BM";
  CHECK_THROWS_WITH(data::load_image_folder(tmp.string(), 16), Catch::Contains("w.bmp has an image extension ditto does not decode"));
  std::filesystem::remove(tmp / "empty" / "w.bmp");
  std::ofstream(tmp / "empty" / "notes.txt") << "not a picture";  // not an image extension: skipped, as torchvision
  CHECK(data::load_image_folder(tmp.string(), 8).files.size() == 1);
  CHECK_THROWS_WITH(data::load_image_folder((tmp / "absent").string(), 16), Catch::Contains("not a folder"));
  CHECK_THROWS_WITH(data::load_image_folder((tmp / "empty").string(), 16), Catch::Contains("no class sub-folders"));
  std::filesystem::remove_all(tmp);
}

TEST_CASE("moving Fashion-MNIST: clips are pure functions of (seed, index) and move as labelled", "[data]") {
  const data::MovingFashionMnist set(data::load_fashion_mnist("test"), {}, 5, 1000);
  const auto a = set.clip(17), b = set.clip(17), c = set.clip(18);
  REQUIRE(a.frames.shape() == Shape{8, 1, 32, 32});
  CHECK(std::equal(a.frames.begin(), a.frames.end(), b.frames.begin()));
  CHECK(!std::equal(a.frames.begin(), a.frames.end(), c.frames.begin()));
  const auto other_seed = data::MovingFashionMnist(data::load_fashion_mnist("test"), {}, 6, 1000).clip(17).frames;
  CHECK(!std::equal(a.frames.begin(), a.frames.end(), other_seed.begin()));
  std::vector<int> classes(10), dirs(4), items(4);
  int moved_as_labelled = 0, counted = 0;
  for (std::int64_t i = 0; i < 400; ++i) {
    const auto k = set.clip(i);
    ++classes[static_cast<std::size_t>(k.cls)], ++dirs[static_cast<std::size_t>(k.direction)], ++items[static_cast<std::size_t>(k.items)];
    for (float v : k.frames) REQUIRE((v >= 0.0f && v <= 1.0f));
    if (k.items != 1) continue;
    // one item: its centroid moves 2 pixels in the labelled direction from frame 0 to 1 (unless it bounces)
    auto centroid = [&](std::int64_t t) {
      double s = 0, sx = 0, sy = 0;
      for (std::int64_t r = 0; r < 32; ++r)
        for (std::int64_t q = 0; q < 32; ++q) {
          const double v = k.frames(t, 0, r, q);
          s += v, sx += v * q, sy += v * r;
        }
      return std::pair{sx / s, sy / s};
    };
    const auto [x0, y0] = centroid(0);
    const auto [x1, y1] = centroid(1);
    const double want_x = std::array{2.0, 0.0, -2.0, 0.0}[static_cast<std::size_t>(k.direction)];
    const double want_y = std::array{0.0, 2.0, 0.0, -2.0}[static_cast<std::size_t>(k.direction)];
    ++counted;
    moved_as_labelled += std::abs(x1 - x0 - want_x) < 1.01 && std::abs(y1 - y0 - want_y) < 1.01;
  }
  for (int n : classes) CHECK(n > 20);  // about 40 each
  for (int n : dirs) CHECK(n > 70);     // about 100 each
  CHECK(items[0] == 0);
  CHECK(items[1] > 100);
  CHECK(items[3] > 100);
  INFO(moved_as_labelled << " of " << counted);
  CHECK(moved_as_labelled >= 0.8 * counted);
  // batches: Latte's (B, T, C, H, W) and the joint label
  const auto [x, y] = set.batch({17, 18}, -1.0f, 1.0f);
  CHECK(x.shape() == Shape{2, 8, 1, 32, 32});
  CHECK(y[0] == a.cls * 4 + a.direction);
  CHECK(x[100] == -1.0f + 2.0f * a.frames[100]);
  CHECK(std::string(data::direction_name(3, 4)) == "up");
  CHECK_THROWS_WITH(set.clip(1000), Catch::Contains("index 1000 of a set of 1000"));
  CHECK_THROWS_WITH(data::MovingFashionMnist(data::load_fashion_mnist("test"), {.item = 13}, 0, 10), Catch::Contains("item must divide 28"));
}
