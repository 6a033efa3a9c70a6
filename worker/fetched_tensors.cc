#include "worker/fetched_tensors.h"

#include <new>

#include "common/base/status.h"

namespace chord {
namespace {

uint64_t AlignUp(uint64_t n) {
  return (n + FetchedTensors::kAlignment - 1) / FetchedTensors::kAlignment *
         FetchedTensors::kAlignment;
}

absl::StatusOr<const gguf::TensorInfo*> Describe(const gguf::GgufFile& header,
                                                 const std::string& name) {
  const gguf::TensorInfo* info = header.FindTensor(name);
  if (info == nullptr) return absl::NotFoundError(absl::StrCat("the model has no tensor ", name));
  return info;
}

}  // namespace

void FetchedTensors::Free::operator()(uint8_t* p) const {
  ::operator delete (p, std::align_val_t{kAlignment});
}

absl::StatusOr<uint64_t> FetchedTensors::BytesNeeded(const gguf::GgufFile& header,
                                                     std::span<const std::string> names) {
  uint64_t total = 0;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(const gguf::TensorInfo* info, Describe(header, name));
    total += AlignUp(info->n_bytes);
  }
  return total;
}

absl::StatusOr<std::unique_ptr<FetchedTensors>> FetchedTensors::Fetch(
    const gguf::GgufFile& header, std::span<const std::string> names, const FetchFn& fetch) {
  ASSIGN_OR_RETURN(const uint64_t total, BytesNeeded(header, names));
  std::unique_ptr<FetchedTensors> tensors(new FetchedTensors());
  if (total > 0) {
    uint8_t* memory =
        static_cast<uint8_t*>(::operator new (total, std::align_val_t{kAlignment}, std::nothrow));
    if (memory == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cannot allocate %d bytes for weights", total));
    }
    tensors->memory_.reset(memory);
  }
  tensors->size_ = total;
  uint64_t offset = 0;
  for (const std::string& name : names) {
    if (tensors->index_.contains(name)) continue;  // asked for twice: one copy
    ASSIGN_OR_RETURN(const gguf::TensorInfo* described, Describe(header, name));
    gguf::TensorInfo info = *described;
    uint8_t* out = tensors->memory_.get() + offset;
    RETURN_IF_ERROR(fetch(info, out));
    info.data = out;
    info.offset = offset;
    offset += AlignUp(info.n_bytes);
    tensors->index_.emplace(name, tensors->tensors_.size());
    tensors->tensors_.push_back(std::move(info));
  }
  return tensors;
}

const gguf::TensorInfo* FetchedTensors::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace chord
