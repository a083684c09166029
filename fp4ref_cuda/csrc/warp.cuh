// What a tile function does with its warp: cross-lane exchanges (the lane-split rotations) and
// warp-coalesced stores through a shared stage (the dequantizers), both also run by the CPU build on
// emulated warps.
#pragma once
#include "tile_io.cuh"

namespace fp4ref {

// Exchanges within a warp whose 32 lanes all take part: __shfl_xor_sync on the GPU. The CPU build
// (FP4_WARP_EMU, arith_cpu.cpp) runs a warp's 32 lanes as 32 threads and exchanges through memory between two
// barriers (warp_emu_exchange: other[j] = v[j] of lane ^ d), so that it executes the lane-split code below as
// the GPU does.
#if defined(FP4_WARP_EMU) && !defined(__CUDA_ARCH__)
void warp_emu_exchange(const float* v, float* other, int n, int d);
void warp_emu_barrier();
#endif

// The cross-lane butterfly stage: v[j] = fp32(v[j] * sign + (v[j] of lane ^ d)), j < N. On the GPU each value
// is shuffled and combined at once (no second array of N live values).
template <int N>
FP4_HD void butterfly_across_lanes(float* v, int d, float sign) {
#ifdef __CUDA_ARCH__
  FP4_UNROLL
  for (int j = 0; j < N; ++j) v[j] = ffma(v[j], sign, __shfl_xor_sync(0xFFFFFFFFu, v[j], d));
#elif defined(FP4_WARP_EMU)
  float other[N];
  warp_emu_exchange(v, other, N, d);
  for (int j = 0; j < N; ++j) v[j] = ffma(v[j], sign, other[j]);
#else
  (void)v; (void)d; (void)sign;  // the host pass of the CUDA build never runs lane-split code
#endif
}

// ---- warp-coalesced stores ---------------------------------------------------------------------------
// A warp's 32 consecutive tiles of BYTES bytes are one contiguous range of the output. Stored by their own
// lanes, each 16-byte store instruction of the warp would write 32 pieces BYTES apart, half or a quarter of
// a 32-byte sector each. store_tile stages them through memory the warp shares instead (GPU: shared memory;
// CPU build: the emulated warp's buffer) so that store instruction c writes bytes [512c, 512c + 512) of the
// range: consecutive lanes on consecutive 16 bytes, whole sectors. A warp with fewer than 32 tiles (the
// last one), or no stage (the CPU build's large launches), stores directly. The caller runs whole warps
// (extra lanes: i >= tiles).
FP4_HD void warp_sync() {
#ifdef __CUDA_ARCH__
  __syncwarp();
#elif defined(FP4_WARP_EMU)
  warp_emu_barrier();
#endif
}

// Position of 16-byte chunk j of lane u's tile (C chunks per tile) in the stage, XOR-swizzled: the 8 lanes of
// one 128-byte shared-memory phase, writing the same j or reading 8 consecutive chunks, use 8 different
// groups of 4 banks (no conflicts).
template <int C>
FP4_HD int stage_chunk(int u, int j) {
  return u * C + (j ^ ((u * C >> 3) & (C - 1)));
}

template <int BYTES>
FP4_HD void store_tile(uint8_t* out, int64_t i, int64_t tiles, const void* mine, uint8_t* stage) {
  constexpr int C = BYTES / 16;
  static_assert(C <= 8, "tiles of at most 128 bytes (the read offsets below depend on c's parity only)");
#ifndef __CUDA_ARCH__
  if (stage == nullptr) {  // (the GPU always has a stage)
    if (i < tiles) copy_bytes<BYTES>(out + i * BYTES, mine);
    return;
  }
#endif
  if constexpr (C >= 2) {
    if ((i | 31) < tiles) {  // warp-uniform: the whole warp has tiles
      const int lane = static_cast<int>(i & 31);
      // Index math once per lane: chunk j of this lane sits at 16 * (lane * C + (j ^ sw)); chunk q = 32c + lane
      // of the warp's range is read at 16 * stage_chunk(q / C, q % C) = 512c + a lane constant that depends
      // only on c's parity (u = q / C = 32c / C + lane / C has the swizzle (u C >> 3) & (C - 1) =
      // (4c + (lane / C) C / 8) & (C - 1), and C <= 8).
      const int sw = (lane * C >> 3) & (C - 1);
      uint8_t* const row = stage + 16 * lane * C;
      FP4_UNROLL
      for (int j = 0; j < C; ++j) copy_bytes<16>(row + 16 * (j ^ sw), static_cast<const uint8_t*>(mine) + 16 * j);
      warp_sync();
      uint8_t* const dst = out + i * BYTES + (16 - BYTES) * lane;  // the warp's range + 16 * lane
      const int rd0 = 16 * stage_chunk<C>(lane / C, lane % C);
      const int rd1 = 16 * stage_chunk<C>((32 + lane) / C, (32 + lane) % C) - 512;  // == rd0 for C <= 4
      FP4_UNROLL
      for (int c = 0; c < C; ++c) copy_bytes<16>(dst + 512 * c, stage + 512 * c + ((c & 1) ? rd1 : rd0));
      warp_sync();  // before the stage's next use
      return;
    }
  }
  if (i < tiles) copy_bytes<BYTES>(out + i * BYTES, mine);
}

}  // namespace fp4ref
