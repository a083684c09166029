"""How fast is fp4ref_cuda's FP4 GEMM next to bf16 cuBLAS (and FP8 _scaled_mm) on this GPU?

For M in {1, 16, 128, 8192}, N = K = 8192, MXFP4 and NVFP4: µs and TFLOP/s (2·M·N·K / t) of
* bf16 cuBLAS (torch.mm on bf16 copies), FP8 e4m3 row-wise torch._scaled_mm where supported,
* fp4_mm (both operands FP4; float32 and bf16 output), fp4_linear (bf16 activations, FP4 weights), and the dequant kernel alone.
All numbers of one table come from the same process on the same GPU. Writes the table to
$OUT/gpu_gemm.txt (or ./gpu_results/gpu_gemm.txt) and prints it.

    python benchmarks/gpu_gemm.py [--iters 20] [--sizes 1,16,128,8192]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from gpu_timing import time_us as _time_us


def _fp8_rowwise(x: torch.Tensor, w: torch.Tensor):
    """A closure running row-wise-scaled FP8 e4m3 _scaled_mm, or None where the GPU/torch lacks it."""
    try:
        sx = x.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / 448.0
        sw = w.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / 448.0
        x8 = (x.float() / sx).to(torch.float8_e4m3fn)
        w8 = (w.float() / sw).to(torch.float8_e4m3fn)
        swt = sw.T.contiguous()

        def run():
            return torch._scaled_mm(x8, w8.T, sx, swt, out_dtype=torch.bfloat16)

        run()
        return run
    except (RuntimeError, NotImplementedError, ValueError):
        return None


def _linear_with(cg, kernel: str, x, w):
    """fp4_linear with the small-M kernel's data path forced to `kernel` ("registers" or "pipelined")."""
    saved, cg.SMALL_M_KERNEL = cg.SMALL_M_KERNEL, kernel
    try:
        return cg.fp4_linear(x, w)
    finally:
        cg.SMALL_M_KERNEL = saved


def _rows_for(m: int, x: torch.Tensor, w16: torch.Tensor, wq: dict, quant: dict, iters: int, first: bool) -> list:
    """(M, name, (graph µs, eager µs), flop, bf16 graph µs) rows for one batch size."""
    import fp4ref_cuda.gemm as cg

    n, k = w16.shape
    x16 = x.to(torch.bfloat16)
    flop = 2.0 * m * n * k
    t_bf16 = _time_us(lambda: torch.mm(x16, w16.T), iters)
    rows = [(m, "bf16 cuBLAS (torch.mm)", t_bf16, flop, t_bf16[0])]
    fp8 = _fp8_rowwise(x16, w16)
    if fp8 is not None:
        rows.append((m, "FP8 e4m3 rowwise _scaled_mm", _time_us(fp8, iters), flop, t_bf16[0]))
    for fmt, q in quant.items():
        xq, wf = q(x), wq[fmt]
        calls = {"fp4_mm (fp32 out)": lambda xq=xq, wf=wf: cg.fp4_mm(xq, wf),
                 "fp4_mm (bf16 out)": lambda xq=xq, wf=wf: cg.fp4_mm(xq, wf, out_dtype=torch.bfloat16),
                 "fp4_linear (bf16 x)": lambda wf=wf: cg.fp4_linear(x16, wf)}
        if m <= cg.SMALL_M:
            for kernel in ("registers", "pipelined"):
                calls[f"fp4_linear, {kernel} kernel"] = lambda wf=wf, kernel=kernel: _linear_with(cg, kernel, x16, wf)
        rows += [(m, f"{fmt} {name}", _time_us(fn, iters), flop, t_bf16[0]) for name, fn in calls.items()]
        if first:
            rows.append((0, f"{fmt} dequant W {n}x{k} -> bf16 only",
                         _time_us(lambda wf=wf: cg.dequantize_bf16(wf), iters), 0.0, float("nan")))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sizes", default="1,16,128,8192")
    ap.add_argument("--nk", type=int, default=8192)
    ap.add_argument("--out", default=None, help="folder for gpu_gemm.txt (default $OUT or ./gpu_results)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_gemm: no CUDA GPU, nothing to measure")
        return 0
    import fp4ref_cuda.gemm as cg
    from fp4ref.mx import quantize_mx
    from fp4ref.nvfp4 import quantize_nvfp4

    if cg._module("_gemm_sm90") is None:
        print("gpu_gemm: fp4ref_cuda._gemm_sm90 is not built")
        return 1
    torch.manual_seed(0)
    n = k = args.nk
    sizes = [int(s) for s in args.sizes.split(",")]
    dev = torch.device("cuda")
    w = torch.randn(n, k, device=dev)
    x_all = torch.randn(max(sizes), k, device=dev)
    w16 = w.to(torch.bfloat16)
    quant = {"MXFP4": lambda t: quantize_mx(t, "e2m1", block_size=32), "NVFP4": quantize_nvfp4}
    wq = {f: q(w) for f, q in quant.items()}
    rows = []
    for m in sizes:
        rows += _rows_for(m, x_all[:m].contiguous(), w16, wq, quant, args.iters, first=m == sizes[0])
    head = (f"# fp4ref_cuda FP4 GEMM, N = K = {n}; {torch.cuda.get_device_name()} "
            f"(cc {'.'.join(map(str, torch.cuda.get_device_capability()))}), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, host {platform.node()}, {args.iters} iters after 3 warm-ups")
    lines = [head, ("# µs: GPU time per call from CUDA-graph replays (eager: host launch overhead included); "
                    "TFLOP/s and 'vs bf16' (speed-up over bf16 cuBLAS) from the graph times"),
             f"{'M':>6}  {'kernel':<38} {'µs':>9} {'eager µs':>9} {'TFLOP/s':>9} {'vs bf16':>8}"]
    for m, name, (t, te), flop, base in rows:
        tf = flop / t / 1e6 if flop else float("nan")
        speed = base / t if flop else float("nan")
        lines.append(f"{m if m else '-':>6}  {name:<38} {t:9.1f} {te:9.1f} {tf:9.1f} {speed:8.2f}")
    text = "\n".join(lines)
    print(text)
    out_dir = args.out or os.environ.get("OUT") or "gpu_results"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu_gemm.txt"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
