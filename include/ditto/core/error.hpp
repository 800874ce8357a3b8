// ditto's error types. Every failure the library detects throws one of these; the message says
// what was expected, what was found, and where (the call, the pattern, the shape).
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ditto {

// Base of every error ditto throws. Catch this to catch them all.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A tensor has the wrong rank, shape or size for the operation.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// An einops pattern is malformed, or does not fit the tensor it is applied to.
class EinopsError : public Error {
 public:
  using Error::Error;
};

// An argument is out of its allowed range (a thread count, a reduction name, a CLI flag...).
class ArgumentError : public Error {
 public:
  using Error::Error;
};

// A file is missing, unreadable, truncated or malformed.
class IoError : public Error {
 public:
  using Error::Error;
};

// Memory for a tensor could not be allocated (a config that asks for more than the machine has).
class MemoryError : public Error {
 public:
  using Error::Error;
};

// A NaN or infinity where training's check mode asks for finite numbers (docs/training.md).
class NumericError : public Error {
 public:
  using Error::Error;
};

// "[2,3,4]": how every message prints a shape (PyTorch's order, no spaces so it greps well).
template <class Container>
inline std::string shape_str(const Container& shape) {
  std::string s = "[";
  bool first = true;
  for (auto d : shape) {
    if (!first) s += ",";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

namespace detail {
// Builds a message from pieces: cat("expected ", 3, " axes"). Keeps throw sites on one line.
template <class... Args>
inline std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace ditto
