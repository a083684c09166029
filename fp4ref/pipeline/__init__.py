"""The quantization pipeline for a model on disk, at any size (docs/model.md).

A model flows through it like water through a lock: ``source`` lets one decoder block in (read from the
memory-mapped safetensors files), ``run`` computes its statistics (reduced across ranks by ``dist``),
``fp4ref.gptq`` solves its layers, ``sink`` writes it out, and only then the next block enters.
"""
from .run import PipelineResult, quantize_pretrained

__all__ = ["quantize_pretrained", "PipelineResult"]
