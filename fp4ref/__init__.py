"""fp4ref: the bit-exact numerical reference for MXFP4 / NVFP4 (see ``fp4ref.ops`` for the public ops)."""
__version__ = "0.1.0"
