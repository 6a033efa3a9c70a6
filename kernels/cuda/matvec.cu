#include "kernels/cuda/matvec.h"

#include <cuda_fp16.h>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/matvec_common.cuh"
#include "kernels/cuda/matvec_q8.h"
#include "kernels/cuda/round_block.cuh"

namespace chord::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

// Calls f(element index, value) for the 32 elements of unit u.
template <uint32_t kType, typename F>
__device__ __forceinline__ void VisitUnit(const uint8_t* row, int u, F&& f) {
  using Shape = UnitShape<kType>;
  constexpr int kLen = 32 / Shape::kRuns;
  float w[32];
  int base;
  DequantUnit<kType>(row, u, w, &base);
#pragma unroll
  for (int r = 0; r < Shape::kRuns; ++r) {
#pragma unroll
    for (int k = 0; k < kLen; ++k) f(base + r * Shape::kStride + k, w[r * kLen + k]);
  }
}

// acc[b] += dot(unit u's 32 weights, the matching x of token b), x read as float4.
template <uint32_t kType, int B>
__device__ __forceinline__ void DotUnit(const uint8_t* row, int u, const float* __restrict__ x,
                                        int64_t cols, float (&acc)[B]) {
  using Shape = UnitShape<kType>;
  constexpr int kLen = 32 / Shape::kRuns;
  float w[32];
  int base;
  DequantUnit<kType>(row, u, w, &base);
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const float* xb = x + b * cols + base;
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < Shape::kRuns; ++r) {
#pragma unroll
      for (int k = 0; k < kLen; k += 4) {
        const float4 xv = __ldg(reinterpret_cast<const float4*>(xb + r * Shape::kStride + k));
        const float* wr = w + r * kLen + k;
        sum += wr[0] * xv.x + wr[1] * xv.y + wr[2] * xv.z + wr[3] * xv.w;
      }
    }
    acc[b] += sum;
  }
}

// One warp per row; lanes stride over the row's 32-element units, so a warp's
// loads of one step cover contiguous bytes. B tokens share each weight read.
template <uint32_t kType, int B>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecKernel(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t rows, int64_t cols,
                 const float* __restrict__ x, float* __restrict__ y, int64_t y_stride,
                 bool accumulate) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const uint8_t* r = w + row * row_bytes;
  const int units = static_cast<int>(cols / kUnit);
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.0f;
#pragma unroll 2
  for (int u = lane; u < units; u += 32) {
    DotUnit<kType, B>(r, u, x, cols, acc);
  }
  StoreRowSums<B>(acc, lane, y, y_stride, row, accumulate);
}

template <uint32_t kType>
__global__ void DequantRowsKernel(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t cols,
                                  const int32_t* __restrict__ row_ids, float* __restrict__ out) {
  const int units = static_cast<int>(cols / kUnit);
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  if (u >= units) return;
  const int64_t i = blockIdx.y;
  const uint8_t* r = w + static_cast<int64_t>(row_ids[i]) * row_bytes;
  float* o = out + i * cols;
  VisitUnit<kType>(r, u, [&](int index, float value) { o[index] = value; });
}

// One row of w (row_ids[0]) into out, and for each 32-element group the
// rounding of out * weight and out's sum of squares (RoundNormGroup, the
// bits of the separate dequantize and LaunchRmsNormRoundDeferred). A block
// takes 256 elements: its first 8 threads dequantize the 8 units that hold
// them into shared memory, then each warp takes a group. The next kernel
// may launch at once (a programmatic dependent launch waits for this one).
template <uint32_t kType>
__global__ void __launch_bounds__(256)
    DequantRowRmsRoundKernel(const uint8_t* __restrict__ w, uint64_t row_bytes,
                             const int32_t* __restrict__ row_ids, float* __restrict__ out,
                             const float* __restrict__ weight, int8_t* __restrict__ q,
                             float* __restrict__ scale, float* __restrict__ half_sums,
                             double* __restrict__ sum_squares) {
  LetNextKernelStart();
  __shared__ float values[256];
  const int t = static_cast<int>(threadIdx.x);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * 256;
  const float g = weight[first + t];
  if (t < 8) {
    const uint8_t* r = w + static_cast<int64_t>(row_ids[0]) * row_bytes;
    VisitUnit<kType>(r, static_cast<int>(blockIdx.x) * 8 + t,
                     [&](int index, float value) { values[index - first] = value; });
  }
  __syncthreads();
  const float v = values[t];
  out[first + t] = v;
  RoundNormGroup(v, g, t % 32, (first + t) / 32, q, scale, half_sums, sum_squares);
}

// One thread per unit; each run of 8 or 16 halves leaves as 16-byte stores
// (2-byte stores at a 64-byte lane stride would touch a sector each).
template <uint32_t kType>
__global__ void DequantHalfKernel(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t rows,
                                  int64_t cols, __half* __restrict__ out) {
  using Shape = UnitShape<kType>;
  constexpr int kLen = 32 / Shape::kRuns;
  const int64_t units = cols / kUnit;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= rows * units) return;
  const int64_t row = id / units;
  const int u = static_cast<int>(id % units);
  float v[32];
  int base;
  DequantUnit<kType>(w + row * row_bytes, u, v, &base);
  __half* o = out + row * cols + base;
#pragma unroll
  for (int r = 0; r < Shape::kRuns; ++r) {
#pragma unroll
    for (int k = 0; k < kLen; k += 8) {
      uint4 packed;
      auto* h = reinterpret_cast<__half2*>(&packed);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        h[j] = __floats2half2_rn(v[r * kLen + k + 2 * j], v[r * kLen + k + 2 * j + 1]);
      }
      *reinterpret_cast<uint4*>(o + r * Shape::kStride + k) = packed;
    }
  }
}

// Q4_K in units of 8 bytes of nibbles: 8 elements of sub-block 2i (low
// halves) and the 8 of sub-block 2i + 1 32 further on (high halves), so that
// the four lanes of a 32-byte run of nibbles store 64 contiguous output bytes
// per instruction. (DequantHalfKernel's 32-element units stored 16 bytes
// every 64 in each instruction: 1.9 TB/s against Q6_K's 3.6 on the same
// shape.)
__global__ void DequantHalfQ4KKernel(const uint8_t* __restrict__ w, uint64_t row_bytes,
                                     int64_t rows, int64_t cols, __half* __restrict__ out) {
  const int64_t units = cols / 16;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= rows * units) return;
  const int64_t row = id / units;
  const int u = static_cast<int>(id % units);
  const int blk = u >> 4, i = (u >> 2) & 3, g = u & 3;
  const uint8_t* block = w + row * row_bytes + blk * 144;
  const auto [d1, m1, d2, m2] = ScalesOfPair(Load16(block), i);
  const uint2 q = __ldg(reinterpret_cast<const uint2*>(block + 16 + 32 * i + 8 * g));
  const uint32_t words[2] = {q.x, q.y};
  uint4 lo, hi;
  auto* lo_h = reinterpret_cast<__half2*>(&lo);
  auto* hi_h = reinterpret_cast<__half2*>(&hi);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t word = words[k / 2] >> (16 * (k % 2));
    lo_h[k] = __floats2half2_rn(d1 * static_cast<float>(word & 0xF) - m1,
                                d1 * static_cast<float>((word >> 8) & 0xF) - m1);
    hi_h[k] = __floats2half2_rn(d2 * static_cast<float>((word >> 4) & 0xF) - m2,
                                d2 * static_cast<float>((word >> 12) & 0xF) - m2);
  }
  __half* o = out + row * cols + blk * 256 + 64 * i + 8 * g;
  *reinterpret_cast<uint4*>(o) = lo;
  *reinterpret_cast<uint4*>(o + 32) = hi;
}

// Rows whose length is not a multiple of 32 (tiny models' F32/F16 tensors):
// one warp per row, one element per lane and step.
template <uint32_t kType>
__device__ __forceinline__ float Element(const uint8_t* row, int64_t c) {
  if constexpr (kType == kF32) {
    return __ldg(reinterpret_cast<const float*>(row) + c);
  } else {
    return __half2float(reinterpret_cast<const __half*>(row)[c]);
  }
}

template <uint32_t kType>
__global__ void ScalarMatVecKernel(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t rows,
                                   int64_t cols, const float* __restrict__ x, int n_tokens,
                                   float* __restrict__ y, bool accumulate) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const uint8_t* r = w + row * row_bytes;
  for (int t = 0; t < n_tokens; ++t) {
    float v = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) v += Element<kType>(r, c) * x[t * cols + c];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) {
      float* out = y + t * rows + row;
      *out = accumulate ? *out + v : v;
    }
  }
}

// out row i = row row_ids[i] (as float) when row_ids is set, else row i as half.
template <uint32_t kType>
__global__ void ScalarDequantKernel(const uint8_t* __restrict__ w, uint64_t row_bytes,
                                    int64_t n_rows, int64_t cols,
                                    const int32_t* __restrict__ row_ids, float* __restrict__ out_f,
                                    __half* __restrict__ out_h) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= n_rows * cols) return;
  const int64_t i = id / cols, c = id % cols;
  const int64_t src = row_ids != nullptr ? row_ids[i] : i;
  const float value = Element<kType>(w + src * row_bytes, c);
  if (out_f != nullptr) {
    out_f[id] = value;
  } else {
    out_h[id] = __float2half(value);
  }
}

bool Scalar(const DeviceMatrix& w) { return w.cols % kUnit != 0; }

cudaError_t LaunchScalar(const DeviceMatrix& w, const float* x, int n_tokens, float* y,
                         bool accumulate, const int32_t* row_ids, int64_t n_rows, float* out_f,
                         __half* out_h, cudaStream_t stream) {
  const auto* data = static_cast<const uint8_t*>(w.data);
  const auto mv_blocks = static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const auto dq_blocks = static_cast<unsigned>((n_rows * w.cols + 255) / 256);
  if (w.type == kF32) {
    if (x != nullptr) {
      ScalarMatVecKernel<kF32><<<mv_blocks, kWarpsPerBlock * 32, 0, stream>>>(
          data, w.row_bytes, w.rows, w.cols, x, n_tokens, y, accumulate);
    } else {
      ScalarDequantKernel<kF32>
          <<<dq_blocks, 256, 0, stream>>>(data, w.row_bytes, n_rows, w.cols, row_ids, out_f, out_h);
    }
  } else {
    if (x != nullptr) {
      ScalarMatVecKernel<kF16><<<mv_blocks, kWarpsPerBlock * 32, 0, stream>>>(
          data, w.row_bytes, w.rows, w.cols, x, n_tokens, y, accumulate);
    } else {
      ScalarDequantKernel<kF16>
          <<<dq_blocks, 256, 0, stream>>>(data, w.row_bytes, n_rows, w.cols, row_ids, out_f, out_h);
    }
  }
  return cudaGetLastError();
}

template <uint32_t kType, int B>
void LaunchMatVecTyped(const DeviceMatrix& w, const float* x, float* y, bool accumulate,
                       cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  MatVecKernel<kType, B><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const uint8_t*>(w.data), w.row_bytes, w.rows, w.cols, x, y, w.rows, accumulate);
}

template <uint32_t kType>
void LaunchMatVecBatch(const DeviceMatrix& w, const float* x, int n_tokens, float* y,
                       bool accumulate, cudaStream_t stream) {
  ForEachPass(n_tokens, [&]<int B>(int64_t first) {
    LaunchMatVecTyped<kType, B>(w, x + first * w.cols, y + first * w.rows, accumulate, stream);
  });
}

}  // namespace

bool MatVecSupports(uint32_t type, int64_t cols) {
  switch (type) {
    case kF32:
    case kF16:
      return cols > 0;
    case kQ4_0:
    case kQ8_0:
      return cols > 0 && cols % 32 == 0;
    case kQ4_K:
    case kQ5_K:
    case kQ6_K:
      return cols > 0 && cols % 256 == 0;
    default:
      return false;
  }
}

cudaError_t LaunchMatVec(const DeviceMatrix& w, const float* x, int n_tokens, float* y,
                         bool accumulate, cudaStream_t stream) {
  if (!MatVecSupports(w.type, w.cols) || n_tokens <= 0) return cudaErrorInvalidValue;
  if (Scalar(w))
    return LaunchScalar(w, x, n_tokens, y, accumulate, nullptr, 0, nullptr, nullptr, stream);
  return DispatchType(w.type, [&]<uint32_t kType>() {
    LaunchMatVecBatch<kType>(w, x, n_tokens, y, accumulate, stream);
  });
}

cudaError_t LaunchDequantizeRows(const DeviceMatrix& w, const int32_t* row_ids, int n, float* out,
                                 cudaStream_t stream) {
  if (!MatVecSupports(w.type, w.cols) || n <= 0) return cudaErrorInvalidValue;
  if (Scalar(w))
    return LaunchScalar(w, nullptr, 0, nullptr, false, row_ids, n, out, nullptr, stream);
  const int units = static_cast<int>(w.cols / kUnit);
  const dim3 grid((units + 127) / 128, static_cast<unsigned>(n));
  return DispatchType(w.type, [&]<uint32_t kType>() {
    DequantRowsKernel<kType><<<grid, 128, 0, stream>>>(static_cast<const uint8_t*>(w.data),
                                                       w.row_bytes, w.cols, row_ids, out);
  });
}

bool DequantizeRowRmsRoundSupports(const DeviceMatrix& w) {
  return MatVecSupports(w.type, w.cols) && !Scalar(w) && w.cols % 256 == 0;
}

cudaError_t LaunchDequantizeRowRmsRound(const DeviceMatrix& w, const int32_t* row_id, float* out,
                                        const RmsRounding& next, cudaStream_t stream) {
  if (!DequantizeRowRmsRoundSupports(w) || row_id == nullptr || out == nullptr ||
      next.weight == nullptr || next.out.q == nullptr || next.out.scale == nullptr ||
      next.out.half_sums == nullptr || next.sum_squares == nullptr) {
    return cudaErrorInvalidValue;
  }
  const auto blocks = static_cast<unsigned>(w.cols / 256);
  return DispatchType(w.type, [&]<uint32_t kType>() {
    DequantRowRmsRoundKernel<kType><<<blocks, 256, 0, stream>>>(
        static_cast<const uint8_t*>(w.data), w.row_bytes, row_id, out, next.weight, next.out.q,
        next.out.scale, next.out.half_sums, next.sum_squares);
  });
}

cudaError_t LaunchDequantizeToHalf(const DeviceMatrix& w, uint16_t* out, cudaStream_t stream) {
  if (!MatVecSupports(w.type, w.cols)) return cudaErrorInvalidValue;
  if (Scalar(w)) {
    return LaunchScalar(w, nullptr, 0, nullptr, false, nullptr, w.rows, nullptr,
                        reinterpret_cast<__half*>(out), stream);
  }
  if (w.type == kQ4_K) {
    const int64_t total = w.rows * (w.cols / 16);
    DequantHalfQ4KKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
        static_cast<const uint8_t*>(w.data), w.row_bytes, w.rows, w.cols,
        reinterpret_cast<__half*>(out));
    return cudaGetLastError();
  }
  const int64_t total = w.rows * (w.cols / kUnit);
  const auto blocks = static_cast<unsigned>((total + 255) / 256);
  return DispatchType(w.type, [&]<uint32_t kType>() {
    DequantHalfKernel<kType><<<blocks, 256, 0, stream>>>(static_cast<const uint8_t*>(w.data),
                                                         w.row_bytes, w.rows, w.cols,
                                                         reinterpret_cast<__half*>(out));
  });
}

}  // namespace chord::cuda
