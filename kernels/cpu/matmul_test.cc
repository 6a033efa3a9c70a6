// Checks the quantized matrix products against a plain double-precision
// reference on random data, and the batch- and thread-count invariance that
// chord's contracts rely on.
#include "kernels/cpu/matmul.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/quant/blocks.h"
#include "common/quant/quant.h"
#include "gtest/gtest.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/test_data.h"

namespace chord::kernels {
namespace {

// What the product should be: the weights dequantized, the activations rounded
// as the kernel's activation format rounds them, summed in double.
double ReferenceDot(DType type, const uint8_t* row, const float* x, int64_t n) {
  std::vector<float> w(static_cast<size_t>(n));
  EXPECT_TRUE(quant::DequantizeRow(type, row, w.data(), n).ok());
  std::vector<float> a(x, x + n);
  const DType act = ActivationTypeFor(type);
  if (act == DType::kQ8_0 || act == DType::kQ8_1) {
    std::vector<quant::BlockQ8_0> q(static_cast<size_t>(n / quant::kQK));
    QuantizeActivationsQ8_0(x, n, q.data());
    EXPECT_TRUE(quant::DequantizeRow(DType::kQ8_0, q.data(), a.data(), n).ok());
  } else if (act == DType::kQ8_K) {
    std::vector<quant::BlockQ8_K> q(static_cast<size_t>(n / quant::kQKK));
    QuantizeActivationsQ8_K(x, n, q.data());
    for (int64_t i = 0; i < n; ++i) {
      a[static_cast<size_t>(i)] = q[static_cast<size_t>(i / quant::kQKK)].d *
                                  q[static_cast<size_t>(i / quant::kQKK)].qs[i % quant::kQKK];
    }
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i)
    sum += static_cast<double>(w[static_cast<size_t>(i)]) * a[static_cast<size_t>(i)];
  return sum;
}

// Q4_1/Q5_1 products use s = d * sum(q) of each activation block stored as a
// half float, as llama.cpp's Q8_1 does: that rounding (relative 2^-11 of m * s
// per block) is the one allowed difference from the exact reference.
double Q8_1RoundingBound(DType type, const uint8_t* row, const float* x, int64_t n) {
  if (ActivationTypeFor(type) != DType::kQ8_1) return 0.0;
  const int64_t blocks = n / quant::kQK;
  std::vector<BlockQ8_1> act(static_cast<size_t>(blocks));
  QuantizeActivationsQ8_1(x, n, act.data());
  const int64_t block_bytes = GetDTypeInfo(type).block_bytes;
  double bound = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    uint16_t m;
    std::memcpy(&m, row + b * block_bytes + 2, 2);
    bound += std::fabs(quant::HalfToFloat(m) * quant::HalfToFloat(act[static_cast<size_t>(b)].s)) *
             0x1p-11;
  }
  return bound;
}

class MatMulTypeTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatMulTypeTest, MatchesDoublePrecisionReference) {
  const DType type = GetParam();
  std::mt19937 rng(1234 + static_cast<int>(type));
  const int64_t rows = 24, cols = 512, n_tokens = 3;
  std::vector<uint8_t> weights = RandomWeights(type, rows, cols, rng);
  const WeightMatrix w{type, rows, cols, RowBytes(type, cols).value(), weights.data()};
  std::vector<float> x = RandomActivations(n_tokens * cols, rng);
  std::vector<float> y(static_cast<size_t>(n_tokens * rows));
  ThreadPool pool(2);
  MatMul matmul(pool);
  ASSERT_TRUE(matmul.Run(w, x.data(), n_tokens, y.data()).ok());
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      const double expected = ReferenceDot(type, w.row(r), x.data() + t * cols, cols);
      const double got = y[static_cast<size_t>(t * rows + r)];
      const double bound = 1e-4 * (1.0 + std::fabs(expected)) +
                           Q8_1RoundingBound(type, w.row(r), x.data() + t * cols, cols);
      EXPECT_NEAR(got, expected, bound) << DTypeName(type) << " token " << t << " row " << r;
    }
  }
}

TEST_P(MatMulTypeTest, SameBitsForAnyBatchSizeAndThreadCount) {
  const DType type = GetParam();
  std::mt19937 rng(99 + static_cast<int>(type));
  const int64_t rows = 37, cols = 256, n_tokens = 5;
  std::vector<uint8_t> weights = RandomWeights(type, rows, cols, rng);
  const WeightMatrix w{type, rows, cols, RowBytes(type, cols).value(), weights.data()};
  std::vector<float> x = RandomActivations(n_tokens * cols, rng);

  ThreadPool pool_one(1);
  ThreadPool pool_three(3);
  MatMul single(pool_one);
  MatMul multi(pool_three);
  std::vector<float> batched(static_cast<size_t>(n_tokens * rows));
  ASSERT_TRUE(multi.Run(w, x.data(), n_tokens, batched.data()).ok());
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::vector<float> alone(static_cast<size_t>(rows));
    ASSERT_TRUE(single.Run(w, x.data() + t * cols, 1, alone.data()).ok());
    EXPECT_EQ(0, std::memcmp(alone.data(), batched.data() + t * rows, alone.size() * sizeof(float)))
        << DTypeName(type) << " token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(AllComputableTypes, MatMulTypeTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0,
                                           DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                                           DType::kQ4_K, DType::kQ5_K, DType::kQ6_K),
                         [](const auto& param_info) {
                           return std::string(DTypeName(param_info.param));
                         });

TEST(MatMulTest, RejectsTypeWithoutProduct) {
  ThreadPool pool(1);
  MatMul matmul(pool);
  std::vector<uint8_t> bytes(84);
  const WeightMatrix w{DType::kQ2_K, 1, 256, 84, bytes.data()};
  std::vector<float> x(256, 1.0f), y(1);
  EXPECT_EQ(matmul.Run(w, x.data(), 1, y.data()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ActivationQuantTest, Q8KRoundsHalfToEvenAndKeepsBlockSums) {
  std::vector<float> x(256);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (float& v : x) v = normal(rng);
  quant::BlockQ8_K block;
  QuantizeActivationsQ8_K(x.data(), 256, &block);
  for (int g = 0; g < 16; ++g) {
    int sum = 0;
    for (int j = 0; j < 16; ++j) sum += block.qs[g * 16 + j];
    EXPECT_EQ(sum, block.bsums[g]);
  }
  for (int j = 0; j < 256; ++j)
    EXPECT_NEAR(block.d * block.qs[j], x[static_cast<size_t>(j)], std::fabs(block.d) * 0.5001f);
}

}  // namespace
}  // namespace chord::kernels
