// How a GPU stage's layers divide between GPU memory and streaming when the
// GPU's budget for weights cannot hold them all: the first layers of the
// range stay in GPU memory for good, the rest stream through two GPU buffers
// (one being filled from host memory while the kernels read the other), each
// the size of the largest streamed layer. A cyclic scan keeps a fixed set
// resident best (see ShardCache), and keeping the first layers keeps the
// streamed ones contiguous, which the copy order relies on.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "worker/models/llama.h"

namespace chord {

struct DeviceSplit {
  static constexpr int kStreamBuffers = 2;
  // Layers [range.first, streamed_first) stay in GPU memory; [streamed_first,
  // range.end) stream. streamed_first == range.end: nothing streams.
  int64_t streamed_first = 0;
  uint64_t buffer_bytes = 0;  // each stream buffer; 0 when nothing streams
  uint64_t device_bytes = 0;  // weights in GPU memory: stage tensors, resident layers, buffers
};

// `stage_bytes`: embedding and output tensors (always in GPU memory);
// `layer_bytes[i]`: layer range.first + i as packed on the GPU; `budget`: bytes
// for weights on the GPU, 0 for unlimited. Keeps as many layers resident as
// the budget allows beside the stream buffers. RESOURCE_EXHAUSTED, naming the
// minimum, when not even the stream buffers fit.
absl::StatusOr<DeviceSplit> SplitForDevice(LayerRange range, uint64_t stage_bytes,
                                           std::span<const uint64_t> layer_bytes, uint64_t budget);

}  // namespace chord
