// Progress of a shard cache filling up: a bar redrawn in place on a terminal,
// plain log lines otherwise (about one per tenth of the work).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace chord {

class FillProgress {
 public:
  explicit FillProgress(std::string label);
  // `done` of `total` layers are in memory.
  void Update(int64_t done, int64_t total);

 private:
  std::string label_;
  bool terminal_;
  int64_t last_tenth_ = -1;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace chord
