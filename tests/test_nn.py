"""FP4Linear and quantize_linear_layers: rotation fusion, stored codes, W4A16/W4A4 forward."""
import pytest
import torch
from torch import nn

from fp4ref import ops
from fp4ref.hadamard import block_hadamard, random_signs, rotate_weight
from fp4ref.mx import quantize_mx
from fp4ref.nn import FP4Linear, quantize_linear_layers
from fp4ref.nvfp4 import quantize_nvfp4

CONFIGS = [("mxfp4", dict(scale_mode=m)) for m in ("floor", "ceil", "even", "rceil", "stretch")] + \
          [("nvfp4", dict(recipe=r)) for r in ("te", "torchao")]


def _linear(k=128, n=24, dtype=torch.float32, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    return lin


def _x(shape, seed=1, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _reference_quantize(w, fmt, kw):
    return quantize_mx(w, scale_mode=kw["scale_mode"]) if fmt == "mxfp4" else quantize_nvfp4(w, recipe=kw["recipe"])


@pytest.mark.parametrize("rot", [2, 16, 32, 128])
@pytest.mark.parametrize("with_signs", [False, True])
def test_rotation_without_quantization_reproduces_linear_float64(rot, with_signs):
    lin = _linear(dtype=torch.float64)
    signs = random_signs(128, seed=rot) if with_signs else None
    m = FP4Linear.from_linear(lin, fmt=None, rotation=rot, signs=signs)
    x = _x((2, 5, 128), dtype=torch.float64)
    y = m(x)
    assert y.dtype == torch.float64
    assert torch.allclose(y, lin(x), rtol=0, atol=1e-13)
    assert not torch.allclose(m.weight, lin.weight)  # the weight really is stored rotated


def test_rotation_without_quantization_float32():
    lin = _linear()
    m = FP4Linear.from_linear(lin, fmt=None, rotation=64, signs=random_signs(64, seed=3))
    x = _x((7, 128))
    assert torch.allclose(m(x), lin(x), rtol=0, atol=2e-5)


@pytest.mark.parametrize("fmt, kw", CONFIGS)
def test_stored_weight_is_the_quantized_rotated_weight(fmt, kw):
    lin = _linear()
    s = random_signs(32, seed=4)
    m = FP4Linear.from_linear(lin, fmt, rotation=32, signs=s, **kw)
    ref = _reference_quantize(rotate_weight(lin.weight.detach(), 32, s), fmt, kw)
    q = m.weight_quantized
    assert torch.equal(q.data, ref.data) and torch.equal(q.scales, ref.scales)
    if fmt == "nvfp4":
        assert torch.equal(q.global_scale.view(torch.int32), ref.global_scale.view(torch.int32))


@pytest.mark.parametrize("fmt, kw", CONFIGS)
@pytest.mark.parametrize("rot", [None, 16, 128])
def test_weight_only_forward_is_dequantize_then_matmul(fmt, kw, rot):
    lin = _linear()
    m = FP4Linear.from_linear(lin, fmt, rotation=rot, **kw)
    x = _x((3, 4, 128))
    xr = x if rot is None else block_hadamard(x, rot)
    ref = xr.double() @ m.weight_quantized.dequantize().double().T + lin.bias.double()
    y = m(x)
    assert y.shape == (3, 4, 24) and y.dtype == torch.float32
    assert torch.allclose(y.double(), ref, rtol=2**-22, atol=1e-6)


@pytest.mark.parametrize("fmt, kw", CONFIGS)
@pytest.mark.parametrize("rot", [None, 32])
def test_w4a4_forward_is_dequantize_then_matmul(fmt, kw, rot):
    lin = _linear()
    m = FP4Linear.from_linear(lin, fmt, rotation=rot, quantize_activations=True, **kw)
    x = _x((6, 128)) * 3
    xr = x if rot is None else block_hadamard(x, rot)
    xq = _reference_quantize(xr, fmt, kw)
    ref = xq.dequantize().double() @ m.weight_quantized.dequantize().double().T
    y = m(x) - lin.bias.detach()
    exact_deq = fmt == "mxfp4" and kw["scale_mode"] != "stretch"
    if exact_deq:  # every product and partial sum is exact in float64: one rounding to float32
        assert torch.equal(m(x), (ref + lin.bias.double()).float())
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-5)
    # W4A4 is a different function from W4A16 on the same weight
    m.quantize_activations = False
    assert not torch.allclose(m(x), y + lin.bias.detach())


def test_forward_goes_through_ops(monkeypatch):
    calls = []
    for name in ("fp4_mm", "fp4_linear", "block_hadamard", "prepare_fp4_weight", "fp4_linear_prepared"):
        orig = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    lin = _linear()
    FP4Linear.from_linear(lin, "nvfp4", rotation=16, quantize_activations=True)(_x((2, 128)))
    m = FP4Linear.from_linear(lin, "mxfp4")
    m(_x((2, 128)))
    assert calls.count("fp4_mm") == 1 and calls.count("fp4_linear") == 1 and calls.count("block_hadamard") == 2
    assert calls.count("prepare_fp4_weight") == 1 and calls.count("fp4_linear_prepared") == 1
    m(_x((3, 128)))  # the weight is prepared once per version of its buffers
    assert calls.count("prepare_fp4_weight") == 1 and calls.count("fp4_linear_prepared") == 2
    m.load_quantized(FP4Linear.from_linear(_linear(seed=9), "mxfp4").weight_quantized)
    m(_x((3, 128)))
    assert calls.count("prepare_fp4_weight") == 2  # a new weight: prepared again


def test_nn_reaches_the_backend_only_through_ops():
    """fp4ref.nn imports nothing from fp4ref_cuda: every backend call goes through fp4ref.ops."""
    import ast
    from pathlib import Path

    import fp4ref.nn

    tree = ast.parse(Path(fp4ref.nn.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("fp4ref_cuda")], names


# --- fp4ref.ops.prepare_fp4_weight / fp4_linear_prepared ---------------------------------------------------
def _weights(k=64, n=24, seed=7):
    w = _x((n, k), seed=seed)
    return [quantize_mx(w, scale_mode=m) for m in ("floor", "stretch", "rceil")] + \
           [quantize_nvfp4(w, recipe=r) for r in ("te", "torchao")] + [quantize_mx(w, block_size=16)]


def _bits(t):
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_prepared_linear_gives_the_reference_bits_on_cpu(dtype):
    from fp4ref.gemm import fp4_linear as ref_linear

    bias = _x((24,), seed=5)
    for w in _weights():
        pw = ops.prepare_fp4_weight(w)
        assert pw.backend == "reference" and pw.weight is w and pw.shape == w.shape and (pw.n, pw.k) == (24, 64)
        for shape in ((64,), (3, 64), (2, 5, 64), (0, 64)):
            x = _x(shape, seed=len(shape)).to(dtype) * 4
            for b in (None, bias.to(dtype)):
                y = ops.fp4_linear_prepared(x, pw, b)
                want = ref_linear(x, w, b)
                assert y.dtype == want.dtype and y.shape == want.shape == (*shape[:-1], 24)
                assert torch.equal(_bits(y), _bits(want)), (w, shape, b is None)
                assert torch.equal(_bits(ops.fp4_linear(x, w, b)), _bits(y))


def test_prepared_linear_validates_its_arguments():
    w = quantize_mx(_x((24, 64)))
    pw = ops.prepare_fp4_weight(w)
    x = _x((2, 64))
    cases = [
        (lambda: ops.prepare_fp4_weight(torch.zeros(24, 64)), TypeError, "w must be an MXTensor"),
        (lambda: ops.prepare_fp4_weight(quantize_mx(_x((24, 64)), "e4m3")), ValueError, "w must be MXFP4"),
        (lambda: ops.prepare_fp4_weight(quantize_mx(_x((2, 24, 64)))), ValueError, "w must be 2-D"),
        (lambda: ops.prepare_fp4_weight(quantize_mx(_x((64, 64)), axis=0)), ValueError, "blocked along its last"),
        (lambda: ops.prepare_fp4_weight(quantize_nvfp4(_x((2, 3, 64)))), ValueError, "w must be 2-D"),
        (lambda: ops.fp4_linear_prepared(x, w), TypeError, "pw must be a PreparedFP4Weight"),
        (lambda: ops.fp4_linear_prepared(x.numpy(), pw), TypeError, "x must be a torch.Tensor"),
        (lambda: ops.fp4_linear_prepared(x.int(), pw), TypeError, "x must be float32"),
        (lambda: ops.fp4_linear_prepared(_x((2, 32)), pw), ValueError, "K mismatch"),
        (lambda: ops.fp4_linear_prepared(torch.tensor(1.0), pw), ValueError, "K mismatch"),
        (lambda: ops.fp4_linear_prepared(x.to("meta"), pw), ValueError, "x and w must be on one device"),
        (lambda: ops.fp4_linear_prepared(x, pw, torch.zeros(24, dtype=torch.int32)), TypeError, "bias must be"),
        (lambda: ops.fp4_linear_prepared(x, pw, [0.0] * 24), TypeError, "bias must be"),
        (lambda: ops.fp4_linear_prepared(x, pw, torch.zeros(23)), ValueError, "bias must have shape"),
        (lambda: ops.fp4_linear_prepared(x, pw, torch.zeros(24, device="meta")), ValueError, "bias"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()


class _FakeGemm:
    """A stand-in for fp4ref_cuda.gemm's prepared-weight pair, recording calls; ``decline`` returns
    NotImplemented from the GEMM (as the kernels do for inputs they do not take)."""

    def __init__(self, decline=False):
        self.calls, self.decline = [], decline

    def prepare_weight(self, w):
        self.calls.append("prepare")
        return ("native", w)

    def linear_prepared(self, x, native, bias=None):
        self.calls.append("linear")
        if self.decline:
            return NotImplemented
        return torch.full((*x.shape[:-1], native[1].shape[0]), 7.0, dtype=torch.bfloat16)


def _force_backend(monkeypatch, fake):
    class Backend:  # the backend package: its GEMM module as attribute ``gemm``, as fp4ref_cuda has it
        gemm = fake

    monkeypatch.setattr(ops, "backend", lambda t: "cuda")
    monkeypatch.setattr(ops, "_cuda_module", lambda: Backend)


def test_prepared_linear_dispatches_to_the_backend_and_falls_back(monkeypatch):
    from fp4ref.gemm import fp4_linear as ref_linear

    w, x, b = quantize_nvfp4(_x((24, 64))), _x((3, 64)).bfloat16(), _x((24,))
    fake = _FakeGemm()
    _force_backend(monkeypatch, fake)
    pw = ops.prepare_fp4_weight(w)
    assert pw.backend == "cuda" and pw.native == ("native", w) and fake.calls == ["prepare"]
    assert torch.equal(ops.fp4_linear_prepared(x, pw, b), torch.full((3, 24), 7.0, dtype=torch.bfloat16))
    assert fake.calls == ["prepare", "linear"]
    monkeypatch.setenv("FP4REF_BACKEND", "reference")  # the reference, without asking the backend
    assert torch.equal(_bits(ops.fp4_linear_prepared(x, pw, b)), _bits(ref_linear(x, w, b)))
    assert fake.calls == ["prepare", "linear"]
    monkeypatch.delenv("FP4REF_BACKEND")
    declining = _FakeGemm(decline=True)
    _force_backend(monkeypatch, declining)
    pw = ops.prepare_fp4_weight(w)
    assert torch.equal(_bits(ops.fp4_linear_prepared(x, pw, b)), _bits(ref_linear(x, w, b)))
    assert declining.calls == ["prepare", "linear"]

    class NoGemm:  # a backend without the prepared GEMM: the reference serves it
        pass

    monkeypatch.setattr(ops, "_cuda_module", lambda: NoGemm)
    pw = ops.prepare_fp4_weight(w)
    assert pw.backend == "reference" and pw.native is None
    assert torch.equal(_bits(ops.fp4_linear_prepared(x, pw, b)), _bits(ref_linear(x, w, b)))


def test_fp4linear_prepares_through_ops_once_per_weight_version(monkeypatch):
    fake = _FakeGemm()
    m = FP4Linear.from_linear(_linear(k=64), "mxfp4")
    _force_backend(monkeypatch, fake)
    x = _x((2, 64)).bfloat16()
    for _ in range(3):
        assert torch.equal(m(x), torch.full((2, 24), 7.0, dtype=torch.bfloat16))
    assert fake.calls == ["prepare", "linear", "linear", "linear"]
    m.load_quantized(FP4Linear.from_linear(_linear(k=64, seed=4), "mxfp4").weight_quantized)
    m(x)
    assert fake.calls[-2:] == ["prepare", "linear"]
    assert m(x.float()).dtype == torch.float32  # the fake declines nothing, but returns bf16: cast to x's dtype


def test_bf16_input_and_state_dict_roundtrip():
    lin = _linear(seed=5)
    m = FP4Linear.from_linear(lin, "nvfp4", rotation=16, signs=random_signs(128, seed=2),
                              quantize_activations=True)
    x = _x((2, 3, 128), dtype=torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 24)
    fresh = FP4Linear(128, 24, fmt="nvfp4", rotation=16, signs=torch.ones(128), quantize_activations=True)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), y)
    assert set(m.state_dict()) == {"weight_packed", "weight_scale", "weight_global_scale", "rotation_signs", "bias"}


def test_from_quantized():
    w = _x((16, 64))
    q = quantize_mx(block_hadamard(w, 32), scale_mode="stretch")
    m = FP4Linear.from_quantized(q, rotation=32)
    x = _x((3, 64), seed=3)
    ref = block_hadamard(x, 32).double() @ q.dequantize().double().T
    assert torch.allclose(m(x).double(), ref, rtol=1e-6, atol=1e-6)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(64, 64), nn.Linear(64, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x):
        return self.mlp(self.q_proj(x) + self.k_proj(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(64, 10)

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return self.lm_head(x)


def test_quantize_linear_layers_patterns():
    net = Net()
    x = _x((4, 64))
    y0 = net(x)
    done = quantize_linear_layers(net, ["*.q_proj", "re:layers\\.1\\.mlp\\.\\d"], fmt="mxfp4", rotation=32)
    assert list(done) == ["layers.0.q_proj", "layers.1.q_proj", "layers.1.mlp.0", "layers.1.mlp.2"]
    assert isinstance(net.layers[1].mlp[2], FP4Linear) and type(net.layers[0].mlp[0]) is nn.Linear
    assert type(net.layers[0].k_proj) is nn.Linear and type(net.lm_head) is nn.Linear
    y1 = net(x)
    assert y1.shape == y0.shape and 0 < (y1 - y0).norm() / y0.norm() < 0.3
    net2 = Net()
    done2 = quantize_linear_layers(net2, exclude=["lm_head", "re:.*k_proj"], fmt="nvfp4")
    assert len(done2) == 6 and all(isinstance(m, FP4Linear) for m in done2.values())
    rest = quantize_linear_layers(net2, "*", fmt="nvfp4")  # FP4Linear layers are not replaced again
    assert sorted(rest) == ["layers.0.k_proj", "layers.1.k_proj", "lm_head"]
    assert rest["lm_head"] is net2.lm_head


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(fmt="int4"), ValueError, "fmt must be"),
    (dict(fmt="mxfp4", scale_mode="up"), ValueError, "scale_mode"),
    (dict(fmt="nvfp4", recipe="x"), ValueError, "recipe"),
    (dict(rotation=24), ValueError, "power of two"),
    (dict(rotation=256), ValueError, "multiple of rotation"),
    (dict(signs=torch.ones(16)), ValueError, "without rotation"),
    (dict(rotation=16, signs=torch.ones(8)), ValueError, "signs"),
    (dict(fmt=None, quantize_activations=True), ValueError, "needs a format"),
    (dict(fmt="mxfp4", block_size=48), ValueError, "multiple of block_size"),
])
def test_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        FP4Linear.from_linear(_linear(k=128), **kwargs)


def test_bad_model_arguments():
    with pytest.raises(TypeError, match="nn.Linear"):
        FP4Linear.from_linear(nn.Conv1d(4, 4, 1))
    with pytest.raises(TypeError, match="patterns"):
        quantize_linear_layers(Net(), [3])
    with pytest.raises(ValueError, match="model itself"):
        quantize_linear_layers(nn.Linear(32, 4))
    m = FP4Linear.from_linear(_linear())
    with pytest.raises(ValueError, match="in_features=128"):
        m(_x((2, 64)))


def test_static_activation_amax_and_dequantized_compute():
    """W4A4 NVFP4 with a static activation amax (the serving layout's input_global_scale) on both compute paths,
    each against a computation written here from the ops; the dequantized path's weight cache follows reloads."""
    from fp4ref.gemm import fp4_mm
    from fp4ref.hadamard import block_hadamard
    from fp4ref.nvfp4 import quantize_nvfp4

    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(24, 64, generator=g), torch.randn(24, generator=g)
    x = torch.randn(7, 64, generator=g) * 3
    q = quantize_nvfp4(w)
    amax = 2.5  # below max|x·R|: the static scale saturates what the calibration never saw, as served
    exact = FP4Linear.from_quantized(q, b, rotation=16, quantize_activations=True, act_global_amax=amax)
    sim = FP4Linear.from_quantized(q, b, rotation=16, quantize_activations=True, act_global_amax=amax,
                                   compute="dequantized")
    xr = block_hadamard(x, 16)
    assert float(xr.abs().max()) > amax
    xq = quantize_nvfp4(xr, global_amax=amax)
    want_exact = fp4_mm(xq, q) + b
    assert torch.equal(exact(x).view(torch.int32), want_exact.view(torch.int32))
    want_sim = torch.nn.functional.linear(xq.dequantize(), q.dequantize(), b)
    assert torch.equal(sim(x).view(torch.int32), want_sim.view(torch.int32))
    dyn = FP4Linear.from_quantized(q, b, rotation=16, quantize_activations=True, compute="dequantized")
    assert not torch.equal(dyn(x), sim(x))  # the amax matters
    q2 = quantize_nvfp4(w * 2)
    sim.load_quantized(q2)
    assert torch.equal(sim.dequantized_weight(), q2.dequantize())
    with pytest.raises(ValueError, match="compute"):
        FP4Linear(64, 24, fmt="nvfp4", compute="fast")
    with pytest.raises(ValueError, match="act_global_amax applies"):
        FP4Linear(64, 24, fmt="mxfp4", quantize_activations=True, act_global_amax=1.0)
    with pytest.raises(ValueError, match="act_global_amax must be"):
        FP4Linear(64, 24, fmt="nvfp4", quantize_activations=True, act_global_amax=-1.0)
    with pytest.raises(ValueError, match="act_global_amax must be"):
        FP4Linear(64, 24, fmt="nvfp4", quantize_activations=True, act_global_amax=True)
