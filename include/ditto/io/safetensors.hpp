// .safetensors files: the format upstream checkpoints are converted to (a little-endian u64
// header length, a JSON header naming each tensor's dtype, shape and byte range, then the data).
//
//   ditto::SafetensorsFile f("dit.safetensors");          // memory-mapped, validated
//   auto w = f.get<float>("x_embedder.proj.weight");       // converted from F16/BF16/F32/...
//   ditto::save_safetensors("out.safetensors", {{"out", y}}, {{"format", "pt"}});
//
// A file is untrusted input: every length, offset, dtype and shape is checked before any byte is
// read, as the reference implementation (huggingface/safetensors) does: the header must fit in
// the file and be at most 100 MB, be one JSON object without duplicate names (or duplicate keys
// inside an entry) and without NUL bytes, and its byte
// ranges must tile the data section exactly (no gaps, no overlaps); each range must hold exactly
// shape x dtype bytes. A violation throws IoError naming the tensor and what is wrong. Opening
// never blocks (a FIFO is refused), and saving is atomic (io/file.hpp).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "file.hpp"
#include "json.hpp"

namespace ditto {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    default: return 1;
  }
}
inline const char* dtype_name(DType t) {
  static const char* names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  return names[static_cast<int>(t)];
}
inline bool parse_dtype(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I64", DType::I64},
      {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},   {"U8", DType::U8},     {"BOOL", DType::BOOL}};
  for (const auto& [name, t] : table)
    if (s == name) {
      out = t;
      return true;
    }
  return false;
}

namespace detail {
// IEEE half -> float, subnormals, infinities and NaN included.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      std::uint32_t m = mant;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      bits = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float bf16_to_float(std::uint16_t b) {
  const std::uint32_t bits = std::uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
template <class Src, class T>
inline void convert_from(const unsigned char* p, T* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    Src v;
    std::memcpy(&v, p + i * static_cast<std::int64_t>(sizeof(Src)), sizeof(Src));  // no alignment assumed
    out[i] = static_cast<T>(v);
  }
}
}  // namespace detail

struct TensorInfo {
  DType dtype;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // byte range inside the data section
};

class SafetensorsFile {
 public:
  static constexpr std::uint64_t kMaxHeader = 100'000'000;  // as huggingface/safetensors

  // Memory-maps and validates a file: a 2.7 GB checkpoint costs no copy until tensors are read.
  explicit SafetensorsFile(const std::string& path) : path_(path) {
    struct stat st {};
    const int fd = detail::open_regular_file(path, detail::cat("safetensors \"", path, "\""), &st);  // never blocks
    size_ = static_cast<std::uint64_t>(st.st_size);
    if (size_ < 8) {
      ::close(fd);
      throw IoError(detail::cat("safetensors \"", path, "\": the file has ", size_,
                                " bytes, fewer than the 8-byte header length"));
    }
    void* p = ::mmap(nullptr, static_cast<std::size_t>(size_), PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw IoError(detail::cat("safetensors \"", path, "\": mmap failed: ", std::strerror(errno)));
    const std::size_t len = static_cast<std::size_t>(size_);
    base_ = std::shared_ptr<const unsigned char>(static_cast<const unsigned char*>(p),
                                                 [len](const unsigned char* q) { ::munmap(const_cast<unsigned char*>(q), len); });
    parse();
  }

  // Parses bytes already in memory (tests, fuzzing, network buffers); the bytes are copied.
  static SafetensorsFile from_bytes(const void* data, std::size_t size, std::string name = "<memory>") {
    SafetensorsFile f;
    f.path_ = std::move(name);
    auto copy = std::shared_ptr<unsigned char[]>(new unsigned char[size > 0 ? size : 1]);
    if (size) std::memcpy(copy.get(), data, size);
    f.base_ = std::shared_ptr<const unsigned char>(copy, copy.get());
    f.size_ = size;
    if (size < 8)
      throw IoError(detail::cat("safetensors \"", f.path_, "\": the file has ", size,
                                " bytes, fewer than the 8-byte header length"));
    f.parse();
    return f;
  }

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> v;
    for (const auto& kv : tensors_) v.push_back(kv.first);
    return v;
  }
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      std::string some;
      int k = 0;
      for (const auto& kv : tensors_) {
        if (k++ == 5) {
          some += ", ...";
          break;
        }
        some += (k > 1 ? ", " : "") + kv.first;
      }
      throw IoError(detail::cat("safetensors \"", path_, "\": no tensor named \"", name, "\" (the file has ", tensors_.size(),
                                ": ", some, ")"));
    }
    return it->second;
  }

  // The tensor converted to T (from any of the file's dtypes).
  template <class T = float>
  Tensor<T> get(const std::string& name) const {
    const TensorInfo& ti = info(name);
    Tensor<T> out = Tensor<T>::empty(ti.shape);
    const unsigned char* p = base_.get() + data_start_ + ti.begin;
    const std::int64_t n = out.numel();
    T* o = out.data();
    switch (ti.dtype) {
      case DType::F64: detail::convert_from<double>(p, o, n); break;
      case DType::F32: detail::convert_from<float>(p, o, n); break;
      case DType::I64: detail::convert_from<std::int64_t>(p, o, n); break;
      case DType::I32: detail::convert_from<std::int32_t>(p, o, n); break;
      case DType::I16: detail::convert_from<std::int16_t>(p, o, n); break;
      case DType::I8: detail::convert_from<std::int8_t>(p, o, n); break;
      case DType::U8: detail::convert_from<std::uint8_t>(p, o, n); break;
      case DType::BOOL:
        for (std::int64_t i = 0; i < n; ++i) o[i] = static_cast<T>(p[i] != 0);
        break;
      case DType::F16:
      case DType::BF16:
        for (std::int64_t i = 0; i < n; ++i) {
          std::uint16_t h;
          std::memcpy(&h, p + 2 * i, 2);
          o[i] = static_cast<T>(ti.dtype == DType::F16 ? detail::half_to_float(h) : detail::bf16_to_float(h));
        }
        break;
    }
    return out;
  }

 private:
  SafetensorsFile() = default;

  [[noreturn]] void fail(const std::string& why) const {
    throw IoError(detail::cat("safetensors \"", path_, "\": ", why));
  }

  void parse() {
    const unsigned char* b = base_.get();
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];  // little-endian
    if (n > kMaxHeader) fail(detail::cat("the header claims ", n, " bytes; at most ", kMaxHeader, " are allowed"));
    if (n > size_ - 8)
      fail(detail::cat("the header claims ", n, " bytes but the file has only ", size_ - 8, " after the length field"));
    const char* h = reinterpret_cast<const char*>(b + 8);
    // Nesting deeper than the format needs (object > entry > shape array) is refused before the
    // JSON parser sees it. A NUL byte is refused too: nlohmann's parser reads it as the end of
    // the input, so NUL padding would pass where the reference reader (serde_json) refuses it.
    if (const void* z = std::memchr(h, 0, static_cast<std::size_t>(n)))
      fail(detail::cat("the header holds a NUL byte at offset ", static_cast<const char*>(z) - h,
                       " (padding must be spaces)"));
    const int max_depth = json_nesting_depth(std::string_view(h, static_cast<std::size_t>(n)));
    if (max_depth > 3) fail(detail::cat("the header nests ", max_depth, " levels deep; the format has at most 3"));
    // Duplicate keys, at the top (tensor names) and inside an entry or __metadata__: JSON
    // parsers differ on which one wins, so the reference reader refuses them.
    std::set<std::string> seen, seen_inner;
    std::string duplicate;
    auto cb = [&](int d, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
      if (ev == nlohmann::json::parse_event_t::object_start && d == 1) seen_inner.clear();
      if (ev == nlohmann::json::parse_event_t::key && (d == 1 || d == 2) && duplicate.empty()) {
        const auto key = parsed.get<std::string>();
        if (!(d == 1 ? seen : seen_inner).insert(key).second) duplicate = d == 1 ? key : "an entry's key \"" + key + "\"";
      }
      return true;
    };
    nlohmann::json j = nlohmann::json::parse(h, h + n, cb, /*allow_exceptions=*/false);
    if (j.is_discarded()) fail("the header is not valid JSON");
    if (!duplicate.empty())
      fail(duplicate.rfind("an entry", 0) == 0 ? detail::cat("the header repeats ", duplicate, " inside one object")
                                               : detail::cat("the header names \"", duplicate, "\" twice"));
    if (!j.is_object()) fail(detail::cat("the header must be a JSON object, found ", j.type_name()));
    data_start_ = 8 + n;
    const std::uint64_t data_len = size_ - data_start_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (auto& [name, e] : j.items()) {
      if (name == "__metadata__") {
        if (!e.is_object()) fail("__metadata__ must be an object of strings");
        for (auto& [k, v] : e.items()) {
          if (!v.is_string()) fail(detail::cat("__metadata__[\"", k, "\"] must be a string, found ", v.type_name()));
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor \"" + name + "\": ";
      if (!e.is_object()) fail(where + "expected an object with dtype, shape and data_offsets");
      for (auto& [k, v] : e.items())
        if (k != "dtype" && k != "shape" && k != "data_offsets") fail(where + "unknown key \"" + k + "\"");
      if (!e.contains("dtype") || !e["dtype"].is_string()) fail(where + "missing dtype (a string such as \"F32\")");
      if (!e.contains("shape") || !e["shape"].is_array()) fail(where + "missing shape (an array of lengths)");
      if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
        fail(where + "data_offsets must be [begin, end]");
      TensorInfo ti;
      const std::string dt = e["dtype"].get<std::string>();
      if (!parse_dtype(dt, ti.dtype))
        fail(where + "unknown dtype \"" + dt + "\" (expected F64, F32, F16, BF16, I64, I32, I16, I8, U8 or BOOL)");
      std::uint64_t numel = 1;
      bool overflow = false;
      for (const auto& d : e["shape"]) {
        if (!d.is_number_unsigned()) fail(where + detail::cat("shape entries must be non-negative integers, found ", d.dump()));
        const std::uint64_t len = d.get<std::uint64_t>();
        if (len > (std::uint64_t{1} << 62)) overflow = true;
        else if (len != 0 && numel > (std::uint64_t{1} << 62) / len) overflow = true;
        else numel *= len;
        ti.shape.push_back(static_cast<std::int64_t>(std::min<std::uint64_t>(len, std::uint64_t{1} << 62)));
      }
      for (const auto& d : e["data_offsets"])
        if (!d.is_number_unsigned()) fail(where + "data_offsets must be non-negative integers");
      ti.begin = e["data_offsets"][0].get<std::uint64_t>();
      ti.end = e["data_offsets"][1].get<std::uint64_t>();
      if (ti.begin > ti.end) fail(where + detail::cat("data_offsets [", ti.begin, ", ", ti.end, "] end before they begin"));
      if (ti.end > data_len)
        fail(where + detail::cat("data_offsets [", ti.begin, ", ", ti.end, "] go past the data section of ", data_len,
                                 " bytes"));
      if (overflow || numel > (std::uint64_t{1} << 62) / dtype_size(ti.dtype) ||
          numel * dtype_size(ti.dtype) != ti.end - ti.begin)
        fail(where + detail::cat("shape ", shape_str(ti.shape), " of ", dtype_name(ti.dtype), " needs ",
                                 overflow ? std::string("more than 2^62") : std::to_string(numel * dtype_size(ti.dtype)),
                                 " bytes but data_offsets give ", ti.end - ti.begin));
      ranges.emplace_back(ti.begin, ti.end);
      tensors_[name] = std::move(ti);
    }
    // The ranges must tile the data section: sorted, each starts where the previous ended.
    std::sort(ranges.begin(), ranges.end());
    std::uint64_t at = 0;
    for (const auto& [b0, e0] : ranges) {
      if (b0 < at) fail(detail::cat("byte ranges overlap at offset ", b0));
      if (b0 > at) fail(detail::cat("bytes ", at, " to ", b0, " of the data section belong to no tensor"));
      at = e0;
    }
    if (at != data_len)
      fail(detail::cat("the data section has ", data_len, " bytes but the tensors cover ", at));
  }

  std::string path_;
  std::shared_ptr<const unsigned char> base_;
  std::uint64_t size_ = 0, data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

namespace detail {
template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>) return DType::F64;
  else if constexpr (std::is_same_v<T, float>) return DType::F32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::I32;
  else if constexpr (std::is_same_v<T, std::int16_t>) return DType::I16;
  else if constexpr (std::is_same_v<T, std::int8_t>) return DType::I8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return DType::U8;
  else static_assert(sizeof(T) == 0, "save_safetensors: no safetensors dtype for this scalar type");
}
}  // namespace detail

// One tensor to write, whatever its dtype: a view of bytes the caller keeps alive.
struct TensorView {
  std::string name;
  DType dtype;
  Shape shape;
  const void* data;
};

template <class T>
inline TensorView view_of(const std::string& name, const Tensor<T>& t) {
  return {name, detail::dtype_of<T>(), t.shape(), t.data()};
}

// Writes tensors of any dtypes in name order, with optional string metadata. The header is
// padded with spaces to a multiple of 8 bytes, as the reference writer does.
//   save_safetensors("samples.safetensors", {view_of("images", x), view_of("labels", y)});
inline void save_safetensors(const std::string& path, std::vector<TensorView> tensors, const std::map<std::string, std::string>& metadata = {}) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> sizes;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (i > 0 && tensors[i].name == tensors[i - 1].name)
      throw IoError(detail::cat("save_safetensors(\"", path, "\"): the name \"", tensors[i].name, "\" is given twice"));
    if (tensors[i].name == "__metadata__")
      throw IoError(detail::cat("save_safetensors(\"", path, "\"): \"__metadata__\" is reserved"));
    std::uint64_t n = 1;
    for (auto d : tensors[i].shape) n *= static_cast<std::uint64_t>(d);
    const std::uint64_t bytes = n * dtype_size(tensors[i].dtype);
    sizes.push_back(bytes);
    header[tensors[i].name] = {{"dtype", dtype_name(tensors[i].dtype)}, {"shape", tensors[i].shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  // Atomic where the target is a regular file: a failed save leaves the previous file whole.
  FileWriter f(path, detail::cat("save_safetensors(\"", path, "\")"));
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(h.size()) >> (8 * i));
  f.write(len, 8);
  f.write(h);
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (sizes[i]) f.write(tensors[i].data, static_cast<std::size_t>(sizes[i]));
  f.commit();
}

// Tensors of one scalar type (written in their own dtype).
template <class T>
inline void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor<T>>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  std::vector<TensorView> views;
  for (const auto& [name, t] : tensors) views.push_back(view_of(name, t));
  save_safetensors(path, std::move(views), metadata);
}

}  // namespace ditto
