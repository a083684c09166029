"""The set of vector files: ``build_vectors()`` gives every file's metadata and tensors (inputs from
``edge_cases``, expected outputs from the reference through ``specs.OPS``), in memory; ``writer`` saves them."""
from __future__ import annotations

import torch

from .._version import __version__
from ..formats import ELEMENT_FORMATS, FORMATS, get_format
from ..mx import SCALE_MODES
from ..nvfp4 import RECIPES, quantize_nvfp4
from .edge_cases import all_bits, encodable, encode_inputs, mx_edge_inputs, nvfp4_edge_cases, random_inputs
from .specs import META_KEYS, MX_BLOCK, NA, NV_BLOCK, OPS, VECTORS_VERSION


def _meta(op: str, **kw: object) -> dict[str, str]:
    meta = {k: NA for k in META_KEYS}
    meta.update({k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in kw.items()})
    meta.update(op=op, fp4ref_vectors=VECTORS_VERSION, generator=f"fp4ref {__version__}")
    return meta


def _case_tensors(op: str, meta: dict[str, str], cases: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, inputs in cases.items():
        expected = OPS[op].compute(inputs, meta)
        for field, t in list(inputs.items()) + [(k, o.tensor) for k, o in expected.items()]:
            out[f"{name}.{field}"] = t.detach().cpu().clone()
    return out


def build_vectors() -> dict[str, tuple[dict[str, str], dict[str, torch.Tensor]]]:
    """file name -> (metadata, tensors) for every op, format, mode, recipe and saturate setting."""
    gen = torch.Generator().manual_seed(20260)
    files = {}
    for name, f in FORMATS.items():
        for sat in (True, False):
            edge = encodable(encode_inputs(f), f, sat)
            cases = {"edge": {"x": edge}}
            for dt in (torch.bfloat16, torch.float16):
                cases[f"all_{str(dt).split('.')[-1]}"] = {"x": encodable(all_bits(dt), f, sat)}
            meta = _meta("encode", format=name, saturate=sat, rounding="rne")
            files[f"encode_{name}_{'sat' if sat else 'nosat'}"] = (meta, cases)
        codes = torch.arange(1 << f.bits, dtype=torch.int32).to(torch.uint8)
        files[f"decode_{name}"] = (_meta("decode", format=name), {"all_codes": {"codes": codes}})
    for elem in ELEMENT_FORMATS:
        f = get_format(elem)
        edge, rnd = mx_edge_inputs(f), random_inputs(48, 256, gen)
        for mode in SCALE_MODES:
            if mode == "stretch" and elem != "e2m1":
                continue
            meta = _meta("quantize_mx", format=elem, mode=mode, block_size=MX_BLOCK, axis=-1)
            files[f"mx_{elem}_{mode}"] = (meta, {"edge": {"x": edge}, "random": {"x": rnd}})
    nv_cases = nvfp4_edge_cases(gen)
    for recipe in RECIPES:
        cases, skipped = {}, []
        for cname, (x, gamax) in nv_cases.items():
            inputs = {"x": x} if gamax is None else {"x": x, "global_amax": torch.tensor(gamax, dtype=torch.float32)}
            try:
                quantize_nvfp4(x, global_amax=inputs.get("global_amax"), recipe=recipe)
            except (ValueError, NotImplementedError):  # a recipe that rejects an input: leave that case out
                skipped.append(cname)
                continue
            cases[cname] = inputs
        meta = _meta("quantize_nvfp4", format="nvfp4", recipe=recipe, block_size=NV_BLOCK,
                     skipped_cases=",".join(skipped) or NA)
        files[f"nvfp4_{recipe}"] = (meta, cases)
    pairs = torch.arange(256, dtype=torch.int32)
    pack_cases = {"all_pairs": {"codes": torch.stack([pairs & 15, pairs >> 4], 1).to(torch.uint8)},
                  "random": {"codes": torch.randint(0, 16, (8, 64), generator=gen, dtype=torch.uint8)}}
    files["pack_fp4"] = (_meta("pack_fp4", format="e2m1"), pack_cases)
    swz = {f"r{r}_c{c}": {"scales": torch.randint(0, 256, (r, c), generator=gen, dtype=torch.uint8)}
           for r, c in ((1, 1), (3, 5), (128, 4), (129, 7), (256, 8), (300, 3))}
    files["swizzle_scales"] = (_meta("swizzle_scales"), swz)
    return {name: (meta, _case_tensors(meta["op"], meta, cases)) for name, (meta, cases) in files.items()}
