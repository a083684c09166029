"""NVFP4 recipes "modelopt" and "compressed-tensors" (SPEC §5): bytes equal to the real libraries.

Two kinds of checks: hand-derived vectors (expected bytes worked out below from each library's formula, so
they hold without the libraries installed), and byte comparisons with nvidia-modelopt / compressed-tensors
on random tensors of many magnitudes (skipped with a reason where a package is absent; both import on CPU
with ``pip install --no-deps nvidia-modelopt compressed-tensors omegaconf pulp loguru``).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from fp4ref.nvfp4 import quantize_nvfp4

E4M3_NAN_CODES = (0x7F, 0xFF)


def _codes(q) -> list[int]:
    return q.codes().flatten().tolist()


# --- hand-derived vectors ---------------------------------------------------------------------------------
def _blocks_fp32() -> torch.Tensor:
    """Four blocks of 16: [global max], [zeros], [tiny], [ties or underflow], see each test."""
    x = torch.zeros(1, 64)
    x[0, :5] = torch.tensor([2688.0, -2688.0, 336.0, 560.0, -0.0])  # A = 2688
    x[0, 20] = -0.0  # block 1 is all zero
    x[0, 32:35] = torch.tensor([6e-3, -6e-3, -1e-4])
    return x


def test_modelopt_hand_vectors():
    # wsf2 = 2688 / 2688 = 1. s = bamax / (6 * 1):
    # b0: 448 -> 0x7E; codes 2688/448 = 6 -> 7, -6 -> 0xF, 0.75 (tie) -> 1.0 = 2, 1.25 (tie) -> 1.0 = 2,
    #     -0.0 -> 0x0 (ModelOpt's sign bit is y < 0).
    # b1: s = 0 -> 1.0 -> 0x38, codes 0 (the -0.0 too).
    # b2: s = 1e-3 -> clamp 2^-9 -> 0x01; 6e-3 * 512 = 3.072 -> 3 = 5, -3.072 -> 0xD, -1e-4 * 512 -> -0 = 0x8.
    # b3: amax 18 -> s = 3 = 1.5 * 2^1 -> 0x44; 3.75/3 = 1.25 -> 2, 5.25/3 = 1.75 -> 4, 7.5/3 = 2.5 -> 4,
    #     -10.5/3 = -3.5 -> 0xE, 18/3 = 6 -> 7.
    x = _blocks_fp32()
    x[0, 48:53] = torch.tensor([18.0, 3.75, 5.25, 7.5, -10.5])
    q = quantize_nvfp4(x, recipe="modelopt")
    assert q.scales.flatten().tolist() == [0x7E, 0x38, 0x01, 0x44]
    want = [0] * 64
    want[0:4] = [7, 0xF, 2, 2]
    want[32:35] = [5, 0xD, 0x8]
    want[48:53] = [7, 2, 4, 4, 0xE]
    assert _codes(q) == want
    assert q.global_scale.dtype == torch.float32 and float(q.global_scale) == 1.0


def test_compressed_tensors_hand_vectors_fp32():
    # gs = fp32(fp32(1/2688) * 2688) = 1.0 exactly; s = e4m3(gs * fp32(bamax / 6)); elements x / (s / gs).
    # b0: 448 -> 0x7E, codes as ModelOpt's (CT's sign is torch.sign(y), 0 for -0.0 -> 0x0).
    # b1: s = 0 -> 0.125 = 2^-3 -> 0x20, codes 0.
    # b2: 1e-3 = 0.512 * 2^-9 -> rounds to the subnormal 2^-9 = 0x01; codes 5, 0xD, 0x8 as above.
    # b3: amax 1e-3 -> 1.67e-4 = 0.085 * 2^-9 -> rounds to 0 -> 0.125 (0x20): a nonzero block takes the
    #     zero-block scale; 1e-3 / 0.125 = 0.008 -> 0; -1e-3 -> -0 keeps its sign (0x8); -0.0 -> 0x0.
    x = _blocks_fp32()
    x[0, 48:51] = torch.tensor([1e-3, -1e-3, -0.0])
    q = quantize_nvfp4(x, recipe="compressed-tensors")
    assert q.scales.flatten().tolist() == [0x7E, 0x20, 0x01, 0x20]
    want = [0] * 64
    want[0:4] = [7, 0xF, 2, 2]
    want[32:35] = [5, 0xD, 0x8]
    want[49] = 0x8
    assert _codes(q) == want
    assert float(q.global_scale) == 1.0  # decode direction: 1 / gs


def test_compressed_tensors_rounds_in_bfloat16():
    # bf16 weight, A = 9: gs = bf16(bf16(1/9) * 2688) = bf16(0.111328125 * 2688 = 299.25) = 300.
    # b0: s = 300 * bf16(9/6) = 450 -> 448 (0x7E); 9 / (448/300) = 6.03 -> 7.
    # b1: bamax 1: bf16(1/6) = 0.1669921875; s = 50.098 -> e4m3 52 = 1.625 * 2^5 -> 0x65; 300/52 = 5.77 -> 7.
    # In float32 the same values give gs = 298.67 and s = 49.78 -> 48 (0x64).
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 16] = 9.0, 1.0
    q = quantize_nvfp4(x.bfloat16(), recipe="compressed-tensors")
    assert q.scales.flatten().tolist() == [0x7E, 0x65]
    assert _codes(q)[0] == 7 and _codes(q)[16] == 7
    assert float(q.global_scale) == float(torch.tensor(1.0) / torch.tensor(300.0))
    assert quantize_nvfp4(x, recipe="compressed-tensors").scales.flatten().tolist() == [0x7E, 0x64]


def test_modelopt_all_zero_tensor_gives_nan_scales():
    # wsf2 = 0 / 2688 = 0, so s = 0 / 0 = NaN (not == 0, so not replaced by 1.0): NaN scales, and the
    # elements 0 / (NaN * 0) = NaN encode as +6 (searchsorted puts NaN last). fp4ref writes 0x7F; torch on
    # x86 writes 0xFF (the default NaN is negative there), see docs/conformance.md.
    q = quantize_nvfp4(torch.zeros(2, 32), recipe="modelopt")
    assert set(q.scales.flatten().tolist()) <= set(E4M3_NAN_CODES)
    assert set(_codes(q)) == {7}
    q = quantize_nvfp4(torch.zeros(2, 32), recipe="compressed-tensors")  # CT: gs = 1, scales 0.125
    assert set(q.scales.flatten().tolist()) == {0x20} and set(_codes(q)) == {0}


# --- the real libraries -------------------------------------------------------------------------------------
def _modelopt():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable here"
        pytest.skip(f"nvidia-modelopt not importable ({type(e).__name__}: {e})")
    return NVFP4QTensor


def _ct():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from compressed_tensors.compressors.nvfp4 import NVFP4PackedCompressor
            from compressed_tensors.quantization import QuantizationScheme
            from compressed_tensors.quantization.quant_scheme import NVFP4
            from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"compressed-tensors not importable ({type(e).__name__}: {e})")
    return NVFP4PackedCompressor, QuantizationScheme, NVFP4["weights"], calculate_qparams, generate_gparam


def modelopt_quantize(w: torch.Tensor, global_amax=None):
    NVFP4QTensor = _modelopt()
    wsf2 = None if global_amax is None else torch.tensor(float(global_amax)) / 2688.0
    q, s, s2 = NVFP4QTensor.quantize(w.clone(), 16, weights_scaling_factor_2=wsf2)
    return q._quantized_data.view(torch.uint8), s.view(torch.uint8), s2, (q, s)


def ct_quantize(w: torch.Tensor, global_amax=None):
    """llm-compressor's min-max weight observer (amin/amax per group of 16 in w's dtype, global absmax over
    them), compressed-tensors' generate_gparam / calculate_qparams, the weight_scale parameter kept in w's
    dtype (as initialize_qparams makes it), then NVFP4PackedCompressor.compress."""
    comp, scheme_cls, args, calculate_qparams, generate_gparam = _ct()
    obs = w.unflatten(-1, (-1, 16)).unsqueeze(0)
    mn, mx = torch.amin(obs, dim=(0, -1)), torch.amax(obs, dim=(0, -1))
    g = torch.max(mx.max(), -mn.min()) if global_amax is None else torch.tensor(global_amax, dtype=w.dtype)
    gs = generate_gparam(-g.reshape(1), g.reshape(1))
    scale, zp = calculate_qparams(mn, mx, args, global_scale=gs)
    sd = {"weight": w, "weight_scale": scale.to(w.dtype), "weight_global_scale": gs, "weight_zero_point": zp}
    out = comp.compress(sd, scheme_cls(targets=["Linear"], weights=args))
    return out["weight_packed"], out["weight_scale"].view(torch.uint8), gs


def random_weights(seed: int, dtype: torch.dtype, rows: int = 48, cols: int = 256) -> torch.Tensor:
    """Gaussian rows at magnitudes 2^-24..2^24 (2^-10..2^10 for float16), blocks rescaled by 2^-12..2^0,
    with an all-zero block, a block of tiny values, -0.0 entries and exact E2M1 ties mixed in."""
    g = torch.Generator().manual_seed(seed)
    span = 10 if dtype == torch.float16 else 24
    w = torch.randn(rows, cols, generator=g)
    w *= torch.exp2(torch.randint(-span, span + 1, (rows, 1), generator=g).float())
    w *= torch.exp2(torch.randint(-12, 1, (rows, cols // 16), generator=g).float()).repeat_interleave(16, 1)
    w[0, 16:32] = 0.0
    w[1, 32:48] = w[1, 32:48] * 1e-6
    w[2, ::7] = -0.0
    w[3, :16] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5,
                              -3.5, -5.0, 4.0])
    return w.to(dtype)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modelopt_bytes_equal_library(dtype, seed):
    w = random_weights(seed, dtype)
    data, scales, wsf2, _ = modelopt_quantize(w)
    q = quantize_nvfp4(w, recipe="modelopt")
    assert torch.equal(q.scales, scales)
    assert torch.equal(q.data, data)
    assert q.global_scale.view(torch.int32) == wsf2.float().reshape(()).view(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compressed_tensors_bytes_equal_library(dtype, seed):
    w = random_weights(seed, dtype)
    data, scales, gs = ct_quantize(w)
    q = quantize_nvfp4(w, recipe="compressed-tensors")
    assert torch.equal(q.scales, scales)
    assert torch.equal(q.data, data)
    assert float(q.global_scale) == float(torch.tensor(1.0) / gs.reshape(()))  # stored inverted by CT


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_given_global_amax_equals_library(dtype):
    w = random_weights(7, dtype)
    a = float(w.float().abs().max())
    for ga in (a, 2.0 * a, 0.25 * a):  # 0.25 * a pushes block scales past 448 (clamped)
        ga = float(torch.tensor(ga, dtype=dtype))
        data, scales, _, _ = modelopt_quantize(w, ga)
        q = quantize_nvfp4(w, recipe="modelopt", global_amax=ga)
        assert torch.equal(q.scales, scales) and torch.equal(q.data, data)
        data, scales, _ = ct_quantize(w, ga)
        q = quantize_nvfp4(w, recipe="compressed-tensors", global_amax=ga)
        assert torch.equal(q.scales, scales) and torch.equal(q.data, data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_edge_tensors_equal_library(dtype):
    cases = {
        "zero rows": torch.zeros(2, 32).index_fill_(1, torch.tensor([0]), 1.0),
        "negative zeros": torch.full((1, 32), -0.0).index_fill_(1, torch.tensor([3]), -2.0),
        "subnormal amax": torch.full((1, 32), 1e-40) * torch.tensor([1.0, -1.0]).repeat(16),
        "tiny amax": torch.full((1, 32), 1e-37).index_fill_(1, torch.tensor([0, 5]), -0.0),
        "huge": torch.full((1, 32), 3e38) * torch.linspace(-1, 1, 32),
    }
    for name, w in cases.items():
        w = w.to(dtype)
        for rec, ref in (("modelopt", modelopt_quantize), ("compressed-tensors", ct_quantize)):
            data, scales = ref(w)[:2]
            q = quantize_nvfp4(w, recipe=rec)
            assert torch.equal(q.scales, scales), (name, rec, q.scales, scales)
            assert torch.equal(q.data, data), (name, rec)


def test_modelopt_all_zero_matches_library_up_to_nan_sign():
    data, scales, _, _ = modelopt_quantize(torch.zeros(2, 32))
    q = quantize_nvfp4(torch.zeros(2, 32), recipe="modelopt")
    assert torch.equal(q.data, data)
    assert set(scales.flatten().tolist()) <= set(E4M3_NAN_CODES)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ULP distance of same-signed floats; ±0 count as equal (ModelOpt decodes code 0x8 as +0)."""
    d = (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()
    return torch.where((a == 0) & (b == 0), 0, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dequantize_within_one_ulp_of_library(dtype):
    """fp4ref: fp32(fp32(e2m1 * s) * global_scale), one rounding. ModelOpt: fp32(e2m1 * fp32(s * wsf2));
    CT: fp32(e2m1 * fp32(s / gs)). Same value up to the rounding of the scale product: at most 1 ULP."""
    w = random_weights(3, dtype)
    w[0, 16:32] = 1.0  # no zero block: CT's 0.125 scale is fine, but keep signs comparable
    q = quantize_nvfp4(w, recipe="modelopt")
    _, _, s2, (qt, s) = modelopt_quantize(w)
    ref = qt.dequantize(dtype=torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16})
    assert int(_ulps(q.dequantize(), ref).max()) <= 1

    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    _, _, args, _, _ = _ct()
    data, scales, gs = ct_quantize(w)
    vals = unpack_fp4_from_uint8(data, *w.shape, dtype=torch.float32)
    ref = dequantize(x_q=vals, scale=scales.view(torch.float8_e4m3fn).float(), args=args, global_scale=gs,
                     dtype=torch.float32)
    ours = quantize_nvfp4(w, recipe="compressed-tensors").dequantize()
    assert int(_ulps(ours, ref).max()) <= 1
