// Matrix-vector products over weights in their GGUF block layouts, read
// directly from device memory (no dequantized copy): the decode path. Also
// row dequantization (embedding lookup) and whole-matrix dequantization to
// half precision (the prefill path feeds that to a tensor-core GEMM).
//
// Supported types: F32, F16 (any `cols`; a slower path when it is not a
// multiple of 32), Q4_0, Q8_0, Q4_K, Q5_K, Q6_K (`cols` a multiple of the block). Launchers return the launch's
// cudaError_t; they never synchronize. Thread-safety: launchers are reentrant.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace chord::cuda {

// A weight matrix in device memory: `rows` rows of `cols` elements of GGUF
// type `type` (the numeric value of chord::DType), rows `row_bytes` apart.
struct DeviceMatrix {
  uint32_t type = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t row_bytes = 0;
  const void* data = nullptr;
};

// True when the kernels here read `type` and `cols` suits its blocks.
bool MatVecSupports(uint32_t type, int64_t cols);

// Tokens per weight pass of the batched decode kernel; larger batches take
// several passes.
inline constexpr int kMatVecMaxBatch = 8;

// For t < n_tokens, r < rows: y[t * rows + r] (+)= dot(row r of w, x + t * cols).
// With `accumulate` the product is added to y (a fused residual add).
cudaError_t LaunchMatVec(const DeviceMatrix& w, const float* x, int n_tokens, float* y,
                         bool accumulate, cudaStream_t stream);

// out[i * cols + c] = element c of row rows_ids[i], as float (i < n).
cudaError_t LaunchDequantizeRows(const DeviceMatrix& w, const int32_t* row_ids, int n, float* out,
                                 cudaStream_t stream);

// out (rows * cols halves, row-major) = the whole matrix in half precision.
cudaError_t LaunchDequantizeToHalf(const DeviceMatrix& w, uint16_t* out, cudaStream_t stream);

}  // namespace chord::cuda
