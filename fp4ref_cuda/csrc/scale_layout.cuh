// Where a block-scale byte goes: the 128x4 blocked ("swizzled") layout of SPEC §3 (offsets from ids.h), read
// for swizzle_scales and written next to the row-major byte by the quantizers.
#pragma once
#include "launch.h"
#include "tile_io.cuh"

namespace fp4ref {

// Offset of scale (r, c) in the 128x4 blocked layout of a matrix with cols columns (ids.h, SPEC §3).
FP4_HD int64_t swizzle_offset(int64_t r, int64_t c, int64_t cols) { return blocked_offset(r, c, cols); }

// Byte o of the blocked layout (zero in the padding).
FP4_HD uint8_t swizzle_byte(const uint8_t* scales, int64_t o, int64_t rows, int64_t cols) {
  const int64_t col_tiles = (cols + 3) / 4;
  const int64_t tile = o / 512, w = o % 512;
  const int64_t r = (tile / col_tiles) * 128 + ((w % 16) / 4) * 32 + w / 16;
  const int64_t c = (tile % col_tiles) * 4 + w % 4;
  return (r < rows && c < cols) ? scales[r * cols + c] : (uint8_t)0;
}

FP4_HD void store_scale(const QuantParams& p, int64_t block, uint32_t byte) {
  p.scales[block] = (uint8_t)byte;
  if (p.swizzled != nullptr) {
    int64_t c;
    const int64_t r = div_mod(block, p.cols, &c);
    p.swizzled[swizzle_offset(r, c, p.cols)] = (uint8_t)byte;
  }
}

}  // namespace fp4ref
