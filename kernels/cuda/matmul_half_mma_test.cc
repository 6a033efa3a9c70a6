// The half-precision tensor-core product straight from K-quant blocks
// against a double-precision host reference that decodes each weight as the
// kernel does (scale and min rounded to half, then the weight), on random
// data: Q4_K and Q6_K, row counts that leave a partial row tile, batches that
// leave a partial token tile or take several, Q6_K rows whose blocks start
// off 16-byte boundaries, with and without accumulation and split-K, and
// groups of matrices in one launch; and the activations' conversion to
// halves in mma order.
#include "kernels/cuda/matmul_half_mma.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "kernels/cuda/test_util.h"

namespace chord::cuda {
namespace {

using testing::MakeMatrix;
using testing::Poisoned;
using testing::RandomFloats;
using testing::TestMatrix;
using testing::ToDevice;
using testing::ToHost;

float RoundToHalf(double v) {
  return quant::HalfToFloat(quant::FloatToHalf(static_cast<float>(v)));
}

float HalfAt(const uint8_t* p) {
  return quant::HalfToFloat(static_cast<uint16_t>(p[0] | p[1] << 8));
}

// Sub-block j's 6-bit scale and min of a Q4_K block's 12 packed bytes.
void ScaleMin(int j, const uint8_t* q, int* scale, int* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// One 256-element block decoded as the kernel decodes it.
void DecodeLikeTheKernel(DType type, const uint8_t* block, float* out) {
  if (type == DType::kQ4_K) {
    const float d = HalfAt(block), dmin = HalfAt(block + 2);
    const uint8_t* qs = block + 16;
    for (int i = 0; i < 256; ++i) {
      const int group = i / 64, within = i % 64;
      const uint8_t byte = qs[32 * group + within % 32];
      const int q = within < 32 ? byte & 0xF : byte >> 4;
      int sc, m;
      ScaleMin(i / 32, block + 4, &sc, &m);
      const float scale = RoundToHalf(d * static_cast<float>(sc));
      const float neg_min = RoundToHalf(-(dmin * static_cast<float>(m)));
      out[i] = RoundToHalf(static_cast<double>(q) * scale + neg_min);
    }
    return;
  }
  const uint8_t *ql = block, *qh = block + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(block + 192);
  const float d = HalfAt(block + 208);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, q = (i % 128) / 32, l = i % 32;
    const int low = (ql[64 * h + 32 * (q & 1) + l] >> (4 * (q >> 1))) & 0xF;
    const int high = (qh[32 * h + l] >> (2 * q)) & 3;
    const float scale = RoundToHalf(d * static_cast<float>(scales[i / 16]));
    out[i] = RoundToHalf(static_cast<double>((low | high << 4) - 32) * scale);
  }
}

struct Shape {
  int64_t rows, cols;
  int n;
};

// y against the double-precision reference of m times the n rows of x
// (plus y0 when accumulating).
void ExpectReferenceSums(DType type, const TestMatrix& m, int64_t n, const std::vector<float>& x,
                         const std::vector<float>& y0, bool accumulate, const std::vector<float>& y,
                         const std::string& label) {
  const int64_t rows = m.view.rows, cols = m.view.cols;
  const int64_t blocks = cols / 256;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      DecodeLikeTheKernel(
          type, m.bytes.data() + r * m.view.row_bytes + b * (type == DType::kQ4_K ? 144 : 210),
          w.data() + r * cols + b * 256);
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = accumulate ? y0[t * rows + r] : 0.0, exact = ref;
      double mag = std::abs(ref);
      for (int64_t c = 0; c < cols; ++c) {
        const size_t i = static_cast<size_t>(t * cols + c);
        const double term = static_cast<double>(w[r * cols + c]) * RoundToHalf(x[i]);
        ref += term;
        mag += std::abs(term);
        exact += static_cast<double>(m.decoded[r * cols + c]) * x[i];
      }
      const float got = y[t * rows + r];
      // From the same halves: float sums only.
      ASSERT_NEAR(got, ref, 1e-5 * mag + 1e-5)
          << DTypeName(type) << " " << rows << "x" << cols << " n=" << n << label << " token " << t
          << " row " << r;
      // From the float weights and activations: within the halves' rounding.
      ASSERT_NEAR(got, exact, 4e-3 * mag + 1e-5);
    }
  }
}

void ExpectMatchesReference(DType type, Shape shape, bool accumulate, bool split_k, uint32_t seed) {
  const auto [rows, cols, n] = shape;
  const TestMatrix m = MakeMatrix(type, rows, cols, seed);
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed + 1, 2.0f);
  const std::vector<float> y0 = RandomFloats(static_cast<size_t>(n * rows), seed + 2);
  ASSERT_TRUE(MatMulHalfMmaSupports(m.view));
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer halves = Poisoned<uint16_t>(x.size());
  ASSERT_EQ(LaunchFloatToHalfMmaOrder(dx.as<float>(), n, cols, halves.as<uint16_t>(), nullptr),
            cudaSuccess);
  DeviceBuffer dy = accumulate ? ToDevice(y0) : Poisoned<float>(y0.size());
  const size_t scratch_floats = split_k ? MatMulHalfMmaScratchFloats(m.view, n) : 0;
  DeviceBuffer scratch = Poisoned<float>(std::max<size_t>(scratch_floats, 1));
  ASSERT_EQ(LaunchMatMulHalfMma(m.view, halves.as<uint16_t>(), n, dy.as<float>(), accumulate,
                                split_k ? scratch.as<float>() : nullptr, scratch_floats, nullptr),
            cudaSuccess);
  ExpectReferenceSums(type, m, n, x, y0, accumulate, ToHost<float>(dy, y0.size()),
                      std::string(split_k ? " split-K" : "") + (accumulate ? " accumulate" : ""));
}

TEST(MatMulHalfMmaTest, ActivationsInMmaOrder) {
  CHORD_SKIP_WITHOUT_GPU();
  const int n = 3;
  const int64_t cols = 264;
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), 11, 3.0f);
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer out = Poisoned<uint16_t>(x.size());
  ASSERT_EQ(LaunchFloatToHalfMmaOrder(dx.as<float>(), n, cols, out.as<uint16_t>(), nullptr),
            cudaSuccess);
  const std::vector<uint16_t> got = ToHost<uint16_t>(out, x.size());
  constexpr int kOrder[4] = {0, 2, 1, 3};
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(got[i], quant::FloatToHalf(x[i / 4 * 4 + kOrder[i % 4]])) << i;
  }
  EXPECT_NE(LaunchFloatToHalfMmaOrder(dx.as<float>(), n, 6, out.as<uint16_t>(), nullptr),
            cudaSuccess);
}

TEST(MatMulHalfMmaTest, MatchesTheReferenceForEveryShape) {
  CHORD_SKIP_WITHOUT_GPU();
  uint32_t seed = 900;
  // 2816 = 11 blocks: Q6_K rows of 2310 bytes, so blocks start at every even
  // offset from a 16-byte boundary; 70, 130 and 77 leave partial tiles.
  for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
    for (const Shape shape :
         {Shape{64, 256, 9}, Shape{96, 512, 3}, Shape{130, 1024, 8}, Shape{130, 512, 70},
          Shape{256, 1024, 64}, Shape{40, 768, 33}, Shape{77, 2816, 130}, Shape{512, 4096, 16}}) {
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
TEST(MatMulHalfMmaTest, RepeatedLaunchesGiveTheSameBits) {
  CHORD_SKIP_WITHOUT_GPU();
  const int64_t rows = 300, cols = 2048;
  const int n = 40;
  for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
    const TestMatrix m = MakeMatrix(type, rows, cols, 43);
    DeviceBuffer dx = ToDevice(RandomFloats(static_cast<size_t>(n * cols), 44));
    DeviceBuffer halves = Poisoned<uint16_t>(static_cast<size_t>(n * cols));
    ASSERT_EQ(LaunchFloatToHalfMmaOrder(dx.as<float>(), n, cols, halves.as<uint16_t>(), nullptr),
              cudaSuccess);
    const size_t scratch_floats = MatMulHalfMmaScratchFloats(m.view, n);
    ASSERT_GT(scratch_floats, 0u);
    DeviceBuffer scratch = Poisoned<float>(scratch_floats);
    std::vector<float> first;
    for (int run = 0; run < 3; ++run) {
      DeviceBuffer dy = Poisoned<float>(static_cast<size_t>(n * rows));
      ASSERT_EQ(LaunchMatMulHalfMma(m.view, halves.as<uint16_t>(), n, dy.as<float>(), false,
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

// A dependent launch (the product starting while the kernel before it still
// runs) reads the activations that kernel writes, not what the buffer held
// before: the same bits as an ordinary launch after it, for every group size
// and with split K.
TEST(MatMulHalfMmaTest, DependentLaunchReadsThePreviousKernelsResult) {
  CHORD_SKIP_WITHOUT_GPU();
  const int64_t rows = 200, cols = 4096;
  const int n = 64;
  absl::StatusOr<Stream> stream = Stream::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
    const TestMatrix m = MakeMatrix(type, rows, cols, 51);
    DeviceBuffer old_x = ToDevice(RandomFloats(static_cast<size_t>(n * cols), 52));
    DeviceBuffer new_x = ToDevice(RandomFloats(static_cast<size_t>(n * cols), 53));
    DeviceBuffer halves = Poisoned<uint16_t>(static_cast<size_t>(n * cols));
    const size_t scratch_floats = MatMulHalfMmaScratchFloats(m.view, n);
    DeviceBuffer scratch = Poisoned<float>(std::max<size_t>(scratch_floats, 1));
    std::vector<float> results[2];
    for (const bool overlap : {false, true}) {
      // The buffer first holds other activations, then the kernel right
      // before the product overwrites them.
      ASSERT_EQ(LaunchFloatToHalfMmaOrder(old_x.as<float>(), n, cols, halves.as<uint16_t>(),
                                          stream->get()),
                cudaSuccess);
      ASSERT_TRUE(stream->Synchronize().ok());
      DeviceBuffer dy = Poisoned<float>(static_cast<size_t>(n * rows));
      ASSERT_EQ(LaunchFloatToHalfMmaOrder(new_x.as<float>(), n, cols, halves.as<uint16_t>(),
                                          stream->get()),
                cudaSuccess);
      ASSERT_EQ(LaunchMatMulHalfMma(m.view, halves.as<uint16_t>(), n, dy.as<float>(), false,
                                    scratch.as<float>(), scratch_floats, stream->get(), overlap),
                cudaSuccess);
      ASSERT_TRUE(stream->Synchronize().ok());
      results[overlap ? 1 : 0] = ToHost<float>(dy, static_cast<size_t>(n * rows));
    }
    EXPECT_EQ(results[1], results[0]) << DTypeName(type);
  }
}

// Q/K/V-like groups in one launch: each output against the reference, with
// and without split K; row counts that end in partial tiles, so that tiles
// of the second and third matrices start mid-grid.
TEST(MatMulHalfMmaTest, GroupsMatchTheReference) {
  CHORD_SKIP_WITHOUT_GPU();
  const int64_t cols = 2048;  // 8 K steps: room for two splits
  uint32_t seed = 500;
  for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
    for (const int n : {5, 24, 64}) {
      for (const bool split_k : {false, true}) {
        const int64_t rows[3] = {130, 64, 77};
        std::vector<TestMatrix> m;
        std::vector<DeviceMatrix> views;
        for (const int64_t r : rows) {
          m.push_back(MakeMatrix(type, r, cols, seed++));
          views.push_back(m.back().view);
        }
        const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed++, 2.0f);
        DeviceBuffer dx = ToDevice(x);
        DeviceBuffer halves = Poisoned<uint16_t>(x.size());
        ASSERT_EQ(
            LaunchFloatToHalfMmaOrder(dx.as<float>(), n, cols, halves.as<uint16_t>(), nullptr),
            cudaSuccess);
        std::vector<DeviceBuffer> dy;
        std::vector<float*> outs;
        for (const int64_t r : rows) {
          dy.push_back(Poisoned<float>(static_cast<size_t>(n * r)));
          outs.push_back(dy.back().as<float>());
        }
        const size_t scratch_floats = split_k ? MatMulHalfMmaGroupScratchFloats(views, n) : 0;
        if (split_k) {
          ASSERT_GT(scratch_floats, 0u);
        }
        DeviceBuffer scratch = Poisoned<float>(std::max<size_t>(scratch_floats, 1));
        ASSERT_EQ(LaunchMatMulHalfMmaGroup(views, halves.as<uint16_t>(), n, outs,
                                           split_k ? scratch.as<float>() : nullptr, scratch_floats,
                                           nullptr),
                  cudaSuccess);
        for (size_t i = 0; i < 3; ++i) {
          ExpectReferenceSums(
              type, m[i], n, x, {}, false, ToHost<float>(dy[i], static_cast<size_t>(n * rows[i])),
              std::string(" group member ") + std::to_string(i) + (split_k ? " split-K" : ""));
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
  // One type and width only.
  const TestMatrix q4 = MakeMatrix(DType::kQ4_K, 64, cols, 1);
  const TestMatrix q6 = MakeMatrix(DType::kQ6_K, 64, cols, 2);
  const TestMatrix narrow = MakeMatrix(DType::kQ4_K, 64, 512, 3);
  DeviceBuffer halves = Poisoned<uint16_t>(static_cast<size_t>(4 * cols));
  DeviceBuffer dy = Poisoned<float>(4 * 64);
  float* outs[2] = {dy.as<float>(), dy.as<float>()};
  const DeviceMatrix mixed[2] = {q4.view, q6.view};
  const DeviceMatrix widths[2] = {q4.view, narrow.view};
  EXPECT_EQ(LaunchMatMulHalfMmaGroup(mixed, halves.as<uint16_t>(), 4, outs, nullptr, 0, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchMatMulHalfMmaGroup(widths, halves.as<uint16_t>(), 4, outs, nullptr, 0, nullptr),
            cudaErrorInvalidValue);
}

TEST(MatMulHalfMmaTest, RefusesWhatItDoesNotRead) {
  alignas(16) static uint8_t bytes[64];
  const auto matrix = [](DType type, int64_t cols, void* data) {
    return DeviceMatrix{static_cast<uint32_t>(type), 64, cols, *RowBytes(type, cols), data};
  };
  EXPECT_TRUE(MatMulHalfMmaSupports(matrix(DType::kQ4_K, 4096, bytes)));
  EXPECT_TRUE(MatMulHalfMmaSupports(matrix(DType::kQ6_K, 11008, bytes)));
  EXPECT_FALSE(MatMulHalfMmaSupports(matrix(DType::kQ8_0, 4096, bytes)));
  EXPECT_FALSE(MatMulHalfMmaSupports(matrix(DType::kQ5_K, 4096, bytes)));
  EXPECT_FALSE(
      MatMulHalfMmaSupports(matrix(DType::kQ4_K, 4096, bytes + 4)));  // not 16-byte aligned
  const DeviceMatrix ragged{static_cast<uint32_t>(DType::kQ4_K), 64, 4000, 2304, bytes};
  EXPECT_FALSE(MatMulHalfMmaSupports(ragged));  // not whole blocks
  const DeviceMatrix square{static_cast<uint32_t>(DType::kQ4_K), 4096, 4096, 2304, bytes};
  EXPECT_GT(MatMulHalfMmaScratchFloats(square, 64), 0u);  // 64 row tiles: too few blocks alone
  const DeviceMatrix one_step{static_cast<uint32_t>(DType::kQ4_K), 4096, 256, 144, bytes};
  EXPECT_EQ(MatMulHalfMmaScratchFloats(one_step, 64), 0u);  // one K step: nothing to split
  EXPECT_NE(LaunchMatMulHalfMma(square, nullptr, 4, nullptr, false, nullptr, 0, nullptr),
            cudaSuccess);
}

}  // namespace
}  // namespace chord::cuda
