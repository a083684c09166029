"""Host (Python) time per call of the weight-only FP4 linear at batch 1, with a stub in place of the kernel.

At M = 1 a decode step's GPU work (≈10–25 µs for N = K = 8192 on an H200) is comparable to the Python that
launches it, so the eager path's host cost matters. This runs anywhere (no GPU): the CUDA backend's
dispatch is forced on CPU tensors and every fp4ref_cuda GEMM op is replaced by a stub that only allocates
the output, so the numbers are the Python and torch-dispatch cost around the launch: argument checks,
weight views, the NVFP4 global-scale tensor, output handling. Rows:

* ``fp4ref.ops.fp4_linear(x, w)``: the op (checks x and w, prepares w's views, launches);
* ``FP4Linear.forward, per-call weight``: the module path before the third session (builds the weight's
  MXTensor/NVFP4Tensor and goes through ``fp4ref.ops`` every call);
* ``FP4Linear.forward, prepared weight``: the module path now (the weight's views checked and made once per
  weight version, ``fp4ref_cuda.gemm.linear_prepared``);
* ``stub alone``: the floor (one allocation).

    python benchmarks/host_overhead.py [--iters 20000] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import time
from unittest import mock

import torch


def per_call_us(fn, iters: int) -> float:
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters * 1e6)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=1024, help="in/out features (the stub makes size irrelevant)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import fp4ref_cuda
    import fp4ref_cuda.gemm as cg
    from fp4ref import ops
    from fp4ref.nn import FP4Linear

    class StubOps:
        def gemm_fp4_linear_small(self, x, w, scales, block_size, e4m3, alpha, divisor, out_dtype, pipelined):
            return torch.empty(x.shape[0], w.shape[0], dtype=out_dtype)

    stub = StubOps()
    x = torch.randn(1, args.k).bfloat16()
    print(f"# host time per call, µs (best of 5 × {args.iters}); {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, torch.set_num_threads({args.threads}); kernel replaced by a stub")
    print(f"{'format':<7} {'path':<40} {'µs':>7}")
    lin = torch.nn.Linear(args.k, args.k, bias=False)
    mods = {fmt: (FP4Linear.from_linear(lin, fmt), FP4Linear.from_linear(lin, fmt)) for fmt in ("mxfp4", "nvfp4")}
    with mock.patch.object(ops, "backend", lambda t: "cuda"), \
            mock.patch.object(ops, "_cuda_module", lambda: fp4ref_cuda), \
            mock.patch.object(cg, "_usable", lambda *qs: True), mock.patch.object(cg, "_ops", lambda: stub):
        for fmt, (m, unprepared) in mods.items():
            wq = m.weight_quantized
            unprepared._prepared_weight = lambda x: None  # forces the per-call path
            assert m(x).shape == (1, args.k) and unprepared(x).shape == (1, args.k)
            rows = {"fp4ref.ops.fp4_linear(x, w)": lambda: ops.fp4_linear(x, wq),
                    "FP4Linear.forward, per-call weight": lambda: unprepared(x),
                    "FP4Linear.forward, prepared weight": lambda: m(x),
                    "stub alone": lambda: stub.gemm_fp4_linear_small(x, m.weight_packed, None, 0, 0, None, 1.0,
                                                                     torch.bfloat16, False)}
            for name, fn in rows.items():
                print(f"{fmt:<7} {name:<40} {per_call_us(fn, args.iters):7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
