// Every decoder against a plain reference written from the format description:
// element by element, bits pulled from the raw bytes by offset, arithmetic in
// double. Where the float path rounds only once (or never), results must agree
// bit for bit; otherwise to within a few float ulps of the terms involved.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/quant/blocks.h"
#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "gtest/gtest.h"

namespace chord::quant {
namespace {

double HalfAt(const uint8_t* p) {
  const int h = p[0] | (p[1] << 8);
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  const double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return (h & 0x8000) ? -v : v;
}

int Nibble(const uint8_t* qs, int i, bool high) { return high ? qs[i] >> 4 : qs[i] & 0xf; }
int Bit(const uint8_t* bytes, int i) { return (bytes[i / 8] >> (i % 8)) & 1; }

// One reference element: its exact value `v`, and `mag`, the size of the terms
// that the float path rounds (for the tolerance).
struct RefValue {
  double v;
  double mag;
};

RefValue RefQ4_0(const uint8_t* b, int e) {
  const int q = Nibble(b + 2, e % 16, e >= 16);
  return {(q - 8) * HalfAt(b), 0};
}
RefValue RefQ4_1(const uint8_t* b, int e) {
  const int q = Nibble(b + 4, e % 16, e >= 16);
  const double a = q * HalfAt(b);
  return {a + HalfAt(b + 2), std::fabs(a) + std::fabs(HalfAt(b + 2))};
}
RefValue RefQ5_0(const uint8_t* b, int e) {
  const int q = Nibble(b + 6, e % 16, e >= 16) + 16 * Bit(b + 2, e);
  return {(q - 16) * HalfAt(b), 0};
}
RefValue RefQ5_1(const uint8_t* b, int e) {
  const int q = Nibble(b + 8, e % 16, e >= 16) + 16 * Bit(b + 4, e);
  const double a = q * HalfAt(b);
  return {a + HalfAt(b + 2), std::fabs(a) + std::fabs(HalfAt(b + 2))};
}
RefValue RefQ8_0(const uint8_t* b, int e) { return {static_cast<int8_t>(b[2 + e]) * HalfAt(b), 0}; }

// 6-bit scale and min of sub-block s of a Q4_K/Q5_K block, from the 12 bytes:
// bytes 0-3 scales 0-3 (low 6 bits), 4-7 mins 0-3, 8-11 low nibbles of
// scale/min 4-7; the top 2 bits of bytes 0-7 are the high bits of 4-7.
void KScaleMin(const uint8_t* s, int sub, int* sc, int* m) {
  if (sub < 4) {
    *sc = s[sub] & 63;
    *m = s[sub + 4] & 63;
  } else {
    *sc = (s[sub + 4] & 15) + 16 * (s[sub - 4] >> 6);
    *m = (s[sub + 4] >> 4) + 16 * (s[sub] >> 6);
  }
}

RefValue RefQ4_K(const uint8_t* b, int e) {
  const int sub = e / 32;
  int sc;
  int m;
  KScaleMin(b + 4, sub, &sc, &m);
  const int q = Nibble(b + 16, 32 * (sub / 2) + e % 32, sub % 2 == 1);
  const double a = HalfAt(b) * sc * q;
  const double c = HalfAt(b + 2) * m;
  return {a - c, std::fabs(a) + std::fabs(c)};
}
RefValue RefQ5_K(const uint8_t* b, int e) {
  const int sub = e / 32;
  int sc;
  int m;
  KScaleMin(b + 4, sub, &sc, &m);
  const int l = e % 32;
  const int q = Nibble(b + 48, 32 * (sub / 2) + l, sub % 2 == 1) + 16 * ((b[16 + l] >> sub) & 1);
  const double a = HalfAt(b) * sc * q;
  const double c = HalfAt(b + 2) * m;
  return {a - c, std::fabs(a) + std::fabs(c)};
}
RefValue RefQ6_K(const uint8_t* b, int e) {
  // Per 128 elements: 64 ql bytes, 32 qh bytes. Run r (0..3) of 32 elements
  // takes its low 4 bits from ql[l + 32 (r & 1)] (low nibble for r < 2) and
  // its high 2 bits from qh[l] bits 2r, 2r + 1.
  const int half = e / 128;
  const int r = (e % 128) / 32;
  const int l = e % 32;
  const uint8_t* ql = b + 64 * half;
  const uint8_t* qh = b + 128 + 32 * half;
  const int low = Nibble(ql, l + 32 * (r & 1), r >= 2);
  const int high = (qh[l] >> (2 * r)) & 3;
  const int scale = static_cast<int8_t>(b[192 + e / 16]);
  return {HalfAt(b + 208) * scale * (low + 16 * high - 32), 0};
}

using RefFn = RefValue (*)(const uint8_t*, int);

struct Case {
  DType type;
  RefFn ref;
  std::vector<int> half_offsets;  // byte offsets of the half scales in a block
  bool exact;                     // float path rounds at most once
};

std::vector<Case> Cases() {
  return {
      {DType::kQ4_0, RefQ4_0, {0}, true},     {DType::kQ4_1, RefQ4_1, {0, 2}, false},
      {DType::kQ5_0, RefQ5_0, {0}, true},     {DType::kQ5_1, RefQ5_1, {0, 2}, false},
      {DType::kQ8_0, RefQ8_0, {0}, true},     {DType::kQ4_K, RefQ4_K, {0, 2}, false},
      {DType::kQ5_K, RefQ5_K, {0, 2}, false}, {DType::kQ6_K, RefQ6_K, {208}, true},
  };
}

// Random finite half: any sign, exponent 0..30 (subnormals included).
uint16_t RandomFiniteHalf(std::mt19937& rng) {
  uint16_t h;
  do {
    h = static_cast<uint16_t>(rng());
  } while ((h & 0x7c00) == 0x7c00);
  return h;
}

TEST(DequantizeTest, RandomBlocksMatchReference) {
  std::mt19937 rng(42);
  for (const Case& c : Cases()) {
    const DTypeInfo& info = GetDTypeInfo(c.type);
    const int kBlocks = 64;
    const int64_t n = kBlocks * info.block_size;
    std::vector<uint8_t> raw(static_cast<size_t>(kBlocks * info.block_bytes));
    for (uint8_t& byte : raw) byte = static_cast<uint8_t>(rng());
    for (int blk = 0; blk < kBlocks; ++blk) {
      for (const int off : c.half_offsets) {
        const uint16_t h = RandomFiniteHalf(rng);
        std::memcpy(&raw[blk * info.block_bytes + off], &h, 2);
      }
    }
    std::vector<float> got(static_cast<size_t>(n), -12345.0f);
    ASSERT_TRUE(DequantizeRow(c.type, raw.data(), got.data(), n).ok());
    int mismatches = 0;
    for (int64_t i = 0; i < n && mismatches < 10; ++i) {
      const uint8_t* block = &raw[(i / info.block_size) * info.block_bytes];
      const RefValue want = c.ref(block, static_cast<int>(i % info.block_size));
      const bool ok = c.exact ? got[i] == static_cast<float>(want.v)
                              : std::fabs(got[i] - want.v) <= 2.5e-7 * want.mag;
      if (!ok) ++mismatches;
      EXPECT_TRUE(ok) << info.name << " element " << i << ": got " << got[i] << " want " << want.v;
    }
  }
}

TEST(DequantizeTest, PlainTypes) {
  const uint16_t halves[4] = {0x3c00, 0xc000, 0x0001, 0x7bff};
  float out[4];
  ASSERT_TRUE(DequantizeRow(DType::kF16, halves, out, 4).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0x1p-24f);
  EXPECT_EQ(out[3], 65504.0f);
  const uint16_t bf[2] = {0x3f80, 0xc0a0};
  ASSERT_TRUE(DequantizeRow(DType::kBF16, bf, out, 2).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -5.0f);
  const float f[3] = {1.5f, -0.25f, 3e30f};
  ASSERT_TRUE(DequantizeRow(DType::kF32, f, out, 3).ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[2], 3e30f);
}

TEST(DequantizeTest, KnownQ4_0Block) {
  BlockQ4_0 b;
  b.d = 0x3800;  // 0.5
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  ASSERT_TRUE(DequantizeRow(DType::kQ4_0, &b, y, 32).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 8));
    EXPECT_EQ(y[j + 16], 0.5f * static_cast<float>(7 - j));
  }
  EXPECT_EQ(y[0], -4.0f);
  EXPECT_EQ(y[15], 3.5f);
}

TEST(DequantizeTest, KnownQ8_0AndQ5_0Blocks) {
  BlockQ8_0 b8;
  b8.d = 0x3400;  // 0.25
  for (int j = 0; j < 32; ++j) b8.qs[j] = static_cast<int8_t>(j * 8 - 128);
  float y[32];
  ASSERT_TRUE(DequantizeRow(DType::kQ8_0, &b8, y, 32).ok());
  EXPECT_EQ(y[0], -32.0f);
  EXPECT_EQ(y[31], 30.0f);

  BlockQ5_0 b5 = {};
  b5.d = 0x3c00;    // 1
  b5.qh[2] = 0x10;  // element 20 has its fifth bit
  b5.qs[4] = 0xf0;  // element 20: low bits 15 -> q = 31
  b5.qs[3] = 0x00;  // element 3: q = 0
  ASSERT_TRUE(DequantizeRow(DType::kQ5_0, &b5, y, 32).ok());
  EXPECT_EQ(y[20], 15.0f);
  EXPECT_EQ(y[3], -16.0f);
  EXPECT_EQ(y[19], -16.0f);
}

TEST(DequantizeTest, KnownQ4_KBlock) {
  BlockQ4_K b = {};
  b.d = 0x3c00;     // 1
  b.dmin = 0x3800;  // 0.5
  // Sub-block 0: scale 2, min 4. Sub-block 5: scale 33, min 17 (needs high bits).
  b.scales[0] = 2;
  b.scales[4] = 4;
  b.scales[9] = 0x11;
  b.scales[1] |= 2 << 6;
  b.scales[5] |= 1 << 6;
  b.qs[7] = 0x09;       // element 7 (sub 0, low nibble): q = 9
  b.qs[64 + 3] = 0x30;  // element 160 + 3 (sub 5, high nibble): q = 3
  float y[256];
  ASSERT_TRUE(DequantizeRow(DType::kQ4_K, &b, y, 256).ok());
  EXPECT_EQ(y[7], 2.0f * 9 - 2.0f);
  EXPECT_EQ(y[0], -2.0f);
  EXPECT_EQ(y[163], 33.0f * 3 - 8.5f);
  EXPECT_EQ(y[160], -8.5f);
  EXPECT_EQ(y[40], 0.0f);  // sub-block 1: scale and min 0
}

TEST(DequantizeTest, KnownQ5_KAndQ6_KBlocks) {
  BlockQ5_K b5 = {};
  b5.d = 0x3c00;
  b5.scales[2] = 1;      // sub-block 2: scale 1, min 0
  b5.qs[32 + 4] = 0x0e;  // element 64 + 4: low bits 14
  b5.qh[4] = 1 << 2;     // fifth bit for sub-block 2, l = 4
  float y[256];
  ASSERT_TRUE(DequantizeRow(DType::kQ5_K, &b5, y, 256).ok());
  EXPECT_EQ(y[68], 30.0f);
  EXPECT_EQ(y[69], 0.0f);

  BlockQ6_K b6 = {};
  b6.d = 0x3800;  // 0.5
  for (int i = 0; i < 16; ++i) b6.scales[i] = 1;
  b6.scales[3] = -2;         // elements 48..63: run 1 of the first half, l = 16..31
  b6.ql[32 + 20] = 40 & 15;  // element 52: q = 40
  b6.qh[20] = (40 >> 4) << 2;
  ASSERT_TRUE(DequantizeRow(DType::kQ6_K, &b6, y, 256).ok());
  EXPECT_EQ(y[52], -8.0f);
  EXPECT_EQ(y[53], 32.0f);  // q = 0: (0 - 32) * 0.5 * -2
  EXPECT_EQ(y[0], -16.0f);  // q = 0, scale 1
}

TEST(DequantizeTest, RejectsBadArguments) {
  std::vector<uint8_t> raw(1024, 0);
  std::vector<float> out(512);
  EXPECT_EQ(DequantizeRow(DType::kQ4_0, raw.data(), out.data(), 33).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(DType::kQ4_K, raw.data(), out.data(), 32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(DType::kQ4_0, raw.data(), out.data(), -32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(DType::kQ2_K, raw.data(), out.data(), 256).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(static_cast<DType>(4), raw.data(), out.data(), 32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(DType::kQ8_0, nullptr, out.data(), 32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(DType::kF16, raw.data(), nullptr, 4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(DequantizeRow(DType::kQ6_K, raw.data(), out.data(), 0).ok());
}

}  // namespace
}  // namespace chord::quant
