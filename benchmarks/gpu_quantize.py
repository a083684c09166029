"""Bandwidth of fp4ref_cuda's quantizers on an 8192x8192 bf16 tensor, next to the device's copy bandwidth.

GB/s counts bytes read + bytes written (a two-pass op, such as NVFP4 with the global amax computed, counts
its input twice). Each op is timed twice: "GPU" = CUDA-graph replay of 10 calls (the kernels' own time, the
host out of the way: what the bandwidth targets are about) and "eager" = back-to-back Python calls (host
overhead included where it exceeds the kernel time). The copy ceiling is measured both ways too, and each
"% of copy" compares like with like. Targets (issue 5): quantize and dequantize >= 80 % of copy bandwidth,
fused Hadamard + quantize >= 70 % (GPU times). torchao's quantizers under torch.compile are timed too when
torchao imports.
Usage: python benchmarks/gpu_quantize.py [--out DIR] [--size N]   (writes gpu_quantize.json and .md)
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from gpu_timing import time_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_results"))
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    import fp4ref_cuda as fc

    if not fc.available():
        raise SystemExit(f"fp4ref_cuda is not available (built: {fc.built()}, GPU: {torch.cuda.is_available()})")
    n = args.size
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    numel = x.numel()
    amax = x.float().abs().amax()
    rows = []

    def add(name: str, fn, bytes_moved: float, target: float | None, group: str = "fp4ref_cuda") -> None:
        g_us, e_us = time_us(fn, args.iters)
        rows.append({"op": name, "impl": group, "ms": g_us / 1e3, "eager ms": e_us / 1e3,
                     "GB/s": bytes_moved / g_us / 1e3, "eager GB/s": bytes_moved / e_us / 1e3, "target": target})

    y = torch.empty_like(x)
    add("copy bf16 (y.copy_(x))", lambda: y.copy_(x), 4 * numel, None, "torch")
    copy_gbs, copy_eager = rows[0]["GB/s"], rows[0]["eager GB/s"]

    q_mx = fc.quantize_mx(x)
    q_nv = fc.quantize_nvfp4(x, global_amax=amax)
    fp4_out = numel / 2
    add("MXFP4 quantize (e2m1, floor, block 32)", lambda: fc.quantize_mx(x), 2 * numel + fp4_out + numel / 32, 0.8)
    add("MXFP4 quantize (rceil)", lambda: fc.quantize_mx(x, scale_mode="rceil"), 2 * numel + fp4_out + numel / 32, 0.8)
    add("NVFP4 quantize (te, given global amax)", lambda: fc.quantize_nvfp4(x, global_amax=amax),
        2 * numel + fp4_out + numel / 16, 0.8)
    add("NVFP4 quantize (te, amax computed: 2 reads)", lambda: fc.quantize_nvfp4(x),
        4 * numel + fp4_out + numel / 16, 0.8)
    add("MXFP4 dequantize -> bf16", lambda: fc.dequantize_mx(q_mx, torch.bfloat16), fp4_out + numel / 32 + 2 * numel, 0.8)
    add("NVFP4 dequantize -> bf16", lambda: fc.dequantize_nvfp4(q_nv, torch.bfloat16),
        fp4_out + numel / 16 + 2 * numel, 0.8)
    add("block_hadamard 32 (bf16 -> fp32)", lambda: fc.block_hadamard(x, 32), 6 * numel, None)
    for hb in (16, 32, 128):
        add(f"fused Hadamard {hb} + MXFP4", lambda hb=hb: fc.hadamard_quantize(x, "mxfp4", hadamard_block=hb),
            2 * numel + fp4_out + numel / 32, 0.7)
    add("fused Hadamard 16 + NVFP4 (given amax)",
        lambda: fc.hadamard_quantize(x, "nvfp4", hadamard_block=16, global_amax=amax), 2 * numel + fp4_out + numel / 16, 0.7)
    add("fused Hadamard 32 + MXFP4, swizzled scales",
        lambda: fc.hadamard_quantize(x, "mxfp4", hadamard_block=32, swizzle=True), 2 * numel + fp4_out + numel / 16, 0.7)

    try:
        from torchao.prototype.mx_formats.mx_tensor import to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

        mx_c = torch.compile(lambda t: to_mx(t, torch.float4_e2m1fn_x2, 32))
        nv_c = torch.compile(lambda t, s: nvfp4_quantize(t, 16, s))
        pts = (amax / (6.0 * 448.0)).float()
        add("MXFP4 quantize", lambda: mx_c(x), 2 * numel + fp4_out + numel / 32, None, "torchao+compile")
        add("NVFP4 quantize (given per-tensor scale)", lambda: nv_c(x, pts), 2 * numel + fp4_out + numel / 16, None,
            "torchao+compile")
    except Exception as e:  # torchao missing or its API changed: report, do not fail the run
        rows.append({"op": f"torchao skipped: {type(e).__name__}: {str(e)[:120]}", "impl": "torchao", "ms": None,
                     "eager ms": None, "GB/s": None, "eager GB/s": None, "target": None})

    for r in rows:
        r["% copy"] = None if r["GB/s"] is None else 100 * r["GB/s"] / copy_gbs
        r["eager % copy"] = None if r["eager GB/s"] is None else 100 * r["eager GB/s"] / copy_eager
        r["meets target"] = None if r["target"] is None or r["GB/s"] is None else r["% copy"] >= 100 * r["target"]
    dev = torch.cuda.get_device_name()
    head = (f"# gpu_quantize: {n}x{n} bf16 on {dev} (torch {torch.__version__}, CUDA {torch.version.cuda})\n\n"
            "GPU ms: CUDA-graph replay (kernel time); eager ms: back-to-back Python calls. % of copy compares each "
            "with the copy row timed the same way.\n\n")
    lines = ["| op | impl | GPU ms | GB/s | % of copy | target | met | eager ms | eager % of copy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ms"] is None:
            lines.append(f"| {r['op']} | {r['impl']} | | | | | | | |")
            continue
        tgt = "" if r["target"] is None else f"≥{100 * r['target']:.0f}%"
        met = "" if r["meets target"] is None else ("yes" if r["meets target"] else "NO")
        lines.append(f"| {r['op']} | {r['impl']} | {r['ms']:.4f} | {r['GB/s']:.0f} | {r['% copy']:.1f} | {tgt} | {met} "
                     f"| {r['eager ms']:.4f} | {r['eager % copy']:.1f} |")
    table = head + "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_quantize.md").write_text(table)
    (out / "gpu_quantize.json").write_text(json.dumps({"device": dev, "size": n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
