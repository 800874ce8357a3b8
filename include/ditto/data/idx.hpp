// IDX files, the format of MNIST and Fashion-MNIST, plain or gzip-compressed, read with strict
// checks: a file is either read whole and exactly as its header says, or refused with an
// IoError naming the file, what was expected and what was found.
//
//   data::IdxArray a = data::read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
//   a.dims;    // {10000, 28, 28}
//   a.values;  // 7 840 000 bytes, row-major
//
// The format (yann.lecun.com/exdb/mnist): two zero bytes, a type byte, a byte with the number of
// dimensions, each dimension as a big-endian 32-bit integer, then the values, row-major. The
// datasets store unsigned bytes (type 0x08), the only type read here. Checked before anything is
// allocated: the two zero bytes, the type, 1 to 8 dimensions, and a value count within
// `max_bytes`; then exactly that many value bytes must follow, and nothing after them (a
// truncated file, a trailing byte and a corrupt gzip stream are all refused; bytes after the end
// of a gzip stream that are not another gzip stream are skipped by zlib, as gunzip skips them).
//
// Gzip needs zlib: CMake links it and defines DITTO_USE_ZLIB when it finds it (Debian's
// zlib1g-dev). Without it plain IDX files still read and a gzipped one is refused with a message
// saying so. (gzread reads an uncompressed file as it is, so one path serves both.)
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <unistd.h>

#if defined(DITTO_USE_ZLIB)
#include <zlib.h>
#endif

#include "../core/error.hpp"
#include "../io/file.hpp"

namespace ditto::data {

struct IdxArray {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> values;  // prod(dims) bytes, row-major
  std::int64_t count() const {
    std::int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
};

namespace detail {
using ditto::detail::cat;

// A byte source over an open descriptor: zlib's gzip reader where DITTO_USE_ZLIB is set
// (transparent for uncompressed files), else plain reads that refuse a gzip stream.
class IdxSource {
 public:
  IdxSource(int fd, std::string what) : what_(std::move(what)) {
#if defined(DITTO_USE_ZLIB)
    gz_ = gzdopen(fd, "rb");
    if (!gz_) {
      ::close(fd);
      throw IoError(cat(what_, ": cannot start reading (zlib gzdopen failed)"));
    }
    gzbuffer(gz_, 1 << 17);
#else
    fd_ = fd;
#endif
  }
  IdxSource(const IdxSource&) = delete;
  IdxSource& operator=(const IdxSource&) = delete;
  ~IdxSource() {
#if defined(DITTO_USE_ZLIB)
    if (gz_) gzclose(gz_);
#else
    if (fd_ >= 0) ::close(fd_);
#endif
  }
  // Reads up to n bytes; returns how many (0 at the end). A read or decompression error throws.
  std::size_t read(void* buf, std::size_t n) {
    std::size_t got = 0;
    auto* p = static_cast<unsigned char*>(buf);
    while (got < n) {
#if defined(DITTO_USE_ZLIB)
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, std::size_t{1} << 30));
      const int r = gzread(gz_, p + got, chunk);
      if (r < 0) {
        int code = 0;
        const char* msg = gzerror(gz_, &code);
        if (code == Z_ERRNO) throw IoError(cat(what_, ": read failed: ", ditto::detail::errno_text(errno)));
        throw IoError(cat(what_, ": not a valid gzip stream (zlib: ", msg ? msg : "error", ")"));
      }
#else
      const ssize_t r = ::read(fd_, p + got, std::min<std::size_t>(n - got, std::size_t{1} << 30));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw IoError(cat(what_, ": read failed: ", ditto::detail::errno_text(errno)));
      if (first_ && got == 0 && r >= 2 && p[0] == 0x1f && p[1] == 0x8b)
        throw IoError(cat(what_, ": is gzip-compressed, and this build has no zlib (ditto defines DITTO_USE_ZLIB and links zlib when CMake ",
                          "finds it: apt-get install zlib1g-dev); decompress it with gunzip, or build with zlib"));
      first_ = false;
#endif
      if (r == 0) break;
      got += static_cast<std::size_t>(r);
    }
#if defined(DITTO_USE_ZLIB)
    if (got < n) {  // the end of the stream: a gzip stream cut short shows up here, not as an error
      int code = 0;
      const char* msg = gzerror(gz_, &code);
      if (code != Z_OK && code != Z_BUF_ERROR)
        throw IoError(cat(what_, ": not a valid gzip stream (zlib: ", msg ? msg : "error", ")"));
      if (code == Z_BUF_ERROR) throw IoError(cat(what_, ": the gzip stream is truncated (it ends inside compressed data)"));
    }
#endif
    return got;
  }

 private:
  std::string what_;
#if defined(DITTO_USE_ZLIB)
  gzFile gz_ = nullptr;
#else
  int fd_ = -1;
  bool first_ = true;
#endif
};
}  // namespace detail

// Reads an IDX file of unsigned bytes. `max_bytes` bounds the values (checked from the header,
// before allocating): Fashion-MNIST's largest file holds 47 MB.
inline IdxArray read_idx(const std::string& path, std::uint64_t max_bytes = std::uint64_t{1} << 30) {
  using detail::cat;
  const std::string what = cat("IDX file \"", path, "\"");
  detail::IdxSource in(ditto::detail::open_regular_file(path, what), what);
  std::array<std::uint8_t, 4> magic{};
  const std::size_t got = in.read(magic.data(), 4);
  if (got < 4) throw IoError(cat(what, ": ", got, " bytes; expected at least the 4-byte header (0, 0, type, dimensions)"));
  if (magic[0] != 0 || magic[1] != 0)
    throw IoError(cat(what, ": is not an IDX file: its first two bytes are ", int(magic[0]), ", ", int(magic[1]), "; expected 0, 0"));
  if (magic[2] != 0x08) {
    char type[8];
    std::snprintf(type, sizeof type, "0x%02x", magic[2]);
    throw IoError(cat(what, ": value type ", type, "; expected 0x08 (unsigned bytes, the only type MNIST-style datasets use)"));
  }
  const int nd = magic[3];
  if (nd < 1 || nd > 8) throw IoError(cat(what, ": ", nd, " dimensions; expected 1 to 8"));
  IdxArray a;
  std::uint64_t count = 1;
  bool over = false;  // the value count passes max_bytes
  for (int i = 0; i < nd; ++i) {
    std::array<std::uint8_t, 4> b{};
    if (in.read(b.data(), 4) < 4) throw IoError(cat(what, ": ends inside its header (dimension ", i, " of ", nd, ")"));
    const std::uint64_t d = (std::uint64_t{b[0]} << 24) | (std::uint64_t{b[1]} << 16) | (std::uint64_t{b[2]} << 8) | b[3];
    a.dims.push_back(static_cast<std::int64_t>(d));
    if (d == 0) count = 0, over = false;
    else if (!over && count > max_bytes / d) over = true;  // checked before multiplying: never overflows
    else if (!over) count *= d;
  }
  if (over) {
    std::string shape;
    for (std::size_t i = 0; i < a.dims.size(); ++i) shape += (i ? " x " : "") + std::to_string(a.dims[i]);
    throw IoError(cat(what, ": its header declares ", shape, " values, more than the limit of ", max_bytes, " bytes"));
  }
  a.values.resize(static_cast<std::size_t>(count));
  const std::size_t values = in.read(a.values.data(), a.values.size());
  if (values < a.values.size())
    throw IoError(cat(what, ": truncated: its header declares ", count, " value bytes, the file holds ", values));
  std::uint8_t extra = 0;
  if (in.read(&extra, 1) != 0) throw IoError(cat(what, ": holds more bytes than its header declares (", count, " values); expected nothing after them"));
  return a;
}

}  // namespace ditto::data
