// libFuzzer target: any bytes given to the safetensors parser either parse, and then every
// tensor reads back, or throw ditto::IoError. A crash, a sanitizer report, or any other
// exception is a bug. Built with clang and -fsanitize=fuzzer (DITTO_BUILD_FUZZ=ON); .ci/run
// runs it for a bounded time from the seeds in tests/fuzz/corpus.
#include <cstddef>
#include <cstdint>

#include <ditto/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto f = ditto::SafetensorsFile::from_bytes(data, size, "fuzz");
    for (const auto& name : f.names()) {
      if (f.info(name).end - f.info(name).begin > (std::uint64_t{1} << 24)) continue;  // bounded memory
      auto t = f.get<float>(name);
      (void)t;
    }
  } catch (const ditto::IoError&) {
  }
  return 0;
}
