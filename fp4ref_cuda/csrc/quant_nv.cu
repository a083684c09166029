// Launchers of the NVFP4 quantizer (optionally fused with the block Hadamard rotation).
#include "kernels.cuh"

namespace fp4ref {

int launch_quant_nv(int dtype, int qb, int hb, const void* x, int64_t n, const QuantParams& p, void* s) {
  CudaExec ex(s);
  return do_quant_family<true>(ex, dtype, NV_TE, qb, hb, x, n, p);
}

}  // namespace fp4ref
