#include "kernels/cuda/matvec.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/matvec_q8.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/test_util.h"

namespace chord::cuda {
namespace {

using testing::ExpectSameRounding;
using testing::MakeMatrix;
using testing::Poisoned;
using testing::RandomFloats;
using testing::TestMatrix;
using testing::ToDevice;
using testing::ToHost;

class MatVecTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { CHORD_SKIP_WITHOUT_GPU(); }
};

TEST_P(MatVecTest, MatchesDequantizedReferenceAtSeveralBatchSizes) {
  const DType type = GetParam();
  uint32_t seed = 100 + static_cast<uint32_t>(type);
  std::vector<std::pair<int64_t, int64_t>> shapes = {{37, 256}, {300, 1024}, {129, 2816}};
  if (type == DType::kF32 || type == DType::kF16)
    shapes.push_back({21, 172});  // not a multiple of 32
  for (const auto& [rows, cols] : shapes) {
    const TestMatrix m = MakeMatrix(type, rows, cols, seed++);
    for (const int n : {1, 2, 3, 7, 8, 13}) {
      const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed++);
      const std::vector<float> y0 = RandomFloats(static_cast<size_t>(n * rows), seed++);
      for (const bool accumulate : {false, true}) {
        DeviceBuffer dx = ToDevice(x);
        DeviceBuffer dy = accumulate ? ToDevice(y0) : Poisoned<float>(y0.size());
        ASSERT_EQ(LaunchMatVec(m.view, dx.as<float>(), n, dy.as<float>(), accumulate, nullptr),
                  cudaSuccess);
        const std::vector<float> y = ToHost<float>(dy, y0.size());
        for (int t = 0; t < n; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            double ref = accumulate ? y0[t * rows + r] : 0.0, mag = std::abs(ref);
            for (int64_t c = 0; c < cols; ++c) {
              const double term = static_cast<double>(m.decoded[r * cols + c]) * x[t * cols + c];
              ref += term;
              mag += std::abs(term);
            }
            ASSERT_NEAR(y[t * rows + r], ref, 2e-5 * mag + 1e-6)
                << DTypeName(type) << " rows=" << rows << " cols=" << cols << " n=" << n
                << " t=" << t << " r=" << r;
          }
        }
      }
    }
  }
}

TEST_P(MatVecTest, DequantizedRowsAndHalfMatrixMatchTheCpuDecoder) {
  const DType type = GetParam();
  const int64_t rows = 50, cols = 512;
  const TestMatrix m = MakeMatrix(type, rows, cols, 7 + static_cast<uint32_t>(type));
  const std::vector<int32_t> ids = {3, 0, 49, 17, 3};
  DeviceBuffer d_ids = ToDevice(ids);
  DeviceBuffer out = Poisoned<float>(ids.size() * cols);
  ASSERT_EQ(LaunchDequantizeRows(m.view, d_ids.as<int32_t>(), static_cast<int>(ids.size()),
                                 out.as<float>(), nullptr),
            cudaSuccess);
  const std::vector<float> rows_out = ToHost<float>(out, ids.size() * cols);
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t c = 0; c < cols; ++c) {
      const float ref = m.decoded[ids[i] * cols + c];
      ASSERT_NEAR(rows_out[i * cols + c], ref, 1e-6f * std::abs(ref) + 1e-7f) << i << "," << c;
    }
  }
  DeviceBuffer half = Poisoned<uint16_t>(static_cast<size_t>(rows * cols));
  ASSERT_EQ(LaunchDequantizeToHalf(m.view, half.as<uint16_t>(), nullptr), cudaSuccess);
  const std::vector<uint16_t> h = ToHost<uint16_t>(half, static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float ref = m.decoded[i];
    ASSERT_NEAR(quant::HalfToFloat(h[i]), ref, 1e-3f * std::abs(ref) + 1e-7f) << i;
  }
}

// One token's embedding with the first norm's rounding in the same launch:
// the row LaunchDequantizeRows writes and the rounding and sums of squares
// LaunchRmsNormRoundDeferred then writes from it, bit for bit.
TEST_P(MatVecTest, AnEmbeddedRowWithItsNormRoundingEqualsTheSeparateLaunches) {
  const DType type = GetParam();
  const int64_t rows = 40, cols = 1024;
  const TestMatrix m = MakeMatrix(type, rows, cols, 17 + static_cast<uint32_t>(type));
  ASSERT_TRUE(DequantizeRowRmsRoundSupports(m.view));
  DeviceBuffer id = ToDevice(std::vector<int32_t>{29});
  DeviceBuffer weight = ToDevice(RandomFloats(static_cast<size_t>(cols), 18));
  const auto n = static_cast<size_t>(cols);
  DeviceBuffer fused_row = Poisoned<float>(n), plain_row = Poisoned<float>(n);
  DeviceBuffer fused_q = Poisoned<uint8_t>(Q8ActivationBytes(1, cols));
  DeviceBuffer plain_q = Poisoned<uint8_t>(Q8ActivationBytes(1, cols));
  DeviceBuffer fused_sums = Poisoned<double>(n / 32), plain_sums = Poisoned<double>(n / 32);
  RmsRounding next;
  next.weight = weight.as<float>();
  next.out = Q8ActivationsIn(fused_q.data(), 1, cols);
  next.sum_squares = fused_sums.as<double>();
  ASSERT_EQ(
      LaunchDequantizeRowRmsRound(m.view, id.as<int32_t>(), fused_row.as<float>(), next, nullptr),
      cudaSuccess);
  ASSERT_EQ(LaunchDequantizeRows(m.view, id.as<int32_t>(), 1, plain_row.as<float>(), nullptr),
            cudaSuccess);
  const Q8Activations plain = Q8ActivationsIn(plain_q.data(), 1, cols);
  ASSERT_EQ(LaunchRmsNormRoundDeferred(plain_row.as<float>(), weight.as<float>(), cols, plain,
                                       plain_sums.as<double>(), nullptr),
            cudaSuccess);
  EXPECT_EQ(ToHost<float>(fused_row, n), ToHost<float>(plain_row, n));
  ExpectSameRounding(next.out, plain, n);
  EXPECT_EQ(ToHost<double>(fused_sums, n / 32), ToHost<double>(plain_sums, n / 32));
  // Rows that are not whole 256-element blocks (types of 32-element blocks
  // or none) are refused.
  if (type == DType::kQ4_K || type == DType::kQ5_K || type == DType::kQ6_K) return;
  const TestMatrix narrow = MakeMatrix(type, 4, 96, 19);
  EXPECT_FALSE(DequantizeRowRmsRoundSupports(narrow.view));
  EXPECT_EQ(LaunchDequantizeRowRmsRound(narrow.view, id.as<int32_t>(), fused_row.as<float>(), next,
                                        nullptr),
            cudaErrorInvalidValue);
}

INSTANTIATE_TEST_SUITE_P(Types, MatVecTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kQ4_0, DType::kQ8_0,
                                           DType::kQ4_K, DType::kQ5_K, DType::kQ6_K),
                         [](const auto& param_info) {
                           return std::string(DTypeName(param_info.param));
                         });

TEST(GemmHalfTest, MatchesDoubleReferenceWithinHalfRounding) {
  CHORD_SKIP_WITHOUT_GPU();
  const int64_t rows = 192, cols = 512, n = 40;
  const TestMatrix m = MakeMatrix(DType::kQ4_K, rows, cols, 91);
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), 92);
  const std::vector<float> y0 = RandomFloats(static_cast<size_t>(n * rows), 93);
  DeviceBuffer dx = ToDevice(x), dy = ToDevice(y0);
  DeviceBuffer wh = Poisoned<uint16_t>(static_cast<size_t>(rows * cols));
  DeviceBuffer xh = Poisoned<uint16_t>(x.size());
  ASSERT_EQ(LaunchDequantizeToHalf(m.view, wh.as<uint16_t>(), nullptr), cudaSuccess);
  ASSERT_EQ(LaunchFloatToHalf(dx.as<float>(), n * cols, xh.as<uint16_t>(), nullptr), cudaSuccess);
  auto blas = BlasHandle::Create(nullptr);
  ASSERT_TRUE(blas.ok()) << blas.status();
  ASSERT_TRUE(
      blas->GemmHalf(wh.as<uint16_t>(), rows, cols, xh.as<uint16_t>(), n, dy.as<float>(), true)
          .ok());
  const std::vector<float> y = ToHost<float>(dy, y0.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = y0[t * rows + r], mag = std::abs(ref);
      for (int64_t c = 0; c < cols; ++c) {
        const double term = static_cast<double>(m.decoded[r * cols + c]) * x[t * cols + c];
        ref += term;
        mag += std::abs(term);
      }
      ASSERT_NEAR(y[t * rows + r], ref, 2e-3 * mag) << t << "," << r;
    }
  }
}

}  // namespace
}  // namespace chord::cuda
