// What the current device offers, for sizing grids and shared memory at
// launch time. 0 where the runtime cannot be asked.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace chord::cuda {

// The value of `attribute` for the current device.
inline int CurrentDeviceAttribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&value, attribute, device) != cudaSuccess) {
    return 0;
  }
  return value;
}

// The SMs of the current device.
inline int MultiprocessorCount() { return CurrentDeviceAttribute(cudaDevAttrMultiProcessorCount); }

// The dynamic shared memory a block of the current device may take.
inline size_t MaxDynamicShared() {
  return static_cast<size_t>(CurrentDeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
}

}  // namespace chord::cuda
