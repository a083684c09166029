"""Calibration and evaluation windows: from text files (the model's tokenizer), token-id files, or the
embedded default text; windows of fixed length, disjoint, cut from the start of the token stream.

One text file for both calibration and evaluation is split as the embedded text is: evaluation windows from
its start, calibration windows from its end, never overlapping.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .errors import PipelineError


def _text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{what} {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise PipelineError(f"{what} {path}: unreadable ({e.strerror})") from None


def tokenize(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def read_tokens(path: Path, what: str = "--calib-tokens") -> torch.Tensor:
    """Token ids from .npy or .safetensors (the tensor ``input_ids``, or the only one): 1-D, or 2-D rows."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} {path}: no such file")
    try:
        if path.suffix == ".npy":
            import numpy as np

            arr = np.load(path, allow_pickle=False)
            t = torch.from_numpy(np.ascontiguousarray(arr))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            d = load_file(str(path))
            if "input_ids" in d:
                t = d["input_ids"]
            elif len(d) == 1:
                t = next(iter(d.values()))
            else:
                raise PipelineError(f"{what} {path}: holds {sorted(d)[:5]}; name the token tensor 'input_ids'")
        else:
            raise PipelineError(f"{what} {path}: must be .npy or .safetensors")
    except PipelineError:
        raise
    except Exception as e:  # numpy and safetensors raise their own kinds for a damaged file
        raise PipelineError(f"{what} {path}: unreadable ({e})") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() not in (1, 2):
        raise PipelineError(f"{what} {path}: token ids must be a 1-D or 2-D integer array, got {t.dtype} "
                            f"{tuple(t.shape)}")
    return t.long()


def cut(tokens: torch.Tensor, n: int, length: int, what: str, *, from_end: bool = False) -> torch.Tensor:
    """``n`` disjoint windows of ``length`` tokens (rows of a 2-D array, or cut from a 1-D stream)."""
    if tokens.dim() == 2:
        if tokens.shape[1] < length or tokens.shape[0] < n:
            raise PipelineError(f"{what}: need {n} rows of at least {length} tokens, the file has "
                                f"{tuple(tokens.shape)}")
        rows = tokens[-n:] if from_end else tokens[:n]
        return rows[:, :length].contiguous()
    need = n * length
    if tokens.numel() < need:
        raise PipelineError(f"{what}: {n} windows of {length} tokens need {need} tokens, the text gives "
                            f"{tokens.numel()}; give more text or fewer/shorter windows")
    part = tokens[tokens.numel() - need:] if from_end else tokens[:need]
    return part.reshape(n, length).contiguous()


def windows(*, tokenizer_fn, calib_text=None, eval_text=None, calib_tokens=None, n_calib: int, calib_len: int,
            n_eval: int, eval_len: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(calibration windows, evaluation windows, a description with content hashes for --resume)."""
    desc: dict = {}
    cache: list = []

    def embedded() -> torch.Tensor:  # the embedded text's tokens, tokenized once for both window sets
        if not cache:
            from .. import models

            cache.append(models.text_tokens(tokenizer_fn()))
        return cache[0]

    shared = calib_text is not None and eval_text is not None and Path(calib_text).resolve() == Path(eval_text).resolve()
    if calib_tokens is not None:
        toks = read_tokens(calib_tokens)
        calib = cut(toks, n_calib, calib_len, f"--calib-tokens {calib_tokens}")
        desc["calib"] = {"tokens": str(calib_tokens)}
    elif calib_text is not None:
        text = _text(calib_text, "--calib-text")
        toks = tokenize(tokenizer_fn(), text)
        if shared and n_eval:
            if (n_calib * calib_len + n_eval * eval_len) > toks.numel():
                raise PipelineError(f"--calib-text {calib_text}: {toks.numel()} tokens are too few for {n_calib}x"
                                    f"{calib_len} calibration and {n_eval}x{eval_len} evaluation tokens without overlap")
        calib = cut(toks, n_calib, calib_len, f"--calib-text {calib_text}", from_end=shared)
        desc["calib"] = {"text": str(calib_text)}
    else:
        toks = embedded()
        if n_calib * calib_len + (n_eval * eval_len if eval_text is None else 0) > toks.numel():
            raise PipelineError(f"the embedded text has {toks.numel()} tokens: too few for {n_calib}x{calib_len} "
                                f"calibration and {n_eval}x{eval_len} evaluation windows")
        calib = cut(toks, n_calib, calib_len, "embedded text", from_end=True)
        desc["calib"] = {"text": "embedded (pydoc_data.topics)"}
    if n_eval == 0:
        evals = torch.zeros(0, eval_len, dtype=torch.long)
    elif eval_text is not None:
        evals = cut(tokenize(tokenizer_fn(), _text(eval_text, "--eval-text")), n_eval, eval_len,
                    f"--eval-text {eval_text}")
    elif calib_tokens is not None or calib_text is not None:
        raise PipelineError("evaluation needs --eval-text FILE (or --eval 0 to skip it)")
    else:
        evals = cut(embedded(), n_eval, eval_len, "embedded text")
    desc["calib_sha256"] = hashlib.sha256(calib.numpy().tobytes()).hexdigest()
    desc["calib_shape"] = list(calib.shape)
    return calib, evals, desc


__all__ = ["windows", "read_tokens", "cut", "tokenize"]
