// Raw-pointer launchers of fp4ref_cuda (no torch and no CUDA headers, so that bindings.cpp and the CPU
// test build include it cheaply). Every launcher returns 0 or a cudaError_t value, or ERR_UNSUPPORTED.
#pragma once
#include <stdint.h>

#include "ids.h"

namespace fp4ref {

constexpr int ERR_UNSUPPORTED = -1;

struct QuantParams {
  int fmt_id;           // MX element format (FmtId)
  int mode;             // MX scale mode (ScaleMode)
  const float* signs;   // ±1 applied before the rotation (nullptr: none)
  int64_t sign_len;     // rotation block or row length
  float rscale;         // fp32(1 / fp32(sqrt(rotation block)))
  const float* amax;    // NVFP4: the global amax A (device scalar)
  float* global_scale;  // NVFP4: S_dec out (written by tile 0)
  uint8_t* data;        // packed e2m1, or one byte per element
  uint8_t* scales;      // one byte per block, row-major [rows, cols]
  uint8_t* swizzled;    // nullptr, or the 128x4 blocked copy of scales (zero-filled beforehand if padded)
  int64_t cols;         // blocks per row
};

struct DequantParams {
  int fmt_id;
  bool stretch;
  const uint8_t* data;
  const uint8_t* scales;
  const float* global_scale;  // NVFP4
};

// `stream` is a cudaStream_t.
int launch_encode(int dtype, const void* x, uint8_t* out, int64_t n, int fmt, bool saturate, uint32_t* err, void* stream);
int launch_decode(const uint8_t* codes, float* out, int64_t n, int fmt, uint32_t* err, void* stream);
int launch_pack(const uint8_t* codes, uint8_t* out, int64_t n_out, uint32_t* err, void* stream);
int launch_unpack(const uint8_t* packed, uint8_t* out, int64_t n_in, void* stream);
int launch_swizzle(const uint8_t* scales, uint8_t* out, int64_t rows, int64_t cols, void* stream);
int launch_unswizzle(const uint8_t* blocked, uint8_t* out, int64_t rows, int64_t cols, void* stream);
int launch_finite_amax(int dtype, const void* x, int64_t n, int hb, const float* signs, int64_t sign_len,
                       float rscale, uint32_t* amax_bits, void* stream);
int launch_hadamard(int dtype, const void* x, float* out, int64_t n, int hb, const float* signs, int64_t sign_len,
                    float rscale, void* stream);
int launch_quant(int dtype, int kind, int qb, int hb, const void* x, int64_t n, const QuantParams& p, void* stream);
int launch_dequant(int out_dtype, int kind, int qb, int64_t n, const DequantParams& p, void* out, void* stream);
const char* error_string(int rc);

}  // namespace fp4ref
