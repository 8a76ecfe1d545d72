"""Confidence intervals (over seeds; over held-out windows) and the rule that turns one into a
verdict: the statistics every analysis and experiment shares.

A comparison between two models trained in the same run (same seed, same batches) is paired:
each seed gives one difference of held-out log-perplexities, and the interval is a Student-t
interval on the mean of those differences. Perplexity reductions are reported on the ratio
scale, 1 - PPL_a / PPL_b, mapped from the log scale (monotone, so the interval maps too). Within one run, the same
reduction gets a paired bootstrap interval over held-out windows (`paired_bootstrap_reduction`).
"""

from __future__ import annotations

import math
from typing import Sequence

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
    return {"n": n, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan,
            "level": level, "note": "fewer than 2 seeds: no interval"}
  sd = float(x.std(ddof=1))
  half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
  return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half,
          "level": level}


def verdict(ci_low: float, ci_high: float, paper_side: int = +1) -> str:
  """"holds" when the interval excludes zero on the paper's side (`paper_side` +1: the paper
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


def paired_bootstrap_reduction(loss_a_N, loss_b_N, tokens_N, *, resamples: int = 2000,
                               seed: int = 0) -> tuple[float, float]:
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
