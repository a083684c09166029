"""Read a model on disk: its config, its tokenizer, and one tensor at a time.

A Hugging Face folder (config.json, one or more *.safetensors with or without
model.safetensors.index.json, tokenizer files) is read through memory-mapped safetensors handles, so a
block's weights are the only ones materialised. A .gguf file has no such random access to
transformers-named tensors: transformers dequantizes it whole, so a GGUF model is held in memory (fine
for the small models GGUF is used for here; convert a big one to safetensors first). Nothing is
downloaded: every load is ``local_files_only``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import PipelineError

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class Source:
    """A model on disk. ``config``: its transformers config; ``keys``: tensor names as stored;
    ``get(name)``: one tensor in its stored dtype; ``tokenizer()``: its tokenizer (error if none)."""

    def __init__(self, path: str | Path):
        _quiet()
        self._handles: dict = {}
        self._tokenizer = None
        self.path = Path(path)
        if not self.path.exists():
            raise PipelineError(f"--model {self.path}: no such file or folder")
        if self.path.is_file():
            if self.path.suffix != ".gguf":
                raise PipelineError(f"--model {self.path}: a file must be a .gguf; otherwise give a Hugging Face "
                                    "model folder (config.json + *.safetensors)")
            self.kind = "gguf"
            self._init_gguf()
        else:
            self.kind = "safetensors"
            self._init_folder()

    # -- Hugging Face folder ------------------------------------------------------------------------------
    def _init_folder(self) -> None:
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise PipelineError(f"--model {self.path}: no config.json (not a Hugging Face model folder)")
        try:
            self.raw_config = json.loads(cfg.read_text())
        except (OSError, ValueError) as e:
            raise PipelineError(f"--model {self.path}: config.json is unreadable ({e})") from None
        from transformers import AutoConfig

        try:
            self.config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise PipelineError(f"--model {self.path}: transformers cannot read config.json "
                                f"(model_type {self.raw_config.get('model_type')!r}): {str(e).splitlines()[0]}") from None
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise PipelineError(f"--model {self.path}: {INDEX_FILE} is unreadable ({e})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise PipelineError(f"--model {self.path}: no *.safetensors files (only safetensors checkpoints are "
                                "read; convert .bin checkpoints with transformers' save_pretrained)")
        from safetensors import safe_open

        self._files = files
        self._where: dict[str, str] = {}
        for f in files:
            p = self.path / f
            if not p.is_file():
                raise PipelineError(f"--model {self.path}: {INDEX_FILE} names {f}, which is missing")
            try:
                with safe_open(str(p), framework="pt") as h:
                    for k in h.keys():
                        self._where[k] = f
            except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
                raise PipelineError(f"--model {self.path}: {f} is not a readable safetensors file ({e})") from None
        if weight_map is not None:
            missing = [k for k, f in weight_map.items() if self._where.get(k) != f]
            if missing:
                raise PipelineError(f"--model {self.path}: {INDEX_FILE} lists tensors its files lack: {missing[:3]}")
        self.keys = set(self._where)
        self._state = None

    # -- GGUF ---------------------------------------------------------------------------------------------
    def _init_gguf(self) -> None:
        from transformers import AutoConfig

        try:
            self.config = AutoConfig.from_pretrained(self.path.parent, gguf_file=self.path.name,
                                                     local_files_only=True)
        except Exception as e:  # the GGUF reader raises many kinds for an unsupported or damaged file
            raise PipelineError(f"--model {self.path}: not a GGUF causal LM that transformers reads "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.raw_config = self.config.to_dict()
        self._state = None
        self.keys = None  # known once the file is dequantized (on first use)

    def _gguf_state(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.path.parent, gguf_file=self.path.name,
                                                         dtype=torch.float32, local_files_only=True)
            self._state = {k: v.detach() for k, v in model.state_dict().items()}
            if getattr(self.config, "tie_word_embeddings", False):
                self._state.pop("lm_head.weight", None)
            self.keys = set(self._state)
        return self._state

    # -- common -------------------------------------------------------------------------------------------
    def key_set(self) -> set[str]:
        if self.kind == "gguf":
            self._gguf_state()
        return self.keys

    def get(self, key: str) -> torch.Tensor:
        """One stored tensor (its own dtype), read from disk now."""
        if self.kind == "gguf":
            return self._gguf_state()[key]
        f = self._where.get(key)
        if f is None:
            raise PipelineError(f"--model {self.path}: the checkpoint has no tensor {key!r}")
        if f not in self._handles:
            from safetensors import safe_open

            self._handles[f] = safe_open(str(self.path / f), framework="pt")
        return self._handles[f].get_tensor(key)

    def release(self) -> None:
        """Drops the memory maps: pages of the files read so far would otherwise stay resident (and counted)."""
        self._handles.clear()

    def tokenizer(self):
        """The model's tokenizer, loaded once."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            if self.kind == "gguf":
                return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name, local_files_only=True)
            if not any((self.path / f).is_file() for f in TOKENIZER_FILES):
                raise OSError("no tokenizer files")
            return AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PipelineError(f"--model {self.path}: no usable tokenizer ({str(e).splitlines()[0]}); give token "
                                "ids with --calib-tokens, or add the tokenizer files") from None

    def tokenizer_files(self) -> list[Path]:
        """The tokenizer's files in the folder, to copy next to the quantized checkpoint."""
        if self.kind == "gguf":
            return []
        names = set(TOKENIZER_FILES) | {"special_tokens_map.json", "merges.txt", "added_tokens.json",
                                         "generation_config.json", "chat_template.jinja"}
        return sorted(p for p in self.path.iterdir() if p.name in names and p.is_file())

    def fingerprint(self) -> dict:
        """What identifies the model for --resume: its path, config and the size of its weight files."""
        if self.kind == "gguf":
            files = {self.path.name: self.path.stat().st_size}
        else:
            files = {f: (self.path / f).stat().st_size for f in self._files}
        return {"path": str(self.path.resolve()), "model_type": self.raw_config.get("model_type"), "files": files}


__all__ = ["Source", "INDEX_FILE"]
