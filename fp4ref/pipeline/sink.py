"""Where finished blocks go: one file per block while the run lasts, then Hugging Face-style shards.

While running, ``OUT/.fp4ref-run/`` holds ``manifest.json`` (what identifies the run, for --resume) and
``block-NNNNN.safetensors`` + ``.json`` (its tensors in the checkpoint's names, its layer reports), each
written to a temporary name and renamed, so a killed run leaves only whole blocks. At the end the tensors
are streamed, one at a time, into ``model-0000k-of-0000N.safetensors`` shards of at most ``shard_size`` bytes
with ``model.safetensors.index.json``; config.json, the tokenizer's files and report.json go beside them.
The same run gives the same bytes: tensors in a fixed order, headers with sorted metadata, no timestamps.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from .errors import PipelineError
from .source import INDEX_FILE

RUN_DIR = ".fp4ref-run"
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
          torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
TORCH_DTYPES = {v: k for k, v in DTYPES.items()}


def nbytes(dtype: torch.dtype, shape) -> int:
    """Bytes of a tensor of ``dtype`` and ``shape`` (as a safetensors file stores it)."""
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Writes ``tensors`` (in the dict's order) as a safetensors file with a sorted header, atomically."""
    _stream(path, [(n, ("mem", n, t.dtype, tuple(t.shape))) for n, t in tensors.items()],
            lambda name, _where: tensors[name])


class Sink:
    """The output folder of one run (rank 0 writes; the other ranks only read what it wrote)."""

    def __init__(self, out: str | Path, fingerprint: dict, *, resume: bool, writer: bool):
        self.out, self.run = Path(out), Path(out) / RUN_DIR
        self.fingerprint, self.writer = fingerprint, writer
        manifest = self.run / "manifest.json"
        self.complete = False
        if not writer:
            return  # rank 0 checked the folder; the other ranks only read block files it wrote
        if self.out.exists() and not self.out.is_dir():
            raise PipelineError(f"--out {self.out}: exists and is not a folder")
        if resume:
            if not manifest.is_file():
                raise PipelineError(f"--resume: {self.out} holds no fp4ref run ({RUN_DIR}/manifest.json is missing)")
            old = json.loads(manifest.read_text())
            if old.get("fingerprint") != json.loads(json.dumps(fingerprint, default=str)):
                diff = sorted(k for k in set(old.get("fingerprint", {})) | set(fingerprint)
                              if json.dumps(old.get("fingerprint", {}).get(k), default=str)
                              != json.dumps(fingerprint.get(k), default=str))
                raise PipelineError(f"--resume: {self.out} holds a run of another model or settings (differs in "
                                    f"{diff}); resume with the same settings or choose a new --out")
            self.complete = bool(old.get("complete"))
        else:
            if self.out.exists() and any(self.out.iterdir()):
                raise PipelineError(f"--out {self.out}: folder is not empty; choose a new folder, or --resume a run "
                                    "that was written there")
            self.complete = False
        if not resume:
            try:
                self.run.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PipelineError(f"--out {self.out}: cannot create it ({e.strerror})") from None
            self._write_json(manifest, {"fingerprint": fingerprint, "complete": False})

    @staticmethod
    def _write_json(path: Path, obj) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)

    def block_file(self, b: int) -> Path:
        return self.run / f"block-{b:05d}.safetensors"

    def has_block(self, b: int) -> bool:
        return self.block_file(b).is_file() and self.block_file(b).with_suffix(".json").is_file()

    def write_block(self, b: int, tensors: dict[str, torch.Tensor], info: dict) -> None:
        if not self.writer:
            return
        write_safetensors(self.block_file(b), {k: tensors[k] for k in sorted(tensors, key=natural_key)})
        self._write_json(self.block_file(b).with_suffix(".json"), info)

    def read_block(self, b: int) -> tuple[dict[str, torch.Tensor], dict]:
        from safetensors.torch import load_file

        return load_file(str(self.block_file(b))), json.loads(self.block_file(b).with_suffix(".json").read_text())

    def finish(self, head: dict[str, torch.Tensor], n_blocks: int, config: dict, tokenizer_files: list[Path],
               report: dict, shard_size: int) -> list[Path]:
        """The final checkpoint: shards + index from the block files and ``head`` (the tensors outside the
        blocks), config.json, the tokenizer's files, report.json; then the block files go."""
        if not self.writer:
            return []
        from safetensors import safe_open

        entries: list[tuple[str, object, int]] = []  # (name, where, bytes)
        for name in head:
            t = head[name]
            entries.append((name, ("head", name, t.dtype, tuple(t.shape)), nbytes(t.dtype, t.shape)))
        for b in range(n_blocks):
            with safe_open(str(self.block_file(b)), framework="pt") as h:
                for name in h.keys():
                    sl = h.get_slice(name)
                    dtype = TORCH_DTYPES[sl.get_dtype()]
                    shape = tuple(sl.get_shape())
                    entries.append((name, ("block", b, dtype, shape), nbytes(dtype, shape)))
        open_block: dict = {}  # one block file mapped at a time, so its pages leave memory with it
        entries.sort(key=lambda e: natural_key(e[0]))
        shards: list[list] = [[]]
        size = 0
        for e in entries:
            if shards[-1] and size + e[2] > shard_size:
                shards.append([])
                size = 0
            shards[-1].append(e)
            size += e[2]
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        if len(shards) == 1:
            names = ["model.safetensors"]
        weight_map, total = {}, 0
        for shard, fname in zip(shards, names):
            def load(name, where):
                if where[0] == "head":
                    return head[where[1]]
                if where[1] not in open_block:
                    open_block.clear()
                    open_block[where[1]] = safe_open(str(self.block_file(where[1])), framework="pt")
                return open_block[where[1]].get_tensor(name)

            _stream(self.out / fname, [(n, w) for n, w, _ in shard], load)
            for n, _, size_n in shard:
                weight_map[n] = fname
                total += size_n
        if len(shards) > 1:
            self._write_json(self.out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        self._write_json(self.out / "config.json", config)
        for f in tokenizer_files:
            shutil.copyfile(f, self.out / f.name)
        self._write_json(self.out / "report.json", report)
        open_block.clear()
        for b in range(n_blocks):
            self.block_file(b).unlink()
            self.block_file(b).with_suffix(".json").unlink()
        self._write_json(self.run / "manifest.json", {"fingerprint": self.fingerprint, "complete": True})
        return [self.out / n for n in names]


def _stream(path: Path, items: list[tuple[str, tuple]], load) -> None:
    """A safetensors file written tensor by tensor from ``load(name, where)``."""
    header, off = {}, 0
    for name, where in items:
        dtype, shape = where[2], where[3]
        n = nbytes(dtype, shape)
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, where in items:
            t = load(name, where)
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


__all__ = ["Sink", "RUN_DIR", "write_safetensors", "natural_key"]
