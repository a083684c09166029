"""NVFP4's torchao recipe (SPEC §5) against torchao itself. A module of its own, so that without torchao only
these tests skip."""
import numpy as np
import pytest
import torch

from fp4ref.nvfp4 import quantize_nvfp4

torchao_nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e-3, 1.0, 1e3, 1e30])
def test_torchao_recipe_vs_torchao(dtype, scale):
    g = torch.Generator().manual_seed(int(abs(np.log10(scale))) + 3)
    x = (torch.randn(64, 512, generator=g) * scale * torch.rand(64, 1, generator=g) ** 4).to(dtype)
    amax = x.float().abs().max()
    s, d = torchao_nv.nvfp4_quantize(x, 16, torchao_nv.per_tensor_amax_to_scale(amax))
    q = quantize_nvfp4(x, recipe="torchao")
    assert torch.equal(q.scales, s.view(torch.uint8))
    assert torch.equal(q.data, d.view(torch.uint8))
    assert q.global_scale.item() == torchao_nv.per_tensor_amax_to_scale(amax).item()
