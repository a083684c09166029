"""The kernels' C++ numerics (arith.cuh, the tile headers, dispatch.cuh, gemm_dequant.cuh) built for CPU, against the
reference.

fp4ref_cuda/_cpu.py compiles csrc/arith_cpu.cpp with strict IEEE float32 flags and runs the same tile
functions and op dispatch the CUDA kernels run, through the same Python wrappers (fp4ref_cuda._wrappers).
Every bf16 and fp16 bit pattern goes through every codec, scale mode and quantizer; results must equal the
reference's as integers. This proves the numerics on every CI run; GPU runs (test_cuda_ops.py) prove the
memory access and parallel structure.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from fp4ref import codecs, hadamard, layouts, mx, nvfp4
from fp4ref.formats import FORMATS

from helpers import (MX_CASES, all_patterns, amax_sweep, bits_equal, codes_equal, grid_corners, mixed_blocks,
                          random_f32, reference_hadamard_quantize, rotation_input)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler to build the CPU copy of the kernels' arithmetic")


@pytest.fixture(scope="module")
def ops():
    from fp4ref_cuda._cpu import load

    return load()


@pytest.fixture(scope="module")
def low(ops):
    return ops.low
















# --- §2 codecs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_encode_every_pattern(ops, fmt, dtype):
    x = all_patterns(dtype)
    codes_equal(ops.encode(x, fmt), codecs.encode(x, fmt))
    f = FORMATS[fmt]
    if f.nan_code is None and fmt != "e8m0":  # saturate=False raises on NaN/overflow: compare the rest
        x = x[x.float().abs() <= f.max_finite]
    codes_equal(ops.encode(x, fmt, saturate=False), codecs.encode(x, fmt, saturate=False))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_encode_float32_corners_and_random_bits(ops, fmt):
    x = torch.cat([grid_corners(), random_f32(50_001, 7)])  # odd length: the scalar tail runs too
    codes_equal(ops.encode(x, fmt), codecs.encode(x, fmt))
    if fmt in ("e4m3", "e5m2", "e8m0"):
        codes_equal(ops.encode(x, fmt, saturate=False), codecs.encode(x, fmt, saturate=False))


@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2"])
def test_encode_unrepresentable_raises(ops, fmt):
    for bad in (math.nan, 1e9, -math.inf):
        x = torch.tensor([0.5, bad, 1.0])
        with pytest.raises(ValueError, match="saturate=False"):
            ops.encode(x, fmt, saturate=False)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_decode_every_code(ops, fmt):
    f = FORMATS[fmt]
    n = 256 if fmt in ("e4m3", "e5m2", "e8m0") else 1 << f.bits
    codes = torch.arange(n, dtype=torch.uint8).repeat(3)[:-1]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bits_equal(ops.decode(codes, fmt, dtype), codecs.decode(codes, fmt, dtype))
    if n < 256:
        with pytest.raises(ValueError, match="not .* codes"):
            ops.decode(torch.tensor([0, n], dtype=torch.uint8), fmt)


def test_fast_e2m1_paths(low):
    """The quantizers' float-only E2M1 encoder and the dequantizers' doubled decoder, on their own."""
    x = torch.cat([grid_corners(), random_f32(400_000, 17), (torch.rand(400_000) * 16 - 8)])
    x = x[~torch.isnan(x)].contiguous()
    got = torch.empty(x.shape, dtype=torch.uint8)
    low.lib.cpu_encode_e2m1_sat(x.data_ptr(), got.data_ptr(), x.numel())
    codes_equal(got, codecs.encode(x, "e2m1", saturate=True))
    codes = torch.arange(16, dtype=torch.uint8)
    val = torch.empty(16)
    low.lib.cpu_decode_e2m1_x2(codes.data_ptr(), val.data_ptr(), 16)
    bits_equal(val, codecs.decode(codes, "e2m1") * 2)


# --- §3 layouts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2,), (3, 34), (5, 64), (1, 1000)])
def test_pack_unpack(ops, shape):
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, shape, generator=g, dtype=torch.uint8)
    packed = ops.pack_fp4(codes)
    codes_equal(packed, layouts.pack_fp4(codes))
    codes_equal(ops.unpack_fp4(packed), layouts.unpack_fp4(packed))
    bad = codes.clone()
    bad.view(-1)[-1] = 16
    with pytest.raises(ValueError, match="> 15"):
        ops.pack_fp4(bad)


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (127, 4), (128, 8), (129, 9), (300, 37)])
def test_swizzle_unswizzle(ops, rows, cols):
    g = torch.Generator().manual_seed(rows * 100 + cols)
    s = torch.randint(0, 256, (rows, cols), generator=g, dtype=torch.uint8)
    blocked = ops.swizzle_scales(s)
    codes_equal(blocked, layouts.swizzle_scales(s))
    codes_equal(ops.unswizzle_scales(blocked, rows, cols), layouts.unswizzle_scales(blocked, rows, cols))


# --- §4 MX -----------------------------------------------------------------------------------------------
def check_mx(ops, x, elem, mode, dequant=True, **kw):
    got, want = ops.quantize_mx(x, elem, scale_mode=mode, **kw), mx.quantize_mx(x, elem, scale_mode=mode, **kw)
    codes_equal(got.scales, want.scales)
    codes_equal(got.data, want.data)
    assert (got.shape, got.axis, got.elem, got.block_size) == (want.shape, want.axis, want.elem, want.block_size)
    for dtype in (torch.float32, torch.bfloat16, torch.float16) if dequant else ():
        bits_equal(ops.dequantize_mx(want, dtype), mx.dequantize_mx(want, dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("elem,mode", MX_CASES)
def test_quantize_mx_every_pattern(ops, elem, mode, dtype):
    check_mx(ops, amax_sweep(dtype, 32), elem, mode, dequant=False)  # every pattern as a block amax
    check_mx(ops, mixed_blocks(dtype, 32), elem, mode)  # every pattern as an element


@pytest.mark.parametrize("elem,mode", MX_CASES)
def test_quantize_mx_float32_and_generic_blocks(ops, elem, mode):
    x = torch.cat([random_f32(32 * 96, 11), grid_corners()[:32 * 8]]).reshape(-1, 32)
    x = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.7, x * 1e-30, x)
    check_mx(ops, x, elem, mode)
    g = torch.Generator().manual_seed(5)
    y = torch.randn(6, 48, generator=g) * torch.exp2(torch.randint(-140, 120, (6, 1), generator=g).float())
    check_mx(ops, y.to(torch.bfloat16), elem, mode, block_size=16)  # untiled block size
    check_mx(ops, y, elem, mode, block_size=48, axis=1)
    check_mx(ops, y.t(), elem, mode, block_size=2, axis=0)  # non-contiguous, blocks along axis 0
    if elem != "e2m1":
        check_mx(ops, y, elem, mode, block_size=3)


def every_code_every_byte(block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed E2M1 data and scale bytes for 256 blocks (one per scale byte 0..255), each block holding the 16
    codes in a different rotation, repeated: every (code, byte) pair at several positions."""
    b = torch.arange(256)
    codes = (torch.arange(block)[None, :] + b[:, None]) % 16
    return layouts.pack_fp4(codes.to(torch.uint8)), b.to(torch.uint8)[:, None]


@pytest.mark.parametrize("stretch", [False, True])
def test_dequantize_mx_every_code_and_byte(ops, stretch):
    """The dequantizer's fast (table) and NaN-block paths: every E2M1 code times every E8M0 byte, 0xFF included."""
    data, scales = every_code_every_byte(32)
    q = mx.MXTensor(data, scales, "e2m1", 32, torch.Size([256, 32]), "stretch" if stretch else "floor", 1)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bits_equal(ops.dequantize_mx(q, dtype), mx.dequantize_mx(q, dtype))


@pytest.mark.parametrize("gs", [1.0, 2.0**-20, 2.0**-140, 3.0e38, math.inf, math.nan, -0.5])
def test_dequantize_nvfp4_every_code_and_byte(ops, gs):
    """Every E2M1 code times every E4M3 byte (the NaN codes 0x7F/0xFF included) times a global scale, from the
    ordinary to the overflowing, underflowing, Inf, NaN and negative."""
    data, scales = every_code_every_byte(16)
    q = nvfp4.NVFP4Tensor(data, scales, torch.tensor(gs, dtype=torch.float32), "te", torch.Size([256, 16]), 16)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bits_equal(ops.dequantize_nvfp4(q, dtype), nvfp4.dequantize_nvfp4(q, dtype))


def gemm_dequant(low, path, e4m3, block_size, data, scales):
    """The sm_90 GEMM's dequantization of a (rows, K) operand (csrc/gemm_dequant.cuh), as bf16."""
    rows, k = data.shape[0], data.shape[1] * 2
    out = torch.empty(rows, k, dtype=torch.bfloat16)
    rc = low.lib.cpu_gemm_dequant(path, int(e4m3), block_size, data.contiguous().data_ptr(),
                                  scales.contiguous().data_ptr(), rows, k, out.data_ptr())
    assert rc == 0
    return out


def test_gemm_dequant_every_code_and_scale(low):
    """The FP4 GEMM (gemm_sm90.cu) dequantizes W through gemm_dequant.cuh / arith.cuh: every E2M1 code × every
    E8M0 byte (0xFF included) and × every E4M3 byte (negative and NaN codes included), on each of the kernels'
    paths (dequant to bf16; the small-M kernels' two-multiply and one-multiply pairs; the pipelined kernel's
    E4M3 byte pairs), bit for bit against the reference's dequantizers rounded to bf16 (the GEMM applies no
    global scale: NVFP4's is 1 here and is folded into alpha)."""
    data, scales = every_code_every_byte(32)
    want = mx.dequantize_mx(mx.MXTensor(data, scales, "e2m1", 32, torch.Size([256, 32]), "floor", 1), torch.bfloat16)
    for path in (0, 1):
        bits_equal(gemm_dequant(low, path, False, 32, data, scales), want)
    bits_equal(gemm_dequant(low, 2, False, 32, data[:128], scales[:128]), want[:128])  # scales below 2
    data, scales = every_code_every_byte(16)
    q = nvfp4.NVFP4Tensor(data, scales, torch.tensor(1.0), "te", torch.Size([256, 16]), 16)
    want = nvfp4.dequantize_nvfp4(q, torch.bfloat16)
    for path in (0, 1):
        bits_equal(gemm_dequant(low, path, True, 16, data, scales), want)
    # pairs of adjacent 16-blocks, as the pipelined kernel loads them: rows of 32 elements, two scale bytes
    bits_equal(gemm_dequant(low, 3, True, 16, data.reshape(128, 16), scales.reshape(128, 2)), want.reshape(128, 32))
    for path in (0, 1):  # the same bytes in pairs, as the other paths read them
        bits_equal(gemm_dequant(low, path, True, 16, data.reshape(128, 16), scales.reshape(128, 2)),
                   want.reshape(128, 32))


@pytest.mark.parametrize("blocks", [32, 101])
def test_dequantize_staged_stores(ops, blocks):
    """The dequantizers store through the warp's stage (store_tile): 32 tiles per emulated warp, the last
    warp partial (101 blocks), every tile size (16/32 elements × 2/4 bytes)."""
    g = torch.Generator().manual_seed(blocks)
    x = torch.randn(blocks, 32, generator=g) * torch.exp2(torch.randint(-8, 8, (blocks, 1), generator=g).float())
    for elem, mode in (("e2m1", "floor"), ("e2m1", "stretch"), ("e4m3", "floor")):
        q = mx.quantize_mx(x, elem, block_size=32, scale_mode=mode)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            bits_equal(ops.dequantize_mx(q, dtype), mx.dequantize_mx(q, dtype))
    q = nvfp4.quantize_nvfp4(x[:, :16].contiguous())
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bits_equal(ops.dequantize_nvfp4(q, dtype), nvfp4.dequantize_nvfp4(q, dtype))


def test_scale_byte_float32_sweep(low):
    """Scale bytes for amax over every exponent with mantissas at the rounding edges (all modes, formats)."""
    ms = torch.tensor([0, 1, 0x1FFFFF, 0x200000, 0x200001, 0x3FFFFF, 0x400000, 0x400001, 0x5FFFFF, 0x600000,
                       0x600001, 0x6FFFFF, 0x700000, 0x700001, 0x7FFFFF], dtype=torch.int32)
    ms = torch.cat([ms, torch.randint(0, 1 << 23, (40,), generator=torch.Generator().manual_seed(9),
                                      dtype=torch.int32)])
    bits = ((torch.arange(256, dtype=torch.int32)[:, None] << 23) | ms[None, :]).reshape(-1)
    amax = bits.view(torch.float32)
    for elem, mode in MX_CASES:
        f = FORMATS[elem]
        want = mx.scale_bytes(amax, f, mode)
        got = torch.tensor([low.lib.cpu_scale_byte(int(b) & 0xFFFFFFFF, list(FORMATS).index(elem),
                                                   mx.SCALE_MODES.index(mode)) for b in bits.tolist()],
                           dtype=torch.int32).to(torch.uint8)
        codes_equal(got, want)


# --- §5 NVFP4 ---------------------------------------------------------------------------------------------
def check_nv(ops, x, global_amax=None, block_size=16, dequant=True):
    got = ops.quantize_nvfp4(x, global_amax=global_amax, block_size=block_size)
    want = nvfp4.quantize_nvfp4(x, global_amax=global_amax, block_size=block_size)
    bits_equal(got.global_scale, want.global_scale)
    codes_equal(got.scales, want.scales)
    codes_equal(got.data, want.data)
    for dtype in (torch.float32, torch.bfloat16, torch.float16) if dequant else ():
        bits_equal(ops.dequantize_nvfp4(want, dtype), nvfp4.dequantize_nvfp4(want, dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantize_nvfp4_every_pattern(ops, dtype):
    src = torch.bfloat16 if dtype == torch.float32 else dtype
    for x in (amax_sweep(src, 16).to(dtype), mixed_blocks(src, 16).to(dtype)):
        check_nv(ops, x)
        for a in (0.0, 2688.0, 3.0e38, 1e-30):
            check_nv(ops, x, global_amax=a, dequant=False)


def test_quantize_nvfp4_generic_block_and_shapes(ops):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 64, generator=g) * torch.exp2(torch.randint(-60, 60, (3, 5, 1), generator=g).float())
    x[0, 1, 3] = math.inf
    x[2, 4, 40] = math.nan
    check_nv(ops, x)
    check_nv(ops, x, block_size=32)
    check_nv(ops, x[..., :34], block_size=2)
    check_nv(ops, x[..., :48])  # 15 rows of 3 blocks: the tiles of two blocks end on a half tile
    check_nv(ops, x[:1, :1, :16])  # one block: only the half tile


def test_te_encode_scale(low):
    a = torch.cat([random_f32(20000, 13).abs(), grid_corners().abs()])
    a = a[torch.isfinite(a)]
    got = torch.tensor([low.lib.cpu_te_encode_scale(float(v)) for v in a.tolist()], dtype=torch.float32)
    bits_equal(got, nvfp4.te_encode_scale(a))


# --- §7 Hadamard and the fused rotation + quantization --------------------------------------------------


def signs_for(n, seed):
    return hadamard.random_signs(n, seed=seed)


@pytest.mark.parametrize("hb", [2, 4, 8, 16, 32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_block_hadamard(ops, hb, dtype):
    x = rotation_input(dtype)
    for signs in (None, signs_for(hb, 1), signs_for(512, 2)):
        bits_equal(ops.block_hadamard(x, hb, signs=signs), hadamard.block_hadamard(x, hb, signs=signs))
    y = x.t()  # blocks along axis 0, non-contiguous input
    bits_equal(ops.block_hadamard(y, hb, axis=0), hadamard.block_hadamard(y, hb, axis=0))




@pytest.mark.parametrize("hb", [2, 4, 8, 16, 32, 64, 128, 256])
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_hadamard_quantize(ops, fmt, hb):
    modes = mx.SCALE_MODES if fmt == "mxfp4" else ("floor",)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = rotation_input(dtype, seed=hb)
        for mode in modes:
            for signs, ga in ((None, None), (signs_for(hb, 3), 5.0), (signs_for(512, 4), None)):
                got, blocked = ops.hadamard_quantize(x, fmt, hadamard_block=hb, signs=signs, scale_mode=mode,
                                                     global_amax=ga, swizzle=True)
                want = reference_hadamard_quantize(x, fmt, hb, signs, mode, ga)
                codes_equal(got.scales, want.scales)
                codes_equal(got.data, want.data)
                codes_equal(blocked, layouts.swizzle_scales(want.scales.reshape(-1, want.scales.shape[-1])))
                if fmt == "nvfp4":
                    bits_equal(got.global_scale, want.global_scale)


def test_mx_rotation_scale_fold_bounds(low):
    """The fold of the rotation's rscale into the MXFP4 scale, fp32(u * fp32(r * 2^-X)) for
    fp32(fp32(u * r) * 2^-X), gives the same E2M1 code for every u near every grid point, rounding midpoint and
    subnormal edge wherever the kernels use it (quant_tiles.cuh's FOLD_BYTE_MIN..MAX: -123 <= X <= 122), and does not
    just outside."""
    n = low.lib.cpu_fold_mismatches
    lo, hi = low.lib.cpu_fold_byte_min(), low.lib.cpu_fold_byte_max()
    assert (lo, hi) == (4, 249)
    assert n(lo, hi) == 0
    assert n(0, 2) > 0 and n(250, 254) > 0


@pytest.mark.parametrize("hb", [16, 32, 64, 128])
def test_hadamard_quantize_mx_extreme_scales(ops, hb):
    """Fused MXFP4 folds the rotation's rscale into the block scale (one product per element) only for block
    exponents -123 <= X <= 122; rows scaled to each side of those bounds (and across them) take the other
    path. Every scale mode, float32 input (the bf16-like magnitudes of the others included)."""
    g = torch.Generator().manual_seed(hb)
    base = torch.randn(24, 256, generator=g)
    base[:, ::7] *= 2.0**-12  # small elements next to large ones: subnormal products in tiny blocks
    exps = torch.tensor([-149, -140, -134, -128, -125, -123, -121, -100, 0, 100, 118, 121, 122, 123, 124, 125,
                         126, 127, -130, -126, -124, 119, 120, 60], dtype=torch.float32)
    x = (base * torch.exp2(exps)[:, None]).contiguous()
    for mode in mx.SCALE_MODES:
        got = ops.hadamard_quantize(x, "mxfp4", hadamard_block=hb, scale_mode=mode)
        want = reference_hadamard_quantize(x, "mxfp4", hb, None, mode, None)
        codes_equal(got.scales, want.scales)
        codes_equal(got.data, want.data)


def test_hadamard_quantize_odd_rows(ops):
    """A row count that is not a multiple of 128 (swizzle padding) and a 1-D input."""
    x = rotation_input(torch.bfloat16, rows=131, k=64, seed=5)
    got, blocked = ops.hadamard_quantize(x, "nvfp4", hadamard_block=64, swizzle=True)
    want = reference_hadamard_quantize(x, "nvfp4", 64, None, None, None)
    codes_equal(got.data, want.data)
    codes_equal(blocked, layouts.swizzle_scales(want.scales))
    y = rotation_input(torch.bfloat16, rows=5, k=48, seed=6)  # NVFP4 tiles of 32 ending on a half tile
    got, blocked = ops.hadamard_quantize(y, "nvfp4", hadamard_block=16, swizzle=True)
    want = reference_hadamard_quantize(y, "nvfp4", 16, None, None, None)
    codes_equal(got.data, want.data)
    codes_equal(blocked, layouts.swizzle_scales(want.scales))
    v = x[3]
    got = ops.hadamard_quantize(v, "mxfp4", hadamard_block=16)
    want = reference_hadamard_quantize(v, "mxfp4", 16, None, "floor", None)
    codes_equal(got.data, want.data)
    codes_equal(got.scales, want.scales)


def f32_bits(x: float) -> int:
    return int(torch.tensor([x], dtype=torch.float32).view(torch.int32).item()) & 0xFFFFFFFF


def test_fast_encoders_against_generic_encode(low):
    """The quantizers' fast E4M3 block-scale encoder and 8-wide E2M1 encoder against the generic encode():
    every float32 pattern in the binades where they round (E4M3: [2^-12, 2^10); E2M1: ±[2^-4, 2^4)), and
    every 257th pattern of the whole range (positive for E4M3, Inf included; both signs for E2M1)."""
    n = low.lib.cpu_fast_codec_mismatches
    assert n(0, f32_bits(2.0**-12), f32_bits(2.0**10), 1) == 0
    assert n(0, 0, 0x7F800001, 257) == 0
    for sign in (0, 0x80000000):
        assert n(1, sign | f32_bits(2.0**-4), sign | f32_bits(2.0**4), 1) == 0
    assert n(1, 0, 1 << 32, 257) == 0


def test_rceil_exponent_without_division(low):
    """RCEIL's division-free exponent against its definition (one IEEE division), for every MX element format:
    every float32 pattern of the binades around each format's largest value and around the switch to the
    division (amax = max_elem * 2^-125), and every 61st finite pattern."""
    n = low.lib.cpu_fast_codec_mismatches
    for lo, hi in ((2.0**-10, 2.0**18), (2.0**-124, 2.0**-107)):
        assert n(2, f32_bits(lo), f32_bits(hi), 1) == 0
    assert n(2, 0, 0x7F800000, 61) == 0


def test_ids_and_layout_match_python(low):
    """csrc/ids.h (compiled) and fp4ref_cuda/ids.py + fp4ref.layouts hold the same ids and layout rules."""
    import ctypes

    from fp4ref.layouts import blocked_scale_size, swizzle_scales
    from fp4ref_cuda import ids

    out = (ctypes.c_int32 * 64)()
    n = low.lib.cpu_ids(out, 64)
    assert list(out[:n]) == ids.table()
    assert set(ids.MODE_IDS) == set(mx.SCALE_MODES) and set(ids.FMT_IDS) == set(FORMATS)
    assert [ids.MODE_IDS[m] for m in mx.SCALE_MODES] == list(range(len(mx.SCALE_MODES)))
    quads = []
    for rows, cols in ((1, 1), (3, 5), (128, 4), (129, 7), (300, 9)):
        for r, c in ((0, 0), (rows - 1, cols - 1), (rows // 2, cols // 3)):
            quads.append((rows, cols, r, c))
    q = torch.tensor(quads, dtype=torch.int64)
    size, offset = torch.empty(len(quads), dtype=torch.int64), torch.empty(len(quads), dtype=torch.int64)
    low.lib.cpu_blocked(q.data_ptr(), len(quads), size.data_ptr(), offset.data_ptr())
    for (rows, cols, r, c), s_, o in zip(quads, size.tolist(), offset.tolist()):
        assert s_ == blocked_scale_size(rows, cols)
        marker = torch.zeros(rows, cols, dtype=torch.uint8)
        marker[r, c] = 1
        assert int(swizzle_scales(marker).argmax()) == o  # the reference's swizzle puts (r, c) at that offset
