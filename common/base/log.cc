#include "common/base/log.h"

#include <atomic>
#include <memory>
#include <string>

#include "nlohmann/json.hpp"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace chord::log {
namespace {

std::atomic<bool> g_json{false};

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto created = spdlog::stderr_color_mt("chord");
    created->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    created->set_level(spdlog::level::info);
    return created;
  }();
  return *logger;
}

spdlog::level::level_enum ToSpdlog(Level level) {
  switch (level) {
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarn: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void Init(Level level, bool json) {
  Logger().set_level(ToSpdlog(level));
  g_json = json;
  if (json) {
    Logger().set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%e","level":"%l",%v})");
  }
}

bool ParseLevel(std::string_view text, Level* level) {
  if (text == "debug") {
    *level = Level::kDebug;
  } else if (text == "info") {
    *level = Level::kInfo;
  } else if (text == "warn" || text == "warning") {
    *level = Level::kWarn;
  } else if (text == "error") {
    *level = Level::kError;
  } else {
    return false;
  }
  return true;
}

namespace {

// One JSON string, escaped; invalid UTF-8 (a peer's bytes) replaced, never thrown on.
std::string JsonString(std::string_view text) {
  return nlohmann::json(std::string(text)).dump(-1, ' ', false,
                                                nlohmann::json::error_handler_t::replace);
}

}  // namespace

bool Enabled(Level level) { return Logger().should_log(ToSpdlog(level)); }

void Write(Level level, std::string_view message) {
  if (!Logger().should_log(ToSpdlog(level))) return;
  if (g_json) {
    // The pattern supplies the braces; the message becomes one escaped field.
    Logger().log(ToSpdlog(level), "\"msg\":{}", JsonString(message));
  } else {
    Logger().log(ToSpdlog(level), "{}", message);
  }
}

void WriteForRequest(Level level, std::string_view request_id, std::string_view message) {
  if (!Logger().should_log(ToSpdlog(level))) return;
  if (g_json) {
    Logger().log(ToSpdlog(level), "\"request_id\":{},\"msg\":{}", JsonString(request_id),
                 JsonString(message));
  } else {
    Logger().log(ToSpdlog(level), "request={} {}", request_id, message);
  }
}

}  // namespace chord::log
