"""`fp4ref quantize`: quantize the embedded model (or compare methods) and report perplexity (SPEC §15)."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .cli_args import ArgParser, alphas, count, positive, size
from .grids import GRID_FORMATS, INT_FORMATS

# torch's pytree registry warns on import of some peers (torchao) about Enum constants: noise, not the user's
# concern, and it would break the CLI's one-line errors.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

COMPARE = (("rtn", None), ("rtn", "qep"), ("gptq", None), ("gptq", "qep"), ("mr-gptq", None), ("mr-gptq", "qep"))


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="fp4ref quantize", description=(
        "Quantize a causal LM block by block and report perplexity before and after: by default the embedded "
        "SmolLM2-135M-Instruct (weights: dequantized GGUF Q4_1, which flatters int4) on the Python docs; with "
        "--model, your own Hugging Face folder or .gguf file, streamed from disk (docs/model.md)."))
    p.add_argument("--model", type=Path, default=None, help="a local Hugging Face causal-LM folder (config.json, "
                   "*.safetensors, tokenizer) or a .gguf file; needs --out")
    p.add_argument("--calib-text", type=Path, default=None, help="calibration text (UTF-8), tokenized by the model")
    p.add_argument("--eval-text", type=Path, default=None, help="evaluation text (UTF-8), windows of 512 tokens")
    p.add_argument("--calib-tokens", type=Path, default=None, help="calibration token ids (.npy or .safetensors)")
    p.add_argument("--offload-dir", type=Path, default=None, help="keep calibration activations here on disk")
    p.add_argument("--resume", action="store_true", help="continue a killed --model run in its --out folder")
    p.add_argument("--shard-size", type=size, default=5 * 10**9, help="max bytes per output shard (default 5GB)")
    p.add_argument("--format", dest="fmt", choices=GRID_FORMATS, default="mxfp4")
    p.add_argument("--group-size", type=positive, default=None,
                   help="int formats: columns per scale group (default 32); the FP4 formats fix their blocks")
    p.add_argument("--asym", action="store_true", help="int formats: asymmetric min-max grid (as gptq.py and "
                                                      "the original QEP code); default symmetric")
    p.add_argument("--method", choices=("rtn", "gptq", "mr-gptq"), default="gptq")
    p.add_argument("--qep", type=float, default=None, metavar="ALPHA",
                   help="QEP propagation strength in [0, 1] (the paper uses 0.5); default off")
    p.add_argument("--qep-damp", type=float, default=0.01,
                   help="QEP correction damping, fraction of mean diag (original code: 1.0)")
    p.add_argument("--qep-skip-down", action="store_true",
                   help="leave mlp.down_proj uncorrected, as the original QEP code does")
    p.add_argument("--act", action="store_true", help="W4A4: also quantize activations (RTN, same format)")
    p.add_argument("--compare", action="store_true",
                   help="run RTN, GPTQ, MR-GPTQ, each without and with QEP, and print one table")
    p.add_argument("--sweep-qep", type=alphas, default=None, metavar="A,B,...",
                   help="with --compare: one row per QEP alpha for --method instead of the method table")
    p.add_argument("--efficiency", action="store_true",
                   help="embedded model: per row also checkpoint bytes, peak memory to load and run it (a fresh "
                        "process) and greedy decoding tokens/s at batch 1 and 16 through FP4Linear, against float")
    p.add_argument("--seeds", type=positive, default=None, metavar="K",
                   help="embedded model: repeat each row with K disjoint calibration draws (seeded) and report "
                        "mean ± sd; default one draw, the last windows of the text")
    p.add_argument("--out", type=Path, default=None, help="save the quantized checkpoint (or, with --compare, "
                                                          "results.json and results.md) here")
    p.add_argument("--quick", action="store_true",
                   help="small run: 4x256 calibration tokens, 4x512 eval, first 2 blocks only")
    p.add_argument("--calib", type=count, default=None, help="calibration windows (default 16, quick 4)")
    p.add_argument("--calib-len", type=count, default=None, help="calibration window length (default 512, quick 256)")
    p.add_argument("--eval", dest="n_eval", type=count, default=None,
                   help="eval windows of 512 (default 16, quick 4; 0 skips evaluation)")
    p.add_argument("--blocks", type=count, default=None, help="quantize only the first N blocks (default all)")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping, fraction of mean diag")
    p.add_argument("--act-order", action="store_true", help="GPTQ: static activation order")
    p.add_argument("--hadamard-block", type=int, default=None, help="MR-GPTQ rotation block (default: group)")
    p.add_argument("--scale-search", choices=("mse", "absmax"), default="mse", help="MR-GPTQ scale fitting")
    p.add_argument("--threads", type=count, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--table", action="store_true", help="print the per-layer table (single runs print it "
                                                       "always; with --compare only when asked)")
    p.add_argument("--quiet", action="store_true", help="no per-block progress")
    return p


def _machine(device: torch.device) -> str:
    from .efficiency import cpu_name

    s = f"{cpu_name()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        s += f", GPU {torch.cuda.get_device_name(device)}"
    return s


def _load(device):
    from .models import load_model

    return load_model(device=device)


def _run_one(args, calib, ref, device, method, qep, progress):
    """Quantize a fresh copy of the embedded model with one calibration draw; (result, metrics or None, seconds)."""
    from .model import quantize_model
    from .qep import ORIGINAL_EXCLUDE

    model, _ = _load(device)
    n_blocks = len(model.model.layers)
    blocks = range(min(args.blocks, n_blocks)) if args.blocks is not None else None
    grid = dict(group_size=args.group_size, symmetric=not args.asym) if args.fmt in INT_FORMATS else {}
    t0 = time.perf_counter()
    res = quantize_model(model, calib, method=method, fmt=args.fmt, qep=qep, act=args.act,
                         qep_layers=ORIGINAL_EXCLUDE if args.qep_skip_down else None, qep_damp=args.qep_damp,
                         damp=args.damp, act_order=args.act_order, hadamard_block=args.hadamard_block,
                         scale_search=args.scale_search, blocks=blocks, progress=progress, **grid)
    t_quant = time.perf_counter() - t0
    return res, (None if ref is None else ref.evaluate(model)), t_quant


def _label(method: str, qep) -> str:
    return {"rtn": "RTN", "gptq": "GPTQ", "mr-gptq": "MR-GPTQ"}[method] + ("" if qep is None else f" + QEP({qep:g})")


def cli_quantize(argv: list[str]) -> int:
    """``fp4ref quantize``: with --model the on-disk pipeline, else the embedded model (one method or --compare)."""
    args = _parser().parse_args(argv)
    if args.model is not None:
        return _cli_pretrained(args)
    why = _embedded_usage_error(args)
    if why:
        print(f"fp4ref quantize: {why}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = _EmbeddedRun(args, device)
    if run.error:
        print(f"fp4ref quantize: {run.error}", file=sys.stderr)
        return 2
    return run.compare() if args.compare else run.single()


def _embedded_usage_error(args) -> str | None:
    """Why the options cannot run on the embedded model (one line), or None."""
    for opt in ("calib_text", "eval_text", "calib_tokens", "offload_dir"):
        if getattr(args, opt) is not None:
            return f"--{opt.replace('_', '-')} needs --model (the embedded model uses its own text)"
    if args.resume:
        return "--resume needs --model"
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        return f"--out {args.out}: exists and is not an empty folder; choose a new one"
    if args.qep is not None and not 0.0 <= args.qep <= 1.0:
        return f"--qep must be in [0, 1], got {args.qep}"
    if args.act and args.fmt in INT_FORMATS:
        return "--act (W4A4) needs --format mxfp4 or nvfp4"
    if args.method == "mr-gptq" and args.fmt in INT_FORMATS and (not args.compare or args.sweep_qep):
        return "--method mr-gptq needs --format mxfp4 or nvfp4"
    if (args.group_size is not None or args.asym) and args.fmt not in INT_FORMATS:
        return f"--group-size and --asym are for the int formats {', '.join(INT_FORMATS)}; {args.fmt} fixes its blocks"
    if args.sweep_qep is not None and not args.compare:
        return "--sweep-qep needs --compare (it chooses the compared rows)"
    if args.n_eval == 0:
        return "--eval 0 needs --model (the embedded run always evaluates; use --eval N with N >= 1)"
    if args.seeds is not None and args.seeds > 1 and args.out is not None and not args.compare:
        return "--out saves one checkpoint; with --seeds > 1 use --compare (results only) or --seeds 1"
    from . import models

    missing = models.missing_requirements()
    if missing:
        return f"the embedded model needs {', '.join(missing)}: {models.INSTALL_HINT}"
    return None


class _EmbeddedRun:
    """The embedded model's text windows, the float model's logits on the evaluation windows, then one method
    (``single``) or the comparison table (``compare``), each repeated over the calibration draws."""

    def __init__(self, args, device: torch.device):
        from . import models
        from .evaluation import FloatReference, calibration_draws

        self.args, self.device, self.error = args, device, None
        quick = args.quick
        self.n_calib = args.calib or (4 if quick else 16)
        self.calib_len = args.calib_len or (256 if quick else 512)
        self.n_eval = args.n_eval if args.n_eval is not None else (4 if quick else 16)
        if quick and args.blocks is None:
            args.blocks = 2
        self.progress = (lambda s: None) if args.quiet else (lambda s: print("  " + s, file=sys.stderr, flush=True))
        self.t_all = time.perf_counter()
        model, self.tok = _load(device)
        tokens = models.text_tokens(self.tok)
        eval_end = self.n_eval * 512
        if args.seeds is None:
            if eval_end + self.n_calib * self.calib_len > tokens.numel():
                self.error = "calibration and evaluation slices would overlap"
                return
            self.draws = [models.split_windows(tokens, seq_len=self.calib_len, n_calib=self.n_calib, n_eval=0)[0]]
            where = "end of text"
        else:
            try:
                self.draws = calibration_draws(tokens, start=eval_end, n_calib=self.n_calib,
                                               calib_len=self.calib_len, seeds=args.seeds)
            except ValueError as e:
                self.error = f"--seeds {args.seeds} --calib {self.n_calib} --calib-len {self.calib_len}: " + \
                    str(e).replace("seeds=", "", 1)
                return
            where = f"{args.seeds} disjoint seeded draws after the evaluation slice"
        _, self.evals = models.split_windows(tokens, seq_len=512, n_calib=0, n_eval=self.n_eval)
        print(f"model: {models.MODEL_NAME}, {len(model.model.layers)} blocks")
        print(f"machine: {_machine(device)}; device {device}")
        print(f"text: pydoc_data.topics, {tokens.numel()} tokens; calibration {self.n_calib}x{self.calib_len} = "
              f"{self.n_calib * self.calib_len} tokens ({where}); evaluation {self.n_eval}x512 = "
              f"{self.n_eval * 512} tokens (start)")
        t0 = time.perf_counter()
        self.ref = FloatReference(model, self.evals)
        self.ppl_fp = self.ref.perplexity
        print(f"float32 perplexity: {self.ppl_fp:.4f} ({time.perf_counter() - t0:.1f} s)")
        self.blocks_note = "" if args.blocks is None else f" (first {args.blocks} blocks only; the rest stay float32)"
        self.mode = "W4A4" if args.act else "W4A16"
        grid = ""
        if args.fmt in INT_FORMATS:
            grid = f" g{args.group_size or 32}{' asym' if args.asym else ''}"
        self.fmt_label = args.fmt + grid

    def _runs(self, method, qep, keep_first: bool = False) -> list[dict]:
        """One row's runs, one per calibration draw: dict(res, metrics, seconds). RTN without QEP or W4A4 does
        not read the calibration data (its weights are a function of W alone), so it runs once and that run
        stands for every draw: its spread is zero by construction, not by measurement. Only the first draw's
        model is kept, and only with ``keep_first`` (to save it)."""
        out = []
        draws = self.draws[:1] if method == "rtn" and qep is None and not self.args.act else self.draws
        for k, calib in enumerate(draws):
            if len(draws) > 1:
                print(f"  seed {k}", file=sys.stderr, flush=True)
            res, metrics, t = _run_one(self.args, calib, self.ref, self.device, method, qep, self.progress)
            if k == 0:
                eff = efficiency_row(res.model, self.args, self.tok)
            if not (keep_first and k == 0):
                res.model = None  # only the numbers stay: a row of K draws must not hold K models
                gc.collect()
            out.append(dict(res=res, metrics=metrics, seconds=t, efficiency=eff))
        return out * (len(self.draws) // len(draws))

    def single(self) -> int:
        a = self.args
        label = _label(a.method, a.qep)
        print(f"quantizing: {label}, {self.fmt_label}, {self.mode}{self.blocks_note}")
        runs = self._runs(a.method, a.qep, keep_first=a.out is not None)
        for k, r in enumerate(runs):
            res, m = r["res"], r["metrics"]
            print(res.table())
            seed = f" [seed {k}]" if a.seeds is not None else ""
            print(f"{label} {self.fmt_label} {self.mode}{seed}: perplexity {self.ppl_fp:.4f} -> {m.perplexity:.4f}; "
                  f"KL mean {m.kl_mean:.4f} p99 {m.kl_p99:.4f}; top-1 agreement {m.top1:.4f}; "
                  f"ΔNLL {m.dnll_mean:+.4f} ± {m.dnll_se:.4f} (SE over windows); "
                  f"mean relative layer error {res.mean_rel_err():.5f} (vs float32 model {res.mean_rel_err(True):.5f}); "
                  f"quantization {r['seconds']:.1f} s")
        if a.efficiency:
            print(efficiency_table([dict(config="float32", efficiency=efficiency_row(None, a, self.tok)),
                                    _row(label, runs)], a))
        if len(runs) > 1:
            print(compare_table([_row(label, runs)], f"{self.fmt_label} {self.mode}{self.blocks_note}, "
                                                     f"{len(runs)} calibration draws (mean ± sd)"))
        print(f"total {time.perf_counter() - self.t_all:.1f} s")
        if a.out is not None:
            from .checkpoint import save_checkpoint

            res, m = runs[0]["res"], runs[0]["metrics"]
            meta = dict(res.settings, perplexity_fp32=self.ppl_fp, perplexity=m.perplexity,
                        eval_tokens=self.n_eval * 512)
            save_checkpoint(res.model, a.out, tokenizer=self.tok, metadata=meta)
            (a.out / "report.json").write_text(json.dumps(
                dict(settings=res.settings, perplexity_fp32=self.ppl_fp, perplexity=m.perplexity,
                     metrics=m.as_dict(), layers=res.as_dicts()), indent=1, default=str))
            print(f"saved checkpoint to {a.out}")
        return 0

    def _configs(self) -> list[tuple[str, float | None]]:
        a = self.args
        if a.sweep_qep is not None:
            return [(a.method, alpha) for alpha in a.sweep_qep]
        alpha = 0.5 if a.qep is None else a.qep
        return [(m, None if q is None else alpha) for m, q in COMPARE if not (m == "mr-gptq" and a.fmt in INT_FORMATS)]

    def compare(self) -> int:
        a = self.args
        rows = [dict(config="float32", perplexity=[self.ppl_fp], runs=[],
                     efficiency=efficiency_row(None, a, self.tok))]
        by_config = {}
        for method, alpha in self._configs():
            label = _label(method, alpha)
            print(f"running {label} ...", file=sys.stderr, flush=True)
            runs = self._runs(method, alpha)
            if a.table:
                for r in runs:
                    print(r["res"].table())
            rows.append(_row(label, runs))
            by_config[(method, alpha)] = [r["metrics"] for r in runs]
            print(f"  {label}: perplexity {', '.join(f'{p:.4f}' for p in rows[-1]['perplexity'])}, "
                  f"{sum(r['seconds'] for r in {id(r): r for r in runs}.values()):.1f} s", file=sys.stderr, flush=True)
        title = f"{self.fmt_label} {self.mode}{self.blocks_note}" + \
            (f", {len(self.draws)} calibration draws (mean ± sd)" if len(self.draws) > 1 else "")
        table = compare_table(rows, title) + "\n\n" + efficiency_table(rows, a)
        calls = verdict_lines(by_config)
        print(table)
        if calls:
            print("\n" + "\n".join(calls))
        print(f"total {time.perf_counter() - self.t_all:.1f} s")
        if a.out is not None:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "results.md").write_text(table + ("\n\n" + "\n".join(calls) if calls else "") + "\n")
            (a.out / "results.json").write_text(json.dumps(dict(
                format=self.fmt_label, mode=self.mode, machine=_machine(self.device), seeds=len(self.draws),
                calibration_tokens=self.n_calib * self.calib_len, eval_tokens=self.n_eval * 512,
                rows=[{k: v for k, v in r.items() if k != "runs"} | dict(runs=[_run_dict(x) for x in r["runs"]])
                      for r in rows], verdicts=calls), indent=1))
        return 0


def _run_dict(run: dict) -> dict:
    return dict(metrics=run["metrics"].as_dict(), rel_err=run["res"].mean_rel_err(),
                rel_err_fp=run["res"].mean_rel_err(True), seconds=run["seconds"])


def _row(label: str, runs: list[dict]) -> dict:
    """A table row: the label, every draw's perplexity, the runs, and the first draw's efficiency numbers."""
    return dict(config=label, perplexity=[r["metrics"].perplexity for r in runs], runs=runs,
                efficiency=runs[0]["efficiency"])


# Decoding-speed settings of --efficiency: a fixed random prompt, greedy, KV cache (fp4ref.efficiency).
DECODE = dict(prompt_len=32, new_tokens=16, repeats=3, seed=0)
DECODE_BATCHES = (1, 16)


def efficiency_row(model, args, tokenizer) -> dict:
    """Bits per weight of the quantized linears (scales included) for every row; with ``--efficiency`` also
    checkpoint bytes, peak memory of a fresh process that loads and runs the checkpoint, and decode tokens/s
    (``compute="exact"``, as deployed). ``model=None``: the float model. The int formats have no checkpoint
    layout: their bits per weight are nominal (b + 16/g for a float16 scale per group, + b/g for asymmetric
    zero points, as gptq.py packs them) and the rest is not measured."""
    from . import efficiency

    if model is not None and args.fmt in INT_FORMATS:
        g, b = args.group_size or 32, int(args.fmt[3:])
        return dict(bits_per_weight=b + 16 / g + (b / g if args.asym else 0.0), nominal=True)
    fp = efficiency.weight_footprint(model) if model is not None else None
    out = dict(bits_per_weight=32.0 if fp is None else fp["bits_per_weight"], nominal=False)
    if not args.efficiency:
        return out
    import tempfile

    from . import models

    with tempfile.TemporaryDirectory(prefix="fp4ref-eff-") as tmp:
        if model is None:
            src, m = "embedded", _load(torch.device("cpu"))[0]
            out["checkpoint_bytes"] = efficiency.checkpoint_bytes(models.float_checkpoint_dir())
        else:
            from .checkpoint import save_checkpoint
            from .nn import FP4Linear

            save_checkpoint(model, Path(tmp) / "ckpt", tokenizer=tokenizer)
            src, m = Path(tmp) / "ckpt", model
            out["checkpoint_bytes"] = efficiency.checkpoint_bytes(src)
            for mod in m.modules():
                if isinstance(mod, FP4Linear):
                    mod.compute = "exact"
        mem = efficiency.peak_memory_mb(src, threads=args.threads)
        out["peak_load_mb"], out["peak_run_mb"] = mem["load_peak_mb"], mem["run_peak_mb"]
        for b in DECODE_BATCHES:
            out[f"tokens_per_s_b{b}"] = efficiency.decode_speed(m, batch=b, threads=args.threads, **DECODE)["tokens_per_s"]
        if model is not None:
            for mod in m.modules():
                if isinstance(mod, FP4Linear):
                    mod.compute = "dequantized"
    return out


def efficiency_table(rows: list[dict], args) -> str:
    """Bits per weight per row; with ``--efficiency`` also bytes, peak memory and decode speed vs float."""
    head, rule = "| config | bits/weight (linears) |", "| --- | ---: |"
    if args.efficiency:
        head += " checkpoint bytes | peak MiB load / run |" + "".join(f" tokens/s b{b} |" for b in DECODE_BATCHES) \
            + "".join(f" × float b{b} |" for b in DECODE_BATCHES)
        rule += " ---: | ---: |" + " ---: |" * (2 * len(DECODE_BATCHES))
    lines = [head, rule]
    base = rows[0]["efficiency"]
    for r in rows:
        e = r["efficiency"]
        line = f"| {r['config']} | {e['bits_per_weight']:.4f}{' (nominal)' if e['nominal'] else ''} |"
        if args.efficiency and "checkpoint_bytes" in e:
            tps = [e[f"tokens_per_s_b{b}"] for b in DECODE_BATCHES]
            line += f" {e['checkpoint_bytes']:,} | {e['peak_load_mb']:.0f} / {e['peak_run_mb']:.0f} |" + \
                "".join(f" {v:.2f} |" for v in tps) + \
                "".join(f" {v / base[f'tokens_per_s_b{b}']:.3f} |" for v, b in zip(tps, DECODE_BATCHES))
        elif args.efficiency:
            line += " n/a |" * (2 + 2 * len(DECODE_BATCHES))
        lines.append(line)
    return "\n".join(lines)


# The pairs whose order the papers claim: (A, B) reads "is A better than B?".
def verdict_lines(by_config: dict) -> list[str]:
    """One line per claimed pair present in ``by_config`` ({(method, alpha): [EvalMetrics per draw]}), deciding
    on mean ΔNLL with ``fp4ref.evaluation.verdict``."""
    from .evaluation import verdict

    lines = []
    keys = list(by_config)
    for (m, q) in keys:
        pairs = []
        if q is not None and (m, None) in by_config:
            pairs.append(((m, q), (m, None)))
        if m == "gptq" and ("rtn", q) in by_config:
            pairs.append(((m, q), ("rtn", q)))
        if m == "mr-gptq" and ("gptq", q) in by_config:
            pairs.append(((m, q), ("gptq", q)))
        for x, y in pairs:
            lines.append(f"- {_label(*x)} vs {_label(*y)}: {verdict(by_config[x], by_config[y])}")
    return lines


def _cli_pretrained(args) -> int:
    """``fp4ref quantize --model PATH --out DIR``: the streaming pipeline (fp4ref.pipeline), one line and exit 2
    for a user's mistake."""
    from .pipeline import quantize_pretrained
    from .pipeline.dist import world_from_env
    from .pipeline.errors import PipelineError
    from .qep import ORIGINAL_EXCLUDE

    if args.out is None:
        print("fp4ref quantize: --model needs --out DIR (a new folder, or the folder of a run to --resume)",
              file=sys.stderr)
        return 2
    embedded_only = [o for o, v in (("--compare", args.compare), ("--blocks", args.blocks is not None),
                                     ("--quick", args.quick), ("--seeds", args.seeds is not None),
                                     ("--sweep-qep", args.sweep_qep is not None),
                                     ("--group-size", args.group_size is not None), ("--asym", args.asym),
                                     ("--efficiency", args.efficiency)) if v]
    if embedded_only:
        print(f"fp4ref quantize: {', '.join(embedded_only)}: for the embedded model, not --model", file=sys.stderr)
        return 2
    if args.calib_text is not None and args.calib_tokens is not None:
        print("fp4ref quantize: give --calib-text or --calib-tokens, not both", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    main = int(__import__("os").environ.get("RANK", "0")) == 0
    progress = (lambda s: None) if (args.quiet or not main) else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        res = quantize_pretrained(
            args.model, args.out, method=args.method, fmt=args.fmt, qep=args.qep, act=args.act,
            qep_layers=ORIGINAL_EXCLUDE if args.qep_skip_down else None, qep_damp=args.qep_damp, damp=args.damp,
            act_order=args.act_order, hadamard_block=args.hadamard_block, scale_search=args.scale_search,
            calib_text=args.calib_text, eval_text=args.eval_text, calib_tokens=args.calib_tokens,
            n_calib=args.calib or 16, calib_len=args.calib_len or 512,
            n_eval=args.n_eval if args.n_eval is not None else (16 if args.eval_text is not None or
                                                                 (args.calib_text is None and args.calib_tokens is None) else 0),
            device=args.device, offload_dir=args.offload_dir, resume=args.resume, shard_size=args.shard_size,
            progress=progress)
    except PipelineError as e:
        rank = "" if world_from_env() == 1 else f" [rank {__import__('os').environ.get('RANK', '0')}]"
        print(f"fp4ref quantize{rank}: {e}", file=sys.stderr)
        return 2
    if main:
        if not args.quiet:
            print(res.table())
        m = res.metrics
        ppl = ("" if m is None else
               f"perplexity {m.perplexity_fp:.4f} -> {m.perplexity:.4f}; KL mean {m.kl_mean:.4f} p99 {m.kl_p99:.4f}; "
               f"top-1 agreement {m.top1:.4f}; ΔNLL {m.dnll_mean:+.4f} ± {m.dnll_se:.4f} (SE over windows); ")
        dmem = "" if res.peak_device_mb is None else f", device {res.peak_device_mb:.0f} MiB"
        print(f"{_label(args.method, args.qep)} {args.fmt} {'W4A4' if args.act else 'W4A16'}: {ppl}"
              f"mean relative layer error {res.mean_rel_err():.5f}; {res.seconds:.1f} s on {world_from_env()} "
              f"process(es); peak memory: host {res.peak_host_mb:.0f} MiB per rank{dmem}")
        if res.rtn_fallback:
            print(f"experts without calibration tokens (RTN): {', '.join(res.rtn_fallback)}")
        print(f"saved checkpoint to {args.out}")
    return 0


def _cell(values: list[float], fmt: str) -> str:
    from .evaluation import mean_sd

    if len(values) == 1:
        return format(values[0], fmt)
    m, sd = mean_sd(values)
    return f"{m:{fmt}} ± {sd:{fmt}}"


def compare_table(rows: list[dict], title: str) -> str:
    """A markdown table of compare rows: perplexity, the distribution metrics against the float model
    (fp4ref.evaluation), the mean relative layer errors and the quantization time; each cell is one draw's
    value or mean ± sd over the draws. ΔNLL's "(SE …)" is the mean over draws of its SE over windows."""
    lines = [f"**{title}**", "",
             "| config | perplexity | ΔNLL (SE) | KL mean | KL p99 | top-1 | mean rel. layer error | "
             "mean rel. error vs float32 | quantize time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        runs = r["runs"]
        if not runs:
            lines.append(f"| {r['config']} | {_cell(r['perplexity'], '.3f')} | 0 | 0 | 0 | 1 | 0 | 0 | 0 |")
            continue
        ms = [x["metrics"] for x in runs]
        se = sum(m.dnll_se for m in ms) / len(ms)
        lines.append(
            f"| {r['config']} | {_cell(r['perplexity'], '.3f')} | {_cell([m.dnll_mean for m in ms], '.4f')} "
            f"({se:.4f}) | {_cell([m.kl_mean for m in ms], '.4f')} | {_cell([m.kl_p99 for m in ms], '.3f')} | "
            f"{_cell([m.top1 for m in ms], '.4f')} | {_cell([x['res'].mean_rel_err() for x in runs], '.5f')} | "
            f"{_cell([x['res'].mean_rel_err(True) for x in runs], '.5f')} | "
            f"{_cell([x['seconds'] for x in runs], '.1f')} |")
    return "\n".join(lines)
