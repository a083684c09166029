// The sm_90 FP4 GEMM's dequantization of its weight operand (gemm_sm90.cu), as __host__ __device__ functions
// so that the CPU build (arith_cpu.cpp, tests/test_arith_cpu.py) runs exactly what the kernels call, on every
// E2M1 code x every E8M0 and E4M3 scale byte, against the reference's dequantizers.
//
// Every value here is exact: e2m1 · scale has at most 6 significant bits and lies in [2^-128, 1.5·2^129)
// (or overflows to Inf, or is NaN), so it is a bf16 number and each bf16 step below rounds nothing. On the
// host the bf16 operations are float32 operations (exact for these operands) followed by arith.cuh's RNE
// rounding to bf16; NaN keeps its position, not its payload, as on any two devices.
#pragma once
#include "arith.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fp4ref {

// (lo, hi) as bf16x2 bits, lo in the low half, each rounded to nearest even (cvt.rn.bf16x2.f32).
FP4_HD uint32_t bf16x2_pack(float lo, float hi) {
#ifdef __CUDA_ARCH__
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
#else
  return (uint32_t)f32_to_bf16(lo) | ((uint32_t)f32_to_bf16(hi) << 16);
#endif
}

// Halfwise bf16 product a · b, rounded once to bf16 (mul.rn.bf16x2).
FP4_HD uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  __nv_bfloat162 r = __hmul2_rn(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
#else
  const float lo = fmul(bf16_to_f32((uint16_t)a), bf16_to_f32((uint16_t)b));
  const float hi = fmul(bf16_to_f32((uint16_t)(a >> 16)), bf16_to_f32((uint16_t)(b >> 16)));
  return bf16x2_pack(lo, hi);
#endif
}

// ---- the large-M path: dequant_fp4_bf16 (packed E2M1 + scales -> bf16, then cuBLAS) --------------------
// Elements 2i and 2i + 1 of `word` (8 codes, code j in nibble j) times scale as bf16x2, i < 4: fp4_element
// (arith.cuh), rounded to bf16 (exact).
FP4_HD uint32_t dequant_pair_bf16x2(uint32_t word, int i, float scale) {
  return bf16x2_pack(fp4_element((word >> (8 * i)) & 0xFu, scale), fp4_element((word >> (8 * i + 4)) & 0xFu, scale));
}

// ---- the small-M path: W dequantized in registers for mma.sync --------------------------------------------
// Moving a nibble's sign to bit 15 and its three magnitude bits to bits 8..6 of a bf16 gives exactly
// e2m1 · 2^-126 (the code 0.5 lands on the bf16 subnormal 2^-127). Pair P of a 32-bit word of 8 nibbles
// holds nibbles (3-P, 7-P) in its (low, high) halves.
template <int P>
FP4_HD uint32_t fp4_pair_raw(uint32_t q) {
  constexpr uint32_t kSign = 0x80008000u, kMag = 0x01C001C0u;
  if constexpr (P == 0) return (q & kSign) | ((q >> 6) & kMag);
  if constexpr (P == 1) return ((q << 4) & kSign) | ((q >> 2) & kMag);
  if constexpr (P == 2) return ((q << 8) & kSign) | ((q << 2) & kMag);
  return ((q << 12) & kSign) | ((q << 6) & kMag);
}

// Pair P of q times the bf16x2 scale: (raw · 2^126) · scale, two exact bf16 products (one would overflow for
// scales above 2^2); with ONE_MUL, scale2 is already scale · 2^126 (e8m0_bf16x2_x2p126) and raw · scale2 is
// the same exact product.
template <int P, bool ONE_MUL = false>
FP4_HD uint32_t fp4_pair(uint32_t q, uint32_t scale2) {
  constexpr uint32_t kTwo126 = 0x7E807E80u;
  if constexpr (ONE_MUL) return bf16x2_mul(fp4_pair_raw<P>(q), scale2);
  return bf16x2_mul(bf16x2_mul(fp4_pair_raw<P>(q), kTwo126), scale2);
}

// The block scale of a scale byte as bf16x2 (s, s): decode_block_scale (arith.cuh), exact in bf16.
template <bool E4M3>
FP4_HD uint32_t scale_bf16x2(uint32_t byte) {
  const float f = decode_block_scale(byte, E4M3);
  return bf16x2_pack(f, f);
}

// decode_e8m0(byte) · 2^126 as bf16x2, for byte < 128 (scales below 2, where the product is finite):
// 2^(byte - 1), and byte 0 (2^-127 · 2^126) is 0.5. The one-multiply path's scale.
FP4_HD uint32_t e8m0_bf16x2_x2p126(uint32_t byte) {
  const float f = u2f(byte ? (byte + 126u) << 23 : 0x3F000000u);
  return bf16x2_pack(f, f);
}

// decode_e4m3 as f16 bits (exact): ptx::cvt_f16x2_e4m3x2's definition where the instruction is missing.
struct E4m3ToF16 {
  FP4_HD uint16_t operator()(uint32_t byte) const { return f32_to_f16(decode_e4m3(byte)); }
};

FP4_HD float f16_bits_to_f32(uint16_t h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  return f16_to_f32(h);
#endif
}

// Two E4M3 scale bytes (low byte: the first 16-wide half) to two bf16x2 (s, s) through the hardware
// e4m3x2 -> f16x2 conversion: E4M3 ⊂ f16 ⊂ float32 ⊃ bf16-exact, so every step is exact (NaN stays NaN).
FP4_HD void e4m3_pair_to_bf16x2(uint32_t two, uint32_t& s0, uint32_t& s1) {
  const uint32_t h2 = ptx::cvt_f16x2_e4m3x2(two, E4m3ToF16{});
  const float f0 = f16_bits_to_f32(static_cast<uint16_t>(h2 & 0xFFFFu));
  const float f1 = f16_bits_to_f32(static_cast<uint16_t>(h2 >> 16));
  s0 = bf16x2_pack(f0, f0);
  s1 = bf16x2_pack(f1, f1);
}

}  // namespace fp4ref
