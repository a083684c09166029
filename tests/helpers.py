"""Test helpers shared by more than one test module (one module, so that no test imports another): the
inputs and comparisons the CPU build of the CUDA arithmetic (test_arith_cpu.py) and the GPU tests
(test_cuda_ops.py) sweep, and the MX helpers the reference and peer tests share."""
from __future__ import annotations

import functools
import math

import torch

from fp4ref import hadamard, mx, nvfp4
from fp4ref.layouts import unpack_fp4
from fp4ref.formats import ELEMENT_FORMATS, FORMATS, code_value

MX_CASES = [(e, m) for e in ELEMENT_FORMATS for m in mx.SCALE_MODES if m != "stretch" or e == "e2m1"]


def all_patterns(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same shape and dtype, NaN in the same places, identical bits elsewhere (-0 != +0)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    na, nb = torch.isnan(a), torch.isnan(b)
    assert torch.equal(na, nb), "NaN positions differ"
    ia = a.masked_fill(na, 0).contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32)
    ib = b.masked_fill(nb, 0).contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32)
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} mismatches, first at {bad[:5].tolist()}"


def codes_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape, (a.shape, b.shape)
    bad = (a != b).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} mismatches, first at {bad[:5].tolist()}"


def grid_corners() -> torch.Tensor:
    """float32 values at and one ulp around every rounding midpoint and grid point of every format, both signs."""
    vals = [0.0, 2.0**-149, 2.0**-126, 2.0**-127, 3.4028234663852886e38, math.inf, 1.0, 1.5]
    for f in FORMATS.values():
        if f.name == "e8m0":
            grid = [2.0**k for k in range(-127, 128)]
        else:
            grid = [code_value(f, c) for c in range(f.max_code + 1)]
            grid.append(2 * grid[-1] - grid[-2])
        vals += grid
        vals += [(a + b) / 2 for a, b in zip(grid, grid[1:])]
        vals += [1.5 * g for g in grid]
    v = torch.tensor(vals, dtype=torch.float32)
    v = torch.cat([v, torch.nextafter(v, torch.full_like(v, math.inf)), torch.nextafter(v, torch.zeros_like(v))])
    return torch.cat([v, -v, torch.tensor([math.nan, -math.nan])])


def random_f32(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2**31, 2**31, (n,), generator=g, dtype=torch.int64).to(torch.int32).view(torch.float32)


@functools.lru_cache(maxsize=None)
def amax_sweep(dtype: torch.dtype, block: int, seed: int = 0) -> torch.Tensor:
    """One block per non-NaN pattern p of ``dtype``: p, then p·2^-k with random k >= 0 and sign (|.| <= |p|),
    so that the block amax runs through every pattern."""
    p = all_patterns(dtype).float()
    p = p[~torch.isnan(p)]
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 12, (p.numel(), block - 1), generator=g).float()
    s = torch.randint(0, 2, (p.numel(), block - 1), generator=g).float() * 2 - 1
    rest = p[:, None].abs() * torch.exp2(-k) * s
    rest = torch.where(torch.isinf(rest), torch.zeros_like(rest), rest)
    return torch.cat([p[:, None], rest], dim=1).to(dtype)


@functools.lru_cache(maxsize=None)
def mixed_blocks(dtype: torch.dtype, block: int, seed: int = 1) -> torch.Tensor:
    """All patterns of ``dtype`` in a fixed random order, as blocks (NaN and Inf blocks included)."""
    p = all_patterns(dtype)
    perm = torch.randperm(p.numel(), generator=torch.Generator().manual_seed(seed))
    return p[perm].reshape(-1, block)


def rotation_input(dtype, rows=3, k=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.exp2(torch.randint(-30, 30, (rows, k), generator=g).float())
    x[0, 5] = math.inf
    x[1, k // 2 + 1] = math.nan
    x[2, 7] = -0.0
    return x.to(dtype)


def reference_hadamard_quantize(x, fmt, hb, signs, mode, global_amax):
    y = hadamard.block_hadamard(x, hb, signs=signs)
    if fmt == "mxfp4":
        return mx.quantize_mx(y, "e2m1", block_size=32, scale_mode=mode)
    return nvfp4.quantize_nvfp4(y, global_amax=global_amax)


def codes_of(q: mx.MXTensor) -> torch.Tensor:
    """One code per element of an MXTensor (FP4 unpacked)."""
    return unpack_fp4(q.data) if q.elem == "e2m1" else q.data


def every_pattern_blocks(dtype, block=32, seed=0):
    """Every bf16/fp16 bit pattern (NaN and Inf included), shuffled into rows of 4 blocks."""
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).float()
    x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(seed))]
    return x.view(-1, 4 * block)


class GemmKernelStub:
    """fp4ref_cuda.gemm's kernels without a GPU: each returns a tensor of ``fill`` with the shape and dtype it is
    asked for, so the Python around the kernels (dispatch, preparation, output dtype) runs on the CPU."""

    def __init__(self, fill: float = 0.0):
        self.fill = fill

    def gemm_fp4_linear_small(self, x, w, scales, block_size, e4m3, alpha, divisor, out_dtype, pipelined):
        return torch.full((x.shape[0], w.shape[0]), self.fill, dtype=out_dtype)

    def gemm_dequant_bf16(self, data, scales, block_size, e4m3):
        return torch.full((data.shape[0], data.shape[1] * 2), self.fill, dtype=torch.bfloat16)

    def gemm_bf16_cublas(self, a, b, alpha, out_dtype):
        return torch.full((a.shape[0], b.shape[0]), self.fill, dtype=out_dtype)
