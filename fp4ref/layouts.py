"""FP4 nibble packing, the 128x4 swizzled scale layout, and torch dtype views (SPEC §3)."""
from __future__ import annotations

import torch

from .codecs import check_int, check_not_meta, check_uint8_tensor


def _ceil_to(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack E2M1 codes (uint8 [..., K], K even, each < 16): element 2i -> low nibble, 2i+1 -> high nibble."""
    codes = check_not_meta(check_uint8_tensor(codes, "codes"), "codes")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(f"codes' last dimension must be even to pack two FP4 codes per byte, got shape "
                         f"{tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 0xF:
        raise ValueError("codes hold values > 15, which are not 4-bit codes")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_fp4: uint8 [..., K/2] -> uint8 [..., K], low nibble first."""
    packed = check_uint8_tensor(packed, "packed")
    if packed.dim() == 0:
        raise ValueError("packed must have at least one dimension")
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """(R, C) scale bytes -> 1-D cuBLAS/CUTLASS blocked layout, zero-padded to (128⌈R/128⌉, 4⌈C/4⌉).

    Tiles of 128x4 are 512 contiguous bytes, row-block-major; inside a tile
    ``offset = (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4)``.
    """
    scales = check_uint8_tensor(scales, "scales")
    if scales.dim() != 2:
        raise ValueError(f"scales must be 2-D (rows, K/block), got shape {tuple(scales.shape)}")
    rows, cols = scales.shape
    rp, cp = padded_scale_shape(rows, cols)
    padded = scales.new_zeros(rp, cp)
    padded[:rows, :cols] = scales
    # (rb, 4 groups of 32 rows, 32, cb, 4) -> (rb, cb, 32, 4 groups, 4)
    t = padded.view(rp // 128, 4, 32, cp // 4, 4).permute(0, 3, 2, 1, 4)
    return t.reshape(-1)


def padded_scale_shape(rows: int, cols: int) -> tuple[int, int]:
    """The 128x4 blocked layout pads a (rows, cols) scale matrix to (128⌈rows/128⌉, 4⌈cols/4⌉)."""
    return _ceil_to(rows, 128), _ceil_to(cols, 4)


def blocked_scale_size(rows: int, cols: int) -> int:
    """Bytes of the 128x4 blocked layout of a (rows, cols) scale matrix."""
    rp, cp = padded_scale_shape(rows, cols)
    return rp * cp


def check_unswizzle_args(blocked: object, rows: object, cols: object) -> tuple[torch.Tensor, int, int]:
    """Argument checks of ``unswizzle_scales`` shared by both backends; returns (blocked as uint8, rows, cols)."""
    blocked = check_uint8_tensor(blocked, "blocked")
    rows, cols = check_int(rows, "rows", min=0), check_int(cols, "cols", min=0)
    rp, cp = padded_scale_shape(rows, cols)
    if blocked.dim() != 1 or blocked.numel() != rp * cp:
        raise ValueError(f"blocked must be 1-D with {rp * cp} bytes for a ({rows}, {cols}) scale matrix "
                         f"(padded to ({rp}, {cp})), got shape {tuple(blocked.shape)}")
    return blocked, rows, cols


def unswizzle_scales(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of swizzle_scales: 1-D blocked bytes -> uint8 [rows, cols] (padding dropped)."""
    blocked, rows, cols = check_unswizzle_args(blocked, rows, cols)
    rp, cp = padded_scale_shape(rows, cols)
    t = blocked.view(rp // 128, cp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(rp, cp)
    return t[:rows, :cols].contiguous()


def as_float4_x2(packed: torch.Tensor) -> torch.Tensor:
    """View packed FP4 bytes as ``torch.float4_e2m1fn_x2`` (no copy)."""
    return check_uint8_tensor(packed, "packed").view(torch.float4_e2m1fn_x2)


def as_e8m0(scales: torch.Tensor) -> torch.Tensor:
    """View E8M0 scale bytes as ``torch.float8_e8m0fnu`` (no copy)."""
    return check_uint8_tensor(scales, "scales").view(torch.float8_e8m0fnu)


def as_e4m3(scales: torch.Tensor) -> torch.Tensor:
    """View E4M3 scale bytes as ``torch.float8_e4m3fn`` (no copy)."""
    return check_uint8_tensor(scales, "scales").view(torch.float8_e4m3fn)
