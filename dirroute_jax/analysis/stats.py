"""Confidence intervals (over seeds; over held-out windows) and the rule that turns one into a
verdict: the statistics every analysis and experiment shares.

A comparison between two models trained in the same run (same seed, same batches) is paired:
each seed gives one difference of held-out log-perplexities, and the interval is a Student-t
interval on the mean of those differences. Perplexity reductions are reported on the ratio
scale, 1 - PPL_a / PPL_b, mapped from the log scale (monotone, so the interval maps too).
Within one run, the same reduction gets a paired bootstrap interval over held-out windows
(`paired_bootstrap_reduction`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

HOLDS, NO_DIFFERENCE, OPPOSITE = "holds", "no difference", "opposite"


def t_interval(values: Sequence[float], level: float = 0.95) -> dict:
  """Mean of `values` with its two-sided Student-t interval (n - 1 degrees of freedom).

  For paired data pass the per-pair differences. Needs at least two values (one value has no
  spread); with fewer the interval is NaN and says so in `note`.
  """
  x = np.asarray(values, np.float64)
  n = int(x.size)
  mean = float(x.mean()) if n else math.nan
  if n < 2:
    return {
      "n": n,
      "mean": mean,
      "sd": math.nan,
      "low": math.nan,
      "high": math.nan,
      "level": level,
      "note": "fewer than 2 seeds: no interval",
    }
  sd = float(x.std(ddof=1))
  half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
  return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "level": level}


def verdict(ci_low: float, ci_high: float, paper_side: int = +1) -> str:
  """ "holds" when the interval excludes zero on the paper's side (`paper_side` +1: the paper
  says the quantity is positive, -1: negative), "opposite" when it excludes zero on the other
  side, "no difference" when it contains zero (or is undefined)."""
  if paper_side not in (+1, -1):
    raise ValueError(f"paper_side must be +1 or -1, got {paper_side!r}.")
  if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
    return NO_DIFFERENCE
  low, high = sorted((paper_side * ci_low, paper_side * ci_high))
  if low > 0:
    return HOLDS
  if high < 0:
    return OPPOSITE
  return NO_DIFFERENCE


def reduction(log_ratio: float) -> float:
  """PPL reduction 1 - PPL_a / PPL_b from log(PPL_b) - log(PPL_a) (positive: a is better)."""
  return 1.0 - math.exp(-log_ratio)


# --- Tests beside the interval: exact sign-flip p, Holm's correction, equivalence -------------
#
# A paired comparison over n seeds has one difference per seed. Under "no difference" each
# difference is as likely to have either sign (the two models are exchangeable within a seed),
# so the 2^n sign flips of the observed differences give the exact null distribution of their
# mean: the sign-flip (randomisation) p. It makes no normality assumption, which the t-interval
# leans on at n = 5, and it has a floor: 2 / 2^n (0.0625 at 5 seeds, so no 5-seed comparison can
# reach p < 0.05 by it).

_MAX_EXACT_SEEDS = 20  # 2^20 sign patterns; beyond, the p is not exact and is refused


def sign_flip_p(diffs: Sequence[float]) -> float:
  """Exact two-sided sign-flip p of H0: the paired differences are symmetric about 0.

  The fraction of the 2^n sign patterns whose |mean| is at least the observed |mean| (the
  observed pattern included, so p >= 2 / 2^n). NaN for no differences."""
  x = np.asarray(diffs, np.float64)
  n = int(x.size)
  if n == 0:
    return math.nan
  if n > _MAX_EXACT_SEEDS:
    raise ValueError(f"sign_flip_p enumerates 2^n patterns; n = {n} > {_MAX_EXACT_SEEDS}.")
  bits_PxN = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
  means_P = ((1 - 2 * bits_PxN) * x[None, :]).mean(axis=1)
  observed = abs(float(x.mean()))
  # A relative tolerance so that the observed pattern counts itself despite rounding.
  return float(np.mean(np.abs(means_P) >= observed * (1 - 1e-12)))


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the input's order: the k-th smallest p times
  (m - k + 1), made monotone, capped at 1. Controls the family-wise error rate over the m
  tests without assuming they are independent. NaN p-values are left out of m and stay NaN."""
  p = np.asarray(pvalues, np.float64)
  ok = np.flatnonzero(np.isfinite(p))
  m = ok.size
  adjusted = np.full(p.shape, math.nan)
  running = 0.0
  for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
    running = max(running, min(1.0, (m - rank) * float(p[i])))
    adjusted[i] = running
  return [float(v) for v in adjusted]


def log_margin(ratio_margin: float) -> tuple[float, float]:
  """The equivalence margin +/-M on the PPL-reduction scale (1 - PPL_a / PPL_b) as bounds on
  the log scale, where the intervals are computed: r = 1 - exp(-d) maps -M and +M to
  d = -log(1 + M) and -log(1 - M). The map is monotone, so a verdict is the same on both."""
  if not 0 < ratio_margin < 1:
    raise ValueError(f"the margin must be in (0, 1), got {ratio_margin!r}.")
  return -math.log1p(ratio_margin), -math.log1p(-ratio_margin)


def equivalent(
  values: Sequence[float], low_bound: float, high_bound: float, level: float = 0.95
) -> bool:
  """Two one-sided tests (TOST) at 1 - `level`: the (2 * level - 1) t-interval (90% for 95%)
  lies inside (low_bound, high_bound). False when there is no interval."""
  ci = t_interval(values, level=2 * level - 1)
  return bool(
    math.isfinite(ci["low"])
    and math.isfinite(ci["high"])
    and low_bound < ci["low"]
    and ci["high"] < high_bound
  )


EQUIVALENT, UNINFORMATIVE = "no difference (within margin)", "uninformative"
DOES_NOT_HOLD = "does not hold (opposite)"


def t_test_p(values: Sequence[float]) -> float:
  """Two-sided one-sample t-test p of mean 0 (the test the t-interval inverts: p < 1 - level
  exactly when the interval excludes 0). NaN with fewer than two values or no spread."""
  x = np.asarray(values, np.float64)
  if x.size < 2 or not np.std(x) > 0:
    return math.nan
  return float(scipy_stats.ttest_1samp(x, 0.0).pvalue)


def paired_verdict(
  diffs: Sequence[float],
  margin: tuple[float, float],
  *,
  alpha: float = 0.05,
  p: float | None = None,
  paper_side: int = +1,
) -> str:
  """The verdict of a paired comparison over seeds, on the log scale of `diffs`:

  - HOLDS: the t-test p (or `p`, e.g. Holm-adjusted, when given) is below alpha and the mean is
    on the paper's side; for the raw p that is the (1 - alpha) t-interval excluding 0;
  - DOES_NOT_HOLD: the same on the other side;
  - EQUIVALENT: the two one-sided tests put the mean inside `margin` (log-scale bounds, see
    `log_margin`): a difference this small is ruled in, and larger ones ruled out;
  - UNINFORMATIVE: neither (too few seeds to tell a difference from the margin).
  The exact sign-flip p is reported beside it, not folded in: at 5 seeds it cannot go below
  0.0625, so it would make every 5-seed comparison uninformative whatever the spread.
  """
  if paper_side not in (+1, -1):
    raise ValueError(f"paper_side must be +1 or -1, got {paper_side!r}.")
  p = t_test_p(diffs) if p is None else p
  mean = float(np.mean(diffs)) if len(diffs) else math.nan
  if math.isfinite(p) and p < alpha and mean != 0:
    return HOLDS if paper_side * mean > 0 else DOES_NOT_HOLD
  if equivalent(diffs, margin[0], margin[1], level=1 - alpha):
    return EQUIVALENT
  return UNINFORMATIVE


def paired_bootstrap_reduction(
  loss_a_N, loss_b_N, tokens_N, *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
  """95% interval of 1 - PPL_a / PPL_b, resampling the N windows (paired: one draw serves both
  models). PPL = exp(sum of losses / sum of tokens) over the resampled windows."""
  loss_a, loss_b = np.asarray(loss_a_N, np.float64), np.asarray(loss_b_N, np.float64)
  tokens = np.asarray(tokens_N, np.float64)
  if len(tokens) < 2:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  counts_RxN = rng.multinomial(len(tokens), np.full(len(tokens), 1.0 / len(tokens)), resamples)
  diff_R = (counts_RxN @ (loss_a - loss_b)) / np.maximum(counts_RxN @ tokens, 1.0)
  lo, hi = np.quantile(1.0 - np.exp(diff_R), [0.025, 0.975])
  return float(lo), float(hi)
