"""Reference FP4 GEMM (SPEC §8) against an exact rational oracle (Python fractions)."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from fp4ref.gemm import fp4_mm, fp4_mm_tolerance, round_to
from fp4ref.layouts import pack_fp4
from fp4ref.mx import MXTensor, quantize_mx
from fp4ref.nvfp4 import NVFP4Tensor, quantize_nvfp4

E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
# (precision p, minimum normal exponent, max finite, integer view)
TARGETS = {
    torch.float32: (24, -126, (2 - Fraction(1, 2**23)) * 2**127, torch.int32),
    torch.bfloat16: (8, -126, (2 - Fraction(1, 2**7)) * 2**127, torch.int16),
    torch.float16: (11, -14, Fraction(65504), torch.int16),
    torch.float64: (53, -1022, (2 - Fraction(1, 2**52)) * 2**1023, torch.int64),
}


def e2m1_value(code: int) -> Fraction:
    v = Fraction(E2M1[code & 7]).limit_denominator()
    return -v if code & 8 else v


def e4m3_value(byte: int) -> Fraction | None:
    """None for NaN (0x7F/0xFF)."""
    if byte & 0x7F == 0x7F:
        return None
    e, m = (byte >> 3) & 0xF, byte & 7
    v = Fraction(m, 8) * Fraction(2) ** -6 if e == 0 else (1 + Fraction(m, 8)) * Fraction(2) ** (e - 7)
    return -v if byte & 0x80 else v


def e8m0_value(byte: int) -> Fraction | None:
    return None if byte == 0xFF else Fraction(2) ** (byte - 127)


def round_fraction(x: Fraction, dtype: torch.dtype) -> float:
    """Correct RNE rounding of an exact rational to ``dtype`` (returned as an exactly representable float)."""
    p, emin, vmax, _ = TARGETS[dtype]
    if x == 0:
        return 0.0
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    e += 1 if Fraction(2) ** (e + 1) <= a else 0
    e -= 1 if Fraction(2) ** e > a else 0
    q = Fraction(2) ** (max(e, emin) - p + 1)
    v = round(a / q) * q  # Fraction.__round__ is half to even
    r = float("inf") if v > vmax else float(v)
    return -r if x < 0 else r


def oracle(a, b, dtype):
    """Exact Σ_k of element·block-scale products, times the constant factor, rounded once."""
    ca, cb = _codes(a), _codes(b)
    sa, sb = _scales(a), _scales(b)
    bs = a.block_size
    if isinstance(a, NVFP4Tensor):
        factor = Fraction(float(np.float32(a.global_scale.item()) * np.float32(b.global_scale.item())))
    else:
        factor = Fraction(1, 3 ** ((a.scale_mode == "stretch") + (b.scale_mode == "stretch")))
    out = []
    for m in range(ca.shape[0]):
        row = []
        for n in range(cb.shape[0]):
            s, nan = Fraction(0), False
            for k in range(ca.shape[1]):
                x, y = sa[m][k // bs], sb[n][k // bs]
                if x is None or y is None:
                    nan = True
                    break
                s += e2m1_value(ca[m, k]) * x * e2m1_value(cb[n, k]) * y
            row.append(float("nan") if nan else round_fraction(s * factor, dtype))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).to(dtype)


def _codes(q):
    d = q.data.view(torch.uint8).numpy().astype(np.int64)
    return np.stack((d & 0xF, d >> 4), axis=-1).reshape(d.shape[0], -1)


def _scales(q):
    f = e8m0_value if isinstance(q, MXTensor) else e4m3_value
    return [[f(int(v)) for v in row] for row in q.scales.view(torch.uint8).tolist()]


def assert_bits_equal(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(out), nan)
    iv = TARGETS[ref.dtype][3]
    assert torch.equal(out.view(iv)[~nan], ref.view(iv)[~nan]), (out, ref)


def mx(codes, scales, mode="floor", bs=32):
    codes = torch.as_tensor(codes, dtype=torch.uint8)
    return MXTensor(pack_fp4(codes), torch.as_tensor(scales, dtype=torch.uint8), "e2m1", bs,
                    codes.shape, mode, -1)


def nv(codes, scales, gs, bs=16):
    codes = torch.as_tensor(codes, dtype=torch.uint8)
    return NVFP4Tensor(pack_fp4(codes), torch.as_tensor(scales, dtype=torch.uint8),
                       torch.tensor(gs, dtype=torch.float32), "te", codes.shape, bs)


def rand_codes(g, rows, k):
    return torch.randint(0, 16, (rows, k), generator=g, dtype=torch.uint8)


def rand_bytes(g, rows, nb, lo, hi):
    return torch.randint(lo, hi + 1, (rows, nb), generator=g, dtype=torch.uint8)


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("mode_a, mode_b", [("floor", "floor"), ("rceil", "even"), ("stretch", "floor"),
                                            ("stretch", "stretch")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mx_random_quantized_matches_fractions(mode_a, mode_b, dtype):
    g = torch.Generator().manual_seed(hash((mode_a, mode_b, str(dtype))) % 2**31)
    x = torch.randn(3, 96, generator=g) * torch.exp(2 * torch.randn(3, 1, generator=g))
    w = torch.randn(4, 96, generator=g)
    a, b = quantize_mx(x, scale_mode=mode_a), quantize_mx(w, scale_mode=mode_b)
    assert_bits_equal(fp4_mm(a, b, out_dtype=dtype), oracle(a, b, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recipe", ["te", "torchao"])
def test_nvfp4_random_quantized_matches_fractions(dtype, recipe):
    g = torch.Generator().manual_seed(11)
    x, w = torch.randn(3, 64, generator=g) * 5, torch.randn(5, 64, generator=g) / 7
    a, b = quantize_nvfp4(x, recipe=recipe), quantize_nvfp4(w, recipe=recipe)
    assert_bits_equal(fp4_mm(a, b, out_dtype=dtype), oracle(a, b, dtype))


@pytest.mark.parametrize("bs", [16, 64, 128])
def test_other_block_sizes_match_fractions(bs):
    g = torch.Generator().manual_seed(bs)
    x, w = torch.randn(2, 256, generator=g), torch.randn(3, 256, generator=g) * 100
    for a, b in ((quantize_mx(x, block_size=bs), quantize_mx(w, block_size=bs)),
                 (quantize_nvfp4(x, block_size=bs), quantize_nvfp4(w, block_size=bs))):
        assert_bits_equal(fp4_mm(a, b), oracle(a, b, torch.float32))


@pytest.mark.parametrize("lo_a, hi_a, lo_b, hi_b", [
    (0, 6, 0, 6),          # products near 2^-254: zero or subnormal, sign kept on tiny negatives
    (100, 106, 1, 7),      # float32 subnormal range
    (246, 254, 240, 254),  # products near 2^254: overflow to inf
    (0, 6, 248, 254),      # tiny times huge: ordinary outputs
    (120, 134, 120, 134),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mx_extreme_scales(lo_a, hi_a, lo_b, hi_b, dtype):
    g = torch.Generator().manual_seed(lo_a * 1000 + lo_b)
    a = mx(rand_codes(g, 4, 128), rand_bytes(g, 4, 4, lo_a, hi_a))
    b = mx(rand_codes(g, 3, 128), rand_bytes(g, 3, 4, lo_b, hi_b))
    assert_bits_equal(fp4_mm(a, b, out_dtype=dtype), oracle(a, b, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_extreme_and_random_scales(dtype):
    g = torch.Generator().manual_seed(5)
    for gs_a, gs_b in [(1.0, 1.0), (2.0**-100, 2.0**-40), (3e30, 7e5), (0.1, 1 / 3), (1e-45, 1.0)]:
        a = nv(rand_codes(g, 3, 64), rand_bytes(g, 3, 4, 0, 0x7E), gs_a)
        b = nv(rand_codes(g, 4, 64), rand_bytes(g, 4, 4, 0x80, 0xFE), gs_b)  # negative scales too
        assert_bits_equal(fp4_mm(a, b, out_dtype=dtype), oracle(a, b, dtype))


def test_zero_and_nan_blocks():
    g = torch.Generator().manual_seed(6)
    ca, cb = rand_codes(g, 4, 96), rand_codes(g, 3, 96)
    ca[0] = 0            # all-zero row: exact +0
    ca[1, 32:64] = 8     # a block of -0 codes
    sa, sb = rand_bytes(g, 4, 3, 120, 130), rand_bytes(g, 3, 3, 120, 130)
    sa[2, 1] = 0xFF      # NaN block: row 2 of the output is NaN
    sb[1, 2] = 0xFF
    a, b = mx(ca, sa), mx(cb, sb)
    out, ref = fp4_mm(a, b), oracle(a, b, torch.float32)
    assert_bits_equal(out, ref)
    assert bool(torch.isnan(out[2]).all()) and bool(torch.isnan(out[:, 1]).all())
    assert torch.equal(out[0, [0, 2]].view(torch.int32), torch.zeros(2, dtype=torch.int32))  # +0, not -0
    na, nb = nv(ca[:, :64], rand_bytes(g, 4, 4, 0x30, 0x40), 1.0), nv(cb[:, :64], rand_bytes(g, 3, 4, 0x30, 0x40), 1.0)
    na.scales[3, 1] = 0x7F
    assert_bits_equal(fp4_mm(na, nb), oracle(na, nb, torch.float32))
    assert bool(torch.isnan(fp4_mm(na, nb)[3]).all())


def test_float64_accumulation_order_beyond_the_span_condition():
    """Scales spanning 2^200 in one dot product: the result is the sequential float64 sum of exact block
    terms in increasing k (SPEC §8), which here differs from the exact sum."""
    ca = torch.full((1, 96), 0, dtype=torch.uint8)
    ca[0, 0], ca[0, 32], ca[0, 64] = 2, 2, 10  # +1, +1, -1
    cb = torch.full((1, 96), 0, dtype=torch.uint8)
    cb[0, 0], cb[0, 32], cb[0, 64] = 2, 2, 2
    a = mx(ca, [[227, 27, 227]])  # terms 2^100, 2^-100, -2^100 (b scales 2^0)
    b = mx(cb, [[127, 127, 127]])
    acc = 0.0
    for t in (2.0**100, 2.0**-100, -(2.0**100)):
        acc += t
    assert acc == 0.0  # the exact sum is 2^-100
    assert fp4_mm(a, b).item() == 0.0
    assert fp4_mm(a, b, out_dtype=torch.float64).item() == acc


def test_bf16_output_is_rounded_once():
    """Exact sum 1 + 2^-8 + 2^-30: above the bf16 midpoint 1 + 2^-8, so it rounds up to 1 + 2^-7; a
    float64 -> float32 -> bf16 chain would land on the midpoint and round to 1."""
    ca = torch.zeros(1, 96, dtype=torch.uint8)
    ca[0, 0], ca[0, 32], ca[0, 64] = 2, 2, 2
    a = mx(ca, [[127, 123, 112]])  # 1, 2^-4, 2^-15
    b = mx(ca.clone(), [[127, 123, 112]])
    out = fp4_mm(a, b, out_dtype=torch.bfloat16)
    assert out.item() == 1 + 2**-7
    assert torch.tensor(1 + 2**-8 + 2**-30, dtype=torch.float64).to(torch.bfloat16).item() == 1.0


def _adversarial(sign: int, below: bool):
    """(S, g) with S·g within 2^-53 relative of a float32 midpoint but not on it (Dekker needed)."""
    G = (1 << 23) - 2 * 12345 - 1
    for k2 in range((1 << 24) + 3 * (1 << 22) + 1, 1 << 25, 2):
        r = (-(k2 << 51)) % G if not below else -((k2 << 51) % G)
        # pick the midpoint whose tie-to-even goes the wrong way, so that a double rounding would fail
        if 0 < abs(r) < (1 << 21) and k2 % 4 == (3 if below else 1):
            s_int = ((k2 << 51) + r) // G
            assert s_int * G == (k2 << 51) + r and s_int < (1 << 53)
            return sign * s_int * 2.0**-52, G * 2.0**-23, sign * Fraction(s_int * G, 2**75)
    raise AssertionError("no case found")


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("below", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_scale_product_is_rounded_once(sign, below, dtype):
    from fp4ref.gemm import _times
    s, g, exact = _adversarial(sign, below)
    hi, resid = _times(torch.tensor([s], dtype=torch.float64), g)
    got = round_to(hi, resid, dtype)
    assert got.item() == round_fraction(exact, dtype)
    if dtype == torch.float32:
        assert (torch.tensor([s], dtype=torch.float64) * g).float().item() != got.item()


def test_round_to_matches_fractions_on_random_products():
    from fp4ref.gemm import _times
    g = torch.Generator().manual_seed(9)
    s = (torch.randint(1, 2**53, (400,), generator=g, dtype=torch.int64).double()
         * torch.exp2(torch.randint(-300, 200, (400,), generator=g).double() - 52))
    s[::2] *= -1
    for gs in (np.float32(0.1), np.float32(3.0) / np.float32(7.0), np.float32(1e-40), np.float32(1e30)):
        hi, resid = _times(s, float(gs))
        for dt in DTYPES:
            ref = [round_fraction(Fraction(v) * Fraction(float(gs)), dt) for v in s.tolist()]
            assert_bits_equal(round_to(hi, resid, dt), torch.tensor(ref, dtype=torch.float64).to(dt))


def test_vectorized_shape_is_fast_enough():
    g = torch.Generator().manual_seed(0)
    a = quantize_mx(torch.randn(64, 1024, generator=g))
    b = quantize_mx(torch.randn(512, 1024, generator=g))
    ref = a.dequantize().double() @ b.dequantize().double().T  # exact here: few bits, small span
    assert torch.equal(fp4_mm(a, b, out_dtype=torch.float64), ref)


@pytest.mark.parametrize("quant", ["mx", "stretch", "nvfp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tolerance_admits_a_float32_kernel_and_rejects_a_wrong_one(quant, dtype):
    """Dequantize-then-float32-matmul (what a fast kernel does) meets SPEC §8's bound; dropping one K-block
    does not."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(16, 512, generator=g), torch.randn(8, 512, generator=g)
    q = {"mx": quantize_mx, "stretch": lambda t: quantize_mx(t, scale_mode="stretch"),
         "nvfp4": quantize_nvfp4}[quant]
    a, b = q(x), q(w)
    ref, tol = fp4_mm(a, b, out_dtype=dtype).double(), fp4_mm_tolerance(a, b, out_dtype=dtype)
    fast = (a.dequantize() @ b.dequantize().T).to(dtype).double()
    assert bool(((fast - ref).abs() <= tol).all())
    da = a.dequantize().clone()
    da[:, :32] = 0
    wrong = (da @ b.dequantize().T).to(dtype).double()
    assert not bool(((wrong - ref).abs() <= tol).all())


def test_bad_inputs():
    x = torch.randn(4, 64)
    a, b = quantize_mx(x), quantize_mx(torch.randn(3, 64))
    with pytest.raises(TypeError, match="same format"):
        fp4_mm(a, quantize_nvfp4(torch.randn(3, 64)))
    with pytest.raises(TypeError, match="a must be"):
        fp4_mm(x, b)
    with pytest.raises(ValueError, match="K mismatch"):
        fp4_mm(a, quantize_mx(torch.randn(3, 96)))
    with pytest.raises(ValueError, match="block_size"):
        fp4_mm(a, quantize_mx(torch.randn(3, 64), block_size=16))
    with pytest.raises(ValueError, match="e2m1"):
        fp4_mm(a, quantize_mx(torch.randn(3, 64), "e4m3"))
    with pytest.raises(ValueError, match="last dimension"):
        fp4_mm(a, quantize_mx(torch.randn(64, 64), axis=0))
    with pytest.raises(ValueError, match="2-D"):
        fp4_mm(quantize_mx(torch.randn(2, 4, 64)), b)
    with pytest.raises(TypeError, match="out_dtype"):
        fp4_mm(a, b, out_dtype=torch.int32)
    bad = quantize_mx(torch.randn(3, 64))
    bad.data = bad.data.float()
    with pytest.raises(TypeError, match="b.data"):
        fp4_mm(a, bad)
    nb = quantize_nvfp4(torch.randn(3, 64))
    nb.scales = nb.scales[:, :2]
    with pytest.raises(ValueError, match="b.scales"):
        fp4_mm(quantize_nvfp4(x), nb)
