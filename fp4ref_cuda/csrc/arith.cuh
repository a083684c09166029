// Per-element and per-block arithmetic of fp4ref, the only C++ copy of the numerics (SPEC §2-§7).
//
// Every function is __host__ __device__: the CUDA kernels include this file, and so does a CPU build
// (arith_cpu.cpp, compiled with -ffp-contract=off) that tests it against the Python reference on every
// bf16/fp16 pattern. Function names mirror fp4ref/codecs.py, mx.py, nvfp4.py and hadamard.py.
// Float arithmetic goes through fmul/fadd/fsub/fdiv: one IEEE binary32 operation each, round to nearest
// even, never contracted into an FMA (on device the __f*_rn intrinsics guarantee it).
#pragma once
#include <stdint.h>

#include "ids.h"
#include "ptx.cuh"

#if defined(__CUDACC__)
#define FP4_HD __host__ __device__ __forceinline__
#define FP4_UNROLL _Pragma("unroll")
#else
#define FP4_HD inline
#define FP4_UNROLL
#include <string.h>
#endif
#include <math.h>

namespace fp4ref {

// ---- float32 bits and IEEE operations ----------------------------------------------------------------
FP4_HD uint32_t f2u(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
#endif
}

FP4_HD float u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, 4);
  return x;
#endif
}

#ifdef __CUDA_ARCH__
FP4_HD float fmul(float a, float b) { return __fmul_rn(a, b); }
FP4_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
FP4_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
FP4_HD float fdiv(float a, float b) { return __fdiv_rn(a, b); }
// Fused multiply-add: a * b + c with one rounding (the product is exact inside).
FP4_HD float ffma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
#else
FP4_HD float fmul(float a, float b) { return a * b; }
FP4_HD float fadd(float a, float b) { return a + b; }
FP4_HD float fsub(float a, float b) { return a - b; }
FP4_HD float fdiv(float a, float b) { return a / b; }
FP4_HD float ffma(float a, float b, float c) { return fmaf(a, b, c); }
#endif

constexpr uint32_t F32_INF = 0x7F800000u;
constexpr uint32_t F32_QNAN = 0x7FC00000u;  // the NaN the reference's decode tables hold
constexpr uint32_t F32_MAX = 0x7F7FFFFFu;
constexpr uint32_t F32_ONE_SIXTH = 0x3E2AAAABu;  // fp32(1/6)
constexpr uint32_t ENCODE_ERROR = 0x100u;  // not a byte: "saturate=False cannot represent this value"

// ---- formats (fp4ref/formats.py; the ids are in ids.h) --------------------------------------------------

struct Fmt {
  int ebits, mbits, bias, max_code, nan_code, inf_code, emax;  // nan_code/inf_code -1: none
  float max_finite;
};

FP4_HD Fmt make_fmt(int id) {
  switch (id) {
    case E2M1: return Fmt{2, 1, 1, 0x7, -1, -1, 2, 6.0f};
    case E2M3: return Fmt{2, 3, 1, 0x1F, -1, -1, 2, 7.5f};
    case E3M2: return Fmt{3, 2, 3, 0x1F, -1, -1, 4, 28.0f};
    case E4M3: return Fmt{4, 3, 7, 0x7E, 0x7F, -1, 8, 448.0f};
    default: return Fmt{5, 2, 15, 0x7B, 0x7F, 0x7C, 15, 57344.0f};  // E5M2
  }
}

// ---- codecs (fp4ref/codecs.py) -------------------------------------------------------------------------
// Code index of |x| given its float32 bits a (not NaN); > max_code means overflow. RNE by bit arithmetic:
// below the format's smallest normal the grid is uniform (step 2^(1-bias-mbits)), so scale (exactly) and
// round to an integer with the 2^23 trick; above it, round the float32 mantissa to mbits bits, ties to
// even, letting the carry run into the exponent. Code order is magnitude order, so this equals the
// reference's threshold counting, ties included.
FP4_HD uint32_t magnitude_code(uint32_t a, const Fmt& f) {
  const uint32_t min_normal = (uint32_t)(128 - f.bias) << 23;  // 2^(1 - bias)
  if (a < min_normal) {
    const float up = u2f((uint32_t)(f.mbits + f.bias - 1 + 127) << 23);  // 2^(mbits - (1 - bias))
    return f2u(fadd(fmul(u2f(a), up), 8388608.0f)) - 0x4B000000u;
  }
  const int sh = 23 - f.mbits;
  const uint32_t r = a + ((1u << (sh - 1)) - 1u) + ((a >> sh) & 1u);
  return (r >> sh) - ((uint32_t)(127 - f.bias) << f.mbits);
}

// encode(x, fmt, saturate): one sign-magnitude code, or ENCODE_ERROR where saturate=False has no answer.
FP4_HD uint32_t encode(float x, const Fmt& f, bool saturate) {
  const uint32_t u = f2u(x);
  const uint32_t a = u & 0x7FFFFFFFu;
  const uint32_t sign = (u >> 31) << (f.ebits + f.mbits);
  if (a > F32_INF) {  // NaN
    if (f.nan_code >= 0) return (uint32_t)f.nan_code;  // 0x7F whatever the sign
    return saturate ? (uint32_t)f.max_code : ENCODE_ERROR;
  }
  uint32_t code = magnitude_code(a, f);
  if (code > (uint32_t)f.max_code) {
    if (saturate) return (uint32_t)f.max_code | sign;
    if (f.inf_code >= 0) return (uint32_t)f.inf_code | sign;  // e5m2: IEEE overflow to ±Inf
    if (f.nan_code >= 0) return (uint32_t)f.nan_code;         // e4m3: 0x7F, sign dropped
    return ENCODE_ERROR;
  }
  return code | sign;
}

// encode_e2m1 with saturate=True, for the quantizers' finite blocks (NaN gives ±max): the hot path, so
// mostly float operations (Hopper issues half as many integer as float operations per clock). With
// a = min(|y|, 6) and p = 2^max(E, 0) (E: a's exponent), c = 1.5 * 2^22 * p has a unit in the last place
// equal to the E2M1 step at a's binade, so fp32(a + c) rounds a to the grid, ties to even; the step count
// k = bits(a + c) - bits(c), and code = k + 2 * max(E, 0).
FP4_HD uint32_t encode_e2m1_sat(float y) {
  const float a = fminf(fabsf(y), 6.0f);
  const uint32_t p = f2u(fmaxf(a, 1.0f)) & 0x7F800000u;
  const float c = fmul(u2f(p), 6291456.0f);
  const uint32_t code = f2u(fadd(a, c)) - f2u(c) + ((p >> 22) - 254u);
  return code | ((f2u(y) >> 28) & 8u);
}

// The E2M1 magnitude code of min(|y|, 6) (RNE), returned as code << 22, in float operations (the GPU issues
// half as many integer operations per clock). With a = min(|y|, 6) and p = 2^max(E, 0) as above (one mask
// of max(a, 1)'s bits), s = fp32(a * 2^-22 + p) (one fused multiply-add, a * 2^-22 exact inside) stays in
// p's binade and so rounds a * 2^-22 to p's unit in the last place p * 2^-23, i.e. a to the E2M1 step p / 2
// with ties to even; s - p = round(a) * 2^-22 exactly, and round(a) * 2^-126 is exact with the bits code << 22, because
// float32 below 2^-125 has E2M1's shape (2^-127 is the subnormal 0.5, 2^-126 the smallest normal 1, then one
// mantissa bit per binade). NaN gives 7 << 22.
FP4_HD uint32_t e2m1_magnitude_bits22(float y) {
  const float a = fminf(fabsf(y), 6.0f);
  const float p = u2f(f2u(fmaxf(a, 1.0f)) & 0x7F800000u);
  const float s = ffma(a, u2f(0x34800000u), p);  // 2^-22
  return f2u(fmul(fsub(s, p), u2f(0x0B800000u)));  // 2^-104
}

// encode_e4m3 with saturate=True of z >= 0 or +Inf (not NaN): the NVFP4 block scale. The same rounding
// by addition as encode_e2m1_sat with 3 mantissa bits: a = min(z, 448), p = 2^max(E, -6) (E: a's exponent;
// below 2^-6 the subnormal step 2^-9), c = 1.5 * 2^20 * p, k = bits(a + c) - bits(c) = round(a / step),
// code = k + 8 * (E + 6). Clamping to 448 first gives saturate's answer for (448, Inf].
FP4_HD uint32_t encode_e4m3_sat_nonneg(float z) {
  const float a = fminf(z, 448.0f);
  const uint32_t p = f2u(fmaxf(a, 0.015625f)) & 0x7F800000u;
  const float c = fmul(u2f(p), 1572864.0f);
  return f2u(fadd(a, c)) - f2u(c) + ((p >> 20) - 968u);
}

// 2 * decode_e2m1(code), sign included: the doubled magnitudes {0,1,2,3,4,6,8,12} are nibbles of one
// constant, turned into a float exactly by the 2^23 trick. Dequantizers multiply by scale / 2 (exact).
FP4_HD float decode_e2m1_x2(uint32_t code) {
  const uint32_t m2 = (0xC8643210u >> ((code & 7u) * 4u)) & 0xFu;
  const float v = fsub(u2f(m2 | 0x4B000000u), 8388608.0f);
  return u2f(f2u(v) | ((code & 8u) << 28));
}

// max(a, b) that returns NaN if either is NaN (max.NaN.f32), for block amax: NaN or Inf flags the block.
FP4_HD float fmax_nan(float a, float b) { return ptx::max_nan_f32(a, b); }

// encode_e8m0: e + (m >= 2^22 if e > 0 else m > 2^22) from the float32 bits (SPEC §2).
FP4_HD uint32_t encode_e8m0(float x, bool saturate) {
  const uint32_t b = f2u(x);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > F32_INF) return 0xFF;
  if (a == 0) return saturate ? 0x00 : 0xFF;
  if (b >> 31) return 0xFF;
  const uint32_t e = b >> 23, m = b & 0x7FFFFF;
  const uint32_t code = e + (e > 0 ? (m >= 0x400000u) : (m > 0x400000u));
  return code >= 255 ? (saturate ? 0xFE : 0xFF) : code;
}

// decode(code, fmt): the exact float32 value; NaN codes give 0x7FC00000.
FP4_HD float decode(uint32_t code, const Fmt& f) {
  const int nb = f.ebits + f.mbits;
  const uint32_t mag = code & ((1u << nb) - 1u);
  const uint32_t sign = ((code >> nb) & 1u) << 31;
  if (f.nan_code >= 0 && (f.inf_code >= 0 ? mag > (uint32_t)f.inf_code : mag == (uint32_t)f.nan_code))
    return u2f(F32_QNAN);
  if (f.inf_code >= 0 && mag == (uint32_t)f.inf_code) return u2f(sign | F32_INF);
  const uint32_t e = mag >> f.mbits, m = mag & ((1u << f.mbits) - 1u);
  if (e == 0) {  // subnormal: m * 2^(1 - bias - mbits), exact
    const float q = u2f((uint32_t)(127 + 1 - f.bias - f.mbits) << 23);
    return u2f(f2u(fmul((float)m, q)) | sign);
  }
  return u2f(sign | ((mag << (23 - f.mbits)) + ((uint32_t)(127 - f.bias) << 23)));  // (e - bias + 127, m)
}

FP4_HD float decode_e8m0(uint32_t code) {
  if (code == 0xFF) return u2f(F32_QNAN);
  return u2f(code == 0 ? 0x00400000u : code << 23);  // 0x00: the float32 subnormal 2^-127
}

FP4_HD float decode_e2m1(uint32_t code) { return decode(code, make_fmt(E2M1)); }
FP4_HD float decode_e4m3(uint32_t code) { return decode(code, make_fmt(E4M3)); }

// The block scale of an FP4 operand: E4M3 (NVFP4) or E8M0 (MXFP4), exact.
FP4_HD float decode_block_scale(uint32_t byte, bool e4m3) { return e4m3 ? decode_e4m3(byte) : decode_e8m0(byte); }

// e2m1(code) * scale, scale = decode_block_scale(byte, e4m3): one IEEE product, exact wherever finite (at
// most 2 + 4 significant bits, magnitudes 2^-128 up to 1.5 * 2^129), so also a bf16 number. The FP4 GEMM's
// dequantized element, and NVFP4's before the global scale.
FP4_HD float fp4_element(uint32_t code, float scale) { return fmul(decode_e2m1(code), scale); }

// ---- 16-bit float conversions (exact to float32; float32 -> 16 bit RNE as torch casts) ---------------
FP4_HD float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

FP4_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
  if (e == 31) return u2f(sign | F32_INF | (m << 13));
  if (e == 0) return u2f(sign | f2u(fmul((float)m, u2f(0x33800000u))));  // m * 2^-24, exact
  return u2f(sign | ((e + 112) << 23) | (m << 13));
}

// Host versions follow torch's CPU casts (NaN -> 0x7FC0 / sign|0x7E00); device code uses the
// intrinsics torch's own CUDA casts use, so each backend matches the reference on its own device.
FP4_HD uint16_t f32_to_bf16(float x) {
#ifdef __CUDA_ARCH__
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#else
  const uint32_t u = f2u(x);
  if ((u & 0x7FFFFFFFu) > F32_INF) return 0x7FC0;
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
#endif
}

FP4_HD uint16_t f32_to_f16(float x) {
#ifdef __CUDA_ARCH__
  return __half_as_ushort(__float2half_rn(x));
#else
  const uint32_t u = f2u(x);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > F32_INF) return sign | 0x7E00;
  if (a < 0x38800000u)  // below 2^-14: the fp16 subnormal grid, step 2^-24
    return sign | (uint16_t)(f2u(fadd(fmul(u2f(a), 16777216.0f), 8388608.0f)) - 0x4B000000u);
  const uint32_t r = ((a + 0xFFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  return sign | (uint16_t)(r > 0x7C00u ? 0x7C00u : r);
#endif
}

// ---- MX block scales (fp4ref/mx.py; the ScaleMode ids are in ids.h) ------------------------------------

// RCEIL's X, the smallest X with 2^X >= fp32(amax / max_elem), by its definition: one IEEE division.
FP4_HD int rceil_exponent_by_division(uint32_t amax_bits, const Fmt& f) {
  const uint32_t d = f2u(fdiv(u2f(amax_bits), f.max_finite));
  const uint32_t de = d >> 23, dm = d & 0x7FFFFF;
  return de > 0 ? (int)de - 127 + (dm != 0) : -127 + (dm > 0x400000u);
}

// The same X without the division where the quotient is normal (amax >= max_elem * 2^-125): fp32(a / M) <= 2^X
// exactly when a <= M * 2^X (the reals within half an ulp above 2^X round down to it, and no float lies in
// (M 2^X, M 2^X (1 + 2^-24)]), so X = e(a) - e(M) + (mantissa(a) > mantissa(M)). Tiny amax divides.
FP4_HD int rceil_exponent(uint32_t amax_bits, const Fmt& f) {
  const uint32_t mb = f2u(f.max_finite);
  if (amax_bits < mb - (125u << 23)) return rceil_exponent_by_division(amax_bits, f);
  return (int)(amax_bits >> 23) - (int)(mb >> 23) + ((amax_bits & 0x7FFFFFu) > (mb & 0x7FFFFFu));
}

// scale_exponent: unclamped X from the bits of a finite amax (E = field - 127, so subnormals -127).
FP4_HD int scale_exponent(uint32_t amax_bits, const Fmt& f, int mode) {
  const int e = (int)(amax_bits >> 23) - 127;
  const uint32_t m = amax_bits & 0x7FFFFF;
  switch (mode) {
    case FLOOR: return e - f.emax;
    case CEIL: return e + (m != 0) - f.emax;
    case EVEN: return (int)(((amax_bits + (1u << (22 - f.mbits))) >> 23) & 0xFF) - 127 - f.emax;  // half-up at the element precision
    case STRETCH: return e;
    default: return rceil_exponent(amax_bits, f);
  }
}

// scale_bytes: clamp(X, -127, 127) + 127; 0 for amax == 0; 0xFF for a NaN/Inf amax.
FP4_HD uint32_t scale_byte(uint32_t amax_bits, const Fmt& f, int mode) {
  if (amax_bits >= F32_INF) return 0xFF;
  if (amax_bits == 0) return 0;
  int x = scale_exponent(amax_bits, f, mode);
  x = x < -127 ? -127 : (x > 127 ? 127 : x);
  return (uint32_t)(x + 127);
}

// inverse_scale: exact float32 2^-(byte-127); byte 254 gives the subnormal 2^-127.
FP4_HD float inverse_scale(uint32_t byte) {
  const int field = 254 - (int)byte;
  return u2f(field > 0 ? (uint32_t)field << 23 : 0x00400000u);
}

// One MX element code: encode(|x| * 2^-X (then * 3 for stretch), saturate) with x's sign.
FP4_HD uint32_t mx_element_code(float x, float inv_scale, const Fmt& f, bool stretch) {
  const uint32_t u = f2u(x);
  float a = fmul(u2f(u & 0x7FFFFFFFu), inv_scale);
  if (stretch) a = fmul(a, 3.0f);
  uint32_t code = magnitude_code(f2u(a), f);
  code = code > (uint32_t)f.max_code ? (uint32_t)f.max_code : code;
  return code | ((u >> 31) << (f.ebits + f.mbits));
}

// stretch dequantize: decode * 2^X / 3 rounded once to float32: the product is exact in float64, the
// float64 quotient is rounded, then the float32 result (k / 3 never lies on a float32 midpoint).
FP4_HD float stretch_dequant(float v, float scale) {
#ifdef __CUDA_ARCH__
  return __double2float_rn(__ddiv_rn(__dmul_rn((double)v, (double)scale), 3.0));
#else
  return (float)(((double)v * (double)scale) / 3.0);
#endif
}

// dequantize_mx: decode(code) * 2^(byte-127) in float32 (stretch: stretch_dequant).
// (e2m1 tiles use decode_e2m1_x2(code) * (2^(byte-127) / 2): the same exact product, then one rounding.)
FP4_HD float mx_dequant(uint32_t code, uint32_t byte, const Fmt& f, bool stretch) {
  return stretch ? stretch_dequant(decode(code, f), decode_e8m0(byte)) : fmul(decode(code, f), decode_e8m0(byte));
}

// ---- NVFP4 recipe "te" (fp4ref/nvfp4.py) ---------------------------------------------------------------
// te_encode_scale: S_enc = fp32(2688 / A) clamped to FLT_MAX; 1 where A == 0 or S_enc == 0.
FP4_HD float te_encode_scale(float amax) {
  float s = fdiv(2688.0f, amax);
  if (s > u2f(F32_MAX)) s = u2f(F32_MAX);
  return (amax == 0.0f || s == 0.0f) ? 1.0f : s;
}

// te_block_scale: s_b = e4m3_satfinite(fp32(block_amax * fp32(S_enc * fp32(1/6)))).
// block_amax is a finite |x| (NaN/Inf blocks take scale 0x7F before this), so the product is >= 0 or +Inf.
FP4_HD uint32_t te_block_scale(float bamax, float s_enc) {
  return encode_e4m3_sat_nonneg(fmul(bamax, fmul(s_enc, u2f(F32_ONE_SIXTH))));
}

// te_element_scale: enc = min(fp32(1 / fp32(decode(s_b) * S_dec)), FLT_MAX) (a NaN stays NaN, as clamp).
FP4_HD float te_element_scale(uint32_t s_b, float s_dec) {
  const float r = fdiv(1.0f, fmul(decode_e4m3(s_b), s_dec));
  return r > u2f(F32_MAX) ? u2f(F32_MAX) : r;
}

// dequantize_nvfp4: fp32(fp32(e2m1 * e4m3) * global_scale).
FP4_HD float nv_dequant(uint32_t code, uint32_t s_b, float global_scale) {
  return fmul(fp4_element(code, decode_e4m3(s_b)), global_scale);
}

// ---- block Hadamard (fp4ref/hadamard.py) ---------------------------------------------------------------
// _butterfly: stages h = 1, 2, ..., HB/2 on every HB-aligned group of v[0..N): (a, b) -> (a + b, a - b).
template <int N, int HB>
FP4_HD void butterfly(float* v) {
  FP4_UNROLL
  for (int h = 1; h < HB; h *= 2) {
    FP4_UNROLL
    for (int i = 0; i < N; ++i) {
      if ((i & h) == 0) {
        const float a = v[i], b = v[i + h];
        v[i] = fadd(a, b);
        v[i + h] = fsub(a, b);
      }
    }
  }
}

}  // namespace fp4ref
