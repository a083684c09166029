"""fp4ref.evaluation: the distribution metrics against scipy/numpy computed independently, hand-checked values,
the decision rule against scipy's paired t-test, and the disjoint calibration draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from fp4ref.evaluation import (EvalMetrics, FloatReference, calibration_draws, mean_sd, paired_verdict, summarize,
                               token_nll, verdict, window_stats)


def test_kl_by_hand():
    # P = (1/2, 1/2), Q = (3/4, 1/4): KL = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3); the true next token is 1.
    lf = torch.tensor([[0.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    lq = torch.tensor([[math.log(3.0), 0.0], [5.0, 0.0]], dtype=torch.float64)
    s = window_stats(lf, lq, torch.tensor([0, 1]))
    assert s.kl.shape == (1,) and math.isclose(float(s.kl[0]), 0.5 * math.log(4 / 3), rel_tol=1e-14)
    assert math.isclose(float(s.nll_fp[0]), math.log(2), rel_tol=1e-14)
    assert math.isclose(float(s.nll_q[0]), math.log(4), rel_tol=1e-14)
    assert float(s.agree[0]) == 1.0  # argmax P = 0 (tie goes to the lowest index), argmax Q = 0


def test_window_stats_match_scipy():
    g = torch.Generator().manual_seed(0)
    L, V = 40, 300
    lf, lq = torch.randn(L, V, generator=g) * 3, torch.randn(L, V, generator=g) * 3
    ids = torch.randint(0, V, (L,), generator=g)
    s = window_stats(lf, lq, ids)
    lpf = special.log_softmax(lf[:-1].double().numpy(), axis=-1)
    lpq = special.log_softmax(lq[:-1].double().numpy(), axis=-1)
    kl = special.rel_entr(np.exp(lpf), np.exp(lpq)).sum(-1)
    np.testing.assert_allclose(s.kl.numpy(), kl, rtol=1e-10, atol=1e-13)
    y = ids[1:].numpy()
    np.testing.assert_allclose(s.nll_fp.numpy(), -lpf[np.arange(L - 1), y], rtol=1e-12)
    np.testing.assert_allclose(s.nll_q.numpy(), -lpq[np.arange(L - 1), y], rtol=1e-12)
    assert torch.equal(s.agree, torch.from_numpy((lpf.argmax(-1) == lpq.argmax(-1)).astype(np.float64)))
    same = window_stats(lf, lf, ids)
    assert float(same.kl.abs().max()) < 1e-12 and float(same.agree.min()) == 1.0


def test_summarize_by_hand():
    g = torch.Generator().manual_seed(1)
    wins = []
    for _ in range(5):
        lf, lq = torch.randn(17, 50, generator=g), torch.randn(17, 50, generator=g)
        wins.append(window_stats(lf, lq, torch.randint(0, 50, (17,), generator=g)))
    m = summarize(wins)
    d = np.array([float((w.nll_q - w.nll_fp).mean()) for w in wins])
    assert m.windows == 5 and m.tokens == 80
    assert math.isclose(m.dnll_se, d.std(ddof=1) / math.sqrt(5), rel_tol=1e-12)
    assert math.isclose(m.dnll_mean, d.mean(), rel_tol=1e-12)
    kl = np.concatenate([w.kl.numpy() for w in wins])
    assert math.isclose(m.kl_p99, float(np.percentile(kl, 99)), rel_tol=1e-12)
    assert math.isclose(m.kl_mean, kl.mean(), rel_tol=1e-12)
    nll_q = np.concatenate([w.nll_q.numpy() for w in wins])
    assert math.isclose(m.perplexity, math.exp(nll_q.mean()), rel_tol=1e-12)
    assert math.isclose(math.log(m.perplexity / m.perplexity_fp), m.dnll_mean, rel_tol=1e-9)
    assert math.isnan(summarize(wins[:1]).dnll_se)


def test_paired_verdict_is_scipys_paired_t_test():
    g = np.random.default_rng(0)
    seen = set()
    for trial in range(200):
        k = int(g.integers(2, 6))
        b = g.normal(1.0, 0.1, k)
        a = b + g.normal(g.choice([-0.05, 0.0, 0.05]), 0.03, k)
        p = stats.ttest_rel(a, b).pvalue
        want = "cannot tell" if not p < 0.05 else ("better" if (a - b).mean() < 0 else "worse")
        got = paired_verdict(list(a), list(b))
        assert got == want, (trial, a, b, p)
        seen.add(got)
    assert seen == {"better", "worse", "cannot tell"}
    assert paired_verdict([1.0], [2.0]) == "cannot tell"  # one draw: the spread is unknown
    with pytest.raises(ValueError, match="same length"):
        paired_verdict([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level"):
        paired_verdict([1.0, 2.0], [1.0, 3.0], level=1.5)


def _metrics(dnll: float, windows: list[float]) -> EvalMetrics:
    return EvalMetrics(1.0, 1.0, 0.0, 0.0, 1.0, dnll, 0.0, 10, len(windows), windows)


def test_verdict_needs_both_spreads_beaten():
    # Seeds agree (paired t-test passes) and the windows agree: better.
    a = [_metrics(0.10, [0.09, 0.10, 0.11]), _metrics(0.11, [0.10, 0.11, 0.12])]
    b = [_metrics(0.20, [0.19, 0.20, 0.21]), _metrics(0.22, [0.21, 0.22, 0.23])]
    v = verdict(a, b)
    assert v.call == "better" and math.isclose(v.diff, -0.105, rel_tol=1e-12)
    assert verdict(b, a).call == "worse"
    # Same seed means, but the per-window differences scatter more than |diff| / 2 SE: cannot tell.
    a2 = [_metrics(0.10, [-0.5, 0.3, 0.5]), _metrics(0.11, [-0.47, 0.33, 0.47])]
    assert verdict(a2, b).call == "cannot tell"
    assert verdict(a[:1], b[:1]).call == "cannot tell"


def test_calibration_draws_are_disjoint_and_stable():
    toks = torch.arange(10_000)
    draws = calibration_draws(toks, start=1000, n_calib=5, calib_len=64, seeds=4)
    assert [d.shape for d in draws] == [(5, 64)] * 4
    starts = torch.cat([d[:, 0] for d in draws])
    assert starts.unique().numel() == 20 and int(starts.min()) >= 1000
    # windows are aligned to the end of the text and never straddle two windows
    assert bool(((10_000 - starts) % 64 == 0).all()) and bool((draws[0][:, 1:] - draws[0][:, :-1] == 1).all())
    more = calibration_draws(toks, start=1000, n_calib=5, calib_len=64, seeds=6)
    assert all(torch.equal(x, y) for x, y in zip(draws, more))
    # (10000 - 1000) // 64 = 140 windows: 28 draws of 5 fit, 29 do not
    calibration_draws(toks, start=1000, n_calib=5, calib_len=64, seeds=28)
    with pytest.raises(ValueError, match="at most 28 seeds"):
        calibration_draws(toks, start=1000, n_calib=5, calib_len=64, seeds=29)
    with pytest.raises(ValueError, match="seeds"):
        calibration_draws(toks, start=0, n_calib=5, calib_len=64, seeds=0)


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(float(np.std([1, 2, 4], ddof=1))))
    assert math.isnan(mean_sd([3.0])[1])


def test_token_nll_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        token_nll(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits_fp"):
        window_stats(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


class _Toy(torch.nn.Module):
    """A causal-LM stand-in: logits = embedding of the token, optionally perturbed."""

    def __init__(self, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.emb = torch.nn.Parameter(torch.randn(40, 40, generator=g) * scale)

    def forward(self, input_ids, use_cache=False):
        return type("Out", (), {"logits": self.emb[input_ids]})()


def test_float_reference():
    windows = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(2))
    ref = FloatReference(_Toy(1.0), windows)
    same = ref.evaluate(_Toy(1.0))
    assert same.kl_mean == 0.0 and same.top1 == 1.0 and same.dnll_mean == 0.0
    assert math.isclose(same.perplexity, ref.perplexity, rel_tol=1e-15)
    other = ref.evaluate(_Toy(1.3))
    assert other.kl_mean > 0 and other.windows == 3 and other.tokens == 33
    with pytest.raises(ValueError, match="windows"):
        FloatReference(_Toy(1.0), windows.float())


def test_cli_bad_evaluation_options_are_one_line(capsys):
    """Bad --seeds / --sweep-qep / --eval / --group-size are one line and exit code 2, before any model loads."""
    from fp4ref.model_cli import cli_quantize

    for argv, words in ((["--seeds", "0"], "--seeds: must be >= 1"),
                        (["--compare", "--sweep-qep", "0,1.5"], "alpha must be in [0, 1]"),
                        (["--sweep-qep", "0,0.5"], "--sweep-qep needs --compare"),
                        (["--eval", "0"], "--eval 0 needs --model"),
                        (["--seeds", "3", "--out", "x"], "with --seeds > 1 use --compare"),
                        (["--format", "nvfp4", "--group-size", "64"], "for the int formats"),
                        (["--format", "int3", "--act"], "W4A4"),
                        (["--model", "m", "--out", "o", "--seeds", "2"], "--seeds: for the embedded model")):
        try:
            rc = cli_quantize(argv)
        except SystemExit as e:  # argparse's own checks (fp4ref.cli_args.ArgParser)
            rc = e.code
        assert rc == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)


def test_compare_table_and_verdict_lines():
    """The --compare output from synthetic runs: mean ± sd cells, the float row, and one verdict line per pair
    the papers order (X + QEP vs X, GPTQ vs RTN, MR-GPTQ vs GPTQ)."""
    from argparse import Namespace

    from fp4ref import model_cli

    class Res:
        def __init__(self, e):
            self.e = e

        def mean_rel_err(self, fp=False):
            return self.e * (2 if fp else 1)

    def runs(dnll):
        return [dict(res=Res(0.01), metrics=_metrics(d, [d - 0.01, d, d + 0.01]), seconds=1.0,
                     efficiency=dict(bits_per_weight=4.25, nominal=False)) for d in dnll]

    by = {("rtn", None): runs([0.3, 0.3, 0.3]), ("gptq", None): runs([0.2, 0.21, 0.19]),
          ("gptq", 0.5): runs([0.1, 0.11, 0.09])}
    rows = [dict(config="float32", perplexity=[14.7], runs=[], efficiency=dict(bits_per_weight=32.0, nominal=False))]
    rows += [model_cli._row(model_cli._label(m, q), r) for (m, q), r in by.items()]
    table = model_cli.compare_table(rows, "t")
    assert "| GPTQ | 1.000 ± 0.000 | 0.2000 ± 0.0100 (0.0000) |" in table
    lines = model_cli.verdict_lines({k: [x["metrics"] for x in v] for k, v in by.items()})
    assert [ln.split(":")[0] for ln in lines] == ["- GPTQ vs RTN", "- GPTQ + QEP(0.5) vs GPTQ"]
    assert lines[0].startswith("- GPTQ vs RTN: better") and lines[1].startswith("- GPTQ + QEP(0.5) vs GPTQ: better")
    eff = model_cli.efficiency_table(rows, Namespace(efficiency=False))
    assert "| float32 | 32.0000 |" in eff and "| GPTQ + QEP(0.5) | 4.2500 |" in eff


def test_results_page_claims_table_is_the_stored_runs(capsys):
    """docs/results.md's claims table is what benchmarks/claims.py derives from the stored results.json files."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("claims", root / "benchmarks" / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    assert claims.main([str(root / "docs" / "results_data")]) == 0
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    page = (root / "docs" / "results.md").read_text()
    assert len(out) > 30 and "| not run |" not in "\n".join(out)
    for line in out:
        assert line in page, line
