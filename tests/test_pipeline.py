"""fp4ref.pipeline: your own model from disk, bounded memory, torch.distributed, resume, serving layouts.

Every model is a tiny randomly initialised checkpoint built here (tests/tiny_models.py); nothing is
downloaded. Multi-process runs use torchrun with gloo on the CPU.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers not installed (optional extra fp4ref[model])")
sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

QUIET = dict(progress=lambda s: None)
SMALL = dict(n_calib=4, calib_len=32, n_eval=2, eval_len=32)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _bits(t):
    return t.contiguous().view(torch.int32)


def _cli(*args, env=None, nproc=None, port=29511):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(port), "-m", "fp4ref"] if nproc else [sys.executable, "-m", "fp4ref"])
    return subprocess.run(cmd + ["quantize", *map(str, args)], capture_output=True, text=True,
                          env=dict(ENV, **(env or {})), timeout=600)


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = out / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    t = {}
    for f in files:
        t.update(load_file(str(out / f)))
    return t


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_models.make(tmp_path_factory.mktemp("llama") / "model", "llama")


def _groups_share_global_scale(tensors: dict, groups: list[tuple[str, ...]]) -> None:
    for g in groups:
        scales = [tensors[f"{n}.weight_global_scale"] for n in g]
        assert all(torch.equal(_bits(s), _bits(scales[0])) for s in scales), g


# -- families ---------------------------------------------------------------------------------------------------
FAMILIES = {  # family: (linears of block 0 expected in the checkpoint, fused groups)
    "llama": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"), (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))),
    "mistral": (("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"), (("q_proj", "k_proj", "v_proj"),)),
    "qwen2": (("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"), (("q_proj", "k_proj", "v_proj"),)),
    "qwen3": (("self_attn.k_proj", "mlp.gate_proj"), (("q_proj", "k_proj", "v_proj"),)),
    "phi3": (("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"), ()),
    "qwen3_moe": (("self_attn.q_proj", "mlp.experts.0.gate_proj", "mlp.experts.3.down_proj"),
                  (("experts.1.gate_proj", "experts.1.up_proj"),)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_roundtrip(tmp_path, family):
    """Quantize (GPTQ, NVFP4) and load back: the layers named by the module tree are quantized, the rest
    is copied as stored, the loaded model's perplexity is the pipeline's, and fused groups share a global scale."""
    from fp4ref.checkpoint import load_checkpoint, read_checkpoint
    from fp4ref.models import perplexity
    from fp4ref.pipeline import quantize_pretrained
    from fp4ref.pipeline.calib import cut, tokenize

    src = tiny_models.make(tmp_path / "model", family, shard="40KB" if family == "llama" else None)
    toks = tokenize(tiny_models.tokenizer(), tiny_models.TEXT)
    calib = cut(toks, 4, 32, "t", from_end=True)
    import numpy as np

    np.save(tmp_path / "calib.npy", calib.numpy())
    (tmp_path / "eval.txt").write_text(tiny_models.TEXT[:2000])
    # transformers 5 gives Qwen2 folders its own BPE tokenizer class, which reads nothing of the tiny word-level
    # vocabulary: that family runs from token ids alone, without evaluation.
    ev = dict(eval_text=tmp_path / "eval.txt") if family != "qwen2" else dict(n_eval=0)
    res = quantize_pretrained(src, tmp_path / "out", method="gptq", fmt="nvfp4", calib_tokens=tmp_path / "calib.npy",
                              **dict(SMALL, **ev), **QUIET)
    expect, fused = FAMILIES[family]
    config, plain, quantized = read_checkpoint(tmp_path / "out")
    names = set(quantized)
    for n in expect:
        assert f"model.layers.0.{n}" in names and f"model.layers.1.{n}" in names, n
    from safetensors import safe_open

    stored = {}
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            stored.update({k: h.get_tensor(k) for k in h.keys()})
    # Everything that is not a quantized weight is copied bit for bit (norms, q_norm/k_norm, biases, embeddings).
    for k, v in plain.items():
        assert k in stored and torch.equal(v.view(torch.uint8), stored[k].view(torch.uint8)), k
    assert all(f"{n}.weight" in stored for n in quantized)
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    tensors = _tensors(tmp_path / "out")
    for b in (0, 1):
        p = f"model.layers.{b}."
        groups = [tuple(p + ("self_attn." if "proj" in g[0] and g[0][0] in "qkv" else "mlp.") + n for n in g)
                  for g in fused]
        _groups_share_global_scale(tensors, groups)
        for g in groups:  # the shared scale is TE's S_enc of the group's joint amax, computed here independently
            amax = max(float(stored[f"{n}.weight"].float().abs().max()) for n in g)
            want = torch.tensor(2688.0, dtype=torch.float32) / torch.tensor(amax, dtype=torch.float32)
            assert torch.equal(_bits(tensors[f"{g[0]}.weight_global_scale"].reshape(())), _bits(want)), g
    if family == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in plain
    if family == "qwen3":
        assert "model.layers.0.self_attn.q_norm.weight" in plain
    if family == "qwen3_moe":
        assert "model.layers.0.mlp.gate.weight" in plain  # the router stays in full precision
    model = load_checkpoint(tmp_path / "out", compute="dequantized")
    if family == "qwen2":
        return
    evals = cut(tokenize(tiny_models.tokenizer(), tiny_models.TEXT[:2000]), 2, 32, "e")
    assert math.isclose(perplexity(model, evals, batch_size=1), res.perplexity, rel_tol=1e-9)
    assert res.perplexity_fp is not None and res.perplexity != res.perplexity_fp
    if family == "llama":  # the streamed distribution metrics are fp4ref.evaluation's on the whole models
        from transformers import AutoModelForCausalLM

        from fp4ref.evaluation import FloatReference

        fp = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        want = FloatReference(fp, evals, batch_size=1).evaluate(model, batch_size=1)
        got = res.metrics
        assert got.kl_mean > 0 and got.windows == 2 and got.tokens == 62
        for k in ("perplexity_fp", "perplexity", "kl_mean", "kl_p99", "top1", "dnll_mean", "dnll_se"):
            assert math.isclose(getattr(got, k), getattr(want, k), rel_tol=1e-6, abs_tol=1e-9), k
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["metrics"]["kl_mean"] == got.kl_mean


def test_moe_expert_without_tokens_falls_back_to_rtn(tmp_path):
    """An expert the router never picks gets no Hessian: it is quantized by RTN and named in the report."""
    from safetensors.torch import load_file, save_file

    from fp4ref.pipeline import quantize_pretrained

    src = tiny_models.make(tmp_path / "model", "qwen3_moe")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_experts_per_tok"] = 1
    (src / "config.json").write_text(json.dumps(cfg))
    t = load_file(str(src / "model.safetensors"))
    # Block 0's router sees only two hidden dimensions (h0, h1) with logits (h0, -h0, h1, 0): the top-1 logit is
    # max(|h0|, h1) > 0, so expert 3 (logit 0) is never chosen.
    norm = torch.zeros_like(t["model.layers.0.post_attention_layernorm.weight"])
    norm[:2] = 1
    gate = torch.zeros_like(t["model.layers.0.mlp.gate.weight"])
    gate[0, 0], gate[1, 0], gate[2, 1] = 1, -1, 1
    t["model.layers.0.post_attention_layernorm.weight"], t["model.layers.0.mlp.gate.weight"] = norm, gate
    save_file(t, str(src / "model.safetensors"), metadata={"format": "pt"})
    res = quantize_pretrained(src, tmp_path / "out", method="gptq", fmt="mxfp4", calib_text=src / "calib.txt",
                              n_calib=2, calib_len=32, n_eval=0, **QUIET)
    want = [f"model.layers.0.mlp.experts.3.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    assert sorted(res.rtn_fallback) == sorted(want)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(report["rtn_fallback"]) == sorted(want)
    rtn = [r for r in res.layers if r.block == 0 and r.name.startswith("mlp.experts.3.")]
    assert len(rtn) == 3 and all(math.isnan(r.loss) for r in rtn)


def test_unsupported_architecture_is_refused_with_module_names(tmp_path):
    """Mixtral's checkpoint names experts block_sparse_moe.experts.N.w1 while transformers fuses them under mlp:
    refused before any work, naming the block's modules."""
    src = tiny_models.make(tmp_path / "model", "mixtral")
    r = _cli("--model", src, "--out", tmp_path / "out", "--calib-text", src / "calib.txt", "--eval", 0)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not supported" in r.stderr and "mlp.experts" in r.stderr and "self_attn.q_proj" in r.stderr
    assert not (tmp_path / "out").exists()


# -- serving layouts ------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None, reason="compressed-tensors not installed")
@pytest.mark.parametrize("fmt,method,act", [("nvfp4", "rtn", True), ("mxfp4", "gptq", False), ("nvfp4", "gptq", False)])
def test_compressed_tensors_reads_pipeline_checkpoint(tmp_path, llama, fmt, method, act):
    """compressed-tensors' own decompressor on every exported layer equals fp4ref's dequantized weight (MXFP4:
    bit for bit; NVFP4: to the float32 rounding of its division order, and bit for bit after its bf16 cast), and
    a fused q/k/v load the way vLLM does it (one global scale, the max of the shards') changes no value."""
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    from fp4ref.checkpoint import read_checkpoint
    from fp4ref.pipeline import quantize_pretrained

    quantize_pretrained(llama, tmp_path / "out", method=method, fmt=fmt, act=act, calib_text=llama / "calib.txt",
                        n_calib=2, calib_len=32, n_eval=0, **QUIET)
    config, _, quantized = read_checkpoint(tmp_path / "out")
    qc = QuantizationConfig.model_validate(config["quantization_config"])
    scheme = qc.config_groups["group_0"]
    assert scheme.targets == ["Linear"] and "lm_head" in qc.ignore
    if act and fmt == "nvfp4":
        assert scheme.input_activations.dynamic == "local"
    tensors = _tensors(tmp_path / "out")
    comp = NVFP4PackedCompressor if fmt == "nvfp4" else MXFP4PackedCompressor
    for name, q in quantized.items():
        ours = q.dequantize()
        stored = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".weight")}
        theirs = comp.decompress(dict(stored), scheme)["weight"]
        if fmt == "mxfp4":
            assert torch.equal(theirs.float(), ours), name
            continue
        x_q = unpack_fp4_from_uint8(stored["weight_packed"], *ours.shape, dtype=torch.float32)
        f32 = dequantize(x_q=x_q, scale=stored["weight_scale"].float(), args=scheme.weights,
                         global_scale=stored["weight_global_scale"], dtype=torch.float32)
        assert bool(((f32 - ours).abs() <= torch.finfo(torch.float32).eps * ours.abs()).all()), name
        assert torch.equal(theirs, f32.to(torch.bfloat16)), name
        if act:
            igs = tensors[f"{name}.input_global_scale"]
            amax = config["fp4ref"]["act_amax"][name]
            assert igs.shape == (1,) and float(igs) == float(torch.tensor(2688.0) / torch.tensor(amax)), name
    if fmt == "nvfp4":  # vLLM's fused q/k/v: one scale, max over the shards; each shard must dequantize unchanged
        p = "model.layers.1.self_attn."
        shards = [p + n for n in ("q_proj", "k_proj", "v_proj")]
        fused_scale = torch.stack([tensors[f"{s}.weight_global_scale"] for s in shards]).amax(0)
        for s in shards:
            stored = {k[len(s) + 1:]: v for k, v in tensors.items() if k.startswith(s + ".weight")}
            alone = comp.decompress(dict(stored), scheme)["weight"]
            fused = comp.decompress(dict(stored, weight_global_scale=fused_scale), scheme)["weight"]
            assert torch.equal(alone, fused), s


# -- torch.distributed, resume, memory ------------------------------------------------------------------------
def _run_args(src, out):
    return ("--model", src, "--out", out, "--calib-text", src / "calib.txt", "--eval-text", src / "calib.txt",
            "--calib", 4, "--calib-len", 32, "--eval", 2, "--format", "nvfp4", "--method", "gptq", "--qep", 0.5,
            "--threads", 1, "--quiet")


def _checkpoint_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix == ".safetensors" or p.name in ("config.json", "model.safetensors.index.json")}


def test_world_sizes_give_identical_bytes(tmp_path, llama):
    """1, 2 and 4 gloo processes write the same checkpoint bytes (the fixed reduction tree)."""
    outs = {}
    for n in (1, 2, 4):
        r = _cli(*_run_args(llama, tmp_path / f"out{n}"), nproc=n, port=29520 + n)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = _checkpoint_bytes(tmp_path / f"out{n}")
        report = json.loads((tmp_path / f"out{n}" / "report.json").read_text())
        assert report["world_size"] == n and len(report["peak_host_mb_per_rank"]) == n
    assert outs[1] and outs[1].keys() == outs[2].keys() == outs[4].keys()
    for name in outs[1]:
        assert outs[2][name] == outs[1][name] and outs[4][name] == outs[1][name], name
    # A world size that does not divide the windows is refused before any work, saying what to change (each
    # rank exits with 2; torchrun itself then exits with 1 and its own summary).
    r = _cli(*_run_args(llama, tmp_path / "bad"), "--calib", 6, nproc=4, port=29529)
    assert r.returncode != 0 and "6 windows do not divide evenly over 4 processes" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_killed_run_resumes_to_identical_bytes(tmp_path):
    src = tiny_models.make(tmp_path / "model", "qwen3", layers=4)
    whole = _cli(*_run_args(src, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _cli(*_run_args(src, tmp_path / "out"), env={"FP4REF_TEST_KILL_AFTER_BLOCK": "1"})
    assert killed.returncode == -9
    assert not (tmp_path / "out" / "config.json").exists()
    again = _cli(*_run_args(src, tmp_path / "out"))  # without --resume: the folder is not empty
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = _cli(*_run_args(src, tmp_path / "out"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _checkpoint_bytes(tmp_path / "out") == _checkpoint_bytes(tmp_path / "whole")
    # --resume with other settings is refused, naming what differs
    other = _cli(*_run_args(src, tmp_path / "out"), "--resume", "--damp", 0.1)
    assert other.returncode == 2 and "damp" in other.stderr


def test_offload_dir_gives_identical_bytes(tmp_path, llama):
    from fp4ref.pipeline import quantize_pretrained

    kw = dict(method="gptq", fmt="mxfp4", calib_text=llama / "calib.txt", n_calib=2, calib_len=32, n_eval=0, **QUIET)
    quantize_pretrained(llama, tmp_path / "a", **kw)
    quantize_pretrained(llama, tmp_path / "b", offload_dir=tmp_path / "off", **kw)
    assert any((tmp_path / "off").rglob("*.pt"))
    assert _checkpoint_bytes(tmp_path / "a") == _checkpoint_bytes(tmp_path / "b")


def test_memory_does_not_grow_with_blocks(tmp_path):
    """A 24-block model and its 4-block sibling of the same width. What a block leaves behind is measured after
    each block (resident memory once the block is gone): it must stay flat, where keeping every block would add
    about 13 MiB per block (some 260 MiB by the last one). The peaks must agree within 25 % (the benchmark
    benchmarks/pipeline_memory.py measures them against the 10 % target: 4.6 % and 0.8 % there); the loose bound
    leaves room for the allocator, whose peak within a block varied by up to 170 MiB between runs."""
    reports = {}
    for layers in (4, 24):
        src = tiny_models.make(tmp_path / f"m{layers}", "llama", layers=layers, hidden=512, inter=1536, heads=8, kv=8)
        r = _cli("--model", src, "--out", tmp_path / f"o{layers}", "--calib-text", src / "calib.txt", "--calib", 2,
                 "--calib-len", 32, "--eval", 0, "--method", "rtn", "--threads", 1, "--quiet")
        assert r.returncode == 0, r.stderr[-2000:]
        reports[layers] = json.loads((tmp_path / f"o{layers}" / "report.json").read_text())
        shutil.rmtree(src)
    block_mb = (4 * 512 * 512 + 3 * 512 * 1536) * 4 / 2**20
    after = reports[24]["resident_mb_after_block_per_rank"][0]
    assert len(after) == 24 and max(after[4:]) - after[3] < 3 * block_mb, after  # flat: not +20 blocks
    peaks = {k: max(v["peak_host_mb_per_rank"]) for k, v in reports.items()}
    assert peaks[24] <= 1.25 * peaks[4], peaks


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_input_is_one_line_and_exit_2(tmp_path, llama):
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "keep.txt").write_text("mine")
    (tmp_path / "short.txt").write_text("w1 w2 w3")
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (notok / f).write_bytes((llama / f).read_bytes())
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 32, "d_model": 16}))
    (t5 / "model.safetensors").write_bytes((llama / "model.safetensors").read_bytes())
    cases = [
        (("--model", tmp_path / "missing", "--out", tmp_path / "o1"), "no such file or folder"),
        (("--model", alien, "--out", tmp_path / "o1"), "no-such-architecture"),
        (("--model", t5, "--out", tmp_path / "o1", "--eval", 0), "not a causal LM"),
        (("--model", tmp_path, "--out", tmp_path / "o2"), "no config.json"),
        (("--model", llama, "--out", tmp_path / "notempty", "--calib-text", llama / "calib.txt"), "not empty"),
        (("--model", llama, "--out", tmp_path / "o3", "--calib-text", tmp_path / "short.txt", "--eval", 0),
         "need"),
        (("--model", notok, "--out", tmp_path / "o4", "--calib-text", llama / "calib.txt", "--eval", 0),
         "no usable tokenizer"),
        (("--model", llama, "--out", tmp_path / "o5", "--calib-text", llama / "calib.txt", "--eval", 4), "--eval-text"),
        (("--model", llama, "--out", tmp_path / "o6", "--resume", "--calib-text", llama / "calib.txt"), "--resume"),
        (("--model", llama, "--calib-text", llama / "calib.txt"), "needs --out"),
        (("--model", llama, "--out", tmp_path / "o7", "--calib", "-3"), "must be >= 0"),
        (("--model", llama, "--out", tmp_path / "o8", "--shard-size", "lots"), "not a size"),
        (("--calib-text", llama / "calib.txt",), "needs --model"),
        (("--model", llama, "--out", tmp_path / "o9", "--calib-text", llama / "calib.txt", "--eval-text",
          tmp_path / "short.txt", "--eval", 1), "1 windows of 512 tokens need 512 tokens, the text gives 3"),
    ]
    for args, msg in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert (tmp_path / "notempty" / "keep.txt").read_text() == "mine"
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 10))


def test_shards_and_index(tmp_path, llama):
    from fp4ref.pipeline import quantize_pretrained

    res = quantize_pretrained(llama, tmp_path / "out", method="rtn", fmt="mxfp4", calib_text=llama / "calib.txt",
                              n_calib=2, calib_len=32, n_eval=0, shard_size=30_000, **QUIET)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == sorted(p.name for p in res.files)
    tensors = _tensors(tmp_path / "out")
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for f in files:  # a shard holds at most shard_size bytes of tensors, unless it is one tensor larger than that
        mine = [t for n, t in tensors.items() if index["weight_map"][n] == f]
        data = sum(t.numel() * t.element_size() for t in mine)
        assert data <= 30_000 or len(mine) == 1, (f, data, len(mine))
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (llama / "tokenizer.json").read_bytes()
    assert not any((tmp_path / "out" / ".fp4ref-run").glob("block-*"))


@pytest.mark.slow
def test_gguf_embedded_model(tmp_path):
    """The embedded SmolLM2 GGUF through --model (held in memory: GGUF has no per-tensor random access)."""
    from fp4ref import models
    from fp4ref.pipeline import quantize_pretrained

    if models.missing_requirements():
        pytest.skip(models.INSTALL_HINT)
    res = quantize_pretrained(models.gguf_path(), tmp_path / "out", method="rtn", fmt="mxfp4", n_calib=2,
                              calib_len=64, n_eval=2, eval_len=128, **QUIET)
    assert len(res.layers) == 30 * 7 and res.perplexity > res.perplexity_fp > 1
