"""GPTQ and MR-GPTQ (SPEC §10–§11): RTN equivalences, block-size invariance, the original algorithm,
loss bookkeeping, damping policy, error reduction, and the rotation step."""
from __future__ import annotations

import pytest
import torch

from fp4ref.gptq import GPTQResult, HessianAccumulator, MRGPTQResult, gptq, mr_gptq, rotate_layer
from fp4ref.grids import IntGrid, MXGrid, NVFP4Grid
from fp4ref.hadamard import block_hadamard, hadamard_matrix
from fp4ref.mx import quantize_mx
from fp4ref.nvfp4 import quantize_nvfp4

GRIDS = {
    "int4": lambda: IntGrid(4, 32),
    "int4_asym": lambda: IntGrid(4, 32, symmetric=False),
    "mxfp4": lambda: MXGrid("e2m1", 32, "floor"),
    "mxfp4_stretch": lambda: MXGrid("e2m1", 32, "stretch"),
    "nvfp4": lambda: NVFP4Grid("te", 16),
}


def codes_of(q) -> torch.Tensor:
    """Every integer field of an encoded tensor, flattened and concatenated, for torch.equal."""
    parts = [q.codes if hasattr(q, "zeros") else q.data, q.scales if q.scales.dtype == torch.uint8 else
             q.scales.double().view(torch.int64)]
    return torch.cat([p.reshape(-1).to(torch.int64) for p in parts])


def correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Tokens with correlated channels and uneven channel scales, as real activations have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d) + torch.randn(d, d, generator=g) / d**0.5
    return (torch.randn(n, d, generator=g) @ mix) * torch.rand(d, generator=g).add(0.2)


def layer_err(W: torch.Tensor, Q: torch.Tensor, X: torch.Tensor) -> float:
    return float(((W.double() - Q.double()) @ X.double().T).pow(2).sum())


def weight(rows: int, cols: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.05


# --- a plain transcription of gptq.py's fasterquant and its Quantizer (IST-DASLab/gptq, quant.py) ---------
def orig_find_params(x: torch.Tensor, maxq: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    tmp = torch.zeros(x.shape[0], dtype=x.dtype)
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        tmp = xmin < 0
        if torch.any(tmp):
            xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def orig_quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def orig_fasterquant(W, H, blocksize=128, percdamp=0.01, groupsize=-1, bits=4, sym=True, dtype=torch.float64):
    W = W.clone().to(dtype)
    H = H.clone().to(dtype)
    maxq = 2**bits - 1
    scale, zero = orig_find_params(W, maxq, sym)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(W.shape[1])
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1 and (i1 + i) % groupsize == 0:
                scale, zero = orig_find_params(W[:, (i1 + i):(i1 + i + groupsize)], maxq, sym)
            q = orig_quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q, float(torch.sum(Losses))


# --- HessianAccumulator ------------------------------------------------------------------------------------
def test_hessian_accumulator_matches_formula():
    X = correlated(300, 24)
    acc = HessianAccumulator(24)
    acc.add(X[:100].reshape(4, 25, 24))  # (batch, seq, d): every row is a token
    acc.add(X[100:])
    assert acc.n_tokens == 300
    ref = 2.0 / 300 * X.double().T @ X.double()
    torch.testing.assert_close(acc.H, ref, rtol=1e-13, atol=1e-13)
    assert acc.H.dtype == torch.float64
    with pytest.raises(ValueError, match="last dimension"):
        acc.add(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="no inputs"):
        _ = HessianAccumulator(4).H


# --- GPTQ equals RTN when H is diagonal ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("act_order", [False, True])
def test_diagonal_hessian_is_rtn(name, act_order):
    grid = GRIDS[name]()
    W = weight(24, 128)
    g = torch.Generator().manual_seed(5)
    for H in (torch.eye(128), torch.diag(torch.rand(128, generator=g) + 0.1)):
        res = gptq(W, H, grid, act_order=act_order, block_size=32)
        rtn = grid.rtn(W)
        assert res.weight.dtype == W.dtype and res.weight.shape == W.shape
        assert torch.equal(res.weight, rtn)
        assert torch.equal(codes_of(res.quantized), codes_of(grid.encode(rtn, grid.fit(W))))


def test_diagonal_hessian_matches_core_quantizers():
    W = weight(16, 256)
    H = torch.diag(torch.linspace(0.5, 2.0, 256))
    for mode in ("floor", "ceil", "even", "rceil", "stretch"):
        res = gptq(W, H, MXGrid("e2m1", 32, mode), act_order=True)
        ref = quantize_mx(W, "e2m1", block_size=32, scale_mode=mode)
        assert torch.equal(res.quantized.data, ref.data) and torch.equal(res.quantized.scales, ref.scales), mode
        assert torch.equal(res.weight, ref.dequantize())
    res = gptq(W, H, NVFP4Grid("te", 16))
    ref = quantize_nvfp4(W)
    assert torch.equal(res.quantized.data, ref.data) and torch.equal(res.quantized.scales, ref.scales)
    assert torch.equal(res.quantized.global_scale, ref.global_scale)
    assert torch.equal(res.weight, ref.dequantize())


# --- static scales: the result does not depend on block_size --------------------------------------------------
@pytest.mark.parametrize("name", ["int4", "mxfp4", "nvfp4"])
def test_static_scales_block_size_invariant(name):
    grid = GRIDS[name]()
    X = correlated(512, 128)
    H = HessianAccumulator(128)
    H.add(X)
    W = weight(32, 128)
    ref = gptq(W, H.H, grid, block_size=128, act_order=True)
    assert not torch.equal(ref.weight, grid.rtn(W))  # H is far from diagonal: GPTQ moved something
    for b in (1, 16, 32, 48, 512):
        res = gptq(W, H.H, grid, block_size=b, act_order=True)
        assert torch.equal(codes_of(res.quantized), codes_of(ref.quantized)), b
        assert abs(res.loss - ref.loss) <= 1e-9 * ref.loss


# --- dynamic scales reproduce the original gptq.py -------------------------------------------------------------
@pytest.mark.parametrize("groupsize,blocksize,sym", [(32, 128, True), (128, 128, True), (32, 64, False),
                                                    (48, 32, True)])
def test_dynamic_scales_reproduce_original(groupsize, blocksize, sym):
    X = correlated(400, 192, seed=3)
    H = 2.0 / 400 * X.double().T @ X.double()
    W = weight(40, 192, seed=4)
    Q_ref, loss_ref = orig_fasterquant(W, H, blocksize, 0.01, groupsize, 4, sym)
    res = gptq(W, H, IntGrid(4, groupsize, symmetric=sym), block_size=blocksize, scales="dynamic")
    assert torch.equal(res.quantized.dequantize(torch.float64), Q_ref)
    assert torch.equal(res.weight, Q_ref.float())
    assert abs(res.loss - loss_ref) <= 1e-12 * loss_ref
    static = gptq(W, H, IntGrid(4, groupsize, symmetric=sym), block_size=blocksize)
    assert not torch.equal(static.weight, res.weight)  # the two scale policies are really different


def test_float32_mode_reproduces_original_precision():
    X = correlated(400, 128, seed=5)
    H = 2.0 / 400 * X.T @ X  # float32, as gptq.py accumulates it
    W = weight(40, 128, seed=6)
    Q_ref, loss_ref = orig_fasterquant(W, H, 64, 0.01, 32, 4, True, dtype=torch.float32)
    res = gptq(W, H, IntGrid(4, 32, dtype=torch.float32), block_size=64, scales="dynamic", dtype=torch.float32)
    assert torch.equal(res.weight, Q_ref)
    assert abs(res.loss - loss_ref) <= 1e-5 * loss_ref


def test_dynamic_stale_scales_depend_on_block_size():
    # gptq.py's groups that start inside a block see weights without that block's updates.
    X = correlated(400, 128, seed=3)
    H = 2.0 / 400 * X.double().T @ X.double()
    W = weight(40, 128, seed=4)
    a = gptq(W, H, IntGrid(4, 16), block_size=16, scales="dynamic")
    b = gptq(W, H, IntGrid(4, 16), block_size=128, scales="dynamic")
    assert not torch.equal(a.weight, b.weight)
    assert torch.equal(a.quantized.dequantize(torch.float64), orig_fasterquant(W, H, 16, 0.01, 16)[0])


# --- the loss -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["int4", "mxfp4", "nvfp4"])
def test_loss_equals_recomputation(name):
    # Σ (w−q)²/U_ii²/2 telescopes to ½ Σ_rows (w − q)ᵀ (H + λI) (w − q) (OBS updates are exact).
    grid = GRIDS[name]()
    X = correlated(300, 96, seed=2)
    H = 2.0 / 300 * X.double().T @ X.double()
    H[:, 7] = H[7, :] = 0  # one dead input
    W = weight(20, 96)
    res = gptq(W, H, grid, act_order=True, block_size=32)
    Wz = W.double().clone()
    Wz[:, 7] = 0
    Hd = H.clone()
    Hd[7, 7] = 1
    Hd.diagonal().add_(res.damp_used * float(torch.diagonal(Hd).mean()))
    D = Wz - res.quantized.dequantize(torch.float64)  # float64 grid values (int4 values round in float32)
    assert abs(res.loss - 0.5 * float(torch.einsum("ri,ij,rj->", D, Hd, D))) <= 1e-9 * res.loss
    assert torch.equal(res.weight[:, 7], torch.zeros(20))


# --- GPTQ beats RTN on correlated data ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("act_order", [False, True])
def test_layer_loss_below_rtn(name, act_order):
    grid = GRIDS[name]()
    X = correlated(1024, 256, seed=6)
    acc = HessianAccumulator(256)
    acc.add(X)
    W = weight(64, 256, seed=7)
    res = gptq(W, acc.H, grid, act_order=act_order)
    assert layer_err(W, res.weight, X) < 0.85 * layer_err(W, grid.rtn(W), X)


def test_float32_mode_and_dtypes():
    X = correlated(256, 64)
    H = 2.0 / 256 * X.T @ X
    W = weight(8, 64).to(torch.bfloat16)
    r64 = gptq(W, H, MXGrid(), block_size=16)
    r32 = gptq(W, H, MXGrid(), block_size=16, dtype=torch.float32)
    assert r64.weight.dtype == r32.weight.dtype == torch.bfloat16
    assert torch.equal(r64.quantized.dequantize(torch.bfloat16), r64.weight)
    # float32 rounding may flip a few codes, no more.
    assert (r64.weight != r32.weight).float().mean() < 0.02
    assert isinstance(r64, GPTQResult) and r64.perm is None


# --- damping policy ------------------------------------------------------------------------------------------
def test_duplicated_inputs_need_the_damping():
    X = correlated(200, 64)
    X[:, 5] = X[:, 9]  # two identical input channels: H is singular
    H = 2.0 / 200 * X.double().T @ X.double()
    W = weight(16, 64)
    res = gptq(W, H, IntGrid(4, 32))
    assert res.damp_used == 0.01
    with pytest.raises(torch.linalg.LinAlgError, match="'dup'"):
        gptq(W, H, IntGrid(4, 32), damp=0.0, damp_retries=0, name="dup")
    res0 = gptq(W, H, IntGrid(4, 32), damp=0.0, damp_retries=3)
    assert 0 < res0.damp_used <= 1e-4
    assert layer_err(W, res0.weight, X) < layer_err(W, IntGrid(4, 32).rtn(W), X)


def test_dead_inputs_are_zeroed():
    X = correlated(200, 64)
    X[:, [3, 40]] = 0
    H = 2.0 / 200 * X.double().T @ X.double()
    W = weight(16, 64)
    for damp in (0.01, 0.0):
        res = gptq(W, H, NVFP4Grid(), damp=damp, damp_retries=0, act_order=True)
        assert torch.equal(res.weight[:, [3, 40]], torch.zeros(16, 2))
        assert res.damp_used == damp


def test_retry_multiplies_damp_by_ten():
    d = 64
    v = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v /= v.norm()
    H = torch.eye(d, dtype=torch.float64) - 1.05 * torch.outer(v, v)  # smallest eigenvalue -0.05
    W = weight(8, d)
    res = gptq(W, H, IntGrid(4, 32), damp=0.01, damp_retries=3)
    assert res.damp_used == pytest.approx(0.1)
    with pytest.raises(torch.linalg.LinAlgError, match="'model.layers.3.mlp.up_proj'"):
        gptq(W, H, IntGrid(4, 32), damp=0.01, damp_retries=0, name="model.layers.3.mlp.up_proj")


@pytest.mark.parametrize("H", [-torch.eye(32), torch.full((32, 32), float("nan"))])
def test_hopeless_hessian_names_the_layer(H):
    with pytest.raises(torch.linalg.LinAlgError, match="'blk.0.q'"):
        gptq(weight(4, 32), H, IntGrid(4, 32), name="blk.0.q")


def test_bad_arguments():
    W, H = weight(4, 32), torch.eye(32)
    with pytest.raises(ValueError, match="act_order"):
        gptq(W, H, IntGrid(), act_order=True, scales="dynamic")
    with pytest.raises(ValueError, match="scales"):
        gptq(W, H, IntGrid(), scales="fresh")
    with pytest.raises(ValueError, match="H must be"):
        gptq(W, torch.eye(16), IntGrid())
    with pytest.raises(TypeError, match="grid"):
        gptq(W, H, "mxfp4")
    with pytest.raises(ValueError, match="block_size"):
        gptq(W, H, IntGrid(), block_size=0)
    with pytest.raises(ValueError, match="multiple of the group size"):
        gptq(weight(4, 40), torch.eye(40), MXGrid())


# --- MR-GPTQ ----------------------------------------------------------------------------------------------------
def dense_rotation(d: int, b: int, signs: torch.Tensor | None) -> torch.Tensor:
    """R with x ← x R: block-diagonal diag(signs)·H_b/√b, from hadamard_matrix (independent of the butterfly)."""
    Hb = hadamard_matrix(b, torch.float64) / b**0.5
    R = torch.block_diag(*[Hb] * (d // b))
    s = torch.ones(d, dtype=torch.float64) if signs is None else signs.double().repeat(d // signs.numel())
    return torch.diag(s) @ R


@pytest.mark.parametrize("b", [16, 32, 128])
def test_rotation_step_preserves_the_layer(b):
    d = 256
    g = torch.Generator().manual_seed(b)
    signs = (torch.randint(0, 2, (b,), generator=g) * 2 - 1).double()
    X = correlated(100, d).double()
    W = weight(12, d).double()
    W_rot, H_rot = rotate_layer(W, 2.0 / 100 * X.T @ X, b, signs)
    R = dense_rotation(d, b, signs)
    torch.testing.assert_close(W_rot, W @ R, rtol=0, atol=1e-15)
    X_rot = block_hadamard(X, b, signs=signs)
    torch.testing.assert_close(X_rot, X @ R, rtol=0, atol=1e-14)
    torch.testing.assert_close(X_rot @ W_rot.T, X @ W.T, rtol=0, atol=1e-14)  # the layer's function
    torch.testing.assert_close(H_rot, 2.0 / 100 * X_rot.T @ X_rot, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_mr_gptq_identity_hessian_is_rotated_rtn(fmt):
    W = weight(16, 128)
    res = mr_gptq(W, torch.eye(128), fmt, scale_search="absmax")
    assert isinstance(res, MRGPTQResult) and res.rotation.block_size == (32 if fmt == "mxfp4" else 16)
    W_rot = block_hadamard(W, res.rotation.block_size)
    ref = quantize_mx(W_rot) if fmt == "mxfp4" else quantize_nvfp4(W_rot)
    assert torch.equal(res.quantized.data, ref.data) and torch.equal(res.quantized.scales, ref.scales)
    assert torch.equal(res.weight, ref.dequantize())


@pytest.mark.parametrize("fmt,mode", [("mxfp4", "floor"), ("mxfp4", "stretch"), ("nvfp4", "floor")])
def test_mr_gptq_reduces_layer_error(fmt, mode):
    d = 256
    X = correlated(1024, d, seed=8)
    X[:, ::37] *= 8  # outlier channels, which the rotation spreads
    acc = HessianAccumulator(d)
    acc.add(X)
    W = weight(48, d, seed=9)
    signs = (torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(1)) * 2 - 1).float()
    res = mr_gptq(W, acc.H, fmt, hadamard_block=32, signs=signs, scale_mode=mode)
    X_rot = res.rotation.apply(X)
    err = float((X_rot.double() @ res.weight.double().T - X.double() @ W.double().T).pow(2).sum())
    grid = MXGrid("e2m1", 32, mode) if fmt == "mxfp4" else NVFP4Grid()
    rtn_rot = grid.rtn(block_hadamard(W, 32, signs=signs))
    err_rtn = float((X_rot.double() @ rtn_rot.double().T - X.double() @ W.double().T).pow(2).sum())
    assert err < 0.85 * err_rtn
    assert res.perm is not None  # static act-order is MR-GPTQ's default
    assert torch.equal(res.quantized.dequantize(), res.weight)


def test_mr_gptq_bad_format():
    with pytest.raises(ValueError, match="fmt"):
        mr_gptq(weight(4, 32), torch.eye(32), "int4")
