"""GPTQ (SPEC §10) and MR-GPTQ (SPEC §11).

GPTQ quantizes the columns of ``W`` one at a time and spreads each column's rounding error over the
columns not yet quantized so as to minimise ``‖(W − Ŵ) Xᵀ‖²`` with ``H = (2/n) XᵀX``: with
``U = chol(H⁻¹)ᵀ`` (upper), column ``i`` gives ``err = (w_i − q_i) / U[i,i]`` and ``W[:, j] −= err · U[i, j]``
for ``j > i``; the loss adds ``(w_i − q_i)² / U[i,i]² / 2``. Updates are applied lazily, ``block_size``
columns at a time, as in the GPTQ paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .codecs import check_bool, check_float_dtype, check_int, check_not_meta, check_real
from .grids import Grid, MXGrid, NVFP4Grid
from .hadamard import block_hadamard, check_block_size

SCALES = ("static", "dynamic")
WORK_DTYPES = (torch.float32, torch.float64)


def _check_device(device: object) -> None:
    if device is None:
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device") from None


def symmetry_tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance of ``check_symmetric`` for a matrix of ``dtype``: ``sqrt(eps(dtype))`` (1.5e-8 for
    float64, 3.5e-4 for float32), far above the rounding of a Hessian accumulated or rotated in that dtype and
    far below any real asymmetry."""
    return math.sqrt(torch.finfo(dtype).eps)


def check_symmetric(H: torch.Tensor, arg: str = "H", name: str | None = None) -> None:
    """ValueError unless ``max |H − Hᵀ| <= symmetry_tolerance(H.dtype) · max |H|``.

    GPTQ and QEP factor ``H`` by Cholesky, which reads one triangle only: a non-symmetric ``H`` would be
    silently replaced by the symmetric matrix of its lower triangle. Rounding noise within the tolerance is
    accepted (that triangle is used as is)."""
    n = H.shape[0]
    if n == 0:
        return
    Hd = H.detach()
    scale = float(Hd.abs().amax())
    diff, step = 0.0, max(1, (1 << 22) // n)  # row panels: no second d x d buffer
    for i in range(0, n, step):
        diff = max(diff, float((Hd[i:i + step] - Hd[:, i:i + step].T).abs().amax()))
    tol = symmetry_tolerance(H.dtype)
    if diff > tol * scale:
        raise ValueError(f"{_layer(name)}: {arg} must be symmetric: max |{arg} - {arg}ᵀ| = {diff:.3g} exceeds "
                         f"{tol:.2g} · max |{arg}| = {tol * scale:.3g} (the tolerance for {H.dtype})")


class HessianAccumulator:
    """Accumulates ``H = (2 / n_tokens) Σ x xᵀ`` over calibration inputs ``x`` (..., d), in ``dtype``."""

    def __init__(self, d: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        check_int(d, "d", min=1)
        check_float_dtype(dtype, allowed=WORK_DTYPES)
        _check_device(device)
        self.d, self.n_tokens = d, 0
        self._sum = torch.zeros(d, d, dtype=dtype, device=device)

    def rows(self, x: object, arg: str = "x") -> torch.Tensor:
        """``x`` checked (floating point, last dimension d) and reshaped to (-1, d) in the accumulator's dtype."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{arg} must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() == 0 or x.shape[-1] != self.d:
            raise ValueError(f"{arg} must have last dimension d={self.d}, got shape {tuple(x.shape)}")
        if x.device.type == "meta" and self._sum.device.type != "meta":
            check_not_meta(x, arg)
        return x.reshape(-1, self.d).to(device=self._sum.device, dtype=self._sum.dtype)

    def add(self, x: torch.Tensor) -> None:
        """Adds every row of ``x`` reshaped to (-1, d) as one token."""
        x = self.rows(x)
        self._sum.addmm_(x.T, x)
        self.n_tokens += x.shape[0]

    @property
    def H(self) -> torch.Tensor:
        if self.n_tokens == 0:
            raise ValueError("no inputs were added: H is undefined")
        return self._sum * (2.0 / self.n_tokens)


@dataclass
class GPTQResult:
    weight: torch.Tensor  # Ŵ, dequantized, W's shape and dtype
    quantized: object  # grid.encode(Ŵ): IntTensor / MXTensor / NVFP4Tensor
    loss: float  # Σ (w − q)² / U[i,i]² / 2
    damp_used: float  # the relative damping that made H + λI factor
    perm: torch.Tensor | None  # processing order (act_order), else None


@dataclass
class Rotation:
    """The input-side rotation of a micro-rotated layer: ``x ← block_hadamard(x, block_size, signs=signs)``."""

    block_size: int
    signs: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return block_hadamard(x, self.block_size, signs=self.signs)


@dataclass
class MRGPTQResult(GPTQResult):
    rotation: Rotation | None = None


def _layer(name: str | None) -> str:
    return f"layer {name!r}" if name else "layer"


def damp_ladder(damp: float, damp_retries: int) -> list[float]:
    """Relative dampings tried in turn: ``damp · 10^k``; from ``damp = 0`` the retries start at 1e-6."""
    damp = check_real(damp, "damp", min=0.0)
    damp_retries = check_int(damp_retries, "damp_retries", min=0)
    if damp > 0:
        return [damp * 10.0**k for k in range(damp_retries + 1)]
    return [0.0] + [1e-6 * 10.0**k for k in range(damp_retries)]


def inverse_hessian_factor(H: torch.Tensor, damp: float, damp_retries: int, name: str | None = None
                           ) -> tuple[torch.Tensor, float]:
    """``U = chol(chol_inv(chol(H + λI)), upper)`` with ``λ = d · mean(diag H)`` for d on the damp ladder."""
    mean_t = torch.diagonal(H).mean()  # a tensor, so λ rounds in H's dtype as in gptq.py
    mean_diag = float(mean_t)
    ladder = damp_ladder(damp, damp_retries)
    for d in ladder:
        Hd = H.clone()
        Hd.diagonal().add_(d * mean_t)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                return U, d
    raise torch.linalg.LinAlgError(
        f"{_layer(name)}: H + λI is not positive definite with any of damp={ladder} (λ = damp · mean diag H, "
        f"mean diag H = {mean_diag:g}); check the calibration inputs")


def rotate_layer(W: torch.Tensor, H: torch.Tensor, block: int, signs: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W R, Rᵀ H R)`` for the block Hadamard R that rotates the inputs (``x ← x R``, SPEC §7).

    float64 W rotates in float64 (the exact basis change); other dtypes by §7's float32 butterfly (the bits
    that rotate_weight stores). H is rotated in float64.
    """
    W_rot = block_hadamard(W, block, signs=signs, axis=-1)
    HR = block_hadamard(H.double(), block, signs=signs, axis=-1)
    return W_rot, block_hadamard(HR, block, signs=signs, axis=0)


def _check(W: object, H: object, grid: object, block_size: int, damp: float, scales: str, act_order: bool,
           damp_retries: int, name: str | None, dtype: object = torch.float64) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if not isinstance(W, torch.Tensor) or not W.is_floating_point() or W.dim() != 2:
        raise TypeError(f"W must be a 2-D floating-point tensor, got {getattr(W, 'shape', type(W))}")
    if not isinstance(H, torch.Tensor) or not H.is_floating_point():
        raise TypeError(f"H must be a floating-point tensor, got {getattr(H, 'dtype', type(H).__name__)}")
    check_not_meta(W, "W")
    check_not_meta(H, "H")
    check_float_dtype(dtype, allowed=WORK_DTYPES)
    check_bool(act_order, "act_order")
    if tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be ({W.shape[1]}, {W.shape[1]}) for W of shape {tuple(W.shape)}, "
                         f"got {tuple(H.shape)}")
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a fp4ref.grids grid (IntGrid, MXGrid, NVFP4Grid), got {type(grid).__name__}")
    check_int(block_size, "block_size")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    check_real(damp, "damp", min=0.0)
    check_int(damp_retries, "damp_retries", min=0)
    if not isinstance(scales, str) or scales not in SCALES:
        raise ValueError(f"scales={scales!r} is not one of {SCALES}")
    if act_order and scales == "dynamic":
        raise ValueError("act_order=True needs scales='static' (groups stay in the original column order)")
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{_layer(name)}: W holds NaN or Inf")
    if not bool(torch.isfinite(H).all()):
        raise torch.linalg.LinAlgError(f"{_layer(name)}: H holds NaN or Inf")
    check_symmetric(H, "H", name)


def gptq(W: torch.Tensor, H: torch.Tensor, grid: Grid, *, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, scales: str = "static", damp_retries: int = 3, name: str | None = None,
         dtype: torch.dtype = torch.float64) -> GPTQResult:
    """GPTQ of ``W`` (rows, cols) on ``grid`` with Hessian ``H`` (cols, cols), computed in ``dtype``.

    ``scales="static"`` fits all group scales on the (dead-zeroed) original W; ``"dynamic"`` refits a group
    when the loop enters it, from the global W (lacking the current block's updates), as gptq.py does.
    ``act_order`` visits columns by descending diag(H) (stable sort), scales staying in column order.

    ``H`` must be symmetric (Cholesky reads one triangle): ``max |H − Hᵀ| <= sqrt(eps) · max |H|``, eps that
    of H's dtype (see ``check_symmetric``), else ValueError naming H; NaN/Inf in H raise LinAlgError.
    """
    _check(W, H, grid, block_size, damp, scales, act_order, damp_retries, name, dtype)
    rows, cols = W.shape
    grid.check_cols(cols)
    Wd = W.detach().to(dtype).clone()
    Hd = H.detach().to(device=W.device, dtype=dtype).clone()
    dead = torch.diagonal(Hd) == 0
    Hd[dead, dead] = 1.0
    Wd[:, dead] = 0.0
    fitted = grid.fit(Wd)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(Hd), descending=True, stable=True)
        Wd, Hd = Wd[:, perm], Hd[perm][:, perm]
    order = perm.tolist() if perm is not None else range(cols)
    U, damp_used = inverse_hessian_factor(Hd, damp, damp_retries, name)

    G = grid.group_size
    Q = torch.zeros_like(Wd)
    losses = torch.zeros(rows, dtype=dtype, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        # U comes column-major from cholesky_ex(upper=True), and the loop below reads its rows: a row-major
        # copy of the block's 128x128 corner makes the per-column update ~4x faster on CPU (same values; the
        # block update keeps U's own layout, whose matmul rounding gptq.py's reproduction depends on).
        W1, U1 = Wd[:, i1:i2].clone(), U[i1:i2, i1:i2].contiguous()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            c = order[i1 + i]
            if scales == "dynamic" and c % G == 0:
                grid.refit_group(fitted, Wd[:, c:c + G], c // G)
            w, d = W1[:, i], U1[i, i]
            q = grid.quantize_column(w, c, fitted)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:].sub_(err.unsqueeze(1) * U1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        losses += (Err1 * Err1).sum(1)
        Wd[:, i2:].sub_(Err1 @ U[i1:i2, i2:])

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return GPTQResult(Q.to(W.dtype), grid.encode(Q, fitted), float(losses.sum()) / 2, damp_used, perm)


def mr_gptq(W: torch.Tensor, H: torch.Tensor, fmt: str = "mxfp4", *, hadamard_block: int | None = None,
            signs: torch.Tensor | None = None, act_order: bool = True, scale_search: str = "mse",
            scale_mode: str = "floor", global_amax: float | None = None, **gptq_kwargs) -> MRGPTQResult:
    """Micro-rotated GPTQ: ``W ← W R``, ``H ← Rᵀ H R`` with the block Hadamard R (default block = the format's
    group, 32 for MXFP4 and 16 for NVFP4), static scales fitted on the rotated W (``scale_search="mse"``:
    least squared error including the scale's own E8M0/E4M3 rounding), then GPTQ with static act-order.
    ``weight`` is in the rotated basis: ``y ≈ block_hadamard(x, b, signs=signs) @ weight.T``.
    ``H`` must be symmetric within the tolerance of ``gptq`` (checked before the rotation).
    """
    if not isinstance(fmt, str) or fmt not in ("mxfp4", "nvfp4"):
        raise ValueError(f"fmt={fmt!r} is not one of 'mxfp4', 'nvfp4'")
    check_bool(act_order, "act_order")
    if fmt == "mxfp4":
        grid: Grid = MXGrid("e2m1", 32, scale_mode, scale_search=scale_search)
    elif fmt == "nvfp4":
        grid = NVFP4Grid("te", 16, global_amax, scale_search=scale_search)
    else:
        raise ValueError(f"fmt={fmt!r} is not one of 'mxfp4', 'nvfp4'")
    if not isinstance(W, torch.Tensor) or not W.is_floating_point() or W.dim() != 2:
        raise TypeError(f"W must be a 2-D floating-point tensor, got {getattr(W, 'shape', type(W))}")
    if not isinstance(H, torch.Tensor) or not H.is_floating_point():
        raise TypeError(f"H must be a floating-point tensor, got {getattr(H, 'dtype', type(H).__name__)}")
    if tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be a ({W.shape[1]}, {W.shape[1]}) tensor for W of shape {tuple(W.shape)}")
    check_not_meta(W, "W")
    check_not_meta(H, "H")
    name = gptq_kwargs.get("name")
    if not bool(torch.isfinite(H).all()):
        raise torch.linalg.LinAlgError(f"{_layer(name if isinstance(name, str) else None)}: H holds NaN or Inf")
    check_symmetric(H, "H", name if isinstance(name, str) else None)
    block = grid.group_size if hadamard_block is None else check_block_size(hadamard_block, "hadamard_block")
    W_rot, H_rot = rotate_layer(W, H, block, signs)
    res = gptq(W_rot, H_rot, grid, act_order=act_order, **gptq_kwargs)
    return MRGPTQResult(res.weight.to(W.dtype), res.quantized, res.loss, res.damp_used, res.perm,
                        Rotation(block, None if signs is None else signs.clone()))


__all__ = [
    "GPTQResult",
    "HessianAccumulator",
    "MRGPTQResult",
    "Rotation",
    "check_symmetric",
    "damp_ladder",
    "gptq",
    "inverse_hessian_factor",
    "mr_gptq",
    "rotate_layer",
    "symmetry_tolerance",
]
