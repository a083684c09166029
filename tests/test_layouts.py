"""Packing and the 128x4 swizzled scale layout (SPEC §3), against a loop transcription and torchao."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fp4ref.layouts import (as_e4m3, as_e8m0, as_float4_x2, pack_fp4, swizzle_scales, unpack_fp4,
                            unswizzle_scales)


def test_pack_nibble_order():
    codes = torch.tensor([[0x1, 0x2, 0xF, 0x0, 0x7, 0x8]], dtype=torch.uint8)
    assert pack_fp4(codes).tolist() == [[0x21, 0x0F, 0x87]]
    assert torch.equal(unpack_fp4(pack_fp4(codes)), codes)


@given(st.lists(st.integers(0, 15), min_size=0, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_pack_roundtrip(vals):
    codes = torch.tensor(vals, dtype=torch.uint8).view(1, -1)
    packed = pack_fp4(codes)
    assert packed.shape == (1, len(vals) // 2)
    for i, b in enumerate(packed[0].tolist()):
        assert b == vals[2 * i] | (vals[2 * i + 1] << 4)
    assert torch.equal(unpack_fp4(packed), codes)


def offset_by_formula(r, c, cols):
    """SPEC §3 / cuBLAS: tiles of 128x4 row-block-major, then (r%32)*16 + ((r%128)//32)*4 + c%4."""
    tiles_per_row = (cols + 3) // 4
    return ((r // 128) * tiles_per_row + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4)


@pytest.mark.parametrize("rows,cols", [(1, 1), (128, 4), (300, 37), (129, 5), (256, 8)])
def test_swizzle_matches_formula(rows, cols):
    s = torch.randint(1, 255, (rows, cols), dtype=torch.uint8, generator=torch.Generator().manual_seed(rows))
    blocked = swizzle_scales(s)
    rp, cp = (rows + 127) // 128 * 128, (cols + 3) // 4 * 4
    assert blocked.shape == (rp * cp,)
    expected = torch.zeros(rp * cp, dtype=torch.uint8)  # padding is 0
    for r in range(rows):
        for c in range(cols):
            expected[offset_by_formula(r, c, cols)] = s[r, c]
    assert torch.equal(blocked, expected)
    assert torch.equal(unswizzle_scales(blocked, rows, cols), s)


def test_swizzle_vs_torchao():
    to_blocked = pytest.importorskip("torchao.prototype.mx_formats.utils").to_blocked
    for rows, cols in [(300, 37), (128, 4), (77, 64)]:
        s = torch.randint(0, 256, (rows, cols), dtype=torch.uint8)
        assert torch.equal(swizzle_scales(s), to_blocked(s).reshape(-1))


def test_pack_vs_torchao():
    pack_uint4 = pytest.importorskip("torchao.prototype.mx_formats.kernels").pack_uint4
    codes = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    assert torch.equal(pack_fp4(codes), pack_uint4(codes))


def test_views():
    p = torch.tensor([0x21], dtype=torch.uint8)
    assert as_float4_x2(p).dtype == torch.float4_e2m1fn_x2
    assert as_e8m0(torch.tensor([127], dtype=torch.uint8)).float().item() == 1.0
    assert as_e4m3(torch.tensor([0x38], dtype=torch.uint8)).float().item() == 1.0
    # views come back: the float8 views are accepted wherever uint8 codes are
    assert torch.equal(unpack_fp4(as_float4_x2(p)), torch.tensor([1, 2], dtype=torch.uint8))
    assert swizzle_scales(as_e8m0(torch.ones(2, 2, dtype=torch.uint8))).numel() == 512


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        pack_fp4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4-bit"):
        pack_fp4(torch.tensor([16, 0], dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        pack_fp4(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        swizzle_scales(torch.zeros(2, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="blocked must be 1-D with 512 bytes"):
        unswizzle_scales(torch.zeros(100, dtype=torch.uint8), 3, 3)
