// The activation rounding of the integer tensor-core product, and the product
// against a double-precision host reference on random data from the same
// rounded activations: Q4_K and Q6_K, row
// counts that leave a partial row tile, batches that leave a partial token
// tile, Q6_K rows whose blocks start off 16-byte boundaries, with and without
// accumulation and split-K.
#include "kernels/cuda/matmul_q8_mma.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/tensor/dtype.h"
#include "kernels/cuda/matmul_mma.h"
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

// The activations as the device rounded them: values and per-256 scales
// out of the records.
struct Rounded {
  std::vector<int8_t> q;
  std::vector<float> scale;   // per 256
  std::vector<int16_t> sums;  // per 32
};

Rounded CopyRounded(const DeviceBuffer& records, int n, int64_t cols) {
  const size_t count = static_cast<size_t>(n) * static_cast<size_t>(cols / 256);
  const std::vector<uint8_t> bytes = ToHost<uint8_t>(records, count * kQ8KRecordBytes);
  Rounded r;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* record = bytes.data() + i * kQ8KRecordBytes;
    r.q.insert(r.q.end(), reinterpret_cast<const int8_t*>(record),
               reinterpret_cast<const int8_t*>(record) + 256);
    for (int s = 0; s < 8; ++s) {
      r.sums.push_back(
          static_cast<int16_t>(32 * static_cast<int8_t>(record[256 + s]) + record[264 + s]));
      EXPECT_LT(record[264 + s], 32);
    }
    float d;
    std::memcpy(&d, record + 272, 4);
    r.scale.push_back(d);
  }
  return r;
}

TEST(MatMulQ8MmaTest, ActivationsRoundPer256WithSumsPer32) {
  CHORD_SKIP_WITHOUT_GPU();
  const int n = 3;
  const int64_t cols = 1024;
  std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), 17, 3.0f);
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // an all-zero block: scale 0, values 0
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer records = Poisoned<uint8_t>(Q8KActivationBytes(n, cols));
  ASSERT_EQ(LaunchQuantizeActivationsQ8K(dx.as<float>(), n, cols, records.data(), nullptr),
            cudaSuccess);
  const Rounded r = CopyRounded(records, n, cols);
  for (size_t b = 0; b < r.scale.size(); ++b) {
    float amax = 0.0f;
    for (size_t i = 0; i < 256; ++i) amax = std::max(amax, std::abs(x[b * 256 + i]));
    ASSERT_FLOAT_EQ(r.scale[b], amax / 127.0f) << b;
  }
  EXPECT_EQ(r.scale[1], 0.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = r.scale[i / 256];
    ASSERT_LE(std::abs(r.q[i] * d - x[i]), 0.5001f * d + 1e-7f) << i;
  }
  for (size_t s = 0; s < r.sums.size(); ++s) {
    int sum = 0;
    for (size_t i = 0; i < 32; ++i) sum += r.q[s * 32 + i];
    ASSERT_EQ(r.sums[s], sum) << s;
  }
  EXPECT_NE(LaunchQuantizeActivationsQ8K(dx.as<float>(), n, 96, records.data(), nullptr),
            cudaSuccess);
}

void ExpectMatchesReference(DType type, Shape shape, bool accumulate, bool split_k, uint32_t seed) {
  const auto [rows, cols, n] = shape;
  const TestMatrix m = MakeMatrix(type, rows, cols, seed);
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed + 1, 2.0f);
  const std::vector<float> y0 = RandomFloats(static_cast<size_t>(n * rows), seed + 2);
  ASSERT_TRUE(MatMulQ8MmaSupports(m.view));
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer records = Poisoned<uint8_t>(Q8KActivationBytes(n, cols));
  ASSERT_EQ(LaunchQuantizeActivationsQ8K(dx.as<float>(), n, cols, records.data(), nullptr),
            cudaSuccess);
  const Rounded rounded = CopyRounded(records, n, cols);
  DeviceBuffer dy = accumulate ? ToDevice(y0) : Poisoned<float>(y0.size());
  const size_t scratch_floats = split_k ? MatMulQ8MmaScratchFloats(m.view, n) : 0;
  DeviceBuffer scratch = Poisoned<float>(std::max<size_t>(scratch_floats, 1));
  ASSERT_EQ(LaunchMatMulQ8Mma(m.view, records.data(), n, dy.as<float>(), accumulate,
                              split_k ? scratch.as<float>() : nullptr, scratch_floats, nullptr),
            cudaSuccess);
  const std::vector<float> y = ToHost<float>(dy, y0.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = accumulate ? y0[t * rows + r] : 0.0, exact = ref;
      double mag = std::abs(ref);
      for (int64_t c = 0; c < cols; ++c) {
        const size_t i = static_cast<size_t>(t * cols + c);
        const double w = m.decoded[r * cols + c];
        const double term = w * rounded.q[i] * rounded.scale[i / 256];
        ref += term;
        mag += std::abs(term);
        exact += w * x[i];
      }
      const float got = y[t * rows + r];
      // From the same rounded activations: float rounding only.
      ASSERT_NEAR(got, ref, 2e-5 * mag + 1e-5)
          << DTypeName(type) << " " << rows << "x" << cols << " n=" << n
          << (split_k ? " split-K" : "") << (accumulate ? " accumulate" : "") << " token " << t
          << " row " << r;
      // From the exact activations: within the rounding's error.
      ASSERT_NEAR(got, exact, 2e-2 * mag + 1e-5);
    }
  }
}

TEST(MatMulQ8MmaTest, MatchesTheRoundedReferenceForEveryShape) {
  CHORD_SKIP_WITHOUT_GPU();
  uint32_t seed = 700;
  // 2816 = 11 blocks: Q6_K rows of 2310 bytes, so blocks start at every even
  // offset from a 16-byte boundary; 70 and 130 leave partial tiles.
  for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
    for (const Shape shape : {Shape{64, 256, 9}, Shape{130, 512, 70}, Shape{256, 1024, 64},
                              Shape{40, 768, 33}, Shape{77, 2816, 130}, Shape{512, 4096, 16}}) {
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

// Splitting K changes only which blocks add which partial sums, in a fixed
// order: the same call gives the same bits every time.
TEST(MatMulQ8MmaTest, RepeatedLaunchesGiveTheSameBits) {
  CHORD_SKIP_WITHOUT_GPU();
  const int64_t rows = 300, cols = 2048;
  const int n = 40;
  for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
    const TestMatrix m = MakeMatrix(type, rows, cols, 41);
    DeviceBuffer dx = ToDevice(RandomFloats(static_cast<size_t>(n * cols), 42));
    DeviceBuffer records = Poisoned<uint8_t>(Q8KActivationBytes(n, cols));
    ASSERT_EQ(LaunchQuantizeActivationsQ8K(dx.as<float>(), n, cols, records.data(), nullptr),
              cudaSuccess);
    const size_t scratch_floats = MatMulQ8MmaScratchFloats(m.view, n);
    ASSERT_GT(scratch_floats, 0u);
    DeviceBuffer scratch = Poisoned<float>(scratch_floats);
    std::vector<float> first;
    for (int run = 0; run < 3; ++run) {
      DeviceBuffer dy = Poisoned<float>(static_cast<size_t>(n * rows));
      ASSERT_EQ(LaunchMatMulQ8Mma(m.view, records.data(), n, dy.as<float>(), false,
                                  scratch.as<float>(), scratch_floats, nullptr),
                cudaSuccess);
      const std::vector<float> y = ToHost<float>(dy, static_cast<size_t>(n * rows));
      if (run == 0) {
        first = y;
      } else {
        ASSERT_EQ(y, first) << DTypeName(type);
      }
    }
  }
}

TEST(MatMulQ8MmaTest, RefusesWhatItDoesNotRead) {
  alignas(16) static uint8_t bytes[64];
  const auto matrix = [](DType type, int64_t cols, void* data) {
    return DeviceMatrix{static_cast<uint32_t>(type), 64, cols, *RowBytes(type, cols), data};
  };
  EXPECT_TRUE(MatMulQ8MmaSupports(matrix(DType::kQ4_K, 4096, bytes)));
  EXPECT_TRUE(MatMulQ8MmaSupports(matrix(DType::kQ6_K, 11008, bytes)));
  EXPECT_FALSE(MatMulQ8MmaSupports(matrix(DType::kQ8_0, 4096, bytes)));
  EXPECT_FALSE(MatMulQ8MmaSupports(matrix(DType::kQ5_K, 4096, bytes)));
  EXPECT_FALSE(MatMulQ8MmaSupports(matrix(DType::kQ4_K, 4096, bytes + 4)));  // not 16-byte aligned
  const DeviceMatrix square{static_cast<uint32_t>(DType::kQ4_K), 4096, 4096, 2304, bytes};
  EXPECT_GT(MatMulQ8MmaScratchFloats(square, 64), 0u);  // 64 row tiles: too few blocks alone
  const DeviceMatrix one_step{static_cast<uint32_t>(DType::kQ4_K), 4096, 256, 144, bytes};
  EXPECT_EQ(MatMulQ8MmaScratchFloats(one_step, 64), 0u);  // one K step: nothing to split
  const DeviceMatrix tall{static_cast<uint32_t>(DType::kQ4_K), 11008, 4096, 2304, bytes};
  EXPECT_EQ(MatMulQ8MmaScratchFloats(tall, 128), 0u);  // 344 tiles nearly fill a wave
  const DeviceMatrix none{static_cast<uint32_t>(DType::kQ4_K), 64, 256, 144, nullptr};
  EXPECT_NE(LaunchMatMulQ8Mma(none, bytes, 16, nullptr, false, nullptr, 0, nullptr), cudaSuccess);
  EXPECT_NE(LaunchMatMulQ8Mma(square, bytes + 4, 16, nullptr, false, nullptr, 0, nullptr),
            cudaSuccess);
}

}  // namespace
}  // namespace chord::cuda
