// Tensor element types, numbered as ggml numbers them (these ids are what a
// GGUF file stores), with their block geometry.
//
// A quantized type stores `block_size` consecutive elements of a row in
// `block_bytes` bytes; a row of n elements (n a multiple of block_size) takes
// n / block_size * block_bytes bytes. Plain types have block_size 1.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"

namespace chord {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
};

struct DTypeInfo {
  DType type;
  std::string_view name;  // as llama.cpp prints it: "f32", "q4_K", ...
  int64_t block_size;     // elements per block
  int64_t block_bytes;    // bytes per block
  bool computable;        // chord can dequantize it and run matrix products on it
};

// Returns nullptr for an id that is not a known ggml type (e.g. from a corrupt file).
const DTypeInfo* FindDTypeInfo(uint32_t id);
// For a valid DType; never null.
const DTypeInfo& GetDTypeInfo(DType type);
std::string_view DTypeName(DType type);
// Parses "F32", "q4_k", "Q8_0", ... (case-insensitive).
std::optional<DType> ParseDTypeName(std::string_view name);

// Bytes taken by a row of `n` elements. Fails (INVALID_ARGUMENT) when n is not a
// multiple of the block size, and on overflow.
absl::StatusOr<uint64_t> RowBytes(DType type, int64_t n);

}  // namespace chord
