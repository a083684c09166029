"""FP4 linear layers: a quantized weight, an optional fused block rotation, optional W4A4.

``FP4Linear`` computes ``y = Q_a(x·R) · Q_w(W·R)ᵀ + b`` where R is the block Hadamard of SPEC §7 (R = I
without rotation), ``Q_w`` quantizes the weight once, offline (MXFP4 or NVFP4), and ``Q_a`` (W4A4 only)
quantizes each input online with the same format. Because R is orthogonal, ``x·R·(W·R)ᵀ = x·Wᵀ``.
Every op goes through ``fp4ref.ops`` so that CUDA tensors reach the fp4ref_cuda backend.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable

import torch
from torch import nn

from . import gemm, hadamard, mx, nvfp4
from .codecs import check_bool, check_float_dtype, check_int

FORMATS = ("mxfp4", "nvfp4")
DEFAULT_BLOCK = {"mxfp4": 32, "nvfp4": 16}


def _op(name: str):
    """``fp4ref.ops.<name>`` (dispatching to the CUDA backend), or the reference function if ops lacks it."""
    try:
        from . import ops
    except ImportError:
        ops = None
    fallback = {"block_hadamard": hadamard.block_hadamard, "fp4_mm": gemm.fp4_mm, "fp4_linear": gemm.fp4_linear,
                "quantize_mx": mx.quantize_mx, "quantize_nvfp4": nvfp4.quantize_nvfp4}
    return getattr(ops, name, None) or fallback[name]


@functools.cache
def _ops_module():
    from . import ops

    return ops


def _quantize(x: torch.Tensor, fmt: str, block_size: int, scale_mode: str, recipe: str,
              global_amax: torch.Tensor | None = None):
    if fmt == "mxfp4":
        return _op("quantize_mx")(x, "e2m1", block_size=block_size, scale_mode=scale_mode)
    return _op("quantize_nvfp4")(x, recipe=recipe, block_size=block_size, global_amax=global_amax)


COMPUTE = ("exact", "dequantized")


def fake_quantize_activations(x: torch.Tensor, fmt: str, global_amax: torch.Tensor | float | None = None, *,
                              block_size: int | None = None, scale_mode: str = "floor", recipe: str = "te"
                              ) -> torch.Tensor:
    """RTN of ``x`` along its last dim in ``fmt`` (MXFP4, default floor scales / 32; NVFP4, default TE recipe / 16,
    tensor scale from ``global_amax`` or else ``x``'s own amax), computed in float32, dequantized to ``x``'s dtype."""
    if fmt not in FORMATS:
        raise ValueError(f"activation quantization needs fmt 'mxfp4' or 'nvfp4', got {fmt!r}")
    bs = DEFAULT_BLOCK[fmt] if block_size is None else block_size
    return _quantize(x.float(), fmt, bs, scale_mode, recipe, global_amax).dequantize().to(x.dtype)


class FP4Linear(nn.Module):
    """``nn.Linear`` with an FP4 weight (MXFP4 or NVFP4) and an optional block rotation fused into it.

    Buffers: ``weight_packed`` (uint8 [N, K/2]), ``weight_scale`` (uint8 E8M0/E4M3 [N, K/block]),
    ``weight_global_scale`` (NVFP4, float32, decode direction), ``rotation_signs`` (if signs are used);
    ``weight`` (rotated, full precision) instead of the first three when ``fmt=None``.
    W4A4 quantizes each call's rotated input (flattened to (tokens, K)) with the weight's format, block size
    and scale mode/recipe; NVFP4's tensor scale comes from ``act_global_amax`` (a static, calibrated amax, as
    serving stacks store it: buffer ``act_global_amax``) or else from that input's own amax (per call).

    ``compute="exact"`` (default) runs ``fp4ref.ops``: the reference GEMM of SPEC §8 on the CPU (float64,
    rounded once), the FP4 GEMM on a GPU; the output has the input's dtype. ``compute="dequantized"`` is the
    calibration pipelines' fast simulation, ``F.linear(Q_a(x·R), deq(W), b)`` in float32 with the dequantized
    weight cached (its bits are ``dequantize()``'s; the product rounds as float32 GEMMs do); it returns float32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, fmt: str | None = "mxfp4",
                 block_size: int | None = None, scale_mode: str = "floor", recipe: str = "te",
                 rotation: int | None = None, signs: torch.Tensor | None = None,
                 quantize_activations: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, act_global_amax: float | None = None,
                 compute: str = "exact") -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features", min=1)
        out_features = check_int(out_features, "out_features", min=1)
        check_bool(bias, "bias")
        check_bool(quantize_activations, "quantize_activations")
        check_float_dtype(dtype, allowed=(torch.float32, torch.float64, torch.bfloat16, torch.float16))
        if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
            raise ValueError(f"fmt must be one of {FORMATS} or None (no quantization), got {fmt!r}")
        if fmt is None and quantize_activations:
            raise ValueError("quantize_activations=True needs a format (fmt='mxfp4' or 'nvfp4')")
        if fmt == "mxfp4" and (not isinstance(scale_mode, str) or scale_mode not in mx.SCALE_MODES):
            raise ValueError(f"scale_mode must be one of {mx.SCALE_MODES}, got {scale_mode!r}")
        if fmt == "nvfp4":
            nvfp4.check_recipe(recipe)
        if block_size is not None:  # (0 is an error, not "the default")
            mx.check_block_size(block_size, need_even=True)
        if rotation is not None:
            hadamard.check_block_size(rotation, "rotation")
            if in_features % rotation:
                raise ValueError(f"in_features ({in_features}) must be a multiple of rotation ({rotation})")
            if signs is not None:
                signs = hadamard.check_signs(signs, rotation, in_features).to(device=device,
                                                                              dtype=torch.float32).clone()
        elif signs is not None:
            raise ValueError("signs given without rotation")
        bs = (DEFAULT_BLOCK[fmt] if block_size is None else block_size) if fmt else None
        if bs is not None and in_features % bs:
            raise ValueError(f"in_features ({in_features}) must be a multiple of block_size ({bs})")
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.block_size, self.scale_mode, self.recipe = fmt, bs, scale_mode, recipe
        self.rotation, self.quantize_activations = rotation, quantize_activations
        self.register_buffer("rotation_signs", signs)
        if compute not in COMPUTE:
            raise ValueError(f"compute must be one of {COMPUTE}, got {compute!r}")
        self.compute = compute
        self._deq: tuple | None = None  # (key, dequantized weight) for compute="dequantized"
        if fmt is None:
            self.register_buffer("weight", torch.zeros(out_features, in_features, device=device, dtype=dtype))
        else:
            self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, device=device,
                                                              dtype=torch.uint8))
            self.register_buffer("weight_scale", torch.zeros(out_features, in_features // bs, device=device,
                                                             dtype=torch.uint8))
            gs = torch.ones((), device=device) if fmt == "nvfp4" else None
            self.register_buffer("weight_global_scale", gs)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("act_global_amax", None)
        if act_global_amax is not None:
            self.set_act_global_amax(act_global_amax)
        self._prepared: tuple | None = None  # (key, fp4ref.ops.PreparedFP4Weight), see _prepared_weight

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str | None = "mxfp4", *, block_size: int | None = None,
                    scale_mode: str = "floor", recipe: str = "te", rotation: int | None = None,
                    signs: torch.Tensor | None = None, quantize_activations: bool = False) -> "FP4Linear":
        """Rotates ``linear.weight`` (``W·R``) and quantizes it (float64 weights are rounded to float32 first)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        dev = w.device
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, fmt=fmt, block_size=block_size,
                scale_mode=scale_mode, recipe=recipe, rotation=rotation, signs=signs,
                quantize_activations=quantize_activations, device=dev,
                dtype=w.dtype if fmt is None and w.dtype == torch.float64 else torch.float32)
        if rotation is not None:
            w = _op("block_hadamard")(w, rotation, signs=m.rotation_signs)
        if fmt is None:
            m.weight.copy_(w)
        else:
            w = w.float() if w.dtype == torch.float64 else w
            m.load_quantized(_quantize(w, fmt, m.block_size, scale_mode, recipe))
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone())
        return m

    @classmethod
    def from_quantized(cls, weight: mx.MXTensor | nvfp4.NVFP4Tensor, bias: torch.Tensor | None = None, *,
                       rotation: int | None = None, signs: torch.Tensor | None = None,
                       quantize_activations: bool = False, act_global_amax: float | None = None,
                       compute: str = "exact") -> "FP4Linear":
        """Wraps an already quantized (N, K) weight, e.g. MR-GPTQ's, given in the rotated basis."""
        _check_weight(weight, "weight")
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
                raise TypeError(f"bias must be a floating-point tensor or None, got "
                                f"{getattr(bias, 'dtype', type(bias).__name__)}")
            if tuple(bias.shape) != (weight.shape[0],):
                raise ValueError(f"bias must have shape ({weight.shape[0]},) for weight of shape "
                                 f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
            if bias.device != weight.data.device:
                raise ValueError(f"bias is on {bias.device} but weight is on {weight.data.device}: they must be "
                                 "on one device")
        fmt = "mxfp4" if isinstance(weight, mx.MXTensor) else "nvfp4"
        m = cls(weight.shape[1], weight.shape[0], bias is not None, fmt=fmt, block_size=weight.block_size,
                scale_mode=getattr(weight, "scale_mode", "floor"), recipe=getattr(weight, "recipe", "te"),
                rotation=rotation, signs=signs, quantize_activations=quantize_activations,
                device=weight.data.device, act_global_amax=act_global_amax, compute=compute)
        m.load_quantized(weight)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone())
        return m

    def load_quantized(self, q: mx.MXTensor | nvfp4.NVFP4Tensor) -> None:
        """Copies a quantized weight of this layer's shape and format into the buffers.

        ``q`` must match the layer exactly: an MXTensor (e2m1, blocked along K) for ``fmt="mxfp4"`` or an
        NVFP4Tensor for ``"nvfp4"``, of shape (out_features, in_features), with the layer's block size and
        scale mode (MX: "stretch" weights decode to a third of a "floor" weight's codes) or recipe (NVFP4:
        W4A4 quantizes the activations with it). Nothing is broadcast or converted.
        """
        if self.fmt is None:
            raise ValueError("this FP4Linear has fmt=None (a full-precision weight): there is no quantized weight "
                             "to load")
        meta = self.weight_packed.device.type == "meta"
        want = (self.out_features, self.in_features)
        if self.fmt == "mxfp4":
            if not isinstance(q, mx.MXTensor):
                raise TypeError(f"q must be an MXTensor for an fmt='mxfp4' layer, got {type(q).__name__}")
            mx.check_mx_tensor(q, "q", values=not meta)
            if q.elem != "e2m1" or len(q.shape) != 2 or q.axis % 2 != 1:
                raise ValueError(f"q must be MXFP4 (elem 'e2m1') blocked along its last dimension, got "
                                 f"elem={q.elem!r}, axis={q.axis}, shape {tuple(q.shape)}")
            if q.scale_mode != self.scale_mode:
                raise ValueError(f"q.scale_mode={q.scale_mode!r} does not match the layer's scale_mode="
                                 f"{self.scale_mode!r}")
        else:
            if not isinstance(q, nvfp4.NVFP4Tensor):
                raise TypeError(f"q must be an NVFP4Tensor for an fmt='nvfp4' layer, got {type(q).__name__}")
            nvfp4.check_nvfp4_tensor(q, "q", values=not meta)
            if q.recipe != self.recipe:
                raise ValueError(f"q.recipe={q.recipe!r} does not match the layer's recipe={self.recipe!r}")
        if tuple(q.shape) != want:
            raise ValueError(f"q.shape={tuple(q.shape)} does not match the layer's weight shape (out_features, "
                             f"in_features) = {want}")
        if q.block_size != self.block_size:
            raise ValueError(f"q.block_size={q.block_size} does not match the layer's block_size={self.block_size}")
        self.weight_packed.copy_(q.data.view(torch.uint8))
        self.weight_scale.copy_(q.scales.view(torch.uint8))
        if self.fmt == "nvfp4":
            self.weight_global_scale.copy_(q.global_scale.reshape(()))

    def set_act_global_amax(self, amax: float | torch.Tensor | None) -> None:
        """The static NVFP4 activation amax of W4A4 (None: each input's own amax)."""
        if amax is None:
            self.act_global_amax = None
            return
        if self.fmt != "nvfp4" or not self.quantize_activations:
            raise ValueError("act_global_amax applies to NVFP4 layers with quantize_activations=True")
        v = float(amax) if not isinstance(amax, bool) and isinstance(amax, (int, float, torch.Tensor)) else None
        if v is None or not (0 <= v < float("inf")):
            raise ValueError(f"act_global_amax must be a finite number >= 0, got {amax!r}")
        dev = self.weight_scale.device
        self.act_global_amax = torch.tensor(v, dtype=torch.float32, device=dev)

    def dequantized_weight(self) -> torch.Tensor:
        """``deq(W)`` in the rotated basis, float32, cached per version of the weight buffers."""
        if self.fmt is None:
            return self.weight
        key = tuple((b.data_ptr(), b._version, b.device) for b in
                    (self.weight_packed, self.weight_scale, self.weight_global_scale) if b is not None)
        cached = getattr(self, "_deq", None)
        if cached is None or cached[0] != key:
            cached = self._deq = (key, self.weight_quantized.dequantize())
        return cached[1]

    def _simulated(self, x: torch.Tensor) -> torch.Tensor:
        xr = x if self.rotation is None else self.rotate_input(x).to(torch.float32)
        if self.quantize_activations:
            xr = fake_quantize_activations(xr, self.fmt, self.act_global_amax, block_size=self.block_size,
                                           scale_mode=self.scale_mode, recipe=self.recipe)
        w = self.dequantized_weight()
        return nn.functional.linear(xr, w, None if self.bias is None else self.bias.to(w.dtype))

    @property
    def weight_quantized(self) -> mx.MXTensor | nvfp4.NVFP4Tensor | None:
        """The stored weight as an MXTensor/NVFP4Tensor (in the rotated basis), or None when ``fmt=None``."""
        shape = torch.Size((self.out_features, self.in_features))
        if self.fmt == "mxfp4":
            return mx.MXTensor(self.weight_packed, self.weight_scale, "e2m1", self.block_size, shape,
                               self.scale_mode, -1)
        if self.fmt == "nvfp4":
            return nvfp4.NVFP4Tensor(self.weight_packed, self.weight_scale, self.weight_global_scale,
                                     self.recipe, shape, self.block_size)
        return None

    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x·R`` along the last axis (float32; float64 stays float64), or ``x`` without rotation."""
        if self.rotation is None:
            return x
        return _op("block_hadamard")(x, self.rotation, signs=self.rotation_signs)

    def _prepared_weight(self, x: torch.Tensor):
        """The weight as ``fp4ref.ops.prepare_fp4_weight`` prepares it (checked, and on a GPU the CUDA GEMM's
        views of it), made once per version of the weight buffers; None inside a traced graph (no storage
        addresses there: it keeps the op path).

        The key holds each buffer's storage address and in-place version counter, so ``load_quantized``,
        ``load_state_dict`` and ``.to(device)`` all invalidate it.
        """
        if torch.compiler.is_compiling() or x.device.type == "meta":
            return None  # (meta: the op path's checks answer)
        bufs = (self.weight_packed, self.weight_scale, self.weight_global_scale)
        key = tuple((b.data_ptr(), b._version) for b in bufs if b is not None)
        cached = getattr(self, "_prepared", None)  # (absent on modules pickled before it existed)
        if cached is None or cached[0] != key:
            cached = self._prepared = (key, _ops_module().prepare_fp4_weight(self.weight_quantized))
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}")
        if self.compute == "dequantized":
            return self._simulated(x)
        xr = x if self.rotation is None else self.rotate_input(x)
        if self.fmt is None:
            w = self.weight.to(xr.dtype)
            y = xr @ w.T
            return (y if self.bias is None else y + self.bias.to(y.dtype)).to(x.dtype)
        if not self.quantize_activations:
            pw = self._prepared_weight(xr)
            y = (_op("fp4_linear")(xr, self.weight_quantized, self.bias) if pw is None
                 else _ops_module().fp4_linear_prepared(xr, pw, self.bias))
            return y if y.dtype == x.dtype else y.to(x.dtype)
        wq = self.weight_quantized
        x2 = xr.reshape(-1, self.in_features)
        xq = _quantize(x2.float() if x2.dtype == torch.float64 else x2, self.fmt, self.block_size,
                       self.scale_mode, self.recipe, self.act_global_amax)
        out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = _op("fp4_mm")(xq, wq, out_dtype=out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        q = "none" if self.fmt is None else f"{self.fmt}, block={self.block_size}, " + (
            f"scale_mode={self.scale_mode}" if self.fmt == "mxfp4" else f"recipe={self.recipe}")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant=({q}), rotation={self.rotation}, signs={self.rotation_signs is not None}, "
                f"W4A4={self.quantize_activations}, compute={self.compute}")


def _check_weight(w: object, arg: str) -> None:
    """An (N, K) quantized weight: an MXTensor (e2m1, blocked along K) or an NVFP4Tensor, valid in itself."""
    if isinstance(w, mx.MXTensor):
        mx.check_mx_tensor(w, arg)
        if w.elem != "e2m1" or len(w.shape) != 2 or w.axis % 2 != 1:
            raise ValueError(f"{arg} must be MXFP4 (elem 'e2m1') blocked along its last dimension, got "
                             f"elem={w.elem!r}, axis={w.axis}, shape {tuple(w.shape)}")
    elif isinstance(w, nvfp4.NVFP4Tensor):
        nvfp4.check_nvfp4_tensor(w, arg)
        if len(w.shape) != 2:
            raise ValueError(f"{arg} must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    else:
        raise TypeError(f"{arg} must be an MXTensor (e2m1) or an NVFP4Tensor, got {type(w).__name__}")


def _matches(name: str, patterns: Iterable[str | re.Pattern]) -> bool:
    for p in patterns:
        if isinstance(p, re.Pattern):
            if p.fullmatch(name):
                return True
        elif not isinstance(p, str):
            raise TypeError(f"patterns must be strings or compiled regexes, got {type(p).__name__}")
        elif p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def quantize_linear_layers(model: nn.Module, patterns: Iterable[str | re.Pattern] | str = ("*",), *,
                           exclude: Iterable[str | re.Pattern] | str = (), **kwargs) -> dict[str, FP4Linear]:
    """Replaces, in place, every ``nn.Linear`` whose qualified name matches ``patterns`` and no ``exclude``
    pattern by ``FP4Linear.from_linear(linear, **kwargs)``; returns ``{name: new module}`` in model order.

    A pattern is an fnmatch glob (``"*.mlp.*"``), a regex prefixed ``"re:"`` (``"re:.*q_proj"``, as in
    compressed-tensors) or a compiled regex; regexes must match the whole name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    patterns = [patterns] if isinstance(patterns, (str, re.Pattern)) else list(patterns)
    exclude = [exclude] if isinstance(exclude, (str, re.Pattern)) else list(exclude)
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and _matches(n, patterns) and not _matches(n, exclude)]
    done: dict[str, FP4Linear] = {}
    if any(not n for n, _ in targets):
        raise ValueError("model itself is an nn.Linear; wrap it with FP4Linear.from_linear instead")
    for name, lin in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = FP4Linear.from_linear(lin, **kwargs)
        setattr(parent, child, new)
        done[name] = new
    return done


__all__ = ["FP4Linear", "quantize_linear_layers"]
