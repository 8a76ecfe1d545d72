"""The words of the claims table (analysis/claims.py) and the rules every section's claim rows
share. A verdict is one of:

  "holds"                                the criterion is met, and it is one a model without
                                         the capability (or the baseline, the row's control)
                                         fails;
  "does not hold"                        the measurement is on the other side of the
                                         criterion or its control;
  "no difference (within +/-M)"          the measurement is inside a stated margin of its null
                                         or control: a difference larger than M is ruled out;
  "uninformative at this scale: <gate>"  the row cannot be decided here, and the gate says why
                                         (the capability is at chance, too few layers for a
                                         trend, a control the result does not have, an
                                         interval too wide to rule out +/-M).

Each section's `claim_rows(result, report)` states its own criteria and gates beside the code
that computes the numbers; this module holds only what they have in common.
"""

from __future__ import annotations

import math

from dirroute_jax.analysis import stats

HOLDS, DOES_NOT_HOLD = "holds", "does not hold"
NO_DIFF = "no difference"  # always written with its margin: `no_difference`
UNINFORMATIVE = "uninformative at this scale"  # always written with its gate: `uninformative`

# Older names, the same words.
YES, NO = HOLDS, DOES_NOT_HOLD

# A capability counts as present when its measure is at least this many times chance: below,
# a claim about what routing does to it has nothing to measure.
CAPABILITY_OVER_CHANCE = 10.0

# The margin of "no difference" for a PPL reduction (the seed tables' +/-1%, experiments/seeds).
PPL_MARGIN = 0.01

# {claim id: (our value as text, holds?)}: holds? is one of the verdicts above, or None (not a
# claim that can hold).
Rows = dict[str, tuple[str, "str | None"]]


def uninformative(gate: str) -> str:
  """The "uninformative" verdict with the gate that decided it."""
  return f"{UNINFORMATIVE}: {gate}"


def no_difference(margin: str) -> str:
  """The "no difference" verdict with the margin it is within."""
  return f"{NO_DIFF} (within {margin})"


def is_holds(verdict: str | None) -> bool:
  return verdict == HOLDS


def is_uninformative(verdict: str | None) -> bool:
  return bool(verdict) and verdict.startswith(UNINFORMATIVE)


def interval_verdict(lo: float, hi: float, null: float = 0.0, margin: float = PPL_MARGIN) -> str:
  """The rule for a quantity the paper says is positive, given its 95% interval: "holds" only
  when the interval excludes `null` (zero, or a control's value) on the paper's side, "does not
  hold" when it excludes it on the other, "no difference (within +/-M)" when it contains it and
  lies inside null +/- `margin`, "uninformative" when it contains it but is wider than that (a
  difference of M cannot be ruled out) or is undefined. The same rule as `stats.verdict`
  (intervals over seeds), in this table's words."""
  null = max(0.0, null)
  if not (math.isfinite(lo) and math.isfinite(hi)):
    return uninformative("no interval")
  v = stats.verdict(lo - null, hi - null)
  if v == stats.HOLDS:
    return HOLDS
  if v == stats.OPPOSITE:
    return DOES_NOT_HOLD
  m = f"+/-{100 * margin:g}%"
  if null - margin < lo and hi < null + margin:
    return no_difference(m)
  return uninformative(f"the interval [{100 * lo:+.1f}, {100 * hi:+.1f}]% is wider than {m}")


def holds_or_not(ok: bool) -> str:
  return HOLDS if ok else DOES_NOT_HOLD


yes_no = holds_or_not


def at_chance(value: float | None, chance: float, factor: float = CAPABILITY_OVER_CHANCE) -> bool:
  """A capability's measure within `factor` x chance (or missing): nothing to test."""
  return value is None or not value >= factor * chance


def pct_ci(value: float, ci) -> str:
  """A fraction as a percentage with its interval, to one decimal (the table's precision)."""
  return f"{100 * value:+.1f}%" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
