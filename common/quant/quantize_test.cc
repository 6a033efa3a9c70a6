#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/quant/blocks.h"
#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "gtest/gtest.h"

namespace chord::quant {
namespace {

std::vector<float> RandomNormal(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

// Quantizes rows of x and decodes them again.
std::vector<float> RoundTrip(DType type, const std::vector<float>& x, int64_t n_per_row,
                             std::vector<uint8_t>* encoded = nullptr) {
  const int64_t n_rows = static_cast<int64_t>(x.size()) / n_per_row;
  const uint64_t row_bytes = RowBytes(type, n_per_row).value();
  std::vector<uint8_t> q(static_cast<size_t>(row_bytes * n_rows), 0xcd);
  EXPECT_TRUE(QuantizeRows(type, x.data(), n_rows, n_per_row, q.data()).ok());
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < n_rows; ++r) {
    EXPECT_TRUE(
        DequantizeRow(type, q.data() + r * row_bytes, y.data() + r * n_per_row, n_per_row).ok());
  }
  if (encoded != nullptr) *encoded = std::move(q);
  return y;
}

double Rms(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s += static_cast<double>(f) * f;
  return std::sqrt(s / static_cast<double>(v.size()));
}

double RelativeRmsError(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - y[i];
    e += d * d;
  }
  return std::sqrt(e / static_cast<double>(x.size())) / Rms(x);
}

struct Bound {
  DType type;
  double max_rel_rms;
};

// Bounds sit a little above what ggml's reference quantizers reach on normal
// data with 2^16 samples (measured here: F16 0.00021, BF16 0.00166, Q8_0 0.0054,
// Q6_K 0.0179, Q5_K 0.0364, Q4_K 0.0717, Q4_0 0.0868). The half-precision block
// scales limit this to data whose scales stay normal halves (sigma >~ 0.01).
const Bound kBounds[] = {
    {DType::kF32, 0.0},   {DType::kF16, 3e-4},  {DType::kBF16, 2.5e-3}, {DType::kQ8_0, 0.007},
    {DType::kQ6_K, 0.02}, {DType::kQ5_K, 0.04}, {DType::kQ4_K, 0.08},   {DType::kQ4_0, 0.095},
};

TEST(QuantizeTest, RoundTripErrorWithinBounds) {
  const int64_t kPerRow = 1024;
  const std::vector<float> x = RandomNormal(16 * kPerRow, 7);
  for (const Bound& b : kBounds) {
    const std::vector<float> y = RoundTrip(b.type, x, kPerRow);
    const double err = RelativeRmsError(x, y);
    EXPECT_LE(err, b.max_rel_rms) << DTypeName(b.type);
    RecordProperty(std::string(DTypeName(b.type)), std::to_string(err));
  }
}

// Scales vary by orders of magnitude across rows; the relative error must not.
TEST(QuantizeTest, ErrorIsScaleInvariant) {
  const int64_t kPerRow = 512;
  for (const float sigma : {0.02f, 1e3f}) {
    const std::vector<float> x = RandomNormal(4 * kPerRow, 11, sigma);
    for (const Bound& b : kBounds) {
      EXPECT_LE(RelativeRmsError(x, RoundTrip(b.type, x, kPerRow)), b.max_rel_rms)
          << DTypeName(b.type) << " sigma " << sigma;
    }
  }
}

TEST(QuantizeTest, RequantizingDecodedDataIsStable) {
  const int64_t kPerRow = 512;
  const std::vector<float> x = RandomNormal(8 * kPerRow, 3);
  for (const Bound& b : kBounds) {
    const std::vector<float> y1 = RoundTrip(b.type, x, kPerRow);
    const std::vector<float> y2 = RoundTrip(b.type, y1, kPerRow);
    // Decoded data lies on the grid (or very near it): a second pass moves it
    // far less than the first pass did.
    EXPECT_LE(RelativeRmsError(y1, y2), 0.25 * b.max_rel_rms + 1e-7) << DTypeName(b.type);
  }
}

TEST(QuantizeTest, SimpleQuantsAreIdempotent) {
  const int64_t kPerRow = 256;
  const std::vector<float> x = RandomNormal(4 * kPerRow, 5);
  for (const DType type : {DType::kQ8_0, DType::kQ4_0, DType::kF16, DType::kBF16}) {
    std::vector<uint8_t> q1;
    std::vector<uint8_t> q2;
    const std::vector<float> y1 = RoundTrip(type, x, kPerRow, &q1);
    RoundTrip(type, y1, kPerRow, &q2);
    EXPECT_EQ(q1, q2) << DTypeName(type);
  }
}

TEST(QuantizeTest, ConstantRow) {
  for (const float c : {0.7f, -3.25f}) {
    const std::vector<float> x(512, c);
    for (const Bound& b : kBounds) {
      const std::vector<float> y = RoundTrip(b.type, x, 512);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], c, std::fabs(c) * std::max(0.01, b.max_rel_rms))
            << DTypeName(b.type) << " element " << i;
      }
    }
  }
}

TEST(QuantizeTest, OneOutlier) {
  std::vector<float> x = RandomNormal(512, 9, 0.01f);
  x[300] = 100.0f;
  for (const Bound& b : kBounds) {
    const std::vector<float> y = RoundTrip(b.type, x, 512);
    for (float v : y) ASSERT_TRUE(std::isfinite(v)) << DTypeName(b.type);
    EXPECT_NEAR(y[300], 100.0f, 100.0f * b.max_rel_rms) << DTypeName(b.type);
    // Blocks without the outlier keep their own precision.
    std::vector<float> head(x.begin(), x.begin() + 256);
    std::vector<float> head_y(y.begin(), y.begin() + 256);
    // (256 samples: allow for sampling spread around the bound.)
    EXPECT_LE(RelativeRmsError(head, head_y), 1.25 * b.max_rel_rms) << DTypeName(b.type);
  }
}

TEST(QuantizeTest, ZeroRowDecodesToZeros) {
  const std::vector<float> x(1024, 0.0f);
  for (const Bound& b : kBounds) {
    const std::vector<float> y = RoundTrip(b.type, x, 1024);
    for (float v : y) ASSERT_EQ(v, 0.0f) << DTypeName(b.type);
  }
}

TEST(QuantizeTest, TinyValuesDoNotProduceNan) {
  std::vector<float> x = RandomNormal(512, 13, 1e-38f);
  x[5] = 1e-44f;
  for (const Bound& b : kBounds) {
    const std::vector<float> y = RoundTrip(b.type, x, 512);
    for (float v : y) {
      ASSERT_TRUE(std::isfinite(v)) << DTypeName(b.type);
      ASSERT_LE(std::fabs(v), 1e-36f) << DTypeName(b.type);
    }
  }
}

TEST(QuantizeTest, Q8_0ElementsWithinHalfAStep) {
  const std::vector<float> x = RandomNormal(1024, 17);
  std::vector<uint8_t> q;
  const std::vector<float> y = RoundTrip(DType::kQ8_0, x, 1024, &q);
  for (size_t blk = 0; blk < x.size() / kQK; ++blk) {
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[blk * kQK + j]));
    const float d = amax / 127;
    for (int j = 0; j < kQK; ++j) {
      const size_t i = blk * kQK + j;
      // Half a step, plus the half-precision rounding of d over 127 steps.
      EXPECT_LE(std::fabs(x[i] - y[i]), 0.5f * d + 127 * d * 0x1p-11f) << i;
    }
  }
}

// Given the scales a K-quant stored, every element must sit on the level of its
// sub-block nearest to the input. The levels are read back through the
// decoder by overwriting a block's quants with one level everywhere.
template <typename Block>
void SetAllLevels(Block* b, int q);
template <>
void SetAllLevels(BlockQ4_K* b, int q) {
  std::memset(b->qs, q | (q << 4), sizeof(b->qs));
}
template <>
void SetAllLevels(BlockQ5_K* b, int q) {
  std::memset(b->qs, (q & 15) | ((q & 15) << 4), sizeof(b->qs));
  std::memset(b->qh, (q >> 4) ? 0xff : 0, sizeof(b->qh));
}
template <>
void SetAllLevels(BlockQ6_K* b, int q) {
  std::memset(b->ql, (q & 15) | ((q & 15) << 4), sizeof(b->ql));
  const int h = q >> 4;
  std::memset(b->qh, h | (h << 2) | (h << 4) | (h << 6), sizeof(b->qh));
}

template <typename Block>
void ExpectNearestLevels(DType type, int n_levels) {
  const std::vector<float> x = RandomNormal(4 * kQKK, 23);
  std::vector<uint8_t> q;
  const std::vector<float> y = RoundTrip(type, x, kQKK * 4, &q);
  const auto* blocks = reinterpret_cast<const Block*>(q.data());
  for (int blk = 0; blk < 4; ++blk) {
    std::vector<std::vector<float>> levels(n_levels, std::vector<float>(kQKK));
    for (int l = 0; l < n_levels; ++l) {
      Block b = blocks[blk];
      SetAllLevels(&b, l);
      ASSERT_TRUE(DequantizeRow(type, &b, levels[l].data(), kQKK).ok());
    }
    for (int e = 0; e < kQKK; ++e) {
      const size_t i = static_cast<size_t>(blk * kQKK + e);
      float best = std::numeric_limits<float>::infinity();
      for (int l = 0; l < n_levels; ++l) best = std::min(best, std::fabs(x[i] - levels[l][e]));
      const float step = std::fabs(levels[1][e] - levels[0][e]);
      EXPECT_LE(std::fabs(x[i] - y[i]), best + 1e-3f * step) << DTypeName(type) << " " << i;
    }
  }
}

TEST(QuantizeTest, KQuantsPickNearestLevel) {
  ExpectNearestLevels<BlockQ4_K>(DType::kQ4_K, 16);
  ExpectNearestLevels<BlockQ5_K>(DType::kQ5_K, 32);
  ExpectNearestLevels<BlockQ6_K>(DType::kQ6_K, 64);
}

TEST(QuantizeTest, RowsAreIndependent) {
  const int64_t kPerRow = 512;
  const std::vector<float> x = RandomNormal(3 * kPerRow, 29);
  for (const Bound& b : kBounds) {
    const uint64_t row_bytes = RowBytes(b.type, kPerRow).value();
    std::vector<uint8_t> all(3 * row_bytes);
    ASSERT_TRUE(QuantizeRows(b.type, x.data(), 3, kPerRow, all.data()).ok());
    std::vector<uint8_t> one(row_bytes);
    ASSERT_TRUE(QuantizeRows(b.type, x.data() + kPerRow, 1, kPerRow, one.data()).ok());
    EXPECT_EQ(0, std::memcmp(one.data(), all.data() + row_bytes, row_bytes)) << DTypeName(b.type);
  }
}

TEST(QuantizeTest, RejectsBadArguments) {
  std::vector<float> x(512, 1.0f);
  std::vector<uint8_t> out(4096);
  EXPECT_EQ(QuantizeRows(DType::kQ4_K, x.data(), 1, 128, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(DType::kQ8_0, x.data(), 1, 33, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(DType::kQ4_1, x.data(), 1, 32, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(DType::kQ8_0, nullptr, 1, 32, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(DType::kQ8_0, x.data(), 1, 32, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRows(DType::kQ8_0, x.data(), -1, 32, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  x[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(QuantizeRows(DType::kQ6_K, x.data(), 1, 256, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(QuantizeRows(DType::kF16, x.data(), 1, 256, out.data()).ok());
  EXPECT_TRUE(QuantizeRows(DType::kQ8_0, x.data(), 0, 32, out.data()).ok());
}

TEST(QuantizeTest, CanQuantize) {
  for (const DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                        DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    EXPECT_TRUE(CanQuantize(t)) << DTypeName(t);
  }
  for (const DType t : {DType::kQ4_1, DType::kQ5_0, DType::kQ2_K, DType::kQ8_K}) {
    EXPECT_FALSE(CanQuantize(t)) << DTypeName(t);
  }
}

}  // namespace
}  // namespace chord::quant
