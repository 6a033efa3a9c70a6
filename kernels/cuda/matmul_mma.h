// Quantized weights times a batch of activations on tensor cores, without a
// dequantized copy of the matrix: each block decodes a tile of weight rows
// (GGUF blocks, read once) to half precision in shared memory and multiplies
// it with the matching tile of half-precision activations (wmma, fp32
// accumulation). For batches too large for the matrix-vector kernels and too
// small for dequantize + cuBLAS to pay for writing and reading the half copy
// of every matrix each step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/matvec.h"

namespace chord::cuda {

// Tokens one block takes; a larger batch runs in several column tiles.
inline constexpr int kMmaTileTokens = 64;

// True when the kernel reads `type` at this row length (a multiple of 128).
bool MatMulMmaSupports(uint32_t type, int64_t cols);

// Whether the kernel beats dequantize + cuBLAS for this weight type at
// batches of 16-64 tokens (measured on an H200 over an 11008 x 4096 matrix,
// BENCHMARKS.md): yes for 4- and 5-bit blocks and F16, which cost the
// dequantizing pass most for what they read; no for Q6_K and Q8_0.
bool MatMulMmaPreferred(uint32_t type);

// Floats of scratch memory LaunchMatMulMma uses to split K for this shape
// (0: it does not split).
size_t MatMulMmaScratchFloats(int64_t rows, int64_t cols, int n_tokens);

// For t < n_tokens, r < w.rows: y[t * w.rows + r] (+)= dot(row r of w, x_half + t * w.cols),
// x_half being n_tokens rows of w.cols halves (LaunchFloatToHalf). Same
// rounding as dequantize + GEMM: weights and activations in half, sums in
// float. With `scratch` of at least MatMulMmaScratchFloats floats, blocks
// split K and a second pass adds their partial sums in a fixed order (the
// result does not depend on scheduling); without, one block per output tile.
cudaError_t LaunchMatMulMma(const DeviceMatrix& w, const uint16_t* x_half, int n_tokens, float* y,
                            bool accumulate, float* scratch, size_t scratch_floats, cudaStream_t stream);

// y[i] (+)= partials[0 * n + i] + ... + partials[(splits - 1) * n + i],
// added in that order (split-K products finish with this, deterministically).
cudaError_t LaunchSumSplits(const float* partials, int splits, int64_t n, float* y, bool accumulate,
                            cudaStream_t stream);

}  // namespace chord::cuda
