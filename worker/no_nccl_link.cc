// NcclLink in builds without NCCL (no nvcc, or no nccl.h): links are never
// made, and the stages exchange activations over ZeroMQ.
#include <cstdlib>

#include "worker/nccl_link.h"

namespace chord {

bool NcclBuilt() { return false; }

void SetNcclEnvironment(const std::string&) {
  setenv("NCCL_NVLS_ENABLE", "0", 1);  // for children that may have NCCL
}

absl::StatusOr<std::string> NewNcclUniqueId() {
  return absl::UnimplementedError("this chord-worker was built without NCCL");
}

absl::StatusOr<std::unique_ptr<NcclLink>> NcclLink::Connect(const NcclLinkOptions&) {
  return absl::UnimplementedError("this chord-worker was built without NCCL");
}

}  // namespace chord
