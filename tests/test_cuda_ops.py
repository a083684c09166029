"""fp4ref_cuda against the reference (SPEC §14), on GPU tensors, compared as integers.

Without a GPU the GPU tests skip with the reason; the build/import, op schema and fake-shape tests still
run wherever the extension is built (scripts/build_cuda.sh). The numerics are proven on CPU on every run
by test_arith_cpu.py; these tests prove the kernels' memory access and parallel structure.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4ref import hadamard, layouts, mx, nvfp4, ops
from fp4ref.formats import FORMATS

from helpers import (MX_CASES, all_patterns, amax_sweep, bits_equal, codes_equal, grid_corners,
                            mixed_blocks, random_f32, reference_hadamard_quantize, rotation_input)

fp4ref_cuda = pytest.importorskip("fp4ref_cuda")
BUILT = fp4ref_cuda.built()
needs_build = pytest.mark.skipif(not BUILT, reason=f"fp4ref_cuda._C is not built (scripts/build_cuda.sh): "
                                                   f"{fp4ref_cuda.LOAD_ERROR}")
HAS_GPU = BUILT and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and the built fp4ref_cuda extension"
                               if BUILT else f"fp4ref_cuda._C is not built: {fp4ref_cuda.LOAD_ERROR}")
OPS = ("encode", "decode", "pack_fp4", "unpack_fp4", "swizzle_scales", "unswizzle_scales", "finite_amax",
       "block_hadamard", "quantize", "dequantize")
DEV = "cuda"


# --- no GPU needed: signatures, schemas and fake (meta) shapes -----------------------------------------
def test_public_signatures_match_the_reference():
    import inspect

    from fp4ref import codecs

    refs = {"encode": codecs.encode, "decode": codecs.decode, "pack_fp4": layouts.pack_fp4,
            "unpack_fp4": layouts.unpack_fp4, "swizzle_scales": layouts.swizzle_scales,
            "unswizzle_scales": layouts.unswizzle_scales, "quantize_mx": mx.quantize_mx,
            "dequantize_mx": mx.dequantize_mx, "quantize_nvfp4": nvfp4.quantize_nvfp4,
            "dequantize_nvfp4": nvfp4.dequantize_nvfp4, "block_hadamard": hadamard.block_hadamard,
            "hadamard_quantize": ops.hadamard_quantize}

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    for name, ref in refs.items():
        assert params(getattr(fp4ref_cuda, name)) == params(ref), name


@needs_build
def test_ops_registered_with_schemas():
    for name in OPS:
        schema = str(getattr(torch.ops.fp4ref_cuda, name).default._schema)
        assert schema.startswith(f"fp4ref_cuda::{name}("), schema


@needs_build
def test_fake_shapes_on_meta_tensors():
    x = torch.empty(3, 130, 64, dtype=torch.bfloat16, device="meta")
    data, scales, gs, swz = torch.ops.fp4ref_cuda.quantize(x, 0, 0, 0, 32, 16, None, 0.25, None, True)
    assert data.shape == (3, 130, 32) and scales.shape == (3, 130, 2) and swz.shape == (512 * 4,)
    data, scales, gs, swz = torch.ops.fp4ref_cuda.quantize(x, 2, 0, 0, 16, 1, None, 1.0, x.new_empty((), dtype=torch.float32), False)
    assert data.dtype == torch.uint8 and scales.shape == (3, 130, 4) and gs.shape == () and swz.numel() == 0
    out = torch.ops.fp4ref_cuda.dequantize(data, scales, gs, 2, 0, 16, False, torch.float16)
    assert out.shape == (3, 130, 64) and out.dtype == torch.float16
    codes, err = torch.ops.fp4ref_cuda.encode(x, 3, True)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert torch.ops.fp4ref_cuda.block_hadamard(x, 64, None, 0.125).dtype == torch.float32
    assert torch.ops.fp4ref_cuda.swizzle_scales(torch.empty(129, 5, dtype=torch.uint8, device="meta")).shape == (2048,)


@needs_build
def test_cpu_tensor_is_not_served():
    with pytest.raises(NotImplementedError):
        torch.ops.fp4ref_cuda.encode(torch.zeros(4), 0, True)


# --- GPU: exhaustive sweeps --------------------------------------------------------------------------------
def cuda_backend_used():
    assert ops.backend(torch.zeros(1, device=DEV)) == "cuda"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_encode_decode_every_pattern(fmt, dtype):
    cuda_backend_used()
    x = all_patterns(dtype).to(DEV)
    codes_equal(ops.encode(x, fmt).cpu(), ops.encode(x.cpu(), fmt))
    y = torch.cat([grid_corners(), random_f32(1_000_003, 1)]).to(DEV)
    codes_equal(ops.encode(y, fmt).cpu(), ops.encode(y.cpu(), fmt))
    if fmt in ("e4m3", "e5m2", "e8m0"):
        codes_equal(ops.encode(y, fmt, saturate=False).cpu(), ops.encode(y.cpu(), fmt, saturate=False))
    else:
        with pytest.raises(ValueError, match="saturate=False"):
            ops.encode(y, fmt, saturate=False)
    n = 256 if fmt in ("e4m3", "e5m2", "e8m0") else 1 << FORMATS[fmt].bits
    codes = torch.arange(n, dtype=torch.uint8, device=DEV).repeat(5)[:-3]
    for out in (torch.float32, torch.bfloat16, torch.float16):
        bits_equal(ops.decode(codes, fmt, out), ops.decode(codes.cpu(), fmt, out).to(DEV))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("elem,mode", MX_CASES)
def test_quantize_mx_every_pattern(elem, mode, dtype):
    for x in (amax_sweep(dtype, 32), mixed_blocks(dtype, 32)):
        xg = x.to(DEV)
        got, want = ops.quantize_mx(xg, elem, scale_mode=mode), mx.quantize_mx(xg, elem, scale_mode=mode)
        codes_equal(got.scales, want.scales)
        codes_equal(got.data, want.data)
        for out in (torch.float32, torch.bfloat16, torch.float16):
            bits_equal(ops.dequantize_mx(want, out), mx.dequantize_mx(want, out))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantize_nvfp4_every_pattern(dtype):
    src = torch.bfloat16 if dtype == torch.float32 else dtype
    for x in (amax_sweep(src, 16).to(dtype), mixed_blocks(src, 16).to(dtype)):
        xg = x.to(DEV)
        for ga in (None, 1.0, 2688.0, 1e-30):
            got, want = ops.quantize_nvfp4(xg, global_amax=ga), nvfp4.quantize_nvfp4(xg, global_amax=ga)
            bits_equal(got.global_scale, want.global_scale)
            codes_equal(got.scales, want.scales)
            codes_equal(got.data, want.data)
        for out in (torch.float32, torch.bfloat16, torch.float16):
            bits_equal(ops.dequantize_nvfp4(want, out), nvfp4.dequantize_nvfp4(want, out))


@needs_gpu
@pytest.mark.parametrize("hb", [2, 4, 8, 16, 32, 64, 128, 256])
def test_block_hadamard_and_fused(hb):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = rotation_input(dtype, rows=300, k=1024, seed=hb).to(DEV)
        for signs in (None, hadamard.random_signs(hb, seed=1).to(DEV), hadamard.random_signs(1024, seed=2).to(DEV)):
            bits_equal(ops.block_hadamard(x, hb, signs=signs), hadamard.block_hadamard(x, hb, signs=signs))
            for fmt, mode in (("mxfp4", "floor"), ("mxfp4", "rceil"), ("nvfp4", None)):
                got, blocked = ops.hadamard_quantize(x, fmt, hadamard_block=hb, signs=signs,
                                                     scale_mode=mode or "floor", swizzle=True)
                want = reference_hadamard_quantize(x, fmt, hb, signs, mode, None)
                codes_equal(got.scales, want.scales)
                codes_equal(got.data, want.data)
                codes_equal(blocked, layouts.swizzle_scales(want.scales.reshape(-1, want.scales.shape[-1])))


@needs_gpu
@pytest.mark.parametrize("rows,k", [(256, 512), (128, 128), (300, 512), (256, 96)])
def test_swizzled_scales_with_and_without_padding(rows, k):
    """Without padding (rows % 128 == 0, blocks per row % 4 == 0) the blocked buffer is not zero-filled first,
    so every byte must come from the kernel; with padding the pad bytes must be zero."""
    x = rotation_input(torch.bfloat16, rows=rows, k=k, seed=rows + k).to(DEV)
    for fmt in ("mxfp4", "nvfp4"):
        got, blocked = ops.hadamard_quantize(x, fmt, hadamard_block=32, swizzle=True)
        want = reference_hadamard_quantize(x, fmt, 32, None, "floor", None)
        codes_equal(blocked, layouts.swizzle_scales(want.scales.reshape(-1, want.scales.shape[-1])))


# --- GPU: hypothesis-generated tensors ---------------------------------------------------------------------
@st.composite
def tensors(draw, block: int):
    rows = draw(st.integers(1, 300))
    k = block * draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * 2.0 ** draw(st.integers(-40, 40))
    x = x * torch.exp2(torch.randint(-8, 8, (rows, 1), generator=g).float())
    if draw(st.booleans()):
        idx = torch.randint(0, x.numel(), (3,), generator=g)
        x.view(-1)[idx] = torch.tensor([math.nan, math.inf, -math.inf])
    x = x.to(dtype).to(DEV)
    layout = draw(st.sampled_from(["contiguous", "transposed", "offset"]))
    if layout == "transposed":  # non-contiguous view with the same values
        x = x.t().contiguous().t()
    elif layout == "offset":  # a view whose data pointer is not 16-byte aligned
        flat = torch.empty(x.numel() + 1, dtype=dtype, device=DEV)
        flat[1:] = x.reshape(-1)
        x = flat[1:].view(rows, k)
    return x


@needs_gpu
@settings(max_examples=40, deadline=None)
@given(x=tensors(32), case=st.sampled_from(MX_CASES))
def test_quantize_mx_hypothesis(x, case):
    elem, mode = case
    got, want = ops.quantize_mx(x, elem, scale_mode=mode), mx.quantize_mx(x, elem, scale_mode=mode)
    codes_equal(got.scales, want.scales)
    codes_equal(got.data, want.data)
    bits_equal(ops.dequantize_mx(want, torch.bfloat16), mx.dequantize_mx(want, torch.bfloat16))
    y = x.t()  # blocks along axis 0 need a row count that is a multiple of the block
    if y.shape[1] % 8 == 0:
        got, want = ops.quantize_mx(y, elem, block_size=8, scale_mode=mode, axis=1), \
            mx.quantize_mx(y, elem, block_size=8, scale_mode=mode, axis=1)
        codes_equal(got.data, want.data)
        codes_equal(got.scales, want.scales)


@needs_gpu
@settings(max_examples=40, deadline=None)
@given(x=tensors(16), ga=st.sampled_from([None, 1.0, 6.0 * 448.0]))
def test_quantize_nvfp4_hypothesis(x, ga):
    got, want = ops.quantize_nvfp4(x, global_amax=ga), nvfp4.quantize_nvfp4(x, global_amax=ga)
    bits_equal(got.global_scale, want.global_scale)
    codes_equal(got.scales, want.scales)
    codes_equal(got.data, want.data)
    bits_equal(ops.dequantize_nvfp4(want, torch.float16), nvfp4.dequantize_nvfp4(want, torch.float16))


@needs_gpu
@settings(max_examples=40, deadline=None)
@given(x=tensors(256), hb=st.sampled_from([2, 16, 32, 64, 128, 256]), fmt=st.sampled_from(["mxfp4", "nvfp4"]),
       with_signs=st.booleans())
def test_hadamard_quantize_hypothesis(x, hb, fmt, with_signs):
    signs = hadamard.random_signs(hb, seed=hb).to(DEV) if with_signs else None
    bits_equal(ops.block_hadamard(x, hb, signs=signs), hadamard.block_hadamard(x, hb, signs=signs))
    got = ops.hadamard_quantize(x, fmt, hadamard_block=hb, signs=signs)
    want = reference_hadamard_quantize(x, fmt, hb, signs, "floor", None)
    codes_equal(got.scales, want.scales)
    codes_equal(got.data, want.data)


@needs_gpu
@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 700), cols=st.integers(1, 40), seed=st.integers(0, 1000))
def test_layouts_hypothesis(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 256, (rows, cols), generator=g, dtype=torch.uint8).to(DEV)
    blocked = ops.swizzle_scales(s)
    codes_equal(blocked, layouts.swizzle_scales(s))
    codes_equal(ops.unswizzle_scales(blocked, rows, cols), s)
    codes = torch.randint(0, 16, (rows, 2 * cols), generator=g, dtype=torch.uint8).to(DEV)
    packed = ops.pack_fp4(codes)
    codes_equal(packed, layouts.pack_fp4(codes))
    codes_equal(ops.unpack_fp4(packed), codes)


# --- GPU: bad input is a Python error, never an illegal memory access --------------------------------
@needs_gpu
def test_bad_input_raises_python_errors():
    x = torch.randn(4, 64, device=DEV, dtype=torch.bfloat16)
    low = torch.ops.fp4ref_cuda
    with pytest.raises(TypeError):
        ops.quantize_mx(x.to(torch.int32))
    with pytest.raises(ValueError):
        ops.quantize_mx(x[:, :48])  # 48 is not a multiple of 32
    with pytest.raises(ValueError):
        ops.block_hadamard(x, 48)
    with pytest.raises(ValueError, match="> 15"):
        ops.pack_fp4(torch.full((4, 8), 16, dtype=torch.uint8, device=DEV))
    with pytest.raises(ValueError, match="contiguous"):
        low.quantize(x.t(), 0, 0, 0, 2, 1, None, 1.0, None, False)
    with pytest.raises(ValueError, match="aligned"):
        low.encode(x.view(-1)[1:], 0, True)
    with pytest.raises(ValueError, match="signs"):
        low.block_hadamard(x, 16, torch.ones(16), 0.25)  # signs on the CPU
    with pytest.raises(ValueError, match="signs"):
        low.block_hadamard(x, 16, torch.ones(8, device=DEV), 0.25)
    with pytest.raises(ValueError, match="amax"):
        low.quantize(x, 2, 0, 0, 16, 1, None, 1.0, None, False)
    with pytest.raises(ValueError, match="multiple"):
        low.quantize(x, 0, 0, 0, 48, 1, None, 1.0, None, False)
    with pytest.raises(ValueError, match="scales"):
        low.dequantize(torch.zeros(4, 32, dtype=torch.uint8, device=DEV), torch.zeros(4, 1, dtype=torch.uint8, device=DEV),
                       None, 0, 0, 32, False, torch.float32)
    with pytest.raises(ValueError, match="blocked"):
        low.unswizzle_scales(torch.zeros(100, dtype=torch.uint8, device=DEV), 3, 3)
    with pytest.raises(TypeError):
        low.decode(torch.zeros(4, device=DEV), 0)
    torch.cuda.synchronize()  # no kernel faulted
    assert torch.equal(ops.unpack_fp4(ops.pack_fp4(torch.zeros(2, 4, dtype=torch.uint8, device=DEV))),
                       torch.zeros(2, 4, dtype=torch.uint8, device=DEV))


@needs_gpu
def test_empty_and_tiny_tensors():
    for shape in ((0, 32), (1, 32), (1, 2)):
        x = torch.randn(shape, device=DEV)
        if shape[-1] % 32 == 0:
            codes_equal(ops.quantize_mx(x).data, mx.quantize_mx(x).data)
        codes_equal(ops.encode(x, "e2m1"), ops.encode(x.cpu(), "e2m1").to(DEV))
    torch.cuda.synchronize()
