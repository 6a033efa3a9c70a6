// Per-type row codecs behind DequantizeRow() and QuantizeRows(). Not part of
// the public API: arguments are trusted (the public functions validate them).
// `nb` is a count of blocks (elements for the plain types). All functions are
// pure and thread-compatible; none allocates.
#pragma once

#include <bit>
#include <cstdint>

#include "common/quant/blocks.h"

namespace chord::quant::internal {

// Rounds to nearest, ties to even, like ggml's nearest_int: exact for
// |f| < 2^22, which every caller guarantees for finite data. Works on the bit
// pattern, so a stray inf/NaN gives a wrong but bounded int instead of the
// undefined behaviour of a float-to-int cast; callers clamp the result.
inline int NearestInt(float f) {
  const float shifted = f + 12582912.f;  // 1.5 * 2^23: the integer lands in the low mantissa bits
  return static_cast<int>(std::bit_cast<uint32_t>(shifted) & 0x007fffffu) - 0x00400000;
}

// Half and single exponent biases differ by 127 - 15.
inline constexpr uint32_t kHalfToFloatBiasDelta = 112u << 23;

// HalfToFloat(), inline for the decoders' inner loops. Branch-free selects so
// that loops over it vectorize; no subnormal float is ever formed, so the
// result does not depend on flush-to-zero modes.
inline float HalfToFloatInline(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t mag = h & 0x7fffu;
  // Normal: move exponent and mantissa into place and rebias. Inf/NaN
  // (exponent 31) needs a second rebias to reach exponent 255.
  uint32_t bits = (mag << 13) + kHalfToFloatBiasDelta;
  bits += mag >= 0x7c00u ? kHalfToFloatBiasDelta : 0u;
  // Zero or subnormal: mant * 2^-24, exact in binary32.
  const float small = static_cast<float>(mag) * 0x1p-24f;
  const uint32_t out = mag < 0x0400u ? std::bit_cast<uint32_t>(small) : bits;
  return std::bit_cast<float>(sign | out);
}

void QuantizeQ8_0(const float* x, BlockQ8_0* y, int64_t nb);
void QuantizeQ4_0(const float* x, BlockQ4_0* y, int64_t nb);
void QuantizeQ4_K(const float* x, BlockQ4_K* y, int64_t nb);
void QuantizeQ5_K(const float* x, BlockQ5_K* y, int64_t nb);
void QuantizeQ6_K(const float* x, BlockQ6_K* y, int64_t nb);

}  // namespace chord::quant::internal
