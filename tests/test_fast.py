"""fp4ref/_fast.py gives the reference's bytes (quantize_mx e2m1, quantize_nvfp4 every recipe)."""
from __future__ import annotations

import pytest
import torch

from fp4ref import _fast
from fp4ref.formats import E2M1
from fp4ref.mx import SCALE_MODES, dequantize_mx_reference, quantize_mx, quantize_mx_reference
from fp4ref.nvfp4 import (_RECIPE_FUNCS, RECIPES, dequantize_nvfp4_reference, finite_amax, quantize_nvfp4,
                          quantize_nvfp4_reference)


def awkward(seed: int, dtype: torch.dtype, rows: int = 32, cols: int = 256) -> torch.Tensor:
    """Rows at 2^-140..2^120 (clipped by the dtype), blocks rescaled down to 2^-20, zero and -0.0 blocks,
    NaN/±Inf, every E2M1 tie, and a row of random float32 bit patterns."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp2(torch.randint(-140, 120, (rows, 1), generator=g).float())
    w *= torch.exp2(torch.randint(-20, 1, (rows, cols // 16), generator=g).float()).repeat_interleave(16, 1)
    w[0, :32] = 0.0
    w[1, ::5] = -0.0
    w[2, 3], w[3, 40], w[4, 7] = float("nan"), float("inf"), -float("inf")
    w[5, :16] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5,
                              -3.5, -5.0, 4.0])
    w[6] = torch.randint(-2**31, 2**31 - 1, (cols,), generator=g, dtype=torch.int64).to(torch.int32).view(
        torch.float32)
    return w.to(dtype)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_tables_match_reference_on_every_bf16_pattern():
    from fp4ref.codecs import magnitude_codes
    from fp4ref.formats import E2M1

    v = (torch.arange(65536, dtype=torch.int32) << 16).view(torch.float32)
    want = magnitude_codes(v.abs(), E2M1, saturate=True).to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)
    bf = torch.arange(65536, dtype=torch.int32).to(torch.uint16).view(torch.bfloat16)  # no NaN canonicalizing
    assert torch.equal(_fast.codes_bf16(bf), want)
    assert torch.equal(_fast.codes_f32(v.clone()), want)
    # sticky bits: one ULP either side of every bf16 pattern
    up, down = (v.view(torch.int32) + 1).view(torch.float32), (v.view(torch.int32) - 1).view(torch.float32)
    for u in (up, down):
        want = magnitude_codes(u.abs(), E2M1, saturate=True).to(torch.uint8) | (torch.signbit(u).to(torch.uint8) << 3)
        assert torch.equal(_fast.codes_f32(u.clone()), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", SCALE_MODES)
def test_mx_e2m1_equals_reference(dtype, mode):
    for seed, axis in ((0, 1), (1, 0)):
        w = awkward(seed, dtype)
        q = quantize_mx_reference(w, E2M1, 32, mode, axis)
        data, scales = _fast.quantize_mx_e2m1(w, 32, mode, axis)
        assert torch.equal(data, q.data) and torch.equal(scales, q.scales)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("recipe", RECIPES)
def test_nvfp4_equals_reference(dtype, recipe):
    kw = {"src_dtype": dtype} if recipe == "compressed-tensors" else {}
    for seed in (0, 1):
        w = awkward(seed, dtype)
        q = quantize_nvfp4_reference(w, None, recipe, 16)
        amax = finite_amax(w)
        for a in (amax, None):  # None: the global amax from the block maxima
            data, scales, gs = _fast.quantize_nvfp4_fast(w, a, _RECIPE_FUNCS[recipe], 16, **kw)
            assert torch.equal(data, q.data) and torch.equal(scales, q.scales)
            assert gs.reshape(()).view(torch.int32) == q.global_scale.view(torch.int32)
        finite = w.float().nan_to_num(0.0, 0.0, 0.0).to(dtype)  # the block-maxima amax without non-finite blocks
        q = quantize_nvfp4_reference(finite, None, recipe, 16)
        data, scales, gs = _fast.quantize_nvfp4_fast(finite, None, _RECIPE_FUNCS[recipe], 16, **kw)
        assert torch.equal(data, q.data) and torch.equal(scales, q.scales)


def test_chunking_does_not_change_bytes(monkeypatch):
    w = awkward(3, torch.bfloat16, rows=40)
    q = quantize_mx_reference(w, E2M1, 32, "floor", 1)
    monkeypatch.setattr(_fast, "CHUNK_ELEMS", 3 * 256)
    monkeypatch.setattr(_fast, "PARALLEL_CHUNK_ELEMS", 3 * 256)  # 3 rows per chunk, last chunk short
    data, scales = _fast.quantize_mx_e2m1(w, 32, "floor", 1)
    assert torch.equal(data, q.data) and torch.equal(scales, q.scales)


def test_declines_what_it_does_not_cover():
    assert _fast.quantize_mx_e2m1(torch.zeros(0, 32), 32, "floor", 1) is None
    assert _fast.quantize_mx_e2m1(torch.zeros(2, 32, dtype=torch.float64), 32, "floor", 1) is None


def _same_floats(a: torch.Tensor, b: torch.Tensor) -> bool:
    ib = torch.int16 if a.element_size() == 2 else torch.int32
    nan = torch.isnan(a)
    return bool(torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan].view(ib), b[~nan].view(ib)))


@pytest.mark.parametrize("out", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dequantize_equals_reference(out):
    for mode, axis in (("floor", 1), ("stretch", 0), ("rceil", 1)):
        q = quantize_mx(awkward(4, torch.float32), "e2m1", block_size=32, scale_mode=mode, axis=axis)
        assert _same_floats(_fast.dequantize_mx_e2m1(q, out), dequantize_mx_reference(q, out))
    for recipe in RECIPES:
        q = quantize_nvfp4(awkward(5, torch.bfloat16), recipe=recipe)
        assert _same_floats(_fast.dequantize_nvfp4_fast(q, out), dequantize_nvfp4_reference(q, out))


def test_public_functions_take_the_fast_path_and_agree():
    w = awkward(6, torch.bfloat16)
    q = quantize_mx(w, "e2m1", scale_mode="rceil")
    r = quantize_mx_reference(w, E2M1, 32, "rceil", 1)
    assert torch.equal(q.data, r.data) and torch.equal(q.scales, r.scales)
    n = quantize_nvfp4(w)
    m = quantize_nvfp4_reference(w, None, "te", 16)
    assert torch.equal(n.data, m.data) and torch.equal(n.scales, m.scales)


def test_workers_follow_the_callers_inference_mode(monkeypatch):
    """The worker threads take the caller's torch.inference_mode: a dequantized weight made under it (as a
    FP4Linear's cache is, inside a model's generate) is written there without error and has the same bits."""
    w = awkward(4, torch.float32, rows=40)
    q = quantize_mx(w, "e2m1", block_size=32, scale_mode="floor")
    monkeypatch.setattr(_fast, "PARALLEL_CHUNK_ELEMS", 3 * 256)  # several chunks, so the pool runs
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = _fast.dequantize_mx_e2m1(q)
        with torch.inference_mode():
            got = _fast.dequantize_mx_e2m1(q)
        assert got.is_inference()
        with torch.enable_grad():
            grad = _fast.dequantize_mx_e2m1(q)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.equal(grad.view(torch.int32), want.view(torch.int32)) and not grad.requires_grad
