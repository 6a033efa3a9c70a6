// Decodes and validates the bytes of a GGUF file into a GgufFile (see gguf_file.h
// for the layout). Internal to chord_gguf: callers use GgufFile::Open/Parse.
//
// Every count, length, dim, offset and size read from the file is checked with
// 64-bit overflow-safe arithmetic before it is used or allocated for; a count is
// rejected when the remaining bytes could not possibly hold that many items.
// Errors are DATA_LOSS and name the key, tensor and byte offset at fault.
//
// Thread-safety: stateless; Parse may run concurrently on different files.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/gguf/gguf_file.h"

namespace chord::gguf {

// Bounds that keep a hostile file from costing unbounded time or stack.
inline constexpr int kMaxArrayDepth = 8;  // arrays nested in arrays
inline constexpr int kMaxDims = 4;        // GGML_MAX_DIMS
inline constexpr uint64_t kDefaultAlignment = 32;
inline constexpr std::string_view kAlignmentKey = "general.alignment";

class GgufParser {
 public:
  // Fills `file`'s version, metadata, alignment, tensors and data offset from
  // `file.bytes_`, which must already be set. On error `file` is left partly
  // filled and must be discarded. Without `with_data` the bytes end at (or
  // after) the tensor infos: tensor data is neither located nor checked.
  static absl::Status Parse(GgufFile& file, bool with_data = true);
};

}  // namespace chord::gguf
