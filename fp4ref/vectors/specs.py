"""What each conformance-vector op reads and writes: the layout constants, ``Out`` (an expected output and
how to compare it), ``OpSpec`` and ``OPS`` (op name -> inputs, optional inputs, outputs, reference compute).

``build`` stores ``OPS[op].compute``'s outputs; ``verify`` recomputes them and compares.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..codecs import decode, encode
from ..formats import ELEMENT_FORMATS, get_format
from ..layouts import pack_fp4, swizzle_scales
from ..mx import dequantize_mx, quantize_mx
from ..nvfp4 import dequantize_nvfp4, quantize_nvfp4

VECTORS_VERSION = "1"
META_KEYS = ("op", "format", "mode", "recipe", "saturate")
NA = "-"
MX_BLOCK = 32
NV_BLOCK = 16


@dataclass
class Out:
    """An expected output and how to compare it: as integer codes (of ``fmt`` if given, so that the report
    shows their values; ``x`` = the inputs for the report) or, with ``is_float``, by float32 bits."""

    tensor: torch.Tensor
    fmt: str | None = None
    x: torch.Tensor | None = None
    x_label: str = "input"
    packed: bool = False
    is_float: bool = False
    unpacked_ok: bool = False  # packed E2M1 data may also come one code per byte (not so for pack_fp4's output)


@dataclass
class OpSpec:
    inputs: tuple[str, ...]
    optional: tuple[str, ...]
    outputs: tuple[str, ...]
    compute: Callable[[dict, dict[str, str]], dict[str, Out]]


def _flag(meta: dict[str, str], key: str, default: bool) -> bool:
    v = meta.get(key, NA)
    if v == NA:
        return default
    if v.lower() not in ("true", "false"):
        raise ValueError(f"metadata {key}={v!r} must be 'true' or 'false'")
    return v.lower() == "true"


def _int(meta: dict[str, str], key: str, default: int) -> int:
    v = meta.get(key, NA)
    try:
        return default if v == NA else int(v)
    except ValueError:
        raise ValueError(f"metadata {key}={v!r} is not an integer") from None


def _str(meta: dict[str, str], key: str, default: str) -> str:
    v = meta.get(key, NA)
    return default if v == NA else v


def _block_amax(x: torch.Tensor, bs: int) -> torch.Tensor:
    return x.float().abs().reshape(*x.shape[:-1], -1, bs).amax(-1)


def _do_encode(inp: dict, meta: dict[str, str]) -> dict[str, Out]:
    f = get_format(_str(meta, "format", ""), arg="metadata format")
    codes = encode(inp["x"], f, saturate=_flag(meta, "saturate", True))
    return {"codes": Out(codes, f.name, inp["x"])}


def _do_decode(inp: dict, meta: dict[str, str]) -> dict[str, Out]:
    return {"values": Out(decode(inp["codes"], _str(meta, "format", "")), is_float=True)}


def _do_mx(inp: dict, meta: dict[str, str]) -> dict[str, Out]:
    elem = get_format(_str(meta, "format", "e2m1"), arg="metadata format", allowed=ELEMENT_FORMATS).name
    bs, axis = _int(meta, "block_size", MX_BLOCK), _int(meta, "axis", -1)
    x = inp["x"]
    q = quantize_mx(x, elem, block_size=bs, scale_mode=_str(meta, "mode", "floor"), axis=axis)
    xm = x.float().movedim(axis, -1)
    return {"data": Out(q.data, elem, xm, packed=elem == "e2m1", unpacked_ok=elem == "e2m1"),
            "scales": Out(q.scales, "e8m0", _block_amax(xm, bs), "block amax"),
            "dequantized": Out(dequantize_mx(q), is_float=True)}


def _do_nvfp4(inp: dict, meta: dict[str, str]) -> dict[str, Out]:
    bs = _int(meta, "block_size", NV_BLOCK)
    x = inp["x"]
    q = quantize_nvfp4(x, global_amax=inp.get("global_amax"), recipe=_str(meta, "recipe", "te"), block_size=bs)
    return {"data": Out(q.data, "e2m1", x, packed=True, unpacked_ok=True),
            "scales": Out(q.scales, "e4m3", _block_amax(x, bs), "block amax"),
            "global_scale": Out(q.global_scale.reshape(()), is_float=True),
            "dequantized": Out(dequantize_nvfp4(q), is_float=True)}


def _do_pack(inp: dict, meta: dict[str, str]) -> dict[str, Out]:
    return {"packed": Out(pack_fp4(inp["codes"]), "e2m1", packed=True)}


def _do_swizzle(inp: dict, meta: dict[str, str]) -> dict[str, Out]:
    return {"blocked": Out(swizzle_scales(inp["scales"]))}


OPS: dict[str, OpSpec] = {
    "encode": OpSpec(("x",), (), ("codes",), _do_encode),
    "decode": OpSpec(("codes",), (), ("values",), _do_decode),
    "quantize_mx": OpSpec(("x",), (), ("data", "scales", "dequantized"), _do_mx),
    "quantize_nvfp4": OpSpec(("x",), ("global_amax",), ("data", "scales", "global_scale", "dequantized"),
                             _do_nvfp4),
    "pack_fp4": OpSpec(("codes",), (), ("packed",), _do_pack),
    "swizzle_scales": OpSpec(("scales",), (), ("blocked",), _do_swizzle),
}
