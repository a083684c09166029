// Shared body of gemm_sm100a.cu and gemm_sm120a.cu: one CUTLASS 4.x block-scaled FP4 GEMM per element type
// (nv_float4_t: E2M1 + E4M3 per 16; mx_float4_t: E2M1 + E8M0 per 32), A row-major (M, K), B column-major
// (K, N) = our row-major (N, K), D float32 row-major, no C operand, D = alpha · acc. The including .cu
// defines FP4REF_CUTLASS_ARCH, FP4REF_ARCH_TAG, FP4REF_TILE and FP4REF_CLUSTER before including this file.
#pragma once
#ifndef FP4REF_CUTLASS_ARCH
#error "define FP4REF_CUTLASS_ARCH (sm100a or sm120a) before including gemm_cutlass_impl.cuh"
#endif
#include "gemm_cutlass.h"

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace fp4ref_gemm::FP4REF_CUTLASS_ARCH {
// A named namespace and namespace-scope aliases: nvcc's host stubs re-qualify member typedefs of class
// templates in anonymous namespaces in a way gcc rejects ("...::Epilogue has not been declared").
namespace detail {

using namespace cute;

using Arch = FP4REF_ARCH_TAG;
using Tile = FP4REF_TILE;
using Cluster = FP4REF_CLUSTER;
constexpr int kAlignAB = 32;  // 16 bytes of packed E2M1
constexpr int kAlignD = 4;    // 16 bytes of float32

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    Arch, cutlass::arch::OpClassBlockScaledTensorOp, Tile, Cluster, cutlass::epilogue::collective::EpilogueTileAuto,
    float, float, void, cutlass::layout::RowMajor, kAlignD, float, cutlass::layout::RowMajor, kAlignD,
    cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;
constexpr int kEpilogueSmem = static_cast<int>(sizeof(typename Epilogue::SharedStorage));

template <class Element>
using MainloopFor = typename cutlass::gemm::collective::CollectiveBuilder<
    Arch, cutlass::arch::OpClassBlockScaledTensorOp, Element, cutlass::layout::RowMajor, kAlignAB, Element,
    cutlass::layout::ColumnMajor, kAlignAB, float, Tile, Cluster,
    cutlass::gemm::collective::StageCountAutoCarveout<kEpilogueSmem>,
    cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

template <class Element>
using KernelFor = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, MainloopFor<Element>, Epilogue, void>;
template <class Element>
using GemmFor = cutlass::gemm::device::GemmUniversalAdapter<KernelFor<Element>>;

template <class Element>
typename GemmFor<Element>::Arguments make_arguments(const void* a, const void* sfa, const void* b, const void* sfb,
                                                    float* d, int m, int n, int k, const float* alpha) {
  using Kernel = KernelFor<Element>;
  using Config = typename MainloopFor<Element>::Sm1xxBlkScaledConfig;
  using Data = typename Element::DataType;
  using Scale = typename Element::ScaleFactorType;
  const auto problem = make_shape(m, n, k, 1);
  typename GemmFor<Element>::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {m, n, k, 1},
      {static_cast<const Data*>(a), cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, 1}),
       static_cast<const Data*>(b), cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n, k, 1}),
       static_cast<const Scale*>(sfa), Config::tile_atom_to_shape_SFA(problem),
       static_cast<const Scale*>(sfb), Config::tile_atom_to_shape_SFB(problem)},
      {{1.0f, 0.0f}, nullptr, cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, {m, n, 1}), d,
       cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {m, n, 1})}};
  args.epilogue.thread.alpha_ptr = alpha;  // device float32(gs_a · gs_b), read by the kernel: no host sync
  return args;
}

template <class Element>
size_t workspace(int m, int n, int k) {
  return GemmFor<Element>::get_workspace_size(
      make_arguments<Element>(nullptr, nullptr, nullptr, nullptr, nullptr, m, n, k, nullptr));
}

template <class Element>
const char* run(const void* a, const void* sfa, const void* b, const void* sfb, float* d, int m, int n, int k,
                const float* alpha, void* ws, cudaStream_t stream) {
  GemmFor<Element> gemm;
  const auto args = make_arguments<Element>(a, sfa, b, sfb, d, m, n, k, alpha);
  cutlass::Status st = gemm.can_implement(args);
  if (st == cutlass::Status::kSuccess) st = gemm.initialize(args, ws, stream);
  if (st == cutlass::Status::kSuccess) st = gemm.run(stream);
  return st == cutlass::Status::kSuccess ? nullptr : cutlassGetStatusString(st);
}

using Nv = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
using Mx = cutlass::mx_float4_t<cutlass::float_e2m1_t>;

}  // namespace detail

const char* cutlass_fp4_unsupported(int64_t M, int64_t N, int64_t K) {
  if (M < 1 || N < 1 || K < 1) return "M, N and K must be positive";
  if (M >= (1LL << 31) || N >= (1LL << 31) || K >= (1LL << 31)) return "M, N and K must fit in int32";
  if (K % 256 != 0) return "K must be a multiple of 256";
  if (N % 4 != 0) return "N must be a multiple of 4 (16-byte rows of the float32 output)";
  return nullptr;
}

size_t cutlass_fp4_workspace(int64_t M, int64_t N, int64_t K, bool nvfp4) {
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  return nvfp4 ? detail::workspace<detail::Nv>(m, n, k) : detail::workspace<detail::Mx>(m, n, k);
}

const char* cutlass_fp4_gemm(const void* a, const void* a_scales, const void* b, const void* b_scales, float* d,
                             int64_t M, int64_t N, int64_t K, bool nvfp4, const float* alpha, void* workspace,
                             cudaStream_t stream) {
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  return nvfp4 ? detail::run<detail::Nv>(a, a_scales, b, b_scales, d, m, n, k, alpha, workspace, stream)
               : detail::run<detail::Mx>(a, a_scales, b, b_scales, d, m, n, k, alpha, workspace, stream);
}

}  // namespace fp4ref_gemm::FP4REF_CUTLASS_ARCH
