"""Checkpoints in the compressed-tensors layouts (SPEC §15).

One safetensors file holds every tensor of the model; each quantized linear ``P`` is stored as
- NVFP4 (``nvfp4-pack-quantized``): ``P.weight_packed`` uint8 (N, K/2) (element 2i in the low nibble),
  ``P.weight_scale`` float8_e4m3fn (N, K/16), ``P.weight_global_scale`` float32 (1,) in the *encode*
  direction as compressed-tensors stores it: a value ``g`` with ``fp32(1/g)`` equal to our decode-direction
  global scale, so loading gives back the same bits;
- MXFP4 (``mxfp4-pack-quantized``): ``P.weight_packed`` uint8 (N, K/2), ``P.weight_scale`` uint8 E8M0
  (N, K/32) (value 2^(byte−127)), no global scale.
Other tensors (embeddings, norms, lm_head) are stored as they are. ``config.json`` is the model's
config plus a compressed-tensors ``quantization_config`` and an ``fp4ref`` section that records what
compressed-tensors cannot say: MR-GPTQ's input rotations (the stored weights are in the rotated basis,
so a reader that ignores them computes wrong outputs), W4A4's dynamic activation format, and the
method. Loading needs no compressed-tensors package.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .mx import MXTensor
from .nn import FP4Linear
from .nvfp4 import NVFP4Tensor

WEIGHTS_FILE = "model.safetensors"
FORMAT_NAMES = {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized"}


def encode_global_scale(decode_scale: torch.Tensor) -> torch.Tensor:
    """A float32 ``g`` with ``fp32(1/g) == decode_scale`` (compressed-tensors stores the encode direction).

    ``fp32(1/fp32(1/s))`` is not always ``s``, so neighbours of ``fp32(1/s)`` are tried; for a scale made
    as ``fp32(1/S_enc)`` (every recipe of SPEC §5) one of them is ``S_enc`` itself.
    """
    s = decode_scale.detach().reshape(()).to(torch.float32).cpu()
    if not bool(torch.isfinite(s)) or float(s) <= 0:
        raise ValueError(f"global scale must be finite and positive, got {float(s)!r}")
    one = torch.ones((), dtype=torch.float32)
    g0 = one / s
    up, down = g0.clone(), g0.clone()
    for _ in range(8):
        for g in (up, down):
            if bool(one / g == s):
                return g.reshape(1)
        up = torch.nextafter(up, torch.tensor(math.inf))
        down = torch.nextafter(down, torch.tensor(0.0))
    raise ValueError(f"no float32 g with fp32(1/g) == {float(s)!r} near 1/s; this scale cannot be stored "
                     "inverted without changing the dequantized weights")


def decode_global_scale(stored: torch.Tensor) -> torch.Tensor:
    """Our decode-direction global scale ``fp32(1/g)`` from the stored compressed-tensors ``g``."""
    g = stored.detach().reshape(()).to(torch.float32)
    return torch.ones((), dtype=torch.float32, device=g.device) / g


def pack_tensors(prefix: str, q: MXTensor | NVFP4Tensor) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one quantized (N, K) weight."""
    if isinstance(q, NVFP4Tensor):
        if q.block_size != 16:
            raise ValueError(f"the NVFP4 layout needs block_size 16, got {q.block_size}")
        return {f"{prefix}.weight_packed": q.data.contiguous(),
                f"{prefix}.weight_scale": q.scales.contiguous().view(torch.float8_e4m3fn),
                f"{prefix}.weight_global_scale": encode_global_scale(q.global_scale)}
    if isinstance(q, MXTensor):
        if q.elem != "e2m1" or q.block_size != 32:
            raise ValueError(f"the MXFP4 layout needs elem e2m1 and block_size 32, got {q.elem}/{q.block_size}")
        if q.scale_mode == "stretch":
            raise ValueError("scale_mode 'stretch' (values 2^X/3) has no compressed-tensors MXFP4 layout")
        return {f"{prefix}.weight_packed": q.data.contiguous(), f"{prefix}.weight_scale": q.scales.contiguous()}
    raise TypeError(f"q must be an MXTensor or NVFP4Tensor, got {type(q).__name__}")


def unpack_tensors(tensors: dict[str, torch.Tensor], prefix: str, fmt: str, shape: tuple[int, int],
                   scale_mode: str = "floor") -> MXTensor | NVFP4Tensor:
    """The quantized tensor of layer ``prefix`` back from its stored tensors."""
    need = [f"{prefix}.weight_packed", f"{prefix}.weight_scale"] + ([f"{prefix}.weight_global_scale"]
                                                                    if fmt == "nvfp4" else [])
    missing = [k for k in need if k not in tensors]
    if missing:
        raise ValueError(f"layer {prefix!r}: the checkpoint lacks {missing}")
    packed = tensors[f"{prefix}.weight_packed"]
    if packed.dtype != torch.uint8 or tuple(packed.shape) != (shape[0], shape[1] // 2):
        raise ValueError(f"{prefix}.weight_packed must be uint8 {(shape[0], shape[1] // 2)}, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    scale = tensors[f"{prefix}.weight_scale"]
    if fmt == "nvfp4":
        if scale.dtype != torch.float8_e4m3fn:
            raise ValueError(f"{prefix}.weight_scale must be float8_e4m3fn, got {scale.dtype}")
        gs = decode_global_scale(tensors[f"{prefix}.weight_global_scale"])
        return NVFP4Tensor(packed, scale.view(torch.uint8), gs, "te", torch.Size(shape), 16)
    if fmt == "mxfp4":
        if scale.dtype != torch.uint8:
            raise ValueError(f"{prefix}.weight_scale must be uint8 (E8M0), got {scale.dtype}")
        return MXTensor(packed, scale, "e2m1", 32, torch.Size(shape), scale_mode, -1)
    raise ValueError(f"fmt={fmt!r} is not one of {tuple(FORMAT_NAMES)}")


def quantization_config(fmt: str, targets: list[str], *, act: bool) -> dict:
    """compressed-tensors' ``quantization_config`` for ``targets`` (exact module names) in ``fmt``."""
    if fmt not in FORMAT_NAMES:
        raise ValueError(f"fmt={fmt!r} has no compressed-tensors layout; use one of {tuple(FORMAT_NAMES)}")
    nv = fmt == "nvfp4"
    args = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16 if nv else 32,
            "strategy": "tensor_group" if nv else "group", "dynamic": False,
            "scale_dtype": "torch.float8_e4m3fn" if nv else "torch.uint8"}
    # Activations are rounded on the fly with their own amax (fully dynamic), so no input_global_scale.
    acts = dict(args, dynamic=True) if act else None
    return {"quant_method": "compressed-tensors", "format": FORMAT_NAMES[fmt], "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": sorted(targets), "weights": args,
                                          "input_activations": acts, "output_activations": None,
                                          "format": FORMAT_NAMES[fmt]}},
            "ignore": ["lm_head"], "kv_cache_scheme": None}


def _quantized_layers(model: torch.nn.Module) -> dict[str, FP4Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FP4Linear) and m.fmt is not None}


def _rotation_record(m: FP4Linear) -> dict | None:
    if m.rotation is None:
        return None
    signs = m.rotation_signs
    return {"block_size": int(m.rotation), "signs": None if signs is None else [int(x) for x in signs.tolist()]}


def layer_tensors(name: str, m: FP4Linear) -> dict[str, torch.Tensor]:
    """The stored tensors of one quantized layer: its weight fields, and W4A4 NVFP4's ``input_global_scale``."""
    t = {k: v.cpu() for k, v in pack_tensors(name, m.weight_quantized).items()}
    if m.act_global_amax is not None:
        t[f"{name}.input_global_scale"] = input_global_scale(m.act_global_amax)
    return t


def fp4_linear_from(q: MXTensor | NVFP4Tensor, bias: torch.Tensor | None, rotation: dict | None, act: bool,
                    act_amax: float | None, compute: str = "exact", device="cpu") -> FP4Linear:
    """The FP4Linear of a stored layer (the inverse of layer_tensors + _rotation_record)."""
    signs = None if rotation is None or rotation["signs"] is None else torch.tensor(rotation["signs"],
                                                                                    dtype=torch.float32)
    m = FP4Linear.from_quantized(q, None if bias is None else bias.float(),
                                 rotation=None if rotation is None else rotation["block_size"], signs=signs,
                                 quantize_activations=act, act_global_amax=act_amax, compute=compute)
    if m.bias is not None:
        m.bias.requires_grad_(False)
    return m.to(device)


def save_checkpoint(model: torch.nn.Module, directory: str | Path, *, tokenizer=None,
                    metadata: dict | None = None) -> Path:
    """Writes ``model`` (with quantized ``fp4ref.nn.FP4Linear`` layers) to ``directory``: model.safetensors +
    config.json (+ the tokenizer's files). All quantized layers must share one format."""
    from safetensors.torch import save_file

    layers = _quantized_layers(model)
    if not layers:
        raise ValueError("model has no quantized (FP4Linear with an MXFP4/NVFP4 weight) layers to save")
    fmts = {m.fmt for m in layers.values()}
    if len(fmts) != 1:
        raise ValueError(f"all quantized layers must share one format, got {sorted(map(str, fmts))}")
    fmt = fmts.pop()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skip = {f"{n}.{p}" for n in layers for p, _ in list(layers[n].named_parameters()) + list(layers[n].named_buffers())}
    for name, t in model.state_dict(keep_vars=False).items():
        if name not in skip:
            tensors[name] = t.detach().cpu().contiguous()
    rotations, acts = {}, set()
    act_amax = {}
    for n, m in layers.items():
        tensors.update(layer_tensors(n, m))
        if m.bias is not None:
            tensors[f"{n}.bias"] = m.bias.detach().cpu().contiguous()
        if m.rotation is not None:
            rotations[n] = _rotation_record(m)
        if m.act_global_amax is not None:
            act_amax[n] = float(m.act_global_amax)
        acts.add(m.fmt if m.quantize_activations else None)
    if len(acts) != 1:
        raise ValueError("all quantized layers must agree on activation quantization")
    act_fmt = acts.pop()
    # Tied embeddings share storage; safetensors refuses shared tensors, so keep one copy.
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    if tied:
        tensors.pop("lm_head.weight", None)
    save_file({k: v.clone() if not v.is_contiguous() else v for k, v in tensors.items()},
              str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config.pop("quantization_config", None)
    config["quantization_config"] = quantization_config(fmt, list(layers), act=act_fmt is not None)
    if act_fmt == "nvfp4" and act_amax:
        config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = activation_args(fmt)
    scale_modes = {m.scale_mode for m in layers.values() if m.fmt == "mxfp4"}
    config["fp4ref"] = {"format": fmt, "act": act_fmt, "rotations": rotations,
                        "shapes": {n: [m.out_features, m.in_features] for n, m in layers.items()},
                        "scale_mode": scale_modes.pop() if scale_modes else None, "act_amax": act_amax,
                        "metadata": metadata or {}}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def read_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, MXTensor | NVFP4Tensor]]:
    """(config, plain tensors, {layer: quantized tensor}) of a checkpoint written by :func:`save_checkpoint`."""
    from safetensors.torch import load_file

    if not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}")
    d = Path(directory)
    try:
        config = json.loads((d / "config.json").read_text())
    except OSError as e:
        raise ValueError(f"directory {d}: cannot read config.json ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"directory {d}: config.json is not JSON ({e})") from None
    if not isinstance(config, dict) or "fp4ref" not in config:
        raise ValueError(f"{d / 'config.json'} has no 'fp4ref' section: not written by fp4ref.save_checkpoint")
    index = d / "model.safetensors.index.json"
    try:
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
                 else [WEIGHTS_FILE])
        tensors = {}
        for f in files:  # sharded (fp4ref quantize --model): every shard the index names
            tensors.update(load_file(str(d / f)))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"directory {d}: the weight files are missing or unreadable ({e})") from None
    except Exception as e:  # safetensors' own SafetensorError for a damaged file
        raise ValueError(f"directory {d}: a weight file is damaged ({e})") from None
    meta = config["fp4ref"]
    quantized = {n: unpack_tensors(tensors, n, meta["format"], tuple(shape), meta.get("scale_mode") or "floor")
                 for n, shape in meta["shapes"].items()}
    plain = {k: v for k, v in tensors.items()
             if not any(k == f"{n}.{p}" for n in quantized for p in ("weight_packed", "weight_scale",
                                                                      "weight_global_scale", "input_global_scale"))}
    return config, plain, quantized


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu", compute: str = "exact"):
    """Rebuilds the quantized model (needs ``transformers``): its layers become ``fp4ref.nn.FP4Linear`` with the
    stored codes, scales, rotations and activation settings (bit-identical weights). ``compute="exact"`` runs
    them through ``fp4ref.ops`` (the FP4 GEMM for bf16 on a GPU); ``"dequantized"`` is the calibration
    pipelines' float32 simulation, which reproduces their perplexities bit for bit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .model import set_module

    config, plain, quantized = read_checkpoint(directory)
    meta = config["fp4ref"]
    hf_config = AutoConfig.from_pretrained(directory)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # ours is applied below, not by transformers
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    # MoE: transformers fuses the experts; the checkpoint has one quantized linear per expert and projection.
    from .pipeline.blocks import unfuse_experts

    unfuse_experts(model, {f"{n}.weight" for n in quantized}, "")
    for name, q in quantized.items():
        new = fp4_linear_from(q, plain.pop(f"{name}.bias", None), meta["rotations"].get(name), meta["act"] is not None,
                              meta.get("act_amax", {}).get(name), compute)
        set_module(model, name, new)
    missing, unexpected = model.load_state_dict(plain, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and hf_config.tie_word_embeddings)
               and not any(k.startswith(n + ".") for n in quantized)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    return model.eval().to(device)


def activation_args(fmt: str) -> dict:
    """compressed-tensors' input_activations of the W4A4 presets: NVFP4's per-16 scales on the fly with a static,
    calibrated global scale (``dynamic: "local"``, stored as ``input_global_scale``); MXFP4 fully dynamic."""
    if fmt == "nvfp4":
        return {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
                "dynamic": "local", "observer": "static_minmax", "scale_dtype": "torch.float8_e4m3fn"}
    return {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 32, "strategy": "group",
            "dynamic": True, "scale_dtype": "torch.uint8"}


def input_global_scale(amax: float) -> torch.Tensor:
    """The stored ``input_global_scale`` (1,) of a calibrated activation amax: TE's ``S_enc = fp32(2688 / amax)``,
    the encode direction, as compressed-tensors' ``generate_gparam`` stores it."""
    from .nvfp4 import te_encode_scale

    return te_encode_scale(torch.tensor(float(amax), dtype=torch.float32)).reshape(1)


def block_tensors(block: torch.nn.Module, source, prefix: str, plan) -> tuple[dict[str, torch.Tensor], dict]:
    """A finished block's tensors in the checkpoint's names (quantized linears packed; everything else copied
    from ``source`` as stored), and what is needed to rebuild its FP4Linears (shapes, rotations, act amax)."""
    tensors: dict[str, torch.Tensor] = {}
    info: dict = {"linears": [], "shapes": {}, "rotations": {}, "act_amax": {}, "fmt": None, "act": None,
                  "scale_mode": None, "skipped": [prefix + n for n in plan.skipped]}
    quant = _quantized_layers(block)
    for n, m in quant.items():
        full = prefix + n
        tensors.update(layer_tensors(full, m))
        if m.bias is not None:
            tensors[f"{full}.bias"] = source.get(f"{full}.bias")
        info["linears"].append(n)
        info["shapes"][full] = [m.out_features, m.in_features]
        info["fmt"], info["act"] = m.fmt, (m.fmt if m.quantize_activations else None)
        if m.fmt == "mxfp4":
            info["scale_mode"] = m.scale_mode
        if m.rotation is not None:
            info["rotations"][full] = _rotation_record(m)
        if m.act_global_amax is not None:
            info["act_amax"][full] = float(m.act_global_amax)
    for name, _ in list(block.named_parameters()) + list(block.named_buffers()):
        if name.rpartition(".")[0] in quant:
            continue
        tensors[prefix + name] = source.get(prefix + name)
    return tensors, info


def quant_linear_from(tensors: dict[str, torch.Tensor], full: str, info: dict, device) -> FP4Linear:
    """The (simulating) FP4Linear of layer ``full`` from a block file's tensors and info (for --resume)."""
    q = unpack_tensors(tensors, full, info["fmt"], tuple(info["shapes"][full]), info.get("scale_mode") or "floor")
    return fp4_linear_from(q, tensors.get(f"{full}.bias"), info["rotations"].get(full), info["act"] is not None,
                           info["act_amax"].get(full), "dequantized", device)


def pipeline_config(raw_config: dict, *, fmt: str, act: bool, linears: dict, rotations: dict, act_amax: dict,
                    settings: dict, ignore: list[str] | None = None) -> dict:
    """config.json of a pipeline checkpoint: the model's own config, compressed-tensors' quantization_config
    (targets every Linear, ignores lm_head and the linears left in full precision) and the ``fp4ref`` section."""
    config = {k: v for k, v in raw_config.items() if k != "quantization_config"}
    qc = quantization_config(fmt, ["Linear"], act=act)
    qc["ignore"] = ["lm_head"] + sorted(ignore or [])
    group = qc["config_groups"]["group_0"]
    if act:
        group["input_activations"] = activation_args(fmt)
    config["quantization_config"] = qc
    config["fp4ref"] = {"format": fmt, "act": fmt if act else None, "rotations": rotations, "shapes": linears,
                        "scale_mode": "floor" if fmt == "mxfp4" else None, "act_amax": act_amax,
                        "metadata": settings}
    return config


__all__ = ["save_checkpoint", "read_checkpoint", "load_checkpoint", "pack_tensors", "unpack_tensors",
           "encode_global_scale", "decode_global_scale", "quantization_config", "activation_args",
           "input_global_scale", "block_tensors", "quant_linear_from", "pipeline_config", "layer_tensors",
           "fp4_linear_from"]
