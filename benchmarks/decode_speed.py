"""Efficiency of RTN-quantized FP4 models against the float model: checkpoint bytes, bits per weight, peak memory to
load and run, and greedy decoding speed with the KV cache at batch 1 and 16 (same prompt and length).

The embedded SmolLM2-135M (float32) is quantized with ``fp4ref.model.quantize_model(method="rtn")`` in each format,
saved with ``save_checkpoint`` to a temporary folder and loaded back with ``load_checkpoint(dir, compute=...)``:
"exact" runs every FP4Linear through fp4ref.ops (the float64 reference GEMM on a CPU), "dequantized" is the
float32 matmul with the cached dequantized weight. Peak memory is ru_maxrss of a fresh process
(``python -m fp4ref.efficiency peak``) that loads the folder and runs one forward of (max batch, prompt length).

    python benchmarks/decode_speed.py [--formats mxfp4,nvfp4] [--threads 2] [--prompt-len 32] [--new-tokens 16]
                                      [--repeats 3] [--batches 1,16] [--computes exact,dequantized] [--blocks N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fp4ref.efficiency import cpu_name  # noqa: E402


def _same(a: list[list[int]], b: list[list[int]]) -> str:
    """How many generated tokens agree position by position, as "k/n"."""
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return f"{same}/{sum(len(r) for r in a)}"


def _csv(kind):
    def parse(s: str):
        vals = [kind(v) for v in s.split(",") if v.strip()]
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        return vals
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", type=_csv(str), default=["mxfp4", "nvfp4"], help="comma list (default mxfp4,nvfp4)")
    p.add_argument("--computes", type=_csv(str), default=["exact", "dequantized"],
                   help="FP4Linear compute modes (default exact,dequantized)")
    p.add_argument("--batches", type=_csv(int), default=[1, 16], help="decode batch sizes (default 1,16)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", type=int, default=None, help="quantize only the first N blocks (default all)")
    p.add_argument("--calib", type=int, default=2, help="calibration windows for quantize_model (default 2)")
    p.add_argument("--calib-len", type=int, default=128, help="calibration window length (default 128)")
    p.add_argument("--device", default="cpu", help="where decoding runs (default cpu; peak memory is host RSS)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for fmt in args.formats:
        if fmt not in ("mxfp4", "nvfp4"):
            raise SystemExit(f"--formats: {fmt!r} is not mxfp4 or nvfp4")
    for c in args.computes:
        if c not in ("exact", "dequantized"):
            raise SystemExit(f"--computes: {c!r} is not exact or dequantized")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import copy

    import torch

    from fp4ref import models
    from fp4ref.checkpoint import load_checkpoint, save_checkpoint
    from fp4ref.efficiency import checkpoint_bytes, decode_speed, peak_memory_mb, weight_footprint
    from fp4ref.model import quantize_model

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    device = torch.device(args.device)
    speed_kw = dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens, threads=args.threads,
                    repeats=args.repeats, seed=args.seed)
    peak_batch = max(args.batches)
    def log(s: str) -> None:
        print(f"[{time.perf_counter() - t_all:7.1f} s, load {os.getloadavg()[0]:.1f}] {s}", file=sys.stderr, flush=True)

    float_model, tok = models.load_model()
    n_params = sum(p.numel() for p in float_model.parameters())
    calib, _ = models.split_windows(models.text_tokens(tok), seq_len=args.calib_len, n_calib=args.calib, n_eval=0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fp4ref-decode-") as tmp:
        tmp = Path(tmp)

        def measure(label, compute, model, folder, fp, peak_compute):
            row = dict(format=label, compute=compute, ckpt=checkpoint_bytes(folder), fp=fp, load=[os.getloadavg()[0]])
            for b in args.batches:
                if rows:  # the float model again, just before: the ratio compares runs under the same machine load
                    log(f"  float32 (adjacent run): decoding batch {b} ...")
                    row[("float", b)] = decode_speed(float_model, batch=b, **speed_kw)
                log(f"  {label} {compute}: decoding batch {b} ...")
                row[b] = decode_speed(model, batch=b, **speed_kw)
                if not rows:
                    row[("float", b)] = row[b]
                row["load"].append(os.getloadavg()[0])
            if not args.no_memory:
                log(f"  {label} {compute}: peak memory (fresh process) ...")
                row["mem"] = peak_memory_mb(folder, compute=peak_compute, batch=peak_batch, seq_len=args.prompt_len,
                                            threads=args.threads, seed=args.seed)
            rows.append(row)

        float_dir = tmp / "float32"
        float_model.save_pretrained(float_dir)
        log("float32 ...")
        measure("float32", "float (nn.Linear)", float_model.to(device), float_dir, weight_footprint(float_model), None)
        for fmt in args.formats:
            log(f"{fmt}: RTN quantization ...")
            q = copy.deepcopy(float_model).cpu()
            blocks = None if args.blocks is None else range(min(args.blocks, len(q.model.layers)))
            t0 = time.perf_counter()
            quantize_model(q, calib, method="rtn", fmt=fmt, blocks=blocks, progress=lambda s: None)
            log(f"  quantized in {time.perf_counter() - t0:.1f} s")
            folder = save_checkpoint(q, tmp / fmt)
            del q
            for compute in args.computes:
                m = load_checkpoint(folder, compute=compute, device=device)
                measure(fmt, f"FP4Linear {compute}", m, folder, weight_footprint(m), compute)
                del m
    wall = time.perf_counter() - t_all

    base = rows[0]
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"model: {models.MODEL_NAME}, {n_params:,} parameters; RTN"
          + ("" if args.blocks is None else f", first {args.blocks} blocks quantized (the rest float32)"))
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs visible{gpu}; decoding on {device}; torch {torch.__version__}; "
          f"{args.threads} threads")
    print(f"decoding: greedy, KV cache, random prompt of {args.prompt_len} tokens (seed {args.seed}), "
          f"{args.new_tokens} one-token steps after the prefill, median of {args.repeats} runs after a warm-up; "
          f"tok/s = batch x {args.new_tokens} / decode time (prefill timed apart)")
    if not args.no_memory:
        print("peak memory: VmHWM (ru_maxrss of its own address space) of a fresh process that loads the folder and "
              f"runs one forward of "
              f"{peak_batch}x{args.prompt_len}; in brackets above its import baseline (python + torch + transformers "
              f"+ model code: {base['mem']['import_mb']:.0f} MiB)")
    print()
    bs = args.batches
    head = (["format", "compute", "checkpoint bytes", "bits/weight (linears)", "bits/param (ckpt)"]
            + (["peak MiB load / +run (+ over import); resident after load"] if not args.no_memory else [])
            + [f"prefill s (b{b})" for b in bs] + [f"tok/s b{b}" for b in bs]
            + [f"x float b{b} (adjacent float tok/s)" for b in bs] + [f"greedy tokens = float / = exact (b{bs[0]})"])
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join([" --- "] * 2 + [" ---: "] * (len(head) - 2)) + "|")
    for r in rows:
        fp = r["fp"]
        bpw = "32 (float32)" if fp["bits_per_weight"] is None else f"{fp['bits_per_weight']:.4f}"
        cells = [r["format"], r["compute"], f"{r['ckpt']:,}", bpw, f"{8 * r['ckpt'] / n_params:.2f}"]
        if not args.no_memory:
            m = r["mem"]
            cells.append(f"{m['load_peak_mb']:.0f} / {m['run_peak_mb']:.0f} (+{m['model_run_mb']:.0f}); "
                         f"{m['rss_after_load_mb']:.0f}")
        cells += [f"{r[b]['prefill_s']:.3f}" for b in bs]
        cells += [f"{r[b]['tokens_per_s']:.2f}" for b in bs]
        cells += [f"{r[b]['tokens_per_s'] / r[('float', b)]['tokens_per_s']:.3f} "
                  f"({r[('float', b)]['tokens_per_s']:.2f})" for b in bs]
        exact = next((x for x in rows if x["format"] == r["format"] and x["compute"] == "FP4Linear exact"), None)
        cells.append(f"{_same(r[bs[0]]['tokens'], base[bs[0]]['tokens'])} / "
                     + ("-" if exact is None else _same(r[bs[0]]['tokens'], exact[bs[0]]['tokens'])))
        rows_text = "| " + " | ".join(cells) + " |"
        print(rows_text)
    print()
    if not args.no_memory:
        print("peak memory detail (MiB): " + "; ".join(
            f"{r['format']} {r['compute']}: import {r['mem']['import_mb']:.0f}, "
            f"after load {r['mem']['load_peak_mb']:.0f}"
            f" (resident {r['mem']['rss_after_load_mb']:.0f}), after forward {r['mem']['run_peak_mb']:.0f}"
            for r in rows))
    print("1-min load average before/after each batch (2 cores shared with other jobs): " + "; ".join(
        f"{r['format']} {r['compute']}: " + ", ".join(f"{v:.1f}" for v in r["load"]) for r in rows))
    print("decode ms/step: " + "; ".join(
        f"{r['format']} {r['compute']}: " + ", ".join(f"b{b} {r[b]['ms_per_step']:.1f}" for b in bs) for r in rows))
    print(f"wall time: {wall:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
