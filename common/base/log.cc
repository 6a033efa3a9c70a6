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

void Write(Level level, std::string_view message) {
  if (g_json) {
    // The pattern supplies the braces; the message becomes one escaped field.
    std::string field = "\"msg\":" + nlohmann::json(std::string(message)).dump(
                                         -1, ' ', false, nlohmann::json::error_handler_t::replace);
    Logger().log(ToSpdlog(level), "{}", field);
  } else {
    Logger().log(ToSpdlog(level), "{}", message);
  }
}

}  // namespace chord::log
