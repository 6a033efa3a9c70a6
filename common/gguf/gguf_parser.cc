#include "common/gguf/gguf_parser.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_set>
#include <utility>

#include "common/base/status.h"

namespace chord::gguf {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the reader copies little-endian GGUF scalars as they are");

// The fewest bytes any metadata entry or tensor info can occupy; a count beyond
// remaining / minimum is corrupt, and rejecting it early bounds allocation.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                  // key length, type, u8
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name, n_dims, ne, type, offset

absl::Status Corrupt(std::string message) { return absl::DataLossError(std::move(message)); }

// Prefixes `context` to a failed status, keeping its code.
absl::Status Annotate(const absl::Status& status, std::string_view context) {
  return absl::Status(status.code(), absl::StrCat(absl::string_view(context.data(), context.size()),
                                                  ": ", status.message()));
}

uint32_t ByteSwap(uint32_t v) {
  return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}

// Size of one scalar of `type`, or 0 for string/array/unknown.
uint64_t ScalarBytes(ValueType type) {
  switch (type) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return 0;
  }
  return 0;
}

bool IsKnownValueType(uint32_t id) { return id <= static_cast<uint32_t>(ValueType::kFloat64); }

// The fewest bytes one element of `type` takes in an array.
uint64_t MinElementBytes(ValueType type) {
  if (type == ValueType::kString) return 8;  // length
  if (type == ValueType::kArray) return 12;  // element type + count
  return ScalarBytes(type);
}

// Bounds-checked little-endian cursor over the file's bytes. Errors name the
// byte offset at which the read was attempted.
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Need(uint64_t n) const {
    if (n > remaining()) {
      return Corrupt(absl::StrFormat("truncated at byte %d: needs %d bytes, %d left in the file",
                                     pos_, n, remaining()));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<T> Read() {
    RETURN_IF_ERROR(Need(sizeof(T)));
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  absl::StatusOr<std::string> ReadString() {
    const uint64_t at = pos_;
    ASSIGN_OR_RETURN(const uint64_t length, Read<uint64_t>());
    if (length > remaining()) {
      return Corrupt(
          absl::StrFormat("string at byte %d claims %d bytes but only %d are left in the file", at,
                          length, remaining()));
    }
    std::string text(reinterpret_cast<const char*>(bytes_.data() + pos_), length);
    pos_ += length;
    return text;
  }

 private:
  std::span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
};

absl::StatusOr<Value> ReadValue(ByteReader& reader, ValueType type, int depth);

absl::StatusOr<Array> ReadArray(ByteReader& reader, int depth) {
  const uint64_t at = reader.pos();
  if (depth >= kMaxArrayDepth) {
    return Corrupt(
        absl::StrFormat("array at byte %d is nested deeper than %d levels", at, kMaxArrayDepth));
  }
  ASSIGN_OR_RETURN(const uint32_t element_id, reader.Read<uint32_t>());
  if (!IsKnownValueType(element_id)) {
    return Corrupt(absl::StrFormat("array at byte %d has unknown element type %d", at, element_id));
  }
  Array array;
  array.element_type = static_cast<ValueType>(element_id);
  ASSIGN_OR_RETURN(const uint64_t count, reader.Read<uint64_t>());
  const uint64_t min_bytes = MinElementBytes(array.element_type);
  if (count > reader.remaining() / min_bytes) {
    return Corrupt(absl::StrFormat(
        "array at byte %d claims %d %s elements, more than the %d bytes left could hold", at, count,
        ValueTypeName(array.element_type), reader.remaining()));
  }
  array.elements.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    absl::StatusOr<Value> element = ReadValue(reader, array.element_type, depth + 1);
    if (!element.ok()) return Annotate(element.status(), absl::StrCat("element #", i));
    array.elements.push_back(*std::move(element));
  }
  return array;
}

using Payload = decltype(Value::data);

// Reads a T and keeps it in the variant's widest matching alternative.
template <typename T, typename Wide>
absl::StatusOr<Payload> ReadWidened(ByteReader& reader) {
  ASSIGN_OR_RETURN(const T value, reader.Read<T>());
  return Payload(std::in_place_type<Wide>, static_cast<Wide>(value));
}

// Reads one payload of a type already known to be valid.
absl::StatusOr<Payload> ReadPayload(ByteReader& reader, ValueType type, int depth) {
  switch (type) {
    case ValueType::kUint8:
      return ReadWidened<uint8_t, uint64_t>(reader);
    case ValueType::kUint16:
      return ReadWidened<uint16_t, uint64_t>(reader);
    case ValueType::kUint32:
      return ReadWidened<uint32_t, uint64_t>(reader);
    case ValueType::kUint64:
      return ReadWidened<uint64_t, uint64_t>(reader);
    case ValueType::kInt8:
      return ReadWidened<int8_t, int64_t>(reader);
    case ValueType::kInt16:
      return ReadWidened<int16_t, int64_t>(reader);
    case ValueType::kInt32:
      return ReadWidened<int32_t, int64_t>(reader);
    case ValueType::kInt64:
      return ReadWidened<int64_t, int64_t>(reader);
    case ValueType::kFloat32:
      return ReadWidened<float, double>(reader);
    case ValueType::kFloat64:
      return ReadWidened<double, double>(reader);
    case ValueType::kBool: {
      // Any non-zero byte is true, as llama.cpp reads it.
      ASSIGN_OR_RETURN(const uint8_t byte, reader.Read<uint8_t>());
      return Payload(std::in_place_type<bool>, byte != 0);
    }
    case ValueType::kString: {
      ASSIGN_OR_RETURN(std::string text, reader.ReadString());
      return Payload(std::in_place_type<std::string>, std::move(text));
    }
    case ValueType::kArray: {
      ASSIGN_OR_RETURN(Array array, ReadArray(reader, depth));
      return Payload(std::in_place_type<Array>, std::move(array));
    }
  }
  return absl::InternalError("value type not validated before ReadPayload");
}

absl::StatusOr<Value> ReadValue(ByteReader& reader, ValueType type, int depth) {
  Value value;
  value.type = type;
  ASSIGN_OR_RETURN(value.data, ReadPayload(reader, type, depth));
  return value;
}

absl::Status ReadHeader(ByteReader& reader, uint32_t& version, uint64_t& n_tensors,
                        uint64_t& n_kv) {
  if (reader.remaining() < 4) {
    return Corrupt(
        absl::StrFormat("not a GGUF file: %d bytes, too short for the magic", reader.remaining()));
  }
  ASSIGN_OR_RETURN(const uint32_t magic, reader.Read<uint32_t>());
  char magic_text[4];
  std::memcpy(magic_text, &magic, 4);
  if (std::string_view(magic_text, 4) != "GGUF") {
    return Corrupt(absl::StrFormat("not a GGUF file: magic at byte 0 is 0x%08x, expected \"GGUF\"",
                                   ByteSwap(magic)));
  }
  absl::StatusOr<uint32_t> read_version = reader.Read<uint32_t>();
  if (!read_version.ok()) return Annotate(read_version.status(), "GGUF version");
  version = *read_version;
  if (version == 1) {
    return Corrupt(
        "GGUF version 1 is not supported (only 2 and 3); re-convert the model with a current "
        "llama.cpp");
  }
  if (version != 2 && version != 3) {
    const bool swapped = ByteSwap(version) == 2 || ByteSwap(version) == 3;
    return Corrupt(absl::StrFormat("unsupported GGUF version %d at byte 4 (only 2 and 3)%s",
                                   version, swapped ? "; the file looks big-endian" : ""));
  }
  absl::StatusOr<uint64_t> read_tensors = reader.Read<uint64_t>();
  if (!read_tensors.ok()) return Annotate(read_tensors.status(), "tensor count");
  absl::StatusOr<uint64_t> read_kv = reader.Read<uint64_t>();
  if (!read_kv.ok()) return Annotate(read_kv.status(), "metadata count");
  n_tensors = *read_tensors;
  n_kv = *read_kv;
  if (n_kv > reader.remaining() / kMinKvBytes) {
    return Corrupt(absl::StrFormat(
        "header claims %d metadata entries, more than the %d bytes after it could hold", n_kv,
        reader.remaining()));
  }
  if (n_tensors > reader.remaining() / kMinTensorInfoBytes) {
    return Corrupt(
        absl::StrFormat("header claims %d tensors, more than the %d bytes after it could hold",
                        n_tensors, reader.remaining()));
  }
  return absl::OkStatus();
}

absl::Status ReadMetadata(ByteReader& reader, uint64_t n_kv,
                          std::vector<std::pair<std::string, Value>>& metadata) {
  std::unordered_set<std::string> seen;
  metadata.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t at = reader.pos();
    absl::StatusOr<std::string> key = reader.ReadString();
    if (!key.ok()) {
      return Annotate(key.status(), absl::StrFormat("key of metadata entry #%d", i));
    }
    const std::string context =
        absl::StrFormat("metadata key '%s' (entry #%d at byte %d)", *key, i, at);
    if (!seen.insert(*key).second) return Corrupt(absl::StrCat(context, ": duplicate key"));
    const uint64_t type_at = reader.pos();
    absl::StatusOr<uint32_t> type_id = reader.Read<uint32_t>();
    if (!type_id.ok()) return Annotate(type_id.status(), context);
    if (!IsKnownValueType(*type_id)) {
      return Corrupt(
          absl::StrFormat("%s: unknown value type %d at byte %d", context, *type_id, type_at));
    }
    absl::StatusOr<Value> value = ReadValue(reader, static_cast<ValueType>(*type_id), 0);
    if (!value.ok()) return Annotate(value.status(), context);
    metadata.emplace_back(*std::move(key), *std::move(value));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ReadAlignment(const std::vector<std::pair<std::string, Value>>& metadata) {
  for (const auto& [key, value] : metadata) {
    if (key != kAlignmentKey) continue;
    if (value.type != ValueType::kUint32) {
      return Corrupt(absl::StrFormat("metadata key '%s' must be a uint32, found %s", key,
                                     ValueTypeName(value.type)));
    }
    const uint64_t alignment = std::get<uint64_t>(value.data);
    if (alignment == 0 || !std::has_single_bit(alignment)) {
      return Corrupt(absl::StrFormat("metadata key '%s' is %d; it must be a non-zero power of two",
                                     key, alignment));
    }
    return alignment;
  }
  return kDefaultAlignment;
}

// Reads n_dims and ne[], checking 1..kMaxDims dims, each >= 1, and that the
// element count fits in int64.
absl::Status ReadDims(ByteReader& reader, TensorInfo& info) {
  const uint64_t at = reader.pos();
  ASSIGN_OR_RETURN(const uint32_t n_dims, reader.Read<uint32_t>());
  if (n_dims < 1 || n_dims > kMaxDims) {
    return Corrupt(
        absl::StrFormat("n_dims is %d at byte %d; it must be 1..%d", n_dims, at, kMaxDims));
  }
  int64_t n_elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t dim_at = reader.pos();
    ASSIGN_OR_RETURN(const uint64_t raw, reader.Read<uint64_t>());
    // ggml allows empty dims, but a model weight never has one; rejecting zero
    // keeps every tensor's byte range non-empty so overlap checks are exact.
    if (raw < 1 || raw > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Corrupt(
          absl::StrFormat("ne[%d] is %d at byte %d; it must be 1..2^63-1", d, raw, dim_at));
    }
    const int64_t dim = static_cast<int64_t>(raw);
    if (__builtin_mul_overflow(n_elements, dim, &n_elements)) {
      return Corrupt(absl::StrFormat(
          "the product of the dims overflows int64 (ne[%d] = %d at byte %d)", d, dim, dim_at));
    }
    info.dims.push_back(dim);
  }
  info.n_elements = static_cast<uint64_t>(n_elements);
  return absl::OkStatus();
}

// Reads the type and offset after the dims; computes the tensor's byte size.
absl::Status ReadTypeAndOffset(ByteReader& reader, uint64_t alignment, TensorInfo& info) {
  const uint64_t type_at = reader.pos();
  ASSIGN_OR_RETURN(const uint32_t type_id, reader.Read<uint32_t>());
  const DTypeInfo* type = FindDTypeInfo(type_id);
  if (type == nullptr) {
    return Corrupt(absl::StrFormat("unknown ggml type %d at byte %d", type_id, type_at));
  }
  info.type = type->type;
  if (info.dims[0] % type->block_size != 0) {
    return Corrupt(absl::StrFormat("ne[0] = %d is not a multiple of %s's block size %d",
                                   info.dims[0], type->name, type->block_size));
  }
  absl::StatusOr<uint64_t> row_bytes = RowBytes(info.type, info.dims[0]);
  if (!row_bytes.ok()) return Corrupt(std::string(row_bytes.status().message()));
  if (__builtin_mul_overflow(*row_bytes, static_cast<uint64_t>(info.rows()), &info.n_bytes)) {
    return Corrupt("the tensor's size in bytes overflows 64 bits");
  }
  const uint64_t offset_at = reader.pos();
  ASSIGN_OR_RETURN(info.offset, reader.Read<uint64_t>());
  if (info.offset % alignment != 0) {
    return Corrupt(
        absl::StrFormat("data offset %d (at byte %d) is not a multiple of the alignment %d",
                        info.offset, offset_at, alignment));
  }
  return absl::OkStatus();
}

absl::Status ReadTensorInfos(ByteReader& reader, uint64_t n_tensors, uint64_t alignment,
                             std::vector<TensorInfo>& tensors) {
  std::unordered_set<std::string> seen;
  tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint64_t at = reader.pos();
    TensorInfo info;
    absl::StatusOr<std::string> name = reader.ReadString();
    if (!name.ok()) return Annotate(name.status(), absl::StrFormat("name of tensor #%d", i));
    info.name = *std::move(name);
    const std::string context =
        absl::StrFormat("tensor '%s' (info #%d at byte %d)", info.name, i, at);
    if (!seen.insert(info.name).second) return Corrupt(absl::StrCat(context, ": duplicate name"));
    absl::Status status = ReadDims(reader, info);
    if (status.ok()) status = ReadTypeAndOffset(reader, alignment, info);
    if (!status.ok()) return Annotate(status, context);
    tensors.push_back(std::move(info));
  }
  return absl::OkStatus();
}

// Points each tensor at its data and checks that the data lies inside the file
// and that no two tensors share bytes.
absl::Status PlaceTensorData(std::span<const uint8_t> bytes, uint64_t data_offset,
                             std::vector<TensorInfo>& tensors) {
  const uint64_t size = bytes.size();
  for (TensorInfo& info : tensors) {
    uint64_t start = 0;
    uint64_t end = 0;
    if (__builtin_add_overflow(data_offset, info.offset, &start) ||
        __builtin_add_overflow(start, info.n_bytes, &end) || end > size) {
      return Corrupt(absl::StrFormat(
          "tensor '%s': data at offset %d + %d bytes (data section starts at byte %d) runs past "
          "the end of the file (%d bytes)",
          info.name, info.offset, info.n_bytes, data_offset, size));
    }
    info.data = bytes.data() + start;
  }
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors.size());
  for (const TensorInfo& info : tensors) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& next = *by_offset[i];
    // Cannot overflow: both end within the file, checked above.
    if (prev.offset + prev.n_bytes > next.offset) {
      return Corrupt(absl::StrFormat(
          "tensors '%s' (data offsets %d..%d) and '%s' (from %d) overlap", prev.name, prev.offset,
          prev.offset + prev.n_bytes, next.name, next.offset));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GgufParser::Parse(GgufFile& file, bool with_data) {
  ByteReader reader(file.bytes_);
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  RETURN_IF_ERROR(ReadHeader(reader, file.version_, n_tensors, n_kv));
  RETURN_IF_ERROR(ReadMetadata(reader, n_kv, file.metadata_));
  ASSIGN_OR_RETURN(file.alignment_, ReadAlignment(file.metadata_));
  RETURN_IF_ERROR(ReadTensorInfos(reader, n_tensors, file.alignment_, file.tensors_));
  // Cannot overflow: pos <= file size and alignment <= 2^31.
  file.data_offset_ = (reader.pos() + file.alignment_ - 1) / file.alignment_ * file.alignment_;
  if (!with_data) return absl::OkStatus();
  return PlaceTensorData(file.bytes_, file.data_offset_, file.tensors_);
}

}  // namespace chord::gguf
