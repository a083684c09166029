"""Does a block Hadamard help FP4 round-to-nearest? The error analysis of MR-GPTQ (arXiv 2509.23202, §3:
Figure 3, Lemmas 1-2), measured with fp4ref's bit-exact quantizers.

For unit-variance Laplace and Normal data, group sizes G = 16, 32, 64, 128, with and without a block
Hadamard of size G (applied within each group before quantizing), it reports per format:
  MSE_rel     = mean over groups of Σ(x - x̂)² / Σ x²        (rotation-invariant per group, so the same
                                                             whether measured before or after rotating back)
  MSE_top,rel = mean over groups of (x_top - x̂_top)² / x_top², x_top the group's largest |x|; with
                rotation x̂ = R·Q(R·x) is rotated back first (R = H/√G is its own inverse).
  top/avg     = E[(x_top - x̂_top)²] / E[(x - x̂)²]: Lemma 1 says it becomes 1 after rotation.
Formats: NVFP4 (E4M3 group scale + float32 tensor scale, recipe "te", block_size = G), MXFP4 with E8M0
scales under each scale mode (floor, rceil, even, stretch = the 4/3 rule of QuTLASS/FP-Quant), and
"ideal" = an unquantized float32 absmax scale amax/6 (the setting of the paper's lemmas).

    python benchmarks/rotation_mse.py [--log2n 22] [--seed 0] [--threads 2] [--plot docs/figures/rotation_mse.png]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from fp4ref.codecs import decode, encode
from fp4ref.hadamard import block_hadamard
from fp4ref.mx import quantize_mx
from fp4ref.nvfp4 import quantize_nvfp4

GROUPS = (16, 32, 64, 128)
FORMATS = ("nvfp4", "mx-floor", "mx-rceil", "mx-even", "mx-stretch", "ideal")
DISTS = ("laplace", "normal")
ROW = 128  # every G divides it; the tensor is (n / ROW, ROW) so NVFP4's tensor scale sees all of it


def sample(dist: str, n: int, seed: int) -> torch.Tensor:
    """n unit-variance samples (float32) from a fixed-seed generator; Laplace by inverting its CDF."""
    g = torch.Generator().manual_seed(seed)
    if dist == "normal":
        return torch.randn(n, generator=g, dtype=torch.float64).float()
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return (-(0.5 ** 0.5) * torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def quantize(x: torch.Tensor, fmt: str, g: int) -> torch.Tensor:
    """RTN-quantize x (rows of ROW) in groups of g along the last axis; returns the dequantized float32."""
    if fmt == "nvfp4":
        return quantize_nvfp4(x, block_size=g).dequantize()
    if fmt.startswith("mx-"):
        return quantize_mx(x, block_size=g, scale_mode=fmt[3:]).dequantize()
    xb = x.reshape(-1, g)
    s = xb.abs().amax(-1, keepdim=True) / 6.0
    s = torch.where(s == 0, 1.0, s)
    return (decode(encode(xb / s, "e2m1"), "e2m1") * s).reshape(x.shape)


def rel_mse(x: torch.Tensor, xq: torch.Tensor, g: int) -> float:
    """Mean over groups of Σ(x - x̂)² / Σx² (float32 sums: their error is ~1e-7 of a ~1e-2 result)."""
    xb, eb = x.reshape(-1, g), (x - xq).reshape(-1, g)
    return (eb.square().sum(-1) / xb.square().sum(-1)).mean().item()


def top_metrics(x: torch.Tensor, xq: torch.Tensor, g: int) -> tuple[float, float]:
    """(mean over groups of (x_top - x̂_top)² / x_top², E[(x_top - x̂_top)²] / E[(x - x̂)²]), x_top the largest
    |x| of the group. The second is Lemma 1's statement: 1 when the top element is no better off than the
    average element, 0 when absmax scaling represents it exactly."""
    xb, eb = x.reshape(-1, g), (x - xq).reshape(-1, g)
    top = xb.abs().argmax(-1, keepdim=True)
    xt, et2 = xb.gather(-1, top), eb.gather(-1, top).square()
    return (et2 / xt.square()).mean().item(), (et2.mean() / eb.square().mean()).item()


def run(log2n: int, seed: int) -> list[dict]:
    n = 1 << log2n
    rows = []
    for di, dist in enumerate(DISTS):
        x = sample(dist, n, seed + di).reshape(-1, ROW)
        for g in GROUPS:
            xr = block_hadamard(x, g)
            for fmt in FORMATS:
                xq, yq = quantize(x, fmt, g), quantize(xr, fmt, g)
                # The rotated layer computes with x̂ = R^T Q(R x): the error of the original top element is
                # measured after rotating back (R is its own inverse); MSE_rel is the same in either basis.
                r = dict(dist=dist, fmt=fmt, g=g, mse=rel_mse(x, xq, g), mse_rot=rel_mse(xr, yq, g))
                r["top"], r["share"] = top_metrics(x, xq, g)
                r["top_rot"], r["share_rot"] = top_metrics(x, block_hadamard(yq, g), g)
                rows.append(r)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'dist':8} {'format':11} {'G':>4} | {'MSE_rel':>8} {'+Had':>8} {'ratio':>6} | "
          f"{'MSE_top':>8} {'+Had':>8} | {'top/avg':>7} {'+Had':>6}")
    for r in rows:
        print(f"{r['dist']:8} {r['fmt']:11} {r['g']:4d} | {r['mse']:8.5f} {r['mse_rot']:8.5f} "
              f"{r['mse_rot'] / r['mse']:6.3f} | {r['top']:8.5f} {r['top_rot']:8.5f} | "
              f"{r['share']:7.3f} {r['share_rot']:6.3f}")


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    colors = dict(zip(FORMATS, ("C3", "C0", "C1", "C2", "C4", "k")))
    for i, dist in enumerate(DISTS):
        for j, (key, name) in enumerate((("mse", "relative MSE"), ("top", "relative MSE of the group's top element"))):
            ax = axes[i, j]
            for fmt in FORMATS:
                rs = [r for r in rows if r["dist"] == dist and r["fmt"] == fmt]
                gs = [r["g"] for r in rs]
                ax.plot(gs, [r[key] for r in rs], "-o", color=colors[fmt], label=f"{fmt}")
                ax.plot(gs, [r[key + "_rot"] for r in rs], "--s", color=colors[fmt], label=f"{fmt} + Hadamard")
            ax.set_xscale("log", base=2)
            ax.set_xticks(GROUPS, [str(g) for g in GROUPS])
            if key == "top":  # symlog so that the exact zeros of "ideal" without rotation show
                ax.set_yscale("symlog", linthresh=1e-4)
                ax.set_ylim(0, 3e-2)
            else:
                ax.set_yscale("log")
            ax.set_title(f"{dist}: {name}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if i == 1:
                ax.set_xlabel("group size G (Hadamard block = G)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("FP4 round-to-nearest error with and without a block Hadamard (solid: none, dashed: rotated)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=22, help="values per cell: 2^log2n (default 22)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default="docs/figures/rotation_mse.png", help="PNG path ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = run(args.log2n, args.seed)
    print(f"# {2 ** args.log2n} values per cell, seed {args.seed}, torch {torch.__version__}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}, {time.time() - t0:.0f} s")
    print_table(rows)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
