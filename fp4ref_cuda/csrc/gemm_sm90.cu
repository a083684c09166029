// FP4 GEMM building blocks for sm_90 (and, through PTX, any sm_80+ GPU):
//  * dequant_fp4_bf16: packed E2M1 + block scales -> bf16, exact (every E2M1 x E8M0 and E2M1 x E4M3
//    value that is finite in float32 is a bf16 number), feeding a cuBLAS bf16 GEMM for large M;
//  * fp4_linear_small: weight-only GEMM for M <= 16 that dequantizes W in registers and multiplies on
//    the tensor cores (mma.sync m16n8k16 bf16, float32 accumulation); W never exists in bf16 in memory.
//    Two data paths with identical arithmetic: W loaded into registers one chunk ahead, or streamed
//    through a multi-stage cp.async pipeline in shared memory (`pipelined`).
// Raw pointers only (no torch headers): the bindings validate shapes, dtypes and alignment.
#include "gemm_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>

#include "gemm_dequant.cuh"
#include "ptx.cuh"

namespace fp4ref_gemm {
namespace {

// Every decode of an operand goes through arith.cuh / gemm_dequant.cuh, the functions the CPU build checks
// on every code x scale byte (tests/test_arith_cpu.py::test_gemm_dequant_every_code_and_scale).
using fp4ref::decode_block_scale;
using fp4ref::fp4_pair;

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
    const float s = decode_block_scale(__ldg(scales + row * scales_per_row + kc / chunks_per_block), E4M3);
    uint32_t o[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = fp4ref::dequant_pair_bf16x2(i < 4 ? q.x : q.y, i & 3, s);
    out[2 * static_cast<size_t>(c)] = make_uint4(o[0], o[1], o[2], o[3]);
    out[2 * static_cast<size_t>(c) + 1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
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
// Two kernels share this split, the chunk arithmetic (mma_chunk) and the reduction (reduce_store), so they
// give identical bits: linear_small_kernel loads W into registers one chunk ahead (any K % 16 == 0);
// linear_pipe_kernel streams W and x through a kStages-deep cp.async pipeline in shared memory (K % 32 == 0,
// 16-byte aligned operands), which keeps several times more bytes in flight per SM.
constexpr int kRT = 4, kWarps = 8, kRows = 16 * kRT, kChunk = 128;

struct SmallArgs {
  const __nv_bfloat16* x;
  int M;
  const uint8_t* w;
  const uint8_t* ws;
  int64_t N, K;
  int block_size;
  const float* alpha;
  float divisor;
  void* out;
};

// Scale bytes of chunk c for this lane's rows (g, g + 8 of each row tile) and its two 16-wide halves.
__device__ __forceinline__ void load_scales(const SmallArgs& a, int64_t n0, int64_t c, int64_t c_end, int g, int p,
                                            uint32_t (&sb)[kRT][2][2]) {
  const int64_t k0 = c * kChunk + 32 * p;
  const bool v0 = k0 < a.K, v1 = k0 + 16 < a.K;
  const uint32_t spr = static_cast<uint32_t>(a.K) / static_cast<uint32_t>(a.block_size);
  const uint32_t col0 = static_cast<uint32_t>(k0) / static_cast<uint32_t>(a.block_size);
  const uint32_t col1 = static_cast<uint32_t>(k0 + 16) / static_cast<uint32_t>(a.block_size);
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t n = n0 + rt * 16 + g + 8 * r;
      const bool ok = n < a.N && c < c_end;
      // A zero-filled half has code 0 elements; its scale byte 0 is finite in both formats.
      sb[rt][r][0] = (ok && v0) ? __ldg(a.ws + n * spr + col0) : 0u;
      sb[rt][r][1] = (ok && v1) ? __ldg(a.ws + n * spr + col1) : 0u;
    }
}

// bf16x2 (s, s) of each scale byte (sc[rt][r][half]); ONE_SCALE: both 16-wide halves share the byte
// (block sizes that are multiples of 32), converted once.
template <bool E4M3, bool ONE_SCALE>
__device__ __forceinline__ void convert_scales(const uint32_t (&sbytes)[kRT][2][2], uint32_t (&sc)[kRT][2][2]) {
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        if (ONE_SCALE && hf == 1) {
          sc[rt][r][1] = sc[rt][r][0];
          continue;
        }
        sc[rt][r][hf] = fp4ref::scale_bf16x2<E4M3>(sbytes[rt][r][hf]);
      }
}

// One chunk: dequantize this lane's W words (wc) with their bf16x2 scales (sc) and multiply by x (xv).
// ONE_MUL: sc already holds scale * 2^126 (finite and exact: scales below 2 only), so each pair takes one
// multiply, raw * (scale * 2^126) = e2m1 * scale, the same exact product as the two-multiply path.
template <int MT, bool ONE_MUL = false>
__device__ __forceinline__ void mma_chunk(float (&acc)[kRT][MT][4], const uint32_t (&wc)[kRT][2][4],
                                          const uint32_t (&sc)[kRT][2][2], const uint4 (&xv)[MT][4]) {
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
          a0 = fp4_pair<0, ONE_MUL>(wc[rt][0][j], s_g);  a2 = fp4_pair<1, ONE_MUL>(wc[rt][0][j], s_g);
          a1 = fp4_pair<0, ONE_MUL>(wc[rt][1][j], s_g8); a3 = fp4_pair<1, ONE_MUL>(wc[rt][1][j], s_g8);
        } else {
          a0 = fp4_pair<2, ONE_MUL>(wc[rt][0][j], s_g);  a2 = fp4_pair<3, ONE_MUL>(wc[rt][0][j], s_g);
          a1 = fp4_pair<2, ONE_MUL>(wc[rt][1][j], s_g8); a3 = fp4_pair<3, ONE_MUL>(wc[rt][1][j], s_g8);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          fp4ref::ptx::mma_m16n8k16_bf16(acc[rt][mt], a0, a1, a2, a3, b0[mt], b1[mt]);
      }
    }
  }
}

// Accumulators to shared memory (warp wi's at red + wi * warp_stride, [fragment value][lane]), then each
// output is the fixed-order sum over the warps, times alpha, divided by divisor, rounded once to OutT.
template <int MT, typename OutT>
__device__ __forceinline__ void reduce_store(const float (&acc)[kRT][MT][4], float* red, int warp_stride,
                                             const SmallArgs& a, int64_t n0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp * warp_stride + ((rt * MT + mt) * 4 + i) * 32 + lane] = acc[rt][mt][i];
  __syncthreads();

  const float al = a.alpha ? *a.alpha : 1.0f;
  for (int idx = threadIdx.x; idx < kRows * MT * 8; idx += blockDim.x) {
    const int r = idx % kRows, m = idx / kRows;
    const int64_t n = n0 + r;
    if (m >= a.M || n >= a.N) continue;
    // Accumulator fragment of (row r, column m): c0,c1 = (g, 2p..2p+1), c2,c3 = (g+8, 2p..2p+1).
    const int rr = r % 16, mm = m % 8;
    const int v = ((r / 16) * MT + m / 8) * 4 + (rr / 8) * 2 + (mm & 1);
    const int ln = (rr % 8) * 4 + mm / 2;
    float s = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) s += red[wi * warp_stride + v * 32 + ln];
    if (a.alpha) s *= al;
    if (a.divisor != 1.0f) s /= a.divisor;
    store_out<OutT>(a.out, static_cast<int64_t>(m) * a.N + n, s + 0.0f);  // + 0: the sum of -0s is +0
  }
}

template <int MT>
__device__ __forceinline__ void zero_acc(float (&acc)[kRT][MT][4]) {
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[rt][mt][i] = 0.0f;
}

template <int MT, bool E4M3, typename OutT>
__global__ void __launch_bounds__(kWarps * 32) linear_small_kernel(const SmallArgs a) {
  __shared__ float red[kWarps * kRT * MT * 4 * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, p = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nchunks = (a.K + kChunk - 1) / kChunk;
  const int64_t c_begin = nchunks * warp / kWarps, c_end = nchunks * (warp + 1) / kWarps;
  const int64_t row_bytes = a.K / 2;

  float acc[kRT][MT][4];
  zero_acc<MT>(acc);

  // W and its scale bytes are loaded one chunk ahead (registers double-buffered) so that HBM latency
  // overlaps the dequantization and mma work of the current chunk.
  uint32_t wq[kRT][2][4], sb[kRT][2][2];
  auto load_w = [&](int64_t c) {
    const int64_t k0 = c * kChunk + 32 * p;
    const bool v0 = k0 < a.K, v1 = k0 + 16 < a.K;  // K % 16 == 0: each 16-wide half is all in or all out
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t n = n0 + rt * 16 + g + 8 * r;
        const bool ok = n < a.N && c < c_end;
        const uint2* src = reinterpret_cast<const uint2*>(a.w + n * row_bytes + k0 / 2);
        const uint2 lo = (ok && v0) ? __ldg(src) : make_uint2(0u, 0u);
        const uint2 hi = (ok && v1) ? __ldg(src + 1) : make_uint2(0u, 0u);
        wq[rt][r][0] = lo.x; wq[rt][r][1] = lo.y; wq[rt][r][2] = hi.x; wq[rt][r][3] = hi.y;
      }
    }
    load_scales(a, n0, c, c_end, g, p, sb);
  };
  load_w(c_begin);

  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t k0 = c * kChunk + 32 * p;
    const bool v0 = k0 < a.K, v1 = k0 + 16 < a.K;
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
      const uint4* src = reinterpret_cast<const uint4*>(a.x + static_cast<int64_t>(m) * a.K + k0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = m < a.M && (j < 2 ? v0 : v1);
        xv[mt][j] = ok ? __ldg(src + j) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
    uint32_t sbf[kRT][2][2];
    convert_scales<E4M3, false>(sc, sbf);
    mma_chunk<MT>(acc, wc, sbf, xv);
  }
  reduce_store<MT, OutT>(acc, red, kRT * MT * 4 * 32, a, n0);
}

// ---- the cp.async pipeline ----------------------------------------------------------------------------
// Each lane copies, and later reads, only its own 16-byte pieces (its W words and x vectors of a chunk),
// so the pipeline needs no barrier: cp.async.wait_group makes a lane's own completed copies visible to it.
// Shared memory per lane and stage: kRT * 2 W pieces, then MT * 4 x pieces; per warp: kStages such slots
// for each of its 32 lanes (stage-major, lane-minor: conflict-free 16-byte accesses).
template <int MT>
struct Pipe {
  static constexpr int kStages = MT == 1 ? 4 : 3;  // 196 KiB of shared memory either way
  static constexpr int kPieces = kRT * 2 + MT * 4;
  static constexpr int kWarpBytes = kStages * 32 * kPieces * 16;
  static constexpr int kBytes = kWarps * kWarpBytes;
  static_assert(kWarpBytes >= kRT * MT * 4 * 32 * 4, "the reduction reuses each warp's own slots");
};

// The pipelined kernel serves the two standard block sizes (BS = 32: MXFP4, one scale byte per lane, row
// and chunk; BS = 16: NVFP4, two adjacent bytes, one 16-bit load) and keeps its per-chunk integer work
// small: base pointers and row strides are set up once per lane (PipeLane), chunk indices are 32-bit.
// Its steps: PipeLane::issue (cp.async of a chunk into a stage), PipeLane::load_scales (the chunk's scale
// bytes, straight to registers), PipeLane::read_stage (a landed stage to registers), pipe_chunk (scales to
// bf16x2, dequantize and multiply).
template <int MT, int BS>
struct PipeLane {
  using P = Pipe<MT>;
  // W, scale and x row i of this lane start at base + i * stride (+ the chunk's offset), rows past N or M
  // included: they copy nothing (src-size 0 reads nothing, as CUTLASS's zfill relies on) and their scale
  // loads are predicated off.
  const uint8_t* wbase;
  const uint8_t* sbase;
  const __nv_bfloat16* xbase;
  const SmallArgs& a;                 // the kernel's parameters (x rows are a.K apart)
  int64_t wstride, sstride;           // 8 rows of K/2 bytes; 8 rows of K/BS bytes
  int64_t rows_left;                  // row i (8i below this lane's first) exists iff 8i < rows_left
  int cols_left;                      // x row mt exists iff 8 mt < cols_left
  uint4* slots;                       // stage s at slots + s * 32 * kPieces
  uint32_t c_end, k_end;              // this warp's slice ends at chunk c_end; K < 2^31 (the launcher checks)
  int p;                              // quad lane: k in [32p, 32p + 32) of each chunk

  __device__ __forceinline__ PipeLane(const SmallArgs& args, int64_t n0, uint4* smem, uint32_t c_end_) : a(args) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
    p = lane & 3;
    wstride = 4 * a.K;
    sstride = 8 * (a.K / BS);
    wbase = a.w + (n0 + g) * (a.K / 2) + 16 * p;
    sbase = a.ws + (n0 + g) * (a.K / BS) + (BS == 32 ? p : 2 * p);
    xbase = a.x + static_cast<int64_t>(g) * a.K + 32 * p;
    rows_left = a.N - (n0 + g);
    cols_left = a.M - g;
    slots = smem + static_cast<size_t>(warp) * (P::kWarpBytes / 16) + lane * P::kPieces;
    c_end = c_end_;
    k_end = static_cast<uint32_t>(a.K);
  }

  __device__ __forceinline__ bool chunk_valid(uint32_t c) const {
    return c * kChunk + 32 * p < k_end;  // K % 32 == 0: all 32 elements of the lane in, or all out
  }

  // Copies chunk c into `stage` (nothing past this warp's slice); always commits a group, empty or not, so
  // that "all but the newest kStages - 1 groups are complete" always means "chunk c has landed".
  __device__ __forceinline__ void issue(uint32_t c, int stage) const {
    if (c < c_end) {
      const bool valid = chunk_valid(c);
      uint4* d = slots + stage * 32 * P::kPieces;
      const uint8_t* w = wbase + c * (kChunk / 2);
#pragma unroll
      for (int i = 0; i < kRT * 2; ++i)
        fp4ref::ptx::cp_async_cg16(d + i, w + i * wstride, valid && 8 * i < rows_left);
      const __nv_bfloat16* x = xbase + c * kChunk;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          fp4ref::ptx::cp_async_cg16(d + kRT * 2 + mt * 4 + j, x + static_cast<int64_t>(8 * mt) * a.K + 8 * j,
                                     valid && 8 * mt < cols_left);
    }
    fp4ref::ptx::cp_async_commit();
  }

  // Scale bytes of chunk c: one per row for BS = 32, two adjacent ones (one 16-bit load) for BS = 16; a
  // missing row or chunk reads as byte 0 (finite in both formats; its elements are zero-filled).
  __device__ __forceinline__ void load_scales(uint32_t c, uint32_t (&sb)[kRT][2]) const {
    const bool valid = c < c_end && chunk_valid(c);
    const uint8_t* sp = sbase + c * (kChunk / BS);
#pragma unroll
    for (int i = 0; i < kRT * 2; ++i) {
      const bool ok = valid && 8 * i < rows_left;
      if constexpr (BS == 32) sb[i / 2][i % 2] = ok ? __ldg(sp + i * sstride) : 0u;
      else sb[i / 2][i % 2] = ok ? __ldg(reinterpret_cast<const uint16_t*>(sp + i * sstride)) : 0u;
    }
  }

  // A landed stage's W words and x vectors, to registers.
  __device__ __forceinline__ void read_stage(int stage, uint32_t (&wc)[kRT][2][4], uint4 (&xv)[MT][4]) const {
    const uint4* d = slots + stage * 32 * P::kPieces;
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint4 v = d[rt * 2 + r];
        wc[rt][r][0] = v.x; wc[rt][r][1] = v.y; wc[rt][r][2] = v.z; wc[rt][r][3] = v.w;
      }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[mt][j] = d[kRT * 2 + mt * 4 + j];
  }
};

// The scale bytes of a chunk (PipeLane::load_scales) as bf16x2 (s, s) per 16-wide half: E4M3 pairs through
// the hardware e4m3x2 conversion, everything else through scale_bf16x2.
template <bool E4M3, int BS>
__device__ __forceinline__ void pipe_scales_bf16x2(const uint32_t (&sb)[kRT][2], uint32_t (&sc)[kRT][2][2]) {
  if constexpr (BS == 16 && E4M3) {
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r) fp4ref::e4m3_pair_to_bf16x2(sb[rt][r], sc[rt][r][0], sc[rt][r][1]);
  } else {
    uint32_t bytes[kRT][2][2];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        bytes[rt][r][0] = BS == 32 ? sb[rt][r] : sb[rt][r] & 0xFFu;
        bytes[rt][r][1] = BS == 32 ? sb[rt][r] : sb[rt][r] >> 8;
      }
    convert_scales<E4M3, BS == 32>(bytes, sc);
  }
}

// One chunk of the pipelined kernel: its scales to bf16x2, then dequantize and multiply (mma_chunk).
template <int MT, bool E4M3, int BS>
__device__ __forceinline__ void pipe_chunk(float (&acc)[kRT][MT][4], const uint32_t (&wc)[kRT][2][4],
                                           const uint4 (&xv)[MT][4], const uint32_t (&sb)[kRT][2]) {
  if constexpr (!E4M3 && BS == 32) {
    // E8M0 bytes below 128 (scales below 2, as for any weight with |w| < 8 per block): scale * 2^126 is a
    // finite bf16, and one multiply per pair suffices. Warp-uniform, so the branch does not diverge.
    bool small = true;
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r) small = small && sb[rt][r] < 128u;
    if (__all_sync(0xFFFFFFFFu, small)) {
      uint32_t s126[kRT][2][2];
#pragma unroll
      for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
        for (int r = 0; r < 2; ++r) s126[rt][r][0] = s126[rt][r][1] = fp4ref::e8m0_bf16x2_x2p126(sb[rt][r]);
      mma_chunk<MT, true>(acc, wc, s126, xv);
      return;
    }
  }
  uint32_t sc[kRT][2][2];  // the two-multiply scales (for MXFP4 only on the rarer branch above)
  pipe_scales_bf16x2<E4M3, BS>(sb, sc);
  mma_chunk<MT>(acc, wc, sc, xv);
}

template <int MT, bool E4M3, typename OutT, int BS>
__global__ void __launch_bounds__(kWarps * 32) linear_pipe_kernel(const SmallArgs a) {
  using P = Pipe<MT>;
  extern __shared__ __align__(16) uint4 smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const uint32_t nchunks = static_cast<uint32_t>((a.K + kChunk - 1) / kChunk);
  const uint32_t c_begin = nchunks * warp / kWarps, c_end = nchunks * (warp + 1) / kWarps;
  const PipeLane<MT, BS> lane(a, n0, smem, c_end);

  float acc[kRT][MT][4];
  zero_acc<MT>(acc);
#pragma unroll
  for (int s = 0; s < P::kStages - 1; ++s) lane.issue(c_begin + s, s);
  uint32_t sb[kRT][2];
  lane.load_scales(c_begin, sb);

  int stage = 0;
  for (uint32_t c = c_begin; c < c_end; ++c) {
    lane.issue(c + P::kStages - 1, stage == 0 ? P::kStages - 1 : stage - 1);  // the stage read last iteration
    uint32_t sb_cur[kRT][2];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
      for (int r = 0; r < 2; ++r) sb_cur[rt][r] = sb[rt][r];
    lane.load_scales(c + 1, sb);  // one chunk ahead, into registers
    fp4ref::ptx::cp_async_wait<P::kStages - 1>();
    uint32_t wc[kRT][2][4];
    uint4 xv[MT][4];
    lane.read_stage(stage, wc, xv);
    pipe_chunk<MT, E4M3, BS>(acc, wc, xv, sb_cur);
    stage = stage + 1 == P::kStages ? 0 : stage + 1;
  }
  fp4ref::ptx::cp_async_wait<0>();
  reduce_store<MT, OutT>(acc, reinterpret_cast<float*>(smem), P::kWarpBytes / 4, a, n0);
}

template <int MT, bool E4M3, typename OutT, int BS>
cudaError_t launch_pipe(const SmallArgs& a, dim3 grid, dim3 block, cudaStream_t stream) {
  // The shared-memory opt-in belongs to each device's context: set once per device (a repeated set from
  // two host threads is harmless), not on every call, which would add a driver call to each launch.
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> configured[kMaxDevices];
  int dev = 0;
  const cudaError_t got = cudaGetDevice(&dev);
  if (got != cudaSuccess) return got;
  if (dev >= kMaxDevices || !configured[dev].load(std::memory_order_acquire)) {
    const cudaError_t attr = cudaFuncSetAttribute(linear_pipe_kernel<MT, E4M3, OutT, BS>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize, Pipe<MT>::kBytes);
    if (attr != cudaSuccess) return attr;
    if (dev < kMaxDevices) configured[dev].store(true, std::memory_order_release);
  }
  linear_pipe_kernel<MT, E4M3, OutT, BS><<<grid, block, Pipe<MT>::kBytes, stream>>>(a);
  return cudaGetLastError();
}

template <int MT, bool E4M3, typename OutT>
cudaError_t launch_kernel(const SmallArgs& a, bool pipelined, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.N + kRows - 1) / kRows)), block(kWarps * 32);
  if (pipelined && a.block_size == 32) return launch_pipe<MT, E4M3, OutT, 32>(a, grid, block, stream);
  if (pipelined && a.block_size == 16) return launch_pipe<MT, E4M3, OutT, 16>(a, grid, block, stream);
  linear_small_kernel<MT, E4M3, OutT><<<grid, block, 0, stream>>>(a);
  return cudaGetLastError();
}

template <int MT, bool E4M3>
cudaError_t launch_small_out(const SmallArgs& a, int out_kind, bool pipelined, cudaStream_t stream) {
  switch (out_kind) {
    case fp4ref::DT_F32: return launch_kernel<MT, E4M3, float>(a, pipelined, stream);
    case fp4ref::DT_BF16: return launch_kernel<MT, E4M3, __nv_bfloat16>(a, pipelined, stream);
    case fp4ref::DT_F16: return launch_kernel<MT, E4M3, __half>(a, pipelined, stream);
    default: return cudaErrorInvalidValue;
  }
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
                             bool pipelined, cudaStream_t stream) {
  if (M < 1 || M > 16 || K % 16 != 0 || block_size % 16 != 0 || K % block_size != 0) return cudaErrorInvalidValue;
  if (K >= (int64_t{1} << 31)) return cudaErrorInvalidValue;  // 32-bit k index math in the kernel
  if (N == 0) return cudaSuccess;
  // The pipeline copies 16-byte pieces: W rows of K/2 bytes and x rows of 2K bytes must keep them aligned.
  // Block size 16 reads its two scale bytes with one 16-bit load.
  pipelined = pipelined && K % 32 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
              (block_size != 16 || reinterpret_cast<uintptr_t>(w_scales) % 2 == 0);
  const SmallArgs a{static_cast<const __nv_bfloat16*>(x), M, w, w_scales, N, K, block_size, alpha, divisor, out};
  if (M <= 8) {
    return e4m3 ? launch_small_out<1, true>(a, out_kind, pipelined, stream)
                : launch_small_out<1, false>(a, out_kind, pipelined, stream);
  }
  return e4m3 ? launch_small_out<2, true>(a, out_kind, pipelined, stream)
              : launch_small_out<2, false>(a, out_kind, pipelined, stream);
}

}  // namespace fp4ref_gemm
