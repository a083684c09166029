"""Element codecs: float32/bfloat16/float16 <-> one code per uint8 byte (SPEC §2).

Round-to-nearest-even is done by counting rounding thresholds: with the format's sorted positive grid
``g[0] = 0 < g[1] < ... < g[max_code]`` (code order is magnitude order), code ``i`` is reached when
``|x| >= t[i]``, where ``t[i]`` is the midpoint ``(g[i-1] + g[i]) / 2`` if ``i`` is even (a tie goes up
to the even code) and the next float32 above that midpoint if ``i`` is odd (a tie goes down). Midpoints
are exact float32 numbers and comparisons are exact, so this is RNE to the bit, with no exponent
arithmetic at all (never ``log2``). One extra threshold past max marks overflow.
"""
from __future__ import annotations

import functools
import math
import numbers

import torch

from .formats import E8M0, Format, code_value, get_format

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ROUNDINGS = ("rne", "stochastic")


# --- argument checks shared by every module and both backends ----------------------------------------------
# Each names the argument and the rule; a wrong type is a TypeError, a wrong value a ValueError.
def check_bool(v: object, arg: str) -> bool:
    """TypeError unless ``v`` is a bool (not a string such as ``"False"``, not a number); returns it."""
    if not isinstance(v, bool):
        raise TypeError(f"{arg} must be a bool (True or False), got {type(v).__name__} {v!r}")
    return v


def check_int(v: object, arg: str, *, min: int | None = None, max: int | None = None) -> int:
    """``v`` as an int: TypeError unless an integer (bool and str are not), ValueError outside [min, max]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{arg} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if min is not None and v < min:
        raise ValueError(f"{arg} must be >= {min}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{arg} must be <= {max}, got {v}")
    return v


def check_real(v: object, arg: str, *, min: float | None = None, max: float | None = None,
               finite: bool = True) -> float:
    """``v`` as a float: TypeError unless a real number (int, float, numpy scalar; bool and str are not),
    ValueError if NaN (or ±Inf with ``finite``) or outside [min, max]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{arg} must be a real number, got {type(v).__name__} {v!r}")
    f = float(v)
    if math.isnan(f) or (finite and math.isinf(f)):
        raise ValueError(f"{arg} must be a finite number, got {f!r}")
    if min is not None and not f >= min:
        raise ValueError(f"{arg} must be >= {min:g}, got {f!r}")
    if max is not None and not f <= max:
        raise ValueError(f"{arg} must be <= {max:g}, got {f!r}")
    return f


def check_float_dtype(dtype: object, arg: str = "dtype",
                      allowed: tuple[torch.dtype, ...] = FLOAT_DTYPES + (torch.float64,)) -> torch.dtype:
    """TypeError unless ``dtype`` is one of the floating dtypes ``allowed`` (an int or bool output would
    silently truncate the values)."""
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{arg} must be a floating dtype ({names}), got {dtype!r}")
    return dtype


def check_not_meta(t: torch.Tensor, arg: str) -> torch.Tensor:
    """ValueError for a tensor on the "meta" device: fp4ref's reference computes values, which meta tensors
    lack (shapes alone trace through fp4ref_cuda's fake kernels under torch.compile)."""
    if t.device.type == "meta":
        raise ValueError(f"{arg} is on the meta device: fp4ref's ops are not supported on meta tensors "
                         "(they have no values); move it to a real device first")
    return t


def check_same_device(tensors: dict[str, object], what: str | None = None) -> None:
    """ValueError unless every tensor in ``tensors`` (name -> tensor; non-tensors skipped) is on one device."""
    items = [(k, t) for k, t in tensors.items() if isinstance(t, torch.Tensor)]
    for k, t in items[1:]:
        if t.device != items[0][1].device:
            where = f" of {what}" if what else ""
            raise ValueError(f"{k} is on {t.device} but {items[0][0]} is on {items[0][1].device}: all tensors"
                             f"{where} must be on one device")


def check_float_tensor(x: object, arg: str = "x") -> torch.Tensor:
    """TypeError unless ``x`` is a float32/bfloat16/float16 tensor (ValueError on the meta device); returns it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{arg} must be float32, bfloat16 or float16, got {x.dtype}")
    return check_not_meta(x, arg)


def check_uint8_tensor(t: object, arg: str) -> torch.Tensor:
    """TypeError unless ``t`` is a uint8 tensor (float8/float4 views are reinterpreted as uint8)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype in (torch.float8_e8m0fnu, torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2):
        return t.view(torch.uint8)
    if t.dtype != torch.uint8:
        raise TypeError(f"{arg} must be uint8 codes, got {t.dtype}")
    return t


def _next_up(v: float) -> float:
    return float(torch.nextafter(torch.tensor(v, dtype=torch.float32), torch.tensor(math.inf)).item())


@functools.lru_cache(maxsize=None)
def _tables_cpu(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grid[max_code+2], thresholds[max_code+1], decode_table[2^bits]) for a sign-magnitude format.

    ``grid[max_code+1]`` is the value the next code would have (the overflow target); thresholds[i-1] is t[i].
    """
    f = get_format(name)
    grid = [code_value(f, c) for c in range(f.max_code + 1)]
    top_gap = grid[-1] - grid[-2]
    grid.append(grid[-1] + top_gap)
    thr = []
    for i in range(1, len(grid)):
        mid = (grid[i - 1] + grid[i]) / 2
        thr.append(mid if i % 2 == 0 else _next_up(mid))
    table = [code_value(f, c) for c in range(1 << f.bits)]
    return (torch.tensor(grid, dtype=torch.float32), torch.tensor(thr, dtype=torch.float32),
            torch.tensor(table, dtype=torch.float32))


@functools.lru_cache(maxsize=None)
def _tables(name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t.to(device) for t in _tables_cpu(name))  # type: ignore[return-value]


def decode_table(fmt: str | Format, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 value of every code of ``fmt`` (index = code); NaN codes hold NaN."""
    f = get_format(fmt)
    if f.name == "e8m0":
        return _e8m0_table(torch.device(device))
    return _tables(f.name, torch.device(device))[2]


@functools.lru_cache(maxsize=None)
def _e8m0_table(device: torch.device) -> torch.Tensor:
    bits = torch.arange(256, dtype=torch.int32) << 23
    bits[0] = 0x00400000  # 2^-127 is the float32 subnormal, never 0
    bits[255] = 0x7FC00000
    return bits.view(torch.float32).to(device)


def magnitude_codes(a: torch.Tensor, f: Format, *, saturate: bool = False, rounding: str = "rne",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Code index of ``|x|`` (``a`` float32, >= 0, not NaN), int32; without ``saturate``, ``max_code + 1``
    marks overflow (with it, the overflow threshold is left out, so the count stops at max_code)."""
    grid, thr, _ = _tables(f.name, a.device)
    if rounding == "rne":
        return torch.bucketize(a, thr[:-1] if saturate else thr, right=True, out_int32=True)
    # Stochastic: lo = largest grid value <= a; round up with probability (a - g[lo]) / (g[lo+1] - g[lo]).
    # a - g[lo] is exact (Sterbenz, or g[lo] == 0) and the gap is a power of two, so frac is exact.
    lo = (torch.bucketize(a, grid[:-1], right=True, out_int32=True) - 1).clamp_(min=0)
    lo_l = lo.long()
    frac = (a - grid[lo_l]) / (grid[lo_l + 1] - grid[lo_l])
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float32)
    code = lo + (u < frac).to(torch.int32)
    return code.clamp_(max=f.max_code) if saturate else code


def check_encode_args(x: object, fmt: object, saturate: object, rounding: object, generator: object = None) -> Format:
    """Argument checks of ``encode`` shared by both backends; returns the format."""
    check_float_tensor(x)
    f = get_format(fmt)
    check_bool(saturate, "saturate")
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is not one of {ROUNDINGS}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if f.name == "e8m0" and rounding != "rne":
        raise ValueError("rounding='stochastic' is not defined for e8m0 (scales are powers of two)")
    return f


def check_decode_args(codes: object, fmt: object, dtype: object = torch.float32) -> Format:
    """Argument checks of ``decode`` shared by both backends (the code range is checked by the kernels)."""
    check_not_meta(check_uint8_tensor(codes, "codes"), "codes")
    f = get_format(fmt)
    check_float_dtype(dtype)
    return f


def encode(x: torch.Tensor, fmt: str | Format, *, saturate: bool = True, rounding: str = "rne",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode ``x`` to ``fmt`` codes (uint8, low bits), RNE or stochastic, per SPEC §2.

    Sign is kept for zero; ``saturate=True`` sends overflow and ±Inf to ±max (NaN: +max without a NaN
    code, 0x7F for e4m3/e5m2); ``saturate=False`` follows OCP (e4m3 -> 0x7F, e5m2 -> ±Inf, else ValueError).
    """
    f = check_encode_args(x, fmt, saturate, rounding, generator)
    x32 = x.float()
    if f.name == "e8m0":
        if rounding != "rne":
            raise ValueError("rounding='stochastic' is not defined for e8m0 (scales are powers of two)")
        return encode_e8m0(x32, saturate=saturate)
    a = x32.abs()
    nan = torch.isnan(a)
    has_nan = bool(nan.any())
    if has_nan and f.nan_code is None and not saturate:
        raise ValueError(f"x holds NaN, which {f.name} cannot represent with saturate=False")
    if has_nan:
        a = a.masked_fill(nan, 0.0)
    code = magnitude_codes(a, f, saturate=saturate, rounding=rounding, generator=generator)
    over = code > f.max_code
    if not saturate and bool(over.any()):
        if f.inf_code is None and f.nan_code is None:
            raise ValueError(f"x holds values beyond ±{f.max_finite:g} (or ±Inf), which {f.name} cannot "
                             "represent with saturate=False")
        code = torch.where(over, f.inf_code if f.inf_code is not None else f.nan_code, code)
    code = code.to(torch.uint8)
    sign = torch.signbit(x32).to(torch.uint8) << (f.ebits + f.mbits)
    if f.name == "e4m3" and not saturate:
        sign = sign.masked_fill_(over, 0)  # overflow is the canonical NaN 0x7F, whatever the sign
    code |= sign
    if has_nan:
        code.masked_fill_(nan, f.nan_code if f.nan_code is not None else f.max_code)
    return code


def encode_e8m0(x32: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
    """E8M0 code of float32 ``x32``: ``e + (m >= 2^22 if e > 0 else m > 2^22)`` from the float32 bits."""
    bits = x32.view(torch.int32)
    e = (bits >> 23) & 0xFF
    m = bits & 0x7FFFFF
    up = torch.where(e > 0, m >= 0x400000, m > 0x400000)
    code = e + up.to(torch.int32)
    over = 0xFE if saturate else 0xFF
    code = torch.where(code >= 255, over, code)  # past 2^127, and +Inf (e == 255, m == 0)
    zero = (bits & 0x7FFFFFFF) == 0
    code = torch.where(zero, 0x00 if saturate else 0xFF, code)
    bad = torch.isnan(x32) | ((bits < 0) & ~zero)
    code = torch.where(bad, 0xFF, code)
    return code.to(torch.uint8)


def decode(codes: torch.Tensor, fmt: str | Format, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact float32 value of each code (NaN codes -> NaN; e8m0 0x00 -> 2^-127), then cast to ``dtype``."""
    f = check_decode_args(codes, fmt, dtype)
    codes = check_uint8_tensor(codes, "codes")
    if f.bits < 8 and codes.numel() and int(codes.max()) >= (1 << f.bits):
        raise ValueError(f"codes hold values >= {1 << f.bits}, which are not {f.name} codes "
                         "(one code per byte, in the low bits; unpack packed FP4 first)")
    out = decode_table(f, codes.device)[codes.long()]
    return out if dtype == torch.float32 else out.to(dtype)


def e8m0_to_float(scales: torch.Tensor) -> torch.Tensor:
    """Exact float32 ``2^(byte - 127)`` (0xFF -> NaN) of E8M0 scale bytes."""
    return decode(scales, E8M0)
