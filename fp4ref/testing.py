"""Assertions and mismatch reports for people who test their own FP4 kernels against fp4ref (SPEC §9).

Codes and scales are compared as integers (never ``allclose``: -0 and +0 are different codes). A failing
comparison raises ``AssertionError`` with the first mismatches: index, both codes, both decoded values and the
input value. ``near_boundary`` marks the elements where a kernel whose arithmetic legitimately differs before the
rounding (a tensor-core Hadamard, an FMA) may flip a code; ``allow=`` tolerates flips there and only there.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from .codecs import check_bool, check_int, check_not_meta, check_real, decode_table, encode
from .formats import ELEMENT_FORMATS, Format, code_value, get_format
from .layouts import blocked_scale_size, unpack_fp4, unswizzle_scales
from .mx import MXTensor, quantize_mx, scale_bytes
from .nvfp4 import NVFP4Tensor, finite_amax, quantize_nvfp4

MX_FORMATS = {"mxfp4": "e2m1", "mxfp6_e2m3": "e2m3", "mxfp6_e3m2": "e3m2", "mxfp8_e4m3": "e4m3",
              "mxfp8_e5m2": "e5m2"}
_VIEW_DTYPES = (torch.float8_e8m0fnu, torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2)


@dataclass
class Context:
    """What a report needs beyond the codes: ``name`` (a label), ``fmt`` (format of the codes, to print their
    values), ``x`` (the input, one value per code; for scales, the block amax), ``x_label`` (its column title),
    ``packed`` (codes are packed FP4 bytes: compare nibble by nibble, indices count elements)."""

    name: str = "codes"
    fmt: str | Format | None = None
    x: torch.Tensor | None = None
    x_label: str = "input"
    packed: bool = False


def _context(context: Context | Mapping[str, Any] | str | None) -> Context:
    if context is None:
        return Context()
    if isinstance(context, Context):
        return context
    if isinstance(context, str):
        return Context(name=context)
    if isinstance(context, Mapping):
        known = {f.name for f in fields(Context)}
        bad = sorted(set(context) - known)
        if bad:
            raise TypeError(f"context has unknown keys {bad}; known keys are {sorted(known)}")
        return Context(**context)
    raise TypeError(f"context must be None, a str, a dict or a Context, got {type(context).__name__}")


def _int_codes(t: object, arg: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor of integer codes, got {type(t).__name__}")
    check_not_meta(t, arg)
    if t.dtype in _VIEW_DTYPES:
        return t.view(torch.uint8)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{arg} must hold integer codes (uint8 or a float8/float4 view), got {t.dtype}; "
                        "compare codes, not decoded values")
    return t


def _index(flat: int, shape: torch.Size) -> str:
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat //= n
    return "[" + ", ".join(str(i) for i in reversed(idx)) + "]"


def _code_str(code: int, f: Format | None) -> str:
    width = 2 if f is None or f.bits > 4 else 1
    text = f"0x{code:0{width}X}"
    if f is not None:
        text += f" ({code_value(f, code)!r})" if 0 <= code < (1 << f.bits) else " (not a code)"
    return text


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows)


def _allow_mask(allow: object, shape: torch.Size) -> torch.Tensor | None:
    if allow is None:
        return None
    if not isinstance(allow, torch.Tensor) or allow.dtype != torch.bool:
        raise TypeError(f"allow must be a bool tensor (e.g. from near_boundary), got "
                        f"{getattr(allow, 'dtype', type(allow).__name__)}")
    try:
        return torch.broadcast_to(allow.cpu(), shape)
    except RuntimeError:
        raise ValueError(f"allow has shape {tuple(allow.shape)}, which does not broadcast to the codes' shape "
                         f"{tuple(shape)}") from None


def _inputs(ctx: Context, shape: torch.Size) -> torch.Tensor | None:
    if ctx.x is None:
        return None
    if not isinstance(ctx.x, torch.Tensor):
        raise TypeError(f"context x must be a torch.Tensor, got {type(ctx.x).__name__}")
    if ctx.x.numel() != math.prod(shape):
        raise ValueError(f"context x has {ctx.x.numel()} elements but the codes have {math.prod(shape)} "
                         f"(shape {tuple(shape)}); give one input value per code")
    return ctx.x.detach().reshape(-1).cpu().double()


def code_mismatch_report(actual: torch.Tensor, expected: torch.Tensor, *, context: Any = None,
                         allow: torch.Tensor | None = None, max_report: int = 10) -> tuple[str | None, int]:
    """(report, number of codes compared): the report is None when ``actual`` equals ``expected`` as integers
    everywhere outside ``allow``. Used by assert_codes_equal and ``fp4ref verify``."""
    check_int(max_report, "max_report", min=0)
    ctx = _context(context)
    a, e = _int_codes(actual, "actual"), _int_codes(expected, "expected")
    if ctx.packed:
        a, e = unpack_fp4(a), unpack_fp4(e)
    if a.shape != e.shape:
        return (f"{ctx.name}: shape {tuple(a.shape)} differs from the expected {tuple(e.shape)}", 0)
    f = get_format(ctx.fmt, arg="context fmt") if ctx.fmt is not None else None
    a64, e64 = a.detach().cpu().long().reshape(-1), e.detach().cpu().long().reshape(-1)
    diff = a64 != e64
    mask = _allow_mask(allow, a.shape)
    allowed = 0
    if mask is not None:
        m = mask.reshape(-1)
        allowed = int((diff & m).sum())
        diff &= ~m
    n_bad = int(diff.sum())
    if n_bad == 0:
        return None, a64.numel()
    xs = _inputs(ctx, a.shape)
    where = torch.nonzero(diff).reshape(-1)[:max_report].tolist()
    rows = []
    for i in where:
        row = (_index(i, a.shape), _code_str(int(a64[i]), f), _code_str(int(e64[i]), f))
        rows.append(row + ((repr(float(xs[i])),) if xs is not None else ()))
    head = ("index", "actual", "expected") + ((ctx.x_label,) if xs is not None else ())
    text = (f"{ctx.name}: {n_bad} of {a64.numel()} codes differ"
            + (f" ({allowed} more at allowed positions)" if allowed else "")
            + f"; first {len(rows)}:\n" + _table(rows, head))
    return text, a64.numel()


def assert_codes_equal(actual: torch.Tensor, expected: torch.Tensor, *, context: Any = None,
                       allow: torch.Tensor | None = None, max_report: int = 10) -> None:
    """Assert ``actual == expected`` as integers (codes or scale bytes, uint8 or float8/float4 views).

    ``context`` (a label, or a dict/Context with name, fmt, x, x_label, packed) adds decoded values and the
    input to the report; ``allow`` (a bool mask broadcastable to the codes, e.g. from near_boundary) tolerates
    differences where it is True.
    """
    report, _ = code_mismatch_report(actual, expected, context=context, allow=allow, max_report=max_report)
    if report is not None:
        raise AssertionError(report)


def value_mismatch_report(actual: torch.Tensor, expected: torch.Tensor, *, name: str = "values",
                          max_report: int = 10) -> tuple[str | None, int]:
    """Bit-for-bit comparison of float tensors (every NaN equals every NaN; -0 differs from +0)."""
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise TypeError("actual and expected must be torch.Tensors")
    check_int(max_report, "max_report", min=0)
    check_not_meta(actual, "actual")
    check_not_meta(expected, "expected")
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)} differs from the expected {tuple(expected.shape)}", 0
    a = actual.detach().cpu().float().reshape(-1)
    e = expected.detach().cpu().float().reshape(-1)
    same = (a.view(torch.int32) == e.view(torch.int32)) | (torch.isnan(a) & torch.isnan(e))
    n_bad = int((~same).sum())
    if n_bad == 0:
        return None, a.numel()
    rows = []
    for i in torch.nonzero(~same).reshape(-1)[:max_report].tolist():
        rows.append((_index(i, actual.shape), f"{float(a[i])!r} ({float(a[i]).hex()})",
                     f"{float(e[i])!r} ({float(e[i]).hex()})"))
    text = (f"{name}: {n_bad} of {a.numel()} values differ in their float32 bits; first {len(rows)}:\n"
            + _table(rows, ("index", "actual", "expected")))
    return text, a.numel()


# --- re-quantizing with the reference ---------------------------------------------------------------------
@dataclass
class _Spec:
    kind: str  # "mx" | "nvfp4" | "encode"
    elem: Format
    kwargs: dict


def _spec(fmt: str, kwargs: dict) -> _Spec:
    """Resolve fmt (+ kwargs) to a reference quantizer; ValueError for unknown names or keyword arguments."""
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str, got {type(fmt).__name__}")
    allowed: tuple[str, ...]
    if fmt == "nvfp4":
        kind, elem, allowed = "nvfp4", get_format("e2m1"), ("global_amax", "recipe", "block_size")
    elif fmt in MX_FORMATS:
        kind, elem, allowed = "mx", get_format(MX_FORMATS[fmt]), ("block_size", "scale_mode", "axis")
    else:
        try:
            elem = get_format(fmt, allowed=ELEMENT_FORMATS)
        except ValueError:
            raise ValueError(f"fmt={fmt!r} is not one of {sorted(MX_FORMATS) + ['nvfp4']} or an element format "
                             f"{list(ELEMENT_FORMATS)}") from None
        if "block_size" in kwargs and kwargs["block_size"] is None:
            kind, allowed = "encode", ("block_size", "saturate")
            kwargs = {k: v for k, v in kwargs.items() if k != "block_size"}
        else:
            kind, allowed = "mx", ("block_size", "scale_mode", "axis")
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise ValueError(f"unexpected keyword arguments {bad} for fmt={fmt!r}; allowed: {list(allowed)}")
    return _Spec(kind, elem, dict(kwargs))


def _reference(x: torch.Tensor, spec: _Spec):
    if spec.kind == "mx":
        return quantize_mx(x, spec.elem.name, **spec.kwargs)
    if spec.kind == "nvfp4":
        return quantize_nvfp4(x, **spec.kwargs)
    return encode(x, spec.elem, **spec.kwargs)


def _blocked_input(x: torch.Tensor, q: MXTensor | NVFP4Tensor) -> torch.Tensor:
    """x as float32 with the blocked axis last, the layout of q.data and q.scales."""
    ax = getattr(q, "axis", -1) % x.dim()
    return x.float().movedim(ax, -1) if ax != x.dim() - 1 else x.float()


def _split_actual(actual: Any, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    if isinstance(actual, MXTensor):
        if spec.kind != "mx" or actual.elem != spec.elem.name:
            raise AssertionError(f"actual is an MXTensor with elem={actual.elem!r}, but fmt asks for "
                                 f"{spec.kind} {spec.elem.name}")
        return actual.data, actual.scales, None
    if isinstance(actual, NVFP4Tensor):
        if spec.kind != "nvfp4":
            raise AssertionError(f"actual is an NVFP4Tensor, but fmt asks for {spec.kind} {spec.elem.name}")
        return actual.data, actual.scales, actual.global_scale
    if isinstance(actual, torch.Tensor) and spec.kind == "encode":
        return actual, None, None
    if isinstance(actual, (tuple, list)) and len(actual) in (2, 3) and spec.kind != "encode":
        if len(actual) == 3 and spec.kind != "nvfp4":
            raise TypeError("actual=(data, scales, global_scale) is for fmt='nvfp4' only")
        return actual[0], actual[1], actual[2] if len(actual) == 3 else None
    raise TypeError("actual must be an MXTensor, an NVFP4Tensor, a (data, scales[, global_scale]) tuple, or a "
                    f"tensor of codes for fmt=<element>, block_size=None; got {type(actual).__name__}")


def _element_codes(data: torch.Tensor, want: torch.Size, packed_fp4: bool) -> torch.Tensor | str:
    data = _int_codes(data, "actual data")
    if tuple(data.shape) == tuple(want):
        return data
    if packed_fp4 and tuple(data.shape) == tuple(want[:-1]) + (want[-1] // 2,):
        return unpack_fp4(data.to(torch.uint8))
    return (f"data: shape {tuple(data.shape)} is neither the codes' shape {tuple(want)}"
            + (f" nor the packed shape {tuple(want[:-1]) + (want[-1] // 2,)}" if packed_fp4 else ""))


def _scale_bytes(scales: torch.Tensor, want: torch.Size, swizzled: bool | None) -> torch.Tensor | str:
    scales = _int_codes(scales, "actual scales")
    if tuple(scales.shape) == tuple(want) and swizzled is not True:
        return scales
    rows, cols = math.prod(want[:-1]), want[-1]
    padded = blocked_scale_size(rows, cols)
    if swizzled is not False and scales.numel() == padded:
        return unswizzle_scales(scales.reshape(-1).to(torch.uint8), rows, cols).reshape(want)
    return (f"scales: shape {tuple(scales.shape)} is neither {tuple(want)} nor a swizzled 128x4 layout of "
            f"{padded} bytes")


def assert_quantized_equal(actual: Any, x: torch.Tensor, fmt: str, *, allow: torch.Tensor | None = None,
                           swizzled: bool | None = None, max_report: int = 10, **kwargs: Any) -> None:
    """Re-quantize ``x`` with the reference and assert that data, scales and global scale match bit for bit.

    ``fmt``: "mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2" (kwargs: block_size, scale_mode,
    axis), "nvfp4" (kwargs: global_amax, recipe, block_size), or an element format name (MX with that element;
    with ``block_size=None`` plain ``encode``, kwargs: saturate). ``actual``: MXTensor, NVFP4Tensor or
    ``(data, scales[, global_scale])`` with data packed or one code per byte (blocked axis last) and scales
    plain or in the swizzled 128x4 layout (``swizzled=None`` guesses from the size); an MXTensor/NVFP4Tensor
    supplies its own block_size, scale_mode, axis or recipe unless kwargs name them. ``allow`` (x's shape)
    tolerates element flips where True and a scale flip in a block where every element is allowed.
    """
    check_int(max_report, "max_report", min=0)
    if swizzled is not None:
        check_bool(swizzled, "swizzled")
    mx_like = fmt != "nvfp4" and kwargs.get("block_size", 0) is not None
    if isinstance(actual, MXTensor) and mx_like:  # its own settings unless the caller overrides them
        kwargs = {"block_size": actual.block_size, "scale_mode": actual.scale_mode, "axis": actual.axis, **kwargs}
    elif isinstance(actual, NVFP4Tensor) and fmt == "nvfp4":
        kwargs = {"block_size": actual.block_size, "recipe": actual.recipe, **kwargs}
    spec = _spec(fmt, kwargs)
    ref = _reference(x, spec)
    data, scales, gscale = _split_actual(actual, spec)
    reports = []
    if spec.kind == "encode":
        r, _ = code_mismatch_report(data, ref, context=Context("codes", spec.elem, x), allow=allow,
                                    max_report=max_report)
        reports.append(r)
    else:
        xb = _blocked_input(x, ref)
        ax = getattr(ref, "axis", -1) % x.dim()
        amask = None if allow is None else _allow_mask(allow, x.shape).movedim(ax, -1)
        codes = ref.codes()
        got = _element_codes(data, codes.shape, spec.elem.name == "e2m1")
        if isinstance(got, str):
            reports.append(got)
        else:
            reports.append(code_mismatch_report(got, codes, context=Context("data", spec.elem, xb), allow=amask,
                                                max_report=max_report)[0])
        sfmt = "e4m3" if spec.kind == "nvfp4" else "e8m0"
        got_s = _scale_bytes(scales, ref.scales.shape, swizzled)
        if isinstance(got_s, str):
            reports.append(got_s)
        else:
            bs = ref.block_size
            bamax = xb.abs().reshape(*xb.shape[:-1], -1, bs).amax(-1)
            smask = None if amask is None else amask.reshape(*amask.shape[:-1], -1, bs).all(-1)
            reports.append(code_mismatch_report(got_s, ref.scales, context=Context("scales", sfmt, bamax, "block amax"),
                                                allow=smask, max_report=max_report)[0])
        if spec.kind == "nvfp4":
            if gscale is None:
                reports.append("global_scale: missing (pass an NVFP4Tensor or (data, scales, global_scale))")
            else:
                g = torch.as_tensor(gscale, dtype=torch.float32).reshape(-1)
                if g.numel() != 1:
                    reports.append(f"global_scale: expected one float32 value, got shape {tuple(g.shape)}")
                else:
                    reports.append(value_mismatch_report(g, ref.global_scale.reshape(-1).cpu(),
                                                         name="global_scale")[0])
    reports = [r for r in reports if r is not None]
    if reports:
        raise AssertionError(f"quantized {fmt} differs from the reference:\n" + "\n".join(reports))


# --- where a flip is legitimate ----------------------------------------------------------------------------
def _midpoints(f: Format, device: torch.device) -> torch.Tensor:
    """Positive rounding boundaries of ``f``: midpoints between adjacent finite codes (float64)."""
    g = decode_table(f, device)[: f.max_code + 1].double()
    return (g[:-1] + g[1:]) / 2


def _near_midpoint(v: torch.Tensor, f: Format, tol: float) -> torch.Tensor:
    """|v| within a relative ``tol`` of a midpoint (float64 ``v``; non-finite never)."""
    mids = _midpoints(f, v.device)
    a = v.abs()
    i = torch.bucketize(a, mids).clamp_(1, mids.numel() - 1)
    near = torch.minimum((a - mids[i - 1]).abs() / mids[i - 1], (a - mids[i]).abs() / mids[i])
    return (near <= tol) & torch.isfinite(a)


def _perturbed(bamax: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    a = bamax.double()
    lo, hi = (a * (1 - tol)).float(), (a * (1 + tol)).float()
    return torch.where(torch.isfinite(bamax), lo, bamax), torch.where(torch.isfinite(bamax), hi, bamax)


def near_boundary(x: torch.Tensor, fmt: str, *, tol: float = 1e-5, **kwargs: Any) -> torch.Tensor:
    """Bool mask (x's shape): True where the scaled value ``x / scale`` lies within a relative ``tol`` of a
    midpoint between two element codes, or where the block amax lies within ``tol`` of a scale boundary (a
    perturbation of amax by a factor 1 ± tol changes the scale byte: then the whole block is marked).

    ``fmt`` and ``kwargs`` as in assert_quantized_equal. The scaled value is ``x / 2^X`` (stretch: ``3x / 2^X``)
    for MX and ``x / (e4m3 scale * global_scale)`` in float64 for NVFP4, which is within a few float32 ulps of
    each recipe's own chain, so use ``tol >= 2^-20`` for NVFP4.
    """
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    check_real(tol, "tol", min=0.0)
    if not tol < 1:
        raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
    spec = _spec(fmt, kwargs)
    if spec.kind == "encode":
        return _near_midpoint(x.double(), spec.elem, tol)
    q = _reference(x, spec)
    xb = _blocked_input(x, q)
    bs = q.block_size
    blocks = xb.reshape(*xb.shape[:-1], -1, bs)
    bamax = blocks.abs().amax(-1)
    lo, hi = _perturbed(bamax, tol)
    if spec.kind == "mx":
        mode = spec.kwargs.get("scale_mode", "floor")
        scale = torch.ldexp(torch.ones(q.scales.shape, dtype=torch.float64, device=x.device), q.scales.long() - 127)
        scale = scale.masked_fill(q.scales == 0xFF, math.nan)  # NaN blocks: no element boundary applies
        v = blocks.double() / scale.unsqueeze(-1) * (3 if mode == "stretch" else 1)
        flip = (scale_bytes(lo, spec.elem, mode) != q.scales) | (scale_bytes(hi, spec.elem, mode) != q.scales)
    else:
        g = spec.kwargs.get("global_amax")
        g = finite_amax(x) if g is None else g
        nv = {k: v for k, v in spec.kwargs.items() if k != "global_amax"}
        sb = decode_table("e4m3", x.device)[q.scales.long()].double() * q.global_scale.double()
        v = blocks.double() / sb.unsqueeze(-1)

        def probe(a: torch.Tensor) -> torch.Tensor:
            # one synthetic block per real block, holding only its (perturbed) amax: the recipe's own scale rule
            t = torch.zeros(*a.shape, bs, dtype=torch.float32, device=a.device)
            t[..., 0] = a
            return quantize_nvfp4(t.reshape(*a.shape[:-1], -1), global_amax=g, **nv).scales

        flip = (probe(lo) != q.scales) | (probe(hi) != q.scales)
    mask = _near_midpoint(v, spec.elem, tol) | flip.unsqueeze(-1)
    mask = mask.reshape(xb.shape)
    ax = getattr(q, "axis", -1) % x.dim()
    return mask.movedim(-1, ax) if ax != x.dim() - 1 else mask


__all__ = ["MX_FORMATS", "Context", "assert_codes_equal", "assert_quantized_equal", "code_mismatch_report",
           "near_boundary", "value_mismatch_report"]
