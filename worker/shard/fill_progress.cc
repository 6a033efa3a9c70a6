#include "worker/shard/fill_progress.h"

#include <unistd.h>

#include <cstdio>

#include "common/base/log.h"

namespace chord {

FillProgress::FillProgress(std::string label)
    : label_(std::move(label)),
      terminal_(isatty(STDERR_FILENO) == 1),
      started_(std::chrono::steady_clock::now()) {}

void FillProgress::Update(int64_t done, int64_t total) {
  if (total <= 0) return;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  if (terminal_) {
    constexpr int kWidth = 30;
    const auto filled = static_cast<int>(kWidth * done / total);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld layers %.1fs", label_.c_str(),
                 std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(kWidth - filled), '.').c_str(),
                 static_cast<long long>(done), static_cast<long long>(total), seconds);
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
    return;
  }
  const int64_t tenth = 10 * done / total;
  if (tenth == last_tenth_ && done != total) return;
  last_tenth_ = tenth;
  log::Info("%s: %d/%d layers (%.1fs)", label_, done, total, seconds);
}

}  // namespace chord
