"""The command lines of the vectors: ``fp4ref vectors OUT``, ``fp4ref verify FILE...`` and the vectors step
of ``fp4ref demo`` (``fp4ref.cli`` routes to them)."""
from __future__ import annotations

import time
from pathlib import Path

from ..cli_args import ArgParser, count, parse, usage_error
from .verify import verify_paths
from .writer import OutputFolderError, write_vectors


def _write(out: str, force: bool, prog: str) -> list[Path] | int:
    """write_vectors for a command: a refused or unwritable folder is one line on stderr and exit code 2."""
    try:
        return write_vectors(out, force=force)
    except OutputFolderError as err:
        return usage_error(prog, str(err))
    except OSError as err:  # e.g. the disk filled up or the folder vanished while writing
        return usage_error(prog, f"cannot write into {out}: {err.strerror or err}")


def cli_vectors(argv: list[str]) -> int:
    ap = ArgParser(prog="fp4ref vectors", description="Write fp4ref's conformance vectors (safetensors, one file "
                   "per op and configuration, with a README.md and a .fp4ref-vectors marker).")
    ap.add_argument("out", help="output folder: new, empty, or written by fp4ref vectors before")
    ap.add_argument("--force", action="store_true", help="write into a folder that holds other files too "
                    "(files of the same names are overwritten)")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    paths = _write(args.out, args.force, "fp4ref vectors")
    if isinstance(paths, int):
        return paths
    print(f"wrote {len(paths)} files and README.md to {args.out}")
    return 0


def cli_verify(argv: list[str]) -> int:
    ap = ArgParser(prog="fp4ref verify", description="Check vector files (inputs and outputs in fp4ref's layout, "
                   "see docs/vectors.md) against the reference; exit 1 on any mismatch, 2 on a usage error.")
    ap.add_argument("files", nargs="+", metavar="FILE", help="safetensors file(s) or folder(s)")
    ap.add_argument("--max-report", type=count, default=10, help="mismatches listed per tensor (default 10)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    for f in args.files:
        p = Path(f)
        if not p.exists():
            return usage_error("fp4ref verify", f"{f}: no such file or folder")
        if p.is_dir() and not any(p.glob("*.safetensors")):
            return usage_error("fp4ref verify", f"{f}: a folder without .safetensors files")
        if not p.is_dir() and not p.is_file():
            return usage_error("fp4ref verify", f"{f}: not a file or folder")
        if p.is_file():
            try:
                p.open("rb").close()
            except OSError as err:
                return usage_error("fp4ref verify", f"{f}: cannot open: {err.strerror or err}")
    results, rc = verify_paths(args.files, max_report=args.max_report, quiet=args.quiet)
    print(f"verified {len(results)} files, {sum(r.tensors for r in results)} tensors, "
          f"{sum(r.values for r in results)} values: {sum(r.mismatches for r in results)} mismatches")
    return rc


def cli_demo(argv: list[str], prog: str = "fp4ref demo") -> int:
    ap = ArgParser(prog=prog, description="Write the conformance vectors, verify them and print a summary.")
    ap.add_argument("--out", default="fp4ref_vectors", help="folder for the vectors (default ./fp4ref_vectors)")
    ap.add_argument("--force", action="store_true", help="write into --out even if it holds other files")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    t0 = time.perf_counter()
    paths = _write(args.out, args.force, prog)
    if isinstance(paths, int):
        return paths
    t1 = time.perf_counter()
    results, rc = verify_paths([args.out], quiet=True)
    t2 = time.perf_counter()
    print(f"fp4ref demo: conformance vectors in {args.out}/ (README.md describes them)")
    print(f"  files:            {len(paths)}")
    print(f"  tensors:          {sum(r.tensors for r in results)}")
    print(f"  cases:            {sum(r.cases for r in results)}")
    print(f"  vectors checked:  {sum(r.values for r in results)} output values")
    print(f"  mismatches:       {sum(r.mismatches for r in results)}")
    print(f"  time:             write {t1 - t0:.1f} s, verify {t2 - t1:.1f} s")
    return rc
