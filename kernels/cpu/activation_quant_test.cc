// The AVX2 activation quantizers against the portable ones, byte for byte, on
// random rows with the cases that pick different branches: an all-zero block,
// ties between +max and -max, values that round exactly half-way.
#include "kernels/cpu/activation_quant.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/multi_dot.h"
#include "kernels/cpu/test_data.h"

namespace chord::kernels {
namespace {

// Random rows of n values with a zero block, a +max/-max tie and half-way values.
std::vector<float> TrickyRow(int64_t n, std::mt19937& rng) {
  std::vector<float> x = RandomActivations(n, rng);
  for (int i = 0; i < 32 && i < n; ++i) x[static_cast<size_t>(i)] = 0.0f;
  if (n >= 512) {
    // The block [256, 512) has its largest magnitude twice, the negative one
    // first: its scale is exactly 1, so these values are exact half-ways.
    x[300] = -127.0f;
    x[400] = 127.0f;
    x[401] = 63.5f;
    x[402] = 62.5f;
    x[403] = -0.5f;
  }
  return x;
}

TEST(ActivationQuantTest, Avx2BytesMatchPortable) {
  if (!HasAvx2(BestKernelIsa()))
    GTEST_SKIP() << "this CPU has no AVX2 (or CHORD_KERNEL_ISA caps it)";
  std::mt19937 rng(11);
  for (int64_t n : {256, 768, 2048, 5632}) {
    const std::vector<float> x = TrickyRow(n, rng);
    std::vector<quant::BlockQ8_0> q8_0(static_cast<size_t>(n / quant::kQK)), q8_0_avx2(q8_0.size());
    QuantizeActivationsQ8_0(x.data(), n, q8_0.data());
    QuantizeActivationsQ8_0Avx2(x.data(), n, q8_0_avx2.data());
    EXPECT_EQ(0, std::memcmp(q8_0.data(), q8_0_avx2.data(), q8_0.size() * sizeof(q8_0[0])))
        << "Q8_0, n " << n;
    std::vector<quant::BlockQ8_K> q8_k(static_cast<size_t>(n / quant::kQKK)),
        q8_k_avx2(q8_k.size());
    QuantizeActivationsQ8_K(x.data(), n, q8_k.data());
    QuantizeActivationsQ8_KAvx2(x.data(), n, q8_k_avx2.data());
    EXPECT_EQ(0, std::memcmp(q8_k.data(), q8_k_avx2.data(), q8_k.size() * sizeof(q8_k[0])))
        << "Q8_K, n " << n;
  }
}

}  // namespace
}  // namespace chord::kernels
