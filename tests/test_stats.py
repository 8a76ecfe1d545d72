"""The tests beside the seed intervals (analysis/stats.py): exact sign-flip p, Holm's
correction, equivalence margins and the four-way paired verdict, against hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from dirroute_jax.analysis import stats


def test_sign_flip_p_matches_brute_force_and_has_its_floor():
  x = [0.03, -0.01, 0.02, 0.05, 0.01, -0.02, 0.04]
  obs = abs(np.mean(x))
  hits = sum(
    abs(np.mean([s * v for s, v in zip(signs, x)])) >= obs - 1e-15
    for signs in itertools.product((1, -1), repeat=len(x))
  )
  assert stats.sign_flip_p(x) == pytest.approx(hits / 2 ** len(x))
  assert stats.sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == 2 / 32  # all one sign: the floor
  assert stats.sign_flip_p([0.1] * 15) == pytest.approx(2 / 2**15)
  assert math.isnan(stats.sign_flip_p([]))
  with pytest.raises(ValueError, match="n = 21"):
    stats.sign_flip_p([0.1] * 21)


def test_holm_adjusts_in_input_order_and_keeps_nan_out():
  assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
  got = stats.holm([0.02, math.nan, 0.6])
  assert got[0] == pytest.approx(0.04) and math.isnan(got[1]) and got[2] == pytest.approx(0.6)
  assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # 0.8 x 2 capped at 1; then monotone


def test_margin_maps_the_ratio_scale_to_the_log_scale():
  low, high = stats.log_margin(0.01)
  assert stats.reduction(low) == pytest.approx(-0.01) and stats.reduction(high) == pytest.approx(
    0.01
  )
  with pytest.raises(ValueError):
    stats.log_margin(1.0)


def test_paired_verdict_has_four_outcomes():
  m = stats.log_margin(0.01)
  gain = [0.020, 0.030, 0.025, 0.028, 0.022, 0.031, 0.027, 0.024]
  assert stats.paired_verdict(gain, m) == stats.HOLDS
  assert stats.paired_verdict([-v for v in gain], m) == stats.DOES_NOT_HOLD
  tiny = [0.001, -0.002, 0.0015, -0.0005, 0.0, 0.001, -0.001, 0.0005]
  assert stats.paired_verdict(tiny, m) == stats.EQUIVALENT
  wide = [0.05, -0.04, 0.03, -0.06, 0.02]
  assert stats.paired_verdict(wide, m) == stats.UNINFORMATIVE
  # A Holm-adjusted p decides instead of the raw one.
  assert stats.paired_verdict(gain, m, p=0.2) == stats.UNINFORMATIVE
  assert stats.paired_verdict(gain, m, p=0.2, paper_side=-1) == stats.UNINFORMATIVE
  assert stats.paired_verdict([-v for v in gain], m, paper_side=-1) == stats.HOLDS


def test_t_test_p_is_the_test_the_interval_inverts():
  rng = np.random.default_rng(0)
  for _ in range(50):
    x = rng.normal(0.01, 0.02, size=int(rng.integers(2, 16)))
    ci = stats.t_interval(x)
    assert (stats.t_test_p(x) < 0.05) == (ci["low"] > 0 or ci["high"] < 0)
  assert math.isnan(stats.t_test_p([0.1])) and math.isnan(stats.t_test_p([0.1, 0.1]))
