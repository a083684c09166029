"""Block-scale arithmetic shared by the MX and NVFP4 quantizers and their fast CPU paths (fp4ref._fast).

Kept apart from ``mx`` and ``nvfp4`` so that those modules and ``_fast`` all import it, and nothing imports
upward: the E8M0 scale byte of a block amax (SPEC §4) and its exact inverse, the finite amax of a tensor.
"""
from __future__ import annotations

import torch

from .formats import Format

NAN_SCALE = 0xFF  # the E8M0 byte of a block holding NaN or Inf


def f32(v: float | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float32 scalar tensor (so that scalar arithmetic rounds in float32, not float64)."""
    return torch.as_tensor(v, dtype=torch.float32, device=device).clone()


def block_amax(xb: torch.Tensor) -> torch.Tensor:
    """max |x| over the last dimension in float32; NaN anywhere gives NaN (torch.amax propagates it)."""
    return xb.abs().amax(dim=-1)


def scale_exponent(amax: torch.Tensor, f: Format, scale_mode: str) -> torch.Tensor:
    """Unclamped scale exponent X (int32) from amax's float32 bits (E = field - 127, so subnormals -127)."""
    bits = amax.float().contiguous().view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 127
    m = bits & 0x7FFFFF
    if scale_mode == "floor":
        return e - f.emax
    if scale_mode == "ceil":
        return e + (m != 0).to(torch.int32) - f.emax
    if scale_mode == "even":
        # amax rounded half-up to the element's precision first (e2m1: bits + 2^21), as torchao EVEN
        return (((bits + (1 << (22 - f.mbits))) >> 23) & 0xFF) - 127 - f.emax
    if scale_mode == "stretch":
        return e
    # rceil: smallest X with 2^X >= fp32(amax / max_elem).
    d = amax.float() / f.max_finite
    db = d.view(torch.int32)
    de, dm = (db >> 23) & 0xFF, db & 0x7FFFFF
    normal = de - 127 + (dm != 0).to(torch.int32)
    subnormal = -127 + (dm > 0x400000).to(torch.int32)
    return torch.where(de > 0, normal, subnormal)


def scale_bytes(amax: torch.Tensor, f: Format, scale_mode: str) -> torch.Tensor:
    """E8M0 scale byte per block: clamp(X, -127, 127) + 127; 0 for amax == 0; 0xFF for NaN/Inf amax."""
    x = scale_exponent(amax, f, scale_mode).clamp_(-127, 127) + 127
    x = torch.where(amax == 0, 0, x)
    x = torch.where(torch.isfinite(amax), x, NAN_SCALE)
    return x.to(torch.uint8)


def inverse_scale(scales: torch.Tensor) -> torch.Tensor:
    """Exact float32 2^-(byte-127) (byte 254 -> the subnormal 2^-127); NaN-scale bytes give 0 (unused)."""
    field = 254 - scales.to(torch.int32)
    bits = torch.where(field > 0, field << 23, 0x00400000)
    bits = torch.where(scales == NAN_SCALE, 0, bits)
    return bits.view(torch.float32)


def finite_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite elements (0 if there are none), float32 scalar."""
    a = x.float().abs()
    a = torch.where(torch.isfinite(a), a, 0.0)
    return a.amax() if a.numel() else f32(0.0, x.device)


__all__ = ["NAN_SCALE", "f32", "block_amax", "scale_exponent", "scale_bytes", "inverse_scale", "finite_amax"]
