// chord's one logging facade. Library code logs through these functions only
// (never printf); main() picks the level and the format (text or JSON lines).
// Thread-safe: spdlog's sinks serialize writes. Everything goes to stderr so
// that stdout stays free for a command's output (e.g. `chord generate --json`).
#pragma once

#include <string_view>

#include "absl/strings/str_format.h"

namespace chord::log {

enum class Level { kDebug, kInfo, kWarn, kError };

// Configures the process-wide sink. Called once from main().
void Init(Level level, bool json);
bool ParseLevel(std::string_view text, Level* level);

void Write(Level level, std::string_view message);

template <typename... Args>
void Debug(const absl::FormatSpec<Args...>& format, const Args&... args) {
  Write(Level::kDebug, absl::StrFormat(format, args...));
}
template <typename... Args>
void Info(const absl::FormatSpec<Args...>& format, const Args&... args) {
  Write(Level::kInfo, absl::StrFormat(format, args...));
}
template <typename... Args>
void Warn(const absl::FormatSpec<Args...>& format, const Args&... args) {
  Write(Level::kWarn, absl::StrFormat(format, args...));
}
template <typename... Args>
void Error(const absl::FormatSpec<Args...>& format, const Args&... args) {
  Write(Level::kError, absl::StrFormat(format, args...));
}

}  // namespace chord::log
