"""CUDA FP4 GEMMs behind ``fp4ref.ops.fp4_mm`` / ``fp4_linear`` (SPEC §8, §14); design in docs/cuda_gemm.md.

Paths, by GPU and batch size M:

* sm_100 / sm_120 with the CUTLASS module built: block-scaled FP4 tensor-core GEMM (scales swizzled to the
  128x4 layout here). Compiled and SASS-checked, not yet run on hardware.
* M <= 16: ``a`` (tiny) is dequantized to bf16 and ``b`` is dequantized in registers by a weight-only
  tensor-core kernel (``x · deq(w)ᵀ``); the bf16 weights never exist in memory.
* otherwise: both operands are dequantized to bf16 by a fused kernel (exact) and multiplied by cuBLAS with
  float32 accumulation; the NVFP4 global scales ``fp32(gs_a · gs_b)`` are cuBLAS's alpha.

Each function returns ``NotImplemented`` for what it does not cover (float64 output, non-bf16 activations,
block sizes that are not multiples of 16, a missing extension), and ``fp4ref.ops`` then serves the call
with the reference.
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import NamedTuple

import torch

from fp4ref.mx import MXTensor
from fp4ref.nvfp4 import NVFP4Tensor

SMALL_M = 16  # largest batch served by the weight-only register-dequant kernel
# Data path of that kernel: "registers" (W loaded one chunk ahead into registers; measured on an H200) or
# "pipelined" (a cp.async pipeline through shared memory: identical bits, built to keep more bytes in flight,
# not yet measured on a GPU; docs/cuda_gemm.md). Read once at import from FP4REF_SMALL_M_KERNEL.
SMALL_M_KERNEL = os.environ.get("FP4REF_SMALL_M_KERNEL", "registers")
if SMALL_M_KERNEL not in ("registers", "pipelined"):
    raise ValueError(f"FP4REF_SMALL_M_KERNEL must be 'registers' or 'pipelined', got {SMALL_M_KERNEL!r}")
_FAST_OUT = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"fp4ref_cuda.{name}")
    except ImportError:
        return None


def _ops():
    return torch.ops.fp4ref_cuda


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned (the kernels use 16-byte loads): copies only odd views."""
    t = t.contiguous()
    # Allocations are 256-byte aligned: the storage offset decides (no data_ptr, so FakeTensors trace).
    return t if t.storage_offset() * t.element_size() % 16 == 0 else t.clone()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return _aligned(t if t.dtype == torch.uint8 else t.view(torch.uint8))


def _operand(q: MXTensor | NVFP4Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(packed data (R, K/2) uint8, scales (R, K/bs) uint8, scales are E4M3)."""
    return _bytes(q.data), _bytes(q.scales), isinstance(q, NVFP4Tensor)


def _stretch_divisor(*qs: MXTensor | NVFP4Tensor) -> float:
    """MX 'stretch' operands decode as code·2^X/3: the exact factor 1/3 per operand is applied at the end."""
    return float(3 ** sum(isinstance(q, MXTensor) and q.scale_mode == "stretch" for q in qs))


def _global_scale(*qs: MXTensor | NVFP4Tensor) -> torch.Tensor | None:
    """fp32(gs_a · gs_b) (or gs_w) as a one-element device tensor, without a host sync; None for MX."""
    if not isinstance(qs[0], NVFP4Tensor):
        return None
    dev = qs[0].data.device
    g = qs[0].global_scale.to(device=dev, dtype=torch.float32).reshape(1)
    for q in qs[1:]:
        g = g * q.global_scale.to(device=dev, dtype=torch.float32).reshape(1)
    return g.contiguous()


def dequantize_bf16(q: MXTensor | NVFP4Tensor) -> torch.Tensor:
    """Exact bf16 ``decode(code) · scale`` of a 2-D FP4 operand (global scale left out), on the GPU."""
    data, scales, e4m3 = _operand(q)
    return _ops().gemm_dequant_bf16(data, scales, q.block_size, e4m3)


def _cutlass_arch(dev: torch.device) -> str | None:
    cap = torch.cuda.get_device_capability(dev)
    arch = {(10, 0): "sm100a", (12, 0): "sm120a"}.get(cap)
    return arch if arch is not None and _module(f"_gemm_{arch}") is not None else None


def cutlass_supported(m: int, n: int, k: int) -> bool:
    """Shapes the CUTLASS kernels take (see gemm_sm100a.cu / gemm_sm120a.cu)."""
    return m > 0 and n > 0 and k % 256 == 0 and n % 4 == 0


def _swizzle(scales: torch.Tensor) -> torch.Tensor:
    # The backend's own swizzle kernel (operands are 2-D uint8 CUDA tensors, so it never declines): calling
    # back into fp4ref.ops would make the dispatcher and its backend import each other.
    return _ops().swizzle_scales(_aligned(scales))


def _cutlass_mm(arch: str, a, b, alpha: torch.Tensor | None) -> torch.Tensor:
    da, sa, nv = _operand(a)
    db, sb, _ = _operand(b)
    fn = getattr(_ops(), f"gemm_fp4_cutlass_{arch}")
    return fn(da, _bytes(_swizzle(sa)), db, _bytes(_swizzle(sb)), nv, alpha)


def _usable(*qs) -> bool:
    return (_module("_gemm_sm90") is not None and all(q.data.is_cuda for q in qs)
            and all(q.block_size % 16 == 0 for q in qs))


def fp4_mm(a: MXTensor | NVFP4Tensor, b: MXTensor | NVFP4Tensor, *,
           out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``out = a · bᵀ`` (a (M, K), b (N, K) FP4) on the GPU; float32 accumulation, global scales as alpha.

    Arguments are validated by ``fp4ref.ops`` (``fp4ref.gemm.check_fp4_mm``) before this is called; only what the
    kernels rely on is re-checked here.
    """
    kinds = (type(a), type(b))
    if kinds not in ((MXTensor, MXTensor), (NVFP4Tensor, NVFP4Tensor)) or out_dtype not in _FAST_OUT:
        return NotImplemented
    if isinstance(a, MXTensor) and (a.elem != "e2m1" or b.elem != "e2m1"):
        return NotImplemented
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[1] or a.block_size != b.block_size:
        raise ValueError(f"fp4_mm needs a (M, K) and b (N, K) with one block size, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if not _usable(a, b) or a.data.device != b.data.device:
        return NotImplemented
    m, n, k = a.shape[0], b.shape[0], a.shape[1]
    alpha, div = _global_scale(a, b), _stretch_divisor(a, b)
    if m == 0 or n == 0:
        return torch.zeros(m, n, dtype=out_dtype, device=a.data.device)
    arch = _cutlass_arch(a.data.device)
    if arch is not None and div == 1.0 and cutlass_supported(m, n, k) and a.block_size == (16 if alpha is not None
                                                                                         else 32):
        return _cutlass_mm(arch, a, b, alpha).to(out_dtype)
    if m <= SMALL_M:
        data, scales, e4m3 = _operand(b)
        return _ops().gemm_fp4_linear_small(dequantize_bf16(a), data, scales, b.block_size, e4m3, alpha, div,
                                            out_dtype, SMALL_M_KERNEL == "pipelined")
    direct = out_dtype == torch.float32 or (out_dtype == torch.bfloat16 and div == 1.0)
    out = _ops().gemm_bf16_cublas(dequantize_bf16(a), dequantize_bf16(b), alpha,
                                  out_dtype if direct else torch.float32)
    if div != 1.0:
        out = out.div_(div)
    return out if direct else out.to(out_dtype)


class PreparedWeight(NamedTuple):
    """What ``fp4_linear`` needs from an FP4 weight, made once: byte views of its data and scales, the NVFP4
    global scale as a one-element device tensor (alpha) and the stretch divisor."""

    data: torch.Tensor
    scales: torch.Tensor
    block_size: int
    e4m3: bool
    alpha: torch.Tensor | None
    divisor: float
    n: int
    k: int


def prepare_weight(w: MXTensor | NVFP4Tensor) -> PreparedWeight | None:
    """``w`` (N, K) ready for ``linear_prepared``, or None where these kernels do not take it."""
    if (not isinstance(w, (MXTensor, NVFP4Tensor)) or len(w.shape) != 2 or not _usable(w)
            or (isinstance(w, MXTensor) and w.elem != "e2m1")):
        return None
    data, scales, e4m3 = _operand(w)
    return PreparedWeight(data, scales, w.block_size, e4m3, _global_scale(w), _stretch_divisor(w),
                          w.shape[0], w.shape[1])


def linear_prepared(x: torch.Tensor, pw: PreparedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``fp4_linear`` on a prepared weight (bf16 x on the weight's device; anything else: NotImplemented).

    ``FP4Linear`` calls this directly with a weight prepared once, so a decode step pays no per-call
    construction or re-validation of the weight; ``fp4_linear`` prepares and calls it.
    """
    # (Written for a decode step's host time: no reshape, cast or import where none is needed.)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16 or x.device != pw.data.device:
        return NotImplemented
    k = pw.k
    if x.shape[-1] != k:
        raise ValueError(f"x must have K = {k} features in its last dimension, got shape {tuple(x.shape)}")
    flat = x.dim() == 2
    x2 = _aligned(x if flat else x.reshape(-1, k))
    m, n = x2.shape[0], pw.n
    out_dtype = torch.bfloat16 if bias is None else torch.float32
    if m == 0:
        y = torch.zeros(m, n, dtype=out_dtype, device=x.device)
    elif m <= SMALL_M:
        y = _ops().gemm_fp4_linear_small(x2, pw.data, pw.scales, pw.block_size, pw.e4m3, pw.alpha, pw.divisor,
                                         out_dtype, SMALL_M_KERNEL == "pipelined")
    else:
        direct = pw.divisor == 1.0
        w16 = _ops().gemm_dequant_bf16(pw.data, pw.scales, pw.block_size, pw.e4m3)
        y = _ops().gemm_bf16_cublas(x2, w16, pw.alpha, out_dtype if direct else torch.float32)
        if not direct:
            y = y.div_(pw.divisor)
    if bias is not None:
        y = y + bias.to(device=y.device, dtype=torch.float32)
    if y.dtype != torch.bfloat16:  # a bias, or the stretch divisor of the cuBLAS path: float32 until here
        y = y.to(torch.bfloat16)
    return y if flat else y.reshape(*x.shape[:-1], n)


def fp4_linear(x: torch.Tensor, w: MXTensor | NVFP4Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x · deq(w)ᵀ (+ bias)`` for bf16 activations x (..., K) and an FP4 weight w (N, K), bf16 out.

    M <= 16 rows: register dequantization, no bf16 copy of W; larger M: exact bf16 dequant + cuBLAS.
    With a bias the float32 product and the bias are added before the one rounding to bf16.
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        return NotImplemented
    pw = prepare_weight(w)
    return NotImplemented if pw is None else linear_prepared(x, pw, bias)


def _register_fakes() -> None:
    """Shape-only kernels so that the ops trace under torch.compile / FakeTensor."""
    lib = "fp4ref_cuda::"

    def reg(name, fn):
        try:
            torch.library.register_fake(lib + name)(fn)
        except RuntimeError:  # already registered (module re-imported)
            pass

    reg("gemm_dequant_bf16", lambda data, scales, block_size, e4m3:
        data.new_empty((data.shape[0], data.shape[1] * 2), dtype=torch.bfloat16))
    reg("gemm_bf16_cublas", lambda a, b, alpha, out_dtype: a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype))
    reg("gemm_fp4_linear_small", lambda x, w, w_scales, block_size, e4m3, alpha, divisor, out_dtype, pipelined=False:
        x.new_empty((x.shape[0], w.shape[0]), dtype=out_dtype))
    for arch in ("sm100a", "sm120a"):
        if _module(f"_gemm_{arch}") is not None:
            reg(f"gemm_fp4_cutlass_{arch}", lambda a, a_scales, b, b_scales, nvfp4, alpha:
                a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float32))


if _module("_gemm_sm90") is not None:
    _register_fakes()

__all__ = ["SMALL_M", "SMALL_M_KERNEL", "PreparedWeight", "cutlass_supported", "dequantize_bf16", "fp4_linear",
           "fp4_mm", "linear_prepared", "prepare_weight"]
