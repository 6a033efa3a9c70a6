#include "worker/shard/device_split.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_format.h"

namespace chord {

absl::StatusOr<DeviceSplit> SplitForDevice(LayerRange range, uint64_t stage_bytes,
                                           std::span<const uint64_t> layer_bytes, uint64_t budget) {
  const auto n = static_cast<int64_t>(layer_bytes.size());
  if (n != range.end - range.first || n <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d layer sizes for layers [%d, %d)", layer_bytes.size(), range.first, range.end));
  }
  const uint64_t all = std::accumulate(layer_bytes.begin(), layer_bytes.end(), stage_bytes);
  if (budget == 0 || all <= budget) return DeviceSplit{range.end, 0, all};
  // resident[r]: stage tensors plus the first r layers; largest[r]: the
  // largest of layers r.. (what a stream buffer must hold).
  std::vector<uint64_t> largest(static_cast<size_t>(n) + 1, 0);
  for (int64_t i = n - 1; i >= 0; --i) {
    largest[static_cast<size_t>(i)] =
        std::max(largest[static_cast<size_t>(i) + 1], layer_bytes[static_cast<size_t>(i)]);
  }
  DeviceSplit best{-1, 0, 0};
  uint64_t resident = stage_bytes;
  for (int64_t r = 0; r < n; ++r) {
    const uint64_t buffer = largest[static_cast<size_t>(r)];
    const uint64_t needed = resident + DeviceSplit::kStreamBuffers * buffer;
    if (needed <= budget) best = DeviceSplit{range.first + r, buffer, needed};
    resident += layer_bytes[static_cast<size_t>(r)];
  }
  if (best.streamed_first < 0) {
    const uint64_t minimum = stage_bytes + DeviceSplit::kStreamBuffers * largest[0];
    return absl::ResourceExhaustedError(absl::StrFormat(
        "layers [%d, %d) need a GPU memory budget of at least %d bytes (%.1f MiB: two stream "
        "buffers of the largest layer, %d bytes, plus %d bytes of embedding and output tensors); "
        "the budget is %d bytes",
        range.first, range.end, minimum, minimum / 1048576.0, largest[0], stage_bytes, budget));
  }
  return best;
}

}  // namespace chord
