"""How far a quantized causal LM's next-token distribution is from the float model's, and when one
configuration can be called better than another.

Per evaluation token t (each window of length L predicts its tokens 1..L-1), with P the float model's and
Q the quantized model's next-token distribution and y the true next token:

- ``KL_t = Σ_v P(v) (log P(v) − log Q(v))`` (nats, float64 over the whole vocabulary);
- ``agree_t = [argmax P = argmax Q]`` (top-1 agreement; ties go to the lowest index, as torch.argmax);
- ``ΔNLL_t = −log Q(y) + log P(y)``; its mean is log(perplexity ratio).

The standard error of mean ΔNLL is taken over *windows* (std of the window means / √windows), because
tokens inside a window are correlated; all windows have the same length, so the mean of window means is the
token mean. ``kl_p99`` is the 99th percentile of KL_t, linear interpolation between order statistics
(torch.quantile's default).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

P99 = 0.99


@dataclass
class WindowStats:
    """One window's per-token values (1-D float64 tensors of L-1 tokens; ``agree`` as 0/1)."""

    nll_fp: torch.Tensor
    nll_q: torch.Tensor
    kl: torch.Tensor
    agree: torch.Tensor


@dataclass
class EvalMetrics:
    """Perplexities and the distribution metrics of one quantized model over the evaluation windows."""

    perplexity_fp: float
    perplexity: float
    kl_mean: float
    kl_p99: float
    top1: float
    dnll_mean: float
    dnll_se: float
    tokens: int
    windows: int
    window_dnll: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (float64, L-1 values) of one window: −log softmax(logits[t])[ids[t+1]] for t < L-1."""
    lg, y = logits.squeeze(0), ids.reshape(-1)
    if lg.dim() != 2 or y.numel() != lg.shape[0] or y.numel() < 2:
        raise ValueError(f"logits must be (L, V) with L = len(ids) >= 2; got {tuple(logits.shape)}, "
                         f"ids {tuple(ids.shape)}")
    return _nll(_log_probs(lg), y)


def _log_probs(lg: torch.Tensor) -> torch.Tensor:
    """float64 log softmax of the predicting positions 0..L-2 of one window's logits (L, V)."""
    return torch.log_softmax(lg[:-1].double(), dim=-1)


def _nll(lp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−lp[t, y[t+1]] for the window's token ids y (L,), on the CPU."""
    return -lp.gather(1, y[1:].to(lp.device).unsqueeze(1)).squeeze(1).cpu()


def window_stats(logits_fp: torch.Tensor, logits_q: torch.Tensor, ids: torch.Tensor) -> WindowStats:
    """Token stats of one window: logits (L, V) or (1, L, V) of both models for token ids (L,) or (1, L)."""
    lf, lq, y = logits_fp.squeeze(0), logits_q.squeeze(0), ids.reshape(-1)
    if lf.dim() != 2 or lf.shape != lq.shape or y.numel() != lf.shape[0] or y.numel() < 2:
        raise ValueError(f"logits_fp, logits_q must be (L, V) of the same shape with L = len(ids) >= 2; got "
                         f"{tuple(logits_fp.shape)}, {tuple(logits_q.shape)}, ids {tuple(ids.shape)}")
    lp, lq_ = _log_probs(lf), _log_probs(lq)
    kl = (lp.exp() * (lp - lq_)).sum(-1)
    return WindowStats(_nll(lp, y), _nll(lq_, y), kl.cpu(), (lp.argmax(-1) == lq_.argmax(-1)).double().cpu())


def summarize(stats: Sequence[WindowStats]) -> EvalMetrics:
    """Combine the windows (in window order) into :class:`EvalMetrics`."""
    if not stats:
        raise ValueError("stats must hold at least one window")
    nll_fp = torch.cat([s.nll_fp for s in stats])
    nll_q = torch.cat([s.nll_q for s in stats])
    kl = torch.cat([s.kl for s in stats])
    agree = torch.cat([s.agree for s in stats])
    wd = torch.stack([(s.nll_q - s.nll_fp).mean() for s in stats])
    se = float(wd.std(unbiased=True) / math.sqrt(len(stats))) if len(stats) > 1 else float("nan")
    return EvalMetrics(perplexity_fp=math.exp(float(nll_fp.mean())), perplexity=math.exp(float(nll_q.mean())),
                       kl_mean=float(kl.mean()), kl_p99=float(torch.quantile(kl, P99)), top1=float(agree.mean()),
                       dnll_mean=float((nll_q - nll_fp).mean()), dnll_se=se, tokens=int(kl.numel()),
                       windows=len(stats), window_dnll=[float(v) for v in wd])


class FloatReference:
    """The float model's logits on fixed evaluation windows, computed once and kept (float32, on the CPU), so
    that each quantized row costs one forward pass."""

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 2):
        _check_windows(windows)
        self.windows = windows
        self.logits = list(_logits(model, windows, batch_size))
        self.perplexity = math.exp(float(torch.cat([token_nll(lg, w) for lg, w in zip(self.logits, windows)]).mean()))

    def evaluate(self, model: torch.nn.Module, *, batch_size: int = 2) -> EvalMetrics:
        """:class:`EvalMetrics` of ``model`` against the float logits on the same windows."""
        stats = [window_stats(lf, lq, ids) for lf, lq, ids in
                 zip(self.logits, _logits(model, self.windows, batch_size), self.windows)]
        return summarize(stats)


def _check_windows(windows: object) -> None:
    if not isinstance(windows, torch.Tensor) or windows.dtype != torch.long or windows.dim() != 2 \
            or windows.shape[0] < 1 or windows.shape[1] < 2:
        got = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"windows must be int64 token ids of shape (n >= 1, L >= 2), got {got}")


@torch.no_grad()
def _logits(model: torch.nn.Module, windows: torch.Tensor, batch_size: int):
    device = next(model.parameters()).device
    for i in range(0, windows.shape[0], batch_size):
        out = model(input_ids=windows[i:i + batch_size].to(device), use_cache=False).logits.float().cpu()
        yield from out


def _t_half_width(d: torch.Tensor, level: float) -> float:
    """Half-width of the two-sided ``level`` t interval of mean(d): t_{(1+level)/2, K−1} · sd(d)/√K."""
    from scipy.stats import t as student_t

    return float(student_t.ppf((1 + level) / 2, d.numel() - 1)) * float(d.std(unbiased=True)) / math.sqrt(d.numel())


def _paired(a: Sequence[float], b: Sequence[float], level: float) -> tuple[str, float]:
    """(call, t half-width) of the paired differences a − b; half-width nan and "cannot tell" for one pair."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a and b must be non-empty and of the same length, got {len(a)} and {len(b)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if len(a) < 2:
        return "cannot tell", float("nan")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    m, half = float(d.mean()), _t_half_width(d, level)
    if not abs(m) > half:
        return "cannot tell", half
    return ("better" if m < 0 else "worse"), half


def paired_verdict(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> str:
    """Whether metric values ``a`` are lower ("better"), higher ("worse") than ``b`` or "cannot tell".

    ``a[k]`` and ``b[k]`` come from the same calibration draw k. With d = a − b over K ≥ 2 draws, the call is
    made only when |mean d| > t_{(1+level)/2, K−1} · sd(d)/√K (a two-sided paired t-test); with one draw the
    calibration spread is unknown and the answer is "cannot tell".
    """
    return _paired(a, b, level)[0]


@dataclass
class Verdict:
    """Row A against row B on mean ΔNLL (lower is better): the difference, the two spreads, and the call."""

    diff: float
    seed_half_width: float
    window_se: float
    call: str

    def __str__(self) -> str:
        hw = "" if math.isnan(self.seed_half_width) else f", seed 95% half-width {self.seed_half_width:.4f}"
        return f"{self.call} (ΔNLL difference {self.diff:+.4f}{hw}, window SE {self.window_se:.4f})"


def verdict(a: Sequence[EvalMetrics], b: Sequence[EvalMetrics], *, level: float = 0.95) -> Verdict:
    """Is configuration A (one :class:`EvalMetrics` per calibration draw) better than B on the same draws?

    Both spreads must be beaten: the calibration spread by :func:`paired_verdict` over the draws, and the
    evaluation-text spread by |difference| > 2 · SE, the SE of the per-window differences (averaged over draws)
    across the fixed windows. Anything less is "cannot tell".
    """
    call, half = _paired([m.dnll_mean for m in a], [m.dnll_mean for m in b], level)
    wa = torch.tensor([m.window_dnll for m in a], dtype=torch.float64).mean(0)
    wb = torch.tensor([m.window_dnll for m in b], dtype=torch.float64).mean(0)
    wd = wa - wb
    se = float(wd.std(unbiased=True)) / math.sqrt(wd.numel()) if wd.numel() > 1 else float("nan")
    diff = float(wd.mean())
    if not abs(diff) > 2 * se:
        call = "cannot tell"
    return Verdict(diff, half, se, call)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    v = torch.tensor(list(values), dtype=torch.float64)
    return float(v.mean()), (float(v.std(unbiased=True)) if v.numel() > 1 else float("nan"))


def calibration_draws(tokens: torch.Tensor, *, start: int, n_calib: int, calib_len: int,
                      seeds: int) -> list[torch.Tensor]:
    """``seeds`` disjoint sets of ``n_calib`` windows of ``calib_len`` tokens from ``tokens[start:]``.

    The calibration part is cut into non-overlapping windows aligned to the end of the text; one fixed
    permutation (torch.Generator seeded 0) orders them and draw k takes its k-th run of ``n_calib``, so draws
    never share a window and draw k is the same whatever ``seeds`` is.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    for name, v in (("n_calib", n_calib), ("calib_len", calib_len), ("seeds", seeds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    avail = max(0, (tokens.numel() - start) // calib_len)
    if seeds * n_calib > avail:
        raise ValueError(f"seeds={seeds} draws of {n_calib} disjoint windows of {calib_len} tokens need "
                         f"{seeds * n_calib} windows; the calibration part has {avail} "
                         f"(at most {avail // n_calib} seeds)")
    first = tokens.numel() - avail * calib_len
    wins = tokens[first:].reshape(avail, calib_len)
    order = torch.randperm(avail, generator=torch.Generator().manual_seed(0))
    return [wins[order[k * n_calib:(k + 1) * n_calib]].contiguous() for k in range(seeds)]


__all__ = ["EvalMetrics", "WindowStats", "FloatReference", "window_stats", "summarize", "paired_verdict", "verdict", "Verdict",
           "mean_sd", "calibration_draws"]
