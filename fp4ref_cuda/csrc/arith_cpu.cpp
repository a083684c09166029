// CPU build of fp4ref_cuda's numerics: the dispatch, tile functions and arith.cuh that the kernels run, and
// the sm_90 GEMM's operand decoding (gemm_dequant.cuh), executed by a plain loop, or by emulated warps where the GPU code needs its warp (the lane-split rotations'
// shuffles, the dequantizers' staged stores). tests/test_arith_cpu.py compiles this file with -ffp-contract=off (strict
// IEEE float32, no FMA contraction, no fast-math) and calls it through ctypes against the reference.
#define FP4_WARP_EMU 1  // warp.cuh: warp exchanges and __syncwarp go to warp_emu_exchange / warp_emu_barrier
#include "dispatch.cuh"
#include "gemm_dequant.cuh"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace fp4ref {

// One emulated warp: its 32 lanes run as threads. butterfly_across_lanes' values pass through `slot` between
// two barriers (every lane writes, all wait, every lane reads its partner's, all wait before the next
// write); store_tile's stage is `stage`, its __syncwarp the same barrier.
struct WarpEmu {
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0;
  unsigned generation = 0;
  float slot[32][32];
  alignas(16) uint8_t stage[32 * 128];  // store_tile's stage (tiles of at most 128 bytes)

  void barrier() {
    std::unique_lock<std::mutex> lock(m);
    const unsigned gen = generation;
    if (++arrived == 32) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};

thread_local WarpEmu* t_warp = nullptr;
thread_local int t_lane = 0;

void warp_emu_exchange(const float* v, float* other, int n, int d) {
  WarpEmu& w = *t_warp;
  memcpy(w.slot[t_lane], v, sizeof(float) * n);
  w.barrier();
  memcpy(other, w.slot[t_lane ^ d], sizeof(float) * n);
  w.barrier();
}

void warp_emu_barrier() { t_warp->barrier(); }

struct HostExec {
  // f(i) for i < n in order; WARPS (n a multiple of 32): each warp of 32 consecutive i as 32 threads.
  template <bool WARPS = false, class F>
  void run(int64_t n, F f) {
    if constexpr (WARPS) {
      for_warps(n, [&](int64_t i) { f(i); });
    } else {
      for (int64_t i = 0; i < n; ++i) f(i);
    }
  }
  template <class S, int PREP_N, bool WARPS = false, class P, class F>
  void run_shared(int64_t n, P prep, F f) {
    if (n <= 0) return;
    S s;
    for (int j = 0; j < PREP_N; ++j) prep(j, &s);
    run<WARPS>(n, [&](int64_t i) { f(i, s); });
  }
  // store_tile's staging on emulated warps for launches of up to kStagedEmulationMax threads; larger ones
  // (the every-pattern sweeps) pass no stage and store each tile directly: the same bytes, without the cost
  // of 32 threads meeting at two barriers per warp. The staging is pure data movement, so the smaller
  // launches (most tests, and test_dequantize_staged_stores) prove its indexing.
  static constexpr int64_t kStagedEmulationMax = 4096;
  template <int BYTES, class F>
  void run_staged(int64_t n, F f) {
    static_assert(BYTES <= 128, "WarpEmu::stage holds 32 tiles of at most 128 bytes");
    if (n > kStagedEmulationMax) {
      for (int64_t i = 0; i < n; ++i) f(i, nullptr);
    } else {
      for_warps(n, [&](int64_t i) { f(i, t_warp->stage); });
    }
  }
  template <class F>
  void reduce_or(int64_t n, uint32_t* acc, F f) {
    for (int64_t i = 0; i < n; ++i) *acc |= f(i);
  }
  template <bool WARPS = false, class F>
  void reduce_max(int64_t n, uint32_t* acc, F f) {
    std::vector<uint32_t> v(n > 0 ? n : 0);
    run<WARPS>(n, [&](int64_t i) { v[i] = f(i); });
    for (const uint32_t x : v) *acc = x > *acc ? x : *acc;
  }
  int status() const { return 0; }

 private:
  // 32 threads, one per lane, run the warps one after another (a barrier between warps keeps a fast lane
  // from touching the shared buffers while its warp is still using them).
  template <class F>
  static void for_warps(int64_t n, F f) {
    if (n <= 0) return;
    WarpEmu warp;
    std::vector<std::thread> lanes;
    for (int lane = 0; lane < 32; ++lane)
      lanes.emplace_back([&, lane] {
        t_warp = &warp;
        t_lane = lane;
        for (int64_t w0 = 0; w0 < n; w0 += 32) {
          f(w0 + lane);
          warp.barrier();
        }
      });
    for (auto& t : lanes) t.join();
  }
};

}  // namespace fp4ref

using namespace fp4ref;

extern "C" {

int cpu_encode(int dtype, const void* x, uint8_t* out, int64_t n, int fmt, int saturate, uint32_t* err) {
  HostExec ex;
  return do_encode(ex, dtype, x, out, n, fmt, saturate != 0, err);
}

int cpu_decode(const uint8_t* codes, float* out, int64_t n, int fmt, uint32_t* err) {
  HostExec ex;
  return do_decode(ex, codes, out, n, fmt, err);
}

int cpu_pack(const uint8_t* codes, uint8_t* out, int64_t n_out, uint32_t* err) {
  HostExec ex;
  return do_pack(ex, codes, out, n_out, err);
}

int cpu_unpack(const uint8_t* packed, uint8_t* out, int64_t n_in) {
  HostExec ex;
  return do_unpack(ex, packed, out, n_in);
}

int cpu_swizzle(const uint8_t* scales, uint8_t* out, int64_t rows, int64_t cols) {
  HostExec ex;
  return do_swizzle(ex, scales, out, rows, cols);
}

int cpu_unswizzle(const uint8_t* blocked, uint8_t* out, int64_t rows, int64_t cols) {
  HostExec ex;
  return do_unswizzle(ex, blocked, out, rows, cols);
}

int cpu_finite_amax(int dtype, const void* x, int64_t n, int hb, const float* signs, int64_t sign_len, float rscale,
                    uint32_t* amax_bits) {
  HostExec ex;
  return do_finite_amax(ex, dtype, x, n, hb, signs, sign_len, rscale, amax_bits);
}

int cpu_hadamard(int dtype, const void* x, float* out, int64_t n, int hb, const float* signs, int64_t sign_len,
                 float rscale) {
  HostExec ex;
  return do_hadamard(ex, dtype, x, out, n, hb, signs, sign_len, rscale);
}

// The QuantParams fields as plain arguments (ctypes-friendly).
int cpu_quant(int dtype, int kind, int qb, int hb, const void* x, int64_t n, int fmt_id, int mode, const float* signs,
              int64_t sign_len, float rscale, const float* amax, float* global_scale, uint8_t* data, uint8_t* scales,
              uint8_t* swizzled, int64_t cols) {
  HostExec ex;
  const QuantParams p{fmt_id, mode, signs, sign_len, rscale, amax, global_scale, data, scales, swizzled, cols};
  return do_quant(ex, dtype, kind, qb, hb, x, n, p);
}

int cpu_dequant(int out_dtype, int kind, int qb, int64_t n, int fmt_id, int stretch, const uint8_t* data,
                const uint8_t* scales, const float* global_scale, void* out) {
  HostExec ex;
  const DequantParams p{fmt_id, stretch != 0, data, scales, global_scale};
  return do_dequant(ex, out_dtype, kind, qb, n, p, out);
}

// Single-value entry points of arith.cuh, for corner-case tables.
uint32_t cpu_scale_byte(uint32_t amax_bits, int fmt, int mode) { return scale_byte(amax_bits, make_fmt(fmt), mode); }
float cpu_te_encode_scale(float amax) { return te_encode_scale(amax); }
void cpu_encode_e2m1_sat(const float* x, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = (uint8_t)encode_e2m1_sat(x[i]);
}
void cpu_decode_e2m1_x2(const uint8_t* codes, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = decode_e2m1_x2(codes[i]);
}

// The sm_90 FP4 GEMM's dequantization (gemm_dequant.cuh, the functions gemm_sm90.cu calls) of a (rows, K)
// operand: packed E2M1 (rows, K/2) with scale bytes (rows, K/block_size), into bf16 bits (rows, K). path 0:
// dequant_fp4_bf16 (dequant_pair_bf16x2); 1: the small-M kernels' two-multiply pairs (fp4_pair with
// scale_bf16x2); 2: the pipelined kernel's one-multiply pairs (E8M0 bytes < 128 only, e8m0_bf16x2_x2p126);
// 3: the pipelined NVFP4 kernel's E4M3 byte pairs (block_size 16, e4m3_pair_to_bf16x2 over blocks 2j, 2j+1).
int cpu_gemm_dequant(int path, int e4m3, int block_size, const uint8_t* packed, const uint8_t* scales, int64_t rows,
                     int64_t K, uint16_t* out) {
  const int64_t spr = block_size > 0 ? K / block_size : 0;
  if (K % 16 != 0 || block_size % 16 != 0 || K % block_size != 0 || (path == 2 && e4m3) ||
      (path == 3 && (!e4m3 || block_size != 16 || spr % 2 != 0)))
    return 1;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t w = 0; w < K / 8; ++w) {  // word w: elements 8w .. 8w + 7, element 8w + j in nibble j
      uint32_t q;
      memcpy(&q, packed + r * (K / 2) + 4 * w, 4);
      const int64_t blk = 8 * w / block_size;
      const uint32_t byte = scales[r * spr + blk];
      uint16_t* o = out + r * K + 8 * w;
      if (path == 0) {
        const float s = decode_block_scale(byte, e4m3 != 0);
        for (int i = 0; i < 4; ++i) {
          const uint32_t v = dequant_pair_bf16x2(q, i, s);
          o[2 * i] = (uint16_t)v;
          o[2 * i + 1] = (uint16_t)(v >> 16);
        }
        continue;
      }
      uint32_t s2;
      if (path == 1) {
        s2 = e4m3 ? scale_bf16x2<true>(byte) : scale_bf16x2<false>(byte);
      } else if (path == 2) {
        if (byte >= 128) return 2;
        s2 = e8m0_bf16x2_x2p126(byte);
      } else {
        uint32_t s0, s1;
        e4m3_pair_to_bf16x2(scales[r * spr + (blk & ~int64_t{1})] | (scales[r * spr + (blk | 1)] << 8), s0, s1);
        s2 = (blk & 1) ? s1 : s0;
      }
      const uint32_t pairs[4] = {path == 2 ? fp4_pair<0, true>(q, s2) : fp4_pair<0>(q, s2),
                                 path == 2 ? fp4_pair<1, true>(q, s2) : fp4_pair<1>(q, s2),
                                 path == 2 ? fp4_pair<2, true>(q, s2) : fp4_pair<2>(q, s2),
                                 path == 2 ? fp4_pair<3, true>(q, s2) : fp4_pair<3>(q, s2)};
      for (int P = 0; P < 4; ++P) {  // pair P: nibbles (3 - P, 7 - P) in its (low, high) halves
        o[3 - P] = (uint16_t)pairs[P];
        o[7 - P] = (uint16_t)(pairs[P] >> 16);
      }
    }
  }
  return 0;
}

// Mismatches of the quantizers' fast encoders against the generic encode(), over the float32 bit patterns
// lo, lo + stride, ... < hi. which 0: encode_e4m3_sat_nonneg (patterns must be >= 0, not NaN); which 2:
// rceil_exponent against rceil_exponent_by_division (finite, >= 0); which 1:
// encode_e2m1_sat_x8 on 8 patterns at a time, their signs flipped by a pseudo-random mask per group so that
// every group mixes signs (NaN skipped: the quantizers zero NaN blocks).
int64_t cpu_fast_codec_mismatches(int which, uint64_t lo, uint64_t hi, uint64_t stride) {
  int64_t bad = 0;
  const Fmt e4m3 = make_fmt(E4M3), e2m1 = make_fmt(E2M1);
  if (which == 0) {
    for (uint64_t u = lo; u < hi; u += stride)
      bad += encode_e4m3_sat_nonneg(u2f((uint32_t)u)) != encode(u2f((uint32_t)u), e4m3, true);
    return bad;
  }
  if (which == 2) {  // rceil_exponent against its definition, every MX element format (finite amax >= 0)
    for (int fmt = E2M1; fmt <= E5M2; ++fmt)
      for (uint64_t u = lo; u < hi; u += stride)
        bad += rceil_exponent((uint32_t)u, make_fmt(fmt)) != rceil_exponent_by_division((uint32_t)u, make_fmt(fmt));
    return bad;
  }
  float y[8];
  int k = 0;
  uint32_t group = 0, flip = 0;
  for (uint64_t u = lo; u < hi; u += stride) {
    if (k == 0) flip = (++group * 0x9E3779B1u) >> 24;
    const float v = u2f((uint32_t)u ^ (((flip >> k) & 1u) << 31));
    if (v != v) continue;
    y[k++] = v;
    if (k < 8 && u + stride < hi) continue;
    for (int j = k; j < 8; ++j) y[j] = 0.0f;
    const uint32_t w = encode_e2m1_sat_x8(y);
    for (int j = 0; j < k; ++j) bad += ((w >> (4 * j)) & 0xFu) != encode(y[j], e2m1, true);
    k = 0;
  }
  return bad;
}

// E2M1 code mismatches between the fused MXFP4 quantizer's two ways of scaling a rotated value u:
// fp32(fp32(u * r) * 2^-X) (the definition) and fp32(u * fp32(r * 2^-X)) (the fold), for the scale bytes
// [byte_lo, byte_hi], rscale r of each fused rotation block (16..128), and u of both signs within 64 ulps of
// where the product meets each E2M1 grid point and rounding midpoint, and of where fp32(u * r) becomes subnormal.
uint32_t cpu_fold_byte_min() { return FOLD_BYTE_MIN; }
uint32_t cpu_fold_byte_max() { return FOLD_BYTE_MAX; }

int64_t cpu_fold_mismatches(uint32_t byte_lo, uint32_t byte_hi) {
  const float rs[4] = {0.25f, 0.17677669f, 0.125f, 0.088388346f};  // fp32(1 / fp32(sqrt(HB))), HB = 16..128
  const float targets[16] = {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 5.0f, 6.0f,
                             7.0f, 0.0f};
  int64_t bad = 0;
  for (uint32_t byte = byte_lo; byte <= byte_hi; ++byte) {
    const float s = inverse_scale(byte);
    for (const float r : rs) {
      const float f = fmul(r, s);
      for (const float m : targets) {
        // u0: the real m * 2^X / r, rounded; the last target is u with fp32(u * r) at the smallest normal
        const float u0 = m != 0.0f ? (float)((double)m / (double)s / (double)r) : (float)(0x1p-126 / (double)r);
        const uint32_t b0 = f2u(u0);
        if ((b0 & 0x7F800000u) == 0x7F800000u || b0 == 0) continue;
        for (int d = -64; d <= 64; ++d) {
          for (const uint32_t sign : {0u, 0x80000000u}) {
            const float u = u2f((uint32_t)((int64_t)b0 + d) | sign);
            if (!(fabsf(u) < 3.0e38f)) continue;
            const uint32_t c_ref = encode_e2m1_sat(fmul(fmul(u, r), s));
            const uint32_t c_fold = encode_e2m1_sat(fmul(u, f));
            bad += c_ref != c_fold;
          }
        }
      }
    }
  }
  return bad;
}

// ids.h for tests/test_arith_cpu.py, which compares them with fp4ref_cuda/ids.py: every id in a fixed order.
int cpu_ids(int32_t* out, int n) {
  const int32_t ids[] = {E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FLOOR, CEIL, EVEN, RCEIL, STRETCH,
                         DT_F32, DT_BF16, DT_F16, MX_E2M1, MX_ANY, NV_TE, FMT_LAST, MX_ELEM_LAST, MODE_LAST};
  const int m = (int)(sizeof(ids) / sizeof(ids[0]));
  for (int i = 0; i < n && i < m; ++i) out[i] = ids[i];
  return m;
}

// ids.h's layout rules for (rows, cols, r, c) quadruples: blocked_size(rows, cols) and blocked_offset(r, c, cols).
int cpu_blocked(const int64_t* q, int64_t n, int64_t* size, int64_t* offset) {
  for (int64_t i = 0; i < n; ++i) {
    size[i] = blocked_size(q[4 * i], q[4 * i + 1]);
    offset[i] = blocked_offset(q[4 * i + 2], q[4 * i + 3], q[4 * i + 1]);
  }
  return 0;
}

}  // extern "C"
