// Binding of fp4ref_cuda._gemm_sm100a: the CUTLASS part of gemm_bindings.cpp for sm100a.
#define FP4REF_GEMM_CUTLASS
#define FP4REF_CUTLASS_ARCH sm100a
#include "gemm_bindings.cpp"
