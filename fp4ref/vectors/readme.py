"""The README.md that ``write_vectors`` puts next to the vector files (format fields: version, n)."""
from __future__ import annotations

README = """# fp4ref conformance vectors

Written by fp4ref {version} (`fp4ref vectors OUT`); {n} safetensors files. Check an implementation by
running it on each case's inputs and comparing its outputs bit for bit with the stored ones (codes and
scales as integers, float outputs by their float32 bits, any NaN equal to any NaN). `fp4ref verify FILE`
does the same for a file of your own outputs written in this layout.

## Files

| name | op | what varies |
| --- | --- | --- |
| `encode_<fmt>_<sat or nosat>` | encode(x, fmt, saturate) | fmt: e2m1 e2m3 e3m2 e4m3 e5m2 e8m0 |
| `decode_<fmt>` | decode(codes, fmt) | every code |
| `mx_<elem>_<mode>` | quantize_mx(x, elem, block_size=32, scale_mode=mode, axis=-1) | elem x scale mode |
| `nvfp4_<recipe>` | quantize_nvfp4(x, global_amax, recipe, block_size=16) | recipe |
| `pack_fp4` | pack_fp4(codes) | |
| `swizzle_scales` | swizzle_scales(scales) (cuBLAS 128x4 layout) | |

## Tensor names

`<case>.<field>`. Inputs: `x` (float32, bfloat16 or float16), `codes` (uint8), `scales` (uint8),
`global_amax` (float32 scalar, only where passed explicitly). Outputs: `codes` (encode: uint8, one code per
byte), `values` (decode: float32), `data` (packed E2M1 for e2m1, element 2i in the low nibble; one code per
byte otherwise), `scales` (uint8 E8M0 for MX, E4M3 for NVFP4, one per block), `global_scale` (float32 scalar,
decode direction), `dequantized` (float32), `packed`, `blocked` (uint8).

Cases: encode: `edge` (every code value and tie with both float32 neighbours, ±0, tiny negatives, NaN, ±Inf,
extremes), `all_bfloat16` and `all_float16` (every bit pattern; with saturate=false, formats without NaN/Inf
leave out the inputs they reject). MX: `edge` (one block per row: ties, amax at powers of two, at max·2^k
and 2^(emax+1)·2^k ± one ulp, FLT_MAX, subnormal amax, E8M0 clamping, NaN/Inf in a block, zero blocks) and
`random` (48 rows of many magnitudes). NVFP4: one case per global scale situation (see the names).

## Metadata keys

`op`, `format`, `mode` (MX scale mode), `recipe` (NVFP4), `saturate` (`true`/`false`), `rounding`,
`block_size`, `axis`, `cases`, `skipped_cases`, `fp4ref_vectors` (layout version), `generator`.
`-` means "not applicable".
"""
