"""The public op surface of fp4ref (SPEC §1): every op, one name, two backends.

A CUDA tensor is served by ``fp4ref_cuda`` when that extension is importable and
``FP4REF_BACKEND`` is not ``reference``; everything else by the pure-PyTorch reference, which works on
any device. The reference functions validate their own arguments; on the CUDA path this module runs the
same ``check_*`` functions first, so each call is checked exactly once and both backends reject the same
inputs with the same errors. A backend function may return ``NotImplemented`` for an argument combination
it does not cover (e.g. stochastic rounding); the reference then serves the call.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import codecs, layouts, mx, nvfp4
from .codecs import check_bool, check_decode_args, check_encode_args, check_uint8_tensor
from .layouts import check_unswizzle_args
from .mx import MXTensor, check_dequantize_mx_args, check_mx_args
from .nvfp4 import NVFP4Tensor, check_dequantize_nvfp4_args, check_nvfp4_args

__all__ = [
    "backend", "encode", "decode", "pack_fp4", "unpack_fp4", "swizzle_scales", "unswizzle_scales",
    "quantize_mx", "dequantize_mx", "quantize_nvfp4", "dequantize_nvfp4", "MXTensor", "NVFP4Tensor",
    "block_hadamard", "hadamard_matrix", "rotate_weight", "hadamard_quantize", "fp4_mm", "fp4_linear",
    "PreparedFP4Weight", "prepare_fp4_weight", "fp4_linear_prepared",
]


@functools.lru_cache(maxsize=1)
def _cuda_module() -> Any:
    try:
        import fp4ref_cuda
    except ImportError:
        return None
    return fp4ref_cuda if getattr(fp4ref_cuda, "available", lambda: False)() else None


def _tensor_of(t: Any) -> torch.Tensor | None:
    if isinstance(t, (MXTensor, NVFP4Tensor)):
        return t.data
    return t if isinstance(t, torch.Tensor) else None


def backend(t: Any) -> str:
    """``"cuda"`` if ``t`` (a tensor, MXTensor or NVFP4Tensor) would be served by fp4ref_cuda, else ``"reference"``."""
    if os.environ.get("FP4REF_BACKEND", "") == "reference":
        return "reference"
    tensor = _tensor_of(t)
    if tensor is not None and tensor.is_cuda and _cuda_module() is not None:
        return "cuda"
    return "reference"


def _dispatch(name: str, reference: Callable, check: Callable | None, first: Any, *args, **kwargs):
    if backend(first) == "cuda":
        fn = getattr(_cuda_module(), name, None)
        if fn is not None:
            if check is not None:
                check()
            out = fn(*args, **kwargs)
            if out is not NotImplemented:
                return out
    return reference(*args, **kwargs)


# --- §2 codecs ---------------------------------------------------------------------------------------------
def encode(x: torch.Tensor, fmt: str, *, saturate: bool = True, rounding: str = "rne",
           generator: torch.Generator | None = None) -> torch.Tensor:
    return _dispatch("encode", codecs.encode, lambda: check_encode_args(x, fmt, saturate, rounding, generator), x,
                     x, fmt, saturate=saturate, rounding=rounding, generator=generator)


def decode(codes: torch.Tensor, fmt: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _dispatch("decode", codecs.decode, lambda: check_decode_args(codes, fmt, dtype), codes, codes, fmt,
                     dtype)


# --- §3 layouts --------------------------------------------------------------------------------------------
def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    return _dispatch("pack_fp4", layouts.pack_fp4, lambda: check_uint8_tensor(codes, "codes"), codes, codes)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    return _dispatch("unpack_fp4", layouts.unpack_fp4, lambda: check_uint8_tensor(packed, "packed"), packed,
                     packed)


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    return _dispatch("swizzle_scales", layouts.swizzle_scales, lambda: check_uint8_tensor(scales, "scales"),
                     scales, scales)


def unswizzle_scales(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return _dispatch("unswizzle_scales", layouts.unswizzle_scales,
                     lambda: check_unswizzle_args(blocked, rows, cols), blocked, blocked, rows, cols)


# --- §4/§5 block quantizers --------------------------------------------------------------------------------
def quantize_mx(x: torch.Tensor, elem: str = "e2m1", *, block_size: int = 32, scale_mode: str = "floor",
                axis: int = -1) -> MXTensor:
    return _dispatch("quantize_mx", mx.quantize_mx, lambda: check_mx_args(x, elem, block_size, scale_mode, axis),
                     x, x, elem, block_size=block_size, scale_mode=scale_mode, axis=axis)


def dequantize_mx(q: MXTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _dispatch("dequantize_mx", mx.dequantize_mx, lambda: check_dequantize_mx_args(q, dtype), q, q, dtype)


def quantize_nvfp4(x: torch.Tensor, *, global_amax: float | torch.Tensor | None = None, recipe: str = "te",
                   block_size: int = 16) -> NVFP4Tensor:
    return _dispatch("quantize_nvfp4", nvfp4.quantize_nvfp4,
                     lambda: check_nvfp4_args(x, global_amax, recipe, block_size), x, x,
                     global_amax=global_amax, recipe=recipe, block_size=block_size)


def dequantize_nvfp4(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _dispatch("dequantize_nvfp4", nvfp4.dequantize_nvfp4, lambda: check_dequantize_nvfp4_args(q, dtype), q, q,
                     dtype)


# --- §7 rotations ------------------------------------------------------------------------------------------
def block_hadamard(x: torch.Tensor, block_size: int, *, signs: torch.Tensor | None = None,
                   axis: int = -1) -> torch.Tensor:
    """Block Walsh-Hadamard rotation in the spec's butterfly order (SPEC §7); float32 out."""
    from . import hadamard

    return _dispatch("block_hadamard", hadamard.block_hadamard,
                     lambda: hadamard.check_block_hadamard(x, block_size, signs, axis), x, x, block_size,
                     signs=signs, axis=axis)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sylvester Hadamard matrix, H[i, j] = (-1)^popcount(i & j)."""
    from .hadamard import hadamard_matrix as impl

    return impl(n, dtype)


def rotate_weight(w: torch.Tensor, block_size: int, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the rows of a linear layer's weight along K, the offline half of rotation fusion."""
    from .hadamard import rotate_weight as impl

    return impl(w, block_size, signs)


def _hadamard_quantize_ref(x, fmt="mxfp4", *, hadamard_block=32, signs=None, scale_mode="floor", recipe="te",
                           global_amax=None, swizzle=False):
    y = block_hadamard(x, hadamard_block, signs=signs)
    if fmt == "mxfp4":
        q = quantize_mx(y, "e2m1", block_size=32, scale_mode=scale_mode)
    else:
        q = quantize_nvfp4(y, global_amax=global_amax, recipe=recipe)
    return (q, swizzle_scales(q.scales.reshape(-1, q.scales.shape[-1]))) if swizzle else q


def hadamard_quantize(x: torch.Tensor, fmt: str = "mxfp4", *, hadamard_block: int = 32,
                      signs: torch.Tensor | None = None, scale_mode: str = "floor", recipe: str = "te",
                      global_amax: float | torch.Tensor | None = None, swizzle: bool = False):
    """``quantize(block_hadamard(x, hadamard_block, signs))`` in MXFP4 (e2m1, block 32) or NVFP4; with
    ``swizzle=True`` returns ``(q, blocked_scales)`` with the scales also in the 128x4 layout."""
    from . import hadamard

    def check():
        if not isinstance(fmt, str) or fmt not in ("mxfp4", "nvfp4"):
            raise ValueError(f"fmt={fmt!r} is not 'mxfp4' or 'nvfp4'")
        check_bool(swizzle, "swizzle")
        hadamard.check_block_hadamard(x, hadamard_block, signs, -1, arg="hadamard_block")
        if fmt == "mxfp4":
            check_mx_args(x, "e2m1", 32, scale_mode, -1)
        else:
            check_nvfp4_args(x, global_amax, recipe, 16)

    if backend(x) != "cuda":
        check()
    return _dispatch("hadamard_quantize", _hadamard_quantize_ref, check, x, x, fmt,
                     hadamard_block=hadamard_block, signs=signs, scale_mode=scale_mode, recipe=recipe,
                     global_amax=global_amax, swizzle=swizzle)


# --- §8 GEMM -----------------------------------------------------------------------------------------------
def fp4_mm(a, b, *, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``out[m, n] = Σ_k deq(a)[m, k] deq(b)[n, k]`` correctly rounded (SPEC §8); NVFP4 global scales last."""
    from . import gemm

    return _dispatch("fp4_mm", gemm.fp4_mm, lambda: gemm.check_fp4_mm(a, b, out_dtype), a, a, b,
                     out_dtype=out_dtype)


def fp4_linear(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ deq(w)ᵀ (+ bias)`` for a quantized weight ``w`` (N, K): weight-only FP4 (W4A16)."""
    from . import gemm

    return _dispatch("fp4_linear", gemm.fp4_linear, lambda: gemm.check_linear_args(x, w, bias), w, x, w, bias)


# --- §8 GEMM with a weight prepared once (FP4Linear's decode path) ----------------------------------------
def _backend_fn(name: str) -> Callable | None:
    """The CUDA backend's function ``name``: ``fp4ref_cuda.<name>``, else ``fp4ref_cuda.gemm.<name>`` (the GEMM
    module, which need not re-export it), else None."""
    mod = _cuda_module()
    if mod is None:
        return None
    fn = getattr(mod, name, None)
    return fn if fn is not None else getattr(getattr(mod, "gemm", None), name, None)


@dataclass(frozen=True, eq=False)
class PreparedFP4Weight:
    """An FP4 weight W (N, K), checked once and made ready for repeated ``fp4_linear_prepared`` calls.

    ``weight`` is W itself (an MXTensor or NVFP4Tensor; it shares W's storage, so W's bytes are not copied and
    a change to them in place is seen, though prepare again after one: ``native`` may hold views or values
    derived from them). ``native`` is the CUDA backend's own form of W (``fp4ref_cuda.gemm.PreparedWeight``:
    byte views of data and scales, the NVFP4 global scale as a device tensor, the stretch divisor) when
    fp4ref_cuda serves W, else None: the reference serves every call; ``run`` the backend's GEMM on it.
    """

    weight: MXTensor | NVFP4Tensor
    native: Any = None
    run: Callable | None = None  # the backend's GEMM on ``native`` (fp4ref_cuda.gemm.linear_prepared)
    n: int = field(init=False)  # out_features
    k: int = field(init=False)  # in_features
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        n, k = self.weight.shape
        for name, v in (("n", n), ("k", k), ("device", self.weight.data.device)):
            object.__setattr__(self, name, v)

    @property
    def shape(self) -> torch.Size:
        """W's shape (N, K)."""
        return self.weight.shape

    @property
    def backend(self) -> str:
        """``"cuda"`` if fp4ref_cuda's kernels take W (for bf16 inputs), else ``"reference"``."""
        return "reference" if self.native is None else "cuda"


def prepare_fp4_weight(w: MXTensor | NVFP4Tensor) -> PreparedFP4Weight:
    """Check the FP4 weight ``w`` (N, K) once and prepare it for ``fp4_linear_prepared``.

    No arithmetic happens here: ``fp4_linear_prepared(x, prepare_fp4_weight(w), bias)`` is
    ``fp4_linear(x, w, bias)``, ``y = x · deq(w)ᵀ (+ bias)``, with the same bits on every backend. What is made
    once is what every call would otherwise redo: ``w``'s validation and, for a CUDA weight that fp4ref_cuda
    serves, the backend's views of it (``fp4ref_cuda.gemm.prepare_weight``). Prepare again after changing
    ``w``'s tensors. TypeError/ValueError naming ``w`` if it is not an MXFP4 (e2m1, blocked along K) or NVFP4
    2-D weight, valid in itself.
    """
    from . import gemm

    gemm.check_fp4_weight(w, "w")
    if backend(w) != "cuda" or torch.compiler.is_compiling():  # (a traced graph keeps the op path)
        return PreparedFP4Weight(w)
    prepare, run = _backend_fn("prepare_weight"), _backend_fn("linear_prepared")
    native = None if prepare is None or run is None else prepare(w)  # None: the kernels do not take w
    return PreparedFP4Weight(w) if native is None else PreparedFP4Weight(w, native, run)


def _check_prepared_args(x: object, pw: PreparedFP4Weight, bias: object) -> None:
    """The per-call checks of ``fp4_linear_prepared``: ``fp4_linear``'s, less the weight's (checked when
    prepared)."""
    from . import gemm

    gemm.check_linear_input(x)
    gemm.check_linear_operands(x, pw.shape, pw.device, bias)


def fp4_linear_prepared(x: torch.Tensor, pw: PreparedFP4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x · deq(W)ᵀ (+ bias)`` for a weight W prepared by ``prepare_fp4_weight``: ``fp4_linear(x, W, bias)``.

    ``y[..., n] = Σ_k x[..., k] · deq(W)[n, k] (+ bias[n])``, with ``deq(W)[n, k] = decode(code) · scale``
    (NVFP4: times the global scale). Bit for bit what ``fp4_linear(x, W, bias)`` returns on the same device:
    the reference GEMM of SPEC §8 (float64, rounded once to x's dtype) on the CPU and wherever the backend
    declines; fp4ref_cuda's FP4 GEMM for bf16 CUDA inputs (bf16 out), without re-checking or re-viewing W.
    Checks per call: x a float32/bfloat16/float16/float64 tensor (..., K) on W's device, ``bias`` None or a
    float tensor (N,) there (TypeError/ValueError naming the argument); ``pw`` must come from
    ``prepare_fp4_weight`` (TypeError).
    """
    if not isinstance(pw, PreparedFP4Weight):
        raise TypeError(f"pw must be a PreparedFP4Weight (from fp4ref.ops.prepare_fp4_weight), got "
                        f"{type(pw).__name__}")
    _check_prepared_args(x, pw, bias)
    if pw.run is not None and os.environ.get("FP4REF_BACKEND", "") != "reference":  # (x is on W's device)
        y = pw.run(x, pw.native, bias)
        if y is not NotImplemented:
            return y
    return fp4_linear(x, pw.weight, bias)


for _f, _ref in ((encode, codecs.encode), (decode, codecs.decode), (pack_fp4, layouts.pack_fp4),
                 (unpack_fp4, layouts.unpack_fp4), (swizzle_scales, layouts.swizzle_scales),
                 (unswizzle_scales, layouts.unswizzle_scales), (quantize_mx, mx.quantize_mx),
                 (dequantize_mx, mx.dequantize_mx), (quantize_nvfp4, nvfp4.quantize_nvfp4),
                 (dequantize_nvfp4, nvfp4.dequantize_nvfp4)):
    _f.__doc__ = _ref.__doc__
