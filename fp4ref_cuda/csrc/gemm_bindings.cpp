// TORCH_LIBRARY_FRAGMENT(fp4ref_cuda) schemas and argument checks of fp4ref_cuda._gemm_sm90: dequant-to-bf16
// + cuBLAS, and the small-M weight-only kernel (gemm_sm90.cu). Every check raises a Python
// ValueError/TypeError before a kernel can touch memory.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "gemm_bindings_common.h"
#include "gemm_sm90.h"
#include "ids.h"

namespace {

using namespace fp4ref_bind;

int out_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return fp4ref::DT_F32;
    case at::kBFloat16: return fp4ref::DT_BF16;
    case at::kHalf: return fp4ref::DT_F16;
    default: TORCH_CHECK_TYPE(false, "out_dtype must be float32, bfloat16 or float16, got ", t);
  }
  return 0;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

at::Tensor dequant_bf16(const at::Tensor& data, const at::Tensor& scales, int64_t block_size, bool e4m3) {
  const int64_t K = check_fp4_operand(data, scales, block_size, "data");
  TORCH_CHECK_VALUE(data.size(0) * (K / 16) < (int64_t{1} << 32) - (int64_t{1} << 18),
                    "data is too large for the dequantization kernel (rows * K / 16 must be below 2^32)");
  c10::cuda::CUDAGuard guard(data.device());
  at::Tensor out = at::empty({data.size(0), K}, data.options().dtype(at::kBFloat16));
  check_launch(fp4ref_gemm::dequant_fp4_bf16(static_cast<const uint8_t*>(data.data_ptr()),
                                             static_cast<const uint8_t*>(scales.data_ptr()), out.data_ptr(),
                                             data.size(0), K, static_cast<int>(block_size), e4m3,
                                             c10::cuda::getCurrentCUDAStream()),
               "dequant_fp4_bf16");
  return out;
}

// out (M, N) = alpha · a (M, K) · b (N, K)ᵀ in cuBLAS with float32 accumulation (compute type 32F).
at::Tensor bf16_cublas(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& alpha,
                       at::ScalarType out_dtype) {
  check_cuda(a, "a");
  check_cuda(b, "b");
  check_same_device(a, b, "a", "b");
  TORCH_CHECK_TYPE(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16, "a and b must be bfloat16");
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1), "a (M, K) and b (N, K) must share K, got ",
                    SHAPE_(a.sizes()), " and ", SHAPE_(b.sizes()));
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "out_dtype must be float32 or bfloat16");
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  TORCH_CHECK_VALUE(M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31), "GEMM dimensions must fit in int32");
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({M, N}, a.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  if (K == 0) return out.zero_();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  at::Tensor consts;
  const float one = 1.0f, zero = 0.0f;
  const void* pa = &one;
  const void* pb = &zero;
  cublasPointerMode_t mode;
  TORCH_CHECK(cublasGetPointerMode(handle, &mode) == CUBLAS_STATUS_SUCCESS, "cublasGetPointerMode failed");
  if (alpha.has_value()) {
    TORCH_CHECK_VALUE(alpha->is_cuda() && alpha->scalar_type() == at::kFloat && alpha->numel() == 1,
                      "alpha must be a float32 CUDA tensor with one element");
    check_same_device(a, *alpha, "a", "alpha");
    consts = at::zeros({2}, a.options().dtype(at::kFloat));  // [alpha, beta = 0] on the device: no host sync
    consts.narrow(0, 0, 1).copy_(alpha->reshape({1}));
    pa = consts.data_ptr<float>();
    pb = consts.data_ptr<float>() + 1;
    cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_DEVICE);
  }
  cublasMath_t math;
  cublasGetMathMode(handle, &math);
  // Split-K partial sums stay in float32 even for a bf16 output.
  cublasSetMathMode(handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                      CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  // Row-major out (M, N) is column-major outᵀ (N, M) = bᵀ... i.e. op(b) (N, K) · op(a) (K, M).
  const cublasStatus_t st = cublasGemmEx(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), pa,
      b.data_ptr(), CUDA_R_16BF, static_cast<int>(K), a.data_ptr(), CUDA_R_16BF, static_cast<int>(K), pb,
      out.data_ptr(), out_dtype == at::kFloat ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(N), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT_TENSOR_OP);
  cublasSetMathMode(handle, math);
  cublasSetPointerMode(handle, mode);
  TORCH_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasGemmEx failed with status ", N_(static_cast<int>(st)));
  return out;
}

at::Tensor fp4_linear_small(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scales, int64_t block_size,
                            bool e4m3, const std::optional<at::Tensor>& alpha, double divisor,
                            at::ScalarType out_dtype, bool pipelined) {
  const int64_t K = check_fp4_operand(w, w_scales, block_size, "w");
  TORCH_CHECK_VALUE(K < (int64_t{1} << 31), "K must be below 2^31");
  check_cuda(x, "x");
  check_same_device(x, w, "x", "w");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16, "x must be bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == K, "x must be (M, ", N_(K), "), got ", SHAPE_(x.sizes()));
  TORCH_CHECK_VALUE(x.size(0) >= 1 && x.size(0) <= 16, "the small-batch kernel takes 1 <= M <= 16 rows, got ",
                    N_(x.size(0)));
  TORCH_CHECK_VALUE(divisor > 0, "divisor must be positive");
  const float* pa = nullptr;
  if (alpha.has_value()) {
    TORCH_CHECK_VALUE(alpha->is_cuda() && alpha->scalar_type() == at::kFloat && alpha->numel() == 1 &&
                          alpha->is_contiguous(),
                      "alpha must be a contiguous float32 CUDA tensor with one element");
    check_same_device(x, *alpha, "x", "alpha");
    pa = alpha->data_ptr<float>();
  }
  const int kind = out_kind(out_dtype);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options().dtype(out_dtype));
  check_launch(fp4ref_gemm::fp4_linear_small(x.data_ptr(), static_cast<int>(x.size(0)),
                                             static_cast<const uint8_t*>(w.data_ptr()),
                                             static_cast<const uint8_t*>(w_scales.data_ptr()), w.size(0), K,
                                             static_cast<int>(block_size), e4m3, pa, static_cast<float>(divisor),
                                             out.data_ptr(), kind, pipelined, c10::cuda::getCurrentCUDAStream()),
               "fp4_linear_small");
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fp4ref_cuda, m) {
  m.def("gemm_dequant_bf16(Tensor data, Tensor scales, int block_size, bool e4m3) -> Tensor");
  m.def("gemm_bf16_cublas(Tensor a, Tensor b, Tensor? alpha, ScalarType out_dtype) -> Tensor");
  m.def("gemm_fp4_linear_small(Tensor x, Tensor w, Tensor w_scales, int block_size, bool e4m3, Tensor? alpha, "
        "float divisor, ScalarType out_dtype, bool pipelined=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fp4ref_cuda, CUDA, m) {
  m.impl("gemm_dequant_bf16", &dequant_bf16);
  m.impl("gemm_bf16_cublas", &bf16_cublas);
  m.impl("gemm_fp4_linear_small", &fp4_linear_small);
}

extern "C" PyObject* PyInit__gemm_sm90(void) { return fp4ref_bind::make_module("_gemm_sm90"); }
