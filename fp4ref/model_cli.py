"""`fp4ref quantize`: quantize the embedded model (or compare methods) and report perplexity (SPEC §15)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .cli_args import ArgParser, count, size

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
    p.add_argument("--format", dest="fmt", choices=("mxfp4", "nvfp4", "int4"), default="mxfp4")
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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    s = f"{cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        s += f", GPU {torch.cuda.get_device_name(device)}"
    return s


def _load(device):
    from .models import load_model

    return load_model(device=device)


def _run_one(args, calib, evals, device, method, qep, progress):
    from .model import quantize_model
    from .models import perplexity
    from .qep import ORIGINAL_EXCLUDE

    model, _ = _load(device)
    n_blocks = len(model.model.layers)
    blocks = range(min(args.blocks, n_blocks)) if args.blocks is not None else None
    t0 = time.perf_counter()
    res = quantize_model(model, calib, method=method, fmt=args.fmt, qep=qep, act=args.act,
                         qep_layers=ORIGINAL_EXCLUDE if args.qep_skip_down else None, qep_damp=args.qep_damp,
                         damp=args.damp, act_order=args.act_order, hadamard_block=args.hadamard_block,
                         scale_search=args.scale_search, blocks=blocks, progress=progress)
    t_quant = time.perf_counter() - t0
    ppl = perplexity(model, evals)
    return res, ppl, t_quant


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
    if args.act and args.fmt == "int4":
        return "--act (W4A4) needs --format mxfp4 or nvfp4"
    if args.method == "mr-gptq" and args.fmt == "int4" and not args.compare:
        return "--method mr-gptq needs --format mxfp4 or nvfp4"
    from . import models

    missing = models.missing_requirements()
    if missing:
        return f"the embedded model needs {', '.join(missing)}: {models.INSTALL_HINT}"
    return None


class _EmbeddedRun:
    """The embedded model's text windows and float32 perplexity, then one method (``single``) or the
    comparison table (``compare``)."""

    def __init__(self, args, device: torch.device):
        from . import models

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
        if self.n_eval * 512 + self.n_calib * self.calib_len > tokens.numel():
            self.error = "calibration and evaluation slices would overlap"
            return
        _, self.evals = models.split_windows(tokens, seq_len=512, n_calib=0, n_eval=self.n_eval)
        self.calib, _ = models.split_windows(tokens, seq_len=self.calib_len, n_calib=self.n_calib, n_eval=0)
        print(f"model: {models.MODEL_NAME}, {len(model.model.layers)} blocks")
        print(f"machine: {_machine(device)}; device {device}")
        print(f"text: pydoc_data.topics, {tokens.numel()} tokens; calibration {self.n_calib}x{self.calib_len} = "
              f"{self.n_calib * self.calib_len} tokens (end of text); evaluation {self.n_eval}x512 = "
              f"{self.n_eval * 512} tokens (start)")
        t0 = time.perf_counter()
        self.ppl_fp = models.perplexity(model, self.evals)
        print(f"float32 perplexity: {self.ppl_fp:.4f} ({time.perf_counter() - t0:.1f} s)")
        self.blocks_note = "" if args.blocks is None else f" (first {args.blocks} blocks only; the rest stay float32)"
        self.mode = "W4A4" if args.act else "W4A16"

    def _run(self, method, qep):
        return _run_one(self.args, self.calib, self.evals, self.device, method, qep, self.progress)

    def single(self) -> int:
        a = self.args
        print(f"quantizing: {_label(a.method, a.qep)}, {a.fmt}, {self.mode}{self.blocks_note}")
        res, ppl, t_quant = self._run(a.method, a.qep)
        print(res.table())
        print(f"{_label(a.method, a.qep)} {a.fmt} {self.mode}: perplexity {self.ppl_fp:.4f} -> {ppl:.4f}; "
              f"mean relative layer error {res.mean_rel_err():.5f} (vs float32 model {res.mean_rel_err(True):.5f}); "
              f"quantization {t_quant:.1f} s; total {time.perf_counter() - self.t_all:.1f} s")
        if a.out is not None:
            from .checkpoint import save_checkpoint

            meta = dict(res.settings, perplexity_fp32=self.ppl_fp, perplexity=ppl, eval_tokens=self.n_eval * 512)
            save_checkpoint(res.model, a.out, tokenizer=self.tok, metadata=meta)
            (a.out / "report.json").write_text(json.dumps(
                dict(settings=res.settings, perplexity_fp32=self.ppl_fp, perplexity=ppl, layers=res.as_dicts()),
                indent=1, default=str))
            print(f"saved checkpoint to {a.out}")
        return 0

    def compare(self) -> int:
        a = self.args
        qep_alpha = 0.5 if a.qep is None else a.qep
        methods = [(m, q) for m, q in COMPARE if not (m == "mr-gptq" and a.fmt == "int4")]
        rows = [dict(config="float32", perplexity=self.ppl_fp, rel_err=0.0, rel_err_fp=0.0, seconds=0.0)]
        for method, q in methods:
            alpha = None if q is None else qep_alpha
            print(f"running {_label(method, alpha)} ...", file=sys.stderr, flush=True)
            res, ppl, t_quant = self._run(method, alpha)
            if a.table:
                print(res.table())
            rows.append(dict(config=_label(method, alpha), perplexity=ppl, rel_err=res.mean_rel_err(),
                             rel_err_fp=res.mean_rel_err(True), seconds=t_quant))
            print(f"  {rows[-1]['config']}: perplexity {ppl:.4f}, {t_quant:.1f} s", file=sys.stderr, flush=True)
        table = compare_table(rows, f"{a.fmt} {self.mode}{self.blocks_note}")
        print(table)
        print(f"total {time.perf_counter() - self.t_all:.1f} s")
        if a.out is not None:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "results.md").write_text(table + "\n")
            (a.out / "results.json").write_text(json.dumps(dict(
                format=a.fmt, mode=self.mode, machine=_machine(self.device),
                calibration_tokens=self.n_calib * self.calib_len, eval_tokens=self.n_eval * 512, rows=rows), indent=1))
        return 0


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
    if args.compare or args.blocks is not None or args.quick:
        print("fp4ref quantize: --compare, --blocks and --quick are for the embedded model, not --model",
              file=sys.stderr)
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
        ppl = ("" if res.perplexity is None else
               f"perplexity {res.perplexity_fp:.4f} -> {res.perplexity:.4f}; ")
        dmem = "" if res.peak_device_mb is None else f", device {res.peak_device_mb:.0f} MiB"
        print(f"{_label(args.method, args.qep)} {args.fmt} {'W4A4' if args.act else 'W4A16'}: {ppl}"
              f"mean relative layer error {res.mean_rel_err():.5f}; {res.seconds:.1f} s on {world_from_env()} "
              f"process(es); peak memory: host {res.peak_host_mb:.0f} MiB per rank{dmem}")
        if res.rtn_fallback:
            print(f"experts without calibration tokens (RTN): {', '.join(res.rtn_fallback)}")
        print(f"saved checkpoint to {args.out}")
    return 0


def compare_table(rows: list[dict], title: str) -> str:
    """A markdown table of compare rows (config, perplexity, mean relative layer errors, seconds)."""
    lines = [f"**{title}**", "",
             "| config | perplexity | mean rel. layer error | mean rel. error vs float32 | quantize time (s) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['perplexity']:.3f} | {r['rel_err']:.5f} | {r['rel_err_fp']:.5f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)
