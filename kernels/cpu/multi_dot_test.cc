// Checks every SIMD group kernel against the portable scalar row dot product
// (vec_dot.h, the reference) on fresh random data, and the bit-identity that
// batch invariance needs: a row's result is the same whatever group, batch
// size or thread count it is computed in.
#include "kernels/cpu/multi_dot.h"

#include <cmath>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/test_data.h"
#include "kernels/cpu/vec_dot.h"

namespace chord::kernels {
namespace {

const DType kSimdTypes[] = {DType::kF32,  DType::kF16,  DType::kQ4_0, DType::kQ8_0,
                            DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

bool HaveAvx2() { return HasAvx2(BestKernelIsa()); }

std::vector<uint8_t> Quantized(DType type, const std::vector<float>& x, int64_t rows,
                               int64_t cols) {
  const int64_t bytes = ActivationRowBytes(type, cols);
  std::vector<uint8_t> out(static_cast<size_t>(bytes * rows));
  for (int64_t t = 0; t < rows; ++t) {
    QuantizeActivations(type, x.data() + t * cols, cols, out.data() + t * bytes);
  }
  return out;
}

// The rows of `quantized` (each `bytes` long) in the kernel's prepared layout
// when it has one, 64-byte aligned; the quantized rows themselves otherwise.
class KernelActivations {
 public:
  KernelActivations(const MultiDot& multi, const std::vector<uint8_t>& quantized, int64_t bytes,
                    int64_t rows, int64_t cols) {
    if (multi.prepare == nullptr) {
      for (int64_t t = 0; t < rows; ++t) pointers_.push_back(quantized.data() + t * bytes);
      return;
    }
    const int64_t prepared = multi.prepared_bytes(cols);
    EXPECT_EQ(prepared % 64, 0);
    storage_.resize(static_cast<size_t>(rows * prepared / 64 + 1));
    uint8_t* base = reinterpret_cast<uint8_t*>(storage_.data());
    for (int64_t t = 0; t < rows; ++t) {
      multi.prepare(quantized.data() + t * bytes, cols, base + t * prepared);
      pointers_.push_back(base + t * prepared);
    }
  }
  const void* const* rows() const { return pointers_.data(); }

 private:
  struct alignas(64) Line {
    uint8_t bytes[64];
  };
  std::vector<Line> storage_;
  std::vector<const void*> pointers_;
};

// Shapes: columns for one block up to several thousand, for each type.
std::vector<int64_t> ColumnsFor(DType type) {
  const int64_t block = GetDTypeInfo(type).block_size;
  if (block == 1) return {1, 7, 16, 33, 256, 2051};
  return {block, 3 * block, 8 * block, 11 * block};
}

// sum_i |w_i| * |x_i| of one weight row and one activation row: the scale of
// the float rounding two summation orders may differ by.
double Magnitude(DType type, const uint8_t* row, const float* x, int64_t cols) {
  std::vector<float> w(static_cast<size_t>(cols));
  EXPECT_TRUE(quant::DequantizeRow(type, row, w.data(), cols).ok());
  double magnitude = 0.0;
  for (int64_t i = 0; i < cols; ++i)
    magnitude += std::fabs(w[static_cast<size_t>(i)]) * std::fabs(x[i]);
  return magnitude;
}

// Each of `types` through the kernels of `isa` against the portable row dot
// product, and a row alone against the same row in a group of kMaxDotGroup.
void ExpectMatchesPortableReference(KernelIsa isa, std::span<const DType> types) {
  std::mt19937 rng(20261129);
  for (DType type : types) {
    const MultiDot multi = GetMultiDot(type, isa);
    const VecDotFn reference = GetVecDot(type);
    ASSERT_NE(multi.dot, nullptr) << DTypeName(type);
    for (int64_t cols : ColumnsFor(type)) {
      const int64_t rows = 7;
      std::vector<uint8_t> w = RandomWeights(type, rows, cols, rng);
      std::vector<float> x = RandomActivations(kMaxDotGroup * cols, rng);
      std::vector<uint8_t> act = Quantized(type, x, kMaxDotGroup, cols);
      const int64_t act_bytes = ActivationRowBytes(type, cols);
      const KernelActivations kernel_acts(multi, act, act_bytes, kMaxDotGroup, cols);
      const void* const* acts = kernel_acts.rows();
      const uint64_t row_bytes = RowBytes(type, cols).value();
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* row = w.data() + r * row_bytes;
        float out[kMaxDotGroup];
        multi.dot(row, acts, kMaxDotGroup, cols, out);
        for (int g = 0; g < kMaxDotGroup; ++g) {
          const float expected = reference(row, act.data() + g * act_bytes, cols);
          // Both sum exact per-block integers (or float products) in float, in
          // different orders: allow float rounding of the magnitudes involved.
          const double magnitude = Magnitude(type, row, x.data() + g * cols, cols);
          EXPECT_NEAR(out[g], expected, 1e-5 * magnitude + 1e-6)
              << DTypeName(type) << " cols " << cols << " row " << r << " act " << g;
          float alone;
          multi.dot(row, &acts[g], 1, cols, &alone);
          EXPECT_EQ(0, std::memcmp(&alone, &out[g], sizeof(float)))
              << DTypeName(type) << " cols " << cols << ": the full group differs from alone";
        }
        if (multi.two_rows != nullptr && r > 0) {
          // Rows r - 1 and r together, for groups of every size.
          for (int group = 1; group <= kMaxDotGroup; ++group) {
            float first[kMaxDotGroup], second[kMaxDotGroup], previous[kMaxDotGroup];
            multi.two_rows(row - row_bytes, static_cast<int64_t>(row_bytes), acts, group, cols,
                           first, second);
            multi.dot(row - row_bytes, acts, group, cols, previous);
            EXPECT_EQ(0, std::memcmp(first, previous, group * sizeof(float)))
                << DTypeName(type) << " cols " << cols << " group " << group
                << ": first of two rows";
            EXPECT_EQ(0, std::memcmp(second, out, group * sizeof(float)))
                << DTypeName(type) << " cols " << cols << " group " << group
                << ": second of two rows";
          }
        }
      }
    }
  }
}

TEST(MultiDotTest, Avx2MatchesPortableReference) {
  if (!HaveAvx2()) GTEST_SKIP() << "this CPU has no AVX2+FMA+F16C; only the portable kernels run";
  ExpectMatchesPortableReference(KernelIsa::kAvx2, kSimdTypes);
}

TEST(MultiDotTest, Avx512VnniMatchesPortableReference) {
  if (BestKernelIsa() != KernelIsa::kAvx512Vnni) {
    GTEST_SKIP() << "this CPU has no AVX-512 F/BW/VL + VNNI (or CHORD_KERNEL_ISA caps it)";
  }
  const DType with_avx512[] = {DType::kQ4_0, DType::kQ8_0, DType::kQ4_K, DType::kQ5_K,
                               DType::kQ6_K};
  for (DType type : with_avx512) {
    EXPECT_NE(GetMultiDot(type, KernelIsa::kAvx512Vnni).dot,
              GetMultiDot(type, KernelIsa::kAvx2).dot)
        << DTypeName(type);
  }
  // The other types fall back to their AVX2 kernels.
  EXPECT_EQ(GetMultiDot(DType::kF16, KernelIsa::kAvx512Vnni).dot,
            GetMultiDot(DType::kF16, KernelIsa::kAvx2).dot);
  ExpectMatchesPortableReference(KernelIsa::kAvx512Vnni, kSimdTypes);
}

// Every kernel set (portable and the CPU's best), every type: one token alone
// on one thread vs the whole batch on three, at odd row counts and batch sizes
// that leave partial groups.
TEST(MultiDotTest, MatMulSameBitsForAnyBatchSizeAndThreadCount) {
  std::mt19937 rng(5);
  const DType all[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                       DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                       DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  ThreadPool pool_one(1);
  ThreadPool pool_three(3);
  for (KernelIsa isa : {KernelIsa::kPortable, BestKernelIsa()}) {
    MatMul single(pool_one, isa);
    MatMul multi(pool_three, isa);
    for (DType type : all) {
      const int64_t block = GetDTypeInfo(type).block_size;
      for (int64_t cols : {block == 1 ? int64_t{300} : 8 * block, 2 * 2048 + 3 * block}) {
        for (int64_t rows : {1, 13, 301}) {
          const int64_t n_tokens = 9;
          std::vector<uint8_t> weights = RandomWeights(type, rows, cols, rng);
          const WeightMatrix w{type, rows, cols, RowBytes(type, cols).value(), weights.data()};
          std::vector<float> x = RandomActivations(n_tokens * cols, rng);
          std::vector<float> batched(static_cast<size_t>(n_tokens * rows));
          ASSERT_TRUE(multi.Run(w, x.data(), n_tokens, batched.data()).ok());
          for (int64_t t = 0; t < n_tokens; ++t) {
            std::vector<float> alone(static_cast<size_t>(rows));
            ASSERT_TRUE(single.Run(w, x.data() + t * cols, 1, alone.data()).ok());
            ASSERT_EQ(0, std::memcmp(alone.data(), batched.data() + t * rows,
                                     alone.size() * sizeof(float)))
                << KernelIsaName(isa) << " " << DTypeName(type) << " rows " << rows << " token "
                << t;
          }
        }
      }
    }
  }
}

TEST(MultiDotTest, MatMulBestIsaCloseToPortable) {
  std::mt19937 rng(77);
  ThreadPool pool(2);
  MatMul portable(pool, KernelIsa::kPortable);
  MatMul best(pool);
  for (DType type : kSimdTypes) {
    // A row of 2048 and a longer one of an odd number of blocks.
    const int64_t block = GetDTypeInfo(type).block_size;
    for (int64_t cols : {block == 1 ? int64_t{1000} : int64_t{2048}, 2 * 2048 + 3 * block}) {
      const int64_t rows = 65, n_tokens = 11;
      std::vector<uint8_t> weights = RandomWeights(type, rows, cols, rng);
      const WeightMatrix w{type, rows, cols, RowBytes(type, cols).value(), weights.data()};
      std::vector<float> x = RandomActivations(n_tokens * cols, rng);
      std::vector<float> y_ref(static_cast<size_t>(n_tokens * rows)), y(y_ref.size());
      ASSERT_TRUE(portable.Run(w, x.data(), n_tokens, y_ref.data()).ok());
      ASSERT_TRUE(best.Run(w, x.data(), n_tokens, y.data()).ok());
      // The two sum in different orders: float rounding of the magnitudes summed.
      for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
          const size_t i = static_cast<size_t>(t * rows + r);
          const double magnitude =
              Magnitude(type, weights.data() + r * w.row_bytes, x.data() + t * cols, cols);
          EXPECT_NEAR(y[i], y_ref[i], 1e-5 * magnitude + 1e-6)
              << DTypeName(type) << " cols " << cols << " token " << t << " row " << r;
        }
      }
    }
  }
}

}  // namespace
}  // namespace chord::kernels
