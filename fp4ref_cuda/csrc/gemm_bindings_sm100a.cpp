// Binding of fp4ref_cuda._gemm_sm100a: the CUTLASS FP4 GEMM of gemm_sm100a.cu as
// torch.ops.fp4ref_cuda.gemm_fp4_cutlass_sm100a (the binding body is gemm_bindings_cutlass.h).
#include "gemm_bindings_cutlass.h"

namespace {

constexpr fp4ref_gemm::CutlassFp4Api kApi{"sm100a", &fp4ref_gemm::sm100a::cutlass_fp4_unsupported,
                                          &fp4ref_gemm::sm100a::cutlass_fp4_workspace,
                                          &fp4ref_gemm::sm100a::cutlass_fp4_gemm};

at::Tensor gemm(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b, const at::Tensor& b_scales,
                bool nvfp4, const std::optional<at::Tensor>& alpha) {
  return fp4ref_bind::cutlass_gemm(kApi, a, a_scales, b, b_scales, nvfp4, alpha);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fp4ref_cuda, m) { m.def(fp4ref_bind::cutlass_op_schema(kApi).c_str()); }

TORCH_LIBRARY_IMPL(fp4ref_cuda, CUDA, m) { m.impl(fp4ref_bind::cutlass_op_name(kApi).c_str(), &gemm); }

extern "C" PyObject* PyInit__gemm_sm100a(void) { return fp4ref_bind::make_module("_gemm_sm100a"); }
