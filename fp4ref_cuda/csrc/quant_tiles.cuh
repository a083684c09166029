// Block quantizers of a (rotated) tile: MX (every element format and scale mode) and NVFP4 recipe "te"
// (SPEC §4, §5), with the 8-wide E2M1 encoder they pack with, and the untiled fallback for other block sizes.
#pragma once
#include "rotate.cuh"
#include "scale_layout.cuh"

namespace fp4ref {

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
  const uint32_t e02 = ptx::prmt(f2u(y[0]), f2u(y[2]), 0xFBFBu), e46 = ptx::prmt(f2u(y[4]), f2u(y[6]), 0xFBFBu);
  const uint32_t o13 = ptx::prmt(f2u(y[1]), f2u(y[3]), 0xFBFBu), o57 = ptx::prmt(f2u(y[5]), f2u(y[7]), 0xFBFBu);
  const uint32_t e = ptx::prmt(e02, e46, 0x5410u), o = ptx::prmt(o13, o57, 0x5410u);
  return word | (((e & 0x0F0F0F0Fu) | (o & 0xF0F0F0F0u)) & 0x88888888u);
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

template <typename In, int HB, int QB, int KIND>
FP4_HD void quant_tile_lanes(const In* x, int64_t i, int64_t tiles, const QuantParams& p,
                             const NvTeConsts* nc = nullptr) {
  constexpr bool FOLD = KIND == MX_E2M1;
  float v[32];
  rotated_lanes<In, HB, !FOLD>(x, i, tiles, p.signs, p.sign_len, p.rscale, v);
  if (i < tiles) quant_values<32, QB, KIND, FOLD>(v, i, p, nc);
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

}  // namespace fp4ref
