// Launchers of the MX quantizers (optionally fused with the block Hadamard rotation) and all dequantizers.
#include "kernels.cuh"

namespace fp4ref {

int launch_quant_nv(int dtype, int qb, int hb, const void* x, int64_t n, const QuantParams& p, void* s);

int launch_quant(int dtype, int kind, int qb, int hb, const void* x, int64_t n, const QuantParams& p, void* s) {
  if (kind == NV_TE) return launch_quant_nv(dtype, qb, hb, x, n, p, s);
  CudaExec ex(s);
  return do_quant_family<false>(ex, dtype, kind, qb, hb, x, n, p);
}

int launch_dequant(int out_dtype, int kind, int qb, int64_t n, const DequantParams& p, void* out, void* s) {
  CudaExec ex(s);
  return do_dequant(ex, out_dtype, kind, qb, n, p, out);
}

}  // namespace fp4ref
