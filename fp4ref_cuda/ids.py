"""The ids the Python wrappers pass to the compiled backend: the Python copy of csrc/ids.h.

tests/test_arith_cpu.py compares these tables with the compiled enums through the CPU build, so the two
copies cannot drift; the 128x4 layout's size rule is fp4ref.layouts.blocked_scale_size (compared the same way).
"""
from __future__ import annotations

import torch

FMT_IDS = {"e2m1": 0, "e2m3": 1, "e3m2": 2, "e4m3": 3, "e5m2": 4, "e8m0": 5}  # FmtId
MODE_IDS = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3, "stretch": 4}  # ScaleMode
DTYPE_IDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # DType
MX_E2M1, MX_ANY, NV_TE = 0, 1, 2  # QuantKind: packed MXFP4, MX one byte per element, NVFP4 (TE recipe)


def table() -> list[int]:
    """Every id in the order csrc/arith_cpu.cpp's ``cpu_ids`` writes them."""
    last_fmt, last_elem, last_mode = max(FMT_IDS.values()), FMT_IDS["e5m2"], max(MODE_IDS.values())
    return ([FMT_IDS[n] for n in ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "e8m0")]
            + [MODE_IDS[m] for m in ("floor", "ceil", "even", "rceil", "stretch")]
            + [DTYPE_IDS[d] for d in (torch.float32, torch.bfloat16, torch.float16)]
            + [MX_E2M1, MX_ANY, NV_TE, last_fmt, last_elem, last_mode])


__all__ = ["FMT_IDS", "MODE_IDS", "DTYPE_IDS", "MX_E2M1", "MX_ANY", "NV_TE", "table"]
