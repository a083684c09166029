"""QEP (SPEC §12): accumulator formulas, α = 0 is the base target, α = 1 and λ = 0 is least squares,
the objective falls with α, per-layer α by name, and QEP + GPTQ beats GPTQ alone on propagated error."""
from __future__ import annotations

import itertools

import pytest
import torch

from fp4ref.gptq import gptq
from fp4ref.grids import IntGrid
from fp4ref.qep import ORIGINAL_DAMP, ORIGINAL_EXCLUDE, QEPAccumulator, alpha_for, qep_target


def inputs(n: int = 512, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-precision inputs X and a perturbed X̂ (as if an earlier layer were quantized), float64."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    X = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    X_hat = X + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.05 * X.roll(1, dims=1)
    return X, X_hat


def weight(rows: int = 24, d: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def objective(W: torch.Tensor, W_star: torch.Tensor, X: torch.Tensor, X_hat: torch.Tensor) -> float:
    return float((X @ W.T - X_hat @ W_star.T).pow(2).sum())


def accumulate(X: torch.Tensor, X_hat: torch.Tensor) -> QEPAccumulator:
    acc = QEPAccumulator(X.shape[1])
    for a in range(0, X.shape[0], 100):  # in batches: the sums must not depend on the split
        acc.add(X_hat[a:a + 100], X[a:a + 100])
    return acc


def test_accumulator_formulas():
    X, X_hat = inputs()
    acc = accumulate(X, X_hat.reshape(8, 64, 64).reshape(512, 64))
    n = X.shape[0]
    torch.testing.assert_close(acc.H, 2.0 / n * X_hat.T @ X_hat, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(acc.H_delta, 2.0 / n * (X - X_hat).T @ X_hat, rtol=1e-13, atol=1e-12)
    assert acc.n_tokens == n
    with pytest.raises(ValueError, match="same tokens"):
        acc.add(X_hat[:3], X[:4])
    with pytest.raises(ValueError, match="no inputs"):
        _ = QEPAccumulator(4).H_delta


def test_alpha_zero_is_the_base_target():
    X, X_hat = inputs()
    acc = accumulate(X, X_hat)
    W = weight().float()
    out = qep_target(W, acc.H, acc.H_delta, alpha=0.0)
    assert torch.equal(out, W) and out.dtype == W.dtype


def test_alpha_one_without_damping_is_least_squares():
    X, X_hat = inputs()
    acc = accumulate(X, X_hat)
    W = weight()
    W_star = qep_target(W, acc.H, acc.H_delta, alpha=1.0, damp=0.0)
    # min over W* of ‖X Wᵀ − X̂ W*ᵀ‖: W*ᵀ = lstsq(X̂, X Wᵀ)
    ref = torch.linalg.lstsq(X_hat, X @ W.T, driver="gelsd").solution.T
    torch.testing.assert_close(W_star, ref, rtol=1e-10, atol=1e-10)
    assert objective(W, W_star, X, X_hat) < 0.8 * objective(W, W, X, X_hat)


@pytest.mark.parametrize("damp", [0.0, 0.01])
def test_objective_decreases_in_alpha(damp):
    X, X_hat = inputs(seed=2)
    acc = accumulate(X, X_hat)
    W = weight(seed=3)
    vals = [objective(W, qep_target(W, acc.H, acc.H_delta, alpha=a, damp=damp), X, X_hat)
            for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(b < a for a, b in itertools.pairwise(vals)), vals


def test_original_correction_damping_is_weaker():
    X, X_hat = inputs(seed=4)
    acc = accumulate(X, X_hat)
    W = weight(seed=5)
    base = objective(W, W, X, X_hat)
    paper = objective(W, qep_target(W, acc.H, acc.H_delta, alpha=0.5, damp=0.01), X, X_hat)
    orig = objective(W, qep_target(W, acc.H, acc.H_delta, alpha=0.5, damp=ORIGINAL_DAMP), X, X_hat)
    assert paper < orig < base  # λ = mean(diag) shrinks the correction but keeps its direction


def test_dead_inputs():
    X, X_hat = inputs(seed=6)
    X[:, 10] = X_hat[:, 10] = 0
    acc = accumulate(X, X_hat)
    W = weight(seed=7)
    W_star = qep_target(W, acc.H, acc.H_delta, alpha=1.0, damp=0.0)
    assert torch.isfinite(W_star).all()
    assert torch.equal(W_star[:, 10], W[:, 10])  # no correction flows into a channel that never fires
    with pytest.raises(torch.linalg.LinAlgError, match="'l.0'"):
        qep_target(W, -acc.H, acc.H_delta, alpha=1.0, name="l.0")


def test_qep_then_gptq_reduces_propagated_error():
    X, X_hat = inputs(n=1024, d=128, seed=8)
    acc = accumulate(X, X_hat)
    W = weight(32, 128, seed=9)
    grid = IntGrid(4, 32)
    plain = gptq(W, acc.H, grid).weight
    corrected = gptq(qep_target(W, acc.H, acc.H_delta, alpha=0.5), acc.H, grid).weight
    assert objective(W, corrected, X, X_hat) < objective(W, plain, X, X_hat)


def test_alpha_for_patterns():
    assert alpha_for("model.layers.3.mlp.down_proj", 0.5, ORIGINAL_EXCLUDE) == 0.0
    assert alpha_for("model.layers.3.mlp.up_proj", 0.5, ORIGINAL_EXCLUDE) == 0.5
    assert alpha_for("model.layers.3.self_attn.q_proj", 0.25) == 0.25
    pats = {r"\.mlp\.": 0.0, r"q_proj|k_proj": 1.0}
    assert alpha_for("layers.0.mlp.gate_proj", 0.5, pats) == 0.0
    assert alpha_for("layers.0.self_attn.k_proj", 0.5, pats) == 1.0


def test_bad_arguments():
    W = weight()
    I = torch.eye(64, dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha"):
        qep_target(W, I, I, alpha=1.5)
    with pytest.raises(ValueError, match="H_delta"):
        qep_target(W, I, torch.eye(8))
    with pytest.raises(ValueError, match="damp"):
        qep_target(W, I, I, damp=-1.0)
    with pytest.raises(torch.linalg.LinAlgError, match="NaN"):
        qep_target(W, I * float("nan"), I)
