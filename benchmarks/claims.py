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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fp4ref.evaluation import EvalMetrics, verdict  # noqa: E402


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


def _spread(v) -> str:
    seed = "one draw: calibration spread unknown" if v.seed_half_width != v.seed_half_width else \
        f"seed 95% half-width {v.seed_half_width:.4f}"
    return f"{seed}; window SE {v.window_se:.4f}"


def _call(v) -> str:
    return {"better": "holds", "worse": "does not hold"}.get(v.call, "cannot tell")


def claims(root: Path) -> list[tuple[str, str, str, str, str]]:
    """Rows (paper, claim, setting, measurement, verdict)."""
    t = {n: load(root, n) for n in ("nv_w4a16", "mx_w4a16", "mx_w4a4", "nv_w4a4", "int3_g128", "int3_g128_orig",
                                    "int2_g64", "int2_g64_orig", "int3_sweep", "int3_sweep3", "mx_w4a4_gptq3",
                                    "mx_w4a4_mr3", "nv_w4a4_gptq3", "nv_w4a4_mr3")}
    out = []

    def pair(paper, claim, table, a, b, setting=None):
        if t[table] is None or a not in t[table] or b not in t[table]:
            out.append((paper, claim, setting or table, "not run", "—"))
            return
        v = verdict(t[table][a], t[table][b])
        k = len(t[table][a])
        out.append((paper, claim, setting or f"{table}: {a} vs {b}", f"ΔNLL {v.diff:+.4f} (draws {k}; {_spread(v)})", _call(v)))

    def across(paper, claim, ta, a, tb, b, setting):
        if t[ta] is None or t[tb] is None:
            out.append((paper, claim, setting, "not run", "—"))
            return
        k = min(len(t[ta][a]), len(t[tb][b]))  # draw k of one table is draw k of the other (same windows)
        v = verdict(t[ta][a][:k], t[tb][b][:k])
        out.append((paper, claim, setting, f"ΔNLL {v.diff:+.4f} (draws {k}; {_spread(v)})", _call(v)))

    def gain_larger(paper, claim, a_better, a_base, b_better, b_base, setting):
        """Is the gain (better − base, per draw and window) of cell pair A larger than that of pair B?
        Each argument is (table, row)."""
        cells = [a_better, a_base, b_better, b_base]
        if any(t[tb] is None or r not in t[tb] for tb, r in cells):
            out.append((paper, claim, setting, "not run", "—"))
            return
        x = [t[tb][r] for tb, r in cells]
        ca, cb = contrast(x[0], x[1]), contrast(x[2], x[3])
        v = verdict(ca, cb)
        out.append((paper, claim, setting, f"gain {-sum(m.dnll_mean for m in ca) / len(ca):.4f} vs "
                    f"{-sum(m.dnll_mean for m in cb) / len(cb):.4f} nats/token (difference {v.diff:+.4f}; {_spread(v)})", _call(v)))

    mr, qep, jin = "MR-GPTQ", "QEP", "Jin et al."  # arXiv 2509.23202, 2504.09629, 2402.16775
    pair(mr, "MR-GPTQ beats GPTQ on MXFP4", "mx_w4a16", "MR-GPTQ", "GPTQ")
    pair(mr, "MR-GPTQ beats GPTQ on NVFP4", "nv_w4a16", "MR-GPTQ", "GPTQ")
    gain_larger(mr, "MR-GPTQ's gain over GPTQ is larger on MXFP4 than on NVFP4", ("mx_w4a16", "MR-GPTQ"),
                ("mx_w4a16", "GPTQ"), ("nv_w4a16", "MR-GPTQ"), ("nv_w4a16", "GPTQ"),
                "mx_w4a16 vs nv_w4a16: (MR-GPTQ − GPTQ)")
    for m in ("RTN", "GPTQ", "MR-GPTQ"):
        across(mr, f"NVFP4 is more accurate than MXFP4 ({m})", "nv_w4a16", m, "mx_w4a16", m,
               f"nv_w4a16 vs mx_w4a16: {m}")
    pair(mr, "GPTQ beats RTN on MXFP4", "mx_w4a16", "GPTQ", "RTN")
    pair(mr, "GPTQ beats RTN on NVFP4", "nv_w4a16", "GPTQ", "RTN")
    pair(mr, "W4A4: MR-GPTQ beats GPTQ on MXFP4", "mx_w4a4", "MR-GPTQ", "GPTQ")
    pair(mr, "W4A4: MR-GPTQ beats GPTQ on NVFP4", "nv_w4a4", "MR-GPTQ", "GPTQ")
    for f in ("mx", "nv"):
        across(mr, f"W4A4, 3 draws: MR-GPTQ beats GPTQ on {f.upper()}FP4", f"{f}_w4a4_mr3", "MR-GPTQ + QEP(0)",
               f"{f}_w4a4_gptq3", "GPTQ + QEP(0)", f"{f}_w4a4_mr3 vs {f}_w4a4_gptq3")
    gain_larger(mr, "W4A4, 3 draws: MR-GPTQ's gain over GPTQ is larger on MXFP4 than on NVFP4",
                ("mx_w4a4_mr3", "MR-GPTQ + QEP(0)"), ("mx_w4a4_gptq3", "GPTQ + QEP(0)"),
                ("nv_w4a4_mr3", "MR-GPTQ + QEP(0)"), ("nv_w4a4_gptq3", "GPTQ + QEP(0)"),
                "mx vs nv W4A4, 3 draws: (MR-GPTQ − GPTQ)")
    for table, what in (("int3_g128_orig", "INT3 g128, original QEP settings"), ("int3_g128", "INT3 g128, ours"),
                        ("int2_g64_orig", "INT2 g64, original QEP settings"), ("int2_g64", "INT2 g64, ours")):
        pair(qep, f"QEP improves RTN ({what})", table, "RTN + QEP(0.5)", "RTN")
        pair(qep, f"QEP improves GPTQ ({what})", table, "GPTQ + QEP(0.5)", "GPTQ")
    for m in ("RTN", "GPTQ"):
        across(qep + " (settings)", f"the original code's settings beat ours ({m} + QEP, INT3 g128)", "int3_g128_orig",
               f"{m} + QEP(0.5)", "int3_g128", f"{m} + QEP(0.5)", f"int3_g128_orig vs int3_g128: {m} + QEP(0.5)")
    pair(qep, "α = 0.5 beats α = 1 (propagation as a regulariser; INT3 g128 GPTQ)", "int3_sweep",
         "GPTQ + QEP(0.5)", "GPTQ + QEP(1)")
    pair(qep, "α = 0.5 beats α = 1 (INT3 g128 GPTQ, 3 draws)", "int3_sweep3", "GPTQ + QEP(0.5)", "GPTQ + QEP(1)")
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
        print(f"\nPerplexity as a proxy (Jin et al.): {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
