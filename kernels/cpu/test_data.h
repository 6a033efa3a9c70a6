// Random test inputs for the kernel tests: weight rows of any computable type
// with sane scales, and activations. Test-only (header-only, gtest for errors).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/quant/blocks.h"
#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "gtest/gtest.h"

namespace chord::kernels {

// Random weight bytes with sane scales: every half-float scale field of every
// block is overwritten with a small positive value, the rest is random bits.
inline std::vector<uint8_t> RandomWeights(DType type, int64_t rows, int64_t cols,
                                          std::mt19937& rng) {
  const uint64_t row_bytes = RowBytes(type, cols).value();
  std::vector<uint8_t> bytes(row_bytes * static_cast<uint64_t>(rows));
  std::uniform_int_distribution<int> byte(0, 255);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const DTypeInfo& info = GetDTypeInfo(type);
  const int64_t n_blocks = static_cast<int64_t>(bytes.size()) / info.block_bytes;
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = bytes.data() + b * info.block_bytes;
    auto set_half = [&](size_t offset, float value) {
      const uint16_t h = quant::FloatToHalf(value);
      std::memcpy(block + offset, &h, 2);
    };
    switch (type) {
      case DType::kF32: {
        const float v = normal(rng);
        std::memcpy(block, &v, 4);
        break;
      }
      case DType::kF16:
        set_half(0, normal(rng));
        break;
      case DType::kBF16: {
        const uint16_t v = quant::FloatToBf16(normal(rng));
        std::memcpy(block, &v, 2);
        break;
      }
      case DType::kQ4_0:
      case DType::kQ5_0:
      case DType::kQ8_0:
        set_half(0, scale(rng));
        break;
      case DType::kQ4_1:
      case DType::kQ5_1:
        set_half(0, scale(rng));
        set_half(2, -scale(rng) * 8);
        break;
      case DType::kQ4_K:
      case DType::kQ5_K:
        set_half(0, scale(rng));
        set_half(2, scale(rng));
        break;
      case DType::kQ6_K:
        set_half(offsetof(quant::BlockQ6_K, d), scale(rng));
        break;
      default:
        ADD_FAILURE() << "no generator for " << DTypeName(type);
    }
  }
  return bytes;
}

inline std::vector<float> RandomActivations(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

}  // namespace chord::kernels
