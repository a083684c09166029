// CPU build of fp4ref_cuda's numerics: the dispatch, tile functions and arith.cuh that the kernels run,
// executed by a plain loop. tests/test_arith_cpu.py compiles this file with -ffp-contract=off (strict
// IEEE float32, no FMA contraction, no fast-math) and calls it through ctypes against the reference.
#include "dispatch.cuh"

namespace fp4ref {

struct HostExec {
  template <class F>
  void run(int64_t n, F f) {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
  template <class F>
  void reduce_or(int64_t n, uint32_t* acc, F f) {
    for (int64_t i = 0; i < n; ++i) *acc |= f(i);
  }
  template <class F>
  void reduce_max(int64_t n, uint32_t* acc, F f) {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t v = f(i);
      *acc = v > *acc ? v : *acc;
    }
  }
  int status() const { return 0; }
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

}  // extern "C"
