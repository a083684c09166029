"""Element and scale format descriptors (SPEC §2): data only, no arithmetic.

Every finite magnitude of a sign/exponent/mantissa format is ``2^(e - bias) * (1 + m / 2^mbits)`` for a
normal code and ``2^(1 - bias) * m / 2^mbits`` for a subnormal one (e == 0).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    ebits: int
    mbits: int
    bias: int
    signed: bool
    max_finite: float
    emax: int  # unbiased exponent of max_finite (used by the MX scale rule, SPEC §4)
    nan_code: int | None  # canonical NaN code written by encode (None: no NaN)
    inf_code: int | None  # +Inf code (None: no Inf)
    max_code: int  # code of +max_finite

    @property
    def bits(self) -> int:
        return self.ebits + self.mbits + (1 if self.signed else 0)

    @property
    def sign_bit(self) -> int:
        return 1 << (self.ebits + self.mbits) if self.signed else 0


E2M1 = Format("e2m1", 2, 1, 1, True, 6.0, 2, None, None, 0x7)
E2M3 = Format("e2m3", 2, 3, 1, True, 7.5, 2, None, None, 0x1F)
E3M2 = Format("e3m2", 3, 2, 3, True, 28.0, 4, None, None, 0x1F)
E4M3 = Format("e4m3", 4, 3, 7, True, 448.0, 8, 0x7F, None, 0x7E)
E5M2 = Format("e5m2", 5, 2, 15, True, 57344.0, 15, 0x7F, 0x7C, 0x7B)
E8M0 = Format("e8m0", 8, 0, 127, False, 2.0**127, 127, 0xFF, None, 0xFE)

FORMATS: dict[str, Format] = {f.name: f for f in (E2M1, E2M3, E3M2, E4M3, E5M2, E8M0)}
ELEMENT_FORMATS = ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2")

# Aliases accepted wherever a format name is: the ml_dtypes / torch spellings.
ALIASES = {
    "fp4": "e2m1", "float4_e2m1fn": "e2m1",
    "float6_e2m3fn": "e2m3", "float6_e3m2fn": "e3m2",
    "fp8_e4m3": "e4m3", "float8_e4m3fn": "e4m3",
    "fp8_e5m2": "e5m2", "float8_e5m2": "e5m2",
    "float8_e8m0fnu": "e8m0", "ue8m0": "e8m0",
}


def get_format(fmt: str | Format, *, arg: str = "fmt", allowed: tuple[str, ...] | None = None) -> Format:
    """Look a format up by name (or pass a Format through); ValueError naming ``arg`` otherwise."""
    if isinstance(fmt, Format):
        f = fmt
    elif isinstance(fmt, str) and ALIASES.get(fmt, fmt) in FORMATS:
        f = FORMATS[ALIASES.get(fmt, fmt)]
    else:
        raise ValueError(f"{arg}={fmt!r} is not a known format; expected one of {sorted(FORMATS)}")
    if allowed is not None and f.name not in allowed:
        raise ValueError(f"{arg}={f.name!r} is not allowed here; expected one of {list(allowed)}")
    return f


def is_nan_code(fmt: Format, code: int) -> bool:
    """True where ``code`` decodes to NaN in ``fmt``."""
    if fmt.name == "e8m0":
        return code == 0xFF
    mag = code & ~fmt.sign_bit
    if fmt.name == "e4m3":
        return mag == 0x7F
    if fmt.name == "e5m2":
        return mag > 0x7C
    return False


def code_value(fmt: Format, code: int) -> float:
    """The exact value of one code, as a Python float (NaN/Inf where the format has them)."""
    if fmt.name == "e8m0":
        return float("nan") if code == 0xFF else 2.0 ** (code - 127)
    if is_nan_code(fmt, code):
        return float("nan")
    sign = -1.0 if (code & fmt.sign_bit) else 1.0
    mag = code & (fmt.sign_bit - 1)
    if fmt.inf_code is not None and mag == fmt.inf_code:
        return sign * float("inf")
    e, m = mag >> fmt.mbits, mag & ((1 << fmt.mbits) - 1)
    if e == 0:
        return sign * 2.0 ** (1 - fmt.bias) * m / 2**fmt.mbits
    return sign * 2.0 ** (e - fmt.bias) * (1 + m / 2**fmt.mbits)
