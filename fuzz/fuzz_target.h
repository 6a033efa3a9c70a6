// What every fuzz target shares: the check that turns a broken invariant into
// a crash, a reader that takes bytes from the input, and the entry point.
//
// Each target is a function `int chord::fuzz::Fuzz<Name>(const uint8_t*, size_t)`.
// Under libFuzzer (CHORD_LIBFUZZER, the clang build of scripts/fuzz.sh) its file
// also defines LLVMFuzzerTestOneInput; in the normal build the same functions run
// from fuzz_regression_test over fuzz/corpus/<name>/, so that every input once
// found to crash stays a test.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace chord::fuzz {

// A broken invariant: print it and abort, which both libFuzzer and GoogleTest
// (the process dies) report as a failure with this input.
[[noreturn]] inline void Fail(const char* file, int line, const char* condition) {
  std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", file, line, condition);
  std::abort();
}

// Takes typed values from the front of the input; past the end it yields
// zeros and empty strings, so a target never needs to check the length.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return offset_ >= size_; }
  uint8_t Byte() { return empty() ? 0 : data_[offset_++]; }
  uint16_t U16() {  // little-endian
    const uint16_t low = Byte();
    return static_cast<uint16_t>(low | (Byte() << 8));
  }
  // Up to `n` bytes (fewer at the end of the input).
  std::string_view Bytes(size_t n) {
    n = std::min(n, size_ - std::min(offset_, size_));
    const std::string_view out(reinterpret_cast<const char*>(data_) + offset_, n);
    offset_ += n;
    return out;
  }
  std::string_view Rest() { return Bytes(size_); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t offset_ = 0;
};

// Where the targets find the vocabularies and the model header they build on
// (fuzz/data; the path is compiled in).
inline std::string DataPath(std::string_view name) {
  return std::string(CHORD_FUZZ_DATA_DIR) + "/" + std::string(name);
}

// The targets (one file each).
int FuzzGguf(const uint8_t* data, size_t size);
int FuzzTokenizer(const uint8_t* data, size_t size);
int FuzzMessage(const uint8_t* data, size_t size);
int FuzzConfig(const uint8_t* data, size_t size);

}  // namespace chord::fuzz

// A macro only because it must stringize the condition and name the line.
#define FUZZ_CHECK(condition) \
  ((condition) ? (void)0 : ::chord::fuzz::Fail(__FILE__, __LINE__, #condition))

#ifdef CHORD_LIBFUZZER
#define CHORD_FUZZ_ENTRY(function)                                            \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    return function(data, size);                                              \
  }
#else
#define CHORD_FUZZ_ENTRY(function)
#endif
