"""Fake (meta) kernels of torch.ops.fp4ref_cuda: output shapes and dtypes without running anything, so that
the ops trace under torch.compile / torch.export."""
from __future__ import annotations

import torch
from torch.library import register_fake

from fp4ref.layouts import blocked_scale_size

from .ids import MX_ANY, NV_TE


_blocked = blocked_scale_size


@register_fake("fp4ref_cuda::encode")
def _encode(x, fmt, saturate):
    return torch.empty_like(x, dtype=torch.uint8), x.new_empty(1, dtype=torch.int32)


@register_fake("fp4ref_cuda::decode")
def _decode(codes, fmt):
    return torch.empty_like(codes, dtype=torch.float32), codes.new_empty(1, dtype=torch.int32)


@register_fake("fp4ref_cuda::pack_fp4")
def _pack(codes):
    torch._check(codes.shape[-1] % 2 == 0)
    return codes.new_empty(*codes.shape[:-1], codes.shape[-1] // 2), codes.new_empty(1, dtype=torch.int32)


@register_fake("fp4ref_cuda::unpack_fp4")
def _unpack(packed):
    return packed.new_empty(*packed.shape[:-1], packed.shape[-1] * 2)


@register_fake("fp4ref_cuda::swizzle_scales")
def _swizzle(scales):
    return scales.new_empty(_blocked(scales.shape[0], scales.shape[1]))


@register_fake("fp4ref_cuda::unswizzle_scales")
def _unswizzle(blocked, rows, cols):
    return blocked.new_empty(rows, cols)


@register_fake("fp4ref_cuda::finite_amax")
def _amax(x, hadamard_block, signs, rscale):
    return x.new_empty((), dtype=torch.float32)


@register_fake("fp4ref_cuda::block_hadamard")
def _hadamard(x, block_size, signs, rscale):
    return torch.empty_like(x, dtype=torch.float32)


@register_fake("fp4ref_cuda::quantize")
def _quantize(x, kind, fmt, mode, block_size, hadamard_block, signs, rscale, amax, swizzle):
    k = x.shape[-1]
    cols = k // block_size
    rows = x.numel() // k if k else 0
    data = x.new_empty(*x.shape[:-1], k if kind == MX_ANY else k // 2, dtype=torch.uint8)
    scales = x.new_empty(*x.shape[:-1], cols, dtype=torch.uint8)
    gs = x.new_empty((), dtype=torch.float32) if kind == NV_TE else x.new_empty(0, dtype=torch.float32)
    swz = x.new_empty(_blocked(rows, cols) if swizzle else 0, dtype=torch.uint8)
    return data, scales, gs, swz


@register_fake("fp4ref_cuda::dequantize")
def _dequantize(data, scales, global_scale, kind, fmt, block_size, stretch, dtype):
    k = data.shape[-1] * (1 if kind == MX_ANY else 2)
    return data.new_empty(*data.shape[:-1], k, dtype=dtype)
