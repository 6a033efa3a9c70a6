#include "worker/host_logits.h"

#include "common/base/log.h"

namespace chord {

float* HostLogits::Reserve(size_t n) {
  if (n <= capacity_) return data_.get();
  Release();
  data_ = std::make_unique_for_overwrite<float[]>(n);
  capacity_ = n;
  if (pinner_ != nullptr) {
    const absl::Status pinned = pinner_->Pin(data_.get(), n * sizeof(float));
    pinned_ = pinned.ok();
    // Still correct, only slower: the copies then go through pageable memory.
    if (!pinned.ok()) log::Warn("the logits buffer stays pageable: %s", pinned.ToString());
  }
  return data_.get();
}

void HostLogits::Release() {
  if (pinned_) pinner_->Unpin(data_.get());
  pinned_ = false;
  data_.reset();
  capacity_ = 0;
}

}  // namespace chord
