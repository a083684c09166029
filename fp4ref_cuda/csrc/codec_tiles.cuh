// Tiles of the element codecs (encode, decode; SPEC §2) and of the FP4 packing (pack_fp4, unpack_fp4; SPEC §3).
#pragma once
#include "tile_io.cuh"

namespace fp4ref {

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

}  // namespace fp4ref
