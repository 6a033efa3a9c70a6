// The integer path of decode's matrix-vector products: activations rounded
// once per product to 8-bit integers per 32 elements (a scale each, and the
// scaled sum of each 16-element half, as llama.cpp's Q8_1 keeps per block),
// then integer dot products with Q4_K, Q6_K or Q8_0 weights four bytes at a
// time (dp4a).
// A weight pass costs a quarter of the float path's instructions, which is
// what bounds that path (kernels/cuda/NOTES.md).
//
// Numerics: the result is the float path's with x replaced by its rounded
// values (relative error of each activation up to 1/254 of its block's
// largest), the same rounding the CPU backend applies to activations for
// quantized weights. Launchers never synchronize; reentrant.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/cuda/matvec.h"
#include "kernels/cuda/ops.h"

namespace chord::cuda {

// n_tokens rows of `cols` activations in 8-bit form, carved from one buffer.
struct Q8Activations {
  int8_t* q = nullptr;         // n_tokens * cols
  float* scale = nullptr;      // n_tokens * cols / 32: the value of one step of q
  float* half_sums = nullptr;  // n_tokens * cols / 16: scale * sum of the half's q
  // One token whose RMSNorm factor is still to be applied (what
  // LaunchMatVecQ8ResidualRmsRound leaves): the activations are
  // 1 / sqrt(sum(rms_sum_squares) / cols + rms_eps) times the rounded values,
  // rms_sum_squares holding the sums of squares of the normed row's cols / 32
  // blocks. The products multiply each row's sum by that factor. Null: the
  // rounded values are the activations.
  const double* rms_sum_squares = nullptr;
  float rms_eps = 0.0f;
};

// Bytes of a buffer holding n_tokens x cols (cols a multiple of 32).
size_t Q8ActivationBytes(int64_t n_tokens, int64_t cols);
// The arrays of such a buffer (256-byte aligned `buffer`).
Q8Activations Q8ActivationsIn(void* buffer, int64_t n_tokens, int64_t cols);

// Rounds x (n_tokens rows of cols floats, cols a multiple of 32) into out.
// `overlap_previous` (here and below): a programmatic dependent launch
// (dependent_launch.cuh) that waits for the previous kernel before it reads
// or writes anything; the results are the same either way.
cudaError_t LaunchQuantizeActivations(const float* x, int n_tokens, int64_t cols, Q8Activations out,
                                      cudaStream_t stream, bool overlap_previous = false);

// What LaunchRmsNorm (ops.h) then LaunchQuantizeActivations of its result
// write, in one launch (n a multiple of 32).
cudaError_t LaunchRmsNormQuantize(const float* x, const float* weight, int64_t n, int n_rows,
                                  float eps, float* y, Q8Activations out, cudaStream_t stream,
                                  bool overlap_previous = false);
// What LaunchSwiGlu (ops.h) over n_tokens rows of cols then
// LaunchQuantizeActivations of gate write, in one launch.
cudaError_t LaunchSwiGluQuantize(float* gate, const float* up, int n_tokens, int64_t cols,
                                 Q8Activations out, cudaStream_t stream,
                                 bool overlap_previous = false);

// True for the weight types and shapes the integer path reads (Q4_K, Q6_K,
// Q8_0).
bool MatVecQ8Supports(uint32_t type, int64_t cols);

// As LaunchMatVec, from activations quantized by LaunchQuantizeActivations.
// `overlap_previous`: a programmatic dependent launch (sm_90), which starts
// pulling its weights into L2 while the kernel before it on the stream still
// runs and reads the activations only once that kernel is done; the results
// are the same. The rounding, RMSNorm and SwiGLU launches here let it start
// as soon as all their blocks run.
// `batch_invariant`: a token's results do not depend on how many tokens the
// launch takes (every pass reads Q4_K in 32-element units; otherwise passes
// of 1 or 2 tokens read it in 64-element units, which decode each block's
// scales half as often, and their sums round differently).
cudaError_t LaunchMatVecQ8(const DeviceMatrix& w, const Q8Activations& x, int n_tokens, float* y,
                           bool accumulate, cudaStream_t stream, bool overlap_previous = false,
                           bool batch_invariant = false);

// y[i] = w[i] x for up to kMatVecQ8MaxGroup matrices of one width in one
// launch (Q/K/V, gate/up read the same activations): one wave of blocks
// instead of several short ones. The same values as one launch each. The
// matrices may be of two types, those of the first type first (Q/K in Q4_K,
// V in Q6_K): one launch for one token over rows of up to 4096, else one a
// type.
constexpr int kMatVecQ8MaxGroup = 3;
cudaError_t LaunchMatVecQ8Group(std::span<const DeviceMatrix> w, const Q8Activations& x,
                                int n_tokens, std::span<float* const> y, cudaStream_t stream,
                                bool overlap_previous = false, bool batch_invariant = false);

// One token's Q, K and V products and what LaunchRopeStoreKv (ops.h) then
// does with them, in one launch: the launch writes q and k rotated, v as the
// product, and the token's key and value rows into the cache, the same bits
// as LaunchMatVecQ8Group over {wq, wk, wv} into q, k, v followed by
// LaunchRopeStoreKv(q, k, v, ...). Saves a dependent launch a layer at batch 1.
struct MatVecQ8QkvRope {
  float* q = nullptr;
  float* k = nullptr;
  float* v = nullptr;
  const TokenSlot* tokens = nullptr;  // the token's slot and position (device memory)
  RopeParams rope;
  KvLayer cache;
};
// True for the shapes it takes: three matrices of one width of up to 4096
// that the one-token staged kernel reads, Q and K of one type (V of that or
// another), Q of n_heads heads and K, V of the cache's width, an even
// head_dim and n_rot.
bool MatVecQ8QkvRopeSupports(std::span<const DeviceMatrix> wqkv, const RopeParams& rope,
                             const KvLayer& cache);
// cudaErrorInvalidValue (nothing launched) where MatVecQ8QkvRopeSupports is false.
cudaError_t LaunchMatVecQ8QkvRope(std::span<const DeviceMatrix> wqkv, const Q8Activations& x,
                                  const MatVecQ8QkvRope& out, cudaStream_t stream,
                                  bool overlap_previous = false);

// One-token products whose epilogue does the next kernel's work, so that a
// layer at batch 1 has dependent launches fewer (kernels/cuda/NOTES.md, v32):
// each block takes whole 32-row groups of the outputs and finishes each group
// once its rows are done.
//
// True where one-token launches over `w` (as one group, or one matrix) read
// activations whose RMSNorm factor is deferred (Q8Activations::rms_sum_squares):
// the staged and split one-token kernels. Other launches given such
// activations fail with cudaErrorInvalidValue.
bool MatVecQ8ReadsDeferredRms(std::span<const DeviceMatrix> w);

// The rounding of the next RMSNorm's input, written by a product's epilogue.
struct RmsRounding {
  const float* weight = nullptr;  // the norm's weight (one per output row)
  Q8Activations out;              // the rounding of y * weight, per 32 rows
  double* sum_squares = nullptr;  // y's sum of squares per 32 rows
};
// y += w x for one token (the residual add), and then for each 32-row group
// of y the rounding of y * weight and y's sum of squares: `next.out` with
// rms_sum_squares = next.sum_squares is what the products after an RMSNorm of
// y read (LaunchRmsNormQuantize's rounding of the normed row, with the norm's
// factor applied to their sums instead). Rows a multiple of 32; y is what
// LaunchMatVecQ8 with accumulate writes for one token: rows of up to 4096
// columns are read as the staged kernel reads them, wider ones (the down
// projection's) in ranges split over warps as the split kernel reads them,
// where a range takes two units a lane (Q4_K; Q6_K's and Q8_0's ranges
// measured slower so).
bool MatVecQ8ResidualRmsRoundSupports(const DeviceMatrix& w);
// The same rounding and sums of squares for a row of n (a multiple of 32)
// that is already there, in a launch of its own: the bits of the epilogue.
cudaError_t LaunchRmsNormRoundDeferred(const float* x, const float* weight, int64_t n,
                                       Q8Activations out, double* sum_squares, cudaStream_t stream,
                                       bool overlap_previous = false);
cudaError_t LaunchMatVecQ8ResidualRmsRound(const DeviceMatrix& w, const Q8Activations& x, float* y,
                                           const RmsRounding& next, cudaStream_t stream,
                                           bool overlap_previous = false);
// The same rounding and sums of squares for one row of w (an embedding
// lookup: *row_id, device memory) as it is written into `out` (the
// dequantized row, LaunchDequantizeRows's values), in one launch: a token's
// embedding and the first layer's norm rounding. Types LaunchDequantizeRows
// reads by units, rows a multiple of 256 wide.
bool DequantizeRowRmsRoundSupports(const DeviceMatrix& w);
cudaError_t LaunchDequantizeRowRmsRound(const DeviceMatrix& w, const int32_t* row_id, float* out,
                                        const RmsRounding& next, cudaStream_t stream);

// One token's gate and up products (one type, width and height, rows a
// multiple of 32) and, as each 32-row group of both is done, what
// LaunchSwiGluQuantize then writes: gate = silu(gate) * up and its rounding
// into `out`, the same bits as LaunchMatVecQ8Group then LaunchSwiGluQuantize.
bool MatVecQ8GateUpSwiGluSupports(const DeviceMatrix& gate, const DeviceMatrix& up);
cudaError_t LaunchMatVecQ8GateUpSwiGlu(const DeviceMatrix& gate, const DeviceMatrix& up,
                                       const Q8Activations& x, float* gate_out, float* up_out,
                                       const Q8Activations& out, cudaStream_t stream,
                                       bool overlap_previous = false);

// How a launch lays the rows over warps and blocks (for benchmarks and
// tests; 0 = the tuned default). Every choice of rows_per_warp, blocks_per_sm
// and stages writes the same bits, except that one-token passes over one
// matrix of rows wider than 4096 elements (up to 16384) split each row over
// the warps of a block when stages != 1 and the launch is not batch
// invariant: their sums add up in another order (the same bits for every
// stages > 1 and blocks_per_sm).
struct MatVecQ8Shape {
  // Rows each warp takes at a time: 1, 2 or 4. Passes of more than 2 tokens
  // take one whatever is asked (registers).
  int rows_per_warp = 0;
  // At most this many blocks per SM, the warps looping over the rows; 0: a
  // block per group of rows (with `stages`: as many as fit).
  int blocks_per_sm = 0;
  // One-token passes over rows of up to 4096 elements (and a multiple of 16
  // bytes) copy each warp's rows into this many shared-memory buffers (2, 3,
  // 4 or 6), the copies of the next rows in flight while one is multiplied;
  // 1: read the weights straight into registers. Wider rows split over a
  // block's warps take 2, 3 or 4 (6: 4) buffers a warp.
  int stages = 0;
  // As LaunchMatVecQ8's batch_invariant.
  bool batch_invariant = false;
};
cudaError_t LaunchMatVecQ8Shaped(const DeviceMatrix& w, const Q8Activations& x, int n_tokens,
                                 float* y, MatVecQ8Shape shape, cudaStream_t stream);

}  // namespace chord::cuda
