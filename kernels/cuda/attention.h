// Causal grouped-query attention over the GPU KV cache, for decode and
// prefill alike: each token of a batch attends positions 0..its own position
// of its slot (which must already be stored). Query head h uses kv head
// h / (n_heads / n_kv_heads). Softmax max-subtracted with a double sum, as
// kernels/cpu/ops.h (per warp in the online form, the warps' parts met in a
// fixed order), so a token's result does not depend on the batch.
// Launchers return the launch's error and never synchronize.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cuda/matvec_q8.h"
#include "kernels/cuda/ops.h"

namespace chord::cuda {

struct AttentionParams {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // at most 256
  // The same kernel shape for a token whatever the batch (exact mode); else
  // small batches (decode) get more warps per (head, token) than large ones.
  bool batch_invariant = false;
  // Every token of the batch is its slot's only one, so the kernel before
  // stored no cache row but each token's own: the older rows may be read
  // before that kernel ends (a programmatic dependent launch). The same
  // results either way.
  bool one_token_per_slot = false;
};

// q and out: n_tokens rows of n_heads * head_dim floats. With `rounded.q`
// set (head_dim a multiple of 32), out is also rounded into `rounded` as
// LaunchQuantizeActivations (matvec_q8.h) would round it, in the same launch.
// `overlap_previous`: a programmatic dependent launch (dependent_launch.cuh);
// the results are the same. With `halves_in_mma_order` (head_dim a multiple
// of 4), the output is also written there as the half tensor-core product
// reads its input (LaunchFloatToHalfMmaOrder's bits).
cudaError_t LaunchAttention(const AttentionParams& params, const KvLayer& cache, const float* q,
                            int n_tokens, const TokenSlot* tokens, float* out, cudaStream_t stream,
                            const Q8Activations& rounded = {}, bool overlap_previous = false,
                            uint16_t* halves_in_mma_order = nullptr);

// Prompt-shaped batches: runs of consecutive tokens of one slot, up to
// kAttentionTileRows each, attend together. A tile's rows are tokens
// first..first+count-1 of the batch; kv_end is one past its largest position.
inline constexpr int kAttentionTileRows = 64;
struct AttentionTile {
  int32_t first = 0, count = 0, slot = 0, kv_end = 0;
};

// The tiles of a batch, in batch order: a new tile wherever the slot changes
// or the tile is full.
std::vector<AttentionTile> PlanAttentionTiles(std::span<const TokenSlot> tokens);

// Whether LaunchTiledAttention takes this shape: a half cache and head_dim 64
// or 128.
bool TiledAttentionSupports(const AttentionParams& params, const KvLayer& cache);

// The same attention as LaunchAttention, for every token of `tiles` (device
// memory, n_tiles of them): each block takes one tile and one head and reads
// the slot's cache once per pass for all its rows (tensor cores: queries
// rounded to half, products accumulated in float; two passes over the keys,
// the first for each row's maximum and sum). A token's result depends on its
// position and the cache alone, not on its tile, but differs in rounding from
// LaunchAttention's: exact mode does not use it.
cudaError_t LaunchTiledAttention(const AttentionParams& params, const KvLayer& cache,
                                 const float* q, const TokenSlot* tokens,
                                 const AttentionTile* tiles, int n_tiles, float* out,
                                 cudaStream_t stream);

}  // namespace chord::cuda
