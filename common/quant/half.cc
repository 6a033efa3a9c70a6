// IEEE binary16 and bfloat16 <-> binary32, done on the bit patterns so the
// result does not depend on the FPU's rounding mode or on F16C being present.

#include <bit>
#include <cstdint>

#include "common/quant/quant.h"
#include "common/quant/quant_internal.h"

namespace chord::quant {
namespace {

constexpr uint32_t kF32ExpMask = 0x7f800000u;
constexpr uint32_t kF32AbsMask = 0x7fffffffu;
constexpr uint32_t kBiasDelta = internal::kHalfToFloatBiasDelta;
// |f| at or above 65520 (halfway between 65504, the largest half, and 65536)
// rounds to infinity under round-to-nearest-even.
constexpr uint32_t kHalfOverflow = 0x477ff000u;
// Below 2^-14 the half result is subnormal.
constexpr uint32_t kHalfMinNormal = 0x38800000u;
// At or below 2^-25 (half of the smallest subnormal) the result is zero; the
// exact midpoint ties to the even value, zero.
constexpr uint32_t kHalfUnderflow = 0x33000000u;

// Shifts `m` right by `shift` (1..31) rounding to nearest, ties to even.
uint32_t ShiftRightRoundEven(uint32_t m, int shift) {
  const uint32_t kept = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1u) != 0)) return kept + 1;
  return kept;
}

}  // namespace

float HalfToFloat(uint16_t h) { return internal::HalfToFloatInline(h); }

uint16_t FloatToHalf(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & kF32AbsMask;
  if (abs > kF32ExpMask) {  // NaN: keep the top payload bits, force quiet
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= kHalfOverflow) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs >= kHalfMinNormal) {
    // Rebias, then round the 13 dropped bits; a carry out of the mantissa
    // correctly bumps the exponent (up to infinity only above kHalfOverflow).
    const uint32_t rebiased = abs - kBiasDelta;
    return static_cast<uint16_t>(sign | ShiftRightRoundEven(rebiased, 13));
  }
  if (abs <= kHalfUnderflow) return sign;
  // Subnormal result: value = m * 2^(e - 150), in units of 2^-24 that is
  // m >> (126 - e). A result of 1024 is the smallest normal, bit-correct too.
  const int e = static_cast<int>(abs >> 23);
  const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
  return static_cast<uint16_t>(sign | ShiftRightRoundEven(m, 126 - e));
}

float Bf16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & kF32AbsMask) > kF32ExpMask) {
    // NaN: truncate and set the quiet bit so the payload cannot round to inf.
    return static_cast<uint16_t>((bits >> 16) | 0x40u);
  }
  // Round to nearest even on the 16 dropped bits; overflow carries into inf.
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace chord::quant
