// Raw-pointer launchers of the CUTLASS block-scaled FP4 GEMMs (gemm_sm100a.cu, gemm_sm120a.cu).
// D (M, N) float32 row-major = alpha · A (M, K) · B (N, K)ᵀ, A and B packed E2M1 (two per byte, element 2i
// in the low nibble, K-major), block scales in the 128x4 swizzled layout (SPEC §3): E4M3 per 16 (NVFP4,
// `nvfp4` true) or E8M0 per 32 (MXFP4). `alpha` is a device float (may be null: 1).
// One namespace per arch, so that the two extension modules never share a symbol; each module defines (in
// its .cu, through gemm_cutlass_impl.cuh) and binds (gemm_bindings_<arch>.cpp) only its own.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

namespace fp4ref_gemm {

// One arch's launchers, as the bindings (gemm_bindings_cutlass.h) take them.
struct CutlassFp4Api {
  const char* arch;  // "sm100a" / "sm120a": the op is torch.ops.fp4ref_cuda.gemm_fp4_cutlass_<arch>
  // nullptr when (M, N, K) is supported (K % 256 == 0, N % 4 == 0), else a short reason.
  const char* (*unsupported)(int64_t M, int64_t N, int64_t K);
  size_t (*workspace)(int64_t M, int64_t N, int64_t K, bool nvfp4);
  // nullptr on success, else the CUTLASS status string.
  const char* (*gemm)(const void* a, const void* a_scales, const void* b, const void* b_scales, float* d, int64_t M,
                      int64_t N, int64_t K, bool nvfp4, const float* alpha, void* workspace, cudaStream_t stream);
};

namespace sm100a {
const char* cutlass_fp4_unsupported(int64_t M, int64_t N, int64_t K);
size_t cutlass_fp4_workspace(int64_t M, int64_t N, int64_t K, bool nvfp4);
const char* cutlass_fp4_gemm(const void* a, const void* a_scales, const void* b, const void* b_scales, float* d,
                             int64_t M, int64_t N, int64_t K, bool nvfp4, const float* alpha, void* workspace,
                             cudaStream_t stream);
}  // namespace sm100a

namespace sm120a {
const char* cutlass_fp4_unsupported(int64_t M, int64_t N, int64_t K);
size_t cutlass_fp4_workspace(int64_t M, int64_t N, int64_t K, bool nvfp4);
const char* cutlass_fp4_gemm(const void* a, const void* a_scales, const void* b, const void* b_scales, float* d,
                             int64_t M, int64_t N, int64_t K, bool nvfp4, const float* alpha, void* workspace,
                             cudaStream_t stream);
}  // namespace sm120a

}  // namespace fp4ref_gemm
