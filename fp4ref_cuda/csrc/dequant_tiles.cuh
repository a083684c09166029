// Block dequantizers (dequantize_mx, dequantize_nvfp4; SPEC §4, §5): a block's E2M1 codes by table lookup
// into bf16/fp16, or element by element (float32 output, other formats, stretch, NaN tables).
#pragma once
#include "launch.h"
#include "tile_io.cuh"

namespace fp4ref {

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
  const uint32_t lo0 = ptx::prmt(w[0], w[1], 0x6420), lo1 = ptx::prmt(w[2], w[3], 0x6420);  // low bytes
  const uint32_t hi0 = ptx::prmt(w[0], w[1], 0x7531), hi1 = ptx::prmt(w[2], w[3], 0x7531);  // high bytes
  alignas(16) uint32_t res[QB / 2];
  alignas(16) uint32_t q[QB / 8];
  copy_bytes<QB / 2>(q, raw);
  FP4_UNROLL
  for (int wd = 0; wd < QB / 8; ++wd) {  // word wd: codes 8wd .. 8wd+7, code 8wd + j in nibble j
    const uint32_t mag = q[wd] & 0x77777777u, sign = q[wd] & 0x88888888u;
    FP4_UNROLL
    for (int h = 0; h < 2; ++h) {  // codes 4h .. 4h+3 of the word
      const uint32_t sel = mag >> (16 * h), sg = sign >> (16 * h);
      const uint32_t L = ptx::prmt(lo0, lo1, sel), H = ptx::prmt(hi0, hi1, sel);
      FP4_UNROLL
      for (int k = 0; k < 2; ++k) {  // output word: codes 4h+2k (low half), 4h+2k+1 (high half)
        const uint32_t v = ptx::prmt(L, H, k ? 0x7362u : 0x5140u);
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

}  // namespace fp4ref
