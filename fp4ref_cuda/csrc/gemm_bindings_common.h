// Argument checks shared by the GEMM extension modules' bindings (gemm_bindings.cpp for _gemm_sm90,
// gemm_bindings_sm100a.cpp / gemm_bindings_sm120a.cpp through gemm_bindings_cutlass.h). Every check raises a
// Python ValueError/TypeError before a kernel can touch memory.
#pragma once
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "errfmt.h"

namespace fp4ref_bind {

inline std::string N_(long long v) { return fp4ref_fmt::n(v); }
inline std::string SHAPE_(c10::IntArrayRef s) { return fp4ref_fmt::shape(s); }

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                    " must start at a 16-byte aligned address (got a view with an odd storage offset)");
}

inline void check_u8(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(t.element_size() == 1 && s != at::kChar && s != at::kBool, name,
                   " must hold raw bytes (uint8, or a float4_e2m1fn_x2 / float8 view), got ", s);
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), na, " is on ", a.device(), " but ", nb, " is on ", b.device());
}

// Packed (R, K/2) data and (R, K/block) scales of one FP4 operand; returns K.
inline int64_t check_fp4_operand(const at::Tensor& data, const at::Tensor& scales, int64_t block_size, const char* name) {
  check_cuda(data, name);
  check_u8(data, name);
  TORCH_CHECK_VALUE(scales.is_cuda() && scales.is_contiguous(), name, " scales must be a contiguous CUDA tensor");
  check_u8(scales, name);
  check_same_device(data, scales, name, "its scales");
  TORCH_CHECK_VALUE(data.dim() == 2 && scales.dim() == 2, name, " data and scales must be 2-D");
  TORCH_CHECK_VALUE(block_size > 0 && block_size % 16 == 0, name, " block_size must be a positive multiple of 16, got ",
                    N_(block_size));
  const int64_t K = data.size(1) * 2;
  TORCH_CHECK_VALUE(K % block_size == 0, name, " K = ", N_(K), " must be a multiple of block_size ", N_(block_size));
  TORCH_CHECK_VALUE(scales.size(0) == data.size(0) && scales.size(1) == K / block_size, name, " scales must be (",
                    N_(data.size(0)), ", ", N_(K / block_size), "), got ", SHAPE_(scales.sizes()));
  return K;
}

}  // namespace fp4ref_bind


namespace fp4ref_bind {

// The extension module object (fp4ref_cuda.<name>): importing it runs the file's TORCH_LIBRARY registrations.
inline PyObject* make_module(const char* name) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, name, nullptr, -1, nullptr};
  return PyModule_Create(&def);
}

}  // namespace fp4ref_bind
