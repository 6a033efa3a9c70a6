// Which stages of a plan share an NCCL communicator: every run of two or more
// consecutive stages whose workers can link GPU to GPU (PROTOCOL.md, "NCCL
// links"), each on its own GPU (NCCL refuses two ranks on one device: a run
// breaks where a GPU would repeat). A stage's rank is its position in its
// run; a stage outside any run (a CPU worker, a GPU worker between CPU ones)
// has ranks == 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace chord::coordinator {

// The size of an ncclUniqueId, checked before the coordinator relays one.
inline constexpr size_t kNcclUniqueIdBytes = 128;

struct NcclPlace {
  uint32_t rank = 0;
  uint32_t ranks = 0;  // 0: no group
  // The stage index of the group's rank 0 (meaningful when ranks > 0).
  uint32_t first_stage = 0;
};

// `gpus[s]`: the GPU UUID of stage s's worker when it registered `nccl`,
// empty when it cannot link (stages in pipeline order).
std::vector<NcclPlace> PlanNcclGroups(const std::vector<std::string>& gpus);

}  // namespace chord::coordinator
