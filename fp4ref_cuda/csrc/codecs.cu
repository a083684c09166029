// Launchers of the codecs and layouts (SPEC §2, §3).
#include "kernels.cuh"

namespace fp4ref {

int launch_encode(int dtype, const void* x, uint8_t* out, int64_t n, int fmt, bool saturate, uint32_t* err, void* s) {
  CudaExec ex(s);
  return do_encode(ex, dtype, x, out, n, fmt, saturate, err);
}

int launch_decode(const uint8_t* codes, float* out, int64_t n, int fmt, uint32_t* err, void* s) {
  CudaExec ex(s);
  return do_decode(ex, codes, out, n, fmt, err);
}

int launch_pack(const uint8_t* codes, uint8_t* out, int64_t n_out, uint32_t* err, void* s) {
  CudaExec ex(s);
  return do_pack(ex, codes, out, n_out, err);
}

int launch_unpack(const uint8_t* packed, uint8_t* out, int64_t n_in, void* s) {
  CudaExec ex(s);
  return do_unpack(ex, packed, out, n_in);
}

int launch_swizzle(const uint8_t* scales, uint8_t* out, int64_t rows, int64_t cols, void* s) {
  CudaExec ex(s);
  return do_swizzle(ex, scales, out, rows, cols);
}

int launch_unswizzle(const uint8_t* blocked, uint8_t* out, int64_t rows, int64_t cols, void* s) {
  CudaExec ex(s);
  return do_unswizzle(ex, blocked, out, rows, cols);
}

const char* error_string(int rc) {
  if (rc == ERR_UNSUPPORTED) return "no kernel for this combination of rotation and block size";
  return cudaGetErrorString(static_cast<cudaError_t>(rc));
}

}  // namespace fp4ref
