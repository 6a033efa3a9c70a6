// The tensor-core product over quantized weights against a double-precision
// host reference on random data: every weight type it reads, row counts that
// leave a partial tile, batches that leave a partial token tile, with and
// without accumulation.
#include "kernels/cuda/matmul_mma.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/tensor/dtype.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/test_util.h"

namespace chord::cuda {
namespace {

using testing::MakeMatrix;
using testing::Poisoned;
using testing::RandomFloats;
using testing::TestMatrix;
using testing::ToDevice;
using testing::ToHost;

struct Shape {
  int64_t rows, cols;
  int n;
};

void ExpectMatchesReference(DType type, Shape shape, bool accumulate, bool split_k, uint32_t seed) {
  const auto [rows, cols, n] = shape;
  const TestMatrix m = MakeMatrix(type, rows, cols, seed);
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed + 1);
  const std::vector<float> y0 = RandomFloats(static_cast<size_t>(n * rows), seed + 2);
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer dy = accumulate ? ToDevice(y0) : Poisoned<float>(y0.size());
  DeviceBuffer xh = Poisoned<uint16_t>(x.size());
  ASSERT_EQ(LaunchFloatToHalf(dx.as<float>(), n * cols, xh.as<uint16_t>(), nullptr), cudaSuccess);
  const size_t scratch_floats = split_k ? MatMulMmaScratchFloats(rows, cols, n) : 0;
  DeviceBuffer scratch = Poisoned<float>(std::max<size_t>(scratch_floats, 1));
  ASSERT_EQ(LaunchMatMulMma(m.view, xh.as<uint16_t>(), n, dy.as<float>(), accumulate,
                            split_k ? scratch.as<float>() : nullptr, scratch_floats, nullptr),
            cudaSuccess);
  const std::vector<float> y = ToHost<float>(dy, y0.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = accumulate ? y0[t * rows + r] : 0.0;
      double mag = std::abs(ref);
      for (int64_t c = 0; c < cols; ++c) {
        const double term = static_cast<double>(m.decoded[r * cols + c]) * x[t * cols + c];
        ref += term;
        mag += std::abs(term);
      }
      // Weights and activations are rounded to half (2^-11 relative each).
      ASSERT_NEAR(y[t * rows + r], ref, 2e-3 * mag)
          << DTypeName(type) << " " << rows << "x" << cols << " n=" << n << (split_k ? " split-K" : "")
          << " token " << t << " row " << r;
    }
  }
}

TEST(MatMulMmaTest, MatchesDoubleReferenceForEveryTypeAndShape) {
  CHORD_SKIP_WITHOUT_GPU();
  uint32_t seed = 300;
  for (const DType type : {DType::kQ4_K, DType::kQ6_K, DType::kQ5_K, DType::kQ8_0, DType::kQ4_0, DType::kF16,
                           DType::kF32}) {
    for (const Shape shape : {Shape{64, 256, 1}, Shape{130, 512, 70}, Shape{256, 1024, 64}, Shape{40, 768, 9}}) {
      for (const bool accumulate : {false, true}) {
        for (const bool split_k : {false, true}) {
          ExpectMatchesReference(type, shape, accumulate, split_k, seed);
          seed += 3;
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(MatMulMmaTest, SplitsKOnlyWhereTilesAreFew) {
  EXPECT_GT(MatMulMmaScratchFloats(4096, 4096, 16), 0u);  // 128 row tiles: too few blocks alone
  EXPECT_EQ(MatMulMmaScratchFloats(4096, 128, 16), 0u);   // one K step: nothing to split
  EXPECT_EQ(MatMulMmaScratchFloats(32000, 4096, 64), 0u);  // 1,000 row tiles are enough
}

TEST(MatMulMmaTest, RefusesWhatItDoesNotRead) {
  EXPECT_TRUE(MatMulMmaSupports(static_cast<uint32_t>(DType::kQ4_K), 4096));
  EXPECT_FALSE(MatMulMmaSupports(static_cast<uint32_t>(DType::kQ8_0), 96));  // not a multiple of 128
  EXPECT_FALSE(MatMulMmaSupports(static_cast<uint32_t>(DType::kQ4_K), 128));  // not whole Q4_K blocks
  EXPECT_FALSE(MatMulMmaSupports(static_cast<uint32_t>(DType::kBF16), 4096));
  const DeviceMatrix none{static_cast<uint32_t>(DType::kQ4_K), 64, 256, 144, nullptr};
  EXPECT_NE(LaunchMatMulMma(none, nullptr, 0, nullptr, false, nullptr, 0, nullptr), cudaSuccess);
}

}  // namespace
}  // namespace chord::cuda
