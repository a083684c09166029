"""QEP: quantization error propagation (SPEC §12).

A layer sees inputs X̂ from the partly quantized model instead of the full-precision X (rows = tokens).
QEP quantizes a corrected target instead of W: ``W* = W + α · W · H_δ · (Ĥ + λI)⁻¹`` with
``Ĥ = (2/n) Σ x̂ x̂ᵀ`` and ``H_δ = (2/n) Σ δ x̂ᵀ``, δ = x − x̂. With α = 1, λ = 0, W* minimizes
``‖X Wᵀ − X̂ W*ᵀ‖``; α = 0 is the base method. GPTQ (or RTN) then quantizes W* with Hessian Ĥ.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .codecs import check_float_dtype, check_not_meta, check_real
from .gptq import WORK_DTYPES, HessianAccumulator, check_symmetric

ORIGINAL_EXCLUDE = {r"down_proj": 0.0}  # FujitsuResearch/qep never corrects mlp.down_proj
ORIGINAL_DAMP = 1.0  # the original code's correction damping: 100 % of mean(diag Ĥ) (--percdampqep)
PAPER_ALPHA = 0.5


class QEPAccumulator:
    """Accumulates ``Ĥ = (2/n) Σ x̂ x̂ᵀ`` and ``H_δ = (2/n) Σ (x − x̂) x̂ᵀ`` over n tokens, in ``dtype``."""

    def __init__(self, d: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self._hat = HessianAccumulator(d, dtype, device)  # Ĥ is GPTQ's Hessian of the quantized-prefix inputs
        self.d = d
        self._dh = torch.zeros(d, d, dtype=dtype, device=device)

    @property
    def n_tokens(self) -> int:
        return self._hat.n_tokens

    def add(self, x_hat: torch.Tensor, x_full: torch.Tensor) -> None:
        """Adds matching tokens: ``x_hat`` from the quantized prefix, ``x_full`` from the full-precision model."""
        xh, xf = self._hat.rows(x_hat, "x_hat"), self._hat.rows(x_full, "x_full")
        if xh.shape != xf.shape:
            raise ValueError(f"x_hat and x_full must hold the same tokens, got shapes {tuple(x_hat.shape)} "
                             f"and {tuple(x_full.shape)}")
        self._hat.add(xh)
        self._dh.addmm_((xf - xh).T, xh)

    @property
    def H(self) -> torch.Tensor:
        return self._hat.H

    @property
    def H_delta(self) -> torch.Tensor:
        if self.n_tokens == 0:
            raise ValueError("no inputs were added: H_delta is undefined")
        return self._dh * (2.0 / self.n_tokens)


def qep_target(W: torch.Tensor, H_hat: torch.Tensor, H_delta: torch.Tensor, alpha: float = PAPER_ALPHA,
               damp: float = 0.01, *, name: str | None = None, dtype: torch.dtype = torch.float64,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``W* = W + α · W · H_δ · (Ĥ + λI)⁻¹``, ``λ = damp · mean(diag Ĥ)``, computed in ``dtype``.

    Dead inputs (``diag Ĥ == 0``) get a unit diagonal, as in GPTQ (their H_δ column is 0, so W* keeps W
    there). Returned in ``out_dtype`` (default W's dtype). A Ĥ + λI that is not positive definite raises
    ``torch.linalg.LinAlgError`` naming the layer. ``H_hat`` must be symmetric within the tolerance of
    ``fp4ref.gptq.check_symmetric`` (ValueError otherwise); ``H_delta`` is not symmetric in general.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if not isinstance(W, torch.Tensor) or not W.is_floating_point() or W.dim() != 2:
        raise TypeError(f"W must be a 2-D floating-point tensor, got {getattr(W, 'shape', type(W))}")
    check_not_meta(W, "W")
    d = W.shape[1]
    for arg, t in (("H_hat", H_hat), ("H_delta", H_delta)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{arg} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if tuple(t.shape) != (d, d):
            raise ValueError(f"{arg} must be a ({d}, {d}) tensor for W of shape {tuple(W.shape)}, "
                             f"got {getattr(t, 'shape', type(t))}")
        check_not_meta(t, arg)
    check_real(alpha, "alpha", min=0.0, max=1.0)
    check_real(damp, "damp", min=0.0)
    check_float_dtype(dtype, allowed=WORK_DTYPES)
    if out_dtype is not None:
        check_float_dtype(out_dtype, "out_dtype")
    out_dtype = W.dtype if out_dtype is None else out_dtype
    if alpha == 0:
        return W.detach().to(out_dtype, copy=True)
    layer = f"layer {name!r}" if name else "layer"
    Wd = W.detach().to(dtype)
    Hh = H_hat.detach().to(device=W.device, dtype=dtype).clone()
    Hdelta = H_delta.detach().to(device=W.device, dtype=dtype)
    if not bool(torch.isfinite(Hh).all() and torch.isfinite(Hdelta).all()):
        raise torch.linalg.LinAlgError(f"{layer}: H_hat or H_delta holds NaN or Inf")
    check_symmetric(H_hat, "H_hat", name)
    dead = torch.diagonal(Hh) == 0
    Hh[dead, dead] = 1.0
    Hh.diagonal().add_(damp * float(torch.diagonal(Hh).mean()))
    L, info = torch.linalg.cholesky_ex(Hh)
    if int(info) != 0:
        raise torch.linalg.LinAlgError(f"{layer}: H_hat + λI (damp={damp:g}) is not positive definite; "
                                       "raise damp or check the calibration inputs")
    # W H_δ Ĥ⁻¹ = (Ĥ⁻¹ H_δᵀ Wᵀ)ᵀ, Ĥ symmetric.
    corr = torch.cholesky_solve(Hdelta.T @ Wd.T, L).T
    return (Wd + alpha * corr).to(out_dtype)


def alpha_for(name: str, alpha: float = PAPER_ALPHA, patterns: Mapping[str, float] | None = None) -> float:
    """α of layer ``name``: the value of the first regex in ``patterns`` found in ``name``, else ``alpha``.

    ``patterns=ORIGINAL_EXCLUDE`` reproduces the original code (``down_proj`` never corrected).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    alpha = check_real(alpha, "alpha", min=0.0, max=1.0)
    if patterns is not None and not isinstance(patterns, Mapping):
        raise TypeError(f"patterns must be a mapping of regex -> alpha, got {type(patterns).__name__}")
    for pattern, value in (patterns or {}).items():
        if not isinstance(pattern, str):
            raise TypeError(f"patterns' keys must be regex strings, got {type(pattern).__name__}")
        if re.search(pattern, name):
            return check_real(value, f"patterns[{pattern!r}]", min=0.0, max=1.0)
    return alpha


__all__ = ["ORIGINAL_DAMP", "ORIGINAL_EXCLUDE", "PAPER_ALPHA", "QEPAccumulator", "alpha_for", "qep_target"]
