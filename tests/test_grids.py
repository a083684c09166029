"""fp4ref.grids (SPEC §10): RTN through a grid equals the core quantizers code for code, column quantization
equals matrix quantization, encode reproduces on-grid weights, and the MSE scale search never loses to absmax."""
from __future__ import annotations

import pytest
import torch

from fp4ref.grids import IntGrid, MXGrid, NVFP4Grid, make_grid
from fp4ref.mx import SCALE_MODES, quantize_mx
from fp4ref.nvfp4 import quantize_nvfp4

E2M1_TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]


def edge_matrix(cols: int = 64, seed: int = 0) -> torch.Tensor:
    """Random rows at many magnitudes plus rows of E2M1 ties, clipping, zeros and float32 subnormals."""
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(12, cols, generator=g) * torch.exp2(torch.randint(-20, 20, (12, 1), generator=g).float())
    ties = torch.tensor(E2M1_TIES + [-4.0] + [-t for t in E2M1_TIES] + [4.0] * 1, dtype=torch.float32)
    ties = ties.repeat(cols // ties.numel() + 1)[:cols]
    special = torch.stack([
        ties, ties * 2.0**-10, ties * 1.75,  # ties at several scales, and amax 7 = 1.75·4 (floor clips)
        torch.zeros(cols), torch.full((cols,), 1e-41), torch.linspace(-6.5, 6.5, cols),
        torch.full((cols,), -0.0), torch.linspace(-1, 1, cols) * 1e37,
    ])
    return torch.cat([rand, special])


def fp4_codes(q) -> torch.Tensor:
    return torch.cat([q.data.reshape(-1), q.scales.reshape(-1)])


# --- RTN through a grid is the core quantizer -------------------------------------------------------------
@pytest.mark.parametrize("mode,elem", [(m, e) for m in SCALE_MODES for e in ("e2m1", "e4m3", "e2m3")
                                       if m != "stretch" or e == "e2m1"])
def test_mx_rtn_equals_quantize_mx(mode, elem):
    W = edge_matrix()
    grid = MXGrid(elem, 32, mode)
    ref = quantize_mx(W, elem, block_size=32, scale_mode=mode)
    rtn = grid.rtn(W)
    assert torch.equal(rtn, ref.dequantize())
    q = grid.encode(rtn, grid.fit(W))
    assert torch.equal(q.data, ref.data) and torch.equal(q.scales, ref.scales)
    assert q.scale_mode == mode and q.elem == elem and tuple(q.shape) == tuple(W.shape)
    # float64 input holding the same values gives the same codes (GPTQ works in float64).
    assert torch.equal(grid.rtn(W.double()), ref.dequantize(torch.float64))


@pytest.mark.parametrize("recipe", ["te", "torchao"])
@pytest.mark.parametrize("global_amax", [None, 3.0])
def test_nvfp4_rtn_equals_quantize_nvfp4(recipe, global_amax):
    W = edge_matrix()[:13] * 1e-3  # finite amax well inside the recipes' ranges
    grid = NVFP4Grid(recipe, 16, global_amax)
    ref = quantize_nvfp4(W, recipe=recipe, global_amax=global_amax)
    rtn = grid.rtn(W)
    assert torch.equal(rtn, ref.dequantize())
    q = grid.encode(rtn, grid.fit(W))
    assert torch.equal(q.scales, ref.scales)
    # A block whose E4M3 scale underflows to 0 dequantizes to 0 whatever its codes: quantize_nvfp4 leaves
    # the saturated codes of x·FLT_MAX there, encode writes the code of ±0 (same values).
    live = (ref.scales != 0).repeat_interleave(8, dim=1)
    assert torch.equal(q.data[live], ref.data[live])
    assert ((q.data[~live] & 0x77) == 0).all()  # ±0
    assert torch.equal(q.global_scale, ref.global_scale) and q.recipe == recipe
    assert torch.equal(grid.rtn(W.double()), ref.dequantize(torch.float64))


def test_int_grid_hand_values():
    W = torch.tensor([[0.5, -1.0, 0.25, 0.0], [0.5, 1.0, 0.25, 0.75], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    sym = IntGrid(2, None).rtn(W)
    t = 2.0 / 3.0
    # scale 2·max|x|/3, zero 2: codes -2..1; round(-1.5) = -2 (half to even), 1.5 -> 2 clamps to 1
    torch.testing.assert_close(sym, torch.tensor([[t, -2 * t, 0, 0], [t, t, 0, t], [0, 0, 0, 0]],
                                                 dtype=torch.float64), rtol=0, atol=0)
    asym = IntGrid(2, None, symmetric=False).rtn(W)
    # row 0: range [-1, 0.5], scale 0.5, zero 2; row 1: range [0, 1], scale 1/3, zero 0
    third = 1.0 / 3.0
    expect = torch.tensor([[0.5, -1.0, 0.0, 0.0], [third * 2, third * 3, third * 1, third * 2], [0, 0, 0, 0]],
                          dtype=torch.float64)
    torch.testing.assert_close(asym, expect, rtol=0, atol=0)


def test_int_grid_groups_and_partial_last_group():
    W = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    grid = IntGrid(4, 16)
    whole = grid.rtn(W)
    for a, b in ((0, 16), (16, 32), (32, 40)):  # each group on its own: the same as the grouped result
        assert torch.equal(whole[:, a:b], IntGrid(4, None).rtn(W[:, a:b]))
    assert grid.fit(W).scale.shape == (5, 3)


# --- column quantization is matrix quantization ---------------------------------------------------------------
GRIDS = [IntGrid(4, 32), IntGrid(3, 32, symmetric=False), MXGrid("e2m1", 32, "floor"),
         MXGrid("e2m1", 32, "stretch"), MXGrid("e4m3", 32, "rceil"), NVFP4Grid("te"), NVFP4Grid("torchao"),
         MXGrid("e2m1", 32, scale_search="mse"), NVFP4Grid(scale_search="mse")]


@pytest.mark.parametrize("grid", GRIDS, ids=repr)
def test_quantize_column_matches_matrix(grid):
    W = edge_matrix()[:12].double() * 1e-4
    W = W + torch.randn(W.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1e-9
    fitted = grid.fit(W)
    full = grid.quantize(W, fitted)
    cols = torch.stack([grid.quantize_column(W[:, c], c, fitted) for c in range(W.shape[1])], 1)
    assert full.dtype == cols.dtype == torch.float64
    assert torch.equal(cols, full)
    q = grid.encode(full, fitted)
    assert torch.equal(q.dequantize(torch.float64), full)


@pytest.mark.parametrize("grid", GRIDS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_reproduces_on_grid_weights(grid, dtype):
    W = (torch.randn(8, 64, generator=torch.Generator().manual_seed(4)) * 0.02).to(dtype)
    fitted = grid.fit(W)
    rtn = grid.rtn(W)
    assert rtn.dtype == dtype
    assert torch.equal(grid.encode(rtn, fitted).dequantize(dtype), rtn)
    with pytest.raises(ValueError, match="not on the grid"):
        grid.encode(W * 1.01, fitted)  # off-grid input is refused, not re-rounded


def test_mx_floor_encode_needs_no_scales():
    # Floor scales are self-consistent: refitting on an RTN result finds the same grid.
    W = edge_matrix()[:12]
    grid = MXGrid()
    rtn = grid.rtn(W)
    assert torch.equal(grid.encode(rtn).dequantize(), rtn)


def test_refit_group_touches_one_group():
    W = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    for grid in (MXGrid(), NVFP4Grid(), IntGrid(4, 16)):
        fitted = grid.fit(W)
        before = fitted.scales.clone() if hasattr(fitted, "scales") else fitted.scale.clone()
        g = grid.group_size
        grid.refit_group(fitted, W[:, g:2 * g] * 8, 1)
        after = fitted.scales if hasattr(fitted, "scales") else fitted.scale
        changed = (after != before).any(0)
        assert changed[1] and not changed[0] and not changed[2:].any(), repr(grid)


# --- MSE scale search -----------------------------------------------------------------------------------------
def heavy_tailed(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) / torch.rand(rows, cols, generator=g).add(0.05) * 0.01


@pytest.mark.parametrize("make", [
    lambda s: MXGrid("e2m1", 32, "floor", scale_search=s), lambda s: MXGrid("e2m1", 32, "ceil", scale_search=s),
    lambda s: MXGrid("e2m1", 32, "stretch", scale_search=s), lambda s: NVFP4Grid("te", scale_search=s),
    lambda s: NVFP4Grid("torchao", scale_search=s)])
def test_mse_search_never_worse_than_absmax(make):
    W = heavy_tailed(64, 256, seed=6)
    absmax, mse = make("absmax"), make("mse")
    e_abs = absmax.group_errors(W, absmax.fit(W))
    e_mse = mse.group_errors(W, mse.fit(W))
    assert (e_mse <= e_abs).all()
    assert e_mse.sum() < 0.97 * e_abs.sum()  # and it does find better scales on heavy tails
    rtn = mse.rtn(W)
    assert torch.equal(mse.encode(rtn, mse.fit(W)).dequantize(), rtn)


@pytest.mark.parametrize("grid,window", [(MXGrid("e2m1", 32, "floor", scale_search="mse"), range(-2, 3)),
                                         (MXGrid("e2m1", 32, "stretch", scale_search="mse"), range(-2, 3)),
                                         (NVFP4Grid("te", scale_search="mse"), range(-10, 3))])
def test_mse_search_is_the_argmin_over_rounded_scales(grid, window):
    # Brute force, block by block: every candidate is a real scale code (E8M0 exponent or E4M3 code),
    # so the error compared is the error of the rounded scale; ties keep the absmax scale.
    W = heavy_tailed(6, 64, seed=7)
    absmax = MXGrid(grid.elem, 32, grid.scale_mode) if isinstance(grid, MXGrid) else NVFP4Grid("te")
    base = absmax.fit(W)
    picked = grid.fit(W).scales
    lo, hi = (0, 254) if isinstance(grid, MXGrid) else (1, 0x7E)
    for r in range(6):
        for k in range(W.shape[1] // grid.group_size):
            best, best_err = None, None
            for step in [0] + [s for s in window if s != 0]:
                trial = base.scales.clone()
                trial[r, k] = min(max(int(base.scales[r, k]) + step, lo), hi)
                f = type(base)(trial) if isinstance(grid, MXGrid) else type(base)(trial, base.global_scale, base.s_enc)
                e = float(absmax.group_errors(W, f)[r, k])
                if best_err is None or e < best_err:
                    best, best_err = int(trial[r, k]), e
            assert int(picked[r, k]) == best, (r, k)


# --- argument checks -------------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="scale_mode"):
        MXGrid(scale_mode="round")
    with pytest.raises(ValueError, match="stretch"):
        MXGrid("e4m3", scale_mode="stretch")
    with pytest.raises(ValueError, match="scale_search"):
        MXGrid(scale_search="l2.4")
    with pytest.raises(ValueError, match="bits"):
        IntGrid(bits=1)
    with pytest.raises(ValueError, match="group_size"):
        IntGrid(group_size=0)
    with pytest.raises(ValueError, match="recipe"):
        NVFP4Grid("modelopt")
    with pytest.raises(ValueError, match="global_amax"):
        NVFP4Grid(global_amax=float("nan"))
    with pytest.raises(ValueError, match="multiple of the group size"):
        MXGrid().fit(torch.zeros(2, 48))
    with pytest.raises(ValueError, match="2-D"):
        NVFP4Grid().rtn(torch.zeros(32))
    with pytest.raises(TypeError, match="floating"):
        IntGrid().rtn(torch.zeros(2, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="fmt"):
        make_grid("fp8")
    assert isinstance(make_grid("nvfp4"), NVFP4Grid) and make_grid("mxfp4").group_size == 32
    assert make_grid("int4").group_size == 32 and make_grid("nvfp4", global_amax=3.0).global_amax == 3.0


def test_make_grid_int_formats():
    g = make_grid("int3", group_size=64)
    assert isinstance(g, IntGrid) and g.bits == 3 and g.maxq == 7 and g.group_size == 64 and g.symmetric
    g = make_grid("int2", group_size=128, symmetric=False)
    assert g.bits == 2 and g.maxq == 3 and not g.symmetric
    # int2 symmetric: s = 2·max|x|/3, z = 2: the levels of a row are s·{-2, -1, 0, 1}
    x = torch.tensor([[-3.0, -1.2, 0.2, 3.0]], dtype=torch.float64)  # s = 2: -1.5, -0.6, 0.1, 1.5 steps
    q = make_grid("int2", group_size=4).rtn(x)
    assert torch.equal(q, torch.tensor([[-4.0, -2.0, 0.0, 2.0]], dtype=torch.float64))
    for fmt in ("mxfp4", "nvfp4"):
        with pytest.raises(ValueError, match="group_size and symmetric"):
            make_grid(fmt, group_size=64)
        with pytest.raises(ValueError, match="group_size and symmetric"):
            make_grid(fmt, symmetric=False)
    with pytest.raises(ValueError, match="group_size"):
        make_grid("int3", group_size=0)
