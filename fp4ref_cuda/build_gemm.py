"""Build configuration of the FP4 GEMM extension modules (called from ``fp4ref_cuda/build.py``).

* ``fp4ref_cuda._gemm_sm90``: dequant-to-bf16 + cuBLAS and the small-M weight-only kernel; SASS for
  sm_90a plus compute_80 PTX, so the same module also serves any other sm_80+ GPU (A100, L40, Blackwell)
  through the driver's JIT. The PTX holds only instructions sm_80 has: csrc/ptx.cuh guards the one newer
  instruction (cvt.rn.f16x2.e4m3x2, sm_89+) with an exact fallback, and scripts/check_sass.sh assembles
  the PTX for sm_80.
* ``fp4ref_cuda._gemm_sm100a`` / ``_gemm_sm120a``: CUTLASS block-scaled FP4 GEMMs, one arch each, built
  only with ``FP4REF_BUILD_CUTLASS=1`` (each takes minutes and ~6 GB of compiler memory); the CUTLASS
  headers come from the ``nvidia-cutlass`` wheel (``cutlass_library/source/include``), never vendored.
"""
from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join("fp4ref_cuda", "csrc")


def _nvidia_cu13() -> tuple[list[str], list[str]]:
    """Include and library folders of the nvidia-* wheels torch depends on (cuBLAS headers and .so)."""
    try:
        import nvidia  # namespace package shipped by nvidia-cublas & co.
    except ImportError:
        return [], []
    incs, libs = [], []
    for root in getattr(nvidia, "__path__", []):
        for sub in ("cu13", "cu12", "cublas"):
            inc, lib = os.path.join(root, sub, "include"), os.path.join(root, sub, "lib")
            if os.path.exists(os.path.join(inc, "cublas_v2.h")):
                incs.append(inc)
                libs.append(lib)
    return incs, libs


def cutlass_include_dirs() -> list[str]:
    """The C++ include folders of the nvidia-cutlass wheel (raises ImportError without it)."""
    import cutlass_library

    src = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    dirs = [os.path.join(src, "include"), os.path.join(src, "tools", "util", "include")]
    if not os.path.exists(os.path.join(dirs[0], "cutlass", "cutlass.h")):
        raise ImportError(f"nvidia-cutlass wheel without C++ headers at {dirs[0]} (need nvidia-cutlass==4.2.0.0)")
    return dirs


def _cxx_flags() -> list[str]:
    return ["-O3"]


def gemm_extensions() -> list:
    """CUDAExtension objects of the GEMM modules; CUTLASS ones only when FP4REF_BUILD_CUTLASS=1."""
    from torch.utils.cpp_extension import CUDAExtension

    incs, libdirs = _nvidia_cu13()
    cublas = [":libcublas.so.13"] if any("cu13" in d for d in libdirs) else ["cublas"]
    exts = [
        CUDAExtension(
            name="fp4ref_cuda._gemm_sm90",
            sources=[os.path.join(_CSRC, "gemm_bindings.cpp"), os.path.join(_CSRC, "gemm_sm90.cu")],
            include_dirs=[os.path.join(_HERE, "csrc"), *incs],
            library_dirs=libdirs,
            libraries=cublas,
            extra_compile_args={
                "cxx": _cxx_flags(),
                # No --use_fast_math: the exact dequantization needs float32 subnormals (2^-127, 2^-128).
                # compute_80 PTX: every instruction of ptx.cuh exists there or falls back (see above).
                "nvcc": ["-O3", "-gencode=arch=compute_90a,code=sm_90a",
                         "-gencode=arch=compute_80,code=compute_80"],
            },
        )
    ]
    if os.environ.get("FP4REF_BUILD_CUTLASS", "") == "1":
        cutlass = cutlass_include_dirs()
        for arch in ("sm100a", "sm120a"):
            cc = arch[2:]  # "100a" / "120a"
            exts.append(CUDAExtension(
                name=f"fp4ref_cuda._gemm_{arch}",
                sources=[os.path.join(_CSRC, f"gemm_bindings_{arch}.cpp"), os.path.join(_CSRC, f"gemm_{arch}.cu")],
                include_dirs=[os.path.join(_HERE, "csrc"), *cutlass, *incs],
                extra_compile_args={
                    "cxx": _cxx_flags(),
                    "nvcc": ["-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "--expt-extended-lambda",
                             f"-gencode=arch=compute_{cc},code=sm_{cc}"],
                },
            ))
    return exts


__all__ = ["cutlass_include_dirs", "gemm_extensions"]
