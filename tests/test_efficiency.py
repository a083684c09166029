"""fp4ref.efficiency: weight footprint against closed-form bits per weight, checkpoint bytes against file sizes,
greedy decoding against a no-cache recomputation, peak memory of a fresh process, argument errors."""
import importlib.util
import math
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers not installed (optional extra fp4ref[model])")

V, H, INTER, L = 96, 64, 96, 2  # K in {64, 96}: multiples of both block sizes (16, 32)


def _float_model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=INTER, num_hidden_layers=L,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # wider than the default init, so that greedy tokens vary along the sequence
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def _quantized(fmt, seed=0, compute="exact"):
    from fp4ref.nn import FP4Linear, quantize_linear_layers

    model = _float_model(seed)
    quantize_linear_layers(model, "model.layers.*", fmt=fmt)
    for m in model.modules():
        if isinstance(m, FP4Linear):
            m.compute = compute
    return model


def _linear_shapes():
    """(out, in) of every decoder linear of the tiny Llama, written out: q, k, v, o, gate, up, down per block."""
    kv = 2 * (H // 4)  # 2 kv heads of head_dim 16
    per_block = [(H, H), (kv, H), (kv, H), (H, H), (INTER, H), (INTER, H), (H, INTER)]
    return per_block * L


def _rope_elements(model):
    """RoPE's float32 buffers (inv_freq and, in newer transformers, its original copy)."""
    return sum(b.numel() for n, b in model.named_buffers() if "rotary_emb" in n)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_footprint_matches_closed_form(fmt):
    from fp4ref.efficiency import weight_footprint

    model = _quantized(fmt)
    fp = weight_footprint(model)
    shapes = _linear_shapes()
    w = sum(n * k for n, k in shapes)
    block = {"mxfp4": 32, "nvfp4": 16}[fmt]
    assert fp["layers"] == len(shapes) == 14 and fp["weights"] == w
    assert fp["packed_bytes"] == w // 2 and fp["block_scale_bytes"] == w // block
    if fmt == "mxfp4":  # 4-bit codes + one 8-bit E8M0 per 32 weights, no tensor scale
        assert fp["global_scale_bytes"] == 0
        assert fp["bits_per_weight"] == 4.25
    else:  # 4-bit codes + one 8-bit E4M3 per 16 weights + one float32 per layer
        assert fp["global_scale_bytes"] == 4 * len(shapes)
        assert math.isclose(fp["bits_per_weight"], 4.5 + 32 * len(shapes) / w, rel_tol=1e-12)
    # Everything else: the tied embedding once, two RMSNorm weights per block, the final norm, RoPE's buffers.
    assert fp["other_elements"] == V * H + L * 2 * H + H + _rope_elements(model)
    assert fp["other_bytes"] == 4 * fp["other_elements"]
    assert fp["total_bytes"] == fp["quantized_bytes"] + fp["other_bytes"]


def test_footprint_float_model_has_no_quantized_weights():
    from fp4ref.efficiency import weight_footprint

    fp = weight_footprint(_float_model())
    assert fp["layers"] == 0 and fp["weights"] == 0 and fp["bits_per_weight"] is None
    w = sum(n * k for n, k in _linear_shapes())
    assert fp["other_bytes"] == 4 * (w + V * H + L * 2 * H + H + _rope_elements(_float_model()))


def test_checkpoint_bytes_is_the_safetensors_files(tmp_path):
    from fp4ref.checkpoint import save_checkpoint
    from fp4ref.efficiency import checkpoint_bytes, weight_footprint

    model = _quantized("nvfp4")
    out = save_checkpoint(model, tmp_path / "ckpt")
    (out / "extra.safetensors").write_bytes(b"x" * 1234)  # a second shard counts; config.json does not
    sizes = [os.path.getsize(out / f) for f in os.listdir(out) if f.endswith(".safetensors")]
    assert len(sizes) == 2
    got = checkpoint_bytes(out)
    assert got == sum(sizes) and got == checkpoint_bytes(str(out))
    # The weight file holds the footprint's tensors plus a JSON header, nothing more.
    extra = got - 1234 - weight_footprint(model)["total_bytes"]
    assert 0 < extra < 16384


def test_checkpoint_bytes_bad_folders(tmp_path):
    from fp4ref.efficiency import checkpoint_bytes

    with pytest.raises(ValueError, match="directory .* is not a folder"):
        checkpoint_bytes(tmp_path / "missing")
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        checkpoint_bytes(tmp_path)
    with pytest.raises(ValueError, match="directory must be a path"):
        checkpoint_bytes(3)


@torch.no_grad()
def _greedy_without_cache(model, ids, steps):
    """Oracle: the whole sequence recomputed at each step, no KV cache."""
    seq = ids
    for _ in range(steps):
        nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, ids.shape[1]:]


@pytest.mark.parametrize("fmt", [None, "mxfp4"])
def test_decode_speed_numbers_and_tokens(fmt):
    from fp4ref.efficiency import decode_speed, prompt_ids

    model = _float_model() if fmt is None else _quantized(fmt)
    before = torch.get_num_threads()
    r = decode_speed(model, batch=3, prompt_len=5, new_tokens=4, threads=1, repeats=2, seed=7)
    assert torch.get_num_threads() == before
    assert len(r["seconds"]) == 2 and len(r["tokens_per_s_runs"]) == 2
    for k in ("tokens_per_s", "prefill_s", "decode_s", "ms_per_step"):
        assert math.isfinite(r[k]) and r[k] > 0, k
    assert r["tokens_per_s"] == pytest.approx(3 * 4 / r["decode_s"], rel=0.5)
    assert (r["batch"], r["new_tokens"], r["threads"], r["repeats"]) == (3, 4, 1, 2)
    ids = prompt_ids(V, 3, 5, 7)
    assert torch.equal(ids[:1], prompt_ids(V, 1, 5, 7))  # the batch-1 prompt is row 0 of every batch
    want = _greedy_without_cache(model, ids, 5)
    assert r["tokens"] == want.tolist()
    assert len(set(r["tokens"][0])) > 1  # not a constant sequence (the check above would be weak)


def test_exact_and_dequantized_decode_the_same_tokens():
    from fp4ref.efficiency import decode_speed

    kw = dict(batch=2, prompt_len=6, new_tokens=5, threads=1, repeats=1, seed=3, warmup=False)
    exact = decode_speed(_quantized("nvfp4", compute="exact"), **kw)
    deq = decode_speed(_quantized("nvfp4", compute="dequantized"), **kw)
    assert exact["tokens"] == deq["tokens"]


@pytest.mark.parametrize("arg,value", [("batch", 0), ("prompt_len", 0), ("new_tokens", 0), ("threads", 0),
                                       ("repeats", 0), ("seed", -1), ("batch", True), ("new_tokens", 1.5)])
def test_decode_speed_bad_arguments(arg, value):
    from fp4ref.efficiency import decode_speed

    kw = dict(batch=1, prompt_len=4, new_tokens=2, threads=1, repeats=1, seed=0)
    kw[arg] = value
    with pytest.raises(ValueError, match=f"^{arg} must be"):
        decode_speed(_float_model(), **kw)


def test_bad_models_and_sources(tmp_path):
    from fp4ref.efficiency import decode_speed, peak_memory_mb, weight_footprint

    with pytest.raises(ValueError, match="model must be"):
        weight_footprint("model")
    with pytest.raises(ValueError, match="model must be"):
        decode_speed(None)
    with pytest.raises(ValueError, match="source must be"):
        peak_memory_mb(tmp_path)  # no config.json
    with pytest.raises(ValueError, match="source must be"):
        peak_memory_mb(3)
    with pytest.raises(ValueError, match="compute applies to fp4ref checkpoints only"):
        peak_memory_mb("embedded", compute="exact")


def _vm_hwm_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_peak_memory_of_a_fresh_process(tmp_path):
    from fp4ref.checkpoint import save_checkpoint
    from fp4ref.efficiency import peak_memory_mb

    out = save_checkpoint(_quantized("mxfp4"), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="compute must be"):
        peak_memory_mb(out, compute="fast")
    with pytest.raises(ValueError, match="batch must be"):
        peak_memory_mb(out, batch=0)
    big = torch.ones(256 * 2**20)  # 1 GiB touched here: a child must not report this process's peak as its own
    parent_peak = _vm_hwm_mb()
    r = peak_memory_mb(out, compute="dequantized", batch=2, seq_len=8, threads=1)
    del big
    assert r["run_peak_mb"] < parent_peak - 512
    assert r["kind"] == "fp4ref checkpoint, compute=dequantized" and (r["batch"], r["seq_len"]) == (2, 8)
    assert 0 < r["import_mb"] <= r["load_peak_mb"] <= r["run_peak_mb"]
    assert r["model_run_mb"] == pytest.approx(r["run_peak_mb"] - r["import_mb"])
    assert r["forward_s"] > 0 and r["load_s"] > 0
