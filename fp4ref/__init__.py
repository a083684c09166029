"""fp4ref: the bit-exact numerical reference for MXFP4 / NVFP4 (see ``fp4ref.ops`` for the public ops)."""
from ._version import __version__  # noqa: F401


def __getattr__(name: str):
    # fp4ref.quantize_pretrained: the pipeline's one Python call, imported on first use (it pulls in transformers).
    if name == "quantize_pretrained":
        from .pipeline import quantize_pretrained

        return quantize_pretrained
    raise AttributeError(f"module 'fp4ref' has no attribute {name!r}")
