"""MX block quantization (SPEC §4) against an independent numpy/ml_dtypes oracle, torchao, and hand tables."""
import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fp4ref.formats import FORMATS
from fp4ref.mx import SCALE_MODES, MXTensor, dequantize_mx, quantize_mx
from helpers import codes_of, every_pattern_blocks

F32_MAX = float(np.finfo(np.float32).max)
MLD = {"e2m1": ml_dtypes.float4_e2m1fn, "e2m3": ml_dtypes.float6_e2m3fn, "e3m2": ml_dtypes.float6_e3m2fn,
       "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
ELEMS = list(MLD)
OCP_MODES = ["floor", "ceil", "even", "rceil"]


def f32(b: int) -> float:
    return float(np.array([b], dtype=np.uint32).view(np.float32)[0])


def nextup(v):
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


def nextdown(v):
    return float(np.nextafter(np.float32(v), np.float32(-np.inf)))


# --- an independent oracle: math.frexp for exponents, ml_dtypes for element rounding ---------------------
def oracle_exponent(amax: float, elem: str, mode: str) -> int:
    f = FORMATS[elem]
    if amax < 2.0**-126:  # float32 subnormal: the field is 0, so E = -127 (and every mode clamps to -127)
        e, frac = -127, 0.0
    else:
        mant, ex = math.frexp(amax)  # amax = mant * 2^ex, mant in [0.5, 1)
        e, frac = ex - 1, mant * 2 - 1  # amax = 2^e * (1 + frac)
    if mode == "floor":
        return e - f.emax
    if mode == "ceil":
        return e + (frac != 0) - f.emax
    if mode == "even":  # amax rounded half-up to mbits + 1 bits (e2m1: carries at a mantissa of 1.75)
        return e + (frac >= 1 - 2.0 ** -(f.mbits + 1)) - f.emax
    if mode == "stretch":
        return e
    d = float(np.float32(amax) / np.float32(f.max_finite))  # rceil: one float32 division
    if d == 0:
        return -127
    mant, ex = math.frexp(d)
    return ex - 1 if mant == 0.5 else ex


def oracle_quantize(x: np.ndarray, elem: str, mode: str, block: int):
    """Returns (codes uint8 [n, K], scale bytes [n, K/block]) for a 2-D float32 array."""
    f = FORMATS[elem]
    n, k = x.shape
    xb = x.reshape(n, k // block, block).astype(np.float64)
    scales = np.zeros((n, k // block), dtype=np.uint8)
    codes = np.zeros((n, k // block, block), dtype=np.uint8)
    for i in range(n):
        for j in range(k // block):
            blk = xb[i, j]
            if not np.isfinite(blk).all():
                scales[i, j] = 0xFF
                continue
            amax = float(np.abs(blk).max())
            xexp = max(-127, min(127, oracle_exponent(amax, elem, mode)))
            scales[i, j] = 0 if amax == 0 else xexp + 127
            y = blk * 2.0 ** -xexp  # exact in float64
            if mode == "stretch":
                y = (np.float32(3) * y.astype(np.float32)).astype(np.float64)
            y = np.clip(y, -f.max_finite, f.max_finite)  # saturation (ml_dtypes does not saturate e4m3)
            c = y.astype(np.float32).astype(MLD[elem]).view(np.uint8)
            codes[i, j] = c
    return codes.reshape(n, k), scales


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize("elem", ELEMS)
def test_every_pattern_vs_oracle(elem, mode, dtype):
    if mode == "stretch" and elem != "e2m1":
        pytest.skip("stretch is defined for e2m1 only")
    x = every_pattern_blocks(dtype)
    # Spread magnitudes per row so that blocks also hit tiny and huge scales, then drop to the input dtype.
    x = x.to(dtype)
    q = quantize_mx(x, elem, scale_mode=mode)
    codes, scales = oracle_quantize(x.float().numpy(), elem, mode, 32)
    assert torch.equal(q.scales, torch.from_numpy(scales))
    assert torch.equal(codes_of(q), torch.from_numpy(codes))


@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize("elem", ELEMS)
def test_random_magnitudes_vs_oracle(elem, mode):
    if mode == "stretch" and elem != "e2m1":
        pytest.skip("stretch is defined for e2m1 only")
    g = torch.Generator().manual_seed(7)
    mags = 2.0 ** torch.randint(-140, 126, (48, 1), generator=g).float()
    x = torch.randn(48, 64, generator=g) * mags
    q = quantize_mx(x, elem, scale_mode=mode)
    codes, scales = oracle_quantize(x.numpy(), elem, mode, 32)
    assert torch.equal(q.scales, torch.from_numpy(scales))
    assert torch.equal(codes_of(q), torch.from_numpy(codes))


# MXFP4 scale bytes of a block whose amax is the given value, derived by hand from SPEC §4.
# columns: amax, floor, ceil, even, rceil
SCALE_TABLE = [
    (1.0, 125, 125, 125, 125),
    (nextdown(1.0), 124, 125, 125, 125),
    (6.0, 127, 128, 127, 127), (nextdown(6.0), 127, 128, 127, 127), (nextup(6.0), 127, 128, 127, 128),
    (7.0, 127, 128, 128, 128), (nextdown(7.0), 127, 128, 127, 128),
    (8.0, 128, 128, 128, 128), (nextdown(8.0), 127, 128, 128, 128), (nextup(8.0), 128, 129, 128, 128),
    (6.0 * 2.0**-20, 107, 108, 107, 107), (8.0 * 2.0**40, 168, 168, 168, 168),
    (0.0, 0, 0, 0, 0), (1e-45, 0, 0, 0, 0), (2.0**-126, 0, 0, 0, 0), (f32(0x007FFFFF), 0, 0, 0, 0),
    (2.0**-125, 0, 0, 0, 0), (2.0**-124, 1, 1, 1, 1), (2.0**-123, 2, 2, 2, 2), (1.5 * 2.0**-123, 2, 3, 2, 2),
    (F32_MAX, 252, 253, 253, 253), (2.0**127, 252, 252, 252, 252),
]


@pytest.mark.parametrize("row", SCALE_TABLE, ids=[repr(r[0]) for r in SCALE_TABLE])
def test_mxfp4_scale_table(row):
    amax, *want = row
    x = torch.zeros(1, 32)
    x[0, 5] = amax
    x[0, 9] = -amax / 3
    for mode, w in zip(OCP_MODES, want):
        q = quantize_mx(x, "e2m1", scale_mode=mode)
        assert q.scales.item() == w, f"amax={amax!r} mode={mode}: got {q.scales.item()}, want {w}"


def test_floor_saturates_block_max():
    # amax in [6*2^k, 8*2^k): floor keeps the exponent, so the largest element saturates to 6*2^X.
    x = torch.zeros(1, 32)
    x[0, 0] = nextdown(8.0)
    q = quantize_mx(x, "e2m1", scale_mode="floor")
    assert q.scales.item() == 127 and codes_of(q)[0, 0].item() == 0x7
    assert dequantize_mx(q)[0, 0].item() == 6.0


def test_stretch_rule():
    # X = amax's exponent; elements encode(3 * x / 2^X); dequantized * 2^X / 3. amax 7 -> X = 2.
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([7.0, -4.0, 1.0, 0.3])
    q = quantize_mx(x, "e2m1", scale_mode="stretch")
    assert q.scales.item() == 129
    # 3*7/4 = 5.25 -> 6 (0x7); 3*4/4 = 3 -> 0x5 (neg: 0xD); 0.75 -> tie -> 1.0 (0x2); 0.225 -> 0
    assert codes_of(q)[0, :4].tolist() == [0x7, 0xD, 0x2, 0x0]
    assert dequantize_mx(q)[0, :4].tolist() == [8.0, -4.0, 4.0 / 3.0 * np.float32(1.0), 0.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("elem", ELEMS)
def test_nan_inf_block(elem, bad):
    x = torch.randn(2, 64)
    x[1, 40] = bad
    q = quantize_mx(x, elem)
    assert q.scales[1, 1].item() == 0xFF
    assert bool((codes_of(q)[1, 32:] == 0).all())
    ref = quantize_mx(x[:, :32].contiguous(), elem)
    assert torch.equal(codes_of(q)[:, :32], codes_of(ref))
    d = dequantize_mx(q)
    assert bool(torch.isnan(d[1, 32:]).all()) and bool(torch.isfinite(d[0]).all())


def test_zero_block_and_negative_zero():
    x = torch.zeros(1, 32)
    x[0, 3] = -0.0
    q = quantize_mx(x, "e2m1")
    assert q.scales.item() == 0
    assert codes_of(q)[0, 3].item() == 0x8 and codes_of(q)[0, 2].item() == 0x0
    assert dequantize_mx(q)[0, 3].view(torch.int32).item() == f32_bits_of(-0.0)


def f32_bits_of(v):
    return int(np.array([v], dtype=np.float32).view(np.int32)[0])


@pytest.mark.parametrize("elem", ELEMS)
@pytest.mark.parametrize("mode", SCALE_MODES)
def test_dequantize_is_exact(elem, mode):
    if mode == "stretch" and elem != "e2m1":
        return
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 64, generator=g) * (2.0 ** torch.randint(-130, 120, (8, 1), generator=g))
    q = quantize_mx(x, elem, scale_mode=mode)
    codes = codes_of(q).numpy()
    vals = codes.view(MLD[elem]).astype(np.float64)
    sc = 2.0 ** (q.scales.numpy().astype(np.float64) - 127)
    want = (vals.reshape(8, 2, 32) * sc[:, :, None]).reshape(8, 64)
    if mode == "stretch":
        want = (want / 3).astype(np.float32).astype(np.float64)
    assert torch.equal(dequantize_mx(q).double(), torch.from_numpy(want))


def test_stretch_dequantize_at_the_top_scale():
    # X = 127: 3 * 2^127 / 2^127 = 3 (code 5) dequantizes to 3 * 2^127 / 3 = 2^127, which must not pass
    # through an infinite 3 * 2^127; FLT_MAX -> 6 (code 7) -> 2^128 really does overflow.
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = float(np.finfo(np.float32).max), 2.0**127, 2.0**126
    q = quantize_mx(x, "e2m1", scale_mode="stretch")
    assert q.scales.item() == 254 and q.codes()[0, :3].tolist() == [7, 5, 3]
    d = dequantize_mx(q)
    assert d[0, 0].item() == float("inf") and d[0, 1].item() == 2.0**127
    assert d[0, 2].item() == float(np.float32(1.5 * 2.0**127 / 3))


@given(k=st.integers(-20, 20), seed=st.integers(0, 2**31 - 1),
       mode=st.sampled_from(SCALE_MODES), elem=st.sampled_from(ELEMS))
def test_power_of_two_shift_moves_only_the_scale(k, seed, mode, elem):
    if mode == "stretch" and elem != "e2m1":
        return
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(seed))
    q1 = quantize_mx(x, elem, scale_mode=mode)
    q2 = quantize_mx(x * 2.0**k, elem, scale_mode=mode)
    assert torch.equal(q2.scales.int() - q1.scales.int(), torch.full_like(q1.scales.int(), k))
    assert torch.equal(q2.data, q1.data)


def test_axis_and_shapes():
    x = torch.randn(3, 64, 5)
    q = quantize_mx(x, "e2m1", axis=1)
    ref = quantize_mx(x.movedim(1, -1).contiguous(), "e2m1")
    assert torch.equal(q.data, ref.data) and torch.equal(q.scales, ref.scales)
    assert q.shape == x.shape and q.data.shape == (3, 5, 32)
    assert torch.equal(dequantize_mx(q), dequantize_mx(ref).movedim(-1, 1))
    xt = torch.randn(64, 64).t()  # non-contiguous
    assert torch.equal(quantize_mx(xt).data, quantize_mx(xt.contiguous()).data)
    assert quantize_mx(torch.empty(0, 32)).data.shape == (0, 16)


def test_dtypes_give_same_bits():
    x = torch.randn(16, 64).to(torch.bfloat16)
    a, b = quantize_mx(x), quantize_mx(x.float())
    assert torch.equal(a.data, b.data) and torch.equal(a.scales, b.scales)
    assert dequantize_mx(a, torch.bfloat16).dtype == torch.bfloat16


def test_to_torch_dtypes():
    q = quantize_mx(torch.randn(4, 64))
    d, s = q.to_torch_dtypes()
    assert d.dtype == torch.float4_e2m1fn_x2 and s.dtype == torch.float8_e8m0fnu
    assert torch.equal(s.view(torch.uint8), q.scales)
    assert torch.equal(s.float(), 2.0 ** (q.scales.float() - 127))


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of block_size"):
        quantize_mx(torch.randn(4, 33))
    with pytest.raises(ValueError, match="scale_mode='round'"):
        quantize_mx(torch.randn(4, 32), scale_mode="round")
    with pytest.raises(ValueError, match="elem='e8m0'"):
        quantize_mx(torch.randn(4, 32), "e8m0")
    with pytest.raises(ValueError, match="elem='fp9'"):
        quantize_mx(torch.randn(4, 32), "fp9")
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        quantize_mx(torch.ones(4, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="block_size"):
        quantize_mx(torch.randn(4, 32), block_size=0)
    with pytest.raises(ValueError, match="even"):
        quantize_mx(torch.randn(4, 33), block_size=3)
    with pytest.raises(ValueError, match="stretch"):
        quantize_mx(torch.randn(4, 32), "e4m3", scale_mode="stretch")
    with pytest.raises(ValueError, match="axis"):
        quantize_mx(torch.randn(4, 32), axis=2)
    q = quantize_mx(torch.randn(4, 64))
    with pytest.raises(ValueError, match="scales has shape"):
        MXTensor(q.data, q.scales[:, :1], q.elem, q.block_size, q.shape)
    bad = MXTensor(q.data, q.scales, q.elem, q.block_size, q.shape)
    bad.scales = q.scales[:, :1]  # altered after construction: every op checks again
    with pytest.raises(ValueError, match="scales has shape"):
        dequantize_mx(bad)
    with pytest.raises(TypeError, match="MXTensor"):
        dequantize_mx(q.data)
