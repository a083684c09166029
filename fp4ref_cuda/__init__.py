"""fp4ref_cuda: the CUDA backend of fp4ref (SPEC §14), bit for bit the reference's results.

Importing this package loads the compiled extension ``fp4ref_cuda._C`` (which registers the
``torch.ops.fp4ref_cuda`` ops) when it was built, registers fake (meta) kernels so that shapes work under
``torch.compile``, and exposes the public ops with the reference's names and signatures. ``fp4ref.ops``
calls them for CUDA tensors when ``available()``; call them through ``fp4ref.ops``, which validates
arguments.
"""
from __future__ import annotations

import torch

from ._wrappers import Ops

try:
    from . import _C  # noqa: F401  (registers torch.ops.fp4ref_cuda)
    LOAD_ERROR: Exception | None = None
except ImportError as e:  # not built (pip install without FP4REF_BUILD_CUDA=1 and no CUDA)
    _C = None
    LOAD_ERROR = e

if _C is not None:
    from . import _fake  # noqa: F401


def built() -> bool:
    """True when the compiled extension is importable (no GPU needed)."""
    return _C is not None


def available() -> bool:
    """True when the extension is built and a CUDA device is present."""
    return _C is not None and torch.cuda.is_available()


_ops = Ops(torch.ops.fp4ref_cuda)
encode = _ops.encode
decode = _ops.decode
pack_fp4 = _ops.pack_fp4
unpack_fp4 = _ops.unpack_fp4
swizzle_scales = _ops.swizzle_scales
unswizzle_scales = _ops.unswizzle_scales
quantize_mx = _ops.quantize_mx
dequantize_mx = _ops.dequantize_mx
quantize_nvfp4 = _ops.quantize_nvfp4
dequantize_nvfp4 = _ops.dequantize_nvfp4
block_hadamard = _ops.block_hadamard
hadamard_quantize = _ops.hadamard_quantize

try:  # the GEMM ops (issue 6) live in their own module and extension
    from .gemm import fp4_linear, fp4_mm  # noqa: F401
except ImportError:
    pass

__all__ = ["available", "built", "encode", "decode", "pack_fp4", "unpack_fp4", "swizzle_scales",
           "unswizzle_scales", "quantize_mx", "dequantize_mx", "quantize_nvfp4", "dequantize_nvfp4",
           "block_hadamard", "hadamard_quantize", "fp4_mm", "fp4_linear"]
