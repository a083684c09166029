"""No silent fallback: every configuration the CUDA backend claims (fp4ref_cuda._wrappers.CLAIMED) is served by
the kernels, never by the reference behind ``fp4ref.ops``' back.

``fp4ref.ops`` answers a call with the reference whenever the backend returns ``NotImplemented``, so a kernel
regression there would only show as slowness. Here the reference is replaced by an error and every claimed
configuration goes through ``fp4ref.ops``: on the CPU build of the same C++ and the same Python wrappers
(dispatch forced, every CI run), and on a GPU when there is one.
"""
from __future__ import annotations

import shutil

import pytest
import torch

import fp4ref.ops as fops
from fp4ref.formats import ELEMENT_FORMATS, FORMATS
from helpers import GemmKernelStub

HAS_CXX = shutil.which("g++") is not None or shutil.which("c++") is not None


class FellBack(AssertionError):
    pass


def _strict(monkeypatch):
    real = fops._dispatch

    def dispatch(name, reference, check, first, *args, **kwargs):
        def no_reference(*_a, **_k):
            raise FellBack(f"{name}: the backend returned NotImplemented for a claimed configuration")
        return real(name, no_reference, check, first, *args, **kwargs)

    monkeypatch.setattr(fops, "_dispatch", dispatch)


@pytest.fixture(params=["cpu-build", "cuda"])
def device(request, monkeypatch):
    if request.param == "cuda":
        import importlib.util

        if importlib.util.find_spec("fp4ref_cuda") is None or not torch.cuda.is_available() \
                or fops._cuda_module() is None:
            pytest.skip("needs an NVIDIA GPU and the built fp4ref_cuda extension")
        _strict(monkeypatch)
        return torch.device("cuda")
    if not HAS_CXX:
        pytest.skip("no C++ compiler for the CPU build of the kernels")
    from fp4ref_cuda._cpu import load

    backend = load()  # the same wrappers (fp4ref_cuda._wrappers.Ops) over the CPU build of the kernels' C++
    monkeypatch.setattr(fops, "backend", lambda t: "cuda")
    monkeypatch.setattr(fops, "_cuda_module", lambda: backend)
    _strict(monkeypatch)
    return torch.device("cpu")


def _x(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype).to(device)


def test_every_claimed_configuration_runs_on_the_kernels(device):
    from fp4ref_cuda._wrappers import CLAIMED

    dtypes = CLAIMED["dtypes"]
    n = 0
    for dt in dtypes:
        x = _x((4, 128), dt, device)
        for fmt in FORMATS:
            for sat in (True, False):
                if not sat and fmt in ("e2m1", "e8m0"):
                    continue  # no NaN/Inf code: saturate=False may raise, a data-dependent error, not a fallback
                codes = fops.encode(x if sat else x.clamp(-1, 1), fmt, saturate=sat)
                fops.decode(codes, fmt, dtype=dt)
                n += 1
        for elem in ELEMENT_FORMATS:
            for mode in CLAIMED["mx_scale_modes"][elem]:
                for block in CLAIMED["mx_block_sizes"]:
                    q = fops.quantize_mx(x, elem, block_size=block, scale_mode=mode)
                    fops.dequantize_mx(q, dtype=dt)
                    n += 1
            fops.quantize_mx(x.T.contiguous(), elem, block_size=32, axis=0)  # blocks along another axis
        for amax in (None, 5.0):
            q = fops.quantize_nvfp4(x, global_amax=amax, recipe="te")
            fops.dequantize_nvfp4(q, dtype=dt)
            n += 1
        for hb in CLAIMED["hadamard_blocks"]:
            fops.block_hadamard(x, hb)
            n += 1
        for hb in CLAIMED["fused_hadamard_blocks"]:
            for fmt in ("mxfp4", "nvfp4"):
                fops.hadamard_quantize(x, fmt, hadamard_block=hb, swizzle=True)
                n += 1
    codes = torch.randint(0, 16, (6, 64), dtype=torch.uint8).to(device)
    fops.unpack_fp4(fops.pack_fp4(codes))
    scales = torch.randint(0, 255, (130, 7), dtype=torch.uint8).to(device)
    fops.unswizzle_scales(fops.swizzle_scales(scales), 130, 7)
    assert n > 200


def test_the_strict_dispatch_can_fail(device):
    """A configuration the backend does not claim (float64 input: the reference's float64 butterfly) falls back,
    and the strict dispatch reports it."""
    with pytest.raises(FellBack, match="block_hadamard"):
        fops.block_hadamard(_x((2, 64), torch.float64, device), 32)


def test_prepared_fp4_linear_runs_on_the_kernels(device, monkeypatch):
    """``prepare_fp4_weight`` / ``fp4_linear_prepared`` (FP4Linear's path): bf16 inputs with MXFP4 (floor and
    stretch) and NVFP4 weights, small-M and cuBLAS batch sizes, bias or not, are served by fp4ref_cuda's
    prepared GEMM, never by the reference. The GEMM kernels run only on a GPU: with the CPU build, the GEMM
    module's Python (fp4ref_cuda.gemm) runs with its kernels stubbed, so only the dispatch is checked there."""
    import fp4ref_cuda
    import fp4ref_cuda.gemm as cg
    from fp4ref.mx import quantize_mx
    from fp4ref.nvfp4 import quantize_nvfp4

    if device.type == "cpu":
        monkeypatch.setattr(fops, "_cuda_module", lambda: fp4ref_cuda)
        monkeypatch.setattr(cg, "_usable", lambda *qs: True)
        monkeypatch.setattr(cg, "_ops", lambda: GemmKernelStub(0.0))
    w32 = _x((48, 256), torch.float32, device, seed=3)
    weights = [quantize_mx(w32, "e2m1", scale_mode="floor"), quantize_mx(w32, "e2m1", scale_mode="stretch"),
               quantize_nvfp4(w32)]
    wanted = {}
    for i, w in enumerate(weights):
        for rows in (1, 7, 40):
            for bias in (None, _x((48,), torch.float32, device, seed=rows)):
                x = _x((rows, 256), torch.bfloat16, device, seed=rows + 10)
                wanted[i, rows, bias is None] = (x, bias, cg.fp4_linear(x, w, bias))

    def no_reference(*_a, **_k):
        raise FellBack("fp4_linear_prepared: the backend returned NotImplemented for a claimed configuration")

    monkeypatch.setattr(fops, "fp4_linear", no_reference)
    for i, w in enumerate(weights):
        pw = fops.prepare_fp4_weight(w)
        assert pw.backend == "cuda"
        for (j, rows, _), (x, bias, want) in wanted.items():
            if j == i:
                y = fops.fp4_linear_prepared(x, pw, bias)
                assert y.dtype == torch.bfloat16 and y.shape == (rows, 48)
                assert torch.equal(y.view(torch.int16), want.view(torch.int16))  # the op's bits
