#include "kernels/cuda/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "common/quant/quant.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/matmul_half_mma.h"
#include "kernels/cuda/test_util.h"

namespace chord::cuda {
namespace {

using testing::ExpectSameRounding;
using testing::Poisoned;
using testing::RandomFloats;
using testing::ToDevice;
using testing::ToHost;

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override { CHORD_SKIP_WITHOUT_GPU(); }
};

TEST_F(CudaOpsTest, RmsNormMatchesCpu) {
  // Whole float4 rows take the vector path; odd widths (rows then unaligned) the scalar one.
  for (const int64_t n : {64, 4096, 5120, 37, 4099}) {
    const int rows = 5;
    const std::vector<float> x = RandomFloats(static_cast<size_t>(rows * n), 1 + n, 3.0f);
    const std::vector<float> w = RandomFloats(static_cast<size_t>(n), 2 + n);
    DeviceBuffer dx = ToDevice(x), dw = ToDevice(w), dy = Poisoned<float>(x.size());
    ASSERT_EQ(LaunchRmsNorm(dx.as<float>(), dw.as<float>(), n, rows, 1e-5f, dy.as<float>(), nullptr),
              cudaSuccess);
    const std::vector<float> y = ToHost<float>(dy, x.size());
    std::vector<float> ref(x.size());
    for (int r = 0; r < rows; ++r) kernels::RmsNorm(&x[r * n], w.data(), n, 1e-5f, &ref[r * n]);
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5f * std::abs(ref[i]) + 1e-7f);
  }
}

// The halves a norm writes for the half tensor-core product are the bits of
// its float output converted by LaunchFloatToHalfMmaOrder, on both paths.
TEST_F(CudaOpsTest, RmsNormHalvesInMmaOrderAreItsOutputConverted) {
  for (const int64_t n : {4096, 36}) {
    for (const bool aligned : {true, false}) {
      const int rows = 3;
      const std::vector<float> x = RandomFloats(static_cast<size_t>(rows * n + 1), 5 + n, 3.0f);
      const std::vector<float> w = RandomFloats(static_cast<size_t>(n), 6 + n);
      DeviceBuffer dx = ToDevice(x), dw = ToDevice(w);
      // One float in: rows no longer 16-byte aligned, the scalar path.
      const float* in = dx.as<float>() + (aligned ? 0 : 1);
      DeviceBuffer dy = Poisoned<float>(static_cast<size_t>(rows * n));
      DeviceBuffer halves = Poisoned<uint16_t>(static_cast<size_t>(rows * n));
      DeviceBuffer converted = Poisoned<uint16_t>(static_cast<size_t>(rows * n));
      ASSERT_EQ(LaunchRmsNorm(in, dw.as<float>(), n, rows, 1e-5f, dy.as<float>(), nullptr,
                              halves.as<uint16_t>()),
                cudaSuccess);
      ASSERT_EQ(LaunchFloatToHalfMmaOrder(dy.as<float>(), rows, n, converted.as<uint16_t>(),
                                          nullptr),
                cudaSuccess);
      EXPECT_EQ(ToHost<uint16_t>(halves, static_cast<size_t>(rows * n)),
                ToHost<uint16_t>(converted, static_cast<size_t>(rows * n)))
          << n << (aligned ? " aligned" : " unaligned");
    }
  }
  DeviceBuffer dx = ToDevice(RandomFloats(6, 1)), dy = Poisoned<float>(6);
  DeviceBuffer halves = Poisoned<uint16_t>(6);
  EXPECT_EQ(LaunchRmsNorm(dx.as<float>(), dx.as<float>(), 6, 1, 1e-5f, dy.as<float>(), nullptr,
                          halves.as<uint16_t>()),
            cudaErrorInvalidValue);  // not whole groups of four
}

// A residual sum left as partial sums: adding them (in order, onto x) and
// the norm of the result in one launch give the bits of the two steps, and
// LaunchAddPartialSums those of adding on the host in the same order.
TEST_F(CudaOpsTest, AddRmsNormEqualsTheSumThenTheNorm) {
  const int64_t n = 4096;
  const int rows = 5, parts = 3;
  const int64_t stride = rows * n;
  const std::vector<float> x = RandomFloats(static_cast<size_t>(rows * n), 61, 3.0f);
  const std::vector<float> p = RandomFloats(static_cast<size_t>(parts * stride), 62);
  const std::vector<float> w = RandomFloats(static_cast<size_t>(n), 63);
  std::vector<float> sum = x;
  for (size_t i = 0; i < sum.size(); ++i) {
    for (int k = 0; k < parts; ++k) sum[i] += p[k * stride + i];
  }
  DeviceBuffer dp = ToDevice(p), dw = ToDevice(w);
  const PartialSums add{dp.as<float>(), parts, stride};

  DeviceBuffer fused_x = ToDevice(x), fused_y = Poisoned<float>(x.size());
  DeviceBuffer fused_h = Poisoned<uint16_t>(x.size());
  ASSERT_EQ(LaunchAddRmsNorm(fused_x.as<float>(), add, dw.as<float>(), n, rows, 1e-5f,
                             fused_y.as<float>(), nullptr, fused_h.as<uint16_t>()),
            cudaSuccess);
  DeviceBuffer apart_x = ToDevice(x), apart_y = Poisoned<float>(x.size());
  DeviceBuffer apart_h = Poisoned<uint16_t>(x.size());
  ASSERT_EQ(LaunchAddPartialSums(add, rows * n, apart_x.as<float>(), nullptr), cudaSuccess);
  ASSERT_EQ(LaunchRmsNorm(apart_x.as<float>(), dw.as<float>(), n, rows, 1e-5f,
                          apart_y.as<float>(), nullptr, apart_h.as<uint16_t>()),
            cudaSuccess);
  EXPECT_EQ(ToHost<float>(apart_x, x.size()), sum);
  EXPECT_EQ(ToHost<float>(fused_x, x.size()), sum);
  EXPECT_EQ(ToHost<float>(fused_y, x.size()), ToHost<float>(apart_y, x.size()));
  EXPECT_EQ(ToHost<uint16_t>(fused_h, x.size()), ToHost<uint16_t>(apart_h, x.size()));
  EXPECT_EQ(LaunchAddRmsNorm(fused_x.as<float>(), {dp.as<float>(), 2, n}, dw.as<float>(), n, rows,
                             1e-5f, fused_y.as<float>(), nullptr),
            cudaErrorInvalidValue);  // partial sums overlapping
}

TEST_F(CudaOpsTest, RopeMatchesCpuWithAndWithoutFreqFactors) {
  const int n_heads = 6, head_dim = 64, n_tokens = 4;
  const std::vector<TokenSlot> tokens = {{0, 0}, {1, 5}, {0, 1000}, {2, 4095}};
  const std::vector<float> factors = RandomFloats(head_dim / 4, 5);
  std::vector<float> pos_factors(factors.size());
  for (size_t i = 0; i < factors.size(); ++i) pos_factors[i] = 1.0f + std::abs(factors[i]);
  DeviceBuffer d_factors = ToDevice(pos_factors), d_tokens = ToDevice(tokens);
  for (const bool with_factors : {false, true}) {
    const int n_rot = with_factors ? head_dim / 2 : head_dim;
    const std::vector<float> x = RandomFloats(static_cast<size_t>(n_tokens * n_heads * head_dim), 9);
    DeviceBuffer dx = ToDevice(x);
    const RopeParams params{n_heads, head_dim, n_rot, 10000.0f, 0.5f,
                            with_factors ? d_factors.as<float>() : nullptr};
    ASSERT_EQ(LaunchRope(dx.as<float>(), n_tokens, d_tokens.as<TokenSlot>(), params, nullptr),
              cudaSuccess);
    const std::vector<float> y = ToHost<float>(dx, x.size());
    std::vector<float> ref = x;
    for (int t = 0; t < n_tokens; ++t) {
      kernels::RopeNormal(&ref[t * n_heads * head_dim], n_heads, head_dim, n_rot, tokens[t].position,
                          10000.0f, 0.5f, with_factors ? pos_factors.data() : nullptr);
    }
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(y[i], ref[i], 2e-5f) << i;
  }
}

// Queries and keys in one launch: the bits of one launch each.
TEST_F(CudaOpsTest, RopeOfQueriesAndKeysTogetherEqualsOneLaunchEach) {
  const int n_heads = 6, n_k_heads = 2, head_dim = 64, n_tokens = 3;
  const std::vector<TokenSlot> tokens = {{0, 7}, {1, 0}, {0, 300}};
  DeviceBuffer d_tokens = ToDevice(tokens);
  const std::vector<float> q = RandomFloats(static_cast<size_t>(n_tokens * n_heads * head_dim), 21);
  const std::vector<float> k = RandomFloats(static_cast<size_t>(n_tokens * n_k_heads * head_dim), 22);
  const RopeParams params{n_heads, head_dim, head_dim, 10000.0f, 1.0f, nullptr};
  RopeParams k_params = params;
  k_params.n_heads = n_k_heads;
  DeviceBuffer q1 = ToDevice(q), k1 = ToDevice(k), q2 = ToDevice(q), k2 = ToDevice(k);
  ASSERT_EQ(LaunchRope(q1.as<float>(), k1.as<float>(), n_k_heads, n_tokens, d_tokens.as<TokenSlot>(), params, nullptr),
            cudaSuccess);
  ASSERT_EQ(LaunchRope(q2.as<float>(), n_tokens, d_tokens.as<TokenSlot>(), params, nullptr), cudaSuccess);
  ASSERT_EQ(LaunchRope(k2.as<float>(), n_tokens, d_tokens.as<TokenSlot>(), k_params, nullptr), cudaSuccess);
  EXPECT_EQ(ToHost<float>(q1, q.size()), ToHost<float>(q2, q.size()));
  EXPECT_EQ(ToHost<float>(k1, k.size()), ToHost<float>(k2, k.size()));
  EXPECT_NE(ToHost<float>(k1, k.size()), k);
  EXPECT_EQ(LaunchRope(q1.as<float>(), nullptr, 2, n_tokens, d_tokens.as<TokenSlot>(), params, nullptr),
            cudaErrorInvalidValue);
}

TEST_F(CudaOpsTest, SwiGluMatchesCpu) {
  const int64_t n = 10001;
  std::vector<float> gate = RandomFloats(n, 11, 4.0f);
  const std::vector<float> up = RandomFloats(n, 12);
  DeviceBuffer dg = ToDevice(gate), du = ToDevice(up);
  ASSERT_EQ(LaunchSwiGlu(dg.as<float>(), du.as<float>(), n, nullptr), cudaSuccess);
  const std::vector<float> y = ToHost<float>(dg, n);
  kernels::SwiGlu(gate.data(), up.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], gate[i], 1e-6f * std::abs(gate[i]) + 1e-7f);
}

// SwiGLU from partial sums (as a product that splits K leaves them) gives the
// bits of adding them in order, LaunchSwiGlu, and the conversion to halves.
TEST_F(CudaOpsTest, SwiGluHalvesFromPartialSumsEqualTheSeparateSteps) {
  const int64_t n = 4 * 2753;
  for (const int parts : {1, 3}) {
    const int64_t stride = n + 8;
    const std::vector<float> g = RandomFloats(static_cast<size_t>(parts * stride), 40 + parts, 3.0f);
    const std::vector<float> u = RandomFloats(static_cast<size_t>(parts * stride), 50 + parts);
    std::vector<float> gate(static_cast<size_t>(n), 0.0f), up(static_cast<size_t>(n), 0.0f);
    for (int k = 0; k < parts; ++k) {
      for (int64_t i = 0; i < n; ++i) {
        gate[i] += g[k * stride + i];
        up[i] += u[k * stride + i];
      }
    }
    DeviceBuffer dg = ToDevice(g), du = ToDevice(u);
    DeviceBuffer halves = Poisoned<uint16_t>(static_cast<size_t>(n));
    ASSERT_EQ(LaunchSwiGluHalves({dg.as<float>(), parts, stride}, {du.as<float>(), parts, stride},
                                 n, halves.as<uint16_t>(), nullptr),
              cudaSuccess);
    DeviceBuffer sg = ToDevice(gate), su = ToDevice(up);
    DeviceBuffer converted = Poisoned<uint16_t>(static_cast<size_t>(n));
    ASSERT_EQ(LaunchSwiGlu(sg.as<float>(), su.as<float>(), n, nullptr), cudaSuccess);
    ASSERT_EQ(LaunchFloatToHalfMmaOrder(sg.as<float>(), 1, n, converted.as<uint16_t>(), nullptr),
              cudaSuccess);
    EXPECT_EQ(ToHost<uint16_t>(halves, static_cast<size_t>(n)),
              ToHost<uint16_t>(converted, static_cast<size_t>(n)))
        << parts << " partial sums";
  }
  DeviceBuffer d = ToDevice(RandomFloats(64, 1));
  DeviceBuffer halves = Poisoned<uint16_t>(64);
  EXPECT_EQ(LaunchSwiGluHalves({d.as<float>(), 2, 16}, {d.as<float>(), 1, 0}, 32,
                               halves.as<uint16_t>(), nullptr),
            cudaErrorInvalidValue);  // partial sums closer than n apart
}

// A KV cache of fill.size() slots of n_ctx positions, random rows stored by
// LaunchStoreKv at positions 0..fill[s]-1 of each slot and poison past them.
struct FilledCache {
  DeviceBuffer keys, values;
  KvLayer layer;
};

FilledCache FillCache(bool half, int n_embd_kv, int n_ctx, const std::vector<int>& fill) {
  const size_t elem = half ? 2 : 4;
  const size_t cache_elems = fill.size() * n_ctx * n_embd_kv;
  FilledCache cache{Poisoned<uint8_t>(cache_elems * elem), Poisoned<uint8_t>(cache_elems * elem), {}};
  cache.layer = {cache.keys.data(), cache.values.data(), n_ctx, n_embd_kv, half};
  for (int s = 0; s < static_cast<int>(fill.size()); ++s) {
    std::vector<TokenSlot> tokens;
    for (int p = 0; p < fill[s]; ++p) tokens.push_back({s, p});
    const auto n = static_cast<int>(tokens.size());
    DeviceBuffer dk = ToDevice(RandomFloats(static_cast<size_t>(n) * n_embd_kv, 20 + s));
    DeviceBuffer dv = ToDevice(RandomFloats(static_cast<size_t>(n) * n_embd_kv, 30 + s));
    DeviceBuffer dt = ToDevice(tokens);
    EXPECT_EQ(LaunchStoreKv(cache.layer, dk.as<float>(), dv.as<float>(), n, dt.as<TokenSlot>(), nullptr),
              cudaSuccess);
  }
  return cache;
}

// The CPU kernel's attention of every batch token over the cache.
std::vector<float> CpuAttention(const FilledCache& cache, const AttentionParams& params,
                                const std::vector<float>& q, const std::vector<TokenSlot>& batch) {
  const KvLayer& layer = cache.layer;
  const size_t elem = layer.half ? 2 : 4;
  const size_t cache_bytes = static_cast<size_t>(cache.keys.bytes());
  const std::vector<uint8_t> hk = ToHost<uint8_t>(cache.keys, cache_bytes);
  const std::vector<uint8_t> hv = ToHost<uint8_t>(cache.values, cache_bytes);
  const kernels::AttentionShape shape{params.n_heads, params.n_kv_heads, params.head_dim};
  const int width = params.n_heads * params.head_dim;
  std::vector<float> scores(static_cast<size_t>(layer.n_ctx)), ref(q.size());
  const auto row_bytes = static_cast<int64_t>(layer.n_embd_kv * elem);
  const DType type = layer.half ? DType::kF16 : DType::kF32;
  for (size_t t = 0; t < batch.size(); ++t) {
    const size_t base = static_cast<size_t>(batch[t].slot) * layer.n_ctx * row_bytes;
    const kernels::KvView kv{type, hk.data() + base, row_bytes};
    const kernels::KvView vv{type, hv.data() + base, row_bytes};
    for (int h = 0; h < params.n_heads; ++h) {
      kernels::AttendOneToken(shape, &q[t * width], kv, vv, batch[t].position + 1, h, scores.data(),
                              &ref[t * width]);
    }
  }
  return ref;
}

// Attention of a mixed batch (decode and prefill-like tokens) against the CPU
// kernel over the same cache, at head dimensions whose rows take a whole warp,
// two 16-byte chunks a lane (256 floats), part of a warp (48: 6 or 12 chunks
// on 8 or 16 lanes), one chunk, or (rows not a multiple of 16 bytes) one
// element a lane per chunk.
TEST_F(CudaOpsTest, StoreKvAndAttentionMatchCpu) {
  for (const auto& [half, head_dim] : std::vector<std::pair<bool, int>>{
           {false, 128}, {true, 128}, {false, 256}, {true, 256}, {false, 48}, {true, 48}, {false, 8},
           {true, 8}, {true, 4}, {false, 6}, {true, 100}}) {
    const int n_heads = 8, n_kv_heads = 2, n_ctx = 700;
    const FilledCache cache = FillCache(half, n_kv_heads * head_dim, n_ctx, {1, 650, 129});
    // 5 (head, token) x 8 heads takes the decode shape (16 warps); the same
    // five tokens 13 times over (520 pairs) the prefill shape (4 warps).
    const std::vector<TokenSlot> five = {{0, 0}, {1, 649}, {2, 5}, {2, 128}, {1, 300}};
    for (const int repeat : {1, 13}) {
      std::vector<TokenSlot> batch;
      for (int r = 0; r < repeat; ++r) batch.insert(batch.end(), five.begin(), five.end());
      const auto n_tokens = static_cast<int>(batch.size());
      const std::vector<float> q = RandomFloats(static_cast<size_t>(n_tokens) * n_heads * head_dim, 40);
      DeviceBuffer dq = ToDevice(q), db = ToDevice(batch);
      DeviceBuffer dout = Poisoned<float>(q.size());
      const AttentionParams params{n_heads, n_kv_heads, head_dim};
      ASSERT_EQ(LaunchAttention(params, cache.layer, dq.as<float>(), n_tokens, db.as<TokenSlot>(),
                                dout.as<float>(), nullptr),
                cudaSuccess);
      const std::vector<float> out = ToHost<float>(dout, q.size());
      const std::vector<float> ref = CpuAttention(cache, params, q, batch);
      for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_NEAR(out[i], ref[i], 1e-5f)
            << "half=" << half << " head_dim=" << head_dim << " i=" << i;
      }
    }
  }
}

// RoPE and the KV store in one launch: the bits of LaunchRope (queries and
// keys) then LaunchStoreKv, in q, k and the cache, for every key element
// rotated (n_rot = head_dim) or only some (n_rot < head_dim), a half and a
// float cache, and as a programmatic dependent launch.
TEST_F(CudaOpsTest, RopeAndKvStoreInOneLaunchEqualTheSeparateLaunches) {
  const int n_heads = 8, n_k_heads = 2, head_dim = 64, n_ctx = 40, n_slots = 3;
  const std::vector<TokenSlot> tokens = {{0, 7}, {2, 0}, {1, 39}, {0, 8}, {2, 1}};
  const auto n_tokens = static_cast<int>(tokens.size());
  DeviceBuffer d_tokens = ToDevice(tokens);
  const std::vector<float> q = RandomFloats(static_cast<size_t>(n_tokens * n_heads * head_dim), 51);
  const std::vector<float> k = RandomFloats(static_cast<size_t>(n_tokens * n_k_heads * head_dim), 52);
  const std::vector<float> v = RandomFloats(k.size(), 53);
  for (const bool half : {false, true}) {
    for (const int n_rot : {head_dim, 32}) {
      for (const bool overlap : {false, true}) {
        const RopeParams params{n_heads, head_dim, n_rot, 10000.0f, 1.0f, nullptr};
        const size_t cache_bytes = static_cast<size_t>(n_slots) * n_ctx * n_k_heads * head_dim *
                                   (half ? 2 : 4);
        DeviceBuffer q1 = ToDevice(q), k1 = ToDevice(k), q2 = ToDevice(q), k2 = ToDevice(k);
        DeviceBuffer dv = ToDevice(v);
        DeviceBuffer keys1 = Poisoned<uint8_t>(cache_bytes), values1 = Poisoned<uint8_t>(cache_bytes);
        DeviceBuffer keys2 = Poisoned<uint8_t>(cache_bytes), values2 = Poisoned<uint8_t>(cache_bytes);
        const KvLayer cache1{keys1.data(), values1.data(), n_ctx, n_k_heads * head_dim, half};
        const KvLayer cache2{keys2.data(), values2.data(), n_ctx, n_k_heads * head_dim, half};
        ASSERT_EQ(LaunchRopeStoreKv(q1.as<float>(), k1.as<float>(), dv.as<float>(), n_k_heads,
                                    n_tokens, d_tokens.as<TokenSlot>(), params, cache1, nullptr,
                                    overlap),
                  cudaSuccess);
        ASSERT_EQ(LaunchRope(q2.as<float>(), k2.as<float>(), n_k_heads, n_tokens,
                             d_tokens.as<TokenSlot>(), params, nullptr),
                  cudaSuccess);
        ASSERT_EQ(LaunchStoreKv(cache2, k2.as<float>(), dv.as<float>(), n_tokens,
                                d_tokens.as<TokenSlot>(), nullptr),
                  cudaSuccess);
        EXPECT_EQ(ToHost<float>(q1, q.size()), ToHost<float>(q2, q.size()));
        EXPECT_EQ(ToHost<float>(k1, k.size()), ToHost<float>(k2, k.size()));
        EXPECT_EQ(ToHost<uint8_t>(keys1, cache_bytes), ToHost<uint8_t>(keys2, cache_bytes))
            << "half=" << half << " n_rot=" << n_rot;
        EXPECT_EQ(ToHost<uint8_t>(values1, cache_bytes), ToHost<uint8_t>(values2, cache_bytes));
      }
    }
  }
  DeviceBuffer dq = ToDevice(q), dk = ToDevice(k);
  const KvLayer wrong{dk.data(), dk.data(), n_ctx, 3 * head_dim, false};
  const RopeParams params{n_heads, head_dim, head_dim, 10000.0f, 1.0f, nullptr};
  EXPECT_EQ(LaunchRopeStoreKv(dq.as<float>(), dk.as<float>(), dk.as<float>(), n_k_heads, n_tokens,
                              d_tokens.as<TokenSlot>(), params, wrong, nullptr),
            cudaErrorInvalidValue);
}

// Attention that rounds its output for the next product writes the output
// of LaunchAttention and the rounding of LaunchQuantizeActivations, bit for
// bit, in the decode shape (16 warps) and the large one (4 warps, two rows
// of 32 lanes a thread at head_dim 256), as a programmatic dependent launch
// too; head dimensions that are not whole 32-element blocks are refused.
TEST_F(CudaOpsTest, AttentionRoundsItsOutputAsTheSeparateRoundingDoes) {
  // And writes its halves in mma order as the separate conversion does.
  for (const auto& [head_dim, repeat, overlap] : std::vector<std::tuple<int, int, bool>>{
           {128, 1, false}, {128, 1, true}, {64, 13, false}, {256, 13, true}}) {
    const int n_heads = 8, n_kv_heads = 2, n_ctx = 300;
    const FilledCache cache = FillCache(true, n_kv_heads * head_dim, n_ctx, {1, 250, 129});
    const std::vector<TokenSlot> five = {{0, 0}, {1, 249}, {2, 5}, {2, 128}, {1, 100}};
    std::vector<TokenSlot> batch;
    for (int r = 0; r < repeat; ++r) batch.insert(batch.end(), five.begin(), five.end());
    const auto n_tokens = static_cast<int>(batch.size());
    const int64_t cols = int64_t{n_heads} * head_dim;
    const auto n = static_cast<size_t>(n_tokens * cols);
    DeviceBuffer dq = ToDevice(RandomFloats(n, 54)), db = ToDevice(batch);
    DeviceBuffer fused_out = Poisoned<float>(n), plain_out = Poisoned<float>(n);
    DeviceBuffer fused_q = Poisoned<uint8_t>(Q8ActivationBytes(n_tokens, cols));
    DeviceBuffer plain_q = Poisoned<uint8_t>(Q8ActivationBytes(n_tokens, cols));
    const Q8Activations fused = Q8ActivationsIn(fused_q.data(), n_tokens, cols);
    const Q8Activations plain = Q8ActivationsIn(plain_q.data(), n_tokens, cols);
    const AttentionParams params{n_heads, n_kv_heads, head_dim};
    // The fused launch also writes the halves of the half tensor-core path.
    DeviceBuffer fused_halves = Poisoned<uint16_t>(n), plain_halves = Poisoned<uint16_t>(n);
    ASSERT_EQ(LaunchAttention(params, cache.layer, dq.as<float>(), n_tokens, db.as<TokenSlot>(),
                              fused_out.as<float>(), nullptr, fused, overlap,
                              fused_halves.as<uint16_t>()),
              cudaSuccess);
    ASSERT_EQ(LaunchAttention(params, cache.layer, dq.as<float>(), n_tokens, db.as<TokenSlot>(),
                              plain_out.as<float>(), nullptr),
              cudaSuccess);
    ASSERT_EQ(LaunchQuantizeActivations(plain_out.as<float>(), n_tokens, cols, plain, nullptr),
              cudaSuccess);
    ASSERT_EQ(LaunchFloatToHalfMmaOrder(plain_out.as<float>(), n_tokens, cols,
                                        plain_halves.as<uint16_t>(), nullptr),
              cudaSuccess);
    EXPECT_EQ(ToHost<float>(fused_out, n), ToHost<float>(plain_out, n)) << head_dim;
    ExpectSameRounding(fused, plain, n);
    EXPECT_EQ(ToHost<uint16_t>(fused_halves, n), ToHost<uint16_t>(plain_halves, n)) << head_dim;
  }
  const FilledCache cache = FillCache(true, 2 * 48, 16, {4});
  const std::vector<TokenSlot> one = {{0, 3}};
  DeviceBuffer dq = ToDevice(RandomFloats(8 * 48, 55)), db = ToDevice(one);
  DeviceBuffer out = Poisoned<float>(8 * 48);
  DeviceBuffer rounding = Poisoned<uint8_t>(Q8ActivationBytes(1, 8 * 48));
  EXPECT_EQ(LaunchAttention(AttentionParams{8, 2, 48}, cache.layer, dq.as<float>(), 1,
                            db.as<TokenSlot>(), out.as<float>(), nullptr,
                            Q8ActivationsIn(rounding.data(), 1, 8 * 48)),
            cudaErrorInvalidValue);
}

// Decode attention right after the launch that stores each token's own row
// (RoPE + KV store, as a layer runs them), with the older rows read before
// that launch ends (one_token_per_slot, a programmatic dependent launch):
// the bits of the attention launched alone once the rows are stored, over
// contexts of one pass and of several, a half and a float cache, and
// within the CPU kernel's tolerance.
TEST_F(CudaOpsTest, AttentionReadsOlderRowsEarlyAndItsOwnRowAfterItIsStored) {
  const int n_heads = 8, n_kv_heads = 2, head_dim = 128, n_ctx = 400;
  const int n_embd_kv = n_kv_heads * head_dim;
  const std::vector<TokenSlot> batch = {{0, 250}, {1, 100}, {2, 6}, {3, 1}};
  const auto n_tokens = static_cast<int>(batch.size());
  DeviceBuffer db = ToDevice(batch);
  const size_t n_q = static_cast<size_t>(n_tokens) * n_heads * head_dim;
  const std::vector<float> q = RandomFloats(n_q, 56);
  const std::vector<float> k = RandomFloats(static_cast<size_t>(n_tokens) * n_embd_kv, 57);
  const std::vector<float> v = RandomFloats(k.size(), 58);
  for (const bool half : {true, false}) {
    // Slots filled up to each token's position; its own row is poison until stored.
    const FilledCache cache = FillCache(half, n_embd_kv, n_ctx, {250, 100, 6, 1});
    const RopeParams rope{n_heads, head_dim, head_dim, 10000.0f, 1.0f, nullptr};
    DeviceBuffer dq = ToDevice(q), dk = ToDevice(k), dv = ToDevice(v);
    DeviceBuffer early = Poisoned<float>(n_q), alone = Poisoned<float>(n_q);
    AttentionParams params{n_heads, n_kv_heads, head_dim};
    params.one_token_per_slot = true;
    ASSERT_EQ(LaunchRopeStoreKv(dq.as<float>(), dk.as<float>(), dv.as<float>(), n_kv_heads,
                                n_tokens, db.as<TokenSlot>(), rope, cache.layer, nullptr),
              cudaSuccess);
    ASSERT_EQ(LaunchAttention(params, cache.layer, dq.as<float>(), n_tokens, db.as<TokenSlot>(),
                              early.as<float>(), nullptr, {}, /*overlap_previous=*/true),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    params.one_token_per_slot = false;
    ASSERT_EQ(LaunchAttention(params, cache.layer, dq.as<float>(), n_tokens, db.as<TokenSlot>(),
                              alone.as<float>(), nullptr),
              cudaSuccess);
    const std::vector<float> got = ToHost<float>(early, n_q);
    EXPECT_EQ(got, ToHost<float>(alone, n_q)) << "half=" << half;
    const std::vector<float> ref = CpuAttention(cache, params, ToHost<float>(dq, n_q), batch);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_NEAR(got[i], ref[i], 1e-5f) << "half=" << half << " i=" << i;
    }
  }
}

// The sequential scan LaunchGreedyTokens matches.
int32_t ScanGreedy(const float* row, int64_t n) {
  int32_t best = 0;
  for (int64_t id = 1; id < n; ++id) {
    if (row[id] > row[best]) best = static_cast<int32_t>(id);
  }
  return best;
}

// Greedy tokens of random rows and of rows built to catch a parallel scan
// out: the largest value repeated (lowest id wins), NaNs before and after it,
// a NaN at entry 0, all NaN, -0 before +0, one entry, widths not a multiple
// of the block.
TEST_F(CudaOpsTest, GreedyTokensMatchTheSequentialScan) {
  const float nan = std::nanf("");
  for (const int64_t n_vocab : {int64_t{32000}, int64_t{1}, int64_t{7}, int64_t{100003}}) {
    std::vector<std::vector<float>> rows;
    for (uint32_t seed = 0; seed < 4; ++seed) {
      rows.push_back(RandomFloats(static_cast<size_t>(n_vocab), 70 + seed, 8.0f));
    }
    std::vector<float> tied = RandomFloats(static_cast<size_t>(n_vocab), 80);
    for (int64_t id = n_vocab - 1; id >= 0; id -= 997) tied[id] = 9.0f;
    rows.push_back(tied);
    std::vector<float> nans = RandomFloats(static_cast<size_t>(n_vocab), 81);
    for (int64_t id = 0; id < n_vocab; id += 3) nans[id] = id == 0 ? 0.5f : nan;
    rows.push_back(nans);
    std::vector<float> first_nan = RandomFloats(static_cast<size_t>(n_vocab), 82);
    first_nan[0] = nan;
    rows.push_back(first_nan);
    rows.push_back(std::vector<float>(static_cast<size_t>(n_vocab), nan));
    std::vector<float> zeros(static_cast<size_t>(n_vocab), -1.0f);
    zeros[n_vocab / 2] = -0.0f;
    zeros[n_vocab - 1] = 0.0f;
    rows.push_back(zeros);
    std::vector<float> all;
    for (const std::vector<float>& row : rows) all.insert(all.end(), row.begin(), row.end());
    DeviceBuffer d_logits = ToDevice(all);
    DeviceBuffer d_tokens = Poisoned<int32_t>(rows.size());
    ASSERT_EQ(LaunchGreedyTokens(d_logits.as<float>(), static_cast<int>(rows.size()), n_vocab,
                                 d_tokens.as<int32_t>(), nullptr),
              cudaSuccess);
    const std::vector<int32_t> tokens = ToHost<int32_t>(d_tokens, rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      EXPECT_EQ(tokens[r], ScanGreedy(rows[r].data(), n_vocab)) << "n_vocab " << n_vocab << " row " << r;
    }
  }
  EXPECT_EQ(LaunchGreedyTokens(nullptr, 1, 10, nullptr, nullptr), cudaErrorInvalidValue);
}

// Tiles: a new one where the slot changes or 64 rows are full.
TEST(AttentionTilesTest, RunsOfOneSlotUpToSixtyFourRows) {
  std::vector<TokenSlot> batch;
  for (int p = 0; p < 130; ++p) batch.push_back({3, p});
  batch.push_back({1, 7});
  batch.push_back({1, 2});
  batch.push_back({3, 500});
  const std::vector<AttentionTile> tiles = PlanAttentionTiles(batch);
  ASSERT_EQ(tiles.size(), 5u);
  const AttentionTile want[] = {{0, 64, 3, 64}, {64, 64, 3, 128}, {128, 2, 3, 130}, {130, 2, 1, 8},
                                {132, 1, 3, 501}};
  for (size_t i = 0; i < tiles.size(); ++i) {
    EXPECT_EQ(tiles[i].first, want[i].first) << i;
    EXPECT_EQ(tiles[i].count, want[i].count) << i;
    EXPECT_EQ(tiles[i].slot, want[i].slot) << i;
    EXPECT_EQ(tiles[i].kv_end, want[i].kv_end) << i;
  }
  EXPECT_TRUE(PlanAttentionTiles({}).empty());
}

// The tiled kernel against the CPU kernel: a 150-token prompt (tiles of 64,
// 64, 22 rows), a chunk of 40 tokens at positions 300..339, tokens of one slot
// out of position order, and single decode tokens; with grouped-query heads.
// Queries and weights are rounded to half on the way to the tensor cores,
// hence the tolerance.
TEST_F(CudaOpsTest, TiledAttentionMatchesCpu) {
  for (const int head_dim : {64, 128}) {
    const int n_heads = 8, n_kv_heads = 2, n_ctx = 400;
    const FilledCache cache = FillCache(true, n_kv_heads * head_dim, n_ctx, {150, 340, 129, 1});
    std::vector<TokenSlot> batch;
    for (int p = 0; p < 150; ++p) batch.push_back({0, p});
    for (int p = 300; p < 340; ++p) batch.push_back({1, p});
    for (const int p : {100, 3, 128, 64, 0}) batch.push_back({2, p});
    batch.push_back({3, 0});
    batch.push_back({1, 17});
    const auto n_tokens = static_cast<int>(batch.size());
    const std::vector<float> q = RandomFloats(static_cast<size_t>(n_tokens) * n_heads * head_dim, 41);
    const std::vector<AttentionTile> tiles = PlanAttentionTiles(batch);
    DeviceBuffer dq = ToDevice(q), db = ToDevice(batch), dtiles = ToDevice(tiles);
    DeviceBuffer dout = Poisoned<float>(q.size());
    const AttentionParams params{n_heads, n_kv_heads, head_dim};
    ASSERT_TRUE(TiledAttentionSupports(params, cache.layer));
    ASSERT_EQ(LaunchTiledAttention(params, cache.layer, dq.as<float>(), db.as<TokenSlot>(),
                                   dtiles.as<AttentionTile>(), static_cast<int>(tiles.size()),
                                   dout.as<float>(), nullptr),
              cudaSuccess);
    const std::vector<float> out = ToHost<float>(dout, q.size());
    const std::vector<float> ref = CpuAttention(cache, params, q, batch);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_NEAR(out[i], ref[i], 3e-3f) << "head_dim=" << head_dim << " i=" << i;
    }
  }
  // Shapes it does not take: a float cache, head_dim 48.
  EXPECT_FALSE(TiledAttentionSupports({8, 2, 64}, KvLayer{nullptr, nullptr, 8, 128, false}));
  EXPECT_FALSE(TiledAttentionSupports({8, 2, 48}, KvLayer{nullptr, nullptr, 8, 96, true}));
}

}  // namespace
}  // namespace chord::cuda
