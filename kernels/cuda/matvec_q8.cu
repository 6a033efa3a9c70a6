#include "kernels/cuda/matvec_q8.h"

#include "kernels/cuda/matvec_common.cuh"
#include "kernels/cuda/rms_scale.cuh"

namespace chord::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxGroup = kMatVecQ8MaxGroup;

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Programmatic dependent launch (sm_90): a product launched with
// `overlap_previous` may start while the kernel before it runs, once every
// block of that kernel has let it (LetNextKernelStart); it then pulls its
// first weights into L2 (weights are never written by kernels) and waits for
// the previous kernel's results before it reads activations. Both
// instructions do nothing for a launch without the attribute.
__device__ __forceinline__ void LetNextKernelStart() { asm volatile("griddepcontrol.launch_dependents;"); }
__device__ __forceinline__ void WaitForPreviousKernel() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void PrefetchToL2(const uint8_t* p, uint64_t bytes, int lane) {
  for (uint64_t offset = static_cast<uint64_t>(lane) * 128; offset < bytes; offset += 32 * 128) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p + offset));
  }
}

// Rounds one 32-element block of activations, one value per lane of a warp:
// the block's largest magnitude sets the scale, each element rounds to the
// nearest step (ties to even). Every rounding kernel goes through here, so a
// fused one writes the same bits as LaunchQuantizeActivations.
__device__ __forceinline__ void RoundBlock(float v, int lane, int64_t block, int8_t* __restrict__ q,
                                           float* __restrict__ scale, float* __restrict__ half_sums) {
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

constexpr int kRoundWarps = 8;

// One warp per 32-element block of x.
__global__ void QuantizeActivationsKernel(const float* __restrict__ x, int64_t n_blocks,
                                          int8_t* __restrict__ q, float* __restrict__ scale,
                                          float* __restrict__ half_sums) {
  LetNextKernelStart();
  const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (block >= n_blocks) return;
  const int lane = threadIdx.x % 32;
  RoundBlock(x[block * 32 + lane], lane, block, q, scale, half_sums);
}

// SwiGLU (gate = silu(gate) * up, as LaunchSwiGlu) and the rounding of the
// result, one warp per 32-element block.
__global__ void SwiGluQuantizeKernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n_blocks,
                                     int8_t* __restrict__ q, float* __restrict__ scale,
                                     float* __restrict__ half_sums) {
  LetNextKernelStart();
  const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (block >= n_blocks) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = block * 32 + lane;
  const float g = gate[i];
  const float v = (g / (1.0f + expf(-g))) * up[i];
  gate[i] = v;
  RoundBlock(v, lane, block, q, scale, half_sums);
}

constexpr int kNormThreads = 512;  // as LaunchRmsNorm's

// RMSNorm of a row (as LaunchRmsNorm: the same RmsScale) and the rounding of
// the result. Grid (row, slice): every block computes the row's factor (its
// 16 KB come from L2 after the first) and then rounds its own 16 32-element
// blocks, one a warp, so the rounding spreads over SMs as it does unfused
// (one block rounding a whole 4096-wide row measured 5% slower at batch 1).
__global__ void __launch_bounds__(kNormThreads)
    RmsNormQuantizeKernel(const float* __restrict__ x, const float* __restrict__ weight, int64_t n, float eps,
                          float* __restrict__ y, int8_t* __restrict__ q, float* __restrict__ scale,
                          float* __restrict__ half_sums) {
  LetNextKernelStart();
  const float* xr = x + blockIdx.x * n;
  const float factor = RmsScale<kNormThreads>(xr, n, eps, RowOfFloat4s(xr, weight, n));
  const int64_t blocks = n / 32;
  const int64_t b = static_cast<int64_t>(blockIdx.y) * (kNormThreads / 32) + threadIdx.x / 32;
  if (b >= blocks) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = b * 32 + lane;
  const float v = xr[i] * factor * weight[i];
  y[blockIdx.x * n + i] = v;
  RoundBlock(v, lane, blockIdx.x * blocks + b, q, scale, half_sums);
}

// Where a warp's lanes find their activations: row b of the rounded x.
struct RoundedX {
  const int8_t* __restrict__ q;
  const float* __restrict__ scale;
  const float* __restrict__ half_sums;
  int64_t cols;
  __device__ const int8_t* Q(int b, int element) const { return q + b * cols + element; }
  __device__ float Scale(int b, int element) const { return scale[b * (cols / 32) + element / 32]; }
  __device__ float HalfSum(int b, int element) const { return half_sums[b * (cols / 16) + element / 16]; }
};

// 8 bytes from a 2-byte-aligned address (Q6_K and Q8_0 blocks are 210 and
// 34 bytes long) as two words.
__device__ __forceinline__ int2 Load8Aligned2(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  const uint32_t w0 = __ldg(h) | (static_cast<uint32_t>(__ldg(h + 1)) << 16);
  const uint32_t w1 = __ldg(h + 2) | (static_cast<uint32_t>(__ldg(h + 3)) << 16);
  return make_int2(static_cast<int>(w0), static_cast<int>(w1));
}

// Q4_K, unit u as in the float kernel: 16 bytes of nibbles, whose low halves
// are 16 elements of sub-block 2i and high halves 16 of sub-block 2i + 1.
// element = d * scale_j * nibble - dmin * min_j, so a run's dot product is
// d * scale_j * (x's step) * sum(nibble * q) - dmin * min_j * (x's half sum).
template <int B>
__device__ __forceinline__ void UnitQ4K(const uint8_t* row, int u, const RoundedX& x, float (&acc)[B]) {
  const int blk = u >> 3, i = (u >> 1) & 3, h = u & 1;
  const uint8_t* block = row + blk * 144;
  const auto [d1, m1, d2, m2] = ScalesOfPair(block, i);
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
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const int4 a0 = *reinterpret_cast<const int4*>(x.Q(b, e0));
    const int4 a1 = *reinterpret_cast<const int4*>(x.Q(b, e0 + 32));
    int s0 = __dp4a(lo[0], a0.x, 0);
    s0 = __dp4a(lo[1], a0.y, s0);
    s0 = __dp4a(lo[2], a0.z, s0);
    s0 = __dp4a(lo[3], a0.w, s0);
    int s1 = __dp4a(hi[0], a1.x, 0);
    s1 = __dp4a(hi[1], a1.y, s1);
    s1 = __dp4a(hi[2], a1.z, s1);
    s1 = __dp4a(hi[3], a1.w, s1);
    acc[b] += d1 * x.Scale(b, e0) * static_cast<float>(s0) - m1 * x.HalfSum(b, e0) +
              d2 * x.Scale(b, e0 + 32) * static_cast<float>(s1) - m2 * x.HalfSum(b, e0 + 32);
  }
}

// Q6_K, unit u as in the float kernel: four runs of 8 elements, 32 apart,
// each 4 low bits (ql) and 2 high bits (qh) minus 32, times d * its 16-element
// group's scale.
template <int B>
__device__ __forceinline__ void UnitQ6K(const uint8_t* row, int u, const RoundedX& x, float (&acc)[B]) {
  const int blk = u >> 3, half = (u >> 2) & 1, g = u & 3;
  const uint8_t* block = row + blk * 210;
  const float d = Half(block + 208);
  const int2 ql0 = Load8Aligned2(block + 64 * half + 8 * g);
  const int2 ql1 = Load8Aligned2(block + 64 * half + 32 + 8 * g);
  const int2 qh = Load8Aligned2(block + 128 + 32 * half + 8 * g);
  const auto* scales = reinterpret_cast<const int8_t*>(block + 192 + 8 * half);
  const int is = g >> 1;
  const int lo0[2] = {ql0.x, ql0.y}, lo1[2] = {ql1.x, ql1.y}, hb[2] = {qh.x, qh.y};
  int v[4][2];  // run r, word c: four signed 6-bit values
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const unsigned bias = 0x20202020u;
    v[0][c] = static_cast<int>(__vsub4((lo0[c] & 0x0F0F0F0F) | ((hb[c] & 0x03030303) << 4), bias));
    v[1][c] = static_cast<int>(__vsub4((lo1[c] & 0x0F0F0F0F) | (((hb[c] >> 2) & 0x03030303) << 4), bias));
    v[2][c] = static_cast<int>(__vsub4(((lo0[c] >> 4) & 0x0F0F0F0F) | (((hb[c] >> 4) & 0x03030303) << 4), bias));
    v[3][c] = static_cast<int>(__vsub4(((lo1[c] >> 4) & 0x0F0F0F0F) | (((hb[c] >> 6) & 0x03030303) << 4), bias));
  }
  const int e0 = blk * 256 + 128 * half + 8 * g;
#pragma unroll
  for (int b = 0; b < B; ++b) {
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int2 a = *reinterpret_cast<const int2*>(x.Q(b, e0 + 32 * r));
      const int s = __dp4a(v[r][1], a.y, __dp4a(v[r][0], a.x, 0));
      sum += static_cast<float>(scales[is + 2 * r]) * x.Scale(b, e0 + 32 * r) * static_cast<float>(s);
    }
    acc[b] += d * sum;
  }
}

// Q8_0: unit u is block u (a scale and 32 signed bytes), aligned with x's.
template <int B>
__device__ __forceinline__ void UnitQ8_0(const uint8_t* row, int u, const RoundedX& x, float (&acc)[B]) {
  const uint8_t* block = row + u * 34;
  const float d = Half(block);
  int q[8];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int2 pair = Load8Aligned2(block + 2 + 8 * c);
    q[2 * c] = pair.x;
    q[2 * c + 1] = pair.y;
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const int4 a0 = *reinterpret_cast<const int4*>(x.Q(b, 32 * u));
    const int4 a1 = *reinterpret_cast<const int4*>(x.Q(b, 32 * u + 16));
    int s = __dp4a(q[0], a0.x, 0);
    s = __dp4a(q[1], a0.y, s);
    s = __dp4a(q[2], a0.z, s);
    s = __dp4a(q[3], a0.w, s);
    s = __dp4a(q[4], a1.x, s);
    s = __dp4a(q[5], a1.y, s);
    s = __dp4a(q[6], a1.z, s);
    s = __dp4a(q[7], a1.w, s);
    acc[b] += d * x.Scale(b, 32 * u) * static_cast<float>(s);
  }
}

// Up to kMaxGroup matrices of one type and width whose products read the
// same activations (Q/K/V, gate/up), in one launch: their rows are numbered
// one after the other, each matrix writing its own y (rows[m] apart per token).
struct RowGroup {
  const uint8_t* w[kMaxGroup];
  float* y[kMaxGroup];
  int64_t rows[kMaxGroup];
  int64_t end[kMaxGroup];  // rows of matrices 0..m
  int count;
  int64_t total_rows;
  uint64_t row_bytes;
};

// One warp per row, lanes over the row's 32-element units (so a warp's loads
// of one step cover contiguous weight bytes); B tokens share each weight read.
template <uint32_t kType, int B>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecQ8Kernel(RowGroup group, RoundedX x, bool accumulate) {
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= group.total_rows) return;
  // The matrix by comparisons and selects, never an index into the
  // parameters (which would copy them to local memory in every thread).
  static_assert(kMaxGroup == 3);
  const bool second = group.count > 1 && row >= group.end[0];
  const bool third = group.count > 2 && row >= group.end[1];
  const uint8_t* w = third ? group.w[2] : second ? group.w[1] : group.w[0];
  float* y = third ? group.y[2] : second ? group.y[1] : group.y[0];
  const int64_t y_stride = third ? group.rows[2] : second ? group.rows[1] : group.rows[0];
  row -= third ? group.end[1] : second ? group.end[0] : 0;
  const int lane = threadIdx.x % 32;
  const uint8_t* r = w + row * group.row_bytes;
  PrefetchToL2(r, group.row_bytes, lane);
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int units = static_cast<int>(x.cols / 32);
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.0f;
  // Up to four units' loads in flight per lane at batch 1 (a 4096-wide row is
  // four units a lane); two with more tokens, whose accumulators take registers.
#pragma unroll(B <= 2 ? 4 : 2)
  for (int u = lane; u < units; u += 32) {
    if constexpr (kType == kQ4_K) {
      UnitQ4K<B>(r, u, x, acc);
    } else if constexpr (kType == kQ6_K) {
      UnitQ6K<B>(r, u, x, acc);
    } else {
      UnitQ8_0<B>(r, u, x, acc);
    }
  }
  StoreRowSums<B>(acc, lane, y, y_stride, row, accumulate);
}

template <uint32_t kType, int B>
cudaError_t LaunchPass(std::span<const DeviceMatrix> w, const Q8Activations& x, int64_t first, std::span<float* const> y,
                bool accumulate, bool overlap_previous, cudaStream_t stream) {
  const int64_t cols = w[0].cols;
  RowGroup group{};
  group.count = static_cast<int>(w.size());
  group.row_bytes = w[0].row_bytes;
  int64_t rows = 0;
  for (size_t m = 0; m < w.size(); ++m) {
    group.w[m] = static_cast<const uint8_t*>(w[m].data);
    group.y[m] = y[m] + first * w[m].rows;
    group.rows[m] = w[m].rows;
    rows += w[m].rows;
    group.end[m] = rows;
  }
  group.total_rows = rows;
  const auto blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const RoundedX rx{x.q + first * cols, x.scale + first * (cols / 32), x.half_sums + first * (cols / 16), cols};
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kWarpsPerBlock * 32);
  config.stream = stream;
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &overlap;
  config.numAttrs = overlap_previous ? 1 : 0;
  return cudaLaunchKernelEx(&config, MatVecQ8Kernel<kType, B>, group, rx, accumulate);
}

cudaError_t LaunchGroup(std::span<const DeviceMatrix> w, const Q8Activations& x, int n_tokens,
                        std::span<float* const> y, bool accumulate, bool overlap_previous, cudaStream_t stream) {
  if (w.empty() || w.size() > static_cast<size_t>(kMaxGroup) || w.size() != y.size() || n_tokens <= 0) {
    return cudaErrorInvalidValue;
  }
  for (const DeviceMatrix& m : w) {
    if (!MatVecQ8Supports(m.type, m.cols) || m.type != w[0].type || m.cols != w[0].cols || m.rows <= 0) {
      return cudaErrorInvalidValue;
    }
  }
  cudaError_t error = cudaSuccess;
  ForEachPass(n_tokens, [&]<int B>(int64_t first) {
    if (error != cudaSuccess) return;
    if (w[0].type == kQ4_K) {
      error = LaunchPass<kQ4_K, B>(w, x, first, y, accumulate, overlap_previous, stream);
    } else if (w[0].type == kQ6_K) {
      error = LaunchPass<kQ6_K, B>(w, x, first, y, accumulate, overlap_previous, stream);
    } else {
      error = LaunchPass<kQ8_0, B>(w, x, first, y, accumulate, overlap_previous, stream);
    }
  });
  if (error != cudaSuccess) return error;
  return cudaGetLastError();
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
  const auto grid = static_cast<unsigned>((n_blocks + kRoundWarps - 1) / kRoundWarps);
  QuantizeActivationsKernel<<<grid, kRoundWarps * 32, 0, stream>>>(x, n_blocks, out.q, out.scale, out.half_sums);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNormQuantize(const float* x, const float* weight, int64_t n, int n_rows, float eps, float* y,
                                  Q8Activations out, cudaStream_t stream) {
  if (n_rows <= 0 || n <= 0 || n % 32 != 0) return cudaErrorInvalidValue;
  const int64_t slices = (n / 32 + kNormThreads / 32 - 1) / (kNormThreads / 32);
  const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(slices));
  RmsNormQuantizeKernel<<<grid, kNormThreads, 0, stream>>>(x, weight, n, eps, y, out.q, out.scale, out.half_sums);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGluQuantize(float* gate, const float* up, int n_tokens, int64_t cols, Q8Activations out,
                                 cudaStream_t stream) {
  if (n_tokens <= 0 || cols <= 0 || cols % 32 != 0) return cudaErrorInvalidValue;
  const int64_t n_blocks = n_tokens * cols / 32;
  const auto grid = static_cast<unsigned>((n_blocks + kRoundWarps - 1) / kRoundWarps);
  SwiGluQuantizeKernel<<<grid, kRoundWarps * 32, 0, stream>>>(gate, up, n_blocks, out.q, out.scale,
                                                              out.half_sums);
  return cudaGetLastError();
}

bool MatVecQ8Supports(uint32_t type, int64_t cols) {
  switch (type) {
    case kQ4_K: case kQ6_K: return cols > 0 && cols % 256 == 0;
    case kQ8_0: return cols > 0 && cols % 32 == 0;
    default: return false;
  }
}

cudaError_t LaunchMatVecQ8(const DeviceMatrix& w, const Q8Activations& x, int n_tokens, float* y,
                           bool accumulate, cudaStream_t stream, bool overlap_previous) {
  return LaunchGroup({&w, 1}, x, n_tokens, {&y, 1}, accumulate, overlap_previous, stream);
}

cudaError_t LaunchMatVecQ8Group(std::span<const DeviceMatrix> w, const Q8Activations& x, int n_tokens,
                                std::span<float* const> y, cudaStream_t stream, bool overlap_previous) {
  return LaunchGroup(w, x, n_tokens, y, /*accumulate=*/false, overlap_previous, stream);
}

}  // namespace chord::cuda
