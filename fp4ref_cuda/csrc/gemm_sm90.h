// Raw-pointer launchers of the sm_90 FP4 GEMM kernels (gemm_sm90.cu). No torch headers here: the
// bindings (gemm_bindings.cpp) check every argument before calling these.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "ids.h"

namespace fp4ref_gemm {

// Output dtypes are fp4ref::DType ids (ids.h).

// out[r, k] = bf16(e2m1(data[r, k]) * scale[r, k / block_size]) for a row-major (rows, K) operand:
// data packed two per byte (element 2i in the low nibble), scales one byte per block, E4M3 when
// `e4m3`, else E8M0. Exact (see docs/cuda_gemm.md). K % 16 == 0, block_size % 16 == 0.
cudaError_t dequant_fp4_bf16(const uint8_t* data, const uint8_t* scales, void* out, int64_t rows,
                             int64_t K, int block_size, bool e4m3, cudaStream_t stream);

// Weight-only small-batch GEMM, dequantizing W in registers:
// out[m, n] = fp32(Σ_k x[m, k] · w[n, k]) · alpha / divisor, for M <= 16 rows of bf16 x (row-major, ld K),
// W (N, K) packed FP4 with per-block scales as above. `alpha` is a device float or null (1).
// `pipelined` asks for the cp.async pipeline kernel (same bits; taken where K % 32 == 0 and x, w are
// 16-byte aligned, else the register kernel runs).
cudaError_t fp4_linear_small(const void* x, int M, const uint8_t* w, const uint8_t* w_scales, int64_t N,
                             int64_t K, int block_size, bool e4m3, const float* alpha, float divisor,
                             void* out, int out_kind, bool pipelined, cudaStream_t stream);

}  // namespace fp4ref_gemm
