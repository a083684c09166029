"""Whole-model quantization, block by block (SPEC §13).

For each decoder block, in order: the calibration inputs run through the already-quantized prefix
(X̂) and through the full-precision model (X); the block's linear layers are quantized in
true-sequential groups (q,k,v) → o → (gate,up) → down, each group's Hessian ``Ĥ = (2/n) Σ x̂ x̂ᵀ``
collected after the previous groups were quantized; with QEP the target is
``W* = W + α W H_δ (Ĥ + λI)⁻¹``. W4A4 (``act=True``) also rounds each layer's input to the same FP4
format (RTN, after the layer's rotation), so later layers see quantized activations.

Works on any module tree with ``model.model.layers`` of Llama-style blocks (Hugging Face
``LlamaForCausalLM`` and friends) on the model's own device (CPU or GPU).
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .grids import GRID_FORMATS, INT_FORMATS, make_grid
from .nn import FP4Linear, fake_quantize_activations

METHODS = ("rtn", "gptq", "mr-gptq")
FORMATS = GRID_FORMATS
TRUE_SEQUENTIAL = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


def deployed_linear(W_hat: torch.Tensor, bias: torch.Tensor | None, quantized, fmt: str, *, rotation=None,
                    act: bool = False, act_amax: float | None = None) -> FP4Linear:
    """The quantized layer as deployed, an ``FP4Linear`` computing ``y = Q_act(x·R) · Ŵᵀ + b`` by the calibration
    pipelines' fast simulation (``compute="dequantized"``; switch a loaded model to ``"exact"`` for the
    reference or GPU FP4 GEMM). ``quantized`` is Ŵ encoded (MXTensor/NVFP4Tensor; the int formats keep Ŵ in full precision,
    fmt=None), ``rotation`` MR-GPTQ's input rotation (``fp4ref.gptq.Rotation``) or None."""
    block = None if rotation is None else rotation.block_size
    signs = None if rotation is None else rotation.signs
    b = None if bias is None else bias.detach().float()
    if fmt in INT_FORMATS:
        m = FP4Linear(W_hat.shape[1], W_hat.shape[0], bias is not None, fmt=None, rotation=block, signs=signs,
                      device=W_hat.device, compute="dequantized")
        m.weight.copy_(W_hat)
        if b is not None:
            m.bias = nn.Parameter(b.clone(), requires_grad=False)
        return m
    m = FP4Linear.from_quantized(quantized, b, rotation=block, signs=signs, quantize_activations=act,
                                 act_global_amax=act_amax, compute="dequantized")
    if m.bias is not None:
        m.bias.requires_grad_(False)
    return m


@dataclass
class LayerReport:
    """One quantized layer. ``loss``: the base quantizer's objective ½·tr(ΔW Ĥ ΔWᵀ) on its target
    (GPTQ/MR-GPTQ report their own, with damping; RTN's is computed undamped); ``rel_err``:
    ‖W X̂ᵀ − f̂(X̂)‖² / ‖W X̂ᵀ‖² of the deployed layer f̂ on its own calibration inputs; ``rel_err_fp``:
    ‖W Xᵀ − f̂(X̂)‖² / ‖W Xᵀ‖² against the full-precision model's layer output."""

    block: int
    name: str
    shape: tuple[int, int]
    alpha: float
    loss: float
    rel_err: float
    rel_err_fp: float
    damp_used: float | None
    seconds: float


@dataclass
class QuantizeResult:
    model: nn.Module
    layers: list[LayerReport]
    settings: dict
    seconds: float
    tokens: int
    block_seconds: list[float] = field(default_factory=list)

    def mean_rel_err(self, fp: bool = False) -> float:
        vals = [r.rel_err_fp if fp else r.rel_err for r in self.layers]
        return sum(vals) / len(vals) if vals else float("nan")

    def table(self) -> str:
        """The per-layer report as a fixed-width text table."""
        head = (f"{'block':>5} {'layer':<18} {'shape':>11} {'alpha':>5} {'loss':>11} {'rel_err':>9} "
                f"{'rel_err_fp':>10} {'damp':>7} {'time s':>7}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            damp = "-" if r.damp_used is None else f"{r.damp_used:.0e}"
            lines.append(f"{r.block:>5} {r.name:<18} {f'{r.shape[0]}x{r.shape[1]}':>11} {r.alpha:>5.2f} "
                         f"{r.loss:>11.4e} {r.rel_err:>9.5f} {r.rel_err_fp:>10.5f} {damp:>7} {r.seconds:>7.2f}")
        return "\n".join(lines)

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.layers]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted inputs were seen."""


def _alpha_for(name: str, qep: float | None, patterns: Mapping[str, float] | None) -> float:
    if qep is None:
        return 0.0
    from .qep import alpha_for

    return alpha_for(name, float(qep), patterns)


def check_settings(method: str, fmt: str, qep: float | None, act: bool) -> None:
    """ValueError unless (method, fmt, qep, act) is a combination quantize_model / quantize_pretrained run."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {FORMATS}")
    if act and fmt in INT_FORMATS:
        raise ValueError("act=True (W4A4) needs an FP4 format: fmt='mxfp4' or 'nvfp4'")
    if method == "mr-gptq" and fmt in INT_FORMATS:
        raise ValueError(f"method='mr-gptq' is defined for fmt='mxfp4' or 'nvfp4', not {fmt!r}")
    if qep is not None and (isinstance(qep, bool) or not isinstance(qep, (int, float)) or not 0.0 <= qep <= 1.0):
        raise ValueError(f"qep must be None or an alpha in [0, 1], got {qep!r}")


def _check_args(model, calibration, method, fmt, qep, act, batch_size) -> None:
    check_settings(method, fmt, qep, act)
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise TypeError("calibration must be an int64 tensor of token ids, shape (n_windows, seq_len)")
    if calibration.shape[0] < 1:
        raise ValueError("calibration must hold at least one window")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not hasattr(getattr(model, "model", None), "layers"):
        raise TypeError("model must have model.model.layers (a Llama-style causal LM)")


@torch.no_grad()
def _block_inputs(model, calibration: torch.Tensor, batch_size: int, device) -> list[tuple[torch.Tensor, dict]]:
    """Hidden states entering block 0 and the keyword arguments the model passes to every block."""
    first = model.model.layers[0]
    got: list[tuple[torch.Tensor, dict]] = []

    def grab(_mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states",)}
        got.append((hidden.detach(), kw))
        raise _Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, calibration.shape[0], batch_size):
            try:
                model(input_ids=calibration[i:i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return got


def _run_block(block, batches, capture: Iterable[str] = (), stop_after: Iterable[str] = ()):
    """Runs ``block`` on every batch; returns (outputs or None, {name: [input per batch]}).

    Inputs of the linears named in ``capture`` are recorded; with ``stop_after`` the pass ends as soon
    as all those layers ran (the outputs are then not computed).
    """
    mods = dict(block.named_modules())
    capture, stop_after = list(capture), set(stop_after)
    seen: set[str] = set()
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in capture}
    handles = []
    for n in capture:
        def pre(_m, args, n=n):
            inputs[n].append(args[0].detach())
        handles.append(mods[n].register_forward_pre_hook(pre))
    for n in stop_after:
        def post(_m, _a, _o, n=n):
            seen.add(n)
            if seen >= stop_after:
                raise _Stop
        handles.append(mods[n].register_forward_hook(post))
    outs = []
    try:
        for hidden, kw in batches:
            seen.clear()
            try:
                out = block(hidden, **kw)
                outs.append((out[0] if isinstance(out, tuple) else out, kw))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return (outs if not stop_after else None), inputs


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replaces the submodule ``name`` (dotted) of ``root`` by ``new``."""
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _rel(num: torch.Tensor, den: torch.Tensor) -> float:
    d = float(den)
    return float(num) / d if d > 0 else float("nan")


@torch.no_grad()
def _quantize_layer(lin: nn.Linear, name: str, H: torch.Tensor, target: torch.Tensor, method: str, fmt: str,
                    act: bool, opts: dict):
    """Quantizes ``target`` (W or QEP's W*) with Hessian ``H``; returns (FP4Linear, loss, damp_used)."""
    from .gptq import gptq, mr_gptq

    W = target.to(lin.weight.dtype)
    gamax = opts.get("global_amax")
    if method == "rtn":
        grid = make_grid(fmt, global_amax=gamax, **opts.get("grid", {}))
        fitted = grid.fit(W)
        W_hat = grid.quantize(W, fitted)
        dW = (W.double() - W_hat.double())
        loss = 0.5 * float(torch.einsum("ij,jk,ik->", dW, H.double(), dW))
        q = grid.encode(W_hat, fitted)
        return deployed_linear(W_hat, lin.bias, q, fmt, act=act), loss, None
    if method == "gptq":
        res = gptq(W, H, make_grid(fmt, global_amax=gamax, **opts.get("grid", {})), damp=opts["damp"], act_order=opts["act_order"], name=name,
                   dtype=opts["gptq_dtype"])
        return deployed_linear(res.weight, lin.bias, res.quantized, fmt, act=act), res.loss, res.damp_used
    res = mr_gptq(W, H, fmt, hadamard_block=opts["hadamard_block"], scale_search=opts["scale_search"],
                  damp=opts["damp"], name=name, dtype=opts["gptq_dtype"], global_amax=gamax)
    return deployed_linear(res.weight, lin.bias, res.quantized, fmt, rotation=res.rotation, act=act), res.loss, \
        res.damp_used


def quantize_model(model: nn.Module, calibration: torch.Tensor, method: str = "rtn", fmt: str = "mxfp4",
                   qep: float | None = None, *, act: bool = False, qep_layers: Mapping[str, float] | None = None,
                   damp: float = 0.01, act_order: bool = False, hadamard_block: int | None = None,
                   scale_search: str = "mse", qep_damp: float = 0.01, gptq_dtype: torch.dtype = torch.float64,
                   batch_size: int = 4, blocks: Iterable[int] | None = None, group_size: int | None = None,
                   symmetric: bool = True, progress: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantizes the linear layers of ``model``'s decoder blocks in place; returns the model and a report.

    ``calibration``: int64 token ids (n_windows, seq_len). ``method``: "rtn" | "gptq" | "mr-gptq" (block
    Hadamard of ``hadamard_block``, default the format's group, static act-order, ``scale_search``).
    ``fmt``: "mxfp4" | "nvfp4" | "int4" | "int3" | "int2" (``group_size``, default 32, and ``symmetric`` apply to
    the int formats only, see ``fp4ref.grids.make_grid``). ``qep``: None (off) or α; ``qep_layers``: {regex: α} overriding α
    for layer names like "model.layers.3.mlp.down_proj" (first match wins; ``fp4ref.qep.ORIGINAL_EXCLUDE``
    leaves down_proj uncorrected as the original code does); correction damping ``qep_damp``·mean(diag Ĥ). ``act``: W4A4, activations RTN in ``fmt``.
    ``damp``/``act_order``/``gptq_dtype``: GPTQ's options (SPEC §10). ``blocks``: indices of the blocks
    to quantize (default all; the rest stay full precision but still run). ``progress``: called with one
    line per block (default: print to stderr).
    """
    _check_args(model, calibration, method, fmt, qep, act, batch_size)
    if progress is None:
        progress = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    from .gptq import HessianAccumulator
    from .qep import QEPAccumulator, qep_target

    int_opts = dict(group_size=group_size, symmetric=symmetric) if fmt in INT_FORMATS else {}
    make_grid(fmt, group_size=group_size, symmetric=symmetric)  # a bad group_size / symmetric fails before any work
    opts = dict(grid=int_opts, damp=damp, act_order=act_order, hadamard_block=hadamard_block, scale_search=scale_search,
                gptq_dtype=gptq_dtype)
    layers = model.model.layers
    chosen = set(range(len(layers))) if blocks is None else {int(b) for b in blocks}
    device = next(model.parameters()).device
    t_start = time.perf_counter()
    was_training = model.training
    model.eval()
    reports: list[LayerReport] = []
    block_seconds: list[float] = []
    with torch.no_grad():
        q_batches = _block_inputs(model, calibration, batch_size, device)
        f_batches = list(q_batches)
        for b, block in enumerate(layers):
            if b > max(chosen, default=-1):
                break  # nothing left to quantize: later blocks need no inputs
            t_block = time.perf_counter()
            if b not in chosen:
                q_batches, _ = _run_block(block, q_batches)
                f_batches, _ = _run_block(block, f_batches)
                block_seconds.append(time.perf_counter() - t_block)
                continue
            names = [n for g in TRUE_SEQUENTIAL for n in g]
            fp_block = copy.deepcopy(block)
            f_next, x_full = _run_block(fp_block, f_batches, capture=names)
            fp_linears = dict(fp_block.named_modules())
            for group in TRUE_SEQUENTIAL:
                _, x_hat = _run_block(block, q_batches, capture=group, stop_after=group)
                for n in group:
                    t0 = time.perf_counter()
                    full = f"model.layers.{b}.{n}"
                    lin = block.get_submodule(n)
                    W = lin.weight.detach()
                    d = W.shape[1]
                    alpha = _alpha_for(full, qep, qep_layers)
                    if alpha > 0:
                        acc = QEPAccumulator(d, device=W.device)
                        for xh, xf in zip(x_hat[n], x_full[n]):
                            acc.add(xh, xf)
                        H = acc.H
                        target = qep_target(W.double(), H, acc.H_delta, alpha=alpha, damp=qep_damp)
                    else:
                        acc = HessianAccumulator(d, device=W.device)
                        for xh in x_hat[n]:
                            acc.add(xh)
                        H, target = acc.H, W
                    new, loss, damp_used = _quantize_layer(lin, full, H, target, method, fmt, act, opts)
                    new = new.to(device)
                    err = den = err_fp = den_fp = torch.zeros((), dtype=torch.float64)
                    ref_lin = fp_linears[n]
                    for xh, xf in zip(x_hat[n], x_full[n]):
                        y_ref, y_fp, y_q = lin(xh).double(), ref_lin(xf).double(), new(xh).double()
                        err = err + (y_ref - y_q).square().sum()
                        den = den + y_ref.square().sum()
                        err_fp = err_fp + (y_fp - y_q).square().sum()
                        den_fp = den_fp + y_fp.square().sum()
                    set_module(block, n, new)
                    reports.append(LayerReport(b, n, tuple(W.shape), alpha, loss, _rel(err, den),
                                               _rel(err_fp, den_fp), damp_used, time.perf_counter() - t0))
                del x_hat
            del x_full, fp_block
            q_batches, _ = _run_block(block, q_batches)
            f_batches = f_next
            block_seconds.append(time.perf_counter() - t_block)
            mine = [r for r in reports if r.block == b]
            progress(f"block {b + 1}/{len(layers)}: {block_seconds[-1]:.1f} s, mean rel_err "
                     f"{sum(r.rel_err for r in mine) / len(mine):.5f} (vs fp {sum(r.rel_err_fp for r in mine) / len(mine):.5f})")
    model.train(was_training)
    settings = dict(method=method, fmt=fmt, qep=qep, qep_layers=dict(qep_layers or {}), act=act, damp=damp, act_order=act_order,
                    hadamard_block=hadamard_block, scale_search=scale_search, qep_damp=qep_damp,
                    gptq_dtype=str(gptq_dtype).replace("torch.", ""), blocks=sorted(chosen),
                    calibration_shape=tuple(calibration.shape), threads=torch.get_num_threads(),
                    device=str(device), **int_opts)
    return QuantizeResult(model, reports, settings, time.perf_counter() - t_start, int(calibration.numel()),
                          block_seconds)


__all__ = ["quantize_model", "QuantizeResult", "LayerReport", "deployed_linear", "make_grid", "set_module",
           "fake_quantize_activations", "METHODS", "FORMATS", "TRUE_SEQUENTIAL"]
