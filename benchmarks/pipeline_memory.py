"""Does the pipeline's peak memory grow with the model? And how do time and per-rank memory move with the
number of processes?

Part 1 builds two random Llama checkpoints of the same width, with 4 and 24 blocks, quantizes each with
`fp4ref quantize --model` in a fresh process, and compares their peak resident memory (ru_maxrss, as the
run's report.json records it). Loading every block would add the 24-block model's extra weights (printed as
"weights of 20 more blocks"). Target: the 24-block peak within 10 % of the 4-block one.
Part 2 quantizes the 24-block model with torchrun on 1, 2 and 4 gloo processes and prints wall time and the
peak of each rank, and checks that the checkpoints are byte-identical.

    python benchmarks/pipeline_memory.py [--hidden 512] [--method rtn] [--threads 1] [--skip-dist]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import tiny_models  # noqa: E402

from fp4ref.efficiency import cpu_name  # noqa: E402


def run(src: Path, out: Path, args, nproc: int = 0) -> tuple[float, dict]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                 str(29600 + nproc), "-m", "fp4ref"] if nproc else [sys.executable, "-m", "fp4ref"])
    cmd = launcher + ["quantize", "--model", str(src), "--out", str(out), "--calib-text", str(src / "calib.txt"),
                      "--calib", str(args.calib), "--calib-len", "64", "--eval", "0", "--method", args.method,
                      "--format", args.format, "--threads", str(args.threads), "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return wall, json.loads((out / "report.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--method", default="rtn", choices=("rtn", "gptq", "mr-gptq"))
    ap.add_argument("--format", default="mxfp4", choices=("mxfp4", "nvfp4"))
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-dist", action="store_true")
    args = ap.parse_args()
    h, inter = args.hidden, 3 * args.hidden
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs visible; {args.threads} torch thread(s) per process")
    print(f"model: random Llama, hidden {h}, intermediate {inter}, float32; {args.method} {args.format}; "
          f"{args.calib} calibration windows of 64 tokens")
    per_block_mb = (4 * h * h + 3 * h * inter) * 4 / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peaks = {}
        print("\n| blocks | weights (MiB) | peak host (MiB) | wall (s) |\n| ---: | ---: | ---: | ---: |")
        for layers in (4, 24):
            src = tiny_models.make(tmp / f"m{layers}", "llama", layers=layers, hidden=h, inter=inter, heads=8, kv=8)
            wall, rep = run(src, tmp / f"o{layers}", args)
            peaks[layers] = max(rep["peak_host_mb_per_rank"])
            print(f"| {layers} | {layers * per_block_mb:.0f} | {peaks[layers]:.0f} | {wall:.1f} |")
        ratio = peaks[24] / peaks[4]
        print(f"\npeak(24 blocks) / peak(4 blocks) = {ratio:.3f} (target <= 1.10; weights of 20 more blocks: "
              f"{20 * per_block_mb:.0f} MiB) -> {'PASS' if ratio <= 1.10 else 'FAIL'}")
        if args.skip_dist:
            return
        print("\n| processes | wall (s) | peak host per rank (MiB) | bytes identical to 1 process |\n"
              "| ---: | ---: | --- | --- |")
        ref = None
        for n in (1, 2, 4):
            wall, rep = run(tmp / "m24", tmp / f"d{n}", args, nproc=n)
            files = {p.name: p.read_bytes() for p in sorted((tmp / f"d{n}").iterdir()) if p.suffix == ".safetensors"}
            ref = files if ref is None else ref
            print(f"| {n} | {wall:.1f} | {', '.join(f'{x:.0f}' for x in rep['peak_host_mb_per_rank'])} | "
                  f"{'yes' if files == ref else 'NO'} |")


if __name__ == "__main__":
    main()
