// Binding of fp4ref_cuda._gemm_sm120a: the CUTLASS part of gemm_bindings.cpp for sm120a.
#define FP4REF_GEMM_CUTLASS
#define FP4REF_CUTLASS_ARCH sm120a
#include "gemm_bindings.cpp"
