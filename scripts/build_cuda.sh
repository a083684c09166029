#!/usr/bin/env bash
# Compile fp4ref_cuda._C in place (for sm_90a, sm_100a and sm_120a unless TORCH_CUDA_ARCH_LIST says otherwise)
# and import it. No GPU needed: CI runs this on every push, so a CUDA compile error fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda-13.0}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a;10.0a;12.0a}"
export MAX_JOBS="${MAX_JOBS:-2}"
export FP4REF_BUILD_CUDA=1
start=$(date +%s)
python setup.py build_ext --inplace
echo "build_cuda: compiled for ${TORCH_CUDA_ARCH_LIST} in $(( $(date +%s) - start )) s"
python - <<'PY'
import torch
import fp4ref_cuda
assert fp4ref_cuda.built(), f"fp4ref_cuda._C did not import: {fp4ref_cuda.LOAD_ERROR}"
ops = [n for n in ("encode", "decode", "pack_fp4", "unpack_fp4", "swizzle_scales", "unswizzle_scales",
                   "finite_amax", "block_hadamard", "quantize", "dequantize")]
for n in ops:
    getattr(torch.ops.fp4ref_cuda, n).default  # raises if the schema is missing
print(f"build_cuda: fp4ref_cuda._C imported, {len(ops)} ops registered, GPU available: {torch.cuda.is_available()}")
PY
