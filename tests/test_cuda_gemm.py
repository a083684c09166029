"""fp4ref_cuda FP4 GEMM (issue 6) against the reference fp4_mm (SPEC §8, §14).

CPU parts (always run): the exhaustive bf16-exactness argument, and a bit-level emulation of the small-M
kernel's register dequantization and fragment/k-permutation mapping. GPU parts skip without a GPU or
without the built extension: bit-exact where every partial sum is exact, within the §8 bound otherwise,
NaN blocks, bad input, torch._scaled_mm where it supports FP4, and the Blackwell CUTLASS kernels where
such a GPU exists.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4ref.codecs import decode
from fp4ref.gemm import fp4_mm as ref_mm
from fp4ref.layouts import pack_fp4
from fp4ref.mx import MXTensor, quantize_mx
from fp4ref.nvfp4 import NVFP4Tensor, quantize_nvfp4
from helpers import GemmKernelStub

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
E2M1_ALL = torch.tensor(E2M1 + [-v for v in E2M1])  # codes 0..15


def _gemm_module():
    try:
        return importlib.import_module("fp4ref_cuda._gemm_sm90")
    except ImportError:
        return None


HAS_GPU = torch.cuda.is_available() and _gemm_module() is not None
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and the built fp4ref_cuda._gemm_sm90")


# --- CPU: exactness of the bf16 dequantization, exhaustively ----------------------------------------------
def _bf16_roundtrip_equal(v: torch.Tensor) -> torch.Tensor:
    back = v.to(torch.bfloat16).float()
    return (back.view(torch.int32) == v.view(torch.int32)) | (torch.isnan(back) & torch.isnan(v))


def test_e2m1_times_e8m0_is_bf16_exactly_where_float32_is_finite():
    e8m0 = decode(torch.arange(255, dtype=torch.uint8), "e8m0")  # 2^-127 .. 2^127 (0xFF is NaN)
    prod = E2M1_ALL[:, None] * e8m0[None, :]  # float32, exact where finite (2 significant bits)
    assert bool(_bf16_roundtrip_equal(prod).all())
    # Where it holds: every product is finite except |t| * 2^(b-127) >= 2^128, which is inf in float32 and
    # bf16 alike (6 * 2^126, 4 * 2^126, 3 * 2^127, 2 * 2^127, ...); the smallest, 0.5 * 2^-127 = 2^-128, is
    # a subnormal in both.
    inf = torch.isinf(prod)
    mags = E2M1_ALL.abs()[:, None].expand_as(prod)
    expo = torch.arange(255)[None, :].expand_as(prod) - 127
    assert torch.equal(inf, (mags > 0) & (torch.log2(mags) + expo >= 128))
    assert float(prod[1, 0]) == 2.0 ** -128


def test_e2m1_times_e4m3_is_bf16_and_fp16_exactly():
    e4m3 = decode(torch.arange(256, dtype=torch.uint8), "e4m3")
    prod = E2M1_ALL[:, None] * e4m3[None, :]
    assert bool(_bf16_roundtrip_equal(prod).all())
    fin = torch.isfinite(prod)
    assert torch.equal(prod[fin].half().float(), prod[fin])


# --- CPU: emulation of the small-M kernel's bit tricks and fragment mapping --------------------------------
SIGN, MAG = 0x80008000, 0x01C001C0


def _pair_raw(q: np.ndarray, pair: int) -> np.ndarray:
    """The kernel's fp4_pair_raw<P> on uint32 words (nibbles (3-P, 7-P) as bf16 e2m1 · 2^-126)."""
    q = q.astype(np.uint64)
    sh_sign, sh_mag = [(0, -6), (4, -2), (8, 2), (12, 6)][pair]
    s = (q << np.uint64(sh_sign)) & np.uint64(SIGN)
    m = (q << np.uint64(sh_mag)) if sh_mag > 0 else (q >> np.uint64(-sh_mag))
    return ((s | (m & np.uint64(MAG))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _bf16_halves(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = ((w & 0xFFFF).astype(np.uint32) << 16).view(np.float32)
    hi = (w & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return lo.astype(np.float64), hi.astype(np.float64)


def test_register_dequant_bits_give_e2m1_times_2_pow_minus_126():
    codes = np.arange(16, dtype=np.uint32)
    for pair in range(4):
        lo_nib, hi_nib = 3 - pair, 7 - pair
        q = (codes[:, None] << (4 * lo_nib)) | (codes[None, :] << (4 * hi_nib))  # every code pair
        lo, hi = _bf16_halves(_pair_raw(q.astype(np.uint32), pair))
        want = E2M1_ALL.double().numpy()
        np.testing.assert_array_equal(lo * 2.0 ** 126, np.broadcast_to(want[:, None], lo.shape))
        np.testing.assert_array_equal(hi * 2.0 ** 126, np.broadcast_to(want[None, :], hi.shape))


def _perm(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    """__byte_perm(a, b, sel) for the two selectors the kernel uses (halves of a and b)."""
    if sel == 0x7632:
        return (a >> 16) | (b & 0xFFFF0000)
    assert sel == 0x5410
    return (a & 0xFFFF) | ((b & 0xFFFF) << 16)


def test_fragment_mapping_emulates_a_16x8_product():
    """One warp, one 128-wide K chunk of linear_small_kernel: registers built as in the kernel, then
    mma.m16n8k16 applied by its documented fragment layout; the result must equal W · xᵀ."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(16, 128), dtype=np.uint32)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)          # (16, 64) bytes
    xbits = (rng.integers(-64, 64, size=(8, 128)).astype(np.float32) / 8).view(np.uint32) >> 16
    xval = (xbits << 16).astype(np.uint32).view(np.float32).astype(np.float64)
    words_w = packed.reshape(16, 4, 16).view("<u4")                              # [row][p][word j]
    words_x = (xbits[:, 0::2] | (xbits[:, 1::2] << 16)).astype(np.uint32).reshape(8, 4, 4, 4)  # [m][p][j][.xyzw]
    acc = np.zeros((16, 8))
    for j in range(4):
        for h in range(2):
            A, B = np.zeros((16, 16)), np.zeros((16, 8))
            for g in range(8):
                for p in range(4):
                    for r, row in ((0, g), (1, g + 8)):
                        q = words_w[row, p, j]
                        for slot, pair in ((0, 2 * h), (8, 2 * h + 1)):  # a0/a1 then a2/a3
                            lo, hi = _bf16_halves(_pair_raw(np.array([q]), pair))
                            A[row, 2 * p + slot], A[row, 2 * p + slot + 1] = lo[0] * 2.0 ** 126, hi[0] * 2.0 ** 126
                    xv = words_x[g, p, j]
                    lo_w, hi_w = (xv[0], xv[2]) if h else (xv[1], xv[3])
                    for slot, sel in ((0, 0x7632), (8, 0x5410)):
                        lo, hi = _bf16_halves(_perm(np.array([lo_w]), np.array([hi_w]), sel))
                        B[2 * p + slot, g], B[2 * p + slot + 1, g] = lo[0], hi[0]
            acc += A @ B
    want = E2M1_ALL.double().numpy()[codes] @ xval.T
    np.testing.assert_array_equal(acc, want)


def test_epilogue_reads_each_accumulator_where_the_mma_left_it():
    """linear_small_kernel's epilogue index (v, lane) for output (row r, column m) inverts the m16n8k16
    accumulator layout (c0,c1 = (g, 2p..2p+1), c2,c3 = (g+8, 2p..2p+1)) stored as red[warp][v][lane]."""
    for mt_count in (1, 2):
        stored = {}
        for rt in range(4):
            for mt in range(mt_count):
                for i in range(4):
                    for lane in range(32):
                        g, p = lane >> 2, lane & 3
                        row, col = rt * 16 + g + 8 * (i >> 1), mt * 8 + 2 * p + (i & 1)
                        stored[(row, col)] = ((rt * mt_count + mt) * 4 + i, lane)
        for r in range(64):
            for m in range(8 * mt_count):
                rr, mm = r % 16, m % 8
                v = ((r // 16) * mt_count + m // 8) * 4 + (rr // 8) * 2 + (mm & 1)
                ln = (rr % 8) * 4 + mm // 2
                assert stored[(r, m)] == (v, ln)


@pytest.mark.skipif(_gemm_module() is None, reason="fp4ref_cuda._gemm_sm90 not built")
@pytest.mark.parametrize("m", [4, 40])
@pytest.mark.parametrize("kind", ["mx", "nv"])
def test_wrappers_trace_with_fake_cuda_tensors(m, kind, monkeypatch):
    """Every Python path (small M, cuBLAS M, bias, output dtypes) reaches the ops with valid arguments and
    gets the right shapes and dtypes back from the fake kernels; no GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import fp4ref_cuda.gemm as cg

    monkeypatch.setattr(cg, "_cutlass_arch", lambda dev: None)

    def make(rows, k):
        d = torch.empty(rows, k // 2, dtype=torch.uint8, device="cuda")
        if kind == "mx":
            s = torch.empty(rows, k // 32, dtype=torch.uint8, device="cuda")
            return MXTensor(d, s, "e2m1", 32, torch.Size((rows, k)))
        s = torch.empty(rows, k // 16, dtype=torch.uint8, device="cuda")
        return NVFP4Tensor(d, s, torch.empty((), device="cuda"), "te", torch.Size((rows, k)))

    with FakeTensorMode():
        a, b = make(m, 256), make(48, 256)
        for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
            out = cg.fp4_mm(a, b, out_dtype=out_dtype)
            assert out.shape == (m, 48) and out.dtype == out_dtype and out.is_cuda
        x = torch.empty(2, m, 256, dtype=torch.bfloat16, device="cuda")
        for bias in (None, torch.empty(48, dtype=torch.bfloat16, device="cuda")):
            y = cg.fp4_linear(x, b, bias)
            assert y.shape == (2, m, 48) and y.dtype == torch.bfloat16


# --- GPU helpers -------------------------------------------------------------------------------------------
def _unit_mx(codes: torch.Tensor, byte: int = 127) -> MXTensor:
    m, k = codes.shape
    return MXTensor(pack_fp4(codes.to(torch.uint8)), torch.full((m, k // 32), byte, dtype=torch.uint8,
                    device=codes.device), "e2m1", 32, torch.Size((m, k)))


def _unit_nv(codes: torch.Tensor, gs: float = 1.0) -> NVFP4Tensor:
    m, k = codes.shape
    return NVFP4Tensor(pack_fp4(codes.to(torch.uint8)), torch.full((m, k // 16), 0x38, dtype=torch.uint8,
                       device=codes.device), torch.tensor(gs, device=codes.device), "te", torch.Size((m, k)))


def _quant(x: torch.Tensor, fmt: str, mode: str = "floor"):
    return quantize_mx(x, "e2m1", block_size=32, scale_mode=mode) if fmt == "mx" else quantize_nvfp4(x)


def _abs_dot(a, b) -> torch.Tensor:
    """Σ_k |deq a_k| |deq b_k| in float64, with the NVFP4 global scales."""
    return a.dequantize().double().abs() @ b.dequantize().double().abs().T


def _assert_within_bound(out: torch.Tensor, ref: torch.Tensor, mag: torch.Tensor, k: int) -> None:
    p = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}[out.dtype]
    o, r = out.double(), ref.double()
    assert torch.equal(torch.isnan(o), torch.isnan(r))
    fin = ~torch.isnan(r)
    bound = (k * 2.0 ** -23 + 2.0 ** -p) * mag[fin] + 2.0 ** -133  # + bf16's smallest subnormal
    err = (o[fin] - r[fin]).abs()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"


def _cuda_mm(a, b, out_dtype=torch.float32):
    from fp4ref_cuda.gemm import fp4_mm

    out = fp4_mm(a, b, out_dtype=out_dtype)
    assert out is not NotImplemented
    return out


# --- GPU: bit-exact regime ---------------------------------------------------------------------------------
@gpu
@settings(max_examples=25, deadline=None)
@given(m=st.sampled_from([1, 3, 16, 17, 40, 130]), n=st.integers(1, 200), kb=st.integers(1, 12),
       fmt=st.sampled_from(["mx", "nv"]), seed=st.integers(0, 2**31 - 1))
def test_bit_exact_with_unit_scales(m, n, kb, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    k = 32 * kb
    ca, cb = (torch.randint(0, 16, s, generator=g).cuda() for s in ((m, k), (n, k)))
    mk = _unit_mx if fmt == "mx" else _unit_nv
    a, b = mk(ca), mk(cb)
    out = _cuda_mm(a, b)
    assert torch.equal(out.view(torch.int32), ref_mm(a, b).view(torch.int32))


@gpu
@pytest.mark.parametrize("m", [1, 16, 64])
def test_bit_exact_large_k_and_power_of_two_scales(m):
    """K = 4096 with MX scales 2^±3 and an NVFP4 global scale 2^-5: every partial sum still exact."""
    g = torch.Generator().manual_seed(m)
    k, n = 4096, 96
    ca, cb = torch.randint(0, 16, (m, k), generator=g).cuda(), torch.randint(0, 16, (n, k), generator=g).cuda()
    a, b = _unit_mx(ca, 130), _unit_mx(cb, 124)
    assert torch.equal(_cuda_mm(a, b), ref_mm(a, b))
    a, b = _unit_nv(ca, 2.0 ** -5), _unit_nv(cb)
    assert torch.equal(_cuda_mm(a, b), ref_mm(a, b))


# --- GPU: general inputs within the SPEC §8 bound ----------------------------------------------------------
@gpu
@settings(max_examples=25, deadline=None)
@given(m=st.sampled_from([1, 2, 8, 9, 16, 33, 200]), n=st.integers(1, 300), kb=st.integers(1, 20),
       fmt=st.sampled_from(["mx", "nv", "mx-stretch"]), out_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       seed=st.integers(0, 2**31 - 1), spread=st.integers(0, 30))
def test_within_bound_random(m, n, kb, fmt, out_dtype, seed, spread):
    g = torch.Generator().manual_seed(seed)
    k = 32 * kb
    # Row and block magnitudes spread over 2^±spread so that the scales differ widely.
    xa = torch.randn(m, k, generator=g) * 2.0 ** torch.randint(-spread, spread + 1, (m, k // 32), generator=g
                                                              ).repeat_interleave(32, 1)
    xb = torch.randn(n, k, generator=g) * 2.0 ** torch.randint(-spread, spread + 1, (n, 1), generator=g)
    kind, mode = ("mx", "stretch") if fmt == "mx-stretch" else (fmt, "floor")
    a, b = _quant(xa.cuda(), kind, mode), _quant(xb.cuda(), kind, mode)
    out = _cuda_mm(a, b, out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    _assert_within_bound(out, ref_mm(a, b, out_dtype=torch.float64), _abs_dot(a, b), k)


@gpu
@pytest.mark.parametrize("fmt", ["mx", "nv"])
@pytest.mark.parametrize("m", [4, 64])
def test_nan_blocks_propagate(fmt, m):
    x = torch.randn(m, 128, device="cuda")
    x[1, 40] = float("nan")
    w = torch.randn(48, 128, device="cuda")
    w[5, 3] = float("inf")
    a, b = _quant(x, fmt), _quant(w, fmt)
    out, ref = _cuda_mm(a, b), ref_mm(a, b)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert bool(torch.isnan(out[1]).all()) and bool(torch.isnan(out[:, 5]).all())


@gpu
def test_dequantize_bf16_matches_reference_bits():
    from fp4ref_cuda.gemm import dequantize_bf16

    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (255, 64), generator=g)
    q = _unit_mx(codes.cuda())
    q.scales.copy_(torch.arange(255, dtype=torch.uint8)[:, None].expand(255, 2))  # every finite E8M0 byte
    got, want = dequantize_bf16(q).float(), q.dequantize()
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # inf where float32 overflows too
    nv = _unit_nv(torch.randint(0, 16, (256, 32), generator=g).cuda())
    nv.scales.copy_(torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 2))
    got = dequantize_bf16(nv).float()
    want = nv.dequantize() / nv.global_scale  # global scale 1: exact
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    fin = ~torch.isnan(want)
    assert torch.equal(got[fin].view(torch.int32), want[fin].view(torch.int32))


# --- GPU: weight-only linear -------------------------------------------------------------------------------
@gpu
@settings(max_examples=20, deadline=None)
@given(m=st.sampled_from([1, 5, 16, 17, 64]), n=st.integers(1, 260), kb=st.integers(1, 10),
       fmt=st.sampled_from(["mx", "nv", "mx-stretch"]), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fp4_linear_within_bound(m, n, kb, fmt, bias, seed):
    from fp4ref_cuda.gemm import fp4_linear

    g = torch.Generator().manual_seed(seed)
    k = 32 * kb
    x = torch.randn(2, m, k, generator=g).to(torch.bfloat16).cuda()
    kind, mode = ("mx", "stretch") if fmt == "mx-stretch" else (fmt, "floor")
    w = _quant(torch.randn(n, k, generator=g).cuda(), kind, mode)
    bvec = torch.randn(n, generator=g).to(torch.bfloat16).cuda() if bias else None
    y = fp4_linear(x, w, bvec)
    assert y.dtype == torch.bfloat16 and y.shape == (2, m, n)
    wd = w.dequantize().double()
    ref = x.double() @ wd.T + (bvec.double() if bias else 0)
    mag = x.double().abs() @ wd.abs().T + (bvec.double().abs() if bias else 0)
    _assert_within_bound(y.reshape(-1, n), ref.reshape(-1, n), mag.reshape(-1, n), k)


@gpu
def test_fp4_linear_exact_small_integers():
    """Small-M kernel, NVFP4 unit scales, integer activations: every partial sum exact, bit for bit."""
    from fp4ref_cuda.gemm import fp4_linear

    g = torch.Generator().manual_seed(3)
    for m in (1, 7, 16):
        x = torch.randint(-8, 9, (m, 1024), generator=g).to(torch.bfloat16).cuda()
        w = _unit_nv(torch.randint(0, 16, (72, 1024), generator=g).cuda())
        y = fp4_linear(x, w)
        ref = (x.double() @ w.dequantize().double().T).to(torch.bfloat16)
        assert torch.equal(y.view(torch.int16), ref.view(torch.int16))


def _small(x, w, pipelined: bool, out_dtype=torch.float32):
    data, scales = w.data.view(torch.uint8), w.scales.view(torch.uint8)
    nv = isinstance(w, NVFP4Tensor)
    alpha = w.global_scale.float().reshape(1).cuda() if nv else None
    div = 3.0 if getattr(w, "scale_mode", "") == "stretch" else 1.0
    return torch.ops.fp4ref_cuda.gemm_fp4_linear_small(x, data, scales, w.block_size, nv, alpha, div, out_dtype,
                                                       pipelined)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    view = torch.int32 if a.element_size() == 4 else torch.int16
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(view), b.view(view)), f"{int((a.view(view) != b.view(view)).sum())} outputs differ"


@gpu
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 16), n=st.integers(1, 300), kh=st.integers(1, 90),
       fmt=st.sampled_from(["mx", "nv", "mx-stretch", "mx16", "nv32"]),
       out_dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**31 - 1),
       spread=st.integers(0, 30))
def test_pipelined_small_m_kernel_gives_the_register_kernels_bits(m, n, kh, fmt, out_dtype, seed, spread):
    """The cp.async pipeline kernel and the register kernel share the work split and the arithmetic: identical
    outputs, bit for bit, for both scale formats and block sizes 16 and 32, scales above and below 2 (the
    pipelined kernel's one-multiply branch), NaN blocks (K % 32 == 16 takes the register kernel on both sides)."""
    g = torch.Generator().manual_seed(seed)
    bs = {"mx16": 16, "nv32": 32}.get(fmt, 16 if fmt == "nv" else 32)
    k = 16 * kh if bs == 16 else 32 * ((kh + 1) // 2)
    mode = "stretch" if fmt == "mx-stretch" else "floor"
    x = (torch.randn(m, k, generator=g) * 2.0 ** torch.randint(-spread, spread + 1, (m, 1), generator=g))
    wt = torch.randn(n, k, generator=g) * 2.0 ** torch.randint(-spread, spread + 1, (n, 1), generator=g)
    if seed % 5 == 0:
        wt[seed % n, (seed // 7) % k] = float("nan")  # a NaN block
    if fmt.startswith("mx"):
        w = quantize_mx(wt.cuda(), "e2m1", block_size=bs, scale_mode=mode)
    else:
        w = quantize_nvfp4(wt.cuda(), block_size=bs)
    xb = x.to(torch.bfloat16).cuda()
    _same_bits(_small(xb, w, True, out_dtype), _small(xb, w, False, out_dtype))


@gpu
@pytest.mark.parametrize("fmt", ["mx", "nv"])
@pytest.mark.parametrize("m", [1, 8, 9, 16])
@pytest.mark.parametrize("k", [8192, 4096 + 32 * 3])
def test_pipelined_small_m_kernel_long_k(fmt, m, k):
    """Long K: many chunks per warp (the pipeline wraps around its stages), an uneven split over the warps."""
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    w = _quant(torch.randn(200, k, generator=g).cuda(), fmt)
    got = _small(x, w, True)
    _same_bits(got, _small(x, w, False))
    wd = w.dequantize().double()
    _assert_within_bound(got, x.double() @ wd.T, x.double().abs() @ wd.abs().T, k)


@gpu
def test_fp4_linear_uses_the_selected_small_m_kernel(monkeypatch):
    import fp4ref_cuda.gemm as cg

    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 512, generator=g).to(torch.bfloat16).cuda()
    w = _quant(torch.randn(64, 512, generator=g).cuda(), "nv")
    monkeypatch.setattr(cg, "SMALL_M_KERNEL", "pipelined")
    y_pipe = cg.fp4_linear(x, w)
    monkeypatch.setattr(cg, "SMALL_M_KERNEL", "registers")
    _same_bits(y_pipe, cg.fp4_linear(x, w))


# --- GPU: dispatch and errors ------------------------------------------------------------------------------
@gpu
def test_ops_dispatch_uses_the_cuda_kernels():
    from fp4ref import ops

    a = _unit_mx(torch.randint(0, 16, (20, 64)).cuda())
    b = _unit_mx(torch.randint(0, 16, (24, 64)).cuda())
    assert ops.backend(a) == "cuda"
    assert torch.equal(ops.fp4_mm(a, b), _cuda_mm(a, b))


@gpu
def test_bad_input_raises_python_errors():
    from fp4ref import ops
    from fp4ref_cuda.gemm import fp4_mm

    a = _unit_mx(torch.randint(0, 16, (4, 64)).cuda())
    b = _unit_mx(torch.randint(0, 16, (4, 96)).cuda())
    with pytest.raises(ValueError, match="K mismatch"):
        ops.fp4_mm(a, b)
    with pytest.raises(ValueError, match="a \\(M, K\\) and b \\(N, K\\)"):
        fp4_mm(a, b)
    with pytest.raises(TypeError):
        ops.fp4_mm(a, _unit_nv(torch.randint(0, 16, (4, 64)).cuda()))
    ops = torch.ops.fp4ref_cuda
    w = torch.zeros(8, 32, dtype=torch.uint8, device="cuda")
    s = torch.zeros(8, 4, dtype=torch.uint8, device="cuda")
    with pytest.raises(TypeError, match="bfloat16"):
        ops.gemm_fp4_linear_small(torch.zeros(2, 64, device="cuda"), w, s, 16, True, None, 1.0, torch.float32)
    with pytest.raises(ValueError, match="x must be"):
        ops.gemm_fp4_linear_small(torch.zeros(2, 32, dtype=torch.bfloat16, device="cuda"), w, s, 16, True, None,
                                  1.0, torch.float32)
    with pytest.raises(ValueError, match="1 <= M <= 16"):
        ops.gemm_fp4_linear_small(torch.zeros(17, 64, dtype=torch.bfloat16, device="cuda"), w, s, 16, True, None,
                                  1.0, torch.float32)
    with pytest.raises(ValueError, match="scales must be"):
        ops.gemm_dequant_bf16(w, s[:, :2], 16, True)
    with pytest.raises(ValueError, match="CUDA tensor"):
        ops.gemm_dequant_bf16(w.cpu(), s, 16, True)
    with pytest.raises(ValueError, match="aligned"):
        ops.gemm_dequant_bf16(torch.zeros(8 * 32 + 1, dtype=torch.uint8, device="cuda")[1:].view(8, 32), s, 16, True)


def test_cpu_tensors_are_left_to_the_reference():
    from fp4ref_cuda.gemm import fp4_linear, fp4_mm

    a = _unit_mx(torch.randint(0, 16, (4, 64)))
    assert fp4_mm(a, a) is NotImplemented
    assert fp4_linear(torch.zeros(2, 64, dtype=torch.bfloat16), a) is NotImplemented


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_fp4linear_prepared_weight_reaches_the_kernel_like_the_op(fmt, monkeypatch):
    """FP4Linear's prepared-weight path (made once per weight version) hands the small-M kernel the same
    arguments as fp4ref.ops.fp4_linear does, and a new weight (load_quantized) or bias is picked up. No GPU:
    the CUDA dispatch is forced on CPU tensors and the kernel is a recorder."""
    import fp4ref_cuda
    import fp4ref_cuda.gemm as cg
    from fp4ref import ops
    from fp4ref.nn import FP4Linear

    g = torch.Generator().manual_seed(11)
    lin = torch.nn.Linear(64, 24, bias=True)
    m = FP4Linear.from_linear(lin, fmt)
    other = FP4Linear.from_linear(torch.nn.Linear(64, 24), fmt).weight_quantized
    calls = []

    class Recorder:
        def gemm_fp4_linear_small(self, x, w, scales, block_size, e4m3, alpha, divisor, out_dtype, pipelined):
            calls.append((x, w, scales, block_size, e4m3, alpha, divisor, out_dtype))
            return torch.zeros(x.shape[0], w.shape[0], dtype=out_dtype)

    monkeypatch.setattr(ops, "backend", lambda t: "cuda")
    monkeypatch.setattr(ops, "_cuda_module", lambda: fp4ref_cuda)
    monkeypatch.setattr(cg, "_usable", lambda *qs: True)
    monkeypatch.setattr(cg, "_ops", lambda: Recorder())

    def same(c1, c2):
        assert len(c1) == len(c2)
        for a, b in zip(c1, c2):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    x = torch.randn(3, 64, generator=g).bfloat16()
    for step in range(3):
        calls.clear()
        y = m(x)
        ops.fp4_linear(x, m.weight_quantized, m.bias)
        assert y.shape == (3, 24) and y.dtype == torch.bfloat16 and len(calls) == 2
        same(calls[0], calls[1])
        if step == 0:
            first = calls[0][1].clone()
            m.load_quantized(other)  # in place: the new bytes must reach the kernel
        elif step == 1:
            assert not torch.equal(calls[0][1], first)
            # new buffer objects (as .to() or load_state_dict with assign=True make): re-prepared, not stale
            m.weight_packed = first.clone()
            m.bias = torch.nn.Parameter(torch.zeros(24))
        else:
            assert torch.equal(calls[0][1], first)
    with pytest.raises(ValueError, match="in_features=64"):
        m(torch.zeros(2, 32, dtype=torch.bfloat16))


def test_linear_prepared_returns_bf16_on_every_path(monkeypatch):
    """fp4_linear's output is bf16 (..., N) for every batch size, bias or not, and stretch weights (whose
    cuBLAS path divides in float32); no GPU: the kernels are stubs that return the dtype they are asked for."""
    import fp4ref_cuda.gemm as cg

    monkeypatch.setattr(cg, "_usable", lambda *qs: True)
    monkeypatch.setattr(cg, "_ops", lambda: GemmKernelStub(1.0))
    g = torch.Generator().manual_seed(13)
    w32 = torch.randn(24, 64, generator=g)
    weights = [quantize_mx(w32, "e2m1", block_size=32, scale_mode="floor"),
               quantize_mx(w32, "e2m1", block_size=32, scale_mode="stretch"), quantize_nvfp4(w32)]
    for w in weights:
        for lead in ((0,), (3,), (40,), (2, 20), ()):
            for bias in (None, torch.randn(24, generator=g).bfloat16()):
                y = cg.fp4_linear(torch.zeros(*lead, 64, dtype=torch.bfloat16), w, bias)
                assert y.dtype == torch.bfloat16 and tuple(y.shape) == (*lead, 24), (w, lead, y.dtype)


@gpu
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_fp4linear_on_gpu_gives_the_ops_bits(fmt):
    from fp4ref import ops
    from fp4ref.nn import FP4Linear

    g = torch.Generator().manual_seed(12)
    lin = torch.nn.Linear(256, 96)
    m = FP4Linear.from_linear(lin.cuda(), fmt)
    for rows in (1, 5, 40):
        x = torch.randn(2, rows, 256, generator=g).to(torch.bfloat16).cuda()
        _same_bits(m(x), ops.fp4_linear(x, m.weight_quantized, m.bias))
    m.load_quantized(FP4Linear.from_linear(torch.nn.Linear(256, 96).cuda(), fmt).weight_quantized)
    x = torch.randn(4, 256, generator=g).to(torch.bfloat16).cuda()
    _same_bits(m(x), ops.fp4_linear(x, m.weight_quantized, m.bias))


# --- GPU: peers and Blackwell ------------------------------------------------------------------------------
@gpu
def test_against_torch_scaled_mm_where_supported():
    from fp4ref.layouts import swizzle_scales

    m, n, k = 128, 128, 256
    a = quantize_nvfp4(torch.randn(m, k, device="cuda"))
    b = quantize_nvfp4(torch.randn(n, k, device="cuda"))
    a.global_scale.fill_(1.0)
    b.global_scale.fill_(1.0)
    try:
        theirs = torch._scaled_mm(a.data.view(torch.float4_e2m1fn_x2), b.data.view(torch.float4_e2m1fn_x2).T,
                                  swizzle_scales(a.scales).view(torch.float8_e4m3fn),
                                  swizzle_scales(b.scales).view(torch.float8_e4m3fn), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError, ValueError) as e:  # e.g. CUBLAS_STATUS_NOT_SUPPORTED on sm_90
        pytest.skip(f"torch._scaled_mm has no FP4 GEMM on this GPU: {str(e).splitlines()[0][:120]}")
    ours = _cuda_mm(a, b)
    _assert_within_bound(theirs, ref_mm(a, b, out_dtype=torch.float64), _abs_dot(a, b), k)
    _assert_within_bound(ours, ref_mm(a, b, out_dtype=torch.float64), _abs_dot(a, b), k)


def _blackwell_arch() -> str | None:
    if not torch.cuda.is_available():
        return None
    arch = {(10, 0): "sm100a", (12, 0): "sm120a"}.get(torch.cuda.get_device_capability())
    if arch is None:
        return None
    try:
        importlib.import_module(f"fp4ref_cuda._gemm_{arch}")
    except ImportError:
        return None
    return arch


@pytest.mark.skipif(_blackwell_arch() is None, reason="needs an sm_100/sm_120 GPU and the CUTLASS module built")
@pytest.mark.parametrize("fmt", ["mx", "nv"])
def test_blackwell_cutlass_against_reference(fmt):
    """Ready for the first Blackwell machine: the CUTLASS path is exact with unit scales and within the
    bound otherwise."""
    from fp4ref_cuda.gemm import cutlass_supported

    m, n, k = 200, 256, 512
    assert cutlass_supported(m, n, k)
    g = torch.Generator().manual_seed(7)
    mk = _unit_mx if fmt == "mx" else _unit_nv
    a, b = mk(torch.randint(0, 16, (m, k), generator=g).cuda()), mk(torch.randint(0, 16, (n, k), generator=g).cuda())
    assert torch.equal(_cuda_mm(a, b), ref_mm(a, b))
    a = _quant(torch.randn(m, k, generator=g).cuda(), fmt)
    b = _quant(torch.randn(n, k, generator=g).cuda(), fmt)
    _assert_within_bound(_cuda_mm(a, b), ref_mm(a, b, out_dtype=torch.float64), _abs_dot(a, b), k)
