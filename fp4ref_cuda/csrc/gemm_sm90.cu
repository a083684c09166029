// FP4 GEMM building blocks for sm_90 (and, through PTX, any sm_80+ GPU):
//  * dequant_fp4_bf16: packed E2M1 + block scales -> bf16, exact (every E2M1 x E8M0 and E2M1 x E4M3
//    value that is finite in float32 is a bf16 number), feeding a cuBLAS bf16 GEMM for large M;
//  * fp4_linear_small: weight-only GEMM for M <= 16 that dequantizes W in registers and multiplies on
//    the tensor cores (mma.sync m16n8k16 bf16, float32 accumulation); W never exists in bf16 in memory.
// Raw pointers only (no torch headers): the bindings validate shapes, dtypes and alignment.
#include "gemm_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fp4ref_gemm {
namespace {

// ---- exact per-element decodes (float32 bits; no FTZ anywhere in this file) ----------------------------
__device__ __forceinline__ float e2m1_value(uint32_t nib) {
  const uint32_t e = (nib >> 1) & 3, m = nib & 1;
  // Normal codes 2^(e-1)·(1 + m/2); the subnormal code (e = 0, m = 1) is 0.5.
  const uint32_t mag = e ? ((e + 126u) << 23) | (m << 22) : (m ? 0x3F000000u : 0u);
  return __uint_as_float(mag | ((nib & 8u) << 28));
}

__device__ __forceinline__ float e8m0_value(uint32_t b) {
  if (b == 0xFFu) return __uint_as_float(0x7FC00000u);
  return __uint_as_float(b ? (b << 23) : 0x00400000u);  // byte 0 is the float32 subnormal 2^-127
}

__device__ __forceinline__ float e4m3_value(uint32_t b) {
  const uint32_t e = (b >> 3) & 15u, m = b & 7u;
  float mag;
  if (e == 15u && m == 7u) mag = __uint_as_float(0x7FC00000u);
  else if (e == 0u) mag = static_cast<float>(m) * 0.001953125f;  // m · 2^-9, exact
  else mag = __uint_as_float(((e + 120u) << 23) | (m << 20));
  return (b & 0x80u) ? -mag : mag;
}

template <bool E4M3>
__device__ __forceinline__ float scale_value(uint32_t b) {
  return E4M3 ? e4m3_value(b) : e8m0_value(b);
}

__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // exact: both values are bf16 numbers
  return *reinterpret_cast<uint32_t*>(&v);
}

// ---- dequantize to bf16: one thread per 16 elements (8 packed bytes, one block scale) -------------------
// 32-bit index math (the launcher checks the bounds): 64-bit division is a long software routine.
template <bool E4M3>
__global__ void __launch_bounds__(256) dequant_kernel(const uint2* __restrict__ data,
                                                      const uint8_t* __restrict__ scales,
                                                      uint4* __restrict__ out, uint32_t chunks,
                                                      uint32_t chunks_per_row, uint32_t scales_per_row,
                                                      uint32_t chunks_per_block) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t c = blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const uint32_t row = c / chunks_per_row, kc = c - row * chunks_per_row;
    const uint2 q = __ldg(data + c);
    const float s = scale_value<E4M3>(__ldg(scales + row * scales_per_row + kc / chunks_per_block));
    uint32_t o[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t word = i < 4 ? q.x : q.y, sh = 8 * (i & 3);
      o[i] = bf16x2_bits(e2m1_value(word >> sh) * s, e2m1_value(word >> (sh + 4)) * s);
    }
    out[2 * static_cast<size_t>(c)] = make_uint4(o[0], o[1], o[2], o[3]);
    out[2 * static_cast<size_t>(c) + 1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
}

// ---- in-register dequantization for the small-M kernel --------------------------------------------------
// Moving a nibble's sign to bit 15 and its three magnitude bits to bits 8..6 of a bf16 gives exactly
// e2m1 · 2^-126 (the code 0.5 lands on the bf16 subnormal 2^-127). Pair P of a 32-bit word of 8 nibbles
// holds nibbles (3-P, 7-P) in its (low, high) halves.
template <int P>
__device__ __forceinline__ uint32_t fp4_pair_raw(uint32_t q) {
  constexpr uint32_t kSign = 0x80008000u, kMag = 0x01C001C0u;
  if constexpr (P == 0) return (q & kSign) | ((q >> 6) & kMag);
  if constexpr (P == 1) return ((q << 4) & kSign) | ((q >> 2) & kMag);
  if constexpr (P == 2) return ((q << 8) & kSign) | ((q << 2) & kMag);
  return ((q << 12) & kSign) | ((q << 6) & kMag);
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2_rn(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// (raw · 2^126) · scale: two exact bf16 multiplies (one would overflow for scales above 2^2).
template <int P>
__device__ __forceinline__ uint32_t fp4_pair(uint32_t q, uint32_t scale2) {
  constexpr uint32_t kTwo126 = 0x7E807E80u;
  return bf16x2_mul(bf16x2_mul(fp4_pair_raw<P>(q), kTwo126), scale2);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ void store_out(void* out, int64_t i, float v);
template <>
__device__ __forceinline__ void store_out<float>(void* out, int64_t i, float v) {
  static_cast<float*>(out)[i] = v;
}
template <>
__device__ __forceinline__ void store_out<__nv_bfloat16>(void* out, int64_t i, float v) {
  static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ void store_out<__half>(void* out, int64_t i, float v) {
  static_cast<__half*>(out)[i] = __float2half_rn(v);
}

// Work split: a CTA owns kRows rows of W (kRT row tiles of 16 per warp); its kWarps warps split K into
// contiguous slices of 128-wide chunks and are reduced through shared memory in a fixed order, so the
// result is deterministic. Within a chunk, quad lane p owns k in [32p, 32p + 32): 16 packed bytes of each
// W row and 64 bytes of each x row, both contiguous. The mma's k order is a permutation of the true k
// order, the same one for W (rows) and x (columns), so the dot products are unchanged.
constexpr int kRT = 4, kWarps = 8, kRows = 16 * kRT, kChunk = 128;

template <int MT, bool E4M3, typename OutT>
__global__ void __launch_bounds__(kWarps * 32) linear_small_kernel(
    const __nv_bfloat16* __restrict__ x, int M, const uint8_t* __restrict__ w,
    const uint8_t* __restrict__ ws, int64_t N, int64_t K, int block_size, const float* __restrict__ alpha,
    float divisor, void* __restrict__ out) {
  __shared__ float red[kWarps][kRT * MT * 4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, p = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nchunks = (K + kChunk - 1) / kChunk;
  const int64_t c_begin = nchunks * warp / kWarps, c_end = nchunks * (warp + 1) / kWarps;
  const int64_t row_bytes = K / 2;
  const uint32_t scales_per_row = static_cast<uint32_t>(K) / static_cast<uint32_t>(block_size);

  float acc[kRT][MT][4];
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[rt][mt][i] = 0.0f;

  // W and its scale bytes are loaded one chunk ahead (registers double-buffered) so that HBM latency
  // overlaps the dequantization and mma work of the current chunk.
  uint32_t wq[kRT][2][4], sb[kRT][2][2];
  auto load_w = [&](int64_t c) {
    const int64_t k0 = c * kChunk + 32 * p;
    const bool v0 = k0 < K, v1 = k0 + 16 < K;  // K % 16 == 0: each 16-wide half is all in or all out
    const uint32_t col0 = static_cast<uint32_t>(k0) / static_cast<uint32_t>(block_size);
    const uint32_t col1 = static_cast<uint32_t>(k0 + 16) / static_cast<uint32_t>(block_size);
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t n = n0 + rt * 16 + g + 8 * r;
        const bool ok = n < N && c < c_end;
        const uint2* src = reinterpret_cast<const uint2*>(w + n * row_bytes + k0 / 2);
        const uint2 lo = (ok && v0) ? __ldg(src) : make_uint2(0u, 0u);
        const uint2 hi = (ok && v1) ? __ldg(src + 1) : make_uint2(0u, 0u);
        wq[rt][r][0] = lo.x; wq[rt][r][1] = lo.y; wq[rt][r][2] = hi.x; wq[rt][r][3] = hi.y;
        // A zero-filled half has code 0 elements; its scale byte 0 is finite in both formats.
        sb[rt][r][0] = (ok && v0) ? __ldg(ws + n * scales_per_row + col0) : 0u;
        sb[rt][r][1] = (ok && v1) ? __ldg(ws + n * scales_per_row + col1) : 0u;
      }
    }
  };
  load_w(c_begin);

  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t k0 = c * kChunk + 32 * p;
    const bool v0 = k0 < K, v1 = k0 + 16 < K;
    uint32_t wc[kRT][2][4], sc[kRT][2][2];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int j = 0; j < 4; ++j) wc[rt][r][j] = wq[rt][r][j];
        sc[rt][r][0] = sb[rt][r][0];
        sc[rt][r][1] = sb[rt][r][1];
      }
    load_w(c + 1);
    uint4 xv[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int m = mt * 8 + g;
      const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * K + k0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = m < M && (j < 2 ? v0 : v1);
        xv[mt][j] = ok ? __ldg(src + j) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float f = scale_value<E4M3>(sc[rt][r][hf]);
          sc[rt][r][hf] = bf16x2_bits(f, f);
        }
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // word j: this thread's elements 8j .. 8j+7 of each row
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // mma step: pairs (2h, 2h+1) of the word
        uint32_t b0[MT], b1[MT];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          // x pairs in the same order as fp4_pair: h = 0 -> (x3, x7), (x2, x6); h = 1 -> (x1, x5), (x0, x4).
          const uint32_t lo = h ? xv[mt][j].x : xv[mt][j].y, hi = h ? xv[mt][j].z : xv[mt][j].w;
          b0[mt] = __byte_perm(lo, hi, 0x7632);
          b1[mt] = __byte_perm(lo, hi, 0x5410);
        }
#pragma unroll
        for (int rt = 0; rt < kRT; ++rt) {
          const uint32_t s_g = sc[rt][0][j >> 1], s_g8 = sc[rt][1][j >> 1];
          uint32_t a0, a1, a2, a3;
          if (h == 0) {
            a0 = fp4_pair<0>(wc[rt][0][j], s_g);  a2 = fp4_pair<1>(wc[rt][0][j], s_g);
            a1 = fp4_pair<0>(wc[rt][1][j], s_g8); a3 = fp4_pair<1>(wc[rt][1][j], s_g8);
          } else {
            a0 = fp4_pair<2>(wc[rt][0][j], s_g);  a2 = fp4_pair<3>(wc[rt][0][j], s_g);
            a1 = fp4_pair<2>(wc[rt][1][j], s_g8); a3 = fp4_pair<3>(wc[rt][1][j], s_g8);
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma_bf16(acc[rt][mt], a0, a1, a2, a3, b0[mt], b1[mt]);
        }
      }
    }
  }

#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp][(rt * MT + mt) * 4 + i][lane] = acc[rt][mt][i];
  __syncthreads();

  const float a = alpha ? *alpha : 1.0f;
  for (int idx = threadIdx.x; idx < kRows * MT * 8; idx += blockDim.x) {
    const int r = idx % kRows, m = idx / kRows;
    const int64_t n = n0 + r;
    if (m >= M || n >= N) continue;
    // Accumulator fragment of (row r, column m): c0,c1 = (g, 2p..2p+1), c2,c3 = (g+8, 2p..2p+1).
    const int rr = r % 16, mm = m % 8;
    const int v = ((r / 16) * MT + m / 8) * 4 + (rr / 8) * 2 + (mm & 1);
    const int ln = (rr % 8) * 4 + mm / 2;
    float s = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) s += red[wi][v][ln];
    if (alpha) s *= a;
    if (divisor != 1.0f) s /= divisor;
    store_out<OutT>(out, static_cast<int64_t>(m) * N + n, s + 0.0f);  // + 0: the sum of -0s is +0
  }
}

template <int MT, bool E4M3>
cudaError_t launch_small_out(const void* x, int M, const uint8_t* w, const uint8_t* ws, int64_t N, int64_t K,
                             int bs, const float* alpha, float divisor, void* out, int out_kind,
                             cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + kRows - 1) / kRows)), block(kWarps * 32);
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  switch (out_kind) {
    case kOutF32:
      linear_small_kernel<MT, E4M3, float><<<grid, block, 0, stream>>>(xb, M, w, ws, N, K, bs, alpha, divisor, out);
      break;
    case kOutBF16:
      linear_small_kernel<MT, E4M3, __nv_bfloat16><<<grid, block, 0, stream>>>(xb, M, w, ws, N, K, bs, alpha,
                                                                               divisor, out);
      break;
    case kOutF16:
      linear_small_kernel<MT, E4M3, __half><<<grid, block, 0, stream>>>(xb, M, w, ws, N, K, bs, alpha, divisor, out);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t dequant_fp4_bf16(const uint8_t* data, const uint8_t* scales, void* out, int64_t rows, int64_t K,
                             int block_size, bool e4m3, cudaStream_t stream) {
  if (K % 16 != 0 || block_size % 16 != 0 || K % block_size != 0) return cudaErrorInvalidValue;
  const int64_t chunks = rows * (K / 16);
  if (chunks >= (int64_t{1} << 32) - 256 * 1024) return cudaErrorInvalidValue;  // 32-bit chunk index
  if (chunks == 0) return cudaSuccess;
  const int64_t blocks = (chunks + 255) / 256;
  const unsigned grid = static_cast<unsigned>(blocks < 1024 * 132 ? blocks : 1024 * 132);
  const auto* d = reinterpret_cast<const uint2*>(data);
  auto* o = static_cast<uint4*>(out);
  const auto n = static_cast<uint32_t>(chunks), cpr = static_cast<uint32_t>(K / 16),
             spr = static_cast<uint32_t>(K / block_size), cpb = static_cast<uint32_t>(block_size / 16);
  if (e4m3)
    dequant_kernel<true><<<grid, 256, 0, stream>>>(d, scales, o, n, cpr, spr, cpb);
  else
    dequant_kernel<false><<<grid, 256, 0, stream>>>(d, scales, o, n, cpr, spr, cpb);
  return cudaGetLastError();
}

cudaError_t fp4_linear_small(const void* x, int M, const uint8_t* w, const uint8_t* w_scales, int64_t N, int64_t K,
                             int block_size, bool e4m3, const float* alpha, float divisor, void* out, int out_kind,
                             cudaStream_t stream) {
  if (M < 1 || M > 16 || K % 16 != 0 || block_size % 16 != 0 || K % block_size != 0) return cudaErrorInvalidValue;
  if (K >= (int64_t{1} << 31)) return cudaErrorInvalidValue;  // 32-bit k index math in the kernel
  if (N == 0) return cudaSuccess;
  if (M <= 8) {
    return e4m3 ? launch_small_out<1, true>(x, M, w, w_scales, N, K, block_size, alpha, divisor, out, out_kind, stream)
                : launch_small_out<1, false>(x, M, w, w_scales, N, K, block_size, alpha, divisor, out, out_kind, stream);
  }
  return e4m3 ? launch_small_out<2, true>(x, M, w, w_scales, N, K, block_size, alpha, divisor, out, out_kind, stream)
              : launch_small_out<2, false>(x, M, w, w_scales, N, K, block_size, alpha, divisor, out, out_kind, stream);
}

}  // namespace fp4ref_gemm
