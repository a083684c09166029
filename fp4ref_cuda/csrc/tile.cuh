// Per-thread work of every fp4ref_cuda kernel: one function per "tile" of consecutive elements.
//
// A CUDA kernel is a grid-stride loop calling one of these functions; the CPU build (arith_cpu.cpp) runs
// the same functions in a plain loop (or on emulated warps), so indexing, packing and scale placement are
// tested on CPU too. The functions live in one header per concern, each including only those below it:
//
//   ptx.cuh           inline PTX, one guarded wrapper per instruction (host emulation where the CPU runs it)
//   arith.cuh         per-element and per-block numerics (codecs, scales, the GEMM's FP4 element)
//   tile_io.cuh       element types, widening loads, 16-bit conversions, vector copies, div_mod
//   codec_tiles.cuh   encode / decode / pack / unpack tiles
//   scale_layout.cuh  the 128x4 blocked scale layout: read for swizzle, written by the quantizers
//   warp.cuh          cross-lane exchanges (emulated on CPU) and warp-coalesced staged stores
//   rotate.cuh        block Hadamard of a tile, in one thread or split over lanes; finite amax
//   quant_tiles.cuh   MX and NVFP4 block quantizers (8-wide E2M1 encoder, fused rotation, generic blocks)
//   dequant_tiles.cuh block dequantizers (table lookup, per element)
#pragma once
#include "codec_tiles.cuh"
#include "dequant_tiles.cuh"
#include "quant_tiles.cuh"
