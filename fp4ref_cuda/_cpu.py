"""CPU build of the kernels' C++ (csrc/arith_cpu.cpp), loaded with ctypes: the numerics proof that runs in CI.

``load()`` compiles arith_cpu.cpp (which includes arith.cuh, the tile headers, dispatch.cuh and
gemm_dequant.cuh, the same code the kernels run) with strict IEEE float32 flags into a cache folder, and
returns a low-level backend with the
same methods and outputs as ``torch.ops.fp4ref_cuda``; ``fp4ref_cuda._wrappers.Ops`` turns it into the
public ops. Compiling takes a few seconds and needs only a C++ compiler.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from fp4ref.layouts import blocked_scale_size

from ._wrappers import Ops
from .ids import DTYPE_IDS, MX_ANY, NV_TE

CSRC = Path(__file__).parent / "csrc"
# Every header arith_cpu.cpp may include (the tile headers, ptx.cuh, gemm_dequant.cuh, ...): the cache key.
SOURCES = ("arith_cpu.cpp", *sorted(p.name for p in CSRC.glob("*.cuh")), *sorted(p.name for p in CSRC.glob("*.h")))
# Strict IEEE binary32: no FMA contraction, no fast-math (x86-64 and aarch64 do float32 in SSE/NEON).
CXXFLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math",
            "-fPIC", "-shared", "-pthread"]  # threads: the emulated warps of the lane-split rotations

_i, _i64, _u32, _f, _p = ctypes.c_int, ctypes.c_int64, ctypes.c_uint32, ctypes.c_float, ctypes.c_void_p
_SIGS = {
    "cpu_encode": [_i, _p, _p, _i64, _i, _i, _p],
    "cpu_decode": [_p, _p, _i64, _i, _p],
    "cpu_pack": [_p, _p, _i64, _p],
    "cpu_unpack": [_p, _p, _i64],
    "cpu_swizzle": [_p, _p, _i64, _i64],
    "cpu_unswizzle": [_p, _p, _i64, _i64],
    "cpu_finite_amax": [_i, _p, _i64, _i, _p, _i64, _f, _p],
    "cpu_hadamard": [_i, _p, _p, _i64, _i, _p, _i64, _f],
    "cpu_quant": [_i, _i, _i, _i, _p, _i64, _i, _i, _p, _i64, _f, _p, _p, _p, _p, _p, _i64],
    "cpu_dequant": [_i, _i, _i, _i64, _i, _i, _p, _p, _p, _p],
    "cpu_fast_codec_mismatches": [_i, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64],
    "cpu_fold_mismatches": [_u32, _u32],
    "cpu_fold_byte_min": [],
    "cpu_fold_byte_max": [],
    "cpu_scale_byte": [_u32, _i, _i],
    "cpu_te_encode_scale": [_f],
    "cpu_encode_e2m1_sat": [_p, _p, _i64],
    "cpu_decode_e2m1_x2": [_p, _p, _i64],
    "cpu_ids": [_p, _i],
    "cpu_blocked": [_p, _i64, _p, _p],
    "cpu_gemm_dequant": [_i, _i, _i, _p, _p, _i64, _i64, _p],
}


def _library_path() -> Path:
    h = hashlib.sha256(" ".join(CXXFLAGS).encode())
    for name in SOURCES:
        h.update((CSRC / name).read_bytes())
    cache = Path(os.environ.get("FP4REF_CPU_BUILD_DIR", Path(tempfile.gettempdir()) / "fp4ref_arith_cpu"))
    return cache / f"arith_cpu_{h.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile arith_cpu.cpp once per source version; returns the shared library's path."""
    lib = _library_path()
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or "c++"
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([cxx, *CXXFLAGS, "-o", str(tmp), str(CSRC / "arith_cpu.cpp")], check=True)
    os.replace(tmp, lib)
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class CpuLow:
    """ctypes twin of torch.ops.fp4ref_cuda (same arguments, same outputs), on CPU tensors."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        for name, args in _SIGS.items():
            fn = getattr(self.lib, name)
            fn.argtypes = args
            fn.restype = {"cpu_scale_byte": _u32, "cpu_te_encode_scale": _f, "cpu_encode_e2m1_sat": None,
                          "cpu_decode_e2m1_x2": None,
                          "cpu_fast_codec_mismatches": _i64, "cpu_fold_mismatches": _i64,
                          "cpu_fold_byte_min": _u32, "cpu_fold_byte_max": _u32}.get(name, _i)

    def _ok(self, rc: int) -> None:
        if rc != 0:
            raise RuntimeError(f"fp4ref CPU build returned {rc}")

    def encode(self, x, fmt, saturate):
        out = torch.empty(x.shape, dtype=torch.uint8)
        err = torch.zeros(1, dtype=torch.int32)
        self._ok(self.lib.cpu_encode(DTYPE_IDS[x.dtype], _ptr(x), _ptr(out), x.numel(), fmt, int(saturate), _ptr(err)))
        return out, err

    def decode(self, codes, fmt):
        out = torch.empty(codes.shape, dtype=torch.float32)
        err = torch.zeros(1, dtype=torch.int32)
        self._ok(self.lib.cpu_decode(_ptr(codes), _ptr(out), codes.numel(), fmt, _ptr(err)))
        return out, err

    def pack_fp4(self, codes):
        out = torch.empty(*codes.shape[:-1], codes.shape[-1] // 2, dtype=torch.uint8)
        err = torch.zeros(1, dtype=torch.int32)
        self._ok(self.lib.cpu_pack(_ptr(codes), _ptr(out), out.numel(), _ptr(err)))
        return out, err

    def unpack_fp4(self, packed):
        out = torch.empty(*packed.shape[:-1], packed.shape[-1] * 2, dtype=torch.uint8)
        self._ok(self.lib.cpu_unpack(_ptr(packed), _ptr(out), packed.numel()))
        return out

    def swizzle_scales(self, scales):
        rows, cols = scales.shape
        out = torch.empty(blocked_scale_size(rows, cols), dtype=torch.uint8)
        self._ok(self.lib.cpu_swizzle(_ptr(scales), _ptr(out), rows, cols))
        return out

    def unswizzle_scales(self, blocked, rows, cols):
        out = torch.empty(rows, cols, dtype=torch.uint8)
        self._ok(self.lib.cpu_unswizzle(_ptr(blocked), _ptr(out), rows, cols))
        return out

    def finite_amax(self, x, hb, signs, rscale):
        bits = torch.zeros(1, dtype=torch.int32)
        self._ok(self.lib.cpu_finite_amax(DTYPE_IDS[x.dtype], _ptr(x), x.numel(), hb, _ptr(signs),
                                          0 if signs is None else signs.numel(), rscale, _ptr(bits)))
        return bits.view(torch.float32).reshape(())

    def block_hadamard(self, x, hb, signs, rscale):
        out = torch.empty(x.shape, dtype=torch.float32)
        self._ok(self.lib.cpu_hadamard(DTYPE_IDS[x.dtype], _ptr(x), _ptr(out), x.numel(), hb, _ptr(signs),
                                       0 if signs is None else signs.numel(), rscale))
        return out

    def quantize(self, x, kind, fmt, mode, block_size, hb, signs, rscale, amax, swizzle):
        k = x.shape[-1]
        cols = k // block_size
        rows = x.numel() // k if k else 0
        data = torch.empty(*x.shape[:-1], k if kind == MX_ANY else k // 2, dtype=torch.uint8)
        scales = torch.empty(*x.shape[:-1], cols, dtype=torch.uint8)
        gs = torch.empty((), dtype=torch.float32) if kind == NV_TE else torch.empty(0, dtype=torch.float32)
        swz = torch.zeros(blocked_scale_size(rows, cols) if swizzle else 0, dtype=torch.uint8)
        self._ok(self.lib.cpu_quant(DTYPE_IDS[x.dtype], kind, block_size, hb, _ptr(x), x.numel(), fmt, mode,
                                    _ptr(signs), 0 if signs is None else signs.numel(), rscale, _ptr(amax),
                                    _ptr(gs) if kind == NV_TE else None, _ptr(data), _ptr(scales),
                                    _ptr(swz) if swizzle else None, cols))
        return data, scales, gs, swz

    def dequantize(self, data, scales, global_scale, kind, fmt, block_size, stretch, out_dtype):
        k = data.shape[-1] * (1 if kind == MX_ANY else 2)
        out = torch.empty(*data.shape[:-1], k, dtype=out_dtype)
        self._ok(self.lib.cpu_dequant(DTYPE_IDS[out_dtype], kind, block_size, out.numel(), fmt, int(stretch),
                                      _ptr(data), _ptr(scales), _ptr(global_scale), _ptr(out)))
        return out


def load() -> Ops:
    """The public ops running on the CPU build (for tests; GPU tensors go through torch.ops.fp4ref_cuda)."""
    return Ops(CpuLow(build()))
