// Page-locking of host memory, so that GPU copies from it run at the link's
// full speed and asynchronously. FetchedTensors pins its allocation through
// one when asked to; the CUDA build provides one (CudaMemoryPinner in
// worker/stage_compute.h), other builds none.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace chord {

class MemoryPinner {
 public:
  virtual ~MemoryPinner() = default;
  virtual absl::Status Pin(void* data, uint64_t bytes) const = 0;
  // Called before the memory is freed.
  virtual void Unpin(void* data) const = 0;
};

}  // namespace chord
