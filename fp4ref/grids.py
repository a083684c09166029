"""Quantization grids for GPTQ (SPEC §10): fit scales, quantize a column, round a matrix, encode for export.

A grid splits each row of a weight ``W`` (rows, cols) into groups of ``group_size`` consecutive columns,
each with its own scale. ``fit(W)`` fits every group's scale on a whole matrix; ``quantize_column(w, c, fitted)``
rounds one column with the scales of the group of column ``c`` (so GPTQ can go column by column);
``rtn(W)`` is ``fit`` + round everything; ``encode(Ŵ, fitted)`` gives the export tensor.

The FP4 grids reuse the core's arithmetic bit for bit: a working column (float64 inside GPTQ) is rounded
to float32 (the formats' input precision) and then quantized exactly as ``quantize_mx`` /
``quantize_nvfp4`` do; its value is the float32 dequantized value, so ``encode(Ŵ).dequantize() == Ŵ``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .codecs import (check_bool, check_int, check_not_meta, check_real, decode_table, e8m0_to_float, encode,
                     magnitude_codes)
from .formats import E2M1, E4M3, ELEMENT_FORMATS, get_format
from .layouts import pack_fp4
from .mx import SCALE_MODES, MXTensor, inverse_scale, scale_bytes
from .nvfp4 import NVFP4Tensor, f32, finite_amax, te_block_scale, te_element_scale, te_encode_scale

SCALE_SEARCHES = ("absmax", "mse")
MX_MSE_STEPS = (-2, -1, 1, 2)  # E8M0 exponent offsets tried around the absmax exponent
NV_MSE_STEPS = tuple(range(-10, 0)) + (1, 2)  # E4M3 code offsets (10 below = about half the scale)
FLT_MAX = torch.finfo(torch.float32).max


def _check_matrix(W: object, arg: str = "W") -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(W).__name__}")
    if not W.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor, got {W.dtype}")
    if W.dim() != 2:
        raise ValueError(f"{arg} must be 2-D (rows, cols), got shape {tuple(W.shape)}")
    return check_not_meta(W, arg)


def _check_search(scale_search: str) -> str:
    if not isinstance(scale_search, str) or scale_search not in SCALE_SEARCHES:
        raise ValueError(f"scale_search={scale_search!r} is not one of {SCALE_SEARCHES}")
    return scale_search


def _group_cols(t: torch.Tensor, col0: int, ncols: int, g: int) -> torch.Tensor:
    """The per-group tensor ``t`` (rows, n_groups) expanded to columns col0 .. col0+ncols (a view for one column)."""
    if ncols == 1:
        return t[:, col0 // g:col0 // g + 1]
    return t[:, torch.arange(col0, col0 + ncols, device=t.device) // g]


class Grid:
    """Common interface; subclasses set ``group_size`` and implement the ``_`` methods."""

    group_size: int
    _fitted_type: type = object

    def _scale_tensors(self, fitted) -> dict[str, torch.Tensor]:
        """The per-group tensors of ``fitted`` (name -> (rows, n_groups) tensor)."""
        raise NotImplementedError

    def check_fitted(self, fitted: object, rows: int, cols: int | None, device: torch.device,
                     arg: str = "fitted") -> None:
        """TypeError/ValueError unless ``fitted`` is this grid's scales for a (rows, cols) matrix on ``device``
        (``cols=None``: any number of groups)."""
        if not isinstance(fitted, self._fitted_type):
            raise TypeError(f"{arg} must be the {self._fitted_type.__name__} that this grid's fit() returns, got "
                            f"{type(fitted).__name__}")
        for name, t in self._scale_tensors(fitted).items():
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise ValueError(f"{arg}.{name} must be a 2-D (rows, groups) tensor, got {getattr(t, 'shape', t)!r}")
            if t.shape[0] != rows or (cols is not None and t.shape[1] != self.n_groups(cols)):
                want = (rows, "any" if cols is None else self.n_groups(cols))
                raise ValueError(f"{arg}.{name} has shape {tuple(t.shape)}, expected {want} for a matrix of "
                                 f"{rows} rows" + ("" if cols is None else f" and {cols} columns"))
            if t.device != device:
                raise ValueError(f"{arg}.{name} is on {t.device} but the weights are on {device}")

    def _check_column(self, w_col: object, col_index: object, fitted) -> None:
        if not isinstance(w_col, torch.Tensor) or not w_col.is_floating_point() or w_col.dim() != 1:
            raise TypeError(f"w_col must be a 1-D floating-point tensor, got {getattr(w_col, 'shape', type(w_col))}")
        check_int(col_index, "col_index", min=0)
        self.check_fitted(fitted, w_col.shape[0], None, w_col.device)
        groups = next(iter(self._scale_tensors(fitted).values())).shape[1]
        if col_index // self.group_size >= groups:
            raise ValueError(f"col_index={col_index} is past the {groups} groups of fitted")

    def n_groups(self, cols: int) -> int:
        return -(-cols // self.group_size)

    def check_cols(self, cols: int) -> None:
        if cols % self.group_size:
            raise ValueError(f"W has {cols} columns, not a multiple of the group size {self.group_size}")

    def fit(self, W: torch.Tensor):
        """Scales of every group, fitted on the whole matrix ``W`` (rows, cols)."""
        W = _check_matrix(W)
        self.check_cols(W.shape[1])
        return self._fit(W)

    def refit_group(self, fitted, W_group: torch.Tensor, group: int) -> None:
        """Refits group ``group``'s scales in place from ``W_group`` (rows, ≤ group_size): dynamic scales."""
        W_group = _check_matrix(W_group, "W_group")
        check_int(group, "group", min=0)
        self.check_fitted(fitted, W_group.shape[0], None, W_group.device)
        groups = next(iter(self._scale_tensors(fitted).values())).shape[1]
        if group >= groups:
            raise ValueError(f"group={group} is past the {groups} groups of fitted")
        if not 1 <= W_group.shape[1] <= self.group_size:
            raise ValueError(f"W_group must have 1 to {self.group_size} columns, got {W_group.shape[1]}")
        self._refit_group(fitted, W_group, group)

    def quantize_column(self, w_col: torch.Tensor, col_index: int, fitted) -> torch.Tensor:
        """Grid value of each element of column ``col_index`` (shape (rows,)), in ``w_col``'s dtype."""
        self._check_column(w_col, col_index, fitted)
        return self._values(w_col.unsqueeze(1), col_index, fitted).squeeze(1).to(w_col.dtype)

    def quantize(self, W: torch.Tensor, fitted) -> torch.Tensor:
        """Every column of ``W`` rounded with ``fitted`` (the matrix version of quantize_column)."""
        W = _check_matrix(W)
        self.check_fitted(fitted, W.shape[0], W.shape[1], W.device)
        return self._values(W, 0, fitted).to(W.dtype)

    def rtn(self, W: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest of ``W`` with scales fitted on ``W`` itself, dequantized, in ``W``'s dtype."""
        W = _check_matrix(W)
        return self.quantize(W, self.fit(W))

    def group_errors(self, W: torch.Tensor, fitted) -> torch.Tensor:
        """Σ (w − Q(w))² per (row, group), in float64: the MSE search's objective."""
        W = _check_matrix(W)
        d = (W.double() - self.quantize(W, fitted).double()) ** 2
        rows, cols = W.shape
        pad = self.n_groups(cols) * self.group_size - cols
        return torch.nn.functional.pad(d, (0, pad)).reshape(rows, -1, self.group_size).sum(-1)

    def encode(self, W_hat: torch.Tensor, fitted=None, *, strict: bool = True):
        """The export tensor of ``W_hat`` with ``fitted``'s scales (refitted on ``W_hat`` if None).

        With ``strict`` a ``W_hat`` that is not on the grid raises ValueError instead of being re-rounded.
        """
        W_hat = _check_matrix(W_hat, "W_hat")
        check_bool(strict, "strict")
        if fitted is None:
            fitted = self.fit(W_hat)
        self.check_fitted(fitted, W_hat.shape[0], W_hat.shape[1], W_hat.device)
        q = self._encode(W_hat, fitted)
        if strict and not torch.equal(q.dequantize(W_hat.dtype), W_hat):
            raise ValueError("W_hat is not on the grid of the given scales: encoding would re-round it")
        return q


# --- integer grid ----------------------------------------------------------------------------------------
@dataclass
class IntScales:
    scale: torch.Tensor  # (rows, n_groups): value = scale * (code - zero)
    zero: torch.Tensor  # (rows, n_groups), integral


@dataclass
class IntTensor:
    """Integer-quantized matrix: ``codes`` uint8 (rows, cols) in [0, 2^bits); per group ``scales``, ``zeros``."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    shape: torch.Size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        idx = torch.arange(self.shape[1], device=self.codes.device) // self.group_size
        s, z = self.scales[:, idx], self.zeros[:, idx]
        return (s * (self.codes.to(s.dtype) - z)).to(dtype)


class IntGrid(Grid):
    """gptq.py's min/max integer grid: ``Q(x) = s·(clamp(round(x/s) + z, 0, 2^bits − 1) − z)``.

    Symmetric: ``s = 2·max|x| / (2^bits − 1)``, ``z = 2^(bits−1)``; asymmetric: range [min(x, 0), max(x, 0)],
    ``z = round(−min/s)``; an all-zero group gets the range [−1, 1]. ``group_size=None``: one group per row.
    All arithmetic runs in ``dtype`` (float64; float32 is gptq.py's own precision), whatever the input's.
    """

    def __init__(self, bits: int = 4, group_size: int | None = 128, symmetric: bool = True,
                 dtype: torch.dtype = torch.float64):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size < 1):
            raise ValueError(f"group_size must be a positive int or None (per row), got {group_size!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        check_bool(symmetric, "symmetric")
        self.bits, self.symmetric, self.maxq, self.dtype = bits, symmetric, 2**bits - 1, dtype
        self._group_size = group_size

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return self._group_size if self._group_size is not None else 1 << 62

    def __repr__(self) -> str:
        return f"IntGrid(bits={self.bits}, group_size={self._group_size}, symmetric={self.symmetric})"

    def check_cols(self, cols: int) -> None:  # a partial last group is allowed, as in gptq.py
        pass

    def n_groups(self, cols: int) -> int:
        return 1 if self._group_size is None else -(-cols // self._group_size)

    def group_errors(self, W: torch.Tensor, fitted) -> torch.Tensor:
        if self._group_size is None:
            return ((W.double() - self.quantize(W, fitted).double()) ** 2).sum(1, keepdim=True)
        return super().group_errors(W, fitted)

    _fitted_type = IntScales

    def _scale_tensors(self, fitted: IntScales) -> dict[str, torch.Tensor]:
        return {"scale": fitted.scale, "zero": fitted.zero}

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.dtype)
        zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        xmin, xmax = torch.minimum(x.amin(1), zero), torch.maximum(x.amax(1), zero)
        if self.symmetric:
            # gptq.py sets xmin = -xmax only where xmin < 0, which clips all-positive groups to 7/15 of
            # their range; the evident intent (a grid symmetric about 0) is used instead.
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = -xmax
        dead = (xmin == 0) & (xmax == 0)
        xmin, xmax = torch.where(dead, -1.0, xmin), torch.where(dead, 1.0, xmax)
        scale = (xmax - xmin) / self.maxq
        z = torch.full_like(scale, (self.maxq + 1) / 2) if self.symmetric else torch.round(-xmin / scale)
        return scale, z

    def _spans(self, cols: int):
        g = self.group_size
        return [(c, min(c + g, cols)) for c in range(0, cols, g)] if self._group_size else [(0, cols)]

    def _fit(self, W: torch.Tensor) -> IntScales:
        parts = [self._params(W[:, a:b]) for a, b in self._spans(W.shape[1])]
        return IntScales(torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1))

    def _refit_group(self, fitted: IntScales, W_group: torch.Tensor, group: int) -> None:
        s, z = self._params(W_group)
        fitted.scale[:, group], fitted.zero[:, group] = s, z

    def _index(self, col0: int, cols: int, fitted: IntScales) -> tuple[torch.Tensor, torch.Tensor]:
        if self._group_size is None:
            return fitted.scale[:, :1], fitted.zero[:, :1]
        return (_group_cols(fitted.scale, col0, cols, self._group_size),
                _group_cols(fitted.zero, col0, cols, self._group_size))

    def _codes(self, W: torch.Tensor, col0: int, fitted: IntScales) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, z = self._index(col0, W.shape[1], fitted)
        return torch.clamp(torch.round(W.to(self.dtype) / s) + z, 0, self.maxq), s, z

    def _values(self, W: torch.Tensor, col0: int, fitted: IntScales) -> torch.Tensor:
        q, s, z = self._codes(W, col0, fitted)
        return s * (q - z)

    def quantize_column(self, w_col: torch.Tensor, col_index: int, fitted: IntScales) -> torch.Tensor:
        self._check_column(w_col, col_index, fitted)
        g = 0 if self._group_size is None else col_index // self._group_size
        s, z = fitted.scale[:, g], fitted.zero[:, g]
        return (s * (torch.clamp(torch.round(w_col.to(self.dtype) / s) + z, 0, self.maxq) - z)).to(w_col.dtype)

    def _encode(self, W_hat: torch.Tensor, fitted: IntScales) -> IntTensor:
        q, _, _ = self._codes(W_hat, 0, fitted)
        gs = W_hat.shape[1] if self._group_size is None else self._group_size
        return IntTensor(q.to(torch.uint8), fitted.scale, fitted.zero, self.bits, gs, W_hat.shape)


# --- MX grid ---------------------------------------------------------------------------------------------
@dataclass
class MXScales:
    """E8M0 bytes (rows, n_groups) and their exact float32 ``2^-X`` / ``2^X`` (GPTQ reads them per column)."""

    scales: torch.Tensor
    inv: torch.Tensor = field(init=False, repr=False)
    dec: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.inv, self.dec = inverse_scale(self.scales), e8m0_to_float(self.scales)

    def set_group(self, group: int, scales: torch.Tensor) -> None:
        self.scales[:, group] = scales
        self.inv[:, group], self.dec[:, group] = inverse_scale(scales), e8m0_to_float(scales)


class MXGrid(Grid):
    """OCP MX grid: E8M0 scale per block of ``block_size`` chosen by ``scale_mode`` (SPEC §4), elements
    ``elem``. ``scale_search="mse"`` tries scale exponents around the mode's and keeps the one with the
    least squared error per block (ties keep the mode's own)."""

    def __init__(self, elem: str = "e2m1", block_size: int = 32, scale_mode: str = "floor",
                 scale_search: str = "absmax"):
        self.fmt = get_format(elem, arg="elem", allowed=ELEMENT_FORMATS)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode={scale_mode!r} is not one of {SCALE_MODES}")
        if scale_mode == "stretch" and self.fmt.name != "e2m1":
            raise ValueError("scale_mode='stretch' is defined for elem='e2m1' only")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1 or (
                self.fmt.name == "e2m1" and block_size % 2):
            raise ValueError(f"block_size must be a positive int (even for e2m1), got {block_size!r}")
        self.elem, self.group_size, self.scale_mode = self.fmt.name, block_size, scale_mode
        self.scale_search = _check_search(scale_search)

    def __repr__(self) -> str:
        return (f"MXGrid(elem={self.elem!r}, block_size={self.group_size}, scale_mode={self.scale_mode!r}, "
                f"scale_search={self.scale_search!r})")

    _fitted_type = MXScales

    def _scale_tensors(self, fitted: MXScales) -> dict[str, torch.Tensor]:
        return {"scales": fitted.scales}

    def _absmax_bytes(self, W: torch.Tensor) -> torch.Tensor:
        rows = W.shape[0]
        return scale_bytes(W.float().abs().reshape(rows, -1, self.group_size).amax(-1), self.fmt, self.scale_mode)

    def _fit(self, W: torch.Tensor) -> MXScales:
        fitted = MXScales(self._absmax_bytes(W))
        if self.scale_search == "mse":
            fitted = self._mse(W, fitted)
        return fitted

    def _mse(self, W: torch.Tensor, base: MXScales) -> MXScales:
        best, err = base.scales.clone(), self.group_errors(W, base)
        movable = (base.scales != 0) & (base.scales != 0xFF)  # zero and non-finite blocks keep their byte
        for step in MX_MSE_STEPS:
            cand = (base.scales.to(torch.int32) + step).clamp(0, 254).to(torch.uint8)
            e = self.group_errors(W, MXScales(cand))
            better = movable & (e < err)
            best, err = torch.where(better, cand, best), torch.where(better, e, err)
        return MXScales(best)

    def _refit_group(self, fitted: MXScales, W_group: torch.Tensor, group: int) -> None:
        if W_group.shape[1] != self.group_size:
            raise ValueError(f"W_group must have {self.group_size} columns, got {W_group.shape[1]}")
        fitted.set_group(group, self._fit(W_group).scales[:, 0])

    def _codes_values(self, W: torch.Tensor, col0: int, fitted: MXScales) -> tuple[torch.Tensor, torch.Tensor]:
        x = W.float()
        n, g = W.shape[1], self.group_size
        a = x.abs() * _group_cols(fitted.inv, col0, n, g)
        if self.scale_mode == "stretch":
            a = a * 3.0
        codes = magnitude_codes(a, self.fmt, saturate=True).to(torch.uint8)
        codes |= torch.signbit(x).to(torch.uint8) << (self.fmt.ebits + self.fmt.mbits)
        vals = decode_table(self.fmt, W.device)[codes.long()] * _group_cols(fitted.dec, col0, n, g)
        if self.scale_mode == "stretch":
            vals = vals / 3.0
        return codes, vals

    def _values(self, W: torch.Tensor, col0: int, fitted: MXScales) -> torch.Tensor:
        return self._codes_values(W, col0, fitted)[1]

    def _encode(self, W_hat: torch.Tensor, fitted: MXScales) -> MXTensor:
        codes, _ = self._codes_values(W_hat, 0, fitted)
        data = pack_fp4(codes) if self.elem == "e2m1" else codes
        return MXTensor(data, fitted.scales.clone(), self.elem, self.group_size, W_hat.shape, self.scale_mode, 1)


# --- NVFP4 grid ------------------------------------------------------------------------------------------
@dataclass
class NVFP4Scales:
    scales: torch.Tensor  # uint8 E4M3 block scales (rows, n_groups)
    global_scale: torch.Tensor  # float32 scalar, decode direction
    s_enc: torch.Tensor  # float32 scalar, encode direction (te) or 1/pts (torchao)


class NVFP4Grid(Grid):
    """NVFP4 grid: E2M1 elements, an E4M3 scale per block of 16, a float32 tensor scale from ``global_amax``
    (default: max |W| of the matrix given to ``fit``), by ``recipe`` "te" or "torchao" (SPEC §5).
    ``scale_search="mse"`` tries E4M3 block-scale codes around the recipe's and keeps the least squared error."""

    RECIPES = ("te", "torchao")

    def __init__(self, recipe: str = "te", block_size: int = 16, global_amax: float | torch.Tensor | None = None,
                 scale_search: str = "absmax"):
        if recipe not in self.RECIPES:
            raise ValueError(f"recipe={recipe!r} is not one of {self.RECIPES} for GPTQ grids")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2 or block_size % 2:
            raise ValueError(f"block_size must be a positive even int, got {block_size!r}")
        if isinstance(global_amax, torch.Tensor):
            if global_amax.numel() != 1 or global_amax.dtype == torch.bool or global_amax.is_complex():
                raise TypeError(f"global_amax must be a real number or a real scalar tensor, got "
                                f"{global_amax.dtype} of shape {tuple(global_amax.shape)}")
            if global_amax.device.type == "meta":
                raise ValueError("global_amax is on the meta device (fp4ref's ops are not supported on meta tensors)")
            check_real(float(global_amax), "global_amax", min=0.0)
        elif global_amax is not None:
            check_real(global_amax, "global_amax", min=0.0)
        self.recipe, self.group_size, self.global_amax = recipe, block_size, global_amax
        self.scale_search = _check_search(scale_search)

    def __repr__(self) -> str:
        return (f"NVFP4Grid(recipe={self.recipe!r}, block_size={self.group_size}, global_amax={self.global_amax!r}, "
                f"scale_search={self.scale_search!r})")

    _fitted_type = NVFP4Scales

    def _scale_tensors(self, fitted: NVFP4Scales) -> dict[str, torch.Tensor]:
        return {"scales": fitted.scales}

    def _globals(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amax = finite_amax(W) if self.global_amax is None else f32(float(self.global_amax), W.device)
        if self.recipe == "te":
            s_enc = te_encode_scale(amax)
            return s_enc, 1.0 / s_enc
        pts = amax / f32(2688.0, W.device)
        return 1.0 / pts, pts

    def _block_scales(self, bamax: torch.Tensor, s_enc: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
        if self.recipe == "te":
            return te_block_scale(bamax, s_enc)
        bs = bamax / f32(6.0, bamax.device)
        return encode(torch.clamp(bs / global_scale, min=2.0 ** -6, max=448.0), E4M3, saturate=True)

    def _enc(self, sb: torch.Tensor, fitted: NVFP4Scales) -> torch.Tensor:
        if self.recipe == "te":
            return te_element_scale(sb, fitted.global_scale)
        return fitted.s_enc / decode_table(E4M3, sb.device)[sb.long()]

    def _fit(self, W: torch.Tensor) -> NVFP4Scales:
        s_enc, gs = self._globals(W)
        rows = W.shape[0]
        bamax = W.float().abs().reshape(rows, -1, self.group_size).amax(-1)
        fitted = NVFP4Scales(self._block_scales(bamax, s_enc, gs), gs.reshape(()), s_enc.reshape(()))
        if self.scale_search == "mse":
            fitted = self._mse(W, fitted)
        return fitted

    def _mse(self, W: torch.Tensor, base: NVFP4Scales) -> NVFP4Scales:
        best, err = base.scales.clone(), self.group_errors(W, base)
        movable = base.scales != 0  # an all-zero block is exact already
        for step in NV_MSE_STEPS:
            cand = (base.scales.to(torch.int32) + step).clamp(1, E4M3.max_code).to(torch.uint8)
            e = self.group_errors(W, NVFP4Scales(cand, base.global_scale, base.s_enc))
            better = movable & (e < err)
            best, err = torch.where(better, cand, best), torch.where(better, e, err)
        return NVFP4Scales(best, base.global_scale, base.s_enc)

    def _refit_group(self, fitted: NVFP4Scales, W_group: torch.Tensor, group: int) -> None:
        """Block scale from the group's current weights; the tensor scale stays as fitted on the whole W."""
        if W_group.shape[1] != self.group_size:
            raise ValueError(f"W_group must have {self.group_size} columns, got {W_group.shape[1]}")
        bamax = W_group.float().abs().amax(1, keepdim=True)
        part = NVFP4Scales(self._block_scales(bamax, fitted.s_enc, fitted.global_scale),
                           fitted.global_scale, fitted.s_enc)
        if self.scale_search == "mse":
            part = self._mse(W_group, part)
        fitted.scales[:, group] = part.scales[:, 0]

    def _codes_values(self, W: torch.Tensor, col0: int, fitted: NVFP4Scales) -> tuple[torch.Tensor, torch.Tensor]:
        x = W.float()
        sb = _group_cols(fitted.scales, col0, W.shape[1], self.group_size)
        y = x * self._enc(sb, fitted)
        codes = magnitude_codes(y.abs(), E2M1, saturate=True).to(torch.uint8)
        codes |= torch.signbit(y).to(torch.uint8) << 3
        vals = decode_table(E2M1, W.device)[codes.long()] * decode_table(E4M3, W.device)[sb.long()]
        return codes, vals * fitted.global_scale

    def _values(self, W: torch.Tensor, col0: int, fitted: NVFP4Scales) -> torch.Tensor:
        return self._codes_values(W, col0, fitted)[1]

    def _encode(self, W_hat: torch.Tensor, fitted: NVFP4Scales) -> NVFP4Tensor:
        codes, _ = self._codes_values(W_hat, 0, fitted)
        return NVFP4Tensor(pack_fp4(codes), fitted.scales.clone(), fitted.global_scale.clone(), self.recipe,
                           W_hat.shape, self.group_size)


INT_FORMATS = ("int4", "int3", "int2")
GRID_FORMATS = ("mxfp4", "nvfp4") + INT_FORMATS
INT_GROUP = 32  # the MR-GPTQ paper's INT4 baseline groups


def make_grid(fmt: str, *, scale_search: str = "absmax", global_amax: float | None = None,
              group_size: int | None = None, symmetric: bool = True) -> Grid:
    """The weight grid of a format name, as the whole-model pipelines use it: MXFP4 (E2M1, 32, OCP floor scales),
    NVFP4 (TE recipe, 16; tensor scale from ``global_amax``, default the matrix's own amax), intB for B = 4, 3, 2
    (gptq.py's min-max grid, groups of ``group_size`` columns, default 32 like the MR-GPTQ paper's INT4 baseline,
    ``symmetric`` or not). The FP4 formats fix their block size and symmetry."""
    if fmt in INT_FORMATS:
        return IntGrid(bits=int(fmt[3:]), group_size=INT_GROUP if group_size is None else group_size,
                       symmetric=symmetric)
    if fmt not in GRID_FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {GRID_FORMATS}")
    if group_size is not None or symmetric is not True:
        raise ValueError(f"group_size and symmetric are for the int formats {INT_FORMATS}; {fmt} fixes its blocks "
                         f"(got group_size={group_size!r}, symmetric={symmetric!r})")
    if fmt == "mxfp4":
        return MXGrid("e2m1", 32, "floor", scale_search=scale_search)
    return NVFP4Grid("te", 16, global_amax, scale_search=scale_search)


__all__ = [
    "GRID_FORMATS",
    "INT_FORMATS",
    "SCALE_SEARCHES",
    "Grid",
    "IntGrid",
    "IntScales",
    "IntTensor",
    "MXGrid",
    "MXScales",
    "NVFP4Grid",
    "NVFP4Scales",
    "make_grid",
]
