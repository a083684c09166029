// Per-thread work of every fp4ref_cuda kernel: one function per "tile" of consecutive elements.
//
// A CUDA kernel is a grid-stride loop calling one of these functions; the CPU build (arith_cpu.cpp) runs
// the same functions in a plain loop, so indexing, packing and scale placement are tested on CPU too.
// Tiles are whole blocks of a flat, contiguous tensor (blocks never straddle rows because the row length
// is a multiple of the block), so each tile is loaded with 16-byte vector loads when aligned.
#pragma once
#include "arith.cuh"
#include "launch.h"

#include <type_traits>

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

// ---- codecs ------------------------------------------------------------------------------------------
constexpr int CODEC_TILE = 8;

// encode of CODEC_TILE elements (full tile) or of one element (tail); returns nonzero on ENCODE_ERROR.
template <typename In>
FP4_HD uint32_t encode_tile(const In* x, uint8_t* out, int fmt_id, bool saturate) {
  alignas(16) float v[CODEC_TILE];
  load_tile<In, CODEC_TILE>(x, v);
  alignas(16) uint8_t c[CODEC_TILE];
  uint32_t err = 0;
  const Fmt f = make_fmt(fmt_id);
  FP4_UNROLL
  for (int j = 0; j < CODEC_TILE; ++j) {
    const uint32_t code = fmt_id == E8M0 ? encode_e8m0(v[j], saturate) : encode(v[j], f, saturate);
    err |= code & ENCODE_ERROR;
    c[j] = (uint8_t)code;
  }
  copy_bytes<CODEC_TILE>(out, c);
  return err;
}

template <typename In>
FP4_HD uint32_t encode_one(const In* x, uint8_t* out, int fmt_id, bool saturate) {
  const float v = to_f32(*x);
  const uint32_t code = fmt_id == E8M0 ? encode_e8m0(v, saturate) : encode(v, make_fmt(fmt_id), saturate);
  *out = (uint8_t)code;
  return code & ENCODE_ERROR;
}

// decode; codes outside the format (>= 2^bits) give NaN and a nonzero return (the caller raises).
FP4_HD uint32_t decode_one(uint8_t code, float* out, int fmt_id) {
  if (fmt_id == E8M0) {
    *out = decode_e8m0(code);
    return 0;
  }
  const Fmt f = make_fmt(fmt_id);
  const int bits = 1 + f.ebits + f.mbits;
  if (bits < 8 && code >= (1u << bits)) {
    *out = u2f(F32_QNAN);
    return 1;
  }
  *out = decode(code, f);
  return 0;
}

FP4_HD uint32_t decode_tile(const uint8_t* codes, float* out, int fmt_id) {
  alignas(16) uint8_t c[CODEC_TILE];
  alignas(16) float v[CODEC_TILE];
  copy_bytes<CODEC_TILE>(c, codes);
  uint32_t err = 0;
  FP4_UNROLL
  for (int j = 0; j < CODEC_TILE; ++j) err |= decode_one(c[j], &v[j], fmt_id);
  copy_bytes<CODEC_TILE * 4>(out, v);
  return err;
}

// ---- layouts -------------------------------------------------------------------------------------------
// pack_fp4 of 16 codes into 8 bytes; nonzero return if a code is > 15.
FP4_HD uint32_t pack_tile(const uint8_t* codes, uint8_t* out) {
  alignas(16) uint8_t c[16];
  alignas(16) uint8_t p[8];
  copy_bytes<16>(c, codes);
  uint32_t bad = 0;
  FP4_UNROLL
  for (int j = 0; j < 8; ++j) {
    bad |= (c[2 * j] | c[2 * j + 1]) & 0xF0u;
    p[j] = (uint8_t)(c[2 * j] | (c[2 * j + 1] << 4));
  }
  copy_bytes<8>(out, p);
  return bad;
}

FP4_HD uint32_t pack_one(const uint8_t* codes, uint8_t* out) {
  *out = (uint8_t)(codes[0] | (codes[1] << 4));
  return (codes[0] | codes[1]) & 0xF0u;
}

FP4_HD void unpack_tile(const uint8_t* packed, uint8_t* out) {
  alignas(16) uint8_t p[8];
  alignas(16) uint8_t c[16];
  copy_bytes<8>(p, packed);
  FP4_UNROLL
  for (int j = 0; j < 8; ++j) {
    c[2 * j] = p[j] & 0xF;
    c[2 * j + 1] = p[j] >> 4;
  }
  copy_bytes<16>(out, c);
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

// prmt.b32 (default mode): output byte i is byte (s >> 4i) & 7 of the 8-byte value (b:a), or, where bit 3 of
// that selector nibble is set, 0xFF or 0x00 by the sign (msb) of that byte. The asm is explicit because
// __byte_perm documents only the 3-bit selectors; the host emulates the instruction.
FP4_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t s) {
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

// encode_e2m1_sat of y[0..7], packed: code j in nibble j (pack_fp4's order). Magnitudes by
// e2m1_magnitude_bits22, one shift-and-add each into place; the 8 sign bits by sign-replicating byte
// permutes (bytes [s0, s2, s4, s6] and [s1, s3, s5, s7], then bits 3 and 7 of each byte): 1 integer
// operation per element where the one-at-a-time encode_e2m1_sat spends 2. The same codes, NaN included.
FP4_HD uint32_t encode_e2m1_sat_x8(const float* y) {
  uint32_t word = 0;
  FP4_UNROLL
  for (int j = 0; j < 8; ++j) {
    const uint32_t b = e2m1_magnitude_bits22(y[j]);
    word += 4 * j >= 22 ? b << (4 * j - 22) : b >> (22 - 4 * j);
  }
  const uint32_t e02 = byte_perm(f2u(y[0]), f2u(y[2]), 0xFBFBu), e46 = byte_perm(f2u(y[4]), f2u(y[6]), 0xFBFBu);
  const uint32_t o13 = byte_perm(f2u(y[1]), f2u(y[3]), 0xFBFBu), o57 = byte_perm(f2u(y[5]), f2u(y[7]), 0xFBFBu);
  const uint32_t e = byte_perm(e02, e46, 0x5410u), o = byte_perm(o13, o57, 0x5410u);
  return word | (((e & 0x0F0F0F0Fu) | (o & 0xF0F0F0F0u)) & 0x88888888u);
}

// ---- block quantizers (MX and NVFP4), optionally after a block Hadamard rotation ------------------------
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

FP4_HD void store_scale(const QuantParams& p, int64_t block, uint32_t byte) {
  p.scales[block] = (uint8_t)byte;
  if (p.swizzled != nullptr) {
    int64_t c;
    const int64_t r = div_mod(block, p.cols, &c);
    p.swizzled[swizzle_offset(r, c, p.cols)] = (uint8_t)byte;
  }
}

// max |v| over N floats, NaN if any is NaN: its bits are >= 0x7F800000 exactly for NaN/Inf blocks.
// A pairwise tree, not a chain: max is exact and associative (NaN included), and the tree's depth is
// log2(N) dependent instructions instead of N.
template <int N>
FP4_HD uint32_t block_amax_bits(const float* v) {
  float m[N];
  FP4_UNROLL
  for (int j = 0; j < N; ++j) m[j] = fabsf(v[j]);
  FP4_UNROLL
  for (int h = 1; h < N; h *= 2) {
    FP4_UNROLL
    for (int j = 0; j < N; j += 2 * h) m[j] = fmax_nan(m[j], m[j + h]);
  }
  return f2u(m[0]);
}

// Per-tensor constants of the NVFP4 "te" quantizer, computed once per CTA (once per call on CPU) from the
// global amax instead of in every tile: S_enc * fp32(1/6) (te_block_scale's factor), S_dec, and the element
// scale te_element_scale(b, S_dec) of every block-scale byte b (0x7F, the NaN-block byte, included). Three
// IEEE divisions per tile and one per block become a table read; the values are the same.
struct NvTeConsts {
  float s_enc6;
  float s_dec;
  float enc[128];
};
constexpr int NV_TE_TABLE = 128;

// Entry i of the table (i < NV_TE_TABLE); entry 0 also writes the two scalars.
FP4_HD void nv_te_prepare(float amax, int i, NvTeConsts* c) {
  const float s_enc = te_encode_scale(amax);
  const float s_dec = fdiv(1.0f, s_enc);
  c->enc[i] = te_element_scale((uint32_t)i, s_dec);
  if (i == 0) {
    c->s_enc6 = fmul(s_enc, u2f(F32_ONE_SIXTH));
    c->s_dec = s_dec;
  }
}

// MXFP4 after a rotation takes the butterfly's output u unscaled (FOLD) and computes each element as
// fp32(u * fp32(rscale * 2^-X)), one product instead of fp32(fp32(u * rscale) * 2^-X): equal wherever
// rscale * 2^-X is a normal float (then scaling by 2^-X commutes with rounding) and fp32(u * rscale) * 2^-X
// cannot be a value of nonzero code computed from a float32 subnormal: -123 <= X <= 122 (rscale >= 2^-4).
// Outside that range the two products are kept. The block amax is fp32(max |u| * rscale), which is
// max |fp32(u * rscale)| because rounding is monotonic.
constexpr uint32_t FOLD_BYTE_MIN = 127 - 123, FOLD_BYTE_MAX = 127 + 122;

// Quantize the T (rotated) values v of tile t: T / QB blocks (NVFP4: with the constants nc; FOLD: v not yet
// multiplied by p.rscale, see above). E2M1 codes are packed 8 per word, element 8w in the low nibble of word w
// (so pack_fp4's byte order on a little-endian GPU).
template <int T, int QB, int KIND, bool FOLD = false>
FP4_HD void quant_values(const float* v, int64_t t, const QuantParams& p, const NvTeConsts* nc) {
  static_assert(!FOLD || KIND == MX_E2M1, "only the MXFP4 scale (a power of two) folds the rotation's scale");
  static_assert(T % QB == 0 && QB % 8 == 0, "tile must hold whole blocks");
  if constexpr (KIND == NV_TE) {
    if (t == 0 && p.global_scale != nullptr) *p.global_scale = nc->s_dec;
  }
  alignas(16) uint32_t words[KIND == MX_ANY ? T / 4 : T / 8];
  FP4_UNROLL
  for (int b = 0; b < T / QB; ++b) {
    const float* vb = v + b * QB;
    uint32_t am = block_amax_bits<QB>(vb);
    if constexpr (FOLD) am = am >= F32_INF ? am : f2u(fmul(u2f(am), p.rscale));
    const bool bad = am >= F32_INF;
    uint32_t byte;
    if constexpr (KIND == MX_ANY) {
      const Fmt f = make_fmt(p.fmt_id);
      byte = scale_byte(am, f, p.mode);
      const float inv = inverse_scale(byte);
      FP4_UNROLL
      for (int w = 0; w < QB / 4; ++w) {
        uint32_t word = 0;
        FP4_UNROLL
        for (int j = 3; j >= 0; --j) word = (word << 8) | mx_element_code(vb[4 * w + j], inv, f, false);
        words[b * (QB / 4) + w] = bad ? 0u : word;
      }
    } else {
      float scale;
      if constexpr (KIND == NV_TE) {
        // te_block_scale with its factor S_enc * fp32(1/6) precomputed
        byte = bad ? 0x7Fu : encode_e4m3_sat_nonneg(fmul(u2f(am), nc->s_enc6));
        scale = nc->enc[byte];
      } else {
        byte = scale_byte(am, make_fmt(E2M1), p.mode);
        scale = inverse_scale(byte);
      }
      const bool stretch = KIND == MX_E2M1 && p.mode == STRETCH;
      float u[QB];
      FP4_UNROLL
      for (int j = 0; j < QB; ++j) u[j] = vb[j];
      if constexpr (FOLD) {
        if (byte >= FOLD_BYTE_MIN && byte <= FOLD_BYTE_MAX) {
          scale = fmul(p.rscale, scale);
        } else {  // rare (|X| > 122): the rotation's product first, as without the fold
          FP4_UNROLL
          for (int j = 0; j < QB; ++j) u[j] = fmul(u[j], p.rscale);
        }
      }
      FP4_UNROLL
      for (int w = 0; w < QB / 8; ++w) {
        float y[8];
        FP4_UNROLL
        for (int j = 0; j < 8; ++j) {
          y[j] = fmul(u[8 * w + j], scale);
          if (stretch) y[j] = fmul(y[j], 3.0f);
        }
        const uint32_t word = encode_e2m1_sat_x8(y);
        words[b * (QB / 8) + w] = bad ? 0u : word;
      }
    }
    store_scale(p, t * (T / QB) + b, byte);
  }
  constexpr int OUT_BYTES = KIND == MX_ANY ? T : T / 2;
  copy_bytes<OUT_BYTES>(p.data + t * OUT_BYTES, words);
}

// quantize tile t: T = max(HB, QB) elements, rotated in this thread, then quantized.
template <typename In, int T, int HB, int QB, int KIND>
FP4_HD void quant_tile(const In* x, int64_t t, const QuantParams& p, const NvTeConsts* nc = nullptr) {
  static_assert(T % HB == 0, "tile must hold whole rotations");
  constexpr bool FOLD = KIND == MX_E2M1 && HB > 1;
  float v[T];
  rotated_tile<In, T, HB, !FOLD>(x, t, p.signs, p.sign_len, p.rscale, v);
  quant_values<T, QB, KIND, FOLD>(v, t, p, nc);
}

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

template <typename In, int HB, int QB, int KIND>
FP4_HD void quant_tile_lanes(const In* x, int64_t i, int64_t tiles, const QuantParams& p,
                             const NvTeConsts* nc = nullptr) {
  constexpr bool FOLD = KIND == MX_E2M1;
  float v[32];
  rotated_lanes<In, HB, !FOLD>(x, i, tiles, p.signs, p.sign_len, p.rscale, v);
  if (i < tiles) quant_values<32, QB, KIND, FOLD>(v, i, p, nc);
}

// finite_amax_tile's share of lane i (0 for the extra lanes, whose values are zeros).
template <typename In, int HB>
FP4_HD uint32_t finite_amax_lanes(const In* x, int64_t i, int64_t tiles, const float* signs, int64_t sign_len,
                                  float rscale) {
  float v[32];
  rotated_lanes<In, HB>(x, i, tiles, signs, sign_len, rscale, v);
  return finite_amax_bits<32>(v);
}

// Fallback for block sizes without a tile instantiation: one block, runtime size, no rotation.
template <typename In>
FP4_HD void quant_block_generic(const In* x, int64_t blk, int qb, int kind, const QuantParams& p) {
  const In* xb = x + blk * qb;
  uint32_t am = 0;
  for (int j = 0; j < qb; ++j) {
    const uint32_t a = f2u(to_f32(xb[j])) & 0x7FFFFFFFu;
    am = a > am ? a : am;
  }
  const bool bad = am >= F32_INF;
  const Fmt f = make_fmt(kind == NV_TE ? E2M1 : p.fmt_id);
  uint32_t byte;
  float scale;
  if (kind == NV_TE) {
    const float s_enc = te_encode_scale(*p.amax);
    const float s_dec = fdiv(1.0f, s_enc);
    if (blk == 0 && p.global_scale != nullptr) *p.global_scale = s_dec;
    byte = bad ? 0x7Fu : te_block_scale(u2f(am), s_enc);
    scale = te_element_scale(byte, s_dec);
  } else {
    byte = scale_byte(am, f, p.mode);
    scale = inverse_scale(byte);
  }
  const bool packed = kind != MX_ANY;
  uint32_t low = 0;
  for (int j = 0; j < qb; ++j) {
    const float v = to_f32(xb[j]);
    const uint32_t c = bad ? 0 : (kind == NV_TE ? encode_e2m1_sat(fmul(v, scale))
                                                : mx_element_code(v, scale, f, p.mode == STRETCH));
    const int64_t i = blk * qb + j;
    if (!packed) p.data[i] = (uint8_t)c;
    else if (j & 1) p.data[i / 2] = (uint8_t)(low | (c << 4));
    else low = c;
  }
  store_scale(p, blk, byte);
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

// ---- dequantizers ------------------------------------------------------------------------------------
// Dequantize QB packed E2M1 codes of one block to a 16-bit float type by table lookup. val(code) for the 8
// magnitudes is computed once per block exactly as the per-element path would (one product, or two for
// NVFP4, then the 16-bit rounding); a negative code gives the same value with the sign bit flipped (an
// E4M3 scale may itself be negative), since every step (IEEE products, the RNE conversion) is
// sign-symmetric once NaN is excluded. The low and high bytes of the 8 table entries sit in two register
// pairs, and one prmt looks up 4 codes at once. Returns false, writing nothing, where an entry is NaN (a
// NaN scale, or 0 * Inf): the caller then takes the per-element path, which gives NaN its device's bits.
template <typename Out, int QB>
FP4_HD bool dequant_e2m1_by_table(const uint8_t* raw, float hs, float gs, bool nv, Out* out) {
  float t[8];
  float nan_any = 0.0f;
  FP4_UNROLL
  for (int m = 0; m < 8; ++m) {
    t[m] = fmul(decode_e2m1_x2(m), hs);
    if (nv) t[m] = fmul(t[m], gs);
    nan_any = fmax_nan(nan_any, t[m]);
  }
  if (nan_any != nan_any) return false;
  alignas(16) Out o[8];
  convert_out<8>(t, o);
  uint32_t w[4];  // entries (2i, 2i + 1) as one word
  FP4_UNROLL
  for (int i = 0; i < 4; ++i) w[i] = (uint32_t)o[2 * i].bits | ((uint32_t)o[2 * i + 1].bits << 16);
  const uint32_t lo0 = byte_perm(w[0], w[1], 0x6420), lo1 = byte_perm(w[2], w[3], 0x6420);  // low bytes
  const uint32_t hi0 = byte_perm(w[0], w[1], 0x7531), hi1 = byte_perm(w[2], w[3], 0x7531);  // high bytes
  alignas(16) uint32_t res[QB / 2];
  alignas(16) uint32_t q[QB / 8];
  copy_bytes<QB / 2>(q, raw);
  FP4_UNROLL
  for (int wd = 0; wd < QB / 8; ++wd) {  // word wd: codes 8wd .. 8wd+7, code 8wd + j in nibble j
    const uint32_t mag = q[wd] & 0x77777777u, sign = q[wd] & 0x88888888u;
    FP4_UNROLL
    for (int h = 0; h < 2; ++h) {  // codes 4h .. 4h+3 of the word
      const uint32_t sel = mag >> (16 * h), sg = sign >> (16 * h);
      const uint32_t L = byte_perm(lo0, lo1, sel), H = byte_perm(hi0, hi1, sel);
      FP4_UNROLL
      for (int k = 0; k < 2; ++k) {  // output word: codes 4h+2k (low half), 4h+2k+1 (high half)
        const uint32_t v = byte_perm(L, H, k ? 0x7362u : 0x5140u);
        // sign bits 8k+3 and 8k+7 of sg to bits 15 and 31, by one multiply (no carries: the masked
        // bits' images land on distinct positions, and only bits 15 and 31 are kept)
        const uint32_t sb = ((sg >> (8 * k)) & 0x88u) * 0x01001000u;
        res[wd * 4 + h * 2 + k] = v ^ (sb & 0x80008000u);
      }
    }
  }
  copy_bytes<QB * 2>(out, res);
  return true;
}

// Dequantize block `blk` of QB elements (packed e2m1 unless MX_ANY) into o (QB values, 16-byte aligned).
template <typename Out, int QB, int KIND>
FP4_HD void dequant_tile(int64_t blk, const DequantParams& p, Out* o) {
  constexpr int IN_BYTES = KIND == MX_ANY ? QB : QB / 2;
  alignas(16) uint8_t raw[IN_BYTES];
  copy_bytes<IN_BYTES>(raw, p.data + blk * IN_BYTES);
  const uint32_t byte = p.scales[blk];
  const Fmt f = make_fmt(KIND == MX_ANY ? p.fmt_id : E2M1);
  const float gs = KIND == NV_TE ? *p.global_scale : 1.0f;
  // half the block scale (exact: a power of two or an E4M3 value, halved), times 2 * e2m1 below
  const float hs = fmul(KIND == NV_TE ? decode_e4m3(byte) : decode_e8m0(byte), 0.5f);
  if constexpr (KIND != MX_ANY && !std::is_same_v<Out, float>) {
    if ((KIND == NV_TE || !p.stretch) && dequant_e2m1_by_table<Out, QB>(raw, hs, gs, KIND == NV_TE, o)) return;
  }
  float vals[QB];
  FP4_UNROLL
  for (int j = 0; j < QB; ++j) {
    float v;
    if constexpr (KIND == MX_ANY) {
      v = mx_dequant(raw[j], byte, f, p.stretch);
    } else {
      const uint32_t code = (raw[j / 2] >> (4 * (j & 1))) & 0xF;
      v = fmul(decode_e2m1_x2(code), hs);
      if constexpr (KIND == NV_TE) v = fmul(v, gs);
      else if (p.stretch) v = stretch_dequant(decode_e2m1(code), decode_e8m0(byte));
    }
    vals[j] = v;
  }
  convert_out<QB>(vals, o);
}

template <typename Out>
FP4_HD void dequant_block_generic(int64_t blk, int qb, int kind, const DequantParams& p, Out* out) {
  const uint32_t byte = p.scales[blk];
  const Fmt f = make_fmt(kind == MX_ANY ? p.fmt_id : E2M1);
  for (int j = 0; j < qb; ++j) {
    const int64_t i = blk * qb + j;
    const uint32_t code = kind == MX_ANY ? p.data[i] : ((p.data[i / 2] >> (4 * (i & 1))) & 0xF);
    const float v = kind == NV_TE ? nv_dequant(code, byte, *p.global_scale) : mx_dequant(code, byte, f, p.stretch);
    from_f32(v, &out[i]);
  }
}

// ---- block Hadamard ----------------------------------------------------------------------------------
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
