"""Regenerate docs/figures/formats_*.png and the generated tables of docs/formats.md from fp4ref itself.

    pip install matplotlib        # the docs extra
    python docs/make_figures.py

Every number in the tables and figures comes from fp4ref.formats / fp4ref.codecs / fp4ref.mx, so the docs
cannot drift from the code: the text between the ``<!-- generated:tables -->`` markers of formats.md is
rewritten in place.
"""
from __future__ import annotations

import math
import pathlib
import re

import torch

from fp4ref.codecs import _tables_cpu, decode_table, encode
from fp4ref.formats import FORMATS, code_value, is_nan_code
from fp4ref.mx import SCALE_MODES, quantize_mx

DOCS = pathlib.Path(__file__).resolve().parent
FIG = DOCS / "figures"


def fmt_value(v: float) -> str:
    """Short exact text: NaN/±Inf, ±0, decimals for moderate values, 2^k for other powers of two."""
    if v != v:
        return "NaN"
    if abs(v) == float("inf"):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if torch.signbit(torch.tensor(v)) else "0"
    m, e = math.frexp(abs(v))
    sign = "-" if v < 0 else ""
    if m == 0.5 and not 2.0**-10 <= abs(v) <= 2.0**16:
        return f"{sign}2^{e - 1}"
    return f"{v:.9g}"


def bit_layout(f) -> str:
    parts = (["s"] if f.signed else []) + ["e"] * f.ebits + ["m"] * f.mbits
    return "".join(parts)


def format_table() -> str:
    rows = ["| format | bits | bias | max finite | min normal | min subnormal | NaN codes | Inf codes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in FORMATS.items():
        n = 1 << f.bits
        vals = [code_value(f, c) for c in range(n)]
        finite_pos = [(c, v) for c, v in enumerate(vals) if 0 < v < float("inf")]
        normal = [v for c, v in finite_pos if f.mbits == 0 or (c & ((1 << (f.ebits + f.mbits)) - 1)) >> f.mbits]
        subnormal = [v for c, v in finite_pos if v < min(normal)]
        nans = [c for c in range(n) if is_nan_code(f, c)]
        infs = [c for c in range(n) if abs(vals[c]) == float("inf")]
        rows.append(f"| `{name}` | `{bit_layout(f)}` | {f.bias} | {fmt_value(max(normal))} | {fmt_value(min(normal))} "
                    f"| {fmt_value(min(subnormal)) if subnormal else '—'} | {codes(nans)} | {codes(infs)} |")
    return "\n".join(rows)


def codes(cs: list[int]) -> str:
    if not cs:
        return "—"
    if len(cs) > 4:
        return f"0x{cs[0]:02X}…0x{cs[-1]:02X} ({len(cs)})"
    return ", ".join(f"0x{c:02X}" for c in cs)


def e2m1_table() -> str:
    t = decode_table("e2m1")
    rows = ["| code | bits `s ee m` | value | code | bits | value |", "| --- | --- | --- | --- | --- | --- |"]
    for c in range(8):
        rows.append(f"| 0x{c:X} | `{c >> 3} {(c >> 1) & 3:02b} {c & 1}` | {fmt_value(float(t[c]))} "
                    f"| 0x{c + 8:X} | `1 {(c >> 1) & 3:02b} {c & 1}` | {fmt_value(float(t[c + 8]))} |")
    return "\n".join(rows)


def e2m1_thresholds() -> str:
    grid, thr, _ = _tables_cpu("e2m1")
    rows = ["| between | midpoint | a tie goes to | smallest float32 that rounds up |", "| --- | --- | --- | --- |"]
    for i in range(1, 8):
        lo, hi = float(grid[i - 1]), float(grid[i])
        mid = (lo + hi) / 2
        up = i % 2 == 0
        rows.append(f"| {lo:g} and {hi:g} | {mid:g} | {hi if up else lo:g} (code {i if up else i - 1}, even) "
                    f"| {float(thr[i - 1]):.9g} |")
    return "\n".join(rows)


def e8m0_table() -> str:
    t = decode_table("e8m0")
    picks = [0x00, 0x01, 0x7C, 0x7D, 0x7F, 0x80, 0xFE, 0xFF]
    rows = ["| byte | value | float32 bits of the value |", "| --- | --- | --- |"]
    for b in picks:
        v = t[b]
        rows.append(f"| 0x{b:02X} | {fmt_value(float(v))} | `0x{int(v.view(torch.int32)) & 0xFFFFFFFF:08X}` |")
    return "\n".join(rows)


def e4m3_table() -> str:
    t = decode_table("e4m3")
    picks = [0x00, 0x01, 0x07, 0x08, 0x20, 0x30, 0x38, 0x3C, 0x7E, 0x7F]
    rows = ["| byte | value | note |", "| --- | --- | --- |"]
    notes = {0x01: "smallest subnormal, ModelOpt's block-scale floor 2^-9", 0x08: "smallest normal, torchao's floor",
             0x20: "compressed-tensors' zero-block scale", 0x38: "ModelOpt's zero-block scale",
             0x7E: "max finite", 0x7F: "NaN (also 0xFF)", 0x07: "largest subnormal"}
    for b in picks:
        rows.append(f"| 0x{b:02X} | {fmt_value(float(t[b]))} | {notes.get(b, '')} |")
    return "\n".join(rows)


def mx_mode_table() -> str:
    """E8M0 scale byte of a block whose amax is the given float32, per scale mode."""
    amaxes = [("1.0", 1.0), ("0.99999994", 0x3F7FFFFF), ("6.0", 6.0), ("6.0000005", 0x40C00001),
              ("7.0", 7.0), ("7.9999995", 0x40FFFFFF), ("2^-126", 2.0**-126), ("1e-45", 1e-45), ("0", 0.0),
              ("FLT_MAX", 0x7F7FFFFF)]
    rows = ["| amax | " + " | ".join(SCALE_MODES) + " |", "| --- |" + " --- |" * len(SCALE_MODES)]
    for label, a in amaxes:
        v = torch.tensor([a], dtype=torch.int32).view(torch.float32) if isinstance(a, int) else torch.tensor([a])
        block = torch.zeros(1, 32)
        block[0, 0] = v
        cells = []
        for mode in SCALE_MODES:
            q = quantize_mx(block, "e2m1", block_size=32, scale_mode=mode)
            cells.append(f"{int(q.scales[0, 0])} → {fmt_value(float(q.dequantize()[0, 0]))}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def nvfp4_recipe_table() -> str:
    """What each recipe stores for a few telling rows (global amax 1 unless said)."""
    from fp4ref.nvfp4 import RECIPES, quantize_nvfp4

    cases = [("zero block", [0.0] * 16), ("block amax 1e-3", [1e-3] + [0.0] * 15),
             ("block amax 1e-6", [1e-6] + [0.0] * 15),
             ("block [-0.0, -1e-6, 1, 0…]", [-0.0, -1e-6, 1.0] + [0.0] * 13)]
    rows = ["| row (tensor amax 1) | " + " | ".join(RECIPES) + " |", "| --- |" + " --- |" * len(RECIPES)]
    for label, blk in cases:
        x = torch.tensor([[1.0] + [0.0] * 15, blk])
        cells = []
        for r in RECIPES:
            q = quantize_nvfp4(x, recipe=r)
            c = q.codes()[1, :3].tolist()
            cells.append(f"scale 0x{int(q.scales[1, 0]):02X}, codes {', '.join(f'{v:X}' for v in c)}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    gs = []
    for r in RECIPES:
        q = quantize_nvfp4(torch.tensor([[1.0] + [0.0] * 15]), recipe=r)
        gs.append(f"{float(q.global_scale):.9g}")
    rows.append("| global_scale (decode) for amax 1 | " + " | ".join(gs) + " |")
    return "\n".join(rows)


def tables_markdown() -> str:
    return "\n\n".join([
        "### All formats\n\n" + format_table(),
        "### E2M1: every code\n\n" + e2m1_table(),
        "### E2M1: rounding boundaries (round to nearest, ties to even)\n\n" + e2m1_thresholds(),
        "### E8M0: selected scale bytes\n\n" + e8m0_table(),
        "### E4M3: selected block-scale bytes\n\n" + e4m3_table(),
        "### MX scale byte (→ dequantized amax) per scale mode, block [amax, 0, …]\n\n" + mx_mode_table(),
        "### NVFP4: what each recipe stores (codes of the first three elements, hex)\n\n" + nvfp4_recipe_table(),
    ])


def write_tables() -> None:
    path = DOCS / "formats.md"
    text = path.read_text()
    begin, end = "<!-- generated:tables -->", "<!-- /generated:tables -->"
    pat = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pat.search(text):
        raise SystemExit(f"docs/formats.md lacks the {begin} markers")
    path.write_text(pat.sub(lambda m: f"{begin}\n{tables_markdown()}\n{end}", text))


def fig_e2m1_grid(plt) -> None:
    grid, thr, _ = _tables_cpu("e2m1")
    x = torch.linspace(0, 7.5, 30001)
    y = decode_table("e2m1")[encode(x, "e2m1").long()]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(x, y, lw=1.5, label="decode(encode(x)), RNE, saturating")
    ax.plot([0, 7.5], [0, 7.5], ":", color="gray", lw=1, label="y = x")
    for i in range(1, 8):
        mid = (float(grid[i - 1]) + float(grid[i])) / 2
        up = i % 2 == 0
        ax.axvline(mid, color="tab:red" if up else "tab:blue", lw=0.8, ls="--")
        ax.plot([mid], [float(grid[i] if up else grid[i - 1])], "o", color="tab:red" if up else "tab:blue",
                mfc="tab:red" if up else "white", ms=6)
    ax.plot(grid[:8], grid[:8], "ks", ms=4, label="E2M1 values (codes 0..7)")
    ax.axvspan(6, 7.5, color="0.9", label="saturates to 6")
    ax.set_xlabel("|x| (already divided by the block scale)")
    ax.set_ylabel("value after rounding")
    ax.set_title("E2M1 grid and rounding boundaries (red: tie rounds up, blue: tie rounds down)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIG / "formats_e2m1_grid.png", dpi=130)
    plt.close(fig)


def fig_mx_scale_error(plt) -> None:
    """Left: block [amax, 0, ...], relative error of the dequantized amax. Right: relative RMS error of a
    whole block (31 fixed uniform(-1, 1) elements times amax, plus amax itself). amax = (1 + m) * 2^0."""
    m = torch.linspace(0, 1, 2049)[:-1]
    amax = 1.0 + m
    lone = torch.zeros(len(amax), 32)
    lone[:, 0] = amax
    rest = torch.rand(31, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = torch.cat([amax[:, None], amax[:, None] * rest[None, :]], dim=1)
    styles = {"floor": ("-", 2.8), "ceil": ("-", 1.8), "even": ("--", 1.4), "rceil": (":", 1.6), "stretch": ("-", 1.2)}
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.9))
    for mode in SCALE_MODES:
        ls, lw = styles[mode]
        q = quantize_mx(lone, "e2m1", block_size=32, scale_mode=mode)
        ax0.plot(m, (q.dequantize()[:, 0] - amax).abs() / amax, ls, lw=lw, label=mode)
        d = quantize_mx(full, "e2m1", block_size=32, scale_mode=mode).dequantize()
        ax1.plot(m, ((d - full).pow(2).sum(1) / full.pow(2).sum(1)).sqrt(), ls, lw=lw, label=mode)
    ax0.set_title("largest element: |deq(amax) − amax| / amax")
    ax1.set_title("whole block: relative RMS error")
    for ax in (ax0, ax1):
        ax.set_xlabel("mantissa m of amax = (1 + m) · 2^E (repeats every octave)")
        ax.legend(fontsize=8)
    fig.suptitle("MXFP4 scale modes (ceil, even and rceil coincide on the largest element except at saturation)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(FIG / "formats_mx_scale_error.png", dpi=120)
    plt.close(fig)


def fig_nvfp4_block_scale(plt) -> None:
    """E4M3 block scales: relative step between neighbouring scales, and where each recipe floors it."""
    t = decode_table("e4m3")[:0x7F]
    v = t[1:]
    step = (v[1:] - v[:-1]) / v[:-1]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.semilogx(v[:-1], step, ".-", lw=0.8, ms=3)
    for val, lab, c in ((2.0**-9, "ModelOpt floor 2^-9", "tab:green"), (2.0**-6, "torchao floor 2^-6", "tab:orange"),
                        (0.125, "CT zero block 0.125", "tab:purple"), (1.0, "ModelOpt zero block 1.0", "tab:brown")):
        ax.axvline(val, color=c, ls="--", lw=1, label=lab)
    ax.set_xlabel("E4M3 block scale value")
    ax.set_ylabel("relative gap to the next scale")
    ax.set_title("NVFP4 block scales: E4M3 spacing (subnormals below 2^-6 are coarse)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIG / "formats_nvfp4_scales.png", dpi=130)
    plt.close(fig)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIG.mkdir(exist_ok=True)
    fig_e2m1_grid(plt)
    fig_mx_scale_error(plt)
    fig_nvfp4_block_scale(plt)
    write_tables()
    print("wrote", ", ".join(sorted(p.name for p in FIG.glob("formats_*.png"))), "and the tables of formats.md")


if __name__ == "__main__":
    main()
