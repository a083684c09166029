// TORCH_LIBRARY registration of fp4ref_cuda's ops, with the argument checks that keep every launch in
// bounds (a bad call raises a Python error, never an illegal memory access). Kernels live in the .cu
// files behind raw-pointer launchers (launch.h), which keeps torch headers out of nvcc.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "launch.h"

#include "errfmt.h"

namespace {

inline std::string N(long long v) { return fp4ref_fmt::n(v); }
inline std::string SHAPE(c10::IntArrayRef s) { return fp4ref_fmt::shape(s); }

using at::Tensor;
using fp4ref::DT_BF16;
using fp4ref::DT_F16;
using fp4ref::DT_F32;

void* stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

void check_dense(const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "fp4ref_cuda: ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), "fp4ref_cuda: ", name, " must be contiguous");
  TORCH_CHECK_VALUE(t.numel() == 0 || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "fp4ref_cuda: ", name,
                    " must be 16-byte aligned (16-byte vector loads)");
}

void check_same_device(const Tensor& a, const Tensor& b, const char* name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "fp4ref_cuda: ", name, " is on ", b.device(), " but the input is on ",
                    a.device());
}

void check_u8(const Tensor& t, const char* name) {
  check_dense(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kByte, "fp4ref_cuda: ", name, " must be uint8, got ", t.scalar_type());
}

int float_dtype(const Tensor& t, const char* name) {
  check_dense(t, name);
  switch (t.scalar_type()) {
    case at::kFloat: return DT_F32;
    case at::kBFloat16: return DT_BF16;
    case at::kHalf: return DT_F16;
    default: TORCH_CHECK_TYPE(false, "fp4ref_cuda: ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return -1;
}

int64_t last_dim(const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1, "fp4ref_cuda: ", name, " must have at least one dimension");
  return t.size(-1);
}

void check_rc(int rc) { TORCH_CHECK(rc == 0, "fp4ref_cuda: ", fp4ref::error_string(rc)); }

uint32_t* u32(const Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }

std::vector<int64_t> with_last(const Tensor& t, int64_t last) {
  std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
  s.back() = last;
  return s;
}

bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// signs: float32 ±1 of length hb or the row length, on x's device (nullptr when absent).
const float* signs_ptr(const Tensor& x, const std::optional<Tensor>& signs, int64_t hb, int64_t* len) {
  *len = 0;
  if (!signs.has_value()) return nullptr;
  const Tensor& s = *signs;
  check_dense(s, "signs");
  check_same_device(x, s, "signs");
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, "fp4ref_cuda: signs must be float32");
  TORCH_CHECK_VALUE(hb > 1, "fp4ref_cuda: signs need a rotation (hadamard block > 1)");
  TORCH_CHECK_VALUE(s.dim() == 1 && (s.numel() == hb || s.numel() == x.size(-1)),
                    "fp4ref_cuda: signs must be 1-D of length hadamard block or row length");
  *len = s.numel();
  return s.data_ptr<float>();
}

void check_rotation(const Tensor& x, int64_t hb, bool allow_one) {
  TORCH_CHECK_VALUE(is_pow2(hb) && hb <= 256 && (allow_one || hb >= 2),
                    "fp4ref_cuda: hadamard block must be a power of two up to 256, got ", N(hb));
  TORCH_CHECK_VALUE(last_dim(x, "x") % hb == 0, "fp4ref_cuda: row length ", N(x.size(-1)),
                    " is not a multiple of the hadamard block ", N(hb));
}

std::tuple<Tensor, Tensor> encode(const Tensor& x, int64_t fmt, bool saturate) {
  const int dt = float_dtype(x, "x");
  TORCH_CHECK_VALUE(fmt >= 0 && fmt <= fp4ref::FMT_LAST, "fp4ref_cuda: unknown format id ", N(fmt));
  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty(x.sizes(), x.options().dtype(at::kByte));
  Tensor err = at::zeros({1}, x.options().dtype(at::kInt));
  check_rc(fp4ref::launch_encode(dt, x.data_ptr(), out.data_ptr<uint8_t>(), x.numel(), (int)fmt, saturate, u32(err),
                                 stream_of(x)));
  return {out, err};
}

std::tuple<Tensor, Tensor> decode(const Tensor& codes, int64_t fmt) {
  check_u8(codes, "codes");
  TORCH_CHECK_VALUE(fmt >= 0 && fmt <= fp4ref::FMT_LAST, "fp4ref_cuda: unknown format id ", N(fmt));
  c10::cuda::CUDAGuard guard(codes.device());
  Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  Tensor err = at::zeros({1}, codes.options().dtype(at::kInt));
  check_rc(fp4ref::launch_decode(codes.data_ptr<uint8_t>(), out.data_ptr<float>(), codes.numel(), (int)fmt, u32(err),
                                 stream_of(codes)));
  return {out, err};
}

std::tuple<Tensor, Tensor> pack_fp4(const Tensor& codes) {
  check_u8(codes, "codes");
  const int64_t k = last_dim(codes, "codes");
  TORCH_CHECK_VALUE(k % 2 == 0, "fp4ref_cuda: codes' last dimension must be even, got ", N(k));
  c10::cuda::CUDAGuard guard(codes.device());
  Tensor out = at::empty(with_last(codes, k / 2), codes.options());
  Tensor err = at::zeros({1}, codes.options().dtype(at::kInt));
  check_rc(fp4ref::launch_pack(codes.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), out.numel(), u32(err),
                               stream_of(codes)));
  return {out, err};
}

Tensor unpack_fp4(const Tensor& packed) {
  check_u8(packed, "packed");
  const int64_t k = last_dim(packed, "packed");
  c10::cuda::CUDAGuard guard(packed.device());
  Tensor out = at::empty(with_last(packed, 2 * k), packed.options());
  check_rc(fp4ref::launch_unpack(packed.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), packed.numel(),
                                 stream_of(packed)));
  return out;
}

using fp4ref::blocked_size;

Tensor swizzle_scales(const Tensor& scales) {
  check_u8(scales, "scales");
  TORCH_CHECK_VALUE(scales.dim() == 2, "fp4ref_cuda: scales must be 2-D, got ", N(scales.dim()), " dimensions");
  c10::cuda::CUDAGuard guard(scales.device());
  Tensor out = at::empty({blocked_size(scales.size(0), scales.size(1))}, scales.options());
  check_rc(fp4ref::launch_swizzle(scales.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), scales.size(0), scales.size(1),
                                  stream_of(scales)));
  return out;
}

Tensor unswizzle_scales(const Tensor& blocked, int64_t rows, int64_t cols) {
  check_u8(blocked, "blocked");
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "fp4ref_cuda: rows and cols must be non-negative");
  TORCH_CHECK_VALUE(blocked.dim() == 1 && blocked.numel() == blocked_size(rows, cols), "fp4ref_cuda: blocked must be "
                    "1-D with ", N(blocked_size(rows, cols)), " bytes for a (", N(rows), ", ", N(cols), ") scale matrix");
  c10::cuda::CUDAGuard guard(blocked.device());
  Tensor out = at::empty({rows, cols}, blocked.options());
  check_rc(fp4ref::launch_unswizzle(blocked.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), rows, cols,
                                    stream_of(blocked)));
  return out;
}

Tensor finite_amax(const Tensor& x, int64_t hb, const std::optional<Tensor>& signs, double rscale) {
  const int dt = float_dtype(x, "x");
  check_rotation(x, hb, true);
  int64_t slen;
  const float* s = signs_ptr(x, signs, hb, &slen);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor bits = at::zeros({1}, x.options().dtype(at::kInt));
  check_rc(fp4ref::launch_finite_amax(dt, x.data_ptr(), x.numel(), (int)hb, s, slen, (float)rscale, u32(bits),
                                      stream_of(x)));
  return bits.view(at::kFloat).reshape({});
}

Tensor block_hadamard(const Tensor& x, int64_t hb, const std::optional<Tensor>& signs, double rscale) {
  const int dt = float_dtype(x, "x");
  check_rotation(x, hb, false);
  int64_t slen;
  const float* s = signs_ptr(x, signs, hb, &slen);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  check_rc(fp4ref::launch_hadamard(dt, x.data_ptr(), out.data_ptr<float>(), x.numel(), (int)hb, s, slen,
                                   (float)rscale, stream_of(x)));
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> quantize(const Tensor& x, int64_t kind, int64_t fmt, int64_t mode,
                                                    int64_t block_size, int64_t hb, const std::optional<Tensor>& signs,
                                                    double rscale, const std::optional<Tensor>& amax, bool swizzle) {
  const int dt = float_dtype(x, "x");
  TORCH_CHECK_VALUE(kind >= fp4ref::MX_E2M1 && kind <= fp4ref::NV_TE, "fp4ref_cuda: unknown quantizer kind ", N(kind));
  TORCH_CHECK_VALUE(fmt >= 0 && fmt <= fp4ref::MX_ELEM_LAST && mode >= 0 && mode <= fp4ref::MODE_LAST,
                    "fp4ref_cuda: unknown element format or scale mode");
  const bool packed = kind != fp4ref::MX_ANY;
  const int64_t k = last_dim(x, "x");
  TORCH_CHECK_VALUE(block_size >= 1 && k % block_size == 0 && (!packed || block_size % 2 == 0),
                    "fp4ref_cuda: row length ", N(k), " is not a multiple of block_size ", N(block_size),
                    packed ? " (which must be even)" : "");
  check_rotation(x, hb, true);
  int64_t slen;
  const float* s = signs_ptr(x, signs, hb, &slen);
  const float* a = nullptr;
  if (kind == fp4ref::NV_TE) {
    TORCH_CHECK_VALUE(amax.has_value(), "fp4ref_cuda: NVFP4 needs the global amax");
    check_dense(*amax, "amax");
    check_same_device(x, *amax, "amax");
    TORCH_CHECK_VALUE(amax->scalar_type() == at::kFloat && amax->numel() == 1,
                      "fp4ref_cuda: amax must be a float32 scalar");
    a = amax->data_ptr<float>();
  }
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t cols = k / block_size, rows = k ? x.numel() / k : 0;
  Tensor data = at::empty(with_last(x, packed ? k / 2 : k), x.options().dtype(at::kByte));
  Tensor scales = at::empty(with_last(x, cols), x.options().dtype(at::kByte));
  Tensor gs = kind == fp4ref::NV_TE ? at::empty({}, x.options().dtype(at::kFloat))
                                    : at::empty({0}, x.options().dtype(at::kFloat));
  // The kernel writes every byte of the blocked layout except its padding (rows to 128, columns to 4):
  // zero-fill only when there is padding.
  const bool padded = rows % 128 != 0 || cols % 4 != 0;
  Tensor swz = !swizzle ? at::empty({0}, x.options().dtype(at::kByte))
               : padded ? at::zeros({blocked_size(rows, cols)}, x.options().dtype(at::kByte))
                        : at::empty({blocked_size(rows, cols)}, x.options().dtype(at::kByte));
  const fp4ref::QuantParams p{(int)fmt, (int)mode, s, slen, (float)rscale, a,
                              kind == fp4ref::NV_TE ? gs.data_ptr<float>() : nullptr, data.data_ptr<uint8_t>(),
                              scales.data_ptr<uint8_t>(), swizzle ? swz.data_ptr<uint8_t>() : nullptr, cols};
  check_rc(fp4ref::launch_quant(dt, (int)kind, (int)block_size, (int)hb, x.data_ptr(), x.numel(), p, stream_of(x)));
  return {data, scales, gs, swz};
}

Tensor dequantize(const Tensor& data, const Tensor& scales, const std::optional<Tensor>& global_scale, int64_t kind,
                  int64_t fmt, int64_t block_size, bool stretch, at::ScalarType dtype) {
  check_u8(data, "data");
  check_u8(scales, "scales");
  check_same_device(data, scales, "scales");
  TORCH_CHECK_VALUE(kind >= fp4ref::MX_E2M1 && kind <= fp4ref::NV_TE && fmt >= 0 && fmt <= fp4ref::MX_ELEM_LAST,
                    "fp4ref_cuda: unknown quantizer kind or format");
  const int64_t k = last_dim(data, "data") * (kind == fp4ref::MX_ANY ? 1 : 2);
  TORCH_CHECK_VALUE(block_size >= 1 && k % block_size == 0, "fp4ref_cuda: row length ", N(k),
                    " is not a multiple of block_size ", N(block_size));
  TORCH_CHECK_VALUE(scales.sizes().vec() == with_last(data, k / block_size), "fp4ref_cuda: scales has shape ",
                    SHAPE(scales.sizes()), ", expected one byte per block of ", N(block_size));
  int out_dt = DT_F32;
  if (dtype == at::kBFloat16) out_dt = DT_BF16;
  else if (dtype == at::kHalf) out_dt = DT_F16;
  else TORCH_CHECK_TYPE(dtype == at::kFloat, "fp4ref_cuda: dequantize writes float32, bfloat16 or float16");
  const float* gs = nullptr;
  if (kind == fp4ref::NV_TE) {
    TORCH_CHECK_VALUE(global_scale.has_value(), "fp4ref_cuda: NVFP4 needs the global scale");
    check_dense(*global_scale, "global_scale");
    check_same_device(data, *global_scale, "global_scale");
    TORCH_CHECK_VALUE(global_scale->scalar_type() == at::kFloat && global_scale->numel() == 1,
                      "fp4ref_cuda: global_scale must be a float32 scalar");
    gs = global_scale->data_ptr<float>();
  }
  c10::cuda::CUDAGuard guard(data.device());
  Tensor out = at::empty(with_last(data, k), data.options().dtype(dtype));
  const fp4ref::DequantParams p{(int)fmt, stretch, data.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), gs};
  check_rc(fp4ref::launch_dequant(out_dt, (int)kind, (int)block_size, out.numel(), p, out.data_ptr(),
                                  stream_of(data)));
  return out;
}

}  // namespace

// FRAGMENT: the GEMM extension (issue 6) may add its ops to the same namespace from its own library.
TORCH_LIBRARY_FRAGMENT(fp4ref_cuda, m) {
  m.def("encode(Tensor x, int fmt, bool saturate) -> (Tensor, Tensor)");
  m.def("decode(Tensor codes, int fmt) -> (Tensor, Tensor)");
  m.def("pack_fp4(Tensor codes) -> (Tensor, Tensor)");
  m.def("unpack_fp4(Tensor packed) -> Tensor");
  m.def("swizzle_scales(Tensor scales) -> Tensor");
  m.def("unswizzle_scales(Tensor blocked, int rows, int cols) -> Tensor");
  m.def("finite_amax(Tensor x, int hadamard_block, Tensor? signs, float rscale) -> Tensor");
  m.def("block_hadamard(Tensor x, int block_size, Tensor? signs, float rscale) -> Tensor");
  m.def("quantize(Tensor x, int kind, int fmt, int mode, int block_size, int hadamard_block, Tensor? signs, "
        "float rscale, Tensor? amax, bool swizzle) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("dequantize(Tensor data, Tensor scales, Tensor? global_scale, int kind, int fmt, int block_size, "
        "bool stretch, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(fp4ref_cuda, CUDA, m) {
  m.impl("encode", &encode);
  m.impl("decode", &decode);
  m.impl("pack_fp4", &pack_fp4);
  m.impl("unpack_fp4", &unpack_fp4);
  m.impl("swizzle_scales", &swizzle_scales);
  m.impl("unswizzle_scales", &unswizzle_scales);
  m.impl("finite_amax", &finite_amax);
  m.impl("block_hadamard", &block_hadamard);
  m.impl("quantize", &quantize);
  m.impl("dequantize", &dequantize);
}

// An importable module named _C whose only job is to run the registrations above.
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fp4ref_cuda kernels (torch.ops.fp4ref_cuda)", -1,
                                 nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
