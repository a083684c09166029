"""Checkpoints in the compressed-tensors NVFP4 / MXFP4 layouts (SPEC §15)."""
import importlib.util

import pytest
import torch

from fp4ref.checkpoint import (decode_global_scale, encode_global_scale, pack_tensors, quantization_config,
                               unpack_tensors)
from fp4ref.mx import quantize_mx
from fp4ref.nvfp4 import quantize_nvfp4

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _weight(seed=0, shape=(48, 128)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 0.1
    w[0, :16] = 0.0  # an all-zero block
    w[1, 0] = -0.0
    return w


def _bits(t):
    return t.contiguous().view(torch.int32)


def _nibble_values(packed):
    """E2M1 values from a packed tensor, element 2i in the low nibble (written independently of fp4ref)."""
    lo, hi = packed & 0xF, packed >> 4
    codes = torch.stack([lo, hi], -1).reshape(packed.shape[0], -1).long()
    mag = E2M1[codes & 7]
    return torch.where(codes >= 8, -mag, mag)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_layout_fields(fmt):
    w = _weight()
    q = quantize_nvfp4(w) if fmt == "nvfp4" else quantize_mx(w, "e2m1", block_size=32)
    t = pack_tensors("model.layers.0.mlp.up_proj", q)
    p = "model.layers.0.mlp.up_proj"
    packed, scale = t[f"{p}.weight_packed"], t[f"{p}.weight_scale"]
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (48, 64)
    if fmt == "nvfp4":
        assert set(t) == {f"{p}.weight_packed", f"{p}.weight_scale", f"{p}.weight_global_scale"}
        assert scale.dtype == torch.float8_e4m3fn and tuple(scale.shape) == (48, 8)
        gs = t[f"{p}.weight_global_scale"]
        assert gs.dtype == torch.float32 and tuple(gs.shape) == (1,)
        # Stored inverted: the encode-direction scale 2688 / amax, not the decode one.
        assert abs(float(gs) - 448 * 6 / float(w.abs().max())) <= 1e-6 * float(gs)
        # Dequantize from the stored fields alone, in SPEC §5's order.
        vals = _nibble_values(packed).reshape(48, 8, 16) * scale.float().unsqueeze(-1)
        ref = (vals * (torch.ones(()) / gs.reshape(()))).reshape(48, 128)
    else:
        assert set(t) == {f"{p}.weight_packed", f"{p}.weight_scale"}
        assert scale.dtype == torch.uint8 and tuple(scale.shape) == (48, 4)
        ref = (_nibble_values(packed).reshape(48, 4, 32)
               * torch.exp2(scale.double() - 127).float().unsqueeze(-1)).reshape(48, 128)
    assert torch.equal(_bits(ref), _bits(q.dequantize()))


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roundtrip_bit_identical(fmt, seed):
    w = _weight(seed) * (10.0 ** (seed - 1))
    q = quantize_nvfp4(w) if fmt == "nvfp4" else quantize_mx(w, "e2m1", block_size=32)
    back = unpack_tensors(pack_tensors("x", q), "x", fmt, tuple(w.shape))
    assert torch.equal(back.data, q.data) and torch.equal(back.scales, q.scales)
    assert torch.equal(_bits(back.dequantize()), _bits(q.dequantize()))


def test_global_scale_inversion_exact():
    g = torch.Generator().manual_seed(3)
    amax = torch.rand(3000, generator=g) * 100 + 1e-3
    s_enc = torch.tensor(2688.0) / amax  # as the TE recipe makes it
    s_dec = torch.ones(()) / s_enc
    for s in s_dec:
        assert torch.equal(decode_global_scale(encode_global_scale(s)), s.reshape(()))


def test_global_scale_without_preimage_raises():
    # Near 2, reciprocals of consecutive floats step by up to 2 ulps: some values are no reciprocal at all.
    base = torch.tensor(1.999, dtype=torch.float32)
    raised = 0
    for k in range(64):
        s = base.view(torch.int32) + k
        s = s.view(torch.float32)
        try:
            gs = encode_global_scale(s)
        except ValueError as e:
            assert "fp32(1/g)" in str(e)
            raised += 1
        else:
            assert torch.equal(decode_global_scale(gs), s.reshape(()))
    assert raised > 0
    with pytest.raises(ValueError, match="finite and positive"):
        encode_global_scale(torch.tensor(0.0))


def test_bad_inputs():
    with pytest.raises(ValueError, match="stretch"):
        pack_tensors("x", quantize_mx(_weight(), "e2m1", block_size=32, scale_mode="stretch"))
    with pytest.raises(TypeError, match="MXTensor or NVFP4Tensor"):
        pack_tensors("x", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="no compressed-tensors layout"):
        quantization_config("int4", ["x"], act=False)
    t = pack_tensors("x", quantize_nvfp4(_weight()))
    with pytest.raises(ValueError, match="weight_packed must be uint8"):
        unpack_tensors(t, "x", "nvfp4", (48, 256))


@pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None,
                    reason="compressed-tensors not installed (pip install compressed-tensors)")
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_compressed_tensors_reads_our_layout(fmt):
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    w = _weight(5, (64, 256))
    q = quantize_nvfp4(w) if fmt == "nvfp4" else quantize_mx(w, "e2m1", block_size=32)
    ours = q.dequantize()
    cfg = QuantizationConfig.model_validate(quantization_config(fmt, ["layer"], act=True))
    scheme = cfg.config_groups["group_0"]
    stored = {k.split(".", 1)[1]: v for k, v in pack_tensors("layer", q).items()}
    comp = NVFP4PackedCompressor if fmt == "nvfp4" else MXFP4PackedCompressor
    theirs = comp.decompress(dict(stored), scheme)["weight"]  # compressed-tensors' own path (bfloat16 out)
    assert theirs.dtype == torch.bfloat16 and theirs.shape == ours.shape
    if fmt == "mxfp4":
        # code · 2^X is exact in bfloat16, so every value must match.
        assert torch.equal(theirs.float(), ours)
        return
    # NVFP4: compressed-tensors computes code · fp32(s_b / g), we fp32(code · s_b) · fp32(1/g): the two
    # float32 values may differ by rounding only; check that at float32, then through its bf16 cast.
    x_q = unpack_fp4_from_uint8(stored["weight_packed"], 64, 256, dtype=torch.float32)
    f32 = dequantize(x_q=x_q, scale=stored["weight_scale"].float(), args=scheme.weights,
                     global_scale=stored["weight_global_scale"], dtype=torch.float32)
    ulp = torch.finfo(torch.float32).eps * ours.abs()
    assert bool(((f32 - ours).abs() <= ulp).all())
    assert torch.equal(theirs, f32.to(torch.bfloat16))
    same = (theirs == ours.to(torch.bfloat16)).float().mean()
    assert float(same) > 0.999


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers not installed (optional extra fp4ref[model])")
@pytest.mark.parametrize("fmt,method,act", [("nvfp4", "gptq", False), ("mxfp4", "mr-gptq", True)])
def test_model_checkpoint_roundtrip(tmp_path, fmt, method, act):
    from transformers import LlamaConfig, LlamaForCausalLM

    from fp4ref.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from fp4ref.model import quantize_model
    from fp4ref.nn import FP4Linear

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    calib = torch.randint(0, 96, (4, 24))
    quantize_model(model, calib, method=method, fmt=fmt, act=act, progress=lambda s: None)
    out = save_checkpoint(model, tmp_path / "ckpt", metadata={"note": "test"})
    config, plain, quantized = read_checkpoint(out)
    assert config["quantization_config"]["format"] == f"{fmt}-pack-quantized"
    assert len(quantized) == 14 and "lm_head.weight" not in plain
    loaded = load_checkpoint(out, compute="dequantized")
    mine = {n: m for n, m in model.named_modules() if isinstance(m, FP4Linear)}
    theirs = {n: m for n, m in loaded.named_modules() if isinstance(m, FP4Linear)}
    assert mine.keys() == theirs.keys()
    for n, m in mine.items():
        assert torch.equal(_bits(theirs[n].dequantized_weight()), _bits(m.dequantized_weight())), n
        assert theirs[n].rotation == m.rotation and theirs[n].quantize_activations == m.quantize_activations
    for n, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[n], t), n
    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        # The default load computes through fp4ref.ops (the reference GEMM here, the FP4 GEMM on a GPU): the same
        # model up to the float32 GEMM's rounding.
        exact = load_checkpoint(out)
        assert all(m.compute == "exact" for m in exact.modules() if isinstance(m, FP4Linear))
        a, b = model(ids).logits, exact(ids).logits
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)


def test_read_checkpoint_bad_folders(tmp_path):
    from fp4ref.checkpoint import read_checkpoint

    with pytest.raises(ValueError, match="cannot read config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="no 'fp4ref' section"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"fp4ref": {"format": "nvfp4", "shapes": {}}}')
    with pytest.raises(ValueError, match="missing or unreadable"):
        read_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="damaged|unreadable"):
        read_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="directory"):
        read_checkpoint(3)
