"""No silent wrong answer (issue 12): every bad input to the public API raises ValueError or TypeError from
fp4ref itself (the raising frame is in an ``fp4ref`` module, not deep inside torch), with a message that names
the argument. A table of bad calls, each one a case; objects built or altered by hand are checked as strictly
as the library's own."""
from __future__ import annotations

import linecache
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fp4ref import codecs, formats, gemm, gptq, grids, hadamard, mx, nvfp4, ops, qep, testing, vectors
from fp4ref import nn as fnn

g = torch.Generator().manual_seed(12)
X = torch.randn(8, 64, generator=g)
QMX = ops.quantize_mx(X)
QNV = ops.quantize_nvfp4(X)
SYM = torch.eye(64, dtype=torch.float64)
META = "meta"


def mxt(**kw) -> mx.MXTensor:
    """QMX with fields replaced *after* construction (altered by hand; the constructor would refuse some)."""
    q = mx.MXTensor(QMX.data, QMX.scales, QMX.elem, QMX.block_size, QMX.shape, QMX.scale_mode, QMX.axis)
    for k, v in kw.items():
        setattr(q, k, v)
    return q


def nvt(**kw) -> nvfp4.NVFP4Tensor:
    q = nvfp4.NVFP4Tensor(QNV.data, QNV.scales, QNV.global_scale, QNV.recipe, QNV.shape, QNV.block_size)
    for k, v in kw.items():
        setattr(q, k, v)
    return q


def layer(**kw) -> fnn.FP4Linear:
    return fnn.FP4Linear(64, 8, **kw)


def rows_of(t: torch.Tensor, n: int) -> torch.Tensor:
    return t[:n]


# (id, call, the argument the message must name). Every call must raise ValueError or TypeError from fp4ref.
CASES = [
    # --- codecs and layouts
    ("encode-saturate-str", lambda: ops.encode(X, "e2m1", saturate="False"), "saturate"),
    ("encode-saturate-int", lambda: ops.encode(X, "e4m3", saturate=0), "saturate"),
    ("encode-rounding", lambda: ops.encode(X, "e2m1", rounding="rtz"), "rounding"),
    ("encode-generator", lambda: ops.encode(X, "e2m1", rounding="stochastic", generator=3), "generator"),
    ("encode-fmt", lambda: ops.encode(X, "fp5"), "fmt"),
    ("encode-fmt-list", lambda: ops.encode(X, ["e2m1"]), "fmt"),
    ("encode-x-int", lambda: ops.encode(X.int(), "e2m1"), "x"),
    ("encode-x-list", lambda: ops.encode([1.0], "e2m1"), "x"),
    ("encode-meta", lambda: ops.encode(X.to(META), "e2m1"), "meta"),
    ("decode-dtype-int", lambda: ops.decode(torch.zeros(4, dtype=torch.uint8), "e2m1", torch.int32), "dtype"),
    ("decode-dtype-str", lambda: ops.decode(torch.zeros(4, dtype=torch.uint8), "e2m1", "float32"), "dtype"),
    ("decode-codes-float", lambda: ops.decode(X, "e2m1"), "codes"),
    ("decode-meta", lambda: ops.decode(torch.zeros(4, dtype=torch.uint8, device=META), "e2m1"), "meta"),
    ("pack-odd", lambda: ops.pack_fp4(torch.zeros(3, dtype=torch.uint8)), "codes"),
    ("pack-meta", lambda: ops.pack_fp4(torch.zeros(4, dtype=torch.uint8, device=META)), "meta"),
    ("unswizzle-rows-str", lambda: ops.unswizzle_scales(torch.zeros(512, dtype=torch.uint8), "1", 4), "rows"),
    ("unswizzle-cols-neg", lambda: ops.unswizzle_scales(torch.zeros(512, dtype=torch.uint8), 1, -4), "cols"),
    ("unswizzle-cols-float", lambda: ops.unswizzle_scales(torch.zeros(512, dtype=torch.uint8), 1, 4.0), "cols"),
    ("swizzle-1d", lambda: ops.swizzle_scales(torch.zeros(4, dtype=torch.uint8)), "scales"),
    # --- quantizers
    ("qmx-block-0", lambda: ops.quantize_mx(X, block_size=0), "block_size"),
    ("qmx-block-str", lambda: ops.quantize_mx(X, block_size="32"), "block_size"),
    ("qmx-block-bool", lambda: ops.quantize_mx(X, block_size=True), "block_size"),
    ("qmx-block-float", lambda: ops.quantize_mx(X, block_size=32.0), "block_size"),
    ("qmx-axis-str", lambda: ops.quantize_mx(X, axis="0"), "axis"),
    ("qmx-axis-range", lambda: ops.quantize_mx(X, axis=5), "axis"),
    ("qmx-mode", lambda: ops.quantize_mx(X, scale_mode="FLOOR"), "scale_mode"),
    ("qmx-mode-list", lambda: ops.quantize_mx(X, scale_mode=["floor"]), "scale_mode"),
    ("qmx-elem", lambda: ops.quantize_mx(X, "e8m0"), "elem"),
    ("qmx-meta", lambda: ops.quantize_mx(X.to(META)), "meta"),
    ("qnv-recipe", lambda: ops.quantize_nvfp4(X, recipe=None), "recipe"),
    ("qnv-block-0", lambda: ops.quantize_nvfp4(X, block_size=0), "block_size"),
    ("qnv-amax-str", lambda: ops.quantize_nvfp4(X, global_amax="3"), "global_amax"),
    ("qnv-amax-bool", lambda: ops.quantize_nvfp4(X, global_amax=True), "global_amax"),
    ("qnv-amax-nan", lambda: ops.quantize_nvfp4(X, global_amax=float("nan")), "global_amax"),
    ("qnv-amax-vec", lambda: ops.quantize_nvfp4(X, global_amax=torch.ones(2)), "global_amax"),
    ("qnv-amax-meta", lambda: ops.quantize_nvfp4(X, global_amax=torch.ones((), device=META)), "global_amax"),
    ("qnv-meta", lambda: ops.quantize_nvfp4(X.to(META)), "meta"),
    # --- dequantize: output dtypes must be floating
    ("dqmx-int32", lambda: ops.dequantize_mx(QMX, torch.int32), "dtype"),
    ("dqmx-bool", lambda: ops.dequantize_mx(QMX, torch.bool), "dtype"),
    ("dqmx-method-int", lambda: QMX.dequantize(torch.int64), "dtype"),
    ("dqmx-ref-uint8", lambda: mx.dequantize_mx(QMX, torch.uint8), "dtype"),
    ("dqnv-int32", lambda: ops.dequantize_nvfp4(QNV, torch.int32), "dtype"),
    ("dqnv-bool", lambda: ops.dequantize_nvfp4(QNV, torch.bool), "dtype"),
    ("dqnv-method-int", lambda: QNV.dequantize(torch.int8), "dtype"),
    ("dqnv-ref-str", lambda: nvfp4.dequantize_nvfp4(QNV, "float32"), "dtype"),
    # --- hand-built or altered MXTensor / NVFP4Tensor
    ("mx-ctor-block-0", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 0, QMX.shape), "block_size"),
    ("mx-ctor-scales", lambda: mx.MXTensor(QMX.data, QMX.scales[:, :1], "e2m1", 32, QMX.shape), "scales"),
    ("mx-ctor-shape", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 32, (8, 32)), "data"),
    ("mx-ctor-elem-alias", lambda: mx.MXTensor(QMX.data, QMX.scales, "fp4", 32, QMX.shape), "elem"),
    ("mx-ctor-mode", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 32, QMX.shape, "nearest"), "scale_mode"),
    ("mx-ctor-axis", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 32, QMX.shape, "floor", 2), "axis"),
    ("mx-ctor-axis-str", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 32, QMX.shape, "floor", "-1"), "axis"),
    ("mx-ctor-shape-empty", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 32, ()), "shape"),
    ("mx-ctor-shape-str", lambda: mx.MXTensor(QMX.data, QMX.scales, "e2m1", 32, "8x64"), "shape"),
    ("mx-ctor-data-float", lambda: mx.MXTensor(X, QMX.scales, "e2m1", 32, QMX.shape), "data"),
    ("mx-ctor-device", lambda: mx.MXTensor(QMX.data, QMX.scales.to(META), "e2m1", 32, QMX.shape), "scales"),
    ("mx-altered-block-0", lambda: ops.dequantize_mx(mxt(block_size=0)), "block_size"),
    ("mx-altered-shape", lambda: ops.dequantize_mx(mxt(shape=torch.Size((1, 64)))), "data"),
    ("mx-altered-meta", lambda: ops.dequantize_mx(mxt(data=QMX.data.to(META), scales=QMX.scales.to(META))), "meta"),
    ("mx-altered-codes", lambda: mxt(block_size=-32).codes(), "block_size"),
    ("mx-altered-views", lambda: mxt(scales=QMX.scales[:1]).to_torch_dtypes(), "scales"),
    ("nv-ctor-block-0", lambda: nvfp4.NVFP4Tensor(QNV.data, QNV.scales, QNV.global_scale, "te", QNV.shape, 0),
     "block_size"),
    ("nv-ctor-recipe", lambda: nvfp4.NVFP4Tensor(QNV.data, QNV.scales, QNV.global_scale, "TE", QNV.shape), "recipe"),
    ("nv-ctor-gs-float", lambda: nvfp4.NVFP4Tensor(QNV.data, QNV.scales, 1.0, "te", QNV.shape), "global_scale"),
    ("nv-ctor-gs-f64", lambda: nvfp4.NVFP4Tensor(QNV.data, QNV.scales, QNV.global_scale.double(), "te", QNV.shape),
     "global_scale"),
    ("nv-ctor-scales-device", lambda: nvfp4.NVFP4Tensor(QNV.data, QNV.scales.to(META), QNV.global_scale, "te",
                                                        QNV.shape), "scales"),
    ("nv-ctor-gs-device", lambda: nvfp4.NVFP4Tensor(QNV.data, QNV.scales, QNV.global_scale.to(META), "te",
                                                    QNV.shape), "global_scale"),
    ("nv-altered-scales-device", lambda: ops.dequantize_nvfp4(nvt(scales=QNV.scales.to(META))), "scales"),
    ("nv-altered-gs-device", lambda: ops.dequantize_nvfp4(nvt(global_scale=QNV.global_scale.to(META))),
     "global_scale"),
    ("nv-altered-block-0", lambda: ops.dequantize_nvfp4(nvt(block_size=0)), "block_size"),
    ("nv-altered-shape", lambda: QNV.__class__.dequantize(nvt(shape=(8, 32))), "data"),
    # --- GEMM
    ("mm-nv-scales-device", lambda: ops.fp4_mm(nvt(scales=QNV.scales.to(META)), QNV), "scales"),
    ("mm-nv-gs-device", lambda: ops.fp4_mm(QNV, nvt(global_scale=QNV.global_scale.to(META))), "global_scale"),
    ("mm-mx-block-0", lambda: ops.fp4_mm(QMX, mxt(block_size=0)), "block_size"),
    ("mm-out-dtype", lambda: ops.fp4_mm(QMX, QMX, out_dtype=torch.int32), "out_dtype"),
    ("mm-out-dtype-str", lambda: ops.fp4_mm(QMX, QMX, out_dtype="float32"), "out_dtype"),
    ("linear-nv-gs-device", lambda: ops.fp4_linear(X, nvt(global_scale=QNV.global_scale.to(META))), "global_scale"),
    ("linear-bias-device", lambda: ops.fp4_linear(X, QMX, torch.zeros(8, device=META)), "bias"),
    ("linear-x-meta", lambda: ops.fp4_linear(X.to(META), QMX), "x"),
    ("linear-bias-shape", lambda: ops.fp4_linear(X, QMX, torch.zeros(4)), "bias"),
    ("block-sum-absolute", lambda: gemm.exact_block_sum(QMX, QMX, absolute="yes"), "absolute"),
    # --- rotations
    ("hadamard-block-3", lambda: ops.block_hadamard(X, 3), "block_size"),
    ("hadamard-block-str", lambda: ops.block_hadamard(X, "32"), "block_size"),
    ("hadamard-axis-float", lambda: ops.block_hadamard(X, 32, axis=1.0), "axis"),
    ("hadamard-signs-meta", lambda: ops.block_hadamard(X, 32, signs=torch.ones(32, device=META)), "signs"),
    ("hq-block", lambda: ops.hadamard_quantize(X, hadamard_block=48), "hadamard_block"),
    ("hq-swizzle-str", lambda: ops.hadamard_quantize(X, swizzle="no"), "swizzle"),
    ("hq-fmt", lambda: ops.hadamard_quantize(X, "fp4"), "fmt"),
    ("hadamard-matrix-dtype", lambda: ops.hadamard_matrix(4, "float32"), "dtype"),
    ("rotate-weight-list", lambda: ops.rotate_weight([[1.0]], 2), "weight"),
    ("random-signs-seed", lambda: hadamard.random_signs(4, seed="1"), "seed"),
    ("random-signs-n", lambda: hadamard.random_signs(4.0), "n"),
    # --- FP4Linear
    ("linear-block-0", lambda: layer(block_size=0), "block_size"),
    ("linear-block-odd", lambda: layer(block_size=3), "block_size"),
    ("linear-block-str", lambda: layer(block_size="32"), "block_size"),
    ("linear-in-str", lambda: fnn.FP4Linear("64", 8), "in_features"),
    ("linear-out-0", lambda: fnn.FP4Linear(64, 0), "out_features"),
    ("linear-bias-str", lambda: layer(bias="False"), "bias"),
    ("linear-act-str", lambda: layer(quantize_activations="yes"), "quantize_activations"),
    ("linear-dtype", lambda: layer(dtype=torch.int32), "dtype"),
    ("linear-fmt", lambda: layer(fmt="int4"), "fmt"),
    ("linear-recipe", lambda: layer(fmt="nvfp4", recipe="nv"), "recipe"),
    ("load-broadcast", lambda: layer().load_quantized(ops.quantize_mx(X[:1])), "shape"),
    ("load-stretch", lambda: layer().load_quantized(ops.quantize_mx(X, scale_mode="stretch")), "scale_mode"),
    ("load-block", lambda: layer().load_quantized(ops.quantize_mx(X, block_size=16)), "block_size"),
    ("load-format", lambda: layer().load_quantized(QNV), "q"),
    ("load-recipe", lambda: layer(fmt="nvfp4").load_quantized(ops.quantize_nvfp4(X, recipe="torchao")), "recipe"),
    ("load-nv-block", lambda: layer(fmt="nvfp4").load_quantized(ops.quantize_nvfp4(X, block_size=32)),
     "block_size"),
    ("load-elem", lambda: layer().load_quantized(ops.quantize_mx(X, "e4m3")), "e2m1"),
    ("load-axis", lambda: layer(block_size=8).load_quantized(ops.quantize_mx(X, block_size=8, axis=0)), "axis"),
    ("load-none", lambda: layer(fmt=None).load_quantized(QMX), "fmt"),
    ("load-meta", lambda: layer().load_quantized(mxt(data=QMX.data.to(META), scales=QMX.scales.to(META))), "meta"),
    ("load-altered", lambda: layer().load_quantized(mxt(block_size=0)), "block_size"),
    ("from-quantized-type", lambda: fnn.FP4Linear.from_quantized(X), "weight"),
    ("from-quantized-altered", lambda: fnn.FP4Linear.from_quantized(mxt(scale_mode="round")), "scale_mode"),
    ("from-quantized-bias", lambda: fnn.FP4Linear.from_quantized(QMX, torch.zeros(3)), "bias"),
    ("from-quantized-nv-device", lambda: fnn.FP4Linear.from_quantized(nvt(scales=QNV.scales.to(META))), "scales"),
    ("forward-int", lambda: layer()(torch.ones(2, 64, dtype=torch.int32)), "x"),
    ("forward-shape", lambda: layer()(torch.ones(2, 32)), "x"),
    # --- grids
    ("intgrid-symmetric-str", lambda: grids.IntGrid(symmetric="False"), "symmetric"),
    ("intgrid-bits", lambda: grids.IntGrid(bits=4.0), "bits"),
    ("intgrid-group-0", lambda: grids.IntGrid(group_size=0), "group_size"),
    ("mxgrid-block-0", lambda: grids.MXGrid(block_size=0), "block_size"),
    ("mxgrid-search", lambda: grids.MXGrid(scale_search=None), "scale_search"),
    ("nvgrid-amax-str", lambda: grids.NVFP4Grid(global_amax="3"), "global_amax"),
    ("nvgrid-amax-bool", lambda: grids.NVFP4Grid(global_amax=True), "global_amax"),
    ("nvgrid-amax-neg", lambda: grids.NVFP4Grid(global_amax=-1.0), "global_amax"),
    ("grid-quantize-fitted", lambda: grids.MXGrid().quantize(X, grids.MXGrid().fit(X[:2])), "fitted"),
    ("grid-quantize-type", lambda: grids.MXGrid().quantize(X, grids.NVFP4Grid().fit(X)), "fitted"),
    ("grid-column-index", lambda: grids.MXGrid().quantize_column(X[:, 0], 64, grids.MXGrid().fit(X)), "col_index"),
    ("grid-column-str", lambda: grids.IntGrid().quantize_column(X[:, 0], "0", grids.IntGrid().fit(X)), "col_index"),
    ("grid-refit-group", lambda: grids.MXGrid().refit_group(grids.MXGrid().fit(X), X[:, :32], 2), "group"),
    ("grid-encode-strict", lambda: grids.MXGrid().encode(grids.MXGrid().rtn(X), strict="yes"), "strict"),
    ("make-grid", lambda: grids.make_grid("int8"), "fmt"),
    # --- GPTQ / MR-GPTQ / accumulators / QEP
    ("gptq-damp-str", lambda: gptq.gptq(X, SYM, grids.IntGrid(), damp="0.01"), "damp"),
    ("gptq-damp-bool", lambda: gptq.gptq(X, SYM, grids.IntGrid(), damp=True), "damp"),
    ("gptq-damp-nan", lambda: gptq.gptq(X, SYM, grids.IntGrid(), damp=float("nan")), "damp"),
    ("gptq-act-order-str", lambda: gptq.gptq(X, SYM, grids.IntGrid(), act_order="False"), "act_order"),
    ("gptq-retries-float", lambda: gptq.gptq(X, SYM, grids.IntGrid(), damp_retries=1.0), "damp_retries"),
    ("gptq-block-str", lambda: gptq.gptq(X, SYM, grids.IntGrid(), block_size="128"), "block_size"),
    ("gptq-dtype", lambda: gptq.gptq(X, SYM, grids.IntGrid(), dtype=torch.float16), "dtype"),
    ("gptq-name", lambda: gptq.gptq(X, SYM, grids.IntGrid(), name=3), "name"),
    ("gptq-H-int", lambda: gptq.gptq(X, torch.eye(64, dtype=torch.int64), grids.IntGrid()), "H"),
    ("gptq-H-asym", lambda: gptq.gptq(X, SYM + torch.triu(torch.ones(64, 64), 1) * 0.1, grids.IntGrid()), "H"),
    ("gptq-H-meta", lambda: gptq.gptq(X, SYM.to(META), grids.IntGrid()), "H"),
    ("mr-gptq-fmt", lambda: gptq.mr_gptq(X, SYM, "int4"), "fmt"),
    ("mr-gptq-block", lambda: gptq.mr_gptq(X, SYM, hadamard_block=24), "hadamard_block"),
    ("mr-gptq-H-asym", lambda: gptq.mr_gptq(X, SYM + torch.triu(torch.ones(64, 64), 1) * 0.1), "H"),
    ("mr-gptq-amax-str", lambda: gptq.mr_gptq(X, SYM, "nvfp4", global_amax="1"), "global_amax"),
    ("mr-gptq-act-order", lambda: gptq.mr_gptq(X, SYM, act_order=1), "act_order"),
    ("hessian-d-str", lambda: gptq.HessianAccumulator("64"), "d"),
    ("hessian-dtype", lambda: gptq.HessianAccumulator(64, torch.int64), "dtype"),
    ("hessian-device", lambda: gptq.HessianAccumulator(64, device="gpu0"), "device"),
    ("hessian-add-int", lambda: gptq.HessianAccumulator(64).add(torch.ones(2, 64, dtype=torch.int32)), "x"),
    ("hessian-add-shape", lambda: gptq.HessianAccumulator(64).add(torch.ones(2, 32)), "x"),
    ("hessian-add-meta", lambda: gptq.HessianAccumulator(64).add(torch.ones(2, 64, device=META)), "x"),
    ("hessian-empty", lambda: gptq.HessianAccumulator(64).H, "inputs"),
    ("qep-acc-d", lambda: qep.QEPAccumulator(0), "d"),
    ("qep-acc-dtype", lambda: qep.QEPAccumulator(64, torch.bfloat16), "dtype"),
    ("qep-acc-add", lambda: qep.QEPAccumulator(64).add(torch.ones(2, 64), torch.ones(3, 64)), "x_hat"),
    ("qep-acc-add-type", lambda: qep.QEPAccumulator(64).add(torch.ones(2, 64), [1.0]), "x_full"),
    ("qep-alpha-str", lambda: qep.qep_target(X, SYM, SYM, alpha="0.5"), "alpha"),
    ("qep-alpha-range", lambda: qep.qep_target(X, SYM, SYM, alpha=2.0), "alpha"),
    ("qep-damp-bool", lambda: qep.qep_target(X, SYM, SYM, damp=False), "damp"),
    ("qep-H-hat-asym", lambda: qep.qep_target(X, SYM + torch.triu(torch.ones(64, 64), 1), SYM), "H_hat"),
    ("qep-H-delta-int", lambda: qep.qep_target(X, SYM, torch.eye(64, dtype=torch.int64)), "H_delta"),
    ("qep-out-dtype", lambda: qep.qep_target(X, SYM, SYM, out_dtype=torch.int32), "out_dtype"),
    ("qep-dtype", lambda: qep.qep_target(X, SYM, SYM, dtype="float64"), "dtype"),
    # --- kernel-testing helpers
    ("report-max-neg", lambda: testing.code_mismatch_report(QMX.data, QMX.data, max_report=-1), "max_report"),
    ("assert-q-max-str", lambda: testing.assert_quantized_equal(QMX, X, "mxfp4", max_report="3"), "max_report"),
    ("assert-q-swizzled", lambda: testing.assert_quantized_equal(QMX, X, "mxfp4", swizzled="no"), "swizzled"),
    ("assert-codes-meta", lambda: testing.assert_codes_equal(QMX.data.to(META), QMX.data), "actual"),
    ("value-report-meta", lambda: testing.value_mismatch_report(X, X.to(META)), "expected"),
    ("grid-fit-meta", lambda: grids.MXGrid().fit(X.to(META)), "W"),
    ("gptq-W-meta", lambda: gptq.gptq(X.to(META), SYM, grids.IntGrid()), "W"),
    ("linear-forward-meta", lambda: fnn.FP4Linear(64, 8, device=META)(X.to(META)), "meta"),
    ("hq-meta", lambda: ops.hadamard_quantize(X.to(META)), "meta"),
    ("alpha-for-str", lambda: qep.alpha_for("q_proj", "0.5"), "alpha"),
    ("alpha-for-pattern", lambda: qep.alpha_for("down_proj", 0.5, {"down": "0"}), "patterns"),
    ("verify-file-max-report", lambda: vectors.verify_file("x.safetensors", max_report=-1), "max_report"),
    ("write-vectors-force", lambda: vectors.write_vectors("/nonexistent/dir", force="yes"), "force"),
    ("near-boundary-tol", lambda: testing.near_boundary(X, "mxfp4", tol="0.1"), "tol"),
]


def _raising_frame(excinfo) -> tuple[str, str]:
    """(module, source line) of the innermost Python frame of the exception's traceback."""
    tb = excinfo.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return tb.tb_frame.f_globals.get("__name__", "?"), linecache.getline(code.co_filename, tb.tb_lineno).strip()


def check_rejected(call, arg: str) -> None:
    """``call()`` raises ValueError/TypeError by a ``raise`` statement of an fp4ref module (not an error from a
    torch function that fp4ref happened to call), with ``arg`` in the message."""
    with pytest.raises((ValueError, TypeError)) as excinfo:
        call()
    module, line = _raising_frame(excinfo)
    assert module.split(".")[0] in ("fp4ref", "fp4ref_cuda") and line.startswith("raise"), (
        f"raised from {module} ({line!r}), not by fp4ref: {excinfo.type.__name__}: {excinfo.value}")
    assert re.search(re.escape(arg), str(excinfo.value)), f"message does not name {arg!r}: {excinfo.value}"


@pytest.mark.parametrize("call,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_by_fp4ref(call, arg):
    check_rejected(call, arg)


def test_cases_have_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_the_checker_catches_errors_from_deep_inside_torch():
    """The raising-frame check is not vacuous: an error torch raises is not accepted as fp4ref's."""
    with pytest.raises(AssertionError, match="not by fp4ref"):
        check_rejected(lambda: torch.zeros(2, dtype="float32"), "dtype")  # torch's TypeError
    with pytest.raises(AssertionError, match="not by fp4ref"):  # torch's, though called from an fp4ref frame
        check_rejected(lambda: hadamard.inv_sqrt("x"), "x")  # (a builtin's ValueError in an fp4ref frame)
    with pytest.raises(AssertionError, match="does not name"):
        check_rejected(lambda: ops.quantize_mx(X, block_size=0), "scale_mode")


# --- fuzz: any value of a wrong kind, in any argument slot -------------------------------------------------
WRONG = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=True),
                  st.integers(-4, -1), st.just([1]), st.just(torch.int32))
SLOTS = {
    "block_size": lambda v: ops.quantize_mx(X, block_size=v),
    "axis": lambda v: ops.quantize_mx(X, axis=v),
    "scale_mode": lambda v: ops.quantize_mx(X, scale_mode=v),
    "elem": lambda v: ops.quantize_mx(X, v),
    "recipe": lambda v: ops.quantize_nvfp4(X, recipe=v),
    "saturate": lambda v: ops.encode(X, "e4m3", saturate=v),
    "dtype": lambda v: ops.dequantize_nvfp4(QNV, v),
    "out_dtype": lambda v: ops.fp4_mm(QMX, QMX, out_dtype=v),
    "damp": lambda v: qep.qep_target(X, SYM, SYM, damp=v),
    "alpha": lambda v: qep.qep_target(X, SYM, SYM, alpha=v),
    "swizzle": lambda v: ops.hadamard_quantize(X, swizzle=v),
    "quantize_activations": lambda v: layer(quantize_activations=v),
    "in_features": lambda v: fnn.FP4Linear(v, 8),
}
VALID = {"block_size": lambda v: False,
         "elem": lambda v: isinstance(v, str) and (v in formats.FORMATS or v in formats.ALIASES),
         "recipe": lambda v: v in nvfp4.RECIPES, "scale_mode": lambda v: v in mx.SCALE_MODES,
         "axis": lambda v: type(v) is int and -2 <= v < 2,
         "saturate": lambda v: isinstance(v, bool), "swizzle": lambda v: isinstance(v, bool),
         "quantize_activations": lambda v: isinstance(v, bool),
         "damp": lambda v: isinstance(v, float) and v >= 0 and v != float("inf"),
         "alpha": lambda v: isinstance(v, float) and 0 <= v <= 1}


@given(slot=st.sampled_from(sorted(SLOTS)), value=WRONG)
def test_fuzz_wrong_kinds(slot, value):
    if VALID.get(slot, lambda v: False)(value) or (slot == "axis" and value is None):
        return  # (a valid value; axis=None is not a wrong kind worth a case: it is never a default)
    check_rejected(lambda: SLOTS[slot](value), slot)


# --- the checks are not overzealous: valid inputs at the edge of each rule still work, bit for bit ----------
def test_stretch_weight_in_a_stretch_layer_is_exact():
    q = ops.quantize_mx(X, scale_mode="stretch")
    m = fnn.FP4Linear.from_quantized(q)
    assert m.scale_mode == "stretch"
    x = torch.randn(3, 64, generator=g)
    assert torch.equal(m(x).view(torch.int32), ops.fp4_linear(x, q).view(torch.int32))
    floor = fnn.FP4Linear(64, 8)
    with pytest.raises(ValueError, match="scale_mode"):
        floor.load_quantized(q)  # the fuzz case: a floor layer computed 3x the right output
    assert torch.equal(floor.weight_packed, torch.zeros_like(floor.weight_packed))  # nothing was copied


def test_load_quantized_copies_exactly_what_matches():
    m = fnn.FP4Linear(64, 8, fmt="nvfp4", block_size=16)
    m.load_quantized(QNV)
    assert torch.equal(m.weight_packed, QNV.data) and torch.equal(m.weight_scale, QNV.scales)
    assert torch.equal(m.weight_global_scale.view(torch.int32), QNV.global_scale.view(torch.int32))
    m2 = fnn.FP4Linear(64, 8, block_size=None)  # None (not 0) means the format's default block
    assert m2.block_size == 32
    m2.load_quantized(QMX)
    assert torch.equal(m2.weight_packed, QMX.data) and torch.equal(m2.weight_scale, QMX.scales)


def test_meta_layers_still_construct_and_load():
    m = fnn.FP4Linear(64, 8, device="meta")
    wq = m.weight_quantized  # a meta MXTensor is a valid object; only ops that read values refuse it
    assert wq.data.device.type == "meta" and tuple(wq.shape) == (8, 64)
    m.load_quantized(mxt(data=QMX.data.to(META), scales=QMX.scales.to(META)))
    with pytest.raises(ValueError, match="meta"):
        ops.dequantize_mx(wq)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_output_dtypes_still_work(dtype):
    for q, deq in ((QMX, ops.dequantize_mx), (QNV, ops.dequantize_nvfp4)):
        out = deq(q, dtype)
        assert out.dtype == dtype and torch.equal(out, deq(q).to(dtype))


def test_hessian_symmetry_tolerance_edges():
    W = torch.randn(4, 64, generator=g, dtype=torch.float64)
    A = torch.randn(64, 64, generator=g, dtype=torch.float64)
    H = A @ A.T + 64 * torch.eye(64, dtype=torch.float64)
    tol = gptq.symmetry_tolerance(torch.float64) * float(H.abs().max())
    E = torch.zeros_like(H)
    E[3, 5] = 0.5 * tol  # within the tolerance: accepted, and the lower triangle used as is
    ok = gptq.gptq(W, H + E, grids.MXGrid(), block_size=16)
    ref = gptq.gptq(W, H, grids.MXGrid(), block_size=16)
    assert torch.equal(ok.weight.view(torch.int64), ref.weight.view(torch.int64))  # E is above the diagonal
    E[3, 5] = 2 * tol
    with pytest.raises(ValueError, match=r"H must be symmetric"):
        gptq.gptq(W, H + E, grids.MXGrid())
    H32 = H.float()
    E32 = torch.zeros_like(H32)
    E32[7, 1] = 0.5 * gptq.symmetry_tolerance(torch.float32) * float(H32.abs().max())
    gptq.check_symmetric(H32 + E32)  # float32 H: a looser tolerance
    with pytest.raises(ValueError, match="H_hat must be symmetric"):
        qep.qep_target(W, H + 10 * E, H)


def test_numbers_of_other_real_types_are_accepted():
    import numpy as np

    a = ops.quantize_nvfp4(X, global_amax=np.float32(3.0))
    b = ops.quantize_nvfp4(X, global_amax=3)
    c = ops.quantize_nvfp4(X, global_amax=torch.tensor(3.0, dtype=torch.float64))
    for q in (b, c):
        assert torch.equal(q.data, a.data) and torch.equal(q.scales, a.scales)
    assert torch.equal(ops.quantize_mx(X, block_size=np.int64(32)).data, QMX.data)
    W = torch.randn(4, 64, generator=g)
    assert torch.equal(qep.qep_target(W, SYM, SYM, alpha=np.float64(0.5), damp=1),
                       qep.qep_target(W, SYM, SYM, alpha=0.5, damp=1.0))


# --- the CUDA path runs the same checks (no GPU needed: a backend that declines every call) ---------------------
class _DecliningBackend:
    """Stands in for fp4ref_cuda: records each op it is asked for and returns NotImplemented, so fp4ref.ops
    runs its shared check first (as on a GPU) and then lets the reference answer."""

    def __init__(self):
        self.called = []

    def __getattr__(self, name):
        def op(*args, **kwargs):
            self.called.append(name)
            return NotImplemented
        return op


@pytest.fixture
def cuda_path(monkeypatch):
    fake = _DecliningBackend()
    monkeypatch.setattr(ops, "backend", lambda t: "cuda")
    monkeypatch.setattr(ops, "_cuda_module", lambda: fake)
    return fake


def test_cuda_path_checks_accept_valid_calls(cuda_path):
    codes = ops.encode(X, "e4m3", saturate=False)
    assert torch.equal(codes, codecs.encode(X, "e4m3", saturate=False))
    ops.decode(codes, "e4m3", torch.bfloat16)
    ops.unswizzle_scales(ops.swizzle_scales(QMX.scales), 8, 2)
    assert torch.equal(ops.dequantize_mx(QMX, torch.float16), mx.dequantize_mx(QMX).half())
    assert torch.equal(ops.dequantize_nvfp4(QNV, torch.float64), nvfp4.dequantize_nvfp4(QNV).double())
    ops.quantize_mx(X, block_size=16, scale_mode="rceil")
    ops.quantize_nvfp4(X, global_amax=2.0)
    ops.hadamard_quantize(X, "nvfp4", swizzle=True)
    ops.fp4_mm(QNV, QNV)
    ops.fp4_linear(X, QMX, torch.zeros(8))
    assert {"encode", "decode", "unswizzle_scales", "dequantize_mx", "dequantize_nvfp4", "quantize_mx",
            "quantize_nvfp4", "hadamard_quantize", "fp4_mm", "fp4_linear"} <= set(cuda_path.called)


@pytest.mark.parametrize("case", ["encode-saturate-str", "decode-dtype-int", "unswizzle-rows-str", "dqmx-int32",
                                  "dqnv-bool", "nv-altered-scales-device", "nv-altered-gs-device", "mm-nv-gs-device",
                                  "linear-bias-device", "hq-swizzle-str", "qnv-amax-str", "qmx-block-bool"])
def test_cuda_path_rejects_before_the_kernel(cuda_path, case):
    call, arg = {c[0]: c[1:] for c in CASES}[case]
    check_rejected(call, arg)
    assert cuda_path.called == []  # refused by the shared check, before any backend function ran
