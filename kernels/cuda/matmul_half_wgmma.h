// The 64-token tiles of the half tensor-core product (matmul_half_mma.h) on
// Hopper's warpgroup instructions: wgmma multiplies the weights a warpgroup
// decoded into registers by the activations straight from shared memory, and
// runs while the warps decode the next slice (mma.sync waits on each
// product and needs every activation fragment loaded into registers first).
// Built for sm_90a only; elsewhere the mma.sync kernel takes these tiles.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/half_mma_common.cuh"

namespace chord::cuda::half_mma {

constexpr int kWgmmaTileTokens = 64;

// True when the current device runs the wgmma kernel (compute capability 9.0
// and the kernel's sm_90a code in this binary); checked once per device.
bool WgmmaAvailable();

// Weight rows of a block's tile for a Q4_K or Q6_K matrix.
int WgmmaTileRows(uint32_t type);

// Blocks an SM holds (what the K-split heuristic plans for).
constexpr int kWgmmaBlocksPerSm = 2;

// The product of `p` over grid (ceil(n_tokens / 64), row tiles of
// WgmmaTileRows, K splits): the bits do not depend on scheduling.
cudaError_t LaunchWgmma(uint32_t type, const Problem& p, dim3 grid, cudaStream_t stream,
                        bool overlap_previous);

}  // namespace chord::cuda::half_mma
