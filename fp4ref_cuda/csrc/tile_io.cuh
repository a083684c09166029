// Per-thread memory access of the tile functions: the element types, widening loads, narrowing conversions,
// vector copies, and the 32-bit index division. A *tile* is a whole number of blocks of consecutive elements
// of a flat, contiguous tensor (a row is a multiple of the block), so each tile is loaded with 16-byte vector
// loads when aligned; the CPU build (arith_cpu.cpp) runs the same functions with memcpy.
#pragma once
#include <type_traits>

#include "arith.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fp4ref {

struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

FP4_HD float to_f32(float x) { return x; }
FP4_HD float to_f32(bf16_t x) { return bf16_to_f32(x.bits); }
FP4_HD float to_f32(f16_t x) { return f16_to_f32(x.bits); }

FP4_HD void from_f32(float v, float* out) { *out = v; }
FP4_HD void from_f32(float v, bf16_t* out) { out->bits = f32_to_bf16(v); }
FP4_HD void from_f32(float v, f16_t* out) { out->bits = f32_to_f16(v); }

// Converts N floats to Out; on the device 16-bit outputs go two per instruction (cvt.rn.{bf16,f16}x2.f32,
// the same rounding as the one-at-a-time casts torch uses).
template <int N>
FP4_HD void convert_out(const float* v, float* o) {
  FP4_UNROLL
  for (int j = 0; j < N; ++j) o[j] = v[j];
}

template <int N, typename Out>
FP4_HD void convert_out(const float* v, Out* o) {
#ifdef __CUDA_ARCH__
  if constexpr (N % 2 == 0) {
    FP4_UNROLL
    for (int j = 0; j < N; j += 2) {
      uint32_t w;
      if constexpr (std::is_same_v<Out, bf16_t>) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[j], v[j + 1]);
        memcpy(&w, &h, 4);
      } else {
        const __half2 h = __floats2half2_rn(v[j], v[j + 1]);
        memcpy(&w, &h, 4);
      }
      o[j].bits = (uint16_t)(w & 0xFFFF);
      o[j + 1].bits = (uint16_t)(w >> 16);
    }
  } else
#endif
  {
    FP4_UNROLL
    for (int j = 0; j < N; ++j) from_f32(v[j], &o[j]);
  }
}

// Copies BYTES bytes (a power of two) in the widest aligned chunks up to 16 bytes.
template <int BYTES>
FP4_HD void copy_bytes(void* dst, const void* src) {
#ifdef __CUDA_ARCH__
  if constexpr (BYTES >= 16) {
    FP4_UNROLL
    for (int i = 0; i < BYTES / 16; ++i)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else if constexpr (BYTES == 8) {
    *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
  } else if constexpr (BYTES == 4) {
    *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(src);
  } else if constexpr (BYTES == 2) {
    *reinterpret_cast<uint16_t*>(dst) = *reinterpret_cast<const uint16_t*>(src);
  } else {
    *reinterpret_cast<uint8_t*>(dst) = *reinterpret_cast<const uint8_t*>(src);
  }
#else
  memcpy(dst, src, BYTES);
#endif
}

// Loads T elements of type In (vectorized) and widens them to float32 (exact).
template <typename In, int T>
FP4_HD void load_tile(const In* src, float* v) {
  if constexpr (std::is_same_v<In, bf16_t> && T % 2 == 0) {
    // Two bf16 per 32-bit word, element 2i in the low half: one shift or one mask per element (the
    // one-at-a-time widening costs the GPU's half-rate integer pipe a byte permute and a shift each).
    alignas(16) uint32_t w[T / 2];
    copy_bytes<T * 2>(w, src);
    FP4_UNROLL
    for (int i = 0; i < T / 2; ++i) {
      v[2 * i] = u2f(w[i] << 16);
      v[2 * i + 1] = u2f(w[i] & 0xFFFF0000u);
    }
  } else {
    alignas(16) In raw[T];
    copy_bytes<T * (int)sizeof(In)>(raw, src);
    FP4_UNROLL
    for (int j = 0; j < T; ++j) v[j] = to_f32(raw[j]);
  }
}

// a / b and a % b for non-negative a, b > 0, in 32-bit arithmetic when both fit (a 64-bit division is a
// long instruction sequence on the GPU).
FP4_HD int64_t div_mod(int64_t a, int64_t b, int64_t* rem) {
  if (((uint64_t)a | (uint64_t)b) <= 0xFFFFFFFFull) {
    const uint32_t q = (uint32_t)a / (uint32_t)b;
    *rem = (int64_t)((uint32_t)a - q * (uint32_t)b);
    return q;
  }
  *rem = a % b;
  return a / b;
}

}  // namespace fp4ref
