// The 32- and 64-token tiles of the half tensor-core product (matmul_half_mma.h) on
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

// The token tiles it runs: 32 or 64 tokens (batches of 17-192). Tiles of 16
// on it lost to mma.sync (11008x4096 Q4_K 25.2 against 23.3 us; llama2-7b
// Q4_K_M, 12 sequences 5.06 against 4.62 ms a step); 32-token ones won (28.2
// against 33.1 us; 32 sequences 5.40 against 5.71 ms).
constexpr bool WgmmaTakes(int tile_tokens) { return tile_tokens == 32 || tile_tokens == 64; }

// True when the current device runs the wgmma kernel (compute capability 9.0
// and the kernel's sm_90a code in this binary); checked once per device.
bool WgmmaAvailable();

// Weight rows of a block's tile for a Q4_K or Q6_K matrix.
int WgmmaTileRows(uint32_t type);

// Blocks an SM holds (what the K-split heuristic plans for).
constexpr int kWgmmaBlocksPerSm = 2;

// The product of `p` over grid (ceil(n_tokens / tile_tokens), row tiles of
// WgmmaTileRows, K splits), tile_tokens one WgmmaTakes: the bits do not
// depend on scheduling.
cudaError_t LaunchWgmma(uint32_t type, int tile_tokens, const Problem& p, dim3 grid,
                        cudaStream_t stream, bool overlap_previous);

}  // namespace chord::cuda::half_mma
