"""Verifying a vector file: ``verify_file`` reads a file, re-derives every output of every case from its
inputs with the reference (``specs.OPS``) and compares bit for bit; ``verify_paths`` does it for files and
folders and prints the reports."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..codecs import check_int
from ..layouts import unpack_fp4
from ..testing import Context, code_mismatch_report, value_mismatch_report
from .specs import OPS, OpSpec, Out


@dataclass
class FileResult:
    path: str
    cases: int = 0
    tensors: int = 0
    values: int = 0
    mismatches: int = 0
    reports: list[str] | None = None


def _compare(actual: torch.Tensor, exp: Out, name: str, max_report: int) -> tuple[str | None, int]:
    if exp.is_float:
        if not actual.dtype.is_floating_point:
            return f"{name}: expected float values, got dtype {actual.dtype}", 0
        return value_mismatch_report(actual, exp.tensor, name=name, max_report=max_report)
    packed, want = exp.packed, exp.tensor
    if exp.unpacked_ok and actual.dim() and actual.shape[-1] == 2 * want.shape[-1]:
        packed, want = False, unpack_fp4(want)  # E2M1 written one code per byte: also accepted
    try:
        return code_mismatch_report(actual, want, max_report=max_report,
                                    context=Context(name, exp.fmt, exp.x, exp.x_label, packed))
    except (TypeError, ValueError) as err:
        return f"{name}: {err}", 0


def verify_file(path: str | Path, *, max_report: int = 10) -> FileResult:
    """Re-derive every output tensor of a vector file from its inputs with the reference and compare.

    Three steps: read the file and check its op and tensor names (``_read_cases``), run the op on each case's
    inputs (``_run_case``, after ``_case_problems`` checks its fields), compare each output (``_compare_outputs``).
    Every problem is one report and counts as one mismatch; nothing is raised for a bad file.
    """
    check_int(max_report, "max_report", min=0)
    res = FileResult(str(path), reports=[])
    read = _read_cases(path, res)
    if read is None:
        return res
    op, meta, cases = read
    for case, fields in sorted(cases.items()):
        res.cases += 1
        expected = _run_case(op, case, fields, meta, res)
        if expected is not None:
            _compare_outputs(case, fields, expected, OPS[op], res, max_report)
    return res


def _fail(res: FileResult, report: str) -> None:
    """Record one problem or mismatching tensor."""
    res.reports.append(report)
    res.mismatches += 1


def _read_cases(path: str | Path, res: FileResult
                ) -> tuple[str, dict[str, str], dict[str, dict[str, torch.Tensor]]] | None:
    """Step 1: read the file, check its op, group tensors ``<case>.<field>`` by case.

    Returns (op, metadata, {case: {field: tensor}}), or None (reported in ``res``) when the file cannot be read
    or names no known op. A tensor name without a dot is reported and left out.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as err:  # noqa: BLE001 - any unreadable file is a failed verification, not a crash
        _fail(res, f"cannot read: {err}")
        return None
    res.tensors = len(tensors)
    op = meta.get("op")
    if op not in OPS:
        _fail(res, f"metadata op={op!r} is not one of {sorted(OPS)}")
        return None
    cases: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if "." not in key:
            _fail(res, f"tensor {key!r} is not named <case>.<field>")
            continue
        case, field = key.rsplit(".", 1)
        cases.setdefault(case, {})[field] = t
    return op, meta, cases


def _case_problems(spec: OpSpec, fields: dict[str, torch.Tensor]) -> list[str]:
    """What makes a case unverifiable: fields the op does not know, missing inputs, no output to check."""
    unknown = sorted(set(fields) - set(spec.inputs + spec.optional + spec.outputs))
    missing = [k for k in spec.inputs if k not in fields]
    has_outputs = any(k in fields for k in spec.outputs)
    return ([f"unknown fields {unknown}"] if unknown else []) + (
        [f"missing inputs {missing}"] if missing else []) + ([] if has_outputs else ["no outputs to check"])


def _run_case(op: str, case: str, fields: dict[str, torch.Tensor], meta: dict[str, str], res: FileResult
              ) -> dict[str, Out] | None:
    """Step 2: the reference's outputs for one case's inputs, or None (reported) if the case's fields are
    wrong or the reference rejects its inputs."""
    spec = OPS[op]
    problems = _case_problems(spec, fields)
    if problems:
        _fail(res, f"{case}: " + "; ".join(problems) + f" (op {op} reads {list(spec.inputs)}, "
                   f"optional {list(spec.optional)}, and checks {list(spec.outputs)})")
        return None
    inputs = {k: fields[k] for k in spec.inputs + spec.optional if k in fields}
    try:
        return spec.compute(inputs, meta)
    except (ValueError, TypeError, NotImplementedError) as err:
        _fail(res, f"{case}: the reference rejects these inputs: {err}")
        return None


def _compare_outputs(case: str, fields: dict[str, torch.Tensor], expected: dict[str, Out], spec: OpSpec,
                     res: FileResult, max_report: int) -> None:
    """Step 3: compare each output the case holds with the reference's, bit for bit."""
    for field in (k for k in spec.outputs if k in fields):
        report, n = _compare(fields[field], expected[field], f"{case}.{field}", max_report)
        res.values += n
        if report is not None:
            _fail(res, report)


def _expand(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    return out


def verify_paths(paths: list[str], *, max_report: int = 10, quiet: bool = False) -> tuple[list[FileResult], int]:
    """Verify files (directories: every *.safetensors inside); prints reports; returns (results, exit code)."""
    files = _expand(paths)
    results = [verify_file(p, max_report=max_report) for p in files]
    for r in results:
        if r.mismatches:
            print(f"FAIL {r.path}: {r.mismatches} mismatching tensors or problems in {r.cases} cases")
            for rep in r.reports or []:
                print("  " + rep.replace("\n", "\n  "))
        elif not quiet:
            print(f"ok   {r.path}: {r.cases} cases, {r.values} values")
    bad = sum(r.mismatches for r in results)
    if not files:
        print("no .safetensors files found in " + ", ".join(paths))
    return results, int(bad > 0 or not files)
