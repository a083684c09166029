"""Tiny randomly initialised Hugging Face checkpoints, built in the test (nothing is downloaded).

Each family's config is its transformers class with a small width; weights come from a seeded init; the
tokenizer is a word-level ``tokenizers`` vocabulary of a fixed text, saved as tokenizer.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = " ".join(f"w{i % 97} v{(i * 7) % 53} u{(i * 13) % 31}" for i in range(4000))
VOCAB = 192


def _common(hidden=64, layers=2, inter=96, heads=4, kv=2):
    return dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=512,
                bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)


def config(family: str, **kw):
    import transformers as tf

    c = _common(**{k: v for k, v in kw.items() if k in ("hidden", "layers", "inter", "heads", "kv")})
    if family == "llama":
        return tf.LlamaConfig(**c)
    if family == "mistral":
        return tf.MistralConfig(**c, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**c)
    if family == "qwen3":
        return tf.Qwen3Config(**c, head_dim=16)
    if family == "phi3":
        return tf.Phi3Config(**c)
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(**c, head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                 decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    if family == "mixtral":
        return tf.MixtralConfig(**c, num_local_experts=4, num_experts_per_tok=2)
    raise ValueError(family)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.split()))
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3}
    for w in words:
        vocab[w] = len(vocab)
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make(path: Path, family: str = "llama", *, seed: int = 0, shard: str | None = None, dtype=torch.float32,
         **kw) -> Path:
    """Writes a tiny ``family`` checkpoint (config, safetensors, tokenizer) to ``path``; returns it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = config(family, **kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # a wider init than the default 0.02, so that quantization errors are visible
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
            elif "bias" in n:
                p.normal_(0, 0.02)
    model = model.to(dtype)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size=shard or "5GB")
    tokenizer().save_pretrained(path)
    # transformers 5 picks a family's own tokenizer class (Qwen2's BPE) unless the config names the generic one.
    tc = path / "tokenizer_config.json"
    tc.write_text(json.dumps(dict(json.loads(tc.read_text()), tokenizer_class="PreTrainedTokenizerFast")))
    (path / "calib.txt").write_text(TEXT)
    return path
