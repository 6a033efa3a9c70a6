// systemd's readiness protocol (sd_notify(3)) without libsystemd: when a unit
// of Type=notify starts a chord process, systemd puts a datagram socket's path
// in NOTIFY_SOCKET; the process sends "READY=1" there once it serves and
// "STOPPING=1" when it begins to stop. Outside systemd (no NOTIFY_SOCKET)
// every call does nothing.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace chord {

// Sends `state` (e.g. "READY=1") to $NOTIFY_SOCKET: a filesystem path, or an
// abstract socket name written with a leading '@'. OK without NOTIFY_SOCKET;
// UNAVAILABLE when the socket is named but cannot be reached (a caller logs
// it and goes on: readiness is advice to the service manager).
absl::Status NotifySystemd(std::string_view state);
// The same, logging a failure as a warning: what the processes call.
void NotifySystemdOrWarn(std::string_view state);

}  // namespace chord
