"""fp4ref: bit-exact reference for MXFP4 / NVFP4 and the fp4ref_cuda backend.

The CUDA extension is built only when CUDA is available or FP4REF_BUILD_CUDA=1.
"""
import os

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}
# The CUDA backend's build is configured in fp4ref_cuda/build.py (kept apart so that the
# pure-Python install needs no torch at setup time).
if os.environ.get("FP4REF_BUILD_CUDA", "") == "1":
    from fp4ref_cuda.build import cuda_extensions  # noqa: E402

    ext_modules, cmdclass = cuda_extensions()

setup(
    name="fp4ref",
    version="0.1.0",
    description="Bit-exact reference codecs, block quantizers, rotations, GEMM and GPTQ/QEP for MXFP4 and NVFP4",
    packages=find_packages(include=["fp4ref", "fp4ref.*", "fp4ref_cuda", "fp4ref_cuda.*"]),
    package_data={"fp4ref_cuda": ["csrc/*.cuh", "csrc/*.cu", "csrc/*.cpp", "csrc/*.h"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "scipy", "safetensors"],
    extras_require={
        # The oracles' versions the conformance map was made with (docs/conformance.md); the tests also pass with
        # ml_dtypes 0.7 (its E8M0 rounding of float32 subnormals changed: a row in the map, not a failure).
        "test": ["pytest", "hypothesis", "ml_dtypes>=0.6,<0.8", "torchao==0.18.0", "compressed-tensors==0.20.0",
                 "psutil"],
        "model": ["transformers>=5", "gguf", "accelerate", "sentencepiece", "tokenizers"],
        "docs": ["matplotlib"],  # docs/make_figures.py
    },
    entry_points={"console_scripts": ["fp4ref=fp4ref.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
