"""What every fp4ref subcommand's parser shares: a user's mistake is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2 (SystemExit(2))."""

    def error(self, message: str):
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse(ap: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """``ap.parse_args(argv)``, or the exit code where argparse stops (``--help``: 0, a usage error: 2)."""
    try:
        return ap.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


def usage_error(prog: str, message: str) -> int:
    """Print ``prog: message`` as one line on stderr; returns 2."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def _at_least(text: str, lo: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
    return v


def count(text: str) -> int:
    """argparse type: a non-negative integer."""
    return _at_least(text, 0)


def positive(text: str) -> int:
    """argparse type: a positive integer."""
    return _at_least(text, 1)


def alphas(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers in [0, 1] ('0,0.25,0.5')."""
    try:
        vals = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    bad = [v for v in vals if not 0.0 <= v <= 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"each alpha must be in [0, 1], got {bad[0]:g}")
    return vals


def size(text: str) -> int:
    """argparse type: a byte count, plain or with a unit ('5GB', '500MB', '2GiB')."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30, "TIB": 2**40}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        value = float(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return int(value)


__all__ = ["ArgParser", "parse", "usage_error", "count", "positive", "alphas", "size"]
