#include "coordinator/nccl_groups.h"

#include <algorithm>

namespace chord::coordinator {

std::vector<NcclPlace> PlanNcclGroups(const std::vector<std::string>& gpus) {
  std::vector<NcclPlace> places(gpus.size());
  size_t s = 0;
  while (s < gpus.size()) {
    if (gpus[s].empty()) {
      ++s;
      continue;
    }
    size_t end = s + 1;
    while (end < gpus.size() && !gpus[end].empty() &&
           std::find(gpus.begin() + static_cast<std::ptrdiff_t>(s),
                     gpus.begin() + static_cast<std::ptrdiff_t>(end), gpus[end]) ==
               gpus.begin() + static_cast<std::ptrdiff_t>(end)) {
      ++end;
    }
    if (end - s >= 2) {
      for (size_t i = s; i < end; ++i) {
        places[i] = {static_cast<uint32_t>(i - s), static_cast<uint32_t>(end - s),
                     static_cast<uint32_t>(s)};
      }
    }
    s = end;
  }
  return places;
}

}  // namespace chord::coordinator
