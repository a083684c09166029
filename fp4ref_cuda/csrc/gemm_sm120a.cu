// Block-scaled FP4 GEMM for sm_120a (RTX 5090 / RTX PRO 6000) through CUTLASS's OpClassBlockScaledTensorOp
// collectives: warp-level mma.sync kind::mxf4nvf4.block_scale (SASS OMMA.SF.16864), scales in registers.
// Compiled only for sm_120a (GeForce Blackwell has no clusters: 1x1x1). Two instantiations (NVFP4, MXFP4),
// 128x128x128 tiles. Compiled and SASS-checked (scripts/check_sass.sh) but not yet run on hardware.
#define FP4REF_CUTLASS_ARCH sm120a
#define FP4REF_ARCH_TAG cutlass::arch::Sm120
#define FP4REF_TILE cute::Shape<cute::_128, cute::_128, cute::_128>
#define FP4REF_CLUSTER cute::Shape<cute::_1, cute::_1, cute::_1>
#include "gemm_cutlass_impl.cuh"
