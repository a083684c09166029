"""MX block quantization (SPEC §4) against torchao, the peer the OCP scale modes are named after. A module of its
own, so that without torchao only these tests skip."""
import pytest
import torch

from fp4ref.layouts import unpack_fp4
from fp4ref.mx import quantize_mx
from helpers import codes_of, every_pattern_blocks

torchao_mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402

ELEMS = ["e2m1", "e2m3", "e3m2", "e4m3", "e5m2"]
OCP_MODES = ["floor", "ceil", "even", "rceil"]
TORCHAO_ELEM = {"e2m1": torch.float4_e2m1fn_x2, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2,
                "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2"}


def torchao_codes(x, elem, mode):
    s, d = torchao_mx.to_mx(x, TORCHAO_ELEM[elem], 32, ScaleCalculationMode[mode.upper()])
    d = d.view(torch.uint8)
    if elem == "e2m1":
        d = unpack_fp4(d)
    return s.view(torch.uint8).reshape(x.shape[0], -1), d.reshape(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", OCP_MODES)
@pytest.mark.parametrize("elem", ELEMS)
def test_vs_torchao_random(elem, mode, dtype):
    g = torch.Generator().manual_seed(11)
    mags = 2.0 ** torch.randint(-100, 100, (64, 1), generator=g).float()
    x = (torch.randn(64, 128, generator=g) * mags).to(dtype)
    s, d = torchao_codes(x, elem, mode)
    q = quantize_mx(x, elem, scale_mode=mode)
    # torchao 0.18 divides by 2^-126 where the scale byte is 0 (SPEC §4): compare only other blocks.
    ok = (q.scales != 0).repeat_interleave(32, dim=1)
    assert torch.equal(q.scales, s)
    assert torch.equal(codes_of(q)[ok], d[ok])


@pytest.mark.parametrize("mode", OCP_MODES)
def test_vs_torchao_every_bf16_pattern(mode):
    x = every_pattern_blocks(torch.bfloat16).to(torch.bfloat16)
    finite_rows = torch.isfinite(x.float()).all(dim=1)
    x = x[finite_rows]  # torchao 0.18 gives Inf blocks a finite scale (SPEC §4)
    s, d = torchao_codes(x, "e2m1", mode)
    q = quantize_mx(x, "e2m1", scale_mode=mode)
    assert torch.equal(q.scales, s)
    ok = (q.scales != 0).repeat_interleave(32, dim=1)
    assert torch.equal(codes_of(q)[ok], d[ok])
