#include "kernels/cuda/matvec_q8.h"

#include "kernels/cuda/matvec_common.cuh"

namespace chord::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// One warp per 32-element block of x: the block's largest magnitude sets the
// scale, each element rounds to the nearest step (ties to even).
__global__ void QuantizeActivationsKernel(const float* __restrict__ x, int64_t n_blocks,
                                          int8_t* __restrict__ q, float* __restrict__ scale,
                                          float* __restrict__ half_sums) {
  const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (block >= n_blocks) return;
  const int lane = threadIdx.x % 32;
  const float v = x[block * 32 + lane];
  float amax = fabsf(v);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  const float d = amax / 127.0f;
  const int qi = d > 0.0f ? max(-127, min(127, __float2int_rn(v / d))) : 0;
  q[block * 32 + lane] = static_cast<int8_t>(qi);
  int sum = qi;
#pragma unroll
  for (int offset = 8; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) scale[block] = d;
  if (lane % 16 == 0) half_sums[block * 2 + lane / 16] = d * static_cast<float>(sum);
}

// One warp per row of Q4_K weights, lanes over the row's 32-element units as
// in the float kernel: unit u holds 16 bytes of nibbles, whose low halves are
// 16 elements of sub-block 2i and high halves 16 of sub-block 2i + 1.
// element = d * scale_j * nibble - dmin * min_j, so a run's dot product is
// d * scale_j * (x's step) * sum(nibble * q) - dmin * min_j * (x's half sum).
template <int B>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecQ4KQ8Kernel(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t rows, int64_t cols,
                      const int8_t* __restrict__ xq, const float* __restrict__ xscale,
                      const float* __restrict__ xsums, float* __restrict__ y, int64_t y_stride,
                      bool accumulate) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const uint8_t* r = w + row * row_bytes;
  const int units = static_cast<int>(cols / 32);
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.0f;
#pragma unroll 2
  for (int u = lane; u < units; u += 32) {
    const int blk = u >> 3, i = (u >> 1) & 3, h = u & 1;
    const uint8_t* block = r + blk * 144;
    const float d = Half(block), dmin = Half(block + 2);
    float sc, m;
    ScaleMinK4(2 * i, block + 4, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    ScaleMinK4(2 * i + 1, block + 4, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    const uint4 qv = Load16(block + 16 + 32 * i + 16 * h);
    const int words[4] = {static_cast<int>(qv.x), static_cast<int>(qv.y), static_cast<int>(qv.z),
                          static_cast<int>(qv.w)};
    int lo[4], hi[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      lo[c] = words[c] & 0x0F0F0F0F;
      hi[c] = (words[c] >> 4) & 0x0F0F0F0F;
    }
    const int e0 = blk * 256 + 64 * i + 16 * h;  // run 0's first element; run 1 is 32 further
    const int qb0 = e0 / 32, hs0 = e0 / 16;       // x's block and half of run 0 (run 1: +1, +2)
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int4 a0 = *reinterpret_cast<const int4*>(xq + b * cols + e0);
      const int4 a1 = *reinterpret_cast<const int4*>(xq + b * cols + e0 + 32);
      int s0 = __dp4a(lo[0], a0.x, 0);
      s0 = __dp4a(lo[1], a0.y, s0);
      s0 = __dp4a(lo[2], a0.z, s0);
      s0 = __dp4a(lo[3], a0.w, s0);
      int s1 = __dp4a(hi[0], a1.x, 0);
      s1 = __dp4a(hi[1], a1.y, s1);
      s1 = __dp4a(hi[2], a1.z, s1);
      s1 = __dp4a(hi[3], a1.w, s1);
      const float* sb = xscale + b * (cols / 32);
      const float* hb = xsums + b * (cols / 16);
      acc[b] += d1 * sb[qb0] * static_cast<float>(s0) - m1 * hb[hs0] +
                d2 * sb[qb0 + 1] * static_cast<float>(s1) - m2 * hb[hs0 + 2];
    }
  }
  StoreRowSums<B>(acc, lane, y, y_stride, row, accumulate);
}

template <int B>
void LaunchQ4K(const DeviceMatrix& w, const Q8Activations& x, int64_t first, float* y, bool accumulate,
               cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  MatVecQ4KQ8Kernel<B><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const uint8_t*>(w.data), w.row_bytes, w.rows, w.cols, x.q + first * w.cols,
      x.scale + first * (w.cols / 32), x.half_sums + first * (w.cols / 16), y + first * w.rows, w.rows,
      accumulate);
}

}  // namespace

size_t Q8ActivationBytes(int64_t n_tokens, int64_t cols) {
  const auto n = static_cast<size_t>(n_tokens * cols);
  return Align256(n) + Align256(n / 32 * sizeof(float)) + Align256(n / 16 * sizeof(float));
}

Q8Activations Q8ActivationsIn(void* buffer, int64_t n_tokens, int64_t cols) {
  const auto n = static_cast<size_t>(n_tokens * cols);
  auto* base = static_cast<uint8_t*>(buffer);
  Q8Activations a;
  a.q = reinterpret_cast<int8_t*>(base);
  a.scale = reinterpret_cast<float*>(base + Align256(n));
  a.half_sums = reinterpret_cast<float*>(base + Align256(n) + Align256(n / 32 * sizeof(float)));
  return a;
}

cudaError_t LaunchQuantizeActivations(const float* x, int n_tokens, int64_t cols, Q8Activations out,
                                      cudaStream_t stream) {
  if (n_tokens <= 0 || cols <= 0 || cols % 32 != 0) return cudaErrorInvalidValue;
  const int64_t n_blocks = n_tokens * cols / 32;
  constexpr int kWarps = 8;
  const auto grid = static_cast<unsigned>((n_blocks + kWarps - 1) / kWarps);
  QuantizeActivationsKernel<<<grid, kWarps * 32, 0, stream>>>(x, n_blocks, out.q, out.scale, out.half_sums);
  return cudaGetLastError();
}

bool MatVecQ8Supports(uint32_t type, int64_t cols) { return type == kQ4_K && cols > 0 && cols % 256 == 0; }

cudaError_t LaunchMatVecQ8(const DeviceMatrix& w, const Q8Activations& x, int n_tokens, float* y,
                           bool accumulate, cudaStream_t stream) {
  if (!MatVecQ8Supports(w.type, w.cols) || n_tokens <= 0) return cudaErrorInvalidValue;
  ForEachPass(n_tokens, [&]<int B>(int64_t first) { LaunchQ4K<B>(w, x, first, y, accumulate, stream); });
  return cudaGetLastError();
}

}  // namespace chord::cuda
