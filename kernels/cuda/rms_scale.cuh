// The RMSNorm factor of one row, shared by the norm kernels (ops.cu) and the
// norm fused with activation rounding (matvec_q8.cu), so both compute the
// same bits.
#pragma once

#include <cstdint>

namespace chord::cuda {

// True when a row of n floats at `row` (and its weight) can be read as float4s.
__device__ __forceinline__ bool RowOfFloat4s(const float* row, const float* weight, int64_t n) {
  return n % 4 == 0 && (reinterpret_cast<uintptr_t>(row) | reinterpret_cast<uintptr_t>(weight)) % 16 == 0;
}

// 1 / sqrt(mean(row^2) + eps), computed by a block of kThreads threads (all
// of them call it). Whole float4 rows are read with 16-byte loads, so a
// 4096-wide row takes two loads per thread of 512, issued together; the sum
// of squares is kept in double and reduced in a fixed order (the same bits for
// a row whatever the other rows are).
template <int kThreads>
__device__ __forceinline__ float RmsScale(const float* __restrict__ row, int64_t n, float eps, bool float4s) {
  double sum = 0.0;
  if (float4s) {
    const auto* x4 = reinterpret_cast<const float4*>(row);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n / 4; i += kThreads) {
      const float4 v = x4[i];
      sum += static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y + static_cast<double>(v.z) * v.z +
             static_cast<double>(v.w) * v.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const double v = row[i];
      sum += v * v;
    }
  }
  __shared__ double partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return static_cast<float>(1.0 / sqrt(total / static_cast<double>(n) + eps));
}

}  // namespace chord::cuda
