#include "kernels/cpu/ops.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/quant/quant.h"
#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"

namespace chord::kernels {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(OpsTest, RmsNormMatchesDefinition) {
  const std::vector<float> x = Random(96, 1), w = Random(96, 2);
  std::vector<float> y(96);
  RmsNorm(x.data(), w.data(), 96, 1e-5f, y.data());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double scale = 1.0 / std::sqrt(ss / 96 + 1e-5);
  for (size_t i = 0; i < 96; ++i) EXPECT_NEAR(y[i], x[i] * scale * w[i], 1e-5);
}

TEST(OpsTest, RopeRotatesPairsByPositionDependentAngles) {
  const int heads = 2, dim = 8;
  std::vector<float> x = Random(heads * dim, 3);
  const std::vector<float> original = x;
  const int64_t pos = 7;
  RopeNormal(x.data(), heads, dim, dim, pos, 10000.0f, 1.0f, nullptr);
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < dim; i += 2) {
      const double theta = pos * std::pow(10000.0, -double(i) / dim);
      const double a = original[h * dim + i], b = original[h * dim + i + 1];
      EXPECT_NEAR(x[h * dim + i], a * std::cos(theta) - b * std::sin(theta), 1e-4);
      EXPECT_NEAR(x[h * dim + i + 1], a * std::sin(theta) + b * std::cos(theta), 1e-4);
    }
  }
}

TEST(OpsTest, RopeAtPositionZeroIsIdentityAndPartialRotationKeepsTail) {
  std::vector<float> x = Random(16, 4);
  const std::vector<float> original = x;
  RopeNormal(x.data(), 1, 16, 16, 0, 10000.0f, 1.0f, nullptr);
  EXPECT_EQ(x, original);
  RopeNormal(x.data(), 1, 16, 8, 5, 10000.0f, 1.0f, nullptr);
  for (int i = 8; i < 16; ++i) EXPECT_EQ(x[i], original[i]);
  EXPECT_NE(x[0], original[0]);
}

TEST(OpsTest, SoftmaxSumsToOneAndKeepsOrder) {
  std::vector<float> x = Random(50, 5, 4.0f);
  const std::vector<float> original = x;
  Softmax(x.data(), 50);
  double sum = 0;
  for (float v : x) sum += v;
  EXPECT_NEAR(sum, 1.0, 1e-6);
  for (size_t i = 1; i < 50; ++i) EXPECT_EQ(x[i] > x[0], original[i] > original[0]);
}

TEST(OpsTest, SwiGluMatchesDefinition) {
  std::vector<float> g = Random(20, 6);
  const std::vector<float> gate = g, up = Random(20, 7);
  SwiGlu(g.data(), up.data(), 20);
  for (size_t i = 0; i < 20; ++i)
    EXPECT_NEAR(g[i], gate[i] / (1 + std::exp(-gate[i])) * up[i], 1e-6);
}

// Every head of one query token against attention computed in double from the
// cache's values as stored (F32, or F16 rounded), for head sizes that take the
// vector code's full and partial 32-wide runs and the portable code (head_dim
// 4), and cache lengths that leave short last groups of keys.
TEST(AttentionTest, MatchesNaiveGroupedQueryAttention) {
  uint32_t seed = 8;
  for (DType type : {DType::kF32, DType::kF16}) {
    for (int head_dim : {4, 8, 40, 64, 128}) {
      for (int64_t n_kv : {1, 6, 8, 9, 37, 300}) {
        const AttentionShape shape{4, 2, head_dim};
        const int64_t kv_width = shape.n_kv_heads * head_dim;
        const std::vector<float> q = Random(shape.n_heads * head_dim, ++seed);
        std::vector<float> k = Random(n_kv * kv_width, ++seed), v = Random(n_kv * kv_width, ++seed);
        const int64_t element = type == DType::kF16 ? 2 : 4;
        std::vector<uint8_t> k_bytes(k.size() * element), v_bytes(v.size() * element);
        for (size_t i = 0; i < k.size(); ++i) {
          if (type == DType::kF16) {
            const uint16_t hk = quant::FloatToHalf(k[i]), hv = quant::FloatToHalf(v[i]);
            std::memcpy(&k_bytes[2 * i], &hk, 2);
            std::memcpy(&v_bytes[2 * i], &hv, 2);
            k[i] = quant::HalfToFloat(hk);
            v[i] = quant::HalfToFloat(hv);
          } else {
            std::memcpy(&k_bytes[4 * i], &k[i], 4);
            std::memcpy(&v_bytes[4 * i], &v[i], 4);
          }
        }
        const KvView keys{type, k_bytes.data(), kv_width * element};
        const KvView values{type, v_bytes.data(), kv_width * element};
        std::vector<float> out(q.size()), scores(static_cast<size_t>(n_kv));
        for (int h = 0; h < shape.n_heads; ++h) {
          AttendOneToken(shape, q.data(), keys, values, n_kv, h, scores.data(), out.data());
          const int kvh = h / 2;
          std::vector<double> s(static_cast<size_t>(n_kv));
          double max = -1e30, total = 0;
          for (int64_t p = 0; p < n_kv; ++p) {
            double dot = 0;
            for (int d = 0; d < head_dim; ++d)
              dot += double(q[h * head_dim + d]) * k[p * kv_width + kvh * head_dim + d];
            s[p] = dot / std::sqrt(double(head_dim));
            max = std::max(max, s[p]);
          }
          for (double& x : s) total += (x = std::exp(x - max));
          for (int d = 0; d < head_dim; ++d) {
            double expected = 0;
            for (int64_t p = 0; p < n_kv; ++p)
              expected += s[p] / total * v[p * kv_width + kvh * head_dim + d];
            ASSERT_NEAR(out[h * head_dim + d], expected, 2e-5)
                << DTypeName(type) << " head_dim " << head_dim << " n_kv " << n_kv << " head " << h
                << " dim " << d;
          }
        }
      }
    }
  }
}

// A run of consecutive tokens through AttendTokens gives each token the bits
// AttendOneToken gives it alone, for runs of every length up to 9, head sizes
// of the vector code and the portable one (4), F32 and F16 caches.
TEST(AttentionTest, RunOfTokensGivesEachTokenItsOwnBits) {
  uint32_t seed = 100;
  for (DType type : {DType::kF32, DType::kF16}) {
    for (int head_dim : {4, 8, 64, 128}) {
      for (int64_t first_n_kv : {1, 5, 37}) {
        for (int n_queries : {1, 2, 3, 8, 9}) {
          const AttentionShape shape{4, 2, head_dim};
          const int64_t n_embd = shape.n_heads * head_dim, kv_width = shape.n_kv_heads * head_dim;
          const int64_t n_kv = first_n_kv + n_queries - 1;
          const int64_t element = type == DType::kF16 ? 2 : 4;
          const std::vector<float> q = Random(n_queries * n_embd, ++seed);
          std::vector<uint8_t> k(n_kv * kv_width * element), v(k.size());
          std::mt19937 rng(++seed);
          for (uint8_t& byte : k)
            byte = static_cast<uint8_t>(rng() % 64);  // finite halves and floats
          for (uint8_t& byte : v) byte = static_cast<uint8_t>(rng() % 64);
          const KvView keys{type, k.data(), kv_width * element};
          const KvView values{type, v.data(), kv_width * element};
          std::vector<float> run_out(q.size()), alone(q.size());
          std::vector<float> scores(static_cast<size_t>(n_queries * n_kv));
          for (int h = 0; h < shape.n_heads; ++h) {
            AttendTokens(shape, q.data(), n_embd, keys, values, first_n_kv, n_queries, h,
                         scores.data(), run_out.data(), n_embd);
            for (int i = 0; i < n_queries; ++i) {
              AttendOneToken(shape, q.data() + i * n_embd, keys, values, first_n_kv + i, h,
                             scores.data(), alone.data() + i * n_embd);
            }
          }
          ASSERT_EQ(0, std::memcmp(run_out.data(), alone.data(), run_out.size() * sizeof(float)))
              << DTypeName(type) << " head_dim " << head_dim << " n_kv " << first_n_kv
              << " queries " << n_queries;
        }
      }
    }
  }
}

}  // namespace
}  // namespace chord::kernels
