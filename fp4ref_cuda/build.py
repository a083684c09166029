"""Build configuration of the CUDA extension ``fp4ref_cuda._C`` (called by setup.py).

Kernels (.cu) include no torch headers and expose raw-pointer launchers; bindings.cpp registers the ops.
This keeps nvcc's work small (a .cu that includes torch/all.h takes minutes per architecture).
Environment: CUDA_HOME (nvcc 13.0 here: /usr/local/cuda-13.0), TORCH_CUDA_ARCH_LIST (default
"9.0a;10.0a;12.0a"), MAX_JOBS. The GEMM extension (issue 6) is appended when fp4ref_cuda/build_gemm.py exists.
"""
from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).parent
CSRC = HERE / "csrc"
KERNELS = ["codecs.cu", "quant_mx.cu", "quant_nv.cu", "hadamard.cu"]
DEFAULT_ARCHS = "9.0a;10.0a;12.0a"
NVCC_FLAGS = [
    "-O3", "--extended-lambda", "--expt-relaxed-constexpr",
    # bit-exactness: no FMA contraction (the arithmetic also uses __f*_rn), IEEE division and sqrt, denormals kept
    "--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false",
    "-lineinfo",
]
CXX_FLAGS = ["-O2", "-ffp-contract=off"]


def cuda_extensions():
    """(ext_modules, cmdclass) for setuptools: fp4ref_cuda._C plus the GEMM extensions when present."""
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda-13.0/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda-13.0"
    rel = CSRC.relative_to(HERE.parent)  # setup.py wants paths relative to the project root
    ext = CUDAExtension(
        name="fp4ref_cuda._C",
        sources=[str(rel / "bindings.cpp")] + [str(rel / f) for f in KERNELS],
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
    )
    ext_modules = [ext]
    try:
        from fp4ref_cuda.build_gemm import gemm_extensions
    except ImportError:
        gemm_extensions = None
    if gemm_extensions is not None:
        ext_modules += list(gemm_extensions())
    return ext_modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}
