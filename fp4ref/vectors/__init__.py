"""Conformance vectors (SPEC §15): `fp4ref vectors OUT` writes them, `fp4ref verify FILE` re-derives every
output of a vector file from its inputs with the reference, `fp4ref demo` does both.

A file holds one op with one configuration (safetensors metadata: op, format, mode, recipe, saturate, ...) and
any number of cases; tensor ``<case>.<field>`` is field ``field`` of case ``case``. docs/vectors.md is the
format's description for other implementations.

Modules, each importing only those above it in this list:

* ``specs``: layout constants, what each op reads and writes (``OPS``), computed by the reference;
* ``edge_cases``: the inputs (edge cases per format, mode and recipe; random tensors);
* ``build``: ``build_vectors()``, every file's metadata and tensors in memory;
* ``readme``: the README.md written next to the files;
* ``writer``: ``write_vectors`` and the output-folder policy (``OutputFolderError``, the marker file);
* ``verify``: ``verify_file`` / ``verify_paths``;
* ``cli``: ``cli_vectors``, ``cli_verify``, ``cli_demo``.

The public names of all of them are importable from ``fp4ref.vectors``.
"""
from __future__ import annotations

from .build import build_vectors
from .cli import cli_demo, cli_vectors, cli_verify
from .edge_cases import FLT_MAX, SPECIALS, encode_inputs, mx_edge_inputs, nvfp4_edge_cases, random_inputs
from .readme import README
from .specs import META_KEYS, MX_BLOCK, NA, NV_BLOCK, OPS, VECTORS_VERSION, OpSpec, Out
from .verify import FileResult, verify_file, verify_paths
from .writer import MARKER, OutputFolderError, check_output_folder, write_vectors

__all__ = ["FLT_MAX", "MARKER", "META_KEYS", "MX_BLOCK", "NA", "NV_BLOCK", "OPS", "README", "SPECIALS",
           "VECTORS_VERSION", "FileResult", "OpSpec", "Out", "OutputFolderError", "build_vectors",
           "check_output_folder", "cli_demo", "cli_vectors", "cli_verify", "encode_inputs", "mx_edge_inputs",
           "nvfp4_edge_cases", "random_inputs", "verify_file", "verify_paths", "write_vectors"]
