// Argument checks every backend makes on the views an op receives (kernels/backend.h: "a backend
// checks that each argument holds at least what the op reads or writes"): a bad view stops the
// process with a message naming the op and the argument, as LATTICE_CHECK does.
#ifndef LATTICE_KERNELS_BACKEND_CHECKS_H_
#define LATTICE_KERNELS_BACKEND_CHECKS_H_

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "runtime/status.h"

namespace lattice::kernels {

[[noreturn]] inline void BadView(const char* op, const char* arg, const void* data,
                                 DType got_dtype, int64_t got_numel, DType dtype, int64_t numel) {
  ::lattice::internal::CheckFailed(
      __FILE__, __LINE__, "view holds the op's argument",
      absl::StrCat("backend op ", op, ": argument ", arg,
                   data == nullptr ? " is absent" : "", " (", DTypeName(got_dtype), ", ",
                   got_numel, " elements) must be ", DTypeName(dtype), " with at least ", numel,
                   " elements"));
}

// A required argument: present, of the dtype the kernels compute in, and holding at least the
// elements the op touches. (Inline so that the steady-state check is three compares.)
template <typename V>
inline void Need(const V& v, int64_t numel, const char* op, const char* arg,
                 DType dtype = DType::kF32) {
  if ((v.data == nullptr && numel > 0) || v.dtype != dtype || v.numel < numel) {
    BadView(op, arg, v.data, v.dtype, v.numel, dtype, numel);
  }
}
// An optional argument: absent, or as Need.
template <typename V>
inline void Opt(const V& v, int64_t numel, const char* op, const char* arg,
                DType dtype = DType::kF32) {
  if (v.data != nullptr) Need(v, numel, op, arg, dtype);
}

}  // namespace lattice::kernels

#endif  // LATTICE_KERNELS_BACKEND_CHECKS_H_
