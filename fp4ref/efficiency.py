"""Efficiency of a quantized causal LM: weight bytes, checkpoint bytes, peak memory, decoding speed.

- :func:`weight_footprint`: bytes held by every ``FP4Linear`` (packed codes, block scales, tensor scales) and
  by everything else, and bits per weight with the scales included, counted from the tensors themselves.
- :func:`checkpoint_bytes`: the size on disk of a checkpoint's ``*.safetensors`` files.
- :func:`decode_speed`: greedy decoding with the KV cache, prefill and decode timed apart, median of repeats.
- :func:`peak_memory_mb`: peak resident memory (VmHWM: ru_maxrss of its own address space) of a fresh process
  that loads a model and runs one forward; that process is ``python -m fp4ref.efficiency peak SOURCE ...``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .nn import FP4Linear

_QUANT_FIELDS = ("weight_packed", "weight_scale", "weight_global_scale")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what ``platform`` knows: every benchmark line names its machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _key(t: torch.Tensor) -> tuple:
    """Identifies a tensor's memory (tied weights are two names for one storage and count once)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def weight_footprint(model: nn.Module) -> dict:
    """Bytes held by the model, from its tensors: per quantized ``FP4Linear`` (fmt set) the packed codes, the block
    scales and the tensor (global) scale; bits per weight = 8 · (codes + scales) / weights; everything else
    (embeddings, norms, biases, rotation signs, unquantized linears) as ``other_bytes``, shared storage counted once.
    Registered parameters and buffers only: the float32 weight that ``compute="dequantized"`` caches is not counted.
    """
    _check_model(model)
    layers = [m for m in model.modules() if isinstance(m, FP4Linear) and m.fmt is not None]
    weights = packed = block = glob = 0
    quant: set[tuple] = set()
    for m in layers:
        weights += m.out_features * m.in_features
        packed += _nbytes(m.weight_packed)
        block += _nbytes(m.weight_scale)
        glob += _nbytes(m.weight_global_scale)
        quant.update(_key(getattr(m, f)) for f in _QUANT_FIELDS if getattr(m, f) is not None)
    seen: set[tuple] = set()
    other = other_elems = 0
    tensors = [t for _, t in model.named_parameters(remove_duplicate=False)]
    tensors += [t for _, t in model.named_buffers(remove_duplicate=False)]
    for t in tensors:
        if t is None:
            continue
        k = _key(t)
        if k in quant or k in seen:
            continue
        seen.add(k)
        other += _nbytes(t)
        other_elems += t.numel()
    qbytes = packed + block + glob
    return {
        "layers": len(layers),
        "formats": sorted({m.fmt for m in layers}),
        "block_sizes": sorted({m.block_size for m in layers}),
        "weights": weights,
        "packed_bytes": packed,
        "block_scale_bytes": block,
        "global_scale_bytes": glob,
        "quantized_bytes": qbytes,
        "bits_per_weight": 8.0 * qbytes / weights if weights else None,
        "float32_weight_bytes": 4 * weights,
        "other_bytes": other,
        "other_elements": other_elems,
        "total_bytes": qbytes + other,
    }


def checkpoint_bytes(directory: str | Path) -> int:
    """Total size in bytes of the ``*.safetensors`` files directly inside ``directory`` (every shard; config,
    tokenizer and other files are not counted)."""
    if not isinstance(directory, (str, Path)):
        raise ValueError(f"directory must be a path, got {type(directory).__name__}")
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"directory {str(d)!r} is not a folder")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ValueError(f"directory {str(d)!r} holds no *.safetensors file")
    return sum(f.stat().st_size for f in files)


def _vocab_size(model: nn.Module) -> int:
    n = getattr(getattr(model, "config", None), "vocab_size", None)
    if n is None and hasattr(model, "get_input_embeddings"):
        n = model.get_input_embeddings().num_embeddings
    if not isinstance(n, int) or n < 1:
        raise ValueError("model has no vocabulary size (config.vocab_size or an input embedding)")
    return n


def prompt_ids(vocab_size: int, batch: int, prompt_len: int, seed: int) -> torch.Tensor:
    """Fixed random prompt token ids (batch, prompt_len), int64: row i is the i-th draw of one generator seeded
    with ``seed``, so row 0 is the same prompt at every batch size."""
    _check_int(vocab_size, "vocab_size", 1)
    _check_int(batch, "batch", 1)
    _check_int(prompt_len, "prompt_len", 1)
    _check_int(seed, "seed", 0)
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, vocab_size, (prompt_len,), generator=g) for _ in range(batch)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kwargs(model: nn.Module) -> tuple[str, dict]:
    """The name of the forward's KV-cache argument (transformers 5.x renamed ``past_key_values`` to ``cache``) and
    ``logits_to_keep=1`` where supported (only the last position's logits, as ``generate`` asks for)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    name = "cache" if "cache" in params else "past_key_values"
    return name, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


@torch.no_grad()
def _greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, float]:
    """(tokens (batch, 1 + new_tokens), prefill s, decode s): the prompt's forward gives the first token, then
    ``new_tokens`` one-token steps through the KV cache each give one more."""
    cache_arg, extra = _cache_kwargs(model)

    def cache_of(out):
        c = getattr(out, "cache", None)
        return c if c is not None else out.past_key_values

    dev = ids.device
    _sync(dev)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **extra)
    past = cache_of(out)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(dev)
    t1 = time.perf_counter()
    toks = [nxt]
    for _ in range(new_tokens):
        out = model(input_ids=nxt, use_cache=True, **{cache_arg: past}, **extra)
        past = cache_of(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
    _sync(dev)
    t2 = time.perf_counter()
    return torch.cat(toks, dim=1), t1 - t0, t2 - t1


def decode_speed(model: nn.Module, *, batch: int = 1, prompt_len: int = 32, new_tokens: int = 16, threads: int = 2,
                 repeats: int = 3, seed: int = 0, warmup: bool = True) -> dict:
    """Greedy decoding speed with the KV cache on the model's device: a fixed random prompt (batch, prompt_len)
    from ``seed``, an untimed warm-up (prefill + 2 steps), then ``repeats`` runs; each times the prefill and the
    ``new_tokens`` one-token steps apart. tokens_per_s = median over runs of batch · new_tokens / decode seconds.
    ``threads`` is torch's intra-op thread count during the runs (restored afterwards)."""
    _check_model(model)
    _check_int(batch, "batch", 1)
    _check_int(prompt_len, "prompt_len", 1)
    _check_int(new_tokens, "new_tokens", 1)
    _check_int(threads, "threads", 1)
    _check_int(repeats, "repeats", 1)
    _check_int(seed, "seed", 0)
    if not isinstance(warmup, bool):
        raise ValueError(f"warmup must be a bool, got {warmup!r}")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = next(model.buffers()).device
    ids = prompt_ids(_vocab_size(model), batch, prompt_len, seed).to(device)
    was_training, old_threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(threads)
    try:
        if warmup:
            _greedy(model, ids, min(2, new_tokens))
        runs = [_greedy(model, ids, new_tokens) for _ in range(repeats)]
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    decode_s = [r[2] for r in runs]
    prefill_s = [r[1] for r in runs]
    rates = [batch * new_tokens / s if s > 0 else math.inf for s in decode_s]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_runs": rates,
        "seconds": decode_s,
        "decode_s": statistics.median(decode_s),
        "ms_per_step": 1e3 * statistics.median(decode_s) / new_tokens,
        "prefill_s": statistics.median(prefill_s),
        "prefill_s_runs": prefill_s,
        "tokens": runs[-1][0].cpu().tolist(),
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "threads": threads,
        "repeats": repeats, "seed": seed, "device": str(device), "torch": torch.__version__,
    }


# --- peak memory, in a fresh process ---------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    """This process's peak resident set size so far, MiB. Linux's ru_maxrss carries the parent's peak across
    fork + execve (getrusage(2)), so a child started from a large process would report the parent's peak; VmHWM
    is the same high-water mark for this process's own address space, so it is read where /proc has it, else
    ru_maxrss (KiB on Linux, bytes on macOS)."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _rss_mb() -> float | None:
    """Current resident set size, MiB (Linux /proc), or None."""
    return _status_mb("VmRSS")


def _is_fp4ref_checkpoint(path: Path) -> bool:
    try:
        return "fp4ref" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _measure(source: str, compute: str | None, batch: int, seq_len: int, threads: int, seed: int) -> dict:
    """The child's work: imports (baseline), load, one forward; the peak RSS after each."""
    torch.set_num_threads(threads)
    import transformers

    from . import checkpoint
    # The baseline includes transformers and the model class's code (which may pull in peers such as torchao).
    if source == "embedded":
        transformers.LlamaForCausalLM  # noqa: B018  (the embedded model is a Llama)
    else:
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

            MODEL_FOR_CAUSAL_LM_MAPPING[type(transformers.AutoConfig.from_pretrained(source))]
        except (KeyError, ValueError, OSError):
            pass
    import_mb = _maxrss_mb()
    t0 = time.perf_counter()
    if source == "embedded":
        from .models import load_model

        model = load_model()[0]
        kind = "float (embedded, load_model)"
    elif _is_fp4ref_checkpoint(Path(source)):
        compute = compute or "exact"
        model = checkpoint.load_checkpoint(source, compute=compute)
        kind = f"fp4ref checkpoint, compute={compute}"
    else:
        from transformers import AutoModelForCausalLM as Auto

        model = Auto.from_pretrained(source, dtype=torch.float32).eval()
        kind = "float (Hugging Face folder)"
    load_s = time.perf_counter() - t0
    load_mb, rss_load = _maxrss_mb(), _rss_mb()
    ids = prompt_ids(_vocab_size(model), batch, seq_len, seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, use_cache=True)
    fwd_s = time.perf_counter() - t0
    run_mb = _maxrss_mb()
    return {"source": source, "kind": kind, "compute": compute, "batch": batch, "seq_len": seq_len,
            "threads": threads, "import_mb": import_mb, "load_peak_mb": load_mb, "run_peak_mb": run_mb,
            "rss_after_load_mb": rss_load, "model_load_mb": load_mb - import_mb, "model_run_mb": run_mb - import_mb,
            "load_s": load_s, "forward_s": fwd_s}


def peak_memory_mb(source: str | Path, *, compute: str | None = None, batch: int = 1, seq_len: int = 32,
                   threads: int = 2, seed: int = 0, timeout_s: float = 900) -> dict:
    """Peak resident memory (high-water RSS, MiB; see :func:`_maxrss_mb`) of a fresh process,
    ``python -m fp4ref.efficiency peak``, that imports torch + transformers + fp4ref + the model's code (``import_mb``,
    the baseline), loads ``source`` (``load_peak_mb``; ``rss_after_load_mb`` is what stays resident) and runs one
    forward of fixed random ids (batch, seq_len) (``run_peak_mb``); ``model_*_mb`` subtract the baseline.

    ``source``: an fp4ref checkpoint folder (loaded with ``load_checkpoint(dir, compute=compute or "exact")``),
    another Hugging Face folder (float32 ``from_pretrained``), or ``"embedded"`` (``fp4ref.models.load_model``).
    """
    if isinstance(source, Path) or (isinstance(source, str) and source != "embedded"):
        p = Path(source)
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ValueError(f"source must be a model folder with config.json or 'embedded', got {str(source)!r}")
        ckpt = _is_fp4ref_checkpoint(p)
        source = str(p.resolve())
    elif source == "embedded":
        ckpt = False
    else:
        raise ValueError(f"source must be a folder path or 'embedded', got {source!r}")
    if ckpt:
        if compute not in (None, "exact", "dequantized"):
            raise ValueError(f"compute must be 'exact' or 'dequantized' for an fp4ref checkpoint, got {compute!r}")
    elif compute is not None:
        raise ValueError(f"compute applies to fp4ref checkpoints only; {source!r} is a float model, got {compute!r}")
    _check_int(batch, "batch", 1)
    _check_int(seq_len, "seq_len", 1)
    _check_int(threads, "threads", 1)
    _check_int(seed, "seed", 0)
    cmd = [sys.executable, "-m", "fp4ref.efficiency", "peak", source, "--batch", str(batch), "--seq-len", str(seq_len),
           "--threads", str(threads), "--seed", str(seed)]
    if compute is not None:
        cmd += ["--compute", compute]
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """``python -m fp4ref.efficiency peak SOURCE [--compute C] [--batch B] [--seq-len L] [--threads T] [--seed S]``:
    prints one JSON line (see :func:`peak_memory_mb`)."""
    p = argparse.ArgumentParser(prog="python -m fp4ref.efficiency")
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("peak", help="load SOURCE and run one forward; print peak memory as JSON")
    pk.add_argument("source", help="fp4ref checkpoint folder, Hugging Face folder, or 'embedded'")
    pk.add_argument("--compute", choices=("exact", "dequantized"), default=None)
    pk.add_argument("--batch", type=int, default=1)
    pk.add_argument("--seq-len", type=int, default=32)
    pk.add_argument("--threads", type=int, default=2)
    pk.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(_measure(a.source, a.compute, a.batch, a.seq_len, a.threads, a.seed)))
    return 0


__all__ = ["weight_footprint", "checkpoint_bytes", "decode_speed", "peak_memory_mb", "prompt_ids"]

if __name__ == "__main__":
    raise SystemExit(main())
