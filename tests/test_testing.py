"""fp4ref.testing (SPEC §9): mismatch reports, re-quantization checks, near_boundary masks."""
import pytest
import torch

from fp4ref.codecs import decode_table
from fp4ref.formats import get_format
from fp4ref.layouts import pack_fp4, swizzle_scales
from fp4ref.mx import quantize_mx
from fp4ref.nvfp4 import quantize_nvfp4
from fp4ref.testing import assert_codes_equal, assert_quantized_equal, near_boundary

# E2M1 code -> value, written out from the format table (SPEC §2), not from the codec.
E2M1 = {0: 0.0, 1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0, 5: 3.0, 6: 4.0, 7: 6.0}


def test_equal_codes_pass():
    c = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.uint8)
    assert_codes_equal(c, c.clone())


def test_single_flip_reported_with_index_codes_values_and_input():
    expected = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.uint8)
    actual = expected.clone()
    actual[1, 2] = 0xD  # sign bit flipped: -3.0 instead of 3.0
    x = torch.tensor([[0.1, 0.5, 1.1], [1.4, 2.2, 2.75]])
    with pytest.raises(AssertionError) as err:
        assert_codes_equal(actual, expected, context={"name": "out", "fmt": "e2m1", "x": x})
    msg = str(err.value)
    assert "1 of 6 codes differ" in msg
    assert "[1, 2]" in msg and "0xD (-3.0)" in msg and "0x5 (3.0)" in msg and "2.75" in msg
    assert "[0, " not in msg  # only the mismatch is listed


def test_signed_zero_is_a_mismatch():
    with pytest.raises(AssertionError, match=r"0x8 \(-0.0\).*0x0 \(0.0\)"):
        assert_codes_equal(torch.tensor([8], dtype=torch.uint8), torch.tensor([0], dtype=torch.uint8),
                           context={"fmt": "e2m1"})


def test_allow_tolerates_flips_only_where_masked():
    expected = torch.zeros(4, 8, dtype=torch.uint8)
    actual = expected.clone()
    actual[0, 3] = 1
    actual[2, 5] = 1
    allow = torch.zeros(4, 8, dtype=torch.bool)
    allow[0, 3] = True
    with pytest.raises(AssertionError) as err:
        assert_codes_equal(actual, expected, allow=allow)
    msg = str(err.value)
    assert "[2, 5]" in msg and "[0, 3]" not in msg and "1 more at allowed positions" in msg
    allow[2, 5] = True
    assert_codes_equal(actual, expected, allow=allow)


def test_packed_context_counts_elements():
    codes = torch.arange(16, dtype=torch.uint8).reshape(2, 8) % 8
    packed = pack_fp4(codes)
    bad = packed.clone()
    bad[1, 2] ^= 0x10  # high nibble of byte 2 = element 5 of row 1 (code 13 % 8 = 5)
    with pytest.raises(AssertionError, match=r"\[1, 5\]\s+0x4 \(2.0\)\s+0x5 \(3.0\)"):
        assert_codes_equal(bad, packed, context={"fmt": "e2m1", "packed": True})


def test_bad_arguments():
    c = torch.zeros(3, dtype=torch.uint8)
    with pytest.raises(TypeError, match="integer codes"):
        assert_codes_equal(c.float(), c)
    with pytest.raises(TypeError, match="allow"):
        assert_codes_equal(c, c, allow=torch.zeros(3))
    with pytest.raises(TypeError, match="unknown keys"):
        assert_codes_equal(c, c, context={"fmat": "e2m1"})
    with pytest.raises(ValueError, match="fmt"):
        assert_quantized_equal(None, torch.zeros(32), "mxfp5")
    with pytest.raises(ValueError, match="recipe"):
        assert_quantized_equal(None, torch.zeros(32), "mxfp4", recipe="te")


def _hand_block():
    """One MXFP4 block with amax 6 (floor scale 2^(2-2), byte 127): codes known from the E2M1 table."""
    codes = torch.tensor([6, 1, 2, 3, 4, 5, 7, 0] * 4, dtype=torch.uint8)
    x = torch.tensor([E2M1[int(c)] for c in codes]).reshape(1, 32)
    return x, codes.reshape(1, 32), torch.tensor([[127]], dtype=torch.uint8)


def test_quantized_hand_built_mx_block():
    x, codes, scales = _hand_block()
    assert_quantized_equal((codes, scales), x, "mxfp4")
    assert_quantized_equal((pack_fp4(codes), scales), x, "mxfp4")
    pattern = r"(?s)scales: 1 of 1 codes differ.*\[0, 0\]\s+0x80 \(2.0\)\s+0x7F \(1.0\)"
    with pytest.raises(AssertionError, match=pattern):
        assert_quantized_equal((codes, scales + 1), x, "mxfp4")


@pytest.mark.parametrize("fmt,kw", [("mxfp4", {}), ("mxfp8_e4m3", {"scale_mode": "rceil"}),
                                    ("e2m3", {"block_size": 16, "scale_mode": "ceil"}), ("mxfp6_e3m2", {"axis": 0})])
def test_quantized_forms_accepted_and_wrong_scale_caught(fmt, kw):
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1)) * 3
    elem = {"mxfp4": "e2m1", "mxfp8_e4m3": "e4m3", "mxfp6_e3m2": "e3m2"}.get(fmt, fmt)
    q = quantize_mx(x, elem, **kw)
    assert_quantized_equal(q, x, fmt, **kw)
    assert_quantized_equal((q.codes(), q.scales), x, fmt, **kw)
    assert_quantized_equal((q.data, swizzle_scales(q.scales.reshape(64, -1))), x, fmt, **kw)
    assert_quantized_equal(q.to_torch_dtypes(), x, fmt, **kw)
    bad = q.scales.clone()
    bad[5, 1] -= 1
    with pytest.raises(AssertionError, match=r"(?s)scales: 1 of \d+ codes differ.*\[5, 1\]"):
        assert_quantized_equal((q.data, bad), x, fmt, **kw)


def test_quantized_nvfp4_forms_and_global_scale():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    q = quantize_nvfp4(x)
    assert_quantized_equal(q, x, "nvfp4")
    assert_quantized_equal((q.codes(), swizzle_scales(q.scales), q.global_scale), x, "nvfp4")
    with pytest.raises(AssertionError, match="global_scale"):
        assert_quantized_equal((q.data, q.scales, q.global_scale * 2), x, "nvfp4")
    with pytest.raises(AssertionError, match="global_scale: missing"):
        assert_quantized_equal((q.data, q.scales), x, "nvfp4")
    with pytest.raises(AssertionError, match="MXTensor"):
        assert_quantized_equal(quantize_mx(x), x, "nvfp4")


def test_quantized_tensor_supplies_its_settings():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 7
    q = quantize_mx(x, scale_mode="rceil", block_size=16)
    assert_quantized_equal(q, x, "mxfp4")  # block_size and scale_mode come from q
    with pytest.raises(AssertionError, match="scales"):
        assert_quantized_equal(q, x, "mxfp4", scale_mode="floor", block_size=16)
    n = quantize_nvfp4(x, recipe="torchao")
    assert_quantized_equal(n, x, "nvfp4")


def test_quantized_plain_encode():
    x = torch.tensor([0.25, 0.75, -5.0, 100.0])
    codes = torch.tensor([0, 2, 0xE, 7], dtype=torch.uint8)  # ties to even: 0, 1.0, -4.0; saturate to 6
    assert_quantized_equal(codes, x, "e2m1", block_size=None)
    with pytest.raises(AssertionError, match=r"\[1\]"):
        assert_quantized_equal(torch.tensor([0, 3, 0xE, 7], dtype=torch.uint8), x, "e2m1", block_size=None)


def test_near_boundary_marks_ties_not_far_points():
    # amax 3.0: floor scale X = 1 - 2 = -1, so E2M1 ties 0.25, 0.75, 2.5 sit at x = 0.125, 0.375, 1.25.
    row = [3.0, 0.125, 0.375, 1.25, -1.25, 0.3, 1.0, 2.0, 0.2] + [0.1] * 23
    x = torch.tensor([row])
    m = near_boundary(x, "mxfp4")
    assert m.shape == x.shape and m.dtype == torch.bool
    assert m[0, 1:5].all() and not m[0, 0] and not m[0, 5:].any()
    # tol=0 keeps exact ties only; a float32 ulp away needs tol > 0
    y = x.clone()
    y[0, 1] = torch.nextafter(torch.tensor(0.125), torch.tensor(1.0))  # the next float32
    assert not near_boundary(y, "mxfp4", tol=0)[0, 1] and near_boundary(x, "mxfp4", tol=0)[0, 1]
    assert near_boundary(y, "mxfp4", tol=1e-5)[0, 1]


def test_near_boundary_scale_boundary_marks_block():
    far = torch.tensor([[3.0] + [0.3] * 31])
    at = torch.tensor([[4.0] + [0.3] * 31])  # amax = 2^2: floor's exponent changes right below
    assert not near_boundary(far, "mxfp4").any()
    assert near_boundary(at, "mxfp4").all()
    # ceil: the boundary is between 2^k and its next float32; 4(1+1e-4) is past tol 1e-5
    off = torch.tensor([[4.0 * (1 + 1e-4)] + [0.3] * 31])
    assert not near_boundary(off, "mxfp4", scale_mode="ceil").any()
    assert near_boundary(off, "mxfp4", scale_mode="ceil", tol=1e-3).all()


def test_near_boundary_nvfp4():
    # global_amax 2688 gives S_enc = 1; a block amax of 6 gives block scale 1, so scaled values equal x.
    x = torch.tensor([[6.0, 0.25, 2.5, 0.3, 1.0] + [0.1] * 11,
                      [6.0 * 1.0625] + [0.1] * 15])  # amax/6 at the E4M3 midpoint 1.0625
    m = near_boundary(x, "nvfp4", global_amax=2688.0)
    assert m[0, 1] and m[0, 2] and not m[0, 0] and not m[0, 3:].any()
    assert m[1].all()


def test_allow_from_near_boundary_tolerates_tie_flip_only():
    x = torch.tensor([[3.0, 0.125, 0.3] + [0.1] * 29])
    q = quantize_mx(x)
    codes = q.codes().clone()
    assert int(codes[0, 1]) == 0  # 0.125 / 2^-1 = 0.25, a tie that goes to the even code 0
    codes[0, 1] = 1  # a kernel that rounds ties away from zero
    allow = near_boundary(x, "mxfp4")
    assert_quantized_equal((codes, q.scales), x, "mxfp4", allow=allow)
    with pytest.raises(AssertionError, match=r"data: 1 of 32"):
        assert_quantized_equal((codes, q.scales), x, "mxfp4")
    codes[0, 2] ^= 1  # a real bug at a point far from any boundary
    with pytest.raises(AssertionError, match=r"(?s)1 more at allowed.*\[0, 2\]"):
        assert_quantized_equal((codes, q.scales), x, "mxfp4", allow=allow)


def _near_ties(fmt, kw, g):
    """Random data where 30% of the elements sit within ~1e-4 of a rounding midpoint of their block's scale."""
    x = torch.randn(64, 128, generator=g)
    if fmt == "nvfp4":
        q, elem = quantize_nvfp4(x, **kw), "e4m3"
        scale = decode_table(elem)[q.scales.long()].double() * q.global_scale.double()
        elem = "e2m1"
    else:
        elem = "e2m1" if fmt == "mxfp4" else "e4m3"
        q = quantize_mx(x, elem, **kw)
        scale = torch.ldexp(torch.ones(q.scales.shape, dtype=torch.float64), q.scales.long() - 127)
    grid = decode_table(elem)[: get_format(elem).max_code + 1].double()
    mids = ((grid[:-1] + grid[1:]) / 2)
    mids = mids[mids < get_format(elem).max_finite / 2]  # below every block's amax: scales stay put
    pick = mids[torch.randint(0, mids.numel(), x.shape, generator=g)]
    near = pick * scale.repeat_interleave(q.block_size, -1) * (1 + 1e-4 * torch.randn(x.shape, generator=g,
                                                                                        dtype=torch.float64))
    return torch.where(torch.rand(x.shape, generator=g) < 0.3, near * x.sign(), x.double()).float()


@pytest.mark.parametrize("fmt,kw", [("mxfp4", {}), ("mxfp4", {"scale_mode": "rceil"}),
                                    ("mxfp8_e4m3", {"scale_mode": "even"}),
                                    ("nvfp4", {"global_amax": 40.0}), ("nvfp4", {"global_amax": 40.0,
                                                                               "recipe": "torchao"})])
def test_near_boundary_covers_every_flip_of_a_perturbed_kernel(fmt, kw):
    """A 'kernel' whose scaled values differ by a relative error below tol flips codes only where marked."""
    g = torch.Generator().manual_seed(5)
    x = _near_ties(fmt, kw, g)
    tol = 1e-3
    delta = (torch.rand(64, 128, generator=g) * 2 - 1) * tol / 4
    y = (x.double() * (1 + delta.double())).float()
    if fmt == "nvfp4":
        qa, qb = quantize_nvfp4(x, **kw), quantize_nvfp4(y, **kw)
    else:
        elem = "e2m1" if fmt == "mxfp4" else "e4m3"
        qa, qb = quantize_mx(x, elem, **kw), quantize_mx(y, elem, **kw)
    flipped = qa.codes() != qb.codes()
    bs = qa.block_size
    flipped |= (qa.scales != qb.scales).repeat_interleave(bs, dim=-1)
    assert flipped.sum() > 10  # the perturbation does flip codes, so the check means something
    mask = near_boundary(x, fmt, tol=tol, **kw)
    assert not (flipped & ~mask).any()
    assert mask.float().mean() < 0.6  # and the mask does not simply mark everything
    assert_quantized_equal(qb, x, fmt, allow=mask, **kw)
