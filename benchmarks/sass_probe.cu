// Straight-line probes of fp4ref_cuda's per-thread tile functions for benchmarks/sass_instructions.py: one
// tile per thread, the runtime options (scale mode, signs, swizzle) fixed so that their dead branches fold
// away, leaving the instructions one thread issues for one tile. Compiled for sm_90a only, never linked.
#include "kernels.cuh"
using namespace fp4ref;

__global__ void probe_mx_quant(const bf16_t* x, uint8_t* data, uint8_t* scales) {
  QuantParams p{E2M1, FLOOR, nullptr, 0, 1.0f, nullptr, nullptr, data, scales, nullptr, 256};
  quant_tile<bf16_t, 32, 1, 32, MX_E2M1>(x, blockIdx.x * 256 + threadIdx.x, p);
}
__global__ void probe_nv_quant(const bf16_t* x, uint8_t* data, uint8_t* scales, const float* amax) {
  QuantParams p{E2M1, FLOOR, nullptr, 0, 1.0f, amax, nullptr, data, scales, nullptr, 256};
  __shared__ NvTeConsts c;  // prepared once per CTA (nv_te_prepare, not counted here: 1/256 of the tiles)
  quant_tile<bf16_t, 32, 1, 16, NV_TE>(x, blockIdx.x * 256 + threadIdx.x, p, &c);
}
__global__ void probe_had32_mx_quant(const bf16_t* x, uint8_t* data, uint8_t* scales) {
  QuantParams p{E2M1, FLOOR, nullptr, 0, 0.17677669f, nullptr, nullptr, data, scales, nullptr, 256};
  quant_tile<bf16_t, 32, 32, 32, MX_E2M1>(x, blockIdx.x * 256 + threadIdx.x, p);
}
__global__ void probe_had128_mx_quant_lanes(const bf16_t* x, uint8_t* data, uint8_t* scales) {
  QuantParams p{E2M1, FLOOR, nullptr, 0, 0.088388346f, nullptr, nullptr, data, scales, nullptr, 256};
  quant_tile_lanes<bf16_t, 128, 32, MX_E2M1>(x, blockIdx.x * 256 + threadIdx.x, int64_t{1} << 40, p);
}
__global__ void probe_had128_mx_quant_one(const bf16_t* x, uint8_t* data, uint8_t* scales) {
  QuantParams p{E2M1, FLOOR, nullptr, 0, 0.088388346f, nullptr, nullptr, data, scales, nullptr, 256};
  quant_tile<bf16_t, 128, 128, 32, MX_E2M1>(x, blockIdx.x * 256 + threadIdx.x, p);
}
__global__ void probe_mx_dequant_table(const uint8_t* data, const uint8_t* scales, bf16_t* out) {
  const int64_t blk = blockIdx.x * 256 + threadIdx.x;
  const float hs = fmul(decode_e8m0(scales[blk]), 0.5f);
  if (!dequant_e2m1_by_table<bf16_t, 32>(data + blk * 16, hs, 1.0f, false, out + blk * 32)) out[0].bits = 1;
}
__global__ void probe_nv_dequant_table(const uint8_t* data, const uint8_t* scales, const float* gs, bf16_t* out) {
  const int64_t blk = blockIdx.x * 256 + threadIdx.x;
  const float hs = fmul(decode_e4m3(scales[blk]), 0.5f);
  if (!dequant_e2m1_by_table<bf16_t, 16>(data + blk * 8, hs, *gs, true, out + blk * 16)) out[0].bits = 1;
}
__global__ void probe_mx_dequant_tile(const uint8_t* data, const uint8_t* scales, bf16_t* out) {
  // the whole per-thread work of the MXFP4 -> bf16 dequantizer: table or per-element path, staged store
  __shared__ __align__(16) uint8_t stage[256 * 64];
  DequantParams p{E2M1, false, data, scales, nullptr};
  const int64_t i = blockIdx.x * 256 + threadIdx.x;
  alignas(16) bf16_t v[32];
  dequant_tile<bf16_t, 32, MX_E2M1>(i, p, v);
  store_tile<64>(reinterpret_cast<uint8_t*>(out), i, int64_t{1} << 40, v, stage + (threadIdx.x >> 5) * 2048);
}

// ---- the small-M GEMM: one 128-wide chunk of one lane (dequantize 256 W elements and 32 or 64 mma) ----
#include "gemm_sm90.cu"

template <int MT, bool ONE_MUL>
__device__ void chunk_probe(const uint4* in, float* out) {
  using namespace fp4ref_gemm;
  const int t = blockIdx.x * 256 + threadIdx.x;
  uint32_t wc[kRT][2][4], sc[kRT][2][2];
  uint4 xv[MT][4];
  for (int i = 0; i < kRT * 2; ++i) {
    const uint4 v = in[t * 64 + i];
    wc[i / 2][i % 2][0] = v.x; wc[i / 2][i % 2][1] = v.y; wc[i / 2][i % 2][2] = v.z; wc[i / 2][i % 2][3] = v.w;
    sc[i / 2][i % 2][0] = v.x ^ v.w; sc[i / 2][i % 2][1] = v.y ^ v.z;
  }
  for (int i = 0; i < MT * 4; ++i) xv[i / 4][i % 4] = in[t * 64 + 16 + i];
  float acc[kRT][MT][4] = {};
  mma_chunk<MT, ONE_MUL>(acc, wc, sc, xv);
  for (int i = 0; i < kRT * MT * 4; ++i) out[t * 64 + i] = acc[i / (MT * 4)][(i / 4) % MT][i % 4];
}
__global__ void probe_chunk_m8_one_mul(const uint4* in, float* out) { chunk_probe<1, true>(in, out); }
__global__ void probe_chunk_m8_two_mul(const uint4* in, float* out) { chunk_probe<1, false>(in, out); }
__global__ void probe_chunk_m16_one_mul(const uint4* in, float* out) { chunk_probe<2, true>(in, out); }
