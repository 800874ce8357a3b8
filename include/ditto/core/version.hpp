// ditto version. CMake reads these three numbers from this file (one source of truth), so
// find_package(ditto 0.1) and DITTO_VERSION always agree.
#pragma once

#define DITTO_VERSION_MAJOR 0
#define DITTO_VERSION_MINOR 1
#define DITTO_VERSION_PATCH 0

#define DITTO_STRINGIFY_IMPL(x) #x
#define DITTO_STRINGIFY(x) DITTO_STRINGIFY_IMPL(x)
// "0.1.0"
#define DITTO_VERSION_STRING                                                                       \
  DITTO_STRINGIFY(DITTO_VERSION_MAJOR)                                                             \
  "." DITTO_STRINGIFY(DITTO_VERSION_MINOR) "." DITTO_STRINGIFY(DITTO_VERSION_PATCH)
// One integer that compares in release order: 0.1.0 -> 100.
#define DITTO_VERSION (DITTO_VERSION_MAJOR * 10000 + DITTO_VERSION_MINOR * 100 + DITTO_VERSION_PATCH)

namespace ditto {
inline constexpr int version_major = DITTO_VERSION_MAJOR;
inline constexpr int version_minor = DITTO_VERSION_MINOR;
inline constexpr int version_patch = DITTO_VERSION_PATCH;
inline constexpr const char* version_string = DITTO_VERSION_STRING;
}  // namespace ditto
