"""NVFP4 (SPEC §5): the "te" chain against an independent numpy float32 transcription, hand vectors, torchao."""
import ml_dtypes
import numpy as np
import pytest
import torch

from fp4ref.layouts import unpack_fp4
from fp4ref.nvfp4 import NVFP4Tensor, dequantize_nvfp4, quantize_nvfp4

F = np.float32
FLT_MAX = np.finfo(np.float32).max


def e4m3_sat(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -448, 448).astype(ml_dtypes.float8_e4m3fn)


def te_oracle(x: np.ndarray, global_amax=None):
    """numpy float32 transcription of SPEC §5 "te" (every op one float32 rounding); finite x only."""
    x = x.astype(F)
    a = F(np.abs(x).max()) if global_amax is None else F(global_amax)
    with np.errstate(divide="ignore", over="ignore"):
        s_enc = F(2688) / a if a != 0 else F(np.inf)
    s_enc = min(s_enc, FLT_MAX)
    if a == 0 or s_enc == 0:
        s_enc = F(1)
    n, k = x.shape
    xb = x.reshape(n, k // 16, 16)
    bamax = np.abs(xb).max(axis=-1)
    s_b = e4m3_sat(bamax * F(s_enc * F(1.0 / 6.0)))
    s_dec = F(F(1) / s_enc)
    with np.errstate(divide="ignore"):
        enc = np.minimum(F(1) / (s_b.astype(F) * s_dec), FLT_MAX)
    with np.errstate(over="ignore"):
        y = xb * enc[..., None]
    codes = np.clip(y, -6, 6).astype(ml_dtypes.float4_e2m1fn).view(np.uint8).reshape(n, k)
    return codes, s_b.view(np.uint8), s_dec


def check_te(x: torch.Tensor, global_amax=None):
    q = quantize_nvfp4(x, global_amax=global_amax)
    codes, scales, s_dec = te_oracle(x.float().numpy(), global_amax)
    assert torch.equal(q.scales, torch.from_numpy(scales))
    assert torch.equal(unpack_fp4(q.data), torch.from_numpy(codes))
    assert q.global_scale.dtype == torch.float32 and q.global_scale.item() == float(s_dec)
    return q


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", range(4))
def test_te_vs_oracle_random(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-20, 12) if dtype == torch.float16 else (-120, 120)
    mags = 2.0 ** torch.randint(lo, hi, (1,), generator=g).float()
    rows = torch.rand(32, 1, generator=g) ** 6  # blocks far below the global amax too
    x = (torch.randn(32, 256, generator=g) * rows * mags).to(dtype)
    check_te(x)


@pytest.mark.parametrize("global_amax", [1e-3, 0.5, 3.0, 1e4])
def test_te_vs_oracle_given_global_amax(global_amax):
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(5))
    check_te(x, global_amax)


def test_te_every_bf16_pattern():
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    x = x[torch.isfinite(x)]
    x = x[: x.numel() // 256 * 256].view(-1, 256)
    for scale in (1.0, 2.0**-100):  # the global amax is FLT-scale; scaling brings tiny blocks into range
        check_te(x * scale)


def test_all_zero_tensor():
    q = quantize_nvfp4(torch.zeros(2, 32))
    assert q.global_scale.item() == 1.0
    assert bool((q.scales == 0).all()) and bool((q.data == 0).all())
    assert bool((dequantize_nvfp4(q) == 0).all())


def test_global_amax_zero_means_unit_encode_scale():
    x = torch.zeros(1, 16)
    x[0, 0], x[0, 1] = 6.0, -3.0
    q = quantize_nvfp4(x, global_amax=0.0)
    # S_enc = 1; s_b = e4m3(fp32(6 * fp32(1/6))) = e4m3(1.0000001) = 1.0 = 0x38; enc = 1
    assert q.global_scale.item() == 1.0 and q.scales.item() == 0x38
    assert unpack_fp4(q.data)[0, :3].tolist() == [0x7, 0xD, 0x0]


def test_block_scale_rounding_to_zero_gives_saturated_codes():
    # TE: a block whose E4M3 scale underflows stores 0, enc = FLT_MAX, nonzero elements encode as ±6.
    x = torch.zeros(1, 32)
    x[0, 0] = 1e4
    x[0, 16], x[0, 17], x[0, 18] = 1e-3, -1e-3, 0.0
    q = quantize_nvfp4(x)
    assert q.scales[0, 1].item() == 0x00
    assert unpack_fp4(q.data)[0, 16:19].tolist() == [0x7, 0xF, 0x0]
    assert dequantize_nvfp4(q)[0, 16].item() == 0.0


def test_block_holding_global_amax_scale_448():
    x = torch.zeros(1, 16)
    x[0, 0] = 7.0
    q = quantize_nvfp4(x)
    # S_enc = 384; 7 * fp32(384 * fp32(1/6)) = 448.00002 -> e4m3 448 = 0x7E
    assert q.scales.item() == 0x7E and unpack_fp4(q.data)[0, 0].item() == 0x7


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_block(bad):
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    clean = quantize_nvfp4(x, global_amax=x.abs().max())
    x[1, 20] = bad
    q = quantize_nvfp4(x)  # the global amax ignores the non-finite element
    assert q.global_scale.item() == clean.global_scale.item()
    assert q.scales[1, 1].item() == 0x7F and bool((unpack_fp4(q.data)[1, 16:] == 0).all())
    mask = torch.ones(2, 2, dtype=torch.bool)
    mask[1, 1] = False
    assert torch.equal(q.scales[mask], clean.scales[mask])
    d = dequantize_nvfp4(q)
    assert bool(torch.isnan(d[1, 16:]).all()) and bool(torch.isfinite(d[0]).all())


def test_negative_zero_keeps_sign():
    x = torch.tensor([[-0.0, 0.0, -1e-30, 1.0] + [0.0] * 12])
    assert unpack_fp4(quantize_nvfp4(x).data)[0, :4].tolist() == [0x8, 0x0, 0x8, 0x7]


def test_dequantize_formula():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)) * 37
    q = quantize_nvfp4(x)
    codes = unpack_fp4(q.data).numpy()
    e2m1 = codes.view(ml_dtypes.float4_e2m1fn).astype(F).reshape(4, 4, 16)
    sb = q.scales.numpy().view(ml_dtypes.float8_e4m3fn).astype(F)
    want = ((e2m1 * sb[..., None]) * F(q.global_scale.item())).reshape(4, 64)
    assert torch.equal(dequantize_nvfp4(q), torch.from_numpy(want))
    assert (dequantize_nvfp4(q) - x).abs().max() < x.abs().max() / 4


def test_bad_input():
    with pytest.raises(ValueError, match="recipe='nv'"):
        quantize_nvfp4(torch.randn(2, 16), recipe="nv")
    with pytest.raises(ValueError, match="multiple of block_size"):
        quantize_nvfp4(torch.randn(2, 24))
    with pytest.raises(ValueError, match="global_amax must be finite"):
        quantize_nvfp4(torch.randn(2, 16), global_amax=float("nan"))
    with pytest.raises(ValueError, match="global_amax must be finite and >= 0"):
        quantize_nvfp4(torch.randn(2, 16), global_amax=-1.0)
    with pytest.raises(TypeError):
        quantize_nvfp4(torch.ones(2, 16, dtype=torch.int64))
    q = quantize_nvfp4(torch.randn(2, 32))
    with pytest.raises(ValueError, match="scales has shape"):
        dequantize_nvfp4(NVFP4Tensor(q.data, q.scales[:, :1], q.global_scale, "te", q.shape))


def test_views_and_empty():
    q = quantize_nvfp4(torch.randn(3, 32))
    d, s = q.to_torch_dtypes()
    assert d.dtype == torch.float4_e2m1fn_x2 and s.dtype == torch.float8_e4m3fn
    assert torch.equal(s.float(), torch.from_numpy(q.scales.numpy().view(ml_dtypes.float8_e4m3fn).astype(F)))
    assert quantize_nvfp4(torch.empty(0, 16)).data.shape == (0, 8)
