// GGUF (llama.cpp's model file format), versions 2 and 3: a parsed, validated view.
//
// File layout (all little-endian):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | n_dims x u64 ne | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32)
//   tensor data: each tensor at data_start + offset, offset a multiple of the alignment
// string = u64 length + bytes (no terminator); array = u32 element type + u64 count + elements.
// ne[0] is the innermost (contiguous) dimension: a matrix with ne = {cols, rows}.
//
// Every byte is untrusted: Open()/Parse() check counts, lengths, dims, offsets and
// sizes with overflow-checked arithmetic, validate type ids, reject duplicate keys or
// tensor names and overlapping or out-of-bounds tensor data, and return a Status
// naming what is wrong (DATA_LOSS for a corrupt or truncated file). They never crash.
//
// Thread-safety: a GgufFile is immutable after Open() and may be read from any thread.
// Ownership: tensor data points into the file's mmap, which lives as long as the GgufFile.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor/dtype.h"

namespace chord::gguf {

enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view ValueTypeName(ValueType type);

struct Value;

struct Array {
  ValueType element_type = ValueType::kUint8;
  std::vector<Value> elements;
};

// One metadata value. Integers keep their declared type in `type`; the payload
// sits in the widest matching alternative (uint64_t, int64_t or double).
struct Value {
  ValueType type = ValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string, Array> data;
};

struct TensorInfo {
  std::string name;
  DType type = DType::kF32;
  std::vector<int64_t> dims;  // ne[0] first (innermost)
  uint64_t offset = 0;        // relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping; n_bytes long

  int64_t rows() const;  // product of dims[1..], 1 for a vector
  int64_t cols() const { return dims.empty() ? 1 : dims[0]; }
};

// Where to put one tensor's bytes (n_bytes of them) when they are read or fetched.
struct TensorRead {
  const TensorInfo* info = nullptr;
  uint8_t* out = nullptr;
};

class GgufFile {
 public:
  // Maps and parses the file at `path`.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses bytes held by the caller, who must keep them alive (tests, fuzzing).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::span<const uint8_t> bytes);

  // Parses only the header, metadata and tensor infos (e.g. the first
  // data_offset() bytes of a file, as the loader sends them to the coordinator):
  // every TensorInfo has data == nullptr. The GgufFile owns `bytes`.
  static absl::StatusOr<std::unique_ptr<GgufFile>> ParseHeader(std::string bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of tensor data in the file
  uint64_t file_size() const { return bytes_.size(); }
  std::span<const uint8_t> bytes() const { return bytes_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }
  const Value* Find(std::string_view key) const;

  // Typed getters. NOT_FOUND when absent; INVALID_ARGUMENT when present with another
  // type (integers of any width convert when the value fits; floats accept f32/f64).
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  friend class GgufParser;

  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::span<const uint8_t> bytes_;
  void* mapping_ = nullptr;  // owned mmap, or null when parsing caller-held bytes
  size_t mapping_size_ = 0;
  std::string owned_bytes_;  // ParseHeader's copy
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace chord::gguf
