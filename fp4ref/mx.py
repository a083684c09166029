"""OCP Microscaling block quantization: MXTensor, scale modes, quantize_mx / dequantize_mx (SPEC §4).

Per block of ``block_size`` elements along ``axis``: ``amax = max |x|`` in float32, a power-of-two scale
``2^X`` chosen by ``scale_mode`` from amax's float32 bits (never log2), scale byte ``clamp(X, -127, 127) + 127``,
element codes ``encode(x / 2^X, elem, saturate=True)`` (exact: the scale is a power of two).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _fast
from .codecs import (check_float_dtype, check_float_tensor, check_int, check_not_meta, check_same_device,
                     check_uint8_tensor, decode, decode_table, e8m0_to_float, magnitude_codes)
from .formats import ELEMENT_FORMATS, Format, get_format
from .layouts import as_e8m0, as_float4_x2, pack_fp4, unpack_fp4
from .scales import NAN_SCALE, block_amax, inverse_scale, scale_bytes, scale_exponent  # noqa: F401 (public here too)

SCALE_MODES = ("floor", "ceil", "even", "rceil", "stretch")


@dataclass
class MXTensor:
    """MX-quantized tensor. ``data``: uint8 codes with the blocked axis last (packed two per byte for
    e2m1); ``scales``: uint8 E8M0 [..., K/block_size]; ``shape``: the original shape; ``axis``: the blocked axis
    of the original shape (data and scales hold it moved last)."""

    data: torch.Tensor
    scales: torch.Tensor
    elem: str
    block_size: int
    shape: torch.Size
    scale_mode: str = "floor"
    axis: int = -1

    def __post_init__(self) -> None:
        # Built by hand or by the library, the fields must agree (checked again by every op: fields can change).
        check_mx_tensor(self, "MXTensor", values=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_mx(self, dtype)

    def codes(self) -> torch.Tensor:
        """Element codes, one per byte, blocked axis last."""
        check_mx_tensor(self, "self", values=False)
        return unpack_fp4(self.data) if self.elem == "e2m1" else self.data

    def to_torch_dtypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(data, scales) as torch dtype views: float4_e2m1fn_x2 / float8_e4m3fn / float8_e5m2 data (uint8
        for the FP6 formats, which torch lacks) and float8_e8m0fnu scales."""
        check_mx_tensor(self, "self", values=False)
        views = {"e2m1": as_float4_x2, "e4m3": lambda d: d.view(torch.float8_e4m3fn),
                 "e5m2": lambda d: d.view(torch.float8_e5m2)}
        data = views.get(self.elem, lambda d: d)(self.data)
        return data, as_e8m0(self.scales)

    @property
    def device(self) -> torch.device:
        return self.data.device


def check_block_size(block_size: object, arg: str = "block_size", *, need_even: bool) -> int:
    """TypeError unless an int, ValueError unless positive (and even for packed FP4); returns it."""
    check_int(block_size, arg)
    if block_size < 1:
        raise ValueError(f"{arg} must be a positive int, got {block_size!r}")
    if need_even and block_size % 2:
        raise ValueError(f"{arg} must be even for packed FP4 (two codes per byte), got {block_size}")
    return block_size


def check_shape(shape: object, arg: str) -> torch.Size:
    """A tensor shape (tuple/list/torch.Size of non-negative ints, at least one dimension); returns a Size."""
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(n, (int, torch.SymInt)) and not isinstance(n, bool) for n in shape):
        raise TypeError(f"{arg} must be a torch.Size (a tuple of ints), got {shape!r}")
    if len(shape) == 0:
        raise ValueError(f"{arg} must have at least one dimension, got {tuple(shape)}")
    if any(n < 0 for n in shape):
        raise ValueError(f"{arg} must hold non-negative sizes, got {tuple(shape)}")
    return torch.Size(shape)


def check_block_args(x: torch.Tensor, block_size: int, axis: int, *, need_even: bool) -> int:
    """Validate a block quantizer's arguments; returns the normalized (non-negative) axis."""
    check_float_tensor(x)
    check_block_size(block_size, need_even=need_even)
    check_int(axis, "axis")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is out of range for x with {x.dim()} dimensions")
    axis %= x.dim()
    if x.shape[axis] % block_size:
        raise ValueError(f"x.shape[{axis}] = {x.shape[axis]} is not a multiple of block_size={block_size}")
    return axis


def check_mx_args(x: torch.Tensor, elem: str, block_size: int, scale_mode: str, axis: int) -> tuple[Format, int]:
    f = get_format(elem, arg="elem", allowed=ELEMENT_FORMATS)
    check_scale_mode(scale_mode, f)
    return f, check_block_args(x, block_size, axis, need_even=f.name == "e2m1")


def check_scale_mode(scale_mode: object, f: Format, arg: str = "scale_mode") -> str:
    if not isinstance(scale_mode, str) or scale_mode not in SCALE_MODES:
        raise ValueError(f"{arg}={scale_mode!r} is not one of {SCALE_MODES}")
    if scale_mode == "stretch" and f.name != "e2m1":
        raise ValueError(f"{arg}='stretch' (the 4/3 rule of QuTLASS/FP-Quant) is defined for elem='e2m1' only")
    return scale_mode


def quantize_mx(x: torch.Tensor, elem: str = "e2m1", *, block_size: int = 32, scale_mode: str = "floor",
                axis: int = -1) -> MXTensor:
    """MX-quantize ``x`` in blocks along ``axis`` (SPEC §4). A block holding NaN/Inf gets scale 0xFF and codes 0.

    ``scale_mode="stretch"`` (e2m1 only): X = amax's exponent, codes ``encode(fp32(3 * fp32(x / 2^X)))``.
    """
    f, ax = check_mx_args(x, elem, block_size, scale_mode, axis)
    if f.name == "e2m1":  # a table-driven CPU path with the same bytes (fp4ref/_fast.py, tests/test_fast.py)
        fast = _fast.quantize_mx_e2m1(x, block_size, scale_mode, ax)
        if fast is not None:
            return MXTensor(fast[0], fast[1], f.name, block_size, x.shape, scale_mode, ax)
    return quantize_mx_reference(x, f, block_size, scale_mode, ax)


def quantize_mx_reference(x: torch.Tensor, f: Format, block_size: int, scale_mode: str, ax: int) -> MXTensor:
    """The plain transcription of SPEC §4 that quantize_mx's fast path is tested against."""
    xm = x.movedim(ax, -1) if ax != x.dim() - 1 else x
    lead, k = xm.shape[:-1], xm.shape[-1]
    xb = xm.reshape(*lead, k // block_size, block_size)
    a = xb.float().abs()  # a fresh float32 buffer: later steps work in place on it
    amax = a.amax(dim=-1)
    scales = scale_bytes(amax, f, scale_mode)
    a.mul_(inverse_scale(scales).unsqueeze(-1))
    if scale_mode == "stretch":
        a.mul_(3.0)
    codes = magnitude_codes(a, f, saturate=True).to(torch.uint8)
    codes |= torch.signbit(xb).to(torch.uint8) << (f.ebits + f.mbits)
    bad = scales == NAN_SCALE
    if bool(bad.any()):
        codes.masked_fill_(bad.unsqueeze(-1), 0)
    codes = codes.reshape(*lead, k)
    data = pack_fp4(codes) if f.name == "e2m1" else codes
    return MXTensor(data, scales, f.name, block_size, x.shape, scale_mode, ax)


def check_mx_tensor(q: object, arg: str = "q", *, values: bool = True) -> MXTensor:
    """Validate an MXTensor's fields, alone and against each other (types, names, dtypes, shapes, block size,
    scale mode, one device); ``values=True`` (every op that reads the values) also refuses meta tensors."""
    if not isinstance(q, MXTensor):
        raise TypeError(f"{arg} must be an MXTensor, got {type(q).__name__}")
    if not isinstance(q.elem, str):
        raise TypeError(f"{arg}.elem must be a format name (str), got {type(q.elem).__name__}")
    f = get_format(q.elem, arg=f"{arg}.elem", allowed=ELEMENT_FORMATS)
    if q.elem != f.name:
        raise ValueError(f"{arg}.elem must be the canonical name {f.name!r}, got the alias {q.elem!r}")
    check_block_size(q.block_size, f"{arg}.block_size", need_even=f.name == "e2m1")
    check_scale_mode(q.scale_mode, f, f"{arg}.scale_mode")
    shape = check_shape(q.shape, f"{arg}.shape")
    check_int(q.axis, f"{arg}.axis")
    if not -len(shape) <= q.axis < len(shape):
        raise ValueError(f"{arg}.axis={q.axis} is out of range for {arg}.shape={tuple(shape)}")
    check_uint8_tensor(q.data, f"{arg}.data")
    check_uint8_tensor(q.scales, f"{arg}.scales")
    check_same_device({f"{arg}.data": q.data, f"{arg}.scales": q.scales}, arg)
    ax = q.axis % len(shape)
    moved = list(shape[:ax]) + list(shape[ax + 1:]) + [shape[ax]]
    k = moved[-1]
    if k % q.block_size:
        raise ValueError(f"{arg}.shape={tuple(shape)} has {k} elements along axis {q.axis}, not a multiple of "
                         f"{arg}.block_size={q.block_size}")
    check_block_fields(q, arg, moved[:-1], k, f.name == "e2m1",
                       f" for shape {tuple(shape)}, elem={f.name}, axis={q.axis}")
    if values:
        check_not_meta(q.data, f"{arg}.data")
    return q


def check_block_fields(q, arg: str, lead, k: int, packed: bool, context: str = "") -> None:
    """A block-quantized tensor's ``data`` holds (*lead, k/2) bytes when FP4-packed, else (*lead, k), and its
    ``scales`` (*lead, k/block_size): the layout MXTensor (blocks moved last) and NVFP4Tensor share."""
    want_data = tuple(lead) + (k // 2 if packed else k,)
    want_scales = tuple(lead) + (k // q.block_size,)
    if tuple(q.data.shape) != want_data:
        raise ValueError(f"{arg}.data has shape {tuple(q.data.shape)}, expected {want_data}{context}")
    if tuple(q.scales.shape) != want_scales:
        raise ValueError(f"{arg}.scales has shape {tuple(q.scales.shape)}, expected {want_scales} "
                         f"(one scale per block of {q.block_size})")


def check_dequantize_mx_args(q: object, dtype: object) -> MXTensor:
    """Argument checks of ``dequantize_mx`` shared by both backends: a valid MXTensor, a floating dtype."""
    check_mx_tensor(q)
    check_float_dtype(dtype)
    return q


def dequantize_mx(q: MXTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``decode(code) * 2^(byte - 127)`` exactly in float32 (stretch: ``decode * 2^X / 3`` rounded once); a 0xFF
    scale gives NaN."""
    check_dequantize_mx_args(q, dtype)
    fast = _fast.dequantize_mx_e2m1(q, dtype)
    return fast if fast is not None else dequantize_mx_reference(q, dtype)


def dequantize_mx_reference(q: MXTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The plain transcription of SPEC §4's dequantization that the fast path is tested against."""
    codes = unpack_fp4(q.data.view(torch.uint8)) if q.elem == "e2m1" else q.data.view(torch.uint8)
    lead, k = codes.shape[:-1], codes.shape[-1]
    vals = decode_table(q.elem, codes.device)[codes.long()].view(*lead, k // q.block_size, q.block_size)
    if q.scale_mode == "stretch":
        # One rounding of decode * 2^X / 3: in float64 the product is exact and cannot overflow (2^X * 6 / 3
        # can still be a finite float32 at X = 127), and k/3 never lands on a float32 midpoint.
        vals = (vals.double() * e8m0_to_float(q.scales).double().unsqueeze(-1) / 3.0).float()
    else:
        vals = vals * e8m0_to_float(q.scales).unsqueeze(-1)
    out = vals.reshape(*lead, k)
    ax = q.axis % len(q.shape)
    if ax != len(q.shape) - 1:
        out = out.movedim(-1, ax)
    return out if dtype == torch.float32 else out.to(dtype)


__all__ = ["MXTensor", "quantize_mx", "dequantize_mx", "SCALE_MODES", "scale_bytes", "scale_exponent",
           "inverse_scale", "check_mx_args", "check_mx_tensor", "check_block_args", "check_block_size",
           "check_dequantize_mx_args", "check_scale_mode", "check_shape", "decode"]
