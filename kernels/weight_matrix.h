// A read-only view of a 2-D weight tensor in its stored (GGUF) layout:
// `rows` rows of `cols` elements, each row `row_bytes` long, rows contiguous.
// The memory is owned elsewhere (an mmap'd file or a shard cache entry).
#pragma once

#include <cstdint>

#include "common/tensor/dtype.h"

namespace chord::kernels {

struct WeightMatrix {
  DType type = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t row_bytes = 0;
  const uint8_t* data = nullptr;

  const uint8_t* row(int64_t r) const { return data + static_cast<uint64_t>(r) * row_bytes; }
};

}  // namespace chord::kernels
