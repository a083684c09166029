// Op-level dispatch shared by the CUDA launchers and the CPU test build.
//
// Each op picks the tile function and its template arguments, then hands "for every tile index i, do f(i)"
// to an executor: CudaExec (kernels.cuh) runs a grid-stride kernel, HostExec (arith_cpu.cpp) a loop. So the
// CPU build exercises exactly the dispatch, indexing and arithmetic that the GPU runs.
#pragma once
#include "launch.h"
#include "tile.cuh"

#if defined(__CUDACC__)
#define FP4_LAMBDA __host__ __device__
#else
#define FP4_LAMBDA
#endif

namespace fp4ref {

// Rotations of 64 to 256 (fused with a quantizer: 64 and 128) split each block over HB / 32 threads that
// exchange through warp shuffles (rotated_lanes); the executors run these calls on whole warps
// (`run<true>`, ...: the CPU build emulates each warp's lanes as threads).

// Thread count for `tiles` lane tiles of 32 elements, rounded up to whole warps: every shuffle of
// rotated_lanes has the full warp (the extra lanes load and store nothing).
inline int64_t whole_warps(int64_t tiles) { return (tiles + 31) / 32 * 32; }

#define FP4_DISPATCH_IN(dtype, IN, ...)                 \
  switch (dtype) {                                      \
    case DT_F32: { using IN = float; __VA_ARGS__; break; } \
    case DT_BF16: { using IN = bf16_t; __VA_ARGS__; break; } \
    default: { using IN = f16_t; __VA_ARGS__; break; }  \
  }

#define FP4_DISPATCH_POW2(n, N, ...)                     \
  switch (n) {                                          \
    case 1: { constexpr int N = 1; __VA_ARGS__; break; }   \
    case 2: { constexpr int N = 2; __VA_ARGS__; break; }   \
    case 4: { constexpr int N = 4; __VA_ARGS__; break; }   \
    case 8: { constexpr int N = 8; __VA_ARGS__; break; }   \
    case 16: { constexpr int N = 16; __VA_ARGS__; break; } \
    case 32: { constexpr int N = 32; __VA_ARGS__; break; } \
    case 64: { constexpr int N = 64; __VA_ARGS__; break; } \
    case 128: { constexpr int N = 128; __VA_ARGS__; break; } \
    default: { constexpr int N = 256; __VA_ARGS__; break; } \
  }

// Rotation blocks with a fused quantizer instantiation (1: no rotation). Other blocks take two passes
// (block_hadamard, then quantize), which give the same bits; this keeps the build small.
#define FP4_DISPATCH_FUSED(n, N, ...)                    \
  switch (n) {                                          \
    case 1: { constexpr int N = 1; __VA_ARGS__; break; }   \
    case 16: { constexpr int N = 16; __VA_ARGS__; break; } \
    case 32: { constexpr int N = 32; __VA_ARGS__; break; } \
    case 64: { constexpr int N = 64; __VA_ARGS__; break; } \
    case 128: { constexpr int N = 128; __VA_ARGS__; break; } \
    default: return ERR_UNSUPPORTED;                    \
  }

template <class Exec>
int do_encode(Exec& ex, int dtype, const void* x, uint8_t* out, int64_t n, int fmt, bool sat, uint32_t* err) {
  const int64_t tiles = n / CODEC_TILE, done = tiles * CODEC_TILE;
  FP4_DISPATCH_IN(dtype, In, {
    const In* xi = static_cast<const In*>(x);
    ex.reduce_or(tiles, err, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
      return encode_tile<In>(xi + i * CODEC_TILE, out + i * CODEC_TILE, fmt, sat);
    });
    ex.reduce_or(n - done, err, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
      return encode_one<In>(xi + done + i, out + done + i, fmt, sat);
    });
  })
  return ex.status();
}

template <class Exec>
int do_decode(Exec& ex, const uint8_t* codes, float* out, int64_t n, int fmt, uint32_t* err) {
  const int64_t tiles = n / CODEC_TILE, done = tiles * CODEC_TILE;
  ex.reduce_or(tiles, err, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
    return decode_tile(codes + i * CODEC_TILE, out + i * CODEC_TILE, fmt);
  });
  ex.reduce_or(n - done, err, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
    return decode_one(codes[done + i], out + done + i, fmt);
  });
  return ex.status();
}

// n_out packed bytes from 2 * n_out codes.
template <class Exec>
int do_pack(Exec& ex, const uint8_t* codes, uint8_t* out, int64_t n_out, uint32_t* err) {
  const int64_t tiles = n_out / 8, done = tiles * 8;
  ex.reduce_or(tiles, err, [=] FP4_LAMBDA(int64_t i) -> uint32_t { return pack_tile(codes + 16 * i, out + 8 * i); });
  ex.reduce_or(n_out - done, err, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
    return pack_one(codes + 2 * (done + i), out + done + i);
  });
  return ex.status();
}

template <class Exec>
int do_unpack(Exec& ex, const uint8_t* packed, uint8_t* out, int64_t n_in) {
  const int64_t tiles = n_in / 8, done = tiles * 8;
  ex.run(tiles, [=] FP4_LAMBDA(int64_t i) { unpack_tile(packed + 8 * i, out + 16 * i); });
  ex.run(n_in - done, [=] FP4_LAMBDA(int64_t i) {
    const uint8_t b = packed[done + i];
    out[2 * (done + i)] = b & 0xF;
    out[2 * (done + i) + 1] = b >> 4;
  });
  return ex.status();
}

template <class Exec>
int do_swizzle(Exec& ex, const uint8_t* scales, uint8_t* out, int64_t rows, int64_t cols) {
  const int64_t total = blocked_size(rows, cols);
  ex.run(total, [=] FP4_LAMBDA(int64_t o) { out[o] = swizzle_byte(scales, o, rows, cols); });
  return ex.status();
}

template <class Exec>
int do_unswizzle(Exec& ex, const uint8_t* blocked, uint8_t* out, int64_t rows, int64_t cols) {
  ex.run(rows * cols, [=] FP4_LAMBDA(int64_t i) { out[i] = blocked[swizzle_offset(i / cols, i % cols, cols)]; });
  return ex.status();
}

// Largest finite |rotated x| as float32 bits, max-reduced into *amax_bits (which the caller zeroes).
template <class Exec>
int do_finite_amax(Exec& ex, int dtype, const void* x, int64_t n, int hb, const float* signs, int64_t sign_len,
                   float rscale, uint32_t* amax_bits) {
  FP4_DISPATCH_IN(dtype, In, {
    const In* xi = static_cast<const In*>(x);
    FP4_DISPATCH_FUSED(hb, HB, {
      if constexpr (HB >= 64) {
        const int64_t tiles = n / 32;
        ex.template reduce_max<true>(whole_warps(tiles), amax_bits, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
          return finite_amax_lanes<In, HB>(xi, i, tiles, signs, sign_len, rscale);
        });
      } else {
        // A tile of T >= 32 elements (64 bytes of bf16 per thread and iteration) holds T / HB whole rotation
        // blocks (HB == 1: no rotation); the tail is whole rotation blocks (or single elements).
        constexpr int T = HB < 32 ? 32 : HB;
        ex.reduce_max(n / T, amax_bits, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
          return finite_amax_tile<In, T, HB>(xi, i, signs, sign_len, rscale);
        });
        const int64_t done = n / T * T;
        const int64_t first = done / HB;
        ex.reduce_max((n - done) / HB, amax_bits, [=] FP4_LAMBDA(int64_t i) -> uint32_t {
          return finite_amax_tile<In, HB, HB>(xi, first + i, signs, sign_len, rscale);
        });
      }
    })
  })
  return ex.status();
}

template <class Exec>
int do_hadamard(Exec& ex, int dtype, const void* x, float* out, int64_t n, int hb, const float* signs,
                int64_t sign_len, float rscale) {
  FP4_DISPATCH_IN(dtype, In, {
    const In* xi = static_cast<const In*>(x);
    FP4_DISPATCH_POW2(hb, HB, {
      if constexpr (HB >= 64) {
        const int64_t tiles = n / 32;
        ex.template run<true>(whole_warps(tiles), [=] FP4_LAMBDA(int64_t i) {
          hadamard_tile_lanes<In, HB>(xi, i, tiles, signs, sign_len, rscale, out);
        });
      } else if constexpr (HB > 1) {
        ex.run(n / HB, [=] FP4_LAMBDA(int64_t i) { hadamard_tile<In, HB>(xi, i, signs, sign_len, rscale, out); });
      }
    })
  })
  return ex.status();
}

// Quantizes n elements (whole blocks of qb) after an optional rotation of block hb (1: none). Split by
// family (NV = NVFP4, else MX) so that the CUDA build compiles the two in parallel translation units.
// Returns ERR_UNSUPPORTED for a rotation with a block layout that has no tile instantiation.
template <bool NV, class Exec>
int do_quant_family(Exec& ex, int dtype, int kind, int qb, int hb, const void* x, int64_t n, const QuantParams& p) {
  const bool tiled = (kind == MX_E2M1 && qb == 32) || (kind == NV_TE && qb == 16) || (kind == MX_ANY && qb == 32 && hb == 1);
  const bool fused = hb == 1 || hb == 16 || hb == 32 || hb == 64 || hb == 128;
  if (!fused || (!tiled && hb != 1)) return ERR_UNSUPPORTED;
  FP4_DISPATCH_IN(dtype, In, {
    const In* xi = static_cast<const In*>(x);
    if (!tiled) {
      ex.run(n / qb, [=] FP4_LAMBDA(int64_t i) { quant_block_generic<In>(xi, i, qb, kind, p); });
    } else if constexpr (NV) {
      // The per-tensor constants (NvTeConsts) are prepared once per CTA in shared memory (run_shared).
      const float* amax = p.amax;
      const auto prep = [=] FP4_LAMBDA(int j, NvTeConsts* c) { nv_te_prepare(*amax, j, c); };
      FP4_DISPATCH_FUSED(hb, HB, {
        if constexpr (HB >= 64) {
          const int64_t tiles = n / 32;
          ex.template run_shared<NvTeConsts, NV_TE_TABLE, true>(whole_warps(tiles), prep,
              [=] FP4_LAMBDA(int64_t i, const NvTeConsts& c) { quant_tile_lanes<In, HB, 16, NV_TE>(xi, i, tiles, p, &c); });
        } else {
          // Two or more blocks per tile. A last half tile (n % 32 == 16, only without a rotation wider than
          // 16) is 16 elements.
          constexpr int T = HB > 32 ? HB : 32;
          ex.template run_shared<NvTeConsts, NV_TE_TABLE>(n / T, prep,
              [=] FP4_LAMBDA(int64_t i, const NvTeConsts& c) { quant_tile<In, T, HB, 16, NV_TE>(xi, i, p, &c); });
          if constexpr (HB <= 16) {
            const int64_t last = n / 16;
            if (n % T)
              ex.template run_shared<NvTeConsts, NV_TE_TABLE>(1, prep, [=] FP4_LAMBDA(int64_t, const NvTeConsts& c) {
                quant_tile<In, 16, HB, 16, NV_TE>(xi, last - 1, p, &c);
              });
          }
        }
      })
    } else if (kind == MX_ANY) {
      ex.run(n / 32, [=] FP4_LAMBDA(int64_t i) { quant_tile<In, 32, 1, 32, MX_ANY>(xi, i, p); });
    } else {
      FP4_DISPATCH_FUSED(hb, HB, {
        if constexpr (HB >= 64) {
          const int64_t tiles = n / 32;
          ex.template run<true>(whole_warps(tiles),
                 [=] FP4_LAMBDA(int64_t i) { quant_tile_lanes<In, HB, 32, MX_E2M1>(xi, i, tiles, p); });
        } else {
          constexpr int T = HB > 32 ? HB : 32;
          ex.run(n / T, [=] FP4_LAMBDA(int64_t i) { quant_tile<In, T, HB, 32, MX_E2M1>(xi, i, p); });
        }
      })
    }
  })
  return ex.status();
}

template <class Exec>
int do_quant(Exec& ex, int dtype, int kind, int qb, int hb, const void* x, int64_t n, const QuantParams& p) {
  return kind == NV_TE ? do_quant_family<true>(ex, dtype, kind, qb, hb, x, n, p)
                       : do_quant_family<false>(ex, dtype, kind, qb, hb, x, n, p);
}

// One block per thread, stored through the warp's stage (store_tile): whole warps.
template <typename Out, int QB, int KIND, class Exec>
void do_dequant_tiles(Exec& ex, int64_t n, const DequantParams& p, Out* out) {
  constexpr int BYTES = QB * (int)sizeof(Out);
  uint8_t* const ob = reinterpret_cast<uint8_t*>(out);
  const int64_t tiles = n / QB;
  ex.template run_staged<BYTES>(whole_warps(tiles), [=] FP4_LAMBDA(int64_t i, uint8_t* stage) {
    alignas(16) Out v[QB];
    if (i < tiles) dequant_tile<Out, QB, KIND>(i, p, v);
    store_tile<BYTES>(ob, i, tiles, v, stage);
  });
}

template <class Exec>
int do_dequant(Exec& ex, int out_dtype, int kind, int qb, int64_t n, const DequantParams& p, void* out) {
  const bool tiled = (kind == NV_TE && qb == 16) || (kind != NV_TE && qb == 32);
  FP4_DISPATCH_IN(out_dtype, Out, {
    Out* o = static_cast<Out*>(out);
    if (!tiled) {
      ex.run(n / qb, [=] FP4_LAMBDA(int64_t i) { dequant_block_generic<Out>(i, qb, kind, p, o); });
    } else if (kind == NV_TE) {
      do_dequant_tiles<Out, 16, NV_TE>(ex, n, p, o);
    } else if (kind == MX_E2M1) {
      do_dequant_tiles<Out, 32, MX_E2M1>(ex, n, p, o);
    } else {
      do_dequant_tiles<Out, 32, MX_ANY>(ex, n, p, o);
    }
  })
  return ex.status();
}

}  // namespace fp4ref
