// Block-scaled FP4 GEMM for sm_100a (B200/GB200) through CUTLASS's OpClassBlockScaledTensorOp collectives:
// tcgen05.mma kind::mxf4nvf4 / kind::mxf4 (SASS UTCOMMA), operands by TMA, accumulator and scales in TMEM.
// Compiled only for sm_100a. Two instantiations (NVFP4, MXFP4), 1-SM 128x128x256 tiles, no cluster.
// Compiled and SASS-checked (scripts/check_sass.sh) but not yet run on hardware.
#define FP4REF_CUTLASS_ARCH sm100a
#define FP4REF_ARCH_TAG cutlass::arch::Sm100
#define FP4REF_TILE cute::Shape<cute::_128, cute::_128, cute::_256>
#define FP4REF_CLUSTER cute::Shape<cute::_1, cute::_1, cute::_1>
#include "gemm_cutlass_impl.cuh"
