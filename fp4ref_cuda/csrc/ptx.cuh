// Every inline PTX instruction of fp4ref_cuda, one wrapper each (in the style of Transformer Engine's ptx.cuh).
//
// Why a wrapper per instruction: each asm() states the architecture it needs in one place, so a build for a
// target without the instruction falls back (where a fallback exists) or fails to compile, instead of
// emitting PTX that the driver's JIT rejects at load time. Each names its section of the PTX ISA manual
// (PTX ISA 9.0, CUDA 13.0) and that section's anchor in
// docs.nvidia.com/cuda/parallel-thread-execution/index.html. The wrappers the CPU build runs (prmt,
// max.NaN) emulate the instruction on the host; the others exist only in device code.
#pragma once
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FP4_PTX_HD __host__ __device__ __forceinline__
#define FP4_PTX_D __device__ __forceinline__
#else
#define FP4_PTX_HD inline
#endif

namespace fp4ref::ptx {

// prmt.b32, default mode (PTX ISA, Data Movement and Conversion Instructions: prmt,
// #data-movement-and-conversion-instructions-prmt; all architectures): output byte i is byte (s >> 4i) & 7
// of the 8-byte value (b:a), or, where bit 3 of that selector nibble is set, 0xFF or 0x00 by the sign
// (msb) of that byte. Explicit because __byte_perm documents only the 3-bit selectors; the host emulates it.
FP4_PTX_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(s));
  return r;
#else
  const uint64_t ab = ((uint64_t)b << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t sel = (s >> (4 * i)) & 0xFu;
    uint32_t byte = (uint32_t)(ab >> (8 * (sel & 7u))) & 0xFFu;
    if (sel & 8u) byte = (byte & 0x80u) ? 0xFFu : 0x00u;
    r |= byte << (8 * i);
  }
  return r;
#endif
}

// max.NaN.f32 (PTX ISA, Floating Point Instructions: max, #floating-point-instructions-max; .NaN needs
// sm_80): max(a, b), NaN if either is NaN. Older targets and the host test for NaN first (the same result:
// a NaN's payload is not part of the contract).
FP4_PTX_HD float max_nan_f32(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return (a != a) ? a : ((b != b) ? b : fmaxf(a, b));
#endif
}

// cvt.rn.f16x2.e4m3x2 (PTX ISA, Data Movement and Conversion Instructions: cvt,
// #data-movement-and-conversion-instructions-cvt; an e4m3x2 source needs sm_89): the two E4M3 bytes of
// `two` (low byte -> low half) as f16x2 bits, exact (every E4M3 value is an f16; NaN stays NaN). Below sm_89
// (the compute_80 PTX) and on the host, to_f16(byte) gives each half: the exact decode, rounded to f16
// (exact too), which is what the instruction computes.
template <class ToF16>
FP4_PTX_HD uint32_t cvt_f16x2_e4m3x2(uint32_t two, ToF16 to_f16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  (void)to_f16;
  uint32_t h2;
  asm("{\n.reg .b16 t;\ncvt.u16.u32 t, %1;\ncvt.rn.f16x2.e4m3x2 %0, t;\n}" : "=r"(h2) : "r"(two));
  return h2;
#else
  return (uint32_t)to_f16(two & 0xFFu) | ((uint32_t)to_f16((two >> 8) & 0xFFu) << 16);
#endif
}

#if defined(__CUDACC__)

// Architectures below sm_80 have neither mma.sync for bf16 nor cp.async: the GEMM kernels that use them are
// built for sm_80 and later only (fp4ref_cuda/build_gemm.py), so a lower target is a build error, not PTX
// that fails at load time.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "fp4ref_cuda/csrc/ptx.cuh: the kernels need sm_80 or later (mma.sync bf16, cp.async)"
#endif

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, Warp Level Matrix Multiply-Accumulate
// Instructions: mma, #warp-level-matrix-instructions-mma; bf16 m16n8k16 needs sm_80):
// d += A (16x16, row) · B (16x8, col), float32 accumulation, fragments as the manual lays them out.
FP4_PTX_D void mma_m16n8k16_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// cp.async.cg.shared.global, 16 bytes (PTX ISA, Data Movement and Conversion Instructions: cp.async,
// #data-movement-and-conversion-instructions-cp-async; sm_80): copies 16 bytes from global to shared memory
// bypassing L1, or, where !full, writes 16 zero bytes (src-size 0 reads nothing).
FP4_PTX_D void cp_async_cg16(void* smem_dst, const void* gmem_src, bool full) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem_src), "r"(full ? 16 : 0));
}

// cp.async.commit_group (PTX ISA, Data Movement and Conversion Instructions: cp.async.commit_group,
// #data-movement-and-conversion-instructions-cp-async-commit-group; sm_80): closes this thread's group of
// pending cp.async.
FP4_PTX_D void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// cp.async.wait_group N (PTX ISA, Data Movement and Conversion Instructions: cp.async.wait_group,
// #data-movement-and-conversion-instructions-cp-async-wait-group; sm_80): waits until at most N of this
// thread's groups are pending; the completed copies are then visible to this thread.
template <int N>
FP4_PTX_D void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif  // __CUDACC__

}  // namespace fp4ref::ptx
