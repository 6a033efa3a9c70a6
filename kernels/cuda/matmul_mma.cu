#include "kernels/cuda/matmul_mma.h"

#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>

#include "kernels/cuda/matvec_common.cuh"

namespace chord::cuda {
namespace {

namespace wmma = nvcuda::wmma;

// A block: 32 weight rows x 64 tokens of output over a share of K (split-K:
// the blocks of one output tile sum their partial products in a second,
// deterministic pass), in steps of 128 columns (four 32-element units per
// row). Four warps, each 16 rows x 32 tokens (1 x 2 fragments of 16 x 16).
// Small row tiles and split-K give the GPU's 132 SMs several blocks each
// even for a 4096-row matrix and one token tile.
constexpr int kTileRows = 32;
constexpr int kTileTokens = kMmaTileTokens;
constexpr int kTileK = 128;
constexpr int kUnitsPerRow = kTileK / kUnit;
constexpr int kPad = 8;  // halves: rows of the shared tiles start in different banks
constexpr int kStride = kTileK + kPad;
constexpr int kOutStride = kTileRows + 4;  // floats
constexpr int kThreads = 128;
constexpr int kBlocksWanted = 4 * 132;  // about four blocks per SM of an H100/H200
constexpr int kMaxSplits = 8;

static_assert(kTileTokens * kOutStride * sizeof(float) <= kTileTokens * kStride * sizeof(__half),
              "the output tile reuses the activation tile's shared memory");

template <uint32_t kType>
__device__ __forceinline__ void DecodeTileUnit(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t rows,
                                               int64_t row0, int64_t k0, int i, __half (*ws)[kStride]) {
  using Shape = UnitShape<kType>;
  constexpr int kLen = 32 / Shape::kRuns;
  const int r = i / kUnitsPerRow, unit = i % kUnitsPerRow;
  const int64_t row = row0 + r;
  if (row >= rows) {  // past the matrix: zeros (the four units cover the 128 columns)
#pragma unroll
    for (int k = 0; k < kUnit; k += 2) *reinterpret_cast<__half2*>(&ws[r][unit * kUnit + k]) = __float2half2_rn(0.0f);
    return;
  }
  float v[32];
  int base;
  DequantUnit<kType>(w + row * row_bytes, static_cast<int>(k0 / kUnit) + unit, v, &base);
  base -= static_cast<int>(k0);
#pragma unroll
  for (int run = 0; run < Shape::kRuns; ++run) {
#pragma unroll
    for (int k = 0; k < kLen; k += 2) {
      *reinterpret_cast<__half2*>(&ws[r][base + run * Shape::kStride + k]) =
          __floats2half2_rn(v[run * kLen + k], v[run * kLen + k + 1]);
    }
  }
}

template <uint32_t kType>
__global__ void __launch_bounds__(kThreads)
    MatMulMmaKernel(const uint8_t* __restrict__ w, uint64_t row_bytes, int64_t rows, int64_t cols,
                    const __half* __restrict__ x, int n_tokens, int k_steps_per_split, float* __restrict__ y,
                    bool accumulate) {
  __shared__ __align__(128) __half ws[kTileRows][kStride];
  __shared__ __align__(128) __half xs[kTileTokens][kStride];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int tok0 = static_cast<int>(blockIdx.y) * kTileTokens;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int warp_rows = (warp & 1) * 16, warp_tokens = (warp >> 1) * 32;
  // Fragments wholly past the batch are not multiplied.
  const int live_fragments = min(2, max(0, (n_tokens - tok0 - warp_tokens + 15) / 16));

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[j], 0.0f);

  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * k_steps_per_split * kTileK;
  const int64_t k_end = min(cols, k_begin + static_cast<int64_t>(k_steps_per_split) * kTileK);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    // Neighbouring threads decode neighbouring units of a row: neighbouring bytes.
    for (int i = static_cast<int>(threadIdx.x); i < kTileRows * kUnitsPerRow; i += kThreads) {
      DecodeTileUnit<kType>(w, row_bytes, rows, row0, k0, i, ws);
    }
    constexpr int kVectors = kTileK / 8;  // 16-byte loads per token row
    for (int i = static_cast<int>(threadIdx.x); i < kTileTokens * kVectors; i += kThreads) {
      const int t = i / kVectors, c = i % kVectors;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (tok0 + t < n_tokens) v = *reinterpret_cast<const uint4*>(x + static_cast<int64_t>(tok0 + t) * cols + k0 + 8 * c);
      *reinterpret_cast<uint4*>(&xs[t][8 * c]) = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
      wmma::load_matrix_sync(a, &ws[warp_rows][kk], kStride);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (j >= live_fragments) break;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
        wmma::load_matrix_sync(b, &xs[warp_tokens + 16 * j][kk], kStride);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
    __syncthreads();
  }

  // Through shared memory (token-major, as y is) so that the stores to y are
  // coalesced. With split-K, y is this split's slice of the partial sums.
  float* out = reinterpret_cast<float*>(&xs[0][0]);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    wmma::store_matrix_sync(out + (warp_tokens + 16 * j) * kOutStride + warp_rows, acc[j], kOutStride,
                            wmma::mem_col_major);
  }
  __syncthreads();
  float* slice = y + static_cast<int64_t>(blockIdx.z) * n_tokens * rows;
  for (int i = static_cast<int>(threadIdx.x); i < kTileTokens * kTileRows; i += kThreads) {
    const int t = i / kTileRows, r = i % kTileRows;
    if (tok0 + t >= n_tokens || row0 + r >= rows) continue;
    float* target = slice + static_cast<int64_t>(tok0 + t) * rows + row0 + r;
    const float value = out[t * kOutStride + r];
    *target = accumulate ? *target + value : value;
  }
}

// y[i] (+)= the splits' partial sums of element i, added in split order.
__global__ void SumSplitsKernel(const float* __restrict__ partials, int splits, int64_t n, float* __restrict__ y,
                                bool accumulate) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float sum = accumulate ? y[i] : 0.0f;
  for (int split = 0; split < splits; ++split) sum += partials[split * n + i];
  y[i] = sum;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many blocks share each output tile's K range.
int SplitsFor(int64_t rows, int64_t cols, int n_tokens) {
  const int64_t tiles = CeilDiv(rows, kTileRows) * CeilDiv(n_tokens, kTileTokens);
  const int64_t k_steps = cols / kTileK;
  return static_cast<int>(std::clamp<int64_t>(CeilDiv(kBlocksWanted, tiles), 1, std::min<int64_t>(k_steps, kMaxSplits)));
}

}  // namespace

bool MatMulMmaSupports(uint32_t type, int64_t cols) {
  return MatVecSupports(type, cols) && cols % kTileK == 0;
}

bool MatMulMmaPreferred(uint32_t type) {
  return type == kQ4_K || type == kQ5_K || type == kQ4_0 || type == kF16;
}

size_t MatMulMmaScratchFloats(int64_t rows, int64_t cols, int n_tokens) {
  if (rows <= 0 || cols < kTileK || n_tokens <= 0) return 0;
  const int splits = SplitsFor(rows, cols, n_tokens);
  return splits > 1 ? static_cast<size_t>(splits) * static_cast<size_t>(n_tokens * rows) : 0;
}

cudaError_t LaunchMatMulMma(const DeviceMatrix& w, const uint16_t* x_half, int n_tokens, float* y,
                            bool accumulate, float* scratch, size_t scratch_floats, cudaStream_t stream) {
  if (!MatMulMmaSupports(w.type, w.cols) || n_tokens <= 0) return cudaErrorInvalidValue;
  const size_t wanted = MatMulMmaScratchFloats(w.rows, w.cols, n_tokens);
  const bool split = wanted > 0 && scratch != nullptr && scratch_floats >= wanted;
  const int splits = split ? SplitsFor(w.rows, w.cols, n_tokens) : 1;
  const auto k_steps = static_cast<int>(w.cols / kTileK);
  const int per_split = static_cast<int>(CeilDiv(k_steps, splits));
  const dim3 grid(static_cast<unsigned>(CeilDiv(w.rows, kTileRows)),
                  static_cast<unsigned>(CeilDiv(n_tokens, kTileTokens)), static_cast<unsigned>(CeilDiv(k_steps, per_split)));
  const cudaError_t launched = DispatchType(w.type, [&]<uint32_t kType>() {
    MatMulMmaKernel<kType><<<grid, kThreads, 0, stream>>>(
        static_cast<const uint8_t*>(w.data), w.row_bytes, w.rows, w.cols, reinterpret_cast<const __half*>(x_half),
        n_tokens, per_split, split ? scratch : y, split ? false : accumulate);
  });
  if (launched != cudaSuccess || !split) return launched;
  return LaunchSumSplits(scratch, static_cast<int>(grid.z), static_cast<int64_t>(n_tokens) * w.rows, y, accumulate,
                         stream);
}

cudaError_t LaunchSumSplits(const float* partials, int splits, int64_t n, float* y, bool accumulate,
                            cudaStream_t stream) {
  if (splits < 1 || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  SumSplitsKernel<<<static_cast<unsigned>(CeilDiv(n, 256)), 256, 0, stream>>>(partials, splits, n, y, accumulate);
  return cudaGetLastError();
}

}  // namespace chord::cuda
