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

void QuantizeQ8_0(const float* x, BlockQ8_0* y, int64_t nb);
void QuantizeQ4_0(const float* x, BlockQ4_0* y, int64_t nb);
void QuantizeQ4_K(const float* x, BlockQ4_K* y, int64_t nb);
void QuantizeQ5_K(const float* x, BlockQ5_K* y, int64_t nb);
void QuantizeQ6_K(const float* x, BlockQ6_K* y, int64_t nb);

}  // namespace chord::quant::internal
