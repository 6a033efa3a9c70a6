// A kernel that only reads: the time a kernel takes to read `bytes` of
// device memory once, the floor under a one-token product of the same bytes
// (cuda_bench --read-microbench).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace chord::bench {

// Reads `bytes` (a multiple of 16, 16-byte aligned) at `data` with 16-byte
// loads, four in flight a thread, over a grid of `blocks` blocks of
// `threads`; writes to `sink` only on a value no data produces, so the loads
// are not optimized away. Never synchronizes.
cudaError_t LaunchReadProbe(const void* data, size_t bytes, uint32_t* sink, int blocks, int threads,
                            cudaStream_t stream);

// How LaunchReadRowsProbe's warps read their rows.
enum class RowRead {
  kCopies,  // 16-byte cp.async copies from every lane into a ring of shared-memory buffers
  kBulk,    // one bulk copy a row into the ring (BulkRing), as the one-token products
  kLoads,   // 16-byte loads into registers, two rows in flight a warp
};

// Reads `rows` rows of `row_bytes` (a multiple of 16) at `data` the way the
// one-token products do: warp w of the grid takes rows w, w + warps, ... and
// reads each whole row (kCopies, kBulk: through `stages` shared-memory
// buffers a warp, stages - 1 rows ahead). Blocks of `warps` warps, as many as fit an
// SM at once (at most `blocks_per_sm` when > 0). Never synchronizes.
cudaError_t LaunchReadRowsProbe(const void* data, int64_t rows, int row_bytes, RowRead how,
                                int stages, int warps, int blocks_per_sm, uint32_t* sink,
                                cudaStream_t stream);

}  // namespace chord::bench
