// Shared body of gemm_sm100a.cu and gemm_sm120a.cu: one CUTLASS 4.x block-scaled FP4 GEMM per element type
// (nv_float4_t: E2M1 + E4M3 per 16; mx_float4_t: E2M1 + E8M0 per 32), A row-major (M, K), B column-major
// (K, N) = our row-major (N, K), D float32 row-major, no C operand, D = alpha · acc. The including .cu
// defines FP4REF_CUTLASS_ARCH, FP4REF_ARCH_TAG, FP4REF_TILE and FP4REF_CLUSTER before including this file.
#pragma once
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
namespace {

using namespace cute;

template <class Element>
struct BlockScaledGemm {
  using Arch = FP4REF_ARCH_TAG;
  using Tile = FP4REF_TILE;
  using Cluster = FP4REF_CLUSTER;
  static constexpr int kAlignAB = 32;  // 16 bytes of packed E2M1
  static constexpr int kAlignD = 4;    // 16 bytes of float32

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      Arch, cutlass::arch::OpClassBlockScaledTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::RowMajor, kAlignD, float, cutlass::layout::RowMajor, kAlignD,
      cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      Arch, cutlass::arch::OpClassBlockScaledTensorOp, Element, cutlass::layout::RowMajor, kAlignAB, Element,
      cutlass::layout::ColumnMajor, kAlignAB, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, void>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using Config = typename Mainloop::Sm1xxBlkScaledConfig;
  using Data = typename Element::DataType;
  using Scale = typename Element::ScaleFactorType;

  static typename Gemm::Arguments arguments(const void* a, const void* sfa, const void* b, const void* sfb, float* d,
                                            int m, int n, int k, const float* alpha) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideC = typename Kernel::StrideC;
    using StrideD = typename Kernel::StrideD;
    const auto problem = make_shape(m, n, k, 1);
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const Data*>(a), cutlass::make_cute_packed_stride(StrideA{}, {m, k, 1}),
         static_cast<const Data*>(b), cutlass::make_cute_packed_stride(StrideB{}, {n, k, 1}),
         static_cast<const Scale*>(sfa), Config::tile_atom_to_shape_SFA(problem),
         static_cast<const Scale*>(sfb), Config::tile_atom_to_shape_SFB(problem)},
        {{1.0f, 0.0f}, nullptr, cutlass::make_cute_packed_stride(StrideC{}, {m, n, 1}), d,
         cutlass::make_cute_packed_stride(StrideD{}, {m, n, 1})}};
    args.epilogue.thread.alpha_ptr = alpha;  // device float32(gs_a · gs_b), read by the kernel: no host sync
    return args;
  }

  static size_t workspace(int m, int n, int k) {
    return Gemm::get_workspace_size(arguments(nullptr, nullptr, nullptr, nullptr, nullptr, m, n, k, nullptr));
  }

  static const char* run(const void* a, const void* sfa, const void* b, const void* sfb, float* d, int m, int n,
                         int k, const float* alpha, void* ws, cudaStream_t stream) {
    Gemm gemm;
    const auto args = arguments(a, sfa, b, sfb, d, m, n, k, alpha);
    cutlass::Status st = gemm.can_implement(args);
    if (st == cutlass::Status::kSuccess) st = gemm.initialize(args, ws, stream);
    if (st == cutlass::Status::kSuccess) st = gemm.run(stream);
    return st == cutlass::Status::kSuccess ? nullptr : cutlassGetStatusString(st);
  }
};

using NvGemm = BlockScaledGemm<cutlass::nv_float4_t<cutlass::float_e2m1_t>>;
using MxGemm = BlockScaledGemm<cutlass::mx_float4_t<cutlass::float_e2m1_t>>;

}  // namespace

const char* cutlass_fp4_unsupported(int64_t M, int64_t N, int64_t K) {
  if (M < 1 || N < 1 || K < 1) return "M, N and K must be positive";
  if (M >= (1LL << 31) || N >= (1LL << 31) || K >= (1LL << 31)) return "M, N and K must fit in int32";
  if (K % 256 != 0) return "K must be a multiple of 256";
  if (N % 4 != 0) return "N must be a multiple of 4 (16-byte rows of the float32 output)";
  return nullptr;
}

size_t cutlass_fp4_workspace(int64_t M, int64_t N, int64_t K, bool nvfp4) {
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  return nvfp4 ? NvGemm::workspace(m, n, k) : MxGemm::workspace(m, n, k);
}

const char* cutlass_fp4_gemm(const void* a, const void* a_scales, const void* b, const void* b_scales, float* d,
                             int64_t M, int64_t N, int64_t K, bool nvfp4, const float* alpha, void* workspace,
                             cudaStream_t stream) {
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  return nvfp4 ? NvGemm::run(a, a_scales, b, b_scales, d, m, n, k, alpha, workspace, stream)
               : MxGemm::run(a, a_scales, b, b_scales, d, m, n, k, alpha, workspace, stream);
}

}  // namespace fp4ref_gemm::FP4REF_CUTLASS_ARCH
