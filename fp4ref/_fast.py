"""Fast CPU paths for E2M1 block quantization: the same bytes as fp4ref.mx / fp4ref.nvfp4, fewer passes.

Why it is exact. E2M1 rounding only looks at a scaled value's sign, exponent, two leading mantissa bits and
whether any lower mantissa bit is set: every rounding threshold (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) and
the saturation point have zeros below mantissa bit 21. So a 4096-entry table indexed by
``(bits >> 21) << 1 | (bits & 0x1FFFFF != 0)`` gives the code of any float32, and for a bfloat16 value (no
bits below 16) a 65536-entry table indexed by the bf16 bits does. The tables are filled by the reference
codec itself (``magnitude_codes`` of the magnitude, sign bit from ``signbit``), so they cannot disagree with it.
Work is done in row chunks that stay in cache, which also bounds the peak memory.

Dequantization reads both nibbles of a packed byte from a 256x2 value table and scales per chunk.

Wiring (for the lead): call ``quantize_mx_e2m1`` / ``quantize_nvfp4_fast`` / ``dequantize_mx_e2m1`` /
``dequantize_nvfp4_fast`` first and use the reference when they return None (CUDA tensors, empty tensors,
other input dtypes).
"""
from __future__ import annotations

import concurrent.futures
import functools

import torch

from .codecs import magnitude_codes
from .formats import E2M1
from .scales import NAN_SCALE, finite_amax, inverse_scale, scale_bytes

CHUNK_ELEMS = 1 << 20  # one thread: 4 MiB of float32 per chunk, few op calls, still cache-friendly
PARALLEL_CHUNK_ELEMS = 1 << 18  # several threads: one chunk per pool thread at a time, see _run_chunks


@functools.lru_cache(maxsize=None)
def _lut_f32() -> torch.Tensor:
    """code[(bits >> 21) << 1 | sticky] for every float32 class (sign, exponent, 2 mantissa bits, sticky)."""
    idx = torch.arange(4096, dtype=torch.int32)
    bits = ((idx >> 1) << 21) | (idx & 1)
    return _codes_of(bits.view(torch.float32))


@functools.lru_cache(maxsize=None)
def _lut_bf16() -> torch.Tensor:
    """code[bf16 bits] for every bfloat16 pattern."""
    bits = torch.arange(65536, dtype=torch.int32) << 16
    return _codes_of(bits.view(torch.float32))


def _codes_of(v: torch.Tensor) -> torch.Tensor:
    # The exact expression quantize_mx / quantize_nvfp4 use (NaN magnitudes count past the last threshold).
    c = magnitude_codes(v.abs(), E2M1, saturate=True).to(torch.uint8)
    return c | (torch.signbit(v).to(torch.uint8) << 3)


def codes_f32(y: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (with sign) of float32 ``y``, as quantize_nvfp4 computes them."""
    b = y.view(torch.int32)
    idx = b >> 20
    idx &= 0xFFE
    sticky = b & 0x1FFFFF
    idx |= sticky.ne_(0)  # in place: this runs on every element, allocations cost as much as the math
    return _lut_f32().index_select(0, idx.flatten()).view(y.shape)


def codes_bf16(y: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (with sign) of bfloat16 ``y``."""
    idx = y.view(torch.uint16).int()
    return _lut_bf16().index_select(0, idx.flatten()).view(y.shape)


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """pack_fp4 of contiguous uint8 codes [..., K]: element 2i low nibble, 2i+1 high (little-endian view)."""
    v = codes.view(torch.int16)
    return (v | (v >> 4)).to(torch.uint8)


def _run_chunks(rows: int, k: int, work) -> None:
    """Call ``work(r0, r1)`` over row chunks. With several torch threads, chunks go to a pool of that many
    Python threads (torch releases the GIL inside ops). Measured on 2 busy cores, this is 4-10x faster than
    letting each op fork and join its own OpenMP team, whose barriers cost more than the small ops."""
    workers = torch.get_num_threads()
    elems = CHUNK_ELEMS if workers == 1 else PARALLEL_CHUNK_ELEMS
    step = max(1, elems // max(k, 1))
    chunks = [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]
    if workers == 1 or len(chunks) == 1:
        for c in chunks:
            work(*c)
        return
    # Autograd and inference modes are thread-local: the workers take the caller's, or a tensor made under
    # torch.inference_mode() cannot be written there (and one made outside it would record history).
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(r0: int, r1: int) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            work(r0, r1)

    with concurrent.futures.ThreadPoolExecutor(min(workers, len(chunks))) as pool:
        for f in [pool.submit(run, *c) for c in chunks]:
            f.result()


def _block_amax(xc: torch.Tensor) -> torch.Tensor:
    """max |x| over the last dim, as float32: a halving tree of integer maxima on the magnitude bits (the
    order of non-negative floats is that of their bits; NaN bits beat Inf's, so NaN still wins). Torch's
    reductions over a last dim of 16 or 32 are several times slower than these elementwise maxima."""
    ib = torch.int32 if xc.dtype == torch.float32 else torch.int16
    a = xc.view(ib) & (0x7FFFFFFF if ib == torch.int32 else 0x7FFF)
    n = a.shape[-1]
    while n > 1 and n % 2 == 0:
        n //= 2
        a = torch.maximum(a[..., :n], a[..., n:2 * n])
    if n > 1:
        a = a[..., :n].amax(-1, keepdim=True)
    return a[..., 0].view(xc.dtype).float()


def quantize_mx_e2m1(x: torch.Tensor, block_size: int, scale_mode: str, axis: int):
    """(data, scales) of quantize_mx(x, "e2m1", ...) or None where the reference must run."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not x.numel():
        return None
    xm = x.movedim(axis, -1) if axis != x.dim() - 1 else x
    lead, k = xm.shape[:-1], xm.shape[-1]
    rows = xm.reshape(-1, k)
    nb = k // block_size
    data = torch.empty(rows.shape[0], k // 2, dtype=torch.uint8)
    scales = torch.empty(rows.shape[0], nb, dtype=torch.uint8)
    bf16 = x.dtype == torch.bfloat16 and scale_mode != "stretch"
    def work(r0: int, r1: int) -> None:
        xc = rows[r0:r1].reshape(r1 - r0, nb, block_size)
        if x.dtype == torch.float16:
            xc = xc.float()
        amax = _block_amax(xc)
        s = scale_bytes(amax, E2M1, scale_mode)
        inv = inverse_scale(s).unsqueeze(-1)
        if bf16:
            # A bf16 times a power of two is exact in bf16 down to 2^-126, and anything smaller is code ±0.
            codes = codes_bf16(xc * inv.to(torch.bfloat16))
        else:
            y = xc * inv
            if scale_mode == "stretch":
                y.mul_(3.0)
            codes = codes_f32(y)
        bad = s == NAN_SCALE
        if bool(bad.any()):
            codes.masked_fill_(bad.unsqueeze(-1), 0)
        data[r0:r1] = pack_rows(codes.view(r1 - r0, k))
        scales[r0:r1] = s

    _run_chunks(rows.shape[0], k, work)
    return data.view(*lead, k // 2), scales.view(*lead, nb)


def quantize_nvfp4_fast(x: torch.Tensor, amax: torch.Tensor | None, recipe_func, block_size: int, **kw):
    """(data, scales, global_scale) of quantize_nvfp4 with the recipe function ``recipe_func``, chunked.
    ``amax=None``: the global amax is taken from the block maxima (one pass fewer than finite_amax)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not x.numel():
        return None
    lead, k = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, k)
    nb = k // block_size
    data = torch.empty(rows.shape[0], k // 2, dtype=torch.uint8)
    scales = torch.empty(rows.shape[0], nb, dtype=torch.uint8)
    bamax = torch.empty(rows.shape[0], nb, dtype=torch.float32)

    def block_pass(r0: int, r1: int) -> None:
        bamax[r0:r1] = _block_amax(rows[r0:r1].reshape(r1 - r0, nb, block_size))

    _run_chunks(rows.shape[0], k, block_pass)
    if amax is None:
        amax = bamax.max()
        if not bool(torch.isfinite(amax)):
            amax = finite_amax(x)
    gs = []

    def work(r0: int, r1: int) -> None:
        xc = rows[r0:r1].reshape(r1 - r0, nb, block_size)
        if x.dtype == torch.float16:
            xc = xc.float()
        ba = bamax[r0:r1]
        y, s_b, g = recipe_func(xc, ba, amax, **kw)
        gs.append(g)
        codes = codes_f32(y.float())
        bad = ~torch.isfinite(ba)
        if bool(bad.any()):
            codes.masked_fill_(bad.unsqueeze(-1), 0)
            s_b = s_b.masked_fill(bad, 0x7F)
        data[r0:r1] = pack_rows(codes.view(r1 - r0, k))
        scales[r0:r1] = s_b

    _run_chunks(rows.shape[0], k, work)
    return data.view(*lead, k // 2), scales.view(*lead, nb), gs[0]


@functools.lru_cache(maxsize=None)
def _pair_values() -> torch.Tensor:
    """float32 [256, 2]: the E2M1 values of a packed byte's low and high nibble."""
    from .codecs import decode_table

    t = decode_table("e2m1")
    b = torch.arange(256)
    return torch.stack([t[b & 0xF], t[b >> 4]], dim=-1).contiguous()


def _dequantize_rows(data: torch.Tensor, scale_rows, block_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``vals * scale`` per block, from packed rows [R, K/2]; ``scale_rows(r0, r1, vals)`` returns the scaled
    float32 values (in place where it can)."""
    rows, k = data.shape[0], data.shape[1] * 2
    out = torch.empty(rows, k, dtype=dtype)
    pairs = _pair_values()

    def work(r0: int, r1: int) -> None:
        vals = pairs.index_select(0, data[r0:r1].flatten().int()).view(r1 - r0, k // block_size, block_size)
        vals = scale_rows(r0, r1, vals)
        out[r0:r1] = vals.reshape(r1 - r0, k)  # the copy rounds float32 to dtype, as .to(dtype) does

    _run_chunks(rows, k, work)
    return out


def dequantize_mx_e2m1(q, dtype: torch.dtype = torch.float32):
    """dequantize_mx for e2m1 MXTensors on CPU (None otherwise): decode(code) * 2^(byte-127) exactly
    (stretch: decode * 2^X / 3 rounded once)."""
    from .codecs import e8m0_to_float

    if q.elem != "e2m1" or q.data.device.type != "cpu" or not q.data.numel():
        return None
    data = q.data.view(torch.uint8)
    lead, kh = data.shape[:-1], data.shape[-1]
    scales = e8m0_to_float(q.scales).reshape(-1, q.scales.shape[-1])

    def scale_rows(r0: int, r1: int, vals: torch.Tensor) -> torch.Tensor:
        if q.scale_mode == "stretch":  # one rounding of decode * 2^X / 3, as dequantize_mx (float64 is exact)
            return (vals.double() * scales[r0:r1].double().unsqueeze(-1) / 3.0).float()
        return vals.mul_(scales[r0:r1].unsqueeze(-1))

    out = _dequantize_rows(data.reshape(-1, kh), scale_rows, q.block_size, dtype).view(*lead, 2 * kh)
    ax = q.axis % len(q.shape)
    return out.movedim(-1, ax) if ax != len(q.shape) - 1 else out


def dequantize_nvfp4_fast(q, dtype: torch.dtype = torch.float32):
    """dequantize_nvfp4 on CPU (None otherwise): fp32(fp32(e2m1 * e4m3) * global_scale), then dtype."""
    from .codecs import decode_table

    if q.data.device.type != "cpu" or not q.data.numel():
        return None
    data = q.data.view(torch.uint8)
    lead, kh = data.shape[:-1], data.shape[-1]
    sb = decode_table("e4m3")[q.scales.view(torch.uint8).reshape(-1, q.scales.shape[-1]).long()]
    gs = q.global_scale.to(dtype=torch.float32)

    def scale_rows(r0: int, r1: int, vals: torch.Tensor) -> torch.Tensor:
        return vals.mul_(sb[r0:r1].unsqueeze(-1)).mul_(gs)

    return _dequantize_rows(data.reshape(-1, kh), scale_rows, q.block_size, dtype).view(*lead, 2 * kh)
