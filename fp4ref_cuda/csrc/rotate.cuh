// The block Hadamard rotation of a tile (SPEC §7, fp4ref/hadamard.py): signs, butterfly and rscale, in one
// thread (blocks up to 32, or whole tiles) or split over HB / 32 lanes of a warp (64, 128, 256), and the
// rotation's outputs: block_hadamard's tile and the finite amax NVFP4's global scale needs.
#pragma once
#include "warp.cuh"

namespace fp4ref {

// Loads tile t (T elements), applies signs and the rotation (HB > 1): the input of every quantizer.
// SCALE = false leaves out the final product by rscale (the MXFP4 quantizer folds it into its own).
template <typename In, int T, int HB, bool SCALE = true>
FP4_HD void rotated_tile(const In* x, int64_t t, const float* signs, int64_t sign_len, float rscale, float* v) {
  load_tile<In, T>(x + t * T, v);
  if (signs != nullptr) {
    int64_t base = 0;
    if (sign_len > T) div_mod(t * T, sign_len, &base);
    FP4_UNROLL
    for (int j = 0; j < T; ++j) v[j] = fmul(v[j], signs[sign_len > T ? base + j : (j & (sign_len - 1))]);
  }
  if constexpr (HB > 1) {
    butterfly<T, HB>(v);
    if constexpr (SCALE) {
      FP4_UNROLL
      for (int j = 0; j < T; ++j) v[j] = fmul(v[j], rscale);
    }
  }
}

// Largest finite |v| over N floats, as float32 bits (NaN and Inf skipped).
template <int N>
FP4_HD uint32_t finite_amax_bits(const float* v) {
  uint32_t m = 0;
  FP4_UNROLL
  for (int j = 0; j < N; ++j) {
    const uint32_t a = f2u(v[j]) & 0x7FFFFFFFu;
    m = (a < F32_INF && a > m) ? a : m;
  }
  return m;
}

// Largest finite |v| (bits) of a rotated tile: the per-thread part of finite_amax.
template <typename In, int T, int HB>
FP4_HD uint32_t finite_amax_tile(const In* x, int64_t t, const float* signs, int64_t sign_len, float rscale) {
  float v[T];
  rotated_tile<In, T, HB>(x, t, signs, sign_len, rscale, v);
  return finite_amax_bits<T>(v);
}

// Rotation blocks of 64, 128 and 256 split over L = HB / 32 threads instead of one (one thread would hold
// HB floats: 168 registers and one CTA per SM at HB = 128, spills at 256). Thread i holds elements
// [32i, 32i + 32) of the tensor, lane q = i % L of its block: the signs and the butterfly's stages h < 32
// run in the thread, stages h >= 32 pair it with lane q ^ (h / 32) through a warp shuffle, each thread
// computing its own half of (a + b, a - b) with the same single IEEE operations in the same stage order,
// then the product by rscale. The caller runs whole warps (i up to whole_warps(tiles); the extra
// lanes load and store nothing), so every shuffle has the full warp, and the L threads of a block are
// consecutive lanes of one warp. The CPU build runs it too, on emulated warps (butterfly_across_lanes).
template <typename In, int HB, bool SCALE = true>
FP4_HD void rotated_lanes(const In* x, int64_t i, int64_t tiles, const float* signs, int64_t sign_len,
                          float rscale, float* v) {
  static_assert(HB == 64 || HB == 128 || HB == 256, "lane-split rotations are 64, 128 or 256 wide");
  constexpr int L = HB / 32;
  if (i < tiles) {
    rotated_tile<In, 32, 1>(x, i, signs, sign_len, 1.0f, v);  // load and signs, no rotation yet
  } else {
    FP4_UNROLL
    for (int j = 0; j < 32; ++j) v[j] = 0.0f;
  }
  butterfly<32, 32>(v);
  const int q = static_cast<int>(i & (L - 1));
  FP4_UNROLL
  for (int d = 1; d < L; d *= 2) {  // stage h = 32 d: (a, b) -> (a + b, a - b) across lanes q and q ^ d
    // The lower lane keeps a + b = other + own, the upper one a - b = other + (-own) (IEEE subtraction is
    // addition of the negation, and addition commutes): one branch-free form, other + own * sign in one
    // fused multiply-add, which rounds once, like the addition, because own * (±1) is exact.
    butterfly_across_lanes<32>(v, d, (q & d) ? -1.0f : 1.0f);
  }
  if constexpr (SCALE) {
    FP4_UNROLL
    for (int j = 0; j < 32; ++j) v[j] = fmul(v[j], rscale);
  }
}

// finite_amax_tile's share of lane i (0 for the extra lanes, whose values are zeros).
template <typename In, int HB>
FP4_HD uint32_t finite_amax_lanes(const In* x, int64_t i, int64_t tiles, const float* signs, int64_t sign_len,
                                  float rscale) {
  float v[32];
  rotated_lanes<In, HB>(x, i, tiles, signs, sign_len, rscale, v);
  return finite_amax_bits<32>(v);
}

template <typename In, int HB>
FP4_HD void hadamard_tile(const In* x, int64_t t, const float* signs, int64_t sign_len, float rscale, float* out) {
  alignas(16) float v[HB];
  rotated_tile<In, HB, HB>(x, t, signs, sign_len, rscale, v);
  copy_bytes<HB * 4>(out + t * HB, v);
}

// hadamard_tile for rotation blocks of 64 to 256, split over HB / 32 lanes (rotated_lanes).
template <typename In, int HB>
FP4_HD void hadamard_tile_lanes(const In* x, int64_t i, int64_t tiles, const float* signs, int64_t sign_len,
                                float rscale, float* out) {
  alignas(16) float v[32];
  rotated_lanes<In, HB>(x, i, tiles, signs, sign_len, rscale, v);
  if (i < tiles) copy_bytes<32 * 4>(out + i * 32, v);
}

}  // namespace fp4ref
