#include "common/gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <limits>

#include "common/base/status.h"
#include "common/gguf/gguf_parser.h"

namespace chord::gguf {
namespace {

absl::Status WithPath(const absl::Status& status, const std::string& path) {
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}

absl::Status WrongType(std::string_view key, std::string_view wanted, const Value& value) {
  return absl::InvalidArgumentError(
      absl::StrFormat("metadata key '%s' is %s, not %s", key, ValueTypeName(value.type), wanted));
}

bool IsInteger(ValueType type) {
  switch (type) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kUint16:
    case ValueType::kInt16:
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kUint64:
    case ValueType::kInt64:
      return true;
    default:
      return false;
  }
}

bool IsFloat(ValueType type) { return type == ValueType::kFloat32 || type == ValueType::kFloat64; }

// Converts an integer value of any width to int64, when it fits.
absl::StatusOr<int64_t> AsInt(const Value& value, std::string_view key) {
  if (!IsInteger(value.type)) return WrongType(key, "an integer", value);
  if (const auto* u = std::get_if<uint64_t>(&value.data)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metadata key '%s' = %d does not fit in int64", key, *u));
    }
    return static_cast<int64_t>(*u);
  }
  return std::get<int64_t>(value.data);
}

}  // namespace

std::string_view ValueTypeName(ValueType type) {
  switch (type) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

int64_t TensorInfo::rows() const {
  int64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];  // bounded by the parser's checks
  return rows;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(info.st_size);
  if (size == 0) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat(path, ": empty file, not a GGUF file"));
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_error = errno;
  ::close(fd);  // the mapping keeps the file referenced
  if (mapping == MAP_FAILED) {
    return absl::ErrnoToStatus(map_error, absl::StrCat("cannot mmap ", path));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->mapping_ = mapping;
  file->mapping_size_ = size;
  file->bytes_ = std::span<const uint8_t>(static_cast<const uint8_t*>(mapping), size);
  absl::Status status = GgufParser::Parse(*file);
  if (!status.ok()) return WithPath(status, path);
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const uint8_t> bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->bytes_ = bytes;
  RETURN_IF_ERROR(GgufParser::Parse(*file));
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::ParseHeader(std::string bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->owned_bytes_ = std::move(bytes);
  file->bytes_ = std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(file->owned_bytes_.data()), file->owned_bytes_.size());
  RETURN_IF_ERROR(GgufParser::Parse(*file, /*with_data=*/false));
  return file;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const Value* GgufFile::Find(std::string_view key) const {
  for (const auto& [name, value] : metadata_) {
    if (name == key) return &value;
  }
  return nullptr;
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  // TODO(perf): an index, should files with many thousands of tensors appear.
  for (const TensorInfo& info : tensors_) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

namespace {

absl::StatusOr<const Value*> FindOrNotFound(const GgufFile& file, std::string_view key) {
  const Value* value = file.Find(key);
  if (value == nullptr) {
    return absl::NotFoundError(absl::StrFormat("metadata key '%s' is absent", key));
  }
  return value;
}

absl::StatusOr<const Array*> FindArray(const GgufFile& file, std::string_view key) {
  ASSIGN_OR_RETURN(const Value* value, FindOrNotFound(file, key));
  if (value->type != ValueType::kArray) return WrongType(key, "an array", *value);
  return &std::get<Array>(value->data);
}

absl::Status WrongElementType(std::string_view key, std::string_view wanted, const Array& array) {
  return absl::InvalidArgumentError(
      absl::StrFormat("metadata key '%s' is an array of %s, not of %s", key,
                      ValueTypeName(array.element_type), wanted));
}

}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* value, FindOrNotFound(*this, key));
  if (value->type != ValueType::kString) return WrongType(key, "a string", *value);
  return std::get<std::string>(value->data);
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* value, FindOrNotFound(*this, key));
  return AsInt(*value, key);
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* value, FindOrNotFound(*this, key));
  if (!IsInteger(value->type)) return WrongType(key, "an integer", *value);
  if (const auto* i = std::get_if<int64_t>(&value->data)) {
    if (*i < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metadata key '%s' = %d is negative", key, *i));
    }
    return static_cast<uint64_t>(*i);
  }
  return std::get<uint64_t>(value->data);
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* value, FindOrNotFound(*this, key));
  if (!IsFloat(value->type)) return WrongType(key, "a float", *value);
  return std::get<double>(value->data);
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* value, FindOrNotFound(*this, key));
  if (value->type != ValueType::kBool) return WrongType(key, "a bool", *value);
  return std::get<bool>(value->data);
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const Array* array, FindArray(*this, key));
  if (array->element_type != ValueType::kString) return WrongElementType(key, "string", *array);
  std::vector<std::string> out;
  out.reserve(array->elements.size());
  for (const Value& element : array->elements) out.push_back(std::get<std::string>(element.data));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const Array* array, FindArray(*this, key));
  if (!IsInteger(array->element_type)) return WrongElementType(key, "integers", *array);
  std::vector<int64_t> out;
  out.reserve(array->elements.size());
  for (const Value& element : array->elements) {
    ASSIGN_OR_RETURN(const int64_t value, AsInt(element, key));
    out.push_back(value);
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const Array* array, FindArray(*this, key));
  if (!IsFloat(array->element_type)) return WrongElementType(key, "floats", *array);
  std::vector<float> out;
  out.reserve(array->elements.size());
  for (const Value& element : array->elements) {
    out.push_back(static_cast<float>(std::get<double>(element.data)));
  }
  return out;
}

}  // namespace chord::gguf
