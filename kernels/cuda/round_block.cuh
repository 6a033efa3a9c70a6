// The rounding of activations to int8 in 32-element blocks that the integer
// matrix-vector products read (matvec_q8.h, Q8Activations). Every kernel that
// writes such a rounding goes through RoundBlock, so a fused kernel writes the
// bits of LaunchQuantizeActivations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace chord::cuda {

// Rounds one 32-element block, one value per lane of a warp: the block's
// largest magnitude sets the scale, each element rounds to the nearest step
// (ties to even). Writes the 32 values, the block's scale and the sums of its
// two halves (scale times the sum of their rounded values).
__device__ __forceinline__ void RoundBlock(float v, int lane, int64_t block, int8_t* __restrict__ q,
                                           float* __restrict__ scale,
                                           float* __restrict__ half_sums) {
  float amax = fabsf(v);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  const float d = amax / 127.0f;
  const int qi = d > 0.0f ? max(-127, min(127, __float2int_rn(v / d))) : 0;
  q[block * 32 + lane] = static_cast<int8_t>(qi);
  int sum = qi;
#pragma unroll
  for (int offset = 8; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) scale[block] = d;
  if (lane % 16 == 0) half_sums[block * 2 + lane / 16] = d * static_cast<float>(sum);
}

// One 32-element group of a row whose RMSNorm factor is deferred
// (Q8Activations::rms_sum_squares), one element a lane: the rounding of
// value * weight and the group's sum of squares. What
// LaunchRmsNormRoundDeferred, the epilogues of LaunchMatVecQ8ResidualRmsRound
// and LaunchDequantizeRowRmsRound all write, so their bits agree.
__device__ __forceinline__ void RoundNormGroup(float value, float weight, int lane, int64_t group,
                                               int8_t* __restrict__ q, float* __restrict__ scale,
                                               float* __restrict__ half_sums,
                                               double* __restrict__ sum_squares) {
  RoundBlock(value * weight, lane, group, q, scale, half_sums);
  double squares = static_cast<double>(value) * value;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  if (lane == 0) sum_squares[group] = squares;
}

}  // namespace chord::cuda
