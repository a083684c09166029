"""Conformance vectors (SPEC §15): `fp4ref vectors OUT` writes them, `fp4ref verify FILE` re-derives every
output of a vector file from its inputs with the reference, `fp4ref demo` does both.

A file holds one op with one configuration (safetensors metadata: op, format, mode, recipe, saturate, ...) and
any number of cases; tensor ``<case>.<field>`` is field ``field`` of case ``case``. docs/vectors.md is the
format's description for other implementations.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ._version import __version__
from .cli_args import ArgParser, count, parse, usage_error
from .codecs import check_int, decode, decode_table, encode
from .formats import ELEMENT_FORMATS, FORMATS, Format, get_format
from .layouts import pack_fp4, swizzle_scales, unpack_fp4
from .mx import SCALE_MODES, dequantize_mx, quantize_mx
from .nvfp4 import RECIPES, dequantize_nvfp4, quantize_nvfp4
from .testing import Context, code_mismatch_report, value_mismatch_report

VECTORS_VERSION = "1"
META_KEYS = ("op", "format", "mode", "recipe", "saturate")
NA = "-"
FLT_MAX = torch.finfo(torch.float32).max
MX_BLOCK = 32
NV_BLOCK = 16


# --- what each op reads and writes -------------------------------------------------------------------------
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


# --- inputs: edge cases and random tensors -----------------------------------------------------------------
def _f32(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).float().reshape(-1)


def _around(v: torch.Tensor) -> torch.Tensor:
    """v and its float32 neighbours on both sides."""
    return torch.cat([v, torch.nextafter(v, torch.full_like(v, -math.inf)),
                      torch.nextafter(v, torch.full_like(v, math.inf))])


def _signed(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, -v])


def _all_bits(dtype: torch.dtype) -> torch.Tensor:
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


def _encodable(x: torch.Tensor, f: Format, saturate: bool) -> torch.Tensor:
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


# --- writing -----------------------------------------------------------------------------------------------
def _meta(op: str, **kw: object) -> dict[str, str]:
    meta = {k: NA for k in META_KEYS}
    meta.update({k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in kw.items()})
    meta.update(op=op, fp4ref_vectors=VECTORS_VERSION, generator=f"fp4ref {__version__}")
    return meta


def _case_tensors(op: str, meta: dict[str, str], cases: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, inputs in cases.items():
        expected = OPS[op].compute(inputs, meta)
        for field, t in list(inputs.items()) + [(k, o.tensor) for k, o in expected.items()]:
            out[f"{name}.{field}"] = t.detach().cpu().clone()
    return out




def build_vectors() -> dict[str, tuple[dict[str, str], dict[str, torch.Tensor]]]:
    """file name -> (metadata, tensors) for every op, format, mode, recipe and saturate setting."""
    gen = torch.Generator().manual_seed(20260)
    files = {}
    for name, f in FORMATS.items():
        for sat in (True, False):
            edge = _encodable(encode_inputs(f), f, sat)
            cases = {"edge": {"x": edge}}
            for dt in (torch.bfloat16, torch.float16):
                cases[f"all_{str(dt).split('.')[-1]}"] = {"x": _encodable(_all_bits(dt), f, sat)}
            meta = _meta("encode", format=name, saturate=sat, rounding="rne")
            files[f"encode_{name}_{'sat' if sat else 'nosat'}"] = (meta, cases)
        codes = torch.arange(1 << f.bits, dtype=torch.int32).to(torch.uint8)
        files[f"decode_{name}"] = (_meta("decode", format=name), {"all_codes": {"codes": codes}})
    for elem in ELEMENT_FORMATS:
        f = get_format(elem)
        edge, rnd = mx_edge_inputs(f), random_inputs(48, 256, gen)
        for mode in SCALE_MODES:
            if mode == "stretch" and elem != "e2m1":
                continue
            meta = _meta("quantize_mx", format=elem, mode=mode, block_size=MX_BLOCK, axis=-1)
            files[f"mx_{elem}_{mode}"] = (meta, {"edge": {"x": edge}, "random": {"x": rnd}})
    nv_cases = nvfp4_edge_cases(gen)
    for recipe in RECIPES:
        cases, skipped = {}, []
        for cname, (x, gamax) in nv_cases.items():
            inputs = {"x": x} if gamax is None else {"x": x, "global_amax": torch.tensor(gamax, dtype=torch.float32)}
            try:
                quantize_nvfp4(x, global_amax=inputs.get("global_amax"), recipe=recipe)
            except (ValueError, NotImplementedError):  # a recipe that rejects an input: leave that case out
                skipped.append(cname)
                continue
            cases[cname] = inputs
        meta = _meta("quantize_nvfp4", format="nvfp4", recipe=recipe, block_size=NV_BLOCK,
                     skipped_cases=",".join(skipped) or NA)
        files[f"nvfp4_{recipe}"] = (meta, cases)
    pairs = torch.arange(256, dtype=torch.int32)
    pack_cases = {"all_pairs": {"codes": torch.stack([pairs & 15, pairs >> 4], 1).to(torch.uint8)},
                  "random": {"codes": torch.randint(0, 16, (8, 64), generator=gen, dtype=torch.uint8)}}
    files["pack_fp4"] = (_meta("pack_fp4", format="e2m1"), pack_cases)
    swz = {f"r{r}_c{c}": {"scales": torch.randint(0, 256, (r, c), generator=gen, dtype=torch.uint8)}
           for r, c in ((1, 1), (3, 5), (128, 4), (129, 7), (256, 8), (300, 3))}
    files["swizzle_scales"] = (_meta("swizzle_scales"), swz)
    return {name: (meta, _case_tensors(meta["op"], meta, cases)) for name, (meta, cases) in files.items()}


MARKER = ".fp4ref-vectors"  # left in every folder write_vectors fills: it may overwrite that folder again


class OutputFolderError(ValueError):
    """``write_vectors`` refuses an output folder (not a folder, not writable, or holding someone else's files)."""


def _ours(out: Path) -> bool:
    """True if ``out`` was written by write_vectors: it holds the marker, or (written before the marker
    existed) only *.safetensors files and the README.md that write_vectors writes."""
    if (out / MARKER).is_file():
        return True
    names = [p for p in out.iterdir()]
    readme = out / "README.md"
    try:
        legacy = readme.is_file() and readme.read_text(errors="replace").startswith("# fp4ref conformance vectors")
    except OSError:
        return False
    return legacy and all(p == readme or (p.suffix == ".safetensors" and p.is_file()) for p in names)


def check_output_folder(out: str | Path, *, force: bool = False) -> Path:
    """``out`` as a Path if write_vectors may write there: absent (it is created), empty, or written by
    write_vectors before (see MARKER); any other folder only with ``force``. OutputFolderError otherwise."""
    if not isinstance(out, (str, Path)) or not str(out):
        raise TypeError(f"out must be a folder path (str or Path), got {out!r}")
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool (True or False), got {type(force).__name__} {force!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder")
    if out.is_dir() and not force:
        try:
            empty = next(out.iterdir(), None) is None
        except OSError as err:
            raise OutputFolderError(f"cannot read the folder {out}: {err.strerror or err}") from None
        if not empty and not _ours(out):
            raise OutputFolderError(f"{out} is not empty and was not written by fp4ref vectors (no {MARKER} "
                                    "file); choose an empty or new folder, or pass --force (force=True) to "
                                    "write into it anyway (files of the same names are overwritten)")
    return out


def write_vectors(out: str | Path, *, force: bool = False) -> list[Path]:
    """Write every vector file, a README.md and the marker file ``.fp4ref-vectors`` into ``out`` (created if
    needed); returns the files. A folder that is not empty and was not written here before (no marker) is
    refused with OutputFolderError (a ValueError) unless ``force=True``: its README.md could be a user's."""
    from safetensors.torch import save_file

    out = check_output_folder(out, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(f"written by fp4ref {__version__} (fp4ref vectors); fp4ref may overwrite the "
                                  "vector files and README.md of this folder\n")
    except OSError as err:
        raise OutputFolderError(f"cannot write into {out}: {err.strerror or err}") from None
    paths = []
    for name, (meta, tensors) in build_vectors().items():
        meta = dict(meta, cases=",".join(sorted({k.rsplit(".", 1)[0] for k in tensors})))
        path = out / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        _sort_metadata(path)
        paths.append(path)
    (out / "README.md").write_text(README.format(version=__version__, n=len(paths)))
    return paths


def _sort_metadata(path: Path) -> None:
    """Rewrite the header with the metadata keys sorted (safetensors writes them in hash order), so that the
    same vectors give the same bytes; the header keeps its length, so no offset moves."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) <= n:
        path.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n:])


README = """# fp4ref conformance vectors

Written by fp4ref {version} (`fp4ref vectors OUT`); {n} safetensors files. Check an implementation by
running it on each case's inputs and comparing its outputs bit for bit with the stored ones (codes and
scales as integers, float outputs by their float32 bits, any NaN equal to any NaN). `fp4ref verify FILE`
does the same for a file of your own outputs written in this layout.

## Files

| name | op | what varies |
| --- | --- | --- |
| `encode_<fmt>_<sat or nosat>` | encode(x, fmt, saturate) | fmt: e2m1 e2m3 e3m2 e4m3 e5m2 e8m0 |
| `decode_<fmt>` | decode(codes, fmt) | every code |
| `mx_<elem>_<mode>` | quantize_mx(x, elem, block_size=32, scale_mode=mode, axis=-1) | elem x scale mode |
| `nvfp4_<recipe>` | quantize_nvfp4(x, global_amax, recipe, block_size=16) | recipe |
| `pack_fp4` | pack_fp4(codes) | |
| `swizzle_scales` | swizzle_scales(scales) (cuBLAS 128x4 layout) | |

## Tensor names

`<case>.<field>`. Inputs: `x` (float32, bfloat16 or float16), `codes` (uint8), `scales` (uint8),
`global_amax` (float32 scalar, only where passed explicitly). Outputs: `codes` (encode: uint8, one code per
byte), `values` (decode: float32), `data` (packed E2M1 for e2m1, element 2i in the low nibble; one code per
byte otherwise), `scales` (uint8 E8M0 for MX, E4M3 for NVFP4, one per block), `global_scale` (float32 scalar,
decode direction), `dequantized` (float32), `packed`, `blocked` (uint8).

Cases: encode: `edge` (every code value and tie with both float32 neighbours, ±0, tiny negatives, NaN, ±Inf,
extremes), `all_bfloat16` and `all_float16` (every bit pattern; with saturate=false, formats without NaN/Inf
leave out the inputs they reject). MX: `edge` (one block per row: ties, amax at powers of two, at max·2^k
and 2^(emax+1)·2^k ± one ulp, FLT_MAX, subnormal amax, E8M0 clamping, NaN/Inf in a block, zero blocks) and
`random` (48 rows of many magnitudes). NVFP4: one case per global scale situation (see the names).

## Metadata keys

`op`, `format`, `mode` (MX scale mode), `recipe` (NVFP4), `saturate` (`true`/`false`), `rounding`,
`block_size`, `axis`, `cases`, `skipped_cases`, `fp4ref_vectors` (layout version), `generator`.
`-` means "not applicable".
"""


# --- verifying ---------------------------------------------------------------------------------------------
@dataclass
class FileResult:
    path: str
    cases: int = 0
    tensors: int = 0
    values: int = 0
    mismatches: int = 0
    reports: list[str] | None = None


def _compare(actual: torch.Tensor, exp: Out, name: str, max_report: int) -> tuple[str | None, int]:
    if exp.is_float:
        if not actual.dtype.is_floating_point:
            return f"{name}: expected float values, got dtype {actual.dtype}", 0
        return value_mismatch_report(actual, exp.tensor, name=name, max_report=max_report)
    packed, want = exp.packed, exp.tensor
    if exp.unpacked_ok and actual.dim() and actual.shape[-1] == 2 * want.shape[-1]:
        packed, want = False, unpack_fp4(want)  # E2M1 written one code per byte: also accepted
    try:
        return code_mismatch_report(actual, want, max_report=max_report,
                                    context=Context(name, exp.fmt, exp.x, exp.x_label, packed))
    except (TypeError, ValueError) as err:
        return f"{name}: {err}", 0


def verify_file(path: str | Path, *, max_report: int = 10) -> FileResult:
    """Re-derive every output tensor of a vector file from its inputs with the reference and compare."""
    check_int(max_report, "max_report", min=0)
    from safetensors import safe_open

    res = FileResult(str(path), reports=[])
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as err:  # noqa: BLE001 - any unreadable file is a failed verification, not a crash
        res.reports.append(f"cannot read: {err}")
        res.mismatches += 1
        return res
    res.tensors = len(tensors)
    op = meta.get("op")
    if op not in OPS:
        res.reports.append(f"metadata op={op!r} is not one of {sorted(OPS)}")
        res.mismatches += 1
        return res
    spec = OPS[op]
    cases: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if "." not in key:
            res.reports.append(f"tensor {key!r} is not named <case>.<field>")
            res.mismatches += 1
            continue
        case, field = key.rsplit(".", 1)
        cases.setdefault(case, {})[field] = t
    for case, fields in sorted(cases.items()):
        res.cases += 1
        unknown = sorted(set(fields) - set(spec.inputs + spec.optional + spec.outputs))
        missing = [k for k in spec.inputs if k not in fields]
        outs = [k for k in spec.outputs if k in fields]
        problems = ([f"unknown fields {unknown}"] if unknown else []) + (
            [f"missing inputs {missing}"] if missing else []) + ([] if outs else ["no outputs to check"])
        if problems:
            res.reports.append(f"{case}: " + "; ".join(problems) + f" (op {op} reads {list(spec.inputs)}, "
                               f"optional {list(spec.optional)}, and checks {list(spec.outputs)})")
            res.mismatches += 1
            continue
        inputs = {k: fields[k] for k in spec.inputs + spec.optional if k in fields}
        try:
            expected = spec.compute(inputs, meta)
        except (ValueError, TypeError, NotImplementedError) as err:
            res.reports.append(f"{case}: the reference rejects these inputs: {err}")
            res.mismatches += 1
            continue
        for field in outs:
            report, n = _compare(fields[field], expected[field], f"{case}.{field}", max_report)
            res.values += n
            if report is not None:
                res.reports.append(report)
                res.mismatches += 1
    return res


def _expand(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    return out


def verify_paths(paths: list[str], *, max_report: int = 10, quiet: bool = False) -> tuple[list[FileResult], int]:
    """Verify files (directories: every *.safetensors inside); prints reports; returns (results, exit code)."""
    files = _expand(paths)
    results = [verify_file(p, max_report=max_report) for p in files]
    for r in results:
        if r.mismatches:
            print(f"FAIL {r.path}: {r.mismatches} mismatching tensors or problems in {r.cases} cases")
            for rep in r.reports or []:
                print("  " + rep.replace("\n", "\n  "))
        elif not quiet:
            print(f"ok   {r.path}: {r.cases} cases, {r.values} values")
    bad = sum(r.mismatches for r in results)
    if not files:
        print("no .safetensors files found in " + ", ".join(paths))
    return results, int(bad > 0 or not files)


# --- command line ------------------------------------------------------------------------------------------
def _write(out: str, force: bool, prog: str) -> list[Path] | int:
    """write_vectors for a command: a refused or unwritable folder is one line on stderr and exit code 2."""
    try:
        return write_vectors(out, force=force)
    except OutputFolderError as err:
        return usage_error(prog, str(err))
    except OSError as err:  # e.g. the disk filled up or the folder vanished while writing
        return usage_error(prog, f"cannot write into {out}: {err.strerror or err}")


def cli_vectors(argv: list[str]) -> int:
    ap = ArgParser(prog="fp4ref vectors", description="Write fp4ref's conformance vectors (safetensors, one file "
                   "per op and configuration, with a README.md and a .fp4ref-vectors marker).")
    ap.add_argument("out", help="output folder: new, empty, or written by fp4ref vectors before")
    ap.add_argument("--force", action="store_true", help="write into a folder that holds other files too "
                    "(files of the same names are overwritten)")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    paths = _write(args.out, args.force, "fp4ref vectors")
    if isinstance(paths, int):
        return paths
    print(f"wrote {len(paths)} files and README.md to {args.out}")
    return 0


def cli_verify(argv: list[str]) -> int:
    ap = ArgParser(prog="fp4ref verify", description="Check vector files (inputs and outputs in fp4ref's layout, "
                   "see docs/vectors.md) against the reference; exit 1 on any mismatch, 2 on a usage error.")
    ap.add_argument("files", nargs="+", metavar="FILE", help="safetensors file(s) or folder(s)")
    ap.add_argument("--max-report", type=count, default=10, help="mismatches listed per tensor (default 10)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    for f in args.files:
        p = Path(f)
        if not p.exists():
            return usage_error("fp4ref verify", f"{f}: no such file or folder")
        if p.is_dir() and not any(p.glob("*.safetensors")):
            return usage_error("fp4ref verify", f"{f}: a folder without .safetensors files")
        if not p.is_dir() and not p.is_file():
            return usage_error("fp4ref verify", f"{f}: not a file or folder")
        if p.is_file():
            try:
                p.open("rb").close()
            except OSError as err:
                return usage_error("fp4ref verify", f"{f}: cannot open: {err.strerror or err}")
    results, rc = verify_paths(args.files, max_report=args.max_report, quiet=args.quiet)
    print(f"verified {len(results)} files, {sum(r.tensors for r in results)} tensors, "
          f"{sum(r.values for r in results)} values: {sum(r.mismatches for r in results)} mismatches")
    return rc


def cli_demo(argv: list[str], prog: str = "fp4ref demo") -> int:
    ap = ArgParser(prog=prog, description="Write the conformance vectors, verify them and print a summary.")
    ap.add_argument("--out", default="fp4ref_vectors", help="folder for the vectors (default ./fp4ref_vectors)")
    ap.add_argument("--force", action="store_true", help="write into --out even if it holds other files")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    t0 = time.perf_counter()
    paths = _write(args.out, args.force, prog)
    if isinstance(paths, int):
        return paths
    t1 = time.perf_counter()
    results, rc = verify_paths([args.out], quiet=True)
    t2 = time.perf_counter()
    print(f"fp4ref demo: conformance vectors in {args.out}/ (README.md describes them)")
    print(f"  files:            {len(paths)}")
    print(f"  tensors:          {sum(r.tensors for r in results)}")
    print(f"  cases:            {sum(r.cases for r in results)}")
    print(f"  vectors checked:  {sum(r.values for r in results)} output values")
    print(f"  mismatches:       {sum(r.mismatches for r in results)}")
    print(f"  time:             write {t1 - t0:.1f} s, verify {t2 - t1:.1f} s")
    return rc
