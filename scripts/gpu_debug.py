"""Replays the CUDA bad-input calls one by one in plain Python, printing before each (diagnosis only)."""
import sys

import torch

import fp4ref_cuda  # noqa: F401
import fp4ref_cuda.gemm  # noqa: F401

DEV = "cuda"
low = torch.ops.fp4ref_cuda
x = torch.randn(4, 64, device=DEV)
w = torch.zeros(8, 32, dtype=torch.uint8, device=DEV)
s = torch.zeros(8, 4, dtype=torch.uint8, device=DEV)
calls = [
    ("contiguous", lambda: low.quantize(x.t(), 0, 0, 0, 2, 1, None, 1.0, None, False)),
    ("aligned", lambda: low.encode(x.view(-1)[1:], 0, True)),
    ("amax", lambda: low.quantize(x, 2, 0, 0, 16, 1, None, 1.0, None, False)),
    ("multiple", lambda: low.quantize(x, 0, 0, 0, 48, 1, None, 1.0, None, False)),
    ("multiple-again", lambda: low.quantize(x, 0, 0, 0, 48, 1, None, 1.0, None, False)),
    ("gemm-type", lambda: low.gemm_fp4_linear_small(torch.zeros(2, 64, device=DEV), w, s, 16, True, None, 1.0,
                                                    torch.float32)),
    ("gemm-shape", lambda: low.gemm_fp4_linear_small(torch.zeros(2, 32, dtype=torch.bfloat16, device=DEV), w, s, 16,
                                                     True, None, 1.0, torch.float32)),
]
for name, fn in calls:
    print("calling", name, flush=True)
    try:
        fn()
        print("  no error", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"  {type(e).__name__}: {str(e).splitlines()[0][:150]}", flush=True)
print("done", file=sys.stderr)
