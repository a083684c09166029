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
        "demo": "fp4ref.vectors:cli_demo",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: fp4ref {vectors OUT | verify FILE | quantize [...] | demo} [--help]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    mod, fn = commands[argv[0]].split(":")
    import importlib

    return int(getattr(importlib.import_module(mod), fn)(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
