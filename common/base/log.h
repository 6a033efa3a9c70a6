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
// Whether lines of `level` are written (so that a caller can skip the work of
// a debug line).
bool Enabled(Level level);
// A line about one request: the id leads a text line ("request=ID message")
// and is a field of its own in a JSON line ("request_id"), so that one grep or
// one query finds the whole life of a request.
void WriteForRequest(Level level, std::string_view request_id, std::string_view message);

template <typename... Args>
void Debug(const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (!Enabled(Level::kDebug)) return;
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

template <typename... Args>
void RequestDebug(std::string_view request_id, const absl::FormatSpec<Args...>& format,
                  const Args&... args) {
  if (!Enabled(Level::kDebug)) return;
  WriteForRequest(Level::kDebug, request_id, absl::StrFormat(format, args...));
}
template <typename... Args>
void RequestInfo(std::string_view request_id, const absl::FormatSpec<Args...>& format,
                 const Args&... args) {
  WriteForRequest(Level::kInfo, request_id, absl::StrFormat(format, args...));
}
template <typename... Args>
void RequestWarn(std::string_view request_id, const absl::FormatSpec<Args...>& format,
                 const Args&... args) {
  WriteForRequest(Level::kWarn, request_id, absl::StrFormat(format, args...));
}

}  // namespace chord::log
