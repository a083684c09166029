"""Block Hadamard rotation (SPEC §7): exactness of the butterfly, algebra of H, errors."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from fp4ref.hadamard import (block_hadamard, check_block_hadamard, hadamard_matrix, random_signs,
                             rotate_weight)

BLOCKS = [2, 4, 8, 16, 32, 64, 128, 256]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """int32 view with every NaN mapped to one pattern (NaN sign/payload is not part of the contract)."""
    b = t.contiguous().view(torch.int32).clone()
    b[torch.isnan(t)] = 0x7FC00000
    return b


def _spec_loop(x: np.ndarray, b: int, signs: np.ndarray | None) -> np.ndarray:
    """SPEC §7 transcribed element by element in numpy float32 scalars."""
    x = x.astype(np.float32)
    out = np.empty_like(x)
    scale = np.float32(1) / np.sqrt(np.float32(b))
    for r in range(x.shape[0]):
        for start in range(0, x.shape[1], b):
            v = [x[r, start + i] for i in range(b)]
            if signs is not None:
                v = [v[i] * np.float32(signs[(start + i) % len(signs)]) for i in range(b)]
            h = 1
            while h < b:
                for i in range(b):
                    if i & h == 0:
                        a, c = v[i], v[i + h]
                        v[i], v[i + h] = np.float32(a + c), np.float32(a - c)
                h *= 2
            for i in range(b):
                out[r, start + i] = np.float32(v[i] * scale)
    return out


def _rand(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("n", [1, 2, 4, 16, 128])
def test_hadamard_matrix_is_sylvester(n):
    h = hadamard_matrix(n, torch.float64)
    assert torch.equal(h, torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64)))
    assert torch.equal(h, h.T)
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))
    assert torch.equal(hadamard_matrix(n, torch.int8), h.to(torch.int8))


@pytest.mark.parametrize("b", BLOCKS)
@pytest.mark.parametrize("with_signs", [False, True])
def test_butterfly_matches_float64_matmul(b, with_signs):
    x = _rand((8, 2 * b), b)
    signs = random_signs(b, seed=b) if with_signs else None
    y = block_hadamard(x, b, signs=signs)
    assert y.dtype == torch.float32
    d = torch.ones(b, dtype=torch.float64) if signs is None else signs.double()
    r = torch.diag(d) @ hadamard_matrix(b, torch.float64) / math.sqrt(b)
    ref = (x.double().reshape(8, 2, b) @ r).reshape(8, 2 * b)
    # Each of log2(b) stages rounds once with |partial sums| <= sum|x| of the block; the scaling once more.
    blk_l1 = x.double().abs().reshape(8, 2, b).sum(-1, keepdim=True).expand(8, 2, b).reshape(8, 2 * b)
    tol = (math.log2(b) + 2) * 2.0**-24 * blk_l1 / math.sqrt(b)
    assert bool(((y.double() - ref).abs() <= tol).all())


@pytest.mark.parametrize("b", [2, 8, 32, 256])
def test_butterfly_bit_exact_vs_element_loop(b):
    x = _rand((3, max(2 * b, 16)), 100 + b)
    special = torch.tensor([-0.0, 0.0, 1e-45, -3e-39, 3e38, 3e38, -1e30, 2.0**-126, 65504.0, 1.5])
    x[0, : len(special)] = special
    for signs in (None, random_signs(b, seed=7), random_signs(x.shape[1], seed=8)):
        y = block_hadamard(x, b, signs=signs)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = torch.from_numpy(_spec_loop(x.numpy(), b, None if signs is None else signs.numpy()))
        assert torch.equal(_bits(y), _bits(ref))


@pytest.mark.parametrize("b", [4, 32, 128])
def test_rotation_is_an_involution(b):
    x = _rand((4, 4 * b), 3)
    assert torch.allclose(block_hadamard(block_hadamard(x, b), b), x, rtol=0, atol=1e-5)
    s = random_signs(b, seed=1)
    back = block_hadamard(block_hadamard(x, b, signs=s), b) * s.repeat(4)
    assert torch.allclose(back, x, rtol=0, atol=1e-5)
    x64 = x.double()
    assert torch.allclose(block_hadamard(block_hadamard(x64, b), b), x64, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bits_do_not_depend_on_dtype_path(dtype):
    x = _rand((5, 64), 4, dtype)
    for signs in (None, random_signs(64, seed=3)):
        assert torch.equal(_bits(block_hadamard(x, 16, signs=signs)),
                           _bits(block_hadamard(x.float(), 16, signs=signs)))


def test_bits_do_not_depend_on_batch_shape_or_axis():
    x = _rand((2, 3, 5, 64), 5)
    s = random_signs(32, seed=2)
    y = block_hadamard(x, 32, signs=s)
    assert torch.equal(y.reshape(30, 64), block_hadamard(x.reshape(30, 64), 32, signs=s))
    assert torch.equal(y[1, 2], block_hadamard(x[1, 2].clone(), 32, signs=s))
    assert torch.equal(y[0, 0, 0], block_hadamard(x[0, 0, 0], 32, signs=s))
    xt = x.transpose(-1, 1)  # (2, 64, 5, 3), non-contiguous
    assert torch.equal(block_hadamard(xt, 32, signs=s, axis=1), y.transpose(-1, 1))
    assert torch.equal(block_hadamard(xt, 32, signs=s, axis=-3), y.transpose(-1, 1))


def test_per_axis_signs_differ_per_block():
    x = _rand((2, 32), 6)
    s = random_signs(32, seed=9)
    y = block_hadamard(x, 16, signs=s)
    assert torch.equal(y[:, :16], block_hadamard(x[:, :16], 16, signs=s[:16]))
    assert torch.equal(y[:, 16:], block_hadamard(x[:, 16:], 16, signs=s[16:]))


def test_rotate_weight_fusion():
    x, w = _rand((7, 96), 10).double(), _rand((5, 96), 11).double()
    s = random_signs(96, seed=4)
    y = block_hadamard(x, 32, signs=s) @ rotate_weight(w, 32, s).T
    assert torch.allclose(y, x @ w.T, rtol=0, atol=1e-12)
    y32 = block_hadamard(x.float(), 32, signs=s) @ rotate_weight(w.float(), 32, s).T
    assert torch.allclose(y32.double(), x @ w.T, rtol=0, atol=1e-4)


def test_random_signs():
    a, b = random_signs(64, seed=5), random_signs(64, seed=5)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert bool(((a == 1) | (a == -1)).all()) and 0 < int((a == 1).sum()) < 64
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_signs(64, generator=g1), random_signs(64, generator=g2))
    assert not torch.equal(random_signs(64, seed=6), a)
    with pytest.raises(ValueError, match="seed or generator"):
        random_signs(4, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="n must be"):
        random_signs(0)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(block_size=3), ValueError, "power of two"),
    (dict(block_size=1), ValueError, "power of two"),
    (dict(block_size=512), ValueError, "power of two"),
    (dict(block_size=16.0), TypeError, "block_size must be an int"),
    (dict(block_size=48), ValueError, "power of two"),
    (dict(block_size=64, axis=0), ValueError, "multiple of block_size"),
    (dict(block_size=16, axis=2), ValueError, "out of range"),
    (dict(block_size=16, signs=torch.ones(8)), ValueError, "length block_size"),
    (dict(block_size=16, signs=torch.full((16,), 2.0)), ValueError, r"\+1 and -1"),
    (dict(block_size=16, signs=torch.ones(16, dtype=torch.bool)), TypeError, "signs"),
    (dict(block_size=16, signs=[1] * 16), TypeError, "signs"),
])
def test_bad_arguments(kwargs, exc, msg):
    x = torch.zeros(4, 32)
    with pytest.raises(exc, match=msg):
        block_hadamard(x, **kwargs)


def test_bad_inputs():
    with pytest.raises(TypeError, match="x must be"):
        block_hadamard(torch.zeros(4, 16, dtype=torch.int32), 16)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        block_hadamard([0.0] * 16, 16)
    with pytest.raises(ValueError, match="at least one dimension"):
        check_block_hadamard(torch.tensor(1.0), 2)
    with pytest.raises(ValueError, match="2-D"):
        rotate_weight(torch.zeros(16), 16)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)


def test_rotation_mse_benchmark_smoke():
    """benchmarks/rotation_mse.py on 2^13 values: Lemma 1 and the Normal-invariance hold even this small."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "rotation_mse.py"
    spec = importlib.util.spec_from_file_location("rotation_mse", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run(13, 0)
    assert len(rows) == len(mod.DISTS) * len(mod.GROUPS) * len(mod.FORMATS)
    for r in rows:
        if r["fmt"] == "ideal":
            assert r["top"] < 1e-12 and r["share"] < 1e-10 and 0.5 < r["share_rot"] < 2  # 6·fp32(amax/6) ≈ amax
        if r["dist"] == "normal":
            assert 0.8 < r["mse_rot"] / r["mse"] < 1.25
        assert 0.003 < r["mse"] < 0.05
