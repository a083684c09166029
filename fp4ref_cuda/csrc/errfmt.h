// Numbers and shapes reach error messages as strings built with std::to_string.
// Why: streaming an integer through std::ostream in this library instantiates std::num_put here; where the
// system libstdc++ differs from the one libtorch was built with (a manylinux wheel on a newer distribution),
// that crashed inside the throw (seen on an H200 machine: torch 2.11 wheel, Ubuntu g++ 13.3), turning a
// clear ValueError into a segmentation fault. Strings and const char* stream safely.
#pragma once
#include <c10/util/ArrayRef.h>

#include <string>

namespace fp4ref_fmt {
inline std::string n(long long v) { return std::to_string(v); }
inline std::string shape(c10::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace fp4ref_fmt
