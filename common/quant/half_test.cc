#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "common/quant/quant.h"
#include "gtest/gtest.h"

namespace chord::quant {
namespace {

// The value of a half bit pattern, straight from the IEEE 754 definition.
double ReferenceHalfValue(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double v;
  if (exp == 0x1f) {
    v = mant == 0 ? std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), -24);
  } else {
    v = std::ldexp(static_cast<double>(1024 + mant), exp - 25);
  }
  return sign ? -v : v;
}

bool IsHalfNan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

TEST(HalfTest, AllPatternsDecodeToTheirIeeeValue) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float got = HalfToFloat(h);
    const double want = ReferenceHalfValue(h);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), want) << std::hex << h;
    EXPECT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
  }
}

TEST(HalfTest, AllPatternsRoundTrip) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const uint16_t back = FloatToHalf(HalfToFloat(h));
    if (IsHalfNan(h)) {
      EXPECT_TRUE(IsHalfNan(back)) << std::hex << h << " -> " << back;
      EXPECT_EQ(back & 0x8000, h & 0x8000);
    } else {
      EXPECT_EQ(back, h) << std::hex << h;
    }
  }
}

// Between each pair of neighbouring finite halves (normal and subnormal), the
// exact midpoint ties to the even pattern, and one float ulp off it goes to
// the nearer neighbour.
TEST(HalfTest, MidpointsRoundToNearestEven) {
  for (uint16_t h = 0; h < 0x7bff; ++h) {
    for (const uint16_t sign : {uint16_t{0}, uint16_t{0x8000}}) {
      const uint16_t lo_bits = static_cast<uint16_t>(h | sign);
      const uint16_t hi_bits = static_cast<uint16_t>((h + 1) | sign);
      const double lo = ReferenceHalfValue(lo_bits);
      const double hi = ReferenceHalfValue(hi_bits);
      const auto mid = static_cast<float>((lo + hi) / 2);  // exact: 12 significant bits
      ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
      EXPECT_EQ(FloatToHalf(mid), (h & 1) == 0 ? lo_bits : hi_bits) << std::hex << lo_bits;
      EXPECT_EQ(FloatToHalf(std::nextafter(mid, static_cast<float>(lo))), lo_bits)
          << std::hex << lo_bits;
      EXPECT_EQ(FloatToHalf(std::nextafter(mid, static_cast<float>(hi))), hi_bits)
          << std::hex << lo_bits;
    }
  }
}

TEST(HalfTest, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // tie between 65504 (odd) and 65536
  EXPECT_EQ(FloatToHalf(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);  // tie between 0 and the least subnormal
  EXPECT_EQ(FloatToHalf(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(-0x1p-26f), 0x8000);
  EXPECT_EQ(FloatToHalf(1e-30f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.5f), 0xc100);
  EXPECT_EQ(FloatToHalf(0x1p-14f), 0x0400);      // least normal
  EXPECT_EQ(FloatToHalf(0x1.ff8p-15f), 0x03ff);  // largest subnormal
  EXPECT_EQ(FloatToHalf(0x1.ffcp-15f), 0x0400);  // ... plus half an ulp: ties up to even
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::bit_cast<float>(0x7f800001u))));  // payload below half's
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::bit_cast<float>(0xff800001u))));
}

// Random finite floats: the result is a nearest half (ties checked above).
TEST(HalfTest, RandomFloatsRoundToANearestHalf) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits;
  int checked = 0;
  while (checked < 200000) {
    uint32_t u = bits(rng);
    // Concentrate on the half range: exponents 2^-26 .. 2^16.
    u = (u & 0x807fffffu) | ((101u + (u >> 23) % 42u) << 23);
    const float f = std::bit_cast<float>(u);
    if (std::fabs(f) >= 65520.0f) continue;
    ++checked;
    const uint16_t h = FloatToHalf(f);
    const double err = std::fabs(ReferenceHalfValue(h) - f);
    const uint16_t mag = h & 0x7fff;
    const uint16_t sign = h & 0x8000;
    if (mag < 0x7bff) {
      EXPECT_LE(err, std::fabs(ReferenceHalfValue(static_cast<uint16_t>((mag + 1) | sign)) - f))
          << f;
    }
    if (mag > 0) {
      EXPECT_LE(err, std::fabs(ReferenceHalfValue(static_cast<uint16_t>((mag - 1) | sign)) - f))
          << f;
    }
    if (mag == 0) {
      EXPECT_LE(err, std::fabs(f + (sign ? 0x1p-24 : -0x1p-24)));
    }
  }
}

TEST(Bf16Test, AllPatternsRoundTrip) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<uint16_t>(i);
    const float f = Bf16ToFloat(b);
    EXPECT_EQ(std::bit_cast<uint32_t>(f), i << 16);
    const uint16_t back = FloatToBf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(back))) << std::hex << b;
      EXPECT_NE(back & 0x40, 0) << "NaN not quieted: " << std::hex << b;
    } else {
      EXPECT_EQ(back, b) << std::hex << b;
    }
  }
}

TEST(Bf16Test, MidpointsRoundToNearestEven) {
  for (uint32_t b = 0; b < 0x7f80; ++b) {
    for (const uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t lo = (b << 16) | sign;
      const uint32_t mid = lo | 0x8000u;
      const auto lo_bf = static_cast<uint16_t>(lo >> 16);
      const auto hi_bf = static_cast<uint16_t>(lo_bf + 1);
      EXPECT_EQ(FloatToBf16(std::bit_cast<float>(mid)), (b & 1) == 0 ? lo_bf : hi_bf)
          << std::hex << lo_bf;
      EXPECT_EQ(FloatToBf16(std::bit_cast<float>(mid - 1)), lo_bf) << std::hex << lo_bf;
      EXPECT_EQ(FloatToBf16(std::bit_cast<float>(mid + 1)), hi_bf) << std::hex << lo_bf;
    }
  }
  // The largest finite bf16 is odd: its upper midpoint goes to infinity.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
}

TEST(Bf16Test, SignalingNanStaysNan) {
  for (const uint32_t bits : {0x7f800001u, 0xff800001u, 0x7f80ffffu, 0x7fc00000u}) {
    const uint16_t b = FloatToBf16(std::bit_cast<float>(bits));
    EXPECT_EQ(b & 0x7f80, 0x7f80) << std::hex << bits;
    EXPECT_NE(b & 0x7f, 0) << std::hex << bits;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000);
  }
}

}  // namespace
}  // namespace chord::quant
