"""Regenerate the disagreement map of docs/conformance.md by running fp4ref and every peer installed here.

    python docs/make_conformance.py

Columns for ml_dtypes, torch, torchao, nvidia-modelopt and compressed-tensors are computed live ("n/i":
not installed, "—": the library has no such operation). Transformer Engine and microxcaling do not run on
this CPU-only setup; their column is cited from their sources in conformance.md's prose, not generated.
The text between the ``<!-- generated:map -->`` markers of conformance.md is rewritten in place.
"""
from __future__ import annotations

import pathlib
import re
import warnings

import torch

from fp4ref.codecs import encode
from fp4ref.mx import quantize_mx
from fp4ref.nvfp4 import quantize_nvfp4

warnings.filterwarnings("ignore")
DOCS = pathlib.Path(__file__).resolve().parent
NA, NI = "—", "n/i"


def f32(v) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.int32).view(torch.float32) if isinstance(v, int) else torch.tensor([float(v)])


def hexes(t) -> str:
    return " ".join(f"{int(c):X}" for c in torch.as_tensor(t).flatten().tolist())


def lib(name):
    try:
        if name == "ml_dtypes":
            import ml_dtypes
            return ml_dtypes
        if name == "torchao":
            from torchao.prototype.mx_formats import kernels, mx_tensor, nvfp4_tensor
            return kernels, mx_tensor, nvfp4_tensor
        if name == "modelopt":
            from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
            return NVFP4QTensor
        if name == "ct":
            from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4
            from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
            return cast_to_fp4, pack_fp4_to_uint8
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return None
    raise ValueError(name)


def cell(fn) -> str:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a peer raising is itself a row worth showing
        return f"raises {type(e).__name__}"


# --- element codecs -----------------------------------------------------------------------------------------
def e2m1_row(vals):
    x = torch.tensor(vals, dtype=torch.float32)
    mld, ao, mo, ct = lib("ml_dtypes"), lib("torchao"), lib("modelopt"), lib("ct")
    import numpy as np

    def ct_codes():
        cast, pack = ct
        q = cast(x.clone().reshape(1, -1) if x.numel() % 2 == 0 else torch.cat([x, x[:1]]).reshape(1, -1))
        packed = pack(q)
        lo, hi = packed & 0xF, packed >> 4
        return hexes(torch.stack([lo, hi], -1).flatten()[: x.numel()])

    return [hexes(encode(x, "e2m1")),
            cell(lambda: hexes(np.array(vals, np.float32).astype(mld.float4_e2m1fn).view(np.uint8))) if mld else NI,
            NA,
            cell(lambda: hexes(ao[0].f32_to_f4_unpacked(x))) if ao else NI,
            cell(lambda: hexes(mo._cast_fp4(x.clone()))) if mo else NI,
            cell(ct_codes) if ct else NI]


def fp8_row(vals, fmt):
    x = torch.tensor(vals, dtype=torch.float32)
    mld = lib("ml_dtypes")
    import numpy as np
    tdt = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "e8m0": torch.float8_e8m0fnu}[fmt]
    ndt = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2", "e8m0": "float8_e8m0fnu"}[fmt]
    return [hexes(encode(x, fmt)),
            cell(lambda: hexes(np.array(vals, np.float32).astype(getattr(mld, ndt)).view(np.uint8))) if mld else NI,
            cell(lambda: hexes(x.to(tdt).view(torch.uint8))), NA, NA, NA]


# --- MXFP4 ----------------------------------------------------------------------------------------------------
def mx_block(first, rest=0.0):
    b = torch.full((1, 32), float(rest) if not isinstance(rest, torch.Tensor) else float(rest[0]))
    b[0, 0] = f32(first)
    return b


def mx_row(block, mode="floor", show="scale"):
    ao = lib("torchao")
    q = quantize_mx(block, "e2m1", block_size=32, scale_mode=mode)

    def ours():
        return f"{int(q.scales[0, 0])}" if show == "scale" else hexes(q.codes()[0, :4])

    def theirs():
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        s, d = ao[1].to_mx(block, torch.float4_e2m1fn_x2, 32, getattr(ScaleCalculationMode, mode.upper()))
        if show == "scale":
            return f"{int(s.view(torch.uint8).flatten()[0])}"
        p = d.view(torch.uint8).flatten()[:2]
        return hexes(torch.stack([p & 0xF, p >> 4], -1).flatten())

    return [ours(), NA, NA, cell(theirs) if ao else NI, NA, NA]


# --- NVFP4 ----------------------------------------------------------------------------------------------------
def nv_row(x, show="scale", block=1):
    """fp4ref te | torchao recipe vs torchao | modelopt recipe vs ModelOpt | CT recipe vs compressed-tensors."""
    ao, mo = lib("torchao"), lib("modelopt")

    def pick(scales, codes):
        if show == "scale":
            return f"{int(scales.flatten()[block]):02X}"
        return hexes(codes.flatten()[16 * block:16 * block + 3])

    def fp(recipe):
        q = quantize_nvfp4(x, recipe=recipe)
        return pick(q.scales, q.codes())

    def ao_lib():
        nv = ao[2]
        pts = nv.per_tensor_amax_to_scale(x.abs().amax())
        s, d = nv.nvfp4_quantize(x, 16, pts)
        p = d.view(torch.uint8)
        return pick(s.view(torch.uint8), torch.stack([p & 0xF, p >> 4], -1).flatten())

    def mo_lib():
        qt, s, _ = mo.quantize(x.clone(), 16)
        p = qt._quantized_data.view(torch.uint8)
        return pick(s.view(torch.uint8), torch.stack([p & 0xF, p >> 4], -1).flatten())

    def ct_lib():
        import sys
        sys.path.insert(0, str(DOCS.parent / "tests"))
        from test_nvfp4_recipes import ct_quantize
        d, s, _ = ct_quantize(x)
        return pick(s, torch.stack([d & 0xF, d >> 4], -1).flatten())

    return [f"te: {fp('te')}", NA, NA,
            f"{fp('torchao')} / lib {cell(ao_lib) if ao else NI}",
            f"{fp('modelopt')} / lib {cell(mo_lib) if mo else NI}",
            f"{fp('compressed-tensors')} / lib {cell(ct_lib) if lib('ct') else NI}"]


def two_blocks(first, second):
    x = torch.zeros(1, 32)
    x[0, :len(first)] = torch.tensor(first)
    x[0, 16:16 + len(second)] = torch.tensor(second)
    return x


def rows():
    nan, inf = float("nan"), float("inf")
    yield "E2M1 ties 0.25 0.75 1.25 1.75 2.5 3.5 5 (§7.1)", e2m1_row([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    yield "E2M1 saturation 6.5, 1e30, +Inf, -Inf (§7.2)", e2m1_row([6.5, 1e30, inf, -inf])
    yield "E2M1 NaN, -NaN (§7.3)", e2m1_row([nan, -nan])
    yield "E2M1 -0.0, -1e-45, -0.2 (§7.4)", e2m1_row([-0.0, -1e-45, -0.2])
    yield "E4M3 449, 464 (tie), 464.01, +Inf", fp8_row([449.0, 464.0, 464.01, inf], "e4m3")
    yield "E4M3 NaN, -NaN", fp8_row([nan, -nan], "e4m3")
    yield "E5M2 NaN, -NaN, 1e6", fp8_row([nan, -nan, 1e6], "e5m2")
    yield "E8M0 0, -1, 1.5, 3.0, +Inf", fp8_row([0.0, -1.0, 1.5, 3.0, inf], "e8m0")
    # float32 subnormals just above 2^-127 (bits 0x00400001, 0x00500000, 0x00600000): ml_dtypes 0.6 and torch
    # round them up to 2^-126, ml_dtypes 0.7 rounds the first two to 2^-127 (prose: "Peers that move").
    yield "E8M0 float32 subnormals 0x00400001, 0x00500000, 0x00600000 (just above 2^-127)", fp8_row(
        [float(f32(0x00400001)), float(f32(0x00500000)), float(f32(0x00600000))], "e8m0")
    yield "MX amax 0: scale byte (§7.5)", mx_row(mx_block(0.0))
    yield "MX FLOOR amax 0.99999994 / 1.0: byte (§7.6)", [" / ".join(a) for a in zip(
        mx_row(mx_block(0x3F7FFFFF)), mx_row(mx_block(1.0)))]
    yield "MX RCEIL amax 6.0 / 6.0000005: byte (§7.6)", [" / ".join(a) for a in zip(
        mx_row(mx_block(6.0), "rceil"), mx_row(mx_block(0x40C00001), "rceil"))]
    yield "MX EVEN amax 7.0: byte (§7.6)", mx_row(mx_block(7.0), "even")
    yield "MX FLOOR amax 7.9999995: codes of [amax, 0, 0, 0] (§7.7)", mx_row(mx_block(0x40FFFFFF), show="codes")
    yield "MX FLOOR block [1.5·2^-126, 2^-127, …]: codes (§7.8)", mx_row(mx_block(0x00C00000, f32(0x00400000)),
                                                                              show="codes")
    yield "MX FLOOR block [1e-45 …] codes (§7.8)", mx_row(mx_block(1e-45, 1e-45), show="codes")
    yield "MX amax FLT_MAX: FLOOR / RCEIL byte (§7.9)", [" / ".join(a) for a in zip(
        mx_row(mx_block(0x7F7FFFFF)), mx_row(mx_block(0x7F7FFFFF), "rceil"))]
    yield "MX block holding +Inf: FLOOR byte (§7.10)", mx_row(mx_block(inf, 1.0))
    yield "MX block holding NaN: FLOOR byte (§7.11)", mx_row(mx_block(nan, 1.0))
    yield "NVFP4 zero block: scale byte (§7.5)", nv_row(two_blocks([1.0], []))
    yield "NVFP4 block 1e-3 vs global 1e4: scale (§7.12)", nv_row(two_blocks([1e4], [1e-3]))
    yield "NVFP4 block 1e-3 vs global 1e4: codes (§7.12)", nv_row(two_blocks([1e4], [1e-3]), show="codes")
    yield "NVFP4 block 1e-5 vs global 1: scale (§7.14)", nv_row(two_blocks([1.0], [1e-5]))
    yield "NVFP4 block [-0.0, -1e-9, 1]: codes (§7.4)", nv_row(two_blocks([1.0], [-0.0, -1e-9, 1.0]), show="codes")
    yield "NVFP4 all-zero tensor: scale (§7.15)", nv_row(torch.zeros(1, 32))


def table() -> str:
    mld = lib("ml_dtypes")
    head = ["case", "fp4ref", f"ml_dtypes {mld.__version__}" if mld else "ml_dtypes", "torch", "torchao 0.18",
            "ModelOpt", "compressed-tensors"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for case, cells in rows():
        out.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    torch.set_num_threads(1)
    path = DOCS / "conformance.md"
    text = path.read_text()
    begin, end = "<!-- generated:map -->", "<!-- /generated:map -->"
    pat = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pat.search(text):
        raise SystemExit(f"docs/conformance.md lacks the {begin} markers")
    path.write_text(pat.sub(lambda m: f"{begin}\n{table()}\n{end}", text))
    print("rewrote the disagreement map of docs/conformance.md")


if __name__ == "__main__":
    main()
