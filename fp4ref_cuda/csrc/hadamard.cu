// Launchers of the block Hadamard rotation (SPEC §7) and of the (rotated) finite amax for NVFP4.
#include "kernels.cuh"

namespace fp4ref {

int launch_hadamard(int dtype, const void* x, float* out, int64_t n, int hb, const float* signs, int64_t sign_len,
                    float rscale, void* s) {
  CudaExec ex(s);
  return do_hadamard(ex, dtype, x, out, n, hb, signs, sign_len, rscale);
}

int launch_finite_amax(int dtype, const void* x, int64_t n, int hb, const float* signs, int64_t sign_len,
                       float rscale, uint32_t* amax_bits, void* s) {
  CudaExec ex(s);
  return do_finite_amax(ex, dtype, x, n, hb, signs, sign_len, rscale, amax_bits);
}

}  // namespace fp4ref
