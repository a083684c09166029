"""The inputs of the conformance vectors: edge cases per codec, per MX element format and per NVFP4 global
scale situation, and deterministic random tensors spanning float32's range."""
from __future__ import annotations

import math

import torch

from ..codecs import decode_table
from ..formats import Format, get_format
from .specs import MX_BLOCK, NV_BLOCK

FLT_MAX = torch.finfo(torch.float32).max


def _f32(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).float().reshape(-1)


def _around(v: torch.Tensor) -> torch.Tensor:
    """v and its float32 neighbours on both sides."""
    return torch.cat([v, torch.nextafter(v, torch.full_like(v, -math.inf)),
                      torch.nextafter(v, torch.full_like(v, math.inf))])


def _signed(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, -v])


def all_bits(dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern of a 16-bit float dtype (bfloat16 or float16)."""
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


SPECIALS = _f32([0.0, -0.0, math.nan, math.inf, -math.inf, FLT_MAX, -FLT_MAX, 2.0**-149, -(2.0**-149),
                 2.0**-127, 2.0**-126, -(2.0**-126), 1e-30, -1e-30, 1e30, -1e30])


def _grid(f: Format) -> torch.Tensor:
    return decode_table(f)[: f.max_code + 1]


def _overflow_threshold(f: Format) -> float:
    g = _grid(f)
    return float(g[-1] + (g[-1] - g[-2]) / 2)


def encode_inputs(f: Format) -> torch.Tensor:
    """Edge inputs for one codec: every code value and every midpoint (tie) with their float32 neighbours,
    the overflow threshold, zeros, tiny negatives, NaN, ±Inf, extremes."""
    if f.name == "e8m0":
        pows = torch.ldexp(torch.ones(277, dtype=torch.float64), torch.arange(-149, 128)).float()
        ties = (1.5 * torch.ldexp(torch.ones(275, dtype=torch.float64), torch.arange(-148, 127))).float()
        return torch.cat([_around(pows), _around(ties), SPECIALS, _f32([-1.0, -(2.0**-127), 3.0 * 2**126])])
    g = _grid(f)
    mids = (g[:-1] + g[1:]) / 2
    core = _around(torch.cat([g, mids, _f32([_overflow_threshold(f)])]))
    return torch.cat([_signed(core), SPECIALS, _f32([2 * f.max_finite, -2 * f.max_finite])])


def encodable(x: torch.Tensor, f: Format, saturate: bool) -> torch.Tensor:
    """Drop the inputs that encode(saturate=False) rejects (NaN, overflow in formats without NaN/Inf)."""
    if saturate or f.nan_code is not None or f.name == "e8m0":
        return x
    a = x.float().abs()
    return x[torch.isfinite(a) & (a < _overflow_threshold(f))]


def _filler(amax: float | torch.Tensor, n: int) -> torch.Tensor:
    """n deterministic values strictly inside (-amax, amax), both signs, computed in float64."""
    r = torch.tensor([((j * 37) % 31 - 15) / 16 for j in range(1, n + 1)], dtype=torch.float64)
    return (torch.as_tensor(amax, dtype=torch.float64) * r).float()


def _rows_of(values: torch.Tensor, lead: float, width: int) -> list[torch.Tensor]:
    """Chunk ``values`` into rows of ``width`` that each start with ``lead`` (so each block's amax is lead)."""
    per = width - 1
    rows = []
    for i in range(0, values.numel(), per):
        chunk = values[i:i + per]
        pad = _filler(lead, per - chunk.numel())
        rows.append(torch.cat([_f32([lead]), chunk, pad]))
    return rows


def _amax_row(amax: float | torch.Tensor, width: int) -> torch.Tensor:
    a = torch.as_tensor(amax, dtype=torch.float32).reshape(1)
    return torch.cat([a, _filler(a, width - 1)])


def _nonfinite_rows(width: int) -> list[torch.Tensor]:
    rows = []
    for bad in ([math.nan], [math.inf], [-math.inf], [math.nan, math.inf], [math.nan] * width):
        r = _amax_row(1.0, width)
        r[3:3 + len(bad)] = _f32(bad)[: width - 3]
        rows.append(r)
    return rows


def mx_edge_inputs(f: Format, block: int = MX_BLOCK) -> torch.Tensor:
    """One block per row: ties at scale 2^0 (and scaled by 2^k), negatives rounding to zero, amax at powers
    of two, at max·2^k and 2^(emax+1)·2^k (± one ulp), FLT_MAX, float32 subnormal amax, E8M0 clamping,
    the scale-mode boundaries (1.5·2^k, 1.75·2^k), zero blocks, NaN/±Inf inside a block."""
    g = _grid(f)
    mids = (g[:-1] + g[1:]) / 2
    rows = [torch.zeros(block), torch.full((block,), -0.0), _f32([0.0, -0.0] * (block // 2))]
    for lead in (2.0**f.emax, f.max_finite):
        ties = _around(mids[mids < lead])
        ties = ties * torch.tensor([1.0, -1.0]).repeat((ties.numel() + 1) // 2)[: ties.numel()]
        for k in (0, -20, 37):
            rows += [r * 2.0**k for r in _rows_of(ties, lead, block)]
        if f.name == "e2m1":  # the stretch rule's scaled value is 3x/2^X: ties of 3x/4 for amax = 4
            rows += _rows_of(_signed(_around((mids * 4 / 3).double().float())), lead, block)
    tiny = float(g[1]) / 2
    to_zero = _f32([-tiny, -tiny / 2, -1e-30, -(2.0**-149), -0.0, tiny, 2.0**-149])
    rows += [r * 2.0**k for k in (0, -30) for r in _rows_of(to_zero, 2.0**f.emax, block)]
    amaxes = []
    for k in (-126, -120, -110, -100, -1, 0, 1, 64, 127):
        amaxes += [2.0**k, 1.5 * 2.0**k, 1.75 * 2.0**k]
    for k in (-10, 0, 13):
        amaxes += [f.max_finite * 2.0**k, 2.0 ** (f.emax + 1 + k)]
    amaxes = _around(_f32(amaxes)[torch.isfinite(_f32(amaxes))])
    sub = _around(_f32([2.0**-149, 2.0**-140, 2.0**-127, 1.5 * 2**-127, 2.0**-126]))
    for a in torch.cat([amaxes, sub, _f32([FLT_MAX, -FLT_MAX])]):
        rows.append(_amax_row(a, block))
    rows += _nonfinite_rows(block)
    return torch.stack(rows)


def random_inputs(rows: int, cols: int, gen: torch.Generator, lo: int = -140, hi: int = 110) -> torch.Tensor:
    """Rows of normal, uniform, heavy-tailed and outlier data, row r scaled by 2^e_r with e_r spread over
    [lo, hi] (so blocks span float32's range, subnormals included)."""
    e = torch.linspace(lo, hi, rows).round()
    n = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    kind = torch.arange(rows) % 4
    u = torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1
    x = torch.where((kind == 1).unsqueeze(1), u, n)
    x = torch.where((kind == 2).unsqueeze(1), n**3, x)
    out = torch.zeros(rows, cols, dtype=torch.float64)
    out[:, :: max(cols // 8, 1)] = 64.0
    x = torch.where((kind == 3).unsqueeze(1) & (out > 0), x * 64, x)
    return (x * torch.ldexp(torch.ones(rows, 1, dtype=torch.float64), e.long().unsqueeze(1))).float()


def nvfp4_edge_cases(gen: torch.Generator) -> dict[str, tuple[torch.Tensor, float | None]]:
    """name -> (x, global_amax or None); global_amax = 2688 makes S_enc = 1, so block scales are amax/6."""
    w = NV_BLOCK
    g = _grid(get_format("e2m1"))
    mids = (g[:-1] + g[1:]) / 2
    ties = _around(mids[mids < 6])
    ties = ties * torch.tensor([1.0, -1.0]).repeat((ties.numel() + 1) // 2)[: ties.numel()]
    e4 = _grid(get_format("e4m3"))
    smids = (e4[:-1] + e4[1:]) / 2
    rows = _rows_of(ties, 6.0, w)
    rows += [_amax_row(a, w) for a in _around((smids * 6).double().float())]
    rows += [_amax_row(a, w) for a in _around(_f32([6 * 2.0**-11, 6 * 2.0**-10, 6 * 2.0**-9 * 0.75, 2688.0,
                                                    2688.0 * 1.5, 2688.0 * 2, 1e6]))]
    rows += [torch.zeros(w), torch.full((w,), -0.0)]
    rows += _rows_of(_f32([-0.25, -0.2, -1e-30, -(2.0**-149), -0.0, 0.25]), 6.0, w)
    unit = torch.stack(rows + _nonfinite_rows(w))
    finite_rows = torch.stack(_nonfinite_rows(w) + [_amax_row(3.0, w), _amax_row(-100.0, w)])
    rnd = random_inputs(4, 64, gen, -10, 10)
    cases: dict[str, tuple[torch.Tensor, float | None]] = {
        "unit_scale": (unit, 2688.0),
        "unit_scale_x2^-30": (unit * 2.0**-30, 2688.0 * 2.0**-30),
        "unit_scale_x2^40": (unit * 2.0**40, 2688.0 * 2.0**40),
        "random": (random_inputs(16, 128, gen), None),
        "nan_inf": (finite_rows, None),
        "global_amax_zero": (torch.zeros(4, 32), None),
        "global_amax_zero_given": (rnd, 0.0),
        "global_amax_small": (rnd, float(rnd.abs().max()) / 64),
        "global_amax_large": (rnd * 1e-3, 1e30),
        "flt_max": (torch.stack([_amax_row(FLT_MAX, w), _amax_row(-1.0, w)]), None),
        "subnormal": (random_inputs(4, 32, gen, -149, -130), None),
    }
    for k in (-130, -60, -10, 0, 10, 60, 120):
        cases[f"magnitude_2^{k}"] = (random_inputs(8, 64, gen, k, k), None)
    return cases
