// Error handling for all of chord: absl::Status / absl::StatusOr values.
//
// Codes are chosen by how the caller should react (see ARCHITECTURE.md):
//   INVALID_ARGUMENT  reject the input        DATA_LOSS          corrupt file or frame
//   UNAVAILABLE       reconnect / reschedule  RESOURCE_EXHAUSTED back off
//   UNIMPLEMENTED     fall back               INTERNAL           our own bug
// Nothing that can fail at run time throws across a module boundary.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#define CHORD_STATUS_CONCAT_INNER(a, b) a##b
#define CHORD_STATUS_CONCAT(a, b) CHORD_STATUS_CONCAT_INNER(a, b)

// Returns from the current function when `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status chord_status_ = (expr);     \
    if (!chord_status_.ok()) return chord_status_; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MakeX()): unwraps an absl::StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(CHORD_STATUS_CONCAT(chord_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()

// CHECK is for chord's own invariants only, never for bytes from disk, network or users.
#define CHORD_CHECK(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) ::chord::internal::CheckFailed(__FILE__, __LINE__, #cond);            \
  } while (0)

namespace chord::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* condition);
}  // namespace chord::internal
