#include "common/gguf/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <numeric>
#include <thread>

#include "common/base/status.h"

namespace chord::gguf {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF is little-endian; this writer copies host integers as they are");

bool IsUnsigned(ValueType type) {
  return type == ValueType::kUint8 || type == ValueType::kUint16 || type == ValueType::kUint32 ||
         type == ValueType::kUint64;
}
bool IsSigned(ValueType type) {
  return type == ValueType::kInt8 || type == ValueType::kInt16 || type == ValueType::kInt32 ||
         type == ValueType::kInt64;
}

uint64_t UnsignedMax(ValueType type) {
  switch (type) {
    case ValueType::kUint8:
      return std::numeric_limits<uint8_t>::max();
    case ValueType::kUint16:
      return std::numeric_limits<uint16_t>::max();
    case ValueType::kUint32:
      return std::numeric_limits<uint32_t>::max();
    default:
      return std::numeric_limits<uint64_t>::max();
  }
}

int64_t SignedBits(ValueType type) {
  switch (type) {
    case ValueType::kInt8:
      return 8;
    case ValueType::kInt16:
      return 16;
    case ValueType::kInt32:
      return 32;
    default:
      return 64;
  }
}

// Checks that a (non-array) value's payload matches its declared type.
absl::Status CheckScalar(const Value& value) {
  const uint32_t id = static_cast<uint32_t>(value.type);
  if (IsUnsigned(value.type)) {
    const auto* v = std::get_if<uint64_t>(&value.data);
    if (v == nullptr)
      return absl::InvalidArgumentError("unsigned value without a uint64_t payload");
    if (*v > UnsignedMax(value.type)) {
      return absl::InvalidArgumentError(absl::StrFormat("%d does not fit type %d", *v, id));
    }
    return absl::OkStatus();
  }
  if (IsSigned(value.type)) {
    const auto* v = std::get_if<int64_t>(&value.data);
    if (v == nullptr) return absl::InvalidArgumentError("signed value without an int64_t payload");
    const int bits = static_cast<int>(SignedBits(value.type));
    if (bits < 64 && (*v < -(int64_t{1} << (bits - 1)) || *v >= (int64_t{1} << (bits - 1)))) {
      return absl::InvalidArgumentError(absl::StrFormat("%d does not fit type %d", *v, id));
    }
    return absl::OkStatus();
  }
  switch (value.type) {
    case ValueType::kFloat32:
    case ValueType::kFloat64:
      if (!std::holds_alternative<double>(value.data)) {
        return absl::InvalidArgumentError("float value without a double payload");
      }
      return absl::OkStatus();
    case ValueType::kBool:
      if (!std::holds_alternative<bool>(value.data)) {
        return absl::InvalidArgumentError("bool value without a bool payload");
      }
      return absl::OkStatus();
    case ValueType::kString:
      if (!std::holds_alternative<std::string>(value.data)) {
        return absl::InvalidArgumentError("string value without a string payload");
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrFormat("unknown value type %d", id));
  }
}

absl::Status CheckValue(const Value& value) {
  if (value.type != ValueType::kArray) return CheckScalar(value);
  const auto* array = std::get_if<Array>(&value.data);
  if (array == nullptr) return absl::InvalidArgumentError("array value without an Array payload");
  if (array->element_type == ValueType::kArray) {
    return absl::InvalidArgumentError("nested arrays are not supported by GGUF readers");
  }
  for (size_t i = 0; i < array->elements.size(); ++i) {
    const Value& element = array->elements[i];
    if (element.type != array->element_type) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "array element %d has type %d, the array declares %d", i,
          static_cast<uint32_t>(element.type), static_cast<uint32_t>(array->element_type)));
    }
    absl::Status status = CheckScalar(element);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("array element ", i, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

template <typename T>
void Put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void PutString(std::vector<uint8_t>& out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

// Writes the payload only (the type id is written by the caller).
void PutPayload(std::vector<uint8_t>& out, const Value& value) {
  switch (value.type) {
    case ValueType::kUint8:
      return Put<uint8_t>(out, static_cast<uint8_t>(std::get<uint64_t>(value.data)));
    case ValueType::kUint16:
      return Put<uint16_t>(out, static_cast<uint16_t>(std::get<uint64_t>(value.data)));
    case ValueType::kUint32:
      return Put<uint32_t>(out, static_cast<uint32_t>(std::get<uint64_t>(value.data)));
    case ValueType::kUint64:
      return Put<uint64_t>(out, std::get<uint64_t>(value.data));
    case ValueType::kInt8:
      return Put<int8_t>(out, static_cast<int8_t>(std::get<int64_t>(value.data)));
    case ValueType::kInt16:
      return Put<int16_t>(out, static_cast<int16_t>(std::get<int64_t>(value.data)));
    case ValueType::kInt32:
      return Put<int32_t>(out, static_cast<int32_t>(std::get<int64_t>(value.data)));
    case ValueType::kInt64:
      return Put<int64_t>(out, std::get<int64_t>(value.data));
    case ValueType::kFloat32:
      return Put<float>(out, static_cast<float>(std::get<double>(value.data)));
    case ValueType::kFloat64:
      return Put<double>(out, std::get<double>(value.data));
    case ValueType::kBool:
      return Put<uint8_t>(out, std::get<bool>(value.data) ? 1 : 0);
    case ValueType::kString:
      return PutString(out, std::get<std::string>(value.data));
    case ValueType::kArray: {
      const Array& array = std::get<Array>(value.data);
      Put<uint32_t>(out, static_cast<uint32_t>(array.element_type));
      Put<uint64_t>(out, array.elements.size());
      for (const Value& element : array.elements) PutPayload(out, element);
      return;
    }
  }
}

absl::Status ErrnoError(const char* what, const std::string& path) {
  return absl::UnavailableError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status PwriteAll(int fd, const uint8_t* data, uint64_t size, uint64_t offset,
                       const std::string& path) {
  while (size > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, uint64_t{1} << 30));
    const ssize_t n = ::pwrite(fd, data, chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path);
    }
    if (n == 0) return absl::UnavailableError(absl::StrCat("short write to ", path));
    data += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

// State shared by the threads of one Write() call.
struct WriteJob {
  int fd = -1;
  const std::string* path = nullptr;
  const TensorProducer* producer = nullptr;
  const WriteProgress* progress = nullptr;
  const std::vector<GgufWriter::TensorEntry>* tensors = nullptr;
  std::vector<size_t> order;           // tensor indices, largest first
  std::vector<uint64_t> file_offsets;  // absolute, per tensor index
  uint64_t total_bytes = 0;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  uint64_t done_bytes = 0;   // guarded by mu
  absl::Status first_error;  // guarded by mu

  void Fail(absl::Status status) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_error.ok()) first_error = std::move(status);
    failed = true;
  }
};

absl::Status WriteOneTensor(WriteJob& job, size_t index, std::vector<uint8_t>& buffer) {
  const GgufWriter::TensorEntry& tensor = (*job.tensors)[index];
  buffer.resize(tensor.n_bytes);
  absl::Status status = (*job.producer)(index, std::span<uint8_t>(buffer));
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("tensor ", tensor.name, ": ", status.message()));
  }
  RETURN_IF_ERROR(
      PwriteAll(job.fd, buffer.data(), tensor.n_bytes, job.file_offsets[index], *job.path));
  std::lock_guard<std::mutex> lock(job.mu);
  job.done_bytes += tensor.n_bytes;
  if (*job.progress) (*job.progress)(job.done_bytes, job.total_bytes);
  return absl::OkStatus();
}

// Thread body: takes tensors off the shared queue until it is empty or a
// thread failed. Exceptions (e.g. bad_alloc for a huge tensor) become Status.
void WriterThread(WriteJob& job) {
  std::vector<uint8_t> buffer;
  try {
    while (!job.failed) {
      const size_t slot = job.next.fetch_add(1);
      if (slot >= job.order.size()) return;
      absl::Status status = WriteOneTensor(job, job.order[slot], buffer);
      if (!status.ok()) return job.Fail(std::move(status));
    }
  } catch (const std::bad_alloc&) {
    job.Fail(absl::ResourceExhaustedError("out of memory while producing tensor data"));
  } catch (const std::exception& e) {
    job.Fail(absl::InternalError(absl::StrCat("tensor producer threw: ", e.what())));
  }
}

}  // namespace

absl::Status GgufWriter::CheckKey(const std::string& key) const {
  if (key.empty()) return absl::InvalidArgumentError("empty metadata key");
  if (keys_.contains(key)) {
    return absl::InvalidArgumentError(absl::StrCat("duplicate metadata key '", key, "'"));
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::AddValue(std::string key, Value value) {
  RETURN_IF_ERROR(CheckKey(key));
  absl::Status status = CheckValue(value);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("metadata '", key, "': ", status.message()));
  }
  if (key == "general.alignment") {
    const auto* v = std::get_if<uint64_t>(&value.data);
    if (value.type != ValueType::kUint32 || v == nullptr || *v == 0 || !std::has_single_bit(*v)) {
      return absl::InvalidArgumentError("general.alignment must be a u32 power of two");
    }
    alignment_ = *v;
  }
  keys_.insert(key);
  metadata_.emplace_back(std::move(key), std::move(value));
  return absl::OkStatus();
}

absl::Status GgufWriter::AddUint8(std::string key, uint8_t v) {
  return AddValue(std::move(key), Value{ValueType::kUint8, uint64_t{v}});
}
absl::Status GgufWriter::AddInt8(std::string key, int8_t v) {
  return AddValue(std::move(key), Value{ValueType::kInt8, int64_t{v}});
}
absl::Status GgufWriter::AddUint16(std::string key, uint16_t v) {
  return AddValue(std::move(key), Value{ValueType::kUint16, uint64_t{v}});
}
absl::Status GgufWriter::AddInt16(std::string key, int16_t v) {
  return AddValue(std::move(key), Value{ValueType::kInt16, int64_t{v}});
}
absl::Status GgufWriter::AddUint32(std::string key, uint32_t v) {
  return AddValue(std::move(key), Value{ValueType::kUint32, uint64_t{v}});
}
absl::Status GgufWriter::AddInt32(std::string key, int32_t v) {
  return AddValue(std::move(key), Value{ValueType::kInt32, int64_t{v}});
}
absl::Status GgufWriter::AddUint64(std::string key, uint64_t v) {
  return AddValue(std::move(key), Value{ValueType::kUint64, v});
}
absl::Status GgufWriter::AddInt64(std::string key, int64_t v) {
  return AddValue(std::move(key), Value{ValueType::kInt64, v});
}
absl::Status GgufWriter::AddFloat32(std::string key, float v) {
  return AddValue(std::move(key), Value{ValueType::kFloat32, double{v}});
}
absl::Status GgufWriter::AddFloat64(std::string key, double v) {
  return AddValue(std::move(key), Value{ValueType::kFloat64, v});
}
absl::Status GgufWriter::AddBool(std::string key, bool v) {
  return AddValue(std::move(key), Value{ValueType::kBool, v});
}
absl::Status GgufWriter::AddString(std::string key, std::string v) {
  return AddValue(std::move(key), Value{ValueType::kString, std::move(v)});
}

absl::Status GgufWriter::AddStringArray(std::string key, const std::vector<std::string>& v) {
  Array array{ValueType::kString, {}};
  array.elements.reserve(v.size());
  for (const std::string& s : v) array.elements.push_back(Value{ValueType::kString, s});
  return AddValue(std::move(key), Value{ValueType::kArray, std::move(array)});
}

absl::Status GgufWriter::AddFloat32Array(std::string key, const std::vector<float>& v) {
  Array array{ValueType::kFloat32, {}};
  array.elements.reserve(v.size());
  for (float f : v) array.elements.push_back(Value{ValueType::kFloat32, double{f}});
  return AddValue(std::move(key), Value{ValueType::kArray, std::move(array)});
}

absl::Status GgufWriter::AddInt32Array(std::string key, const std::vector<int32_t>& v) {
  Array array{ValueType::kInt32, {}};
  array.elements.reserve(v.size());
  for (int32_t i : v) array.elements.push_back(Value{ValueType::kInt32, int64_t{i}});
  return AddValue(std::move(key), Value{ValueType::kArray, std::move(array)});
}

absl::StatusOr<size_t> GgufWriter::AddTensor(std::string name, DType type,
                                             std::vector<int64_t> dims) {
  if (name.empty() || name.size() > kMaxTensorNameLength) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor name '%s' must have 1 to %d bytes", name, kMaxTensorNameLength));
  }
  if (tensor_names_.contains(name)) {
    return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", name, "'"));
  }
  if (FindDTypeInfo(static_cast<uint32_t>(type)) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": unknown type"));
  }
  if (dims.empty() || dims.size() > static_cast<size_t>(kMaxTensorDims)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor %s: %d dims, expected 1 to %d", name, dims.size(), kMaxTensorDims));
  }
  uint64_t rows = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] <= 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensor %s: dim %d is %d, must be positive", name, i, dims[i]));
    }
    if (i == 0) continue;
    if (rows > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(dims[i])) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": size overflows"));
    }
    rows *= static_cast<uint64_t>(dims[i]);
  }
  absl::StatusOr<uint64_t> row_bytes = RowBytes(type, dims[0]);
  if (!row_bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": ", row_bytes.status().message()));
  }
  if (*row_bytes != 0 && rows > (std::numeric_limits<uint64_t>::max() / 2) / *row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": size overflows"));
  }
  tensor_names_.insert(name);
  tensors_.push_back(TensorEntry{std::move(name), type, std::move(dims), rows * *row_bytes});
  return tensors_.size() - 1;
}

std::vector<uint8_t> GgufWriter::SerializeHeader() const {
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  Put<uint32_t>(out, kGgufVersion);
  Put<uint64_t>(out, tensors_.size());
  Put<uint64_t>(out, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    PutString(out, key);
    Put<uint32_t>(out, static_cast<uint32_t>(value.type));
    PutPayload(out, value);
  }
  const std::vector<uint64_t> offsets = TensorOffsets();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorEntry& tensor = tensors_[i];
    PutString(out, tensor.name);
    Put<uint32_t>(out, static_cast<uint32_t>(tensor.dims.size()));
    for (int64_t d : tensor.dims) Put<uint64_t>(out, static_cast<uint64_t>(d));
    Put<uint32_t>(out, static_cast<uint32_t>(tensor.type));
    Put<uint64_t>(out, offsets[i]);
  }
  out.resize(AlignUp(out.size(), alignment_), 0);
  return out;
}

std::vector<uint64_t> GgufWriter::TensorOffsets() const {
  std::vector<uint64_t> offsets;
  offsets.reserve(tensors_.size());
  uint64_t at = 0;
  for (const TensorEntry& tensor : tensors_) {
    offsets.push_back(at);
    at += AlignUp(tensor.n_bytes, alignment_);
  }
  return offsets;
}

uint64_t GgufWriter::DataSectionBytes() const {
  uint64_t total = 0;
  for (const TensorEntry& tensor : tensors_) total += AlignUp(tensor.n_bytes, alignment_);
  return total;
}

absl::Status GgufWriter::Write(const std::string& path, const TensorProducer& producer,
                               int n_threads, const WriteProgress& progress) const {
  if (n_threads < 1) return absl::InvalidArgumentError("Write needs at least one thread");
  const std::vector<uint8_t> header = SerializeHeader();
  const std::string tmp_path = path + ".partial";
  WriteJob job;
  job.path = &tmp_path;
  job.producer = &producer;
  job.progress = &progress;
  job.tensors = &tensors_;
  for (uint64_t offset : TensorOffsets()) job.file_offsets.push_back(header.size() + offset);
  for (const TensorEntry& tensor : tensors_) job.total_bytes += tensor.n_bytes;
  // Largest first so the big tensors do not leave one thread working alone at the end.
  job.order.resize(tensors_.size());
  std::iota(job.order.begin(), job.order.end(), size_t{0});
  std::stable_sort(job.order.begin(), job.order.end(), [this](size_t a, size_t b) {
    return tensors_[a].n_bytes > tensors_[b].n_bytes;
  });

  job.fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (job.fd < 0) return ErrnoError("cannot create", tmp_path);
  // Extending the file zero-fills it, which provides all padding bytes.
  const uint64_t file_size = header.size() + DataSectionBytes();
  absl::Status status;
  if (::ftruncate(job.fd, static_cast<off_t>(file_size)) != 0) {
    status = ErrnoError("cannot size", tmp_path);
  } else {
    status = PwriteAll(job.fd, header.data(), header.size(), 0, tmp_path);
  }
  if (status.ok()) {
    const int spawned = std::min<int>(n_threads, static_cast<int>(tensors_.size()));
    std::vector<std::thread> threads;
    for (int i = 0; i < spawned; ++i) threads.emplace_back([&job] { WriterThread(job); });
    for (std::thread& t : threads) t.join();
    status = job.first_error;
  }
  if (::close(job.fd) != 0 && status.ok()) status = ErrnoError("cannot close", tmp_path);
  if (status.ok() && std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    status = ErrnoError("cannot rename into place", path);
  }
  if (!status.ok()) ::unlink(tmp_path.c_str());
  return status;
}

}  // namespace chord::gguf
