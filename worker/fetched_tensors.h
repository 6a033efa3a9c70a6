// A TensorSource whose tensors live in the worker's own memory: the bytes of
// the stage's tensors, fetched from the loader (or any byte source), each at a
// 64-byte aligned address in one allocation, so the kernels' block loads are
// aligned and the memory the stage holds is known up front. The allocation is
// an anonymous mapping of its own, so freeing it gives the pages back to the
// system at once (a heap allocation of layer size could stay in the process).
//
// Thread-safety: immutable once built; Find() may be called from any thread.
// Ownership: owns the bytes; the TensorInfo pointers it returns live as long
// as the FetchedTensors.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "worker/memory_pinner.h"
#include "worker/models/tensor_source.h"

namespace chord {

class FetchedTensors final : public TensorSource {
 public:
  static constexpr uint64_t kAlignment = 64;

  // Fills `out` with all of the tensor's bytes (info.n_bytes), as stored in the file.
  using FetchFn = std::function<absl::Status(const gguf::TensorInfo& info, uint8_t* out)>;

  // Bytes the named tensors of `header` take here (each rounded up to the
  // alignment). NOT_FOUND naming a tensor the header does not have.
  static absl::StatusOr<uint64_t> BytesNeeded(const gguf::GgufFile& header,
                                              std::span<const std::string> names);

  // Allocates BytesNeeded() and fetches every named tensor into it. Returns
  // NOT_FOUND for an unknown name, RESOURCE_EXHAUSTED when the allocation
  // fails, or the first error `fetch` returns.
  static absl::StatusOr<std::unique_ptr<FetchedTensors>> Fetch(const gguf::GgufFile& header,
                                                               std::span<const std::string> names,
                                                               const FetchFn& fetch);

  // The same with every tensor asked for at once (LoaderClient::FetchTensors
  // pipelines them). With a `pinner` (which must outlive the result) the
  // memory is page-locked before it is filled.
  using BatchFetchFn = std::function<absl::Status(std::span<const gguf::TensorRead> reads)>;
  static absl::StatusOr<std::unique_ptr<FetchedTensors>> FetchBatch(
      const gguf::GgufFile& header, std::span<const std::string> names, const BatchFetchFn& fetch,
      const MemoryPinner* pinner = nullptr);

  ~FetchedTensors() override;
  FetchedTensors(const FetchedTensors&) = delete;
  FetchedTensors& operator=(const FetchedTensors&) = delete;

  const gguf::TensorInfo* Find(std::string_view name) const override;
  uint64_t bytes() const { return size_; }
  bool pinned() const { return pinner_ != nullptr; }
  size_t size() const { return tensors_.size(); }

 private:
  FetchedTensors() = default;

  uint8_t* memory_ = nullptr;  // mmap'd, size_ bytes
  uint64_t size_ = 0;
  const MemoryPinner* pinner_ = nullptr;  // set once memory_ is pinned
  std::vector<gguf::TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

}  // namespace chord
