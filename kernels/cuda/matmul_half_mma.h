// Batched products on the tensor cores in half precision straight from Q4_K
// and Q6_K blocks: each weight is decoded to half in registers by the lane
// whose fragment holds it (of an mma.sync m16n8k16, or on Hopper of a wgmma
// for 32- and 64-token tiles: matmul_half_wgmma.h), and multiplied with half
// activations, the sums in float. The matrix is read once per 64-token tile
// in its GGUF bytes; no half copy of it is written, the activations are not
// rounded to 8 bits, and no per-sub-block epilogue runs (the block's scales
// and mins are in the decoded halves).
//
// For batches past the decode kernels: many sequences decoding together.
// Numerics: those of dequantize + GEMM up to the rounding of each decoded
// weight (d * scale and dmin * min are rounded to half first, then q * that
// - min in one fused rounding), sums in float.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/cuda/matvec.h"
#include "kernels/cuda/ops.h"  // PartialSums

namespace chord::cuda {

// The activations as the kernel reads them: n_tokens rows of cols halves,
// each aligned group of four elements stored as elements 0, 2, 1, 3 (the
// order in which a lane's fragment pairs them with the weights it decodes
// from four consecutive bytes). cols a multiple of 4; x and out 16-byte
// aligned.
cudaError_t LaunchFloatToHalfMmaOrder(const float* x, int64_t n_tokens, int64_t cols, uint16_t* out,
                                      cudaStream_t stream);

// True for the matrices the kernel reads: Q4_K or Q6_K, rows a whole number
// of 256-element blocks, data 16-byte aligned (not null).
bool MatMulHalfMmaSupports(const DeviceMatrix& w);

// The largest batch for which this product beats dequantize + cuBLAS on the
// current device, from whole-model steps of llama2-7b Q4_K_M on an H200: 192
// tokens where the wgmma kernel runs (64-token tiles: 128 sequences decode at
// 11.5 ms a step against 14.6, 192 at 17.2 against 17.7, 256 at 21.9 against
// 19.3), 64 elsewhere (the mma.sync kernel at 128 tokens: 74.9 us against 62
// for 11008x4096 Q4_K).
int64_t MatMulHalfMmaBestMaxTokens();

// Floats of scratch memory LaunchMatMulHalfMma uses to split K for this
// matrix and batch (0: it does not split).
size_t MatMulHalfMmaScratchFloats(const DeviceMatrix& w, int n_tokens);

// For t < n_tokens, r < w.rows: y[t * w.rows + r] (+)= dot(row r of w, token
// t of x), x the halves LaunchFloatToHalfMmaOrder wrote for n_tokens rows of
// w.cols. With `scratch` of at least MatMulHalfMmaScratchFloats floats,
// blocks split K and a second launch adds their partial sums in a fixed
// order; without, one block per output tile. The result does not depend on
// scheduling either way. With `overlap_previous` the product is a
// programmatic dependent launch (dependent_launch.cuh): its blocks start
// copying their first weights while the kernel before it still runs.
cudaError_t LaunchMatMulHalfMma(const DeviceMatrix& w, const uint16_t* x, int n_tokens, float* y,
                                bool accumulate, float* scratch, size_t scratch_floats,
                                cudaStream_t stream, bool overlap_previous = false);

// y[i] = w[i] x for up to kMatMulHalfMmaMaxGroup matrices of one type and
// width (Q/K/V, gate/up read the same activations) in one launch, and one
// for their split sums: the row tiles of all of them fill the GPU together
// instead of each in a short launch of its own. Each y[i] gets the bits a
// launch of w[i] alone with the same number of K splits gives.
// With `sums` (one per matrix), the split sums are left to the kernel that
// reads the results (LaunchSwiGluHalves, LaunchRopeStoreKv, LaunchAddRmsNorm):
// sums[i] is where result i is held, its partial sums in scratch when K was
// split, else y[i] itself.
constexpr int kMatMulHalfMmaMaxGroup = 3;
size_t MatMulHalfMmaGroupScratchFloats(std::span<const DeviceMatrix> w, int n_tokens);
cudaError_t LaunchMatMulHalfMmaGroup(std::span<const DeviceMatrix> w, const uint16_t* x,
                                     int n_tokens, std::span<float* const> y, float* scratch,
                                     size_t scratch_floats, cudaStream_t stream,
                                     std::span<PartialSums> sums = {},
                                     bool overlap_previous = false);

}  // namespace chord::cuda
