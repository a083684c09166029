"""Time per layer of fp4ref.gptq against a plain transcription of the original GPTQ (IST-DASLab/gptq,
gptq.py fasterquant, float32, TF32 off), on the same device in the same run.

Shapes are W rows x cols; H comes from 2048 random calibration tokens with correlated channels. All runs
are 4-bit symmetric integer GPTQ with groups of 128, blocks of 128, damp 0.01 and dynamic groups (the
original's behaviour): fp4ref in float64 (its default) and in float32; fp4ref also runs on the MXFP4 grid
with static scales. "rel. err" is the layer error ‖(W − Ŵ)Xᵀ‖² over the original's.

    python benchmarks/gptq_speed.py [--quick] [--device cpu|cuda|all] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from fp4ref.gptq import HessianAccumulator, gptq
from fp4ref.grids import IntGrid, MXGrid

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
TOKENS = 2048


def orig_params(x: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gptq's quant.py Quantizer.find_params for weights, per channel, symmetric."""
    tmp = torch.zeros(x.shape[0], device=x.device)
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    xmax = torch.maximum(torch.abs(xmin), xmax)
    tmp = xmin < 0
    if torch.any(tmp):
        xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def orig_fasterquant(W: torch.Tensor, H: torch.Tensor, blocksize: int = 128, percdamp: float = 0.01,
                     groupsize: int = 128, bits: int = 4) -> torch.Tensor:
    """The original fasterquant loop, float32, transcribed (no act-order, dynamic groups)."""
    W = W.clone().float()
    H = H.clone().float()
    maxq = 2**bits - 1
    scale, zero = orig_params(W, maxq)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(W.shape[1], device=W.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if (i1 + i) % groupsize == 0:
                scale, zero = orig_params(W[:, (i1 + i):(i1 + i + groupsize)], maxq)
            q = torch.clamp(torch.round(w.unsqueeze(1) / scale) + zero, 0, maxq)
            q = (scale * (q - zero)).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def run_shape(rows: int, cols: int, device: str) -> list[tuple]:
    g = torch.Generator().manual_seed(rows * 7 + cols)
    mix = torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols**0.5
    X = (torch.randn(TOKENS, cols, generator=g) @ mix).to(device)
    W = (torch.randn(rows, cols, generator=g) * 0.02).to(device)
    acc = HessianAccumulator(cols, device=device)
    acc.add(X)
    H64 = acc.H
    H32 = H64.float()
    X64 = X.double()

    def err(Q: torch.Tensor) -> float:
        return float(((W.double() - Q.double()) @ X64.T).pow(2).sum())

    out = []
    Q, t = timed(lambda: orig_fasterquant(W, H32), device)
    base = err(Q)
    out.append((f"{rows}x{cols}", device, "original gptq.py", "float32", "dynamic", t, 1.0))
    runs = [("fp4ref int4", IntGrid(4, 128), torch.float64, "dynamic"),
            ("fp4ref int4", IntGrid(4, 128, dtype=torch.float32), torch.float32, "dynamic"),
            ("fp4ref mxfp4", MXGrid(), torch.float64, "static")]
    for label, grid, dtype, scales in runs:
        res, t = timed(lambda g=grid, dt=dtype, sc=scales: gptq(W, H64, g, dtype=dt, scales=sc), device)
        out.append((f"{rows}x{cols}", device, label, str(dtype).replace("torch.", ""), scales, t,
                    err(res.weight) / base))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one shape (4096x4096) only")
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, GPU: {gpu}")
    shapes = SHAPES[:1] if args.quick else SHAPES
    print(f"{'shape':>11} | {'device':6} | {'implementation':16} | {'dtype':7} | {'scales':7} | "
          f"{'s/layer':>8} | rel. err")
    for device in devices:
        for rows, cols in shapes:
            for r in run_shape(rows, cols, device):
                print(f"{r[0]:>11} | {r[1]:6} | {r[2]:16} | {r[3]:7} | {r[4]:7} | {r[5]:8.2f} | {r[6]:.4f}",
                      flush=True)


if __name__ == "__main__":
    main()
