"""The claims table of docs/results.md: each paper's claim that this machine can test, decided from the
results.json files that `fp4ref quantize --compare --out DIR` writes.

    python benchmarks/claims.py RESULTS_DIR

RESULTS_DIR holds one folder per table, named as docs/results.md names them (nv_w4a16, mx_w4a16, int3_g128,
...); a claim whose folders are missing is listed as "not run". Every call uses fp4ref.evaluation.verdict
(mean ΔNLL; a paired t-test over the calibration draws at 95 % and more than twice the window standard
error): A "better" than B → holds, "worse" → does not hold, else cannot tell. A claim about a difference of
differences (a gain that is larger in one format) compares the per-draw and per-window contrasts the same way.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fp4ref.evaluation import EvalMetrics, verdict


def load(root: Path, name: str) -> dict[str, list[EvalMetrics]] | None:
    """{config label: [EvalMetrics per draw]} of one table, or None when it was not run."""
    f = root / name / "results.json"
    if not f.is_file():
        return None
    rows = json.loads(f.read_text())["rows"]
    return {r["config"]: [EvalMetrics(**x["metrics"]) for x in r["runs"]] for r in rows if r["runs"]}


def contrast(a: list[EvalMetrics], b: list[EvalMetrics]) -> list[EvalMetrics]:
    """Per draw, the metrics of "A minus B" (ΔNLL and per-window ΔNLL; the rest is not used by verdict)."""
    return [EvalMetrics(0.0, 0.0, 0.0, 0.0, 0.0, x.dnll_mean - y.dnll_mean, 0.0, x.tokens, x.windows,
                        [p - q for p, q in zip(x.window_dnll, y.window_dnll)]) for x, y in zip(a, b)]


def _call(v) -> str:
    return {"better": "holds", "worse": "does not hold"}.get(v.call, "cannot tell")


def claims(root: Path) -> list[tuple[str, str, str, str, str]]:
    """Rows (paper, claim, setting, measurement, verdict)."""
    t = {n: load(root, n) for n in ("nv_w4a16", "mx_w4a16", "mx_w4a4", "nv_w4a4", "int3_g128", "int3_g128_orig",
                                    "int2_g64", "int2_g64_orig", "int3_sweep")}
    out = []

    def pair(paper, claim, table, a, b, setting=None):
        if t[table] is None or a not in t[table] or b not in t[table]:
            out.append((paper, claim, setting or table, "not run", "—"))
            return
        v = verdict(t[table][a], t[table][b])
        k = len(t[table][a])
        out.append((paper, claim, setting or f"{table}: {a} vs {b}", f"ΔNLL {v.diff:+.4f} (draws {k}; seed 95% "
                    f"half-width {v.seed_half_width:.4f}; window SE {v.window_se:.4f})", _call(v)))

    def across(paper, claim, ta, a, tb, b, setting):
        if t[ta] is None or t[tb] is None:
            out.append((paper, claim, setting, "not run", "—"))
            return
        k = min(len(t[ta][a]), len(t[tb][b]))  # draw k of one table is draw k of the other (same windows)
        v = verdict(t[ta][a][:k], t[tb][b][:k])
        out.append((paper, claim, setting, f"ΔNLL {v.diff:+.4f} (seed 95% half-width {v.seed_half_width:.4f}; "
                    f"window SE {v.window_se:.4f})", _call(v)))

    def gain_larger(paper, claim, ta, tb, better, base, setting):
        if t[ta] is None or t[tb] is None:
            out.append((paper, claim, setting, "not run", "—"))
            return
        ca, cb = contrast(t[ta][better], t[ta][base]), contrast(t[tb][better], t[tb][base])
        v = verdict(ca, cb)
        out.append((paper, claim, setting, f"gain {-sum(x.dnll_mean for x in ca) / len(ca):.4f} vs "
                    f"{-sum(x.dnll_mean for x in cb) / len(cb):.4f} nats/token (difference {v.diff:+.4f}, seed 95% "
                    f"half-width {v.seed_half_width:.4f}, window SE {v.window_se:.4f})", _call(v)))

    mr = "MR-GPTQ [MR-GPTQ paper, arXiv 2509.23202]"
    qep = "QEP [arXiv 2504.09629]"
    jin = "Jin et al. [arXiv 2402.16775]"
    pair(mr, "MR-GPTQ beats GPTQ on MXFP4", "mx_w4a16", "MR-GPTQ", "GPTQ")
    pair(mr, "MR-GPTQ beats GPTQ on NVFP4", "nv_w4a16", "MR-GPTQ", "GPTQ")
    gain_larger(mr, "MR-GPTQ's gain over GPTQ is larger on MXFP4 than on NVFP4", "mx_w4a16", "nv_w4a16",
                "MR-GPTQ", "GPTQ", "mx_w4a16 vs nv_w4a16: (MR-GPTQ − GPTQ)")
    for m in ("RTN", "GPTQ", "MR-GPTQ"):
        across(mr, f"NVFP4 is more accurate than MXFP4 ({m})", "nv_w4a16", m, "mx_w4a16", m,
               f"nv_w4a16 vs mx_w4a16: {m}")
    pair(mr, "GPTQ beats RTN on MXFP4", "mx_w4a16", "GPTQ", "RTN")
    pair(mr, "GPTQ beats RTN on NVFP4", "nv_w4a16", "GPTQ", "RTN")
    pair(mr, "W4A4: MR-GPTQ beats GPTQ on MXFP4", "mx_w4a4", "MR-GPTQ", "GPTQ")
    pair(mr, "W4A4: MR-GPTQ beats GPTQ on NVFP4", "nv_w4a4", "MR-GPTQ", "GPTQ")
    for table, what in (("int3_g128_orig", "INT3 g128, original QEP settings"), ("int3_g128", "INT3 g128, ours"),
                        ("int2_g64_orig", "INT2 g64, original QEP settings"), ("int2_g64", "INT2 g64, ours")):
        pair(qep, f"QEP improves RTN ({what})", table, "RTN + QEP(0.5)", "RTN")
        pair(qep, f"QEP improves GPTQ ({what})", table, "GPTQ + QEP(0.5)", "GPTQ")
    pair(qep, "α = 0.5 beats α = 1 (propagation as a regulariser; INT3 g128 GPTQ)", "int3_sweep",
         "GPTQ + QEP(0.5)", "GPTQ + QEP(1)")
    for fmt, table in (("MXFP4", "mx_w4a16"), ("NVFP4", "nv_w4a16")):
        for m in ("RTN", "GPTQ", "MR-GPTQ"):
            pair(qep + " (outside its setting)", f"QEP improves {m} on {fmt}", table, f"{m} + QEP(0.5)", m)
    across(jin, "4-bit (NVFP4 GPTQ) keeps far more than 3-bit (INT3 g128 GPTQ)", "nv_w4a16", "GPTQ", "int3_g128",
           "GPTQ", "nv_w4a16 GPTQ vs int3_g128 GPTQ")
    across(jin, "3-bit (INT3 g128 GPTQ) keeps more than 2-bit (INT2 g64 GPTQ)", "int3_g128", "GPTQ", "int2_g64",
           "GPTQ", "int3_g128 GPTQ vs int2_g64 GPTQ")
    return out


def proxy(root: Path) -> str | None:
    """Jin et al.'s "perplexity is a proxy": Spearman ρ of perplexity against mean KL and against top-1
    disagreement over every quantized row (mean over draws) of every table found."""
    from scipy.stats import spearmanr

    ppl, kl, dis = [], [], []
    for f in sorted(root.glob("*/results.json")):
        for r in json.loads(f.read_text())["rows"]:
            if r["runs"]:
                ms = [x["metrics"] for x in r["runs"]]
                ppl.append(sum(m["perplexity"] for m in ms) / len(ms))
                kl.append(sum(m["kl_mean"] for m in ms) / len(ms))
                dis.append(1 - sum(m["top1"] for m in ms) / len(ms))
    if len(ppl) < 3:
        return None
    a, b = spearmanr(ppl, kl), spearmanr(ppl, dis)
    return (f"over {len(ppl)} quantized rows: Spearman ρ(perplexity, KL mean) = {a.statistic:.3f} (p = {a.pvalue:.1e}), "
            f"ρ(perplexity, top-1 disagreement) = {b.statistic:.3f} (p = {b.pvalue:.1e})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder holding one --out folder per table")
    a = ap.parse_args(argv)
    if not a.root.is_dir():
        print(f"claims.py: {a.root}: not a folder", file=sys.stderr)
        return 2
    print("| paper | claim | setting | measurement | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for row in claims(a.root):
        print("| " + " | ".join(row) + " |")
    p = proxy(a.root)
    if p:
        print(f"\nPerplexity as a proxy ({'Jin et al.'}): {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
