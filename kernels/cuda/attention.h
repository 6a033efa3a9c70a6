// Causal grouped-query attention over the GPU KV cache, for decode and
// prefill alike: each token of a batch attends positions 0..its own position
// of its slot (which must already be stored). Query head h uses kv head
// h / (n_heads / n_kv_heads). Softmax as kernels/cpu/ops.h (max-subtracted,
// double sum), so a token's result does not depend on the batch.
// Launchers return the launch's error and never synchronize.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ops.h"

namespace chord::cuda {

struct AttentionParams {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // at most 256
  // The same kernel shape for a token whatever the batch (exact mode); else
  // small batches (decode) get more warps per (head, token) than large ones.
  bool batch_invariant = false;
};

// q and out: n_tokens rows of n_heads * head_dim floats.
cudaError_t LaunchAttention(const AttentionParams& params, const KvLayer& cache, const float* q,
                            int n_tokens, const TokenSlot* tokens, float* out, cudaStream_t stream);

}  // namespace chord::cuda
