// Programmatic dependent launch (sm_90). A kernel launched with
// `overlap_previous` may be scheduled while the kernel before it in the
// stream still runs, once every block of that kernel has executed
// LetNextKernelStart; it must call WaitForPreviousKernel before it reads the
// previous kernel's results or writes anything that kernel may still read.
// What this hides is the launch and the block scheduling of each kernel behind
// the tail of the one before it. Both instructions do nothing in a launch
// without the attribute, so a kernel behaves the same either way.
#pragma once

#include <cuda_runtime.h>

namespace chord::cuda {

__device__ __forceinline__ void LetNextKernelStart() {
  asm volatile("griddepcontrol.launch_dependents;");
}

__device__ __forceinline__ void WaitForPreviousKernel() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// kernel<<<grid, block, shared, stream>>>(args...), as a programmatic
// dependent launch of the stream's previous kernel when `overlap_previous`.
template <typename... Params, typename... Args>
cudaError_t LaunchAfterPrevious(bool overlap_previous, void (*kernel)(Params...), dim3 grid,
                                dim3 block, size_t shared, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &overlap;
  config.numAttrs = overlap_previous ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

}  // namespace chord::cuda
