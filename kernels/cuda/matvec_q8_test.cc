// The integer decode path against a host reference that rounds the
// activations the same way: activation rounding on random data, then Q4_K,
// Q6_K and Q8_0 products at several shapes and batch sizes.
#include "kernels/cuda/matvec_q8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
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

// What LaunchQuantizeActivations computes, on the host.
struct HostQ8 {
  std::vector<int8_t> q;
  std::vector<float> scale;
};

HostQ8 Round(const std::vector<float>& x) {
  HostQ8 out;
  out.q.resize(x.size());
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0.0f;
    for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::abs(x[b * 32 + i]));
    const float d = amax / 127.0f;
    out.scale.push_back(d);
    for (size_t i = 0; i < 32; ++i) {
      const float v = d > 0.0f ? std::nearbyint(x[b * 32 + i] / d) : 0.0f;
      out.q[b * 32 + i] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
  return out;
}

// n rows of cols random activations rounded on the device (the buffer
// holding them lives as long as this).
struct RoundedOnDevice {
  DeviceBuffer buffer;
  Q8Activations a;
};

RoundedOnDevice RoundRandom(int n, int64_t cols, uint32_t seed) {
  DeviceBuffer x = ToDevice(RandomFloats(static_cast<size_t>(n * cols), seed));
  RoundedOnDevice out{Poisoned<uint8_t>(Q8ActivationBytes(n, cols)), {}};
  out.a = Q8ActivationsIn(out.buffer.data(), n, cols);
  EXPECT_EQ(LaunchQuantizeActivations(x.as<float>(), n, cols, out.a, nullptr), cudaSuccess);
  return out;
}

class MatVecQ8Test : public ::testing::Test {
 protected:
  void SetUp() override { CHORD_SKIP_WITHOUT_GPU(); }
};

TEST_F(MatVecQ8Test, ActivationsRoundPerBlockWithHalfSums) {
  const int n = 3;
  const int64_t cols = 1024;
  std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), 11, 3.0f);
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // an all-zero block: scale 0, q 0
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer buffer = Poisoned<uint8_t>(Q8ActivationBytes(n, cols));
  const Q8Activations a = Q8ActivationsIn(buffer.data(), n, cols);
  ASSERT_EQ(LaunchQuantizeActivations(dx.as<float>(), n, cols, a, nullptr), cudaSuccess);
  std::vector<int8_t> q(x.size());
  std::vector<float> scale(x.size() / 32), sums(x.size() / 16);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(q.data(), a.q, q.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(scale.data(), a.scale, scale.size() * 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(sums.data(), a.half_sums, sums.size() * 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  const HostQ8 ref = Round(x);
  for (size_t b = 0; b < scale.size(); ++b) ASSERT_FLOAT_EQ(scale[b], ref.scale[b]) << b;
  for (size_t i = 0; i < q.size(); ++i) {
    // Division on the device may round a tie the other way: one step at most.
    ASSERT_LE(std::abs(q[i] - ref.q[i]), 1) << i;
    ASSERT_LE(std::abs(q[i] * scale[i / 32] - x[i]), 0.5001f * scale[i / 32] + 1e-7f) << i;
  }
  for (size_t h = 0; h < sums.size(); ++h) {
    int sum = 0;
    for (size_t i = 0; i < 16; ++i) sum += q[h * 16 + i];
    ASSERT_FLOAT_EQ(sums[h], scale[h / 2] * static_cast<float>(sum)) << h;
  }
  EXPECT_EQ(scale[2], 0.0f);
}

// The fused launches write what the separate ones do, bit for bit: RMSNorm
// then rounding, SwiGLU then rounding; as programmatic dependent launches too.
TEST_F(MatVecQ8Test, FusedNormAndSwiGluRoundingEqualTheSeparateLaunches) {
  for (const auto& [cols, overlap] : std::vector<std::pair<int64_t, bool>>{
           {64, false}, {4096, false}, {11008, false}, {4096, true}, {11008, true}}) {
    const int rows = 3;
    const auto n = static_cast<size_t>(rows * cols);
    const std::vector<float> x = RandomFloats(n, 61 + static_cast<uint32_t>(cols), 3.0f);
    const std::vector<float> w = RandomFloats(static_cast<size_t>(cols), 62);
    const std::vector<float> up = RandomFloats(n, 63);
    DeviceBuffer dx = ToDevice(x), dw = ToDevice(w), dup = ToDevice(up);
    DeviceBuffer fused_y = Poisoned<float>(n), plain_y = Poisoned<float>(n);
    DeviceBuffer fused_q = Poisoned<uint8_t>(Q8ActivationBytes(rows, cols));
    DeviceBuffer plain_q = Poisoned<uint8_t>(Q8ActivationBytes(rows, cols));
    const Q8Activations fused = Q8ActivationsIn(fused_q.data(), rows, cols);
    const Q8Activations plain = Q8ActivationsIn(plain_q.data(), rows, cols);
    ASSERT_EQ(LaunchRmsNormQuantize(dx.as<float>(), dw.as<float>(), cols, rows, 1e-5f,
                                    fused_y.as<float>(), fused, nullptr, overlap),
              cudaSuccess);
    ASSERT_EQ(LaunchRmsNorm(dx.as<float>(), dw.as<float>(), cols, rows, 1e-5f, plain_y.as<float>(),
                            nullptr),
              cudaSuccess);
    ASSERT_EQ(LaunchQuantizeActivations(plain_y.as<float>(), rows, cols, plain, nullptr),
              cudaSuccess);
    EXPECT_EQ(ToHost<float>(fused_y, n), ToHost<float>(plain_y, n)) << cols;
    ExpectSameRounding(fused, plain, n);

    DeviceBuffer fused_gate = ToDevice(x), plain_gate = ToDevice(x);
    ASSERT_EQ(LaunchSwiGluQuantize(fused_gate.as<float>(), dup.as<float>(), rows, cols, fused,
                                   nullptr, overlap),
              cudaSuccess);
    ASSERT_EQ(
        LaunchSwiGlu(plain_gate.as<float>(), dup.as<float>(), static_cast<int64_t>(n), nullptr),
        cudaSuccess);
    ASSERT_EQ(LaunchQuantizeActivations(plain_gate.as<float>(), rows, cols, plain, nullptr),
              cudaSuccess);
    EXPECT_EQ(ToHost<float>(fused_gate, n), ToHost<float>(plain_gate, n)) << cols;
    ExpectSameRounding(fused, plain, n);
  }
  DeviceBuffer y = Poisoned<float>(40);
  EXPECT_EQ(
      LaunchRmsNormQuantize(y.as<float>(), y.as<float>(), 40, 1, 1e-5f, y.as<float>(), {}, nullptr),
      cudaErrorInvalidValue);
}

class MatVecQ8TypeTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { CHORD_SKIP_WITHOUT_GPU(); }
};

TEST_P(MatVecQ8TypeTest, ProductsMatchTheRoundedReferenceAtSeveralBatchSizes) {
  const DType type = GetParam();
  uint32_t seed = 500 + static_cast<uint32_t>(type);
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
           {37, 256}, {300, 1024}, {129, 2816}, {40, 11008}, {37, 11008}, {300, 5120}}) {
    // (37 Q6_K rows of 11008 end 14 bytes past a 16-byte boundary: the one-token
    // kernel's last range copies its last bytes itself.)
    const TestMatrix m = MakeMatrix(type, rows, cols, seed++);
    const std::vector<float>& decoded = m.decoded;
    const DeviceMatrix& w = m.view;
    for (const int n : {1, 2, 3, 7, 8, 13}) {
      const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed++);
      const std::vector<float> y0 = RandomFloats(static_cast<size_t>(n * rows), seed++);
      DeviceBuffer dx = ToDevice(x);
      DeviceBuffer buffer = Poisoned<uint8_t>(Q8ActivationBytes(n, cols));
      const Q8Activations a = Q8ActivationsIn(buffer.data(), n, cols);
      ASSERT_EQ(LaunchQuantizeActivations(dx.as<float>(), n, cols, a, nullptr), cudaSuccess);
      const HostQ8 rounded = Round(x);
      for (const bool accumulate : {false, true}) {
        DeviceBuffer dy = accumulate ? ToDevice(y0) : Poisoned<float>(y0.size());
        ASSERT_EQ(LaunchMatVecQ8(w, a, n, dy.as<float>(), accumulate, nullptr), cudaSuccess);
        const std::vector<float> y = ToHost<float>(dy, y0.size());
        for (int t = 0; t < n; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            double ref = accumulate ? y0[t * rows + r] : 0.0, mag = std::abs(ref), exact = ref;
            for (int64_t c = 0; c < cols; ++c) {
              const size_t i = static_cast<size_t>(t * cols + c);
              const double xr = static_cast<double>(rounded.q[i]) * rounded.scale[i / 32];
              const double term = static_cast<double>(decoded[r * cols + c]) * xr;
              ref += term;
              mag += std::abs(term);
              exact += static_cast<double>(decoded[r * cols + c]) * x[i];
            }
            // Against the rounded activations: float rounding only (and a
            // device tie rounded the other way, one step of one element).
            ASSERT_NEAR(y[t * rows + r], ref, 3e-5 * mag + 1e-5)
                << DTypeName(type) << " rows=" << rows << " cols=" << cols << " n=" << n
                << " t=" << t << " r=" << r;
            // Against the exact activations: within the rounding's error.
            ASSERT_NEAR(y[t * rows + r], exact, 1e-2 * mag + 1e-5);
          }
        }
      }
    }
  }
}

// A group launch (Q/K/V, gate/up) writes what one launch per matrix writes.
TEST_P(MatVecQ8TypeTest, AGroupOfMatricesGivesTheSameBitsAsOneLaunchEach) {
  const DType type = GetParam();
  const int64_t cols = 512;
  std::vector<TestMatrix> matrices;
  for (const int64_t rows : {37, 128, 5})
    matrices.push_back(MakeMatrix(type, rows, cols, 900 + static_cast<uint32_t>(rows)));
  std::vector<DeviceMatrix> views;
  for (const TestMatrix& m : matrices) views.push_back(m.view);
  for (const int n : {1, 5, 8}) {
    const RoundedOnDevice rounded = RoundRandom(n, cols, 77 + static_cast<uint32_t>(n));
    const Q8Activations& a = rounded.a;
    for (size_t count = 1; count <= views.size(); ++count) {
      std::vector<DeviceBuffer> grouped, alone;
      std::vector<float*> outs;
      for (size_t m = 0; m < count; ++m) {
        grouped.push_back(Poisoned<float>(static_cast<size_t>(n * views[m].rows)));
        alone.push_back(Poisoned<float>(static_cast<size_t>(n * views[m].rows)));
        outs.push_back(grouped.back().as<float>());
        ASSERT_EQ(LaunchMatVecQ8(views[m], a, n, alone.back().as<float>(), false, nullptr),
                  cudaSuccess);
      }
      ASSERT_EQ(LaunchMatVecQ8Group({views.data(), count}, a, n, outs, nullptr), cudaSuccess);
      for (size_t m = 0; m < count; ++m) {
        const auto size = static_cast<size_t>(n * views[m].rows);
        EXPECT_EQ(ToHost<float>(grouped[m], size), ToHost<float>(alone[m], size))
            << "n=" << n << " matrix " << m;
      }
    }
  }
  // Matrices of another width, of a first type after another, or too many,
  // are refused.
  const TestMatrix other =
      MakeMatrix(type == DType::kQ8_0 ? DType::kQ4_K : DType::kQ8_0, 4, cols, 5);
  const TestMatrix wider = MakeMatrix(type, 4, 2 * cols, 6);
  DeviceBuffer buffer = Poisoned<uint8_t>(Q8ActivationBytes(1, 2 * cols));
  const Q8Activations a = Q8ActivationsIn(buffer.data(), 1, 2 * cols);
  DeviceBuffer y = Poisoned<float>(256);
  float* outs[4] = {y.as<float>(), y.as<float>(), y.as<float>(), y.as<float>()};
  const DeviceMatrix interleaved[3] = {views[0], other.view, views[1]};
  const DeviceMatrix widths[2] = {views[0], wider.view};
  const DeviceMatrix four[4] = {views[0], views[1], views[2], views[0]};
  EXPECT_EQ(LaunchMatVecQ8Group({interleaved, 3}, a, 1, {outs, 3}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchMatVecQ8Group({widths, 2}, a, 1, {outs, 2}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchMatVecQ8Group({four, 4}, a, 1, {outs, 4}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchMatVecQ8Group({four, 2}, a, 1, {outs, 1}, nullptr), cudaErrorInvalidValue);
}

// A group of two weight types (Q/K in Q4_K and V in Q6_K, as Q4_K_M models
// have in some layers) writes what one launch per matrix writes: one launch
// for one token, one a type otherwise.
TEST_F(MatVecQ8Test, AGroupOfTwoTypesGivesTheSameBitsAsOneLaunchEach) {
  const std::vector<std::pair<DType, DType>> pairs = {{DType::kQ4_K, DType::kQ6_K},
                                                      {DType::kQ6_K, DType::kQ4_K},
                                                      {DType::kQ4_K, DType::kQ8_0},
                                                      {DType::kQ8_0, DType::kQ6_K}};
  for (const int64_t cols : {512, 4096}) {
    for (const auto& [first, second] : pairs) {
      std::vector<TestMatrix> matrices;
      matrices.push_back(MakeMatrix(first, 37, cols, 910));
      matrices.push_back(MakeMatrix(first, 300, cols, 911));
      matrices.push_back(MakeMatrix(second, 129, cols, 912));
      std::vector<DeviceMatrix> views;
      for (const TestMatrix& m : matrices) views.push_back(m.view);
      for (const int n : {1, 3}) {
        const RoundedOnDevice rounded = RoundRandom(n, cols, 78 + static_cast<uint32_t>(n));
        const Q8Activations& a = rounded.a;
        // {first, second} and {first, first, second}.
        for (const size_t skip : {1, 0}) {
          std::vector<DeviceMatrix> group;
          std::vector<DeviceBuffer> grouped, alone;
          std::vector<float*> outs;
          for (size_t m = skip; m < views.size(); ++m) {
            group.push_back(views[m]);
            grouped.push_back(Poisoned<float>(static_cast<size_t>(n * views[m].rows)));
            alone.push_back(Poisoned<float>(static_cast<size_t>(n * views[m].rows)));
            outs.push_back(grouped.back().as<float>());
            ASSERT_EQ(LaunchMatVecQ8(views[m], a, n, alone.back().as<float>(), false, nullptr),
                      cudaSuccess);
          }
          ASSERT_EQ(LaunchMatVecQ8Group(group, a, n, outs, nullptr, /*overlap_previous=*/n == 1),
                    cudaSuccess);
          for (size_t m = 0; m < group.size(); ++m) {
            const auto size = static_cast<size_t>(n * group[m].rows);
            EXPECT_EQ(ToHost<float>(grouped[m], size), ToHost<float>(alone[m], size))
                << DTypeName(first) << " then " << DTypeName(second) << " cols=" << cols
                << " n=" << n << " matrix " << m + skip;
          }
        }
      }
    }
  }
}

// One token's Q/K/V with RoPE and the KV store in one launch writes the bits
// of the group launch followed by LaunchRopeStoreKv: q, k, v and the whole
// cache, for halves and floats in the cache, partial rotation, frequency
// factors and grouped-query heads.
TEST_F(MatVecQ8Test, QkvWithRopeWritesWhatTheGroupThenRopeStoreKvWrite) {
  const int head_dim = 64, n_heads = 8, n_k_heads = 2, n_ctx = 48;
  const int64_t n_embd_kv = int64_t{n_k_heads} * head_dim;
  const TokenSlot token{1, 37};
  DeviceBuffer tokens = ToDevice(std::vector<TokenSlot>{token});
  const std::vector<float> factors = RandomFloats(head_dim / 2, 930, 1.0f);
  std::vector<float> positive(factors.size());
  for (size_t i = 0; i < factors.size(); ++i) positive[i] = 1.0f + std::abs(factors[i]);
  DeviceBuffer freq_factors = ToDevice(positive);
  struct Case {
    DType qk, v;
    int64_t cols;
    bool half;
    int n_rot;
    bool factors;
  };
  for (const Case& c : std::vector<Case>{{DType::kQ4_K, DType::kQ4_K, 512, true, 64, false},
                                         {DType::kQ4_K, DType::kQ6_K, 4096, true, 64, true},
                                         {DType::kQ6_K, DType::kQ4_K, 2048, false, 32, false},
                                         {DType::kQ8_0, DType::kQ8_0, 256, false, 64, true}}) {
    const TestMatrix wq = MakeMatrix(c.qk, int64_t{n_heads} * head_dim, c.cols, 931);
    const TestMatrix wk = MakeMatrix(c.qk, n_embd_kv, c.cols, 932);
    const TestMatrix wv = MakeMatrix(c.v, n_embd_kv, c.cols, 933);
    const DeviceMatrix w[3] = {wq.view, wk.view, wv.view};
    const RoundedOnDevice rounded = RoundRandom(1, c.cols, 934);
    const RopeParams rope{n_heads,  head_dim, c.n_rot,
                          10000.0f, 0.5f,     c.factors ? freq_factors.as<float>() : nullptr};
    const size_t element = c.half ? 2 : 4;
    const auto cache_bytes = static_cast<size_t>(2 * n_ctx * n_embd_kv) * element;  // 2 slots
    // Both caches start from the same random bytes.
    std::vector<float> noise = RandomFloats(cache_bytes / 4, 935);
    const auto fill = [&] { return ToDevice(noise); };
    DeviceBuffer fused_keys = fill(), fused_values = fill(), plain_keys = fill(),
                 plain_values = fill();
    const auto layer = [&](DeviceBuffer& keys, DeviceBuffer& values) {
      return KvLayer{keys.data(), values.data(), n_ctx, static_cast<int>(n_embd_kv), c.half};
    };
    const KvLayer fused_cache = layer(fused_keys, fused_values);
    const KvLayer plain_cache = layer(plain_keys, plain_values);
    ASSERT_TRUE(MatVecQ8QkvRopeSupports(w, rope, fused_cache));
    const size_t q_size = static_cast<size_t>(n_heads) * head_dim;
    const auto kv_size = static_cast<size_t>(n_embd_kv);
    DeviceBuffer fq = Poisoned<float>(q_size), fk = Poisoned<float>(kv_size),
                 fv = Poisoned<float>(kv_size);
    DeviceBuffer pq = Poisoned<float>(q_size), pk = Poisoned<float>(kv_size),
                 pv = Poisoned<float>(kv_size);
    ASSERT_EQ(LaunchMatVecQ8QkvRope(w, rounded.a,
                                    {fq.as<float>(), fk.as<float>(), fv.as<float>(),
                                     tokens.as<TokenSlot>(), rope, fused_cache},
                                    nullptr, /*overlap_previous=*/true),
              cudaSuccess);
    float* outs[3] = {pq.as<float>(), pk.as<float>(), pv.as<float>()};
    ASSERT_EQ(LaunchMatVecQ8Group(w, rounded.a, 1, outs, nullptr), cudaSuccess);
    ASSERT_EQ(LaunchRopeStoreKv(pq.as<float>(), pk.as<float>(), pv.as<float>(), n_k_heads, 1,
                                tokens.as<TokenSlot>(), rope, plain_cache, nullptr),
              cudaSuccess);
    const std::string label = std::string(DTypeName(c.qk)) + "/" + std::string(DTypeName(c.v)) +
                              " cols=" + std::to_string(c.cols);
    EXPECT_EQ(ToHost<float>(fq, q_size), ToHost<float>(pq, q_size)) << label;
    EXPECT_EQ(ToHost<float>(fk, kv_size), ToHost<float>(pk, kv_size)) << label;
    EXPECT_EQ(ToHost<float>(fv, kv_size), ToHost<float>(pv, kv_size)) << label;
    EXPECT_EQ(ToHost<uint8_t>(fused_keys, cache_bytes), ToHost<uint8_t>(plain_keys, cache_bytes))
        << label;
    EXPECT_EQ(ToHost<uint8_t>(fused_values, cache_bytes),
              ToHost<uint8_t>(plain_values, cache_bytes))
        << label;
    // The token's rows changed (the comparison above is not of two untouched caches).
    const auto* noise_bytes = reinterpret_cast<const uint8_t*>(noise.data());
    EXPECT_NE(ToHost<uint8_t>(fused_keys, cache_bytes),
              std::vector<uint8_t>(noise_bytes, noise_bytes + cache_bytes))
        << label;
  }
  // Shapes it does not take: K of another type than Q, a V of the wrong height.
  const TestMatrix q4 = MakeMatrix(DType::kQ4_K, 512, 256, 936);
  const TestMatrix k6 = MakeMatrix(DType::kQ6_K, 128, 256, 937);
  const TestMatrix v4 = MakeMatrix(DType::kQ4_K, 128, 256, 938);
  const TestMatrix tall = MakeMatrix(DType::kQ4_K, 256, 256, 939);
  const RopeParams rope{n_heads, head_dim, head_dim, 10000.0f, 1.0f, nullptr};
  const KvLayer cache{nullptr, nullptr, n_ctx, static_cast<int>(n_embd_kv), true};
  const DeviceMatrix mixed_qk[3] = {q4.view, k6.view, v4.view};
  const DeviceMatrix wrong_v[3] = {q4.view, v4.view, tall.view};
  EXPECT_FALSE(MatVecQ8QkvRopeSupports(mixed_qk, rope, cache));
  EXPECT_FALSE(MatVecQ8QkvRopeSupports(wrong_v, rope, cache));
  const RoundedOnDevice rounded = RoundRandom(1, 256, 940);
  DeviceBuffer y = Poisoned<float>(512);
  EXPECT_EQ(LaunchMatVecQ8QkvRope(
                mixed_qk, rounded.a,
                {y.as<float>(), y.as<float>(), y.as<float>(), tokens.as<TokenSlot>(), rope, cache},
                nullptr),
            cudaErrorInvalidValue);
}

// A warp taking 1, 2 or 4 rows (the last warp's partly past the end), a grid
// capped at one block per SM whose warps loop over the rows, or the one-token
// kernel that stages rows in shared memory, writes the same bits: the per-row
// arithmetic does not depend on the launch's shape. One-token rows wider than
// 4096 staged (split over a block's warps) have bits of their own, the same
// for every staged shape.
// The gate/up launch with SwiGLU in its epilogue writes what the group then
// LaunchSwiGluQuantize write, bit for bit (on 8- and 16-warp blocks: many
// groups and few), and the same again when launched twice.
TEST_F(MatVecQ8Test, GateUpWithSwiGluWritesWhatTheGroupThenSwiGluQuantizeWrite) {
  struct Case {
    DType type;
    int64_t rows, cols;
    bool overlap;
  };
  for (const Case& c : std::vector<Case>{{DType::kQ4_K, 1024, 4096, true},
                                         {DType::kQ4_K, 8480, 512, false},
                                         {DType::kQ6_K, 512, 4096, true},
                                         {DType::kQ8_0, 256, 1024, false}}) {
    const TestMatrix gate = MakeMatrix(c.type, c.rows, c.cols, 1001);
    const TestMatrix up = MakeMatrix(c.type, c.rows, c.cols, 1002);
    ASSERT_TRUE(MatVecQ8GateUpSwiGluSupports(gate.view, up.view));
    const RoundedOnDevice x = RoundRandom(1, c.cols, 1003);
    const auto n = static_cast<size_t>(c.rows);
    DeviceBuffer fg = Poisoned<float>(n), fu = Poisoned<float>(n), pg = Poisoned<float>(n),
                 pu = Poisoned<float>(n);
    DeviceBuffer fused_q = Poisoned<uint8_t>(Q8ActivationBytes(1, c.rows));
    DeviceBuffer plain_q = Poisoned<uint8_t>(Q8ActivationBytes(1, c.rows));
    const Q8Activations fused = Q8ActivationsIn(fused_q.data(), 1, c.rows);
    const Q8Activations plain = Q8ActivationsIn(plain_q.data(), 1, c.rows);
    const DeviceMatrix pair[2] = {gate.view, up.view};
    float* outs[2] = {pg.as<float>(), pu.as<float>()};
    ASSERT_EQ(LaunchMatVecQ8Group(pair, x.a, 1, outs, nullptr), cudaSuccess);
    ASSERT_EQ(LaunchSwiGluQuantize(pg.as<float>(), pu.as<float>(), 1, c.rows, plain, nullptr),
              cudaSuccess);
    const std::string label = std::string(DTypeName(c.type)) + " cols=" + std::to_string(c.cols);
    for (int launch = 0; launch < 2; ++launch) {
      ASSERT_EQ(LaunchMatVecQ8GateUpSwiGlu(gate.view, up.view, x.a, fg.as<float>(), fu.as<float>(),
                                           fused, nullptr, c.overlap),
                cudaSuccess);
      EXPECT_EQ(ToHost<float>(fg, n), ToHost<float>(pg, n)) << label;
      EXPECT_EQ(ToHost<float>(fu, n), ToHost<float>(pu, n)) << label;
      ExpectSameRounding(fused, plain, n);
    }
  }
  const TestMatrix gate = MakeMatrix(DType::kQ4_K, 48, 256, 1004);  // not whole 32-row groups
  const TestMatrix up6 = MakeMatrix(DType::kQ6_K, 64, 256, 1005);
  const TestMatrix up4 = MakeMatrix(DType::kQ4_K, 64, 256, 1006);
  EXPECT_FALSE(MatVecQ8GateUpSwiGluSupports(gate.view, gate.view));
  EXPECT_FALSE(MatVecQ8GateUpSwiGluSupports(up4.view, up6.view));
  const RoundedOnDevice x = RoundRandom(1, 256, 1007);
  DeviceBuffer y = Poisoned<float>(64);
  EXPECT_EQ(LaunchMatVecQ8GateUpSwiGlu(up4.view, up6.view, x.a, y.as<float>(), y.as<float>(), x.a,
                                       nullptr),
            cudaErrorInvalidValue);
}

// The deferred RMSNorm factor as the products compute it (RowSumFactor):
// each of 32 lanes adds the sums of squares g = lane, lane + 32, ... in
// order, then the lanes' sums meet pairwise (offsets 16, 8, 4, 2, 1).
float HostRowSumFactor(const std::vector<double>& sums, int64_t cols, float eps) {
  std::vector<double> lane(32, 0.0);
  for (size_t l = 0; l < 32; ++l) {
    for (size_t g = l; g < sums.size(); g += 32) lane[l] += sums[g];
  }
  for (size_t offset = 16; offset > 0; offset /= 2) {
    std::vector<double> next(32);
    for (size_t l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ offset];
    lane = next;
  }
  return static_cast<float>(1.0 / std::sqrt(lane[0] / static_cast<double>(cols) + eps));
}

// y += w x with the next norm's rounding in the epilogue: the same y as an
// accumulating LaunchMatVecQ8, the rounding of y * weight as
// LaunchQuantizeActivations writes it, y's sums of squares per 32 rows.
TEST_F(MatVecQ8Test, ResidualWithRmsRoundingWritesTheSumAndTheNextNormsRounding) {
  struct Case {
    DType type;
    int64_t rows, cols;
    bool overlap;
  };
  for (const Case& c : std::vector<Case>{{DType::kQ4_K, 2048, 4096, true},
                                         {DType::kQ4_K, 512, 2048, false},
                                         {DType::kQ6_K, 256, 4096, false},
                                         {DType::kQ8_0, 128, 512, true},
                                         // Wider rows, in 3, 2 and 4 ranges over warps.
                                         {DType::kQ4_K, 4096, 11008, true},
                                         {DType::kQ4_K, 160, 8192, false},
                                         {DType::kQ4_K, 64, 12544, true}}) {
    const TestMatrix w = MakeMatrix(c.type, c.rows, c.cols, 1011);
    ASSERT_TRUE(MatVecQ8ResidualRmsRoundSupports(w.view));
    const RoundedOnDevice x = RoundRandom(1, c.cols, 1012);
    const auto n = static_cast<size_t>(c.rows);
    const std::vector<float> residual = RandomFloats(n, 1013, 2.0f);
    const std::vector<float> weight = RandomFloats(n, 1014);
    DeviceBuffer fy = ToDevice(residual), py = ToDevice(residual), dw = ToDevice(weight);
    DeviceBuffer sums = Poisoned<double>(n / 32);
    DeviceBuffer fused_q = Poisoned<uint8_t>(Q8ActivationBytes(1, c.rows));
    RmsRounding next;
    next.weight = dw.as<float>();
    next.out = Q8ActivationsIn(fused_q.data(), 1, c.rows);
    next.sum_squares = sums.as<double>();
    ASSERT_EQ(LaunchMatVecQ8ResidualRmsRound(w.view, x.a, fy.as<float>(), next, nullptr, c.overlap),
              cudaSuccess);
    // The standalone launch writes the same rounding and sums of y.
    DeviceBuffer alone_q = Poisoned<uint8_t>(Q8ActivationBytes(1, c.rows));
    DeviceBuffer alone_sums = Poisoned<double>(n / 32);
    const Q8Activations alone = Q8ActivationsIn(alone_q.data(), 1, c.rows);
    ASSERT_EQ(LaunchRmsNormRoundDeferred(fy.as<float>(), dw.as<float>(), c.rows, alone,
                                         alone_sums.as<double>(), nullptr, c.overlap),
              cudaSuccess);
    ExpectSameRounding(next.out, alone, n);
    EXPECT_EQ(ToHost<double>(alone_sums, n / 32), ToHost<double>(sums, n / 32));
    ASSERT_EQ(LaunchMatVecQ8(w.view, x.a, 1, py.as<float>(), /*accumulate=*/true, nullptr),
              cudaSuccess);
    const std::string label = std::string(DTypeName(c.type)) + " cols=" + std::to_string(c.cols);
    const std::vector<float> y = ToHost<float>(py, n);
    EXPECT_EQ(ToHost<float>(fy, n), y) << label;
    EXPECT_NE(y, residual) << label;
    std::vector<float> normed(n);
    for (size_t i = 0; i < n; ++i) normed[i] = y[i] * weight[i];
    DeviceBuffer dnormed = ToDevice(normed);
    DeviceBuffer plain_q = Poisoned<uint8_t>(Q8ActivationBytes(1, c.rows));
    const Q8Activations plain = Q8ActivationsIn(plain_q.data(), 1, c.rows);
    ASSERT_EQ(LaunchQuantizeActivations(dnormed.as<float>(), 1, c.rows, plain, nullptr),
              cudaSuccess);
    ExpectSameRounding(next.out, plain, n);
    const std::vector<double> got = ToHost<double>(sums, n / 32);
    for (size_t g = 0; g < n / 32; ++g) {
      double want = 0.0;
      for (size_t i = 0; i < 32; ++i) want += static_cast<double>(y[g * 32 + i]) * y[g * 32 + i];
      EXPECT_NEAR(got[g], want, 1e-12 * want) << label << " group " << g;
    }
  }
  const TestMatrix odd = MakeMatrix(DType::kQ4_K, 48, 256, 1016);
  const TestMatrix odd_wide = MakeMatrix(DType::kQ4_K, 80, 8192, 1017);
  const TestMatrix widest = MakeMatrix(DType::kQ4_K, 32, 32768, 1018);   // past four ranges
  const TestMatrix wide_q6 = MakeMatrix(DType::kQ6_K, 32, 11008, 1019);  // 4 units a lane
  EXPECT_FALSE(MatVecQ8ResidualRmsRoundSupports(odd.view));
  EXPECT_FALSE(MatVecQ8ResidualRmsRoundSupports(odd_wide.view));
  EXPECT_FALSE(MatVecQ8ResidualRmsRoundSupports(widest.view));
  EXPECT_FALSE(MatVecQ8ResidualRmsRoundSupports(wide_q6.view));
}

// Activations with a deferred RMSNorm factor: each row's sum is the factor
// (computed as HostRowSumFactor) times the sum without it, for the staged
// kernel (one type, and Q/K/V of two types in one launch) and the split one;
// launches that would not apply it refuse it.
TEST_F(MatVecQ8Test, ADeferredRmsFactorScalesEachRowsSum) {
  const float eps = 1e-5f;
  struct Case {
    std::vector<DType> types;
    int64_t cols;
  };
  for (const Case& c : std::vector<Case>{{{DType::kQ4_K}, 4096},
                                         {{DType::kQ6_K}, 8192},
                                         {{DType::kQ8_0}, 11008},
                                         {{DType::kQ4_K, DType::kQ4_K, DType::kQ6_K}, 2048}}) {
    std::vector<TestMatrix> matrices;
    std::vector<DeviceMatrix> views;
    for (size_t m = 0; m < c.types.size(); ++m) {
      matrices.push_back(MakeMatrix(c.types[m], 64, c.cols, 1021 + static_cast<uint32_t>(m)));
      views.push_back(matrices.back().view);
    }
    ASSERT_TRUE(MatVecQ8ReadsDeferredRms(views));
    const RoundedOnDevice x = RoundRandom(1, c.cols, 1025);
    std::vector<double> sums(static_cast<size_t>(c.cols / 32));
    const std::vector<float> noise = RandomFloats(sums.size(), 1026, 4.0f);
    for (size_t g = 0; g < sums.size(); ++g)
      sums[g] = 0.5 + std::abs(static_cast<double>(noise[g]));
    DeviceBuffer dsums = ToDevice(sums);
    Q8Activations deferred = x.a;
    deferred.rms_sum_squares = dsums.as<double>();
    deferred.rms_eps = eps;
    const size_t rows = 64 * views.size();
    DeviceBuffer with = Poisoned<float>(rows), without = Poisoned<float>(rows);
    std::vector<float*> with_outs, without_outs;
    for (size_t m = 0; m < views.size(); ++m) {
      with_outs.push_back(with.as<float>() + 64 * m);
      without_outs.push_back(without.as<float>() + 64 * m);
    }
    ASSERT_EQ(LaunchMatVecQ8Group(views, deferred, 1, with_outs, nullptr), cudaSuccess);
    ASSERT_EQ(LaunchMatVecQ8Group(views, x.a, 1, without_outs, nullptr), cudaSuccess);
    const float factor = HostRowSumFactor(sums, c.cols, eps);
    std::vector<float> want = ToHost<float>(without, rows);
    for (float& v : want) v *= factor;
    EXPECT_EQ(ToHost<float>(with, rows), want) << c.cols;
    EXPECT_EQ(LaunchMatVecQ8Group(views, deferred, 1, with_outs, nullptr, false,
                                  /*batch_invariant=*/true),
              cudaErrorInvalidValue);
  }
  const RoundedOnDevice two = RoundRandom(2, 256, 1027);
  DeviceBuffer dsums = ToDevice(std::vector<double>(16, 1.0));
  Q8Activations deferred = two.a;
  deferred.rms_sum_squares = dsums.as<double>();
  const TestMatrix m = MakeMatrix(DType::kQ4_K, 32, 256, 1028);
  DeviceBuffer y = Poisoned<float>(64);
  EXPECT_EQ(LaunchMatVecQ8(m.view, deferred, 2, y.as<float>(), false, nullptr),
            cudaErrorInvalidValue);
}

TEST_P(MatVecQ8TypeTest, LaunchShapesDoNotChangeTheBits) {
  const DType type = GetParam();
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
           {37, 512}, {130, 2816}, {300, 4096}, {45, 1280}, {64, 2816}, {48, 11008}, {700, 5120}}) {
    const TestMatrix m = MakeMatrix(type, rows, cols, 1300 + static_cast<uint32_t>(rows));
    for (const int n : {1, 2, 3}) {
      const RoundedOnDevice rounded = RoundRandom(n, cols, 1400 + static_cast<uint32_t>(n));
      const Q8Activations& a = rounded.a;
      const auto size = static_cast<size_t>(n * rows);
      DeviceBuffer one = Poisoned<float>(size);
      ASSERT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, one.as<float>(), {1, 0, 1}, nullptr),
                cudaSuccess);
      const std::vector<float> unstaged = ToHost<float>(one, size);
      // An odd token count ends in a one-token pass.
      const bool split = n % 2 == 1 && cols > 4096;
      DeviceBuffer staged = Poisoned<float>(size);
      ASSERT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, staged.as<float>(), {1, 0, 2}, nullptr),
                cudaSuccess);
      const std::vector<float> split_sums = ToHost<float>(staged, size);
      if (split) {
        // The same sums in another order (ProductsMatchTheRoundedReference
        // holds both to the reference): within float rounding of the largest.
        float largest = 0.0f;
        for (const float v : unstaged) largest = std::max(largest, std::abs(v));
        for (size_t i = 0; i < size; ++i) {
          ASSERT_NEAR(split_sums[i], unstaged[i], 1e-4 * (largest + 1.0f)) << i;
        }
      }
      for (const MatVecQ8Shape shape :
           {MatVecQ8Shape{2, 0, 1}, MatVecQ8Shape{4, 0, 1}, MatVecQ8Shape{1, 1, 1},
            MatVecQ8Shape{4, 1, 1}, MatVecQ8Shape{0, 0, 0}, MatVecQ8Shape{1, 0, 2},
            MatVecQ8Shape{1, 1, 3}, MatVecQ8Shape{1, 2, 4}, MatVecQ8Shape{1, 0, 6}}) {
        DeviceBuffer y = Poisoned<float>(size);
        ASSERT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, y.as<float>(), shape, nullptr), cudaSuccess);
        const std::vector<float>& expected = split && shape.stages != 1 ? split_sums : unstaged;
        EXPECT_EQ(ToHost<float>(y, size), expected)
            << "rows=" << rows << " n=" << n << " per warp " << shape.rows_per_warp
            << " blocks per SM " << shape.blocks_per_sm << " stages " << shape.stages;
      }
      DeviceBuffer y = Poisoned<float>(size);
      EXPECT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, y.as<float>(), {3, 0, 0}, nullptr),
                cudaErrorInvalidValue);
      EXPECT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, y.as<float>(), {1, -1, 0}, nullptr),
                cudaErrorInvalidValue);
      EXPECT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, y.as<float>(), {1, 0, 5}, nullptr),
                cudaErrorInvalidValue);
      EXPECT_EQ(LaunchMatVecQ8Shaped(m.view, a, n, y.as<float>(), {1, 0, -1}, nullptr),
                cudaErrorInvalidValue);
    }
  }
}

// Batch-invariant launches give each token the bits of a one-token launch
// whatever the number of tokens (the passes of 8, 4, 2 and 1 they cut it
// into); the default launch may round passes of 1-2 tokens differently but
// stays within float rounding of them.
TEST_P(MatVecQ8TypeTest, BatchInvariantLaunchesGiveEachTokenItsOneTokenBits) {
  const DType type = GetParam();
  for (const int64_t cols :
       {1024, 5120}) {  // 5120: one-token rows split over warps unless invariant
    const int64_t rows = 70;
    const TestMatrix m = MakeMatrix(type, rows, cols, 1500);
    const int n = 15;
    const RoundedOnDevice rounded = RoundRandom(n, cols, 1501);
    const Q8Activations& a = rounded.a;
    for (const bool invariant : {true, false}) {
      DeviceBuffer all = Poisoned<float>(static_cast<size_t>(n * rows));
      ASSERT_EQ(LaunchMatVecQ8(m.view, a, n, all.as<float>(), false, nullptr, false, invariant),
                cudaSuccess);
      const std::vector<float> together = ToHost<float>(all, static_cast<size_t>(n * rows));
      for (int t = 0; t < n; ++t) {
        const Q8Activations one{a.q + t * cols, a.scale + t * (cols / 32),
                                a.half_sums + t * (cols / 16)};
        DeviceBuffer y = Poisoned<float>(static_cast<size_t>(rows));
        ASSERT_EQ(LaunchMatVecQ8(m.view, one, 1, y.as<float>(), false, nullptr, false, invariant),
                  cudaSuccess);
        const std::vector<float> alone = ToHost<float>(y, static_cast<size_t>(rows));
        for (int64_t r = 0; r < rows; ++r) {
          if (invariant) {
            ASSERT_EQ(together[t * rows + r], alone[r]) << "token " << t << " row " << r;
          } else {
            ASSERT_NEAR(together[t * rows + r], alone[r], 1e-4 * (std::abs(alone[r]) + 1.0))
                << "token " << t;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, MatVecQ8TypeTest,
                         ::testing::Values(DType::kQ4_K, DType::kQ6_K, DType::kQ8_0),
                         [](const auto& param_info) {
                           return std::string(DTypeName(param_info.param));
                         });

TEST_F(MatVecQ8Test, RefusesWhatItDoesNotRead) {
  EXPECT_FALSE(MatVecQ8Supports(static_cast<uint32_t>(DType::kQ4_0), 256));
  EXPECT_FALSE(MatVecQ8Supports(static_cast<uint32_t>(DType::kQ4_K), 300));
  EXPECT_FALSE(MatVecQ8Supports(static_cast<uint32_t>(DType::kQ6_K), 288));
  EXPECT_TRUE(MatVecQ8Supports(static_cast<uint32_t>(DType::kQ4_K), 512));
  EXPECT_TRUE(MatVecQ8Supports(static_cast<uint32_t>(DType::kQ8_0), 96));
  const Q8Activations none;
  const DeviceMatrix w{static_cast<uint32_t>(DType::kQ4_0), 4, 256, 144, nullptr};
  EXPECT_EQ(LaunchMatVecQ8(w, none, 1, nullptr, false, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchQuantizeActivations(nullptr, 1, 33, none, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace chord::cuda
