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

}  // namespace chord::bench
