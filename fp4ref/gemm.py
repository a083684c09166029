"""Reference FP4 GEMM (SPEC §8): ``out = a · bᵀ`` of two quantized (M, K) and (N, K) operands.

Per K-block j: ``P_j = C_a[:, j] · C_b[:, j]ᵀ`` on the E2M1 element values (multiples of 1/4 below 36·block
in magnitude, so every partial sum is exact even in a float32 matmul for blocks up to 2^16), times the outer product of the block
scales (exact in float64); the terms are added in float64 in increasing j. The constant factor of the
operands (NVFP4: ``fp32(global_scale_a * global_scale_b)``; MX "stretch": 1/3 per operand) multiplies the
sum, and the result is rounded once to ``out_dtype`` (round to odd on the way down, so that a
narrow output is not double rounded).
"""
from __future__ import annotations

import torch

from .codecs import check_bool, check_not_meta, check_same_device, decode_table
from .formats import E2M1, E4M3
from .layouts import unpack_fp4
from .mx import MXTensor, check_mx_tensor
from .nvfp4 import NVFP4Tensor, check_nvfp4_tensor

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_CHUNK_BYTES = 1 << 26  # bound on the float32 block-product buffer


def check_fp4_mm(a: object, b: object, out_dtype: object = torch.float32) -> str:
    """Argument checks shared by every backend of ``fp4_mm``; returns ``"mx"`` or ``"nvfp4"``."""
    kinds = {MXTensor: "mx", NVFP4Tensor: "nvfp4"}
    ka, kb = kinds.get(type(a)), kinds.get(type(b))
    if ka is None:
        raise TypeError(f"a must be an MXTensor (e2m1) or an NVFP4Tensor, got {type(a).__name__}")
    if kb is None:
        raise TypeError(f"b must be an MXTensor (e2m1) or an NVFP4Tensor, got {type(b).__name__}")
    if ka != kb:
        raise TypeError(f"a and b must have the same format, got a {type(a).__name__} and b {type(b).__name__}")
    for q, arg in ((a, "a"), (b, "b")):
        if ka == "mx":
            check_mx_tensor(q, arg)
            if q.elem != "e2m1":
                raise ValueError(f"{arg}.elem must be 'e2m1' (MXFP4) for fp4_mm, got {q.elem!r}")
        else:
            check_nvfp4_tensor(q, arg)
        if len(q.shape) != 2:
            raise ValueError(f"{arg} must be 2-D, got shape {tuple(q.shape)}")
        if ka == "mx" and q.axis % 2 != 1:
            raise ValueError(f"{arg} must be blocked along its last dimension (K), got axis={q.axis}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"K mismatch: a is {tuple(a.shape)} and b is {tuple(b.shape)}; fp4_mm computes a · bᵀ "
                         f"with a (M, K) and b (N, K)")
    if a.block_size != b.block_size:
        raise ValueError(f"a.block_size ({a.block_size}) and b.block_size ({b.block_size}) must be equal")
    if a.data.device != b.data.device:
        raise ValueError(f"a is on {a.data.device} and b is on {b.data.device}: a and b must be on one device")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of float32, bfloat16, float16, float64, got {out_dtype}")
    return ka




def check_linear_input(x: object) -> None:
    """``fp4_linear``'s activation: a float32/bfloat16/float16/float64 tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in OUT_DTYPES:
        raise TypeError(f"x must be float32, bfloat16, float16 or float64, got {x.dtype}")


def check_fp4_weight(w: object, arg: str = "w") -> str:
    """An FP4 weight (N, K) as the FP4 GEMMs take it: an MXTensor (elem 'e2m1', blocked along its last
    dimension) or an NVFP4Tensor, 2-D and valid in itself; returns ``"mx"`` or ``"nvfp4"``. TypeError or
    ValueError naming ``arg`` otherwise."""
    kind = {MXTensor: "mx", NVFP4Tensor: "nvfp4"}.get(type(w))
    if kind is None:
        raise TypeError(f"{arg} must be an MXTensor (e2m1) or an NVFP4Tensor, got {type(w).__name__}")
    if kind == "mx":
        check_mx_tensor(w, arg)
        if w.elem != "e2m1" or w.axis % len(w.shape) != len(w.shape) - 1:
            raise ValueError(f"{arg} must be MXFP4 (elem 'e2m1') blocked along its last dimension, got "
                             f"elem={w.elem!r}, axis={w.axis}")
    else:
        check_nvfp4_tensor(w, arg)
    if len(w.shape) != 2:
        raise ValueError(f"{arg} must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    return kind


def check_linear_operands(x: torch.Tensor, w_shape: tuple[int, int], w_device: torch.device,
                          bias: object) -> None:
    """``x`` (checked by :func:`check_linear_input`) against a checked weight of ``w_shape`` (N, K) on
    ``w_device``: x (..., K) on that device; bias None or a float tensor (N,) there."""
    if x.dim() == 0 or x.shape[-1] != w_shape[1]:
        raise ValueError(f"K mismatch: x has shape {tuple(x.shape)} and w has shape {tuple(w_shape)}; "
                         f"fp4_linear computes x @ wᵀ")
    if x.device != w_device:
        raise ValueError(f"x is on {x.device} and w is on {w_device}: x and w must be on one device")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError(f"bias must be a floating-point tensor or None, got {getattr(bias, 'dtype', type(bias))}")
        if tuple(bias.shape) != (w_shape[0],):
            raise ValueError(f"bias must have shape ({w_shape[0]},), got {tuple(bias.shape)}")
        check_same_device({"x": x, "bias": bias}, "fp4_linear's arguments")


def check_linear_args(x: object, w: object, bias: object = None) -> str:
    """Argument checks of ``fp4_linear`` (x (..., K) float, w (N, K) quantized, bias (N,)); returns the kind."""
    check_linear_input(x)
    check_not_meta(x, "x")
    kind = check_fp4_weight(w, "w")
    check_linear_operands(x, w.shape, w.data.device, bias)
    return kind


def _values_and_scales(q: MXTensor | NVFP4Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E2M1 element values float32 [nb, R, block], block scales float64 [R, nb]); NaN scale bytes give NaN."""
    codes = unpack_fp4(q.data.view(torch.uint8))
    rows, k = codes.shape
    nb = k // q.block_size
    vals = decode_table(E2M1, codes.device)[codes.long()].view(rows, nb, q.block_size).transpose(0, 1)
    table = decode_table("e8m0" if isinstance(q, MXTensor) else E4M3, codes.device)
    return vals, table[q.scales.view(torch.uint8).long()].double()


def exact_block_sum(a: MXTensor | NVFP4Tensor, b: MXTensor | NVFP4Tensor, *, absolute: bool = False) -> torch.Tensor:
    """``S[m, n] = Σ_j P_j[m, n] · sa[m, j] · sb[n, j]`` accumulated in float64 in increasing j (no global scales);
    ``absolute=True`` sums ``|a_k b_k|`` instead."""
    check_fp4_mm(a, b)
    check_bool(absolute, "absolute")
    va, sa = _values_and_scales(a)
    vb, sb = _values_and_scales(b)
    if absolute:
        va, sa, vb, sb = va.abs(), sa.abs(), vb.abs(), sb.abs()
    nb, m, _ = va.shape
    n = vb.shape[1]
    out = torch.zeros(m, n, dtype=torch.float64, device=va.device)
    step = max(1, _CHUNK_BYTES // max(1, 4 * m * n))
    for j0 in range(0, nb, step):
        j1 = min(nb, j0 + step)
        # Exact in float32 (also under TF32 / reduced precision: E2M1 values have one mantissa bit).
        p = torch.bmm(va[j0:j1], vb[j0:j1].transpose(1, 2))
        for j in range(j0, j1):
            out.add_(p[j - j0].double() * (sa[:, j, None] * sb[None, :, j]))
    return out


def _nudge_to_odd(hi: torch.Tensor, above: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
    """Round to odd: where the exact value lies strictly above/below ``hi`` and ``hi``'s last bit is even,
    step one ulp toward it (round-to-odd at p bits then RNE at <= p-2 bits is a correct single rounding)."""
    ibits = torch.int64 if hi.dtype == torch.float64 else torch.int32
    even = (hi.view(ibits) & 1) == 0
    fin = torch.isfinite(hi)
    up = torch.nextafter(hi, torch.full_like(hi, float("inf")))
    down = torch.nextafter(hi, torch.full_like(hi, float("-inf")))
    hi = torch.where(even & fin & above, up, hi)
    return torch.where(even & fin & below, down, hi)


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Veltkamp split of float64 x into hi + lo, each with at most 26 significant bits."""
    c = x * 134217729.0  # 2^27 + 1
    hi = c - (c - x)
    return hi, x - hi


def _times(s: torch.Tensor, g: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(RN(s·g), sign of s·g - RN(s·g)) for float64 s and a constant g of at most 26 significant bits (Dekker)."""
    p = s * g
    hi, lo = _split(s)
    return p, torch.sign((hi * g - p) + lo * g)


def round_to(hi: torch.Tensor, resid_sign: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Correctly rounds the exact value ``hi + r`` (``hi`` float64 = RN of it, ``resid_sign`` = sign of r) to
    ``out_dtype``. An exact zero is +0 (the accumulator starts at +0); a tiny nonzero value keeps its sign."""
    hi = hi + 0.0
    if out_dtype == torch.float64:
        return hi
    if resid_sign is not None:
        hi = _nudge_to_odd(hi, resid_sign > 0, resid_sign < 0)
    r = hi.float()
    if out_dtype != torch.float32:
        back = r.double()
        r = _nudge_to_odd(r, hi > back, hi < back).to(out_dtype)
    return r


def _mantissa_bits(dtype: torch.dtype) -> int:
    return {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10, torch.float64: 52}[dtype]


def fp4_mm_tolerance(a: MXTensor | NVFP4Tensor, b: MXTensor | NVFP4Tensor, *,
                     out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SPEC §8's bound for a fast backend: ``(K·2^-23 + 2^-p) · Σ_k |a_k b_k|`` (float64, (M, N)), p the output
    format's mantissa bits + 1; the constant factor (global scales, 1/3 per stretch operand) included."""
    kind = check_fp4_mm(a, b, out_dtype)
    s = exact_block_sum(a, b, absolute=True)
    if kind == "nvfp4":
        s = s * abs(float(a.global_scale.float().reshape(()) * b.global_scale.float().reshape(())))
    else:
        s = s / 3 ** ((a.scale_mode == "stretch") + (b.scale_mode == "stretch"))
    return (a.shape[1] * 2.0**-23 + 2.0 ** -(_mantissa_bits(out_dtype) + 1)) * s


def fp4_linear(x: torch.Tensor, w: MXTensor | NVFP4Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Weight-only FP4 (W4A16): ``x @ deq(w)ᵀ (+ bias)`` in float64, rounded once to ``x.dtype``.

    ``deq(w)`` = element · block scale (exact in float64); the NVFP4 global scale and the MX stretch 1/3
    multiply the float64 product afterwards, then the bias is added. The float64 dot products are not
    exact, so this is within a few float64 ulps of the exact value, not correctly rounded.
    """
    kind = check_linear_args(x, w, bias)
    vals, scales = _values_and_scales(w)
    wd = (vals.double() * scales.T.unsqueeze(-1)).transpose(0, 1).reshape(w.shape[0], w.shape[1])
    y = x.reshape(-1, x.shape[-1]).double() @ wd.T
    if kind == "nvfp4":
        y = y * float(w.global_scale.to(torch.float32))
    elif w.scale_mode == "stretch":
        y = y / 3.0
    if bias is not None:
        y = y + bias.to(device=y.device, dtype=torch.float64)
    return round_to(y, None, x.dtype).reshape(*x.shape[:-1], w.shape[0])


def fp4_mm(a: MXTensor | NVFP4Tensor, b: MXTensor | NVFP4Tensor, *,
           out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Correctly rounded ``out[m, n] = Σ_k deq(a)[m, k] · deq(b)[n, k]`` (SPEC §8), a (M, K), b (N, K).

    NVFP4: ``deq`` leaves out the global scales; the float64 sum is multiplied by
    ``fp32(global_scale_a * global_scale_b)`` exactly before the single rounding. MX ``stretch`` operands
    contribute their exact factor 1/3 the same way (the GEMM alpha of QuTLASS), not the float32-rounded
    ``code·2^X/3`` of ``dequantize``.
    """
    kind = check_fp4_mm(a, b, out_dtype)
    s = exact_block_sum(a, b)
    if kind == "nvfp4":
        ga = a.global_scale.to(device=s.device, dtype=torch.float32).reshape(())
        g = float(ga * b.global_scale.to(device=s.device, dtype=torch.float32).reshape(()))
        hi, sign = _times(s, g)
    else:
        # A quotient by 3 or 9 of a 53-bit S is never within half a float64 ulp of a narrower format's
        # midpoint (S - d·m is a nonzero multiple of ulp(S) > d/2 · ulp(S/d)), so RN(S/d) rounds once.
        d = 3 ** ((a.scale_mode == "stretch") + (b.scale_mode == "stretch"))
        hi, sign = (s, None) if d == 1 else (s / d, None)
    return round_to(hi, sign, out_dtype)


__all__ = ["fp4_mm", "fp4_linear", "fp4_mm_tolerance", "check_fp4_mm", "check_linear_args", "exact_block_sum", "round_to", "OUT_DTYPES"]
