"""``quantize_pretrained``: quantize a model on disk, one decoder block in memory at a time.

For each block b: read it from the checkpoint (twice: the full-precision block and the one being
quantized), find its true-sequential stages, and for each stage collect the inputs of its linears on this
rank's calibration windows (X̂ through the quantized prefix, X through the full-precision model), reduce
Ĥ = (2/n) Σ x̂x̂ᵀ (and QEP's H_δ) over all ranks along the fixed window tree, solve each linear on its owner
rank, share it, and put it in place. Then every stream (calibration and evaluation, quantized and full
precision) moves through the block, the block's tensors are written, and the block is dropped. The peak
memory is one block plus this rank's activations, whatever the number of blocks.
"""
from __future__ import annotations

import copy
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .._version import __version__
from ..evaluation import EvalMetrics, summarize, window_stats
from ..grids import INT_FORMATS, make_grid
from ..model import LayerReport, _quantize_layer, _rel, check_settings, set_module
from .blocks import (Probe, build_skeleton, find_layers, materialize, plan_block,
                     unfuse_experts)
from .calib import windows
from .dist import Dist
from .errors import PipelineError
from .sink import Sink
from .source import Source


class _Stop(Exception):
    pass


class Stream:
    """Hidden states of this rank's windows, one tensor per window, in host memory or under an offload folder."""

    def __init__(self, name: str, n: int, offload: Path | None):
        self.n, self.dir = n, None if offload is None else offload / name
        self._mem: list[torch.Tensor | None] = [None] * n
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.dir is None:
            return self._mem[i]
        return torch.load(self.dir / f"{i}.pt", weights_only=True)

    def __setitem__(self, i: int, t: torch.Tensor) -> None:
        t = t.detach().to("cpu")
        if self.dir is None:
            self._mem[i] = t
        else:
            torch.save(t.clone(), self.dir / f"{i}.pt")


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _out(o):
    return o[0] if isinstance(o, tuple) else o


@dataclass
class _Job:
    """What every stage of a run needs: the ranks, the device, the method and its options."""

    dist: Dist
    dev: torch.device
    method: str
    fmt: str
    act: bool
    qep: float | None
    qep_layers: Mapping[str, float] | None
    qep_damp: float
    opts: dict
    n_calib: int

    def alpha(self, name: str, experts: bool) -> float:
        """QEP's α for layer ``name`` (0: off, and always for experts, whose X and X̂ rows do not match)."""
        if self.qep is None or experts:
            return 0.0
        from ..qep import alpha_for

        return alpha_for(name, float(self.qep), self.qep_layers)


@dataclass
class PipelineResult:
    out: Path
    layers: list[LayerReport]
    settings: dict
    seconds: float
    perplexity_fp: float | None
    perplexity: float | None
    peak_host_mb: float
    peak_device_mb: float | None
    rtn_fallback: list[str] = field(default_factory=list)
    world_size: int = 1
    files: list[Path] = field(default_factory=list)
    metrics: EvalMetrics | None = None  # the distribution metrics of the evaluation windows (None: --eval 0)

    def table(self) -> str:
        from ..model import QuantizeResult

        return QuantizeResult(None, self.layers, self.settings, self.seconds, 0).table()

    def mean_rel_err(self, fp: bool = False) -> float:
        vals = [r.rel_err_fp if fp else r.rel_err for r in self.layers if not math.isnan(r.rel_err_fp if fp else r.rel_err)]
        return sum(vals) / len(vals) if vals else float("nan")


def resident_mb() -> float:
    """Resident memory of this process now (Linux /proc; the peak where that is missing)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_host_mb()


def peak_host_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check(method, fmt, qep, act, n_calib, calib_len, n_eval, eval_len, shard_size) -> None:
    try:
        check_settings(method, fmt, qep, act)
    except ValueError as e:
        raise PipelineError(str(e)) from None
    if fmt in INT_FORMATS:
        raise PipelineError(f"fmt {fmt!r} has no serving checkpoint layout here; quantize_pretrained writes mxfp4 or nvfp4")
    for name, v, lo in (("n_calib", n_calib, 1), ("calib_len", calib_len, 2), ("n_eval", n_eval, 0),
                        ("eval_len", eval_len, 2), ("shard_size", shard_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise PipelineError(f"{name} must be an int >= {lo}, got {v!r}")


def quantize_pretrained(model: str | Path, out: str | Path, *, method: str = "gptq", fmt: str = "mxfp4",
                        qep: float | None = None, act: bool = False, qep_layers: Mapping[str, float] | None = None,
                        qep_damp: float = 0.01, damp: float = 0.01, act_order: bool = False,
                        hadamard_block: int | None = None, scale_search: str = "mse",
                        calib_text: str | Path | None = None, eval_text: str | Path | None = None,
                        calib_tokens: str | Path | None = None, n_calib: int = 16, calib_len: int = 512,
                        n_eval: int = 16, eval_len: int = 512, device: str | torch.device | None = None,
                        offload_dir: str | Path | None = None, resume: bool = False, shard_size: int = 5 * 10**9,
                        progress: Callable[[str], None] | None = None) -> PipelineResult:
    """Quantizes the causal LM at ``model`` (a Hugging Face folder or a .gguf file) into ``out``.

    ``method``/``fmt``/``qep``/``act`` and the GPTQ options are those of :func:`fp4ref.model.quantize_model`.
    Calibration: ``n_calib`` windows of ``calib_len`` tokens from ``calib_text`` (UTF-8, the model's tokenizer)
    or ``calib_tokens`` (.npy/.safetensors), default the embedded text; evaluation: ``n_eval`` windows of
    ``eval_len`` from ``eval_text`` (``n_eval=0``: none). ``device``: where blocks compute (the model stays on
    disk and the activations on the host, or in ``offload_dir``). Under torchrun the calibration windows are
    sharded over the ranks and the checkpoint is bit-identical to one process's. ``resume``: continue a killed
    run in ``out``. Writes HF-style safetensors shards of at most ``shard_size`` bytes, config.json with the
    compressed-tensors ``quantization_config``, the tokenizer's files and report.json.
    """
    t_start = time.perf_counter()
    _check(method, fmt, qep, act, n_calib, calib_len, n_eval, eval_len, shard_size)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda: no CUDA device is visible")
    say = progress if progress is not None else (lambda s: print(s, file=sys.stderr, flush=True))
    dist = Dist(dev)
    try:
        return _run(dist, model, out, dev, say, t_start, method=method, fmt=fmt, qep=qep, act=act,
                    qep_layers=qep_layers, qep_damp=qep_damp, damp=damp, act_order=act_order,
                    hadamard_block=hadamard_block, scale_search=scale_search, calib_text=calib_text,
                    eval_text=eval_text, calib_tokens=calib_tokens, n_calib=n_calib, calib_len=calib_len,
                    n_eval=n_eval, eval_len=eval_len, offload_dir=offload_dir, resume=resume, shard_size=shard_size)
    finally:
        dist.close()


def _run(dist: Dist, model_path, out, dev, say, t_start, *, method, fmt, qep, act, qep_layers, qep_damp, damp,
         act_order, hadamard_block, scale_search, calib_text, eval_text, calib_tokens, n_calib, calib_len, n_eval,
         eval_len, offload_dir, resume, shard_size) -> PipelineResult:
    from ..checkpoint import block_tensors, pipeline_config

    # Everything a user can get wrong is checked here, before any block is read.
    dist.check_windows(n_calib, "calibration")
    src = Source(model_path)
    skeleton = build_skeleton(src.config)
    lp, layers = find_layers(skeleton)
    keys = src.key_set()
    for b in range(len(layers)):
        unfuse_experts(layers[b], keys, f"{lp}.{b}")
    calib, evals, calib_desc = windows(tokenizer_fn=src.tokenizer, calib_text=calib_text, eval_text=eval_text,
                                       calib_tokens=calib_tokens, n_calib=n_calib, calib_len=calib_len,
                                       n_eval=n_eval, eval_len=eval_len)
    vocab = getattr(src.config, "vocab_size", None)
    for name, w in (("calibration", calib), ("evaluation", evals)):
        if w.numel() and (int(w.min()) < 0 or (vocab is not None and int(w.max()) >= vocab)):
            raise PipelineError(f"{name} token ids must lie in [0, vocab_size={vocab}), got [{int(w.min())}, "
                                f"{int(w.max())}]")
    settings = dict(method=method, fmt=fmt, qep=qep, qep_layers=dict(qep_layers or {}), act=act, damp=damp,
                    act_order=act_order, hadamard_block=hadamard_block, scale_search=scale_search,
                    qep_damp=qep_damp, gptq_dtype="float64", calibration=calib_desc, n_calib=n_calib,
                    calib_len=calib_len, fp4ref=__version__)
    fingerprint = dict(settings, model=src.fingerprint())
    # Rank 0 alone checks and creates the output folder (another rank would see rank 0's files); every rank
    # then raises its verdict, so none is left waiting.
    err, sink = None, None
    if dist.is_main:
        try:
            sink = Sink(out, fingerprint, resume=resume, writer=True)
        except PipelineError as e:
            err = str(e)
    err = dist.share(err, 0)
    if err is not None:
        raise PipelineError(err)
    if sink is None:
        sink = Sink(out, fingerprint, resume=resume, writer=False)
    offload = None
    if offload_dir is not None:
        offload = Path(offload_dir) / f"rank{dist.rank}"
        try:
            offload.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PipelineError(f"--offload-dir {offload_dir}: cannot create it ({e.strerror})") from None

    # The model without its blocks: embeddings, rotary tables, final norm and head, blocks replaced by probes.
    log: dict = {}
    shell = copy.deepcopy(skeleton)
    probes = nn.ModuleList([Probe(layers[b], b, log) for b in range(len(layers))])
    set_module(shell, lp, probes)
    head_state = _materialize_shell(shell, src, dev)
    final_norm = _final_norm(shell, probes)

    def embed(ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        log.clear()
        handle = final_norm.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(_Stop()))
        try:
            shell(input_ids=ids.unsqueeze(0).to(dev), use_cache=False)
        except _Stop:
            pass
        except PipelineError:
            raise
        except Exception as e:  # an architecture whose model code does not drive its blocks the usual way
            raise PipelineError(f"{src.config.model_type}: the model's forward around its blocks fails with the blocks "
                                f"stood in for ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                "this architecture is not supported") from None
        finally:
            handle.remove()
        return log["hidden"], dict(log["kwargs"])

    mine_c, mine_e = dist.shard(n_calib), dist.shard(len(evals))
    streams = {k: Stream(k, len(r), offload) for k, r in
               (("calib_q", mine_c), ("calib_f", mine_c), ("eval_q", mine_e), ("eval_f", mine_e))}
    kw = {}
    with torch.no_grad():
        for kind, ids, mine in (("calib", calib, mine_c), ("eval", evals, mine_e)):
            for j, w in enumerate(mine):
                h, kwargs = embed(ids[w])
                streams[f"{kind}_q"][j] = h
                streams[f"{kind}_f"][j] = h
                kw.setdefault(kind, kwargs)
            if not len(mine) and len(ids):
                kw[kind] = embed(ids[0])[1]

    opts = dict(damp=damp, act_order=act_order, hadamard_block=hadamard_block, scale_search=scale_search,
                gptq_dtype=torch.float64)
    job = _Job(dist, dev, method, fmt, act, qep, qep_layers, qep_damp, opts, n_calib)
    reports: list[LayerReport] = []
    fallback: list[str] = []
    rotations: dict = {}
    shapes: dict = {}
    act_amaxes: dict = {}
    ignore: list[str] = []
    block_seconds: list[float] = []
    resident: list[float] = []  # after each block, its memory handed back: flat when nothing accumulates
    n_blocks = len(layers)
    say(f"fp4ref: {src.path} ({src.config.model_type}, {n_blocks} blocks) -> {sink.out}; {method} {fmt}"
        f"{' W4A4' if act else ''}; rank {dist.rank}/{dist.world}; device {dev}") if dist.is_main else None
    for b in range(n_blocks):
        t_block = time.perf_counter()
        prefix = f"{lp}.{b}."
        fp_block = materialize(layers[b], src, prefix, dev)
        kw_c, kw_e = _to(kw["calib"][b], dev), (_to(kw["eval"][b], dev) if "eval" in kw else None)
        if resume and sink.has_block(b):
            tensors, info = sink.read_block(b)
            q_block = _load_block(fp_block, tensors, info, prefix, dev)
            reports += [LayerReport(**r) for r in info["layers"]]
        else:
            plan = plan_block(fp_block, streams["calib_q"][0].to(dev) if len(mine_c) else None, kw_c,
                              make_grid(fmt).group_size,
                              f"block {b} ({lp}.{b})")
            q_block = copy.deepcopy(fp_block)
            new_reports, new_fallback = [], []
            for stage in plan.stages:
                _stage(job, stage, plan.is_expert_stage(stage), fp_block, q_block, streams, kw_c, b, prefix,
                       new_reports, new_fallback)
            reports += new_reports
            tensors, info = block_tensors(q_block, src, prefix, plan)
            info.update(layers=[asdict(r) for r in new_reports], rtn_fallback=new_fallback)
            sink.write_block(b, tensors, info)
        fallback += info["rtn_fallback"]  # what config.json and the report need of every block, new or resumed
        rotations.update(info["rotations"])
        shapes.update(info["shapes"])
        act_amaxes.update(info["act_amax"])
        ignore += info["skipped"]
        with torch.no_grad():
            for kind, kwb in (("calib", kw_c), ("eval", kw_e)):
                for j in range(len(streams[f"{kind}_q"])):
                    streams[f"{kind}_q"][j] = _out(q_block(streams[f"{kind}_q"][j].to(dev), **kwb))
                    streams[f"{kind}_f"][j] = _out(fp_block(streams[f"{kind}_f"][j].to(dev), **kwb))
        del fp_block, q_block
        src.release()
        _trim()
        resident.append(resident_mb())
        dist.barrier()
        block_seconds.append(time.perf_counter() - t_block)
        if dist.is_main:
            done = b + 1
            eta = sum(block_seconds) / done * (n_blocks - done)
            dmem = f", device peak {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB" if dev.type == "cuda" else ""
            say(f"  block {done}/{n_blocks}: {block_seconds[-1]:.1f} s, elapsed {time.perf_counter() - t_start:.0f} s, "
                f"ETA {eta:.0f} s, host peak {peak_host_mb():.0f} MiB{dmem}")
        kill = os.environ.get("FP4REF_TEST_KILL_AFTER_BLOCK")
        if kill is not None and int(kill) == b and dist.is_main:
            os.kill(os.getpid(), 9)  # a crash with no clean-up, for the resume test

    # Evaluation: the model's own head on the last hidden states of both streams, window by window
    # (fp4ref.evaluation: perplexities, KL, top-1 agreement, ΔNLL), gathered in window order.
    metrics = None
    if len(evals):
        stats = []
        with torch.no_grad():
            for j, w in enumerate(mine_e):
                ids = evals[w].unsqueeze(0).to(dev)
                logits = {}
                for kind in ("f", "q"):
                    probes[-1].replace = streams[f"eval_{kind}"][j].to(dev)
                    logits[kind] = shell(input_ids=ids, use_cache=False).logits.float()
                stats.append(window_stats(logits["f"], logits["q"], ids))
            probes[-1].replace = None
        metrics = summarize(dist.gather(stats))
    ppl_fp, ppl_q = (None, None) if metrics is None else (metrics.perplexity_fp, metrics.perplexity)

    peak_dev = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    host_peaks = dist.gather([peak_host_mb()])
    seconds = time.perf_counter() - t_start
    report = dict(settings=settings, world_size=dist.world, seconds=seconds, block_seconds=block_seconds,
                  peak_host_mb_per_rank=host_peaks, resident_mb_after_block_per_rank=dist.gather([resident]),
                  peak_device_mb=peak_dev, perplexity_fp=ppl_fp, perplexity=ppl_q,
                  metrics=None if metrics is None else metrics.as_dict(), eval_windows=list(evals.shape), rtn_fallback=fallback, layers=[asdict(r) for r in reports])
    config = pipeline_config(src.raw_config, fmt=fmt, act=act, linears=shapes, rotations=rotations,
                             act_amax=act_amaxes, settings=settings, ignore=ignore)
    files = sink.finish(head_state, n_blocks, config, src.tokenizer_files(), report, shard_size)
    dist.barrier()
    return PipelineResult(sink.out, reports, settings, seconds, ppl_fp, ppl_q, max(host_peaks), peak_dev, fallback,
                          dist.world, files, metrics)


def _trim() -> None:
    """Hands freed heap back to the OS after a block (glibc keeps it otherwise, and the resident size would
    drift with the number of blocks by allocator noise alone)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _materialize_shell(shell: nn.Module, src: Source, dev) -> dict[str, torch.Tensor]:
    """Loads every tensor outside the blocks (in float32 to compute; returned as stored, for the checkpoint)
    and rebuilds modules whose buffers are computed (rotary tables) from the config."""
    keys = src.key_set()
    stored: dict[str, torch.Tensor] = {}
    tied = bool(getattr(shell.config, "tie_word_embeddings", False))
    for name, m in list(shell.named_modules()):
        if any(not p.is_meta for p in m.parameters(recurse=False)):
            continue
        nonpersistent = [n for n, _ in m.named_buffers(recurse=False) if n in m._non_persistent_buffers_set]
        if nonpersistent:
            try:
                new = type(m)(config=shell.config, device=dev) if "device" in type(m).__init__.__code__.co_varnames \
                    else type(m)(config=shell.config)
            except Exception as e:  # an unknown module type that cannot be rebuilt from the config alone
                raise PipelineError(f"module {name} ({type(m).__name__}) computes buffers {nonpersistent} and cannot "
                                    f"be rebuilt from the config ({e})") from None
            set_module(shell, name, new.to(dev))
            continue
        for pname, p in list(m.named_parameters(recurse=False)) + [(n, b) for n, b in m.named_buffers(recurse=False)]:
            full = f"{name}.{pname}" if name else pname
            if full not in keys:
                if tied and full == "lm_head.weight":
                    continue
                raise PipelineError(f"the checkpoint lacks {full!r} (outside the decoder blocks)")
            t = src.get(full)
            stored[full] = t
            real = nn.Parameter(t.to(device=dev, dtype=torch.float32 if t.is_floating_point() else t.dtype),
                                requires_grad=False)
            if pname in m._parameters:
                m._parameters[pname] = real
            else:
                m._buffers[pname] = real.data
    if tied:
        shell.tie_weights()
    leftover = [n for n, p in shell.named_parameters() if p.is_meta]
    if leftover:
        raise PipelineError(f"parameters {leftover[:5]} are neither in the checkpoint nor tied")
    return stored


def _final_norm(shell: nn.Module, probes: nn.ModuleList) -> nn.Module:
    """The module the model runs right after its blocks (the final norm): the first child with parameters
    registered after the blocks in the module that holds them."""
    base = next(m for m in shell.modules() if any(c is probes for c in m.children()))
    children = list(base.children())
    after = [c for c in children[children.index(probes) + 1:] if next(c.parameters(), None) is not None]
    if not after:
        raise PipelineError("cannot find the module that follows the decoder blocks (the final norm)")
    return after[0]


def _stage(job: _Job, stage: list[list[str]], experts: bool, fp_block: nn.Module, q_block: nn.Module, streams: dict,
           kw: dict, b: int, prefix: str, reports: list, fallback: list) -> None:
    """Quantizes the groups of one stage in ``q_block`` (see the module docstring); appends to ``reports`` and
    ``fallback`` (experts without tokens)."""
    dist, dev, method, fmt, act = job.dist, job.dev, job.method, job.fmt, job.act
    qep_damp, opts, n_calib = job.qep_damp, job.opts, job.n_calib
    names = [n for g in stage for n in g]
    alphas = {n: job.alpha(prefix + n, experts) for n in names}
    firsts = [g[0] for g in stage]
    x_hat = _collect(q_block, streams["calib_q"], kw, firsts, dev, stop=not experts)
    # Experts route X and X̂ differently (no matching rows): their X is neither needed for QEP nor the report.
    x_full = ({g: [None] * len(x_hat[g]) for g in firsts} if experts else
              _collect(fp_block, streams["calib_f"], kw, firsts, dev, stop=True))
    mods = dict(q_block.named_modules())
    fp_mods = dict(fp_block.named_modules())
    counter = 0
    for group in stage:
        g0 = group[0]
        d = mods[g0].in_features
        with_qep = any(alphas[n] > 0 for n in group)
        n_tok = dist.sum_int(sum(0 if x is None else x.reshape(-1, d).shape[0] for x in x_hat[g0]))

        def leaf(i, g0=g0, d=d, with_qep=with_qep):
            j = i - dist.shard(n_calib).start
            xh = x_hat[g0][j]
            if xh is None:
                z = torch.zeros(d, d, dtype=torch.float64, device=dev)
                return [z, z.clone()] if with_qep else [z]
            xh = xh.to(dev).reshape(-1, d).double()
            out = [xh.T @ xh]
            if with_qep:
                xf = x_full[g0][j].to(dev).reshape(-1, d).double()
                out.append((xf - xh).T @ xh)
            return out

        sums = dist.tree_sum(leaf, n_calib) if n_tok else None
        H = sums[0] * (2.0 / n_tok) if n_tok else None
        H_delta = sums[1] * (2.0 / n_tok) if (n_tok and with_qep) else None
        owners = {n: (counter + k) % dist.world for k, n in enumerate(group)}
        counter += len(group)
        targets, amax = {}, {}
        for n in group:
            if owners[n] != dist.rank:
                continue
            W = mods[n].weight.detach()
            if alphas[n] > 0:
                from ..qep import qep_target

                targets[n] = qep_target(W.double(), H, H_delta, alpha=alphas[n], damp=qep_damp).to(W.dtype)
            else:
                targets[n] = W
            amax[n] = _amax_for(targets[n], method, fmt, opts)
        joint = dist.max(max(amax.values(), default=0.0)) if fmt == "nvfp4" else None
        for n in group:
            if owners[n] == dist.rank:
                t0 = time.perf_counter()
                lin = mods[n]
                if H is None:
                    new, loss, damp_used = _quantize_layer(lin, prefix + n, torch.zeros(d, d, dtype=torch.float64),
                                                           targets[n], "rtn", fmt, act, dict(opts, global_amax=joint))
                    loss = float("nan")
                else:
                    new, loss, damp_used = _quantize_layer(lin, prefix + n, H, targets[n], method, fmt, act,
                                                           dict(opts, global_amax=joint))
                payload = (new.cpu(), loss, damp_used, time.perf_counter() - t0)
            else:
                payload = None
            new, loss, damp_used, secs = dist.share(payload, owners[n])
            new = new.to(dev)
            if act and fmt == "nvfp4":
                local = max((float(new.rotate_input(x.to(dev)).abs().amax()) for x in x_hat[g0] if x is not None),
                            default=0.0)
                new.set_act_global_amax(dist.max(local))
            # Report terms per window, summed in window order so they too do not depend on the world size.
            terms = []
            for xh, xf in zip(x_hat[g0], x_full[g0]):
                if xh is None:
                    terms.append((0.0, 0.0, 0.0, 0.0))
                    continue
                xh = xh.to(dev)
                y_ref, y_q = mods[n](xh).double(), new(xh).double()
                t = [float((y_ref - y_q).square().sum()), float(y_ref.square().sum())]
                if experts or xf is None:
                    t += [float("nan"), float("nan")]
                else:
                    y_fp = fp_mods[n](xf.to(dev)).double()
                    t += [float((y_fp - y_q).square().sum()), float(y_fp.square().sum())]
                terms.append(tuple(t))
            terms = dist.gather(terms)
            e, den, e_fp, den_fp = (math.fsum(t[k] for t in terms) for k in range(4))
            full = prefix + n
            if H is None:
                fallback.append(full)
            set_module(q_block, n, new)
            reports.append(LayerReport(b, n, (new.out_features, new.in_features), alphas[n], loss,
                                       _rel(torch.tensor(e), torch.tensor(den)),
                                       _rel(torch.tensor(e_fp), torch.tensor(den_fp)), damp_used, secs))
        mods = dict(q_block.named_modules())


def _amax_for(W: torch.Tensor, method: str, fmt: str, opts: dict) -> float:
    """max |W| of the matrix the grid will see (rotated, for MR-GPTQ): a fused group's joint NVFP4 amax."""
    if method == "mr-gptq":
        from ..hadamard import block_hadamard

        block = opts["hadamard_block"] or make_grid(fmt).group_size
        W = block_hadamard(W, block, axis=-1)
    Wf = W.float()
    return float(Wf[torch.isfinite(Wf)].abs().max()) if Wf.numel() else 0.0


@torch.no_grad()
def _collect(block: nn.Module, stream: Stream, kw: dict, firsts: list[str], dev, *, stop: bool
             ) -> dict[str, list[torch.Tensor | None]]:
    """{group: [its input on window j (host), or None when the linear was not called]} for this rank's windows."""
    mods = dict(block.named_modules())
    got: dict[str, list] = {n: [None] * len(stream) for n in firsts}
    seen: set[str] = set()
    cur = [0]
    handles = []
    for n in firsts:
        def pre(_m, args, n=n):
            got[n][cur[0]] = args[0].detach().to("cpu")
            seen.add(n)
        handles.append(mods[n].register_forward_pre_hook(pre))
        if stop:
            def post(_m, _a, _o, n=n):
                if seen >= set(firsts):
                    raise _Stop
            handles.append(mods[n].register_forward_hook(post))
    try:
        for j in range(len(stream)):
            cur[0] = j
            seen.clear()
            try:
                block(stream[j].to(dev), **kw)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return got


def _load_block(fp_block: nn.Module, tensors: dict, info: dict, prefix: str, dev) -> nn.Module:
    """The quantized block of a finished block file (for --resume): its FP4Linears rebuilt from the stored
    codes, scales, rotations and activation amaxes, so the resumed streams get the same bits."""
    from ..checkpoint import quant_linear_from

    q = copy.deepcopy(fp_block)
    for n in info["linears"]:
        full = prefix + n
        set_module(q, n, quant_linear_from(tensors, full, info, dev))
    return q


__all__ = ["quantize_pretrained", "PipelineResult", "peak_host_mb"]
