"""The public fp4ref_cuda ops, written once over a low-level backend.

``Ops(low)`` exposes the reference's op names and signatures (``encode``, ``quantize_mx``, ...). ``low`` runs
the kernels: ``torch.ops.fp4ref_cuda`` on GPU tensors, or the ctypes CPU build of the same C++ (``_cpu.py``)
in the tests. Arguments arrive validated by ``fp4ref.ops``; where an input is one the reference rejects (or
an option the kernels do not cover, such as stochastic rounding) a method returns ``NotImplemented`` and
``fp4ref.ops`` lets the reference answer (and raise). Data-dependent errors (a NaN with ``saturate=False``,
a code > 15) come back from the kernels as a flag and are raised here with the reference's messages.
"""
from __future__ import annotations

from typing import Any

import torch

from fp4ref.codecs import check_uint8_tensor
from fp4ref.formats import get_format
from fp4ref.hadamard import inv_sqrt
from fp4ref.layouts import blocked_scale_size
from fp4ref.mx import MXTensor
from fp4ref.nvfp4 import NVFP4Tensor

from .ids import FMT_IDS, MODE_IDS, MX_ANY, MX_E2M1, NV_TE  # noqa: F401 (MX_ANY: the wrappers' callers)

IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FUSED_BLOCKS = (16, 32, 64, 128)  # rotation blocks with a one-pass kernel; others rotate, then quantize
# What the kernels serve: for these fp4ref.ops never falls back to the reference (tests/test_dispatch.py runs
# every one with the reference disabled). Outside them a method returns NotImplemented on purpose: float64
# inputs, stochastic rounding, NVFP4 recipes other than "te", empty NVFP4 inputs.
CLAIMED = {
    "dtypes": IN_DTYPES,
    "mx_scale_modes": {e: ("floor", "ceil", "even", "rceil") + (("stretch",) if e == "e2m1" else ())
                       for e in ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2")},
    "mx_block_sizes": (32, 16, 64),
    "hadamard_blocks": (2, 4, 8, 16, 32, 64, 128),
    "fused_hadamard_blocks": FUSED_BLOCKS + (8,),
}


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned (the kernels use 16-byte vector loads)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _signs(signs: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if signs is None else signs.to(device=device, dtype=torch.float32).contiguous()


def _flag(err: torch.Tensor) -> bool:
    return bool(int(err.item()))


class Ops:
    """The fp4ref op surface over a low-level backend (see the module docstring)."""

    def __init__(self, low: Any):
        self.low = low

    # --- §2 codecs -----------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, fmt: str, *, saturate: bool = True, rounding: str = "rne",
               generator: torch.Generator | None = None):
        if rounding != "rne" or x.dtype not in IN_DTYPES:
            return NotImplemented  # stochastic rounding: the reference's torch.rand stream on the device
        f = get_format(fmt)
        codes, err = self.low.encode(_dense(x), FMT_IDS[f.name], bool(saturate))
        if not saturate and _flag(err):  # only saturate=False can fail: no device sync otherwise
            if bool(torch.isnan(x).any()):
                raise ValueError(f"x holds NaN, which {f.name} cannot represent with saturate=False")
            raise ValueError(f"x holds values beyond ±{f.max_finite:g} (or ±Inf), which {f.name} cannot "
                             "represent with saturate=False")
        return codes

    def decode(self, codes: torch.Tensor, fmt: str, dtype: torch.dtype = torch.float32):
        codes = check_uint8_tensor(codes, "codes")
        if dtype not in IN_DTYPES + (torch.float64,):
            return NotImplemented
        f = get_format(fmt)
        out, err = self.low.decode(_dense(codes), FMT_IDS[f.name])
        if f.bits < 8 and _flag(err):
            raise ValueError(f"codes hold values >= {1 << f.bits}, which are not {f.name} codes "
                             "(one code per byte, in the low bits; unpack packed FP4 first)")
        return out if dtype == torch.float32 else out.to(dtype)

    # --- §3 layouts ----------------------------------------------------------------------------------------
    def pack_fp4(self, codes: torch.Tensor):
        codes = check_uint8_tensor(codes, "codes")
        if codes.dim() == 0 or codes.shape[-1] % 2:
            return NotImplemented
        packed, err = self.low.pack_fp4(_dense(codes))
        if _flag(err):
            raise ValueError("codes hold values > 15, which are not 4-bit codes")
        return packed

    def unpack_fp4(self, packed: torch.Tensor):
        packed = check_uint8_tensor(packed, "packed")
        if packed.dim() == 0:
            return NotImplemented
        return self.low.unpack_fp4(_dense(packed))

    def swizzle_scales(self, scales: torch.Tensor):
        scales = check_uint8_tensor(scales, "scales")
        if scales.dim() != 2:
            return NotImplemented
        return self.low.swizzle_scales(_dense(scales))

    def unswizzle_scales(self, blocked: torch.Tensor, rows: int, cols: int):
        blocked = check_uint8_tensor(blocked, "blocked")
        if rows < 0 or cols < 0 or blocked.dim() != 1:
            return NotImplemented
        if blocked.numel() != blocked_scale_size(rows, cols):
            return NotImplemented
        return self.low.unswizzle_scales(_dense(blocked), rows, cols)

    # --- §4/§5 block quantizers ----------------------------------------------------------------------------
    def quantize_mx(self, x: torch.Tensor, elem: str = "e2m1", *, block_size: int = 32, scale_mode: str = "floor",
                    axis: int = -1):
        if x.dtype not in IN_DTYPES:
            return NotImplemented
        f = get_format(elem)
        ax = axis % x.dim()
        xm = _dense(x.movedim(ax, -1))
        kind = MX_E2M1 if f.name == "e2m1" else MX_ANY
        data, scales, _, _ = self.low.quantize(xm, kind, FMT_IDS[f.name], MODE_IDS[scale_mode], block_size, 1, None,
                                               1.0, None, False)
        return MXTensor(data, scales, f.name, block_size, x.shape, scale_mode, ax)

    def dequantize_mx(self, q: MXTensor, dtype: torch.dtype = torch.float32):
        data = _dense(q.data.view(torch.uint8))
        scales = _dense(q.scales.view(torch.uint8))
        kind = MX_E2M1 if q.elem == "e2m1" else MX_ANY
        out_dtype = dtype if dtype in IN_DTYPES else torch.float32
        out = self.low.dequantize(data, scales, None, kind, FMT_IDS[q.elem], q.block_size,
                                  q.scale_mode == "stretch", out_dtype)
        ax = q.axis % len(q.shape)
        if ax != len(q.shape) - 1:
            out = out.movedim(-1, ax)
        return out if out.dtype == dtype else out.to(dtype)

    def _amax(self, x: torch.Tensor, global_amax, hb: int, signs, rscale: float) -> torch.Tensor:
        if global_amax is None:
            return self.low.finite_amax(x, hb, signs, rscale)
        return torch.as_tensor(global_amax, dtype=torch.float32, device=x.device).reshape(()).contiguous()

    def quantize_nvfp4(self, x: torch.Tensor, *, global_amax: float | torch.Tensor | None = None, recipe: str = "te",
                       block_size: int = 16):
        if recipe != "te" or x.dtype not in IN_DTYPES or x.numel() == 0:
            return NotImplemented  # (an empty tensor: the global scale comes from no kernel thread)
        xc = _dense(x)
        amax = self._amax(xc, global_amax, 1, None, 1.0)
        data, scales, gs, _ = self.low.quantize(xc, NV_TE, 0, 0, block_size, 1, None, 1.0, amax, False)
        return NVFP4Tensor(data, scales, gs, recipe, x.shape, block_size)

    def dequantize_nvfp4(self, q: NVFP4Tensor, dtype: torch.dtype = torch.float32):
        data = _dense(q.data.view(torch.uint8))
        scales = _dense(q.scales.view(torch.uint8))
        gs = q.global_scale.to(device=data.device, dtype=torch.float32).reshape(()).contiguous()
        out_dtype = dtype if dtype in IN_DTYPES else torch.float32
        out = self.low.dequantize(data, scales, gs, NV_TE, 0, q.block_size, False, out_dtype)
        return out if out.dtype == dtype else out.to(dtype)

    # --- §7 rotations --------------------------------------------------------------------------------------
    def block_hadamard(self, x: torch.Tensor, block_size: int, *, signs: torch.Tensor | None = None,
                       axis: int = -1):
        if x.dtype not in IN_DTYPES:
            return NotImplemented  # float64: the reference's float64 butterfly
        ax = axis % x.dim()
        v = _dense(x.movedim(ax, -1))
        out = self.low.block_hadamard(v, block_size, _signs(signs, x.device), inv_sqrt(block_size))
        return out if ax == x.dim() - 1 else out.movedim(-1, ax).contiguous()

    def hadamard_quantize(self, x: torch.Tensor, fmt: str = "mxfp4", *, hadamard_block: int = 32,
                          signs: torch.Tensor | None = None, scale_mode: str = "floor", recipe: str = "te",
                          global_amax: float | torch.Tensor | None = None, swizzle: bool = False):
        """quantize(block_hadamard(x)) in one pass: each thread rotates a tile in registers and quantizes it."""
        if x.dtype not in IN_DTYPES or (fmt == "nvfp4" and (recipe != "te" or x.numel() == 0)):
            return NotImplemented
        xc = _dense(x)
        s = _signs(signs, x.device)
        r = inv_sqrt(hadamard_block)
        if hadamard_block not in FUSED_BLOCKS:  # two passes, same bits
            xc = self.low.block_hadamard(xc, hadamard_block, s, r)
            hadamard_block, s, r = 1, None, 1.0
        if fmt == "mxfp4":
            data, scales, _, swz = self.low.quantize(xc, MX_E2M1, 0, MODE_IDS[scale_mode], 32, hadamard_block, s, r,
                                                     None, bool(swizzle))
            q = MXTensor(data, scales, "e2m1", 32, x.shape, scale_mode, x.dim() - 1)
        else:
            amax = self._amax(xc, global_amax, hadamard_block, s, r)
            data, scales, gs, swz = self.low.quantize(xc, NV_TE, 0, 0, 16, hadamard_block, s, r, amax, bool(swizzle))
            q = NVFP4Tensor(data, scales, gs, recipe, x.shape, 16)
        return (q, swz) if swizzle else q

    def available(self) -> bool:
        return True
