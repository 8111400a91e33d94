// Error handling for lattice: absl::Status at every host boundary.
//
// Abseil 20220623 (Debian 12) ships no status macros, so we define the two we use everywhere.
#ifndef LATTICE_RUNTIME_STATUS_H_
#define LATTICE_RUNTIME_STATUS_H_

#include <string>
#include <utility>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define LATTICE_STATUS_CONCAT_INNER_(a, b) a##b
#define LATTICE_STATUS_CONCAT_(a, b) LATTICE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define LATTICE_RETURN_IF_ERROR(expr)                   \
  do {                                                  \
    ::absl::Status lattice_status_ = (expr);            \
    if (!lattice_status_.ok()) return lattice_status_;  \
  } while (0)

// `LATTICE_ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value of an absl::StatusOr or
// returns its error from the enclosing function.
#define LATTICE_ASSIGN_OR_RETURN(lhs, expr)                                            \
  LATTICE_ASSIGN_OR_RETURN_IMPL_(LATTICE_STATUS_CONCAT_(lattice_statusor_, __LINE__), \
                                 lhs, expr)
#define LATTICE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

namespace lattice {

// Prefixes a status message with context (a file name, a rank, a config key) and keeps its code.
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace lattice

// Invariant checks: a failed CHECK is a lattice bug, never a user error, so it aborts.
#define LATTICE_CHECK(cond)                                                        \
  do {                                                                             \
    if (!(cond)) ::lattice::internal::CheckFailed(__FILE__, __LINE__, #cond, ""); \
  } while (0)
#define LATTICE_CHECK_MSG(cond, msg)                                                 \
  do {                                                                               \
    if (!(cond)) ::lattice::internal::CheckFailed(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)

namespace lattice::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond, absl::string_view msg);
}  // namespace lattice::internal

#endif  // LATTICE_RUNTIME_STATUS_H_
