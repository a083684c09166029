"""NVFP4: E2M1 elements, an E4M3 scale per block of 16, and a float32 per-tensor scale (SPEC §5).

One small function per recipe step; every float operation is a single float32 op in the order written
(`fp32(a * b)`), so the rounding order that makes each recipe's bytes is visible in the code.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from . import _fast
from .codecs import (check_float_dtype, check_not_meta, check_same_device, check_uint8_tensor, decode_table, encode,
                     magnitude_codes)
from .formats import E2M1, E4M3
from .layouts import as_e4m3, as_float4_x2, pack_fp4, unpack_fp4
from .mx import check_block_args, check_block_fields, check_block_size, check_shape
from .scales import block_amax, f32, finite_amax  # noqa: F401 (public here too)

RECIPES = ("te", "torchao", "modelopt", "compressed-tensors")
FLT_MAX = torch.finfo(torch.float32).max
E4M3_NAN = 0x7F


@dataclass
class NVFP4Tensor:
    """NVFP4-quantized tensor: ``data`` packed E2M1 uint8 [..., K/2]; ``scales`` E4M3 bytes [..., K/block];
    ``global_scale`` float32 scalar in the decode direction (value = e2m1 * e4m3 * global_scale)."""

    data: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor
    recipe: str
    shape: torch.Size
    block_size: int = 16

    def __post_init__(self) -> None:
        # Built by hand or by the library, the fields must agree (checked again by every op: fields can change).
        check_nvfp4_tensor(self, "NVFP4Tensor", values=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nvfp4(self, dtype)

    def codes(self) -> torch.Tensor:
        check_nvfp4_tensor(self, "self", values=False)
        return unpack_fp4(self.data)

    def to_torch_dtypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float4_e2m1fn_x2 data, float8_e4m3fn scales) views."""
        check_nvfp4_tensor(self, "self", values=False)
        return as_float4_x2(self.data), as_e4m3(self.scales)

    @property
    def device(self) -> torch.device:
        return self.data.device


def check_nvfp4_args(x: torch.Tensor, global_amax, recipe: str, block_size: int) -> torch.Tensor | None:
    """Validate quantize_nvfp4's arguments; returns global_amax as a float32 scalar tensor (or None)."""
    check_recipe(recipe)
    check_block_args(x, block_size, -1, need_even=True)
    if global_amax is None:
        return None
    if isinstance(global_amax, torch.Tensor):
        if global_amax.dtype == torch.bool or global_amax.is_complex():
            raise TypeError(f"global_amax must be a real number or a real scalar tensor, got {global_amax.dtype}")
        check_not_meta(global_amax, "global_amax")
        if global_amax.numel() != 1:
            raise ValueError(f"global_amax must be a scalar, got shape {tuple(global_amax.shape)}")
    elif isinstance(global_amax, bool) or not isinstance(global_amax, numbers.Real):
        raise TypeError(f"global_amax must be a real number, a float32 scalar tensor or None, got "
                        f"{type(global_amax).__name__} {global_amax!r}")
    g = torch.as_tensor(global_amax, dtype=torch.float32, device=x.device).reshape(())
    if not bool(torch.isfinite(g)) or bool(g < 0):
        raise ValueError(f"global_amax must be finite and >= 0, got {float(g)}")
    return g


def check_recipe(recipe: object, arg: str = "recipe") -> str:
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise ValueError(f"{arg}={recipe!r} is not one of {RECIPES}")
    return recipe


# --- recipe "te": NVIDIA Transformer Engine's chain -------------------------------------------------------
def te_encode_scale(amax: torch.Tensor) -> torch.Tensor:
    """S_enc = fp32(2688 / A) clamped to FLT_MAX; 1 where A == 0 or S_enc == 0."""
    s = torch.clamp(f32(2688.0, amax.device) / amax, max=FLT_MAX)
    return torch.where((amax == 0) | (s == 0), f32(1.0, amax.device), s)


def te_block_scale(bamax: torch.Tensor, s_enc: torch.Tensor) -> torch.Tensor:
    """s_b = e4m3_satfinite(fp32(block_amax * fp32(S_enc * fp32(1/6)))) as E4M3 bytes."""
    k = s_enc * f32(1.0 / 6.0, s_enc.device)
    return encode(bamax * k, E4M3, saturate=True)


def te_element_scale(s_b: torch.Tensor, s_dec: torch.Tensor) -> torch.Tensor:
    """enc = min(fp32(1 / fp32(decode(s_b) * S_dec)), FLT_MAX)."""
    return torch.clamp(1.0 / (decode_table(E4M3, s_b.device)[s_b.long()] * s_dec), max=FLT_MAX)


def _quantize_te(xb: torch.Tensor, bamax: torch.Tensor, amax: torch.Tensor):
    s_enc = te_encode_scale(amax)
    s_b = te_block_scale(bamax, s_enc)
    s_dec = 1.0 / s_enc
    enc = te_element_scale(s_b, s_dec)
    return xb * enc.unsqueeze(-1), s_b, s_dec


# --- recipe "torchao": torchao nvfp4_quantize, two-level --------------------------------------------------
def _quantize_torchao(xb: torch.Tensor, bamax: torch.Tensor, amax: torch.Tensor):
    """pts = fp32(A / 2688); s = e4m3(clamp(fp32(fp32(bamax / 6) / pts), 2^-6, 448));
    elements fp32(x * fp32(fp32(1 / pts) / s))."""
    pts = amax / f32(2688.0, amax.device)
    bs = bamax / f32(6.0, amax.device)
    s_b = encode(torch.clamp(bs / pts, min=2.0 ** -6, max=448.0), E4M3, saturate=True)
    r = (1.0 / pts) / decode_table(E4M3, s_b.device)[s_b.long()]
    return xb * r.unsqueeze(-1), s_b, pts


# --- recipe "modelopt": TensorRT Model Optimizer NVFP4QTensor.quantize (dynamic path) ---------------------
def _quantize_modelopt(xb: torch.Tensor, bamax: torch.Tensor, amax: torch.Tensor):
    """wsf2 = fp32(A / 2688); s = fp32(bamax / fp32(6 * wsf2)), 1.0 where s == 0, then
    e4m3(clamp(s, 2^-9, 448)); elements fp32(x / fp32(s_b * wsf2)) (a true division, not a reciprocal).

    ModelOpt's sign bit is ``y < 0``, so a scaled -0.0 encodes as 0x0 (a negative that rounds to zero
    keeps 0x8), and a 0/0 (A == 0 gives wsf2 == 0 and NaN scales) encodes as +6 (0x7)."""
    wsf2 = amax / f32(2688.0, amax.device)
    s = bamax / (6.0 * wsf2)
    s = torch.where(s == 0, f32(1.0, s.device), s)
    s_b = encode(torch.clamp(s, min=2.0 ** -9, max=448.0), E4M3, saturate=True)
    d = decode_table(E4M3, s_b.device)[s_b.long()] * wsf2
    y = (xb / d.unsqueeze(-1)).add_(0.0)  # -0.0 + 0.0 == +0.0: ModelOpt never sets the sign of a zero
    if not bool((d > 0).all()):  # d is 0 or NaN only when wsf2 underflows or A == 0
        y = torch.nan_to_num(y, nan=6.0)
    return y, s_b, wsf2


# --- recipe "compressed-tensors": llm-compressor observer + compressed-tensors NVFP4PackedCompressor -------
def _quantize_compressed_tensors(xb: torch.Tensor, bamax: torch.Tensor, amax: torch.Tensor,
                                 src_dtype: torch.dtype = torch.float32):
    """CT computes some steps in the weight's dtype D (``src_dtype``), each op rounded to D as torch does:
    gs = D(D(1 / max(A, tiny_D)) * 2688) (torch evaluates ``2688 / t`` as ``t.reciprocal() * 2688``), 1 if
    not finite; s_b = e4m3(min(fp32(gs * D(bamax / 6)), 448)), 0x20 (0.125) where that is 0;
    elements fp32(x / fp32(s_b / gs)), sign of a scaled zero dropped.
    CT stores gs (encode direction); the returned global_scale is fp32(1 / gs) (decode, SPEC §5)."""
    dev = amax.device
    a = torch.clamp(amax.to(src_dtype), min=torch.finfo(src_dtype).tiny)
    gs = torch.nan_to_num(torch.reciprocal(a) * 2688.0, nan=1.0, posinf=1.0, neginf=1.0).float()
    bs = (bamax.to(src_dtype) / torch.tensor(6.0, dtype=src_dtype, device=dev)).float()
    s_b = encode(torch.clamp(gs * bs, max=448.0), E4M3, saturate=True)
    s_b = s_b.masked_fill(s_b == 0, 0x20)  # CT replaces a zero scale by 0.125 = 2^-3
    r = decode_table(E4M3, dev)[s_b.long()] / gs
    return (xb / r.unsqueeze(-1)).add_(0.0), s_b, f32(1.0, dev) / gs


_RECIPE_FUNCS = {"te": _quantize_te, "torchao": _quantize_torchao, "modelopt": _quantize_modelopt,
                 "compressed-tensors": _quantize_compressed_tensors}


def quantize_nvfp4(x: torch.Tensor, *, global_amax: float | torch.Tensor | None = None, recipe: str = "te",
                   block_size: int = 16) -> NVFP4Tensor:
    """NVFP4-quantize ``x`` in blocks along the last dim with ``recipe`` (SPEC §5). ``global_amax`` defaults
    to max |x| over the finite elements. A block holding NaN/Inf gets scale 0x7F and codes 0."""
    g = check_nvfp4_args(x, global_amax, recipe, block_size)
    kw = {"src_dtype": x.dtype} if recipe == "compressed-tensors" else {}  # CT rounds some steps to x's dtype
    # A table-driven, chunked CPU path with the same bytes (fp4ref/_fast.py, tests/test_fast.py).
    fast = _fast.quantize_nvfp4_fast(x, g, _RECIPE_FUNCS[recipe], block_size, **kw)
    if fast is not None:
        return NVFP4Tensor(fast[0], fast[1], fast[2].reshape(()), recipe, x.shape, block_size)
    return quantize_nvfp4_reference(x, g, recipe, block_size)


def quantize_nvfp4_reference(x: torch.Tensor, g: torch.Tensor | None, recipe: str, block_size: int) -> NVFP4Tensor:
    """The plain transcription of SPEC §5 that quantize_nvfp4's fast path is tested against."""
    amax = finite_amax(x) if g is None else g
    lead, k = x.shape[:-1], x.shape[-1]
    xb = x.reshape(*lead, k // block_size, block_size).float()
    bamax = block_amax(xb)
    kw = {"src_dtype": x.dtype} if recipe == "compressed-tensors" else {}  # CT rounds some steps to x's dtype
    y, s_b, global_scale = _RECIPE_FUNCS[recipe](xb, bamax, amax, **kw)
    codes = magnitude_codes(y.abs(), E2M1, saturate=True).to(torch.uint8)
    codes |= torch.signbit(y).to(torch.uint8) << 3
    bad = ~torch.isfinite(bamax)
    if bool(bad.any()):
        codes.masked_fill_(bad.unsqueeze(-1), 0)
        s_b = s_b.masked_fill(bad, E4M3_NAN)
    return NVFP4Tensor(pack_fp4(codes.reshape(*lead, k)), s_b, global_scale.reshape(()), recipe, x.shape,
                       block_size)


def check_nvfp4_tensor(q: object, arg: str = "q", *, values: bool = True) -> NVFP4Tensor:
    """Validate an NVFP4Tensor's fields, alone and against each other (types, dtypes, shapes, block size,
    recipe, one device for data, scales and global_scale); ``values=True`` (every op that reads the values)
    also refuses meta tensors."""
    if not isinstance(q, NVFP4Tensor):
        raise TypeError(f"{arg} must be an NVFP4Tensor, got {type(q).__name__}")
    check_recipe(q.recipe, f"{arg}.recipe")
    check_block_size(q.block_size, f"{arg}.block_size", need_even=True)
    shape = tuple(check_shape(q.shape, f"{arg}.shape"))
    check_uint8_tensor(q.data, f"{arg}.data")
    check_uint8_tensor(q.scales, f"{arg}.scales")
    gs = q.global_scale
    if not isinstance(gs, torch.Tensor) or gs.dtype != torch.float32 or gs.numel() != 1:
        got = f"{gs.dtype} of shape {tuple(gs.shape)}" if isinstance(gs, torch.Tensor) else type(gs).__name__
        raise TypeError(f"{arg}.global_scale must be a float32 scalar tensor, got {got}")
    check_same_device({f"{arg}.data": q.data, f"{arg}.scales": q.scales, f"{arg}.global_scale": gs}, arg)
    if shape[-1] % q.block_size:
        raise ValueError(f"{arg}.shape={shape} has a last dimension that is not a multiple of "
                         f"{arg}.block_size={q.block_size}")
    check_block_fields(q, arg, shape[:-1], shape[-1], True)
    if values:
        check_not_meta(q.data, f"{arg}.data")
    return q


def check_dequantize_nvfp4_args(q: object, dtype: object) -> NVFP4Tensor:
    """Argument checks of ``dequantize_nvfp4`` shared by both backends: a valid NVFP4Tensor, a floating dtype."""
    check_nvfp4_tensor(q)
    check_float_dtype(dtype)
    return q


def dequantize_nvfp4(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``fp32(fp32(decode_e2m1(code) * decode_e4m3(s_b)) * global_scale)``; a NaN scale gives NaN."""
    check_dequantize_nvfp4_args(q, dtype)
    fast = _fast.dequantize_nvfp4_fast(q, dtype)
    return fast if fast is not None else dequantize_nvfp4_reference(q, dtype)


def dequantize_nvfp4_reference(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The plain transcription of SPEC §5's dequantization that the fast path is tested against."""
    codes = unpack_fp4(q.data.view(torch.uint8))
    lead, k = codes.shape[:-1], codes.shape[-1]
    vals = decode_table(E2M1, codes.device)[codes.long()].view(*lead, k // q.block_size, q.block_size)
    sb = decode_table(E4M3, codes.device)[q.scales.view(torch.uint8).long()]
    out = (vals * sb.unsqueeze(-1)) * q.global_scale.to(device=codes.device, dtype=torch.float32)
    out = out.reshape(*lead, k)
    return out if dtype == torch.float32 else out.to(dtype)
