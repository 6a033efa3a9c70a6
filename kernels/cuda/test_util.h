// Helpers for the GPU tests: skip without a device, copy vectors to and from
// device memory, draw random data. Test-only.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/matvec.h"
#include "kernels/cuda/matvec_q8.h"

namespace chord::cuda::testing {

#define CHORD_SKIP_WITHOUT_GPU()                                                    \
  do {                                                                              \
    if (!::chord::cuda::HasCudaDevice()) GTEST_SKIP() << "no CUDA device present"; \
  } while (0)

template <typename T>
DeviceBuffer ToDevice(const std::vector<T>& host) {
  auto buffer = DeviceBuffer::Allocate(host.size() * sizeof(T));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  EXPECT_EQ(cudaMemcpy(buffer->data(), host.data(), buffer->bytes(), cudaMemcpyHostToDevice),
            cudaSuccess);
  return std::move(*buffer);
}

// A device buffer of n elements, filled with NaN bytes so that unwritten
// outputs show.
template <typename T>
DeviceBuffer Poisoned(size_t n) {
  auto buffer = DeviceBuffer::Allocate(n * sizeof(T));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  EXPECT_EQ(cudaMemset(buffer->data(), 0xff, buffer->bytes()), cudaSuccess);
  return std::move(*buffer);
}

template <typename T>
std::vector<T> ToHost(const DeviceBuffer& buffer, size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(host.data(), buffer.data(), n * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> values(n);
  for (float& v : values) v = dist(rng);
  return values;
}

// A random matrix stored as `type`, on host and device, and its decoded values.
struct TestMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> decoded;  // rows * cols, what DequantizeRow gives
  DeviceBuffer device;
  DeviceMatrix view;
};

inline TestMatrix MakeMatrix(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  TestMatrix m;
  const std::vector<float> values = RandomFloats(static_cast<size_t>(rows * cols), seed);
  const uint64_t row_bytes = *RowBytes(type, cols);
  m.bytes.resize(row_bytes * static_cast<uint64_t>(rows));
  EXPECT_TRUE(quant::QuantizeRows(type, values.data(), rows, cols, m.bytes.data()).ok());
  m.decoded.resize(values.size());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(quant::DequantizeRow(type, m.bytes.data() + r * row_bytes, m.decoded.data() + r * cols,
                                     cols)
                    .ok());
  }
  m.device = ToDevice(m.bytes);
  m.view = DeviceMatrix{static_cast<uint32_t>(type), rows, cols, row_bytes, m.device.data()};
  return m;
}

// Two roundings of n activations (matvec_q8.h) hold the same bits.
inline void ExpectSameRounding(const Q8Activations& a, const Q8Activations& b, size_t n) {
  std::vector<int8_t> qa(n), qb(n);
  std::vector<float> sa(n / 32), sb(n / 32), ha(n / 16), hb(n / 16);
  EXPECT_EQ(cudaMemcpy(qa.data(), a.q, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(qb.data(), b.q, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(sa.data(), a.scale, n / 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(sb.data(), b.scale, n / 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(ha.data(), a.half_sums, n / 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(hb.data(), b.half_sums, n / 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(qa, qb);
  EXPECT_EQ(sa, sb);
  EXPECT_EQ(ha, hb);
}

}  // namespace chord::cuda::testing
