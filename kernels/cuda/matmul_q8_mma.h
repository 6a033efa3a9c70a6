// Batched products on the tensor cores in integer arithmetic: Q4_K and Q6_K
// weight blocks, read once straight from their GGUF bytes, times activations
// rounded to int8 per 256-element block, with mma.sync s8 x s8 -> s32. Each
// 32-element (Q4_K) or 16-element (Q6_K) step's integer sums are multiplied
// by the weight block's 6- or 8-bit scale in integers; the float scales (the
// block's and the activations') apply once per 256 elements. No half copy of
// a matrix is written, nothing is decoded to floats.
//
// For batches past the decode kernels (more than 8 tokens): many sequences
// decoding together, and prompts. Numerics: the rounding of CPU K-quant
// products (activations as llama.cpp's Q8_K: int8 with one scale per 256),
// sums exact in integers within a block, float across blocks.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/matvec.h"

namespace chord::cuda {

// Activations rounded for this product: for each token, for each 256-element
// block of its row, a record of kQ8KRecordBytes: the 256 values rounded to
// int8 (bytes 0-255), the sum of each 32 of them as 32 * high + low (high:
// int8, bytes 256-263; low: 0..31, bytes 264-271), the value of one step
// (float, bytes 272-275; amax / 127), then padding.
inline constexpr int kQ8KRecordBytes = 288;

// Bytes of the records of n_tokens rows of cols (a multiple of 256).
size_t Q8KActivationBytes(int64_t n_tokens, int64_t cols);

// Rounds x (n_tokens rows of cols floats, cols a multiple of 256) into
// `records` (16-byte aligned, Q8KActivationBytes long).
cudaError_t LaunchQuantizeActivationsQ8K(const float* x, int n_tokens, int64_t cols, void* records,
                                         cudaStream_t stream);

// True for the matrices the kernel reads: Q4_K or Q6_K, rows a whole number
// of 256-element blocks, data 16-byte aligned (not null).
bool MatMulQ8MmaSupports(const DeviceMatrix& w);

// Floats of scratch memory LaunchMatMulQ8Mma uses to split K for this matrix
// and batch (0: it does not split).
size_t MatMulQ8MmaScratchFloats(const DeviceMatrix& w, int n_tokens);

// For t < n_tokens, r < w.rows: y[t * w.rows + r] (+)= dot(row r of w, token t
// of x), x the records LaunchQuantizeActivationsQ8K wrote for n_tokens rows of
// w.cols. With `scratch` of at least MatMulQ8MmaScratchFloats floats, blocks
// split K and LaunchSumSplits (matmul_mma.h) adds their partial sums in a
// fixed order; without, one block per output tile. The result does not depend
// on scheduling either way.
cudaError_t LaunchMatMulQ8Mma(const DeviceMatrix& w, const void* x, int n_tokens, float* y,
                              bool accumulate, float* scratch, size_t scratch_floats,
                              cudaStream_t stream);

}  // namespace chord::cuda
