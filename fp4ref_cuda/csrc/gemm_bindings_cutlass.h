// The binding body of the CUTLASS FP4 GEMM modules (fp4ref_cuda._gemm_sm100a, _gemm_sm120a): argument checks
// and the call of one arch's launchers (gemm_cutlass.h's CutlassFp4Api). Each arch's gemm_bindings_<arch>.cpp
// registers it under its own op name, so the two modules share this code but no symbol.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>

#include "gemm_bindings_common.h"
#include "gemm_cutlass.h"
#include "ids.h"

namespace fp4ref_bind {

// out (M, N) float32 = alpha · a (M, K) · b (N, K)ᵀ: a (M, K/2), b (N, K/2) packed E2M1; scales already
// swizzled (1-D, 128x4 layout).
inline at::Tensor cutlass_gemm(const fp4ref_gemm::CutlassFp4Api& api, const at::Tensor& a, const at::Tensor& a_scales,
                               const at::Tensor& b, const at::Tensor& b_scales, bool nvfp4,
                               const std::optional<at::Tensor>& alpha) {
  check_cuda(a, "a");
  check_cuda(b, "b");
  check_cuda(a_scales, "a_scales");
  check_cuda(b_scales, "b_scales");
  for (const at::Tensor* t : {&a, &b, &a_scales, &b_scales}) check_u8(*t, "operands and scales");
  check_same_device(a, b, "a", "b");
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1), "a (M, K/2) and b (N, K/2) must share K");
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1) * 2, bs = nvfp4 ? 16 : 32;
  const char* why = api.unsupported(M, N, K);
  TORCH_CHECK_VALUE(why == nullptr, "shape (M=", N_(M), ", N=", N_(N), ", K=", N_(K), ") not supported: ", why ? why : "");
  auto padded = [bs, K](int64_t rows) { return fp4ref::blocked_size(rows, K / bs); };
  TORCH_CHECK_VALUE(a_scales.numel() == padded(M) && b_scales.numel() == padded(N),
                    "scales must be swizzled to the 128x4 layout (", N_(padded(M)), " and ", N_(padded(N)), " bytes), got ",
                    N_(a_scales.numel()), " and ", N_(b_scales.numel()));
  const float* pa = nullptr;
  if (alpha.has_value()) {
    TORCH_CHECK_VALUE(alpha->is_cuda() && alpha->scalar_type() == at::kFloat && alpha->numel() == 1,
                      "alpha must be a float32 CUDA tensor with one element");
    pa = alpha->data_ptr<float>();
  }
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({M, N}, a.options().dtype(at::kFloat));
  at::Tensor ws = at::empty({static_cast<int64_t>(api.workspace(M, N, K, nvfp4)) + 1}, a.options().dtype(at::kByte));
  const char* err = api.gemm(a.data_ptr(), a_scales.data_ptr(), b.data_ptr(), b_scales.data_ptr(),
                             out.data_ptr<float>(), M, N, K, nvfp4, pa, ws.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == nullptr, "CUTLASS ", api.arch, " FP4 GEMM failed: ", err ? err : "");
  return out;
}

// The op's name, gemm_fp4_cutlass_<arch>, and its schema.
inline std::string cutlass_op_name(const fp4ref_gemm::CutlassFp4Api& api) {
  return std::string("gemm_fp4_cutlass_") + api.arch;
}
inline std::string cutlass_op_schema(const fp4ref_gemm::CutlassFp4Api& api) {
  return cutlass_op_name(api) +
         "(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, bool nvfp4, Tensor? alpha) -> Tensor";
}

}  // namespace fp4ref_bind
