#include "worker/fetched_tensors.h"

#include <sys/mman.h>

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

FetchedTensors::~FetchedTensors() {
  if (pinner_ != nullptr) pinner_->Unpin(memory_);
  if (memory_ != nullptr) munmap(memory_, size_);
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
  return FetchBatch(header, names, [&fetch](std::span<const gguf::TensorRead> reads) {
    for (const gguf::TensorRead& read : reads) RETURN_IF_ERROR(fetch(*read.info, read.out));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::unique_ptr<FetchedTensors>> FetchedTensors::FetchBatch(
    const gguf::GgufFile& header, std::span<const std::string> names, const BatchFetchFn& fetch,
    const MemoryPinner* pinner) {
  ASSIGN_OR_RETURN(const uint64_t total, BytesNeeded(header, names));
  std::unique_ptr<FetchedTensors> tensors(new FetchedTensors());
  if (total > 0) {
    // Page-aligned, so also kAlignment-aligned.
    void* memory = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cannot allocate %d bytes for weights", total));
    }
    tensors->memory_ = static_cast<uint8_t*>(memory);
    tensors->size_ = total;
    if (pinner != nullptr) {
      RETURN_IF_ERROR(pinner->Pin(memory, total));
      tensors->pinner_ = pinner;
    }
  }
  uint64_t offset = 0;
  for (const std::string& name : names) {
    if (tensors->index_.contains(name)) continue;  // asked for twice: one copy
    ASSIGN_OR_RETURN(const gguf::TensorInfo* described, Describe(header, name));
    gguf::TensorInfo info = *described;
    info.data = tensors->memory_ + offset;
    info.offset = offset;
    offset += AlignUp(info.n_bytes);
    tensors->index_.emplace(name, tensors->tensors_.size());
    tensors->tensors_.push_back(std::move(info));
  }
  // What the loader is asked for is the file's description of each tensor
  // (its offset in the file's data section), filled into our memory.
  std::vector<gguf::TensorRead> reads;
  reads.reserve(tensors->tensors_.size());
  for (const gguf::TensorInfo& held : tensors->tensors_) {
    reads.push_back(
        gguf::TensorRead{header.FindTensor(held.name), const_cast<uint8_t*>(held.data)});
  }
  RETURN_IF_ERROR(fetch(reads));
  return tensors;
}

const gguf::TensorInfo* FetchedTensors::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace chord
