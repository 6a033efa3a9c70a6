// Host memory for a step's logits (rows of n_vocab floats), page-locked when
// a pinner is given: a GPU stage's copy of 64 rows of 32,000 logits into
// pageable memory goes through the driver's staging buffers at a fraction of
// the link's speed (about 0.8 ms of a 64-sequence step on an H200 host).
// Grows, never shrinks; a grown buffer does not keep its contents.
#pragma once

#include <cstddef>
#include <memory>

#include "worker/memory_pinner.h"

namespace chord {

class HostLogits {
 public:
  explicit HostLogits(const MemoryPinner* pinner = nullptr) : pinner_(pinner) {}
  ~HostLogits() { Release(); }
  HostLogits(const HostLogits&) = delete;
  HostLogits& operator=(const HostLogits&) = delete;

  // Room for at least n floats: data() then points at them.
  float* Reserve(size_t n);
  float* data() const { return data_.get(); }
  bool pinned() const { return pinned_; }

 private:
  void Release();

  const MemoryPinner* pinner_;
  std::unique_ptr<float[]> data_;
  size_t capacity_ = 0;
  bool pinned_ = false;
};

}  // namespace chord
