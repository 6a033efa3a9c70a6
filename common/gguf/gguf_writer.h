// Writes GGUF v3 files (the layout is described in gguf_file.h), as llama.cpp's
// own writer lays them out: metadata in insertion order, tensor infos, zero
// padding to `general.alignment`, then each tensor's data at an aligned offset
// with zero padding after every tensor, the last one included.
//
// Tensor data is not held by the writer. Write() asks a caller-supplied producer
// for one tensor at a time, from a pool of threads, and stores the bytes with
// pwrite() at offsets fixed in advance, so a multi-gigabyte model is never
// resident twice and the result does not depend on the number of threads.
//
// Errors: every Add* validates its input and returns INVALID_ARGUMENT (duplicate
// key or tensor name, value whose payload does not match its type, nested
// array, bad dims, a row that is not a whole number of blocks, ...). Write()
// returns the producer's first error or an I/O error naming the path; the file
// is written under a temporary name and renamed into place only on success.
//
// Thread-safety: building a writer (Add*) is single-threaded; Write() is const
// and may run concurrently with other Write() calls on the same writer.
// Byte order: the host must be little-endian (checked at compile time).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/tensor/dtype.h"

namespace chord::gguf {

inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint64_t kDefaultAlignment = 32;
// ggml limits: GGML_MAX_DIMS and GGML_MAX_NAME (which counts the terminator).
inline constexpr int kMaxTensorDims = 4;
inline constexpr size_t kMaxTensorNameLength = 63;

// Fills `out` (exactly the tensor's byte size) with the data of tensor
// `tensor_index` (the order of AddTensor calls). Called concurrently from
// several threads, each call for a different tensor.
using TensorProducer = std::function<absl::Status(size_t tensor_index, std::span<uint8_t> out)>;
// Reports bytes of tensor data written so far out of the total. Called from the
// writing threads, one call at a time (the writer serializes them).
using WriteProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

class GgufWriter {
 public:
  struct TensorEntry {
    std::string name;
    DType type = DType::kF32;
    std::vector<int64_t> dims;  // ne[0] first (innermost)
    uint64_t n_bytes = 0;
  };

  GgufWriter() = default;

  // Adds one metadata pair. `value.data` must hold the alternative that
  // `value.type` implies (unsigned integers: uint64_t within range; signed:
  // int64_t within range; floats: double; bool; string; Array of non-array
  // elements all of `element_type`). A "general.alignment" value must be a u32
  // power of two; it changes the alignment of the file written.
  absl::Status AddValue(std::string key, Value value);

  absl::Status AddUint8(std::string key, uint8_t v);
  absl::Status AddInt8(std::string key, int8_t v);
  absl::Status AddUint16(std::string key, uint16_t v);
  absl::Status AddInt16(std::string key, int16_t v);
  absl::Status AddUint32(std::string key, uint32_t v);
  absl::Status AddInt32(std::string key, int32_t v);
  absl::Status AddUint64(std::string key, uint64_t v);
  absl::Status AddInt64(std::string key, int64_t v);
  absl::Status AddFloat32(std::string key, float v);
  absl::Status AddFloat64(std::string key, double v);
  absl::Status AddBool(std::string key, bool v);
  absl::Status AddString(std::string key, std::string v);
  absl::Status AddStringArray(std::string key, const std::vector<std::string>& v);
  absl::Status AddFloat32Array(std::string key, const std::vector<float>& v);
  absl::Status AddInt32Array(std::string key, const std::vector<int32_t>& v);

  // Declares a tensor; returns its index (what the producer receives). dims has
  // 1..4 positive entries and dims[0] must be a multiple of the type's block size.
  absl::StatusOr<size_t> AddTensor(std::string name, DType type, std::vector<int64_t> dims);

  uint64_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }

  // The serialized header (everything before the tensor data), padded with zeros
  // to the alignment: its size is where the data section starts.
  std::vector<uint8_t> SerializeHeader() const;
  // Offset of each tensor's data relative to the data section, and the data
  // section's size (every tensor padded to the alignment).
  std::vector<uint64_t> TensorOffsets() const;
  uint64_t DataSectionBytes() const;

  // Writes the file at `path` with `n_threads` producer threads (at least 1).
  // `progress` may be empty.
  absl::Status Write(const std::string& path, const TensorProducer& producer, int n_threads,
                     const WriteProgress& progress = {}) const;

 private:
  absl::Status CheckKey(const std::string& key) const;

  uint64_t alignment_ = kDefaultAlignment;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::unordered_set<std::string> keys_;
  std::vector<TensorEntry> tensors_;
  std::unordered_set<std::string> tensor_names_;
};

// Rounds `n` up to a multiple of `alignment` (a power of two).
inline uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) & ~(alignment - 1);
}

}  // namespace chord::gguf
