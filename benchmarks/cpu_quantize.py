"""CPU throughput and peak memory: fp4ref vs torchao, MXFP4 and NVFP4 quantize/dequantize (docs/performance.md).

    python benchmarks/cpu_quantize.py [--size 4096] [--threads 2] [--repeat 3] [--runs 1]

Input: a size x size bfloat16 tensor (randn, seed 0). MXFP4: block 32, scale FLOOR (fp4ref
``quantize_mx(scale_mode="floor")`` vs torchao ``to_mx(..., FLOOR)``); NVFP4: two-level (fp4ref
``quantize_nvfp4(recipe="te")`` vs torchao ``per_tensor_amax_to_scale`` + ``nvfp4_quantize``, amax included).
Rows "_fast" call fp4ref/_fast.py directly (same bytes; until it is wired into the public functions).
Dequantization to bfloat16 (fp4ref ``.dequantize`` vs torchao ``to_dtype`` / ``NVFP4Tensor.dequantize``).

Time: best of ``--repeat`` calls after one warm-up call. Peak extra memory: Linux peak RSS (VmHWM) reset
through /proc/self/clear_refs just before one call, minus the RSS before the call (tracemalloc does not
see torch's allocations); it includes the call's outputs. Memory is measured in a child process run with
MALLOC_MMAP_THRESHOLD_=131072, so that glibc returns freed buffers to the OS (else RSS hides peaks);
timings come from the parent, without that setting (it would slow every allocation down).
``--runs N`` repeats the whole measurement and prints the best time and the spread (max/min) per row.
"""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
import warnings

import torch


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn) -> float:
    """Peak RSS growth during one call of fn, in MiB (NaN where the peak cannot be reset)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    before = rss_kib("VmRSS")
    out = fn()
    peak = rss_kib("VmHWM")
    del out
    return (peak - before) / 1024.0


def best_seconds(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cases(x: torch.Tensor):
    """(format, op, impl, callable) rows; dequantize rows get a pre-quantized tensor."""
    from fp4ref.mx import quantize_mx
    from fp4ref.nvfp4 import quantize_nvfp4

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import (NVFP4Tensor, nvfp4_quantize,
                                                               per_tensor_amax_to_scale)
    fp4 = torch.float4_e2m1fn_x2

    def ao_nvfp4_quantize():
        return nvfp4_quantize(x, 16, per_tensor_amax_to_scale(x.abs().amax()))

    q_mx = quantize_mx(x, "e2m1", block_size=32, scale_mode="floor")
    ao_scale, ao_data = to_mx(x, fp4, 32, ScaleCalculationMode.FLOOR)
    q_nv = quantize_nvfp4(x, recipe="te")
    ao_nv = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().amax()))
    from fp4ref import _fast
    from fp4ref.nvfp4 import _RECIPE_FUNCS

    return [
        ("MXFP4", "quantize", "fp4ref", lambda: quantize_mx(x, "e2m1", block_size=32, scale_mode="floor")),
        ("MXFP4", "quantize", "_fast", lambda: _fast.quantize_mx_e2m1(x, 32, "floor", x.dim() - 1)),
        ("MXFP4", "quantize", "torchao", lambda: to_mx(x, fp4, 32, ScaleCalculationMode.FLOOR)),
        ("MXFP4", "dequantize", "fp4ref", lambda: q_mx.dequantize(torch.bfloat16)),
        ("MXFP4", "dequantize", "_fast", lambda: _fast.dequantize_mx_e2m1(q_mx, torch.bfloat16)),
        ("MXFP4", "dequantize", "torchao", lambda: to_dtype(ao_data, ao_scale, fp4, 32, torch.bfloat16)),
        ("NVFP4", "quantize", "fp4ref", lambda: quantize_nvfp4(x, recipe="te")),
        ("NVFP4", "quantize", "_fast", lambda: _fast.quantize_nvfp4_fast(x, None,
                                                                         _RECIPE_FUNCS["te"], 16)),
        ("NVFP4", "quantize", "torchao", ao_nvfp4_quantize),
        ("NVFP4", "dequantize", "fp4ref", lambda: q_nv.dequantize(torch.bfloat16)),
        ("NVFP4", "dequantize", "_fast", lambda: _fast.dequantize_nvfp4_fast(q_nv, torch.bfloat16)),
        ("NVFP4", "dequantize", "torchao", lambda: ao_nv.dequantize(torch.bfloat16)),
    ]


def measure_memory(rows) -> dict:
    return {r[:3]: peak_extra_mib(r[3]) for r in rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(a.size, a.size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    rows = cases(x)
    if a.memory_only:
        for key, m in measure_memory(rows).items():
            print("MEM", *key, m)
        return
    n = x.numel()
    in_mib = x.numel() * x.element_size() / 2**20
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, input {a.size}x{a.size} bfloat16 "
          f"({in_mib:.0f} MiB), best of {a.repeat} calls, {a.runs} run(s)")
    times: dict[tuple, list[float]] = {r[:3]: [] for r in rows}
    for _ in range(a.runs):
        for fmt, op, impl, fn in rows:
            times[(fmt, op, impl)].append(best_seconds(fn, a.repeat))
    # Memory in a child process whose glibc returns every freed buffer >= 128 KiB to the OS (by default
    # glibc raises its mmap threshold after big frees, and freed buffers that stay resident hide later
    # peaks); timings are taken here, without that setting, which would slow every allocation down.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, __file__, "--memory-only", "--size", str(a.size), "--threads",
                          str(a.threads)], env=env, capture_output=True, text=True, check=True).stdout
    mem = {tuple(line.split()[1:4]): float(line.split()[4]) for line in out.splitlines() if line.startswith("MEM")}
    print(f"{'format':6} {'op':10} {'impl':8} {'Melem/s':>9} {'spread':>7} {'fp4ref/ao':>9} "
          f"{'peak MiB':>9} {'x input':>7}")
    for fmt, op, impl, _ in rows:
        ts = times[(fmt, op, impl)]
        rate = n / min(ts) / 1e6
        ratio = ""
        if impl != "torchao":
            ratio = f"{min(times[(fmt, op, 'torchao')]) / min(ts):9.2f}"
        m = mem[(fmt, op, impl)]
        print(f"{fmt:6} {op:10} {impl:8} {rate:9.1f} {max(ts) / min(ts):7.2f} {ratio:>9} {m:9.1f} "
              f"{m / in_mib:7.2f}")


if __name__ == "__main__":
    main()
